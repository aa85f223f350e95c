//! `activepref bench lm`: forward, forward+backward and decode throughput of the language-model core.

use super::{median_time, shape, time, DeviceArg};
use anyhow::Result;
use candle_core::{DType, Tensor};
use clap::Args;
use lm::sample::{generate, SampleParams};
use lm::LanguageModel;

#[derive(Args)]
pub struct LmBenchArgs {
    /// Model shapes to measure, comma-separated: tiny, gpt2-124m, smollm2-135m, qwen2.5-0.5b, tinyllama-1.1b
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
    /// Print one JSON line per measure instead of the table (for scripts/bench_compare.py)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArg,
}

pub fn lm(a: LmBenchArgs) -> Result<()> {
    let dev = a.device.open()?;
    if !a.json {
        println!("activepref bench lm — device {}, {} threads", a.device.device, candle_core::utils::get_num_threads());
        println!("{:<14} {:<30} {:>14} {:>18} {:>8}", "shape", "measure", "tokens/s", "baseline tokens/s", "ratio");
    }
    for name in a.shapes.split(',') {
        let cfg = shape(name.trim())?;
        let tok = lm::tokenizer::Tokenizer::byte_level_for_tests(cfg.vocab_size)?;
        let mut model = LanguageModel::random(cfg.clone(), tok, 0, DType::F32, &dev)?;
        let ids: Vec<u32> = (0..a.batch * a.seq_len).map(|i| (i * 7919 % cfg.vocab_size) as u32).collect();
        let input = Tensor::from_vec(ids, (a.batch, a.seq_len), &dev)?;
        let fwd_tokens = (a.batch * a.seq_len) as f64;
        let (_, t_fwd) = median_time(&dev, || Ok(model.forward(&input)?.sum_all()?.to_scalar::<f32>()?))?;

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
            let (_, t1) = time(&dev, || generate(model, &prompts, &one, None, a.decode_batch, 0, |_| {}))?;
            let (s, tn) = time(&dev, || generate(model, &prompts, &params, None, a.decode_batch, 0, |_| {}))?;
            let n: usize = s.iter().map(|x| x.tokens.len()).sum();
            Ok(((n - prompts.len()) as f64 / (tn - t1), n as f64 / tn))
        };
        let (dec, dec_e2e) = decode_rate(&model)?;

        // The same work with trainable weights: every op builds the autograd graph.
        let vars = model.make_trainable(|_| true)?;
        let (_, t_fwd_graph) = time(&dev, || Ok(model.forward(&input)?.sum_all()?.to_scalar::<f32>()?))?;
        // On candle's thread pool, as the trainers run a step.
        let (_, t_bwd) = median_time(&dev, || {
            dev.with_context(|| -> Result<usize> {
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
            })
        })?;

        if a.json {
            let line =
                |m: String, v: f64| println!("{}", serde_json::json!({"shape": name, "measure": m, "tokens_per_s": v}));
            line(format!("forward {}x{}", a.batch, a.seq_len), fwd_tokens / t_fwd);
            line(format!("fwd+bwd {}x{}", a.batch, a.seq_len), fwd_tokens / t_bwd);
            line(format!("decode batch {}", a.decode_batch), dec);
            line(format!("generate batch {} (+prefill)", a.decode_batch), dec_e2e);
            continue;
        }
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
    if !a.json {
        println!("baseline = the same work with trainable weights (autograd graph built, differentiable ops)");
    }
    Ok(())
}
