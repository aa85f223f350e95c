//! Named random streams. Every random choice of a run draws from a stream derived from the run seed and
//! a path of integers (round, attempt, stage, ...), never from a shared RNG: a resumed run then makes the
//! same choices as an uninterrupted one, however far the killed run had got.

use rand::rngs::StdRng;
use rand::SeedableRng;

/// SplitMix64 finaliser: a well-mixed 64-bit function of its input.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of stream `path` under `seed`.
pub fn seed_for(seed: u64, path: &[u64]) -> u64 {
    path.iter().fold(mix(seed), |acc, &p| mix(acc ^ mix(p)))
}

/// The names of the loop's streams, the first element of every path. One list, so no two stages can share
/// a stream; fixed forever, since changing one changes every run's choices.
pub mod stream {
    /// Candidate sampling and selection, per (round, attempt).
    pub const ACQUIRE: u64 = 1;
    /// The DPO schedule and LoRA initialisation, per round.
    pub const TRAIN: u64 = 2;
    /// Evaluation samples, per round (0 = the starting model).
    pub const EVAL: u64 = 3;
    /// The completion lengths of the evaluation samples.
    pub const EVAL_LENGTHS: u64 = 4;
    /// The order acquisition draws the pool's prompts in, per pass over the pool.
    pub const POOL_ORDER: u64 = 5;
    /// The prompt pool: each source text's cut length.
    pub const POOL_CUT: u64 = 0x70;
    /// The prompt pool: the shuffle that splits it into acquisition and held-out prompts.
    pub const POOL_SHUFFLE: u64 = 0x71;
}

pub fn rng_for(seed: u64, path: &[u64]) -> StdRng {
    StdRng::seed_from_u64(seed_for(seed, path))
}
