//! A rolling upgrade of 20 instances under continuous load from many keep-alive clients
//! completes with 0 failed requests and 0 non-2xx responses (counted by the clients and by the
//! load balancer's receipt), in batches of at most maxBatchInstancePercent (20% = 4).
mod common;

use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

#[test]
fn rolling_upgrade_of_20_instances_under_load() {
    if !testkit::require(skip_reason()) {
        return;
    }
    let mut h = Harness::new(
        "rolling20",
        "10.213.212.0/24",
        "rpt",
        vec![("SCALESET_PROBE_INTERVAL_MS", "1000".into())],
    );
    let home = h.home.clone();
    let lb_port = free_port();
    let lb_addr = SocketAddr::from(([127, 0, 0, 1], lb_port));
    let drop = example_drop(&home);
    let (v2, _) = example_variants(&home, &drop);
    for (name, dir) in [("120", &drop), ("121", &v2)] {
        h.bake(name, dir);
    }
    h.start_serve();
    h.setup_lb(lb_port, 1);
    h.ok(&[
        "vmss",
        "create",
        "-g",
        "rg",
        "-n",
        "web",
        "--image",
        "120",
        "--instance-count",
        "20",
        "--lb",
        "lb",
        "--health-probe",
        "http",
        "--upgrade-policy-mode",
        "Rolling",
    ]);
    wait_until("20 healthy instances", Duration::from_secs(300), || {
        healthy(&h.instances()) == 20
    });

    let load = Load::start(lb_addr, 16);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, _, err) = h.run(&[
        "vmss",
        "update",
        "-g",
        "rg",
        "-n",
        "web",
        "--set",
        "virtualMachineProfile.storageProfile.imageReference.id=/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute/images/121",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let (ok_n, failed) = load.finish();
    assert!(ok, "rolling upgrade of 20 instances failed: {err}");
    assert_eq!(
        failed, 0,
        "failed or non-200 requests during the rollout of 20 instances ({ok_n} ok)"
    );
    assert!(ok_n > 1000, "too little load: {ok_n}");
    let l = h.json(&[
        "vmss",
        "rolling-upgrade",
        "get-latest",
        "-g",
        "rg",
        "-n",
        "web",
    ]);
    let p = &l["properties"];
    assert_eq!(p["runningStatus"]["code"], "Completed", "{l}");
    assert_eq!(p["progress"]["successfulInstanceCount"], 20, "{l}");
    assert_eq!(p["progress"]["failedInstanceCount"], 0, "{l}");
    assert_eq!(p["receipt"]["failedRequests"], 0, "{l}");
    assert_eq!(p["receipt"]["non2xxResponses"], 0, "{l}");
    // The receipt covers the rollout only (the clients ran a little longer).
    let per_image = p["receipt"]["requestsPerImage"].as_object().unwrap();
    assert!(
        per_image.get("120").and_then(Value::as_u64).unwrap_or(0) > 0
            && per_image.get("121").and_then(Value::as_u64).unwrap_or(0) > 0,
        "both images served during the rollout: {l}"
    );
    let vms = h.instances();
    assert_eq!(vms.len(), 20);
    assert!(
        vms.iter().all(|v| v["tags"]["scaleset.image"] == "121"
            && v.pointer("/properties/latestModelApplied") == Some(&Value::Bool(true))),
        "every instance on the new model"
    );
    let log = std::fs::read_to_string(home.join("serve.log")).unwrap_or_default();
    let batches = log
        .lines()
        .filter(|l| l.contains("rolling upgrade: reimaging"))
        .count();
    assert_eq!(batches, 20, "one reimage per instance");
    // Batches of maxBatchInstancePercent: 20% of 20 = 4 instances, so at least 5 batches.
    let plain = strip_ansi(&log);
    let sizes: Vec<usize> = plain
        .lines()
        .filter(|l| l.contains("rolling upgrade") && l.contains("batch="))
        .filter_map(|l| {
            let ids = l.split("ids=[").nth(1)?.split(']').next()?;
            Some(ids.split(',').filter(|x| !x.trim().is_empty()).count())
        })
        .filter(|n| *n > 0)
        .collect();
    assert!(
        sizes.len() >= 5 && sizes.iter().all(|n| *n <= 4),
        "batch sizes {sizes:?}"
    );
}

/// The daemon's log with terminal colour codes removed.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
