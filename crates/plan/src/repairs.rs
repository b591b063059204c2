//! Automatic instance repairs (`automaticRepairsPolicy`), decided purely.
//!
//! Azure's rules, as implemented here:
//! - An instance whose health is Unhealthy or Unknown is repaired once the grace period has passed
//!   since its last state change completed (creation, restart, reimage, a previous repair).
//!   Initializing and Healthy are left alone; so is an instance with no health observation yet.
//! - Repairs run in batches: at most 5% of the scale set's instances at a time, at least one
//!   (so one at a time below 20 instances). Repairs still in flight count against the batch.
//! - Protected instances (either protection policy), stopped instances, instances being deleted
//!   or acted on (upgrade, restart, reimage in flight) and failed provisionings are never repaired.
//! - A repair has failed when the repaired instance is unhealthy again after its grace period
//!   (it is chosen for repair again) or when the repair operation itself errors. After
//!   [`SUSPEND_AFTER_FAILURES`] failures in a row the service is Suspended until resumed
//!   (`setOrchestrationServiceState` with action Resume); a repaired instance that became healthy
//!   resets the count. Azure does not publish its threshold; 3 keeps a bad image from being
//!   replaced forever.
use model::vmss::RepairAction;
use serde::{Deserialize, Serialize};

/// Failed repairs in a row that suspend the service.
pub const SUSPEND_AFTER_FAILURES: u32 = 3;

/// Percent of the scale set repaired at a time (at least one instance).
pub const BATCH_PERCENT: u32 = 5;

/// Health as the repairs service sees it (Application Health extension's rich states; the LB
/// probe yields only Healthy/Unhealthy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    Healthy,
    Unhealthy,
    Initializing,
    Unknown,
}

/// `orchestrationServices[AutomaticRepairs].serviceState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ServiceState {
    #[default]
    Running,
    Suspended,
}

/// The durable state of a scale set's repairs service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RepairsState {
    pub service_state: ServiceState,
    /// Failed repairs since the last one that worked (or the last resume).
    pub consecutive_failures: u32,
    /// Why the service was suspended (shown in the instance view).
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RepairInstance {
    pub id: u32,
    /// None: not observed yet (no probe result); never repaired on no data.
    pub health: Option<Health>,
    /// The user wants it running (not stopped/deallocated).
    pub intent_running: bool,
    /// Its machine runs (a machine that should run but does not is restarted by the reconciler).
    pub machine_running: bool,
    pub deleting: bool,
    /// Another operation is acting on it (rolling upgrade, requested restart or reimage).
    pub busy: bool,
    pub protected: bool,
    pub provisioning_failed: bool,
    /// Unix seconds when its last state change completed.
    pub state_changed_at: u64,
    /// A repair of this instance is in flight.
    pub repairing: bool,
    /// Repairs of this instance (or of the instance it replaced) that have not made it healthy.
    pub repair_attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Instances to repair now, with the action.
    pub repair: Vec<(u32, RepairAction)>,
    /// Repaired instances that are healthy now: their attempts reset.
    pub recovered: Vec<u32>,
    /// The service state after this decision.
    pub state: RepairsState,
}

/// Largest number of repairs in flight at once for a scale set of `n` instances.
pub fn batch_limit(n: usize) -> usize {
    (n * BATCH_PERCENT as usize / 100).max(1)
}

/// Decides which instances to repair. `grace_secs` is the policy's grace period (or the
/// daemon's test override).
pub fn decide(
    enabled: bool,
    action: RepairAction,
    grace_secs: u64,
    state: &RepairsState,
    insts: &[RepairInstance],
    now: u64,
) -> Decision {
    let mut next = state.clone();
    let recovered: Vec<u32> = insts
        .iter()
        .filter(|i| i.repair_attempts > 0 && i.health == Some(Health::Healthy) && !i.repairing)
        .map(|i| i.id)
        .collect();
    if !recovered.is_empty() {
        next.consecutive_failures = 0;
    }
    let mut out = Decision {
        recovered,
        ..Default::default()
    };
    if !enabled || next.service_state == ServiceState::Suspended {
        out.state = next;
        return out;
    }
    let active = insts.iter().filter(|i| !i.deleting || i.repairing).count();
    let in_flight = insts.iter().filter(|i| i.repairing).count();
    let room = batch_limit(active).saturating_sub(in_flight);
    let mut candidates: Vec<&RepairInstance> = insts
        .iter()
        .filter(|i| {
            matches!(i.health, Some(Health::Unhealthy | Health::Unknown))
                && i.intent_running
                && i.machine_running
                && !i.deleting
                && !i.busy
                && !i.protected
                && !i.provisioning_failed
                && !i.repairing
                && now >= i.state_changed_at.saturating_add(grace_secs)
        })
        .collect();
    // Longest out of its grace period first.
    candidates.sort_by_key(|i| (i.state_changed_at, i.id));
    for i in candidates.into_iter().take(room) {
        if i.repair_attempts > 0 {
            // The last repair of this instance did not make it healthy.
            next.consecutive_failures += 1;
            if next.consecutive_failures >= SUSPEND_AFTER_FAILURES {
                next.service_state = ServiceState::Suspended;
                next.reason = Some(format!(
                    "Automatic repairs were suspended after {} repairs in a row did not make instances healthy (last: instance {}).",
                    next.consecutive_failures, i.id
                ));
                break;
            }
        }
        out.repair.push((i.id, action));
    }
    out.state = next;
    out
}

/// Records a repair operation that failed outright (the engine could not carry it out).
pub fn record_failure(state: &RepairsState, what: &str) -> RepairsState {
    let mut next = state.clone();
    next.consecutive_failures += 1;
    if next.consecutive_failures >= SUSPEND_AFTER_FAILURES {
        next.service_state = ServiceState::Suspended;
        next.reason = Some(format!(
            "Automatic repairs were suspended after {} failed repairs in a row (last: {what}).",
            next.consecutive_failures
        ));
    }
    next
}

/// `setOrchestrationServiceState` with action Resume or Suspend.
pub fn set_service_state(state: &RepairsState, resume: bool) -> RepairsState {
    if resume {
        RepairsState::default()
    } else {
        RepairsState {
            service_state: ServiceState::Suspended,
            consecutive_failures: state.consecutive_failures,
            reason: Some("Automatic repairs were suspended by the user.".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RepairAction::*;

    const GRACE: u64 = 600;
    const NOW: u64 = 10_000;

    fn inst(id: u32, health: Health) -> RepairInstance {
        RepairInstance {
            id,
            health: Some(health),
            intent_running: true,
            machine_running: true,
            deleting: false,
            busy: false,
            protected: false,
            provisioning_failed: false,
            state_changed_at: 1_000 + id as u64,
            repairing: false,
            repair_attempts: 0,
        }
    }
    fn with(mut i: RepairInstance, f: impl FnOnce(&mut RepairInstance)) -> RepairInstance {
        f(&mut i);
        i
    }
    fn healthy(n: u32) -> Vec<RepairInstance> {
        (0..n).map(|i| inst(i, Health::Healthy)).collect()
    }
    fn suspended(failures: u32) -> RepairsState {
        RepairsState {
            service_state: ServiceState::Suspended,
            consecutive_failures: failures,
            reason: Some("x".into()),
        }
    }

    #[test]
    fn batch_limits() {
        for (n, want) in [
            (0, 1),
            (1, 1),
            (19, 1),
            (20, 1),
            (39, 1),
            (40, 2),
            (100, 5),
            (1000, 50),
        ] {
            assert_eq!(batch_limit(n), want, "{n}");
        }
    }

    #[test]
    fn table() {
        let run = RepairsState::default();
        type Case = (
            &'static str,
            bool,
            RepairsState,
            Vec<RepairInstance>,
            Vec<(u32, RepairAction)>,
            Vec<u32>,
            RepairsState,
        );
        let mut three = healthy(3);
        three[1] = inst(1, Health::Unhealthy);
        let cases: Vec<Case> = vec![
            ("all healthy", true, run.clone(), healthy(3), vec![], vec![], run.clone()),
            ("unhealthy past grace", true, run.clone(), three.clone(), vec![(1, Replace)], vec![], run.clone()),
            ("disabled", false, run.clone(), three.clone(), vec![], vec![], run.clone()),
            ("suspended", true, suspended(1), three.clone(), vec![], vec![], suspended(1)),
            (
                "unknown is repaired",
                true,
                run.clone(),
                vec![inst(0, Health::Healthy), inst(1, Health::Unknown)],
                vec![(1, Replace)],
                vec![],
                run.clone(),
            ),
            (
                "initializing is not",
                true,
                run.clone(),
                vec![inst(0, Health::Initializing)],
                vec![],
                vec![],
                run.clone(),
            ),
            (
                "no observation is not",
                true,
                run.clone(),
                vec![with(inst(0, Health::Unhealthy), |i| i.health = None)],
                vec![],
                vec![],
                run.clone(),
            ),
            (
                "within grace",
                true,
                run.clone(),
                vec![with(inst(0, Health::Unhealthy), |i| i.state_changed_at = NOW - GRACE + 1)],
                vec![],
                vec![],
                run.clone(),
            ),
            (
                "grace boundary is inclusive",
                true,
                run.clone(),
                vec![with(inst(0, Health::Unhealthy), |i| i.state_changed_at = NOW - GRACE)],
                vec![(0, Replace)],
                vec![],
                run.clone(),
            ),
            (
                "protected, stopped, deleting, busy, failed provisioning, not running are skipped",
                true,
                run.clone(),
                vec![
                    with(inst(0, Health::Unhealthy), |i| i.protected = true),
                    with(inst(1, Health::Unhealthy), |i| i.intent_running = false),
                    with(inst(2, Health::Unhealthy), |i| i.deleting = true),
                    with(inst(3, Health::Unhealthy), |i| i.busy = true),
                    with(inst(4, Health::Unhealthy), |i| i.provisioning_failed = true),
                    with(inst(5, Health::Unhealthy), |i| i.machine_running = false),
                ],
                vec![],
                vec![],
                run.clone(),
            ),
            (
                "one at a time below 20: oldest state change first",
                true,
                run.clone(),
                vec![
                    with(inst(0, Health::Unhealthy), |i| i.state_changed_at = 500),
                    with(inst(1, Health::Unhealthy), |i| i.state_changed_at = 400),
                    inst(2, Health::Healthy),
                ],
                vec![(1, Replace)],
                vec![],
                run.clone(),
            ),
            (
                "a repair in flight fills the batch",
                true,
                run.clone(),
                vec![
                    with(inst(0, Health::Unhealthy), |i| i.repairing = true),
                    inst(1, Health::Unhealthy),
                ],
                vec![],
                vec![],
                run.clone(),
            ),
            (
                "40 instances: two at a time",
                true,
                run.clone(),
                (0..40)
                    .map(|i| inst(i, if i < 5 { Health::Unhealthy } else { Health::Healthy }))
                    .collect(),
                vec![(0, Replace), (1, Replace)],
                vec![],
                run.clone(),
            ),
            (
                "a repaired instance unhealthy again counts a failure",
                true,
                run.clone(),
                vec![with(inst(0, Health::Unhealthy), |i| i.repair_attempts = 1)],
                vec![(0, Replace)],
                vec![],
                RepairsState { consecutive_failures: 1, ..run.clone() },
            ),
            (
                "the third failure in a row suspends",
                true,
                RepairsState { consecutive_failures: 2, ..run.clone() },
                vec![with(inst(0, Health::Unhealthy), |i| i.repair_attempts = 2)],
                vec![],
                vec![],
                RepairsState {
                    service_state: ServiceState::Suspended,
                    consecutive_failures: 3,
                    reason: Some("Automatic repairs were suspended after 3 repairs in a row did not make instances healthy (last: instance 0).".into()),
                },
            ),
            (
                "a repaired instance that is healthy resets the count",
                true,
                RepairsState { consecutive_failures: 2, ..run.clone() },
                vec![with(inst(0, Health::Healthy), |i| i.repair_attempts = 2), inst(1, Health::Healthy)],
                vec![],
                vec![0],
                run.clone(),
            ),
        ];
        for (name, enabled, state, insts, want, recovered, want_state) in cases {
            let d = decide(enabled, Replace, GRACE, &state, &insts, NOW);
            assert_eq!(d.repair, want, "{name}");
            assert_eq!(d.recovered, recovered, "{name}");
            assert_eq!(d.state, want_state, "{name}");
        }
    }

    #[test]
    fn action_is_the_policys() {
        for a in [Replace, Restart, Reimage] {
            let d = decide(
                true,
                a,
                GRACE,
                &RepairsState::default(),
                &[inst(7, Health::Unhealthy)],
                NOW,
            );
            assert_eq!(d.repair, vec![(7, a)]);
        }
    }

    #[test]
    fn failures_and_resume() {
        let mut s = RepairsState::default();
        s = record_failure(&s, "instance 1");
        s = record_failure(&s, "instance 1");
        assert_eq!(s.service_state, ServiceState::Running);
        s = record_failure(&s, "instance 1");
        assert_eq!(s.service_state, ServiceState::Suspended);
        assert!(s.reason.as_deref().unwrap().contains("instance 1"));
        let r = set_service_state(&s, true);
        assert_eq!(r, RepairsState::default());
        let p = set_service_state(&r, false);
        assert_eq!(p.service_state, ServiceState::Suspended);
        // Suspended: nothing is repaired even far past grace.
        let d = decide(
            true,
            Replace,
            GRACE,
            &p,
            &[inst(0, Health::Unhealthy)],
            NOW * 10,
        );
        assert!(d.repair.is_empty());
    }
}
