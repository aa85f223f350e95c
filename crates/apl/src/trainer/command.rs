//! The `command` trainer: `[trainer] command` run once a round through `sh -c`, in the run directory.
//!
//! Each round it gets (absolute paths, shell-quoted):
//! - `{data_dir}`: `round-N/train/data/`, holding `train.jsonl`, every label so far as TRL's standard
//!   preference rows (`prompt`, `chosen`, `rejected`); `{data}` is that file. TRL 0.27's `dpo.py` reads a
//!   local directory given as `--dataset_name` (it has no `data_files` flag);
//! - `{base}`: the starting model as an HF directory — the model directory itself when the run's model is
//!   one, else the model (GGUF, or with `adapter` merged) written once to `<run>/base-hf/`;
//! - `{output}`: `round-N/train/output/`, emptied first, where the command leaves a PEFT adapter
//!   (`adapter_config.json` + `adapter_model.safetensors`, in `{output}` or `{output}/adapter` as
//!   `activepref dpo` writes it) or an HF model (`{output}` or `{output}/final`);
//! - `{round}`, `{seed}` (the round's training seed, in 31 bits: transformers seeds numpy, which takes seeds
//!   below 2³²), and `[train]`'s `{beta}`, `{learning_rate}`,
//!   `{epochs}`, `{lora_r}`, `{lora_alpha}`.
//!
//! Its stdout and stderr go to `round-N/train/command.log`. A non-zero exit stops the run with the log's
//! tail; the round is not marked trained, so the same `activepref run` command runs it again. The result is
//! checked against the starting model (an adapter for another model is refused by name) and moved into
//! `round-N/adapter` or `round-N/model` before the round counts as trained.

use super::{last_loss, TrainJob, TrainerBackend};
use crate::event::Event;
use crate::policy::sync_dir;
use crate::report::trl_row;
use crate::run_dir::write_atomic;
use crate::seed::seed_for;
use crate::seed::stream::TRAIN;
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs `[trainer] command` (see the module docs).
pub struct CommandTrainer;

impl TrainerBackend for CommandTrainer {
    fn train(&self, job: TrainJob) -> Result<Option<f64>> {
        let TrainJob { cfg, dir, base, round, labels, events } = job;
        let root = std::fs::canonicalize(&dir.0).with_context(|| format!("finding {}", dir.0.display()))?;
        let work = root.join(format!("round-{round}")).join("train");
        let data_dir = work.join("data");
        let output = work.join("output");
        std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let mut rows = String::new();
        for l in labels {
            rows.push_str(&trl_row(l).to_string());
            rows.push('\n');
        }
        let data = data_dir.join("train.jsonl");
        write_atomic(&data, rows.as_bytes())?;
        let base_dir = base_hf_dir(cfg, &root, base, events)?;
        if output.exists() {
            std::fs::remove_dir_all(&output).with_context(|| format!("emptying {}", output.display()))?;
        }
        std::fs::create_dir_all(&output)?;
        let t = &cfg.train;
        let lora = t.lora.as_ref();
        // transformers seeds numpy, which takes seeds below 2³²; 31 bits suit every trainer.
        let seed = seed_for(cfg.seed, &[TRAIN, round as u64]) & 0x7fff_ffff;
        let values: Vec<(&str, String)> = vec![
            ("data_dir", quote(&data_dir)),
            ("data", quote(&data)),
            ("base", quote(&base_dir)),
            ("output", quote(&output)),
            ("round", round.to_string()),
            ("seed", seed.to_string()),
            ("beta", t.loss.beta.to_string()),
            ("learning_rate", t.learning_rate.to_string()),
            ("epochs", t.epochs.to_string()),
            ("lora_r", lora.map_or(0, |l| l.r).to_string()),
            ("lora_alpha", lora.map_or(0.0, |l| l.alpha).to_string()),
        ];
        let command = render(&cfg.trainer.command, &values)?;
        let log_path = work.join("command.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        events(Event::Info(format!("round {round}: training with `{command}` (log: {})", log_path.display())));
        let status = Command::new("sh")
            .arg("-c")
            .arg(&command)
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("starting `sh -c {command}`"))?;
        if !status.success() {
            bail!(
                "round {round}: the trainer command failed ({status}); the end of {}:\n{}\nFix it and run the same \
                 command again: the run resumes at this round",
                log_path.display(),
                tail(&log_path, 20)
            );
        }
        let form = adopt_result(&output, base, dir, round)?;
        events(Event::Info(format!("round {round}: the trainer command left {form}")));
        Ok(last_loss(&output.join("trainer_state.json"))
            .or_else(|| last_loss(&output.join("metrics.jsonl")))
            .or_else(|| logged_train_loss(&log_path)))
    }
}

/// The starting model as an HF directory for the command (see the module docs).
fn base_hf_dir(
    cfg: &crate::config::ActiveConfig,
    root: &Path,
    base: &lm::LanguageModel,
    events: &mut dyn FnMut(Event),
) -> Result<PathBuf> {
    let model = Path::new(&cfg.model);
    if !cfg.model.is_empty() && model.is_dir() && cfg.adapter.is_empty() {
        return std::fs::canonicalize(model).with_context(|| format!("finding {}", model.display()));
    }
    let dest = root.join("base-hf");
    if !dest.join("config.json").exists() {
        events(Event::Info(format!(
            "writing the starting model as an HF directory for the trainer: {}",
            dest.display()
        )));
        let tmp = root.join("base-hf.partial");
        let _ = std::fs::remove_dir_all(&tmp);
        base.save(&tmp)?;
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&tmp, &dest).with_context(|| format!("writing {}", dest.display()))?;
        sync_dir(root)?;
    }
    Ok(dest)
}

/// Moves what the command left into the round's directory: a PEFT adapter (checked against `base`) or an HF
/// model. Says which.
fn adopt_result(output: &Path, base: &lm::LanguageModel, dir: &crate::run_dir::RunDir, round: usize) -> Result<String> {
    let adapter =
        [output.to_path_buf(), output.join("adapter")].into_iter().find(|d| d.join(lm::adapter::CONFIG_FILE).exists());
    if let Some(src) = adapter {
        let a = lm::adapter::Adapter::read(&src, base).context("the trainer command's adapter")?;
        let dest = dir.adapter(round);
        let tmp = dest.with_extension("partial");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        for f in [lm::adapter::CONFIG_FILE, lm::adapter::WEIGHTS_FILE] {
            std::fs::copy(src.join(f), tmp.join(f)).with_context(|| format!("copying {}", src.join(f).display()))?;
            std::fs::File::open(tmp.join(f))?.sync_all()?;
        }
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&tmp, &dest)?;
        sync_dir(&dir.round(round))?;
        return Ok(format!("a LoRA adapter ({} modules, r {}) in {}", a.num_modules(), a.r, dest.display()));
    }
    let model = [output.to_path_buf(), output.join("final")].into_iter().find(|d| d.join("config.json").exists());
    if let Some(src) = model {
        let (config, _) = lm::load::load_tokenizer(&src).context("the trainer command's model")?;
        if config.vocab_size != base.config.vocab_size || config.hidden_size != base.config.hidden_size {
            bail!("the trainer command's model in {} is not the starting model's architecture", src.display());
        }
        let dest = dir.model(round);
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&src, &dest).with_context(|| format!("moving {} to {}", src.display(), dest.display()))?;
        sync_dir(&dir.round(round))?;
        return Ok(format!("a whole model in {}", dest.display()));
    }
    bail!(
        "the trainer command succeeded but left neither a PEFT adapter ({} in {} or {}/adapter) nor an HF model \
         (config.json in it or in final/)",
        lm::adapter::CONFIG_FILE,
        output.display(),
        output.display()
    )
}

/// The last `'train_loss': x` that transformers' Trainer printed to the log (with `save_strategy no` it
/// writes no `trainer_state.json`).
fn logged_train_loss(log: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let at = text.rfind("'train_loss': ")? + "'train_loss': ".len();
    let num: String =
        text[at..].chars().take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+')).collect();
    num.parse().ok()
}

/// `template` with every `{name}` replaced; an unknown placeholder is an error naming it.
fn render(template: &str, values: &[(&str, String)]) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(j) = after.find('}') else {
            out.push_str(&rest[i..]);
            return Ok(out);
        };
        let name = &after[..j];
        // A shell `${VAR}` is the shell's.
        if out.ends_with('$') {
            out.push_str(&rest[i..i + 2 + j]);
            rest = &after[j + 1..];
            continue;
        }
        match values.iter().find(|(k, _)| *k == name) {
            Some((_, v)) => out.push_str(v),
            None if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.is_empty() => bail!(
                "trainer.command has an unknown placeholder {{{name}}}; known: {}",
                values.iter().map(|(k, _)| format!("{{{k}}}")).collect::<Vec<_>>().join(", ")
            ),
            // Not a placeholder (a shell `${VAR}` or a JSON brace): kept as written.
            None => out.push_str(&rest[i..i + 2 + j]),
        }
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A path as one shell word.
fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_unknown_ones_named() {
        let v = vec![("output", "'/r/o'".to_string()), ("round", "2".to_string())];
        assert_eq!(
            render("x --out {output} --r {round} ${HOME} {\"a\": 1}", &v).unwrap(),
            "x --out '/r/o' --r 2 ${HOME} {\"a\": 1}"
        );
        let e = render("x {outptu}", &v).unwrap_err().to_string();
        assert!(e.contains("{outptu}") && e.contains("{output}"), "{e}");
        assert_eq!(quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
        let tmp = std::env::temp_dir().join(format!("activepref-loss-{}.log", std::process::id()));
        std::fs::write(&tmp, "x\n{'train_runtime': 0.2, 'train_loss': 0.6911606788635254, 'epoch': 1.0}\n").unwrap();
        assert_eq!(logged_train_loss(&tmp), Some(0.6911606788635254));
        let _ = std::fs::remove_file(&tmp);
    }
}
