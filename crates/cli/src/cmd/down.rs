//! `scaleset down [--purge]`: undoes `scaleset up`. Without `--purge` it stops what `up`
//! started and `up --detach` left running (the instances and the load balancers), as Ctrl-C
//! on `up` does; `up` again restarts them. With `--purge` it removes what `up` made: its
//! resource group (scale set, load balancer), the repositories it pushed (their pipelines and
//! runs go with them), the images no remaining scale set uses, up's clones, and, once no
//! machine is left, the bridge, its firewall and every mount under the home.
use super::serve::{self, ServeArgs};
use super::up::{RG, VMSS};
use super::vmss::wait_vmss;
use crate::client::{enc, Client};
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Clone)]
pub struct DownArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Also remove what `up` created: its resource group with the scale set and the load
    /// balancer, the repositories it pushed and their pipelines, unused images, up's clones,
    /// machine mounts, network namespaces and the bridge.
    #[arg(long)]
    pub purge: bool,
}

pub async fn run(args: DownArgs) -> Result<()> {
    serve::preflight()?;
    let home = args.serve.home.clone();
    if !home.join("state.db").exists() {
        eprintln!("nothing to do: {} holds no scaleset state", home.display());
        return Ok(());
    }
    refuse_if_served(&args).await?;
    let cfg = serve::config(&args.serve)?;
    let network = cfg.network.clone();
    let st = serve::open(cfg)?;
    if args.purge {
        purge(&st, &args, &home).await?;
    }
    eprintln!("==> stopping instances and load balancers");
    api::engine::stop_everything(&st).await;
    let left = st
        .machines
        .list()
        .map_err(|e| anyhow!(api::error::error_chain(&e)))?;
    if !args.purge {
        eprintln!(
            "stopped {} machine(s). `scaleset up` restarts them; `scaleset down --purge` removes them.",
            left.len()
        );
        return Ok(());
    }
    drop(st);
    release_host(&home, &network, &left)
}

/// `down` acts on the home's data plane directly; a daemon serving it would restart what
/// `down` stops. A running `up` (its daemon) is stopped first; a `scaleset serve` is the
/// user's to stop, so `down` refuses.
async fn refuse_if_served(args: &DownArgs) -> Result<()> {
    let Ok(token) = std::fs::read_to_string(args.serve.home.join("token")) else {
        return Ok(());
    };
    let c = Client::new(
        format!("http://{}", args.serve.listen),
        token.trim().to_string(),
    );
    let probe = tokio::time::timeout(
        Duration::from_secs(3),
        c.call(
            "GET",
            &format!("/subscriptions/{}/resourceGroups", c.sub),
            None,
        ),
    )
    .await;
    if let Ok(Ok(_)) = probe {
        if let Some(pid) = super::up::running_up(&args.serve.home) {
            return stop_up(pid).await;
        }
        bail!(
            "a daemon (`scaleset serve`) is serving this home at {}: stop it first, then run `scaleset down` again",
            args.serve.listen
        );
    }
    Ok(())
}

/// Stops a running `scaleset up` as Ctrl-C does (it stops its instances and load balancer
/// and its daemon), and waits for it to exit.
async fn stop_up(pid: u32) -> Result<()> {
    eprintln!("==> stopping `scaleset up` (pid {pid}) and its daemon");
    let start = sys::proc::starttime(pid);
    // SAFETY: kill(2); the pid's start time was just checked against up's pid file.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while sys::proc::starttime(pid) == start {
        if std::time::Instant::now() > deadline {
            bail!("`scaleset up` (pid {pid}) did not stop within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Deletes up's resources through the API of a daemon run here for the purpose.
async fn purge(st: &Arc<api::state::AppState>, args: &DownArgs, home: &Path) -> Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(st.clone(), async move {
        let _ = rx.await;
    }));
    let c = Client::new(
        format!("http://{}", args.serve.listen),
        st.auth.token.clone(),
    );
    let r = delete_resources(&c, home).await;
    let _ = tx.send(());
    let _ = server.await;
    r
}

async fn delete_resources(c: &Client, home: &Path) -> Result<()> {
    wait_api(c).await?;
    if c.get_opt(&c.rg_path(RG)).await?.is_some() {
        let sets = c
            .list(&format!(
                "{}/providers/Microsoft.Compute/virtualMachineScaleSets",
                c.rg_path(RG)
            ))
            .await?;
        for v in sets {
            let name = v["name"].as_str().unwrap_or(VMSS).to_string();
            eprintln!("==> deleting scale set {name} (draining and removing its instances)");
            c.call("DELETE", &c.vmss_path(RG, &name), None).await?;
            wait_vmss(c, RG, &name, true, Duration::from_secs(600)).await?;
        }
        let lbs = c
            .list(&format!(
                "{}/providers/Microsoft.Network/loadBalancers",
                c.rg_path(RG)
            ))
            .await?;
        for v in lbs {
            let name = v["name"].as_str().unwrap_or_default();
            eprintln!("==> deleting load balancer {name}");
            c.call("DELETE", &c.lb_path(RG, name), None).await?;
        }
        eprintln!("==> deleting resource group {RG}");
        c.call("DELETE", &c.rg_path(RG), None).await?;
    }
    for repo in up_repos(home) {
        if c.get_opt_scaleset(&format!("/repos/{}", enc(&repo)))
            .await?
            .is_some()
        {
            eprintln!("==> deleting repository {repo} (its pipelines and runs)");
            c.scaleset("DELETE", &format!("/repos/{}", enc(&repo)), None)
                .await?;
        }
    }
    delete_unused_images(c).await?;
    let up = home.join("up");
    if up.exists() {
        std::fs::remove_dir_all(&up).with_context(|| format!("cannot remove {}", up.display()))?;
    }
    Ok(())
}

/// The repositories `up` pushed: one clone per repository under `home/up/<repo>/src`.
fn up_repos(home: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(home.join("up")) else {
        return vec![];
    };
    rd.flatten()
        .filter(|e| e.path().join("src").is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Every image no scale set uses any more (another scale set's images stay, with a note).
async fn delete_unused_images(c: &Client) -> Result<()> {
    let images = c
        .list(&format!(
            "{}/providers/Microsoft.Compute/images",
            c.rg_path("images")
        ))
        .await?;
    for v in images {
        let Some(name) = v["name"].as_str() else {
            continue;
        };
        match c.call("DELETE", &c.image_path("images", name), None).await {
            Ok(_) => eprintln!("==> deleted image {name}"),
            Err(e) if e.to_string().contains("ImageInUse") => {
                eprintln!("    kept image {name}: {e}")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn wait_api(c: &Client) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
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
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(
                    e.context("the daemon `down --purge` runs did not start (is --listen in use?)")
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The host as `up` found it: no mount under the home, no bridge, no firewall table. Kept
/// while machines of other scale sets remain (they use the bridge).
fn release_host(home: &Path, network: &runtime::NetworkSpec, left: &[String]) -> Result<()> {
    if !left.is_empty() {
        eprintln!(
            "kept the bridge {}: {} machine(s) of other scale sets remain",
            network.bridge,
            left.len()
        );
        return Ok(());
    }
    // Deepest first: a mount inside another goes before it.
    for m in sys::mounts::mountpoints_under(home) {
        sys::mounts::detach(&m).with_context(|| format!("cannot unmount {}", m.display()))?;
    }
    eprintln!(
        "==> removing the bridge {} and its firewall",
        network.bridge
    );
    runtime::teardown_network(network).map_err(|e| anyhow!(api::error::error_chain(&e)))?;
    eprintln!("purged. `scaleset up` starts again from nothing (the debootstrap cache is kept).");
    Ok(())
}
