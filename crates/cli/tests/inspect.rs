//! Looking inside a real instance, and a bad deploy that says why: `vmss logs` reads NGINX's
//! unit starting from the instance's journal; `vmss run-command invoke` runs scripts as root
//! inside it (hostname, stderr, a non-zero exit, parameters, a timeout that kills the script
//! and what it started, an unknown command id refused like Azure); the boot log shows systemd
//! booting; and a rolling upgrade to an image whose app unit exits at start faults long before
//! Azure's 5-minute health wait, naming the unit and its journal lines in `az vmss update`'s
//! error (what the release run prints) and in `rolling-upgrade get-latest`.
mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

fn run_command(h: &Harness, args: &[&str]) -> Value {
    let mut a = vec![
        "vmss",
        "run-command",
        "invoke",
        "-g",
        "rg",
        "-n",
        "web",
        "--instance-id",
        "0",
        "--command-id",
        "RunShellScript",
        "--scripts",
    ];
    a.extend(args);
    let v = h.json(&a);
    assert_eq!(v["value"].as_array().map(Vec::len), Some(1), "{v}");
    v["value"][0].clone()
}

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or("")
}

/// The example's drop, but its app unit exits at start (Restart=on-failure gives up after
/// systemd's start limit: the unit ends `failed`).
fn exits_at_start(home: &std::path::Path, drop: &std::path::Path) -> std::path::PathBuf {
    let bad = home.join("drop-exits");
    copy_dir(drop, &bad);
    let unit = std::fs::read_to_string(bad.join("my_app.service")).unwrap();
    let unit: String = unit
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                "ExecStart=/bin/sh -c 'echo \"my_app: cannot open /etc/my_app.conf\" >&2; exit 3'"
                    .to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(bad.join("my_app.service"), unit + "\n").unwrap();
    bad
}

#[test]
fn logs_run_command_boot_log_and_a_bad_deploy() {
    if !testkit::require(skip_reason()) {
        return;
    }
    let mut h = Harness::new(
        "inspect",
        "10.213.180.0/24",
        "in",
        vec![
            ("SCALESET_PROBE_INTERVAL_MS", "1000".into()),
            ("SCALESET_RUN_COMMAND_TIMEOUT_SECS", "3".into()),
        ],
    );
    let home = h.home.clone();
    let drop = example_drop(&home);
    let bad = exits_at_start(&home, &drop);
    h.bake("130", &drop);
    h.bake("131", &bad);
    h.start_serve();
    h.setup_lb(free_port(), 2);
    h.ok(&[
        "vmss",
        "create",
        "-g",
        "rg",
        "-n",
        "web",
        "--image",
        "130",
        "--instance-count",
        "1",
        "--lb",
        "lb",
        "--health-probe",
        "http",
        "--upgrade-policy-mode",
        "Rolling",
    ]);
    wait_until("1 healthy instance", Duration::from_secs(90), || {
        healthy(&h.instances()) == 1
    });
    let computer = h.instances()[0]["properties"]["osProfile"]["computerName"]
        .as_str()
        .unwrap()
        .to_string();

    // 1. The journal, read inside the instance: NGINX's unit starting.
    let vm = ["-g", "rg", "-n", "web", "--instance-id", "0"];
    let mut args = vec!["vmss", "logs"];
    args.extend(vm);
    args.extend(["--unit", "nginx", "--lines", "50"]);
    let log = h.ok(&args);
    assert!(
        log.lines()
            .any(|l| l.contains("Started") && l.contains("nginx")),
        "{log}"
    );
    assert!(!log.contains("my_app.service"), "only nginx's lines: {log}");
    let mut args = vec!["vmss", "logs"];
    args.extend(vm);
    args.extend(["--unit=--root=/", "--lines", "5"]);
    let (ok, _, err) = h.run(&args);
    assert!(!ok && err.contains("InvalidParameter"), "{err}");

    // Following: lines arrive while the command runs; a follower that leaves ends journalctl
    // inside the instance.
    let mut follow = h
        .cmd()
        .args([
            "vmss",
            "logs",
            "-g",
            "rg",
            "-n",
            "web",
            "--instance-id",
            "0",
        ])
        .args(["--unit", "nginx", "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.contains("nginx") || first.contains("systemd"),
        "{first}"
    );
    let journalctl = |h: &Harness| {
        let v = run_command(
            h,
            &["grep -l '^journalctl$' /proc/[0-9]*/comm 2>/dev/null | wc -l"],
        );
        message(&v).lines().nth(2).unwrap_or("").trim().to_string()
    };
    assert_eq!(journalctl(&h), "1", "one journalctl follows");
    let _ = follow.kill();
    let _ = follow.wait();
    std::mem::drop(lines);
    wait_until(
        "the follower's journalctl to end",
        Duration::from_secs(10),
        || journalctl(&h) == "0",
    );

    // 2. Run command: root inside the instance, Azure's result shape.
    let v = run_command(&h, &["hostname", "id -u"]);
    assert_eq!(v["code"], "ProvisioningState/succeeded", "{v}");
    assert_eq!(v["displayStatus"], "Provisioning succeeded");
    assert_eq!(
        message(&v),
        format!("Enable succeeded: \n[stdout]\n{computer}\n0\n\n[stderr]\n")
    );
    let v = run_command(&h, &["echo out; echo oops >&2; exit 3"]);
    assert_eq!(v["code"], "ProvisioningState/failed", "{v}");
    assert_eq!(
        message(&v),
        "Enable failed: failed to execute command: command terminated with exit status=3\n\
         [stdout]\nout\n\n[stderr]\noops\n"
    );
    let v = run_command(
        &h,
        &[
            "echo \"$1-$2-$greeting\"",
            "--parameters",
            "a",
            "b",
            "greeting=hi",
        ],
    );
    assert!(message(&v).contains("[stdout]\na-b-hi\n"), "{v}");
    // The daemon's environment stays out.
    let v = run_command(&h, &["env | cut -d= -f1 | sort | tr '\\n' ' '"]);
    assert!(!message(&v).contains("SCALESET"), "{v}");
    // A timeout (3 s here) kills the script and what it started.
    let v = run_command(
        &h,
        &["sleep 600 & echo $! > /run/sleeper; echo started; sleep 600"],
    );
    assert_eq!(v["code"], "ProvisioningState/failed", "{v}");
    assert!(
        message(&v).starts_with(
            "Enable failed: failed to execute command: command timed out after 3 seconds and was killed\n[stdout]\nstarted\n"
        ),
        "{v}"
    );
    let v = run_command(
        &h,
        &["p=$(cat /run/sleeper); if [ -d /proc/$p ]; then echo alive; else echo gone; fi"],
    );
    assert!(message(&v).contains("[stdout]\ngone\n"), "{v}");
    let (ok, _, err) = h.run(&[
        "vmss",
        "run-command",
        "invoke",
        "-g",
        "rg",
        "-n",
        "web",
        "--instance-id",
        "0",
        "--command-id",
        "RunPowerShellScript",
        "--scripts",
        "x",
    ]);
    assert!(
        !ok && err.contains("(NotFound) The entity was not found in this Azure location."),
        "{err}"
    );

    // 3. The boot log: systemd's boot lines from the console.
    let mut args = vec!["vmss", "boot-diagnostics", "get-boot-log"];
    args.extend(vm);
    let boot = h.ok(&args);
    assert!(
        boot.contains("Reached target") && boot.contains("multi-user.target"),
        "{boot}"
    );
    assert!(boot.contains("nginx.service"), "{boot}");
    eprintln!("boot log (tail):\n{}", tail(&boot, 15));

    // 4. A bad deploy says why, fast: the app unit exits at start.
    let t0 = Instant::now();
    let (ok, _, err) = h.run(&[
        "vmss",
        "update",
        "-g",
        "rg",
        "-n",
        "web",
        "--set",
        "virtualMachineProfile.storageProfile.imageReference.id=/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute/images/131",
    ]);
    let took = t0.elapsed();
    eprintln!(
        "MEASURE bad deploy faulted after {:.1}s",
        took.as_secs_f64()
    );
    assert!(!ok, "the bad image must fail the update");
    // Azure's health wait is 5 minutes (this daemon keeps it): the failed unit ended it.
    assert!(
        took < Duration::from_secs(plan::rolling::DEFAULT_HEALTH_TIMEOUT_SECS),
        "{err}"
    );
    for want in [
        "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade",
        "Unit my_app.service failed on instance 0",
        "instances/0/units/my_app.service",
        "my_app: cannot open /etc/my_app.conf",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
    let l = h.json(&[
        "vmss",
        "rolling-upgrade",
        "get-latest",
        "-g",
        "rg",
        "-n",
        "web",
    ]);
    assert_eq!(l["properties"]["runningStatus"]["code"], "Faulted", "{l}");
    let d = &l["properties"]["error"]["details"][0];
    assert_eq!(d["code"], "UnitFailed", "{l}");
    assert_eq!(d["target"], "instances/0/units/my_app.service", "{l}");
    assert!(
        d["message"]
            .as_str()
            .unwrap_or("")
            .contains("my_app: cannot open /etc/my_app.conf"),
        "{l}"
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
