//! Rolling upgrades for real, under continuous keep-alive load: a good image rolls out batch by
//! batch with 0 failed requests and a receipt; a bad image (its health never passes) halts after
//! the first batch, is rolled back, ends Faulted with Azure's code, and clients see 0 failures; a
//! daemon SIGKILLed mid-rollout resumes it to the same end state.
mod common;

use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

fn images(h: &Harness) -> Vec<String> {
    let mut v: Vec<String> = h
        .instances()
        .iter()
        .map(|v| {
            v["tags"]["scaleset.image"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    v.sort();
    v
}

fn latest(h: &Harness) -> Value {
    h.json(&[
        "vmss",
        "rolling-upgrade",
        "get-latest",
        "-g",
        "rg",
        "-n",
        "web",
    ])
}

#[test]
fn rolling_upgrades_under_load() {
    if !testkit::require(skip_reason()) {
        return;
    }
    let mut h = Harness::new(
        "rolling",
        "10.213.202.0/24",
        "rol",
        vec![
            // Fast probes keep the test short; the health timeout bounds how long a bad batch
            // is waited for (Azure: 5 minutes).
            ("SCALESET_PROBE_INTERVAL_MS", "1000".into()),
            ("SCALESET_ROLLING_HEALTH_TIMEOUT_SECS", "15".into()),
        ],
    );
    let home = h.home.clone();
    let lb_port = free_port();
    let lb_addr = SocketAddr::from(([127, 0, 0, 1], lb_port));

    // Three images: v1 (the example), v2 (the example with one more file), bad (its setup
    // script leaves NGINX without a site, so nothing answers on port 80).
    let drop = example_drop(&home);
    let (v2, bad) = example_variants(&home, &drop);
    for (name, dir) in [("120", &drop), ("121", &v2), ("122", &bad)] {
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
        "3",
        "--lb",
        "lb",
        "--health-probe",
        "http",
        "--upgrade-policy-mode",
        "Rolling",
    ]);
    h.ok(&[
        "vmss",
        "update",
        "-g",
        "rg",
        "-n",
        "web",
        "--set",
        "properties.upgradePolicy.rollingUpgradePolicy.rollbackFailedInstancesOnPolicyBreach=true",
    ]);
    let (ok, _, err) = h.run(&[
        "vmss",
        "rolling-upgrade",
        "get-latest",
        "-g",
        "rg",
        "-n",
        "web",
    ]);
    assert!(
        !ok && err.contains("No rolling upgrade"),
        "a policy change is not a model change: {err}"
    );
    wait_until("3 healthy instances", Duration::from_secs(60), || {
        healthy(&h.instances()) == 3
    });
    let image_id = |n: &str| {
        format!("virtualMachineProfile.storageProfile.imageReference.id=/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute/images/{n}")
    };

    // 1. A good image, under load: Completed, 0 failed requests, every instance on it.
    let load = Load::start(lb_addr, 6);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, _, err) = h.run(&[
        "vmss",
        "update",
        "-g",
        "rg",
        "-n",
        "web",
        "--set",
        &image_id("121"),
    ]);
    let (ok_n, failed) = load.finish();
    assert!(ok, "rolling upgrade to 121 failed: {err}");
    assert!(
        err.contains("rolling upgrade RollingForward") && err.contains("receipt:"),
        "no live progress: {err}"
    );
    assert_eq!(
        failed, 0,
        "failed requests during the rolling upgrade ({ok_n} ok)"
    );
    let l = latest(&h);
    assert_eq!(l["properties"]["runningStatus"]["code"], "Completed", "{l}");
    assert_eq!(
        l["properties"]["progress"]["successfulInstanceCount"], 3,
        "{l}"
    );
    assert_eq!(l["properties"]["progress"]["failedInstanceCount"], 0, "{l}");
    assert_eq!(l["properties"]["receipt"]["failedRequests"], 0, "{l}");
    assert_eq!(l["properties"]["receipt"]["non2xxResponses"], 0, "{l}");
    let per_image = l["properties"]["receipt"]["requestsPerImage"]
        .as_object()
        .unwrap();
    assert!(
        per_image.contains_key("120") && per_image.contains_key("121"),
        "{l}"
    );
    assert_eq!(images(&h), ["121", "121", "121"]);
    assert!(h
        .instances()
        .iter()
        .all(|v| v.pointer("/properties/latestModelApplied") == Some(&Value::Bool(true))));
    wait_until("3 healthy instances", Duration::from_secs(30), || {
        healthy(&h.instances()) == 3
    });

    // 2. A bad image, under load: the first batch never gets healthy; the breach faults the
    //    rollout with Azure's code, the failed instance returns to the previous image, and no
    //    client request fails.
    let load = Load::start(lb_addr, 6);
    let (ok, _, err) = h.run(&[
        "vmss",
        "update",
        "-g",
        "rg",
        "-n",
        "web",
        "--set",
        &image_id("122"),
    ]);
    assert!(!ok, "a bad image must fail the update");
    assert!(
        err.contains("MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade"),
        "{err}"
    );
    wait_until(
        "the rolled-back instance to be healthy",
        Duration::from_secs(60),
        || healthy(&h.instances()) == 3,
    );
    let (ok_n, failed) = load.finish();
    assert_eq!(
        failed, 0,
        "failed requests during the faulted rollout ({ok_n} ok)"
    );
    let l = latest(&h);
    assert_eq!(l["properties"]["runningStatus"]["code"], "Faulted", "{l}");
    assert_eq!(
        l["properties"]["error"]["code"],
        "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade",
        "{l}"
    );
    assert_eq!(l["properties"]["progress"]["failedInstanceCount"], 1, "{l}");
    assert_eq!(l["properties"]["receipt"]["failedRequests"], 0, "{l}");
    assert_eq!(
        images(&h),
        ["121", "121", "121"],
        "rollback to the previous image"
    );
    assert!(!per_image.contains_key("122"));

    // 3. The daemon SIGKILLed mid-rollout and restarted: the rollout resumes to the same end
    //    state, and no request fails.
    let load = Load::start(lb_addr, 6);
    h.ok(&[
        "vmss",
        "update",
        "-g",
        "rg",
        "-n",
        "web",
        "--no-wait",
        "--set",
        &image_id("120"),
    ]);
    wait_until(
        "the first batch to be upgraded",
        Duration::from_secs(60),
        || {
            latest(&h)["properties"]["progress"]["successfulInstanceCount"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        },
    );
    h.kill_serve();
    std::thread::sleep(Duration::from_secs(1));
    h.start_serve();
    wait_until(
        "the resumed rollout to complete",
        Duration::from_secs(120),
        || latest(&h)["properties"]["runningStatus"]["code"] == "Completed",
    );
    wait_until("3 healthy instances", Duration::from_secs(30), || {
        healthy(&h.instances()) == 3
    });
    let (ok_n, failed) = load.finish();
    assert_eq!(
        failed, 0,
        "failed requests across a daemon SIGKILL mid-rollout ({ok_n} ok)"
    );
    assert_eq!(images(&h), ["120", "120", "120"]);
    assert_eq!(
        latest(&h)["properties"]["progress"]["successfulInstanceCount"],
        3
    );

    // 4. `vmss rollback` returns the model to the last one whose rollout completed before the
    //    current one (121: the rollout to 122 faulted), rolled out like any model change.
    let load = Load::start(lb_addr, 6);
    let (ok, _, err) = h.run(&["vmss", "rollback", "-g", "rg", "-n", "web"]);
    let (ok_n, failed) = load.finish();
    assert!(ok, "rollback failed: {err}");
    assert_eq!(failed, 0, "failed requests during the rollback ({ok_n} ok)");
    assert_eq!(images(&h), ["121", "121", "121"]);
    assert_eq!(
        latest(&h)["properties"]["runningStatus"]["code"],
        "Completed"
    );
}

/// Backends the load balancer would send a new request to: healthy and not draining (None if
/// the admin socket did not answer).
fn serving(home: &Path) -> Option<usize> {
    use std::io::{Read, Write};
    let dir = std::fs::read_dir(home.join("lb"))
        .ok()?
        .flatten()
        .next()?
        .path();
    let mut s = std::os::unix::net::UnixStream::connect(dir.join("admin.sock")).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /status HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let body = resp.split_once("\r\n\r\n")?.1;
    let v: Value = serde_json::from_str(&body[body.find('{')?..=body.rfind('}')?]).ok()?;
    Some(
        v["backends"]
            .as_array()?
            .iter()
            .filter(|b| b["healthy"] == Value::Bool(true) && b["draining"] == Value::Bool(false))
            .count(),
    )
}

/// maxSurge under load: new-model instances are created and probed up before old ones are
/// drained and removed, so the serving capacity never drops below the scale set's capacity and
/// no request fails.
#[test]
fn rolling_upgrade_with_max_surge_keeps_capacity() {
    if !testkit::require(skip_reason()) {
        return;
    }
    let mut h = Harness::new(
        "rolling-surge",
        "10.213.211.0/24",
        "rps",
        vec![("SCALESET_PROBE_INTERVAL_MS", "1000".into())],
    );
    let home = h.home.clone();
    let lb_port = free_port();
    let lb_addr = SocketAddr::from(([127, 0, 0, 1], lb_port));
    let drop = example_drop(&home);
    let v2 = home.join("drop-v2");
    copy_dir(&drop, &v2);
    std::fs::write(v2.join("VERSION"), "2\n").unwrap();
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
        "3",
        "--lb",
        "lb",
        "--health-probe",
        "http",
        "--upgrade-policy-mode",
        "Rolling",
    ]);
    h.ok(&[
        "vmss",
        "update",
        "-g",
        "rg",
        "-n",
        "web",
        "--set",
        "properties.upgradePolicy.rollingUpgradePolicy.maxSurge=true",
    ]);
    wait_until("3 healthy instances", Duration::from_secs(60), || {
        healthy(&h.instances()) == 3
    });
    let ids = |h: &Harness| -> Vec<String> {
        h.instances()
            .iter()
            .filter_map(|v| v["instanceId"].as_str().map(str::to_string))
            .collect()
    };
    let before = ids(&h);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = {
        let (stop, home) = (stop.clone(), home.clone());
        std::thread::spawn(move || {
            let (mut min, mut samples) = (usize::MAX, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(n) = serving(&home) {
                    min = min.min(n);
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (min, samples)
        })
    };
    let load = Load::start(lb_addr, 6);
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
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (min_serving, samples) = monitor.join().unwrap();
    assert!(ok, "maxSurge rolling upgrade failed: {err}");
    assert_eq!(
        failed, 0,
        "failed requests during the maxSurge rollout ({ok_n} ok)"
    );
    assert!(ok_n > 100, "too little load: {ok_n}");
    assert!(samples > 20, "too few capacity samples: {samples}");
    assert!(
        min_serving >= 3,
        "serving capacity dropped to {min_serving} during the maxSurge rollout"
    );
    let l = latest(&h);
    assert_eq!(l["properties"]["runningStatus"]["code"], "Completed", "{l}");
    assert_eq!(l["properties"]["receipt"]["failedRequests"], 0, "{l}");
    assert_eq!(l["properties"]["receipt"]["non2xxResponses"], 0, "{l}");
    assert_eq!(images(&h), ["121", "121", "121"]);
    let after = ids(&h);
    assert_eq!(after.len(), 3);
    assert!(
        after.iter().all(|id| !before.contains(id)),
        "maxSurge replaces instances with new ids: {before:?} → {after:?}"
    );
}
