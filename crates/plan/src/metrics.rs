//! Host metrics per instance, as Azure Monitor reports them: cumulative readings (CPU time,
//! memory in use and its cap, veth byte counters) become per-minute values of
//! `model::metrics::Metric`, kept for [`RETENTION_MINUTES`] per instance, and are aggregated per
//! query grain, for each instance (`VMName`) or across the scale set.
//!
//! Each reading after the previous one of the same instance yields one value per metric:
//! `Percentage CPU` = CPU time used / (wall time × the instance's vCPUs) × 100;
//! `Available Memory Bytes` = cap − in use; `Network In/Out Total` = bytes since the previous
//! reading. A minute holds min/max/sum/count of its values, so a grain's `total` is the sum of
//! its values (bytes moved), `average` their mean, `count` how many readings there were.
//!
//! Memory: one [`Minute`] (136 bytes) per instance and minute, at most [`RETENTION_MINUTES`] of
//! them: about 96 KiB per instance kept 12 hours, 9.3 MiB for 100 instances.
use model::metrics::{Aggregation, Metric, Query, Split};
use model::ModelError;
use std::collections::{BTreeMap, VecDeque};

/// How long values are kept: 12 hours of minutes.
pub const RETENTION_MINUTES: usize = 12 * 60;
/// Readings further apart than this yield no rates (the machine was down, or the sampler).
pub const MAX_GAP_MS: u64 = 5 * 60_000;
/// The most data points one query may return (metrics × series × points).
pub const MAX_POINTS: u64 = 200_000;

/// One reading of an instance: counters are cumulative since some reset (a new cgroup, a new
/// link); `None` where the host does not account it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// When it was read, in Unix milliseconds.
    pub at_ms: u64,
    pub cpu_ns: Option<u64>,
    /// CPUs the instance may use: its size's vCPUs (uncapped: the host's).
    pub vcpus: u32,
    pub memory_used: Option<u64>,
    pub memory_limit: Option<u64>,
    pub net_in: Option<u64>,
    pub net_out: Option<u64>,
}

/// Values combined: least, greatest, sum and how many.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agg {
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub count: u32,
}

impl Default for Agg {
    fn default() -> Self {
        Agg {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            count: 0,
        }
    }
}

impl Agg {
    pub fn add(&mut self, v: f64) {
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        self.count += 1;
    }

    pub fn merge(&mut self, o: &Agg) {
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
        self.count += o.count;
    }

    /// The aggregation's value; `None` without values.
    pub fn value(&self, a: Aggregation) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        Some(match a {
            Aggregation::Average => self.sum / f64::from(self.count),
            Aggregation::Minimum => self.min,
            Aggregation::Maximum => self.max,
            Aggregation::Total => self.sum,
            Aggregation::Count => f64::from(self.count),
        })
    }
}

/// One minute of one instance: an [`Agg`] per metric (in `Metric::ALL` order).
#[derive(Debug, Clone)]
pub struct Minute {
    /// Minutes since the Unix epoch.
    pub minute: u64,
    pub aggs: [Agg; 4],
}

/// One instance's minutes, oldest first, and its last reading.
#[derive(Debug, Default)]
pub struct Series {
    last: Option<Sample>,
    minutes: VecDeque<Minute>,
}

/// The values reading `s` yields after `prev` (same instance), per metric.
pub fn values(prev: Option<&Sample>, s: &Sample) -> [Option<f64>; 4] {
    let mut out = [None; 4];
    out[Metric::AvailableMemoryBytes.index()] = s
        .memory_limit
        .zip(s.memory_used)
        .map(|(l, u)| l.saturating_sub(u) as f64);
    let Some(p) = prev.filter(|p| p.at_ms < s.at_ms && s.at_ms - p.at_ms <= MAX_GAP_MS) else {
        return out;
    };
    // A counter that went down was reset: no rate from it.
    let delta = |a: Option<u64>, b: Option<u64>| b?.checked_sub(a?).map(|d| d as f64);
    let wall_ns = (s.at_ms - p.at_ms) as f64 * 1e6 * f64::from(s.vcpus.max(1));
    out[Metric::PercentageCpu.index()] =
        delta(p.cpu_ns, s.cpu_ns).map(|d| (d / wall_ns * 100.0).clamp(0.0, 100.0));
    out[Metric::NetworkInTotal.index()] = delta(p.net_in, s.net_in);
    out[Metric::NetworkOutTotal.index()] = delta(p.net_out, s.net_out);
    out
}

impl Series {
    /// Adds a reading; an older or repeated one is ignored, `None` (the instance does not run)
    /// forgets the last so the next reading starts afresh.
    pub fn record(&mut self, s: Option<Sample>) {
        let Some(s) = s else {
            self.last = None;
            return;
        };
        if self.last.is_some_and(|l| l.at_ms >= s.at_ms) {
            return;
        }
        let vals = values(self.last.as_ref(), &s);
        self.last = Some(s);
        let minute = s.at_ms / 60_000;
        let slot = self.slot(minute);
        for (agg, v) in slot.aggs.iter_mut().zip(vals) {
            if let Some(v) = v {
                agg.add(v);
            }
        }
    }

    /// The bucket of `minute` (the newest, as readings only move forward); older minutes past
    /// the retention make room first.
    fn slot(&mut self, minute: u64) -> &mut Minute {
        if self.minutes.back().is_none_or(|m| m.minute != minute) {
            self.prune(minute);
            if self.minutes.len() == self.minutes.capacity() {
                // Grow by doubling, but never past the retention (VecDeque alone would).
                let cap = self.minutes.capacity();
                let more = cap.max(16).min(RETENTION_MINUTES.saturating_sub(cap));
                self.minutes.reserve_exact(more.max(1));
            }
            self.minutes.push_back(Minute {
                minute,
                aggs: [Agg::default(); 4],
            });
        }
        let last = self.minutes.len() - 1;
        &mut self.minutes[last]
    }

    /// Drops minutes older than the retention before `minute`.
    fn prune(&mut self, minute: u64) {
        while self
            .minutes
            .front()
            .is_some_and(|m| m.minute + RETENTION_MINUTES as u64 <= minute)
        {
            self.minutes.pop_front();
        }
    }

    /// The last reading (cumulative counters, memory now); `None` after a stop.
    pub fn last(&self) -> Option<&Sample> {
        self.last.as_ref()
    }

    pub fn minutes(&self) -> &VecDeque<Minute> {
        &self.minutes
    }

    /// Per grain of `q`, the values of `metric`.
    fn grains(&self, metric: Metric, q: &Query) -> Vec<Agg> {
        let (first, grain) = (q.first_point(), q.grain_secs());
        let mut out = vec![Agg::default(); q.points() as usize];
        for m in &self.minutes {
            let at = m.minute * 60;
            if at >= first && at < q.end {
                out[((at - first) / grain) as usize].merge(&m.aggs[metric.index()]);
            }
        }
        out
    }
}

/// One data point: the grain's start (Unix seconds) and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub at: u64,
    pub agg: Agg,
}

/// One series of a metric: an instance's (`vm`) or, without a split, the scale set's.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeSeries {
    pub vm: Option<String>,
    /// Empty for a metadata query.
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricResult {
    pub metric: Metric,
    pub series: Vec<TimeSeries>,
}

/// The series of every scale set (`scope`), per VM name.
#[derive(Debug, Default)]
pub struct Store {
    scopes: BTreeMap<String, BTreeMap<String, Series>>,
}

impl Store {
    /// Adds a reading of `vm` in `scope` (see [`Series::record`]).
    pub fn record(&mut self, scope: &str, vm: &str, s: Option<Sample>) {
        let set = self.scopes.entry(scope.to_string()).or_default();
        match set.get_mut(vm) {
            Some(series) => series.record(s),
            None if s.is_some() => set.entry(vm.to_string()).or_default().record(s),
            None => {}
        }
    }

    /// Drops what is older than the retention at `now_ms`, and series with nothing left (the
    /// instances of a deleted scale set age out like this).
    pub fn prune(&mut self, now_ms: u64) {
        let minute = now_ms / 60_000;
        for set in self.scopes.values_mut() {
            for s in set.values_mut() {
                s.prune(minute);
            }
            set.retain(|_, s| !s.minutes.is_empty() || s.last.is_some());
        }
        self.scopes.retain(|_, set| !set.is_empty());
    }

    /// Bytes the kept minutes take (capacity, not only length).
    pub fn memory_bytes(&self) -> usize {
        let per = std::mem::size_of::<Minute>();
        self.scopes
            .values()
            .flat_map(|set| set.values())
            .map(|s| s.minutes.capacity() * per + std::mem::size_of::<Series>())
            .sum()
    }

    pub fn series(&self, scope: &str, vm: &str) -> Option<&Series> {
        self.scopes.get(scope)?.get(vm)
    }

    /// The query's answer for the scale set `scope`.
    pub fn query(&self, scope: &str, q: &Query) -> Result<Vec<MetricResult>, ModelError> {
        let empty = BTreeMap::new();
        let set = self.scopes.get(scope).unwrap_or(&empty);
        check_size(set, q)?;
        Ok(q.metrics
            .iter()
            .map(|&metric| MetricResult {
                metric,
                series: series_of(set, metric, q),
            })
            .collect())
    }
}

/// Refuses a query whose answer would exceed [`MAX_POINTS`].
fn check_size(set: &BTreeMap<String, Series>, q: &Query) -> Result<(), ModelError> {
    let series = match &q.split {
        Split::None => 1,
        Split::All => set.len().min(q.top),
        Split::Only(v) => v.len().min(set.len()).min(q.top),
    } as u64;
    let points = if q.metadata_only { 1 } else { q.points() };
    let total = (q.metrics.len() as u64)
        .saturating_mul(series)
        .saturating_mul(points);
    if total > MAX_POINTS {
        return Err(ModelError::new(
            "BadRequest",
            format!("The query would return {total} data points; at most {MAX_POINTS}: use a larger interval, a shorter timespan or a smaller top."),
        ));
    }
    Ok(())
}

fn series_of(set: &BTreeMap<String, Series>, metric: Metric, q: &Query) -> Vec<TimeSeries> {
    let chosen: Vec<(&String, &Series)> = match &q.split {
        Split::None => {
            let points = points(across(set, metric, q), q);
            return vec![TimeSeries { vm: None, points }];
        }
        Split::All => set.iter().collect(),
        Split::Only(names) => set
            .iter()
            .filter(|(vm, _)| names.iter().any(|n| n.eq_ignore_ascii_case(vm)))
            .collect(),
    };
    let mut ranked: Vec<(&String, Vec<Agg>, Agg)> = chosen
        .into_iter()
        .map(|(vm, s)| {
            let g = s.grains(metric, q);
            let mut whole = Agg::default();
            g.iter().for_each(|a| whole.merge(a));
            (vm, g, whole)
        })
        .filter(|(_, _, whole)| whole.count > 0)
        .collect();
    rank(&mut ranked, q);
    ranked
        .into_iter()
        .take(q.top)
        .map(|(vm, g, _)| TimeSeries {
            vm: Some(vm.clone()),
            points: points(g, q),
        })
        .collect()
}

/// The grains of every instance together (no split).
fn across(set: &BTreeMap<String, Series>, metric: Metric, q: &Query) -> Vec<Agg> {
    let mut all = vec![Agg::default(); q.points() as usize];
    for s in set.values() {
        for (a, g) in all.iter_mut().zip(s.grains(metric, q)) {
            a.merge(&g);
        }
    }
    all
}

/// Grains as points at their start times (none for a metadata query).
fn points(grains: Vec<Agg>, q: &Query) -> Vec<Point> {
    if q.metadata_only {
        return vec![];
    }
    let (first, grain) = (q.first_point(), q.grain_secs());
    (0u64..)
        .zip(grains)
        .map(|(i, agg)| Point {
            at: first + i * grain,
            agg,
        })
        .collect()
}

/// By `orderby` over the whole timespan, else by VM name with instance ids in numeric order.
fn rank(v: &mut [(&String, Vec<Agg>, Agg)], q: &Query) {
    v.sort_by(|a, b| natural(a.0, b.0));
    if let Some((agg, desc)) = q.order {
        v.sort_by(|a, b| {
            let (x, y) = (a.2.value(agg), b.2.value(agg));
            let o = x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
            if desc {
                o.reverse()
            } else {
                o
            }
        });
    }
}

/// `web_2` before `web_10`.
fn natural(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |s: &str| {
        let (prefix, id) = s.rsplit_once('_').unwrap_or((s, ""));
        (prefix.to_string(), id.parse::<u64>().ok(), s.to_string())
    };
    key(a).cmp(&key(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::metrics::{Interval, Params};

    const T0: u64 = 1_704_067_200; // 2024-01-01T00:00:00Z
    const S: &str = "sub/rg/vmss/web";

    fn sample(secs: u64, cpu_s: f64, used: u64, net: (u64, u64)) -> Sample {
        Sample {
            at_ms: (T0 + secs) * 1000,
            cpu_ns: Some((cpu_s * 1e9) as u64),
            vcpus: 2,
            memory_used: Some(used),
            memory_limit: Some(1000),
            net_in: Some(net.0),
            net_out: Some(net.1),
        }
    }

    fn query(p: Params) -> Query {
        model::metrics::parse_query(&p, T0 + 3600).unwrap()
    }

    /// The values one reading yields after another.
    #[test]
    fn values_table() {
        let a = sample(0, 10.0, 400, (1000, 50));
        let cases: Vec<(Option<Sample>, Sample, [Option<f64>; 4])> = vec![
            // 15 s, 6 CPU-seconds on 2 vCPUs: 20 %.
            (
                Some(a),
                sample(15, 16.0, 300, (1600, 80)),
                [Some(20.0), Some(700.0), Some(600.0), Some(30.0)],
            ),
            // No previous reading: memory only.
            (None, a, [None, Some(600.0), None, None]),
            // Counters reset (a restarted machine): no rates.
            (
                Some(a),
                sample(15, 1.0, 300, (10, 5)),
                [None, Some(700.0), None, None],
            ),
            // More CPU than the quota allows (jitter): capped at 100 %.
            (
                Some(a),
                sample(1, 13.0, 400, (1000, 50)),
                [Some(100.0), Some(600.0), Some(0.0), Some(0.0)],
            ),
            // Too long a gap: no rates.
            (
                Some(a),
                sample(301, 20.0, 1200, (2000, 60)),
                [None, Some(0.0), None, None],
            ),
        ];
        for (prev, s, want) in cases {
            assert_eq!(values(prev.as_ref(), &s), want, "{prev:?} -> {s:?}");
        }
        let uncapped = Sample {
            memory_limit: None,
            cpu_ns: None,
            ..a
        };
        assert_eq!(
            values(
                Some(&a),
                &Sample {
                    at_ms: a.at_ms + 1000,
                    ..uncapped
                }
            ),
            [None, None, Some(0.0), Some(0.0)]
        );
    }

    /// Four readings a minute for two instances; grains, aggregations, splits, order and top.
    #[test]
    fn grains_and_splits() {
        let mut st = Store::default();
        // web_2: 50 % CPU for two minutes, 100 bytes in per 15 s.
        // web_10: 25 % CPU during the first minute only.
        for i in 0..=8u64 {
            let t = i * 15;
            st.record(S, "web_2", Some(sample(t, t as f64, 500, (100 * i, 0))));
            if i <= 4 {
                st.record(S, "web_10", Some(sample(t, t as f64 / 2.0, 900, (0, 0))));
            }
        }
        let span = "2024-01-01T00:00:00Z/2024-01-01T00:03:00Z";
        let avg = |p: &Point| p.agg.value(Aggregation::Average);
        let q = query(Params {
            timespan: Some(span),
            metricnames: Some("Percentage CPU,Network In Total"),
            ..Default::default()
        });
        let r = st.query(S, &q).unwrap();
        let cpu = &r[0].series;
        assert_eq!(cpu.len(), 1);
        assert_eq!(cpu[0].vm, None);
        let at: Vec<u64> = cpu[0].points.iter().map(|p| p.at - T0).collect();
        assert_eq!(at, [0, 60, 120]);
        // Minute 0: web_2 three readings at 50 %, web_10 three at 25 %; minute 1: web_2 four at
        // 50 % and web_10 one; minute 2: web_2's last.
        let got: Vec<Option<f64>> = cpu[0].points.iter().map(avg).collect();
        assert_eq!(got, [Some(37.5), Some(45.0), Some(50.0)]);
        let net = &r[1].series[0].points;
        let totals: Vec<Option<f64>> = net
            .iter()
            .map(|p| p.agg.value(Aggregation::Total))
            .collect();
        assert_eq!(totals, [Some(300.0), Some(400.0), Some(100.0)]);

        let split = query(Params {
            timespan: Some(span),
            filter: Some("VMName eq '*'"),
            ..Default::default()
        });
        let r = st.query(S, &split).unwrap();
        let names: Vec<&str> = r[0]
            .series
            .iter()
            .map(|s| s.vm.as_deref().unwrap())
            .collect();
        assert_eq!(names, ["web_2", "web_10"]);
        assert_eq!(
            r[0].series[1].points.iter().map(avg).collect::<Vec<_>>(),
            [Some(25.0), Some(25.0), None]
        );

        let ordered = Query {
            order: Some((Aggregation::Average, false)),
            top: 1,
            ..split.clone()
        };
        let r = st.query(S, &ordered).unwrap();
        assert_eq!(r[0].series.len(), 1);
        assert_eq!(r[0].series[0].vm.as_deref(), Some("web_10"));

        let one = query(Params {
            timespan: Some(span),
            filter: Some("VMName eq 'WEB_10' or VMName eq 'web_99'"),
            ..Default::default()
        });
        let r = st.query(S, &one).unwrap();
        assert_eq!(r[0].series.len(), 1);

        let full = Query {
            interval: Interval::Full,
            ..q.clone()
        };
        let r = st.query(S, &full).unwrap();
        let p = &r[0].series[0].points;
        assert_eq!(p.len(), 1);
        let a = p[0].agg;
        assert_eq!((a.count, a.min, a.max), (12, 25.0, 50.0));

        let five = query(Params {
            timespan: Some(span),
            interval: Some("PT5M"),
            aggregation: Some("count,maximum"),
            ..Default::default()
        });
        let r = st.query(S, &five).unwrap();
        assert_eq!(r[0].series[0].points.len(), 1);
        assert_eq!(
            r[0].series[0].points[0].agg.value(Aggregation::Count),
            Some(12.0)
        );

        let meta = Query {
            metadata_only: true,
            ..split
        };
        assert!(st.query(S, &meta).unwrap()[0]
            .series
            .iter()
            .all(|s| s.points.is_empty()));
        // Another scale set has nothing.
        let r = st.query("other", &q).unwrap();
        assert_eq!(r[0].series[0].points.iter().filter_map(avg).count(), 0);
    }

    #[test]
    fn retention_and_memory_are_bounded() {
        let mut st = Store::default();
        let day = 24 * 60;
        for m in 0..day as u64 {
            st.record(S, "web_0", Some(sample(m * 60, m as f64, 1, (m, m))));
        }
        let s = st.series(S, "web_0").unwrap();
        assert_eq!(s.minutes().len(), RETENTION_MINUTES);
        assert_eq!(
            s.minutes().front().unwrap().minute,
            (T0 / 60) + (day - RETENTION_MINUTES) as u64
        );
        assert_eq!(std::mem::size_of::<Minute>(), 136);
        assert!(
            s.minutes().capacity() <= RETENTION_MINUTES,
            "{}",
            s.minutes().capacity()
        );
        assert!(st.memory_bytes() < 100 * 1024);
        // Out of order and repeated readings are ignored; a stopped instance forgets the last.
        let before = s.minutes().back().unwrap().aggs[0].count;
        st.record(S, "web_0", Some(sample(60, 0.0, 1, (0, 0))));
        assert_eq!(
            st.series(S, "web_0")
                .unwrap()
                .minutes()
                .back()
                .unwrap()
                .aggs[0]
                .count,
            before
        );
        st.record(S, "web_0", None);
        st.record(S, "nobody", None);
        assert!(st.series(S, "nobody").is_none());
        // Twelve hours after its last reading an instance is gone.
        st.prune((T0 + (day as u64 + RETENTION_MINUTES as u64) * 60) * 1000);
        assert!(st.series(S, "web_0").is_none());
        assert_eq!(st.memory_bytes(), 0);
    }

    #[test]
    fn too_many_points_are_refused() {
        let mut st = Store::default();
        for i in 0..20 {
            st.record(S, &format!("web_{i}"), Some(sample(0, 0.0, 0, (0, 0))));
        }
        let p = Params {
            timespan: Some("P30D"),
            metricnames: Some(
                "Percentage CPU,Available Memory Bytes,Network In Total,Network Out Total",
            ),
            ..Default::default()
        };
        assert!(
            st.query(S, &query(p)).is_ok(),
            "4 metrics × 30 days of minutes"
        );
        let split = Params {
            filter: Some("VMName eq '*'"),
            ..p
        };
        let e = st.query(S, &query(split)).unwrap_err();
        assert_eq!(e.code, "BadRequest");
        assert!(st
            .query(
                S,
                &query(Params {
                    interval: Some("PT1H"),
                    ..split
                })
            )
            .is_ok());
    }
}
