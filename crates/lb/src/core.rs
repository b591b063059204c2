//! Runtime state of one load balancer: backends, listeners, health entries,
//! and the lock-free per-rule views used by the data path.
//!
//! Control-path mutations (config changes, probe transitions, suspect marks)
//! happen under `Lb::ctl` (a std mutex, never held across `.await`) and end by
//! publishing fresh [`RuleView`]s through `ArcSwap`. The data path only does
//! `ArcSwap::load` plus atomics.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use crate::config::{FrontendLimits, Layer, LbConfig, NoHealthyBackendsBehavior, Probe, Rule};
use crate::l7::Pool;
use crate::probe_state::ProbeState;
use crate::rotation::{tiers, Standing};
use crate::select::member_key;
use crate::status::{
    AtomicClasses, AtomicCounters, BackendStatus, FrontendCounters, FrontendStatus, LbStatus,
};
use crate::LbError;

/// How long a suspect mark lasts for a backend no probe watches.
const UNPROBED_SUSPECT_TTL: Duration = Duration::from_secs(5);

/// One backend (VM instance) as known to the data path.
#[derive(Debug)]
pub(crate) struct BackendRt {
    pub id: String,
    pub ip: IpAddr,
    /// Part of the identity once known: the counters below are this image's. Learned in place
    /// when the config first names it (a config from an older daemon has none).
    image: Mutex<Option<String>>,
    pub key: u64,
    pub draining: AtomicBool,
    /// Set after a connect failure; cleared by the next successful probe.
    pub suspect: AtomicBool,
    /// Wakes the backend's health tasks when it becomes suspect (they re-probe it quickly).
    pub reprobe: tokio::sync::Notify,
    pub active: AtomicU64,
    pub requests: AtomicU64,
    /// The sum of the three kinds below.
    pub failures: AtomicU64,
    pub connect_errors: AtomicU64,
    pub connect_timeouts: AtomicU64,
    pub exchange_errors: AtomicU64,
    /// L7 responses by status class.
    pub responses: AtomicClasses,
    /// Keep-alive pools per backend port (control path only).
    pools: Mutex<Vec<(u16, Arc<Pool>)>>,
}

impl BackendRt {
    fn new(b: &crate::config::Backend) -> Self {
        let (id, ip) = (&b.id, b.ip);
        BackendRt {
            id: id.to_owned(),
            ip,
            image: Mutex::new(b.image.clone()),
            key: member_key(id),
            draining: AtomicBool::new(false),
            suspect: AtomicBool::new(false),
            reprobe: tokio::sync::Notify::new(),
            active: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            connect_timeouts: AtomicU64::new(0),
            exchange_errors: AtomicU64::new(0),
            responses: AtomicClasses::default(),
            pools: Mutex::new(Vec::new()),
        }
    }

    fn pool(&self, port: u16) -> Arc<Pool> {
        let mut pools = lock(&self.pools);
        if let Some((_, p)) = pools.iter().find(|(p, _)| *p == port) {
            return p.clone();
        }
        let p = Arc::new(Pool::new(SocketAddr::new(self.ip, port)));
        pools.push((port, p.clone()));
        p
    }

    /// Drops pools for ports no rule uses any more.
    fn retain_pools(&self, ports: &[u16]) {
        lock(&self.pools).retain(|(port, p)| {
            let keep = ports.contains(port);
            if !keep {
                p.clear_idle();
            }
            keep
        });
    }

    /// Whether `b` is still this backend: same address, and the same image unless this one's
    /// was not known yet (then it is learned).
    fn is(&self, b: &crate::config::Backend) -> bool {
        if self.ip != b.ip {
            return false;
        }
        let mut image = lock(&self.image);
        match (&*image, &b.image) {
            (Some(old), Some(new)) => old == new,
            (Some(_), None) => true,
            (None, new) => {
                *image = new.clone();
                true
            }
        }
    }

    fn clear_idle_pools(&self) {
        for (_, p) in lock(&self.pools).iter() {
            p.clear_idle();
        }
    }
}

/// A backend as a target of one rule.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub backend: Arc<BackendRt>,
    pub addr: SocketAddr,
    pub pool: Arc<Pool>,
}

/// Immutable snapshot of a rule, swapped atomically.
#[derive(Debug)]
pub(crate) struct RuleView {
    pub rule: Rule,
    pub limits: FrontendLimits,
    /// Candidates for new flows, best tier first ([`tiers`]).
    pub targets: Vec<Target>,
    /// Where each tier of `targets` ends.
    pub tier_ends: Vec<usize>,
}

/// One frontend listener.
#[derive(Debug)]
pub(crate) struct Listener {
    pub lb: Arc<Lb>,
    pub view: ArcSwap<RuleView>,
    /// Per-request rotation counter for L7 `Default`.
    pub rotation: AtomicU64,
    pub local: SocketAddr,
    /// One permit per open connection (`frontendLimits.maxConnections`); the accept loop
    /// waits for a permit, so excess clients wait in the listen backlog.
    pub conns: Arc<Semaphore>,
    /// Counters of this frontend (kept across config changes while it listens).
    pub stats: Arc<FrontendCounters>,
    /// The permits `conns` is sized for (control path only).
    cap: AtomicU32,
}

impl Listener {
    /// Resizes the connection cap (control path). Shrinking takes the permits as open
    /// connections close.
    fn set_cap(&self, cap: u32) {
        let old = self.cap.swap(cap, Relaxed);
        if cap > old {
            self.conns.add_permits((cap - old) as usize);
        } else if cap < old {
            let sem = self.conns.clone();
            tokio::spawn(async move {
                if let Ok(p) = sem.acquire_many_owned(old - cap).await {
                    p.forget();
                }
            });
        }
    }
}

#[derive(Debug)]
struct ListenerEntry {
    listener: Arc<Listener>,
    stop: watch::Sender<bool>,
}

#[derive(Debug)]
struct HealthEntry {
    probe: Probe,
    ip: IpAddr,
    state: ProbeState,
    generation: u64,
    task: tokio::task::AbortHandle,
}

#[derive(Debug, Default)]
pub(crate) struct Ctl {
    pub config: LbConfig,
    backends: HashMap<String, Arc<BackendRt>>,
    listeners: HashMap<SocketAddr, ListenerEntry>,
    health: HashMap<(String, String), HealthEntry>,
    next_generation: u64,
}

/// Shared state of one LB instance.
#[derive(Debug)]
pub(crate) struct Lb {
    pub name: ArcSwap<String>,
    pub totals: AtomicCounters,
    pub ctl: Mutex<Ctl>,
    pub config_path: PathBuf,
    /// Serializes `PUT /config` (held across awaits, hence tokio's mutex).
    pub apply_lock: tokio::sync::Mutex<()>,
    /// Flips to true when the LB shuts down.
    pub shutdown: watch::Sender<bool>,
    /// Open client connections (L7) and flows (L4), for graceful drain.
    pub open: AtomicU64,
    pub open_changed: tokio::sync::Notify,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts an open client connection (LB-wide and on its frontend) while alive and holds its
/// frontend's connection permit.
pub(crate) struct OpenGuard(
    Arc<Listener>,
    #[allow(dead_code)] tokio::sync::OwnedSemaphorePermit,
);

impl OpenGuard {
    pub fn new(l: &Arc<Listener>, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        l.lb.open.fetch_add(1, Relaxed);
        l.stats.open.fetch_add(1, Relaxed);
        OpenGuard(l.clone(), permit)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.stats.open.fetch_sub(1, Relaxed);
        if self.0.lb.open.fetch_sub(1, Relaxed) == 1 {
            self.0.lb.open_changed.notify_waiters();
        }
    }
}

/// Listeners bound ahead of committing a config.
pub(crate) struct Prepared {
    cfg: LbConfig,
    bound: Vec<(SocketAddr, TcpListener)>,
}

impl Lb {
    pub fn new(config_path: PathBuf) -> Arc<Lb> {
        Arc::new(Lb {
            name: ArcSwap::from_pointee(String::new()),
            totals: AtomicCounters::default(),
            ctl: Mutex::new(Ctl::default()),
            config_path,
            apply_lock: tokio::sync::Mutex::new(()),
            shutdown: watch::channel(false).0,
            open: AtomicU64::new(0),
            open_changed: tokio::sync::Notify::new(),
        })
    }

    /// Binds listeners for frontends that are not open yet.
    pub async fn prepare(&self, cfg: LbConfig) -> Result<Prepared, LbError> {
        cfg.validate()?;
        let existing: Vec<SocketAddr> = lock(&self.ctl).listeners.keys().copied().collect();
        let mut bound = Vec::new();
        for r in &cfg.rules {
            if existing.contains(&r.frontend) {
                continue;
            }
            bound.push((r.frontend, bind(r.frontend).await?));
        }
        Ok(Prepared { cfg, bound })
    }

    /// Applies a prepared config atomically.
    pub fn commit(self: &Arc<Self>, prepared: Prepared) {
        let Prepared { cfg, bound } = prepared;
        let mut ctl = lock(&self.ctl);
        self.name.store(Arc::new(cfg.name.clone()));
        let undrained = commit_backends(&mut ctl, &cfg);
        self.commit_health(&mut ctl, &cfg, &undrained);
        commit_listeners(&mut ctl, &cfg);
        ctl.config = cfg;
        for (addr, tcp) in bound {
            self.add_listener(&mut ctl, addr, tcp);
        }
        self.rebuild(&ctl);
    }

    /// Health entries: one per (probe, backend); changed or undrained ones restart.
    fn commit_health(self: &Arc<Self>, ctl: &mut Ctl, cfg: &LbConfig, undrained: &[String]) {
        let mut wanted: HashMap<(String, String), (Probe, IpAddr)> = HashMap::new();
        for p in &cfg.probes {
            for b in &cfg.backends {
                wanted.insert((p.name.clone(), b.id.clone()), (p.clone(), b.ip));
            }
        }
        ctl.health.retain(|k, e| {
            let keep = !undrained.contains(&k.1)
                && wanted
                    .get(k)
                    .is_some_and(|(p, ip)| *p == e.probe && *ip == e.ip);
            if !keep {
                e.task.abort();
            }
            keep
        });
        for (k, (probe, ip)) in wanted {
            if ctl.health.contains_key(&k) {
                continue;
            }
            // commit_backends made one for every backend of the config.
            let Some(backend) = ctl.backends.get(&k.1).cloned() else {
                continue;
            };
            ctl.next_generation += 1;
            let generation = ctl.next_generation;
            let task = tokio::spawn(crate::health::run(
                self.clone(),
                k.clone(),
                generation,
                probe.clone(),
                backend,
            ))
            .abort_handle();
            ctl.health.insert(
                k,
                HealthEntry {
                    probe,
                    ip,
                    state: ProbeState::new(),
                    generation,
                    task,
                },
            );
        }
    }

    /// Starts serving a newly bound frontend of the committed config.
    fn add_listener(self: &Arc<Self>, ctl: &mut Ctl, addr: SocketAddr, tcp: TcpListener) {
        let Some(rule) = ctl.config.rules.iter().find(|r| r.frontend == addr) else {
            return;
        };
        let cap = ctl.config.frontend_limits.max_connections;
        let listener = Arc::new(Listener {
            lb: self.clone(),
            view: ArcSwap::from_pointee(RuleView {
                rule: rule.clone(),
                limits: ctl.config.frontend_limits,
                targets: Vec::new(),
                tier_ends: Vec::new(),
            }),
            rotation: AtomicU64::new(0),
            local: addr,
            conns: Arc::new(Semaphore::new(cap as usize)),
            stats: Arc::default(),
            cap: AtomicU32::new(cap),
        });
        let (stop, stop_rx) = watch::channel(false);
        info!(lb = %ctl.config.name, frontend = %addr, "listener added");
        tokio::spawn(accept_loop(listener.clone(), tcp, stop_rx));
        ctl.listeners.insert(addr, ListenerEntry { listener, stop });
    }

    /// Recomputes and publishes every rule view.
    pub fn rebuild(&self, ctl: &Ctl) {
        let cfg = &ctl.config;
        for rule in &cfg.rules {
            let Some(entry) = ctl.listeners.get(&rule.frontend) else {
                continue;
            };
            let mut targets = Vec::new();
            let mut standings = Vec::new();
            for b in &cfg.backends {
                let Some(rt) = ctl.backends.get(&b.id) else {
                    continue;
                };
                if b.draining {
                    continue;
                }
                let probed_up = match &rule.probe {
                    None => true,
                    Some(p) => ctl
                        .health
                        .get(&(p.clone(), b.id.clone()))
                        .is_some_and(|e| e.state.is_up()),
                };
                standings.push(Standing {
                    probed_up,
                    suspect: rt.suspect.load(Relaxed),
                });
                targets.push(Target {
                    backend: rt.clone(),
                    addr: SocketAddr::new(b.ip, rule.backend_port),
                    pool: rt.pool(rule.backend_port),
                });
            }
            let all_probed_up =
                cfg.no_healthy_backends_behavior == NoHealthyBackendsBehavior::AllProbedUp;
            let mut healthy = Vec::with_capacity(targets.len());
            let mut tier_ends = Vec::new();
            for tier in tiers(&standings, all_probed_up) {
                healthy.extend(tier.into_iter().map(|i| targets[i].clone()));
                tier_ends.push(healthy.len());
            }
            entry.listener.view.store(Arc::new(RuleView {
                rule: rule.clone(),
                limits: cfg.frontend_limits,
                targets: healthy,
                tier_ends,
            }));
        }
    }

    /// Records one probe result; called by the health task.
    /// Returns false when the entry is gone (task must stop).
    pub fn probe_result(&self, key: &(String, String), generation: u64, success: bool) -> bool {
        let mut ctl = lock(&self.ctl);
        let name = self.name.load();
        let Some(e) = ctl.health.get_mut(key) else {
            return false;
        };
        if e.generation != generation {
            return false;
        }
        let threshold = e.probe.probe_threshold;
        let transition = e.state.observe(success, threshold);
        if let Some(t) = transition {
            info!(lb = %name, probe = %key.0, backend = %key.1, transition = ?t, "probe state changed");
        }
        let mut changed = transition.is_some();
        if success {
            if let Some(b) = ctl.backends.get(&key.1) {
                if b.suspect.swap(false, Relaxed) {
                    info!(lb = %name, backend = %key.1, "backend no longer suspect");
                    changed = true;
                }
            }
        }
        if changed {
            self.rebuild(&ctl);
        }
        true
    }

    /// A suspect backend answered its health task's quick re-probe: back in rotation.
    /// Returns false when the entry is gone (task must stop).
    pub fn reprobe_ok(&self, key: &(String, String), generation: u64) -> bool {
        let ctl = lock(&self.ctl);
        if ctl
            .health
            .get(key)
            .is_none_or(|e| e.generation != generation)
        {
            return false;
        }
        if let Some(b) = ctl.backends.get(&key.1) {
            if b.suspect.swap(false, Relaxed) {
                info!(lb = %self.name.load(), backend = %key.1, "backend answers again; no longer suspect");
                self.rebuild(&ctl);
            }
        }
        true
    }

    /// Marks a backend suspect after a connect failure: new flows prefer the others until it
    /// answers a probe again (its health tasks re-probe it quickly, see `health::run`).
    pub fn mark_suspect(self: &Arc<Self>, backend: &Arc<BackendRt>) {
        if backend.suspect.swap(true, Relaxed) {
            return;
        }
        warn!(lb = %self.name.load(), backend = %backend.id, "connect failed; backend suspect");
        backend.reprobe.notify_waiters();
        let ctl = lock(&self.ctl);
        let probed = ctl.health.keys().any(|(_, id)| *id == backend.id);
        self.rebuild(&ctl);
        drop(ctl);
        if !probed {
            let lb = self.clone();
            let b = backend.clone();
            tokio::spawn(async move {
                tokio::time::sleep(UNPROBED_SUSPECT_TTL).await;
                if b.suspect.swap(false, Relaxed) {
                    lb.rebuild(&lock(&lb.ctl));
                }
            });
        }
    }

    pub fn status(&self) -> LbStatus {
        let ctl = lock(&self.ctl);
        let cfg = &ctl.config;
        let probes: Vec<&String> = cfg.rules.iter().filter_map(|r| r.probe.as_ref()).collect();
        let backends = cfg
            .backends
            .iter()
            .filter_map(|b| {
                let rt = ctl.backends.get(&b.id)?;
                let healthy = probes.iter().all(|p| {
                    ctl.health
                        .get(&((*p).clone(), b.id.clone()))
                        .is_some_and(|e| e.state.is_up())
                });
                Some(BackendStatus {
                    id: b.id.clone(),
                    ip: b.ip,
                    image: lock(&rt.image).clone(),
                    healthy,
                    draining: b.draining,
                    suspect: rt.suspect.load(Relaxed),
                    active_connections: rt.active.load(Relaxed),
                    requests: rt.requests.load(Relaxed),
                    failures: rt.failures.load(Relaxed),
                    responses: rt.responses.snapshot(),
                    connect_errors: rt.connect_errors.load(Relaxed),
                    connect_timeouts: rt.connect_timeouts.load(Relaxed),
                    exchange_errors: rt.exchange_errors.load(Relaxed),
                })
            })
            .collect();
        let mut frontends: Vec<FrontendStatus> = ctl
            .listeners
            .values()
            .map(|e| frontend_status(&e.listener))
            .collect();
        frontends.sort_by_key(|f| f.frontend);
        LbStatus {
            name: cfg.name.clone(),
            backends,
            totals: self.totals.snapshot(),
            frontends,
        }
    }

    /// Stops listeners and probes (part of shutdown).
    pub fn stop_all(&self) {
        let mut ctl = lock(&self.ctl);
        for (_, e) in ctl.listeners.drain() {
            let _ = e.stop.send(true);
        }
        for (_, e) in ctl.health.drain() {
            e.task.abort();
        }
        let _ = self.shutdown.send(true);
    }
}

fn frontend_status(l: &Listener) -> FrontendStatus {
    let view = l.view.load();
    let s = &l.stats;
    FrontendStatus {
        rule: view.rule.name.clone(),
        frontend: l.local,
        layer: view.rule.layer,
        connections: s.connections.load(Relaxed),
        open_connections: s.open.load(Relaxed),
        responses: s.responses.snapshot(),
        retries: s.retries.load(Relaxed),
        no_backend: s.no_backend.load(Relaxed),
        tries_exhausted: s.tries_exhausted.load(Relaxed),
        latency: s.latency.snapshot(),
    }
}

/// Backends: keeps the runtime objects of those that remain (same id, ip and image).
/// Returns the ids of backends to probe up again: back from draining, or replaced.
fn commit_backends(ctl: &mut Ctl, cfg: &LbConfig) -> Vec<String> {
    let mut backends = HashMap::new();
    // Backends coming back from draining (a stopped, restarted or reimaged instance) must
    // be probed up again before they get traffic, like a new instance; so must a backend
    // replaced under the same id (another address or image: a reimage that ended between
    // two configs).
    let mut undrained: Vec<String> = Vec::new();
    for b in &cfg.backends {
        let rt = match ctl.backends.get(&b.id) {
            Some(rt) if rt.is(b) => rt.clone(),
            old => {
                info!(lb = %cfg.name, backend = %b.id, ip = %b.ip, image = ?b.image, "backend added");
                if old.is_some() && !b.draining {
                    undrained.push(b.id.clone());
                }
                Arc::new(BackendRt::new(b))
            }
        };
        let was = rt.draining.swap(b.draining, Relaxed);
        if b.draining && !was {
            info!(lb = %cfg.name, backend = %b.id, "backend draining");
            rt.clear_idle_pools();
        }
        if was && !b.draining {
            info!(lb = %cfg.name, backend = %b.id, "backend back from draining; out of rotation until probed up");
            undrained.push(b.id.clone());
        }
        backends.insert(b.id.clone(), rt);
    }
    for (id, old) in ctl.backends.iter() {
        // Same id with another address (or image) is another backend.
        if backends.get(id).is_none_or(|n| !Arc::ptr_eq(n, old)) {
            info!(lb = %cfg.name, backend = %id, "backend removed");
            old.clear_idle_pools();
        }
    }
    let ports: Vec<u16> = cfg.rules.iter().map(|r| r.backend_port).collect();
    for rt in backends.values() {
        rt.retain_pools(&ports);
    }
    ctl.backends = backends;
    undrained
}

/// Listeners are keyed by frontend (layer and settings live in the view):
/// stops those no rule uses and resizes the others' connection caps.
fn commit_listeners(ctl: &mut Ctl, cfg: &LbConfig) {
    let keep: Vec<SocketAddr> = cfg.rules.iter().map(|r| r.frontend).collect();
    ctl.listeners.retain(|addr, e| {
        let k = keep.contains(addr);
        if !k {
            info!(lb = %cfg.name, frontend = %addr, "listener removed");
            let _ = e.stop.send(true);
        }
        k
    });
    for e in ctl.listeners.values() {
        e.listener.set_cap(cfg.frontend_limits.max_connections);
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, LbError> {
    let mut tries = 0;
    loop {
        let res = (|| {
            let sock = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            sock.set_reuseaddr(true)?;
            sock.set_nodelay(true)?;
            sock.bind(addr)?;
            sock.listen(4096)
        })();
        match res {
            Ok(l) => return Ok(l),
            // A listener removed a moment ago may still be closing.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(source) => return Err(LbError::Bind { addr, source }),
        }
    }
}

async fn accept_loop(listener: Arc<Listener>, tcp: TcpListener, mut stop: watch::Receiver<bool>) {
    let mut shutdown = listener.lb.shutdown.subscribe();
    loop {
        // A permit first: at the cap, new clients wait in the backlog instead of taking
        // memory and descriptors (the header and idle timeouts free the slots).
        let permit = tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = shutdown.changed() => break,
            p = listener.conns.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = shutdown.changed() => break,
            a = tcp.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let lb = &listener.lb;
                lb.totals.connections.fetch_add(1, Relaxed);
                listener.stats.connections.fetch_add(1, Relaxed);
                let guard = OpenGuard::new(&listener, permit);
                let l = listener.clone();
                match l.view.load().rule.layer {
                    Layer::L4 => tokio::spawn(crate::l4::serve_conn(l, stream, peer, guard)),
                    Layer::L7 => tokio::spawn(crate::l7::serve_conn(l, stream, peer, guard)),
                };
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(lb = %listener.lb.name.load(), frontend = %listener.local, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
