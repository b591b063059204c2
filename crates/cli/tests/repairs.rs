//! Automatic instance repairs for real, under continuous keep-alive load: an instance whose web
//! server dies is replaced (Replace: new id, the old one deleted), rebooted (Restart: same id,
//! new machine process) or reimaged (Reimage: same id, fresh disk) once the grace period has
//! passed, with 0 failed requests; while the
//! service is suspended nothing is repaired, and resuming it repairs; with the Application Health
//! extension (rich states) as the health source, an instance reported Unknown is replaced;
//! repairs that keep failing (a bad image) suspend the service.
mod common;

use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

fn ids(h: &Harness) -> Vec<String> {
    let mut v: Vec<String> = h
        .instances()
        .iter()
        .filter_map(|v| v["instanceId"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

fn service_state(h: &Harness) -> Value {
    let v = h.json(&["vmss", "get-instance-view", "-g", "rg", "-n", "web"]);
    v["orchestrationServices"][0]["serviceState"].clone()
}

/// Kills NGINX in instance `id`'s machine; returns the machine name.
fn kill_web_server(h: &Harness, id: &str) -> String {
    let machine = h
        .machine_pids()
        .into_iter()
        .find(|(name, _)| name.contains(&format!("-web-{id}-")))
        .unwrap_or_else(|| panic!("no machine for instance {id}: {:?}", h.machine_pids()));
    assert!(
        kill_in_machine(machine.1, "nginx") >= 1,
        "no nginx in {}",
        machine.0
    );
    machine.0
}

fn unhealthy_ids(h: &Harness) -> Vec<String> {
    h.instances()
        .iter()
        .filter(|v| {
            v.pointer("/properties/instanceView/vmHealth/status/code")
                .and_then(Value::as_str)
                == Some("HealthState/unhealthy")
        })
        .filter_map(|v| v["instanceId"].as_str().map(str::to_string))
        .collect()
}

/// `vmss set-orchestration-service-state` for AutomaticRepairs of rg/web.
fn repairs_service(h: &Harness, action: &str) {
    h.ok(&[
        "vmss",
        "set-orchestration-service-state",
        "-g",
        "rg",
        "-n",
        "web",
        "--service-name",
        "AutomaticRepairs",
        "--action",
        action,
    ]);
}

#[test]
fn automatic_repairs_under_load() {
    if !testkit::require(skip_reason()) {
        return;
    }
    let mut h = Harness::new(
        "repairs",
        "10.213.210.0/24",
        "rp",
        vec![
            ("SCALESET_PROBE_INTERVAL_MS", "1000".into()),
            // Azure's minimum grace period is 10 minutes; long enough here for a new machine
            // to boot and be probed up.
            ("SCALESET_REPAIR_GRACE_SECS", "15".into()),
        ],
    );
    let home = h.home.clone();
    let lb_port = free_port();
    let lb_addr = SocketAddr::from(([127, 0, 0, 1], lb_port));
    let drop = example_drop(&home);
    // A bad image: its setup script leaves NGINX without a site, so nothing answers on port 80.
    let (_, bad) = example_variants(&home, &drop);
    for (name, dir) in [("120", &drop), ("122", &bad)] {
        h.bake(name, dir);
    }
    h.start_serve();
    h.setup_lb(lb_port, 2);
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
    ]);
    assert_eq!(service_state(&h), "NotRunning");
    h.ok(&[
        "vmss",
        "update",
        "-g",
        "rg",
        "-n",
        "web",
        "--enable-automatic-repairs",
        "true",
    ]);
    assert_eq!(service_state(&h), "Running");
    let policy =
        &h.json(&["vmss", "show", "-g", "rg", "-n", "web"])["properties"]["automaticRepairsPolicy"];
    assert_eq!(
        *policy,
        serde_json::json!({"enabled": true, "gracePeriod": "PT10M", "repairAction": "Replace"})
    );
    wait_until("3 healthy instances", Duration::from_secs(60), || {
        healthy(&h.instances()) == 3
    });

    // 1. Replace (the default): the instance without a web server is deleted and a new one
    //    (new id) takes its place; clients see no failure.
    let before = ids(&h);
    let load = Load::start(lb_addr, 6);
    std::thread::sleep(Duration::from_millis(500));
    let sick = before[1].clone();
    let sick_machine = kill_web_server(&h, &sick);
    wait_until(
        "the sick instance to be replaced",
        Duration::from_secs(90),
        || {
            let now = ids(&h);
            now.len() == 3 && !now.contains(&sick) && healthy(&h.instances()) == 3
        },
    );
    let (ok_n, failed) = load.finish();
    assert_eq!(
        failed, 0,
        "failed requests during a Replace repair ({ok_n} ok)"
    );
    assert!(ok_n > 100, "too little load: {ok_n}");
    let after = ids(&h);
    for id in &before {
        assert_eq!(after.contains(id), *id != sick, "{before:?} → {after:?}");
    }
    assert!(
        !h.machine_pids().iter().any(|(n, _)| *n == sick_machine),
        "the replaced machine is gone"
    );
    let log = std::fs::read_to_string(home.join("serve.log")).unwrap_or_default();
    assert!(log.contains("automatic repair"), "no repair in the log");

    // 2. Restart: same instance, a new machine process, healthy again.
    h.ok(&[
        "vmss",
        "update",
        "-g",
        "rg",
        "-n",
        "web",
        "--automatic-repairs-action",
        "Restart",
    ]);
    let before = ids(&h);
    let sick = before[0].clone();
    let old_pid = h
        .machine_pids()
        .into_iter()
        .find(|(n, _)| n.contains(&format!("-web-{sick}-")))
        .unwrap()
        .1;
    let load = Load::start(lb_addr, 6);
    std::thread::sleep(Duration::from_millis(500));
    kill_web_server(&h, &sick);
    wait_until(
        "the sick instance to be restarted",
        Duration::from_secs(90),
        || {
            let rebooted = h
                .machine_pids()
                .iter()
                .any(|(n, pid)| n.contains(&format!("-web-{sick}-")) && *pid != old_pid);
            rebooted && healthy(&h.instances()) == 3
        },
    );
    let (ok_n, failed) = load.finish();
    assert_eq!(
        failed, 0,
        "failed requests during a Restart repair ({ok_n} ok)"
    );
    assert_eq!(ids(&h), before, "Restart keeps the instance");

    // 2b. Reimage: same instance, its disk reset to the model's image, a new machine process.
    h.ok(&[
        "vmss",
        "update",
        "-g",
        "rg",
        "-n",
        "web",
        "--automatic-repairs-action",
        "Reimage",
    ]);
    let sick = before[1].clone();
    let machine = |h: &Harness| {
        h.machine_pids()
            .into_iter()
            .find(|(n, _)| n.contains(&format!("-web-{sick}-")))
    };
    // (No pid while the machine is stopped for its reimage.)
    let (name, old_pid) = machine(&h).unwrap();
    // A file in the instance's writable layer: a reimage resets it (a restart would not).
    let marker = home
        .join("machines")
        .join(&name)
        .join("upper")
        .join("scaleset-test-marker");
    std::fs::write(&marker, "x").unwrap();
    let load = Load::start(lb_addr, 6);
    std::thread::sleep(Duration::from_millis(500));
    kill_web_server(&h, &sick);
    wait_until(
        "the sick instance to be reimaged",
        Duration::from_secs(90),
        || machine(&h).is_some_and(|m| m.1 != old_pid) && healthy(&h.instances()) == 3,
    );
    let (ok_n, failed) = load.finish();
    assert_eq!(
        failed, 0,
        "failed requests during a Reimage repair ({ok_n} ok)"
    );
    assert_eq!(ids(&h), before, "Reimage keeps the instance");
    assert!(!marker.exists(), "the reimage reset the instance's disk");

    // 3. Suspended: an unhealthy instance is left alone; resuming repairs it.
    repairs_service(&h, "Suspend");
    assert_eq!(service_state(&h), "Suspended");
    let sick = before[2].clone();
    let load = Load::start(lb_addr, 4);
    kill_web_server(&h, &sick);
    wait_until(
        "the sick instance to be probed down",
        Duration::from_secs(20),
        || unhealthy_ids(&h) == [sick.clone()],
    );
    // Well past the grace period (measured from its last state change, long ago).
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        unhealthy_ids(&h),
        std::slice::from_ref(&sick),
        "repaired while suspended"
    );
    repairs_service(&h, "Resume");
    assert_eq!(service_state(&h), "Running");
    wait_until(
        "the sick instance to be repaired",
        Duration::from_secs(90),
        || healthy(&h.instances()) == 3,
    );
    let (ok_n, failed) = load.finish();
    assert_eq!(
        failed, 0,
        "failed requests while suspended and after resuming ({ok_n} ok)"
    );
    assert_eq!(ids(&h), before);

    // 4. The Application Health extension (rich states) replaces the LB probe as the health
    //    source: my_app's /health body says Healthy; an instance whose web server is gone is
    //    Unknown (not Unhealthy, which is all the LB probe could say) and is replaced.
    let ext = r#"{"extensions": [{"name": "HealthExtension", "properties": {"publisher": "Microsoft.ManagedServices", "type": "ApplicationHealthLinux", "typeHandlerVersion": "2.0", "settings": {"protocol": "http", "port": 80, "requestPath": "/health", "numberOfProbes": 2}}}]}"#;
    h.ok(&[
        "vmss",
        "update",
        "-g",
        "rg",
        "-n",
        "web",
        "--set",
        &format!("virtualMachineProfile.extensionProfile={ext}"),
        "virtualMachineProfile.networkProfile.healthProbe=null",
        "properties.automaticRepairsPolicy.repairAction=Replace",
    ]);
    wait_until(
        "the extension to report 3 healthy instances",
        Duration::from_secs(30),
        || healthy(&h.instances()) == 3,
    );
    wait_until("the extension to report", Duration::from_secs(20), || {
        std::fs::read_to_string(home.join("serve.log"))
            .unwrap_or_default()
            .matches("application health changed")
            .count()
            >= 3
    });
    wait_until(
        "3 healthy instances by the extension",
        Duration::from_secs(30),
        || healthy(&h.instances()) == 3,
    );
    repairs_service(&h, "Suspend");
    let load = Load::start(lb_addr, 4);
    let sick = before[0].clone();
    kill_web_server(&h, &sick);
    let health_code = |h: &Harness, id: &str| {
        h.instances()
            .iter()
            .find(|v| v["instanceId"] == id)
            .and_then(|v| {
                v.pointer("/properties/instanceView/vmHealth/status/code")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
    };
    wait_until(
        "the extension to report Unknown",
        Duration::from_secs(20),
        || health_code(&h, &sick).as_deref() == Some("HealthState/unknown"),
    );
    repairs_service(&h, "Resume");
    wait_until(
        "the Unknown instance to be replaced",
        Duration::from_secs(90),
        || {
            let now = ids(&h);
            now.len() == 3 && !now.contains(&sick) && healthy(&h.instances()) == 3
        },
    );
    let (ok_n, failed) = load.finish();
    assert_eq!(
        failed, 0,
        "failed requests during an extension-driven repair ({ok_n} ok)"
    );

    // 5. Repairs that do not help are suspended: with a bad image as the model (Manual mode:
    //    only new instances get it), each replacement of a sick instance is sick too; after 3
    //    such repairs in a row the service is Suspended, and the other instances keep serving.
    //    Resuming after fixing the model repairs it for good.
    let image_id = |n: &str| {
        format!("virtualMachineProfile.storageProfile.imageReference.id=/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute/images/{n}")
    };
    h.ok(&[
        "vmss",
        "update",
        "-g",
        "rg",
        "-n",
        "web",
        "--set",
        &image_id("122"),
    ]);
    let load = Load::start(lb_addr, 4);
    let sick = ids(&h)[0].clone();
    kill_web_server(&h, &sick);
    wait_until(
        "repeated failed repairs to suspend the service",
        Duration::from_secs(180),
        || service_state(&h) == "Suspended",
    );
    let view = h.json(&["vmss", "get-instance-view", "-g", "rg", "-n", "web"]);
    let reason = view["orchestrationServices"][0]["message"]
        .as_str()
        .unwrap_or("");
    assert!(reason.contains("3 repairs in a row"), "{view}");
    let vms = h.instances();
    assert_eq!(vms.len(), 3, "a suspended service stops replacing");
    assert_eq!(healthy(&vms), 2);
    let log = strip_ansi(&std::fs::read_to_string(home.join("serve.log")).unwrap_or_default());
    let attempts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("automatic repair vmss=web") && l.contains("attempts="))
        .filter_map(|l| l.split("attempts=").nth(1))
        .collect();
    assert!(
        attempts.ends_with(&["0", "1", "2"]),
        "repairs of one sick instance and its sick replacements: {attempts:?}"
    );
    h.ok(&[
        "vmss",
        "update",
        "-g",
        "rg",
        "-n",
        "web",
        "--set",
        &image_id("120"),
    ]);
    repairs_service(&h, "Resume");
    wait_until(
        "the resumed service to repair with the good image",
        Duration::from_secs(90),
        || healthy(&h.instances()) == 3,
    );
    let (ok_n, failed) = load.finish();
    assert_eq!(
        failed, 0,
        "failed requests during failed repairs and the suspension ({ok_n} ok)"
    );
    assert_eq!(service_state(&h), "Running");
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
