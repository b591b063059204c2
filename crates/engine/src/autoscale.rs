//! Azure Monitor autoscale: every evaluation interval (30 s, `EngineConfig::autoscale_interval_ms`
//! in tests) each enabled setting whose scale set exists is evaluated by the pure
//! `plan::autoscale::decide` over the host metrics (`Core::query_metrics`) and the setting's
//! history; a new capacity is set like `az vmss scale` does (a merge put of `sku.capacity`, so
//! scale-in keeps the scale-in policy, protection and draining). Actions and the skips worth
//! showing (deduplicated) go to the setting's activity log.
use super::*;
use control::{ActivityEvent, AutoscaleState, Put};
use model::autoscale::AutoscaleSetting;
use plan::autoscale::{Decision, Metrics as SeriesMap, Reason};

/// Time between two evaluations of every setting (Azure: 30–60 s).
pub const AUTOSCALE_INTERVAL: Duration = Duration::from_secs(30);

pub(crate) async fn autoscale_loop(st: Arc<Core>) {
    let every = st
        .cfg
        .autoscale_interval_ms
        .map_or(AUTOSCALE_INTERVAL, Duration::from_millis)
        .max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        evaluate_autoscale(&st, unix_now());
    }
}

/// One evaluation of every setting at `now` (unix seconds; tests pass their own).
pub fn evaluate_autoscale(st: &Core, now: u64) {
    let settings = match st.store.list(control::AUTOSCALE, None, None) {
        Ok(v) => v,
        Err(e) => return warn!(error = %error_chain(&e), "cannot list autoscale settings"),
    };
    let subs: HashSet<String> = settings.into_iter().map(|(k, _)| k.sub).collect();
    for sub in subs {
        let list = match st.cp.list_autoscale(&sub, None) {
            Ok(l) => l,
            Err(e) => {
                warn!(%sub, error = %e, "cannot read autoscale settings");
                continue;
            }
        };
        for (res, s) in list {
            if s.enabled {
                if let Err(e) = evaluate_one(st, &res, &s, now) {
                    warn!(setting = %res.name, error = %e, "autoscale evaluation failed");
                }
            }
        }
    }
}

/// What one evaluation concluded, before it is logged.
enum Outcome {
    Scaled(Decision),
    Failed(Decision, String),
    /// Worth showing: the dedupe key and the sentence.
    Skipped(String, u32, String),
    Quiet,
}

fn evaluate_one(
    st: &Core,
    res: &Res,
    s: &AutoscaleSetting,
    now: u64,
) -> Result<(), control::CommandError> {
    let target = control::target_res(s);
    let Some(doc) = st.vmss_doc(&target)?.filter(|d| !d.deleting) else {
        return Ok(());
    };
    let capacity = doc
        .arm
        .pointer("/sku/capacity")
        .and_then(Value::as_u64)
        .unwrap_or(0) as u32;
    let state = st.cp.autoscale_state(res)?;
    let rolling = st
        .rollout(&target)?
        .is_some_and(|r| r.state.phase != plan::rolling::Phase::Done);
    let outcome = if rolling {
        let msg = format!("A rolling upgrade of '{}' is in progress; autoscale waits for it to finish (capacity {capacity}).", target.name);
        Outcome::Skipped("RollingUpgrade".into(), capacity, msg)
    } else {
        let metrics = series(st, s, now);
        let d = plan::autoscale::decide(s, &metrics, now, capacity, &state.history());
        act(st, &target, d)
    };
    record(st, res, &state, outcome, now)
}

/// Carries out a decision: a new capacity is a merge put of `sku.capacity`.
fn act(st: &Core, target: &Res, d: Decision) -> Outcome {
    let Some(to) = d.new_capacity() else {
        return match skip_key(&d.reason) {
            Some(k) => Outcome::Skipped(k.into(), d.from, d.to_string()),
            None => Outcome::Quiet,
        };
    };
    let patch = Put::Merge(serde_json::json!({"sku": {"capacity": to}}));
    match st.cp.put_vmss(&st.images, target, patch) {
        Ok(_) => {
            info!(vmss = %target.name, from = d.from, to, "autoscale: {d}");
            Outcome::Scaled(d)
        }
        Err(e) => {
            let msg = e.to_string();
            Outcome::Failed(d, msg)
        }
    }
}

/// The reasons a skip is shown for (not "no rule fired" every run).
fn skip_key(r: &Reason) -> Option<&'static str> {
    Some(match r {
        Reason::Cooldown { .. } => "Cooldown",
        Reason::Flapping { .. } => "Flapping",
        Reason::AtMaximum { .. } => "AtMaximum",
        Reason::AtMinimum { .. } => "AtMinimum",
        Reason::MetricsMissing { .. } => "MetricsMissing",
        _ => return None,
    })
}

/// Stores the history and the activity log event an outcome calls for.
fn record(
    st: &Core,
    res: &Res,
    before: &AutoscaleState,
    outcome: Outcome,
    now: u64,
) -> Result<(), control::CommandError> {
    let event = |op: &str, status: &str, from: u32, to: u32, description: String| ActivityEvent {
        event_timestamp: model::timezone::format_utc(now as i64),
        operation_name: op.into(),
        status: status.into(),
        old_capacity: from,
        new_capacity: to,
        description,
    };
    let op = |d: &Decision| {
        if d.to > d.from {
            "Autoscale scale up"
        } else {
            "Autoscale scale down"
        }
    };
    match outcome {
        Outcome::Quiet if before.last_skip.is_none() => Ok(()),
        Outcome::Quiet => st.cp.update_autoscale_state(res, |s| s.last_skip = None),
        Outcome::Skipped(key, cap, msg) => {
            let key = format!("{key}/{cap}");
            if before.last_skip.as_deref() == Some(key.as_str()) {
                return Ok(());
            }
            let e = event("Autoscale evaluation", "Skipped", cap, cap, msg);
            st.cp.update_autoscale_state(res, |s| {
                s.last_skip = Some(key);
                s.log.push(e);
            })
        }
        Outcome::Scaled(d) => {
            let e = event(op(&d), "Succeeded", d.from, d.to, d.to_string());
            st.cp.update_autoscale_state(res, |s| {
                if let Some(l) = d.record {
                    s.last_scale_at = Some(l.at);
                    s.last_scale_cooldown_secs = l.cooldown_secs;
                }
                s.last_skip = None;
                s.log.push(e);
            })
        }
        Outcome::Failed(d, err) => {
            // A refusal repeats every run until something changes: logged once, like a skip.
            let key = format!("Failed/{}/{}", d.from, d.to);
            if before.last_skip.as_deref() == Some(key.as_str()) {
                return Ok(());
            }
            let e = event(op(&d), "Failed", d.from, d.to, format!("{d} Failed: {err}"));
            st.cp.update_autoscale_state(res, |s| {
                s.last_skip = Some(key);
                s.log.push(e);
            })
        }
    }
}

/// The series the active profile reads (`plan::autoscale::series`), from the scale sets'
/// host metrics.
fn series(st: &Core, s: &AutoscaleSetting, now: u64) -> SeriesMap {
    st.metrics.with_store(|store| {
        plan::autoscale::series::build(s, store, now, |uri| {
            let id = model::ids::ResourceId::parse(uri).ok()?;
            id.is("Microsoft.Compute", "virtualMachineScaleSets")
                .then(|| {
                    store::Key::new(VMSS, &id.subscription, &id.resource_group, &id.name).path()
                })
        })
    })
}
