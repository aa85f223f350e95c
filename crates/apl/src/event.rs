//! What the loop tells its caller while it works: stages, progress within a stage, and facts worth a line.
//! The CLI draws progress bars from these; tests collect them to key a kill to a stage.

/// One thing the loop reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// A new stage begins, e.g. "round 2/3: acquiring 16 labels (hybrid)".
    Stage(String),
    /// Progress within a stage.
    Progress { what: String, done: usize, total: usize },
    /// A fact worth a line in the log.
    Info(String),
}
