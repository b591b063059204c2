//! Resource group commands: put (create, or update the location), get, list, and delete, which
//! is refused while the group still holds scale sets or load balancers. The stored record is the
//! group's ARM form.
use crate::commands::{check_name, CommandError, CommandResult, Put, Stored};
use crate::{ControlPlane, Res, AUTOSCALE, LB, RG, VMSS};
use serde_json::{json, Value};

/// A resource group is stored under its own name.
fn group_key(res: &Res) -> store::Key {
    store::Key::new(RG, &res.sub, &res.rg, &res.rg)
}

/// ARM's 404 for a resource group that does not exist.
pub fn group_not_found(rg: &str) -> CommandError {
    CommandError::NotFound {
        code: "ResourceGroupNotFound",
        message: format!("Resource group '{rg}' could not be found."),
    }
}

impl ControlPlane {
    /// Refuses (404) when resource group `res.rg` does not exist.
    pub fn require_group(&self, res: &Res) -> CommandResult<()> {
        if self.store.get(&group_key(res))?.is_none() {
            return Err(group_not_found(&res.rg));
        }
        Ok(())
    }

    /// Creates or updates resource group `res.rg`. Only the location is kept: the body's, else
    /// the stored one's, else `local`. A merge (PATCH) needs the group to exist.
    pub fn put_group(&self, res: &Res, put: Put) -> CommandResult<Stored<Value>> {
        check_name(RG, res)?;
        let key = group_key(res);
        let existing = self.store.get(&key)?;
        let (body, merge) = match &put {
            Put::Replace(b) => (b, false),
            Put::Merge(b) => (b, true),
        };
        if merge && existing.is_none() {
            return Err(group_not_found(&res.rg));
        }
        let location = body
            .get("location")
            .cloned()
            .or_else(|| existing.as_ref().and_then(|e| e.get("location").cloned()))
            .unwrap_or(json!(model::DEFAULT_LOCATION));
        let doc = json!({"id": res.id(RG), "name": res.rg, "type": RG, "location": location, "properties": {"provisioningState": "Succeeded"}});
        self.store.put(&key, &doc)?;
        Ok(Stored {
            doc,
            created: existing.is_none(),
        })
    }

    /// The stored resource group `res.rg`.
    pub fn group(&self, res: &Res) -> CommandResult<Value> {
        check_name(RG, res)?;
        self.store
            .get(&group_key(res))?
            .ok_or_else(|| group_not_found(&res.rg))
    }

    /// The resource groups of subscription `sub`, in the store's order.
    pub fn list_groups(&self, sub: &str) -> CommandResult<Vec<Value>> {
        Ok(self
            .store
            .list(RG, Some(sub), None)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Deletes resource group `res.rg`; false when it did not exist. Refused (409) while it holds
    /// scale sets or load balancers: they are deleted first (images belong to no group).
    pub fn delete_group(&self, res: &Res) -> CommandResult<bool> {
        check_name(RG, res)?;
        let mut left = Vec::new();
        for kind in [VMSS, LB, AUTOSCALE] {
            for (k, _) in self.store.list(kind, Some(&res.sub), Some(&res.rg))? {
                left.push(format!("{kind}/{}", k.name));
            }
        }
        if !left.is_empty() {
            return Err(CommandError::Conflict {
                code: "ResourceGroupNotEmpty",
                message: format!(
                    "Resource group '{}' still contains {}; delete them first.",
                    res.rg,
                    left.join(", ")
                ),
            });
        }
        Ok(self.store.delete(&group_key(res))?)
    }
}
