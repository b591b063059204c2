//! Daemon configuration, shared state and the durable records the engine and API share.
use crate::error::ApiError;
use crate::route::{Res, VMSS};
use plan::PowerIntent;
use runtime::{Ipv4Net, Machines, NetworkSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use store::{Key, Store};
use tokio::sync::Notify;

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
    /// Body sizes, timeouts, connection caps, allowed LB frontend addresses.
    pub limits: crate::limits::Limits,
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

/// A few hex digits of a stable hash (FNV-1a), for short unique names.
pub fn short_hash(s: &str, n: usize) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")[..n].to_string()
}

/// One scale set instance as the control plane records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRecord {
    pub instance_id: u32,
    pub created_seq: u64,
    pub model_version: u64,
    /// Image name (`Microsoft.Compute/images/{name}`) this instance's disk was made from.
    pub image: String,
    pub ip: Ipv4Addr,
    pub computer_name: String,
    /// Runtime machine name.
    pub machine: String,
    pub time_created: String,
    pub vm_id: String,
    pub intent: PowerIntent,
    /// Creating | Succeeded | Updating | Deleting | Failed
    pub provisioning_state: String,
    #[serde(default)]
    pub deleting: bool,
    #[serde(default)]
    pub reimage_requested: bool,
    #[serde(default)]
    pub restart_requested: bool,
    /// Out of the load balancer's rotation while it is stopped, restarted or replaced.
    #[serde(default)]
    pub draining: bool,
    /// A rolling upgrade is acting on this instance (reimage, rollback or removal in flight).
    #[serde(default)]
    pub upgrading: bool,
    #[serde(default)]
    pub protect_from_scale_in: bool,
    #[serde(default)]
    pub protect_from_scale_set_actions: bool,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Unix seconds when the last state change (boot, restart, reimage) completed: automatic
    /// repairs wait a grace period from here.
    #[serde(default)]
    pub state_changed_at: Option<u64>,
    /// An automatic repair is acting on this instance.
    #[serde(default)]
    pub repairing: bool,
    /// Automatic repairs of this instance (or of the one it replaced) not yet followed by health.
    #[serde(default)]
    pub repair_attempts: u32,
}

/// The stored scale set: the ARM body plus our bookkeeping.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmssDoc {
    /// The name as the user spelled it (the store compares names case-insensitively).
    pub name: String,
    pub resource_group: String,
    pub arm: Value,
    #[serde(default)]
    pub deleting: bool,
    pub model_version: u64,
    /// Image name of each model version (rollback returns instances to an earlier one).
    #[serde(default)]
    pub versions: std::collections::BTreeMap<u64, String>,
    pub unique_id: String,
    pub time_created: String,
}

/// Kind under which a scale set's latest rolling upgrade is stored.
pub const ROLLOUT: &str = "scaleset.rollingUpgrade";

/// A scale set's latest rolling upgrade: the planner's durable state and the deploy receipt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutDoc {
    pub state: plan::rolling::RolloutState,
    #[serde(default)]
    pub receipt: Receipt,
    /// The model version of the last rollout before this one that completed (what
    /// `scaleset vmss rollback` returns to).
    #[serde(default)]
    pub last_completed_version: Option<u64>,
}

/// Kind under which a scale set's automatic repairs service state is stored.
pub const REPAIRS: &str = "scaleset.automaticRepairs";

/// What clients saw during a rollout, from the load balancer's own counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    /// LB totals when the rollout began (requests, 2xx, non-2xx, failed, retries).
    pub baseline: Option<[u64; 5]>,
    /// LB totals at the last observation.
    pub latest: Option<[u64; 5]>,
    /// Per backend: requests counted so far (to attribute deltas).
    #[serde(default)]
    pub seen: std::collections::BTreeMap<String, u64>,
    /// Requests served per image, attributed to the image each instance ran when it served them.
    #[serde(default)]
    pub requests_per_image: std::collections::BTreeMap<String, u64>,
}

impl Receipt {
    /// (requests, non-2xx, failed) during the rollout.
    pub fn totals(&self) -> (u64, u64, u64) {
        match (self.baseline, self.latest) {
            (Some(b), Some(l)) => (
                l[0].saturating_sub(b[0]),
                l[2].saturating_sub(b[2]),
                l[3].saturating_sub(b[3]),
            ),
            _ => (0, 0, 0),
        }
    }
}

/// What the engine last saw of an instance, for views (not durable: re-observed after restart).
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub running: bool,
    /// The load balancer probe's verdict.
    pub healthy: Option<bool>,
    /// The Application Health extension's state, when the scale set has the extension.
    pub app_health: Option<plan::app_health::AppHealthState>,
    /// When the engine last booted the machine (the engine ticks faster until it is healthy).
    pub booted_at: Option<std::time::Instant>,
}

impl Observation {
    /// The instance's health for decisions and views: the Application Health extension's when it
    /// reports (it replaces the LB probe as the health source), else the LB probe's.
    pub fn health(&self) -> Option<plan::repairs::Health> {
        use plan::repairs::Health;
        match &self.app_health {
            Some(a) => Some(a.state()),
            None => self.healthy.map(|h| {
                if h {
                    Health::Healthy
                } else {
                    Health::Unhealthy
                }
            }),
        }
    }

    pub fn is_healthy(&self) -> Option<bool> {
        self.health().map(|h| h == plan::repairs::Health::Healthy)
    }
}

pub struct AppState {
    pub cfg: DaemonConfig,
    pub store: Store,
    pub token: String,
    pub machines: Arc<dyn Machines>,
    pub images: image::ImageStore,
    /// Wakes the engine after a change.
    pub wake: Notify,
    /// Serializes read-modify-write of instance records between API and engine.
    pub records: Mutex<()>,
    pub observed: Mutex<std::collections::HashMap<String, Observation>>,
    /// Hosted repositories, pipelines and runs (`/scaleset/...`).
    pub pipelines: Option<Arc<crate::pipelines::PipelineService>>,
    /// Credentials of running pipeline runs (token → run id): ARM API only, revoked when the
    /// run ends; jobs never see the daemon token.
    pub run_tokens: Mutex<std::collections::HashMap<String, u64>>,
}

impl AppState {
    /// A fresh credential for run `id` (see `run_tokens`).
    pub fn mint_run_token(&self, id: u64) -> String {
        let bytes: [u8; 32] = rand::random();
        let t: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.run_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(t.clone(), id);
        t
    }

    pub fn revoke_run_token(&self, token: &str) {
        self.run_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    pub fn is_run_token(&self, token: &str) -> bool {
        self.run_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(token)
    }

    pub fn vmss_doc(&self, res: &Res) -> Result<Option<VmssDoc>, ApiError> {
        match self.store.get(&res.key(VMSS))? {
            None => Ok(None),
            Some(v) => Ok(Some(serde_json::from_value(v).map_err(ApiError::internal)?)),
        }
    }

    pub fn instances(&self, key: &Key) -> Result<Vec<InstanceRecord>, ApiError> {
        self.store
            .instances(key)?
            .into_iter()
            .map(|(_, v)| serde_json::from_value(v).map_err(ApiError::internal))
            .collect()
    }

    /// Atomic read-modify-write of one instance record. Returns false if it no longer exists.
    pub fn update_instance(
        &self,
        key: &Key,
        id: u32,
        f: impl FnOnce(&mut InstanceRecord),
    ) -> Result<bool, ApiError> {
        let _g = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let Some(v) = self
            .store
            .instances(key)?
            .into_iter()
            .find(|(i, _)| *i == id)
            .map(|x| x.1)
        else {
            return Ok(false);
        };
        let mut rec: InstanceRecord = serde_json::from_value(v).map_err(ApiError::internal)?;
        f(&mut rec);
        self.store.put_instance(
            key,
            id,
            &serde_json::to_value(&rec).map_err(ApiError::internal)?,
        )?;
        Ok(true)
    }

    pub fn put_instance(&self, key: &Key, rec: &InstanceRecord) -> Result<(), ApiError> {
        let _g = self.records.lock().unwrap_or_else(|e| e.into_inner());
        self.store.put_instance(
            key,
            rec.instance_id,
            &serde_json::to_value(rec).map_err(ApiError::internal)?,
        )?;
        Ok(())
    }

    pub fn rollout(&self, res: &Res) -> Result<Option<RolloutDoc>, ApiError> {
        match self.store.get(&res.key(ROLLOUT))? {
            None => Ok(None),
            Some(v) => Ok(Some(serde_json::from_value(v).map_err(ApiError::internal)?)),
        }
    }

    /// Read-modify-write of the rollout document under the records lock. `f` returns false to
    /// leave it unchanged.
    pub fn update_rollout(
        &self,
        res: &Res,
        f: impl FnOnce(&mut Option<RolloutDoc>) -> bool,
    ) -> Result<Option<RolloutDoc>, ApiError> {
        let _g = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let mut cur = self.rollout(res)?;
        if f(&mut cur) {
            match &cur {
                Some(doc) => self.store.put(
                    &res.key(ROLLOUT),
                    &serde_json::to_value(doc).map_err(ApiError::internal)?,
                )?,
                None => {
                    self.store.delete(&res.key(ROLLOUT))?;
                }
            }
        }
        Ok(cur)
    }

    pub fn repairs_state(&self, res: &Res) -> Result<plan::repairs::RepairsState, ApiError> {
        match self.store.get(&res.key(REPAIRS))? {
            None => Ok(Default::default()),
            Some(v) => Ok(serde_json::from_value(v).map_err(ApiError::internal)?),
        }
    }

    /// Read-modify-write of the repairs service state under the records lock.
    pub fn update_repairs(
        &self,
        res: &Res,
        f: impl FnOnce(&plan::repairs::RepairsState) -> plan::repairs::RepairsState,
    ) -> Result<plan::repairs::RepairsState, ApiError> {
        let _g = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.repairs_state(res)?;
        let next = f(&cur);
        if next != cur {
            self.store.put(
                &res.key(REPAIRS),
                &serde_json::to_value(&next).map_err(ApiError::internal)?,
            )?;
        }
        Ok(next)
    }

    pub fn observation(&self, machine: &str) -> Observation {
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(machine)
            .cloned()
            .unwrap_or_default()
    }
}

pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    image::rfc3339(secs)
}

/// A random UUID (v4 layout) for vmId / uniqueId.
pub fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-4{:x}{:02x}-{:x}{:x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5], b[6] & 0xf, b[7], 8 | (b[8] & 3), b[8] >> 4, b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}
