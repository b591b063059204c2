//! The series [`decide`](super::decide) reads, built from the host metrics in a
//! [`metrics::Store`](crate::metrics::Store) (pure: the engine passes its store and the time).

use std::collections::BTreeMap;

use model::autoscale::AutoscaleSetting;
use model::metrics::{Aggregation, Interval, Metric, Query, Split};

use super::{combine, series_needed, Metrics, Point, SeriesKey};
use crate::metrics::{MetricResult, Store};

/// For each series the active profile reads ([`series_needed`]): one point per completed grain
/// over the longest window of the rules reading it, each the key's statistic across the
/// instances' values of that grain. `scope_of` names the store scope of a rule's
/// `metricResourceUri` (`None`: not a resource measured here, so no series: missing data).
pub fn build(
    s: &AutoscaleSetting,
    store: &Store,
    now: u64,
    scope_of: impl Fn(&str) -> Option<String>,
) -> Metrics {
    let mut out = Metrics::new();
    for key in series_needed(s, now) {
        let window = longest_window(s, &key);
        if let Some(points) = points(store, &key, window, now, &scope_of) {
            out.insert(key, points);
        }
    }
    out
}

/// The longest time window of the rules reading `key` (every profile: they share series).
fn longest_window(s: &AutoscaleSetting, key: &SeriesKey) -> u64 {
    s.profiles
        .iter()
        .flat_map(|p| &p.rules)
        .filter(|r| SeriesKey::of(&r.metric_trigger) == *key)
        .map(|r| r.metric_trigger.time_window_secs)
        .max()
        .unwrap_or(0)
}

/// `None`: the metric or resource is not one we measure, or the query was refused.
fn points(
    store: &Store,
    key: &SeriesKey,
    window: u64,
    now: u64,
    scope_of: &impl Fn(&str) -> Option<String>,
) -> Option<Vec<Point>> {
    let metric = Metric::from_name(&key.metric)?;
    let scope = scope_of(&key.resource)?;
    let grain = key.time_grain_secs.max(60);
    let end = now - now % grain;
    let q = Query {
        metrics: vec![metric],
        start: end.saturating_sub(window + grain),
        end,
        interval: Interval::Grain(grain),
        aggregations: Some(vec![metric.primary()]),
        split: Split::All,
        top: model::metrics::MAX_TOP,
        order: None,
        metadata_only: false,
    };
    let result = store.query(&scope, &q).ok()?;
    Some(combine_instances(&result, key, metric.primary()))
}

/// Per grain, the statistic over the instances that have a value for it.
fn combine_instances(result: &[MetricResult], key: &SeriesKey, agg: Aggregation) -> Vec<Point> {
    let mut by_grain: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for ts in result.iter().flat_map(|r| &r.series) {
        for p in &ts.points {
            if let Some(v) = p.agg.value(agg) {
                by_grain.entry(p.at).or_default().push(v);
            }
        }
    }
    by_grain
        .into_iter()
        .filter_map(|(at, vals)| combine(key.statistic, &vals).map(|value| Point { at, value }))
        .collect()
}
