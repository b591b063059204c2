//! The engine: observes machines and load balancers, asks `plan` what to do, and does it.
//!
//! One pass per scale set runs at a time; passes repeat every second (100 ms while a freshly
//! booted machine is not yet healthy) or when the API wakes the engine. Every step is idempotent and the intent is written to the store before the step, so
//! a daemon killed at any point resumes by deciding again. Machines and load balancer processes
//! are detached from the daemon: they keep serving while it is down and are adopted when it
//! starts again.
use control::{
    error_chain, now_ms, now_rfc3339, short_hash, uuid, Cidr, ControlPlane, InstanceRecord,
    Observation, ProvisioningState, Res, VmssDoc, LB, VMSS,
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

/// How long an instance leaving rotation may take to finish in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Engine {
    busy: Mutex<HashSet<String>>,
    pushed: tokio::sync::Mutex<HashMap<String, lb::LbConfig>>,
    /// When (clock ms) a machine last failed to start: its restart waits a few seconds.
    failed_at: Mutex<HashMap<String, u64>>,
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
}

impl EngineConfig {
    pub fn lb_address_allowed(&self, ip: std::net::IpAddr) -> bool {
        self.lb_allowed.iter().any(|c| c.contains(ip))
    }
}

/// What the engine works on: the control plane's records, the machines, the images.
pub struct Core {
    pub cfg: EngineConfig,
    pub cp: ControlPlane,
    pub machines: Arc<dyn runtime::Machines>,
    pub images: image::ImageStore,
}

/// The control plane's records and observations are the engine's working state.
impl std::ops::Deref for Core {
    type Target = ControlPlane;
    fn deref(&self) -> &ControlPlane {
        &self.cp
    }
}

/// The rolling-upgrade planner's view of a scale set's instances.
pub fn roll_instances(st: &Core, recs: &[InstanceRecord]) -> Vec<plan::rolling::RollInstance> {
    recs.iter()
        .filter(|r| !r.deleting || r.upgrading)
        .map(|r| {
            let o = st.observation(&r.machine);
            plan::rolling::RollInstance {
                id: r.instance_id,
                model_version: r.model_version,
                healthy: o.is_healthy() == Some(true),
                running: o.running,
                protected: r.protect_from_scale_set_actions,
                upgrading: r.upgrading,
                created_seq: r.created_seq,
            }
        })
        .collect()
}

/// After a restart nothing is in flight: clear `upgrading` marks so the rollout planner asks again
/// for what was interrupted.
pub fn clear_interrupted(st: &Core) {
    let Ok(sets) = st.store.list(VMSS, None, None) else {
        return;
    };
    for (key, _) in sets {
        for r in st.instances(&key).unwrap_or_default() {
            if r.upgrading || (r.repairing && !r.deleting) {
                let _ = st.update_instance(&key, r.instance_id, |r| {
                    r.upgrading = false;
                    r.repairing = false;
                });
            }
        }
    }
}

pub async fn run(st: Arc<Core>) {
    let eng = Arc::new(Engine::default());
    clear_interrupted(&st);
    tokio::spawn(app_health_loop(st.clone()));
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

fn spec_for(st: &Core, vmss: &str, rec: &InstanceRecord) -> Result<MachineSpec, String> {
    // Verified on use: a tampered layer is refused instead of booted.
    let img = st
        .images
        .open_for_use(&rec.image)
        .map_err(|e| error_chain(&e))?;
    let vm = plan::naming::vm_name(vmss, rec.instance_id);
    Ok(MachineSpec {
        name: rec.machine.clone(),
        hostname: rec.computer_name.clone(),
        layers: img.layers.clone(),
        ip: rec.ip,
        network: st.cfg.network.clone(),
        files: vec![(
            PathBuf::from("/etc/scaleset/instance.env"),
            format!("SCALESET_INSTANCE={vm}\nSCALESET_IMAGE={}\nSCALESET_VMSS={vmss}\nSCALESET_COMPUTER_NAME={}\n", rec.image, rec.computer_name),
        )],
    })
}

async fn reconcile_vmss((st, eng): &Shared, key: &Key) -> Result<(), String> {
    let res = Res {
        sub: key.sub.clone(),
        rg: key.rg.clone(),
        name: key.name.clone(),
    };
    let Some(doc) = st.vmss_doc(&res).map_err(|e| error_chain(&e))? else {
        return Ok(());
    };
    let res = Res {
        name: doc.name.clone(),
        rg: doc.resource_group.clone(),
        ..res
    };
    let (m, _) = model::vmss::parse(&doc.arm, &doc.name).map_err(|e| error_chain(&e))?;
    let recs = st.instances(key).map_err(|e| error_chain(&e))?;
    if doc.deleting && recs.is_empty() {
        st.store.delete(key).map_err(|e| error_chain(&e))?;
        let _ = st.store.delete(&res.key(control::ROLLOUT));
        info!(vmss = %res.name, "scale set deleted");
        st.wake.notify_one();
        return Ok(());
    }
    tracing::debug!("observing");
    // Observe.
    let names: Vec<String> = recs.iter().map(|r| r.machine.clone()).collect();
    let machines = st.machines.clone();
    let states = blocking(move || {
        names
            .iter()
            .map(|n| machines.state(n))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    let mut observed = Vec::new();
    for (r, s) in recs.iter().zip(&states) {
        let running = matches!(s, MachineState::Running { .. });
        let healthy = st.observation(&r.machine).is_healthy();
        {
            let mut obs = st.observed.lock().unwrap_or_else(|e| e.into_inner());
            obs.entry(r.machine.clone())
                .or_insert_with(Observation::default)
                .running = running;
        }
        observed.push(InstanceState {
            id: r.instance_id,
            created_seq: r.created_seq,
            model_version: r.model_version,
            intent: r.intent,
            machine: match s {
                MachineState::Running { .. } => Observed::Running,
                MachineState::Stopped => Observed::Stopped,
                MachineState::Missing => Observed::Missing,
            },
            healthy: healthy.unwrap_or(false),
            protect_from_scale_in: r.protect_from_scale_in,
            protect_from_scale_set_actions: r.protect_from_scale_set_actions,
            deleting: r.deleting || doc.deleting,
            reimage_requested: r.reimage_requested,
            restart_requested: r.restart_requested,
        });
    }
    let rollout = st.rollout(&res).map_err(|e| error_chain(&e))?;
    let rolling_active = rollout
        .as_ref()
        .is_some_and(|d| d.state.phase != plan::rolling::Phase::Done);
    let active_count = recs.iter().filter(|r| !r.deleting).count() as u32;
    let desired = plan::Desired {
        // A rollout owns the instance count while it runs (maxSurge adds and removes instances).
        capacity: if doc.deleting {
            0
        } else if rolling_active {
            active_count
        } else {
            m.capacity
        },
        model_version: doc.model_version,
        upgrade_mode: m.upgrade_mode,
        scale_in: m.scale_in,
    };
    let mut actions = plan::reconcile(&desired, &observed);
    tracing::debug!(?actions, "decided");
    // Instances a rollout is acting on are the rollout's.
    actions.retain(|a| match a {
        Action::Start { id }
        | Action::Stop { id }
        | Action::Restart { id }
        | Action::Upgrade { id } => !recs.iter().any(|r| r.instance_id == *id && r.upgrading),
        _ => true,
    });
    if actions.is_empty() {
        if rolling_active && !doc.deleting {
            rolling_pass(st, eng, key, &res, &doc, &m).await?;
        } else if !doc.deleting {
            // Repairs wait for a steady scale set: nothing to reconcile, no rollout running.
            repairs_pass(st, eng, key, &res, &doc, &m).await?;
        }
        return Ok(());
    }
    info!(vmss = %res.name, ?actions, "reconcile");
    let image_name = m.image.as_ref().map(|i| i.name.clone());
    let mut tasks = Vec::new();
    for action in actions {
        match action {
            Action::Create { count } => {
                let Some(image) = image_name.clone() else {
                    continue;
                };
                for rec in new_instances(st, key, &res, &doc, &image, count)? {
                    tasks.push(tokio::spawn(start_instance(
                        st.clone(),
                        eng.clone(),
                        key.clone(),
                        res.name.clone(),
                        rec,
                    )));
                }
            }
            Action::Start { id } => {
                let Some(rec) = recs.iter().find(|r| r.instance_id == id).cloned() else {
                    continue;
                };
                let recent = eng
                    .failed_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&rec.machine)
                    .is_some_and(|t| eng.clock.now_ms().saturating_sub(*t) < 5000);
                if !recent {
                    tasks.push(tokio::spawn(start_instance(
                        st.clone(),
                        eng.clone(),
                        key.clone(),
                        res.name.clone(),
                        rec,
                    )));
                }
            }
            Action::Stop { id }
            | Action::Restart { id }
            | Action::Upgrade { id }
            | Action::Delete { id } => {
                let Some(rec) = recs.iter().find(|r| r.instance_id == id).cloned() else {
                    continue;
                };
                let (st, eng, key, name) = (st.clone(), eng.clone(), key.clone(), res.name.clone());
                let target = (image_name.clone(), doc.model_version);
                tasks.push(tokio::spawn(async move {
                    let r = match action {
                        Action::Stop { .. } => stop_instance(&st, &eng, &key, &rec).await,
                        Action::Restart { .. } => restart_instance(&st, &eng, &key, &rec).await,
                        Action::Upgrade { .. } => {
                            upgrade_instance(&st, &eng, &key, &name, &rec, target).await
                        }
                        _ => delete_instance(&st, &eng, &key, &rec).await,
                    };
                    if let Err(e) = &r {
                        warn!(instance = rec.instance_id, error = %e, "instance operation failed");
                        let _ = st.update_instance(&key, rec.instance_id, |r| {
                            r.last_error = Some(e.clone())
                        });
                    }
                }));
            }
        }
    }
    let acted = !tasks.is_empty();
    for t in tasks {
        let _ = t.await;
        tracing::debug!("action finished");
    }
    if rolling_active && !doc.deleting {
        rolling_pass(st, eng, key, &res, &doc, &m).await?;
    }
    // Decide again at once after acting; actions held back (a start that just failed) wait for
    // the next tick instead of spinning.
    if acted {
        st.wake.notify_one();
    }
    Ok(())
}

/// Updates the deploy receipt from the scale set's load balancers' counters.
async fn observe_receipt(
    st: &Core,
    m: &model::vmss::VmssModel,
    recs: &[InstanceRecord],
    receipt: &mut control::Receipt,
) {
    let mut totals = [0u64; 5];
    let mut any = false;
    let mut lbs: Vec<Key> = m
        .backend_pools
        .iter()
        .map(|p| Key::new(LB, &p.subscription, &p.resource_group, &p.name))
        .collect();
    lbs.dedup_by(|a, b| a.path() == b.path());
    for key in lbs {
        let sock = lb_dir(st, &key).join("admin.sock");
        let Ok(status) = lb_call(lb::client::get_status(&sock)).await else {
            continue;
        };
        any = true;
        let t = &status.totals;
        for (i, v) in [
            t.requests,
            t.responses_2xx,
            t.responses_non_2xx,
            t.failed,
            t.retries,
        ]
        .into_iter()
        .enumerate()
        {
            totals[i] += v;
        }
        for b in status.backends {
            let Some(rec) = recs.iter().find(|r| r.machine == b.id) else {
                continue;
            };
            let seen = receipt.seen.entry(b.id.clone()).or_insert(b.requests);
            let delta = b.requests.saturating_sub(*seen);
            *seen = b.requests;
            if delta > 0 {
                *receipt
                    .requests_per_image
                    .entry(rec.image.clone())
                    .or_default() += delta;
            }
        }
    }
    if any {
        receipt.baseline.get_or_insert(totals);
        receipt.latest = Some(totals);
    }
}

/// One step of the scale set's rolling upgrade: ask the planner, persist, act.
async fn rolling_pass(
    st: &Arc<Core>,
    eng: &Arc<Engine>,
    key: &Key,
    res: &Res,
    doc: &VmssDoc,
    m: &model::vmss::VmssModel,
) -> Result<(), String> {
    let recs = st.instances(key).map_err(|e| error_chain(&e))?;
    let Some(cur) = st.rollout(res).map_err(|e| error_chain(&e))? else {
        return Ok(());
    };
    let insts = roll_instances(st, &recs);
    let mut receipt = cur.receipt.clone();
    observe_receipt(st, m, &recs, &mut receipt).await;
    let (step, next_state) = plan::rolling::next(
        &m.rolling,
        &cur.state,
        &insts,
        eng.clock.now(),
        st.cfg.rolling_health_timeout_secs,
    );
    // Compare-and-set: a cancel or a new model that arrived meanwhile wins; decide again next tick.
    let mut raced = false;
    st.update_rollout(res, |d| match d {
        Some(d) if d.state == cur.state => {
            d.state = next_state.clone();
            d.receipt = receipt;
            true
        }
        _ => {
            raced = true;
            false
        }
    })
    .map_err(|e| error_chain(&e))?;
    if raced {
        return Ok(());
    }
    if next_state.status != cur.state.status || next_state.batches != cur.state.batches {
        info!(vmss = %res.name, status = ?next_state.status, batch = next_state.batches, ids = ?next_state.batch, "rolling upgrade");
    }
    let image_of = |v: u64| {
        doc.versions
            .get(&v)
            .cloned()
            .or_else(|| m.image.as_ref().map(|i| i.name.clone()))
    };
    let mut tasks = Vec::new();
    let acts = !matches!(
        step,
        plan::rolling::Step::Wait | plan::rolling::Step::Finish(_)
    );
    let rollback = matches!(step, plan::rolling::Step::Rollback(_));
    match step {
        plan::rolling::Step::Wait => {}
        plan::rolling::Step::Finish(status) => {
            if cur.state.phase != plan::rolling::Phase::Done {
                info!(vmss = %res.name, ?status, error = ?next_state.error, "rolling upgrade finished");
            }
        }
        plan::rolling::Step::Upgrade(ids) | plan::rolling::Step::Rollback(ids) => {
            let version = if rollback {
                next_state.previous_version
            } else {
                next_state.target_version
            };
            let image = image_of(version);
            for id in ids {
                let Some(rec) = recs.iter().find(|r| r.instance_id == id).cloned() else {
                    continue;
                };
                st.update_instance(key, id, |r| r.upgrading = true)
                    .map_err(|e| error_chain(&e))?;
                let (st, eng, key, name, image) = (
                    st.clone(),
                    eng.clone(),
                    key.clone(),
                    res.name.clone(),
                    image.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    info!(
                        instance = id,
                        version, rollback, "rolling upgrade: reimaging"
                    );
                    if let Err(e) =
                        upgrade_instance(&st, &eng, &key, &name, &rec, (image, version)).await
                    {
                        warn!(instance = id, error = %e, "rolling upgrade: reimage failed");
                        let _ = st.update_instance(&key, id, |r| r.last_error = Some(e.clone()));
                    }
                    let _ = st.update_instance(&key, id, |r| r.upgrading = false);
                }));
            }
        }
        plan::rolling::Step::Surge { count } => {
            if let Some(image) = image_of(next_state.target_version) {
                for rec in new_instances(st, key, res, doc, &image, count)? {
                    tasks.push(tokio::spawn(start_instance(
                        st.clone(),
                        eng.clone(),
                        key.clone(),
                        res.name.clone(),
                        rec,
                    )));
                }
            }
        }
        plan::rolling::Step::Remove(ids) => {
            for id in ids {
                let Some(rec) = recs.iter().find(|r| r.instance_id == id).cloned() else {
                    continue;
                };
                st.update_instance(key, id, |r| {
                    r.upgrading = true;
                    r.deleting = true;
                })
                .map_err(|e| error_chain(&e))?;
                let (st, eng, key) = (st.clone(), eng.clone(), key.clone());
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = delete_instance(&st, &eng, &key, &rec).await {
                        warn!(instance = id, error = %e, "rolling upgrade: removal failed");
                        let _ = st.update_instance(&key, id, |r| r.upgrading = false);
                    }
                }));
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    if acts {
        st.wake.notify_one();
    }
    Ok(())
}

/// The repairs service's view of an instance's health: the Application Health extension's
/// state or the LB probe's verdict (None until either has reported).
fn repair_health(o: &Observation) -> Option<plan::repairs::Health> {
    o.health()
}

/// One automatic repairs step for the scale set: ask `plan::repairs`, record intent, act.
async fn repairs_pass(
    st: &Arc<Core>,
    eng: &Arc<Engine>,
    key: &Key,
    res: &Res,
    doc: &VmssDoc,
    m: &model::vmss::VmssModel,
) -> Result<(), String> {
    if !m.repairs.enabled {
        return Ok(());
    }
    let now = eng.clock.now();
    let recs = st.instances(key).map_err(|e| error_chain(&e))?;
    // Records from before state changes were timed: their grace period starts now.
    for r in recs.iter().filter(|r| r.state_changed_at.is_none()) {
        if r.provisioning_state == ProvisioningState::Succeeded {
            st.update_instance(key, r.instance_id, |r| r.state_changed_at = Some(now))
                .map_err(|e| error_chain(&e))?;
        }
    }
    let insts: Vec<plan::repairs::RepairInstance> = recs
        .iter()
        .map(|r| {
            let o = st.observation(&r.machine);
            plan::repairs::RepairInstance {
                id: r.instance_id,
                health: repair_health(&o),
                intent_running: r.intent == PowerIntent::Running,
                machine_running: o.running,
                deleting: r.deleting,
                busy: r.upgrading || r.reimage_requested || r.restart_requested || r.draining,
                protected: r.protect_from_scale_in || r.protect_from_scale_set_actions,
                provisioning_failed: r.provisioning_state == ProvisioningState::Failed,
                state_changed_at: r.state_changed_at.unwrap_or(now),
                repairing: r.repairing,
                repair_attempts: r.repair_attempts,
            }
        })
        .collect();
    let grace = st
        .cfg
        .repair_grace_secs
        .unwrap_or(m.repairs.grace_period_secs);
    let cur = st.repairs_state(res).map_err(|e| error_chain(&e))?;
    let d = plan::repairs::decide(true, m.repairs.repair_action, grace, &cur, &insts, now);
    for id in &d.recovered {
        info!(vmss = %res.name, instance = id, "automatic repair: instance healthy again");
        st.update_instance(key, *id, |r| r.repair_attempts = 0)
            .map_err(|e| error_chain(&e))?;
    }
    if d.state != cur {
        // Compare-and-set against a resume or suspend that arrived meanwhile.
        st.update_repairs(res, |s| {
            if *s == cur {
                d.state.clone()
            } else {
                s.clone()
            }
        })
        .map_err(|e| error_chain(&e))?;
        if d.state.service_state == plan::repairs::ServiceState::Suspended {
            warn!(vmss = %res.name, reason = ?d.state.reason, "automatic repairs suspended");
        }
    }
    if d.repair.is_empty() {
        return Ok(());
    }
    let image = m.image.as_ref().map(|i| i.name.clone());
    let mut tasks = Vec::new();
    for (id, action) in d.repair {
        let Some(rec) = recs.iter().find(|r| r.instance_id == id).cloned() else {
            continue;
        };
        info!(vmss = %res.name, instance = id, ?action, attempts = rec.repair_attempts, "automatic repair");
        let attempts = rec.repair_attempts + 1;
        if action == model::vmss::RepairAction::Replace && image.is_none() {
            continue;
        }
        // Intent first, as the durable flags the reconciler already acts on (deletion, restart,
        // reimage requests): a daemon killed mid-repair finishes the operation by reconciling
        // (the `repairing` mark itself is cleared at start).
        st.update_instance(key, id, |r| {
            r.repairing = true;
            r.repair_attempts = attempts;
            match action {
                model::vmss::RepairAction::Replace => r.deleting = true,
                model::vmss::RepairAction::Restart => r.restart_requested = true,
                model::vmss::RepairAction::Reimage => r.reimage_requested = true,
            }
        })
        .map_err(|e| error_chain(&e))?;
        let (st2, eng2, key2, res2) = (st.clone(), eng.clone(), key.clone(), res.clone());
        match action {
            model::vmss::RepairAction::Replace => {
                let Some(image) = image.clone() else {
                    continue;
                };
                // Delete then create, as Azure does: the new instance gets a new id and address
                // and the latest model; the old one is drained before it stops.
                let new = new_instances(st, key, res, doc, &image, 1)?;
                for n in &new {
                    st.update_instance(key, n.instance_id, |r| r.repair_attempts = attempts)
                        .map_err(|e| error_chain(&e))?;
                }
                for n in new {
                    tasks.push(tokio::spawn(start_instance(
                        st.clone(),
                        eng.clone(),
                        key.clone(),
                        res.name.clone(),
                        n,
                    )));
                }
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = delete_instance(&st2, &eng2, &key2, &rec).await {
                        repair_failed(&st2, &key2, &res2, id, e);
                    }
                }));
            }
            model::vmss::RepairAction::Restart | model::vmss::RepairAction::Reimage => {
                let target = (image.clone(), doc.model_version);
                let name = res.name.clone();
                tasks.push(tokio::spawn(async move {
                    let r = if action == model::vmss::RepairAction::Restart {
                        restart_instance(&st2, &eng2, &key2, &rec).await
                    } else {
                        // Azure's reimage applies the scale set's latest model.
                        upgrade_instance(&st2, &eng2, &key2, &name, &rec, target).await
                    };
                    let _ = st2.update_instance(&key2, id, |r| r.repairing = false);
                    if let Err(e) = r {
                        repair_failed(&st2, &key2, &res2, id, e);
                    }
                }));
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    st.wake.notify_one();
    Ok(())
}

fn repair_failed(st: &Core, key: &Key, res: &Res, id: u32, e: String) {
    warn!(instance = id, error = %e, "automatic repair failed");
    let _ = st.update_instance(key, id, |r| r.last_error = Some(e.clone()));
    let _ = st.update_repairs(res, |s| {
        plan::repairs::record_failure(s, &format!("instance {id}: {e}"))
    });
}

/// The Application Health extension, run from the host: every running instance of a scale set
/// with the extension is probed at its interval (or `SCALESET_PROBE_INTERVAL_MS`), and each result
/// is fed to the instance's pure state machine.
async fn app_health_loop(st: Arc<Core>) {
    let mut last: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(sets) = st.store.list(VMSS, None, None) else {
            continue;
        };
        let mut seen = HashSet::new();
        for (key, v) in sets {
            let Ok(doc) = serde_json::from_value::<VmssDoc>(v) else {
                continue;
            };
            let Ok((m, _)) = model::vmss::parse(&doc.arm, &doc.name) else {
                continue;
            };
            let recs = st.instances(&key).unwrap_or_default();
            let Some(ext) = m.app_health else {
                // The extension was removed: the LB probe is the health source again.
                let mut obs = st.observed.lock().unwrap_or_else(|e| e.into_inner());
                for r in &recs {
                    if let Some(o) = obs.get_mut(&r.machine) {
                        o.app_health = None;
                    }
                }
                continue;
            };
            let interval = st
                .cfg
                .probe_interval_ms
                .unwrap_or(ext.interval_in_seconds as u64 * 1000)
                .max(100);
            for r in recs {
                seen.insert(r.machine.clone());
                if r.deleting || !st.observation(&r.machine).running {
                    continue;
                }
                if last
                    .get(&r.machine)
                    .is_some_and(|t| t.elapsed() < Duration::from_millis(interval))
                {
                    continue;
                }
                last.insert(r.machine.clone(), Instant::now());
                tokio::spawn(probe_app_health(
                    st.clone(),
                    r.machine,
                    r.ip,
                    ext.clone(),
                    interval,
                ));
            }
        }
        last.retain(|m, _| seen.contains(m));
    }
}

async fn probe_app_health(
    st: Arc<Core>,
    machine: String,
    ip: std::net::Ipv4Addr,
    ext: model::vmss::AppHealthExtension,
    interval_ms: u64,
) {
    // Shorter than the interval so probes of one instance never overlap.
    let timeout = Duration::from_millis((interval_ms * 8 / 10).clamp(100, 5000));
    let outcome = app_health_request(ip, &ext, timeout).await;
    let result = plan::app_health::classify(ext.rich, &outcome);
    let now = now_ms();
    let mut obs = st.observed.lock().unwrap_or_else(|e| e.into_inner());
    let Some(o) = obs.get_mut(&machine) else {
        return;
    };
    if !o.running {
        return;
    }
    let state = o
        .app_health
        .get_or_insert_with(|| plan::app_health::AppHealthState::new(now));
    if let Some(new) = state.observe(
        result,
        now,
        ext.number_of_probes,
        ext.grace_period_secs as u64 * 1000,
    ) {
        info!(%machine, health = ?new, ?outcome, "application health changed");
    }
}

/// One probe of the instance's endpoint from the host (HTTP GET or a TCP handshake).
async fn app_health_request(
    ip: std::net::Ipv4Addr,
    ext: &model::vmss::AppHealthExtension,
    timeout: Duration,
) -> plan::app_health::Outcome {
    use plan::app_health::Outcome;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = std::net::SocketAddr::from((ip, ext.port));
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        match ext.protocol {
            model::vmss::AppHealthProtocol::Tcp => Some(Outcome::Connected),
            model::vmss::AppHealthProtocol::Http => {
                let path = ext.request_path.as_deref().unwrap_or("/");
                let req = format!("GET {path} HTTP/1.1\r\nHost: {ip}\r\nUser-Agent: scaleset-ApplicationHealthExtension\r\nConnection: close\r\n\r\n");
                s.write_all(req.as_bytes()).await.ok()?;
                let mut buf = Vec::new();
                (&mut s).take(64 * 1024).read_to_end(&mut buf).await.ok()?;
                Some(plan::app_health::parse_http_response(&buf))
            }
        }
    };
    tokio::time::timeout(timeout, probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(Outcome::NoAnswer)
}

/// Records new instances (intent first, durable) with ids, addresses and names.
fn new_instances(
    st: &Core,
    key: &Key,
    res: &Res,
    doc: &VmssDoc,
    image: &str,
    count: u32,
) -> Result<Vec<InstanceRecord>, String> {
    let (m, _) = model::vmss::parse(&doc.arm, &doc.name).map_err(|e| error_chain(&e))?;
    let _g = st.records.lock().unwrap_or_else(|e| e.into_inner());
    let mut used = Vec::new();
    for (k, _) in st
        .store
        .list(VMSS, None, None)
        .map_err(|e| error_chain(&e))?
    {
        for (_, v) in st.store.instances(&k).map_err(|e| error_chain(&e))? {
            if let Some(ip) = v
                .get("ip")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
            {
                used.push(ip);
            }
        }
    }
    let net = &st.cfg.network;
    let mut out = Vec::new();
    for _ in 0..count {
        let ip = plan::naming::allocate_ip(net.subnet.network(), net.subnet.prefix_len, &used)
            .ok_or_else(|| format!("subnet {} has no free addresses", net.subnet))?;
        used.push(ip);
        let id = st
            .store
            .bump(&format!("{}:ids", key.path()), 1)
            .map_err(|e| error_chain(&e))? as u32;
        let seq = st
            .store
            .bump("instance-seq", 1)
            .map_err(|e| error_chain(&e))?;
        let rec = InstanceRecord {
            instance_id: id,
            created_seq: seq,
            model_version: doc.model_version,
            image: image.to_string(),
            ip,
            computer_name: plan::naming::computer_name(&m.computer_name_prefix, id),
            machine: format!(
                "{}-{}-{id}-{}",
                st.cfg.prefix,
                sanitize(&res.name),
                short_hash(&key.path(), 4)
            ),
            time_created: now_rfc3339(),
            vm_id: uuid(),
            intent: PowerIntent::Running,
            provisioning_state: ProvisioningState::Creating,
            deleting: false,
            reimage_requested: false,
            restart_requested: false,
            draining: false,
            upgrading: false,
            protect_from_scale_in: false,
            protect_from_scale_set_actions: false,
            last_error: None,
            state_changed_at: None,
            repairing: false,
            repair_attempts: 0,
        };
        st.store
            .put_instance(
                key,
                id,
                &serde_json::to_value(&rec).map_err(|e| error_chain(&e))?,
            )
            .map_err(|e| error_chain(&e))?;
        info!(vmss = %res.name, instance = id, %ip, "instance recorded");
        out.push(rec);
    }
    Ok(out)
}

fn sanitize(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    t.trim_matches('-').to_string()
}

async fn start_instance(
    st: Arc<Core>,
    eng: Arc<Engine>,
    key: Key,
    vmss: String,
    rec: InstanceRecord,
) {
    let span = tracing::info_span!("start", vmss = %vmss, instance = rec.instance_id);
    async {
        let r = async {
            let spec = spec_for(&st, &vmss, &rec)?;
            let machines = st.machines.clone();
            blocking(move || {
                machines.create(&spec)?;
                machines.start(&spec.name)
            })
            .await
        }
        .await;
        match r {
            Ok(pid) => {
                info!(pid, "machine booted");
                forget_health(&st, &rec.machine);
                let _ = st.update_instance(&key, rec.instance_id, |r| {
                    r.provisioning_state = ProvisioningState::Succeeded;
                    r.draining = false;
                    r.restart_requested = false;
                    r.last_error = None;
                    r.state_changed_at = Some(eng.clock.now());
                });
            }
            Err(e) => {
                warn!(error = %e, "machine failed to start");
                eng.failed_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(rec.machine.clone(), eng.clock.now_ms());
                let _ = st.update_instance(&key, rec.instance_id, |r| {
                    r.provisioning_state = ProvisioningState::Failed;
                    r.last_error = Some(e.clone());
                });
            }
        }
    }
    .instrument(span)
    .await
}

/// Forgets an instance's health after its machine (re)booted: the load balancer probes it up
/// again before it serves, and views must not show the health it had before.
fn forget_health(st: &Core, machine: &str) {
    let mut obs = st.observed.lock().unwrap_or_else(|e| e.into_inner());
    let o = obs.entry(machine.to_string()).or_default();
    o.healthy = None;
    o.app_health = None;
    o.booted_at = Some(Instant::now());
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

/// Takes the instance out of rotation and waits for its in-flight requests to finish.
async fn drain(st: &Arc<Core>, eng: &Arc<Engine>, key: &Key, rec: &InstanceRecord) {
    let _ = st.update_instance(key, rec.instance_id, |r| r.draining = true);
    if let Err(e) = sync_lbs(st, eng).await {
        warn!(error = %e, "load balancer sync during drain failed");
    }
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let mut active = 0;
        for sock in lb_sockets(st) {
            if let Ok(s) = lb_call(lb::client::get_status(&sock)).await {
                active += s
                    .backends
                    .iter()
                    .filter(|b| b.id == rec.machine)
                    .map(|b| b.active_connections)
                    .sum::<u64>();
            }
        }
        if active == 0 || Instant::now() > deadline {
            if active > 0 {
                warn!(instance = rec.instance_id, active, "drain timed out");
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stop_instance(
    st: &Arc<Core>,
    eng: &Arc<Engine>,
    key: &Key,
    rec: &InstanceRecord,
) -> Result<(), String> {
    drain(st, eng, key, rec).await;
    let (m, name) = (st.machines.clone(), rec.machine.clone());
    blocking(move || m.stop(&name, STOP_TIMEOUT)).await?;
    info!(instance = rec.instance_id, "stopped");
    Ok(())
}

async fn restart_instance(
    st: &Arc<Core>,
    eng: &Arc<Engine>,
    key: &Key,
    rec: &InstanceRecord,
) -> Result<(), String> {
    stop_instance(st, eng, key, rec).await?;
    let (m, name) = (st.machines.clone(), rec.machine.clone());
    blocking(move || m.start(&name)).await?;
    forget_health(st, &rec.machine);
    st.update_instance(key, rec.instance_id, |r| {
        r.restart_requested = false;
        r.draining = false;
        r.state_changed_at = Some(eng.clock.now());
    })
    .map_err(|e| error_chain(&e))?;
    sync_lbs(st, eng).await?;
    Ok(())
}

async fn upgrade_instance(
    st: &Arc<Core>,
    eng: &Arc<Engine>,
    key: &Key,
    vmss: &str,
    rec: &InstanceRecord,
    (image, version): (Option<String>, u64),
) -> Result<(), String> {
    let image = image.ok_or("the scale set model has no image")?;
    st.update_instance(key, rec.instance_id, |r| {
        r.provisioning_state = ProvisioningState::Updating
    })
    .map_err(|e| error_chain(&e))?;
    stop_instance(st, eng, key, rec).await?;
    let mut next = rec.clone();
    next.image = image.clone();
    let spec = spec_for(st, vmss, &next)?;
    let m = st.machines.clone();
    blocking(move || {
        m.reimage(&spec)?;
        m.start(&spec.name)
    })
    .await?;
    forget_health(st, &rec.machine);
    st.update_instance(key, rec.instance_id, |r| {
        r.image = image.clone();
        r.model_version = version;
        r.reimage_requested = false;
        r.draining = false;
        r.provisioning_state = ProvisioningState::Succeeded;
        r.last_error = None;
        r.state_changed_at = Some(eng.clock.now());
    })
    .map_err(|e| error_chain(&e))?;
    info!(instance = rec.instance_id, image = %image, "reimaged onto the latest model");
    sync_lbs(st, eng).await?;
    Ok(())
}

async fn delete_instance(
    st: &Arc<Core>,
    eng: &Arc<Engine>,
    key: &Key,
    rec: &InstanceRecord,
) -> Result<(), String> {
    st.update_instance(key, rec.instance_id, |r| {
        r.deleting = true;
        r.provisioning_state = ProvisioningState::Deleting;
    })
    .map_err(|e| error_chain(&e))?;
    drain(st, eng, key, rec).await;
    let (m, name) = (st.machines.clone(), rec.machine.clone());
    blocking(move || m.delete(&name)).await?;
    st.store
        .delete_instance(key, rec.instance_id)
        .map_err(|e| error_chain(&e))?;
    st.observed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&rec.machine);
    info!(instance = rec.instance_id, "deleted");
    sync_lbs(st, eng).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Load balancers: one detached `scaleset lb-serve` process per resource, configured over its
// admin socket.

/// A call to a load balancer's admin socket, bounded so a wedged LB cannot stall the engine.
async fn lb_call<T>(
    f: impl std::future::Future<Output = Result<T, lb::LbError>>,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(5), f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(_) => Err("the load balancer's admin socket did not answer within 5 s".into()),
    }
}

fn lb_dir(st: &Core, key: &Key) -> PathBuf {
    st.cfg.home.join("lb").join(short_hash(&key.path(), 12))
}

fn lb_sockets(st: &Core) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(st.cfg.home.join("lb")) else {
        return vec![];
    };
    rd.flatten()
        .map(|e| e.path().join("admin.sock"))
        .filter(|p| p.exists())
        .collect()
}

fn pid_alive(pid: i32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(needle))
        .unwrap_or(false)
}

/// Starts the LB process for `dir` unless one is already running (adoption).
fn ensure_lb_process(st: &Core, dir: &std::path::Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let sock = dir.join("admin.sock");
    let pidfile = dir.join("pid");
    let needle = sock.to_string_lossy().to_string();
    if let Some(pid) = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        if pid_alive(pid, &needle) {
            return Ok(sock);
        }
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("lb.log"))
        .map_err(|e| format!("cannot open LB log: {e}"))?;
    let log2 = log.try_clone().map_err(|e| error_chain(&e))?;
    let _ = std::fs::remove_file(&sock);
    let mut cmd = std::process::Command::new(&st.cfg.exe);
    cmd.arg("lb-serve")
        .arg("--config")
        .arg(dir.join("config.json"))
        .arg("--admin")
        .arg(&sock);
    cmd.stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2);
    // Own session: the LB must outlive the daemon (and not get its terminal's SIGINT).
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        format!(
            "cannot start load balancer process {}: {e}",
            st.cfg.exe.display()
        )
    })?;
    std::fs::write(&pidfile, child.id().to_string()).map_err(|e| error_chain(&e))?;
    info!(pid = child.id(), dir = %dir.display(), "load balancer process started");
    // The child is reaped by nobody when the daemon dies; while it lives, a thread reaps it.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(sock)
}

/// The LB's data-plane config from its ARM model and the scale sets in its pools.
pub fn lb_config(st: &Core, key: &Key, arm: &Value) -> Result<lb::LbConfig, String> {
    let (m, _) = model::lb::parse(arm).map_err(|e| error_chain(&e))?;
    let mut backends = Vec::new();
    for (vk, v) in st
        .store
        .list(VMSS, None, None)
        .map_err(|e| error_chain(&e))?
    {
        let Ok(doc) = serde_json::from_value::<VmssDoc>(v) else {
            continue;
        };
        let Ok((vm, _)) = model::vmss::parse(&doc.arm, &doc.name) else {
            continue;
        };
        let member = vm.backend_pools.iter().any(|p| {
            p.name.eq_ignore_ascii_case(&key.name) && p.resource_group.eq_ignore_ascii_case(&key.rg)
        });
        if !member {
            continue;
        }
        for r in st.instances(&vk).map_err(|e| error_chain(&e))? {
            backends.push(lb::Backend {
                id: r.machine.clone(),
                ip: r.ip.into(),
                draining: r.draining || r.deleting || r.intent == PowerIntent::Stopped,
            });
        }
    }
    let probes = m
        .probes
        .iter()
        .map(|p| lb::Probe {
            name: p.name.clone(),
            protocol: match p.protocol {
                model::lb::ProbeProtocol::Tcp => lb::ProbeProtocol::Tcp,
                model::lb::ProbeProtocol::Http => lb::ProbeProtocol::Http,
            },
            port: p.port,
            request_path: p.request_path.clone(),
            interval_in_seconds: p.interval_in_seconds,
            probe_threshold: p.probe_threshold,
            interval_ms: st.cfg.probe_interval_ms,
        })
        .collect();
    let rules = m
        .rules
        .iter()
        .filter_map(|r| {
            let ip = m
                .frontends
                .iter()
                .find(|f| f.0 == r.frontend)
                .map(|f| f.1)
                .unwrap_or([127, 0, 0, 1].into());
            // Stored before `--lb-allowed-addresses` was narrowed: not served.
            if !st.cfg.lb_address_allowed(ip) {
                tracing::debug!(lb = %key.name, rule = %r.name, %ip, "frontend address not allowed; rule not served");
                return None;
            }
            Some(lb::Rule {
                name: r.name.clone(),
                frontend: std::net::SocketAddr::new(ip, r.frontend_port),
                backend_port: r.backend_port,
                layer: if m.l7 { lb::Layer::L7 } else { lb::Layer::L4 },
                load_distribution: match r.load_distribution {
                    model::lb::Distribution::Default => lb::LoadDistribution::Default,
                    model::lb::Distribution::SourceIP => lb::LoadDistribution::SourceIp,
                    model::lb::Distribution::SourceIPProtocol => {
                        lb::LoadDistribution::SourceIpProtocol
                    }
                },
                idle_timeout_in_minutes: r.idle_timeout_in_minutes,
                enable_tcp_reset: r.enable_tcp_reset,
                probe: r.probe.clone(),
            })
        })
        .collect();
    Ok(lb::LbConfig {
        name: key.name.clone(),
        rules,
        probes,
        backends,
        no_healthy_backends_behavior: if m.probes.iter().any(|p| p.all_probed_up) {
            lb::NoHealthyBackendsBehavior::AllProbedUp
        } else {
            lb::NoHealthyBackendsBehavior::AllProbedDown
        },
        frontend_limits: st.cfg.lb_frontend,
    })
}

/// Makes the LB processes match the LB resources, pushes changed configs, reads health.
pub async fn sync_lbs(st: &Arc<Core>, eng: &Arc<Engine>) -> Result<(), String> {
    let mut pushed = eng.pushed.lock().await;
    let lbs = st.store.list(LB, None, None).map_err(|e| error_chain(&e))?;
    let mut live = HashSet::new();
    let mut health: HashMap<String, bool> = HashMap::new();
    for (key, arm) in lbs {
        let dir = lb_dir(st, &key);
        live.insert(dir.clone());
        let cfg = lb_config(st, &key, &arm)?;
        let (st2, dir2) = (st.clone(), dir.clone());
        let sock = tokio::task::spawn_blocking(move || ensure_lb_process(&st2, &dir2))
            .await
            .map_err(|e| error_chain(&e))??;
        let _ = std::fs::write(dir.join("key"), key.path());
        // Wait briefly for a freshly started process to open its socket.
        for _ in 0..50 {
            if sock.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let path = key.path();
        match lb_call(lb::client::get_status(&sock)).await {
            Ok(mut status) => {
                let current: HashSet<(String, bool)> = status
                    .backends
                    .iter()
                    .map(|b| (b.id.clone(), b.draining))
                    .collect();
                let wanted: HashSet<(String, bool)> = cfg
                    .backends
                    .iter()
                    .map(|b| (b.id.clone(), b.draining))
                    .collect();
                if pushed.get(&path) != Some(&cfg) || current != wanted {
                    lb_call(lb::client::put_config(&sock, &cfg))
                        .await
                        .map_err(|e| {
                            format!("cannot configure load balancer '{}': {e}", key.name)
                        })?;
                    pushed.insert(path, cfg);
                    // Health as of the new config: a backend back from draining is down until
                    // probed up again.
                    if let Ok(fresh) = lb_call(lb::client::get_status(&sock)).await {
                        status = fresh;
                    }
                }
                for b in status.backends {
                    health.insert(b.id, b.healthy);
                }
            }
            Err(e) => {
                warn!(lb = %key.name, error = %e, "load balancer not answering")
            }
        }
    }
    {
        let mut obs = st.observed.lock().unwrap_or_else(|e| e.into_inner());
        for (id, h) in health {
            obs.entry(id).or_default().healthy = Some(h);
        }
    }
    // Load balancers whose resource is gone: stop their process and forget them.
    if let Ok(rd) = std::fs::read_dir(st.cfg.home.join("lb")) {
        for e in rd.flatten() {
            let dir = e.path();
            if live.contains(&dir) {
                continue;
            }
            stop_lb_dir(&dir);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    Ok(())
}

fn stop_lb_dir(dir: &std::path::Path) {
    let needle = dir.join("admin.sock").to_string_lossy().to_string();
    if let Some(pid) = std::fs::read_to_string(dir.join("pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        if pid_alive(pid, &needle) {
            // SAFETY: plain kill(2) on a pid we verified is our LB process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            for _ in 0..200 {
                if !pid_alive(pid, &needle) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
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
