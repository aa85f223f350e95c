//! Evaluation: the win rate of a round's policy against the starting model on the held-out prompts, judged
//! by the oracle (Muldrew et al. 2024 §4; docs/algorithm.md#evaluation).
//!
//! Both models sample one completion per held-out prompt at `generation.eval_temperature`; the starting
//! model's samples are drawn once and reused by every round. Completion 0 of each question is the policy's,
//! 1 the starting model's; identical completions are a tie without asking, counted as `eval.no_answer` says.
//! Lengths and random streams come from `eval.split_seed`, not the run seed (common random numbers): the
//! baseline samples are the same in every run of an experiment and every round, so outcomes pair across
//! rounds, strategies and seeds. Samples are stored before any
//! question is asked and each judgment is committed as it arrives, so an evaluation cut short resumes with
//! the same samples and asks only what is left.

use crate::acquire::lengths;
use crate::backend::PolicyBackend;
use crate::config::{ActiveConfig, NoAnswer};
use crate::event::Event;
use crate::results::win_rate;
use crate::seed::stream::{EVAL, EVAL_LENGTHS};
use crate::seed::{rng_for, seed_for};
use crate::store::Store;
use anyhow::{bail, Result};
use lm::sample::SampleParams;
use oracle::{Comparison, Oracle};
use std::collections::{HashMap, HashSet};

/// What an evaluation needs: the run (config, store), where its models sample, and the judge.
pub struct Evaluation<'a> {
    pub cfg: &'a ActiveConfig,
    pub store: &'a mut Store,
    /// The starting model and each round's policy.
    pub backend: &'a dyn PolicyBackend,
    /// `None` when the run's oracle is a person and no evaluation oracle is configured.
    pub oracle: Option<&'a mut dyn Oracle>,
    pub events: &'a mut dyn FnMut(Event),
}

impl Evaluation<'_> {
    /// Samples (once), judges what is not judged yet, and reports the round's win rate.
    pub fn run(self, round: usize) -> Result<()> {
        let Evaluation { cfg, store, backend, oracle, events } = self;
        let prompts = store.prompts("eval")?;
        let done = store.judgments(round)?.len();
        if done == prompts.len() {
            return Ok(());
        }
        events(Event::Stage(format!("round {round}: evaluating on {} held-out prompts", prompts.len())));
        let g = &cfg.generation;
        // Common random numbers: lengths and sampling streams come from the split seed, so every run of an
        // experiment has the same baseline samples and its policies draw with the same random numbers.
        let split = cfg.eval.split_seed;
        let lens = lengths(cfg, prompts.len(), &mut rng_for(split, &[EVAL_LENGTHS]));
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.tokens.clone()).collect();
        for r in [0, round] {
            if !store.eval_samples(r)?.is_empty() {
                continue;
            }
            let model = backend.policy(r)?;
            let params = SampleParams {
                max_new_tokens: g.max_new_tokens,
                temperature: g.eval_temperature,
                top_k: 0,
                top_p: 1.0,
                seed: seed_for(split, &[EVAL, r as u64]),
                stop_at_eos: true,
            };
            let what = if r == 0 { "baseline samples".to_string() } else { format!("round {r} samples") };
            let total = ids.len();
            let samples = model.generate(&ids, &params, Some(&lens), g.batch_size, &mut |d| {
                events(Event::Progress { what: what.clone(), done: d, total })
            })?;
            let tok = model.tokenizer();
            let rows: Vec<(i64, String)> = prompts
                .iter()
                .zip(&samples)
                .map(|(p, s)| {
                    let plain: Vec<u32> = s.tokens.iter().copied().filter(|&t| !tok.is_eos(t)).collect();
                    Ok((p.id, tok.decode(&plain, true)?))
                })
                .collect::<Result<_>>()?;
            store.insert_eval_samples(r, &rows)?;
        }
        let base_samples: HashMap<i64, String> = store.eval_samples(0)?.into_iter().collect();
        let judged: HashSet<i64> = store.judgments(round)?.into_iter().map(|j| j.prompt_id).collect();
        let text: HashMap<i64, String> = prompts.iter().map(|p| (p.id, p.text.clone())).collect();
        let samples = store.eval_samples(round)?;
        let no_answer = if cfg.eval.no_answer == NoAnswer::Half { 0.5 } else { 0.0 };
        let total = samples.len();
        let Some(oracle) = oracle else {
            bail!("a human-labelled run needs an evaluation oracle (eval.oracle in the config)")
        };
        let name = oracle.name();
        let mut judged_now = judged.len();
        // Completion 0 is the policy's, 1 the starting model's; `asked[i]` is the prompt of `questions[i]`.
        let (mut asked, mut questions) = (Vec::new(), Vec::new());
        for (pid, policy) in samples.iter().filter(|(pid, _)| !judged.contains(pid)) {
            let baseline = &base_samples[pid];
            if policy == baseline {
                // A tie without asking: it counts as the oracle's no-answer does (`eval.no_answer`).
                store.record_judgment(round, *pid, no_answer, &name, "identical completions: not asked")?;
                judged_now += 1;
            } else {
                asked.push(*pid);
                questions
                    .push(Comparison { prompt: text[pid].clone(), completions: [policy.clone(), baseline.clone()] });
            }
        }
        let store_ref: &Store = store;
        oracle.compare_each(&questions, &mut |i, a| {
            let win = a.preferred.map(|p| if p == 0 { 1.0 } else { 0.0 }).unwrap_or(no_answer);
            store_ref.record_judgment(round, asked[i], win, &name, &a.raw)?;
            judged_now += 1;
            events(Event::Progress { what: "judging".into(), done: judged_now, total });
            Ok(())
        })?;
        let labels = store.rounds()?.into_iter().find(|t| t.round == round).map_or(0, |t| t.labels);
        if let Some((w, se, _)) = win_rate(store, round)? {
            events(Event::Info(format!(
                "round {round}: win rate vs the starting model {:.1}% ± {:.1} ({labels} labels, {} prompts)",
                100.0 * w,
                100.0 * se,
                prompts.len()
            )));
        }
        Ok(())
    }
}
