//! Autoscale for real: a scale set of two booted machines behind our load balancer with an
//! autoscale setting (min 2, max 3) and CPU rules made with the CLI. HTTP load through the LB
//! (the example's CPU-heavy page, `/work?ms=N`, next to clients requesting pages) drives the
//! machines' `Percentage CPU` past the scale-out threshold: a third instance comes and joins
//! after its probe. Once the load stops (a light trickle keeps checking the LB), the five-minute
//! window clears and it scales back in, draining first. No request fails. The daemon evaluates
//! every 5 s (`SCALESET_AUTOSCALE_INTERVAL_MS`) instead of 30 s; grains, windows and cooldowns
//! are Azure's minimums, so this takes about six minutes.
mod common;

use common::*;
use serde_json::Value;
use std::io::BufReader;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Scale out when a grain's CPU, averaged over the instances, passes this in the window.
const OUT: &str = "Percentage CPU > 15 max 5m";
/// Scale in when no grain of the window had more than this.
const IN: &str = "Percentage CPU < 8 max 5m";

fn capacity(h: &Harness) -> u64 {
    h.json(&["vmss", "show", "-g", "rg", "-n", "web"])["sku"]["capacity"]
        .as_u64()
        .unwrap_or(0)
}

/// One keep-alive client, a request every 100 ms: counts (ok, failed) until stopped.
fn trickle(addr: SocketAddr, stop: Arc<AtomicBool>, counts: Arc<[AtomicU64; 2]>) {
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .ok()
                .map(|s| {
                    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                    BufReader::new(s)
                });
        }
        let ok = match conn.as_mut() {
            Some(c) => matches!(http_get(c, "/page1"), Ok((200, _))),
            None => false,
        };
        counts[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
        if !ok {
            eprintln!("trickle: a request failed");
            conn = None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Clients on the example's CPU-heavy page: each burns `WORK_MS` of an instance's CPU and
/// pauses `PAUSE_MS`, so three of them keep two 1-vCPU instances well above `OUT`.
fn work_load(lb: SocketAddr) -> Load {
    const WORK_MS: u64 = 40;
    const PAUSE_MS: u64 = 60;
    let path = format!("/work?ms={WORK_MS}");
    let expect = format!("worked {WORK_MS} ms");
    Load::start_with(lb, 3, "lb", &path, &expect, PAUSE_MS)
}

fn print_cpu(h: &Harness) {
    let (_, out, _) = h.run(&[
        "monitor",
        "metrics",
        "list",
        "--resource",
        "web",
        "-g",
        "rg",
        "--metric",
        "Percentage CPU",
        "--offset",
        "10m",
        "--dimension",
        "VMName",
        "-o",
        "table",
    ]);
    eprintln!("{out}");
}

#[test]
fn autoscale_out_under_load_and_back_in() {
    if !testkit::require(skip_reason()) {
        return;
    }
    let env = vec![("SCALESET_AUTOSCALE_INTERVAL_MS", "5000".to_string())];
    let mut h = Harness::new("autoscale", "10.213.208.0/24", "asc", env);
    let lb_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let app = example_drop(&h.home);
    h.ok(&[
        "image",
        "bake",
        "--base",
        "debian:bookworm",
        "--package",
        app.to_str().unwrap(),
        "--script",
        "setupscript.sh",
        "--name",
        "120",
    ]);
    h.start_serve();
    h.setup_lb(lb_addr.port(), 2);
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
        "2",
        "--lb",
        "lb",
        "--health-probe",
        "http",
    ]);
    wait_until("2 healthy instances", Duration::from_secs(120), || {
        healthy(&h.instances()) == 2
    });

    let created = h.json(&[
        "monitor",
        "autoscale",
        "create",
        "-g",
        "rg",
        "--resource",
        "web",
        "--min-count",
        "2",
        "--max-count",
        "3",
        "--count",
        "2",
    ]);
    assert_eq!(created["properties"]["enabled"], true, "{created}");
    for (cond, scale) in [(OUT, "out"), (IN, "in")] {
        h.ok(&[
            "monitor",
            "autoscale",
            "rule",
            "create",
            "-g",
            "rg",
            "--autoscale-name",
            "web",
            "--condition",
            cond,
            "--scale",
            scale,
            "1",
            "--cooldown",
            "1",
        ]);
    }
    let rules = h.json(&[
        "monitor",
        "autoscale",
        "rule",
        "list",
        "-g",
        "rg",
        "--autoscale-name",
        "web",
    ]);
    assert_eq!(rules.as_array().map(Vec::len), Some(2), "{rules}");

    // Load: out to 3 within a few grains; the new instance serves before the load stops.
    let load = Load::start(lb_addr, 2);
    let work = work_load(lb_addr);
    wait_until("scale-out to 3", Duration::from_secs(300), || {
        std::thread::sleep(Duration::from_secs(10));
        print_cpu(&h);
        capacity(&h) == 3
    });
    wait_until("3 healthy instances", Duration::from_secs(120), || {
        healthy(&h.instances()) == 3
    });
    std::thread::sleep(Duration::from_secs(10));
    // The new instance took its share of the load through the LB.
    let s = lb_status(&h.home);
    let served: Vec<u64> = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["requests"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        served.len() == 3 && served.iter().all(|n| *n > 0),
        "{served:?}"
    );
    let (work_ok, work_failed) = work.finish();
    let (ok, failed) = load.finish();
    eprintln!("load: pages {ok} ok, {failed} failed; work {work_ok} ok, {work_failed} failed");
    assert!(ok > 0 && work_ok > 0);
    assert_eq!((failed, work_failed), (0, 0), "requests failed under load");

    // Quiet but watched: back to 2 once the window has no hot grain, drained, no failure.
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let t = {
        let (stop, counts) = (stop.clone(), counts.clone());
        std::thread::spawn(move || trickle(lb_addr, stop, counts))
    };
    wait_until("scale-in to 2", Duration::from_secs(600), || {
        capacity(&h) == 2
    });
    wait_until("2 instances left", Duration::from_secs(120), || {
        h.instances().len() == 2
    });
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    let (ok, failed) = (
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
    );
    eprintln!("trickle: {ok} ok, {failed} failed");
    assert!(ok > 0);
    assert_eq!(failed, 0, "requests failed during scale-in");

    // The activity log says what happened, newest first.
    let log = h.json(&["monitor", "activity-log", "list", "-g", "rg"]);
    eprintln!(
        "{}",
        h.ok(&["monitor", "activity-log", "list", "-g", "rg", "-o", "table"])
    );
    let acted: Vec<(String, String, String)> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"]["value"] == "Succeeded")
        .map(|e| {
            let s = |p: &str| {
                e.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            (
                s("/operationName/localizedValue"),
                s("/properties/OldInstancesCount"),
                s("/properties/NewInstancesCount"),
            )
        })
        .collect();
    let ev = |op: &str, a: &str, b: &str| (op.to_string(), a.to_string(), b.to_string());
    assert_eq!(
        acted,
        [
            ev("Autoscale scale down", "3", "2"),
            ev("Autoscale scale up", "2", "3")
        ]
    );

    // `autoscale show` carries the same history, newest first, cut to --history.
    fn show<'a>(more: &[&'a str]) -> Vec<&'a str> {
        let base = ["monitor", "autoscale", "show", "-g", "rg", "-n", "web"];
        [&base[..], more].concat()
    }
    let shown = h.json(&show(&["--history", "3"]));
    assert_eq!(shown["name"], "web");
    let recent = shown["recentActivity"].as_array().expect("recentActivity");
    // Events are only added, so a later list holds them in the same order (a newer skip may
    // have come in ahead of them).
    let later = h.json(&["monitor", "activity-log", "list", "-g", "rg"]);
    let later = later.as_array().unwrap();
    assert_eq!(recent.len(), 3.min(log.as_array().unwrap().len()));
    let at = later
        .iter()
        .position(|e| *e == recent[0])
        .expect("shown event listed");
    assert_eq!(recent[..], later[at..at + recent.len()]);
    let bare = h.json(&show(&["--history", "0"]));
    assert!(bare.get("recentActivity").is_none(), "{bare}");
    eprintln!("{}", h.ok(&show(&["-o", "table"])));
}
