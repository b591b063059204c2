//! The compiled pipeline: what [`crate::parse::compile`] returns.
//!
//! Implicit forms are made explicit: a top-level `steps:` becomes one job `__default` in one
//! stage `__default`, a top-level `jobs:` one stage `__default`. `dependsOn` is resolved (an
//! omitted `dependsOn` means the previous stage/job), and `${{ }}` template expressions are
//! already replaced. `$(macros)` are kept for run time.

use crate::error::Pos;
use crate::vars::Variables;

/// Name of the implicit stage or job.
pub const DEFAULT_NAME: &str = "__default";

#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// `name:` (the run-number format), if given.
    pub name: Option<String>,
    pub trigger: Trigger,
    /// Pipeline-level variables, in file order.
    pub variables: Variables,
    /// Parameters with their resolved values.
    pub parameters: Vec<Parameter>,
    pub resources: Resources,
    pub pool: Option<String>,
    pub stages: Vec<Stage>,
}

impl Pipeline {
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
    }

    /// Every step of every job, with its stage and job.
    pub fn steps(&self) -> impl Iterator<Item = (&Stage, &Job, &Step)> {
        self.stages.iter().flat_map(|s| {
            s.jobs
                .iter()
                .flat_map(move |j| j.steps.iter().map(move |st| (s, j, st)))
        })
    }
}

/// Include/exclude patterns (branches, paths or tags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

/// The CI (push) trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// `trigger: none` → false.
    pub enabled: bool,
    /// `batch: true`: while a run is in progress, pushes are batched into one next run.
    pub batch: bool,
    /// Empty = all branches.
    pub branches: Filter,
    /// Empty = any change.
    pub paths: Filter,
    /// Empty = tags do not trigger.
    pub tags: Filter,
}

impl Default for Trigger {
    /// No `trigger:` at all: every push to any branch triggers.
    fn default() -> Self {
        Trigger {
            enabled: true,
            batch: false,
            branches: Filter::default(),
            paths: Filter::default(),
            tags: Filter::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    String,
    Number,
    Boolean,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Parameter {
    pub name: String,
    pub display_name: Option<String>,
    pub ty: ParamType,
    pub default: Option<String>,
    /// Allowed values (empty = any).
    pub values: Vec<String>,
    /// The value used for this compile (given or default).
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub pipelines: Vec<PipelineResource>,
}

/// `resources.pipelines[]`: another pipeline whose runs this one consumes.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineResource {
    /// `pipeline:` — the alias used in `download:` and `resources.pipeline.<alias>`.
    pub alias: String,
    /// `source:` — the name of the other pipeline.
    pub source: String,
    pub project: Option<String>,
    /// Default branch whose runs are used for manual runs.
    pub branch: Option<String>,
    pub version: Option<String>,
    pub trigger: ResourceTrigger,
    pub pos: Pos,
}

/// When a completed run of the resource pipeline triggers this one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceTrigger {
    /// Omitted or `none` → false.
    pub enabled: bool,
    /// Branches of the source run (empty = any).
    pub branches: Filter,
    /// All these stages of the source run must have completed (empty = the whole run).
    pub stages: Vec<String>,
    /// All these tags must be on the source run.
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub name: String,
    pub display_name: Option<String>,
    /// Resolved dependencies (names of earlier stages).
    pub depends_on: Vec<String>,
    /// `None` = the default `succeeded()`.
    pub condition: Option<String>,
    pub variables: Variables,
    pub jobs: Vec<Job>,
    pub pos: Pos,
}

impl Stage {
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name.eq_ignore_ascii_case(name))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub name: String,
    pub display_name: Option<String>,
    /// Resolved dependencies (names of jobs in the same stage).
    pub depends_on: Vec<String>,
    pub condition: Option<String>,
    /// A failure of the job makes it SucceededWithIssues.
    pub continue_on_error: bool,
    /// 0 = no limit. Azure's default is 60.
    pub timeout_in_minutes: u32,
    pub cancel_timeout_in_minutes: Option<u32>,
    pub variables: Variables,
    pub pool: Option<String>,
    /// `workspace: { clean: outputs|resources|all }`.
    pub workspace_clean: Option<String>,
    pub steps: Vec<Step>,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub kind: StepKind,
    pub display_name: Option<String>,
    /// `name:` — reference name for output variables (`<name>.<var>`).
    pub name: Option<String>,
    /// Step environment, in file order (values may contain `$(macros)`).
    pub env: Vec<(String, String)>,
    pub working_directory: Option<String>,
    pub continue_on_error: bool,
    /// 0 = no limit.
    pub timeout_in_minutes: u32,
    pub retry_count_on_task_failure: u32,
    pub condition: Option<String>,
    pub enabled: bool,
    pub pos: Pos,
}

impl Step {
    /// The name shown in logs: displayName, else a default like Azure's (`Bash`, `CmdLine`,
    /// the task name).
    pub fn label(&self) -> String {
        if let Some(d) = &self.display_name {
            return d.clone();
        }
        match &self.kind {
            StepKind::Script { script, .. } | StepKind::Bash { script, .. } => {
                let first = script.lines().next().unwrap_or("").trim();
                let first: String = first.chars().take(60).collect();
                if matches!(self.kind, StepKind::Script { .. }) {
                    format!("CmdLine: {first}")
                } else {
                    format!("Bash: {first}")
                }
            }
            StepKind::Task { name, version, .. } => format!("{name}@{version}"),
            StepKind::Checkout { repository, .. } => format!("Checkout {repository}"),
            StepKind::Download { source, .. } => format!("Download {source}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// `script:` (Bash on Linux).
    Script {
        script: String,
        fail_on_stderr: bool,
    },
    /// `bash:`.
    Bash {
        script: String,
        fail_on_stderr: bool,
    },
    /// `task: Name@Major` with `inputs`, in file order (values may contain `$(macros)`).
    Task {
        name: String,
        version: u32,
        inputs: Vec<(String, String)>,
    },
    /// `checkout: self|none` (dispatched to the task runner as task `checkout`).
    Checkout {
        repository: String,
        clean: bool,
        path: Option<String>,
    },
    /// `download: current|<alias>|none` (dispatched to the task runner as task `download`).
    Download {
        source: String,
        artifact: Option<String>,
        patterns: Option<String>,
    },
}
