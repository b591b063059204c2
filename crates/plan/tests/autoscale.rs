//! Autoscale decisions, table-tested; Microsoft's documented examples are reproduced by name.
use model::autoscale::{AutoscaleSetting, Statistic};
use plan::autoscale::{
    active_profile, combine, decide, series_needed, Decision, History, LastScale, Metrics, Point,
    ProfileKind, Reason, SeriesKey,
};
use serde_json::{json, Value};

const VMSS: &str =
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web";
/// 2024-01-10T12:00:00Z, a Wednesday.
const NOW: u64 = 1_704_888_000;
const MIN: u64 = 60;

/// A rule on the scale set's metric: grain PT1M, statistic Average, window PT5M, aggregation
/// Average, ChangeCount, cooldown PT5M; `extra` is merged into `metricTrigger`/`scaleAction`.
fn rule(metric: &str, op: &str, threshold: f64, dir: &str, value: u32, extra: Value) -> Value {
    let mut r = json!({
        "metricTrigger": {"metricName": metric, "metricResourceUri": VMSS, "timeGrain": "PT1M",
            "statistic": "Average", "timeWindow": "PT5M", "timeAggregation": "Average",
            "operator": op, "threshold": threshold},
        "scaleAction": {"direction": dir, "type": "ChangeCount", "value": value.to_string(), "cooldown": "PT5M"},
    });
    model::vmss::merge_patch(&mut r, &extra);
    r
}

fn profile(name: &str, (min, max, default): (u32, u32, u32), rules: Vec<Value>) -> Value {
    json!({"name": name, "rules": rules,
        "capacity": {"minimum": min.to_string(), "maximum": max.to_string(), "default": default.to_string()}})
}

fn setting_of(profiles: Vec<Value>) -> AutoscaleSetting {
    let body = json!({"location": "local", "properties": {"enabled": true, "targetResourceUri": VMSS, "profiles": profiles}});
    model::autoscale::parse(&body).unwrap_or_else(|e| panic!("{e:?}"))
}

fn setting(limits: (u32, u32, u32), rules: Vec<Value>) -> AutoscaleSetting {
    setting_of(vec![profile("default", limits, rules)])
}

fn key(metric: &str, statistic: Statistic) -> SeriesKey {
    SeriesKey {
        resource: VMSS.to_ascii_lowercase(),
        metric: metric.to_ascii_lowercase(),
        statistic,
        time_grain_secs: 60,
    }
}

/// One point a minute, the last one starting a minute before `NOW`.
fn metrics(series: &[(&str, Statistic, &[f64])]) -> Metrics {
    series
        .iter()
        .map(|(m, st, values)| {
            let n = values.len() as u64;
            let pts = values
                .iter()
                .enumerate()
                .map(|(i, v)| Point {
                    at: NOW - (n - i as u64) * MIN,
                    value: *v,
                })
                .collect();
            (key(m, *st), pts)
        })
        .collect()
}

fn cpu(values: &[f64]) -> Metrics {
    metrics(&[("Percentage CPU", Statistic::Average, values)])
}

fn run(s: &AutoscaleSetting, m: &Metrics, capacity: u32) -> Decision {
    decide(s, m, NOW, capacity, &History::default())
}

fn cpu_out(threshold: f64, value: u32) -> Value {
    rule(
        "Percentage CPU",
        "GreaterThan",
        threshold,
        "Increase",
        value,
        json!({}),
    )
}

fn cpu_in(threshold: f64, value: u32) -> Value {
    rule(
        "Percentage CPU",
        "LessThan",
        threshold,
        "Decrease",
        value,
        json!({}),
    )
}

#[test]
fn operators() {
    let cases = [
        ("Equals", [false, true, false]),
        ("NotEquals", [true, false, true]),
        ("GreaterThan", [false, false, true]),
        ("GreaterThanOrEqual", [false, true, true]),
        ("LessThan", [true, false, false]),
        ("LessThanOrEqual", [true, true, false]),
    ];
    for (op, want) in cases {
        let s = setting(
            (1, 10, 1),
            vec![rule("Percentage CPU", op, 50.0, "Increase", 1, json!({}))],
        );
        for (v, fires) in [49.0, 50.0, 51.0].into_iter().zip(want) {
            let d = run(&s, &cpu(&[v; 5]), 3);
            assert_eq!(d.rules[0].fired, fires, "{op} {v}");
            let want = if fires {
                Reason::ScaleOut { rule: 0 }
            } else {
                Reason::NoRuleFired
            };
            assert_eq!(
                (&d.reason, d.new_capacity()),
                (&want, fires.then_some(4)),
                "{op} {v}"
            );
        }
    }
}

#[test]
fn time_aggregations_over_the_window() {
    // Oldest first; the window (PT5M) holds the last five: 10, 50, 30, 20, 40.
    let values = [99.0, 10.0, 50.0, 30.0, 20.0, 40.0];
    for (agg, want) in [
        ("Average", 30.0),
        ("Minimum", 10.0),
        ("Maximum", 50.0),
        ("Total", 150.0),
        ("Count", 5.0),
        ("Last", 40.0),
    ] {
        let r = rule(
            "Percentage CPU",
            "GreaterThan",
            1000.0,
            "Increase",
            1,
            json!({"metricTrigger": {"timeAggregation": agg}}),
        );
        let d = run(&setting((1, 10, 1), vec![r]), &cpu(&values), 2);
        assert_eq!(d.rules[0].observed, Some(want), "{agg}");
    }
}

#[test]
fn window_bounds_and_series_keys() {
    let r = cpu_out(50.0, 1);
    let s = setting((1, 10, 1), vec![r]);
    let at = |at: u64, value: f64| Point { at, value };
    let k = key("Percentage CPU", Statistic::Average);
    let observed =
        |pts: Vec<Point>| run(&s, &Metrics::from([(k.clone(), pts)]), 2).rules[0].observed;
    // The grain starting at now - window is in; one starting at now is not (it is not over).
    assert_eq!(
        observed(vec![at(NOW - 5 * MIN, 80.0), at(NOW, 10.0)]),
        Some(80.0)
    );
    assert_eq!(observed(vec![at(NOW - 5 * MIN - 1, 80.0)]), None);
    assert_eq!(
        observed(vec![at(NOW - MIN, f64::NAN), at(NOW - 2 * MIN, 60.0)]),
        Some(60.0)
    );
    // Another statistic or grain is another series.
    let other = |st, grain| {
        Metrics::from([(
            SeriesKey {
                statistic: st,
                time_grain_secs: grain,
                ..k.clone()
            },
            vec![at(NOW - MIN, 80.0)],
        )])
    };
    assert_eq!(
        run(&s, &other(Statistic::Max, 60), 2).rules[0].observed,
        None
    );
    assert_eq!(
        run(&s, &other(Statistic::Average, 120), 2).rules[0].observed,
        None
    );
    assert_eq!(series_needed(&s, NOW), vec![k]);
}

#[test]
fn statistics_combine_instances() {
    let v = [10.0, 40.0, 25.0];
    for (st, want) in [
        (Statistic::Average, 25.0),
        (Statistic::Min, 10.0),
        (Statistic::Max, 40.0),
        (Statistic::Sum, 75.0),
        (Statistic::Count, 3.0),
    ] {
        assert_eq!(combine(st, &v), Some(want), "{st:?}");
    }
    assert_eq!(combine(Statistic::Count, &[]), None);
}

#[test]
fn divide_per_instance() {
    // Docs: a queue-length threshold is per instance; 2 instances and `>= 50` need 100 messages.
    let r = rule(
        "Messages",
        "GreaterThanOrEqual",
        50.0,
        "Increase",
        1,
        json!({"metricTrigger": {"statistic": "Sum", "dividePerInstance": true}}),
    );
    let s = setting((1, 10, 1), vec![r]);
    for (total, fires) in [(99.0, false), (100.0, true)] {
        let d = run(
            &s,
            &metrics(&[("Messages", Statistic::Sum, &[total; 5])]),
            2,
        );
        assert_eq!(
            (d.rules[0].observed, d.rules[0].fired),
            (Some(total / 2.0), fires)
        );
    }
}

#[test]
fn scale_types() {
    let act = |dir: &str, kind: &str, value: u32| {
        let (op, threshold) = if dir == "Decrease" {
            ("LessThan", 1000.0)
        } else {
            ("GreaterThan", 0.0)
        };
        rule(
            "Percentage CPU",
            op,
            threshold,
            dir,
            value,
            json!({"scaleAction": {"type": kind}}),
        )
    };
    // (rule, capacity, new capacity); limits 0–100.
    let cases = [
        (act("Increase", "ChangeCount", 3), 10, Some(13)),
        (act("Decrease", "ChangeCount", 3), 10, Some(7)),
        (act("Decrease", "ChangeCount", 30), 10, Some(0)),
        // Percent changes round up: 10% of 15 is 1.5 → 2.
        (act("Increase", "PercentChangeCount", 10), 15, Some(17)),
        (act("Decrease", "PercentChangeCount", 10), 15, Some(13)),
        (act("Increase", "PercentChangeCount", 50), 0, None),
        (act("Increase", "ExactCount", 12), 10, Some(12)),
        (act("Increase", "ExactCount", 8), 10, None),
        (act("Decrease", "ExactCount", 8), 10, Some(8)),
        (act("Decrease", "ExactCount", 12), 10, None),
        // `az monitor autoscale rule create --scale to 12`: direction None, either way.
        (act("None", "ExactCount", 12), 10, Some(12)),
        (act("None", "ExactCount", 4), 10, Some(4)),
        (act("None", "ExactCount", 10), 10, None),
    ];
    for (r, capacity, want) in cases {
        let s = setting((0, 100, 0), vec![r.clone()]);
        let d = run(&s, &cpu(&[50.0; 5]), capacity);
        assert_eq!(d.new_capacity(), want, "{r} at {capacity}: {d}");
    }
    let s = setting((0, 100, 0), vec![act("Increase", "ExactCount", 8)]);
    assert_eq!(
        run(&s, &cpu(&[50.0; 5]), 10).reason,
        Reason::AtTarget { rule: 0 }
    );
}

/// Docs: "Rule 1 specifies a scale-out by three instances, and rule 2 specifies a scale-out by
/// five. If both rules are triggered, autoscale scales out by five instances."
#[test]
fn any_scale_out_rule_largest_capacity() {
    let s = setting(
        (1, 20, 1),
        vec![cpu_out(50.0, 3), cpu_out(60.0, 5), cpu_out(95.0, 9)],
    );
    let d = run(&s, &cpu(&[70.0; 5]), 4);
    assert_eq!((d.to, &d.reason), (9, &Reason::ScaleOut { rule: 1 }));
    // "if one rule specifies scale-out by three instances and another by 15%, the higher".
    let pct = rule(
        "Percentage CPU",
        "GreaterThan",
        50.0,
        "Increase",
        15,
        json!({"scaleAction": {"type": "PercentChangeCount"}}),
    );
    let s = setting((1, 100, 1), vec![cpu_out(50.0, 3), pct]);
    assert_eq!(run(&s, &cpu(&[70.0; 5]), 10).to, 13);
    assert_eq!(run(&s, &cpu(&[70.0; 5]), 40).to, 46);
    // A scale-out that fires wins over scale-in rules that fire too.
    let s = setting((1, 20, 1), vec![cpu_in(80.0, 1), cpu_out(50.0, 2)]);
    assert_eq!(
        run(&s, &cpu(&[70.0; 5]), 4).reason,
        Reason::ScaleOut { rule: 1 }
    );
}

/// Docs: two scale-in rules, -50% and -3: "If the first rule results in five instances and the
/// second rule results in seven, autoscale scales in to seven instances."
#[test]
fn all_scale_in_rules_smallest_reduction() {
    let half = rule(
        "Percentage CPU",
        "LessThan",
        30.0,
        "Decrease",
        50,
        json!({"scaleAction": {"type": "PercentChangeCount"}}),
    );
    let mem = rule(
        "Available Memory Bytes",
        "GreaterThan",
        1e9,
        "Decrease",
        3,
        json!({}),
    );
    let s = setting((1, 20, 1), vec![half, mem, cpu_out(90.0, 1)]);
    let both = metrics(&[
        ("Percentage CPU", Statistic::Average, &[10.0; 5]),
        ("Available Memory Bytes", Statistic::Average, &[2e9; 5]),
    ]);
    let d = run(&s, &both, 10);
    assert_eq!((d.to, &d.reason), (7, &Reason::ScaleIn { rule: 1 }));
    let one = metrics(&[
        ("Percentage CPU", Statistic::Average, &[10.0; 5]),
        ("Available Memory Bytes", Statistic::Average, &[5e8; 5]),
    ]);
    let d = run(&s, &one, 10);
    assert_eq!(
        (d.to, d.reason),
        (10, Reason::NotAllScaleInRulesFired { fired: 1, of: 2 })
    );
}

#[test]
fn limits() {
    let s = setting((3, 6, 3), vec![cpu_out(50.0, 2), cpu_in(20.0, 2)]);
    let m = |v: f64| cpu(&[v; 5]);
    // (capacity, metric, to, reason): docs "3–6: 1→3, 8→6", also without metrics and in cooldown.
    let cases = [
        (1, Metrics::new(), 3, Reason::OutOfRange),
        (8, m(90.0), 6, Reason::OutOfRange),
        (5, m(90.0), 6, Reason::ScaleOut { rule: 0 }),
        (6, m(90.0), 6, Reason::AtMaximum { rule: 0 }),
        (4, m(10.0), 3, Reason::ScaleIn { rule: 1 }),
        (3, m(10.0), 3, Reason::AtMinimum { rule: 1 }),
        (4, m(30.0), 4, Reason::NoRuleFired),
    ];
    let busy = History {
        last_scale: Some(LastScale {
            at: NOW - MIN,
            cooldown_secs: 3600,
        }),
    };
    for (capacity, metrics, to, reason) in cases {
        let d = run(&s, &metrics, capacity);
        assert_eq!((d.to, &d.reason), (to, &reason), "{capacity}: {d}");
        if reason == Reason::OutOfRange {
            assert_eq!(
                decide(&s, &metrics, NOW, capacity, &busy).to,
                to,
                "limits ignore cooldown"
            );
            assert_eq!(d.record, None);
        }
    }
    // minimum = maximum: no rule moves it.
    let fixed = setting((4, 4, 4), vec![]);
    assert_eq!(run(&fixed, &Metrics::new(), 4).reason, Reason::NoRules);
    assert_eq!(run(&fixed, &Metrics::new(), 2).to, 4);
}

/// Docs: scale-out cooldown 60 min, scale-in cooldown 40 min. Scale-out at 10:00 blocks until
/// 11:00; scale-in at 13:00 blocks any scale until 13:40, so a 13:20 spike scales out at 13:40.
#[test]
fn cooldown_of_the_last_rule_that_fired() {
    let out = rule(
        "Percentage CPU",
        "GreaterThan",
        70.0,
        "Increase",
        1,
        json!({"scaleAction": {"cooldown": "PT60M"}}),
    );
    let inn = rule(
        "Percentage CPU",
        "LessThan",
        30.0,
        "Decrease",
        1,
        json!({"scaleAction": {"cooldown": "PT40M"}}),
    );
    let s = setting((1, 10, 1), vec![out, inn]);
    let day = NOW - 12 * 3600;
    let at = |h: u64, m: u64| day + h * 3600 + m * MIN;
    let eval = |now: u64, v: f64, capacity: u32, h: &History| {
        let pts: Vec<Point> = (1..=5)
            .map(|i| Point {
                at: now - i * MIN,
                value: v,
            })
            .collect();
        decide(
            &s,
            &Metrics::from([(key("Percentage CPU", Statistic::Average), pts)]),
            now,
            capacity,
            h,
        )
    };
    let mut h = History::default();
    let d = eval(at(10, 0), 90.0, 2, &h);
    assert_eq!(
        (d.to, d.record),
        (
            3,
            Some(LastScale {
                at: at(10, 0),
                cooldown_secs: 3600
            })
        )
    );
    h.last_scale = d.record;
    let d = eval(at(10, 30), 90.0, 3, &h);
    assert_eq!(
        d.reason,
        Reason::Cooldown {
            rule: 0,
            until: at(11, 0)
        }
    );
    assert!(d.to_string().contains("until 2024-01-10T11:00:00Z"), "{d}");
    assert_eq!(
        eval(at(10, 30), 10.0, 3, &h).reason,
        Reason::Cooldown {
            rule: 1,
            until: at(11, 0)
        }
    );
    let d = eval(at(13, 0), 10.0, 3, &h);
    assert_eq!(
        (d.to, d.record),
        (
            2,
            Some(LastScale {
                at: at(13, 0),
                cooldown_secs: 2400
            })
        )
    );
    h.last_scale = d.record;
    assert_eq!(
        eval(at(13, 20), 90.0, 2, &h).reason,
        Reason::Cooldown {
            rule: 0,
            until: at(13, 40)
        }
    );
    assert_eq!(
        eval(at(13, 40), 90.0, 2, &h).reason,
        Reason::ScaleOut { rule: 0 }
    );
}

/// autoscale-flapping.md, first table: out > 50% by 1, in < 30% by 1. At T1 the CPU of 56% is
/// 28% on two instances; scaling in would bring back 56%, so autoscale defers the scale-in.
#[test]
fn flapping_cpu_example_defers() {
    let s = setting((1, 10, 1), vec![cpu_out(50.0, 1), cpu_in(30.0, 1)]);
    assert_eq!(run(&s, &cpu(&[56.0; 5]), 1).to, 2, "T0: scale out");
    let d = run(&s, &cpu(&[28.0; 5]), 2);
    assert_eq!(
        (d.to, &d.reason),
        (
            2,
            &Reason::Flapping {
                rule: 1,
                intended: 1,
                out_rule: 0,
                projected: 56.0
            }
        ),
        "T1: {d}"
    );
    assert!(d.to_string().contains("skipped to avoid flapping"), "{d}");
    assert_eq!(
        run(&s, &cpu(&[24.0; 5]), 2).to,
        1,
        "below 25% the scale-in is safe"
    );
}

/// autoscale-flapping.md, thread counts: out >= 600, in < 600 (no margin) on 3 instances with
/// 1250 threads: 1250 / 2 = 625 would scale out again, so no scale-in. With in < 400, 1180
/// threads (393 per instance) scale in to 2 (590 each).
#[test]
fn flapping_thread_count_example() {
    let threads = |per: f64| metrics(&[("Thread Count", Statistic::Average, &[per; 5])]);
    let out = rule(
        "Thread Count",
        "GreaterThanOrEqual",
        600.0,
        "Increase",
        1,
        json!({}),
    );
    let s = setting(
        (1, 10, 1),
        vec![
            out.clone(),
            rule("Thread Count", "LessThan", 600.0, "Decrease", 1, json!({})),
        ],
    );
    assert_eq!(run(&s, &threads(625.0), 2).to, 3, "T0");
    let d = run(&s, &threads(1250.0 / 3.0), 3);
    assert!(
        matches!(d.reason, Reason::Flapping { intended: 2, projected, .. } if (projected - 625.0).abs() < 1e-9),
        "T1: {d}"
    );
    let margin = setting(
        (1, 10, 1),
        vec![
            out,
            rule("Thread Count", "LessThan", 400.0, "Decrease", 1, json!({})),
        ],
    );
    assert_eq!(
        run(&margin, &threads(1250.0 / 3.0), 3).reason,
        Reason::NoRuleFired,
        "T1 with a margin"
    );
    let d = run(&margin, &threads(1180.0 / 3.0), 3);
    assert_eq!((d.to, d.reason), (2, Reason::ScaleIn { rule: 1 }), "T2");
}

/// autoscale-flapping.md, "scaling by more than one instance": out by 20 when requests >= 200
/// per instance or CPU > 70%; in by 10 when requests <= 50 per instance. At 30 instances, 65%
/// CPU and 1500 requests, scaling in to 20 would project 97.5% CPU. Autoscale looks for the
/// largest safe reduction: 28 instances (69.6%). The doc's table says 27, but 27 projects
/// 72.2% > 70%, which its own rule says would scale out; we follow the rule.
#[test]
fn flapping_reduces_the_scale_in() {
    let requests = json!({"metricTrigger": {"statistic": "Sum", "dividePerInstance": true}});
    let s = setting(
        (1, 50, 1),
        vec![
            rule(
                "Requests",
                "GreaterThanOrEqual",
                200.0,
                "Increase",
                20,
                requests.clone(),
            ),
            cpu_out(70.0, 20),
            rule(
                "Requests",
                "LessThanOrEqual",
                50.0,
                "Decrease",
                10,
                requests,
            ),
        ],
    );
    let m = |reqs: f64| {
        metrics(&[
            ("Percentage CPU", Statistic::Average, &[65.0; 5]),
            ("Requests", Statistic::Sum, &[reqs; 5]),
        ])
    };
    assert_eq!(run(&s, &m(3000.0), 30).reason, Reason::NoRuleFired, "T0");
    let d = run(&s, &m(1500.0), 30);
    assert_eq!(
        (d.to, &d.reason),
        (
            28,
            &Reason::FlappingReduced {
                rule: 2,
                intended: 20
            }
        ),
        "T1: {d}"
    );
    assert_eq!(
        d.record,
        Some(LastScale {
            at: NOW,
            cooldown_secs: 300
        })
    );
    assert!(d.to_string().contains("Current instance count: '30', Intended new instance count: '20'. Actual new instance count: '28'"), "{d}");
}

/// The FlappingOccurred activity-log record in autoscale-flapping.md: current 6, intended 1
/// (in by 5), actual 4, with its rules (Requests, dividePerInstance, out >= 3 by 10 on the
/// Average statistic, in < 3 by 5 on Max, Maximum over the window). The doc gives no metric
/// values; these reproduce its counts.
#[test]
fn flapping_activity_log_example() {
    let t = |stat: &str| json!({"metricTrigger": {"statistic": stat, "timeAggregation": "Maximum", "dividePerInstance": true}, "scaleAction": {"cooldown": "PT1M"}});
    let s = setting(
        (1, 30, 1),
        vec![
            rule(
                "Requests",
                "GreaterThanOrEqual",
                3.0,
                "Increase",
                10,
                t("Average"),
            ),
            rule("Requests", "LessThan", 3.0, "Decrease", 5, t("Max")),
        ],
    );
    let m = metrics(&[
        ("Requests", Statistic::Average, &[6.0; 5]),
        ("Requests", Statistic::Max, &[12.0; 5]),
    ]);
    let d = run(&s, &m, 6);
    assert_eq!(
        (d.to, d.reason),
        (
            4,
            Reason::FlappingReduced {
                rule: 1,
                intended: 1
            }
        )
    );
}

#[test]
fn missing_metrics() {
    let s = setting((1, 10, 4), vec![cpu_out(70.0, 1), cpu_in(30.0, 1)]);
    let busy = History {
        last_scale: Some(LastScale {
            at: NOW,
            cooldown_secs: 600,
        }),
    };
    // Below the default: up to it, cooldown or not; at or above: no scale-in.
    for (capacity, h, to) in [
        (2, History::default(), 4),
        (2, busy, 4),
        (4, History::default(), 4),
        (7, History::default(), 7),
    ] {
        let d = decide(&s, &Metrics::new(), NOW, capacity, &h);
        assert_eq!(
            (d.to, &d.reason, d.record),
            (to, &Reason::MetricsMissing { rules: vec![0, 1] }, None),
            "{capacity}"
        );
    }
    let d = run(&s, &Metrics::new(), 2);
    assert!(
        d.to_string().contains(
            "metrics aren't available for rules [0, 1]; scaling to the default capacity 4"
        ),
        "{d}"
    );
    // A series whose points are all outside the window is no data too.
    let stale = Metrics::from([(
        key("Percentage CPU", Statistic::Average),
        vec![Point {
            at: NOW - 3600,
            value: 10.0,
        }],
    )]);
    assert_eq!(
        run(&s, &stale, 7).reason,
        Reason::MetricsMissing { rules: vec![0, 1] }
    );
    // A scale-out rule with data still scales out; a scale-in never happens on partial data.
    let s = setting(
        (1, 10, 4),
        vec![
            cpu_out(70.0, 1),
            rule("Memory", "LessThan", 30.0, "Decrease", 1, json!({})),
        ],
    );
    assert_eq!(
        run(&s, &cpu(&[90.0; 5]), 7).reason,
        Reason::ScaleOut { rule: 0 }
    );
    let d = run(&s, &cpu(&[10.0; 5]), 7);
    assert_eq!(
        (d.to, d.reason),
        (7, Reason::MetricsMissing { rules: vec![1] })
    );
}

#[test]
fn disabled_does_nothing() {
    let mut s = setting((3, 6, 3), vec![cpu_out(50.0, 2)]);
    s.enabled = false;
    let d = run(&s, &cpu(&[90.0; 5]), 1);
    assert_eq!((d.to, &d.reason, &d.profile), (1, &Reason::Disabled, &None));
    assert_eq!(d.to_string(), "The autoscale setting is disabled.");
    assert!(series_needed(&s, NOW).is_empty());
}

fn recurring(
    name: &str,
    zone: &str,
    days: &[&str],
    hour: u8,
    minute: u8,
    limits: (u32, u32, u32),
) -> Value {
    let mut p = profile(name, limits, vec![]);
    p["recurrence"] = json!({"frequency": "Week", "schedule": {"timeZone": zone, "days": days, "hours": [hour], "minutes": [minute]}});
    p
}

fn fixed(name: &str, zone: Option<&str>, start: &str, end: &str, limits: (u32, u32, u32)) -> Value {
    let mut p = profile(name, limits, vec![]);
    p["fixedDate"] = json!({"start": start, "end": end});
    if let Some(z) = zone {
        p["fixedDate"]["timeZone"] = json!(z);
    }
    p
}

/// The profile's name at an instant (RFC 3339).
fn chosen(s: &AutoscaleSetting, at: &str) -> Option<String> {
    let t = model::timezone::parse_datetime(at).unwrap();
    active_profile(s, (t.local - t.offset.unwrap()) as u64).map(|p| p.name)
}

#[test]
fn profile_selection() {
    let s = setting_of(vec![
        profile("default", (1, 10, 2), vec![]),
        recurring("weekend", "UTC", &["Saturday", "Sunday"], 6, 0, (1, 3, 1)),
        recurring("weekday", "UTC", &["Monday"], 4, 0, (3, 20, 3)),
        fixed(
            "black friday",
            Some("Pacific Standard Time"),
            "2024-11-29T00:00:00",
            "2024-11-30T00:00:00",
            (10, 50, 10),
        ),
    ]);
    let name = |at| chosen(&s, at);
    let cases = [
        // Recurring profiles last until another starts; the default never applies between them.
        ("2024-01-13T05:59:59Z", "weekday"),
        ("2024-01-13T06:00:00Z", "weekend"),
        ("2024-01-14T23:00:00Z", "weekend"),
        ("2024-01-15T03:59:00Z", "weekend"),
        ("2024-01-15T04:00:00Z", "weekday"),
        ("2024-01-17T12:00:00Z", "weekday"),
        // Fixed dates come first, read in their time zone (Pacific midnight is 08:00Z).
        ("2024-11-29T07:59:59Z", "weekday"),
        ("2024-11-29T08:00:00Z", "black friday"),
        ("2024-11-30T07:59:59Z", "black friday"),
        ("2024-11-30T08:00:00Z", "weekend"),
    ];
    for (at, want) in cases {
        assert_eq!(name(at).as_deref(), Some(want), "{at}");
    }
    let only_fixed = setting_of(vec![fixed(
        "event",
        None,
        "2024-01-10T00:00:00Z",
        "2024-01-11T00:00:00Z",
        (2, 2, 2),
    )]);
    assert_eq!(
        chosen(&only_fixed, "2024-01-10T12:00:00Z").as_deref(),
        Some("event")
    );
    assert_eq!(chosen(&only_fixed, "2024-01-11T00:00:00Z"), None);
    let d = decide(
        &only_fixed,
        &Metrics::new(),
        NOW + 86_400,
        3,
        &History::default(),
    );
    assert_eq!((d.to, d.reason), (3, Reason::NoProfile));
    let with_default = setting_of(vec![
        fixed(
            "event",
            None,
            "2024-01-10T00:00:00Z",
            "2024-01-11T00:00:00Z",
            (2, 2, 2),
        ),
        profile("default", (1, 5, 1), vec![]),
    ]);
    assert_eq!(
        chosen(&with_default, "2024-01-11T00:00:00Z").as_deref(),
        Some("default")
    );
    assert_eq!(
        active_profile(&with_default, NOW).unwrap().kind,
        ProfileKind::FixedDate
    );
}

/// autoscale-multiprofile.md's template: Weekday from Monday 04:00, Weekend from Saturday 00:01
/// (E. Europe Standard Time there; GTB Standard Time has the same EU offsets here).
#[test]
fn recurring_profiles_in_time_zones() {
    let s = setting_of(vec![
        recurring(
            "Weekday profile",
            "GTB Standard Time",
            &["Monday"],
            4,
            0,
            (3, 20, 3),
        ),
        recurring(
            "Weekend profile",
            "GTB Standard Time",
            &["Saturday"],
            0,
            1,
            (1, 3, 1),
        ),
    ]);
    let cases = [
        // Winter: UTC+2; summer: UTC+3.
        ("2024-01-12T22:00:59Z", "Weekday profile"),
        ("2024-01-12T22:01:00Z", "Weekend profile"),
        ("2024-01-15T01:59:59Z", "Weekend profile"),
        ("2024-01-15T02:00:00Z", "Weekday profile"),
        ("2024-07-12T21:01:00Z", "Weekend profile"),
        ("2024-07-15T00:59:59Z", "Weekend profile"),
        ("2024-07-15T01:00:00Z", "Weekday profile"),
    ];
    for (at, want) in cases {
        assert_eq!(chosen(&s, at).as_deref(), Some(want), "{at}");
    }
    let since = active_profile(&s, NOW).unwrap().kind;
    let monday_4am = model::timezone::parse_datetime("2024-01-08T02:00:00Z")
        .unwrap()
        .local;
    assert_eq!(since, ProfileKind::Recurrence { since: monday_4am });
    // A fixed offset, and Pacific time across the US change (2024-03-10).
    for (zone, at, want) in [
        ("UTC+05:30", "2024-01-15T03:29:59Z", "b"),
        ("UTC+05:30", "2024-01-15T03:30:00Z", "a"),
        ("Pacific Standard Time", "2024-03-04T16:59:59Z", "b"),
        ("Pacific Standard Time", "2024-03-04T17:00:00Z", "a"),
        ("Pacific Standard Time", "2024-03-11T15:59:59Z", "b"),
        ("Pacific Standard Time", "2024-03-11T16:00:00Z", "a"),
    ] {
        let s = setting_of(vec![
            recurring("a", zone, &["1"], 9, 0, (1, 2, 1)),
            recurring("b", zone, &["Sunday"], 0, 0, (1, 2, 1)),
        ]);
        assert_eq!(chosen(&s, at).as_deref(), Some(want), "{zone} {at}");
    }
}

/// The chosen profile's limits and rules are the ones applied.
#[test]
fn the_active_profile_decides() {
    let s = setting_of(vec![
        profile("default", (1, 10, 2), vec![cpu_out(50.0, 1)]),
        recurring("night", "UTC", &["Wednesday"], 11, 0, (5, 8, 5)),
    ]);
    let d = run(&s, &cpu(&[90.0; 5]), 3);
    assert_eq!(
        (d.profile.as_ref().unwrap().name.as_str(), d.to, &d.reason),
        ("night", 5, &Reason::OutOfRange)
    );
    assert!(
        d.to_string()
            .starts_with("Profile 'night': capacity 3 is outside the limits [5, 8]; scaling to 5."),
        "{d}"
    );
    assert_eq!(run(&s, &cpu(&[90.0; 5]), 6).reason, Reason::NoRules);
    assert!(series_needed(&s, NOW).is_empty());
}
