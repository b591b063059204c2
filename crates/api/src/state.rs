//! Daemon configuration and the shared state of the API (the records themselves are
//! `control`'s, re-exported here).
use runtime::{Ipv4Net, NetworkSpec};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// State root: database, token, machines, images, load balancers.
    pub home: PathBuf,
    pub listen: SocketAddr,
    pub network: NetworkSpec,
    /// Short tag in machine, netns and interface names.
    pub prefix: String,
    /// The `scaleset` executable, run as `scaleset lb-serve` for each load balancer.
    pub exe: PathBuf,
    /// Shared cache of base images (debootstrap output).
    pub base_cache: PathBuf,
    /// Internal: probe interval override in ms for tests (Azure's minimum is 5 s).
    pub probe_interval_ms: Option<u64>,
    /// How long a rolling upgrade waits for an upgraded batch to become healthy (Azure: 5 min).
    pub rolling_health_timeout_secs: u64,
    /// Test knob: replaces every scale set's automatic repairs grace period (Azure's minimum,
    /// PT10M, is too long for tests). `SCALESET_REPAIR_GRACE_SECS`.
    pub repair_grace_secs: Option<u64>,
    /// Test knob: time between autoscale evaluations in ms (Azure: 30–60 s).
    /// `SCALESET_AUTOSCALE_INTERVAL_MS`.
    pub autoscale_interval_ms: Option<u64>,
    /// Body sizes, timeouts, connection caps, allowed LB frontend addresses.
    pub limits: crate::limits::Limits,
    /// `GET /metrics` from a loopback address needs no token (`serve
    /// --metrics-anonymous-loopback`); otherwise it needs the daemon's.
    pub metrics_anonymous_loopback: bool,
}

impl DaemonConfig {
    pub fn network_for(
        home: &std::path::Path,
        subnet: Ipv4Net,
        bridge: Option<String>,
    ) -> NetworkSpec {
        let bridge =
            bridge.unwrap_or_else(|| format!("ssbr{}", short_hash(&home.to_string_lossy(), 4)));
        NetworkSpec {
            bridge,
            gateway: subnet.host(1),
            subnet,
        }
    }
}

pub use control::{
    now_rfc3339, short_hash, uuid, InstanceRecord, Observation, ProvisioningState, Receipt,
    RolloutDoc, VmssDoc, REPAIRS, ROLLOUT,
};

impl DaemonConfig {
    /// The part of the configuration the engine reads.
    pub fn engine(&self) -> engine::EngineConfig {
        engine::EngineConfig {
            home: self.home.clone(),
            network: self.network.clone(),
            prefix: self.prefix.clone(),
            exe: self.exe.clone(),
            probe_interval_ms: self.probe_interval_ms,
            rolling_health_timeout_secs: self.rolling_health_timeout_secs,
            repair_grace_secs: self.repair_grace_secs,
            lb_allowed: self.limits.lb_allowed.clone(),
            lb_frontend: self.limits.lb_frontend,
            metrics_interval_ms: None,
            autoscale_interval_ms: self.autoscale_interval_ms,
        }
    }
}

/// Who may call: the daemon's token and the credentials of running pipeline runs.
#[derive(Default)]
pub struct Auth {
    pub token: String,
    /// Credentials of running pipeline runs: ARM API only, minted and revoked by the CI
    /// service (shared with it); jobs never see the daemon token.
    pub run_tokens: Arc<ci::RunTokens>,
}

/// The daemon's shared state, in layers: the configuration, authentication, the services on
/// top (pipelines), and the engine's core (machines, images) over the control plane's records
/// (persistence). Handlers reach the lower layers through `Deref` (`st.instances(..)`,
/// `st.images`).
pub struct AppState {
    pub cfg: DaemonConfig,
    pub auth: Auth,
    /// Hosted repositories, pipelines and runs (`/scaleset/...`).
    pub pipelines: Option<Arc<ci::PipelineService>>,
    pub core: Arc<engine::Core>,
    /// Dashboard sign-in: one-time URLs, sessions, open event streams.
    pub dashboard: crate::ui::Dashboard,
}

impl std::ops::Deref for AppState {
    type Target = engine::Core;
    fn deref(&self) -> &engine::Core {
        &self.core
    }
}

impl AppState {
    /// Whether `token` is a running pipeline run's credential (see `Auth::run_tokens`).
    pub fn is_run_token(&self, token: &str) -> bool {
        self.auth.run_tokens.contains(token)
    }
}
