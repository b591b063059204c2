//! The service: its directories, the `az` shim, pipeline definitions and the run queue.
use crate::provider::{azure_tasks, AzureTasks};
use crate::{CiError, RunTokens};
use pipeline::artifacts::ArtifactStore;
use pipeline::git::{self, RepoStore};
use pipeline::runner::{
    PipelineDefinition, RunRequest, RunStore, Runner, RunnerConfig, TriggerMatch,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// What the service needs of the daemon's configuration.
#[derive(Debug, Clone)]
pub struct CiConfig {
    /// The daemon's state root (`$SCALESET_HOME`): `repos/`, `pipelines/`, and the `endpoint`
    /// file the daemon writes once it listens.
    pub home: PathBuf,
    /// The `scaleset` executable, copied as the jobs' `az` shim.
    pub exe: PathBuf,
    /// The daemon's URL until it has written `home/endpoint` (e.g. `http://127.0.0.1:8080`).
    pub default_endpoint: String,
}

/// The pipeline side of the daemon.
pub struct PipelineService {
    pub root: PathBuf,
    pub repos: RepoStore,
    pub runs: RunStore,
    pub artifacts: ArtifactStore,
    pub(crate) runner: Runner,
    pub(crate) cfg: CiConfig,
    /// The image store (PackerBuild@1) and the control plane (AzureVmssDeployment@1).
    pub(crate) core: Arc<engine::Core>,
    /// The runs' own credentials, which the HTTP front end accepts while a run lasts.
    pub(crate) tokens: Arc<RunTokens>,
    pub(crate) shim_dir: PathBuf,
    repo_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) cancels: Mutex<HashMap<u64, watch::Sender<bool>>>,
    pub(crate) queue_tx: mpsc::UnboundedSender<RunRequest>,
    pub(crate) queue_rx: Mutex<Option<mpsc::UnboundedReceiver<RunRequest>>>,
    /// `SCALESET_PIPELINE_PROVIDER=azure`: PackerBuild@1 and AzureVmssDeployment@1 act on Azure.
    pub(crate) azure: Option<AzureTasks>,
}

impl PipelineService {
    /// Opens `home/repos` and `home/pipelines/{runs,work,artifacts,bin}`; the `az` shim is a
    /// copy of `exe`.
    pub fn open(
        cfg: CiConfig,
        core: Arc<engine::Core>,
        tokens: Arc<RunTokens>,
    ) -> Result<PipelineService, CiError> {
        let root = cfg.home.join("pipelines");
        let shim_dir = root.join("bin");
        create_dirs(&cfg.home, &root, &shim_dir)?;
        install_shim(&cfg.exe, &shim_dir)?;
        let runs = RunStore::new(root.join("runs"));
        let artifacts = ArtifactStore::new(root.join("artifacts"));
        let mut rc = RunnerConfig::new(root.join("work"));
        // Like a self-hosted agent: sources (and build outputs such as target/) persist per
        // pipeline so a push rebuilds incrementally.
        rc.reuse_sources = true;
        crate::agent::agent_identity(&root, &mut rc);
        let runner = Runner::new(rc, runs.clone()).with_artifacts(artifacts.clone());
        let (queue_tx, rx) = mpsc::unbounded_channel();
        Ok(PipelineService {
            repos: RepoStore::new(cfg.home.join("repos")),
            runs,
            artifacts,
            runner,
            shim_dir,
            root,
            cfg,
            core,
            tokens,
            repo_locks: Default::default(),
            cancels: Default::default(),
            queue_tx,
            queue_rx: Mutex::new(Some(rx)),
            azure: azure_tasks(&|k| std::env::var(k).ok())?,
        })
    }

    /// The daemon's URL as clients reach it (`home/endpoint` once the daemon listens).
    pub fn endpoint(&self) -> String {
        std::fs::read_to_string(self.cfg.home.join("endpoint"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| self.cfg.default_endpoint.clone())
    }

    /// The pipelines of `repo` at `commit` (see the crate docs for the naming rule).
    pub fn definitions_at(
        &self,
        repo: &str,
        commit: &str,
        default_branch: &str,
    ) -> Vec<PipelineDefinition> {
        let path = self.repos.path(repo);
        let out = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(&path)
            .args(["ls-tree", "-r", "--name-only", commit])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .output();
        let Ok(out) = out else { return vec![] };
        if !out.status.success() {
            return vec![];
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|f| {
                Some(PipelineDefinition {
                    name: pipeline_name(repo, f)?,
                    repo: repo.to_string(),
                    yaml_path: f.to_string(),
                    default_branch: default_branch.to_string(),
                })
            })
            .collect()
    }

    /// The branch a repository's HEAD names (`main` if none).
    pub fn default_branch(info: &git::RepoInfo) -> String {
        info.head
            .as_deref()
            .and_then(|h| h.strip_prefix("refs/heads/"))
            .unwrap_or("main")
            .to_string()
    }

    /// The pipelines of one repository, read at its default branch.
    pub fn default_definitions(&self, info: &git::RepoInfo) -> Vec<PipelineDefinition> {
        let b = Self::default_branch(info);
        info.branches
            .get(&format!("refs/heads/{b}"))
            .map(|c| self.definitions_at(&info.name, c, &b))
            .unwrap_or_default()
    }

    /// Every pipeline of every repository, read at each repository's default branch.
    pub fn all_definitions(&self) -> Vec<PipelineDefinition> {
        let mut out = Vec::new();
        for info in self.repos.list().unwrap_or_default() {
            out.extend(self.default_definitions(&info));
        }
        out
    }

    /// The pipeline named `name` (case-insensitive).
    pub fn definition(&self, name: &str) -> Result<PipelineDefinition, CiError> {
        self.all_definitions()
            .into_iter()
            .find(|d| d.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| CiError::NoPipeline(name.to_string()))
    }

    /// Records the run as queued and hands it to the worker.
    pub fn enqueue(&self, t: &TriggerMatch) -> Result<u64, CiError> {
        let id = self.runs.next_id()?;
        let req = t.request(id, &self.repos);
        self.runs.queue(&req)?;
        self.queue_tx
            .send(req)
            .map_err(|e| CiError::Internal(e.to_string()))?;
        Ok(id)
    }

    /// The lock that serializes pushes (and webhook fetches) to one repository.
    pub(crate) fn repo_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.repo_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }
}

/// The pipeline a file at a commit defines, if any (the naming rule of the crate docs).
fn pipeline_name(repo: &str, f: &str) -> Option<String> {
    let is_yaml = f.ends_with(".yml") || f.ends_with(".yaml");
    if !is_yaml {
        return None;
    }
    let stem = f
        .rsplit('/')
        .next()
        .unwrap_or(f)
        .trim_end_matches(".yml")
        .trim_end_matches(".yaml");
    if f == "azure-pipelines.yml" || f == "azure-pipelines.yaml" {
        Some(repo.to_string())
    } else if (!f.contains('/') && f.contains("pipeline"))
        || (f.starts_with("pipelines/") && f.matches('/').count() == 1)
    {
        Some(format!("{repo}-{stem}"))
    } else {
        None
    }
}

/// The service's directories. Jobs (the runner user) reach only their build directories, the
/// az shim and the tool mounts; repositories, run records and artifacts are the daemon's.
fn create_dirs(home: &Path, root: &Path, shim_dir: &Path) -> Result<(), CiError> {
    use std::os::unix::fs::PermissionsExt;
    for (d, mode) in [
        (home.join("repos"), 0o700),
        (root.to_path_buf(), 0o711),
        (root.join("runs"), 0o700),
        (root.join("artifacts"), 0o700),
        (root.join("work"), 0o711),
        (root.join("homes"), 0o711),
        (root.join("agent"), 0o755),
        (shim_dir.to_path_buf(), 0o755),
    ] {
        std::fs::create_dir_all(&d)
            .and_then(|_| std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)))
            .map_err(|source| CiError::Create { path: d, source })?;
    }
    Ok(())
}

/// The `az` shim: a copy of `exe`, not a symlink: jobs run as the runner user, who may not
/// reach the daemon's own binary (e.g. under /root).
fn install_shim(exe: &Path, shim_dir: &Path) -> Result<(), CiError> {
    use std::os::unix::fs::PermissionsExt;
    let az = shim_dir.join("az");
    let tmp = shim_dir.join(".az.new");
    // Skip the copy (tens of MB at every start) when the shim is already this binary: same
    // size, written after it, executable by jobs.
    let current = match (std::fs::metadata(exe), std::fs::metadata(&az)) {
        (Ok(e), Ok(a)) => {
            e.len() == a.len()
                && e.modified().ok() <= a.modified().ok()
                && a.permissions().mode() & 0o777 == 0o755
        }
        _ => false,
    };
    if !current {
        std::fs::copy(exe, &tmp)
            .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)))
            .and_then(|_| std::fs::rename(&tmp, &az))
            .map_err(|source| CiError::Create { path: az, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::pipeline_name;

    #[test]
    fn the_naming_rule() {
        let n = |f: &str| pipeline_name("app", f);
        assert_eq!(n("azure-pipelines.yml").as_deref(), Some("app"));
        assert_eq!(n("azure-pipelines.yaml").as_deref(), Some("app"));
        assert_eq!(
            n("release-pipeline.yml").as_deref(),
            Some("app-release-pipeline")
        );
        assert_eq!(n("pipelines/deploy.yaml").as_deref(), Some("app-deploy"));
        assert_eq!(n("pipelines/sub/deploy.yml"), None);
        assert_eq!(n("docs/pipeline.yml"), None);
        assert_eq!(n("config.yml"), None);
        assert_eq!(n("pipeline.txt"), None);
    }
}
