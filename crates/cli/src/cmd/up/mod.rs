//! `scaleset up`: the whole local deployment in one command, converging from any state
//! (`plan`: what is missing or drifted, decided from what was observed).
pub mod plan;

use super::lb::lb_body;
use super::serve::{self, ServeArgs};
use super::vmss::{list_instances, vmss_body};
use crate::client::Client;
use crate::output::{self, render, Output};
use crate::progress::Progress;
use anyhow::{anyhow, bail, Context, Result};
use api::state::AppState;
use plan::{CiRun, ModelImage, Presence, ReleaseWhy, Step};
use serde_json::{json, Value};
use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const RG: &str = "vmssdevops2-rg";
pub const LB: &str = "vmssdevops2-lb";
pub const VMSS: &str = "vmssdevops2";

#[derive(clap::Args, Clone)]
pub struct UpArgs {
    /// App folder with its pipelines (azure-pipelines.yml, release-pipeline.yml), pushed as the hosted repository named after it. Default: the Rust example, examples/my_app; the seed's own Python stack is examples/flask_uwsgi. Either deploys to the same scale set and load balancer: the folder `up` was last given is what they serve.
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Number of instances.
    #[arg(long, default_value_t = 3)]
    pub capacity: u32,
    /// Load balancer frontend.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub frontend: std::net::SocketAddrV4,
    /// Print the instance table once instead of refreshing it.
    #[arg(long)]
    pub no_live: bool,
    /// Exit once everything is healthy, leaving the daemon's data plane running (instances and load balancer keep serving; `scaleset serve` adopts them).
    #[arg(long)]
    pub detach: bool,
}

pub(crate) fn example_dir() -> Result<PathBuf> {
    let mut candidates = vec![PathBuf::from("examples/my_app")];
    if let Ok(exe) = std::env::current_exe() {
        // target/{release,debug}/scaleset → repository root.
        if let Some(root) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            candidates.push(root.join("examples/my_app"));
        }
    }
    candidates.into_iter().find(|p| p.join("azure-pipelines.yml").is_file()).ok_or_else(|| anyhow!("cannot find the example (examples/my_app); run from the repository root or pass DIR"))
}

/// The plain base OS as a managed image: a scale set created by `up` starts from it, empty,
/// until its first release (the seed creates its scale set from a marketplace image).
const BASE_IMAGE: &str = "debian-12";

/// Copies `src` into `dst`, leaving out `.git` and cargo's `target/`.
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let name = e.file_name();
        if name == ".git" || name == "target" {
            continue;
        }
        let ft = e.file_type()?;
        if ft.is_dir() {
            copy_tree(&e.path(), &dst.join(&name))?;
        } else if ft.is_file() {
            std::fs::copy(e.path(), dst.join(&name))?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, dst.join(&name))?;
        }
    }
    Ok(())
}

/// git with the daemon token as a bearer header (through the environment, so it is neither
/// on a command line nor in a config file) and no user or system configuration.
fn git(dir: &Path, token: &str, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "http.extraHeader")
        .env(
            "GIT_CONFIG_VALUE_0",
            format!("Authorization: Bearer {token}"),
        )
        .env("GIT_AUTHOR_NAME", "scaleset up")
        .env("GIT_AUTHOR_EMAIL", "up@scaleset.local")
        .env("GIT_COMMITTER_NAME", "scaleset up")
        .env("GIT_COMMITTER_EMAIL", "up@scaleset.local")
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run git (install it: apt-get install git)")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()
        + &String::from_utf8_lossy(&out.stderr))
}

/// Pushes the files of `dir` to `main` of the hosted repository `repo` through up's own clone
/// of it (`home/up/<repo>/src`; one per repository, so deploying another folder never mixes
/// their histories). Commits only when `dir` changed since the last `up` of it, so commits
/// pushed by others are not reverted by an unchanged folder. Returns the pushed commit.
fn sync_repo(
    home: &Path,
    dir: &Path,
    (repo, url): (&str, &str),
    token: &str,
    restore: bool,
) -> Result<Option<String>> {
    let base = home.join("up").join(repo);
    let clone = base.join("src");
    let marker = base.join("synced-tree");
    std::fs::create_dir_all(&base)?;
    // Homes from before: one clone at up/src, of whichever repository `up` pushed.
    let legacy = home.join("up").join("src");
    if !clone.exists()
        && legacy.join(".git").is_dir()
        && git(&legacy, token, &["remote", "get-url", "origin"])
            .is_ok_and(|u| u.lines().next() == Some(url))
    {
        std::fs::rename(&legacy, &clone)?;
        let _ = std::fs::rename(home.join("up").join("synced-tree"), &marker);
    }
    if !clone.join(".git").is_dir() {
        let _ = std::fs::remove_dir_all(&clone);
        std::fs::create_dir_all(&clone)?;
        git(&clone, token, &["init", "-q", "-b", "main"])?;
        git(&clone, token, &["remote", "add", "origin", url])?;
    }
    let fetched = git(&clone, token, &["remote", "set-url", "origin", url])
        .and_then(|_| git(&clone, token, &["fetch", "-q", "--prune", "origin"]));
    if let Err(e) = fetched {
        // A damaged clone is only a cache of the hosted repository: start it again.
        eprintln!("    up's clone of `{repo}` is unusable ({e}): cloning it again");
        std::fs::remove_dir_all(&clone)?;
        std::fs::create_dir_all(&clone)?;
        git(&clone, token, &["init", "-q", "-b", "main"])?;
        git(&clone, token, &["remote", "add", "origin", url])?;
        git(&clone, token, &["fetch", "-q", "origin"])?;
    }
    let has_main =
        git(&clone, token, &["branch", "-r", "--list", "origin/main"])?.contains("origin/main");
    if has_main {
        git(&clone, token, &["reset", "-q", "--hard", "origin/main"])?;
    }
    for e in std::fs::read_dir(&clone)? {
        let e = e?;
        if e.file_name() != ".git" {
            let p = e.path();
            if e.file_type()?.is_dir() {
                std::fs::remove_dir_all(p)?;
            } else {
                std::fs::remove_file(p)?;
            }
        }
    }
    copy_tree(dir, &clone)?;
    git(&clone, token, &["add", "-A"])?;
    let tree = git(&clone, token, &["write-tree"])?;
    let tree = tree.lines().next().unwrap_or_default().to_string();
    let head_tree = if has_main {
        git(&clone, token, &["rev-parse", "HEAD^{tree}"])?
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    } else {
        String::new()
    };
    let last = std::fs::read_to_string(&marker).unwrap_or_default();
    if tree == head_tree || (!restore && tree == last.trim()) {
        if has_main {
            git(&clone, token, &["reset", "-q", "--hard", "origin/main"])?;
        }
        std::fs::write(&marker, &tree)?;
        return Ok(None);
    }
    let msg = format!("scaleset up: {}", dir.display());
    git(&clone, token, &["commit", "-q", "-m", &msg])?;
    let out = git(&clone, token, &["push", "origin", "HEAD:refs/heads/main"])?;
    for l in out.lines().filter(|l| l.starts_with("remote:")) {
        eprintln!("    {l}");
    }
    std::fs::write(&marker, &tree)?;
    Ok(Some(
        git(&clone, token, &["rev-parse", "HEAD"])?
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
    ))
}

/// The run of `pipeline` for `commit` (the newest if several), waiting for the push to queue it.
async fn run_for_commit(c: &Client, pipeline: &str, commit: &str) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = c
            .scaleset(
                "GET",
                &format!("/runs?pipeline={}", crate::client::enc(pipeline)),
                None,
            )
            .await?;
        let id = v["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["source_version"] == commit)
            .filter_map(|r| r["id"].as_u64())
            .max();
        if let Some(id) = id {
            return Ok(id);
        }
        if Instant::now() > deadline {
            bail!("the push of {commit} queued no run of pipeline `{pipeline}` (is its trigger on main?)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The run that a completed run triggered through `resources.pipelines` (the release).
async fn triggered_by(c: &Client, id: u64) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = c.scaleset("GET", "/runs", None).await?;
        let found = v["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["resources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|x| x["run_id"] == id)
                    && r["reason"].get("resource").is_some()
            })
            .filter_map(|r| r["id"].as_u64())
            .max();
        if let Some(rid) = found {
            return Ok(rid);
        }
        if Instant::now() > deadline {
            bail!("run {id} triggered no release pipeline (a pipeline with `resources.pipelines` whose source is this CI pipeline)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_api(c: &Client) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c
            .call(
                "GET",
                &format!("/subscriptions/{}/resourceGroups", c.sub),
                None,
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn healthy_count(vms: &[Value]) -> usize {
    vms.iter()
        .filter(|v| {
            v["x-health"] == "healthy"
                && v["x-power"] == "running"
                && v.pointer("/properties/latestModelApplied") == Some(&json!(true))
        })
        .count()
}

pub async fn run(args: UpArgs) -> Result<()> {
    let started = Instant::now();
    serve::preflight()?;
    let (dir, repo) = source(&args)?;
    let cfg = serve::config(&args.serve)?;
    let home = cfg.home.clone();

    // Daemon, in this process.
    let st = serve::open(cfg)?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(st.clone(), async move {
        let _ = rx.await;
    }));
    let c = Client::new(
        format!("http://{}", args.serve.listen),
        st.auth.token.clone(),
    );
    wait_api(&c).await.context(
        "the daemon did not start (is another `scaleset serve` using the port? pass --listen)",
    )?;

    // `scaleset down` finds this process here (pid and start time, so a reused pid is never
    // signalled) and stops it as Ctrl-C would.
    let _pidfile = PidFile::write(&home)?;
    // From here on machines may be running: Ctrl-C at any point stops them cleanly.
    let ctrl_c = serve::shutdown_signal();
    tokio::pin!(ctrl_c);
    let deploy = deploy(&c, &st, &args, &home, &dir, &repo);
    let outcome = tokio::select! {
        r = deploy => Some(r),
        _ = &mut ctrl_c => None,
    };
    if !matches!(outcome, Some(Ok(()))) {
        eprintln!("==> stopping instances and the load balancer");
        let _ = tx.send(());
        let _ = server.await;
        api::engine::stop_everything(&st).await;
        return match outcome {
            Some(Err(e)) => Err(e),
            _ => Ok(()),
        };
    }
    banner(&c, &args, &home, &repo, started);
    println!(
        "Dashboard: {}\n",
        api::ui::login_url(c.endpoint(), &st.dashboard.mint())
    );

    if args.detach {
        // Leave machines and the LB running; stop only the API.
        let _ = tx.send(());
        let _ = server.await;
        return Ok(());
    }
    watch(&c, &args, ctrl_c.as_mut()).await;
    eprintln!("==> stopping instances and the load balancer");
    let _ = tx.send(());
    let _ = server.await;
    api::engine::stop_everything(&st).await;
    eprintln!("stopped. `scaleset up` again restarts them from the cached image.");
    Ok(())
}

/// `home/up.pid` while `up` serves: "<pid> <start time>"; removed when `up` returns.
struct PidFile(PathBuf);

impl PidFile {
    fn write(home: &Path) -> Result<PidFile> {
        let pid = std::process::id();
        let start = sys::proc::starttime(pid).unwrap_or(0);
        let path = home.join(UP_PID);
        std::fs::write(&path, format!("{pid} {start}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The running `up` of `home`, if any: its pid, when the pid file's start time still matches.
pub(crate) fn running_up(home: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(home.join(UP_PID)).ok()?;
    let mut it = text.split_whitespace();
    let pid: u32 = it.next()?.parse().ok()?;
    let start: u64 = it.next()?.parse().ok()?;
    (sys::proc::starttime(pid) == Some(start)).then_some(pid)
}

const UP_PID: &str = "up.pid";

/// The folder to deploy (DIR or the example) and the hosted repository named after it.
fn source(args: &UpArgs) -> Result<(PathBuf, String)> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => example_dir()?,
    };
    if !dir.join("azure-pipelines.yml").is_file() {
        bail!(
            "{} has no azure-pipelines.yml: `scaleset up` pushes the folder to a hosted repository whose pipelines build and deploy it (see examples/my_app)",
            dir.display()
        );
    }
    let dir = std::fs::canonicalize(&dir)?;
    let repo = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{}: cannot name a repository after it", dir.display()))?
        .to_string();
    Ok((dir, repo))
}

/// Everything up to a healthy scale set: observe what `up` owns, plan the steps that are
/// missing (`plan::plan`), carry them out. Each step is idempotent.
async fn deploy(
    c: &Client,
    st: &Arc<AppState>,
    args: &UpArgs,
    home: &Path,
    dir: &Path,
    repo: &str,
) -> Result<()> {
    let want = plan::Desired {
        repo: repo.to_string(),
        pipelines: folder_pipelines(dir, repo)?,
        capacity: args.capacity,
    };
    let seen = observe(c, args, repo).await?;
    let steps = plan::plan(&want, &seen);
    tracing::debug!(?seen, ?steps, "up plan");
    let mut pushed = None;
    for step in steps {
        match step {
            Step::PutGroup => {
                eprintln!("==> creating the resource group {RG}");
                c.call("PUT", &c.rg_path(RG), Some(&json!({"location": "local"})))
                    .await?;
            }
            Step::PutLb => put_lb(c, args).await?,
            Step::BakeBase => bake_base(st, home).await?,
            Step::CreateScaleSet => create_empty_vmss(c, args).await?,
            Step::CreateRepo => {
                eprintln!("==> creating the hosted repository `{repo}`");
                c.scaleset("PUT", &format!("/repos/{}", crate::client::enc(repo)), None)
                    .await?;
            }
            Step::Push { restore } => pushed = push(c, home, dir, repo, restore).await?,
            Step::Release(why) => release(c, repo, pushed.as_deref(), why.as_ref()).await?,
            Step::Scale(n) => scale(c, n).await?,
            Step::WaitHealthy => wait_healthy(c, args, home).await?,
        }
    }
    Ok(())
}

/// The pipelines `dir` defines (its top-level files and `pipelines/`).
fn folder_pipelines(dir: &Path, repo: &str) -> Result<Vec<String>> {
    let names = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (top, nested) = (names(dir), names(&dir.join("pipelines")));
    fn refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    Ok(plan::pipelines_of(repo, &refs(&top), &refs(&nested)))
}

/// What `up` finds of each resource it owns.
async fn observe(c: &Client, args: &UpArgs, repo: &str) -> Result<plan::Observed> {
    let group = c.get_opt(&c.rg_path(RG)).await?.is_some();
    let lb = match c.get_opt(&c.lb_path(RG, LB)).await? {
        None => Presence::Missing,
        Some(v) if lb_matches(&v, args) => Presence::Matches,
        Some(_) => Presence::Differs,
    };
    let image_exists = |name: String| async move {
        c.get_opt(&c.image_path(RG, &name))
            .await
            .map(|v| v.is_some())
    };
    let base_image = image_exists(BASE_IMAGE.into()).await?;
    let vmss = match c.get_opt(&c.vmss_path(RG, VMSS)).await? {
        None => None,
        Some(v) => {
            let name = model_image(&v);
            let image = if !image_exists(name.clone()).await? {
                ModelImage::Missing
            } else if name == BASE_IMAGE {
                ModelImage::Base
            } else {
                ModelImage::Built {
                    repo: built_by(c, &name).await,
                }
            };
            let capacity = v
                .pointer("/sku/capacity")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            Some(plan::ScaleSetSeen {
                image,
                capacity: capacity as u32,
            })
        }
    };
    let repo = c
        .get_opt_scaleset(&format!("/repos/{}", crate::client::enc(repo)))
        .await?
        .map(|r| plan::RepoSeen {
            has_main: r.pointer("/branches/refs~1heads~1main").is_some(),
            pipelines: r["pipelines"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect(),
        });
    Ok(plan::Observed {
        group,
        lb,
        base_image,
        vmss,
        repo,
    })
}

/// The image name in a scale set's model.
fn model_image(vmss: &Value) -> String {
    vmss.pointer("/properties/virtualMachineProfile/storageProfile/imageReference/id")
        .and_then(Value::as_str)
        .and_then(|id| id.rsplit_once("/images/"))
        .map(|(_, name)| name.to_string())
        .unwrap_or_default()
}

/// The load balancer serves `--frontend` (address and port of its rule).
fn lb_matches(lb: &Value, args: &UpArgs) -> bool {
    let ip = lb
        .pointer("/properties/frontendIPConfigurations/0/properties/privateIPAddress")
        .and_then(Value::as_str);
    let port = lb
        .pointer("/properties/loadBalancingRules/0/properties/frontendPort")
        .and_then(Value::as_u64);
    ip == Some(&args.frontend.ip().to_string()) && port == Some(args.frontend.port() as u64)
}

/// The load balancer (HTTP probe on /health, one rule on --frontend).
async fn put_lb(c: &Client, args: &UpArgs) -> Result<()> {
    eprintln!("==> load balancer {LB} at http://{}", args.frontend);
    let mut lb = lb_body(
        "LoadBalancerFrontEnd",
        &args.frontend.ip().to_string(),
        "bepool",
        "L7",
    );
    lb["properties"]["probes"] = json!([{"name": "http-health", "properties": {"protocol": "Http", "port": 80, "requestPath": "/health", "intervalInSeconds": 5, "probeThreshold": 1}}]);
    let lb_id = c.lb_path(RG, LB);
    lb["properties"]["loadBalancingRules"] = json!([{"name": "http", "properties": {
        "protocol": "Tcp", "frontendPort": args.frontend.port(), "backendPort": 80,
        "frontendIPConfiguration": {"id": format!("{lb_id}/frontendIPConfigurations/LoadBalancerFrontEnd")},
        "backendAddressPool": {"id": format!("{lb_id}/backendAddressPools/bepool")},
        "probe": {"id": format!("{lb_id}/probes/http-health")},
        "loadDistribution": "Default", "idleTimeoutInMinutes": 4,
    }}]);
    c.call("PUT", &lb_id, Some(&lb)).await?;

    Ok(())
}

/// The plain base OS as an image (`BASE_IMAGE`): scale sets `up` creates start from it.
async fn bake_base(st: &Arc<AppState>, home: &Path) -> Result<()> {
    let pkg = home.join("up").join("base");
    std::fs::create_dir_all(&pkg)?;
    std::fs::write(
        pkg.join("setupscript.sh"),
        "#!/bin/sh\n# The plain base OS; scale sets created by `scaleset up` start from it.\ntrue\n",
    )?;
    let spec = image::BakeSpec {
        name: BASE_IMAGE.into(),
        base: "debian:bookworm".into(),
        package_dir: pkg,
        script: "setupscript.sh".into(),
        args: vec![],
        network: false,
        mirror: None,
        host_network: true,
        cache: None,
    };
    let log = home.join("up-base.log");
    eprintln!(
        "==> preparing the base image {BASE_IMAGE} (first time: debootstrap, about a minute; log: {})",
        log.display()
    );
    let st2 = st.clone();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::create(&log)?;
        let mut p = Progress::stderr();
        let r = st2
            .images
            .bake_with_progress(&spec, &mut f, &mut |e| bake_progress(&mut p, e))
            .map_err(|e| anyhow!(api::error::error_chain(&e)));
        p.finish();
        r
    })
    .await??;
    Ok(())
}

/// A bake's events as one progress line (the script's own lines go to the log only).
fn bake_progress(p: &mut Progress, e: image::BakeEvent) {
    if let Some(stage) = crate::progress::bake_stage(&e) {
        p.update(&format!("    base image {BASE_IMAGE} · {stage}"));
    }
}

/// A new scale set starts empty on the plain base OS, in Rolling mode: the release
/// pipeline points it at the app's image, then it is scaled out.
async fn create_empty_vmss(c: &Client, args: &UpArgs) -> Result<()> {
    eprintln!(
        "==> creating {VMSS} (empty, Rolling upgrades) behind {LB} at http://{}",
        args.frontend
    );
    let body = vmss_body(
        c,
        RG,
        BASE_IMAGE,
        0,
        Some((LB, "bepool", Some("http-health"))),
        ("Rolling", None, Some(VMSS)),
    );
    c.call("PUT", &c.vmss_path(RG, VMSS), Some(&body)).await?;
    Ok(())
}

/// The folder goes to the hosted repository through up's clone; the pushed commit, if any.
async fn push(
    c: &Client,
    home: &Path,
    dir: &Path,
    repo: &str,
    restore: bool,
) -> Result<Option<String>> {
    let url = format!("{}/scaleset/git/{repo}.git", c.endpoint());
    eprintln!("==> pushing {} to {url}", dir.display());
    let (h, d, r, u, tok) = (
        home.to_path_buf(),
        dir.to_path_buf(),
        repo.to_string(),
        url.clone(),
        c.token().to_string(),
    );
    let pushed =
        tokio::task::spawn_blocking(move || sync_repo(&h, &d, (&r, &u), &tok, restore)).await??;
    if pushed.is_none() {
        eprintln!("    unchanged since the last `up`: nothing pushed");
    }
    Ok(pushed)
}

/// The app's pipelines build and deploy it: the run the push queued, or (nothing pushed but
/// the scale set needs the app) a manual run of the CI pipeline.
async fn release(
    c: &Client,
    repo: &str,
    pushed: Option<&str>,
    why: Option<&ReleaseWhy>,
) -> Result<()> {
    let ci = match (plan::ci_run(pushed.is_some(), why), pushed) {
        (CiRun::FollowPush, Some(commit)) => run_for_commit(c, repo, commit).await?,
        (CiRun::Manual, _) => {
            if let Some(ReleaseWhy::OtherRepo(other)) = why {
                eprintln!(
                    "    {VMSS} runs an image built from `{other}`: deploying `{repo}` instead"
                );
            }
            let v = c
                .scaleset(
                    "POST",
                    &format!("/pipelines/{}/runs", crate::client::enc(repo)),
                    Some(&json!({"branch": "main"})),
                )
                .await?;
            v["id"]
                .as_u64()
                .ok_or_else(|| anyhow!("queueing a run of `{repo}` returned no id: {v}"))?
        }
        _ => return Ok(()),
    };
    let t = Instant::now();
    eprintln!("==> CI: run {ci} of pipeline `{repo}`");
    super::run::watch(c, ci).await?;
    let ci_s = t.elapsed().as_secs_f64();
    let rel = triggered_by(c, ci).await?;
    let t = Instant::now();
    eprintln!(
        "==> release: run {rel} (bake the image named by the build id, then `az vmss update`)"
    );
    let r = super::run::watch(c, rel).await?;
    eprintln!(
        "    deployed by `{}`: CI {ci_s:.1}s, release {:.1}s",
        r["pipeline"].as_str().unwrap_or("?"),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The hosted repository whose pipelines built `image` (images are named by the CI build id),
/// if it is one of their builds.
async fn built_by(c: &Client, image: &str) -> Option<String> {
    let id: u64 = image.parse().ok()?;
    let run = c.get_opt_scaleset(&format!("/runs/{id}")).await.ok()??;
    run["repository"].as_str().map(str::to_string)
}

/// Capacity (a new scale set is created empty).
async fn scale(c: &Client, capacity: u32) -> Result<()> {
    let vmss_path = c.vmss_path(RG, VMSS);
    let mut vmss = c.call("GET", &vmss_path, None).await?;
    eprintln!("==> scaling {VMSS} to {capacity} instances");
    vmss["sku"]["capacity"] = json!(capacity);
    c.call("PUT", &vmss_path, Some(&vmss)).await?;
    Ok(())
}

/// Waits for every instance to be healthy on the latest model, showing how many are.
async fn wait_healthy(c: &Client, args: &UpArgs, home: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut p = Progress::stderr();
    loop {
        let vms = list_instances(c, RG, VMSS).await?;
        let healthy = healthy_count(&vms);
        p.update(&crate::progress::count_line(
            &format!("    {VMSS}"),
            healthy,
            args.capacity as usize,
            "healthy on the latest model",
        ));
        if healthy >= args.capacity as usize && vms.len() == args.capacity as usize {
            p.finish();
            return Ok(());
        }
        if Instant::now() > deadline {
            p.finish();
            eprintln!(
                "{}",
                render(&Value::Array(vms), Output::Table, output::VM_COLS)
            );
            bail!(
                "instances did not become healthy within 600 s; see {}/machines/*/console.log",
                home.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn banner(c: &Client, args: &UpArgs, home: &Path, repo: &str, started: Instant) {
    println!(
        "\nServing at http://{}  ({} healthy instances, ready {:.1}s after start)\n",
        args.frontend,
        args.capacity,
        started.elapsed().as_secs_f64()
    );
    println!(
        "Try: curl http://{}/   |   scaleset vmss list-instances -g {RG} -n {VMSS} -o table",
        args.frontend
    );
    println!(
        "Deploy a change: git clone {}/scaleset/git/{repo}.git (user any, password: the token in {}/token), edit, git push",
        c.endpoint(),
        home.display()
    );
    println!("(CLI state: SCALESET_HOME={})\n", home.display());
}

/// Prints the instance table whenever it changes (redrawn in place on a terminal) until `stop`.
async fn watch(c: &Client, args: &UpArgs, mut stop: Pin<&mut impl Future<Output = ()>>) {
    let live = !args.no_live && std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let table = match list_instances(c, RG, VMSS).await {
            Ok(vms) => render(&Value::Array(vms), Output::Table, output::VM_COLS),
            Err(e) => format!("(cannot list instances: {e})"),
        };
        if table != last {
            if live {
                print!("\x1b[2J\x1b[H");
                println!(
                    "scaleset up — http://{}   (Ctrl-C stops everything)\n",
                    args.frontend
                );
            }
            println!("{table}\n");
            last = table;
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
