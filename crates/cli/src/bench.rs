//! `activepref bench lm`: throughput of the language-model core on random weights of a given shape.
//! Every figure is printed beside a baseline measured in the same run: the same work done through the
//! differentiable (graph-building) path, which is what inference would cost without the fused path.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use clap::Args;
use lm::sample::{generate, SampleParams};
use lm::{LanguageModel, ModelConfig};
use std::time::Instant;

#[derive(Args)]
pub struct LmBenchArgs {
    /// Model shapes to measure: tiny, smollm2-135m (comma-separated)
    #[arg(long, default_value = "tiny,smollm2-135m")]
    shapes: String,
    /// Decode batch size
    #[arg(long, default_value_t = 32)]
    decode_batch: usize,
    /// New tokens per sequence when decoding
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Sequences × tokens for the forward and forward+backward measurements
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    #[command(flatten)]
    device: DeviceArg,
}

#[derive(Args)]
struct DeviceArg {
    /// cpu or cuda
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn shape(name: &str) -> Result<ModelConfig> {
    match lm::testing::named_shape(name) {
        Some(c) => Ok(c),
        None => bail!("unknown shape {name:?} (expected tiny or smollm2-135m)"),
    }
}

fn time<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t = Instant::now();
    let r = f()?;
    Ok((r, t.elapsed().as_secs_f64()))
}

pub fn lm(a: LmBenchArgs) -> Result<()> {
    let dev = match a.device.device.as_str() {
        "cpu" => candle_core::Device::Cpu,
        "cuda" => candle_core::Device::new_cuda(0)?,
        o => bail!("--device {o:?}: expected cpu or cuda"),
    };
    println!("activepref bench lm — device {}, {} threads", a.device.device, candle_core::utils::get_num_threads());
    println!("{:<14} {:<30} {:>14} {:>18} {:>8}", "shape", "measure", "tokens/s", "baseline tokens/s", "ratio");
    for name in a.shapes.split(',') {
        let cfg = shape(name.trim())?;
        let tok = lm::tokenizer::Tokenizer::byte_level_for_tests(cfg.vocab_size)?;
        let mut model = LanguageModel::random(cfg.clone(), tok, 0, DType::F32, &dev)?;
        let ids: Vec<u32> = (0..a.batch * a.seq_len).map(|i| (i * 7919 % cfg.vocab_size) as u32).collect();
        let input = Tensor::from_vec(ids, (a.batch, a.seq_len), &dev)?;
        let fwd_tokens = (a.batch * a.seq_len) as f64;
        // Warm up once (allocations, thread pool).
        model.forward(&input)?;
        let (_, t_fwd) = time(|| Ok(model.forward(&input)?.sum_all()?.to_scalar::<f32>()?))?;

        // Decode without a graph.
        let prompts: Vec<Vec<u32>> = (0..a.decode_batch)
            .map(|i| (0..16).map(|j| ((i * 31 + j * 17) % cfg.vocab_size) as u32).collect())
            .collect();
        let params = SampleParams {
            max_new_tokens: a.decode_tokens,
            temperature: 1.0,
            stop_at_eos: false,
            ..Default::default()
        };
        // Decode rate excludes the prompt's prefill: time N new tokens and 1 new token, take the difference.
        let decode_rate = |model: &LanguageModel| -> Result<(f64, f64)> {
            let one = SampleParams { max_new_tokens: 1, ..params.clone() };
            let (_, t1) = time(|| generate(model, &prompts, &one, None, a.decode_batch, 0, |_| {}))?;
            let (s, tn) = time(|| generate(model, &prompts, &params, None, a.decode_batch, 0, |_| {}))?;
            let n: usize = s.iter().map(|x| x.tokens.len()).sum();
            Ok(((n - prompts.len()) as f64 / (tn - t1), n as f64 / tn))
        };
        let (dec, dec_e2e) = decode_rate(&model)?;

        // The same work with trainable weights: every op builds the autograd graph.
        let vars = model.make_trainable(|_| true)?;
        let (_, t_fwd_graph) = time(|| Ok(model.forward(&input)?.sum_all()?.to_scalar::<f32>()?))?;
        let (_, t_bwd) = time(|| {
            let items: Vec<(Vec<u32>, Vec<u32>)> = (0..a.batch)
                .map(|b| {
                    let row: Vec<u32> =
                        (0..a.seq_len).map(|i| ((b * 131 + i * 7919) % cfg.vocab_size) as u32).collect();
                    (row[..a.seq_len / 2].to_vec(), row[a.seq_len / 2..].to_vec())
                })
                .collect();
            let s = lm::score::completion_logprobs(&model, &items)?;
            let grads = s.sum.sum_all()?.backward()?;
            Ok(vars.values().filter(|v| grads.get(v.as_tensor()).is_some()).count())
        })?;
        let (dec_graph, dec_e2e_graph) = decode_rate(&model)?;

        let row = |m: &str, v: f64, base: Option<f64>| {
            let (b, r) =
                base.map(|b| (format!("{b:.0}"), format!("{:.2}x", v / b))).unwrap_or(("-".into(), "-".into()));
            println!("{:<14} {:<30} {:>14.0} {:>18} {:>8}", name, m, v, b, r);
        };
        row(&format!("forward {}x{}", a.batch, a.seq_len), fwd_tokens / t_fwd, Some(fwd_tokens / t_fwd_graph));
        row(&format!("fwd+bwd {}x{}", a.batch, a.seq_len), fwd_tokens / t_bwd, None);
        row(&format!("decode batch {}", a.decode_batch), dec, Some(dec_graph));
        row(&format!("generate batch {} (+prefill)", a.decode_batch), dec_e2e, Some(dec_e2e_graph));
    }
    println!("baseline = the same work with trainable weights (autograd graph built, differentiable ops)");
    Ok(())
}
