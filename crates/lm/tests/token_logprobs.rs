//! `score::token_logprobs`, what a server returns as prompt and echo log-probs: the same numbers
//! `completion_logprobs` (the scorer and the trainer) gives per token, a correct rank and top list, and
//! no dependence on how sequences are batched.

use candle_core::DType;
use lm::score::{completion_logprobs, token_logprobs};
use lm::testing::{tiny_model, TINY_KINDS};

#[test]
fn per_token_logprobs_match_the_scorer_and_rank_and_top_are_right() {
    for kind in TINY_KINDS {
        let m = tiny_model(kind, 3, DType::F32).unwrap();
        let items = vec![(vec![5u32, 9, 40, 7], vec![11u32, 12, 250]), (vec![1u32], vec![2u32, 3, 4, 5, 6, 7])];
        let scored = completion_logprobs(&m, &items).unwrap();
        let per_token: Vec<Vec<f32>> = scored.tokens.to_vec2().unwrap();
        let seqs: Vec<Vec<u32>> = items.iter().map(|(p, c)| [p.clone(), c.clone()].concat()).collect();
        let from: Vec<usize> = items.iter().map(|(p, _)| p.len()).collect();
        for bs in [1, 2] {
            let got = token_logprobs(&m, &seqs, &from, 5, bs).unwrap();
            for (i, (_, c)) in items.iter().enumerate() {
                assert_eq!(got[i].len(), c.len());
                for (j, tl) in got[i].iter().enumerate() {
                    assert_eq!(tl.token, c[j]);
                    assert!(
                        (tl.logprob - per_token[i][j]).abs() < 1e-4,
                        "{kind}: {} vs {}",
                        tl.logprob,
                        per_token[i][j]
                    );
                    assert_eq!(tl.top.len(), 5);
                    assert!(tl.top.windows(2).all(|w| w[0].1 >= w[1].1), "top sorted");
                    // The rank places the token among the top list where it belongs.
                    match tl.top.iter().position(|&(t, _)| t == tl.token) {
                        Some(p) => assert_eq!(tl.rank, p + 1, "{kind}"),
                        None => assert!(tl.rank > 5 && tl.logprob <= tl.top[4].1),
                    }
                    let total: f32 = tl.top.iter().map(|&(_, l)| l.exp()).sum();
                    assert!(total <= 1.0 + 1e-5);
                }
            }
        }
        // From position 0: the first token has no log-prob, so it starts at 1.
        let all = token_logprobs(&m, &seqs[..1], &[0], 0, 1).unwrap();
        assert_eq!(all[0].len(), seqs[0].len() - 1);
        assert!(all[0].iter().all(|t| t.top.is_empty()));
    }
}
