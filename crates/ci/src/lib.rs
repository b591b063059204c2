//! The CI service: hosted repositories, pipelines and runs (what the daemon serves under
//! `/scaleset/...`; the api crate is its HTTP front end, and this crate knows no HTTP).
//!
//! - Repositories live in `$SCALESET_HOME/repos`: hosted ones (pushed to over git smart HTTP)
//!   and mirrors of a remote repository (fetched when its webhook says refs moved). Pushes to
//!   one repository are serialized ([`PipelineService::begin_push`]); each updated ref is
//!   matched against the repository's pipelines and the matching runs are queued. The push's
//!   notes name the queued runs (or say that no pipeline matched) and are kept as the
//!   repository's last push ([`PipelineService::last_push`]).
//! - Pipelines of a repository (the naming rule): at a commit, the top-level
//!   `azure-pipelines.yml`/`.yaml` is the pipeline named `<repo>`; every other top-level
//!   `*.yml`/`*.yaml` whose file name contains `pipeline`, and every `*.yml`/`*.yaml` directly
//!   under `pipelines/`, is the pipeline `<repo>-<file stem>` (e.g. `release-pipeline.yml` in
//!   repo `app` is `app-release-pipeline`). Release pipelines refer to CI pipelines by these names
//!   in `resources.pipelines[].source`.
//! - Runs execute one at a time on a background task ([`PipelineService::start`]); each
//!   completed run queues the release runs its success triggers (`resources.pipelines`).
//!   Records (SQLite) and logs live in `$SCALESET_HOME/pipelines/runs` and survive restarts
//!   (runs interrupted by a restart are completed as failed at start).
//! - Each run gets its own ARM credential ([`RunTokens`]) for the `az` shim, revoked when the
//!   run ends; PackerBuild@1 bakes into the daemon's image store and AzureVmssDeployment@1 sets
//!   a scale set's image through the control plane, or, with `SCALESET_PIPELINE_PROVIDER=azure`,
//!   both act on a real Azure subscription.
//!
//! Modules: `service` (the service, its directories, definitions, the queue), `ops` (what the
//! front end asks: repositories, runs, cancel), `push` (pushes, webhooks, catch-up at start),
//! `worker` (the run worker), `agent` (the runner user, tool mounts, cgroups), `tasks` (the
//! daemon's baker and scale sets), `provider` (the azure provider's tasks), `tokens`, `error`.
mod agent;
mod error;
mod ops;
mod provider;
mod push;
mod service;
mod tasks;
mod tokens;
mod worker;

pub use error::CiError;
pub use push::Push;
pub use service::{CiConfig, PipelineService};
pub use tokens::RunTokens;
