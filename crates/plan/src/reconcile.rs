//! The scale set reconciler: desired model vs observed instances → idempotent actions.
use crate::scale_in::{self, Candidate};
use model::vmss::{ScaleInRule, UpgradeMode};

/// What the user asked of an instance's power (start/stop/restart set it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PowerIntent {
    Running,
    Stopped,
}

/// What the machine runtime reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    Running,
    Stopped,
    /// No machine (never created, or its disk is gone).
    Missing,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceState {
    pub id: u32,
    pub created_seq: u64,
    pub model_version: u64,
    pub intent: PowerIntent,
    pub machine: Observed,
    pub healthy: bool,
    pub protect_from_scale_in: bool,
    pub protect_from_scale_set_actions: bool,
    /// Marked for deletion (scale-in or delete-instances) but not yet gone.
    pub deleting: bool,
    /// The user asked for a reimage or a manual upgrade (both apply the latest model).
    pub reimage_requested: bool,
    /// The user asked for a restart.
    pub restart_requested: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub capacity: u32,
    pub model_version: u64,
    pub upgrade_mode: UpgradeMode,
    pub scale_in: ScaleInRule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Add this many instances with the latest model.
    Create { count: u32 },
    /// Drain, stop and remove the instance.
    Delete { id: u32 },
    /// Boot a machine that should run but does not (Azure's service healing); recreates the
    /// machine from its model if its disk is missing.
    Start { id: u32 },
    /// Stop a machine the user stopped that is still running.
    Stop { id: u32 },
    /// Apply the latest model (reimage onto the model's image).
    Upgrade { id: u32 },
    /// Reboot the machine (stop, start), keeping its disk.
    Restart { id: u32 },
}

pub fn reconcile(desired: &Desired, instances: &[InstanceState]) -> Vec<Action> {
    let mut actions = Vec::new();
    let active: Vec<&InstanceState> = instances.iter().filter(|i| !i.deleting).collect();
    for i in instances.iter().filter(|i| i.deleting) {
        actions.push(Action::Delete { id: i.id });
    }
    let n = active.len() as u32;
    let mut removing = Vec::new();
    if n < desired.capacity {
        actions.push(Action::Create {
            count: desired.capacity - n,
        });
    } else if n > desired.capacity {
        let cands: Vec<Candidate> = active
            .iter()
            .map(|i| Candidate {
                instance_id: i.id,
                created_seq: i.created_seq,
                protected: i.protect_from_scale_in || i.protect_from_scale_set_actions,
                healthy: i.healthy && i.machine == Observed::Running,
            })
            .collect();
        removing = scale_in::choose(&cands, (n - desired.capacity) as usize, desired.scale_in);
        actions.extend(removing.iter().map(|&id| Action::Delete { id }));
    }
    for i in active.iter().filter(|i| !removing.contains(&i.id)) {
        let stale = i.model_version < desired.model_version;
        if i.reimage_requested
            || (stale
                && desired.upgrade_mode == UpgradeMode::Automatic
                && !i.protect_from_scale_set_actions)
        {
            actions.push(Action::Upgrade { id: i.id });
            continue;
        }
        match (i.intent, i.machine) {
            (PowerIntent::Running, Observed::Running) if i.restart_requested => {
                actions.push(Action::Restart { id: i.id })
            }
            (PowerIntent::Running, Observed::Stopped | Observed::Missing) => {
                actions.push(Action::Start { id: i.id })
            }
            (PowerIntent::Stopped, Observed::Running) => actions.push(Action::Stop { id: i.id }),
            _ => {}
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: u32) -> InstanceState {
        InstanceState {
            id,
            created_seq: id as u64,
            model_version: 1,
            intent: PowerIntent::Running,
            machine: Observed::Running,
            healthy: true,
            protect_from_scale_in: false,
            protect_from_scale_set_actions: false,
            deleting: false,
            reimage_requested: false,
            restart_requested: false,
        }
    }
    fn want(capacity: u32) -> Desired {
        Desired {
            capacity,
            model_version: 1,
            upgrade_mode: UpgradeMode::Manual,
            scale_in: ScaleInRule::Default,
        }
    }

    #[test]
    fn table() {
        type Case = (&'static str, Desired, Vec<InstanceState>, Vec<Action>);
        let cases: Vec<Case> = vec![
            (
                "empty → create",
                want(3),
                vec![],
                vec![Action::Create { count: 3 }],
            ),
            ("steady", want(2), vec![inst(0), inst(1)], vec![]),
            (
                "scale out",
                want(3),
                vec![inst(0)],
                vec![Action::Create { count: 2 }],
            ),
            (
                "scale in newest",
                want(1),
                vec![inst(0), inst(1), inst(2)],
                vec![Action::Delete { id: 2 }, Action::Delete { id: 1 }],
            ),
            (
                "scale in skips protected",
                want(1),
                vec![inst(0), {
                    let mut i = inst(1);
                    i.protect_from_scale_in = true;
                    i
                }],
                vec![Action::Delete { id: 0 }],
            ),
            (
                "resume deletion",
                want(1),
                vec![inst(0), {
                    let mut i = inst(1);
                    i.deleting = true;
                    i
                }],
                vec![Action::Delete { id: 1 }],
            ),
            (
                "heal crashed",
                want(2),
                vec![inst(0), {
                    let mut i = inst(1);
                    i.machine = Observed::Stopped;
                    i
                }],
                vec![Action::Start { id: 1 }],
            ),
            (
                "recreate missing",
                want(1),
                vec![{
                    let mut i = inst(0);
                    i.machine = Observed::Missing;
                    i
                }],
                vec![Action::Start { id: 0 }],
            ),
            (
                "user stopped stays stopped",
                want(1),
                vec![{
                    let mut i = inst(0);
                    i.intent = PowerIntent::Stopped;
                    i.machine = Observed::Stopped;
                    i
                }],
                vec![],
            ),
            (
                "stop requested",
                want(1),
                vec![{
                    let mut i = inst(0);
                    i.intent = PowerIntent::Stopped;
                    i
                }],
                vec![Action::Stop { id: 0 }],
            ),
            (
                "manual: model change leaves instances",
                Desired {
                    model_version: 2,
                    ..want(2)
                },
                vec![inst(0), inst(1)],
                vec![],
            ),
            (
                "automatic: model change upgrades all",
                Desired {
                    model_version: 2,
                    upgrade_mode: UpgradeMode::Automatic,
                    ..want(2)
                },
                vec![inst(0), inst(1)],
                vec![Action::Upgrade { id: 0 }, Action::Upgrade { id: 1 }],
            ),
            (
                "automatic skips protected from scale set actions",
                Desired {
                    model_version: 2,
                    upgrade_mode: UpgradeMode::Automatic,
                    ..want(1)
                },
                vec![{
                    let mut i = inst(0);
                    i.protect_from_scale_in = true;
                    i.protect_from_scale_set_actions = true;
                    i
                }],
                vec![],
            ),
            (
                "reimage requested",
                want(1),
                vec![InstanceState {
                    reimage_requested: true,
                    ..inst(0)
                }],
                vec![Action::Upgrade { id: 0 }],
            ),
            (
                "restart requested",
                want(1),
                vec![InstanceState {
                    restart_requested: true,
                    ..inst(0)
                }],
                vec![Action::Restart { id: 0 }],
            ),
            (
                "restart of a stopped machine starts it",
                want(1),
                vec![InstanceState {
                    restart_requested: true,
                    machine: Observed::Stopped,
                    ..inst(0)
                }],
                vec![Action::Start { id: 0 }],
            ),
            (
                "scale in prefers unhealthy",
                want(1),
                vec![
                    {
                        let mut i = inst(0);
                        i.healthy = false;
                        i
                    },
                    inst(1),
                ],
                vec![Action::Delete { id: 0 }],
            ),
        ];
        for (name, d, insts, expect) in cases {
            assert_eq!(reconcile(&d, &insts), expect, "{name}");
            // Idempotent: deciding twice on the same observation gives the same actions.
            assert_eq!(reconcile(&d, &insts), reconcile(&d, &insts), "{name}");
        }
    }
}
