//! Runs a job's steps: `script`/`bash` as real `bash` processes, tasks through a [`TaskRunner`].
//!
//! Each step gets the job's variables as environment (`Build.BuildId` → `BUILD_BUILDID`, secrets
//! only when mapped through the step's `env:`), `$(macros)` expanded in its script, inputs, env,
//! working directory and display name; output lines are masked and sent to a [`LogSink`];
//! `##vso[task.setvariable]` commands change the variables of later steps.

use crate::expr::{self, Context, Value};
use crate::model::{Job, Step, StepKind};
use crate::plan::RunResult;
use crate::sandbox::{self, Jail};
use crate::vars::{parse_logging_command, temp_dir, Masker, SetVariable, Var, Variables};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, watch};

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// Lines written by the executor itself (`##[section]Starting: ...`, errors).
    System,
}

/// One masked log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Index of the step in the job, `None` for job-level lines.
    pub step: Option<usize>,
    pub stream: Stream,
    pub text: String,
}

/// Where log lines go: a channel, through a shared [`Masker`].
#[derive(Clone)]
pub struct LogSink {
    tx: mpsc::UnboundedSender<LogLine>,
    masker: Arc<Mutex<Masker>>,
    step: Option<usize>,
}

impl LogSink {
    pub fn new(tx: mpsc::UnboundedSender<LogLine>, masker: Masker) -> LogSink {
        LogSink {
            tx,
            masker: Arc::new(Mutex::new(masker)),
            step: None,
        }
    }

    /// A sink and the receiving end of its channel.
    pub fn channel(masker: Masker) -> (LogSink, mpsc::UnboundedReceiver<LogLine>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (LogSink::new(tx, masker), rx)
    }

    /// The same sink, tagging lines with a step index.
    pub fn for_step(&self, step: usize) -> LogSink {
        LogSink {
            step: Some(step),
            ..self.clone()
        }
    }

    /// Mask and send a line (a closed receiver is ignored).
    pub fn line(&self, stream: Stream, text: &str) {
        let text = self.mask(text);
        let _ = self.tx.send(LogLine {
            step: self.step,
            stream,
            text,
        });
    }

    pub fn mask(&self, text: &str) -> String {
        match self.masker.lock() {
            Ok(m) => m.mask(text),
            Err(p) => p.into_inner().mask(text),
        }
    }

    /// Mask this value from now on.
    pub fn add_secret(&self, secret: &str) {
        match self.masker.lock() {
            Ok(mut m) => m.add(secret),
            Err(p) => p.into_inner().add(secret),
        }
    }
}

/// How to run a job.
#[derive(Clone)]
pub struct ExecConfig {
    /// Pipeline.Workspace; relative working directories are relative to the variable
    /// `System.DefaultWorkingDirectory` (which defaults to this).
    pub workspace: PathBuf,
    /// Predefined, pipeline, stage and job variables (secrets included, marked secret).
    pub variables: Variables,
    /// The only inherited environment (the daemon's own environment is never passed on),
    /// e.g. `PATH`, `HOME`, `LANG`.
    pub base_env: Vec<(String, String)>,
    /// The shell for `script`/`bash` steps (default `bash`).
    pub shell: PathBuf,
    /// What job processes run in: the runner user, its mount namespace (read-only
    /// toolchains, only this pipeline's build directory) and the run's cgroup. Its identity
    /// is also the one the daemon's file operations in the workspace take.
    pub jail: Jail,
    /// Becomes true to cancel the job.
    pub cancel: Option<watch::Receiver<bool>>,
    /// Pause between retries of a failed step.
    pub retry_delay: Duration,
    /// Grace period after killing a process before its pipes are abandoned.
    pub kill_grace: Duration,
    /// How long a "minute" of `timeoutInMinutes` is (60 s; tests shorten it).
    pub minute: Duration,
}

impl ExecConfig {
    pub fn new(workspace: impl Into<PathBuf>, variables: Variables) -> ExecConfig {
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        ExecConfig {
            workspace: workspace.into(),
            variables,
            base_env: vec![("PATH".into(), path), ("LANG".into(), "C.UTF-8".into())],
            shell: PathBuf::from("bash"),
            jail: Jail::default(),
            cancel: None,
            retry_delay: Duration::from_secs(1),
            kill_grace: Duration::from_secs(2),
            minute: Duration::from_secs(60),
        }
    }
}

/// A boxed future (tasks are trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A task step to run, with everything expanded.
pub struct TaskInvocation<'a> {
    pub name: String,
    pub version: u32,
    /// Inputs with `$(macros)` expanded, in file order.
    pub inputs: Vec<(String, String)>,
    pub working_directory: PathBuf,
    /// The step's environment: base env, variables and the step's `env:`.
    pub env: Vec<(String, String)>,
    pub variables: &'a Variables,
    pub log: LogSink,
    pub config: &'a ExecConfig,
}

impl TaskInvocation<'_> {
    /// An input by case-insensitive name.
    pub fn input(&self, name: &str) -> Option<&str> {
        self.inputs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a task did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOutcome {
    pub result: RunResult,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    /// Variables to set for later steps (as if logged with `##vso[task.setvariable]`).
    pub set_variables: Vec<SetVariable>,
}

impl TaskOutcome {
    pub fn succeeded() -> TaskOutcome {
        TaskOutcome {
            result: RunResult::Succeeded,
            exit_code: None,
            message: None,
            set_variables: vec![],
        }
    }
    pub fn failed(message: impl Into<String>) -> TaskOutcome {
        TaskOutcome {
            result: RunResult::Failed,
            exit_code: None,
            message: Some(message.into()),
            set_variables: vec![],
        }
    }
}

/// Runs `task:` steps. The daemon implements PublishPipelineArtifact@1, PackerBuild@1,
/// AzureCLI@2, ... `download:` steps arrive as `DownloadPipelineArtifact@2` with inputs
/// `buildType` (current|specific), `pipeline` (resource alias), `artifact`, `patterns`, `path`.
pub trait TaskRunner: Send + Sync {
    /// Supported tasks as `Name@Major`, e.g. `PublishPipelineArtifact@1`.
    fn supported(&self) -> Vec<String>;
    /// Run a task. Cancellation and timeouts drop this future.
    fn run<'a>(&'a self, inv: TaskInvocation<'a>) -> BoxFuture<'a, TaskOutcome>;
}

/// A runner that supports no task.
pub struct NoTasks;
impl TaskRunner for NoTasks {
    fn supported(&self) -> Vec<String> {
        vec![]
    }
    fn run<'a>(&'a self, _inv: TaskInvocation<'a>) -> BoxFuture<'a, TaskOutcome> {
        Box::pin(async { TaskOutcome::failed("no tasks are supported") })
    }
}

fn supports(tasks: &dyn TaskRunner, name: &str, version: u32) -> bool {
    let want = format!("{name}@{version}");
    tasks
        .supported()
        .iter()
        .any(|s| s.eq_ignore_ascii_case(&want))
}

/// The error for a task the runner does not know.
pub fn unknown_task_message(tasks: &dyn TaskRunner, name: &str, version: u32) -> String {
    let mut s = tasks.supported();
    s.sort();
    format!(
        "unknown task `{name}@{version}`; supported tasks: {}",
        if s.is_empty() {
            "none".to_string()
        } else {
            s.join(", ")
        }
    )
}

/// Check every `task:` step of a pipeline before anything runs; errors carry positions.
pub fn check_tasks(
    file: &str,
    p: &crate::model::Pipeline,
    tasks: &dyn TaskRunner,
) -> Result<(), crate::error::YamlError> {
    for (_, _, step) in p.steps() {
        let (name, version) = match &step.kind {
            StepKind::Task { name, version, .. } => (name.as_str(), *version),
            StepKind::Download { source, .. } if source != "none" => {
                ("DownloadPipelineArtifact", 2)
            }
            _ => continue,
        };
        if !supports(tasks, name, version) {
            return Err(crate::error::YamlError::new(
                file,
                step.pos,
                unknown_task_message(tasks, name, version),
            ));
        }
    }
    Ok(())
}

/// What happened to one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    pub index: usize,
    pub label: String,
    pub result: RunResult,
    /// Exit code of the last attempt's process, when there was one.
    pub exit_code: Option<i32>,
    pub attempts: u32,
    pub message: Option<String>,
}

/// What happened to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    pub result: RunResult,
    pub steps: Vec<StepOutcome>,
    /// Output variables, `stepName.var` → value (for `dependencies.Job.outputs[...]`).
    pub outputs: BTreeMap<String, String>,
    /// The variables at the end of the job (with everything set by steps).
    pub variables: Variables,
}

/// What a process did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOutcome {
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub canceled: bool,
    /// Whether it wrote anything to stderr.
    pub wrote_stderr: bool,
    pub set_variables: Vec<SetVariable>,
}

/// A bash script to run.
pub struct ScriptSpec<'a> {
    pub script: &'a str,
    pub working_directory: &'a Path,
    pub env: &'a [(String, String)],
    pub timeout: Option<Duration>,
}

static SCRIPT_COUNTER: AtomicU64 = AtomicU64::new(0);

fn canceled(cfg: &ExecConfig) -> bool {
    cfg.cancel.as_ref().is_some_and(|c| *c.borrow())
}

async fn wait_cancel(cancel: &Option<watch::Receiver<bool>>) {
    match cancel {
        None => std::future::pending().await,
        Some(rx) => {
            let mut rx = rx.clone();
            loop {
                if *rx.borrow_and_update() {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
}

fn spawn_reader<R: AsyncRead + Unpin + Send + 'static>(
    r: R,
    stream: Stream,
    tx: mpsc::UnboundedSender<(Stream, String)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']).to_string();
                    if tx.send((stream, line)).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// Run a bash script as its own process group, streaming masked lines to `log` and collecting
/// `##vso[task.setvariable]` commands (secret values are masked from then on). Kills the whole
/// process group on timeout, cancel, and after the script exits (so background children can't
/// hold the job). Tasks like AzureCLI@2 can use this for their scripts.
pub async fn run_script(
    spec: ScriptSpec<'_>,
    cfg: &ExecConfig,
    log: &LogSink,
) -> std::io::Result<ProcessOutcome> {
    let n = SCRIPT_COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = temp_dir(&cfg.workspace).join(format!("step-{}-{n}.sh", std::process::id()));
    write_job_file(cfg, &path, spec.script.as_bytes(), 0o600).await?;
    let mut cmd = tokio::process::Command::new(&cfg.shell);
    cmd.arg("--noprofile")
        .arg("--norc")
        .arg(&path)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut jail = cfg.jail.clone();
    jail.cwd = Some(spec.working_directory.to_path_buf());
    let jail = jail.prepare()?;
    // SAFETY: PreparedJail::enter makes only async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || jail.enter());
    }
    let spawned = cmd.spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let _ = remove_job_file(cfg, &path).await;
            return Err(e);
        }
    };
    let pid = child.id();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(spawn_reader(out, Stream::Stdout, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(spawn_reader(err, Stream::Stderr, tx.clone()));
    }
    drop(tx);
    let mut out = ProcessOutcome {
        exit_code: None,
        timed_out: false,
        canceled: false,
        wrote_stderr: false,
        set_variables: vec![],
    };
    let handle = |out: &mut ProcessOutcome, stream: Stream, line: String| {
        if let Some(sv) = parse_logging_command(&line).and_then(|c| c.as_set_variable()) {
            if sv.is_secret {
                log.add_secret(&sv.value);
            }
            out.set_variables.push(sv);
        }
        if stream == Stream::Stderr {
            out.wrote_stderr = true;
        }
        log.line(stream, &line);
    };
    let sleep = async {
        match spec.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    let cancel = wait_cancel(&cfg.cancel);
    tokio::pin!(cancel);
    let mut lines_open = true;
    loop {
        tokio::select! {
            l = rx.recv(), if lines_open => match l {
                Some((s, line)) => handle(&mut out, s, line),
                None => lines_open = false,
            },
            status = child.wait() => {
                out.exit_code = status.ok().and_then(|s| s.code());
                break;
            }
            _ = &mut sleep => {
                out.timed_out = true;
                kill_group(pid);
                let _ = child.wait().await;
                break;
            }
            _ = &mut cancel => {
                out.canceled = true;
                kill_group(pid);
                let _ = child.wait().await;
                break;
            }
        }
    }
    // Background children of the script die with the step.
    kill_group(pid);
    let drain = async {
        while let Some((s, line)) = rx.recv().await {
            handle(&mut out, s, line);
        }
    };
    let _ = tokio::time::timeout(cfg.kill_grace, drain).await;
    for r in readers {
        r.abort();
    }
    let _ = remove_job_file(cfg, &path).await;
    Ok(out)
}

/// Writes `path` (inside the workspace) as the runner user, beneath the workspace: a symlink
/// the job planted there is replaced, never followed.
pub async fn write_job_file(
    cfg: &ExecConfig,
    path: &Path,
    data: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let (ws, path, data) = (cfg.workspace.clone(), path.to_path_buf(), data.to_vec());
    let id = cfg.jail.identity;
    blocking_io(move || {
        sandbox::as_user(id, move || {
            let w = sandbox::Workspace::open(&ws)?;
            let rel = w
                .relative(&ws, &path.to_string_lossy())
                .map_err(std::io::Error::other)?;
            let mut f = w.create_file(&rel, mode).map_err(std::io::Error::other)?;
            std::io::Write::write_all(&mut f, &data)
        })?
    })
    .await
}

async fn remove_job_file(cfg: &ExecConfig, path: &Path) -> std::io::Result<()> {
    let (ws, path) = (cfg.workspace.clone(), path.to_path_buf());
    let id = cfg.jail.identity;
    blocking_io(move || {
        sandbox::as_user(id, move || {
            let w = sandbox::Workspace::open(&ws)?;
            let rel = w
                .relative(&ws, &path.to_string_lossy())
                .map_err(std::io::Error::other)?;
            w.remove(&rel).map_err(std::io::Error::other)
        })?
    })
    .await
}

async fn blocking_io<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

struct StepCtx<'a> {
    vars: &'a Variables,
    canceled: bool,
    job_status: Option<RunResult>,
}

impl Context for StepCtx<'_> {
    fn lookup(&self, root: &str, path: &[String]) -> Value {
        match (root, path) {
            ("variables", [name]) => self
                .vars
                .get(name)
                .map(|v| Value::Str(v.into()))
                .unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }
    fn canceled(&self) -> bool {
        self.canceled
    }
    fn results(&self, names: Option<&[String]>) -> Result<Vec<RunResult>, String> {
        match names {
            Some(ns) if !ns.is_empty() => Err(ns[0].clone()),
            _ => Ok(self.job_status.into_iter().collect()),
        }
    }
}

fn apply_set_variable(
    vars: &mut Variables,
    outputs: &mut BTreeMap<String, String>,
    step: &Step,
    sv: &SetVariable,
    log: &LogSink,
) {
    let name = match (&step.name, sv.is_output) {
        (Some(step_name), true) => format!("{step_name}.{}", sv.name),
        _ => sv.name.clone(),
    };
    if vars.get_var(&name).is_some_and(|v| v.readonly) {
        log.line(
            Stream::System,
            &format!("##[warning]variable `{name}` is read-only and was not changed"),
        );
        return;
    }
    vars.insert(Var {
        name: name.clone(),
        value: sv.value.clone(),
        secret: sv.is_secret,
        readonly: sv.is_readonly,
    });
    if sv.is_output {
        outputs.insert(name, sv.value.clone());
        if step.name.is_none() {
            log.line(Stream::System, &format!("##[warning]output variable `{}` is set by a step without `name:`; it is visible to later steps only as `{}`", sv.name, sv.name));
        }
    }
}

/// Run one job's steps in order.
pub async fn run_job(
    job: &Job,
    cfg: &ExecConfig,
    tasks: &dyn TaskRunner,
    log: &LogSink,
) -> JobOutcome {
    let vars = cfg.variables.clone();
    for s in vars.secrets() {
        log.add_secret(&s);
    }
    let mut st = JobState {
        vars,
        outputs: BTreeMap::new(),
        steps: Vec::new(),
        canceled: canceled(cfg),
        timed_out: false,
        deadline: (job.timeout_in_minutes > 0)
            .then(|| Instant::now() + cfg.minute * job.timeout_in_minutes),
    };
    let jc = JobCtx { job, cfg, tasks };
    for (i, step) in job.steps.iter().enumerate() {
        let slog = log.for_step(i);
        let label = st.vars.expand(&step.label());
        let job_status = job_status(&st.steps);
        st.vars.set(
            "Agent.JobStatus",
            job_status.unwrap_or(RunResult::Succeeded).as_str(),
        );
        st.canceled |= canceled(cfg);
        let mut outcome = StepOutcome {
            index: i,
            label: label.clone(),
            result: RunResult::Skipped,
            exit_code: None,
            attempts: 0,
            message: None,
        };
        if !st.should_run(step, job_status, &label, &slog, &mut outcome) {
            st.steps.push(outcome);
            continue;
        }
        slog.line(Stream::System, &format!("##[section]Starting: {label}"));
        st.run_attempts(&jc, step, &label, &slog, &mut outcome)
            .await;
        st.finish_step(step, &label, &slog, outcome);
    }
    st.finish()
}

/// What a job's steps run with.
struct JobCtx<'a> {
    job: &'a Job,
    cfg: &'a ExecConfig,
    tasks: &'a dyn TaskRunner,
}

/// A job's progress through its steps.
struct JobState {
    vars: Variables,
    outputs: BTreeMap<String, String>,
    steps: Vec<StepOutcome>,
    canceled: bool,
    timed_out: bool,
    deadline: Option<Instant>,
}

/// The job's status so far for `succeeded()`/`failed()`: `None` until a step has run.
fn job_status(steps: &[StepOutcome]) -> Option<RunResult> {
    let done: Vec<RunResult> = steps
        .iter()
        .map(|s: &StepOutcome| s.result)
        .filter(|r| *r != RunResult::Skipped)
        .collect();
    (!done.is_empty()).then(|| RunResult::aggregate(done))
}

impl JobState {
    /// Whether the step is enabled and its condition holds; if not, `outcome` says why.
    fn should_run(
        &self,
        step: &Step,
        job_status: Option<RunResult>,
        label: &str,
        slog: &LogSink,
        outcome: &mut StepOutcome,
    ) -> bool {
        if !step.enabled {
            outcome.message = Some("step is disabled".into());
            return false;
        }
        let cond = step
            .condition
            .clone()
            .unwrap_or_else(|| "succeeded()".into());
        let ctx = StepCtx {
            vars: &self.vars,
            canceled: self.canceled,
            job_status,
        };
        match expr::eval_condition(&cond, &ctx) {
            Ok(true) => true,
            Ok(false) => {
                slog.line(
                    Stream::System,
                    &format!("##[section]Skipping: {label} (condition `{cond}` was false)"),
                );
                outcome.message = Some(format!("condition `{cond}` was false"));
                false
            }
            Err(e) => {
                let msg = format!("step condition `{cond}` could not be evaluated: {e}");
                slog.line(Stream::System, &format!("##[error]{msg}"));
                outcome.result = RunResult::Failed;
                outcome.message = Some(msg);
                false
            }
        }
    }

    /// Runs the step, again after a failure while it has retries left.
    async fn run_attempts(
        &mut self,
        jc: &JobCtx<'_>,
        step: &Step,
        label: &str,
        slog: &LogSink,
        outcome: &mut StepOutcome,
    ) {
        let attempts_max = step.retry_count_on_task_failure + 1;
        loop {
            outcome.attempts += 1;
            let (step_cfg, timeout) = self.attempt_config(jc, step);
            let (result, exit, msg, svs) =
                run_step(step, &self.vars, &step_cfg, jc.tasks, slog, timeout).await;
            outcome.exit_code = exit;
            for sv in &svs {
                apply_set_variable(&mut self.vars, &mut self.outputs, step, sv, slog);
            }
            let (result, msg) = self.past_deadline(jc.job, result, msg);
            outcome.result = result;
            outcome.message = msg;
            if result == RunResult::Failed
                && outcome.attempts < attempts_max
                && !canceled(&step_cfg)
            {
                slog.line(
                    Stream::System,
                    &format!(
                        "##[warning]{label} failed; retrying (attempt {} of {attempts_max})",
                        outcome.attempts + 1
                    ),
                );
                tokio::time::sleep(jc.cfg.retry_delay).await;
                continue;
            }
            break;
        }
    }

    /// An attempt's settings and timeout: the step's, capped by what is left of the job's.
    fn attempt_config<'c>(
        &self,
        jc: &JobCtx<'c>,
        step: &Step,
    ) -> (std::borrow::Cow<'c, ExecConfig>, Option<Duration>) {
        let cfg = jc.cfg;
        let step_timeout =
            (step.timeout_in_minutes > 0).then(|| cfg.minute * step.timeout_in_minutes);
        let job_left = self
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        let timeout = match (step_timeout, job_left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // After a cancel, steps that still run (always(), canceled()) are not canceled
        // again but get the job's cancel timeout (default 5 minutes).
        if self.canceled {
            let mut c = cfg.clone();
            c.cancel = None;
            let grace = cfg.minute * jc.job.cancel_timeout_in_minutes.unwrap_or(5);
            (
                std::borrow::Cow::Owned(c),
                Some(timeout.map_or(grace, |t| t.min(grace))),
            )
        } else {
            (std::borrow::Cow::Borrowed(cfg), timeout)
        }
    }

    /// A step that did not succeed by the job's deadline was cut short by the job's timeout.
    fn past_deadline(
        &mut self,
        job: &Job,
        result: RunResult,
        msg: Option<String>,
    ) -> (RunResult, Option<String>) {
        let job_expired = self.deadline.is_some_and(|d| Instant::now() >= d);
        if job_expired && result != RunResult::Succeeded {
            self.timed_out = true;
            (
                RunResult::Canceled,
                Some(format!(
                    "the job ran longer than its timeout of {} minutes",
                    job.timeout_in_minutes
                )),
            )
        } else {
            (result, msg)
        }
    }

    /// Logs a run step's end and records it; a canceled or timed-out step cancels the job.
    fn finish_step(&mut self, step: &Step, label: &str, slog: &LogSink, mut outcome: StepOutcome) {
        if outcome.result == RunResult::Failed && step.continue_on_error {
            outcome.result = RunResult::SucceededWithIssues;
        }
        if let Some(m) = &outcome.message {
            let kind = if outcome.result == RunResult::SucceededWithIssues {
                "warning"
            } else {
                "error"
            };
            if outcome.result != RunResult::Succeeded {
                slog.line(Stream::System, &format!("##[{kind}]{m}"));
            }
        }
        if outcome.result == RunResult::Canceled {
            self.canceled = true;
        }
        slog.line(
            Stream::System,
            &format!("##[section]Finishing: {label} ({})", outcome.result),
        );
        self.steps.push(outcome);
        if self.timed_out {
            self.canceled = true;
        }
    }

    fn finish(self) -> JobOutcome {
        let result = if self.canceled {
            RunResult::Canceled
        } else {
            match RunResult::aggregate(self.steps.iter().map(|s| s.result)) {
                RunResult::Skipped => RunResult::Succeeded,
                r => r,
            }
        };
        let result = if self.steps.iter().any(|s| s.result == RunResult::Failed) {
            RunResult::Failed
        } else {
            result
        };
        JobOutcome {
            result,
            steps: self.steps,
            outputs: self.outputs,
            variables: self.vars,
        }
    }
}

fn resolve_dir(vars: &Variables, cfg: &ExecConfig, dir: Option<&str>) -> PathBuf {
    let base = vars
        .get("System.DefaultWorkingDirectory")
        .map(PathBuf::from)
        .unwrap_or_else(|| cfg.workspace.clone());
    match dir {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(vars.expand(d));
            if p.is_absolute() {
                p
            } else {
                base.join(p)
            }
        }
        _ => base,
    }
}

fn step_env(vars: &Variables, cfg: &ExecConfig, step: &Step) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = cfg.base_env.clone();
    env.extend(vars.to_env());
    for (k, v) in &step.env {
        env.push((k.clone(), vars.expand(v)));
    }
    env
}

type StepRun = (RunResult, Option<i32>, Option<String>, Vec<SetVariable>);

/// What one attempt of a step runs with.
struct StepIo<'a> {
    vars: &'a Variables,
    cfg: &'a ExecConfig,
    log: &'a LogSink,
    timeout: Option<Duration>,
}

async fn run_step(
    step: &Step,
    vars: &Variables,
    cfg: &ExecConfig,
    tasks: &dyn TaskRunner,
    log: &LogSink,
    timeout: Option<Duration>,
) -> StepRun {
    let env = step_env(vars, cfg, step);
    let dir = resolve_dir(vars, cfg, step.working_directory.as_deref());
    let io = StepIo {
        vars,
        cfg,
        log,
        timeout,
    };
    match &step.kind {
        StepKind::Script {
            script,
            fail_on_stderr,
        }
        | StepKind::Bash {
            script,
            fail_on_stderr,
        } => run_script_step(&io, script, *fail_on_stderr, &dir, &env).await,
        StepKind::Checkout { repository, .. } => {
            let msg = if repository == "none" {
                "checkout: none (no sources)".to_string()
            } else {
                format!(
                    "sources are in {}",
                    vars.get("Build.SourcesDirectory").unwrap_or("")
                )
            };
            log.line(Stream::System, &msg);
            (RunResult::Succeeded, None, None, vec![])
        }
        StepKind::Download { source, .. } if source == "none" => {
            (RunResult::Succeeded, None, None, vec![])
        }
        StepKind::Task { .. } | StepKind::Download { .. } => {
            run_task_step(&io, tasks, &step.kind, dir, env).await
        }
    }
}

/// A `script:`/`bash:` step; its working directory must exist for the runner user.
async fn run_script_step(
    io: &StepIo<'_>,
    script: &str,
    fail_on_stderr: bool,
    dir: &Path,
    env: &[(String, String)],
) -> StepRun {
    if !sandbox::is_kind_as(io.cfg.jail.identity, dir, true) {
        return (
            RunResult::Failed,
            None,
            Some(format!(
                "working directory {} does not exist",
                dir.display()
            )),
            vec![],
        );
    }
    let script = io.vars.expand(script);
    let spec = ScriptSpec {
        script: &script,
        working_directory: dir,
        env,
        timeout: io.timeout,
    };
    match run_script(spec, io.cfg, io.log).await {
        Err(e) => (
            RunResult::Failed,
            None,
            Some(format!("could not start {}: {e}", io.cfg.shell.display())),
            vec![],
        ),
        Ok(o) => script_result(o, fail_on_stderr, io.timeout),
    }
}

/// A script's process outcome as the step's result.
fn script_result(o: ProcessOutcome, fail_on_stderr: bool, timeout: Option<Duration>) -> StepRun {
    let (r, msg) = if o.canceled {
        (
            RunResult::Canceled,
            Some("the step was canceled".to_string()),
        )
    } else if o.timed_out {
        (
            RunResult::Failed,
            Some(format!(
                "the step timed out after {} and was killed",
                fmt_duration(timeout.unwrap_or_default())
            )),
        )
    } else if o.exit_code != Some(0) {
        let code = o
            .exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "none (killed by a signal)".into());
        (
            RunResult::Failed,
            Some(format!("bash exited with code {code}")),
        )
    } else if fail_on_stderr && o.wrote_stderr {
        (
            RunResult::Failed,
            Some("the script wrote to stderr (failOnStderr)".to_string()),
        )
    } else {
        (RunResult::Succeeded, None)
    };
    (r, o.exit_code, msg, o.set_variables)
}

/// A `task:` or `download:` step, run by the task runner; a cancel or timeout drops the task.
async fn run_task_step(
    io: &StepIo<'_>,
    tasks: &dyn TaskRunner,
    kind: &StepKind,
    dir: PathBuf,
    env: Vec<(String, String)>,
) -> StepRun {
    let (name, version, inputs) = task_inputs(kind, io.vars, io.cfg);
    if !supports(tasks, &name, version) {
        return (
            RunResult::Failed,
            None,
            Some(unknown_task_message(tasks, &name, version)),
            vec![],
        );
    }
    let inv = TaskInvocation {
        name,
        version,
        inputs,
        working_directory: dir,
        env,
        variables: io.vars,
        log: io.log.clone(),
        config: io.cfg,
    };
    let fut = tasks.run(inv);
    let cancel = wait_cancel(&io.cfg.cancel);
    let sleep = async {
        match io.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let log = io.log;
    tokio::select! {
        o = fut => {
            for sv in &o.set_variables {
                if sv.is_secret {
                    log.add_secret(&sv.value);
                }
            }
            (o.result, o.exit_code, o.message, o.set_variables)
        }
        _ = cancel => (RunResult::Canceled, None, Some("the step was canceled".into()), vec![]),
        _ = sleep => (RunResult::Failed, None, Some(format!("the step timed out after {}", fmt_duration(io.timeout.unwrap_or_default()))), vec![]),
    }
}

/// The task a `task:` or `download:` step calls: name, major version and expanded inputs.
fn task_inputs(
    kind: &StepKind,
    vars: &Variables,
    cfg: &ExecConfig,
) -> (String, u32, Vec<(String, String)>) {
    match kind {
        StepKind::Task {
            name,
            version,
            inputs,
        } => (
            name.clone(),
            *version,
            inputs
                .iter()
                .map(|(k, v)| (k.clone(), vars.expand(v)))
                .collect::<Vec<_>>(),
        ),
        StepKind::Download {
            source,
            artifact,
            patterns,
        } => (
            "DownloadPipelineArtifact".to_string(),
            2,
            download_inputs(vars, cfg, source, artifact.as_deref(), patterns.as_deref()),
        ),
        _ => unreachable!(),
    }
}

/// DownloadPipelineArtifact@2's inputs for a `download:` step.
fn download_inputs(
    vars: &Variables,
    cfg: &ExecConfig,
    source: &str,
    artifact: Option<&str>,
    patterns: Option<&str>,
) -> Vec<(String, String)> {
    let ws = vars
        .get("Pipeline.Workspace")
        .map(PathBuf::from)
        .unwrap_or_else(|| cfg.workspace.clone());
    let current = source == "current";
    // `download: ci` + `artifact: drop` → $(Pipeline.Workspace)/ci/drop (Azure's
    // layout); without `artifact`, every artifact goes to its own folder below.
    let mut path = if current { ws.clone() } else { ws.join(source) };
    if let Some(a) = artifact {
        path = path.join(vars.expand(a));
    }
    let mut inputs = vec![(
        "buildType".to_string(),
        if current { "current" } else { "specific" }.to_string(),
    )];
    if !current {
        inputs.push(("pipeline".into(), source.to_string()));
    }
    if let Some(a) = artifact {
        inputs.push(("artifact".into(), vars.expand(a)));
    }
    if let Some(p) = patterns {
        inputs.push(("patterns".into(), vars.expand(p)));
    }
    inputs.push(("path".into(), path.to_string_lossy().into_owned()));
    inputs
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{} minute(s)", s / 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
