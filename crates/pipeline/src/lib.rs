//! Azure Pipelines YAML: parsing, expressions, conditions, trigger matching, the run plan and
//! a job executor.
//!
//! - [`parse`]: [`compile`]/[`parse_pipeline`] turn a pipeline file into a [`Pipeline`]
//!   (errors are [`YamlError`]s: `file:line:column: rule`). Supported subset: `trigger`
//!   (none / branch list / `{batch, branches, paths, tags}`), `pr` (ignored), `variables`
//!   (mapping and `- name/value/readonly` list; `group` and `template` are rejected),
//!   `parameters` (string/number/boolean with defaults and `values`), `resources.pipelines`,
//!   `pool` (recorded only), `stages`/`jobs`/`steps` and their implicit forms, `dependsOn`,
//!   `condition`, job `continueOnError`/`timeoutInMinutes`/`cancelTimeoutInMinutes`/
//!   `variables`/`workspace`, steps `script`, `bash`, `task`, `checkout: self|none`,
//!   `download` with `displayName`, `name`, `env`, `workingDirectory`, `continueOnError`,
//!   `timeoutInMinutes`, `retryCountOnTaskFailure`, `condition`, `enabled`, `failOnStderr`.
//!   `${{ parameters.x }}` / `${{ variables.x }}` expressions are replaced at compile time;
//!   `${{ if }}`/`each`, templates, `extends`, deployment jobs and `strategy` are rejected.
//! - [`expr`]: the expression language of conditions (never panics).
//! - [`vars`]: variables, `$(macro)` expansion, predefined variables, [`vars::Masker`], `##vso`
//!   logging commands.
//! - [`trigger`]: push and pipeline-resource trigger matching.
//! - [`plan`]: dependency order and [`plan::RunState`] (which jobs start next, which are skipped).
//! - [`exec`]: runs a job's steps with real processes; tasks go through [`exec::TaskRunner`].
//!
//! Runtime pieces around the engine (each module's docs say what the daemon wires):
//! - [`git`]: hosted bare repositories ([`git::RepoStore`]), smart HTTP through
//!   `git http-backend` ([`git::http_backend`]), ref-update detection, changed paths, checkout.
//! - [`artifacts`]: the content-addressed artifact store ([`artifacts::ArtifactStore`]).
//! - [`tasks`]: [`tasks::StdTasks`], the standard tasks, with the [`tasks::Baker`] and
//!   [`tasks::ScaleSets`] back ends the daemon injects.
//! - [`sandbox`]: the job sandbox: file operations for a job as the runner user beneath its
//!   workspace ([`sandbox::Workspace`], [`sandbox::as_user`]), and what job processes get
//!   before exec ([`sandbox::Jail`]); [`cgroup`]: one cgroup per run, killed as a whole.
//! - [`runner`]: whole runs ([`runner::Runner`]), durable records and logs
//!   ([`runner::RunStore`]), push and pipeline-resource trigger helpers.

pub mod artifacts;
/// One cgroup per run (the helpers are shared with machines, in `sys`).
pub mod cgroup {
    pub use sys::cgroup::*;
}
pub mod error;
pub mod exec;
pub mod expr;
pub mod git;
pub mod model;
pub mod parse;
pub mod plan;
pub mod runner;
pub mod sandbox;
pub mod tasks;
pub mod trigger;
pub mod vars;
pub mod webhook;
pub mod yaml;

pub use error::{Pos, YamlError};
pub use model::*;
pub use parse::{compile, parse_pipeline};
