//! The `openai` policy backend: sampling and scoring on an OpenAI-compatible server, in vLLM's dialect
//! (v0.11.0; docs/notes/engines-dialect.md cites the source for every field used here).
//!
//! - **Sampling**: one `/v1/completions` request per row, the prompt as token ids, `max_tokens` the row's
//!   length, every sampling parameter sent explicitly (vLLM otherwise takes defaults from the model's
//!   `generation_config.json`), `logprobs: 0` for the sampled tokens' log-probs and
//!   `return_tokens_as_token_ids` so the completion comes back as ids, never as text to re-tokenise. Each row
//!   has its own seed (`lm::sample::row_seed`), so against `activepref serve` a row draws exactly what the
//!   local backend draws, and a rerun draws the same.
//! - **Scoring**: the prompt and completion as one token-id prompt with `echo: true`, `logprobs: 0`,
//!   `max_tokens: 1`; the completion's positions of `token_logprobs` are summed. Up to `batch_size` sequences
//!   per request.
//! - **Semantics**: scores must be the raw model's temperature-1 log-probs (vLLM's default
//!   `logprobs_mode = "raw_logprobs"`; its V0 engine and the `processed_*` modes return values after
//!   temperature and top-k/top-p). Checked once when the backend connects: a sample drawn with `top_k: 1`
//!   whose log-probs are all exactly 0 is post-filter (refused), and the sampled tokens' log-probs must agree
//!   with the same tokens scored by `echo`.
//! - **A round's policy** is its LoRA adapter written as a PEFT directory (`round-N/adapter`) and loaded with
//!   `POST /v1/load_lora_adapter` as `<run>-round<N>` (unloaded first, so a resumed run reloads it rather than
//!   meeting vLLM's "already loaded" 400); the reference is the server's base model. The server reads the
//!   adapter from its own disk: the run directory must be shared, or `policy.server_run_dir` says where the
//!   server sees it.

use super::{PolicyBackend, PolicyModel};
use crate::config::ActiveConfig;
use crate::policy::load_trainable;
use crate::run_dir::RunDir;
use anyhow::{anyhow, bail, Context as _, Result};
use client::{Client, Retries};
use dpo::train::LoraConfig;
use lm::sample::{row_seed, Sample, SampleParams};
use lm::{LanguageModel, Tokenizer};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

/// The server and how many requests it gets at once.
struct Server {
    client: Client,
    concurrency: usize,
}

/// A model on the server: the base model or a loaded adapter.
pub struct RemoteModel {
    server: Arc<Server>,
    name: String,
    tokenizer: Tokenizer,
}

/// The `openai` backend (see the module docs).
pub struct OpenAiBackend<'a> {
    reference: RemoteModel,
    base: &'a LanguageModel,
    lora: &'a LoraConfig,
    dir: &'a RunDir,
    /// The run directory as the server sees it.
    server_dir: PathBuf,
    /// Adapter names start with it: the run directory's name.
    run_name: String,
}

impl<'a> OpenAiBackend<'a> {
    /// Connects to `cfg.policy`'s server and checks that it returns raw temperature-1 log-probs.
    pub fn connect(cfg: &'a ActiveConfig, base: &'a LanguageModel, dir: &'a RunDir) -> Result<Self> {
        let p = &cfg.policy;
        let lora = cfg.train.lora.as_ref().ok_or_else(|| anyhow!("policy.backend = \"openai\" needs [train.lora]"))?;
        let retries = Retries {
            timeout_s: p.timeout_s,
            retries: p.retries,
            backoff_s: p.backoff_s,
            max_backoff_s: p.max_backoff_s,
        };
        let client = Client::new("the policy server", &p.base_url, &p.api_key_env, retries)?;
        let server = Arc::new(Server { client, concurrency: p.concurrency });
        let reference = RemoteModel { server, name: p.model.clone(), tokenizer: base.tokenizer.clone() };
        check_semantics(&reference).with_context(|| format!("checking the policy server at {}", p.base_url))?;
        let abs = std::fs::canonicalize(&dir.0).unwrap_or_else(|_| dir.0.clone());
        let server_dir = if p.server_run_dir.is_empty() { abs.clone() } else { PathBuf::from(&p.server_run_dir) };
        let run_name = abs.file_name().map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned());
        Ok(Self { reference, base, lora, dir, server_dir, run_name })
    }

    fn adapter_name(&self, round: usize) -> String {
        format!("{}-round{round}", self.run_name)
    }

    /// Writes the round's adapter directory once (atomically: a killed run never leaves half of one).
    fn export_adapter(&self, round: usize) -> Result<()> {
        let dest = self.dir.adapter(round);
        if dest.join(lm::adapter::CONFIG_FILE).exists() && dest.join(lm::adapter::WEIGHTS_FILE).exists() {
            return Ok(());
        }
        if crate::policy::trained_form(self.dir, round) == Some(crate::policy::Form::Model) {
            bail!(
                "round {round}'s trainer left a whole model ({}); the openai policy backend loads each round as a \
                 LoRA adapter: train with LoRA",
                self.dir.model(round).display()
            );
        }
        let tmp = dest.with_extension("partial");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let t = load_trainable(self.base, self.dir, round)?;
        dpo::checkpoint::write_peft_adapter(&tmp, self.base, &t.into_iter().collect(), self.lora)?;
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&tmp, &dest).with_context(|| format!("writing {}", dest.display()))?;
        crate::policy::sync_dir(&self.dir.round(round))
    }

    /// Loads the round's adapter under its name, replacing whatever was loaded under it.
    fn load_adapter(&self, round: usize) -> Result<String> {
        let name = self.adapter_name(round);
        let path = self.server_dir.join(format!("round-{round}")).join("adapter");
        let c = &self.reference.server.client;
        // vLLM 0.11 refuses a name that is loaded (400) and has no in-place reload: unload first; a 404 (not
        // loaded) is expected on a fresh server.
        let _ = c.post_once("/unload_lora_adapter", &json!({"lora_name": name}))?;
        let (status, text) =
            c.post_once("/load_lora_adapter", &json!({"lora_name": name, "lora_path": path.display().to_string()}))?;
        if !(200..300).contains(&status) {
            bail!(
                "the policy server refused round {round}'s adapter {} ({status}: {}). It must load LoRA adapters at \
                 run time (vLLM: --enable-lora, --max-lora-rank ≥ {}, VLLM_ALLOW_RUNTIME_LORA_UPDATING=1; activepref \
                 serve: --allow-lora-loading) and read that path (policy.server_run_dir maps the run directory)",
                path.display(),
                client::server_message(&text),
                self.lora.r
            );
        }
        // The previous round's adapter is not needed any more (evaluation and the next acquisition use this
        // one and the base); free its memory on the server.
        if round > 1 {
            let _ = c.post_once("/unload_lora_adapter", &json!({"lora_name": self.adapter_name(round - 1)}));
        }
        Ok(name)
    }
}

impl PolicyBackend for OpenAiBackend<'_> {
    fn reference(&self) -> &dyn PolicyModel {
        &self.reference
    }

    fn policy(&self, round: usize) -> Result<Box<dyn PolicyModel + '_>> {
        if round == 0 {
            return Ok(Box::new(self.reference.with_name(&self.reference.name)));
        }
        self.export_adapter(round)?;
        let name = self.load_adapter(round)?;
        Ok(Box::new(self.reference.with_name(&name)))
    }
}

impl RemoteModel {
    fn with_name(&self, name: &str) -> Self {
        Self { server: self.server.clone(), name: name.to_string(), tokenizer: self.tokenizer.clone() }
    }

    fn post(&self, body: &Value) -> Result<Value> {
        self.server.client.post_json("/completions", body, &self.name, || {})
    }

    /// One row: `max_new` tokens after `prompt` under the row's own seed.
    fn sample_row(&self, prompt: &[u32], params: &SampleParams, max_new: usize, seed: u64) -> Result<Sample> {
        let body = json!({
            "model": self.name, "prompt": prompt, "max_tokens": max_new, "n": 1,
            "temperature": params.temperature, "top_p": params.top_p,
            "top_k": if params.top_k == 0 { -1 } else { params.top_k as i64 },
            "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            // i64, as servers written in other languages read it; ours takes it back to the same u64.
            "seed": seed as i64,
            "logprobs": 0, "return_tokens_as_token_ids": true,
        });
        let v = self.post(&body)?;
        let choice = &v["choices"][0];
        let (tokens, logprobs) = token_lists(choice)?;
        if tokens.len() > max_new {
            bail!("the policy server returned {} tokens for max_tokens {max_new}", tokens.len());
        }
        let logprobs = logprobs
            .into_iter()
            .map(|l| l.ok_or_else(|| anyhow!("the policy server returned a null log-prob for a sampled token")))
            .collect::<Result<Vec<f32>>>()?;
        let stopped_at_eos = params.stop_at_eos && tokens.last().is_some_and(|&t| self.tokenizer.is_eos(t));
        Ok(Sample { tokens, logprobs, stopped_at_eos })
    }

    /// Summed log-probs of each sequence's tokens from `from[i]` on, `seqs` in one request.
    fn score_batch(&self, seqs: &[Vec<u32>], from: &[usize]) -> Result<Vec<f64>> {
        let body = json!({
            "model": self.name, "prompt": seqs, "max_tokens": 1, "echo": true, "logprobs": 0, "n": 1,
            "temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "seed": 0,
            "return_tokens_as_token_ids": true,
        });
        let v = self.post(&body)?;
        let choices = v["choices"].as_array().ok_or_else(|| anyhow!("the policy server answered without choices"))?;
        if choices.len() != seqs.len() {
            bail!("the policy server answered {} choices for {} prompts", choices.len(), seqs.len());
        }
        let mut out = vec![0.0; seqs.len()];
        for (k, c) in choices.iter().enumerate() {
            let i = c["index"].as_u64().map_or(k, |i| i as usize);
            let seq = seqs.get(i).ok_or_else(|| anyhow!("choice index {i} out of range"))?;
            let (tokens, lps) = token_lists(c)?;
            if tokens.len() < seq.len() || tokens[..seq.len()] != seq[..] {
                bail!(
                    "the policy server echoed other tokens than it was sent (it re-tokenised the prompt, or does not \
                     take token-id prompts)"
                );
            }
            out[i] = lps[from[i].max(1)..seq.len()]
                .iter()
                .map(|l| l.map(f64::from).ok_or_else(|| anyhow!("a null log-prob inside an echoed prompt")))
                .sum::<Result<f64>>()?;
        }
        Ok(out)
    }
}

/// The token ids (`return_tokens_as_token_ids`) and log-probs of a completions choice's `logprobs`.
fn token_lists(choice: &Value) -> Result<(Vec<u32>, Vec<Option<f32>>)> {
    let lp = &choice["logprobs"];
    if lp.is_null() {
        bail!(
            "the policy server returned no log-probs (`logprobs` on /v1/completions is needed; vLLM and \
             activepref serve --openai have it)"
        );
    }
    let tokens = lp["tokens"].as_array().ok_or_else(|| anyhow!("logprobs.tokens is missing"))?;
    let ids = tokens
        .iter()
        .map(|t| {
            t.as_str().and_then(|s| s.strip_prefix("token_id:")).and_then(|s| s.parse::<u32>().ok()).ok_or_else(|| {
                anyhow!(
                    "the policy server returned the token {t} as text; it must honour `return_tokens_as_token_ids` \
                     (vLLM ≥ 0.5)"
                )
            })
        })
        .collect::<Result<Vec<u32>>>()?;
    let lps = lp["token_logprobs"].as_array().ok_or_else(|| anyhow!("logprobs.token_logprobs is missing"))?;
    if lps.len() != ids.len() {
        bail!("logprobs has {} tokens but {} log-probs", ids.len(), lps.len());
    }
    Ok((ids, lps.iter().map(|l| l.as_f64().map(|x| x as f32)).collect()))
}

/// Runs `job(i)` for `i < n` on up to `concurrency` threads; results in order, `progress` told how many are
/// done as they finish. The first error ends it.
fn parallel<T: Send>(
    n: usize,
    concurrency: usize,
    job: impl Fn(usize) -> Result<T> + Sync,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<T>> {
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, Result<T>)>();
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    std::thread::scope(|s| -> Result<()> {
        for _ in 0..concurrency.clamp(1, n.max(1)) {
            let tx = tx.clone();
            let (next, job) = (&next, &job);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                let r = job(i);
                let failed = r.is_err();
                if tx.send((i, r)).is_err() || failed {
                    // Stop the others from starting more work.
                    next.store(n, Ordering::SeqCst);
                    break;
                }
            });
        }
        drop(tx);
        let mut done = 0;
        for (i, r) in rx {
            out[i] = Some(r?);
            done += 1;
            progress(done);
        }
        Ok(())
    })?;
    out.into_iter().map(|x| x.ok_or_else(|| anyhow!("a request was never answered"))).collect()
}

impl PolicyModel for RemoteModel {
    fn generate(
        &self,
        prompts: &[Vec<u32>],
        params: &SampleParams,
        lengths: Option<&[usize]>,
        _batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Sample>> {
        if let Some(l) = lengths {
            if l.len() != prompts.len() {
                bail!("{} completion lengths given for {} prompts", l.len(), prompts.len());
            }
        }
        let max_new = |i: usize| lengths.map_or(params.max_new_tokens, |l| l[i].min(params.max_new_tokens));
        parallel(
            prompts.len(),
            self.server.concurrency,
            |i| self.sample_row(&prompts[i], params, max_new(i), row_seed(params.seed, i)),
            progress,
        )
    }

    fn score(
        &self,
        items: &[(Vec<u32>, Vec<u32>)],
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<f64>> {
        let chunks: Vec<&[(Vec<u32>, Vec<u32>)]> = items.chunks(batch_size.max(1)).collect();
        let per_chunk = parallel(
            chunks.len(),
            self.server.concurrency,
            |k| {
                let seqs: Vec<Vec<u32>> = chunks[k].iter().map(|(p, c)| [p.as_slice(), c].concat()).collect();
                let from: Vec<usize> = chunks[k].iter().map(|(p, _)| p.len()).collect();
                self.score_batch(&seqs, &from)
            },
            // Every chunk but the last is full, so `done` chunks are this many rows, whichever finished.
            &mut |done| progress((done * batch_size.max(1)).min(items.len())),
        )?;
        Ok(per_chunk.into_iter().flatten().collect())
    }

    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

/// Refuses a server whose log-probs are not the raw model's at temperature 1 (see the module docs).
fn check_semantics(m: &RemoteModel) -> Result<()> {
    let prompt = m.tokenizer.encode("The").context("tokenizing the check's prompt")?;
    let greedy =
        SampleParams { max_new_tokens: 4, temperature: 1.0, top_k: 1, top_p: 1.0, seed: 0, stop_at_eos: false };
    let s = m.sample_row(&prompt, &greedy, 4, 0)?;
    if s.tokens.is_empty() {
        bail!("the server sampled no token for a 4-token request");
    }
    if s.logprobs.iter().all(|&l| l == 0.0) {
        bail!(
            "its log-probs are taken after top-k filtering (all 0 with top_k = 1): vLLM's V0 engine or \
             --logprobs-mode processed_logprobs. Start vLLM with --logprobs-mode raw_logprobs (its default)"
        );
    }
    let scored = m.score_batch(&[[prompt.as_slice(), &s.tokens].concat()], &[prompt.len()])?[0];
    let sampled: f64 = s.logprobs.iter().map(|&l| l as f64).sum();
    // bf16 kernels differ between prefill and decode; a temperature or filter applied to one side moves it
    // by far more.
    if (scored - sampled).abs() > 0.05 * s.tokens.len() as f64 {
        bail!(
            "the log-probs of sampled tokens ({sampled:.4}) and of the same tokens scored with echo ({scored:.4}) \
             disagree: the server does not return the raw model's temperature-1 log-probs on both paths"
        );
    }
    Ok(())
}
