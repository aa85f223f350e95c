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
