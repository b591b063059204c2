//! The control plane's typed commands on scale sets: put (create, replace, merge), delete, power
//! actions on instances, start/cancel a rolling upgrade, rollback, set image. Each validates as a
//! whole, then commits its change (intent the engine carries out) before it returns. The HTTP
//! crate parses requests into these calls and renders their results; the CI service calls them
//! directly.
use crate::{
    now_rfc3339, uuid, ControlError, ControlPlane, InstanceRecord, Pending, Res, RolloutDoc,
    VmssDoc, IMAGE, LB, RG, VMSS,
};
use model::ids::ResourceId;
use plan::PowerIntent;
use serde_json::{json, Value};

/// Why a command was refused. Codes and messages are Azure's; the kind decides the HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The request is wrong (400).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// What it names does not exist (404).
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// Not allowed in the current state (409).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<model::ModelError> for CommandError {
    fn from(e: model::ModelError) -> Self {
        CommandError::Invalid {
            code: e.code,
            message: e.message,
        }
    }
}

impl From<ControlError> for CommandError {
    fn from(e: ControlError) -> Self {
        CommandError::Internal(crate::error_chain(&e))
    }
}

impl From<store::StoreError> for CommandError {
    fn from(e: store::StoreError) -> Self {
        CommandError::Internal(crate::error_chain(&e))
    }
}

pub type CommandResult<T> = Result<T, CommandError>;

pub(crate) fn invalid(message: impl Into<String>) -> CommandError {
    CommandError::Invalid {
        code: "InvalidParameter",
        message: message.into(),
    }
}

pub(crate) fn not_allowed(message: impl Into<String>) -> CommandError {
    CommandError::Conflict {
        code: "OperationNotAllowed",
        message: message.into(),
    }
}

/// Checks the name of a resource of `kind` (of a resource group: `res.rg`; else `res.name`)
/// against Azure's naming rules; kinds without rules pass.
pub fn check_name(kind: &str, res: &Res) -> CommandResult<()> {
    match kind {
        RG => model::names::resource_group(&res.rg)?,
        VMSS => model::names::vmss(&res.name)?,
        LB => model::names::network_or_image("load balancer", &res.name)?,
        IMAGE => model::names::network_or_image("image", &res.name)?,
        _ => {}
    }
    Ok(())
}

/// ARM's 404 for a resource of `kind` (a scale set, load balancer or image) that does not exist.
pub fn not_found(kind: &str, res: &Res) -> CommandError {
    CommandError::NotFound {
        code: "ResourceNotFound",
        message: format!(
            "The Resource '{kind}/{}' under resource group '{}' was not found.",
            res.name, res.rg
        ),
    }
}

pub fn vmss_not_found(res: &Res) -> CommandError {
    not_found(VMSS, res)
}

/// POST actions on a scale set or on some of its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Start,
    PowerOff,
    Deallocate,
    Restart,
    Reimage,
    ReimageAll,
    ManualUpgrade,
    DeleteInstances,
}

/// What a power action asks of one instance.
fn apply_power(r: &mut InstanceRecord, act: PowerAction) {
    let was_deallocated = r.deallocated && r.intent == PowerIntent::Stopped;
    match act {
        PowerAction::Start => r.intent = PowerIntent::Running,
        PowerAction::PowerOff | PowerAction::Deallocate => r.intent = PowerIntent::Stopped,
        PowerAction::Restart => {
            r.intent = PowerIntent::Running;
            r.work.request(Pending::Restart);
        }
        PowerAction::Reimage | PowerAction::ReimageAll | PowerAction::ManualUpgrade => {
            r.work.request(Pending::Reimage)
        }
        PowerAction::DeleteInstances => r.work.request(Pending::Delete),
    }
    // A powerOff of an instance already deallocated leaves it deallocated, as on Azure.
    r.deallocated = match act {
        PowerAction::Deallocate => true,
        PowerAction::Start | PowerAction::Restart => false,
        _ => was_deallocated && r.intent == PowerIntent::Stopped,
    };
}

/// A resource body (scale set, load balancer, resource group): the whole resource (PUT) or a merge
/// patch onto the stored one (PATCH).
#[derive(Debug, Clone)]
pub enum Put {
    Replace(Value),
    Merge(Value),
}

/// A stored resource (a scale set unless said otherwise) and whether the command created it.
#[derive(Debug, Clone)]
pub struct Stored<T = VmssDoc> {
    pub doc: T,
    pub created: bool,
}

impl ControlPlane {
    fn require_vmss(&self, res: &Res) -> CommandResult<VmssDoc> {
        self.vmss_doc(res)?.ok_or_else(|| vmss_not_found(res))
    }

    fn put_doc(&self, doc: &VmssDoc, res: &Res) -> CommandResult<()> {
        let v = serde_json::to_value(doc).map_err(|e| CommandError::Internal(e.to_string()))?;
        self.store.put(&res.key(VMSS), &v)?;
        Ok(())
    }

    /// Creates or updates a scale set: validated as a whole with its references; a change of the
    /// VM profile is a new model version, which in Rolling mode starts a rollout.
    pub fn put_vmss(
        &self,
        images: &image::ImageStore,
        res: &Res,
        put: Put,
    ) -> CommandResult<Stored> {
        let existing = self.vmss_doc(res)?;
        if existing.as_ref().is_some_and(|d| d.deleting) {
            return Err(not_allowed(format!(
                "Scale set '{}' is being deleted.",
                res.name
            )));
        }
        let mut merged = match (put, &existing) {
            (Put::Merge(_), None) => return Err(vmss_not_found(res)),
            (Put::Merge(patch), Some(doc)) => {
                let mut m = doc.arm.clone();
                model::vmss::merge_patch(&mut m, &patch);
                m
            }
            (Put::Replace(body), _) => body,
        };
        keep_admin_password(existing.as_ref(), &mut merged);
        let (m, arm) = model::vmss::parse(&merged, &res.name)?;
        self.check_refs(images, &m)?;
        let created = existing.is_none();
        let mut model_changed = false;
        let doc = match existing {
            None => VmssDoc {
                name: res.name.clone(),
                resource_group: res.rg.clone(),
                versions: m.image.iter().map(|i| (1, i.name.clone())).collect(),
                sizes: [(1, m.sku_name.clone())].into(),
                arm,
                deleting: false,
                model_version: 1,
                unique_id: uuid(),
                time_created: now_rfc3339(),
            },
            Some(mut doc) => {
                // A new VM size is a model change too: instances get it when upgraded.
                let changed = doc.arm.pointer("/properties/virtualMachineProfile")
                    != arm.pointer("/properties/virtualMachineProfile")
                    || doc.arm.pointer("/sku/name") != arm.pointer("/sku/name");
                if changed {
                    doc.model_version += 1;
                    model_changed = true;
                    if let Some(img) = &m.image {
                        doc.versions.insert(doc.model_version, img.name.clone());
                    }
                    doc.sizes.insert(doc.model_version, m.sku_name.clone());
                }
                doc.arm = arm;
                doc
            }
        };
        self.put_doc(&doc, res)?;
        tracing::info!(vmss = %res.name, model_version = doc.model_version, capacity = m.capacity, "scale set model stored");
        if model_changed && m.upgrade_mode == model::vmss::UpgradeMode::Rolling {
            self.begin_rollout(res, &doc, false)?;
        }
        self.wake.notify_one();
        Ok(Stored { doc, created })
    }

    /// Marks the scale set and its instances deleting; false when it did not exist.
    pub fn delete_vmss(&self, res: &Res) -> CommandResult<bool> {
        let Some(mut doc) = self.vmss_doc(res)? else {
            return Ok(false);
        };
        doc.deleting = true;
        self.put_doc(&doc, res)?;
        let key = res.key(VMSS);
        for r in self.instances(&key)? {
            self.update_instance(&key, r.instance_id, |r| r.work.request(Pending::Delete))?;
        }
        self.wake.notify_one();
        Ok(true)
    }

    /// The image of the scale set's model becomes `image_id` (a managed image id), as
    /// `az vmss update --set virtualMachineProfile.storageProfile.imageReference.id=...` does.
    pub fn set_image(
        &self,
        images: &image::ImageStore,
        res: &Res,
        image_id: &str,
    ) -> CommandResult<Stored> {
        let doc = self.require_vmss(res)?;
        let mut body = doc.arm.clone();
        let (p, v) = model::setpath::parse_assignment(&format!(
            "virtualMachineProfile.storageProfile.imageReference.id={image_id}"
        ))?;
        model::setpath::set(&mut body, &p, v)?;
        self.put_vmss(images, res, Put::Replace(body))
    }

    /// The resource group of the scale set named `name` in subscription `sub` (the first one, in
    /// the store's order, when several groups have one).
    pub fn find_vmss_group(&self, sub: &str, name: &str) -> CommandResult<Option<String>> {
        Ok(self
            .store
            .list(VMSS, Some(sub), None)?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_value::<VmssDoc>(v).ok())
            .find(|d| d.name.eq_ignore_ascii_case(name))
            .map(|d| d.resource_group))
    }

    /// The scale sets of subscription `sub` (of resource group `rg` when given), in the store's
    /// order, each with its identity as the user spelled it.
    pub fn list_vmss(&self, sub: &str, rg: Option<&str>) -> CommandResult<Vec<(Res, VmssDoc)>> {
        let mut out = Vec::new();
        for (_, v) in self.store.list(VMSS, Some(sub), rg)? {
            let doc: VmssDoc =
                serde_json::from_value(v).map_err(|e| CommandError::Internal(e.to_string()))?;
            let res = Res {
                sub: sub.to_string(),
                rg: doc.resource_group.clone(),
                name: doc.name.clone(),
            };
            out.push((res, doc));
        }
        Ok(out)
    }

    /// Checks a scale set's references: backend pools and health probe exist, image exists.
    fn check_refs(
        &self,
        images: &image::ImageStore,
        m: &model::vmss::VmssModel,
    ) -> CommandResult<()> {
        for pool in &m.backend_pools {
            let lbm = self.lb_model(pool)?;
            let name = &pool.child.as_ref().map(|c| c.1.clone()).unwrap_or_default();
            if !lbm.pools.iter().any(|p| p.eq_ignore_ascii_case(name)) {
                return Err(CommandError::NotFound {
                    code: "InvalidResourceReference",
                    message: format!(
                        "Backend address pool '{name}' was not found in load balancer '{}'.",
                        pool.name
                    ),
                });
            }
        }
        if let Some(probe) = &m.health_probe {
            let lbm = self.lb_model(probe)?;
            let name = probe
                .child
                .as_ref()
                .map(|c| c.1.clone())
                .unwrap_or_default();
            if !lbm
                .probes
                .iter()
                .any(|p| p.name.eq_ignore_ascii_case(&name))
            {
                return Err(CommandError::NotFound {
                    code: "InvalidResourceReference",
                    message: format!(
                        "Health probe '{name}' was not found in load balancer '{}'.",
                        probe.name
                    ),
                });
            }
        }
        if let Some(img) = &m.image {
            let found = images
                .get(&img.name)
                .map_err(|e| CommandError::Internal(e.to_string()))?;
            if found.is_none() {
                return Err(CommandError::NotFound { code: "ImageNotFound", message: format!("The platform image or managed image '{}' referenced by the scale set was not found. Bake it with `scaleset image bake --name {}`.", img, img.name) });
            }
        } else if m.capacity > 0 {
            return Err(invalid(
                "virtualMachineProfile.storageProfile.imageReference.id is required.",
            ));
        }
        Ok(())
    }

    fn lb_model(&self, id: &ResourceId) -> CommandResult<model::lb::LbModel> {
        let r = Res {
            sub: id.subscription.clone(),
            rg: id.resource_group.clone(),
            name: id.name.clone(),
        };
        let v = self.store.get(&r.key(LB))?.ok_or_else(|| CommandError::NotFound {
            code: "NotFound",
            message: format!(
                "Load balancer '{}' referenced by the scale set was not found in resource group '{}'.",
                id.name, id.resource_group
            ),
        })?;
        Ok(model::lb::parse(&v)?.0)
    }

    /// Records a power action (or reimage, upgrade, deletion) on the instances `ids` (all active
    /// instances when `None`) as intent for the engine.
    pub fn power(
        &self,
        res: &Res,
        act: PowerAction,
        ids: Option<Vec<String>>,
    ) -> CommandResult<()> {
        let key = res.key(VMSS);
        let mut doc = self.require_vmss(res)?;
        let recs: Vec<InstanceRecord> = self
            .instances(&key)?
            .into_iter()
            .filter(|r| !r.work.is_deleting())
            .collect();
        if ids.is_none()
            && matches!(
                act,
                PowerAction::ManualUpgrade | PowerAction::DeleteInstances
            )
        {
            return Err(invalid("instanceIds is required for this operation."));
        }
        let targets = power_targets(&recs, ids)?;
        if act == PowerAction::DeleteInstances {
            // Azure lowers capacity by the number of deleted instances.
            let cap = doc
                .arm
                .pointer("/sku/capacity")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            doc.arm["sku"]["capacity"] = json!(cap.saturating_sub(targets.len() as u64));
            self.put_doc(&doc, res)?;
        }
        for id in targets {
            self.update_instance(&key, id, |r| apply_power(r, act))?;
        }
        self.wake.notify_one();
        Ok(())
    }

    /// `osRollingUpgrade`: a rolling upgrade towards the latest model (refused while one runs).
    pub fn start_rollout(&self, res: &Res) -> CommandResult<()> {
        let doc = self.require_vmss(res)?;
        self.begin_rollout(res, &doc, true)?;
        self.wake.notify_one();
        Ok(())
    }

    /// `rollingUpgrades/cancel`: the batch in flight finishes, no new batch starts.
    pub fn cancel_rollout(&self, res: &Res, now: u64) -> CommandResult<()> {
        self.require_vmss(res)?;
        let mut active = false;
        self.update_rollout(res, |cur| match cur {
            Some(d) if d.state.phase != plan::rolling::Phase::Done => {
                active = true;
                d.state = plan::rolling::cancel(&d.state, now);
                true
            }
            _ => false,
        })?;
        if !active {
            return Err(not_allowed(format!(
                "There is no rolling upgrade in progress on scale set '{}' to cancel.",
                res.name
            )));
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Starts a rolling upgrade towards the scale set's latest model. A model change replaces a
    /// rollout in progress (its target moves); an explicit start while one runs is refused.
    fn begin_rollout(&self, res: &Res, doc: &VmssDoc, explicit: bool) -> CommandResult<()> {
        let (m, _) = model::vmss::parse(&doc.arm, &doc.name)?;
        if m.health_probe.is_none() && m.app_health.is_none() {
            return Err(CommandError::Invalid { code: "OperationNotAllowed", message: "A rolling upgrade needs a health probe: set virtualMachineProfile.networkProfile.healthProbe.id or add the Application Health extension.".into() });
        }
        let target = doc.model_version;
        let previous = doc
            .versions
            .range(..target)
            .next_back()
            .map(|(v, _)| *v)
            .unwrap_or(target.saturating_sub(1));
        let now = crate::unix_now();
        let mut refused = false;
        self.update_rollout(res, |cur| {
            if explicit
                && cur
                    .as_ref()
                    .is_some_and(|d| d.state.phase != plan::rolling::Phase::Done)
            {
                refused = true;
                return false;
            }
            let last_completed_version = match cur.as_ref() {
                Some(old) if old.state.status == plan::rolling::RunningStatus::Completed => {
                    Some(old.state.target_version)
                }
                Some(old) => old.last_completed_version,
                None => None,
            };
            *cur = Some(RolloutDoc {
                state: plan::rolling::start(&m.rolling, target, previous, now),
                receipt: Default::default(),
                last_completed_version,
            });
            true
        })?;
        if refused {
            return Err(not_allowed(format!(
                "A rolling upgrade is already in progress on scale set '{}'; cancel it first.",
                res.name
            )));
        }
        tracing::info!(vmss = %res.name, target, previous, "rolling upgrade started");
        Ok(())
    }

    /// Points the model back at the image of the last model version whose rollout completed (or,
    /// without rollout history, the version before the current one). A model change like any
    /// other: in Rolling mode it rolls out with the policy.
    pub fn rollback(&self, images: &image::ImageStore, res: &Res) -> CommandResult<Stored> {
        let doc = self.require_vmss(res)?;
        let latest = self.rollout(res)?;
        if latest
            .as_ref()
            .is_some_and(|d| d.state.phase != plan::rolling::Phase::Done)
        {
            return Err(not_allowed(format!(
                "A rolling upgrade is in progress on scale set '{}'; cancel it first.",
                res.name
            )));
        }
        let target = latest
            .as_ref()
            .and_then(|d| d.last_completed_version)
            .or_else(|| {
                doc.versions
                    .range(..doc.model_version)
                    .next_back()
                    .map(|(v, _)| *v)
            })
            .ok_or_else(|| {
                not_allowed(format!(
                    "Scale set '{}' has no earlier model to roll back to.",
                    res.name
                ))
            })?;
        let image = doc.versions.get(&target).cloned().ok_or_else(|| {
            not_allowed(format!("The image of model version {target} is not known."))
        })?;
        let mut body = doc.arm.clone();
        body["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"] = json!({"id": format!("/subscriptions/{}/resourceGroups/{}/providers/{}/{image}", res.sub, res.rg, IMAGE)});
        tracing::info!(vmss = %res.name, target, image = %image, "rollback to the last completed model");
        self.put_vmss(images, res, Put::Replace(body))
    }
}

/// The instance ids a power action names, checked against the active instances.
fn power_targets(recs: &[InstanceRecord], ids: Option<Vec<String>>) -> CommandResult<Vec<u32>> {
    let Some(ids) = ids else {
        return Ok(recs.iter().map(|r| r.instance_id).collect());
    };
    if ids.is_empty() {
        return Err(invalid("instanceIds must not be empty."));
    }
    let mut out = Vec::new();
    for s in ids {
        let found = s
            .parse::<u32>()
            .ok()
            .filter(|id| recs.iter().any(|r| r.instance_id == *id));
        match found {
            Some(id) if !out.contains(&id) => out.push(id),
            Some(_) => {}
            None => return Err(invalid(format!("The provided instanceId {s} is not an active Virtual Machine Scale Set VM instanceId."))),
        }
    }
    Ok(out)
}

/// GET never returns adminPassword (x-ms-secret), so a GET body PUT back (az's generic update)
/// lacks it; like Azure, keep the stored one instead of treating that as a model change.
fn keep_admin_password(existing: Option<&VmssDoc>, body: &mut Value) {
    const PTR: &str = "/properties/virtualMachineProfile/osProfile";
    let Some(old) = existing.and_then(|d| d.arm.pointer(&format!("{PTR}/adminPassword"))) else {
        return;
    };
    if let Some(os) = body.pointer_mut(PTR).and_then(Value::as_object_mut) {
        os.entry("adminPassword").or_insert_with(|| old.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deallocation is remembered while the instance stays stopped, and forgotten once it runs.
    #[test]
    fn deallocated_lasts_until_the_instance_runs_again() {
        let mut r: InstanceRecord = serde_json::from_value(json!({
            "instanceId": 0, "createdSeq": 1, "modelVersion": 1, "image": "img",
            "ip": "10.0.0.4", "computerName": "web000000", "machine": "m",
            "timeCreated": "t", "vmId": "x", "intent": "Running", "provisioningState": "Succeeded"
        }))
        .unwrap();
        use PowerAction::*;
        for (act, intent, deallocated) in [
            (PowerOff, PowerIntent::Stopped, false),
            (Deallocate, PowerIntent::Stopped, true),
            (PowerOff, PowerIntent::Stopped, true),
            (Reimage, PowerIntent::Stopped, true),
            (Start, PowerIntent::Running, false),
            (Deallocate, PowerIntent::Stopped, true),
            (Restart, PowerIntent::Running, false),
            (PowerOff, PowerIntent::Stopped, false),
        ] {
            apply_power(&mut r, act);
            assert_eq!((r.intent, r.deallocated), (intent, deallocated), "{act:?}");
        }
    }
}
