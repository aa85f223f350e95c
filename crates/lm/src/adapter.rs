//! PEFT LoRA adapters read from disk and merged into a model: what TRL, PEFT and `activepref dpo --lora`
//! write (`adapter_config.json` + `adapter_model.safetensors`), applied onto a GGUF or HF base.
//!
//! Why merge rather than keep the adapter apart: every consumer here (sampling, scoring, serving, a run's
//! starting policy) only runs the adapted model, and a merged weight `W + s·B A` costs nothing per token. An
//! adapter may give each module its own scale (`rank_pattern`, `alpha_pattern`, `use_rslora`), which one
//! global LoRA scale could not hold; merging takes each as it is.
//!
//! The tensors decide which modules are adapted, as vLLM decides (`vllm/lora/models.py` reads the keys, not
//! `target_modules`): `target_modules` as a list, a regex or `"all-linear"` only told PEFT where to put them.
//! Key format (PEFT 0.18 `utils/save_and_load.py`, `remove_adapter_name`):
//! `base_model.model.<HF module path>.lora_A.weight` of shape `(r, in)` and `….lora_B.weight` of `(out, r)`.
//! GPT-2's module path starts with `transformer.` and its `Conv1D` weights are stored transposed, but PEFT's
//! A and B have the same `(r, in)` / `(out, r)` shapes there (`tuners/lora/layer.py`, `Conv1D` branch), so
//! `B A` adds to the `(out, in)` weights this crate holds for every architecture.
//!
//! Scale per module (`tuners/lora/layer.py` `update_layer`): `alpha / r`, or `alpha / √r` with `use_rslora`,
//! where `r` and `alpha` come from `rank_pattern` / `alpha_pattern` when a key there matches the module
//! (`re.match(rf"(.*\.)?({key})$", name)`, PEFT's `get_pattern_key`). Refused by name, since merging them as
//! plain LoRA would give another model: DoRA (`use_dora`), `modules_to_save` (full copies of modules),
//! trained biases (`bias` other than `"none"`), LoRA on embeddings, and any `peft_type` but `LORA`.

use crate::config::Arch;
use crate::model::LanguageModel;
use anyhow::{anyhow, bail, Context as _, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The config file of a PEFT adapter directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file of a PEFT adapter directory.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// A LoRA adapter read from a PEFT directory and checked against the model it adapts.
#[derive(Debug)]
pub struct Adapter {
    pub dir: PathBuf,
    /// The config's rank and alpha (modules may override them through the patterns).
    pub r: usize,
    pub alpha: f64,
    pub use_rslora: bool,
    /// Per adapted weight (this crate's parameter name, `….weight`): `(A, B, scale)`.
    modules: BTreeMap<String, (Tensor, Tensor, f64)>,
}

impl Adapter {
    /// Reads the adapter in `dir` and checks every tensor against `model`'s layers.
    pub fn read(dir: &Path, model: &LanguageModel) -> Result<Self> {
        let cfg_path = dir.join(CONFIG_FILE);
        if !dir.is_dir() {
            bail!(
                "--adapter {}: not a directory (expected a PEFT adapter directory with {CONFIG_FILE})",
                dir.display()
            );
        }
        if !cfg_path.exists() {
            bail!("{}: missing; a PEFT adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}", cfg_path.display());
        }
        let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
        let cfg: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", cfg_path.display()))?;
        let c = Config::parse(&cfg).map_err(|e| anyhow!("{}: {e}", cfg_path.display()))?;

        let w_path = dir.join(WEIGHTS_FILE);
        if !w_path.exists() {
            if dir.join("adapter_model.bin").exists() {
                bail!(
                    "{}: only adapter_model.bin (a pickle) is there; save the adapter with safe_serialization=True \
                     (PEFT's default) to get {WEIGHTS_FILE}",
                    dir.display()
                );
            }
            bail!("{}: missing; a PEFT adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}", w_path.display());
        }
        let tensors = candle_core::safetensors::load(&w_path, &Device::Cpu)
            .with_context(|| format!("reading {}", w_path.display()))?;
        let modules = pair_up(tensors, model, &c).map_err(|e| anyhow!("{}: {e}", w_path.display()))?;
        Ok(Self { dir: dir.to_path_buf(), r: c.r, alpha: c.alpha, use_rslora: c.use_rslora, modules })
    }

    /// How many weights the adapter changes.
    pub fn num_modules(&self) -> usize {
        self.modules.len()
    }

    /// `model` with every adapted weight replaced by `W + scale · B A` (in the model's dtype, on its device).
    pub fn merge_into(&self, model: &LanguageModel) -> Result<LanguageModel> {
        let mut p = model.params.clone();
        let (dev, dtype) = (model.device().clone(), model.dtype());
        for (name, (a, b, scale)) in &self.modules {
            let w = &p.tensors[name];
            // In f32 at least, so that a bf16 model does not round B A before the sum.
            let delta = (b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)? * *scale)?;
            let merged = (w.detach().to_dtype(DType::F32)? + delta.to_device(&dev)?)?.to_dtype(dtype)?;
            p.insert(name.clone(), merged);
        }
        p.source = format!("{} + adapter {}", p.source, self.dir.display());
        model.with_params(p)
    }
}

/// `model` with the PEFT adapter in `dir` merged into it.
pub fn apply(model: &LanguageModel, dir: &Path) -> Result<LanguageModel> {
    Adapter::read(dir, model)?.merge_into(model)
}

/// What the adapter's config says, checked.
struct Config {
    r: usize,
    alpha: f64,
    use_rslora: bool,
    rank_pattern: Vec<(regex::Regex, String, usize)>,
    alpha_pattern: Vec<(regex::Regex, String, f64)>,
}

impl Config {
    fn parse(cfg: &Value) -> Result<Self> {
        let peft_type = cfg.get("peft_type").and_then(Value::as_str).unwrap_or("LORA");
        if peft_type != "LORA" {
            bail!("peft_type {peft_type:?} is not supported; only LoRA adapters (\"LORA\") can be applied");
        }
        if cfg.get("use_dora").and_then(Value::as_bool) == Some(true) {
            bail!(
                "use_dora: true: DoRA adapters are not supported (they rescale each weight's columns); merge it \
                 with PEFT (merge_and_unload) and load the merged model instead"
            );
        }
        if let Some(m) = cfg.get("modules_to_save").and_then(Value::as_array).filter(|a| !a.is_empty()) {
            bail!(
                "modules_to_save {m:?}: adapters that carry full copies of modules are not supported; train without \
                 modules_to_save, or merge with PEFT and load the merged model"
            );
        }
        match cfg.get("bias").and_then(Value::as_str) {
            None | Some("none") => {}
            Some(b) => bail!("bias {b:?}: adapters with trained biases are not supported; only bias \"none\""),
        }
        // Newer PEFT variants that change the forward beyond W + s·B A.
        for (key, what) in [
            ("lora_bias", "a bias on lora_B"),
            ("target_parameters", "LoRA on parameters rather than modules"),
            ("layer_replication", "replicated layers"),
            ("trainable_token_indices", "trained token embeddings"),
            ("alora_invocation_tokens", "activated LoRA (applied only after invocation tokens)"),
            ("use_qalora", "QA-LoRA"),
        ] {
            let set = match cfg.get(key) {
                None | Some(Value::Null) | Some(Value::Bool(false)) => false,
                Some(Value::Array(a)) => !a.is_empty(),
                Some(Value::Object(o)) => !o.is_empty(),
                Some(_) => true,
            };
            if set {
                bail!("`{key}` is set: {what} is not supported; only plain LoRA adapters can be applied");
            }
        }
        let r = match cfg.get("r").and_then(Value::as_u64) {
            Some(r) if r > 0 => r as usize,
            _ => bail!("`r` must be a positive integer, got {}", cfg.get("r").unwrap_or(&Value::Null)),
        };
        let alpha = cfg.get("lora_alpha").and_then(Value::as_f64).ok_or_else(|| {
            anyhow!("`lora_alpha` must be a number, got {}", cfg.get("lora_alpha").unwrap_or(&Value::Null))
        })?;
        let use_rslora = cfg.get("use_rslora").and_then(Value::as_bool).unwrap_or(false);
        let rank_pattern = patterns(cfg, "rank_pattern", |v| v.as_u64().filter(|&r| r > 0).map(|r| r as usize))?;
        let alpha_pattern = patterns(cfg, "alpha_pattern", Value::as_f64)?;
        Ok(Self { r, alpha, use_rslora, rank_pattern, alpha_pattern })
    }

    /// The rank and scale of the module PEFT names `peft_name`.
    fn scale_of(&self, peft_name: &str) -> (usize, f64) {
        let r = self.rank_pattern.iter().find(|(re, _, _)| re.is_match(peft_name)).map_or(self.r, |p| p.2);
        let alpha = self.alpha_pattern.iter().find(|(re, _, _)| re.is_match(peft_name)).map_or(self.alpha, |p| p.2);
        let scale = if self.use_rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
        (r, scale)
    }
}

/// A `{pattern: value}` map of the config, each pattern compiled as PEFT matches it: `(.*\.)?(key)$` from the
/// start of the module name.
fn patterns<T>(cfg: &Value, key: &str, value: impl Fn(&Value) -> Option<T>) -> Result<Vec<(regex::Regex, String, T)>> {
    let Some(map) = cfg.get(key).filter(|v| !v.is_null()) else { return Ok(vec![]) };
    let map = map.as_object().ok_or_else(|| anyhow!("`{key}` must be an object of pattern → value"))?;
    map.iter()
        .map(|(k, v)| {
            let re = regex::Regex::new(&format!(r"^(.*\.)?({k})$"))
                .map_err(|e| anyhow!("`{key}` pattern {k:?} is not a regular expression: {e}"))?;
            let x = value(v).ok_or_else(|| anyhow!("`{key}`[{k:?}] has an invalid value {v}"))?;
            Ok((re, k.clone(), x))
        })
        .collect()
}

/// The adapter's tensors as `(A, B, scale)` per weight of `model`, each checked for a home and a shape.
fn pair_up(
    tensors: std::collections::HashMap<String, Tensor>,
    model: &LanguageModel,
    c: &Config,
) -> Result<BTreeMap<String, (Tensor, Tensor, f64)>> {
    let linear: std::collections::BTreeSet<String> = model.lora_targets(&[]).into_iter().collect();
    let mut a_of: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut b_of: BTreeMap<String, Tensor> = BTreeMap::new();
    // In name order, so that the first problem reported is the same every time.
    let tensors: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    for (key, t) in tensors {
        let path = key.strip_prefix("base_model.model.").unwrap_or(&key);
        let (module, which) = if let Some(m) = path.strip_suffix(".lora_A.weight") {
            (m, 'A')
        } else if let Some(m) = path.strip_suffix(".lora_B.weight") {
            (m, 'B')
        } else if path.contains("lora_embedding_") {
            bail!("tensor `{key}`: LoRA on embeddings is not supported");
        } else if path.contains("lora_magnitude_vector") {
            bail!("tensor `{key}`: a DoRA magnitude vector; DoRA adapters are not supported");
        } else {
            bail!("tensor `{key}` is not a LoRA weight (expected names ending in .lora_A.weight or .lora_B.weight)");
        };
        if module.contains(".lora_") {
            bail!("tensor `{key}` still carries an adapter name; save the adapter with PEFT's save_pretrained");
        }
        // This crate names GPT-2's tensors without HF's `transformer.` prefix.
        let stem = match model.config.arch {
            Arch::Gpt2 => module.strip_prefix("transformer.").unwrap_or(module),
            _ => module,
        };
        if !linear.contains(stem) {
            bail!(
                "tensor `{key}` adapts `{module}`, which is not a linear layer inside the blocks of this {} model",
                model.config.model_type
            );
        }
        let slot = if which == 'A' { &mut a_of } else { &mut b_of };
        slot.insert(format!("{stem}.weight"), t);
    }
    if a_of.is_empty() {
        bail!("holds no LoRA tensors");
    }
    let mut out = BTreeMap::new();
    for (name, a) in a_of {
        let b = b_of.remove(&name).ok_or_else(|| anyhow!("`{name}` has lora_A but no lora_B"))?;
        let (out_f, in_f) = model.params.tensors[&name].dims2()?;
        let (ra, ia) =
            a.dims2().map_err(|_| anyhow!("lora_A of `{name}` must be a matrix, has shape {:?}", a.dims()))?;
        let (ob, rb) =
            b.dims2().map_err(|_| anyhow!("lora_B of `{name}` must be a matrix, has shape {:?}", b.dims()))?;
        if ia != in_f || ob != out_f || ra != rb {
            bail!(
                "`{name}` is ({out_f}, {in_f}) in the model; its lora_A is {:?} and lora_B {:?}, expected (r, {in_f}) \
                 and ({out_f}, r): the adapter was trained on another base model",
                a.dims(),
                b.dims()
            );
        }
        let peft_name = peft_module_name(model, &name);
        let (r, scale) = c.scale_of(&peft_name);
        if r != ra {
            bail!("`{name}` has rank {ra} in the weights but {r} in the config (r / rank_pattern)");
        }
        out.insert(name, (a, b, scale));
    }
    if let Some(name) = b_of.keys().next() {
        bail!("`{name}` has lora_B but no lora_A");
    }
    Ok(out)
}

/// The name PEFT gives the module of weight `name` (the path inside the HF model), which its patterns match.
fn peft_module_name(model: &LanguageModel, name: &str) -> String {
    let stem = name.trim_end_matches(".weight");
    match model.config.arch {
        Arch::Gpt2 => format!("transformer.{stem}"),
        _ => stem.to_string(),
    }
}
