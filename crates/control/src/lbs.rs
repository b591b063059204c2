//! Load balancer commands: put (create, replace, merge), validated as a whole — the model, the
//! addresses the daemon lets frontends listen on, no frontend another load balancer already
//! listens on — get, list, and delete, which is refused while a scale set references it. The
//! engine serves what is stored (one `lb-serve` process per load balancer). A child resource
//! (probe, rule) is put or deleted as a new parent body through `put_lb`, so every rule of the
//! parent's PUT holds for it.
use crate::commands::{check_name, not_found, CommandError, CommandResult, Put, Stored};
use crate::{Cidr, ControlPlane, Res, VmssDoc, LB, VMSS};
use model::lb::LbModel;
use model::lb_child::{self, LbChild};
use serde_json::{json, Value};

impl ControlPlane {
    /// Creates or updates a load balancer in an existing resource group. `allowed` are the
    /// address ranges frontends may listen on (`scaleset serve --lb-allowed-addresses`). The
    /// stored document is the normalized body plus the name and resource group as spelled; the
    /// result's `doc` is the normalized body.
    pub fn put_lb(&self, res: &Res, put: Put, allowed: &[Cidr]) -> CommandResult<Stored<Value>> {
        check_name(LB, res)?;
        self.require_group(res)?;
        let key = res.key(LB);
        let existing = self.store.get(&key)?;
        let merged = match (put, &existing) {
            (Put::Merge(_), None) => return Err(not_found(LB, res)),
            (Put::Merge(patch), Some(e)) => {
                let mut m = e.clone();
                model::vmss::merge_patch(&mut m, &patch);
                m
            }
            (Put::Replace(body), _) => body,
        };
        let (m, arm) = model::lb::parse(&merged)?;
        check_frontend_addresses(&m, allowed)?;
        self.check_frontend_ports(&key, &m)?;
        let old = existing.as_ref().and_then(|e| model::lb::parse(e).ok());
        for (vmss, probe) in self.health_probes_of(res)? {
            check_health_probe_kept(res, old.as_ref().map(|o| &o.0), &m, &vmss, &probe)?;
        }
        let mut stored = arm.clone();
        stored["name"] = json!(res.name);
        stored["x-resourceGroup"] = json!(res.rg);
        self.store.put(&key, &stored)?;
        self.wake.notify_one();
        Ok(Stored {
            doc: arm,
            created: existing.is_none(),
        })
    }

    /// Puts child `name` of a load balancer's `child` collection (a probe or a rule): the parent
    /// with it replaced or added, through [`ControlPlane::put_lb`]. `doc` is the whole parent;
    /// `created` says whether the child is new.
    pub fn put_lb_child(
        &self,
        res: &Res,
        child: LbChild,
        name: &str,
        item: &Value,
        allowed: &[Cidr],
    ) -> CommandResult<Stored<Value>> {
        let _g = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let parent = self.lb(res)?;
        writable(child)?;
        let (body, created) = lb_child::put(&parent, child, name, item)?;
        let stored = self.put_lb(res, Put::Replace(body), allowed)?;
        Ok(Stored {
            doc: stored.doc,
            created,
        })
    }

    /// Deletes child `name` (a probe or a rule); false when the parent has no such child.
    pub fn delete_lb_child(
        &self,
        res: &Res,
        child: LbChild,
        name: &str,
        allowed: &[Cidr],
    ) -> CommandResult<bool> {
        let _g = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let parent = self.lb(res)?;
        writable(child)?;
        let Some(body) = lb_child::remove(&parent, child, name) else {
            return Ok(false);
        };
        self.put_lb(res, Put::Replace(body), allowed)?;
        Ok(true)
    }

    /// The scale sets whose health probe is one of load balancer `res`'s probes: (scale set,
    /// probe name).
    fn health_probes_of(&self, res: &Res) -> CommandResult<Vec<(String, String)>> {
        let mut out = Vec::new();
        for (k, v) in self.store.list(VMSS, None, None)? {
            let doc: VmssDoc =
                serde_json::from_value(v).map_err(|e| CommandError::Internal(e.to_string()))?;
            let Ok((m, _)) = model::vmss::parse(&doc.arm, &k.name) else {
                continue;
            };
            if let Some(p) = m.health_probe.filter(|id| same_lb(id, res)) {
                if let Some((_, probe)) = p.child {
                    out.push((doc.name.clone(), probe));
                }
            }
        }
        Ok(out)
    }

    /// The stored load balancer.
    pub fn lb(&self, res: &Res) -> CommandResult<Value> {
        check_name(LB, res)?;
        self.store
            .get(&res.key(LB))?
            .ok_or_else(|| not_found(LB, res))
    }

    /// The load balancers of subscription `sub` (of resource group `rg` when given), in the
    /// store's order, each with its identity as the user spelled it.
    pub fn list_lbs(&self, sub: &str, rg: Option<&str>) -> CommandResult<Vec<(Res, Value)>> {
        let mut out = Vec::new();
        for (k, v) in self.store.list(LB, Some(sub), rg)? {
            let spelled = |field: &str, stored: &str| {
                v.get(field)
                    .and_then(Value::as_str)
                    .unwrap_or(stored)
                    .to_string()
            };
            let res = Res {
                sub: sub.to_string(),
                rg: spelled("x-resourceGroup", &k.rg),
                name: spelled("name", &k.name),
            };
            out.push((res, v));
        }
        Ok(out)
    }

    /// Deletes a load balancer; false when it did not exist. Refused (409) while a scale set's
    /// backend pool or health probe references it.
    pub fn delete_lb(&self, res: &Res) -> CommandResult<bool> {
        check_name(LB, res)?;
        let key = res.key(LB);
        if self.store.get(&key)?.is_none() {
            return Ok(false);
        }
        for (k, v) in self.store.list(VMSS, None, None)? {
            let doc: VmssDoc =
                serde_json::from_value(v).map_err(|e| CommandError::Internal(e.to_string()))?;
            let Ok((m, _)) = model::vmss::parse(&doc.arm, &k.name) else {
                continue;
            };
            let uses = m
                .backend_pools
                .iter()
                .chain(m.health_probe.iter())
                .any(|id| same_lb(id, res));
            if uses {
                return Err(CommandError::Conflict {
                    code: "LoadBalancerInUseByVirtualMachineScaleSet",
                    message: format!("Cannot delete load balancer '{}': it is in use by virtual machine scale set '{}'.", res.name, k.name),
                });
            }
        }
        self.store.delete(&key)?;
        self.wake.notify_one();
        Ok(true)
    }

    /// Frontends are real sockets on this machine: two load balancers cannot listen on the same
    /// address and port. `key` is the load balancer being stored (its old version is no rival).
    fn check_frontend_ports(&self, key: &store::Key, m: &LbModel) -> CommandResult<()> {
        for (k, other) in self.store.list(LB, None, None)? {
            if k.path() == key.path() {
                continue;
            }
            let Ok((om, _)) = model::lb::parse(&other) else {
                continue;
            };
            for r in &m.rules {
                let ip = frontend_ip(m, &r.frontend);
                let taken = om.rules.iter().any(|or| {
                    or.frontend_port == r.frontend_port && frontend_ip(&om, &or.frontend) == ip
                });
                if taken {
                    return Err(CommandError::Conflict {
                        code: "FrontendPortInUse",
                        message: format!(
                            "Frontend {}:{} is already used by load balancer '{}'.",
                            ip.map(|i| i.to_string()).unwrap_or_default(),
                            r.frontend_port,
                            k.name
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Whether `id` (a pool or probe reference) is in load balancer `res`.
fn same_lb(id: &model::ids::ResourceId, res: &Res) -> bool {
    id.name.eq_ignore_ascii_case(&res.name)
        && id.resource_group.to_lowercase() == res.rg.to_lowercase()
}

/// Only probes and rules are put and deleted on their own.
fn writable(child: LbChild) -> CommandResult<()> {
    if child.writable() {
        return Ok(());
    }
    Err(CommandError::Invalid {
        code: "OperationNotAllowed",
        message: format!(
            "A {} is put and deleted with its load balancer (PUT the load balancer).",
            child.noun()
        ),
    })
}

/// Azure's rule for a probe that is a scale set's health probe: some load-balancing rule must
/// keep referencing it, so a PUT that drops the last such rule is refused (as Azure does, 400
/// `CannotRemoveRuleUsedByProbeUsedByVMSS`). A probe no rule used before is not held to it.
fn check_health_probe_kept(
    res: &Res,
    old: Option<&LbModel>,
    new: &LbModel,
    vmss: &str,
    probe: &str,
) -> CommandResult<()> {
    let uses = |r: &model::lb::RuleModel| {
        r.probe
            .as_deref()
            .is_some_and(|p| p.eq_ignore_ascii_case(probe))
    };
    if new.rules.iter().any(uses) {
        return Ok(());
    }
    let Some(removed) = old.and_then(|o| o.rules.iter().find(|r| uses(r))) else {
        return Ok(());
    };
    let lb = res.id(LB);
    Err(CommandError::Invalid {
        code: "CannotRemoveRuleUsedByProbeUsedByVMSS",
        message: format!(
            "Load balancer rule {lb}/loadBalancingRules/{} cannot be removed because the rule references the load balancer probe {lb}/probes/{probe} that is used as health probe by VM scale set {}. To remove this rule, please update VM scale set to remove the reference to the probe.",
            removed.name,
            Res { sub: res.sub.clone(), rg: res.rg.clone(), name: vmss.to_string() }.id(VMSS)
        ),
    })
}

/// The address of frontend IP configuration `name`.
fn frontend_ip(m: &LbModel, name: &str) -> Option<std::net::IpAddr> {
    m.frontends.iter().find(|f| f.0 == name).map(|f| f.1)
}

/// Frontends listen on this machine, only where `allowed` lets them (loopback by default): an
/// address outside would expose instances to the network.
fn check_frontend_addresses(m: &LbModel, allowed: &[Cidr]) -> CommandResult<()> {
    match m.frontends.iter().find(|f| !Cidr::any_contains(allowed, f.1)) {
        None => Ok(()),
        Some((name, ip)) => Err(CommandError::Invalid {
            code: "InvalidParameter",
            message: format!(
                "Frontend IP configuration '{name}': privateIPAddress {ip} is outside the addresses load balancers may listen on ({}). Use one of them, or start the daemon with --lb-allowed-addresses (SCALESET_LB_ALLOWED_ADDRESSES) including it.",
                Cidr::describe_list(allowed)
            ),
        }),
    }
}
