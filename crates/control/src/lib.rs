//! The control plane's typed state: what the user asked for (scale set documents, rollouts,
//! repairs service state) and what the control plane recorded about each instance, durable in
//! the store; plus the read model of what the engine last observed. Every read-modify-write of
//! a record goes through [`ControlPlane`] under one lock shared by the API and the engine.
//! The commands on these records validate a change as a whole and commit it: `commands` (scale
//! sets), `groups` (resource groups), `lbs` (load balancers), `autoscale` (autoscale settings and
//! their history and activity log), `images` (the image store's
//! images as ARM resources).
//!
//! This crate knows nothing of HTTP, machines or processes: the API crate renders these records
//! as ARM JSON, the engine crate acts on them.
use plan::PowerIntent;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use store::{Key, Store};
use tokio::sync::Notify;

mod autoscale;
pub mod commands;
mod groups;
mod images;
mod lbs;
mod net;
mod util;
mod work;
pub use autoscale::{
    check_autoscale_name, target_res, ActivityEvent, AutoscaleState, ACTIVITY_LOG_MAX,
};
pub use commands::{check_name, not_found, CommandError, PowerAction, Put, Stored};
pub use groups::group_not_found;
pub use net::Cidr;
pub use util::{ct_eq, error_chain, now_ms, now_rfc3339, short_hash, unix_now, uuid};
pub use work::{Actor, Pending, Work};

pub const VMSS: &str = "Microsoft.Compute/virtualMachineScaleSets";
pub const LB: &str = "Microsoft.Network/loadBalancers";
pub const IMAGE: &str = "Microsoft.Compute/images";
pub const RG: &str = "Microsoft.Resources/resourceGroups";
pub const AUTOSCALE: &str = "Microsoft.Insights/autoscalesettings";
/// Kind under which the engine keeps an autoscale setting's history and activity log.
pub const AUTOSCALE_STATE: &str = "scaleset.autoscaleState";

/// One resource: subscription, resource group and name (compared case-insensitively by the
/// store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Res {
    pub sub: String,
    pub rg: String,
    pub name: String,
}

impl Res {
    pub fn key(&self, kind: &str) -> store::Key {
        store::Key::new(kind, &self.sub, &self.rg, &self.name)
    }
    pub fn id(&self, kind: &str) -> String {
        if kind == RG {
            return format!("/subscriptions/{}/resourceGroups/{}", self.sub, self.rg);
        }
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/{}/{}",
            self.sub, self.rg, kind, self.name
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Decode(#[from] serde_json::Error),
}

pub type Result<T, E = ControlError> = std::result::Result<T, E>;

/// An instance's provisioning state as ARM reports it (stored as the same strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProvisioningState {
    Creating,
    Succeeded,
    Updating,
    Deleting,
    Failed,
}

impl ProvisioningState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProvisioningState::Creating => "Creating",
            ProvisioningState::Succeeded => "Succeeded",
            ProvisioningState::Updating => "Updating",
            ProvisioningState::Deleting => "Deleting",
            ProvisioningState::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for ProvisioningState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    pub provisioning_state: ProvisioningState,
    /// The operation asked of it and who acts on it.
    #[serde(flatten)]
    pub work: Work,
    /// Out of the load balancer's rotation: set when a drain begins, cleared when the machine
    /// boots again. A field of its own because it outlasts the operation (a stopped instance, a
    /// failed restart or reimage stay drained with nothing pending).
    #[serde(default)]
    pub draining: bool,
    /// The VM size the instance was made with (its CPU and memory); older records: none.
    #[serde(default)]
    pub vm_size: Option<String>,
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
    /// Automatic repairs of this instance (or of the one it replaced) not yet followed by health.
    #[serde(default)]
    pub repair_attempts: u32,
    /// Stopped by `deallocate` rather than `powerOff`: the same stopped machine here (a stopped
    /// machine holds no host resources either way), reported as Azure reports it.
    #[serde(default)]
    pub deallocated: bool,
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
    /// VM size (`sku.name`) of each model version since sizes were recorded.
    #[serde(default)]
    pub sizes: std::collections::BTreeMap<u64, String>,
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

/// The durable records and the observation read model, shared by the API and the engine.
pub struct ControlPlane {
    pub store: Store,
    /// Wakes the engine after a change.
    pub wake: Notify,
    /// Serializes read-modify-write of instance records between API and engine.
    pub records: Mutex<()>,
    /// What the engine last saw of each machine (by machine name).
    pub observed: Mutex<HashMap<String, Observation>>,
}

impl ControlPlane {
    pub fn new(store: Store) -> ControlPlane {
        ControlPlane {
            store,
            wake: Default::default(),
            records: Default::default(),
            observed: Default::default(),
        }
    }

    pub fn vmss_doc(&self, res: &Res) -> Result<Option<VmssDoc>> {
        match self.store.get(&res.key(VMSS))? {
            None => Ok(None),
            Some(v) => Ok(Some(serde_json::from_value(v)?)),
        }
    }

    pub fn instances(&self, key: &Key) -> Result<Vec<InstanceRecord>> {
        self.store
            .instances(key)?
            .into_iter()
            .map(|(_, v)| serde_json::from_value(v).map_err(ControlError::from))
            .collect()
    }

    /// Atomic read-modify-write of one instance record. Returns false if it no longer exists.
    pub fn update_instance(
        &self,
        key: &Key,
        id: u32,
        f: impl FnOnce(&mut InstanceRecord),
    ) -> Result<bool> {
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
        let mut rec: InstanceRecord = serde_json::from_value(v)?;
        f(&mut rec);
        self.store
            .put_instance(key, id, &serde_json::to_value(&rec)?)?;
        Ok(true)
    }

    pub fn put_instance(&self, key: &Key, rec: &InstanceRecord) -> Result<()> {
        let _g = self.records.lock().unwrap_or_else(|e| e.into_inner());
        self.store
            .put_instance(key, rec.instance_id, &serde_json::to_value(rec)?)?;
        Ok(())
    }

    pub fn rollout(&self, res: &Res) -> Result<Option<RolloutDoc>> {
        match self.store.get(&res.key(ROLLOUT))? {
            None => Ok(None),
            Some(v) => Ok(Some(serde_json::from_value(v)?)),
        }
    }

    /// Read-modify-write of the rollout document under the records lock. `f` returns false to
    /// leave it unchanged.
    pub fn update_rollout(
        &self,
        res: &Res,
        f: impl FnOnce(&mut Option<RolloutDoc>) -> bool,
    ) -> Result<Option<RolloutDoc>> {
        let _g = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let mut cur = self.rollout(res)?;
        if f(&mut cur) {
            match &cur {
                Some(doc) => self
                    .store
                    .put(&res.key(ROLLOUT), &serde_json::to_value(doc)?)?,
                None => {
                    self.store.delete(&res.key(ROLLOUT))?;
                }
            }
        }
        Ok(cur)
    }

    pub fn repairs_state(&self, res: &Res) -> Result<plan::repairs::RepairsState> {
        match self.store.get(&res.key(REPAIRS))? {
            None => Ok(Default::default()),
            Some(v) => Ok(serde_json::from_value(v)?),
        }
    }

    /// Read-modify-write of the repairs service state under the records lock.
    pub fn update_repairs(
        &self,
        res: &Res,
        f: impl FnOnce(&plan::repairs::RepairsState) -> plan::repairs::RepairsState,
    ) -> Result<plan::repairs::RepairsState> {
        let _g = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.repairs_state(res)?;
        let next = f(&cur);
        if next != cur {
            self.store
                .put(&res.key(REPAIRS), &serde_json::to_value(&next)?)?;
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

    /// The scale set's provisioning state: Deleting, Updating while a rollout runs or instances
    /// are being provisioned, Creating before the first instance, Succeeded when all are.
    pub fn vmss_provisioning(&self, res: &Res, doc: &VmssDoc) -> Result<ProvisioningState> {
        if doc.deleting {
            return Ok(ProvisioningState::Deleting);
        }
        if self
            .rollout(res)?
            .is_some_and(|d| d.state.phase != plan::rolling::Phase::Done)
        {
            return Ok(ProvisioningState::Updating);
        }
        let recs = self.instances(&res.key(VMSS))?;
        let cap = doc
            .arm
            .pointer("/sku/capacity")
            .and_then(Value::as_u64)
            .unwrap_or(0) as usize;
        let active = recs.iter().filter(|r| !r.work.is_deleting()).count();
        let busy = recs.iter().any(|r| {
            r.work.pending.is_some() || r.provisioning_state != ProvisioningState::Succeeded
        });
        Ok(if active == cap && !busy {
            ProvisioningState::Succeeded
        } else if recs.is_empty() {
            ProvisioningState::Creating
        } else {
            ProvisioningState::Updating
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records written before the enum (a `provisioningState` string, flags missing) still read,
    /// and the enum writes the same strings back.
    #[test]
    fn instance_records_keep_their_stored_form() {
        let old = serde_json::json!({
            "instanceId": 3, "createdSeq": 9, "modelVersion": 2, "image": "img",
            "ip": "10.0.0.4", "computerName": "web000003", "machine": "t-web-3-abcd",
            "timeCreated": "2026-01-01T00:00:00Z", "vmId": "x", "intent": "Running",
            "provisioningState": "Updating"
        });
        let r: InstanceRecord = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(r.provisioning_state, ProvisioningState::Updating);
        assert_eq!(r.work, Work::default());
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(back["provisioningState"], "Updating");
        for (k, v) in old.as_object().unwrap() {
            assert_eq!(&back[k], v, "{k}");
        }
        for s in [
            ProvisioningState::Creating,
            ProvisioningState::Succeeded,
            ProvisioningState::Updating,
            ProvisioningState::Deleting,
            ProvisioningState::Failed,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        let bad = serde_json::json!({"provisioningState": "Sideways"});
        let mut v = old;
        v["provisioningState"] = bad["provisioningState"].clone();
        assert!(serde_json::from_value::<InstanceRecord>(v).is_err());
    }

    fn record(flags: Value) -> InstanceRecord {
        let mut v = serde_json::json!({
            "instanceId": 3, "createdSeq": 9, "modelVersion": 2, "image": "img",
            "ip": "10.0.0.4", "computerName": "web000003", "machine": "t-web-3-abcd",
            "timeCreated": "2026-01-01T00:00:00Z", "vmId": "x", "intent": "Running",
            "provisioningState": "Succeeded"
        });
        for (k, f) in flags.as_object().unwrap() {
            v[k] = f.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    /// Records written with the six booleans read as the typed state the old code acted on:
    /// the reconciler's precedence (delete, then reimage, then restart) picks the request.
    #[test]
    fn old_boolean_records_read_as_typed_state() {
        use serde_json::json;
        let cases = [
            (json!({}), None, None),
            (
                json!({"restartRequested": true}),
                Some(Pending::Restart),
                None,
            ),
            (
                json!({"reimageRequested": true}),
                Some(Pending::Reimage),
                None,
            ),
            (
                json!({"reimageRequested": true, "restartRequested": true}),
                Some(Pending::Reimage),
                None,
            ),
            (
                json!({"deleting": true, "reimageRequested": true, "restartRequested": true}),
                Some(Pending::Delete),
                None,
            ),
            (
                json!({"deleting": true, "upgrading": true}),
                Some(Pending::Delete),
                Some(Actor::Rollout),
            ),
            (
                json!({"deleting": true, "repairing": true}),
                Some(Pending::Delete),
                Some(Actor::Repair),
            ),
            (
                json!({"restartRequested": true, "repairing": true}),
                Some(Pending::Restart),
                Some(Actor::Repair),
            ),
            (
                json!({"upgrading": true, "repairing": true}),
                None,
                Some(Actor::Rollout),
            ),
        ];
        for (flags, pending, actor) in cases {
            let r = record(flags.clone());
            assert_eq!((r.work.pending, r.work.actor), (pending, actor), "{flags}");
            assert!(!r.draining, "{flags}");
        }
        let r = record(json!({"draining": true, "deleting": false, "upgrading": false}));
        assert!(r.draining);
        assert_eq!(r.work, Work::default());
    }

    /// The new form writes `pending` and `actor` (none: left out), not the booleans, and reads
    /// back as it was.
    #[test]
    fn typed_state_round_trips() {
        let mut r = record(serde_json::json!({}));
        let idle = serde_json::to_value(&r).unwrap();
        assert!(idle.get("pending").is_none() && idle.get("actor").is_none());
        r.work.request(Pending::Reimage);
        r.work.begin(Actor::Repair);
        r.draining = true;
        let mut v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            (&v["pending"], &v["actor"]),
            (&"Reimage".into(), &"Repair".into())
        );
        assert_eq!(v["draining"], true);
        for old in [
            "deleting",
            "reimageRequested",
            "restartRequested",
            "upgrading",
            "repairing",
        ] {
            assert!(v.get(old).is_none(), "{old}");
        }
        assert_eq!(
            serde_json::from_value::<InstanceRecord>(v.clone()).unwrap(),
            r
        );
        v["pending"] = "Sideways".into();
        assert!(serde_json::from_value::<InstanceRecord>(v).is_err());
    }
}
