//! What the front end asks of the service: repositories (hosted and mirrors), pipelines' runs,
//! their logs, manual runs and cancellation.
use crate::{CiError, PipelineService};
use pipeline::git::{self, RepoInfo};
use pipeline::runner::{PipelineDefinition, RunReason, RunRecord, RunStatus, TriggerMatch};
use serde_json::Value;
use tokio::sync::mpsc;

impl PipelineService {
    pub fn list_repos(&self) -> Result<Vec<RepoInfo>, CiError> {
        Ok(self.repos.list()?)
    }

    pub fn repo(&self, name: &str) -> Result<RepoInfo, CiError> {
        self.repos
            .get(name)?
            .ok_or_else(|| CiError::NoRepository(name.to_string()))
    }

    /// The outcome of the repository's last push (`null` before the first).
    pub fn last_push(&self, name: &str) -> Value {
        std::fs::read_to_string(self.last_push_path(name))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .unwrap_or(Value::Null)
    }

    /// The webhook secret of a mirror (empty for an unknown repository or one without a secret,
    /// so that they look the same as a bad secret).
    pub fn webhook_secret(&self, name: &str) -> String {
        self.repos.webhook_secret(name).unwrap_or_default()
    }

    /// A hosted repository: the existing one (`false`), or a new empty one (`true`).
    pub fn create_repo(&self, name: &str) -> Result<(RepoInfo, bool), CiError> {
        if let Some(info) = self.repos.get(name)? {
            return Ok((info, false));
        }
        let info = self.repos.create(name)?;
        self.record_refs(&info.name)?;
        Ok((info, true))
    }

    /// A new mirror of `url`, whose webhook calls are authenticated with `secret`.
    pub async fn create_mirror(
        &self,
        name: &str,
        url: &str,
        secret: &str,
    ) -> Result<RepoInfo, CiError> {
        if self.repos.get(name)?.is_some() {
            return Err(CiError::RepositoryExists(name.to_string()));
        }
        let (repos, n, u, sec) = (
            self.repos.clone(),
            name.to_string(),
            url.to_string(),
            secret.to_string(),
        );
        let info = tokio::task::spawn_blocking(move || repos.create_mirror(&n, &u, &sec))
            .await
            .map_err(|e| CiError::Internal(e.to_string()))?
            .map_err(CiError::Mirror)?;
        self.record_refs(&info.name)?;
        Ok(info)
    }

    /// Deletes a repository, its run records, and the build directories of its pipelines.
    pub fn delete_repo(&self, name: &str) -> Result<(), CiError> {
        let pipelines: Vec<String> = self
            .all_definitions()
            .into_iter()
            .filter(|d| d.repo == *name)
            .map(|d| d.name)
            .collect();
        self.repos.delete(name)?;
        let _ = self.runs.forget_repo(name);
        for p in pipelines {
            let _ = std::fs::remove_dir_all(self.runner.build_dir(&p));
        }
        Ok(())
    }

    /// The latest run of a pipeline.
    pub fn last_run(&self, pipeline: &str) -> Option<RunRecord> {
        self.runs
            .list_pipeline(pipeline)
            .ok()
            .and_then(|v| v.into_iter().next())
    }

    /// The runs of one pipeline, or of all.
    pub fn list_runs(&self, pipeline: Option<&str>) -> Result<Vec<RunRecord>, CiError> {
        Ok(match pipeline {
            Some(p) => self.runs.list_pipeline(p),
            None => self.runs.list(),
        }?)
    }

    pub fn run(&self, id: u64) -> Result<RunRecord, CiError> {
        self.runs.get(id)?.ok_or(CiError::NoRun(id))
    }

    /// Queues a manual run of `branch` (default: the pipeline's default branch).
    pub fn queue_manual(
        &self,
        d: PipelineDefinition,
        branch: Option<&str>,
    ) -> Result<RunRecord, CiError> {
        let branch = branch.unwrap_or(&d.default_branch).to_string();
        let full = pipeline::trigger::full_ref(&branch);
        let commit =
            git::resolve(&self.repos.path(&d.repo), &full)?.ok_or_else(|| CiError::NoBranch {
                repo: d.repo.clone(),
                branch,
            })?;
        let t = TriggerMatch {
            definition: d,
            branch: full,
            commit,
            reason: RunReason::Manual,
            resources: vec![],
        };
        let id = self.enqueue(&t)?;
        self.runs
            .get(id)?
            .ok_or_else(|| CiError::Internal("run vanished".into()))
    }

    /// A run's log so far.
    pub fn logs(&self, id: u64) -> Result<String, CiError> {
        self.run(id)?;
        Ok(self.runs.logs(id)?)
    }

    /// A run's log, line by line (each ending in a newline), until the run ends.
    pub fn follow_logs(&self, id: u64) -> Result<mpsc::UnboundedReceiver<String>, CiError> {
        self.run(id)?;
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        let runs = self.runs.clone();
        tokio::spawn(async move {
            let _ = runs
                .follow(id, |line| tx.send(format!("{line}\n")).is_ok())
                .await;
        });
        Ok(rx)
    }

    /// Cancels a queued run, or asks a running one to stop; the run as it is now.
    pub fn cancel(&self, id: u64) -> Result<RunRecord, CiError> {
        let rec = self.run(id)?;
        if rec.status == RunStatus::Completed {
            return Err(CiError::RunCompleted(id));
        }
        if !self.runs.cancel_queued(id)? {
            if let Some(tx) = self
                .cancels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
            {
                let _ = tx.send(true);
            }
        }
        self.run(id)
    }
}
