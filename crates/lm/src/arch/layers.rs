//! Building blocks shared by the architectures: linear layers, norms, rotary embeddings, attention and
//! the KV cache.
//!
//! The norms have two paths. When any input is part of an autograd graph (`track_op()`), or in f64 (the
//! gradient checks), they run the kernels of [`crate::kernels::norm`], which have a backward pass (candle-nn's
//! fused `rms_norm` and `layer_norm` have none and would silently drop gradients). When nothing tracks
//! gradients (sampling, scoring, evaluation) they run candle-nn's fused kernels. Attention's softmax takes
//! [`crate::kernels::norm`]'s op on every path (it is also the faster forward). Tests check that every path
//! gives the same numbers.

use crate::kernels::linear::{self, x_w, x_wt};
use crate::kernels::lora::lora_linear;
use crate::kernels::{slice, to_candle, with_slice};
use candle_core::TensorId;
use candle_core::{DType, Device, Module, Result, Tensor};
use std::sync::{Arc, OnceLock};

/// Whether an op over these tensors must use the differentiable primitives: some input is in a graph,
/// or the dtype is one candle's fused kernels lack (f64, used by the gradient checks).
fn tracks(ts: &[&Tensor]) -> bool {
    ts.iter().any(|t| t.track_op() || t.dtype() == DType::F64)
}

/// A low-rank adapter (Hu et al. 2021, "LoRA", arXiv 2106.09685): `ΔW = scale · B A`, `A` `(r, in)`,
/// `B` `(out, r)`, named `{layer}.lora_A.weight` / `{layer}.lora_B.weight` as PEFT names them.
#[derive(Debug, Clone)]
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

/// `y = x W^T + b (+ scale · x Aᵀ Bᵀ)`, W stored `(out, in)` as in PyTorch's `nn.Linear`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
    /// `Wᵀ` `(in, out)`, made the first time training goes through this layer with `W` frozen, if gemm is
    /// faster from it ([`linear::prefers_transposed_weight`]: a down-projection); with the id of the weight
    /// it copies. Shared by clones of the layer.
    transposed: Arc<OnceLock<(TensorId, Tensor)>>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias, lora: None, transposed: Arc::default() }
    }

    /// The transposed copy of `W` for a training forward of `x` through the frozen weight, where it pays.
    /// Its memory is one more copy of each such weight (SmolLM2-135M's 30 down-projections: 106 MB in f32).
    fn transposed_weight(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let w = &self.weight;
        let (out, inp) = w.dims2()?;
        let rows = x.elem_count() / inp.max(1);
        if !Self::frozen_path(x, w) || !linear::prefers_transposed_weight(rows, inp, out) {
            return Ok(None);
        }
        let (id, wt) = match self.transposed.get() {
            Some(c) => c,
            None => {
                let _ = self.transposed.set((w.id(), w.detach().t()?.contiguous()?)); // (in, out)
                self.transposed.get().unwrap()
            }
        };
        Ok((*id == w.id()).then(|| wt.clone()))
    }

    /// The layer `name` from `p`: `{name}.weight` `(out, inp)`, `{name}.bias` if `bias`, and a LoRA adapter
    /// if `p` holds one for this layer.
    pub fn load(p: &crate::params::Params, name: &str, out: usize, inp: usize, bias: bool) -> anyhow::Result<Self> {
        let weight = p.get(&format!("{name}.weight"), &[out, inp])?;
        let bias = if bias { Some(p.get(&format!("{name}.bias"), &[out])?) } else { None };
        let a_name = format!("{name}.lora_A.weight");
        let lora = match p.tensors.get(&a_name) {
            Some(a) => {
                let r = a.dim(0)?;
                Some(Lora {
                    a: p.get(&a_name, &[r, inp])?,
                    b: p.get(&format!("{name}.lora_B.weight"), &[out, r])?,
                    scale: p.lora_scale,
                })
            }
            None => None,
        };
        Ok(Self { weight, bias, lora, transposed: Arc::default() })
    }

    /// `x Wᵀ`; `base` says `w` is the layer's own weight rather than a LoRA factor, which keeps candle's
    /// matmul: a rank-r product gains nothing from [`TrainedMatmul`], and the adapters' training stays the
    /// computation it was.
    fn plain(&self, x: &Tensor, w: &Tensor, base: bool) -> Result<Tensor> {
        let w = if x.dtype() != w.dtype() { w.to_dtype(x.dtype())? } else { w.clone() };
        on_rows(x, |x2| {
            if Self::frozen_path(x, &w) {
                let wt = if base { self.transposed_weight(x)? } else { None };
                x2.contiguous()?.apply_op1(FrozenMatmul { w: w.detach(), wt })
            } else if base && Self::trained_path(x, &w) {
                x2.contiguous()?.apply_op2(&w.contiguous()?, TrainedMatmul)
            } else if Self::inference_path(x, &w) {
                cpu_product(x2, &w, true).map_err(to_candle)
            } else {
                x2.matmul(&w.t()?)
            }
        })
    }
}

/// `f` over `x` `(..., in)` seen as `(rows, in)`, its `(rows, out)` result reshaped to `(..., out)`.
fn on_rows(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let in_dim = *dims.last().unwrap();
    let y = f(&x.reshape((x.elem_count() / in_dim, in_dim))?)?; // (rows, out)
    *dims.last_mut().unwrap() = y.dim(1)?;
    y.reshape(dims) // (..., out)
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.lora {
            Some(l) if crate::kernels::lora::supports(x, &self.weight, &l.a, &l.b) => {
                let wt = self.transposed_weight(x)?;
                let y = on_rows(x, |x2| lora_linear(x2, &self.weight, wt.as_ref(), &l.a, &l.b, l.scale))?;
                self.add_bias(y)
            }
            Some(l) => {
                let y = self.plain_with_bias(x)?;
                let down = self.plain(x, &l.a, false)?; // (..., r)
                y + (self.plain(&down, &l.b, false)? * l.scale)?
            }
            None => self.plain_with_bias(x),
        }
    }
}

/// `x Wᵀ` for a frozen `W` as one graph node whose backward returns only the input's gradient.
///
/// candle's `matmul` backward computes the gradient of both operands unconditionally, so with LoRA every
/// frozen base weight (the 49,152 × 576 head included) would get a full-size gradient that nothing uses:
/// memory and a third of the backward FLOPs. The forward copies the input out of its storage and the result
/// back (cheap next to the matmul). CPU only; other devices use the plain matmul.
struct FrozenMatmul {
    /// `(out, in)`
    w: Tensor,
    /// `Wᵀ` `(in, out)`, which the forward reads instead of `w` when the layer keeps one.
    wt: Option<Tensor>,
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        let (rows, inp) = l.shape().dims2()?;
        let out = self.w.dim(0)?;
        fn run<T: crate::kernels::Float>(x: &[T], rows: usize, inp: usize, op: &FrozenMatmul) -> Result<Vec<T>> {
            let out = op.w.dim(0)?;
            match &op.wt {
                Some(wt) => with_slice(&wt.contiguous()?, |wt| Ok(linear::x_wtt_plus(x, rows, inp, wt, out, None))),
                None => with_slice(&op.w.contiguous()?, |w| Ok(linear::x_wt(x, rows, inp, w, out))),
            }
            .map_err(to_candle)
        }
        let y = match s {
            CpuStorage::F32(_) => CpuStorage::F32(run(slice(s, l)?, rows, inp, self)?),
            CpuStorage::F64(_) => CpuStorage::F64(run(slice(s, l)?, rows, inp, self)?),
            _ => candle_core::bail!("frozen-matmul supports f32 and f64"),
        };
        Ok((y, (rows, out).into()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(cpu_product(grad, &self.w, false).map_err(to_candle)?)) // (rows, out) @ (out, in)
    }
}

/// `x Wᵀ` for a weight in the graph (full fine-tuning) as one node whose forward is [`x_wt`].
///
/// candle's `matmul(x, Wᵀ)` hands gemm `W` as a column-major operand, which it packs on every call: 130–160
/// GFLOP/s on SmolLM2's training shapes where [`x_wt`] reaches 170–195 (docs/benchmarks.md). The backward is
/// the same two products candle's would compute, each only for an operand in the graph.
struct TrainedMatmul;

impl candle_core::CustomOp2 for TrainedMatmul {
    fn name(&self) -> &'static str {
        "trained-matmul"
    }

    fn cpu_fwd(
        &self,
        xs: &candle_core::CpuStorage,
        xl: &candle_core::Layout,
        ws: &candle_core::CpuStorage,
        wl: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        let (rows, inp) = xl.shape().dims2()?;
        let (out, w_inp) = wl.shape().dims2()?;
        if w_inp != inp {
            candle_core::bail!("trained-matmul: x is (…, {inp}), W is ({out}, {w_inp})")
        }
        // `slice` refuses a non-contiguous operand, and a weight of another dtype than `x`'s.
        let y = match xs {
            CpuStorage::F32(_) => CpuStorage::F32(x_wt(slice(xs, xl)?, rows, inp, slice(ws, wl)?, out)),
            CpuStorage::F64(_) => CpuStorage::F64(x_wt(slice(xs, xl)?, rows, inp, slice(ws, wl)?, out)),
            _ => candle_core::bail!("trained-matmul supports f32 and f64"),
        };
        Ok((y, (rows, out).into()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // dx = g W (rows, in); dW = gᵀ x (out, in).
        let dx = if x.track_op() { Some(cpu_product(grad, w, false).map_err(to_candle)?) } else { None };
        let dw = if w.track_op() { Some(grad.t()?.matmul(x)?) } else { None };
        Ok((dx, dw))
    }
}

/// `a Wᵀ` (`transposed`, `a` `(rows, in)`) or `a W` (`a` `(rows, out)`) for `W` `(out, in)` on the CPU, through
/// [`x_wt`] / [`x_w`].
fn cpu_product(a: &Tensor, w: &Tensor, transposed: bool) -> anyhow::Result<Tensor> {
    let (rows, k) = a.dims2()?;
    let (out, inp) = w.dims2()?;
    let n = if transposed { out } else { inp };
    let (a, w) = (a.contiguous()?, w.contiguous()?);
    fn run<T: crate::kernels::Float>(
        a: &Tensor,
        w: &Tensor,
        rows: usize,
        k: usize,
        n: usize,
        t: bool,
    ) -> anyhow::Result<Vec<T>> {
        with_slice::<T, _>(a, |a| with_slice(w, |w| Ok(if t { x_wt(a, rows, k, w, n) } else { x_w(a, rows, k, w, n) })))
    }
    let y = match a.dtype() {
        DType::F32 => Tensor::from_vec(run::<f32>(&a, &w, rows, k, n, transposed)?, (rows, n), a.device())?,
        _ => Tensor::from_vec(run::<f64>(&a, &w, rows, k, n, transposed)?, (rows, n), a.device())?,
    };
    Ok(y)
}

impl Linear {
    /// Whether `x Wᵀ` runs outside any graph on the CPU, where [`x_wt`] splits it across threads.
    fn inference_path(x: &Tensor, w: &Tensor) -> bool {
        !x.track_op() && !w.track_op() && Self::cpu_kernel(x, w)
    }

    /// Whether the CPU kernels of [`cpu_product`] take `x` and `w`: both on the CPU in the same f32 or f64.
    fn cpu_kernel(x: &Tensor, w: &Tensor) -> bool {
        x.device().is_cpu() && w.dtype() == x.dtype() && matches!(x.dtype(), DType::F32 | DType::F64)
    }

    /// Whether `x Wᵀ` has a weight in the graph on the CPU (full fine-tuning), for [`TrainedMatmul`].
    fn trained_path(x: &Tensor, w: &Tensor) -> bool {
        w.track_op() && Self::cpu_kernel(x, w)
    }

    /// Whether `x Wᵀ` should skip the weight's gradient: the input is in a graph, the weight is frozen.
    fn frozen_path(x: &Tensor, w: &Tensor) -> bool {
        x.track_op() && !w.track_op() && Self::cpu_kernel(x, w)
    }

    fn plain_with_bias(&self, x: &Tensor) -> Result<Tensor> {
        self.add_bias(self.plain(x, &self.weight, true)?)
    }

    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?),
            None => Ok(y),
        }
    }
}

/// RMSNorm (Zhang & Sennrich 2019): `x / sqrt(mean(x²) + eps) * (offset + w)`.
/// Gemma stores `w` so that the scale is `1 + w` (`offset = 1`); Llama uses `offset = 0`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
    pub offset: f64,
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = if self.offset != 0.0 { (&self.weight + self.offset)? } else { self.weight.clone() };
        if tracks(&[x, &w]) || !x.is_contiguous() {
            crate::kernels::norm::rms_norm(x, &w, self.eps).map_err(to_candle)
        } else {
            candle_nn::ops::rms_norm(x, &w, self.eps as f32)
        }
    }
}

/// LayerNorm (Ba et al. 2016) with weight and bias, as in GPT-2.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if tracks(&[x, &self.weight, &self.bias]) || !x.is_contiguous() {
            crate::kernels::norm::layer_norm(x, &self.weight, &self.bias, self.eps).map_err(to_candle)
        } else {
            candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32)
        }
    }
}

/// GELU with the tanh approximation (GPT-2's `gelu_new`, Gemma's `gelu_pytorch_tanh`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.gelu()
}

/// Rotary position embedding tables (Su et al. 2021, RoFormer) for given absolute positions.
#[derive(Debug, Clone)]
pub struct Rope {
    /// `(rot_dim / 2,)` inverse frequencies.
    inv_freq: Vec<f32>,
}

impl Rope {
    /// `base` is θ; `rot_dim` the number of rotated dims of a head; `scale` a linear position scale
    /// (positions are divided by it, as in HF's `"rope_type": "linear"`).
    pub fn new(base: f64, rot_dim: usize, scale: f64) -> Self {
        let inv_freq =
            (0..rot_dim / 2).map(|i| (1.0 / base.powf(2.0 * i as f64 / rot_dim as f64) / scale) as f32).collect();
        Self { inv_freq }
    }

    /// cos and sin for `positions` `(B, T)`, each `(B, 1, T, rot_dim)` (halves duplicated, NeoX layout).
    pub fn tables(&self, positions: &[Vec<u32>], dtype: DType, dev: &Device) -> Result<(Tensor, Tensor)> {
        let b = positions.len();
        let t = positions.first().map(|p| p.len()).unwrap_or(0);
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(b * t * half * 2);
        let mut sin = Vec::with_capacity(b * t * half * 2);
        for row in positions {
            for &p in row {
                for _ in 0..2 {
                    for f in &self.inv_freq {
                        let a = p as f32 * f;
                        cos.push(a.cos());
                        sin.push(a.sin());
                    }
                }
            }
        }
        let shape = (b, 1, t, 2 * half); // (B, 1, T, rot_dim)
        let cos = Tensor::from_vec(cos, shape, dev)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, shape, dev)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }
}

/// Applies rotary embeddings (NeoX "rotate half" layout) to the first `rot_dim` dims of each head.
/// `x`: `(B, H, T, hd)`; `cos`, `sin`: `(B, 1, T, rot_dim)`. One op with a backward pass on the CPU
/// ([`crate::kernels::rope`]), candle ops elsewhere.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    crate::kernels::rope::apply_rope(x, cos, sin).map_err(to_candle)
}

/// Where a forward pass sits in each sequence: `start` tokens are already in the KV cache, and row
/// `b` has `left_pad[b]` padding tokens at its start (batched generation left-pads prompts).
#[derive(Debug, Clone, Default)]
pub struct Positions {
    pub start: usize,
    pub left_pad: Vec<usize>,
}

impl Positions {
    pub fn fresh(batch: usize) -> Self {
        Self { start: 0, left_pad: vec![0; batch] }
    }

    /// Absolute position ids `(B, T)`: padding does not advance the position.
    pub fn positions(&self, t: usize) -> Vec<Vec<u32>> {
        self.left_pad.iter().map(|&pad| (0..t).map(|i| (self.start + i).saturating_sub(pad) as u32).collect()).collect()
    }

    /// Additive attention mask `(B, 1, T, S)` with `S = start + T`: causal, keys in the left padding
    /// hidden, and (if `window` is set) keys further back than the sliding window hidden.
    /// Returns `None` when nothing needs masking (a single decoding step without padding or window).
    pub fn mask(&self, t: usize, window: Option<usize>, dtype: DType, dev: &Device) -> Result<Option<Tensor>> {
        let s = self.start + t;
        let any_pad = self.left_pad.iter().any(|&p| p > 0);
        let window_bites = window.is_some_and(|w| s > w);
        if t == 1 && !any_pad && !window_bites {
            return Ok(None);
        }
        let b = self.left_pad.len();
        let mut m = vec![0f32; b * t * s];
        for (bi, &pad) in self.left_pad.iter().enumerate() {
            for i in 0..t {
                let q = self.start + i;
                for j in 0..s {
                    // A padding query still sees itself, so that no softmax row is empty (an
                    // all -inf row gives NaN, and NaN * 0 would leak into real rows through V).
                    let hidden = j > q || (j < pad && j != q) || window.is_some_and(|w| q - j >= w);
                    if hidden {
                        m[(bi * t + i) * s + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Ok(Some(Tensor::from_vec(m, (b, 1, t, s), dev)?.to_dtype(dtype)?))
    }
}

/// Per-layer cached keys and values, preallocated: each layer's keys and values live in one buffer
/// `(B, n_kv, capacity, hd)` that every decoding step writes its new position into, so a step copies only
/// its own keys and values (appending by concatenation copies the whole cache at every step, O(S²) over a
/// sequence). The views handed to attention are the buffer's first `len` positions, read in place.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub layers: Vec<Option<LayerKv>>,
    /// Positions to allocate at the first append (grown by doubling if a sequence outruns it).
    capacity: usize,
}

/// One layer's buffers and how many positions of them are filled.
#[derive(Debug, Clone)]
pub struct LayerKv {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvCache {
    /// A cache that allocates room for `capacity` positions per sequence at its first append (the prompt
    /// plus the new tokens of a generation), so it never reallocates.
    pub fn with_capacity(n_layers: usize, capacity: usize) -> Self {
        Self { layers: vec![None; n_layers], capacity }
    }

    /// Positions cached in layer `i`.
    pub fn len(&self, i: usize) -> usize {
        self.layers.get(i).and_then(|l| l.as_ref()).map_or(0, |l| l.len)
    }

    /// Appends this step's keys/values `(B, n_kv, T, hd)` to layer `i` and returns the full keys/values
    /// `(B, n_kv, S, hd)`, views of the buffers.
    pub fn append(&mut self, i: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let (b, n_kv, t, hd) = k.dims4()?;
        let len = self.len(i);
        let have = self.layers[i].as_ref().map_or(0, |l| l.k.dim(2).unwrap_or(0));
        if len + t > have {
            let cap = (len + t).max(self.capacity).max(2 * have);
            let fresh = |old: Option<&Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((b, n_kv, cap, hd), k.dtype(), k.device())?; // (B, n_kv, cap, hd)
                if let Some(old) = old {
                    buf.slice_set(&old.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                }
                Ok(buf)
            };
            let old = self.layers[i].take();
            self.layers[i] =
                Some(LayerKv { k: fresh(old.as_ref().map(|l| &l.k))?, v: fresh(old.as_ref().map(|l| &l.v))?, len });
        }
        let l = self.layers[i].as_mut().expect("allocated above");
        l.k.slice_set(&k, 2, len)?;
        l.v.slice_set(&v, 2, len)?;
        l.len = len + t;
        Ok((l.k.narrow(2, 0, l.len)?, l.v.narrow(2, 0, l.len)?)) // (B, n_kv, S, hd) each
    }

    /// Keeps only rows `keep` of the batch (drops finished sequences during generation; repeats a prompt's
    /// rows for its samples).
    pub fn select_rows(&mut self, keep: &Tensor) -> Result<()> {
        for l in self.layers.iter_mut().flatten() {
            l.k = l.k.index_select(keep, 0)?;
            l.v = l.v.index_select(keep, 0)?;
        }
        Ok(())
    }
}

/// Scaled dot-product attention with grouped-query heads (Vaswani et al. 2017; Ainslie et al. 2023).
/// `q`: `(B, H, T, hd)`; `k`, `v`: `(B, n_kv, S, hd)`; `mask`: `(B, 1, T, S)` additive.
/// `softcap` applies Gemma-2 style `tanh(s / c) * c` to the scores.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    softcap: Option<f64>,
) -> Result<Tensor> {
    let (b, h, t, hd) = q.dims4()?;
    let n_kv = k.dim(1)?;
    let rep = h / n_kv;
    // Query heads of one group share a kv head; fold the group into the query rows so that no
    // copy of K/V is made: (B, n_kv, rep*T, hd).
    let q = q.contiguous()?.reshape((b, n_kv, rep * t, hd))?; // (B, n_kv, rep*T, hd)
    let raw = q.matmul(&k.t()?)?; // (B, n_kv, rep*T, S)

    // The scale, the mask and the softmax in one pass over the scores (and one back), in training and
    // inference alike; a soft-cap goes between the scale and the mask, so it takes the scale out of that op.
    let (scores, scale) = match softcap {
        Some(c) => ((((raw * scale)? / c)?.tanh()? * c)?, 1.0),
        None => (raw, scale),
    };
    let probs = match mask {
        Some(m) => crate::kernels::norm::masked_softmax(&scores, m, t, scale),
        None => crate::kernels::norm::softmax_last(&if scale == 1.0 { scores } else { (scores * scale)? }),
    }
    .map_err(to_candle)?;
    // `v` may be a view of the KV cache's buffer (rows of `hd` values, `capacity` apart): outside a graph the
    // matmul reads it in place.
    let y = if tracks(&[&probs]) { probs.matmul(&v.contiguous()?)? } else { probs.matmul(v)? }; // (B, n_kv, rep*T, hd)
    y.reshape((b, h, t, hd)) // (B, H, T, hd)
}

/// `(B, T, H*hd)` → `(B, H, T, hd)`.
pub fn split_heads(x: &Tensor, heads: usize, hd: usize) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    x.reshape((b, t, heads, hd))? // (B, T, H, hd)
        .transpose(1, 2)? // (B, H, T, hd)
        .contiguous()
}

/// `(B, H, T, hd)` → `(B, T, H*hd)`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, hd) = x.dims4()?;
    x.transpose(1, 2)? // (B, T, H, hd)
        .contiguous()?
        .reshape((b, t, h * hd)) // (B, T, H*hd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn a_trained_weight_gives_candle_matmuls_values_and_gradients() {
        // Full fine-tuning's linear layer (TrainedMatmul) against candle's own matmul, forward and both gradients,
        // with the input in the graph and out of it; 200 rows so both the row-major and the threaded paths run.
        for dtype in [DType::F32, DType::F64] {
            for input_tracked in [true, false] {
                let x = Tensor::randn(0f32, 1.0, (2, 100, 48), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                let x = if input_tracked { Var::from_tensor(&x).unwrap().as_tensor().clone() } else { x };
                let w = Var::from_tensor(
                    &Tensor::randn(0f32, 1.0, (70, 48), &Device::Cpu).unwrap().to_dtype(dtype).unwrap(),
                )
                .unwrap();
                let lin = Linear::new(w.as_tensor().clone(), None);
                let weights =
                    Tensor::arange(0f32, (2 * 100 * 70) as f32, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                let weights = (weights.reshape((2, 100, 70)).unwrap() / 7000.0).unwrap(); // a non-uniform upstream gradient
                let ours = lin.forward(&x).unwrap();
                let theirs = x.broadcast_matmul(&w.as_tensor().t().unwrap()).unwrap();
                let tol = if dtype == DType::F32 { 1e-4 } else { 1e-12 };
                let diff = |a: &Tensor, b: &Tensor| crate::testing::max_abs_diff(a, b).unwrap();
                assert!(diff(&ours, &theirs) < tol, "{dtype:?} forward");
                let g_ours = (ours * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                let g_theirs = (theirs * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                let dw = (g_ours.get(w.as_tensor()).unwrap(), g_theirs.get(w.as_tensor()).unwrap());
                assert!(diff(dw.0, dw.1) < tol, "{dtype:?} weight gradient");
                if input_tracked {
                    assert!(diff(g_ours.get(&x).unwrap(), g_theirs.get(&x).unwrap()) < tol, "{dtype:?} input gradient");
                } else {
                    assert!(g_ours.get(&x).is_none(), "a constant input got a gradient");
                }
            }
        }
    }

    #[test]
    fn a_frozen_down_projection_trains_from_its_transposed_copy() {
        // 2 × 100 rows into a 96 → 40 frozen weight: the regime where the layer keeps Wᵀ. Values and the input's
        // gradient equal candle's matmul, with and without an adapter; the copy follows a replaced weight.
        let dev = Device::Cpu;
        for lora in [false, true] {
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 100, 96), &dev).unwrap()).unwrap();
            let x = x.as_tensor();
            let mut lin = Linear::new(Tensor::randn(0f64, 1.0, (40, 96), &dev).unwrap(), None);
            if lora {
                let a = Var::from_tensor(&Tensor::randn(0f64, 1.0, (4, 96), &dev).unwrap()).unwrap();
                let b = Var::from_tensor(&Tensor::randn(0f64, 1.0, (40, 4), &dev).unwrap()).unwrap();
                lin.lora = Some(Lora { a: a.as_tensor().clone(), b: b.as_tensor().clone(), scale: 0.5 });
            }
            let theirs = |lin: &Linear| {
                let y = x.broadcast_matmul(&lin.weight.t().unwrap()).unwrap();
                match &lin.lora {
                    Some(l) => {
                        let d = x.broadcast_matmul(&l.a.t().unwrap()).unwrap();
                        (y + (d.broadcast_matmul(&l.b.t().unwrap()).unwrap() * l.scale).unwrap()).unwrap()
                    }
                    None => y,
                }
            };
            let diff = |a: &Tensor, b: &Tensor| crate::testing::max_abs_diff(a, b).unwrap();
            for round in 0..2 {
                let (ours, want) = (lin.forward(x).unwrap(), theirs(&lin));
                assert!(lin.transposed.get().is_some(), "lora {lora}: no transposed copy was made");
                assert!(diff(&ours, &want) < 1e-10, "lora {lora} round {round}: forward");
                let (g1, g2) =
                    (ours.sum_all().unwrap().backward().unwrap(), want.sum_all().unwrap().backward().unwrap());
                assert!(
                    diff(g1.get(x).unwrap(), g2.get(x).unwrap()) < 1e-10,
                    "lora {lora} round {round}: input gradient"
                );
                // A new weight in the same layer: the old copy must not be used.
                lin.weight = Tensor::randn(0f64, 1.0, (40, 96), &dev).unwrap();
            }
        }
    }
}
