//! The autoscale decision loop's cost per evaluation at N instances (default 100): one
//! evaluation is what the engine does per setting every 30 s, minus the SQLite reads and the
//! lock — `plan::autoscale::series::build` (a metrics query per series over the store, the
//! statistic across instances per grain) and `plan::autoscale::decide`.
//!
//! The store holds 12 h (its retention) of 15 s readings for every instance, as a daemon that
//! has run that long has; the setting is az's usual pair of CPU rules (out above 70 %, in below
//! 30 %, 5-minute windows) plus a memory rule. Built as an example of `plan` (no I/O, no tokio):
//! `cargo run --release -p plan --example autoscale_cost -- [INSTANCES] [EVALUATIONS]`; prints
//! one JSON line. `bench/run --only autoscale` runs it.
use std::time::Instant;

use plan::autoscale::{decide, series, History};
use plan::metrics::{Sample, Store};
use serde_json::json;

const SCOPE: &str =
    "/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachinescalesets/web";
const TARGET: &str =
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web";

fn setting() -> model::autoscale::AutoscaleSetting {
    let rule = |metric: &str, op: &str, threshold: u64, direction: &str| {
        json!({
            "metricTrigger": {"metricName": metric, "metricResourceUri": TARGET, "timeGrain": "PT1M",
                "statistic": "Average", "timeWindow": "PT5M", "timeAggregation": "Average",
                "operator": op, "threshold": threshold},
            "scaleAction": {"direction": direction, "type": "ChangeCount", "value": "1", "cooldown": "PT5M"}})
    };
    let body = json!({"location": "local", "properties": {"enabled": true, "targetResourceUri": TARGET,
        "profiles": [{"name": "cpu", "capacity": {"minimum": "2", "maximum": "1000", "default": "2"},
            "rules": [rule("Percentage CPU", "GreaterThan", 70, "Increase"),
                      rule("Percentage CPU", "LessThan", 30, "Decrease"),
                      rule("Available Memory Bytes", "LessThan", 100_000_000, "Increase")]}]}});
    model::autoscale::parse(&body).expect("the bench's setting")
}

/// 12 h of readings every 15 s for `n` instances, CPU varying per instance and over time.
fn store(n: usize, end_ms: u64) -> Store {
    let mut st = Store::default();
    let start = end_ms - 12 * 3600 * 1000;
    let mut cpu = vec![0u64; n];
    let mut at = start;
    while at <= end_ms {
        for (i, c) in cpu.iter_mut().enumerate() {
            // 10–60 % of one vCPU over the 15 s.
            *c += 15_000_000_000 * (10 + ((at / 60_000 + i as u64) % 50)) / 100;
            let s = Sample {
                at_ms: at,
                cpu_ns: Some(*c),
                vcpus: 1,
                memory_used: Some(300 << 20),
                memory_limit: Some(1 << 30),
                net_in: Some(at),
                net_out: Some(at / 2),
            };
            st.record(SCOPE, &format!("web_{i}"), Some(s));
        }
        at += 15_000;
    }
    st
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let evals: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let end_s: u64 = 1_767_225_600 + 12 * 3600; // 2026-01-01T12:00:00Z
    let t = Instant::now();
    let st = store(n, end_s * 1000);
    let fill_s = t.elapsed().as_secs_f64();
    let s = setting();
    let scope_of = |_: &str| Some(SCOPE.to_string());
    let history = History::default();
    // Warm-up, and a check that the evaluation sees every series.
    let m = series::build(&s, &st, end_s, scope_of);
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(m.values().all(|p| p.len() >= 5), "{m:?}");
    let mut batches = Vec::new();
    let mut changed = 0u32;
    for _ in 0..5 {
        let t = Instant::now();
        for k in 0..evals / 5 {
            // Times 30 s apart, like the loop.
            let now = end_s - 3600 + u64::from(k % 120) * 30;
            let m = series::build(&s, &st, now, scope_of);
            let d = decide(&s, &m, now, n as u32, &history);
            changed += u32::from(d.new_capacity().is_some());
        }
        batches.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(evals / 5));
    }
    batches.sort_by(f64::total_cmp);
    let decide_only = {
        let m = series::build(&s, &st, end_s, scope_of);
        let t = Instant::now();
        for _ in 0..evals {
            std::hint::black_box(decide(&s, &m, end_s, n as u32, &history));
        }
        t.elapsed().as_secs_f64() * 1e6 / f64::from(evals)
    };
    println!(
        "{}",
        json!({"instances": n, "evaluations": evals, "store_fill_s": fill_s,
            "store_bytes": st.memory_bytes(),
            "us_per_evaluation_median": batches[2], "us_per_evaluation_min": batches[0],
            "us_per_evaluation_max": batches[4], "us_decide_only": decide_only,
            "evaluations_that_scaled": changed})
    );
}
