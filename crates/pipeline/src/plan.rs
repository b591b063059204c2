//! Run plan and run state.

/// Azure's result names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RunResult {
    Succeeded,
    SucceededWithIssues,
    Failed,
    Canceled,
    Skipped,
}

impl RunResult {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunResult::Succeeded => "Succeeded",
            RunResult::SucceededWithIssues => "SucceededWithIssues",
            RunResult::Failed => "Failed",
            RunResult::Canceled => "Canceled",
            RunResult::Skipped => "Skipped",
        }
    }
}
