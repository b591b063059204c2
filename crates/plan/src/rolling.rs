//! Rolling upgrades (`upgradePolicy.mode = Rolling`): a pure planner that takes the durable
//! rollout state and what the engine observes now, and returns the next step plus the new state.
//!
//! # What Azure does
//! A rolling upgrade moves every instance of a scale set onto the latest model in batches.
//! `rollingUpgradePolicy` controls it (see `/work/shared/reference/azure-semantics.md` §1):
//! * `maxBatchInstancePercent` (default 20) is the *maximum* batch size, "reduced when other
//!   instances are unhealthy"; a batch is at least one VM.
//! * `maxUnhealthyInstancePercent` is checked **before** each batch: if more instances are unhealthy
//!   (for any reason) the upgrade stops with `MaxUnhealthyInstancePercentExceededInRollingUpgrade`.
//! * After each batch Azure waits (up to 5 minutes) for the upgraded instances to report healthy,
//!   then checks `maxUnhealthyUpgradedInstancePercent`; exceeding it stops the upgrade with
//!   `MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade`. With
//!   `rollbackFailedInstancesOnPolicyBreach` the failed instances go back to the previous model.
//! * `pauseTimeBetweenBatches` is waited between batches.
//! * `prioritizeUnhealthyInstances` upgrades unhealthy instances first.
//! * `maxSurge` creates the batch's replacements on the new model first, then deletes the old
//!   instances (new ids), so serving capacity never drops.
//! * Instances with `protectFromScaleSetActions` are not touched by scale-set-initiated upgrades.
//! * Status is `runningStatus.code` (`RollingForward | Cancelled | Completed | Faulted`) plus
//!   `progress` counts (successful, failed, in progress, pending) and `error`.
//! * `rollingUpgrades/cancel` stops the upgrade; the batch in flight is not abandoned.
//!
//! # What we do
//! [`start`] creates a [`RolloutState`]; the engine then calls [`next`] about once a second with
//! that state, the live policy, the observed instances and its clock, carries out the returned
//! [`Step`] and persists the returned state (serde, JSON is fine). Every decision is made from
//! those inputs only, so a daemon killed at any point resumes by calling [`next`] again:
//!
//! * **Phases.** `Select` (pick the next batch after the pause and pre-check) → `Upgrading`
//!   (in-place) or `Surging` → `Removing` (maxSurge) → back to `Select`; a breach may go through
//!   `RollingBack` (or `Removing` for maxSurge); `Done` is terminal and keeps answering
//!   `Finish(status)`.
//! * **Batch size.** `max(1, floor(N × maxBatchInstancePercent / 100))`, where N is the number of
//!   instances in the scale set (surge instances of the batch in flight excluded). With 5 or fewer
//!   instances we go one at a time. The docs disagree here: the upgrade-policy page only gives the
//!   percent rule (so 100% of 3 would be all 3 at once), while the automatic-OS-upgrade page, which
//!   reuses the same policy, says "5 or fewer instances means one at a time". We follow the latter:
//!   it is the only concrete statement about small sets, it agrees with the percent rule at the
//!   default 20%, and it is the safe choice (a rolling upgrade exists to keep capacity serving).
//!   The maximum is then *reduced* by unhealthy instances: the batch may make at most
//!   `max - unhealthy` healthy instances unavailable; unhealthy batch members (already not
//!   serving) cost nothing. Candidates are taken in order until the next one does not fit; a batch
//!   always has at least one member.
//! * **Order.** Instances this rollout is already reimaging (`upgrading`, e.g. after a restart that
//!   lost the state write) first, then, with `prioritizeUnhealthyInstances`, unhealthy ones, then
//!   ascending instance id. Protected instances and instances that already failed in this rollout
//!   are never picked; they stay on their model.
//! * **Pre-check.** Before each batch: unhealthy (`!healthy || !running`, not counting our own
//!   in-flight reimages) × 100 > maxUnhealthyInstancePercent × N → `Faulted`.
//! * **Health wait.** A batch member is done when it runs the target model, is not being acted on,
//!   runs and is healthy. We wait until all members are done or `health_timeout_secs` have passed
//!   since the batch started (Azure: 5 minutes, [`DEFAULT_HEALTH_TIMEOUT_SECS`]); the rest failed.
//! * **Failed units (beyond Azure).** A batch member on the target model whose units systemd
//!   reports `failed` (`RollInstance::failed_units`, observed by the engine inside the instance)
//!   once its boot finished, that is still not healthy [`UNIT_FAILED_GRACE_MS`] later, is
//!   *settled* as failed: it will not become healthy by waiting. The
//!   batch is evaluated as soon as every member is healthy or settled, and at once when the
//!   settled failures alone already exceed maxUnhealthyUpgradedInstancePercent; instances still
//!   starting keep Azure's health wait. The breach's error names the instance and unit, and
//!   `details` carry the unit's last journal lines (`UnitFailed`).
//! * **Post-check.** Unhealthy upgraded instances (every instance this rollout upgraded that is not
//!   healthy on the target model now) × 100 > maxUnhealthyUpgradedInstancePercent × N → `Faulted`
//!   with Azure's message; the first failed id is the first failed member of the batch. With
//!   rollback, a `Rollback` step reimages the unhealthy upgraded instances onto
//!   `previous_version`, then `Finish(Faulted)`. Below the threshold failed instances stay as they
//!   are (Azure leaves them) and the rollout goes on.
//! * **maxSurge.** Selecting a batch also records the highest `created_seq` seen; then
//!   `Surge{count}` asks for the missing new instances; instances created after that watermark at
//!   the target model are the batch's surge (so a lost write never creates them twice). Once they are healthy (or the timeout passed) one old instance is removed per
//!   healthy surge instance. A surge instance that never became healthy is removed too and its old
//!   instance stays (counted failed); on a breach, failed surge instances are removed only with
//!   rollback (that *is* the rollback: their old instances were never touched).
//! * **Cancel.** [`cancel`] sets `Cancelled`; the batch in flight finishes (including its health
//!   check), then `Finish(Cancelled)`; no new batch starts. A breach in that last batch still
//!   reports `Faulted`.
//! * **Completed** when no unprotected instance off the target model (and not failed) remains.
//! * **Idempotence.** `next` is a pure function. Every phase change (batch chosen, batch evaluated,
//!   breach) returns `Wait` (or `Finish`), so the decision is persisted before anything acts on
//!   it; steps that act (`Upgrade`, `Surge`, `Remove`, `Rollback`) are only returned from a state
//!   that already records them and leave the phase as it is. So losing the write after any call
//!   is harmless: the next call decides the same again from the observations. Work the engine
//!   lost (restart forgetting in-flight operations) is asked for again: members off the target
//!   model and not `upgrading` get `Upgrade` again, members still present get `Remove` again;
//!   members already on the target model are never reimaged again. One consequence: each batch
//!   costs one extra call (about a second) before it starts.
//!
//! # Engine contract
//! * `upgrading` is true from the moment the engine accepts an `Upgrade`, `Rollback` or `Remove`
//!   for the instance until that operation ends (successfully or not); `model_version` changes
//!   when the reimage applies the new model.
//! * After `Surge{count}` the new instance records (any power state) show up on the next call,
//!   with `created_seq` larger than any before (monotonic per scale set).
//! * Scale-in during a rollout is tolerated: a batch member that disappears counts as neither
//!   done nor failed. Scale-out during a maxSurge batch may be mistaken for surge instances.
//! * `enableCrossZoneUpgrade` is accepted and ignored: there are no zones on one machine.
use model::vmss::RollingUpgradePolicy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How long Azure waits for an upgraded batch to report healthy.
pub const DEFAULT_HEALTH_TIMEOUT_SECS: u64 = 300;
/// Scale sets this small are upgraded one instance at a time.
pub const ONE_AT_A_TIME_MAX_INSTANCES: usize = 5;
pub const CODE_MAX_UNHEALTHY: &str = "MaxUnhealthyInstancePercentExceededInRollingUpgrade";
pub const CODE_MAX_UNHEALTHY_UPGRADED: &str =
    "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade";

/// One instance as the engine observes it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollInstance {
    pub id: u32,
    pub model_version: u64,
    /// The health source (LB probe) reports it up.
    pub healthy: bool,
    pub running: bool,
    /// `protectFromScaleSetActions`.
    pub protected: bool,
    /// The engine is acting on it for this rollout (reimage, rollback or removal in flight).
    pub upgrading: bool,
    /// Creation order, monotonic per scale set.
    pub created_seq: u64,
    /// Units systemd reports `failed` inside the instance (observed only for instances on the
    /// target model that are not healthy yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_units: Vec<FailedUnit>,
    /// How long (ms) `failed_units` has been non-empty since the instance's boot finished.
    #[serde(default)]
    pub failed_for_ms: u64,
}

/// A failed unit settles an unhealthy instance only after the boot finished and this long
/// passed: an early-boot unit of systemd's own can fail while the app still comes up, and the
/// probe needs a few intervals to see it serve.
pub const UNIT_FAILED_GRACE_MS: u64 = 15_000;

/// A unit systemd reports `failed` inside an instance, with the last lines of its journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedUnit {
    pub unit: String,
    pub journal: Vec<String>,
}

impl RollInstance {
    /// Unhealthy for any reason (not running or probe down).
    fn down(&self) -> bool {
        !(self.running && self.healthy)
    }
    /// On `target`, not acted on, not healthy, and a unit has failed for longer than the
    /// grace since boot: waiting will not help.
    fn broken(&self, target: u64) -> bool {
        self.model_version == target
            && !self.upgrading
            && !self.available()
            && !self.failed_units.is_empty()
            && self.failed_for_ms >= UNIT_FAILED_GRACE_MS
    }
    /// Serving: running, healthy and not being acted on.
    fn available(&self) -> bool {
        self.running && self.healthy && !self.upgrading
    }
}

/// Azure's `runningStatus.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RunningStatus {
    #[default]
    RollingForward,
    Cancelled,
    Completed,
    Faulted,
}

/// Azure's `runningStatus.lastAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum LastAction {
    #[default]
    Start,
    Cancel,
}

/// Where the rollout is in its state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Phase {
    /// Between batches: wait out the pause, pre-check, pick the next batch.
    #[default]
    Select,
    /// maxSurge: batch recorded, new instances being created and waited for.
    Surging,
    /// In-place: batch being reimaged and waited for.
    Upgrading,
    /// maxSurge: removing the replaced old instances (and failed surge instances).
    Removing,
    /// After a breach with rollbackFailedInstancesOnPolicyBreach.
    RollingBack,
    /// Terminal.
    Done,
}

/// Azure's `error` of a rolling upgrade (`ApiError` code + message, and `details`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutError {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ErrorDetail>,
}

/// Azure's `ApiErrorBase`: one of an error's `details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub target: String,
    pub message: String,
}

/// The code of a detail naming a failed unit.
pub const CODE_UNIT_FAILED: &str = "UnitFailed";

/// Azure's `progress` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Progress {
    pub successful: u32,
    pub failed: u32,
    pub in_progress: u32,
    pub pending: u32,
}

/// The durable state of one rollout. Persist it after every [`next`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct RolloutState {
    pub target_version: u64,
    pub previous_version: u64,
    /// The policy at start (reported by the status API); [`next`] uses the policy passed in.
    pub policy: RollingUpgradePolicy,
    pub status: RunningStatus,
    pub phase: Phase,
    pub start_time: u64,
    pub last_action: LastAction,
    pub last_action_time: u64,
    /// Number of batches started.
    pub batches: u32,
    /// The old instances of the current batch (to reimage, or to replace with maxSurge).
    pub batch: Vec<u32>,
    /// When the current batch (or rollback) started; the health timeout counts from here.
    pub batch_started_at: Option<u64>,
    /// No new batch before this time (pauseTimeBetweenBatches).
    pub paused_until: Option<u64>,
    /// maxSurge: highest `created_seq` when the batch was chosen.
    pub surge_watermark: Option<u64>,
    /// maxSurge: the new instances created for the current batch.
    pub surge: Vec<u32>,
    /// maxSurge: instances being removed.
    pub removing: Vec<u32>,
    /// Instances upgraded successfully (maxSurge: the healthy new instances).
    pub done: Vec<u32>,
    /// Instances that failed to upgrade (maxSurge: old instances whose replacement failed).
    pub failed: Vec<u32>,
    /// Instances returned to the previous model (maxSurge: failed new instances removed).
    pub rolled_back: Vec<u32>,
    pub error: Option<RolloutError>,
}

/// What the engine should do now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Nothing to do now (health settling, pause between batches, work in flight).
    Wait,
    /// Drain and reimage these onto `target_version`.
    Upgrade(Vec<u32>),
    /// maxSurge: create `count` new instances with the target model.
    Surge { count: u32 },
    /// maxSurge: drain and delete these instances (old instances replaced by healthy surge
    /// instances, or surge instances that never became healthy).
    Remove(Vec<u32>),
    /// Reimage these back onto `previous_version` (rollbackFailedInstancesOnPolicyBreach).
    Rollback(Vec<u32>),
    /// The rollout ended with this status; stop calling (further calls answer the same).
    Finish(RunningStatus),
}

/// Starts a rollout from `previous_version` to `target_version`.
pub fn start(
    policy: &RollingUpgradePolicy,
    target_version: u64,
    previous_version: u64,
    now: u64,
) -> RolloutState {
    RolloutState {
        target_version,
        previous_version,
        policy: policy.clone(),
        start_time: now,
        last_action_time: now,
        ..RolloutState::default()
    }
}

/// `rollingUpgrades/cancel`: no new batch starts; the batch in flight finishes.
pub fn cancel(st: &RolloutState, now: u64) -> RolloutState {
    let mut s = st.clone();
    if s.status == RunningStatus::RollingForward && s.phase != Phase::Done {
        s.status = RunningStatus::Cancelled;
        s.last_action = LastAction::Cancel;
        s.last_action_time = now;
    }
    s
}

/// The largest batch for `n` instances, before the reduction for unhealthy instances.
pub fn max_batch_size(policy: &RollingUpgradePolicy, n: usize) -> usize {
    if n <= ONE_AT_A_TIME_MAX_INSTANCES {
        return 1;
    }
    (n * policy.max_batch_instance_percent as usize / 100).max(1)
}

/// Azure's progress counts for the status API.
pub fn progress(st: &RolloutState, instances: &[RollInstance]) -> Progress {
    let v = View::new(instances);
    let in_flight = matches!(st.phase, Phase::Upgrading | Phase::Surging);
    let in_progress = if in_flight {
        st.batch.iter().filter(|id| v.get(**id).is_some()).count()
    } else {
        0
    };
    let pending = candidates(st, &v)
        .iter()
        .filter(|i| {
            let busy = st.removing.contains(&i.id) || (in_flight && st.batch.contains(&i.id));
            !busy
        })
        .count();
    Progress {
        successful: st.done.len() as u32,
        failed: st.failed.len() as u32,
        in_progress: in_progress as u32,
        pending: pending as u32,
    }
}

/// Decides the next step. Pure: the same inputs give the same answer.
pub fn next(
    policy: &RollingUpgradePolicy,
    st: &RolloutState,
    instances: &[RollInstance],
    now: u64,
    health_timeout_secs: u64,
) -> (Step, RolloutState) {
    let mut s = st.clone();
    let v = View::new(instances);
    let step = match s.phase {
        Phase::Done => Step::Finish(s.status),
        Phase::Select => select(policy, &mut s, &v, now),
        Phase::Upgrading => upgrading(policy, &mut s, &v, now, health_timeout_secs),
        Phase::Surging => surging(policy, &mut s, &v, now, health_timeout_secs),
        Phase::Removing => removing(policy, &mut s, &v, now),
        Phase::RollingBack => rolling_back(&mut s, &v, now, health_timeout_secs),
    };
    (step, s)
}

struct View<'a> {
    all: &'a [RollInstance],
    by_id: BTreeMap<u32, &'a RollInstance>,
}

impl<'a> View<'a> {
    fn new(all: &'a [RollInstance]) -> Self {
        Self {
            all,
            by_id: all.iter().map(|i| (i.id, i)).collect(),
        }
    }
    fn get(&self, id: u32) -> Option<&'a RollInstance> {
        self.by_id.get(&id).copied()
    }
    fn live(&self, ids: &[u32]) -> Vec<&'a RollInstance> {
        ids.iter().filter_map(|id| self.get(*id)).collect()
    }
}

/// Unprotected instances off the target model that have not failed in this rollout.
fn candidates<'a>(s: &RolloutState, v: &View<'a>) -> Vec<&'a RollInstance> {
    v.all
        .iter()
        .filter(|i| {
            !i.protected && i.model_version != s.target_version && !s.failed.contains(&i.id)
        })
        .collect()
}

fn exceeds(count: usize, n: usize, percent: u32) -> bool {
    n > 0 && (count as u64) * 100 > (percent as u64) * (n as u64)
}

/// The percent Azure prints: rounded up, so an exceeded threshold never prints as equal.
fn percent(count: usize, n: usize) -> u64 {
    if n == 0 {
        return 0;
    }
    ((count as u64) * 100).div_ceil(n as u64)
}

fn push_unique(list: &mut Vec<u32>, id: u32) {
    if !list.contains(&id) {
        list.push(id);
    }
}

fn ids(list: &[&RollInstance]) -> Vec<u32> {
    list.iter().map(|i| i.id).collect()
}

fn timed_out(s: &RolloutState, now: u64, timeout: u64) -> bool {
    now >= s.batch_started_at.unwrap_or(now).saturating_add(timeout)
}

fn finish(s: &mut RolloutState, status: RunningStatus) -> Step {
    s.status = status;
    s.phase = Phase::Done;
    s.batch.clear();
    s.batch_started_at = None;
    s.paused_until = None;
    s.surge_watermark = None;
    s.surge.clear();
    s.removing.clear();
    Step::Finish(status)
}

fn end_batch(policy: &RollingUpgradePolicy, s: &mut RolloutState, now: u64) {
    s.phase = Phase::Select;
    s.batch.clear();
    s.batch_started_at = None;
    s.surge_watermark = None;
    s.surge.clear();
    s.removing.clear();
    let pause = policy.pause_time_between_batches_secs;
    s.paused_until = (pause > 0).then(|| now.saturating_add(pause));
}

/// Azure's most impactful error, or the first failed unit's.
fn impact(broken: &[&RollInstance]) -> String {
    match broken.first() {
        Some(i) => format!(
            "Unit {} failed on instance {}",
            i.failed_units[0].unit, i.id
        ),
        None => "Instance found to be unhealthy or unreachable.".into(),
    }
}

/// One `UnitFailed` detail per failed unit of `broken`, with its journal lines.
fn unit_details(broken: &[&RollInstance]) -> Vec<ErrorDetail> {
    broken
        .iter()
        .flat_map(|i| {
            i.failed_units.iter().map(move |u| ErrorDetail {
                code: CODE_UNIT_FAILED.into(),
                target: format!("instances/{}/units/{}", i.id, u.unit),
                message: if u.journal.is_empty() {
                    format!("{} failed on instance {}.", u.unit, i.id)
                } else {
                    format!(
                        "{} failed on instance {}. Last journal lines:\n{}",
                        u.unit,
                        i.id,
                        u.journal.join("\n")
                    )
                },
            })
        })
        .collect()
}

fn breach_upgraded(
    policy: &RollingUpgradePolicy,
    s: &mut RolloutState,
    count: usize,
    n: usize,
    first: u32,
    broken: &[&RollInstance],
) {
    s.status = RunningStatus::Faulted;
    s.error = Some(RolloutError {
        code: CODE_MAX_UNHEALTHY_UPGRADED.into(),
        message: format!(
            "Rolling Upgrade failed after exceeding the MaxUnhealthyUpgradedInstancePercent value \
             defined in the RollingUpgradePolicy. {}% of instances are in an unhealthy state after \
             being upgraded - more than the threshold of {}%. The most impactful error is: \
             {}. First failed instance ID is: {}.",
            percent(count, n),
            policy.max_unhealthy_upgraded_instance_percent,
            impact(broken),
            first
        ),
        details: unit_details(broken),
    });
}

fn select(policy: &RollingUpgradePolicy, s: &mut RolloutState, v: &View, now: u64) -> Step {
    let mut cands = candidates(s, v);
    if cands.is_empty() {
        return finish(s, RunningStatus::Completed);
    }
    if s.status == RunningStatus::Cancelled {
        return finish(s, RunningStatus::Cancelled);
    }
    if let Some(until) = s.paused_until {
        if now < until {
            return Step::Wait;
        }
    }
    s.paused_until = None;

    let n = v.all.len();
    let unhealthy = v.all.iter().filter(|i| i.down() && !i.upgrading).count();
    if exceeds(unhealthy, n, policy.max_unhealthy_instance_percent) {
        s.error = Some(RolloutError {
            code: CODE_MAX_UNHEALTHY.into(),
            message: format!(
                "Rolling Upgrade failed after exceeding the MaxUnhealthyInstancePercent value \
                 defined in the RollingUpgradePolicy. {}% of instances are in an unhealthy state - \
                 more than the threshold of {}%. To apply upgrades, consider increasing the \
                 MaxUnhealthyInstancePercent value.",
                percent(unhealthy, n),
                policy.max_unhealthy_instance_percent
            ),
            details: Vec::new(),
        });
        return finish(s, RunningStatus::Faulted);
    }

    let prioritize = policy.prioritize_unhealthy_instances;
    cands.sort_by_key(|i| {
        let serving = !i.down();
        (!i.upgrading, prioritize && serving, i.id)
    });
    let max = max_batch_size(policy, n);
    let mut budget = max.saturating_sub(unhealthy);
    let mut batch = Vec::new();
    for c in cands {
        if batch.len() == max {
            break;
        }
        let cost = usize::from(!c.upgrading && !c.down());
        if cost > budget {
            if batch.is_empty() {
                batch.push(c.id);
            }
            break;
        }
        budget -= cost;
        batch.push(c.id);
    }

    s.batch = batch;
    s.batch_started_at = Some(now);
    s.batches += 1;
    if policy.max_surge {
        s.phase = Phase::Surging;
        s.surge_watermark = Some(v.all.iter().map(|i| i.created_seq).max().unwrap_or(0));
        s.surge.clear();
    } else {
        s.phase = Phase::Upgrading;
    }
    // Persist the batch before acting on it; the next call asks for the work.
    Step::Wait
}

fn upgrading(
    policy: &RollingUpgradePolicy,
    s: &mut RolloutState,
    v: &View,
    now: u64,
    timeout: u64,
) -> Step {
    let target = s.target_version;
    let ok = |i: &RollInstance| i.model_version == target && i.available();
    let live = v.live(&s.batch);
    let broken: Vec<&RollInstance> = live.iter().copied().filter(|i| i.broken(target)).collect();
    let settled = live.iter().all(|i| ok(i) || i.broken(target));
    let n = v.all.len();
    // Earlier batches' instances that are unhealthy now, plus this batch's settled failures.
    let definite = s
        .done
        .iter()
        .chain(&s.failed)
        .filter(|id| !s.batch.contains(id))
        .filter_map(|id| v.get(*id))
        .filter(|i| !ok(i))
        .count()
        + broken.len();
    let fail_now = exceeds(definite, n, policy.max_unhealthy_upgraded_instance_percent);
    if !settled && !fail_now && !timed_out(s, now, timeout) {
        let again: Vec<u32> = live
            .iter()
            .filter(|i| i.model_version != target && !i.upgrading)
            .map(|i| i.id)
            .collect();
        return if again.is_empty() {
            Step::Wait
        } else {
            Step::Upgrade(again)
        };
    }

    let mut first_failed = broken.first().map(|i| i.id);
    for i in &live {
        if ok(i) {
            push_unique(&mut s.done, i.id);
        } else {
            first_failed.get_or_insert(i.id);
            push_unique(&mut s.failed, i.id);
        }
    }
    let mut unhealthy_upgraded: Vec<&RollInstance> = s
        .done
        .iter()
        .chain(&s.failed)
        .filter_map(|id| v.get(*id))
        .filter(|i| !ok(i))
        .collect();
    unhealthy_upgraded.sort_by_key(|i| i.id);
    if exceeds(
        unhealthy_upgraded.len(),
        n,
        policy.max_unhealthy_upgraded_instance_percent,
    ) {
        let first = first_failed.unwrap_or(unhealthy_upgraded[0].id);
        breach_upgraded(policy, s, unhealthy_upgraded.len(), n, first, &broken);
        if policy.rollback_failed_instances_on_policy_breach {
            let back: Vec<u32> = unhealthy_upgraded
                .iter()
                .filter(|i| i.model_version != s.previous_version || i.upgrading)
                .map(|i| i.id)
                .collect();
            if !back.is_empty() {
                s.rolled_back = back;
                s.phase = Phase::RollingBack;
                s.batch.clear();
                s.batch_started_at = Some(now);
                return Step::Wait;
            }
        }
        return finish(s, RunningStatus::Faulted);
    }
    end_batch(policy, s, now);
    select(policy, s, v, now)
}

fn rolling_back(s: &mut RolloutState, v: &View, now: u64, timeout: u64) -> Step {
    let prev = s.previous_version;
    let pending: Vec<&RollInstance> = v
        .live(&s.rolled_back)
        .into_iter()
        .filter(|i| i.model_version != prev || i.upgrading)
        .collect();
    if pending.is_empty() || timed_out(s, now, timeout) {
        return finish(s, RunningStatus::Faulted);
    }
    let again: Vec<u32> = pending
        .iter()
        .filter(|i| !i.upgrading)
        .map(|i| i.id)
        .collect();
    if again.is_empty() {
        Step::Wait
    } else {
        Step::Rollback(again)
    }
}

fn surging(
    policy: &RollingUpgradePolicy,
    s: &mut RolloutState,
    v: &View,
    now: u64,
    timeout: u64,
) -> Step {
    let target = s.target_version;
    let watermark = s.surge_watermark.unwrap_or(0);
    let mut new: Vec<&RollInstance> = v
        .all
        .iter()
        .filter(|i| i.created_seq > watermark && i.model_version == target)
        .collect();
    new.sort_by_key(|i| (i.created_seq, i.id));
    new.truncate(s.batch.len());
    s.surge = ids(&new);
    let old = ids(&v.live(&s.batch));
    let healthy_new: Vec<u32> = new.iter().filter(|i| i.available()).map(|i| i.id).collect();
    let broken: Vec<&RollInstance> = new.iter().copied().filter(|i| i.broken(target)).collect();
    // Every replacement is there and healthy or failed for good: nothing left to wait for.
    let settled = new.len() >= old.len() && healthy_new.len() + broken.len() >= new.len();

    if healthy_new.len() < old.len() && !settled && !timed_out(s, now, timeout) {
        let missing = old.len().saturating_sub(new.len());
        return if missing > 0 {
            Step::Surge {
                count: missing as u32,
            }
        } else {
            Step::Wait
        };
    }

    // Pair each healthy new instance with an old one; the rest of the batch failed.
    let k = healthy_new.len().min(old.len());
    let (replaced, unpaired) = old.split_at(k);
    let failed_new: Vec<u32> = s
        .surge
        .iter()
        .copied()
        .filter(|id| !healthy_new.contains(id))
        .collect();
    for id in &healthy_new {
        push_unique(&mut s.done, *id);
    }
    for id in unpaired {
        push_unique(&mut s.failed, *id);
    }
    let unhealthy_done = s
        .done
        .iter()
        .filter_map(|id| v.get(*id))
        .filter(|i| !(i.model_version == target && i.available()))
        .count();
    let count = s.failed.len() + unhealthy_done;
    let n = v.all.len().saturating_sub(new.len());
    let mut remove = replaced.to_vec();
    if exceeds(count, n, policy.max_unhealthy_upgraded_instance_percent) {
        let first = broken
            .first()
            .map(|i| i.id)
            .or(failed_new.first().copied())
            .or(unpaired.first().copied())
            .or(s.failed.first().copied())
            .unwrap_or_default();
        breach_upgraded(policy, s, count, n, first, &broken);
        if policy.rollback_failed_instances_on_policy_breach {
            for id in &failed_new {
                push_unique(&mut s.rolled_back, *id);
            }
            remove.extend(&failed_new);
        }
    } else {
        remove.extend(&failed_new);
    }
    s.removing = remove;
    s.phase = Phase::Removing;
    Step::Wait
}

fn removing(policy: &RollingUpgradePolicy, s: &mut RolloutState, v: &View, now: u64) -> Step {
    let present = v.live(&s.removing);
    if present.is_empty() {
        if s.status == RunningStatus::Faulted {
            return finish(s, RunningStatus::Faulted);
        }
        end_batch(policy, s, now);
        return select(policy, s, v, now);
    }
    let again: Vec<u32> = present
        .iter()
        .filter(|i| !i.upgrading)
        .map(|i| i.id)
        .collect();
    if again.is_empty() {
        Step::Wait
    } else {
        Step::Remove(again)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    const P: u64 = 1;
    const T: u64 = 2;
    const TIMEOUT: u64 = 30;

    fn inst(id: u32) -> RollInstance {
        RollInstance {
            id,
            model_version: P,
            healthy: true,
            running: true,
            protected: false,
            upgrading: false,
            created_seq: id as u64,
            failed_units: Vec::new(),
            failed_for_ms: 0,
        }
    }
    fn fleet(n: u32) -> Vec<RollInstance> {
        (0..n).map(inst).collect()
    }
    fn pol(batch: u32) -> RollingUpgradePolicy {
        RollingUpgradePolicy {
            max_batch_instance_percent: batch,
            ..Default::default()
        }
    }

    #[derive(Clone, Copy)]
    enum Op {
        Reimage(u64),
        Remove,
    }

    /// A fake engine: carries out steps on the instances, optionally taking `op_secs` per op.
    struct Sim {
        insts: Vec<RollInstance>,
        now: u64,
        op_secs: u64,
        ops: Vec<(u64, u32, Op)>,
        /// Ids that come up unhealthy on the target model.
        bad: BTreeSet<u32>,
        /// Bad instances also report a failed unit (the app exits at start).
        unit_fails: bool,
        next_id: u32,
        next_seq: u64,
        reimages: BTreeMap<u32, u32>,
        created: u32,
        min_serving: usize,
        /// Every step other than Wait, with its time.
        trace: Vec<(u64, Step)>,
    }

    impl Sim {
        fn new(insts: Vec<RollInstance>) -> Self {
            let next_id = insts.iter().map(|i| i.id + 1).max().unwrap_or(0);
            let next_seq = insts.iter().map(|i| i.created_seq + 1).max().unwrap_or(0);
            let min_serving = insts.iter().filter(|i| i.available()).count();
            Sim {
                insts,
                now: 0,
                op_secs: 0,
                ops: vec![],
                bad: BTreeSet::new(),
                unit_fails: false,
                next_id,
                next_seq,
                reimages: BTreeMap::new(),
                created: 0,
                min_serving,
                trace: vec![],
            }
        }
        fn bad(mut self, ids: &[u32]) -> Self {
            self.bad.extend(ids);
            self
        }
        fn get(&mut self, id: u32) -> &mut RollInstance {
            self.insts.iter_mut().find(|i| i.id == id).unwrap()
        }
        fn finish_op(&mut self, id: u32, op: Op) {
            match op {
                Op::Reimage(version) => {
                    let healthy = version != T || !self.bad.contains(&id);
                    let units = if !healthy && self.unit_fails {
                        vec![app_failed()]
                    } else {
                        vec![]
                    };
                    let i = self.get(id);
                    i.model_version = version;
                    i.healthy = healthy;
                    i.failed_for_ms = if units.is_empty() {
                        0
                    } else {
                        UNIT_FAILED_GRACE_MS
                    };
                    i.failed_units = units;
                    i.running = true;
                    i.upgrading = false;
                }
                Op::Remove => self.insts.retain(|i| i.id != id),
            }
        }
        fn begin(&mut self, id: u32, op: Op) {
            if let Op::Reimage(_) = op {
                *self.reimages.entry(id).or_default() += 1;
            }
            if self.op_secs == 0 {
                self.finish_op(id, op);
            } else {
                let i = self.get(id);
                assert!(!i.upgrading, "step for {id} while it is busy");
                i.upgrading = true;
                if let Op::Reimage(_) = op {
                    i.healthy = false;
                }
                self.ops.push((self.now + self.op_secs, id, op));
            }
        }
        fn apply(&mut self, step: &Step) {
            match step {
                Step::Wait | Step::Finish(_) => {}
                Step::Upgrade(ids) => {
                    for &id in ids {
                        assert_ne!(self.get(id).model_version, T, "{id} reimaged twice");
                        self.begin(id, Op::Reimage(T));
                    }
                }
                Step::Rollback(ids) => ids.iter().for_each(|&id| self.begin(id, Op::Reimage(P))),
                Step::Remove(ids) => ids.iter().for_each(|&id| self.begin(id, Op::Remove)),
                Step::Surge { count } => {
                    for _ in 0..*count {
                        let id = self.next_id;
                        self.next_id += 1;
                        self.next_seq += 1;
                        self.created += 1;
                        self.insts.push(RollInstance {
                            id,
                            model_version: T,
                            healthy: !self.bad.contains(&id),
                            running: true,
                            protected: false,
                            upgrading: false,
                            created_seq: self.next_seq,
                            failed_units: if self.bad.contains(&id) && self.unit_fails {
                                vec![app_failed()]
                            } else {
                                vec![]
                            },
                            failed_for_ms: UNIT_FAILED_GRACE_MS,
                        });
                    }
                }
            }
            let serving = self.insts.iter().filter(|i| i.available()).count();
            self.min_serving = self.min_serving.min(serving);
        }
        fn tick(&mut self) {
            self.now += 1;
            let now = self.now;
            let (due, rest): (Vec<_>, Vec<_>) = self.ops.drain(..).partition(|o| o.0 <= now);
            self.ops = rest;
            for (_, id, op) in due {
                self.finish_op(id, op);
            }
        }
        /// The daemon dies: in-flight operations are lost (the instance keeps its old model).
        fn engine_restart(&mut self) {
            self.ops.clear();
            for i in &mut self.insts {
                i.upgrading = false;
            }
        }
        /// Runs to Finish. `lose_writes`: calls whose new state is not persisted (the step is
        /// still carried out). `restarts`: calls after which the engine also loses its ops.
        fn run_with(
            &mut self,
            policy: &RollingUpgradePolicy,
            mut st: RolloutState,
            lose_writes: &[usize],
            restarts: &[usize],
            cancel_at: Option<u64>,
        ) -> RolloutState {
            for call in 0..100_000 {
                if cancel_at == Some(self.now) {
                    st = cancel(&st, self.now);
                }
                let (step, next_st) = next(policy, &st, &self.insts, self.now, TIMEOUT);
                let again = next(policy, &st, &self.insts, self.now, TIMEOUT);
                assert_eq!(again, (step.clone(), next_st.clone()), "not deterministic");
                if step != Step::Wait {
                    self.trace.push((self.now, step.clone()));
                }
                if let Step::Finish(s) = step {
                    assert_eq!(next_st.status, s);
                    assert_eq!(next_st.phase, Phase::Done);
                    return next_st;
                }
                self.apply(&step);
                if !lose_writes.contains(&call) {
                    st = next_st;
                }
                if restarts.contains(&call) {
                    self.engine_restart();
                }
                self.tick();
            }
            panic!("rollout did not finish");
        }
        fn run(&mut self, policy: &RollingUpgradePolicy) -> RolloutState {
            self.run_with(policy, start(policy, T, P, 0), &[], &[], None)
        }
        fn steps(&self) -> Vec<Step> {
            self.trace.iter().map(|(_, s)| s.clone()).collect()
        }
        fn versions(&self) -> Vec<(u32, u64)> {
            self.insts.iter().map(|i| (i.id, i.model_version)).collect()
        }
    }

    fn up(ids: &[u32]) -> Step {
        Step::Upgrade(ids.to_vec())
    }

    fn app_failed() -> FailedUnit {
        FailedUnit {
            unit: "my_app.service".into(),
            journal: vec![
                "my_app[42]: bad config".into(),
                "systemd[1]: my_app.service: Failed.".into(),
            ],
        }
    }

    /// A bad deploy says why, fast: an instance whose unit failed ends its batch at once (not at
    /// the health timeout), and the error names the instance, the unit and its journal lines.
    #[test]
    fn failed_unit_faults_at_once() {
        let mut sim = Sim::new(fleet(3)).bad(&[0]);
        sim.unit_fails = true;
        let st = sim.run(&pol(20));
        assert_eq!(
            sim.trace,
            vec![(1, up(&[0])), (2, Step::Finish(RunningStatus::Faulted))]
        );
        let e = st.error.clone().unwrap();
        assert_eq!(e.code, CODE_MAX_UNHEALTHY_UPGRADED);
        assert!(
            e.message.ends_with(
                "The most impactful error is: Unit my_app.service failed on instance 0. \
                 First failed instance ID is: 0."
            ),
            "{}",
            e.message
        );
        assert_eq!(
            e.details,
            vec![ErrorDetail {
                code: CODE_UNIT_FAILED.into(),
                target: "instances/0/units/my_app.service".into(),
                message: "my_app.service failed on instance 0. Last journal lines:\n\
                          my_app[42]: bad config\nsystemd[1]: my_app.service: Failed."
                    .into(),
            }]
        );
        assert_eq!(st.failed, vec![0]);
        // Without the failed unit the same deploy waits out Azure's health timeout.
        let mut slow = Sim::new(fleet(3)).bad(&[0]);
        slow.run(&pol(20));
        assert_eq!(slow.trace.last().unwrap().0, TIMEOUT);
    }

    /// Batch states in, the step out: which members settle a batch early and which still wait.
    #[test]
    fn failed_units_table() {
        // (members of a batch of 2 among 10 as (healthy, on target, failed unit, upgrading),
        //  maxUnhealthyUpgraded%, expected step, expected failed ids)
        type Member = (bool, bool, bool, bool);
        let cases: Vec<(Member, Member, u32, Step, Vec<u32>)> = vec![
            // One failed for good, one still starting, below the threshold: keep waiting.
            (
                (false, true, true, false),
                (false, true, false, false),
                20,
                Step::Wait,
                vec![],
            ),
            // The same above the threshold: fault at once (the starting one counts failed too).
            (
                (false, true, true, false),
                (false, true, false, false),
                5,
                Step::Finish(RunningStatus::Faulted),
                vec![0, 1],
            ),
            // One failed for good, one healthy, below the threshold: the batch ends now and the
            // rollout goes on (the next batch is recorded).
            (
                (false, true, true, false),
                (true, true, false, false),
                20,
                Step::Wait,
                vec![0],
            ),
            // A failed unit on a healthy instance changes nothing: it is done.
            (
                (true, true, true, false),
                (true, true, false, false),
                5,
                Step::Wait,
                vec![],
            ),
            // Still being reimaged (a stale observation): not settled.
            (
                (false, true, true, true),
                (true, true, false, false),
                5,
                Step::Wait,
                vec![],
            ),
            // Not on the target model yet (and the reimage was lost): asked for again.
            (
                (false, false, true, false),
                (true, true, false, false),
                5,
                up(&[0]),
                vec![],
            ),
        ];
        for (i, (a, b, pct, want, failed)) in cases.into_iter().enumerate() {
            let p = RollingUpgradePolicy {
                max_unhealthy_upgraded_instance_percent: pct,
                ..pol(20)
            };
            let mut insts = fleet(10);
            for (inst, (healthy, on_target, unit, upgrading)) in insts.iter_mut().zip([a, b]) {
                inst.healthy = healthy;
                inst.model_version = if on_target { T } else { P };
                inst.upgrading = upgrading;
                if unit {
                    inst.failed_units = vec![app_failed()];
                    inst.failed_for_ms = UNIT_FAILED_GRACE_MS;
                }
            }
            let mut st = start(&p, T, P, 0);
            st.phase = Phase::Upgrading;
            st.batch = vec![0, 1];
            st.batch_started_at = Some(0);
            st.batches = 1;
            let (step, out) = next(&p, &st, &insts, 1, TIMEOUT);
            assert_eq!(step, want, "case {i}");
            assert_eq!(out.failed, failed, "case {i}");
            let detailed = out.error.as_ref().map_or(0, |e| e.details.len());
            let faulted = matches!(want, Step::Finish(_));
            assert_eq!(detailed, usize::from(faulted), "case {i}");
        }
    }

    /// A unit seen failed for less than the grace (systemd's own early-boot unit while the app
    /// still comes up: CI saw `systemd-remount-fs.service`) settles nothing, even above the
    /// threshold; at the grace it does.
    #[test]
    fn failed_unit_within_the_grace_keeps_waiting() {
        let p = RollingUpgradePolicy {
            max_unhealthy_upgraded_instance_percent: 5,
            ..pol(20)
        };
        for (failed_for, want) in [
            (0, Step::Wait),
            (UNIT_FAILED_GRACE_MS - 1, Step::Wait),
            (UNIT_FAILED_GRACE_MS, Step::Finish(RunningStatus::Faulted)),
        ] {
            let mut insts = fleet(10);
            insts[0].model_version = T;
            insts[0].healthy = false;
            insts[0].failed_units = vec![app_failed()];
            insts[0].failed_for_ms = failed_for;
            let mut st = start(&p, T, P, 0);
            st.phase = Phase::Upgrading;
            st.batch = vec![0];
            st.batch_started_at = Some(0);
            st.batches = 1;
            let (step, _) = next(&p, &st, &insts, 1, TIMEOUT);
            assert_eq!(step, want, "failed for {failed_for} ms");
        }
    }

    /// maxSurge: a replacement whose unit failed settles the batch at once.
    #[test]
    fn failed_unit_in_surge_instance() {
        let p = RollingUpgradePolicy {
            max_surge: true,
            ..pol(20)
        };
        let mut sim = Sim::new(fleet(3)).bad(&[3]);
        sim.unit_fails = true;
        let st = sim.run(&p);
        let t = sim.trace.last().unwrap().0;
        assert!(t < 5, "faulted at {t}: {:?}", sim.trace);
        assert_eq!(st.status, RunningStatus::Faulted);
        assert_eq!(
            st.error.unwrap().details[0].target,
            "instances/3/units/my_app.service"
        );
    }

    #[test]
    fn batch_size_table() {
        let cases = [
            // (instances, maxBatch%, expected)
            (0, 20, 1),
            (1, 20, 1),
            (3, 20, 1),
            (3, 100, 1), // 5 or fewer: one at a time even at 100%
            (5, 100, 1),
            (6, 100, 6),
            (6, 20, 1),
            (10, 20, 2), // the docs' example
            (20, 20, 4),
            (20, 5, 1),
            (19, 20, 3),
            (100, 33, 33),
        ];
        for (n, pct, want) in cases {
            assert_eq!(max_batch_size(&pol(pct), n), want, "n={n} pct={pct}");
        }
    }

    #[test]
    fn three_instances_one_at_a_time() {
        let p = pol(100);
        let mut sim = Sim::new(fleet(3));
        let st = sim.run(&p);
        assert_eq!(
            sim.steps(),
            vec![
                up(&[0]),
                up(&[1]),
                up(&[2]),
                Step::Finish(RunningStatus::Completed)
            ]
        );
        assert_eq!(st.done, vec![0, 1, 2]);
        assert_eq!(
            progress(&st, &sim.insts),
            Progress {
                successful: 3,
                failed: 0,
                in_progress: 0,
                pending: 0
            }
        );
        assert_eq!(st.batches, 3);
        assert!(st.error.is_none());
    }

    #[test]
    fn twenty_at_20_percent_batches_of_4() {
        let p = pol(20);
        let mut sim = Sim::new(fleet(20));
        sim.op_secs = 2;
        let st = sim.run(&p);
        let want: Vec<Step> = (0..5)
            .map(|b| up(&[4 * b, 4 * b + 1, 4 * b + 2, 4 * b + 3]))
            .chain([Step::Finish(RunningStatus::Completed)])
            .collect();
        assert_eq!(sim.steps(), want);
        assert!(sim.insts.iter().all(|i| i.model_version == T));
        assert_eq!(st.status, RunningStatus::Completed);
        assert_eq!(sim.min_serving, 16, "never more than a batch down");
    }

    #[test]
    fn batch_reduced_by_unhealthy_and_prioritized() {
        // 20 instances, max batch 4. Two are unhealthy.
        let mk = || {
            let mut v = fleet(20);
            v[7].healthy = false;
            v[13].running = false;
            v
        };
        type Case = (&'static str, bool, bool, Vec<u32>);
        let cases: Vec<Case> = vec![
            // unhealthy ones are not candidates (protected): 4 - 2 = 2
            ("protected unhealthy", true, false, vec![0, 1]),
            // by id: 0 and 1 use the budget of 2, the third healthy one does not fit
            ("id order", false, false, vec![0, 1]),
            // unhealthy first; they cost nothing, then two healthy
            ("prioritize", false, true, vec![7, 13, 0, 1]),
        ];
        for (name, protect, prioritize, want) in cases {
            let mut insts = mk();
            if protect {
                insts[7].protected = true;
                insts[13].protected = true;
            }
            let p = RollingUpgradePolicy {
                prioritize_unhealthy_instances: prioritize,
                ..pol(20)
            };
            let st = start(&p, T, P, 0);
            let (step, st) = next(&p, &st, &insts, 0, TIMEOUT);
            assert_eq!(step, Step::Wait, "{name}");
            assert_eq!(st.phase, Phase::Upgrading, "{name}");
            let (step, _) = next(&p, &st, &insts, 1, TIMEOUT);
            assert_eq!(step, up(&want), "{name}");
        }
    }

    #[test]
    fn prioritize_unhealthy_whole_run() {
        let mut insts = fleet(4);
        insts[3].healthy = false;
        let p = RollingUpgradePolicy {
            prioritize_unhealthy_instances: true,
            max_unhealthy_instance_percent: 50,
            ..pol(20)
        };
        let mut sim = Sim::new(insts);
        sim.run(&p);
        assert_eq!(
            sim.steps(),
            vec![
                up(&[3]),
                up(&[0]),
                up(&[1]),
                up(&[2]),
                Step::Finish(RunningStatus::Completed)
            ]
        );
    }

    #[test]
    fn pre_check_breach() {
        type Case = (&'static str, u32, u32, Option<&'static str>);
        let cases: Vec<Case> = vec![
            ("2 of 10 at 20% is fine", 10, 2, None),
            (
                "3 of 10 at 20% breaches",
                10,
                3,
                Some(
                    "30% of instances are in an unhealthy state - more than the threshold of 20%.",
                ),
            ),
            (
                "1 of 3 breaches",
                3,
                1,
                Some(
                    "34% of instances are in an unhealthy state - more than the threshold of 20%.",
                ),
            ),
        ];
        for (name, n, unhealthy, msg) in cases {
            let mut insts = fleet(n);
            for i in insts.iter_mut().take(unhealthy as usize) {
                i.healthy = false;
            }
            let p = pol(20);
            let (step, st) = next(&p, &start(&p, T, P, 0), &insts, 0, TIMEOUT);
            match msg {
                None => assert_eq!(step, Step::Wait, "{name}"),
                Some(m) => {
                    assert_eq!(step, Step::Finish(RunningStatus::Faulted), "{name}");
                    let e = st.error.unwrap();
                    assert_eq!(e.code, CODE_MAX_UNHEALTHY, "{name}");
                    assert!(e.message.contains(m), "{name}: {}", e.message);
                    assert!(e.message.starts_with(
                        "Rolling Upgrade failed after exceeding the MaxUnhealthyInstancePercent"
                    ));
                }
            }
        }
    }

    #[test]
    fn pre_check_breach_mid_rollout() {
        // 10 instances: the first batch goes fine, then three others go unhealthy during the
        // pause. (Health changes during a batch are seen by the next pre-check.)
        let p = RollingUpgradePolicy {
            pause_time_between_batches_secs: 10,
            ..pol(20)
        };
        let insts = fleet(10);
        let mut st = start(&p, T, P, 0);
        let mut sim = Sim::new(insts);
        for _ in 0..3 {
            let (step, s) = next(&p, &st, &sim.insts, sim.now, TIMEOUT);
            sim.apply(&step);
            st = s;
            sim.tick();
        }
        assert_eq!(st.done, vec![0, 1]);
        assert_eq!((st.phase, st.paused_until), (Phase::Select, Some(12)));
        for id in [5, 6, 7] {
            sim.get(id).healthy = false;
        }
        assert_eq!(next(&p, &st, &sim.insts, 11, TIMEOUT).0, Step::Wait);
        let (step, st) = next(&p, &st, &sim.insts, 12, TIMEOUT);
        assert_eq!(step, Step::Finish(RunningStatus::Faulted));
        assert_eq!(st.error.unwrap().code, CODE_MAX_UNHEALTHY);
    }

    #[test]
    fn post_batch_breach_without_rollback() {
        let p = RollingUpgradePolicy {
            max_unhealthy_upgraded_instance_percent: 5,
            ..pol(20)
        };
        let mut sim = Sim::new(fleet(10)).bad(&[1]);
        let st = sim.run(&p);
        assert_eq!(
            sim.trace,
            vec![
                (1, up(&[0, 1])),
                // the batch started at 0: health wait until 0 + TIMEOUT
                (TIMEOUT, Step::Finish(RunningStatus::Faulted)),
            ]
        );
        let e = st.error.clone().unwrap();
        assert_eq!(e.code, CODE_MAX_UNHEALTHY_UPGRADED);
        assert_eq!(
            e.message,
            "Rolling Upgrade failed after exceeding the MaxUnhealthyUpgradedInstancePercent value \
             defined in the RollingUpgradePolicy. 10% of instances are in an unhealthy state after \
             being upgraded - more than the threshold of 5%. The most impactful error is: \
             Instance found to be unhealthy or unreachable.. First failed instance ID is: 1."
        );
        // Failed instances stay on the new model.
        assert_eq!(sim.get(1).model_version, T);
        assert_eq!((st.done.clone(), st.failed.clone()), (vec![0], vec![1]));
        assert_eq!(
            progress(&st, &sim.insts),
            Progress {
                successful: 1,
                failed: 1,
                in_progress: 0,
                pending: 8
            }
        );
    }

    #[test]
    fn post_batch_breach_with_rollback() {
        let p = RollingUpgradePolicy {
            max_unhealthy_upgraded_instance_percent: 10,
            rollback_failed_instances_on_policy_breach: true,
            ..pol(20)
        };
        let mut sim = Sim::new(fleet(10)).bad(&[0, 1]);
        let st = sim.run(&p);
        assert_eq!(
            sim.steps(),
            vec![
                up(&[0, 1]),
                Step::Rollback(vec![0, 1]),
                Step::Finish(RunningStatus::Faulted)
            ]
        );
        assert_eq!(st.rolled_back, vec![0, 1]);
        assert_eq!(st.status, RunningStatus::Faulted);
        assert!(st.error.unwrap().message.contains(
            "20% of instances are in an unhealthy state after being upgraded - more than the \
             threshold of 10%"
        ));
        assert!(sim.insts.iter().all(|i| i.model_version == P && i.healthy));
    }

    #[test]
    fn rollback_waits_for_slow_reimages() {
        let p = RollingUpgradePolicy {
            max_unhealthy_upgraded_instance_percent: 0,
            rollback_failed_instances_on_policy_breach: true,
            ..pol(100)
        };
        let mut sim = Sim::new(fleet(3)).bad(&[0]);
        sim.op_secs = 3;
        let st = sim.run(&p);
        assert_eq!(
            sim.trace,
            vec![
                (1, up(&[0])),
                (TIMEOUT + 1, Step::Rollback(vec![0])),
                (TIMEOUT + 4, Step::Finish(RunningStatus::Faulted)),
            ]
        );
        assert!(st
            .error
            .unwrap()
            .message
            .ends_with("First failed instance ID is: 0."));
        assert_eq!(sim.get(0).model_version, P);
    }

    #[test]
    fn failures_below_threshold_continue() {
        let p = pol(20);
        let mut sim = Sim::new(fleet(20)).bad(&[0]);
        let st = sim.run(&p);
        let steps = sim.steps();
        assert_eq!(steps[0], up(&[0, 1, 2, 3]));
        // 0 stays unhealthy on the new model: the next batch is 4 - 1 = 3.
        assert_eq!(steps[1], up(&[4, 5, 6]));
        assert_eq!(steps.last(), Some(&Step::Finish(RunningStatus::Completed)));
        assert_eq!(st.failed, vec![0]);
        assert_eq!(
            progress(&st, &sim.insts),
            Progress {
                successful: 19,
                failed: 1,
                in_progress: 0,
                pending: 0
            }
        );
    }

    #[test]
    fn pause_between_batches() {
        let p = RollingUpgradePolicy {
            pause_time_between_batches_secs: 60,
            ..pol(20)
        };
        let mut sim = Sim::new(fleet(10));
        sim.run(&p);
        let times: Vec<u64> = sim
            .trace
            .iter()
            .filter(|(_, s)| matches!(s, Step::Upgrade(_)))
            .map(|(t, _)| *t)
            .collect();
        // batch at 0 (upgrade asked at 1), healthy at 2, pause to 62, next upgrade asked at 63...
        assert_eq!(times, vec![1, 63, 125, 187, 249]);
        // No pause after the last batch.
        assert_eq!(
            sim.trace.last().unwrap(),
            &(250, Step::Finish(RunningStatus::Completed))
        );
    }

    #[test]
    fn protected_instances_are_skipped() {
        let mut insts = fleet(4);
        insts[1].protected = true;
        insts[3].protected = true;
        let mut sim = Sim::new(insts);
        let st = sim.run(&pol(20));
        assert_eq!(
            sim.steps(),
            vec![up(&[0]), up(&[2]), Step::Finish(RunningStatus::Completed)]
        );
        assert_eq!(sim.versions(), vec![(0, T), (1, P), (2, T), (3, P)]);
        assert_eq!(progress(&st, &sim.insts).pending, 0);
    }

    #[test]
    fn max_surge_sequence() {
        let p = RollingUpgradePolicy {
            max_surge: true,
            ..pol(20)
        };
        let mut sim = Sim::new(fleet(10));
        let st = sim.run(&p);
        let mut want = vec![];
        for b in 0..5 {
            want.push(Step::Surge { count: 2 });
            want.push(Step::Remove(vec![2 * b, 2 * b + 1]));
        }
        want.push(Step::Finish(RunningStatus::Completed));
        assert_eq!(sim.steps(), want);
        assert_eq!(sim.created, 10);
        assert_eq!(sim.min_serving, 10, "serving capacity never drops");
        let ids: Vec<u32> = sim.insts.iter().map(|i| i.id).collect();
        assert_eq!(ids, (10..20).collect::<Vec<_>>());
        assert!(sim.insts.iter().all(|i| i.model_version == T));
        assert_eq!(st.done, (10..20).collect::<Vec<_>>());
    }

    #[test]
    fn max_surge_slow_ops_keep_capacity() {
        let p = RollingUpgradePolicy {
            max_surge: true,
            ..pol(20)
        };
        let mut sim = Sim::new(fleet(10));
        sim.op_secs = 4;
        let st = sim.run(&p);
        assert_eq!(st.status, RunningStatus::Completed);
        assert_eq!(sim.created, 10);
        assert!(sim.reimages.is_empty());
        assert_eq!(sim.min_serving, 10);
    }

    #[test]
    fn max_surge_failed_new_instance() {
        // Below the threshold: the failed new instance is removed, its old one stays.
        let p = RollingUpgradePolicy {
            max_surge: true,
            ..pol(20)
        };
        let mut sim = Sim::new(fleet(10)).bad(&[11]);
        let st = sim.run(&p);
        let steps = sim.steps();
        assert_eq!(steps[0], Step::Surge { count: 2 });
        assert_eq!(steps[1], Step::Remove(vec![0, 11]));
        assert_eq!(st.status, RunningStatus::Completed);
        assert_eq!(st.failed, vec![1]);
        assert_eq!(sim.get(1).model_version, P);
        assert_eq!(sim.insts.len(), 10);

        // Breach with rollback: the failed new instance goes, old ones untouched.
        let p = RollingUpgradePolicy {
            max_surge: true,
            max_unhealthy_upgraded_instance_percent: 0,
            rollback_failed_instances_on_policy_breach: true,
            ..pol(20)
        };
        let mut sim = Sim::new(fleet(10)).bad(&[11]);
        let st = sim.run(&p);
        assert_eq!(
            sim.steps(),
            vec![
                Step::Surge { count: 2 },
                Step::Remove(vec![0, 11]),
                Step::Finish(RunningStatus::Faulted)
            ]
        );
        assert_eq!(st.rolled_back, vec![11]);
        let e = st.error.unwrap();
        assert_eq!(e.code, CODE_MAX_UNHEALTHY_UPGRADED);
        assert!(
            e.message.ends_with("First failed instance ID is: 11."),
            "{}",
            e.message
        );
        assert_eq!(sim.insts.len(), 10);

        // Breach without rollback: the failed new instance stays for inspection.
        let p = RollingUpgradePolicy {
            rollback_failed_instances_on_policy_breach: false,
            ..p
        };
        let mut sim = Sim::new(fleet(10)).bad(&[11]);
        sim.run(&p);
        assert_eq!(sim.steps()[1], Step::Remove(vec![0]));
        assert!(sim.insts.iter().any(|i| i.id == 11));
    }

    #[test]
    fn cancel_mid_rollout() {
        let p = pol(20);
        let mut sim = Sim::new(fleet(20));
        sim.op_secs = 3;
        let st = sim.run_with(&p, start(&p, T, P, 0), &[], &[], Some(2));
        assert_eq!(
            sim.steps(),
            vec![up(&[0, 1, 2, 3]), Step::Finish(RunningStatus::Cancelled)]
        );
        assert_eq!(st.last_action, LastAction::Cancel);
        assert_eq!(st.last_action_time, 2);
        let ups = sim.insts.iter().filter(|i| i.model_version == T).count();
        assert_eq!(ups, 4, "the batch in flight finished");
        assert!(sim.insts.iter().all(|i| !i.upgrading));
        assert_eq!(
            progress(&st, &sim.insts),
            Progress {
                successful: 4,
                failed: 0,
                in_progress: 0,
                pending: 16
            }
        );
    }

    #[test]
    fn cancel_status_and_pause() {
        let p = RollingUpgradePolicy {
            pause_time_between_batches_secs: 600,
            ..pol(20)
        };
        let mut st = start(&p, T, P, 0);
        st.phase = Phase::Select;
        st.paused_until = Some(600);
        st.done = vec![0, 1];
        let mut insts = fleet(10);
        insts[0].model_version = T;
        insts[1].model_version = T;
        assert_eq!(next(&p, &st, &insts, 5, TIMEOUT).0, Step::Wait);
        let c = cancel(&st, 5);
        assert_eq!(c.status, RunningStatus::Cancelled);
        let (step, c) = next(&p, &c, &insts, 6, TIMEOUT);
        assert_eq!(step, Step::Finish(RunningStatus::Cancelled));
        // Terminal states answer the same and ignore cancel.
        assert_eq!(cancel(&c, 7), c);
        assert_eq!(next(&p, &c, &insts, 8, TIMEOUT).0, step);
    }

    #[test]
    fn restart_mid_batch_resumes_without_reimaging_again() {
        let p = pol(20);
        let mut insts = fleet(10);
        // Persisted: batch [0, 1] upgrading. Observed after the restart: 0 finished and healthy,
        // 1 was mid-reimage when the daemon died (still old, no longer in flight).
        let mut st = start(&p, T, P, 0);
        st.phase = Phase::Upgrading;
        st.batch = vec![0, 1];
        st.batch_started_at = Some(0);
        insts[0].model_version = T;
        insts[1].healthy = false;
        let (step, st2) = next(&p, &st, &insts, 5, TIMEOUT);
        assert_eq!(step, up(&[1]));
        // Same inputs, same answer, and the state didn't move: safe to lose that write.
        assert_eq!(next(&p, &st, &insts, 5, TIMEOUT), (step, st2.clone()));
        assert_eq!(st2, st);
        // In flight: wait.
        insts[1].upgrading = true;
        assert_eq!(next(&p, &st, &insts, 6, TIMEOUT).0, Step::Wait);
        // Done: counted, next batch recorded.
        insts[1].upgrading = false;
        insts[1].model_version = T;
        insts[1].healthy = true;
        let (step, st3) = next(&p, &st, &insts, 7, TIMEOUT);
        assert_eq!(step, Step::Wait);
        assert_eq!(st3.done, vec![0, 1]);
        assert_eq!(st3.batch, vec![2, 3]);
    }

    #[test]
    fn restart_before_batch_recorded_picks_in_flight_first() {
        // The batch record was lost but the engine is reimaging 6 and 7: they go first.
        let p = pol(20);
        let mut insts = fleet(10);
        insts[6].upgrading = true;
        insts[7].upgrading = true;
        insts[6].healthy = false;
        insts[7].healthy = false;
        let (_, st) = next(&p, &start(&p, T, P, 0), &insts, 0, TIMEOUT);
        assert_eq!(st.batch, vec![6, 7]);
        assert_eq!(next(&p, &st, &insts, 1, TIMEOUT).0, Step::Wait);
    }

    #[test]
    fn lost_writes_and_engine_restarts_anywhere() {
        // Lose the state write (and, separately, the engine's in-flight work) after every call
        // position in turn; the rollout must still complete, never reimaging an instance that
        // already runs the target model, and never over-creating surge instances.
        for surge in [false, true] {
            for op_secs in [0, 2] {
                for k in 0..40 {
                    for restart in [false, true] {
                        let p = RollingUpgradePolicy {
                            max_surge: surge,
                            ..pol(20)
                        };
                        let mut sim = Sim::new(fleet(10));
                        sim.op_secs = op_secs;
                        let restarts: &[usize] = if restart { &[k] } else { &[] };
                        let st = sim.run_with(&p, start(&p, T, P, 0), &[k, k + 1], restarts, None);
                        let ctx =
                            format!("surge={surge} op_secs={op_secs} k={k} restart={restart}");
                        assert_eq!(st.status, RunningStatus::Completed, "{ctx}");
                        assert!(sim.insts.iter().all(|i| i.model_version == T), "{ctx}");
                        assert_eq!(sim.insts.len(), 10, "{ctx}");
                        if surge {
                            assert_eq!(sim.created, 10, "{ctx}");
                            assert_eq!(sim.min_serving, 10, "{ctx}");
                        } else {
                            assert!(sim.min_serving >= 8, "{ctx}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn progress_mid_batch() {
        let p = pol(20);
        let insts = fleet(10);
        let (_, st) = next(&p, &start(&p, T, P, 0), &insts, 0, TIMEOUT);
        let want = Progress {
            successful: 0,
            failed: 0,
            in_progress: 2,
            pending: 8,
        };
        assert_eq!(progress(&st, &insts), want);
        assert_eq!(st.status, RunningStatus::RollingForward);
        // maxSurge counts the batch's old instances as in progress while the surge settles.
        let p = RollingUpgradePolicy {
            max_surge: true,
            ..p
        };
        let (_, st) = next(&p, &start(&p, T, P, 0), &insts, 0, TIMEOUT);
        assert_eq!(st.phase, Phase::Surging);
        assert_eq!(progress(&st, &insts), want);
    }

    #[test]
    fn cancel_during_surge_finishes_the_batch() {
        let p = RollingUpgradePolicy {
            max_surge: true,
            ..pol(20)
        };
        let mut sim = Sim::new(fleet(10));
        sim.op_secs = 2;
        let st = sim.run_with(&p, start(&p, T, P, 0), &[], &[], Some(1));
        assert_eq!(
            sim.steps(),
            vec![
                Step::Surge { count: 2 },
                Step::Remove(vec![0, 1]),
                Step::Finish(RunningStatus::Cancelled)
            ]
        );
        assert_eq!(st.done, vec![10, 11]);
        assert_eq!(sim.insts.len(), 10);
        assert_eq!(sim.min_serving, 10);
    }

    #[test]
    fn done_is_terminal_and_idempotent() {
        let p = pol(20);
        let insts: Vec<RollInstance> = fleet(3)
            .into_iter()
            .map(|mut i| {
                i.model_version = T;
                i
            })
            .collect();
        let (step, st) = next(&p, &start(&p, T, P, 0), &insts, 0, TIMEOUT);
        assert_eq!(step, Step::Finish(RunningStatus::Completed));
        assert_eq!(next(&p, &st, &insts, 1, TIMEOUT), (step, st));
    }
}
