//! Test doubles for the loop, shared by the tests of `apl`, `serve` and the binary (as `lm::testing` is for
//! the model): an oracle with a real preference over the tiny model's byte gibberish, a loop configuration
//! sized for the tiny model, and prompt texts. Nothing here is used by a real run.

use crate::config::ActiveConfig;

/// A real (if simple) preference for the tiny random model's byte-level gibberish: prefers the text with
/// more letters `e`. Use it through `oracle::ScoreOracle(LetterE)`.
pub struct LetterE;

impl oracle::Scorer for LetterE {
    fn name(&self) -> String {
        "letter-e".into()
    }
    fn score(&self, text: &str) -> f64 {
        // Fewer ties than a bare count: a byte hash breaks most of them, so identical texts are the usual tie.
        let h = text.bytes().fold(7u64, |h, x| h.wrapping_mul(31).wrapping_add(x as u64));
        text.matches('e').count() as f64 + (h % 1000) as f64 / 2000.0
    }
}

/// `n` source texts long enough to cut prompts from (at least the tiny config's `min_source_tokens`).
pub fn movie_texts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("the movie number {i} was seen by everyone here, and then")).collect()
}

/// A loop configuration sized for `lm::testing::tiny_model`: prompts of 4–8 tokens, completions of 4–8
/// tokens sampled 8 at a time, 2 rounds, DPO batches of 2. Each test sets its own strategy, labels per
/// round, evaluation size and oracle.
pub fn tiny_config(seed: u64) -> ActiveConfig {
    let mut c = ActiveConfig { seed, ..Default::default() };
    c.prompts.min_tokens = 4;
    c.prompts.max_tokens = 8;
    c.prompts.min_source_tokens = 10;
    c.generation.min_new_tokens = 4;
    c.generation.max_new_tokens = 8;
    c.generation.batch_size = 8;
    c.rounds.rounds = 2;
    c.train.batch_size = 2;
    c
}

/// [`tiny_config`] set up for a whole run that finishes in seconds: over-generation and over-sampling 2, 2
/// entropy samples, 4 labels a round, 6 held-out prompts, LoRA r 2 on every linear layer, 2 epochs with a
/// checkpoint every step (so a stop mid-training resumes from one).
pub fn tiny_run_config(seed: u64) -> ActiveConfig {
    let mut c = tiny_config(seed);
    c.acquisition.over_generate_factor = 2;
    c.acquisition.over_sample_prompts_factor = 2;
    c.acquisition.entropy_samples = 2;
    c.rounds.labels_per_round = 4;
    c.eval.prompts = 6;
    c.train.epochs = 2;
    c.train.save_steps = Some(1);
    c.train.learning_rate = 2e-3;
    c.train.lora = Some(dpo::train::LoraConfig { r: 2, alpha: 4.0, target_modules: vec!["all-linear".into()] });
    c
}
