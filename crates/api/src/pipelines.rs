//! Hosted repositories, pipelines and runs: the daemon's `/scaleset/...` endpoints (outside ARM).
//!
//! - `/scaleset/git/<name>.git/...`: git smart HTTP (`git http-backend`) over the repositories in
//!   `$SCALESET_HOME/repos`. Auth: HTTP Basic whose password is the daemon token (any user name),
//!   or `Authorization: Bearer <token>`; an unauthenticated request gets a Basic challenge so
//!   `git push http://x:<token>@host/scaleset/git/app.git` works. Pushes to one repository are
//!   serialized; each updated ref is matched against the repository's pipelines and the matching
//!   runs are queued. The push answer carries `remote:` lines naming the queued runs (or saying
//!   that no pipeline matched); `GET /scaleset/repos/{name}` shows the last push's outcome too.
//! - Pipelines of a repository (the naming rule): at a commit, the top-level
//!   `azure-pipelines.yml`/`.yaml` is the pipeline named `<repo>`; every other top-level
//!   `*.yml`/`*.yaml` whose file name contains `pipeline`, and every `*.yml`/`*.yaml` directly
//!   under `pipelines/`, is the pipeline `<repo>-<file stem>` (e.g. `release-pipeline.yml` in
//!   repo `app` is `app-release-pipeline`). Release pipelines refer to CI pipelines by these names
//!   in `resources.pipelines[].source`.
//! - Runs execute one at a time on a background task; each completed run queues the release
//!   runs its success triggers (`resources.pipelines`). Records (SQLite) and logs live in
//!   `$SCALESET_HOME/pipelines/runs` and survive restarts (runs interrupted by a restart are
//!   completed as failed at start).
//! - JSON endpoints: `GET /scaleset/repos`, `GET|PUT|DELETE /scaleset/repos/{name}`,
//!   `GET /scaleset/pipelines`, `GET /scaleset/pipelines/{name}`,
//!   `GET|POST /scaleset/pipelines/{name}/runs` (POST body `{"branch": "main"}`, optional),
//!   `GET /scaleset/runs[?pipeline=]`, `GET /scaleset/runs/{id}`,
//!   `GET /scaleset/runs/{id}/logs[?follow=true]` (text; follow streams until the run ends),
//!   `POST /scaleset/runs/{id}/cancel`.
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use pipeline::artifacts::ArtifactStore;
use pipeline::git::{self, RepoStore};
use pipeline::runner::{
    pipelines_for_completed_run, pipelines_for_push, PipelineDefinition, RunReason, RunRequest,
    RunStatus, RunStore, Runner, RunnerConfig, TriggerMatch,
};
use pipeline::tasks::{BakeRequest, BakedImage, Baker, EnvVar, ScaleSets, StdTasks};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{mpsc, watch};

/// The pipeline side of the daemon.
pub struct PipelineService {
    pub root: PathBuf,
    pub repos: RepoStore,
    pub runs: RunStore,
    pub artifacts: ArtifactStore,
    runner: Runner,
    shim_dir: PathBuf,
    repo_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    cancels: Mutex<HashMap<u64, watch::Sender<bool>>>,
    queue_tx: mpsc::UnboundedSender<RunRequest>,
    queue_rx: Mutex<Option<mpsc::UnboundedReceiver<RunRequest>>>,
    /// `SCALESET_PIPELINE_PROVIDER=azure`: PackerBuild@1 and AzureVmssDeployment@1 act on Azure.
    azure: Option<AzureTasks>,
}

/// The release tasks' Azure back ends: the subscription, and Image Builder's settings (or why
/// they are missing, reported by PackerBuild@1 when a pipeline bakes).
struct AzureTasks {
    azure: Arc<azure::Azure>,
    image_builder: Result<azure::tasks::ImageBuilderSettings, String>,
}

/// The `az` environment of AzureCLI@2 with the azure provider: the shim acts on Azure with an
/// access token the daemon got for the run (ARM only, masked, expiring within about an hour; an
/// Azure token cannot be revoked early, unlike the local run tokens). Nothing of the daemon's
/// own credential (a client secret, the az login) reaches the job.
fn azure_az_env(az: &azure::Azure, token: Option<&str>) -> Vec<EnvVar> {
    let mut env = vec![
        EnvVar::plain("SCALESET_PROVIDER", "azure"),
        EnvVar::plain("AZURE_SUBSCRIPTION_ID", az.subscription.clone()),
        EnvVar::plain("SCALESET_AZURE_ENDPOINT", az.client.base()),
        EnvVar::plain("SCALESET_HOME", "/nonexistent"),
    ];
    if let Some(t) = token {
        env.push(EnvVar::secret("AZURE_ACCESS_TOKEN", t));
    }
    env
}

/// A baker that cannot bake: says why.
struct NoBaker(String);

impl Baker for NoBaker {
    fn bake(&self, _: BakeRequest, _: &mut dyn FnMut(&str)) -> Result<BakedImage, String> {
        Err(self.0.clone())
    }
}

/// `SCALESET_PIPELINE_PROVIDER`: unset or `local` (the daemon), or `azure` (from the
/// environment: `azure::Azure::from_env`, `azure::tasks::ImageBuilderSettings::from_env`).
fn azure_tasks(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<AzureTasks>, String> {
    match env("SCALESET_PIPELINE_PROVIDER").as_deref() {
        None | Some("") | Some("local") => Ok(None),
        Some("azure") => {
            let az = azure::Azure::from_env(env)
                .map_err(|e| format!("SCALESET_PIPELINE_PROVIDER=azure: {e}"))?;
            Ok(Some(AzureTasks {
                azure: Arc::new(az),
                image_builder: azure::tasks::ImageBuilderSettings::from_env(env),
            }))
        }
        Some(other) => Err(format!(
            "SCALESET_PIPELINE_PROVIDER `{other}`: expected local or azure"
        )),
    }
}

impl PipelineService {
    /// Opens `home/repos` and `home/pipelines/{runs,work,artifacts,bin}`; the `az` shim is a
    /// symlink to `exe`.
    pub fn open(home: &Path, exe: &Path) -> Result<PipelineService, String> {
        let root = home.join("pipelines");
        let shim_dir = root.join("bin");
        // Jobs (the runner user) reach only their build directories, the az shim and the
        // tool mounts; repositories, run records and artifacts are the daemon's.
        use std::os::unix::fs::PermissionsExt;
        for (d, mode) in [
            (home.join("repos"), 0o700),
            (root.clone(), 0o711),
            (root.join("runs"), 0o700),
            (root.join("artifacts"), 0o700),
            (root.join("work"), 0o711),
            (root.join("homes"), 0o711),
            (root.join("agent"), 0o755),
            (shim_dir.clone(), 0o755),
        ] {
            std::fs::create_dir_all(&d)
                .and_then(|_| std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)))
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        // A copy, not a symlink: jobs run as the runner user, who may not reach the daemon's
        // own binary (e.g. under /root).
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
                .and_then(|_| {
                    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
                })
                .and_then(|_| std::fs::rename(&tmp, &az))
                .map_err(|e| format!("cannot create {}: {e}", az.display()))?;
        }
        let runs = RunStore::new(root.join("runs"));
        let artifacts = ArtifactStore::new(root.join("artifacts"));
        let mut rc = RunnerConfig::new(root.join("work"));
        // Like a self-hosted agent: sources (and build outputs such as target/) persist per
        // pipeline so a push rebuilds incrementally.
        rc.reuse_sources = true;
        agent_identity(&root, &mut rc);
        let runner = Runner::new(rc, runs.clone()).with_artifacts(artifacts.clone());
        let (queue_tx, rx) = mpsc::unbounded_channel();
        Ok(PipelineService {
            repos: RepoStore::new(home.join("repos")),
            runs,
            artifacts,
            runner,
            shim_dir,
            root,
            repo_locks: Default::default(),
            cancels: Default::default(),
            queue_tx,
            queue_rx: Mutex::new(Some(rx)),
            azure: azure_tasks(&|k| std::env::var(k).ok())?,
        })
    }

    /// The pipelines of `repo` at `commit` (see the module docs for the naming rule).
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
        let mut defs = Vec::new();
        for f in String::from_utf8_lossy(&out.stdout).lines() {
            let is_yaml = f.ends_with(".yml") || f.ends_with(".yaml");
            if !is_yaml {
                continue;
            }
            let stem = f
                .rsplit('/')
                .next()
                .unwrap_or(f)
                .trim_end_matches(".yml")
                .trim_end_matches(".yaml");
            let name = if f == "azure-pipelines.yml" || f == "azure-pipelines.yaml" {
                repo.to_string()
            } else if (!f.contains('/') && f.contains("pipeline"))
                || (f.starts_with("pipelines/") && f.matches('/').count() == 1)
            {
                format!("{repo}-{stem}")
            } else {
                continue;
            };
            defs.push(PipelineDefinition {
                name,
                repo: repo.to_string(),
                yaml_path: f.to_string(),
                default_branch: default_branch.to_string(),
            });
        }
        defs
    }

    fn default_branch(info: &git::RepoInfo) -> String {
        info.head
            .as_deref()
            .and_then(|h| h.strip_prefix("refs/heads/"))
            .unwrap_or("main")
            .to_string()
    }

    /// Every pipeline of every repository, read at each repository's default branch.
    pub fn all_definitions(&self) -> Vec<PipelineDefinition> {
        let mut out = Vec::new();
        for info in self.repos.list().unwrap_or_default() {
            let b = Self::default_branch(&info);
            let full = format!("refs/heads/{b}");
            if let Some(c) = info.branches.get(&full) {
                out.extend(self.definitions_at(&info.name, c, &b));
            }
        }
        out
    }

    fn find_definition(&self, name: &str) -> Option<PipelineDefinition> {
        self.all_definitions()
            .into_iter()
            .find(|d| d.name.eq_ignore_ascii_case(name))
    }

    /// Records the run as queued and hands it to the worker.
    pub fn enqueue(&self, t: &TriggerMatch) -> Result<u64, String> {
        let id = self.runs.next_id().map_err(|e| e.to_string())?;
        let req = t.request(id, &self.repos);
        self.runs.queue(&req).map_err(|e| e.to_string())?;
        self.queue_tx.send(req).map_err(|e| e.to_string())?;
        Ok(id)
    }

    fn repo_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.repo_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The tasks of one run; `run_token` is the run's own ARM credential for the `az` shim, or
    /// with the azure provider `azure_token` an access token for Azure.
    fn tasks(&self, st: &Arc<AppState>, run_token: &str, azure_token: Option<&str>) -> StdTasks {
        let mut t = StdTasks::new(self.artifacts.clone());
        let weak = Arc::downgrade(st);
        t.baker = Some(Arc::new(DaemonBaker(weak.clone())));
        t.scale_sets = Some(Arc::new(DaemonScaleSets(weak)));
        if let Some(a) = &self.azure {
            let rt = tokio::runtime::Handle::current();
            t.scale_sets = Some(Arc::new(azure::tasks::AzureScaleSets {
                azure: a.azure.clone(),
                rt: rt.clone(),
            }));
            t.baker = Some(match &a.image_builder {
                Ok(settings) => Arc::new(azure::tasks::AzureBaker {
                    blobs: azure::blob::Blobs::for_azure(&a.azure),
                    azure: a.azure.clone(),
                    settings: settings.clone(),
                    rt,
                }),
                Err(e) => Arc::new(NoBaker(e.clone())),
            });
        }
        t.az_shim_dir = Some(self.shim_dir.clone());
        let endpoint = std::fs::read_to_string(st.cfg.home.join("endpoint"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| format!("http://{}", st.cfg.listen));
        t.az_env = vec![
            EnvVar::plain("SCALESET_ENDPOINT", endpoint),
            EnvVar::secret("SCALESET_TOKEN", run_token.to_string()),
            // Nothing of the daemon's home: the shim needs only the endpoint and the token.
            EnvVar::plain("SCALESET_HOME", "/nonexistent"),
        ];
        if let Some(a) = &self.azure {
            t.az_env = azure_az_env(&a.azure, azure_token);
        }
        t
    }
}

/// Jobs run as the unprivileged user `$SCALESET_RUNNER_USER` (default `scaleset-runner`, which
/// scripts/install-deps.sh creates), never as root: without that user every run fails with a
/// message saying how to create it. Each pipeline has its own home `root/homes/p-<pipeline>`
/// (HOME and CARGO_HOME); a job's mount namespace shows it only its own build directory and
/// home, and the daemon's rustup toolchains and cargo binaries read-only at
/// `root/agent/{rustup,cargo-bin}` (like an agent's tool cache). Each run has its own cgroup.
fn agent_identity(root: &Path, rc: &mut RunnerConfig) {
    let name = std::env::var("SCALESET_RUNNER_USER")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "scaleset-runner".into());
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let found = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[0] == name)
            .then(|| Some((f[2].parse::<u32>().ok()?, f[3].parse::<u32>().ok()?)))
            .flatten()
    });
    let (uid, gid) = match found {
        Some((0, _)) | Some((_, 0)) => {
            rc.unavailable = Some(format!(
                "the runner user `{name}` is root: pipeline jobs never run as root"
            ));
            return;
        }
        Some(x) => x,
        None => {
            tracing::error!(user = %name, "no such user: pipeline runs will fail (create it with scripts/install-deps.sh)");
            rc.unavailable = Some(format!(
                "pipeline jobs run as the unprivileged user `{name}`, which does not exist on this machine: create it (scripts/install-deps.sh does) or set SCALESET_RUNNER_USER"
            ));
            return;
        }
    };
    let own_home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    let rustup = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| own_home.join(".rustup"));
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| own_home.join(".cargo"))
        .join("bin");
    let agent = root.join("agent");
    let mut path = String::new();
    let mut env = vec![
        ("USER".to_string(), name.clone()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
    ];
    for (src, mnt) in [(&rustup, "rustup"), (&cargo_bin, "cargo-bin")] {
        let dst = agent.join(mnt);
        if src.is_dir() && std::fs::create_dir_all(&dst).is_ok() {
            rc.bind_ro.push((src.clone(), dst.clone()));
            if mnt == "rustup" {
                env.push(("RUSTUP_HOME".into(), dst.to_string_lossy().into_owned()));
            } else {
                path = format!("{}:", dst.display());
            }
        }
    }
    path.push_str("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    env.push(("PATH".into(), path));
    rc.base_env = env;
    rc.identity = Some(pipeline::sandbox::Identity { uid, gid });
    rc.homes_root = Some(root.join("homes"));
    rc.isolate = true;
    let repo_mount = agent.join("repo");
    if std::fs::create_dir_all(&repo_mount).is_ok() {
        rc.repo_mount = Some(repo_mount);
    }
    match pipeline::cgroup::Hierarchy::detect(&cgroup_group(root)) {
        Ok(h) => rc.cgroups = Some(h),
        Err(e) => {
            rc.unavailable = Some(format!(
                "pipeline runs need a cgroup of their own so that nothing they start outlives them: {e}"
            ))
        }
    }
    tracing::info!(user = %name, uid, "pipeline jobs run as an unprivileged user");
}

/// The cgroup folder of this daemon's runs: one per home, so test daemons don't collide.
fn cgroup_group(root: &Path) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(root.as_os_str().as_encoded_bytes());
    format!("scaleset-runs-{}", hex::encode(&h[..6]))
}

/// Completes runs interrupted by a restart and starts the run worker (call once, from `serve`).
pub fn start(st: &Arc<AppState>) {
    let Some(svc) = st.pipelines.clone() else {
        return;
    };
    // Processes of runs a previous daemon left behind die before anything new runs.
    if let Some(h) = &svc.runner.config.cgroups {
        for name in h.existing() {
            if let Err(e) = h.get(&name).remove() {
                tracing::error!(cgroup = %name, error = %e, "cannot clean up a previous run's processes");
            }
        }
    }
    match svc.runs.fail_interrupted() {
        Ok(ids) if !ids.is_empty() => tracing::warn!(?ids, "runs interrupted by a restart failed"),
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "cannot scan pipeline runs"),
    }
    // Acknowledged runs are resumed, in order, before anything new is queued.
    for r in svc.runs.queued().unwrap_or_default() {
        match r.request(&svc.repos) {
            Some(req) => {
                tracing::info!(run = r.id, pipeline = %r.pipeline, "resuming a queued run");
                let _ = svc.queue_tx.send(req);
            }
            None => {
                let _ = svc.runs.cancel_queued(r.id);
            }
        }
    }
    catch_up(&svc);
    let Some(mut rx) = svc
        .queue_rx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    else {
        return;
    };
    let weak = Arc::downgrade(st);
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let Some(st) = weak.upgrade() else { return };
            let Some(svc) = st.pipelines.clone() else {
                return;
            };
            match svc.runs.get(req.run_id) {
                Ok(Some(r)) if r.status == RunStatus::Queued => {}
                _ => continue, // canceled while queued
            }
            let (tx, cancel) = watch::channel(false);
            svc.cancels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(req.run_id, tx);
            let id = req.run_id;
            let run_token = st.mint_run_token(id);
            let azure_token = match &svc.azure {
                Some(a) => match a
                    .azure
                    .client
                    .credential()
                    .get_token(azure::credential::ARM_RESOURCE)
                    .await
                {
                    Ok(t) => Some(t.token),
                    Err(e) => {
                        tracing::warn!(run = id, error = %e, "no Azure access token for the run's az");
                        None
                    }
                },
                None => None,
            };
            let tasks = svc.tasks(&st, &run_token, azure_token.as_deref());
            let rec = svc.runner.run(req, &tasks, cancel).await;
            st.revoke_run_token(&run_token);
            svc.cancels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            tracing::info!(run = id, pipeline = %rec.pipeline, result = ?rec.result, "pipeline run finished");
            // Reads and compiles YAML: off the async workers.
            let (s2, r2) = (svc.clone(), rec.clone());
            let m = tokio::task::spawn_blocking(move || {
                pipelines_for_completed_run(&s2.all_definitions(), &s2.repos, &r2)
            })
            .await
            .unwrap_or_default();
            for n in &m.notes {
                tracing::warn!(run = id, "{n}");
            }
            for t in &m.runs {
                match svc.enqueue(t) {
                    Ok(rid) => {
                        tracing::info!(run = rid, pipeline = %t.definition.name, trigger = id, "queued by pipeline resource")
                    }
                    Err(e) => tracing::error!(error = %e, "cannot queue run"),
                }
            }
        }
    });
}

struct LineWriter<'a> {
    buf: Vec<u8>,
    log: &'a mut dyn FnMut(&str),
}

impl std::io::Write for LineWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        while let Some(i) = self.buf.iter().position(|c| *c == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            (self.log)(String::from_utf8_lossy(&line[..line.len() - 1]).trim_end());
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// PackerBuild@1 → the daemon's image store.
struct DaemonBaker(Weak<AppState>);

impl Baker for DaemonBaker {
    fn bake(&self, req: BakeRequest, log: &mut dyn FnMut(&str)) -> Result<BakedImage, String> {
        let st = self.0.upgrade().ok_or("the daemon is shutting down")?;
        let spec = image::BakeSpec {
            name: req.name.clone(),
            base: req.base.clone(),
            package_dir: req.package_dir.clone(),
            script: req.script.clone(),
            args: req.args.clone(),
            // Packer's build VM has network access (deployment scripts apt-get install).
            network: true,
            mirror: None,
        };
        let mut w = LineWriter {
            buf: Vec::new(),
            log,
        };
        let img = st
            .images
            .bake(&spec, &mut w)
            .map_err(|e| crate::error::error_chain(&e))?;
        let rg = req.resource_group.as_deref().unwrap_or("images");
        Ok(BakedImage {
            id: format!(
                "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.Compute/images/{}",
                DEFAULT_SUB, img.name
            ),
            name: img.name,
        })
    }
}

const DEFAULT_SUB: &str = "00000000-0000-0000-0000-000000000000";

/// AzureVmssDeployment@1 → the control plane's `set_image` (what `az vmss update --set
/// virtualMachineProfile.storageProfile.imageReference.id=...` does through the API).
struct DaemonScaleSets(Weak<AppState>);

impl ScaleSets for DaemonScaleSets {
    fn update_image(
        &self,
        resource_group: Option<&str>,
        vmss: &str,
        image_id: &str,
        log: &mut dyn FnMut(&str),
    ) -> Result<(), String> {
        let st = self.0.upgrade().ok_or("the daemon is shutting down")?;
        let rg = match resource_group {
            Some(rg) => rg.to_string(),
            None => st
                .find_vmss_group(DEFAULT_SUB, vmss)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("scale set `{vmss}` not found in any resource group"))?,
        };
        let image_id = if image_id.starts_with('/') {
            image_id.to_string()
        } else {
            format!("/subscriptions/{DEFAULT_SUB}/resourceGroups/{rg}/providers/Microsoft.Compute/images/{image_id}")
        };
        let res = control::Res {
            sub: DEFAULT_SUB.into(),
            rg: rg.clone(),
            name: vmss.to_string(),
        };
        model::names::vmss(vmss).map_err(|e| e.message)?;
        st.cp
            .set_image(&st.images, &res, &image_id)
            .map_err(|e| e.to_string())?;
        log(&format!("scale set {rg}/{vmss} now uses image {image_id}"));
        Ok(())
    }
}

fn bearer_or_basic_ok(st: &AppState, headers: &HeaderMap) -> Option<String> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (user, token) = if let Some(t) = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
    {
        ("scaleset".to_string(), t.to_string())
    } else {
        let b = v
            .strip_prefix("Basic ")
            .or_else(|| v.strip_prefix("basic "))?;
        let dec = b64_decode(b.trim())?;
        let s = String::from_utf8(dec).ok()?;
        let (u, p) = s.split_once(':')?;
        (
            if u.is_empty() {
                "scaleset".into()
            } else {
                u.to_string()
            },
            p.to_string(),
        )
    };
    control::ct_eq(token.as_bytes(), st.auth.token.as_bytes()).then_some(user)
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn unavailable() -> ApiError {
    ApiError::Client {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "PipelinesUnavailable",
        message: "pipelines are not enabled in this daemon".into(),
    }
}

/// Entry point for every `/scaleset/...` request.
pub async fn handle(
    st: Arc<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Webhooks authenticate with the repository's own secret, never the daemon token.
    if let Some(name) = uri.path().strip_prefix("/scaleset/hooks/") {
        if method != Method::POST {
            let e = ApiError::Client {
                status: StatusCode::METHOD_NOT_ALLOWED,
                code: "MethodNotAllowed",
                message: "webhooks are POST requests".into(),
            };
            return crate::limits::refuse(e, Some(body));
        }
        let Some(svc) = st.pipelines.clone() else {
            return crate::limits::refuse(unavailable(), Some(body));
        };
        return webhook(&st, &svc, name, &headers, body).await;
    }
    let Some(user) = bearer_or_basic_ok(&st, &headers) else {
        let e = ApiError::Client {
            status: StatusCode::UNAUTHORIZED,
            code: "AuthenticationFailed",
            message: "Authentication failed: send the daemon token as a Bearer token or as the HTTP Basic password.".into(),
        };
        let mut r = crate::limits::refuse(e, Some(body));
        r.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static("Basic realm=\"scaleset\""),
        );
        return r;
    };
    let Some(svc) = st.pipelines.clone() else {
        return crate::limits::refuse(unavailable(), Some(body));
    };
    let path = uri
        .path()
        .strip_prefix("/scaleset")
        .unwrap_or("")
        .to_string();
    if let Some(rest) = path.strip_prefix("/git") {
        return git_request(
            &st,
            &svc,
            &method,
            rest,
            uri.query().unwrap_or(""),
            &headers,
            body,
            &user,
        )
        .await;
    }
    let q = crate::query_map(&uri);
    let limit = crate::limits::JSON_BODY_LIMIT;
    let body =
        match crate::limits::read_body(body, &headers, limit, st.cfg.limits.body_timeout).await {
            Ok(b) => b,
            Err(e) => return crate::limits::refuse(e, None),
        };
    match api(&st, &svc, &method, &path, &q, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn git_request(
    st: &AppState,
    svc: &Arc<PipelineService>,
    method: &Method,
    path_info: &str,
    query: &str,
    headers: &HeaderMap,
    body: Body,
    user: &str,
) -> Response {
    let Some(gp) = git::parse_path_info(method.as_str(), path_info, query) else {
        let e = ApiError::not_found(
            "RepositoryNotFound",
            format!("no repository at {path_info}"),
        );
        return crate::limits::refuse(e, Some(body));
    };
    if !svc.repos.path(&gp.repo).is_dir() {
        let e = ApiError::not_found(
            "RepositoryNotFound",
            format!(
                "repository `{}` does not exist; create it with `scaleset repo create {}`",
                gp.repo, gp.repo
            ),
        );
        return crate::limits::refuse(e, Some(body));
    }
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let req = crate::gitcgi::Request {
        method: method.as_str(),
        path_info,
        query,
        content_type: h("content-type"),
        content_encoding: h("content-encoding"),
        git_protocol: h("git-protocol"),
        content_length: crate::limits::content_length(headers),
        remote_user: Some(user),
        remote_addr: Some("127.0.0.1"),
    };
    let lock = svc.repo_lock(&gp.repo);
    let _guard = if gp.is_push_post {
        Some(lock.lock().await)
    } else {
        None
    };
    let before = if gp.is_push_post {
        svc.repos.refs(&gp.repo).unwrap_or_default()
    } else {
        Default::default()
    };
    let (cap, idle) = (st.cfg.limits.max_push_bytes, st.cfg.limits.body_timeout);
    let (resp, prefix) =
        match crate::gitcgi::http_backend(svc.repos.root(), &req, body, cap, idle).await {
            Ok(r) => r,
            Err(e) => return crate::limits::refuse(git_body_error(&gp.repo, e), None),
        };
    let mut out_body = resp.body;
    if gp.is_push_post && resp.status < 300 {
        let after = svc.repos.refs(&gp.repo).unwrap_or_default();
        let notes = on_push_blocking(svc, &gp.repo, &before, &after).await;
        // The capabilities are on the first command line, well within the prefix.
        let sideband = prefix.windows(9).any(|w| w == b"side-band");
        if sideband && out_body.ends_with(b"0000") {
            out_body.truncate(out_body.len() - 4);
            for n in &notes {
                let msg = format!("scaleset: {n}\n");
                out_body.extend_from_slice(format!("{:04x}", msg.len() + 5).as_bytes());
                out_body.push(2);
                out_body.extend_from_slice(msg.as_bytes());
            }
            out_body.extend_from_slice(b"0000");
        }
    }
    let mut r = Response::builder().status(resp.status);
    for (k, v) in &resp.headers {
        if !k.eq_ignore_ascii_case("content-length") {
            r = r.header(k, v);
        }
    }
    r.body(Body::from(out_body))
        .unwrap_or_else(|e| ApiError::internal(e).into_response())
}

/// A git request body the daemon refused: too large, too slow, or broken.
fn git_body_error(repo: &str, e: crate::gitcgi::CgiError) -> ApiError {
    use crate::gitcgi::CgiError;
    let (status, code) = match &e {
        CgiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PushTooLarge"),
        CgiError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "RequestTimeout"),
        CgiError::Client(_) => (StatusCode::BAD_REQUEST, "InvalidRequestContent"),
        CgiError::Io(_) => return ApiError::internal(e),
    };
    let message = match &e {
        CgiError::TooLarge(cap) => format!(
            "the push to `{repo}` is larger than this daemon's limit of {cap} bytes \
             (scaleset serve --max-push-bytes, SCALESET_MAX_PUSH_BYTES); nothing was changed"
        ),
        e => format!("push to `{repo}`: {e}; nothing was changed"),
    };
    tracing::warn!(repo, %message, "git request refused");
    ApiError::Client {
        status,
        code,
        message,
    }
}

/// [`on_push`] on a blocking thread: it runs git and compiles every pipeline's YAML.
async fn on_push_blocking(
    svc: &Arc<PipelineService>,
    repo: &str,
    before: &std::collections::BTreeMap<String, String>,
    after: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let (svc, repo, before, after) = (svc.clone(), repo.to_string(), before.clone(), after.clone());
    tokio::task::spawn_blocking(move || on_push(&svc, &repo, &before, &after))
        .await
        .unwrap_or_else(|e| vec![format!("matching the push against pipelines failed: {e}")])
}

/// Matches a push's ref updates against the repository's pipelines and queues runs. Returns
/// human-readable lines (also stored as the repository's last push). The refs are compared
/// with those the last processed push left (`before` only when none is recorded), and the
/// runs are queued in one transaction with `after`: a daemon that dies between git moving the
/// refs and this point replays the push at start ([`catch_up`]).
fn on_push(
    svc: &PipelineService,
    repo: &str,
    before: &std::collections::BTreeMap<String, String>,
    after: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let before = match svc.runs.processed_refs(repo) {
        Ok(Some(p)) => p,
        _ => before.clone(),
    };
    let mut notes = Vec::new();
    let default_branch = svc
        .repos
        .get(repo)
        .ok()
        .flatten()
        .map(|i| PipelineService::default_branch(&i))
        .unwrap_or_else(|| "main".into());
    let mut matches = Vec::new();
    for u in git::diff_refs(&before, after) {
        let defs = if u.is_delete() {
            vec![]
        } else {
            svc.definitions_at(repo, &u.new, &default_branch)
        };
        match pipelines_for_push(&defs, &svc.repos, repo, &u) {
            Ok(m) => {
                notes.extend(m.notes.iter().cloned());
                matches.extend(m.runs.into_iter().map(|t| (t, u.clone())));
            }
            Err(e) => notes.push(format!("{}: {e}", u.name)),
        }
    }
    let mut reqs = Vec::new();
    for (t, _) in &matches {
        match svc.runs.next_id() {
            Ok(id) => reqs.push(t.request(id, &svc.repos)),
            Err(e) => notes.push(format!("cannot queue `{}`: {e}", t.definition.name)),
        }
    }
    if let Err(e) = svc.runs.commit_push(repo, after, &reqs) {
        notes.push(format!("cannot queue the push's runs: {e}"));
        return notes;
    }
    let mut queued = Vec::new();
    for ((t, u), req) in matches.iter().zip(reqs) {
        let id = req.run_id;
        if svc.queue_tx.send(req).is_err() {
            notes.push(format!(
                "run {id} is queued; it starts when the daemon restarts"
            ));
        }
        if t.reason == (RunReason::Push { batched: true }) {
            for old in svc
                .runs
                .batch_into(&t.definition.name, &t.branch, id)
                .unwrap_or_default()
            {
                notes.push(format!(
                    "run {old}, still queued, was batched into run {id}"
                ));
            }
        }
        queued.push(id);
        notes.push(format!(
            "queued run {id} of pipeline `{}` for {} at {}",
            t.definition.name,
            u.name,
            &u.new[..u.new.len().min(12)]
        ));
    }
    let rec = json!({"repository": repo, "time": crate::state::now_rfc3339(), "runs": queued, "notes": notes});
    let _ = std::fs::write(
        svc.root.join(format!("last-push-{repo}.json")),
        rec.to_string(),
    );
    notes
}

/// A new repository's refs (a mirror's, as cloned) count as processed: only later pushes run.
fn record_refs(svc: &PipelineService, name: &str) -> Result<(), ApiError> {
    let refs = svc.repos.refs(name).map_err(git_err)?;
    svc.runs
        .commit_push(name, &refs, &[])
        .map_err(ApiError::internal)
}

/// At start: pushes whose refs moved but whose runs were never queued (the daemon died in
/// between) are matched now; a repository without a record starts from its current refs.
fn catch_up(svc: &PipelineService) {
    for info in svc.repos.list().unwrap_or_default() {
        let now = svc.repos.refs(&info.name).unwrap_or_default();
        match svc.runs.processed_refs(&info.name) {
            Ok(Some(done)) if done != now => {
                for n in on_push(svc, &info.name, &done, &now) {
                    tracing::warn!(repo = %info.name, "push replayed at start: {n}");
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                if let Err(e) = svc.runs.commit_push(&info.name, &now, &[]) {
                    tracing::error!(repo = %info.name, error = %e, "cannot record the repository's refs");
                }
            }
            Err(e) => tracing::error!(repo = %info.name, error = %e, "cannot read processed refs"),
        }
    }
}

type Reply = Result<Response, ApiError>;

/// `POST /scaleset/hooks/{repo}`: a push webhook from GitHub or Azure Repos for a mirror.
/// Authenticated by the mirror's secret (see `pipeline::webhook`); the payload only says that
/// refs moved: the mirror is fetched and the refs that really moved trigger pipelines like a
/// push.
async fn webhook(
    st: &AppState,
    svc: &Arc<PipelineService>,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let name = crate::route::decode_segment(name);
    let auth = match webhook_credentials(svc, &name, headers) {
        Ok(a) => a,
        Err(e) => return crate::limits::refuse(e, Some(body)),
    };
    let limit = crate::limits::WEBHOOK_BODY_LIMIT;
    let body =
        match crate::limits::read_body(body, headers, limit, st.cfg.limits.body_timeout).await {
            Ok(b) => b,
            Err(e) => return crate::limits::refuse(e, None),
        };
    match webhook_push(svc, &name, headers, &auth, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// A webhook call's credentials: the mirror's secret, the signature, the Basic password.
struct HookAuth {
    secret: String,
    signature: Option<String>,
    password: Option<String>,
}

fn hook_unauthenticated(e: pipeline::webhook::HookError) -> ApiError {
    ApiError::Client {
        status: StatusCode::UNAUTHORIZED,
        code: "AuthenticationFailed",
        message: e.to_string(),
    }
}

/// Everything about a webhook's authentication that needs no body: a mirror with a secret, and
/// a signature or a password (which is checked here). Nothing is read before this passes.
fn webhook_credentials(
    svc: &PipelineService,
    name: &str,
    headers: &HeaderMap,
) -> Result<HookAuth, ApiError> {
    use pipeline::webhook::authenticate;
    // Unknown repositories and repositories without a secret look the same as a bad secret.
    let secret = svc.repos.webhook_secret(name).unwrap_or_default();
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let password = h("authorization")
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| b64_decode(b.trim()))
        .and_then(|d| String::from_utf8(d).ok())
        .and_then(|up| up.split_once(':').map(|(_, p)| p.to_string()));
    let signature = h("x-hub-signature-256").map(str::to_string);
    if signature.is_none() {
        authenticate(&secret, b"", None, password.as_deref()).map_err(hook_unauthenticated)?;
    } else if secret.is_empty() {
        authenticate("", b"", signature.as_deref(), None).map_err(hook_unauthenticated)?;
    }
    Ok(HookAuth {
        secret,
        signature,
        password,
    })
}

/// An authenticated webhook's payload: fetch the mirror, trigger what really moved.
async fn webhook_push(
    svc: &Arc<PipelineService>,
    name: &str,
    headers: &HeaderMap,
    auth: &HookAuth,
    body: &[u8],
) -> Reply {
    use pipeline::webhook::{authenticate, parse, HookEvent};
    let name = name.to_string();
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    authenticate(
        &auth.secret,
        body,
        auth.signature.as_deref(),
        auth.password.as_deref(),
    )
    .map_err(hook_unauthenticated)?;
    let refs = match parse(h("x-github-event"), body)
        .map_err(|e| ApiError::bad_request("InvalidWebhookPayload", e.to_string()))?
    {
        HookEvent::Ping => return json_ok(StatusCode::OK, json!({"notes": ["pong"]})),
        HookEvent::Ignored(ev) => {
            return json_ok(
                StatusCode::OK,
                json!({"notes": [format!("event `{ev}` ignored: only pushes trigger pipelines")]}),
            )
        }
        HookEvent::Push(refs) => refs,
    };
    let lock = svc.repo_lock(&name);
    let _g = lock.lock().await;
    let before = svc.repos.refs(&name).map_err(git_err)?;
    let (repos, n) = (svc.repos.clone(), name.clone());
    tokio::task::spawn_blocking(move || repos.fetch_mirror(&n))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::Client {
            status: StatusCode::BAD_GATEWAY,
            code: "MirrorFetchFailed",
            message: e.to_string(),
        })?;
    let after = svc.repos.refs(&name).map_err(git_err)?;
    let mut notes = on_push_blocking(svc, &name, &before, &after).await;
    for r in refs {
        if after.get(&r.name) != Some(&r.new) && !r.new.bytes().all(|b| b == b'0') {
            notes.push(format!(
                "{} is at {} after the fetch, not {} as the payload says",
                r.name,
                after.get(&r.name).map(String::as_str).unwrap_or("(absent)"),
                r.new
            ));
        }
    }
    json_ok(StatusCode::OK, json!({ "notes": notes }))
}

/// A request body as JSON; an empty body is `null`.
fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "InvalidRequestContent",
            format!("the body is not JSON: {e}"),
        )
    })
}

fn json_ok(status: StatusCode, v: Value) -> Reply {
    Ok((status, axum::Json(v)).into_response())
}

fn git_err(e: git::GitError) -> ApiError {
    let m = e.to_string();
    if matches!(e, git::GitError::NotFound(_)) {
        ApiError::not_found("RepositoryNotFound", m)
    } else if m.contains("invalid") || m.contains("name") {
        ApiError::bad_request("InvalidRepositoryName", m)
    } else {
        ApiError::internal(m)
    }
}

fn repo_json(svc: &PipelineService, st: &AppState, info: &git::RepoInfo) -> Value {
    let endpoint = std::fs::read_to_string(st.cfg.home.join("endpoint"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("http://{}", st.cfg.listen));
    let b = PipelineService::default_branch(info);
    let defs = info
        .branches
        .get(&format!("refs/heads/{b}"))
        .map(|c| svc.definitions_at(&info.name, c, &b))
        .unwrap_or_default();
    let last = std::fs::read_to_string(svc.root.join(format!("last-push-{}.json", info.name)))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .unwrap_or(Value::Null);
    json!({
        "name": info.name,
        "url": format!("{endpoint}/scaleset/git/{}.git", info.name),
        "defaultBranch": b,
        "branches": info.branches,
        "pipelines": defs.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
        "lastPush": last,
        "mirror": info.mirror,
        "webhookUrl": info.mirror.as_ref().map(|_| format!("{endpoint}/scaleset/hooks/{}", info.name)),
    })
}

fn def_json(svc: &PipelineService, d: &PipelineDefinition) -> Value {
    let last = svc
        .runs
        .list_pipeline(&d.name)
        .ok()
        .and_then(|v| v.into_iter().next());
    json!({
        "name": d.name,
        "repository": d.repo,
        "yamlPath": d.yaml_path,
        "defaultBranch": d.default_branch,
        "lastRun": last.as_ref().map(|r| r.id),
        "lastResult": last.as_ref().and_then(|r| r.result.map(|x| x.to_string())).or_else(|| last.as_ref().map(|r| format!("{:?}", r.status).to_lowercase())),
    })
}

fn run_json(r: &pipeline::runner::RunRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert(
            "state".into(),
            json!(match (&r.status, &r.result) {
                (RunStatus::Completed, Some(res)) => res.to_string().to_lowercase(),
                (s, _) => format!("{s:?}").to_lowercase(),
            }),
        );
        m.insert(
            "queued".into(),
            json!(pipeline::runner::rfc3339(r.queued_ms)),
        );
    }
    v
}

fn run_id(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request("InvalidRunId", format!("`{s}` is not a run id")))
}

async fn api(
    st: &Arc<AppState>,
    svc: &Arc<PipelineService>,
    method: &Method,
    path: &str,
    q: &HashMap<String, String>,
    body: &[u8],
) -> Reply {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segs.as_slice()) {
        ("GET", ["repos"]) => {
            let v: Vec<Value> = svc
                .repos
                .list()
                .map_err(git_err)?
                .iter()
                .map(|i| repo_json(svc, st, i))
                .collect();
            json_ok(StatusCode::OK, json!({ "value": v }))
        }
        ("GET", ["repos", name]) => {
            let info = svc.repos.get(name).map_err(git_err)?.ok_or_else(|| {
                ApiError::not_found(
                    "RepositoryNotFound",
                    format!("repository `{name}` does not exist"),
                )
            })?;
            json_ok(StatusCode::OK, repo_json(svc, st, &info))
        }
        ("PUT", ["repos", name]) => put_repo(st, svc, name, body).await,
        ("DELETE", ["repos", name]) => {
            // The build directories of its pipelines go with it.
            let pipelines: Vec<String> = svc
                .all_definitions()
                .into_iter()
                .filter(|d| d.repo == *name)
                .map(|d| d.name)
                .collect();
            svc.repos.delete(name).map_err(git_err)?;
            let _ = svc.runs.forget_repo(name);
            for p in pipelines {
                let _ = std::fs::remove_dir_all(svc.runner.build_dir(&p));
            }
            Ok(StatusCode::OK.into_response())
        }
        ("GET", ["pipelines"]) => {
            let v: Vec<Value> = svc
                .all_definitions()
                .iter()
                .map(|d| def_json(svc, d))
                .collect();
            json_ok(StatusCode::OK, json!({ "value": v }))
        }
        ("GET", ["pipelines", name]) => {
            let d = svc.find_definition(name).ok_or_else(|| no_pipeline(name))?;
            json_ok(StatusCode::OK, def_json(svc, &d))
        }
        ("GET", ["pipelines", name, "runs"]) => {
            let v: Vec<Value> = svc
                .runs
                .list_pipeline(name)
                .map_err(ApiError::internal)?
                .iter()
                .map(run_json)
                .collect();
            json_ok(StatusCode::OK, json!({ "value": v }))
        }
        ("POST", ["pipelines", name, "runs"]) => queue_run(svc, name, body),
        ("GET", ["runs"]) => {
            let list = match q.get("pipeline") {
                Some(p) => svc.runs.list_pipeline(p),
                None => svc.runs.list(),
            }
            .map_err(ApiError::internal)?;
            let v: Vec<Value> = list.iter().map(run_json).collect();
            json_ok(StatusCode::OK, json!({ "value": v }))
        }
        ("GET", ["runs", id]) => {
            let id = run_id(id)?;
            let rec = svc
                .runs
                .get(id)
                .map_err(ApiError::internal)?
                .ok_or_else(|| no_run(id))?;
            json_ok(StatusCode::OK, run_json(&rec))
        }
        ("GET", ["runs", id, "logs"]) => run_logs(svc, run_id(id)?, q),
        ("POST", ["runs", id, "cancel"]) => cancel_run(svc, run_id(id)?),
        _ => Err(ApiError::not_found(
            "NotFound",
            format!("no such endpoint: {method} /scaleset{path}"),
        )),
    }
}

/// `PUT /scaleset/repos/{name}`: a hosted repository, or a mirror of `mirror` (with its webhook
/// secret).
async fn put_repo(
    st: &Arc<AppState>,
    svc: &Arc<PipelineService>,
    name: &str,
    body: &[u8],
) -> Reply {
    let spec = json_body(body)?;
    if let Some(url) = spec.get("mirror") {
        let url = url.as_str().ok_or_else(|| {
            ApiError::bad_request("InvalidParameter", "`mirror` must be a repository URL")
        })?;
        let secret = spec["webhookSecret"].as_str().ok_or_else(|| {
            ApiError::bad_request(
                "InvalidParameter",
                "a mirror needs `webhookSecret`: webhook calls are authenticated with it",
            )
        })?;
        if svc.repos.get(name).map_err(git_err)?.is_some() {
            return Err(ApiError::Client {
                status: StatusCode::CONFLICT,
                code: "RepositoryExists",
                message: format!("repository `{name}` already exists"),
            });
        }
        let (repos, n, u, sec) = (
            svc.repos.clone(),
            name.to_string(),
            url.to_string(),
            secret.to_string(),
        );
        let info = tokio::task::spawn_blocking(move || repos.create_mirror(&n, &u, &sec))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| match e {
                git::GitError::Git(m) => ApiError::bad_request("InvalidMirror", m),
                e => git_err(e),
            })?;
        record_refs(svc, &info.name)?;
        return json_ok(StatusCode::CREATED, repo_json(svc, st, &info));
    }
    if svc.repos.get(name).map_err(git_err)?.is_some() {
        let info = svc
            .repos
            .get(name)
            .map_err(git_err)?
            .ok_or_else(|| ApiError::internal("vanished"))?;
        return json_ok(StatusCode::OK, repo_json(svc, st, &info));
    }
    let info = svc.repos.create(name).map_err(git_err)?;
    record_refs(svc, &info.name)?;
    json_ok(StatusCode::CREATED, repo_json(svc, st, &info))
}

/// `POST /scaleset/pipelines/{name}/runs`: queues a manual run of a branch.
fn queue_run(svc: &Arc<PipelineService>, name: &str, body: &[u8]) -> Reply {
    let d = svc.find_definition(name).ok_or_else(|| no_pipeline(name))?;
    let req = json_body(body)?;
    let branch = req["branch"]
        .as_str()
        .unwrap_or(&d.default_branch)
        .to_string();
    let full = pipeline::trigger::full_ref(&branch);
    let commit = git::resolve(&svc.repos.path(&d.repo), &full)
        .map_err(git_err)?
        .ok_or_else(|| {
            ApiError::bad_request(
                "BranchNotFound",
                format!("repository `{}` has no branch `{branch}`", d.repo),
            )
        })?;
    let t = TriggerMatch {
        definition: d,
        branch: full,
        commit,
        reason: RunReason::Manual,
        resources: vec![],
    };
    let id = svc.enqueue(&t).map_err(ApiError::internal)?;
    let rec = svc
        .runs
        .get(id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::internal("run vanished"))?;
    json_ok(StatusCode::CREATED, run_json(&rec))
}

/// `GET /scaleset/runs/{id}/logs[?follow=true]`.
fn run_logs(svc: &Arc<PipelineService>, id: u64, q: &HashMap<String, String>) -> Reply {
    svc.runs
        .get(id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| no_run(id))?;
    let follow = q.get("follow").is_some_and(|v| v == "true" || v == "1");
    if !follow {
        let text = svc.runs.logs(id).map_err(ApiError::internal)?;
        return Ok((
            StatusCode::OK,
            [("content-type", "text/plain; charset=utf-8")],
            text,
        )
            .into_response());
    }
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let runs = svc.runs.clone();
    tokio::spawn(async move {
        let _ = runs
            .follow(id, |line| tx.send(format!("{line}\n")).is_ok())
            .await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|s| (Ok::<_, std::io::Error>(Bytes::from(s)), rx))
    });
    Ok((
        StatusCode::OK,
        [("content-type", "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `POST /scaleset/runs/{id}/cancel`.
fn cancel_run(svc: &Arc<PipelineService>, id: u64) -> Reply {
    let rec = svc
        .runs
        .get(id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| no_run(id))?;
    if rec.status == RunStatus::Completed {
        return Err(ApiError::conflict(
            "RunCompleted",
            format!("run {id} already completed"),
        ));
    }
    if !svc.runs.cancel_queued(id).map_err(ApiError::internal)? {
        if let Some(tx) = svc
            .cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            let _ = tx.send(true);
        }
    }
    let rec = svc
        .runs
        .get(id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| no_run(id))?;
    json_ok(StatusCode::ACCEPTED, run_json(&rec))
}

fn no_pipeline(name: &str) -> ApiError {
    ApiError::not_found(
        "PipelineNotFound",
        format!("pipeline `{name}` does not exist (pipelines come from azure-pipelines.yml and *pipeline*.yml files on a repository's default branch; see `scaleset pipeline list`)"),
    )
}

fn no_run(id: u64) -> ApiError {
    ApiError::not_found("RunNotFound", format!("run {id} does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_provider_from_env() {
        let with = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(azure_tasks(&with(&[])).unwrap().is_none());
        assert!(
            azure_tasks(&with(&[("SCALESET_PIPELINE_PROVIDER", "local")]))
                .unwrap()
                .is_none()
        );
        assert_eq!(
            azure_tasks(&with(&[("SCALESET_PIPELINE_PROVIDER", "aws")])).err(),
            Some("SCALESET_PIPELINE_PROVIDER `aws`: expected local or azure".to_string())
        );
        assert_eq!(
            azure_tasks(&with(&[("SCALESET_PIPELINE_PROVIDER", "azure")])).err(),
            Some(
                "SCALESET_PIPELINE_PROVIDER=azure: the azure provider needs AZURE_SUBSCRIPTION_ID"
                    .to_string()
            )
        );
        // Without Image Builder settings the scale sets still act on Azure; bakes say why not.
        let a = azure_tasks(&with(&[
            ("SCALESET_PIPELINE_PROVIDER", "azure"),
            ("AZURE_SUBSCRIPTION_ID", "sub"),
            ("AZURE_ACCESS_TOKEN", "tok"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(a.azure.subscription, "sub");
        let names = |env: Vec<EnvVar>| -> Vec<(String, String, bool)> {
            env.into_iter()
                .map(|e| (e.name, e.value, e.secret))
                .collect()
        };
        let plain = |k: &str, v: &str| (k.to_string(), v.to_string(), false);
        let base = vec![
            plain("SCALESET_PROVIDER", "azure"),
            plain("AZURE_SUBSCRIPTION_ID", "sub"),
            plain("SCALESET_AZURE_ENDPOINT", "https://management.azure.com"),
            plain("SCALESET_HOME", "/nonexistent"),
        ];
        assert_eq!(names(azure_az_env(&a.azure, None)), base);
        let mut with_token = base.clone();
        with_token.push(("AZURE_ACCESS_TOKEN".into(), "t1".into(), true));
        assert_eq!(names(azure_az_env(&a.azure, Some("t1"))), with_token);
        assert_eq!(
            a.image_builder.err(),
            Some("PackerBuild@1 on Azure needs SCALESET_AZURE_LOCATION".to_string())
        );
    }
}
