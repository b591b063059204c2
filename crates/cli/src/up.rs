//! `scaleset up`: the whole local deployment in one command.
use crate::client::Client;
use crate::commands::{lb_body, list_instances, vmss_body};
use crate::daemon::{self, ServeArgs};
use crate::output::{self, render, Output};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const RG: &str = "vmssdevops2-rg";
pub const LB: &str = "vmssdevops2-lb";
pub const VMSS: &str = "vmssdevops2";

#[derive(clap::Args, Clone)]
pub struct UpArgs {
    /// App folder: a Cargo package plus its deployment files (setupscript.sh, unit, NGINX site). Default: the example, examples/my_app.
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
    candidates.into_iter().find(|p| p.join("setupscript.sh").is_file()).ok_or_else(|| anyhow!("cannot find the example (examples/my_app); run from the repository root or pass DIR"))
}

/// Builds the app with cargo and returns the path of its binary.
fn build_app(dir: &Path) -> Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "{} has no Cargo.toml: `scaleset up` builds a Cargo package",
            dir.display()
        );
    }
    eprintln!("==> building the app ({})", dir.display());
    let out = std::process::Command::new("cargo")
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run cargo (install Rust: https://rustup.rs, or Debian's cargo)")?;
    if !out.status.success() {
        bail!("cargo build failed for {}", manifest.display());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let exe = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["reason"] == "compiler-artifact"
                && v["manifest_path"].as_str().map(Path::new)
                    == std::fs::canonicalize(&manifest).ok().as_deref()
        })
        .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
        .next_back()
        .ok_or_else(|| anyhow!("cargo built no executable for {}", manifest.display()))?;
    Ok(exe)
}

/// The CI's `drop`: the built binary plus the deployment files.
fn make_drop(dir: &Path, exe: &Path, home: &Path) -> Result<PathBuf> {
    let drop = home.join("drops").join("up");
    let _ = std::fs::remove_dir_all(&drop);
    std::fs::create_dir_all(&drop)?;
    fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
        for e in std::fs::read_dir(src)? {
            let e = e?;
            let name = e.file_name();
            let n = name.to_string_lossy();
            if ["src", "target", "tests", "Cargo.toml", "Cargo.lock"].contains(&n.as_ref())
                || n.starts_with('.')
                || n.ends_with(".yml")
                || n.ends_with(".md")
            {
                continue;
            }
            let ft = e.file_type()?;
            if ft.is_dir() {
                std::fs::create_dir_all(dst.join(&name))?;
                copy_tree(&e.path(), &dst.join(&name))?;
            } else if ft.is_file() {
                std::fs::copy(e.path(), dst.join(&name))?;
            }
        }
        Ok(())
    }
    copy_tree(dir, &drop)?;
    let bin = exe
        .file_name()
        .ok_or_else(|| anyhow!("bad executable path"))?;
    std::fs::copy(exe, drop.join(bin))?;
    Ok(drop)
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
    daemon::preflight()?;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => example_dir()?,
    };
    if !dir.join("setupscript.sh").is_file() {
        bail!(
            "{} has no setupscript.sh (the deployment script run when baking the image)",
            dir.display()
        );
    }
    let cfg = daemon::config(&args.serve)?;
    let home = cfg.home.clone();
    let exe = build_app(&dir)?;
    let drop = make_drop(&dir, &exe, &home)?;

    // Bake (a cache hit when the drop did not change).
    let digest = image::tree_digest(&drop).map_err(|e| anyhow!(api::error::error_chain(&e)))?;
    let image_name = format!(
        "{}-{}",
        exe.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("app")
            .replace('_', "-"),
        &digest.trim_start_matches("sha256:")[..12]
    );
    let store = image::ImageStore::new(home.join("images"), cfg.base_cache.clone());
    let bake_log = home.join("up-bake.log");
    eprintln!(
        "==> baking image {image_name} (base debian:bookworm; log: {})",
        bake_log.display()
    );
    let t = Instant::now();
    let spec = image::BakeSpec {
        name: image_name.clone(),
        base: "debian:bookworm".into(),
        package_dir: drop.clone(),
        script: "setupscript.sh".into(),
        args: vec![],
        network: true,
        mirror: None,
    };
    let img = tokio::task::spawn_blocking(move || {
        let mut log = std::fs::File::create(&bake_log)?;
        store
            .bake(&spec, &mut log)
            .map_err(|e| anyhow!(api::error::error_chain(&e)))
    })
    .await??;
    eprintln!(
        "    image {} {} in {:.1}s",
        img.name,
        img.digest,
        t.elapsed().as_secs_f64()
    );

    // Daemon, in this process.
    let st = daemon::open(cfg)?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(st.clone(), async move {
        let _ = rx.await;
    }));
    let c = Client::new(format!("http://{}", args.serve.listen), st.token.clone());
    wait_api(&c).await.context(
        "the daemon did not start (is another `scaleset serve` using the port? pass --listen)",
    )?;

    // From here on machines may be running: Ctrl-C at any point stops them cleanly.
    let ctrl_c = daemon::shutdown_signal();
    tokio::pin!(ctrl_c);
    let deploy = async {
        eprintln!(
            "==> deploying {VMSS} ({} instances) behind {LB} at http://{}",
            args.capacity, args.frontend
        );
        c.call("PUT", &c.rg_path(RG), Some(&json!({"location": "local"})))
            .await?;
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
        // Automatic mode: a changed app (new image) is applied to the running instances.
        let body = vmss_body(
            &c,
            RG,
            &image_name,
            args.capacity,
            Some((LB, "bepool", Some("http-health"))),
            ("Automatic", None, Some(VMSS)),
        );
        c.call("PUT", &c.vmss_path(RG, VMSS), Some(&body)).await?;

        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let vms = list_instances(&c, RG, VMSS).await?;
            if healthy_count(&vms) >= args.capacity as usize && vms.len() == args.capacity as usize
            {
                break;
            }
            if Instant::now() > deadline {
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
        anyhow::Ok(())
    };
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
    println!("(CLI state: SCALESET_HOME={})\n", home.display());

    if args.detach {
        // Leave machines and the LB running; stop only the API.
        let _ = tx.send(());
        let _ = server.await;
        return Ok(());
    }
    let live = !args.no_live && std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let table = match list_instances(&c, RG, VMSS).await {
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
            _ = &mut ctrl_c => break,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    eprintln!("==> stopping instances and the load balancer");
    let _ = tx.send(());
    let _ = server.await;
    api::engine::stop_everything(&st).await;
    eprintln!("stopped. `scaleset up` again restarts them from the cached image.");
    Ok(())
}
