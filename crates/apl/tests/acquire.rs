//! Acquisition on hand-made scores (selection, tie-breaking, stochastic batch acquisition, the entropy
//! window) and on a tiny random model (each strategy selects what its definition says).

use apl::acquire::{acquire, entropy_means, select, Models, PoolCursor};
use apl::config::{ActiveConfig, Selection, Strategy};
use apl::store::Prompt;
use candle_core::DType;
use lm::testing::tiny_model;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The start of a run's pass over its pool.
const START: PoolCursor = PoolCursor { seed: 0, drawn: 0 };

fn rng(s: u64) -> StdRng {
    StdRng::seed_from_u64(s)
}

#[test]
fn top_k_takes_the_highest_scores_best_first() {
    let s = [0.1, 5.0, -2.0, 3.0, 4.0, f64::NAN];
    assert_eq!(select(&s, 3, Selection::TopK, 1.0, &mut rng(0)), vec![1, 4, 3]);
    // k larger than the pool: everything, NaN last.
    let all = select(&s, 10, Selection::TopK, 1.0, &mut rng(0));
    assert_eq!(all, vec![1, 4, 3, 0, 2, 5]);
}

#[test]
fn ties_are_broken_by_the_seed_not_by_position() {
    // All scores equal (the first APL round: π = π_ref, every |Δr̂| = 0).
    let s = vec![0.0; 40];
    let a = select(&s, 5, Selection::TopK, 1.0, &mut rng(1));
    let b = select(&s, 5, Selection::TopK, 1.0, &mut rng(1));
    let c = select(&s, 5, Selection::TopK, 1.0, &mut rng(2));
    assert_eq!(a, b, "same seed, same choice");
    assert_ne!(a, c, "another seed, another choice");
    assert_ne!(a, vec![0, 1, 2, 3, 4], "not argsort's first-k");
    // Over many seeds every index gets picked sometimes (no positional bias).
    let mut hits = [0usize; 40];
    for seed in 0..400 {
        for i in select(&s, 5, Selection::TopK, 1.0, &mut rng(seed)) {
            hits[i] += 1;
        }
    }
    assert!(hits.iter().all(|&h| h > 10), "{hits:?}");
    // Ties only among equals: the strict best is always first.
    let mut s2 = vec![1.0; 10];
    s2[7] = 2.0;
    for seed in 0..20 {
        assert_eq!(select(&s2, 3, Selection::TopK, 1.0, &mut rng(seed))[0], 7);
    }
}

/// Frequency with which index 0 (the best of `s`) is among `k` picks over many seeds.
fn pick_rate(s: &[f64], k: usize, how: Selection, coldness: f64, i: usize) -> f64 {
    let n = 2000;
    (0..n).filter(|&seed| select(s, k, how, coldness, &mut rng(seed)).contains(&i)).count() as f64 / n as f64
}

#[test]
fn stochastic_selection_follows_its_distribution() {
    let s = [2.0_f64.ln(), 0.0, 0.0, 0.0];
    // Softmax with coldness 1, k = 1: p(0) = e^{ln 2} / (2 + 3) = 0.4.
    let p = pick_rate(&s, 1, Selection::Softmax, 1.0, 0);
    assert!((p - 0.4).abs() < 0.04, "softmax p = {p}");
    // Power: p_i ∝ s_i^β; s = [3, 1, 1, 1], β = 1 → p(0) = 0.5.
    let p = pick_rate(&[3.0, 1.0, 1.0, 1.0], 1, Selection::Power, 1.0, 0);
    assert!((p - 0.5).abs() < 0.04, "power p = {p}");
    // Softrank: p_i ∝ rank^-β; ranks 1..4, β = 1 → p(best) = 1 / (1 + 1/2 + 1/3 + 1/4) = 0.48.
    let p = pick_rate(&[4.0, 3.0, 2.0, 1.0], 1, Selection::Softrank, 1.0, 0);
    assert!((p - 0.48).abs() < 0.04, "softrank p = {p}");
    // Coldness 0 is uniform; a very cold selection is top-k.
    let p = pick_rate(&[9.0, 1.0, 1.0, 1.0], 1, Selection::Softmax, 0.0, 0);
    assert!((p - 0.25).abs() < 0.04, "uniform p = {p}");
    for how in [Selection::Softmax, Selection::Power, Selection::Softrank] {
        assert_eq!(select(&[1.0, 9.0, 3.0, 5.0], 2, how, 1e6, &mut rng(3)), vec![1, 3], "{how:?}");
    }
    // Sampling without replacement: k distinct indices.
    let picks = select(&[1.0; 20], 20, Selection::Softmax, 1.0, &mut rng(4));
    let mut sorted = picks.clone();
    sorted.sort();
    assert_eq!(sorted, (0..20).collect::<Vec<_>>());
}

#[test]
fn entropy_is_each_prompts_own_mean_and_the_bug_flag_reproduces_the_window() {
    // 3 prompts × n = 2 samples: prompt-major.
    let neg = [1.0, 3.0, 10.0, 20.0, 100.0, 300.0];
    assert_eq!(entropy_means(&neg, 2, false), vec![2.0, 15.0, 200.0]);
    // The released code: res[s] = sum(all[s:s+n]) / n.
    assert_eq!(entropy_means(&neg, 2, true), vec![2.0, 6.5, 15.0]);
}

fn pool(tok: &lm::Tokenizer, n: usize) -> Vec<Prompt> {
    (0..n)
        .map(|i| {
            let text = format!("prompt number {i} says");
            Prompt { id: i as i64 + 1, tokens: tok.encode_plain(&text).unwrap(), text }
        })
        .collect()
}

fn tiny_cfg(strategy: Strategy) -> ActiveConfig {
    let mut c = ActiveConfig::default();
    c.acquisition.strategy = strategy;
    c.acquisition.over_generate_factor = 3;
    c.acquisition.over_sample_prompts_factor = 2;
    c.acquisition.entropy_samples = 2;
    c.generation.min_new_tokens = 3;
    c.generation.max_new_tokens = 5;
    c.generation.batch_size = 8;
    c
}

#[test]
fn each_strategy_selects_what_it_says_on_a_tiny_model() {
    let reference = tiny_model("llama", 1, DType::F32).unwrap();
    // A different policy so implicit rewards are not all zero.
    let policy = tiny_model("llama", 2, DType::F32).unwrap();
    let models = Models { policy: &policy, reference: &reference, policy_is_reference: false, fixed_pairs: None };
    let p = pool(&reference.tokenizer, 60);
    let need = 4;
    for s in [
        Strategy::Random,
        Strategy::Offline,
        Strategy::Entropy,
        Strategy::Certainty,
        Strategy::Uncertainty,
        Strategy::Hybrid,
    ] {
        let cfg = tiny_cfg(s);
        let c = acquire(&cfg, &models, &p, START, need, 7, &mut |_, _, _| {}).unwrap();
        let sel: Vec<_> = c.iter().filter(|c| c.selected).collect();
        assert_eq!(sel.len(), need, "{s:?}");
        let expected_candidates = match s {
            Strategy::Random | Strategy::Offline | Strategy::Entropy => need,
            _ => need * 3,
        };
        assert_eq!(c.len(), expected_candidates, "{s:?}");
        for x in &c {
            assert!(x.tokens[0].len() >= 3 || x.tokens[0].last().is_some_and(|&t| reference.tokenizer.is_eos(t)));
            assert!(x.tokens[0].len() <= 5 && x.tokens[1].len() <= 5);
            assert!(x.logp[0].is_finite() && x.ref_logp[1].is_finite());
        }
        let beta = cfg.train.loss.beta;
        let unselected_max = |f: &dyn Fn(&apl::store::Candidate) -> f64| {
            c.iter().filter(|x| !x.selected).map(f).fold(f64::NEG_INFINITY, f64::max)
        };
        let selected_min =
            |f: &dyn Fn(&apl::store::Candidate) -> f64| sel.iter().map(|x| f(x)).fold(f64::INFINITY, f64::min);
        match s {
            Strategy::Certainty | Strategy::Hybrid => {
                let d = |x: &apl::store::Candidate| (beta * x.log_ratio_diff()).abs();
                assert!(selected_min(&d) >= unselected_max(&d), "{s:?} kept a less certain pair");
            }
            Strategy::Uncertainty => {
                let d = |x: &apl::store::Candidate| -(beta * x.log_ratio_diff()).abs();
                assert!(selected_min(&d) >= unselected_max(&d), "uncertainty kept a more certain pair");
            }
            _ => {}
        }
        if matches!(s, Strategy::Entropy | Strategy::Hybrid) {
            assert!(c.iter().all(|x| x.entropy.is_some_and(|h| h > 0.0)), "{s:?}");
        }
        // Same seed, same acquisition.
        let again = acquire(&cfg, &models, &p, START, need, 7, &mut |_, _, _| {}).unwrap();
        assert_eq!(c, again, "{s:?} is not deterministic");
    }
    // Offline pairs come from the reference: its pairs differ from the policy's for the same prompts.
    let on = acquire(&tiny_cfg(Strategy::Random), &models, &p, START, need, 9, &mut |_, _, _| {}).unwrap();
    let off = acquire(&tiny_cfg(Strategy::Offline), &models, &p, START, need, 9, &mut |_, _, _| {}).unwrap();
    assert_eq!(on.iter().map(|c| c.prompt_id).collect::<Vec<_>>(), off.iter().map(|c| c.prompt_id).collect::<Vec<_>>());
    assert_ne!(on.iter().map(|c| &c.tokens).collect::<Vec<_>>(), off.iter().map(|c| &c.tokens).collect::<Vec<_>>());
}

#[test]
fn the_entropy_filter_keeps_the_highest_entropy_prompts() {
    let m = tiny_model("gpt2", 3, DType::F32).unwrap();
    let p = pool(&m.tokenizer, 30);
    let cfg = tiny_cfg(Strategy::Entropy);
    let refs: Vec<&Prompt> = p.iter().collect();
    let h = apl::acquire::estimate_entropy(&cfg, &m, &refs, 11, &mut |_, _, _| {}).unwrap();
    assert_eq!(h.len(), p.len());
    let models = Models { policy: &m, reference: &m, policy_is_reference: true, fixed_pairs: None };
    let c = acquire(&cfg, &models, &p, START, 5, 0, &mut |_, _, _| {}).unwrap();
    // The entropies stored with the selected prompts are the top of what was estimated for the draw.
    let kept: Vec<f64> = c.iter().map(|x| x.entropy.unwrap()).collect();
    assert!(kept.windows(2).all(|w| w[0] >= w[1]), "best first: {kept:?}");
    // With π = π_ref every implicit reward difference is exactly zero.
    assert!(c.iter().all(|x| x.log_ratio_diff() == 0.0));
}

#[test]
fn a_draw_larger_than_the_pool_repeats_prompts_and_an_empty_pool_is_an_error() {
    let m = tiny_model("llama", 1, DType::F32).unwrap();
    let p = pool(&m.tokenizer, 5);
    let models = Models { policy: &m, reference: &m, policy_is_reference: true, fixed_pairs: None };
    // Certainty with ogf 3 draws 12 prompts from 5: every prompt at least twice, none more than thrice.
    let c = acquire(&tiny_cfg(Strategy::Certainty), &models, &p, START, 4, 0, &mut |_, _, _| {}).unwrap();
    assert_eq!(c.len(), 12);
    for id in 1..=5 {
        let n = c.iter().filter(|x| x.prompt_id == id).count();
        assert!((2..=3).contains(&n), "prompt {id} drawn {n} times");
    }
    let e = acquire(&tiny_cfg(Strategy::Random), &models, &[], START, 4, 0, &mut |_, _, _| {}).unwrap_err();
    assert!(e.to_string().contains("pool is empty"), "{e}");
}

fn acquisition(strategy: Strategy, selection: Selection, coldness: f64) -> apl::config::AcquisitionConfig {
    apl::config::AcquisitionConfig { strategy, selection, coldness, ..Default::default() }
}

#[test]
fn the_hybrid_entropy_stage_keeps_exactly_the_top_k_of_its_draw() {
    use apl::acquire::entropy_stage;
    // Twelve drawn prompts with known entropies (one NaN: an estimate that went wrong ranks last).
    let h = [0.3, 2.5, 1.0, 9.0, -1.0, 4.0, 0.7, 3.3, f64::NAN, 5.5, 0.0, 2.0];
    let best_first = [3, 9, 5, 7, 1, 11, 2, 6, 0, 10, 4, 8];
    // Whatever the configured selection (stochastic selection acts on the certainty stage only; coldness 0
    // would make the stage uniformly random if it applied here), and whatever the seed.
    for how in [Selection::TopK, Selection::Softmax, Selection::Power, Selection::Softrank] {
        let a = acquisition(Strategy::Hybrid, how, 0.0);
        for seed in 0..20 {
            // Every k from 1 to the whole draw: exactly the k highest, best first.
            for k in 1..=h.len() {
                assert_eq!(entropy_stage(&a, &h, k, &mut rng(seed)), best_first[..k], "{how:?} k = {k} seed {seed}");
            }
            // A draw smaller than k (a preference file's pool running out) is kept whole; k = 0 keeps nothing.
            assert_eq!(entropy_stage(&a, &h, 20, &mut rng(seed)), best_first);
            assert_eq!(entropy_stage(&a, &h[..3], 5, &mut rng(seed)), vec![1, 2, 0]);
            assert!(entropy_stage(&a, &h, 0, &mut rng(seed)).is_empty());
        }
    }
    // Ties: equal entropies are ordered by a seeded shuffle, so at the cut the seed (never the position in
    // the draw) chooses which of them is kept; entropies strictly above the cut are always kept.
    let a = acquisition(Strategy::Hybrid, Selection::TopK, 1.0);
    let t = [1.0, 3.0, 2.0, 3.0, 3.0, 0.5];
    let mut kept = [0usize; 6];
    for seed in 0..200 {
        let k2 = entropy_stage(&a, &t, 2, &mut rng(seed));
        assert_eq!(k2, entropy_stage(&a, &t, 2, &mut rng(seed)), "same seed, same choice");
        assert!(k2.len() == 2 && k2.iter().all(|i| [1, 3, 4].contains(i)), "{k2:?}");
        for i in k2 {
            kept[i] += 1;
        }
        let mut k4 = entropy_stage(&a, &t, 4, &mut rng(seed));
        assert_eq!(k4[3], 2, "the 2.0 comes after the three 3.0s");
        k4.sort();
        assert_eq!(k4, vec![1, 2, 3, 4]);
    }
    assert!(kept[1] > 80 && kept[3] > 80 && kept[4] > 80, "every tied prompt is kept sometimes: {kept:?}");
    // The contrast: for the entropy strategy this stage is the last one, so its stochastic selection applies.
    let e = acquisition(Strategy::Entropy, Selection::Softmax, 0.0);
    assert!((0..20).any(|s| entropy_stage(&e, &h, 3, &mut rng(s)) != best_first[..3]));
}

#[test]
fn a_hybrid_acquisition_keeps_the_top_entropy_prompts_of_its_own_draw() {
    use apl::seed::seed_for;
    let reference = tiny_model("llama", 1, DType::F32).unwrap();
    let policy = tiny_model("llama", 2, DType::F32).unwrap();
    let models = Models { policy: &policy, reference: &reference, policy_is_reference: false, fixed_pairs: None };
    let p = pool(&reference.tokenizer, 40);
    // ogf 3, ospf 2: 3 labels → 18 prompts drawn, the 9 of highest entropy kept, then 3 pairs selected. A
    // uniformly random last stage (coldness 0) must not leak into the entropy stage.
    let mut cfg = tiny_cfg(Strategy::Hybrid);
    cfg.acquisition.selection = Selection::Softmax;
    cfg.acquisition.coldness = 0.0;
    let (need, seed) = (3, 21);
    let c = acquire(&cfg, &models, &p, START, need, seed, &mut |_, _, _| {}).unwrap();
    // The draw as `acquire` makes it (the next 18 prompts of the run's pass over the pool) and its entropies as
    // `acquire` estimates them (stream (seed, 1)); update these two lines with it.
    let drawn: Vec<&Prompt> = START.take(&p, 18);
    let h = apl::acquire::estimate_entropy(&cfg, &policy, &drawn, seed_for(seed, &[1]), &mut |_, _, _| {}).unwrap();
    let mut order: Vec<usize> = (0..drawn.len()).collect();
    order.sort_by(|&a, &b| h[b].total_cmp(&h[a]));
    let want: Vec<(i64, f64)> = order[..9].iter().map(|&i| (drawn[i].id, h[i])).collect();
    let got: Vec<(i64, f64)> = c.iter().map(|x| (x.prompt_id, x.entropy.unwrap())).collect();
    assert_eq!(got, want, "the hybrid kept other prompts than the top 9 of its draw by entropy");
    // The cut is real: the 9 left out all have lower entropy than the 9 kept.
    assert!(h[order[8]] > h[order[9]]);
    assert_eq!(c.iter().filter(|x| x.selected).count(), need);
}

#[test]
fn a_hybrid_draw_smaller_than_its_entropy_stage_keeps_every_prompt() {
    let m = tiny_model("llama", 1, DType::F32).unwrap();
    let p = pool(&m.tokenizer, 4);
    let fixed: std::collections::HashMap<String, Vec<[String; 2]>> =
        p.iter().map(|x| (x.text.clone(), vec![[" one".to_string(), " two".to_string()]])).collect();
    let models = Models { policy: &m, reference: &m, policy_is_reference: true, fixed_pairs: Some(&fixed) };
    let cfg = tiny_cfg(Strategy::Hybrid);
    // 2 labels: the entropy stage wants 6 of 12 prompts, the file has 4 left: all 4 kept, each once, then
    // the certainty stage selects 2.
    let c = acquire(&cfg, &models, &p, START, 2, 0, &mut |_, _, _| {}).unwrap();
    let mut ids: Vec<i64> = c.iter().map(|x| x.prompt_id).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3, 4]);
    assert_eq!(c.iter().filter(|x| x.selected).count(), 2);
    // Fewer prompts than labels: the one there is, selected (the loop acquires again or stops with a message).
    let c = acquire(&cfg, &models, &p[..1], START, 2, 0, &mut |_, _, _| {}).unwrap();
    assert_eq!((c.len(), c[0].selected), (1, true));
}

/// Acquisitions go through the pool in one seeded order, as the released code's prompt loader does: no prompt
/// is drawn twice until every prompt has been drawn, a later draw goes on where the earlier ones stopped, and
/// the next pass over the pool is in a new order.
#[test]
fn draws_go_through_the_pool_before_any_prompt_repeats() {
    let pool: Vec<Prompt> =
        (0..10).map(|i| Prompt { id: i, text: format!("p{i}"), tokens: vec![i as u32 + 1] }).collect();
    let ids = |c: PoolCursor, k: usize| -> Vec<i64> { c.take(&pool, k).iter().map(|p| p.id).collect() };
    let first = ids(PoolCursor { seed: 3, drawn: 0 }, 10);
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(sorted, (0..10).collect::<Vec<_>>(), "one pass draws every prompt once");
    assert_ne!(first, (0..10).collect::<Vec<_>>(), "in a shuffled order");
    // Three draws of 4, 4 and 2 are the same pass, in order.
    let parts: Vec<i64> =
        [(0, 4), (4, 4), (8, 2)].iter().flat_map(|&(drawn, k)| ids(PoolCursor { seed: 3, drawn }, k)).collect();
    assert_eq!(parts, first);
    // The second pass: every prompt again, in another order; a draw across the boundary spans both.
    let second = ids(PoolCursor { seed: 3, drawn: 10 }, 10);
    assert_ne!(second, first);
    let across = ids(PoolCursor { seed: 3, drawn: 7 }, 6);
    assert_eq!(across, [&first[7..], &second[..3]].concat());
    // Another run seed, another order.
    assert_ne!(ids(PoolCursor { seed: 4, drawn: 0 }, 10), first);
}

/// In the first round (π = π_ref) the pair stage needs no scores: every Δr̂ is exactly 0, the choice is the
/// seeded one, and only the chosen pairs go through the reference (their log-probs are what training
/// reuses); the others keep their sampled log-probs on both sides.
#[test]
fn the_first_round_scores_only_the_chosen_pairs() {
    let m = tiny_model("llama", 1, DType::F32).unwrap();
    let p = pool(&m.tokenizer, 40);
    let models = Models { policy: &m, reference: &m, policy_is_reference: true, fixed_pairs: None };
    let cfg = tiny_cfg(Strategy::Certainty);
    let c = acquire(&cfg, &models, &p, START, 4, 3, &mut |_, _, _| {}).unwrap();
    assert_eq!(c.len(), 12);
    assert!(c.iter().all(|x| x.log_ratio_diff() == 0.0 && x.logp == x.ref_logp));
    let chosen: Vec<&apl::store::Candidate> = c.iter().filter(|x| x.selected).collect();
    assert_eq!(chosen.len(), 4);
    // The chosen pairs' reference log-probs are a forward pass's, exactly.
    let items: Vec<(Vec<u32>, Vec<u32>)> =
        chosen.iter().flat_map(|x| x.tokens.iter().map(|t| (x.prompt_tokens.clone(), t.clone()))).collect();
    let scored = lm::score::score_all(&m, &items, cfg.generation.batch_size, |_| {}).unwrap();
    for (x, s) in chosen.iter().zip(scored.chunks(2)) {
        assert_eq!(x.ref_logp, [s[0].0, s[1].0]);
    }
    // Another seed, another choice.
    let d = acquire(&cfg, &models, &p, START, 4, 4, &mut |_, _, _| {}).unwrap();
    let ids = |v: &[apl::store::Candidate]| v.iter().filter(|x| x.selected).map(|x| x.prompt_id).collect::<Vec<_>>();
    assert_ne!(ids(&c), ids(&d));
}
