//! Whole pipeline runs: workspace, checkout, compile, jobs, durable record and logs, triggers.
//!
//! # For the daemon
//!
//! ```ignore
//! let store = RunStore::new(data.join("runs"));
//! let runner = Runner::new(RunnerConfig::new(data.join("work")), store.clone())
//!     .with_artifacts(artifact_store.clone());
//! // a push: for each RefUpdate of a receive-pack (see crate::git)
//! let m = pipelines_for_push(&definitions, &repos, "my_app", &update)?;
//! for t in m.runs {
//!     let id = store.next_id()?;
//!     let req = t.request(id, &repos);
//!     store.queue(&req)?;                                   // status "queued"
//!     let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false); // keep cancel_tx per run
//!     let record = runner.run(req, &tasks_for_this_run, cancel_rx).await; // completed
//!     for t in pipelines_for_completed_run(&definitions, &repos, &record).runs { /* queue */ }
//! }
//! ```
//!
//! - [`Runner::run`] never panics on bad input: a missing or invalid YAML file completes the
//!   run as Failed with `file:line:column: rule` in [`RunRecord::message`] before any step runs.
//!   Cancel by sending `true` on the watch channel (running steps are killed, queued jobs are
//!   Canceled unless their condition is `always()`/`canceled()`). Runs must be serialized per
//!   pipeline by the caller if wanted (Azure's `batch`); the runner itself is reentrant.
//! - [`RunStore`] (records in SQLite `root/runs.db`, logs in `root/<id>/log.txt`) is the
//!   durable record: `get`,
//!   `list`, `logs`, [`RunStore::follow`] (tails the log until the run completes), `next_id`,
//!   `queue`, `cancel_queued`. At daemon start, [`RunStore::fail_interrupted`] completes runs
//!   left running by a crash; [`RunStore::queued`] lists the acknowledged runs to resume.
//!   [`RunStore::commit_push`] queues a push's runs together with the refs it processed, so a
//!   push whose refs moved is matched again at start if the daemon died in between.
//! - Log lines: `<RFC 3339 time> [<stage>/<job>] <step label> | <text>`, masked.
//! - Workspaces live in `RunnerConfig::work_root/<id>/{s,a,b,_temp}` and are deleted at the
//!   end (`keep_workspace` keeps them for debugging). Each job starts with empty `a/`, `b/`,
//!   `_temp/`; `s/` is checked out once per run. With `RunnerConfig::reuse_sources` (the
//!   daemon's mode, like a self-hosted agent) a pipeline keeps one build directory whose `s/`
//!   survives between runs so builds are incremental.
//! - Release semantics: when a pipeline declares `resources.pipelines` and a run of the
//!   triggering (else the first) resource is known, the run gets `Release.ReleaseId` = its own
//!   id and `Build.BuildId`/`Build.BuildNumber`/`Build.SourceBranch`/`Build.SourceVersion` of
//!   that resource run (like a classic release's primary artifact), so `$(Build.BuildId)` in a
//!   release names the CI build. Every resource gets `resources.pipeline.<alias>.runID`,
//!   `.runName`, `.pipelineName`, `.sourceBranch`, `.sourceCommit`.
//! - Definitions: the daemon keeps [`PipelineDefinition`]s (name, repository, YAML path,
//!   default branch). [`pipelines_for_push`] reads each definition's YAML at the pushed commit;
//!   [`pipelines_for_completed_run`] reads release YAML at the definition's default branch.

use crate::artifacts::{ArtifactRef, ArtifactStore};
use crate::cgroup::{Hierarchy, RunCgroup};
use crate::exec::{
    check_tasks, run_job, ExecConfig, JobOutcome, LogLine, LogSink, Stream, TaskRunner,
};
use crate::git::{self, RefUpdate, RepoStore};
use crate::model::{Pipeline, DEFAULT_NAME};
use crate::plan::{JobRef, RunResult, RunState, Status};
use crate::sandbox::{self, Identity, Jail, Workspace};
use crate::vars::{self, Masker, RunInfo, Variables};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Where a run's sources come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceSpec {
    /// A directory copied into `s/` (tests, local runs).
    Dir(PathBuf),
    /// A commit of a bare repository, exported into `s/`.
    Repo {
        /// The repository's name (Build.Repository.Name).
        name: String,
        /// Path of the bare repository.
        path: PathBuf,
        commit: String,
    },
}

/// Why a run was started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunReason {
    Manual,
    /// A push (`batched`: several pushes folded into one run).
    Push {
        batched: bool,
    },
    /// A completed run of the pipeline resource `alias`.
    Resource {
        alias: String,
    },
}

impl RunReason {
    /// Azure's Build.Reason.
    pub fn build_reason(&self) -> &'static str {
        match self {
            RunReason::Manual => "Manual",
            RunReason::Push { batched: false } => "IndividualCI",
            RunReason::Push { batched: true } => "BatchedCI",
            RunReason::Resource { .. } => "ResourceTrigger",
        }
    }
}

/// A run of another pipeline consumed through `resources.pipelines`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRun {
    pub alias: String,
    pub pipeline: String,
    pub run_id: u64,
    pub run_number: String,
    pub branch: String,
    pub commit: String,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub run_id: u64,
    pub pipeline_name: String,
    pub source: SourceSpec,
    /// The pipeline file, relative to the sources (e.g. `azure-pipelines.yml`).
    pub yaml_path: String,
    pub reason: RunReason,
    /// Branch of the sources (`main` or `refs/heads/main`).
    pub branch: String,
    /// Commit of the sources (empty for [`SourceSpec::Dir`] if unknown).
    pub commit: String,
    pub requested_for: String,
    /// Queue-time variables (secrets marked secret); they override the YAML's variables.
    pub variables: Variables,
    /// Template parameters.
    pub parameters: BTreeMap<String, String>,
    /// Build.BuildNumber; `None` = from the pipeline's `name:` or the run id.
    pub run_number: Option<String>,
    /// Resource runs already chosen (the triggering one). Other declared resources resolve to
    /// the latest successful run of their source pipeline in the [`RunStore`].
    pub resources: Vec<ResourceRun>,
}

impl RunRequest {
    /// A manual run with defaults.
    pub fn new(run_id: u64, pipeline: &str, source: SourceSpec, yaml_path: &str) -> RunRequest {
        RunRequest {
            run_id,
            pipeline_name: pipeline.to_string(),
            source,
            yaml_path: yaml_path.to_string(),
            reason: RunReason::Manual,
            branch: "refs/heads/main".into(),
            commit: String::new(),
            requested_for: "scaleset".into(),
            variables: Variables::new(),
            parameters: BTreeMap::new(),
            run_number: None,
            resources: vec![],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Running,
    Completed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub label: String,
    pub status: RunStatus,
    pub result: Option<RunResult>,
    pub exit_code: Option<i32>,
    pub attempts: u32,
    pub message: Option<String>,
    /// When the step started and finished (ms since the epoch), from its log sections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub name: String,
    pub display_name: Option<String>,
    pub status: RunStatus,
    pub result: Option<RunResult>,
    pub message: Option<String>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub steps: Vec<StepRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub display_name: Option<String>,
    pub status: RunStatus,
    pub result: Option<RunResult>,
    pub message: Option<String>,
    pub jobs: Vec<JobRecord>,
}

/// `run.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: u64,
    pub pipeline: String,
    pub run_number: String,
    pub status: RunStatus,
    /// Set when completed.
    pub result: Option<RunResult>,
    /// Why the run failed before or outside its steps (YAML errors, checkout errors, cancel).
    pub message: Option<String>,
    pub reason: RunReason,
    pub repository: Option<String>,
    pub yaml_path: String,
    pub source_branch: String,
    pub source_version: String,
    pub requested_for: String,
    pub resources: Vec<ResourceRun>,
    /// Unix milliseconds.
    pub queued_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub stages: Vec<StageRecord>,
    /// Artifacts the run published.
    pub artifacts: Vec<ArtifactRef>,
}

impl RunRecord {
    fn from_request(req: &RunRequest) -> RunRecord {
        RunRecord {
            id: req.run_id,
            pipeline: req.pipeline_name.clone(),
            run_number: req
                .run_number
                .clone()
                .unwrap_or_else(|| req.run_id.to_string()),
            status: RunStatus::Queued,
            result: None,
            message: None,
            reason: req.reason.clone(),
            repository: match &req.source {
                SourceSpec::Repo { name, .. } => Some(name.clone()),
                SourceSpec::Dir(_) => None,
            },
            yaml_path: req.yaml_path.clone(),
            source_branch: crate::trigger::full_ref(&req.branch),
            source_version: req.commit.clone(),
            requested_for: req.requested_for.clone(),
            resources: req.resources.clone(),
            queued_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            stages: vec![],
            artifacts: vec![],
        }
    }

    /// The request that queued this run again (to resume it after a restart); `None` for runs
    /// whose sources were not a hosted repository.
    pub fn request(&self, repos: &RepoStore) -> Option<RunRequest> {
        let repo = self.repository.as_ref()?;
        let mut r = RunRequest::new(
            self.id,
            &self.pipeline,
            SourceSpec::Repo {
                name: repo.clone(),
                path: repos.path(repo),
                commit: self.source_version.clone(),
            },
            &self.yaml_path,
        );
        r.reason = self.reason.clone();
        r.branch = self.source_branch.clone();
        r.commit = self.source_version.clone();
        r.requested_for = self.requested_for.clone();
        r.resources = self.resources.clone();
        if self.run_number != self.id.to_string() {
            r.run_number = Some(self.run_number.clone());
        }
        Some(r)
    }

    /// Every step, with its stage and job names.
    pub fn steps(&self) -> impl Iterator<Item = (&str, &str, &StepRecord)> {
        self.stages.iter().flat_map(|s| {
            s.jobs.iter().flat_map(move |j| {
                j.steps
                    .iter()
                    .map(move |st| (s.name.as_str(), j.name.as_str(), st))
            })
        })
    }
}

pub use sys::clock::now_ms;

/// `2024-05-01T12:00:00.123Z`.
pub fn rfc3339(ms: u64) -> String {
    sys::clock::rfc3339_ms(ms)
}

/// Durable run records (SQLite, `root/runs.db`) and logs (`root/<id>/log.txt`).
#[derive(Debug, Clone)]
pub struct RunStore {
    root: PathBuf,
    inner: Arc<Mutex<StoreInner>>,
}

#[derive(Debug, Default)]
struct StoreInner {
    /// Opened on first use, so that [`RunStore::new`] cannot fail.
    db: Option<rusqlite::Connection>,
    /// The highest id handed out by `next_id` (a reserved id may not be saved yet).
    last_id: u64,
}

impl RunStore {
    pub fn new(root: impl Into<PathBuf>) -> RunStore {
        RunStore {
            root: root.into(),
            inner: Default::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self, id: u64) -> PathBuf {
        self.root.join(id.to_string())
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir(id).join("log.txt")
    }

    fn open(&self) -> std::io::Result<rusqlite::Connection> {
        std::fs::create_dir_all(&self.root)?;
        let c =
            rusqlite::Connection::open(self.root.join("runs.db")).map_err(std::io::Error::other)?;
        c.busy_timeout(Duration::from_secs(5))
            .map_err(std::io::Error::other)?;
        c.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS runs (
                 id INTEGER PRIMARY KEY,
                 pipeline TEXT NOT NULL COLLATE NOCASE,
                 status TEXT NOT NULL,
                 record TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS runs_by_pipeline ON runs (pipeline, id);
             CREATE TABLE IF NOT EXISTS repo_refs (
                 repo TEXT PRIMARY KEY COLLATE NOCASE,
                 refs TEXT NOT NULL
             );",
        )
        .map_err(std::io::Error::other)?;
        // Stores written before runs moved to SQLite kept `<id>/run.json` files: import them once.
        let empty: bool = c
            .query_row("SELECT NOT EXISTS (SELECT 1 FROM runs)", [], |r| r.get(0))
            .map_err(std::io::Error::other)?;
        if empty {
            for e in std::fs::read_dir(&self.root)?.flatten() {
                let legacy = e.path().join("run.json");
                let Ok(d) = std::fs::read(&legacy) else {
                    continue;
                };
                if let Ok(r) = serde_json::from_slice::<RunRecord>(&d) {
                    insert(&c, &r)?;
                }
            }
        }
        Ok(c)
    }

    fn with_db<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection, &mut u64) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.db.is_none() {
            g.db = Some(self.open()?);
        }
        let StoreInner { db, last_id } = &mut *g;
        match db {
            Some(c) => f(c, last_id),
            None => Err(std::io::Error::other("run database not open")),
        }
    }

    fn query(&self, sql: &str, arg: Option<&str>) -> std::io::Result<Vec<RunRecord>> {
        self.with_db(|c, _| {
            let mut st = c.prepare_cached(sql).map_err(std::io::Error::other)?;
            let rows: rusqlite::Result<Vec<String>> = match arg {
                Some(a) => st.query_map([a], |r| r.get(0)).and_then(|m| m.collect()),
                None => st.query_map([], |r| r.get(0)).and_then(|m| m.collect()),
            };
            let rows = rows.map_err(std::io::Error::other)?;
            rows.iter()
                .map(|t| serde_json::from_str(t).map_err(std::io::Error::other))
                .collect()
        })
    }

    /// A new run id (one more than any stored or handed out), reserving its log directory.
    pub fn next_id(&self) -> std::io::Result<u64> {
        let id = self.with_db(|c, last| {
            let max: u64 = c
                .query_row("SELECT COALESCE(MAX(id), 0) FROM runs", [], |r| r.get(0))
                .map_err(std::io::Error::other)?;
            *last = max.max(*last) + 1;
            Ok(*last)
        })?;
        std::fs::create_dir_all(self.dir(id))?;
        Ok(id)
    }

    /// Write a record (one transaction).
    pub fn save(&self, r: &RunRecord) -> std::io::Result<()> {
        self.with_db(|c, _| insert(c, r))
    }

    /// Record a request as queued (before [`Runner::run`]).
    pub fn queue(&self, req: &RunRequest) -> std::io::Result<RunRecord> {
        let r = RunRecord::from_request(req);
        self.save(&r)?;
        Ok(r)
    }

    /// Complete a run that never started as Canceled. `Ok(false)` if it is not queued.
    pub fn cancel_queued(&self, id: u64) -> std::io::Result<bool> {
        let Some(mut r) = self.get(id)? else {
            return Ok(false);
        };
        if r.status != RunStatus::Queued {
            return Ok(false);
        }
        r.status = RunStatus::Completed;
        r.result = Some(RunResult::Canceled);
        r.message = Some("canceled before it started".into());
        r.finished_ms = Some(now_ms());
        self.save(&r)?;
        Ok(true)
    }

    /// `trigger.batch`: a new push run of `pipeline` on `branch` (run `into`) takes the place
    /// of the push runs still queued there, which complete as Canceled ("batched into run N").
    /// The new run builds the newest commit, so it includes their changes. Returns their ids.
    pub fn batch_into(&self, pipeline: &str, branch: &str, into: u64) -> std::io::Result<Vec<u64>> {
        let mut out = vec![];
        for mut r in self.list_pipeline(pipeline)? {
            if r.status != RunStatus::Queued
                || r.id == into
                || r.source_branch != branch
                || !matches!(r.reason, RunReason::Push { .. })
            {
                continue;
            }
            r.status = RunStatus::Completed;
            r.result = Some(RunResult::Canceled);
            r.message = Some(format!("batched into run {into}"));
            r.finished_ms = Some(now_ms());
            self.save(&r)?;
            out.push(r.id);
        }
        Ok(out)
    }

    /// After a daemon restart: complete every running record as Failed (its processes died
    /// with the daemon or were killed at start). Queued runs stay queued: see
    /// [`queued`](Self::queued). Returns the failed ids.
    pub fn fail_interrupted(&self) -> std::io::Result<Vec<u64>> {
        let mut out = vec![];
        for mut r in self.query(
            "SELECT record FROM runs WHERE status = 'running' ORDER BY id",
            None,
        )? {
            r.result = Some(RunResult::Failed);
            r.message = Some("the daemon stopped while the run was not complete".into());
            r.status = RunStatus::Completed;
            r.finished_ms = Some(now_ms());
            self.save(&r)?;
            out.push(r.id);
        }
        Ok(out)
    }

    /// The runs acknowledged as queued and not started, oldest first (resumed at start).
    pub fn queued(&self) -> std::io::Result<Vec<RunRecord>> {
        self.query(
            "SELECT record FROM runs WHERE status = 'queued' ORDER BY id",
            None,
        )
    }

    /// The refs of `repo` whose pushes have been matched against its pipelines (`None`: never
    /// recorded).
    pub fn processed_refs(&self, repo: &str) -> std::io::Result<Option<BTreeMap<String, String>>> {
        self.with_db(|c, _| {
            let t: Option<String> = c
                .query_row("SELECT refs FROM repo_refs WHERE repo = ?1", [repo], |r| {
                    r.get(0)
                })
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })
                .map_err(std::io::Error::other)?;
            t.map(|t| serde_json::from_str(&t).map_err(std::io::Error::other))
                .transpose()
        })
    }

    /// In one transaction: queue `reqs` and record `refs` as the processed refs of `repo`, so
    /// a push's runs are either all acknowledged with its refs or replayed at start.
    pub fn commit_push(
        &self,
        repo: &str,
        refs: &BTreeMap<String, String>,
        reqs: &[RunRequest],
    ) -> std::io::Result<()> {
        let refs = serde_json::to_string(refs).map_err(std::io::Error::other)?;
        self.with_db(|c, _| {
            let tx = c.unchecked_transaction().map_err(std::io::Error::other)?;
            for r in reqs {
                insert(&tx, &RunRecord::from_request(r))?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO repo_refs (repo, refs) VALUES (?1, ?2)",
                rusqlite::params![repo, refs],
            )
            .map_err(std::io::Error::other)?;
            tx.commit().map_err(std::io::Error::other)
        })
    }

    /// Forgets a deleted repository's processed refs.
    pub fn forget_repo(&self, repo: &str) -> std::io::Result<()> {
        self.with_db(|c, _| {
            c.execute("DELETE FROM repo_refs WHERE repo = ?1", [repo])
                .map(|_| ())
                .map_err(std::io::Error::other)
        })
    }

    pub fn get(&self, id: u64) -> std::io::Result<Option<RunRecord>> {
        Ok(self
            .query(
                "SELECT record FROM runs WHERE id = CAST(?1 AS INTEGER)",
                Some(&id.to_string()),
            )?
            .pop())
    }

    /// Every run, newest first.
    pub fn list(&self) -> std::io::Result<Vec<RunRecord>> {
        self.query("SELECT record FROM runs ORDER BY id DESC", None)
    }

    /// Runs of one pipeline, newest first.
    pub fn list_pipeline(&self, pipeline: &str) -> std::io::Result<Vec<RunRecord>> {
        self.query(
            "SELECT record FROM runs WHERE pipeline = ?1 ORDER BY id DESC",
            Some(pipeline),
        )
    }

    /// The newest successful (Succeeded or SucceededWithIssues) run of a pipeline, optionally
    /// on a branch.
    pub fn latest_successful(
        &self,
        pipeline: &str,
        branch: Option<&str>,
    ) -> std::io::Result<Option<RunRecord>> {
        Ok(self.list_pipeline(pipeline)?.into_iter().find(|r| {
            matches!(
                r.result,
                Some(RunResult::Succeeded | RunResult::SucceededWithIssues)
            ) && branch.is_none_or(|b| crate::trigger::full_ref(b) == r.source_branch)
        }))
    }

    /// The whole log so far.
    pub fn logs(&self, id: u64) -> std::io::Result<String> {
        match std::fs::read(self.log_path(id)) {
            Ok(d) => Ok(String::from_utf8_lossy(&d).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e),
        }
    }

    /// Call `on_line` for every log line, waiting for new ones until the run is completed (or
    /// `on_line` returns false). Returns the final record.
    pub async fn follow(
        &self,
        id: u64,
        mut on_line: impl FnMut(&str) -> bool,
    ) -> std::io::Result<Option<RunRecord>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut offset = 0u64;
        let mut partial = Vec::new();
        loop {
            // Read the record first: a completed record means the log is complete.
            let rec = self.get(id)?;
            let Some(rec) = rec else { return Ok(None) };
            let done = rec.status == RunStatus::Completed;
            if let Ok(mut f) = std::fs::File::open(self.log_path(id)) {
                f.seek(SeekFrom::Start(offset))?;
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)?;
                offset += buf.len() as u64;
                partial.extend_from_slice(&buf);
                while let Some(i) = partial.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=i).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    if !on_line(&text) {
                        return Ok(Some(rec));
                    }
                }
            }
            if done {
                if !partial.is_empty() {
                    on_line(&String::from_utf8_lossy(&partial));
                }
                return Ok(Some(rec));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// How the runner runs jobs.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Workspaces are `work_root/<run id>`.
    pub work_root: PathBuf,
    /// The only environment jobs inherit (e.g. PATH, HOME, LANG); never the daemon's own.
    pub base_env: Vec<(String, String)>,
    pub shell: PathBuf,
    /// Run job processes, and the daemon's file operations in their workspaces, as this user
    /// (see [`crate::sandbox`]).
    pub identity: Option<Identity>,
    /// Why no job may run at all (e.g. the runner user is missing): every run fails with it.
    pub unavailable: Option<String>,
    /// Read-only bind mounts `(source, mount point)` in job processes (toolchains).
    pub bind_ro: Vec<(PathBuf, PathBuf)>,
    /// Each pipeline's own home `homes_root/p-<pipeline>`: HOME and CARGO_HOME of its jobs.
    pub homes_root: Option<PathBuf>,
    /// A job sees its own build directory and home only, not other pipelines' (needs
    /// `identity`: it is done in the job's mount namespace).
    pub isolate: bool,
    /// One cgroup per run, killed as a whole when the run ends ([`crate::cgroup`]).
    pub cgroups: Option<Hierarchy>,
    /// An empty directory where checkouts see the (private) repository, read-only.
    pub repo_mount: Option<PathBuf>,
    /// Length of a `timeoutInMinutes` minute (tests shorten it).
    pub minute: Duration,
    pub retry_delay: Duration,
    pub kill_grace: Duration,
    /// Keep the workspace after the run (debugging).
    pub keep_workspace: bool,
    /// Self-hosted agent semantics: each pipeline has one build directory
    /// (`work_root/<pipeline>`) whose `s/` is reused between runs (tracked files checked out
    /// exactly, untracked build outputs such as `target/` kept, so builds are incremental);
    /// `a/`, `b/` and `_temp/` are emptied for every run. `workspace: clean: resources|all`
    /// in the YAML starts from an empty `s/`. Runs of one pipeline must not overlap (the daemon
    /// runs one at a time). Off: a fresh `work_root/<run id>` per run, deleted afterwards.
    pub reuse_sources: bool,
}

impl RunnerConfig {
    pub fn new(work_root: impl Into<PathBuf>) -> RunnerConfig {
        let d = ExecConfig::new("/", Variables::new());
        RunnerConfig {
            work_root: work_root.into(),
            base_env: d.base_env,
            shell: d.shell,
            identity: None,
            unavailable: None,
            bind_ro: vec![],
            homes_root: None,
            isolate: false,
            cgroups: None,
            repo_mount: None,
            minute: d.minute,
            retry_delay: d.retry_delay,
            kill_grace: d.kill_grace,
            keep_workspace: false,
            reuse_sources: false,
        }
    }
}

/// Runs pipeline runs.
#[derive(Debug, Clone)]
pub struct Runner {
    pub config: RunnerConfig,
    pub store: RunStore,
    /// Where the run's tasks publish; the record lists the run's artifacts from it.
    pub artifacts: Option<ArtifactStore>,
}

/// Appends masked, labeled lines to a run's log file.
#[derive(Clone)]
struct RunLog {
    file: Arc<Mutex<Option<std::fs::File>>>,
    masker: Arc<Mutex<Masker>>,
}

impl RunLog {
    fn open(path: &Path, masker: Masker) -> RunLog {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok();
        RunLog {
            file: Arc::new(Mutex::new(file)),
            masker: Arc::new(Mutex::new(masker)),
        }
    }

    fn write(&self, prefix: &str, label: &str, text: &str) {
        let line = if label.is_empty() {
            format!("{} [{prefix}] {text}", rfc3339(now_ms()))
        } else {
            format!("{} [{prefix}] {label} | {text}", rfc3339(now_ms()))
        };
        let line = format!("{}\n", self.mask(&line));
        if let Some(f) = self.file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let _ = f.write_all(line.as_bytes());
        }
    }

    fn mask(&self, text: &str) -> String {
        self.masker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mask(text)
    }

    fn run_line(&self, text: &str) {
        self.write("run", "", text);
    }
}

fn display(name: &str, display_name: &Option<String>) -> String {
    match display_name {
        Some(d) => d.clone(),
        None if name == DEFAULT_NAME => "Job".into(),
        None => name.to_string(),
    }
}

fn status_of(s: Status) -> (RunStatus, Option<RunResult>) {
    match s {
        Status::Queued => (RunStatus::Queued, None),
        Status::Running => (RunStatus::Running, None),
        Status::Completed(r) => (RunStatus::Completed, Some(r)),
    }
}

/// `cp -a from/. to` as the job would (inside `jail`): `to` is the job's.
fn copy_dir(from: &Path, to: &Path, jail: &Jail) -> Result<(), String> {
    let prepared = jail.prepare().map_err(|e| e.to_string())?;
    let mut c = std::process::Command::new("cp");
    c.arg("-a").arg(format!("{}/.", from.display())).arg(to);
    // SAFETY: PreparedJail::enter makes only async-signal-safe system calls.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, move || prepared.enter());
    }
    let out = c.output().map_err(|e| format!("cp: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "copying {} failed: {}",
            from.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn insert(c: &rusqlite::Connection, r: &RunRecord) -> std::io::Result<()> {
    let status = match r.status {
        RunStatus::Queued => "queued",
        RunStatus::Running => "running",
        RunStatus::Completed => "completed",
    };
    let record = serde_json::to_string(r).map_err(std::io::Error::other)?;
    c.prepare_cached(
        "INSERT OR REPLACE INTO runs (id, pipeline, status, record) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut st| st.execute(rusqlite::params![r.id, r.pipeline, status, record]))
    .map_err(std::io::Error::other)?;
    Ok(())
}

/// The run number from a pipeline's `name:` format (`$(Date:yyyyMMdd)`, `$(Rev:r)`,
/// `$(Rev:.r)` and variables; the revision is the run id).
pub fn run_number(format: &str, run_id: u64, vars: &Variables) -> String {
    let date = rfc3339(now_ms());
    let ymd = format!("{}{}{}", &date[0..4], &date[5..7], &date[8..10]);
    let s = format
        .replace("$(Date:yyyyMMdd)", &ymd)
        .replace("$(Rev:r)", &run_id.to_string())
        .replace("$(Rev:.r)", &format!(".{run_id}"))
        .replace("$(BuildID)", &run_id.to_string());
    let s = vars.expand(&s);
    if s.trim().is_empty() {
        run_id.to_string()
    } else {
        s
    }
}

impl Runner {
    /// The build directory a pipeline keeps with [`RunnerConfig::reuse_sources`].
    pub fn build_dir(&self, pipeline: &str) -> PathBuf {
        let key: String = pipeline
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        self.config.work_root.join(format!("p-{key}"))
    }

    /// The run's build directory (see [`RunnerConfig::reuse_sources`]).
    fn workspace(&self, req: &RunRequest) -> PathBuf {
        if self.config.reuse_sources {
            return self.build_dir(&req.pipeline_name);
        }
        self.config.work_root.join(req.run_id.to_string())
    }

    async fn checkout(
        &self,
        repo: &Path,
        commit: &str,
        ws: &Path,
        jail: &Jail,
    ) -> Result<(), String> {
        let (r, c, s, index) = (
            repo.to_path_buf(),
            commit.to_string(),
            vars::sources_dir(ws),
            ws.join(".index"),
        );
        let (jail, mount) = (jail.clone(), self.config.repo_mount.clone());
        tokio::task::spawn_blocking(move || {
            git::checkout_jailed(&r, &c, &s, &index, &jail, mount.as_deref())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    /// The home of a pipeline's jobs (see [`RunnerConfig::homes_root`]).
    fn home_dir(&self, pipeline: &str) -> Option<PathBuf> {
        let build = self.build_dir(pipeline);
        let name = build.file_name()?;
        Some(self.config.homes_root.as_ref()?.join(name))
    }

    /// Creates `dir` (in a folder of the daemon's) for the runner user, mode 0700.
    fn own_dir(&self, dir: &Path) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let err = |e: std::io::Error| format!("cannot create {}: {e}", dir.display());
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(err(e)),
            _ => {}
        }
        if let Some(id) = self.config.identity {
            std::os::unix::fs::lchown(dir, Some(id.uid), Some(id.gid)).map_err(err)?;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
    }

    /// The run's jail: identity, toolchains, only this pipeline's folders, the run's cgroup.
    fn jail(&self, req: &RunRequest, ws: &Path, cgroup: Option<&RunCgroup>) -> Jail {
        let mut j = Jail {
            identity: self.config.identity,
            bind_ro: self.config.bind_ro.clone(),
            ..Jail::default()
        };
        if self.config.isolate && self.config.identity.is_some() {
            j.private
                .push((self.config.work_root.clone(), ws.to_path_buf()));
            if let (Some(root), Some(home)) =
                (&self.config.homes_root, self.home_dir(&req.pipeline_name))
            {
                j.private.push((root.clone(), home));
            }
        }
        if let Some(cg) = cgroup {
            j.cgroup_procs = cg.procs_files();
        }
        j
    }

    /// Empties the run's folders as the runner user, beneath the workspace: `a/`, `b/`,
    /// `_temp/` always, everything when `all`; then, unless `after` (the run is over),
    /// creates `s/ a/ b/ _temp/`.
    async fn reset_workspace(&self, ws: &Path, all: bool, after: bool) -> Result<(), String> {
        self.own_dir(ws)?;
        let (ws, id) = (ws.to_path_buf(), self.config.identity);
        let r = tokio::task::spawn_blocking(move || {
            sandbox::as_user(id, move || -> Result<(), String> {
                let w = Workspace::open(&ws).map_err(|e| e.to_string())?;
                let clear: &[&str] = if all {
                    &["s", "a", "b", "_temp", ".index"]
                } else {
                    &["a", "b", "_temp"]
                };
                for d in clear {
                    w.remove(Path::new(d)).map_err(|e| e.to_string())?;
                }
                let make: &[&str] = if after {
                    &[]
                } else {
                    &["s", "a", "b", "_temp"]
                };
                for d in make {
                    w.create_dirs(Path::new(d))
                        .map_err(|e| format!("cannot create workspace folder {d}: {e}"))?;
                }
                Ok(())
            })
            .map_err(|e| e.to_string())?
        })
        .await;
        r.map_err(|e| e.to_string())?
    }

    pub fn new(config: RunnerConfig, store: RunStore) -> Runner {
        Runner {
            config,
            store,
            artifacts: None,
        }
    }

    /// List the artifacts each run published (from the store its tasks publish into) in its
    /// record.
    pub fn with_artifacts(mut self, artifacts: ArtifactStore) -> Runner {
        self.artifacts = Some(artifacts);
        self
    }

    /// Checks that jobs may run, creates the pipeline's home and the run's cgroup.
    fn prepare_run(&self, req: &RunRequest) -> Result<Option<RunCgroup>, String> {
        if let Some(why) = &self.config.unavailable {
            return Err(why.clone());
        }
        if let Some(home) = self.home_dir(&req.pipeline_name) {
            self.own_dir(&home)?;
        }
        match &self.config.cgroups {
            Some(h) => h
                .create(&format!("run-{}", req.run_id))
                .map(Some)
                .map_err(|e| format!("cannot create the run's cgroup: {e}")),
            None => Ok(None),
        }
    }

    /// Run `req` to completion; returns (and stores) the completed record.
    pub async fn run(
        &self,
        req: RunRequest,
        tasks: &dyn TaskRunner,
        cancel: watch::Receiver<bool>,
    ) -> RunRecord {
        let mut rec = match self.store.get(req.run_id) {
            Ok(Some(r)) if r.status == RunStatus::Queued => r,
            _ => RunRecord::from_request(&req),
        };
        rec.status = RunStatus::Running;
        rec.started_ms = Some(now_ms());
        let _ = std::fs::create_dir_all(self.store.dir(req.run_id));
        let _ = self.store.save(&rec);
        let masker = Masker::new(req.variables.secrets());
        let log = RunLog::open(&self.store.log_path(req.run_id), masker);
        let ws = self.workspace(&req);
        let outcome = match self.prepare_run(&req) {
            Ok(cgroup) => {
                let jail = self.jail(&req, &ws, cgroup.as_ref());
                let ctx = RunCtx {
                    req: &req,
                    ws: &ws,
                    log: &log,
                    tasks,
                    cancel,
                    jail: &jail,
                };
                let r = self.run_inner(ctx, &mut rec).await;
                // Nothing the run started outlives it (setsid and double forks included).
                if let Some(cg) = &cgroup {
                    if let Err(e) = tokio::task::spawn_blocking({
                        let cg = cg.clone();
                        move || cg.remove()
                    })
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r)
                    {
                        log.run_line(&format!("##[warning]cleaning up the run's processes: {e}"));
                    }
                }
                r
            }
            Err(e) => Err(e),
        };
        if let Err(msg) = outcome {
            log.run_line(&format!("##[error]{msg}"));
            rec.message = Some(msg);
            rec.result = Some(RunResult::Failed);
        }
        if let Some(a) = &self.artifacts {
            rec.artifacts = a.list(req.run_id).unwrap_or_default();
        }
        rec.status = RunStatus::Completed;
        rec.finished_ms = Some(now_ms());
        log.run_line(&format!(
            "Run {} finished: {}",
            req.run_id,
            rec.result.unwrap_or(RunResult::Failed)
        ));
        if self.config.reuse_sources {
            let _ = self.reset_workspace(&ws, false, true).await;
        } else if !self.config.keep_workspace {
            // std's remove_dir_all never follows symlinks; the work root is the daemon's.
            let _ = std::fs::remove_dir_all(&ws);
        }
        let _ = self.store.save(&rec);
        rec
    }

    /// Takes `ctx` by value so the cancel receiver is dropped as soon as the jobs are done.
    async fn run_inner(&self, ctx: RunCtx<'_>, rec: &mut RunRecord) -> Result<(), String> {
        let req = ctx.req;
        let repo_name = self.fetch_sources(&ctx, rec).await?;
        let p = load_pipeline(req).await?;
        check_tasks(&req.yaml_path, &p, ctx.tasks).map_err(|e| e.to_string())?;
        crate::plan::execution_order(&p).map_err(|e| format!("{}: {e}", req.yaml_path))?;
        self.clean_checkout(&ctx, &p).await?;
        let resources = self.resolve_resources(req, &p);
        rec.resources = resources.clone();
        let run_vars = run_variables(&ctx, &p, repo_name, &resources, rec);
        rec.stages = queued_stages(&p, &run_vars, ctx.log);
        let _ = self.store.save(rec);
        self.run_jobs(&ctx, &p, &run_vars, rec).await;
        Ok(())
    }

    /// Logs the run's start and fills `s/`; returns Build.Repository.Name.
    async fn fetch_sources(&self, ctx: &RunCtx<'_>, rec: &RunRecord) -> Result<String, String> {
        let (req, ws) = (ctx.req, ctx.ws);
        ctx.log.run_line(&format!(
            "Run {} of pipeline `{}` ({}), {} {}",
            req.run_id,
            req.pipeline_name,
            req.reason.build_reason(),
            rec.source_branch,
            req.commit
        ));
        self.reset_workspace(ws, !self.config.reuse_sources, false)
            .await?;
        let src = vars::sources_dir(ws);
        let repo_name = match &req.source {
            SourceSpec::Dir(d) => {
                copy_dir(d, &src, ctx.jail)?;
                req.pipeline_name.clone()
            }
            SourceSpec::Repo { name, path, commit } => {
                self.checkout(path, commit, ws, ctx.jail)
                    .await
                    .map_err(|e| format!("checkout of {name} at {commit} failed: {e}"))?;
                name.clone()
            }
        };
        ctx.log
            .run_line(&format!("Sources are in {}", src.display()));
        Ok(repo_name)
    }

    /// Reused sources are checked out afresh when a job asks for `workspace.clean` of them.
    async fn clean_checkout(&self, ctx: &RunCtx<'_>, p: &Pipeline) -> Result<(), String> {
        let clean_sources = p
            .stages
            .iter()
            .flat_map(|s| &s.jobs)
            .any(|j| matches!(j.workspace_clean.as_deref(), Some("resources" | "all")));
        if self.config.reuse_sources && clean_sources {
            if let SourceSpec::Repo { path, commit, .. } = &ctx.req.source {
                ctx.log
                    .run_line("workspace.clean: checking out into an empty sources directory");
                self.reset_workspace(ctx.ws, true, false).await?;
                self.checkout(path, commit, ctx.ws, ctx.jail)
                    .await
                    .map_err(|e| format!("clean checkout at {commit} failed: {e}"))?;
            }
        }
        Ok(())
    }

    /// The request's resource runs, plus the latest successful run of each other declared one.
    fn resolve_resources(&self, req: &RunRequest, p: &Pipeline) -> Vec<ResourceRun> {
        let mut resources = req.resources.clone();
        for r in &p.resources.pipelines {
            if resources
                .iter()
                .any(|x| x.alias.eq_ignore_ascii_case(&r.alias))
            {
                continue;
            }
            if let Ok(Some(run)) = self.store.latest_successful(&r.source, r.branch.as_deref()) {
                resources.push(ResourceRun {
                    alias: r.alias.clone(),
                    pipeline: run.pipeline.clone(),
                    run_id: run.id,
                    run_number: run.run_number.clone(),
                    branch: run.source_branch.clone(),
                    commit: run.source_version.clone(),
                });
            }
        }
        resources
    }

    /// Advances the plan and runs the jobs it starts, one at a time, until none is left;
    /// then sets the run's result.
    async fn run_jobs(
        &self,
        ctx: &RunCtx<'_>,
        p: &Pipeline,
        run_vars: &Variables,
        rec: &mut RunRecord,
    ) {
        let mut state = RunState::new(p);
        loop {
            if *ctx.cancel.borrow() && !state.canceled {
                ctx.log.run_line("##[warning]The run was canceled");
                rec.message = Some("canceled".into());
                state.cancel();
            }
            let adv = state.advance(p, run_vars);
            for (stage, job, msg) in &adv.errors {
                ctx.log.run_line(&format!(
                    "##[error]{stage}{}: {msg}",
                    job.as_ref().map(|j| format!("/{j}")).unwrap_or_default()
                ));
            }
            sync_record(rec, &state);
            let _ = self.store.save(rec);
            if adv.start.is_empty() {
                if state.running().is_empty() {
                    break;
                }
                // Started earlier but not run: cannot happen with sequential execution.
                for r in state.running() {
                    state.complete_job(&r, RunResult::Failed, BTreeMap::new());
                }
                continue;
            }
            for jr in adv.start {
                let (result, outputs) = self.run_one_job(ctx, p, &jr, rec, run_vars).await;
                state.complete_job(&jr, result, outputs);
                sync_record(rec, &state);
                let _ = self.store.save(rec);
            }
        }
        rec.result = Some(state.result().unwrap_or(RunResult::Failed));
        if state.canceled {
            rec.result = Some(RunResult::Canceled);
        }
    }

    async fn run_one_job(
        &self,
        ctx: &RunCtx<'_>,
        p: &Pipeline,
        jr: &JobRef,
        rec: &mut RunRecord,
        run_vars: &Variables,
    ) -> (RunResult, BTreeMap<String, String>) {
        let (Some(stage), Some(job)) = (
            p.stage(&jr.stage),
            p.stage(&jr.stage).and_then(|s| s.job(&jr.job)),
        ) else {
            return (RunResult::Failed, BTreeMap::new());
        };
        let log = ctx.log;
        let prefix = if stage.name == DEFAULT_NAME {
            display(&job.name, &None)
        } else {
            format!("{}/{}", stage.name, display(&job.name, &None))
        };
        if let Err(e) = self.reset_workspace(ctx.ws, false, false).await {
            log.write(&prefix, "", &format!("##[error]{e}"));
            return (RunResult::Failed, BTreeMap::new());
        }
        let mut v = run_vars.clone();
        v.extend(&stage.variables);
        v.extend(&job.variables);
        v.extend(&vars::job_variables(&stage.name, &job.name, 1));
        if let Err(e) = v.resolve_nested() {
            let msg = format!("job {prefix}: {e}");
            log.write(&prefix, "", &format!("##[error]{msg}"));
            if let Some(j) = job_record(rec, jr) {
                j.message = Some(msg);
            }
            return (RunResult::Failed, BTreeMap::new());
        }
        let labels: Vec<String> = job.steps.iter().map(|s| v.expand(&s.label())).collect();
        let cfg = self.exec_config(ctx, &rec.pipeline, v);
        let (sink, rx) =
            LogSink::channel(log.masker.lock().unwrap_or_else(|p| p.into_inner()).clone());
        // Step start/finish times, read off the executor's section lines.
        let times: Arc<Mutex<Vec<StepTimes>>> =
            Arc::new(Mutex::new(vec![(None, None); labels.len()]));
        let writer = spawn_log_writer(log, &prefix, labels, &times, rx);
        let started = now_ms();
        if let Some(j) = job_record(rec, jr) {
            j.started_ms = Some(started);
            j.status = RunStatus::Running;
        }
        let _ = self.store.save(rec);
        log.write(&prefix, "", &format!("##[section]Starting job {prefix}"));
        let out = run_job(job, &cfg, ctx.tasks, &sink).await;
        let masked_labels: Vec<String> = out.steps.iter().map(|s| sink.mask(&s.label)).collect();
        drop(sink);
        let _ = writer.await;
        log.write(
            &prefix,
            "",
            &format!("##[section]Finished job {prefix}: {}", out.result),
        );
        if let Some(j) = job_record(rec, jr) {
            record_job_end(j, &out, masked_labels, &times);
        }
        (out.result, out.outputs)
    }

    /// The executor's settings for a job: the runner's, with the pipeline's home if it has one.
    fn exec_config(&self, ctx: &RunCtx<'_>, pipeline: &str, v: Variables) -> ExecConfig {
        let mut cfg = ExecConfig::new(ctx.ws, v);
        cfg.base_env = self.config.base_env.clone();
        if let Some(home) = self.home_dir(pipeline) {
            let home = home.to_string_lossy().into_owned();
            cfg.base_env
                .retain(|(k, _)| k != "HOME" && k != "CARGO_HOME");
            cfg.base_env.push(("HOME".into(), home.clone()));
            cfg.base_env
                .push(("CARGO_HOME".into(), format!("{home}/.cargo")));
        }
        cfg.shell = self.config.shell.clone();
        cfg.jail = ctx.jail.clone();
        cfg.cancel = Some(ctx.cancel.clone());
        cfg.minute = self.config.minute;
        cfg.retry_delay = self.config.retry_delay;
        cfg.kill_grace = self.config.kill_grace;
        cfg
    }
}

/// What the parts of one run share.
struct RunCtx<'a> {
    req: &'a RunRequest,
    ws: &'a Path,
    log: &'a RunLog,
    tasks: &'a dyn TaskRunner,
    cancel: watch::Receiver<bool>,
    jail: &'a Jail,
}

/// The resource run whose build a release names: the triggering one, else the first declared.
fn primary_resource<'a>(
    req: &RunRequest,
    p: &Pipeline,
    resources: &'a [ResourceRun],
) -> Option<&'a ResourceRun> {
    match &req.reason {
        RunReason::Resource { alias } => resources
            .iter()
            .find(|r| r.alias.eq_ignore_ascii_case(alias)),
        _ => p.resources.pipelines.first().and_then(|d| {
            resources
                .iter()
                .find(|r| r.alias.eq_ignore_ascii_case(&d.alias))
        }),
    }
}

/// The predefined variables' inputs before the run number and release semantics are known.
fn run_info(req: &RunRequest, ws: &Path, repo_name: String) -> RunInfo {
    RunInfo {
        build_id: req.run_id,
        build_number: String::new(),
        workspace: ws.to_path_buf(),
        source_version: req.commit.clone(),
        source_branch: req.branch.clone(),
        repository_name: repo_name,
        pipeline_name: req.pipeline_name.clone(),
        reason: req.reason.build_reason().into(),
        release_id: None,
        triggering_alias: match &req.reason {
            RunReason::Resource { alias } => Some(alias.clone()),
            _ => None,
        },
        requested_for: req.requested_for.clone(),
    }
}

/// The run's variables: the YAML's, the queue-time ones, the predefined ones (with release
/// semantics when there is a primary resource run) and the resources'. Sets the record's run
/// number and masks every secret from then on.
fn run_variables(
    ctx: &RunCtx<'_>,
    p: &Pipeline,
    repo_name: String,
    resources: &[ResourceRun],
    rec: &mut RunRecord,
) -> Variables {
    let req = ctx.req;
    let primary = primary_resource(req, p, resources);
    let mut info = run_info(req, ctx.ws, repo_name);
    let mut run_vars = p.variables.clone();
    run_vars.extend(&req.variables);
    let own_number = match (&req.run_number, &p.name) {
        (Some(n), _) => n.clone(),
        (None, Some(f)) => run_number(f, req.run_id, &run_vars),
        (None, None) => req.run_id.to_string(),
    };
    rec.run_number = own_number.clone();
    info.build_number = own_number.clone();
    if let Some(pr) = primary {
        info.release_id = Some(req.run_id);
        info.build_id = pr.run_id;
        info.build_number = pr.run_number.clone();
        info.source_branch = pr.branch.clone();
        info.source_version = pr.commit.clone();
        ctx.log.run_line(&format!(
            "Release {}: primary artifact source `{}` run {} ({})",
            req.run_id, pr.pipeline, pr.run_id, pr.run_number
        ));
    }
    run_vars.extend(&vars::predefined_variables(&info));
    if primary.is_some() {
        run_vars.set("Release.ReleaseName", format!("Release-{own_number}"));
        run_vars.set("Release.DefinitionName", req.pipeline_name.clone());
    }
    for r in resources {
        let k = |f: &str| format!("resources.pipeline.{}.{f}", r.alias);
        run_vars.set(&k("runID"), r.run_id.to_string());
        run_vars.set(&k("runName"), r.run_number.clone());
        run_vars.set(&k("pipelineName"), r.pipeline.clone());
        run_vars.set(&k("sourceBranch"), r.branch.clone());
        run_vars.set(&k("sourceCommit"), r.commit.clone());
    }
    for s in run_vars.secrets() {
        ctx.log
            .masker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(s);
    }
    run_vars
}

/// The record's shape: every stage, job and step, queued.
fn queued_stages(p: &Pipeline, run_vars: &Variables, log: &RunLog) -> Vec<StageRecord> {
    p.stages
        .iter()
        .map(|s| StageRecord {
            name: s.name.clone(),
            display_name: s.display_name.clone(),
            status: RunStatus::Queued,
            result: None,
            message: None,
            jobs: s
                .jobs
                .iter()
                .map(|j| queued_job(j, run_vars, log))
                .collect(),
        })
        .collect()
}

fn queued_job(j: &crate::model::Job, run_vars: &Variables, log: &RunLog) -> JobRecord {
    JobRecord {
        name: j.name.clone(),
        display_name: j.display_name.clone(),
        status: RunStatus::Queued,
        result: None,
        message: None,
        started_ms: None,
        finished_ms: None,
        steps: j
            .steps
            .iter()
            .map(|st| StepRecord {
                label: log.mask(&run_vars.expand(&st.label())),
                status: RunStatus::Queued,
                result: None,
                exit_code: None,
                attempts: 0,
                message: None,
                started_ms: None,
                finished_ms: None,
            })
            .collect(),
    }
}

/// Writes a job's executor lines to the run log under `prefix` and the step's label, noting
/// each step's start and finish times in `times` off its section lines.
fn spawn_log_writer(
    log: &RunLog,
    prefix: &str,
    labels: Vec<String>,
    times: &Arc<Mutex<Vec<StepTimes>>>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<LogLine>,
) -> tokio::task::JoinHandle<()> {
    let log = log.clone();
    let prefix = prefix.to_string();
    let times = times.clone();
    tokio::spawn(async move {
        while let Some(LogLine { step, stream, text }) = rx.recv().await {
            if let Some(i) = step {
                let mut t = times.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(slot) = t.get_mut(i) {
                    if text.starts_with("##[section]Starting: ") && slot.0.is_none() {
                        slot.0 = Some(now_ms());
                    } else if text.starts_with("##[section]Finishing: ") {
                        slot.1 = Some(now_ms());
                    }
                }
            }
            let label = step
                .and_then(|i| labels.get(i))
                .map(String::as_str)
                .unwrap_or("");
            let text = if stream == Stream::Stderr {
                format!("##[stderr]{text}")
            } else {
                text
            };
            log.write(&prefix, label, &text);
        }
    })
}

/// A finished job's record: its end time and each step's outcome, masked label and times.
fn record_job_end(
    j: &mut JobRecord,
    out: &JobOutcome,
    masked_labels: Vec<String>,
    times: &Mutex<Vec<StepTimes>>,
) {
    j.finished_ms = Some(now_ms());
    for (s, label) in out.steps.iter().zip(masked_labels) {
        if let Some(r) = j.steps.get_mut(s.index) {
            r.label = label;
            r.status = RunStatus::Completed;
            r.result = Some(s.result);
            r.exit_code = s.exit_code;
            r.attempts = s.attempts;
            r.message = s.message.clone();
            let t = times.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((a, b)) = t.get(s.index) {
                (r.started_ms, r.finished_ms) = (*a, *b);
            }
        }
    }
}

/// Reads and compiles a run's pipeline file off the async workers. The file comes from git's
/// objects at the run's commit, never from the sources directory (a previous job of the
/// pipeline controls that one, and could have planted a symbolic link there).
async fn load_pipeline(req: &RunRequest) -> Result<Pipeline, String> {
    let (source, file, params) = (
        req.source.clone(),
        req.yaml_path.clone(),
        req.parameters.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let text = read_pipeline_file(&source, &file)?;
        crate::compile(&file, &text, &params).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("{}: compiling the pipeline failed: {e}", req.yaml_path))?
}

/// The pipeline file's text: from the commit for a repository, or (local runs and tests) from
/// the given directory, opened without following a symbolic link and only if regular.
fn read_pipeline_file(source: &SourceSpec, file: &str) -> Result<String, String> {
    let cannot = |why: String| format!("{file}: cannot read the pipeline file: {why}");
    let bytes = match source {
        SourceSpec::Repo { path, commit, .. } => git::read_file_at(path, commit, file)
            .map_err(|e| match e {
                git::GitError::Unusable { commit, why, .. } => {
                    format!("{file}: the pipeline file at commit {commit} {why}")
                }
                e => cannot(e.to_string()),
            })?
            .ok_or_else(|| cannot(format!("it does not exist at commit {commit}")))?,
        SourceSpec::Dir(dir) => read_regular_file(&dir.join(file.trim_start_matches('/')))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => cannot("it does not exist in the sources".into()),
                _ => cannot(e.to_string()),
            })?,
    };
    String::from_utf8(bytes).map_err(|_| cannot("it is not UTF-8 text".into()))
}

/// A regular file's bytes, refusing a symbolic link at the last component (`O_NOFOLLOW`),
/// `..` components, anything not regular and anything over the pipeline file cap.
fn read_regular_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    if path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(bad("the path may not contain `..`".into()));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => {
                bad("it is a symbolic link; a pipeline file must be a regular file".into())
            }
            _ => e,
        })?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(bad("it is not a regular file".into()));
    }
    let max = crate::yaml::MAX_FILE_BYTES;
    if meta.len() > max as u64 {
        return Err(bad(format!(
            "it is {} bytes; the limit is {}",
            meta.len(),
            crate::yaml::human_bytes(max)
        )));
    }
    let mut out = Vec::new();
    f.take(max as u64 + 1).read_to_end(&mut out)?;
    if out.len() > max {
        return Err(bad(format!(
            "it is larger than {}",
            crate::yaml::human_bytes(max)
        )));
    }
    Ok(out)
}

/// A step's (started, finished) times in ms since the epoch.
type StepTimes = (Option<u64>, Option<u64>);

fn job_record<'a>(rec: &'a mut RunRecord, jr: &JobRef) -> Option<&'a mut JobRecord> {
    rec.stages
        .iter_mut()
        .find(|s| s.name.eq_ignore_ascii_case(&jr.stage))?
        .jobs
        .iter_mut()
        .find(|j| j.name.eq_ignore_ascii_case(&jr.job))
}

fn sync_record(rec: &mut RunRecord, state: &RunState) {
    for s in &state.stages {
        let Some(sr) = rec.stages.iter_mut().find(|x| x.name == s.name) else {
            continue;
        };
        (sr.status, sr.result) = status_of(s.status);
        sr.message = s.message.clone();
        for j in &s.jobs {
            let Some(jrec) = sr.jobs.iter_mut().find(|x| x.name == j.name) else {
                continue;
            };
            (jrec.status, jrec.result) = status_of(j.status);
            if j.message.is_some() {
                jrec.message = j.message.clone();
            }
            if let Status::Completed(r) = j.status {
                for st in &mut jrec.steps {
                    if st.status != RunStatus::Completed {
                        st.status = RunStatus::Completed;
                        st.result = Some(if r == RunResult::Canceled {
                            RunResult::Canceled
                        } else {
                            RunResult::Skipped
                        });
                    }
                }
            }
        }
    }
}

/// A pipeline the daemon knows: its YAML file in a hosted repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineDefinition {
    pub name: String,
    pub repo: String,
    /// e.g. `azure-pipelines.yml`.
    pub yaml_path: String,
    /// Used for resource-triggered and manual runs (e.g. `main`).
    pub default_branch: String,
}

/// A run to queue because of a trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerMatch {
    pub definition: PipelineDefinition,
    /// Full branch ref of the sources.
    pub branch: String,
    pub commit: String,
    pub reason: RunReason,
    pub resources: Vec<ResourceRun>,
}

impl TriggerMatch {
    /// The request for this run (id from [`RunStore::next_id`]).
    pub fn request(&self, run_id: u64, repos: &RepoStore) -> RunRequest {
        let mut r = RunRequest::new(
            run_id,
            &self.definition.name,
            SourceSpec::Repo {
                name: self.definition.repo.clone(),
                path: repos.path(&self.definition.repo),
                commit: self.commit.clone(),
            },
            &self.definition.yaml_path,
        );
        r.reason = self.reason.clone();
        r.branch = self.branch.clone();
        r.commit = self.commit.clone();
        r.resources = self.resources.clone();
        r
    }
}

/// What a trigger evaluation found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matches {
    pub runs: Vec<TriggerMatch>,
    /// Human-readable notes, e.g. "no pipeline matched" or a YAML error of a definition.
    pub notes: Vec<String>,
}

/// The pipelines a pushed ref update triggers. A definition whose YAML is missing at the
/// pushed commit does not trigger; one whose YAML does not compile triggers (its run fails
/// with the error, so the user sees it).
pub fn pipelines_for_push(
    defs: &[PipelineDefinition],
    repos: &RepoStore,
    repo: &str,
    update: &RefUpdate,
) -> Result<Matches, git::GitError> {
    let mut m = Matches::default();
    if update.is_delete() {
        m.notes
            .push(format!("{} was deleted; nothing to run", update.name));
        return Ok(m);
    }
    let path = repos.path(repo);
    let changed = git::changed_paths(&path, &update.old, &update.new)?;
    for d in defs.iter().filter(|d| d.repo == repo) {
        let compiled = match git::read_file_at(&path, &update.new, &d.yaml_path) {
            Ok(Some(text)) => crate::compile(
                &d.yaml_path,
                &String::from_utf8_lossy(&text),
                &BTreeMap::new(),
            )
            .map_err(|e| e.to_string()),
            Ok(None) => {
                m.notes.push(format!(
                    "pipeline `{}`: {} does not exist at {}",
                    d.name, d.yaml_path, update.new
                ));
                continue;
            }
            // A symlink or an oversized file: the run fails with this, so the user sees it.
            Err(e @ git::GitError::Unusable { .. }) => Err(e.to_string()),
            Err(e) => return Err(e),
        };
        let (fire, batched) = match compiled {
            Ok(p) => (
                crate::trigger::push_triggers(&p.trigger, &update.name, Some(&changed)),
                p.trigger.batch,
            ),
            Err(e) => {
                m.notes
                    .push(format!("pipeline `{}`: {e} (the run will fail)", d.name));
                (true, false)
            }
        };
        if fire {
            m.runs.push(TriggerMatch {
                definition: d.clone(),
                branch: update.name.clone(),
                commit: update.new.clone(),
                reason: RunReason::Push { batched },
                resources: vec![],
            });
        }
    }
    if m.runs.is_empty() {
        m.notes.push(format!(
            "no pipeline matched the push to {} of {repo}",
            update.name
        ));
    }
    Ok(m)
}

/// The pipelines whose `resources.pipelines` trigger fires for a completed run (Succeeded or
/// SucceededWithIssues), read from each definition's YAML at its default branch. A pipeline
/// never triggers itself.
pub fn pipelines_for_completed_run(
    defs: &[PipelineDefinition],
    repos: &RepoStore,
    run: &RunRecord,
) -> Matches {
    let mut m = Matches::default();
    if run.status != RunStatus::Completed
        || !matches!(
            run.result,
            Some(RunResult::Succeeded | RunResult::SucceededWithIssues)
        )
    {
        return m;
    }
    let completed: Vec<String> = run
        .stages
        .iter()
        .filter(|s| {
            matches!(
                s.result,
                Some(RunResult::Succeeded | RunResult::SucceededWithIssues)
            )
        })
        .map(|s| s.name.clone())
        .collect();
    for d in defs {
        if d.name.eq_ignore_ascii_case(&run.pipeline) {
            continue;
        }
        let path = repos.path(&d.repo);
        let branch = crate::trigger::full_ref(&d.default_branch);
        let commit = match git::resolve(&path, &branch) {
            Ok(Some(c)) => c,
            _ => continue,
        };
        let text = match git::read_file_at(&path, &commit, &d.yaml_path) {
            Ok(Some(t)) => String::from_utf8_lossy(&t).into_owned(),
            _ => continue,
        };
        let p = match crate::compile(&d.yaml_path, &text, &BTreeMap::new()) {
            Ok(p) => p,
            Err(e) => {
                m.notes.push(format!("pipeline `{}`: {e}", d.name));
                continue;
            }
        };
        for r in &p.resources.pipelines {
            if crate::trigger::resource_triggers(
                r,
                &run.pipeline,
                &run.source_branch,
                &completed,
                &[],
            ) {
                m.runs.push(TriggerMatch {
                    definition: d.clone(),
                    branch: branch.clone(),
                    commit: commit.clone(),
                    reason: RunReason::Resource {
                        alias: r.alias.clone(),
                    },
                    resources: vec![ResourceRun {
                        alias: r.alias.clone(),
                        pipeline: run.pipeline.clone(),
                        run_id: run.id,
                        run_number: run.run_number.clone(),
                        branch: run.source_branch.clone(),
                        commit: run.source_version.clone(),
                    }],
                });
                break;
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_709_251_200_123), "2024-03-01T00:00:00.123Z");
        let v = Variables::new();
        assert_eq!(run_number("ci-$(Rev:r)", 7, &v), "ci-7");
        assert_eq!(run_number("", 7, &v), "7");
    }
}
