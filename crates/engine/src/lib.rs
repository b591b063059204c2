//! The engine: observes machines and load balancers, asks `plan` what to do, and does it.
//!
//! One pass per scale set runs at a time; passes repeat every second (100 ms while a freshly
//! booted machine is not yet healthy) or when the control plane wakes the engine. Every step is
//! idempotent and the intent is written to the store before the step, so a daemon killed at any
//! point resumes by deciding again. Machines and load balancer processes are detached from the
//! daemon: they keep serving while it is down and are adopted when it starts again.
//!
//! Modules: `reconcile` (one scale set's pass), `instances` (operations on one instance),
//! `rolling`, `repairs`, `health` (the Application Health extension), `lbs` (LB processes),
//! `metrics` (host metrics of the instances, sampled in the background), `autoscale` (Azure
//! Monitor autoscale settings evaluated over those metrics), `scrape` (what `/metrics` shows,
//! as plain data).
//! This crate knows no HTTP framework (see `tests/dependencies.rs`).
use control::{
    error_chain, now_ms, now_rfc3339, short_hash, uuid, Actor, Cidr, ControlPlane, InstanceRecord,
    Observation, Pending, ProvisioningState, Res, VmssDoc, LB, VMSS,
};
use plan::{Action, InstanceState, Observed, PowerIntent};
use runtime::{MachineSpec, MachineState};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::Key;
use tracing::{info, warn, Instrument};

mod autoscale;
mod health;
pub mod inspect;
mod instances;
mod lbs;
mod metrics;
mod reconcile;
mod repairs;
mod rolling;
mod scrape;
use health::*;
use instances::*;
use lbs::*;
use reconcile::*;
use repairs::*;
use rolling::*;

pub use autoscale::{evaluate_autoscale, AUTOSCALE_INTERVAL};
pub use lbs::{lb_config, sync_lbs};
pub use metrics::{sample_metrics, Metrics, METRICS_INTERVAL};
pub use rolling::roll_instances;
pub use scrape::{ImageScrape, InstanceScrape, LbScrape, RolloutScrape, Scrape, VmssScrape};

/// How long an instance leaving rotation may take to finish in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Engine {
    busy: Mutex<HashSet<String>>,
    pushed: tokio::sync::Mutex<HashMap<String, lb::LbConfig>>,
    /// When (clock ms) a machine last failed to start: its restart waits a few seconds.
    failed_at: Mutex<HashMap<String, u64>>,
    /// Per machine: when (clock ms) its failed units were last looked at, since when they
    /// have failed, and what they were.
    unit_checks: Mutex<HashMap<String, inspect::UnitCheck>>,
    clock: Clock,
}

/// The engine's wall clock (Unix time). Tests drive a manual one, so that grace periods and
/// health timeouts pass without waiting for them.
#[derive(Default)]
pub struct Clock(Option<std::sync::atomic::AtomicU64>);

impl Clock {
    /// A clock that moves only when told, starting at the current time.
    pub fn manual() -> Clock {
        Clock(Some(now_ms().into()))
    }

    pub fn now_ms(&self) -> u64 {
        match &self.0 {
            Some(ms) => ms.load(std::sync::atomic::Ordering::SeqCst),
            None => now_ms(),
        }
    }

    pub fn now(&self) -> u64 {
        self.now_ms() / 1000
    }

    /// Moves a manual clock forward (no effect on the system clock).
    pub fn advance(&self, by: Duration) {
        if let Some(ms) = &self.0 {
            ms.fetch_add(by.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Engine {
    pub fn new(clock: Clock) -> Engine {
        Engine {
            clock,
            ..Default::default()
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Scale sets with a pass in flight.
    pub fn busy(&self) -> usize {
        self.busy.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Waits until every pass `tick` started has finished.
    pub async fn settle(&self) {
        while self.busy() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

type Shared = (Arc<Core>, Arc<Engine>);

pub use control::unix_now;

/// What the engine needs of the daemon's configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// State root: machines, images, load balancers.
    pub home: PathBuf,
    pub network: runtime::NetworkSpec,
    /// Short tag in machine, netns and interface names.
    pub prefix: String,
    /// The `scaleset` executable, run as `scaleset lb-serve` for each load balancer.
    pub exe: PathBuf,
    /// Probe interval override in ms for tests (Azure's minimum is 5 s).
    pub probe_interval_ms: Option<u64>,
    /// How long a rolling upgrade waits for an upgraded batch to become healthy.
    pub rolling_health_timeout_secs: u64,
    /// Replaces every scale set's automatic repairs grace period (tests).
    pub repair_grace_secs: Option<u64>,
    /// Where load balancer frontends may listen.
    pub lb_allowed: Vec<Cidr>,
    /// Connection cap and header timeout of every load balancer frontend.
    pub lb_frontend: lb::FrontendLimits,
    /// Time between host metrics readings in ms (tests); default [`METRICS_INTERVAL`].
    pub metrics_interval_ms: Option<u64>,
    /// Time between autoscale evaluations in ms (tests); default [`AUTOSCALE_INTERVAL`].
    pub autoscale_interval_ms: Option<u64>,
}

impl EngineConfig {
    pub fn lb_address_allowed(&self, ip: std::net::IpAddr) -> bool {
        Cidr::any_contains(&self.lb_allowed, ip)
    }
}

/// What the engine works on: the control plane's records, the machines, the images.
pub struct Core {
    pub cfg: EngineConfig,
    pub cp: ControlPlane,
    pub machines: Arc<dyn runtime::Machines>,
    pub images: image::ImageStore,
    /// Host metrics of the instances (`metrics`).
    pub metrics: Metrics,
}

/// The control plane's records and observations are the engine's working state.
impl std::ops::Deref for Core {
    type Target = ControlPlane;
    fn deref(&self) -> &ControlPlane {
        &self.cp
    }
}

/// After a restart nothing is in flight: clear the rollout's marks so its planner asks again for
/// what was interrupted, and repairs' marks except a replacement's (its deletion still counts as
/// a repair in flight).
pub fn clear_interrupted(st: &Core) {
    let Ok(sets) = st.store.list(VMSS, None, None) else {
        return;
    };
    for (key, _) in sets {
        for r in st.instances(&key).unwrap_or_default() {
            let held = match r.work.actor {
                Some(Actor::Rollout) => true,
                Some(Actor::Repair) => !r.work.is_deleting(),
                None => false,
            };
            if held {
                let _ = st.update_instance(&key, r.instance_id, |r| r.work.actor = None);
            }
        }
    }
}

pub async fn run(st: Arc<Core>) {
    let eng = Arc::new(Engine::default());
    clear_interrupted(&st);
    tokio::spawn(app_health_loop(st.clone()));
    tokio::spawn(metrics::metrics_loop(st.clone()));
    tokio::spawn(autoscale::autoscale_loop(st.clone()));
    if let Err(e) = blocking({
        let st = st.clone();
        move || st.machines.ensure_network(&st.cfg.network)
    })
    .await
    {
        warn!(error = %e, "cannot set up the virtual network; will retry");
    }
    loop {
        tick(&st, &eng).await;
        tokio::select! {
            _ = st.wake.notified() => {}
            _ = tokio::time::sleep(pause(&st)) => {}
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, runtime::RuntimeError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(e) => Err(format!("runtime task failed: {e}")),
    }
}

/// One engine pass: load balancers first (so health is fresh), then each scale set.
pub async fn tick(st: &Arc<Core>, eng: &Arc<Engine>) {
    tracing::debug!("engine tick");
    if let Err(e) = sync_lbs(st, eng).await {
        warn!(error = %e, "load balancer sync failed");
    }
    let sets = match st.store.list(VMSS, None, None) {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %error_chain(&e), "cannot list scale sets");
            return;
        }
    };
    for (key, _) in sets {
        let path = key.path();
        if !eng
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.clone())
        {
            continue;
        }
        let shared: Shared = (st.clone(), eng.clone());
        tracing::debug!(vmss = %key.name, "reconcile pass");
        tokio::spawn(async move {
            let span = tracing::info_span!("reconcile", vmss = %key.name, rg = %key.rg);
            if let Err(e) = reconcile_vmss(&shared, &key).instrument(span).await {
                warn!(vmss = %key.name, error = %e, "reconcile failed");
            }
            shared
                .1
                .busy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&path);
        });
    }
}

/// Time between engine passes: 1 s, or 100 ms while a machine booted in the last 30 s is not
/// healthy yet, so that views (and what waits on them: `up`, rolling upgrades) see it healthy
/// within a pass of the load balancer's verdict.
fn pause(st: &Core) -> Duration {
    let settling = st
        .observed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .any(|o| {
            o.healthy != Some(true)
                && o.booted_at
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(30))
        });
    Duration::from_millis(if settling { 100 } else { 1000 })
}

/// Stops every machine and load balancer process of this daemon's home (used by `scaleset up`
/// on Ctrl-C). State is kept: the next start boots the same instances again.
pub async fn stop_everything(st: &Core) {
    let machines = st.machines.clone();
    let _ = blocking(move || {
        let names = machines.list()?;
        std::thread::scope(|s| {
            for n in &names {
                let m = machines.clone();
                s.spawn(move || m.stop(n, STOP_TIMEOUT));
            }
        });
        Ok(())
    })
    .await;
    if let Ok(rd) = std::fs::read_dir(st.cfg.home.join("lb")) {
        for e in rd.flatten() {
            stop_lb_dir(&e.path());
        }
    }
}
