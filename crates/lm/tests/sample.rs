//! Sampling with a watcher: `generate_watched` sees every token as it is sampled, and a row it ends stops
//! there while the other rows sample exactly what `generate` samples.

use candle_core::DType;
use lm::sample::{generate, generate_watched, SampleParams};
use lm::testing::tiny_model;

#[test]
fn a_watcher_sees_every_token_and_ending_a_row_leaves_the_others_alone() {
    let model = tiny_model("llama", 5, DType::F32).unwrap();
    let prompts: Vec<Vec<u32>> = (0..5u32).map(|i| vec![10 + i, 20, 30 + i]).collect();
    let params =
        SampleParams { max_new_tokens: 12, temperature: 1.0, top_k: 0, top_p: 1.0, seed: 9, stop_at_eos: false };
    let plain = generate(&model, &prompts, &params, None, 2, 0, |_| {}).unwrap();

    let mut seen: Vec<Vec<u32>> = vec![vec![]; prompts.len()];
    let watched = generate_watched(
        &model,
        &prompts,
        &params,
        None,
        2,
        0,
        |_| {},
        |i, s| {
            // The sample so far grows by one token per call.
            assert_eq!(s.tokens.len(), seen[i].len() + 1);
            seen[i].push(*s.tokens.last().unwrap());
            // Row 1 is ended after its 3rd token, row 4 after its 1st.
            !((i == 1 && s.tokens.len() == 3) || (i == 4 && s.tokens.len() == 1))
        },
    )
    .unwrap();
    for (i, (w, p)) in watched.iter().zip(&plain).enumerate() {
        assert_eq!(seen[i], w.tokens, "row {i}: the watcher saw other tokens than were returned");
        match i {
            1 => assert_eq!(w.tokens, p.tokens[..3]),
            4 => assert_eq!(w.tokens, p.tokens[..1]),
            _ => assert_eq!(w.tokens, p.tokens, "row {i} changed when other rows were ended"),
        }
    }
    assert_eq!(plain[0].tokens.len(), 12);
}

/// Rows with the same prompt share one prefill (the prompt's cache is copied to each row): every row samples
/// what it samples alone, with its own RNG stream, and its log-probs are those of a prefill of its own.
#[test]
fn samples_of_one_prompt_share_its_prefill_and_match_sampling_alone() {
    for arch in ["llama", "gpt2", "gemma3"] {
        let model = tiny_model(arch, 3, DType::F32).unwrap();
        // Two prompts of different lengths (left padding), three samples each, and a prompt on its own.
        let (p, q) = (vec![11u32, 12, 13, 14], vec![21u32, 22]);
        let prompts = vec![p.clone(), p.clone(), p.clone(), q.clone(), q.clone(), vec![5, 6, 7]];
        let params =
            SampleParams { max_new_tokens: 9, temperature: 1.0, top_k: 0, top_p: 1.0, seed: 4, stop_at_eos: false };
        let lens = [9, 5, 7, 9, 3, 6];
        let shared = generate(&model, &prompts, &params, Some(&lens), 8, 0, |_| {}).unwrap();
        for (i, s) in shared.iter().enumerate() {
            // Alone: a batch of one, with row i's RNG stream and length.
            let alone = generate(&model, &prompts[i..=i], &params, Some(&lens[i..=i]), 1, i, |_| {}).unwrap();
            assert_eq!(s.tokens, alone[0].tokens, "{arch} row {i}: sharing the prefill changed the sample");
            for (a, b) in s.logprobs.iter().zip(&alone[0].logprobs) {
                assert!((a - b).abs() < 1e-5, "{arch} row {i}: log-prob {a} shared vs {b} alone");
            }
        }
        // The rows of one prompt drew different samples (their own RNG streams).
        assert_ne!(shared[0].tokens, shared[1].tokens, "{arch}");
    }
}

/// The log-prob a sample carries (temperature 1, no filters) is what scoring the same tokens gives, whatever
/// temperature it was sampled at: acquisition reads the policy's log-probs off its samples instead of
/// scoring them again.
#[test]
fn a_samples_log_probs_are_its_scored_log_probs() {
    let model = tiny_model("llama", 8, DType::F32).unwrap();
    let prompts: Vec<Vec<u32>> = vec![vec![3, 4, 5, 6], vec![3, 4, 5, 6], vec![9, 10]];
    let params =
        SampleParams { max_new_tokens: 10, temperature: 0.7, top_k: 0, top_p: 1.0, seed: 1, stop_at_eos: true };
    let samples = generate(&model, &prompts, &params, None, 4, 0, |_| {}).unwrap();
    let items: Vec<(Vec<u32>, Vec<u32>)> =
        prompts.iter().zip(&samples).map(|(p, s)| (p.clone(), s.tokens.clone())).collect();
    let scored = lm::score::score_all(&model, &items, 4, |_| {}).unwrap();
    for (s, (sum, n)) in samples.iter().zip(&scored) {
        assert_eq!(*n, s.tokens.len());
        assert!((s.sum_logprob() - sum).abs() < 1e-4, "sampled {} vs scored {sum}", s.sum_logprob());
    }
}

/// The device draw (two-level running sum in f32, what CUDA runs) picks the host draw's token for the same
/// uniform number, save a draw within rounding of a boundary, and returns the same log-probability.
#[test]
fn the_device_draw_is_the_host_draw() {
    use lm::sample::{sample_with_logprob, SampleParams};
    use rand::{Rng, SeedableRng};
    let dev = candle_core::Device::Cpu;
    // A vocabulary that is not a multiple of the block, peaked and flat rows, two temperatures.
    let (b, v) = (96, 1000);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let logits: Vec<f32> =
        (0..b * v).map(|i| rng.random::<f32>() * if i / v % 3 == 0 { 12.0 } else { 3.0 } - 1.0).collect();
    let t = candle_core::Tensor::from_vec(logits.clone(), (b, v), &dev).unwrap();
    for temperature in [1.0, 0.7] {
        let p = SampleParams { temperature, ..Default::default() };
        let seeds: Vec<u64> = (0..b as u64).collect();
        let host: Vec<(u32, f32)> = seeds
            .iter()
            .map(|&s| {
                let mut r = rand::rngs::StdRng::seed_from_u64(s);
                sample_with_logprob(&logits[s as usize * v..(s as usize + 1) * v], &p, &mut r)
            })
            .collect();
        let u: Vec<f64> = seeds.iter().map(|&s| rand::rngs::StdRng::seed_from_u64(s).random::<f64>()).collect();
        let (toks, lps) = lm::sample_device::sample_rows(&t, &u, temperature).unwrap();
        let same = toks.iter().zip(&host).filter(|(a, h)| **a == h.0).count();
        assert!(same >= b - 2, "T = {temperature}: {same} of {b} draws agree");
        for (i, &tok) in toks.iter().enumerate() {
            assert!((tok as usize) < v);
            let want = {
                let row = &logits[i * v..(i + 1) * v];
                let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let lse = m + row.iter().map(|&x| (x - m).exp()).sum::<f32>().ln();
                row[tok as usize] - lse
            };
            assert!((lps[i] - want).abs() < 1e-4, "row {i}: log-prob {} vs {want}", lps[i]);
        }
    }
}

/// Whole generations with the device draw (what a CUDA model runs) sample what the host draw samples, row
/// for row, with the same log-probabilities: shared prefills, finished rows and several batches included.
#[test]
fn generating_with_the_device_draw_samples_what_the_host_samples() {
    for kind in ["llama", "gpt2"] {
        let m = tiny_model(kind, 5, DType::F32).unwrap();
        // Two prompts repeated (shared prefills), one alone; EOS stops rows early.
        let prompts: Vec<Vec<u32>> =
            [vec![72, 105], vec![72, 105], vec![87, 104, 121], vec![72, 105], vec![65]].into_iter().collect();
        for temperature in [1.0, 0.8] {
            let p = SampleParams { max_new_tokens: 12, temperature, seed: 3, ..Default::default() };
            let host = generate(&m, &prompts, &p, None, 3, 0, |_| {}).unwrap();
            let device = lm::sample::generate_device_draw(&m, &prompts, &p, 3).unwrap();
            let mut same_rows = 0;
            for (h, d) in host.iter().zip(&device) {
                if h.tokens == d.tokens {
                    same_rows += 1;
                    for (a, b) in h.logprobs.iter().zip(&d.logprobs) {
                        assert!((a - b).abs() < 1e-4, "{kind}: log-prob {a} vs {b}");
                    }
                }
            }
            assert!(same_rows >= prompts.len() - 1, "{kind}, T = {temperature}: {same_rows} rows agree");
        }
    }
}
