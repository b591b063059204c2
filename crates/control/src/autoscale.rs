//! Autoscale setting commands (`Microsoft.Insights/autoscalesettings`): put (create, replace,
//! merge), get, list, delete, and the engine's durable state next to each setting — the last
//! scale action (for cooldowns) and a bounded activity log. A setting must target a scale set
//! that exists when it is stored; it outlives the scale set (the engine skips it, delete works).
use crate::commands::{not_found, CommandError, CommandResult, Put, Stored};
use crate::{ControlPlane, Res, AUTOSCALE, AUTOSCALE_STATE, VMSS};
use model::autoscale::AutoscaleSetting;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Activity log entries kept per setting (the oldest go first).
pub const ACTIVITY_LOG_MAX: usize = 1000;

/// The stored setting: its ARM body (as rendered) and its identity as the user spelled it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AutoscaleDoc {
    name: String,
    resource_group: String,
    arm: Value,
}

/// What the engine keeps between evaluations of one setting.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleState {
    /// The last rule-driven scale action: unix seconds and its rule's cooldown.
    #[serde(default)]
    pub last_scale_at: Option<u64>,
    #[serde(default)]
    pub last_scale_cooldown_secs: u64,
    /// What the last logged skip was (its reason and capacity): a repeat is not logged again.
    #[serde(default)]
    pub last_skip: Option<String>,
    /// Newest last, at most [`ACTIVITY_LOG_MAX`].
    #[serde(default)]
    pub log: Vec<ActivityEvent>,
}

impl AutoscaleState {
    pub fn history(&self) -> plan::autoscale::History {
        plan::autoscale::History {
            last_scale: self.last_scale_at.map(|at| plan::autoscale::LastScale {
                at,
                cooldown_secs: self.last_scale_cooldown_secs,
            }),
        }
    }
}

/// One activity log event, as Azure's autoscale events carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityEvent {
    /// RFC 3339.
    pub event_timestamp: String,
    /// `Autoscale scale up`, `Autoscale scale down`, `Autoscale evaluation`.
    pub operation_name: String,
    /// `Succeeded`, `Failed`, `Skipped`.
    pub status: String,
    pub old_capacity: u32,
    pub new_capacity: u32,
    pub description: String,
}

/// ARM's rules for an autoscale setting name: 1–260 characters, none of `<>*%&:\?/#|`.
pub fn check_autoscale_name(name: &str) -> CommandResult<()> {
    let bad = name.is_empty()
        || name.chars().count() > 260
        || name
            .chars()
            .any(|c| "<>*%&:\\?/#|".contains(c) || c.is_control());
    if bad {
        return Err(CommandError::Invalid {
            code: "InvalidResourceName",
            message: format!("The autoscale setting name '{name}' is invalid: 1 to 260 characters, none of <>*%&:\\?/#|."),
        });
    }
    Ok(())
}

fn internal(e: impl std::fmt::Display) -> CommandError {
    CommandError::Internal(e.to_string())
}

impl ControlPlane {
    /// Creates, replaces (PUT) or patches (PATCH, `model::autoscale::apply_patch`) a setting in
    /// an existing group. Refused with 404 when its target scale set does not exist, and with
    /// 409 when another setting already targets it (two would fight over its capacity).
    pub fn put_autoscale(&self, res: &Res, put: Put) -> CommandResult<Stored<AutoscaleSetting>> {
        check_autoscale_name(&res.name)?;
        self.require_group(res)?;
        let existing = self.autoscale_opt(res)?;
        let setting = match (put, &existing) {
            (Put::Merge(_), None) => return Err(not_found(AUTOSCALE, res)),
            (Put::Merge(patch), Some(cur)) => model::autoscale::apply_patch(cur, &patch)?,
            (Put::Replace(body), _) => model::autoscale::parse(&body)?,
        };
        let target = target_res(&setting);
        match self.vmss_doc(&target)? {
            Some(d) if !d.deleting => {}
            _ => return Err(not_found(VMSS, &target)),
        }
        self.check_single_setting(res, &target)?;
        let doc = AutoscaleDoc {
            name: res.name.clone(),
            resource_group: res.rg.clone(),
            arm: model::autoscale::render(&setting, "", &res.name),
        };
        self.store.put(
            &res.key(AUTOSCALE),
            &serde_json::to_value(&doc).map_err(internal)?,
        )?;
        self.wake.notify_one();
        Ok(Stored {
            doc: setting,
            created: existing.is_none(),
        })
    }

    /// The stored setting.
    pub fn autoscale(&self, res: &Res) -> CommandResult<AutoscaleSetting> {
        check_autoscale_name(&res.name)?;
        self.autoscale_opt(res)?
            .ok_or_else(|| not_found(AUTOSCALE, res))
    }

    fn autoscale_opt(&self, res: &Res) -> CommandResult<Option<AutoscaleSetting>> {
        match self.store.get(&res.key(AUTOSCALE))? {
            None => Ok(None),
            Some(v) => Ok(Some(decode(v)?.1)),
        }
    }

    /// The settings of subscription `sub` (of group `rg` when given), each with its identity as
    /// the user spelled it.
    pub fn list_autoscale(
        &self,
        sub: &str,
        rg: Option<&str>,
    ) -> CommandResult<Vec<(Res, AutoscaleSetting)>> {
        let mut out = Vec::new();
        for (_, v) in self.store.list(AUTOSCALE, Some(sub), rg)? {
            let (doc, s) = decode(v)?;
            let res = Res {
                sub: sub.to_string(),
                rg: doc.resource_group,
                name: doc.name,
            };
            out.push((res, s));
        }
        Ok(out)
    }

    /// Deletes a setting and its state; false when it did not exist.
    pub fn delete_autoscale(&self, res: &Res) -> CommandResult<bool> {
        check_autoscale_name(&res.name)?;
        let existed = self.store.delete(&res.key(AUTOSCALE))?;
        self.store.delete(&res.key(AUTOSCALE_STATE))?;
        Ok(existed)
    }

    /// The engine's state of a setting (empty before its first evaluation).
    pub fn autoscale_state(&self, res: &Res) -> CommandResult<AutoscaleState> {
        match self.store.get(&res.key(AUTOSCALE_STATE))? {
            None => Ok(AutoscaleState::default()),
            Some(v) => serde_json::from_value(v).map_err(internal),
        }
    }

    /// Read-modify-write of a setting's state under the records lock; the log is trimmed to
    /// [`ACTIVITY_LOG_MAX`]. Nothing is written once the setting is gone.
    pub fn update_autoscale_state(
        &self,
        res: &Res,
        f: impl FnOnce(&mut AutoscaleState),
    ) -> CommandResult<()> {
        let _g = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if self.store.get(&res.key(AUTOSCALE))?.is_none() {
            return Ok(());
        }
        let mut st = self.autoscale_state(res)?;
        f(&mut st);
        let extra = st.log.len().saturating_sub(ACTIVITY_LOG_MAX);
        st.log.drain(..extra);
        self.store.put(
            &res.key(AUTOSCALE_STATE),
            &serde_json::to_value(&st).map_err(internal)?,
        )?;
        Ok(())
    }

    /// Azure allows one autoscale setting per target resource.
    fn check_single_setting(&self, res: &Res, target: &Res) -> CommandResult<()> {
        let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        for (other, s) in self.list_autoscale(&target.sub, None)? {
            let t = target_res(&s);
            let is_self = same(&other.rg, &res.rg) && same(&other.name, &res.name);
            if !is_self && same(&t.rg, &target.rg) && same(&t.name, &target.name) {
                return Err(CommandError::Conflict {
                    code: "Conflict",
                    message: format!(
                        "The target resource '{}' already has autoscale setting '{}'; a resource can have only one.",
                        s.target, other.name
                    ),
                });
            }
        }
        Ok(())
    }
}

/// The scale set a setting targets.
pub fn target_res(s: &AutoscaleSetting) -> Res {
    Res {
        sub: s.target.subscription.clone(),
        rg: s.target.resource_group.clone(),
        name: s.target.name.clone(),
    }
}

fn decode(v: Value) -> CommandResult<(AutoscaleDoc, AutoscaleSetting)> {
    let doc: AutoscaleDoc = serde_json::from_value(v).map_err(internal)?;
    let s = model::autoscale::parse(&doc.arm)
        .map_err(|e| internal(format!("stored autoscale setting: {}", e.message)))?;
    Ok((doc, s))
}
