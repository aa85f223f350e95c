//! The named tensors of a model, under their HF names.
//!
//! Loaders (safetensors, GGUF) fill a `Params`; architectures take their tensors from it by name with a
//! shape check; training turns the same entries into `Var`s so that gradients flow into them.

use anyhow::{bail, Context as _, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Params {
    pub tensors: BTreeMap<String, Tensor>,
    /// Where the tensors came from, for error messages.
    pub source: String,
    /// LoRA `alpha / r` applied to every `*.lora_A/B` pair present.
    pub lora_scale: f64,
}

impl Params {
    pub fn new(source: impl Into<String>) -> Self {
        Self { tensors: BTreeMap::new(), source: source.into(), lora_scale: 1.0 }
    }

    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        self.tensors.insert(name.into(), t);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor `name`, which must have shape `dims`.
    pub fn get(&self, name: &str, dims: &[usize]) -> Result<Tensor> {
        let t = match self.tensors.get(name) {
            Some(t) => t,
            None => bail!("{}: tensor `{name}` (shape {dims:?}) is missing", self.source),
        };
        if t.dims() != dims {
            bail!("{}: tensor `{name}` has shape {:?}, expected {dims:?}", self.source, t.dims());
        }
        Ok(t.clone())
    }

    /// Casts every tensor to `dtype` on `device`.
    pub fn to(&self, dtype: DType, device: &Device) -> Result<Self> {
        let mut out = Self { lora_scale: self.lora_scale, ..Self::new(self.source.clone()) };
        for (k, t) in &self.tensors {
            out.insert(k.clone(), t.to_device(device)?.to_dtype(dtype)?);
        }
        Ok(out)
    }

    /// Replaces every tensor whose name `select` accepts by a fresh `Var` (a trainable copy) and returns
    /// those vars by name. The rest stay plain tensors and receive no gradient.
    pub fn make_trainable(&mut self, select: impl Fn(&str) -> bool) -> Result<BTreeMap<String, Var>> {
        let mut vars = BTreeMap::new();
        for (name, t) in self.tensors.iter_mut() {
            if select(name) {
                let v = Var::from_tensor(&t.detach())?;
                *t = v.as_tensor().clone();
                vars.insert(name.clone(), v);
            }
        }
        Ok(vars)
    }

    /// Writes all tensors to one safetensors file (f32 unless they are another float type already).
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let tensors: std::collections::HashMap<String, Tensor> =
            self.tensors.iter().map(|(k, t)| (k.clone(), t.detach())).collect();
        candle_core::safetensors::save(&tensors, path).with_context(|| format!("writing {}", path.display()))
    }

    pub fn num_elements(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum()
    }
}
