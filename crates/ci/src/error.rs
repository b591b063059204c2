//! The service's errors. The HTTP front end maps each to a status and an ARM-style code
//! (`api::error`); messages never repeat their source (print them with `control::error_chain`).
use pipeline::git::GitError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CiError {
    /// Creating the service's directories or the `az` shim.
    #[error("cannot create {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `SCALESET_PIPELINE_PROVIDER=azure` without a usable subscription.
    #[error("SCALESET_PIPELINE_PROVIDER=azure")]
    AzureProvider(#[source] azure::AzureError),
    #[error("SCALESET_PIPELINE_PROVIDER `{0}`: expected local or azure")]
    UnknownProvider(String),
    #[error("repository `{0}` does not exist")]
    NoRepository(String),
    #[error("repository `{0}` already exists")]
    RepositoryExists(String),
    /// A repository operation (names, creation, refs).
    #[error(transparent)]
    Git(#[from] GitError),
    /// Cloning a new mirror.
    #[error(transparent)]
    Mirror(GitError),
    /// Fetching a mirror its webhook called for.
    #[error(transparent)]
    MirrorFetch(GitError),
    #[error("pipeline `{0}` does not exist (pipelines come from azure-pipelines.yml and *pipeline*.yml files on a repository's default branch; see `scaleset pipeline list`)")]
    NoPipeline(String),
    #[error("repository `{repo}` has no branch `{branch}`")]
    NoBranch { repo: String, branch: String },
    #[error("run {0} does not exist")]
    NoRun(u64),
    #[error("run {0} already completed")]
    RunCompleted(u64),
    /// The run records (`pipeline::runner::RunStore`).
    #[error(transparent)]
    Runs(#[from] std::io::Error),
    /// Anything else that should not happen (a vanished record, a failed background task).
    #[error("{0}")]
    Internal(String),
}
