//! Load balancer commands: put (create, replace, merge), validated as a whole — the model, the
//! addresses the daemon lets frontends listen on, no frontend another load balancer already
//! listens on — get, list, and delete, which is refused while a scale set references it. The
//! engine serves what is stored (one `lb-serve` process per load balancer).
use crate::commands::{check_name, not_found, CommandError, CommandResult, Put, Stored};
use crate::{Cidr, ControlPlane, Res, VmssDoc, LB, VMSS};
use model::lb::LbModel;
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
                .any(|id| {
                    id.name.eq_ignore_ascii_case(&res.name)
                        && id.resource_group.eq_ignore_ascii_case(&res.rg)
                });
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
