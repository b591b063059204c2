//! Azure Monitor autoscale, decided purely: given a setting (`model::autoscale`), the metrics,
//! the time, the current capacity and the last scale action, what capacity to ask for and why.
//! No clock, no I/O; run it every 30–60 s (Azure's cadence) and act on the [`Decision`].
//!
//! Public API:
//! - [`decide`]: one evaluation run → [`Decision`] (new capacity or none, and always a
//!   [`Reason`]; `Display` gives an activity-log sentence).
//! - [`active_profile`]: which profile applies at a time (fixed date, then recurrence, then the
//!   default profile).
//! - [`series_needed`]: the metric series the active profile's rules read ([`SeriesKey`]).
//! - [`combine`]: a rule's `statistic` over the instances' values of one grain (for building
//!   the series).
//! - [`History`] / [`LastScale`]: what the caller keeps between runs for cooldowns.
//!
//! What the caller provides in [`Metrics`]: for each [`SeriesKey`] (metric resource, metric
//! name, statistic, time grain), one [`Point`] per completed grain: `at` is the grain's start
//! (unix seconds) and `value` is [`combine`] of the instances' values for that grain (Average:
//! mean; Min/Max; Sum; Count: how many instance samples). Not divided per instance: `decide`
//! applies `dividePerInstance` (by the current capacity, at least 1). A rule reads the points
//! with `now - timeWindow <= at < now` and combines them with its `timeAggregation`; a missing
//! series or an empty window is "no data" for that rule.
//!
//! Azure's evaluation, as implemented (docs: autoscale-understanding-settings, -flapping,
//! -best-practices):
//! 1. `enabled: false` does nothing.
//! 2. Profile: the first fixedDate profile whose `[start, end)` holds now; else the recurring
//!    profile that started most recently (in its time zone; a recurring profile lasts until
//!    another starts); else the first profile with neither; else nothing applies.
//! 3. A capacity outside `[minimum, maximum]` is moved into it, ignoring cooldown; rules are
//!    evaluated on the next run.
//! 4. Scale-out if ANY scale-out rule fires: the largest resulting capacity, at most maximum.
//! 5. Otherwise, if a rule has no data: scale to `default` when below it (ignoring cooldown),
//!    never scale in.
//! 6. Otherwise scale-in only if ALL scale-in rules fire: the smallest reduction, at least
//!    minimum; then the flapping check: the largest reduction down to that target whose projected
//!    metrics fire no scale-out rule, or no scale-in at all.
//! 7. Rule-driven scaling waits for the cooldown of the rule behind the last scale action, in
//!    either direction ([`LastScale`]).
//!
//! Rule roles: direction Increase is scale-out and Decrease scale-in; `None` (ExactCount, "scale
//! to N") is scale-out when N is above the capacity and scale-in when below. PercentChangeCount
//! changes by ceil(capacity × value / 100) (Azure does not document its rounding). Projection
//! for flapping assumes the load stays the same: a per-instance value (statistic Average, Min,
//! Max) scales by current/candidate, a Sum stays, a Count of instance samples scales by
//! candidate/current, `dividePerInstance` adds current/candidate, and a Count time aggregation
//! (grains in the window) stays.
use model::autoscale::{
    AutoscaleSetting, Capacity, Direction, MetricTrigger, Operator, Profile, Recurrence, Rule,
    ScaleType, Schedule, Statistic, TimeAggregation,
};
use model::timezone::{format_utc, weekday};
use std::collections::BTreeMap;
use std::fmt;

pub mod series;

/// One metric series: a rule's metric at its statistic and time grain. Resource and metric
/// names are compared lower-cased (ARM ids and metric names are case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub resource: String,
    pub metric: String,
    pub statistic: Statistic,
    pub time_grain_secs: u64,
}

impl SeriesKey {
    pub fn of(t: &MetricTrigger) -> Self {
        SeriesKey {
            resource: t.metric_resource_uri.to_ascii_lowercase(),
            metric: t.metric_name.to_ascii_lowercase(),
            statistic: t.statistic,
            time_grain_secs: t.time_grain_secs,
        }
    }
}

/// One grain of a series: its start (unix seconds) and the value across instances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub at: u64,
    pub value: f64,
}

pub type Metrics = BTreeMap<SeriesKey, Vec<Point>>;

/// What the caller keeps between runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct History {
    pub last_scale: Option<LastScale>,
}

/// The last rule-driven scale action and the cooldown of the rule behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastScale {
    pub at: u64,
    pub cooldown_secs: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub profile: Option<ActiveProfile>,
    pub from: u32,
    /// Equal to `from` when nothing changes.
    pub to: u32,
    pub reason: Reason,
    /// The active profile's rules, evaluated (empty when none were).
    pub rules: Vec<RuleEval>,
    /// Set for a rule-driven scale: store it as [`History::last_scale`] once the scale is issued.
    pub record: Option<LastScale>,
}

impl Decision {
    pub fn new_capacity(&self) -> Option<u32> {
        (self.to != self.from).then_some(self.to)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActiveProfile {
    pub index: usize,
    pub name: String,
    pub kind: ProfileKind,
    pub capacity: Capacity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileKind {
    FixedDate,
    /// Started at this instant (unix seconds).
    Recurrence {
        since: i64,
    },
    Default,
}

/// One rule of the active profile, evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleEval {
    pub index: usize,
    pub metric: String,
    pub operator: Operator,
    pub threshold: f64,
    /// The time-aggregated value (divided per instance if asked); `None`: no data.
    pub observed: Option<f64>,
    pub fired: bool,
}

/// Why the decision is what it is. Rule numbers index the active profile's rules.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    Disabled,
    /// No fixed-date or recurring profile applies and there is no default profile.
    NoProfile,
    /// Capacity was outside the profile's limits: moved into them.
    OutOfRange,
    NoRules,
    ScaleOut {
        rule: usize,
    },
    ScaleIn {
        rule: usize,
    },
    /// Scale-in by less than the rule asked, to avoid flapping (Azure's `FlappingOccurred`).
    FlappingReduced {
        rule: usize,
        intended: u32,
    },
    /// Scale-in skipped: every smaller count would fire `out_rule` (Azure's `Flapping`).
    Flapping {
        rule: usize,
        intended: u32,
        out_rule: usize,
        projected: f64,
    },
    /// These rules have no data: up to `default` if below it, else no change.
    MetricsMissing {
        rules: Vec<usize>,
    },
    /// `rule` fired but the last scale action's cooldown lasts until `until`.
    Cooldown {
        rule: usize,
        until: u64,
    },
    AtMaximum {
        rule: usize,
    },
    AtMinimum {
        rule: usize,
    },
    /// `rule` fired and its target is the current capacity.
    AtTarget {
        rule: usize,
    },
    NoRuleFired,
    /// No scale-out rule fired and only some scale-in rules did (all must).
    NotAllScaleInRulesFired {
        fired: usize,
        of: usize,
    },
}

/// One evaluation run. `now` is unix seconds; see the module docs for `metrics`.
pub fn decide(
    s: &AutoscaleSetting,
    metrics: &Metrics,
    now: u64,
    capacity: u32,
    history: &History,
) -> Decision {
    let mut d = Decision {
        profile: None,
        from: capacity,
        to: capacity,
        reason: Reason::Disabled,
        rules: Vec::new(),
        record: None,
    };
    if !s.enabled {
        return d;
    }
    let Some(active) = active_profile(s, now) else {
        d.reason = Reason::NoProfile;
        return d;
    };
    let p = &s.profiles[active.index];
    let c = p.capacity;
    d.profile = Some(active);
    if capacity < c.minimum || capacity > c.maximum {
        d.to = capacity.clamp(c.minimum, c.maximum);
        d.reason = Reason::OutOfRange;
        return d;
    }
    if p.rules.is_empty() {
        d.reason = Reason::NoRules;
        return d;
    }
    d.rules = evaluate(p, metrics, now, capacity);
    let (to, reason, record) = choose(p, &d.rules, now, capacity, history);
    d.to = to;
    d.reason = reason;
    d.record = record;
    d
}

/// Steps 4–7 of the module docs on a capacity within the limits.
fn choose(
    p: &Profile,
    evals: &[RuleEval],
    now: u64,
    capacity: u32,
    history: &History,
) -> (u32, Reason, Option<LastScale>) {
    let run = Run { p, evals, capacity };
    if let Some(out) = run.scale_out() {
        return run.act(out, now, history);
    }
    let missing: Vec<usize> = evals
        .iter()
        .filter(|e| e.observed.is_none())
        .map(|e| e.index)
        .collect();
    if !missing.is_empty() {
        let to = capacity.max(p.capacity.default.min(p.capacity.maximum));
        return (to, Reason::MetricsMissing { rules: missing }, None);
    }
    match run.scale_in() {
        Ok(intent) => run.act(intent, now, history),
        Err(reason) => (capacity, reason, None),
    }
}

/// A rule's intended capacity, already within the profile's limits.
#[derive(Debug, Clone, Copy)]
struct Intent {
    rule: usize,
    target: u32,
    out: bool,
}

/// One run's profile, evaluated rules and capacity.
struct Run<'a> {
    p: &'a Profile,
    evals: &'a [RuleEval],
    capacity: u32,
}

impl Run<'_> {
    /// Any fired scale-out rule: the one asking for the most (the first of equals).
    fn scale_out(&self) -> Option<Intent> {
        let max = self.p.capacity.maximum;
        self.fired_with_role(true)
            .map(|r| Intent {
                rule: r,
                target: target(&self.p.rules[r], self.capacity).clamp(self.capacity, max),
                out: true,
            })
            .reduce(|best, i| if i.target > best.target { i } else { best })
    }

    /// All scale-in rules fired: the one asking for the least reduction (the first of equals).
    fn scale_in(&self) -> Result<Intent, Reason> {
        let of = self
            .p
            .rules
            .iter()
            .filter(|r| role(r, self.capacity) == Some(false))
            .count();
        let fired: Vec<usize> = self.fired_with_role(false).collect();
        if fired.is_empty() {
            return Err(Reason::NoRuleFired);
        }
        if fired.len() < of {
            return Err(Reason::NotAllScaleInRulesFired {
                fired: fired.len(),
                of,
            });
        }
        let min = self.p.capacity.minimum;
        fired
            .into_iter()
            .map(|r| Intent {
                rule: r,
                target: target(&self.p.rules[r], self.capacity).clamp(min, self.capacity),
                out: false,
            })
            .reduce(|best, i| if i.target > best.target { i } else { best })
            .ok_or(Reason::NoRuleFired)
    }

    /// Rules that fired and are scale-out (`true`) or scale-in (`false`) at this capacity.
    fn fired_with_role(&self, out: bool) -> impl Iterator<Item = usize> + '_ {
        self.evals
            .iter()
            .filter(move |e| e.fired && role(&self.p.rules[e.index], self.capacity) == Some(out))
            .map(|e| e.index)
    }

    /// Turns an intent into the decision: limits, cooldown, then (scale-in) the flapping check.
    fn act(&self, i: Intent, now: u64, history: &History) -> (u32, Reason, Option<LastScale>) {
        let (c, capacity) = (self.p.capacity, self.capacity);
        if i.target == capacity {
            let reason = match i.out {
                true if capacity >= c.maximum => Reason::AtMaximum { rule: i.rule },
                false if capacity <= c.minimum => Reason::AtMinimum { rule: i.rule },
                _ => Reason::AtTarget { rule: i.rule },
            };
            return (capacity, reason, None);
        }
        let cooldown_until = history
            .last_scale
            .map(|l| l.at.saturating_add(l.cooldown_secs))
            .filter(|until| now < *until);
        if let Some(until) = cooldown_until {
            return (
                capacity,
                Reason::Cooldown {
                    rule: i.rule,
                    until,
                },
                None,
            );
        }
        let (to, reason) = if i.out {
            (i.target, Reason::ScaleOut { rule: i.rule })
        } else {
            match self.flapping(i) {
                Ok(to) if to == i.target => (to, Reason::ScaleIn { rule: i.rule }),
                Ok(to) => (
                    to,
                    Reason::FlappingReduced {
                        rule: i.rule,
                        intended: i.target,
                    },
                ),
                Err(reason) => return (capacity, reason, None),
            }
        };
        let cooldown_secs = self.p.rules[i.rule].scale_action.cooldown_secs;
        (
            to,
            reason,
            Some(LastScale {
                at: now,
                cooldown_secs,
            }),
        )
    }

    /// The smallest count from the target up to (not including) the current capacity at which
    /// no scale-out rule fires on the projected metrics; `Err(Flapping)` if there is none.
    fn flapping(&self, i: Intent) -> Result<u32, Reason> {
        if let Some(to) = (i.target..self.capacity).find(|&n| self.fires_out_at(n).is_none()) {
            return Ok(to);
        }
        let (out_rule, projected) = self.fires_out_at(i.target).unwrap_or((i.rule, f64::NAN));
        Err(Reason::Flapping {
            rule: i.rule,
            intended: i.target,
            out_rule,
            projected,
        })
    }

    /// The first scale-out rule that would fire at `count` instances, with its projected value.
    fn fires_out_at(&self, count: u32) -> Option<(usize, f64)> {
        self.evals.iter().find_map(|e| {
            let r = &self.p.rules[e.index];
            let t = &r.metric_trigger;
            let projected = project(t, e.observed?, self.capacity, count);
            (role(r, count) == Some(true) && compare(t.operator, projected, t.threshold))
                .then_some((e.index, projected))
        })
    }
}

/// Scale-out (`Some(true)`), scale-in (`Some(false)`) or neither at this capacity.
fn role(r: &Rule, capacity: u32) -> Option<bool> {
    let a = &r.scale_action;
    match a.direction {
        Direction::Increase => Some(true),
        Direction::Decrease => Some(false),
        Direction::None => (a.value != capacity).then_some(a.value > capacity),
    }
}

/// The capacity a rule asks for, before limits.
fn target(r: &Rule, capacity: u32) -> u32 {
    let a = &r.scale_action;
    let (cap, v) = (capacity as u64, a.value as u64);
    let change = match a.kind {
        ScaleType::ExactCount => return a.value,
        ScaleType::ChangeCount => v,
        ScaleType::PercentChangeCount => (cap * v).div_ceil(100),
    };
    let t = match role(r, capacity) {
        Some(true) => cap.saturating_add(change),
        _ => cap.saturating_sub(change),
    };
    t.min(u32::MAX as u64) as u32
}

/// A rule's metric at `to` instances when it is `observed` at `from`, the load unchanged.
fn project(t: &MetricTrigger, observed: f64, from: u32, to: u32) -> f64 {
    if t.time_aggregation == TimeAggregation::Count || to == 0 || from == 0 {
        return observed;
    }
    let ratio = from as f64 / to as f64;
    let per_instance = match t.statistic {
        Statistic::Average | Statistic::Min | Statistic::Max => ratio,
        Statistic::Sum => 1.0,
        Statistic::Count => 1.0 / ratio,
    };
    let divided = if t.divide_per_instance { ratio } else { 1.0 };
    observed * per_instance * divided
}

fn compare(op: Operator, v: f64, threshold: f64) -> bool {
    match op {
        Operator::Equals => v == threshold,
        Operator::NotEquals => v != threshold,
        Operator::GreaterThan => v > threshold,
        Operator::GreaterThanOrEqual => v >= threshold,
        Operator::LessThan => v < threshold,
        Operator::LessThanOrEqual => v <= threshold,
    }
}

fn evaluate(p: &Profile, metrics: &Metrics, now: u64, capacity: u32) -> Vec<RuleEval> {
    p.rules
        .iter()
        .enumerate()
        .map(|(index, r)| {
            let t = &r.metric_trigger;
            let observed = observe(t, metrics, now, capacity);
            RuleEval {
                index,
                metric: t.metric_name.clone(),
                operator: t.operator,
                threshold: t.threshold,
                observed,
                fired: observed.is_some_and(|v| compare(t.operator, v, t.threshold)),
            }
        })
        .collect()
}

/// The rule's `timeAggregation` over its window, divided per instance if asked.
fn observe(t: &MetricTrigger, metrics: &Metrics, now: u64, capacity: u32) -> Option<f64> {
    let from = now.saturating_sub(t.time_window_secs);
    let window: Vec<Point> = metrics
        .get(&SeriesKey::of(t))?
        .iter()
        .filter(|p| p.at >= from && p.at < now && p.value.is_finite())
        .copied()
        .collect();
    let v = aggregate(t.time_aggregation, &window)?;
    Some(if t.divide_per_instance {
        v / capacity.max(1) as f64
    } else {
        v
    })
}

fn aggregate(a: TimeAggregation, pts: &[Point]) -> Option<f64> {
    let values = pts.iter().map(|p| p.value);
    let last = pts.iter().max_by_key(|p| p.at)?;
    Some(match a {
        TimeAggregation::Average => values.sum::<f64>() / pts.len() as f64,
        TimeAggregation::Minimum => values.fold(f64::INFINITY, f64::min),
        TimeAggregation::Maximum => values.fold(f64::NEG_INFINITY, f64::max),
        TimeAggregation::Total => values.sum(),
        TimeAggregation::Count => pts.len() as f64,
        TimeAggregation::Last => last.value,
    })
}

/// A statistic across the instances' values for one grain; `None` without values.
pub fn combine(statistic: Statistic, values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let it = values.iter().copied();
    Some(match statistic {
        Statistic::Average => it.sum::<f64>() / values.len() as f64,
        Statistic::Min => it.fold(f64::INFINITY, f64::min),
        Statistic::Max => it.fold(f64::NEG_INFINITY, f64::max),
        Statistic::Sum => it.sum(),
        Statistic::Count => values.len() as f64,
    })
}

/// The series the profile active at `now` reads (none when disabled or no profile applies).
pub fn series_needed(s: &AutoscaleSetting, now: u64) -> Vec<SeriesKey> {
    let Some(a) = active_profile(s, now).filter(|_| s.enabled) else {
        return Vec::new();
    };
    let mut keys: Vec<SeriesKey> = s.profiles[a.index]
        .rules
        .iter()
        .map(|r| SeriesKey::of(&r.metric_trigger))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The profile that applies at `now` (unix seconds): fixed date, recurrence, default.
pub fn active_profile(s: &AutoscaleSetting, now: u64) -> Option<ActiveProfile> {
    let now = now as i64;
    let found = |index: usize, kind| {
        let p = &s.profiles[index];
        Some(ActiveProfile {
            index,
            name: p.name.clone(),
            kind,
            capacity: p.capacity,
        })
    };
    let fixed = s.profiles.iter().position(|p| {
        matches!(&p.schedule, Schedule::FixedDate(f) if (f.start_utc..f.end_utc).contains(&now))
    });
    if let Some(i) = fixed {
        return found(i, ProfileKind::FixedDate);
    }
    let mut recurring: Option<(usize, i64)> = None;
    for (i, p) in s.profiles.iter().enumerate() {
        if let Schedule::Recurrence(r) = &p.schedule {
            let since = last_start(r, now);
            if since.is_some_and(|t| recurring.is_none_or(|(_, best)| t > best)) {
                recurring = since.map(|t| (i, t));
            }
        }
    }
    if let Some((i, since)) = recurring {
        return found(i, ProfileKind::Recurrence { since });
    }
    let default = s
        .profiles
        .iter()
        .position(|p| p.schedule == Schedule::Default)?;
    found(default, ProfileKind::Default)
}

/// The latest start of a weekly schedule at or before `now`, in the schedule's time zone.
fn last_start(r: &Recurrence, now: i64) -> Option<i64> {
    let z = &r.time_zone;
    let today = (now + z.offset_at(now)).div_euclid(86_400);
    // Distinct times only: the lists may repeat values, and their product is walked per day.
    let (mut hours, mut minutes) = (r.hours.clone(), r.minutes.clone());
    hours.sort_unstable();
    hours.dedup();
    minutes.sort_unstable();
    minutes.dedup();
    // Eight days back: today's starts may all be later than now.
    for day in (today - 7..=today).rev() {
        if !r.days.iter().any(|d| d.weekday == weekday(day)) {
            continue;
        }
        let latest = hours
            .iter()
            .flat_map(|h| minutes.iter().map(move |m| (*h as i64, *m as i64)))
            .map(|(h, m)| z.to_utc(day * 86_400 + h * 3600 + m * 60))
            .filter(|t| *t <= now)
            .max();
        if latest.is_some() {
            return latest;
        }
    }
    None
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(p) = &self.profile else {
            return f.write_str(match self.reason {
                Reason::Disabled => "The autoscale setting is disabled.",
                _ => "No profile applies now and the setting has no default profile.",
            });
        };
        write!(f, "Profile '{}': ", p.name)?;
        let (from, to, c) = (self.from, self.to, p.capacity);
        let rule = |n: usize| self.describe_rule(n);
        match &self.reason {
            Reason::Disabled | Reason::NoProfile => Ok(()),
            Reason::OutOfRange => write!(f, "capacity {from} is outside the limits [{}, {}]; scaling to {to}.", c.minimum, c.maximum),
            Reason::NoRules => write!(f, "no rules; capacity {from} is within [{}, {}].", c.minimum, c.maximum),
            Reason::ScaleOut { rule: r } => write!(f, "scale-out rule {}: scaling out from {from} to {to}.", rule(*r)),
            Reason::ScaleIn { rule: r } => write!(f, "all scale-in rules fired ({}): scaling in from {from} to {to}.", rule(*r)),
            Reason::FlappingReduced { intended, .. } => write!(f, "Scale down will occur with updated instance count to avoid flapping. Current instance count: '{from}', Intended new instance count: '{intended}'. Actual new instance count: '{to}'."),
            Reason::Flapping { intended, out_rule, projected, .. } => write!(f, "scale-in from {from} to {intended} skipped to avoid flapping: at any count from {intended} to {} the projected {} {projected:.2} would fire scale-out rule {out_rule}.", from - 1, self.rules[*out_rule].metric),
            Reason::MetricsMissing { rules } if to > from => write!(f, "metrics aren't available for rules {rules:?}; scaling to the default capacity {to} from {from}."),
            Reason::MetricsMissing { rules } => write!(f, "metrics aren't available for rules {rules:?}; capacity {from} is not below the default {}, so no scale-in.", c.default),
            Reason::Cooldown { rule: r, until } => write!(f, "rule {} fired but the last scale action's cooldown lasts until {}.", rule(*r), format_utc(*until as i64)),
            Reason::AtMaximum { rule: r } => write!(f, "scale-out rule {} fired but capacity {from} is at the maximum {}.", rule(*r), c.maximum),
            Reason::AtMinimum { rule: r } => write!(f, "scale-in rules fired ({}) but capacity {from} is at the minimum {}.", rule(*r), c.minimum),
            Reason::AtTarget { rule: r } => write!(f, "rule {} fired; its target is the current capacity {from}.", rule(*r)),
            Reason::NoRuleFired => write!(f, "no rule fired; capacity stays {from}."),
            Reason::NotAllScaleInRulesFired { fired, of } => write!(f, "{fired} of {of} scale-in rules fired (all must); capacity stays {from}."),
        }
    }
}

impl Decision {
    /// `0 (Percentage CPU 75.00 GreaterThan 70)`.
    fn describe_rule(&self, n: usize) -> String {
        match self.rules.get(n) {
            Some(e) => format!(
                "{n} ({} {} {} {})",
                e.metric,
                e.observed.map_or("no data".into(), |v| format!("{v:.2}")),
                e.operator.as_str(),
                e.threshold
            ),
            None => n.to_string(),
        }
    }
}
