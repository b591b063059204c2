//! End to end, for real: `scaleset serve` as a child process, an image baked from the example,
//! a scale set of booted systemd-nspawn machines behind our load balancer, driven by the CLI.
//!
//! One scale set is booted once and used for every check, in order: pages through the LB,
//! spreading, an instance killed under load, the daemon SIGKILLed and restarted under load,
//! scale-in under load, bad input, delete. Everything is cleaned up by a Drop guard even when an
//! assertion fails. Needs root, systemd-nspawn and debootstrap (`.ci/run` installs them); without
//! them the test says it is skipped and why.
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_scaleset");
const SUBNET: &str = "10.213.201.0/24";

struct Harness {
    home: PathBuf,
    api: SocketAddr,
    serve: Option<Child>,
}

impl Harness {
    fn cmd(&self) -> Command {
        let mut c = Command::new(EXE);
        c.env("SCALESET_HOME", &self.home)
            .env("SCALESET_LISTEN", self.api.to_string())
            .env("SCALESET_SUBNET", SUBNET)
            .env("SCALESET_PREFIX", "e2e")
            .env("SCALESET_BASE_CACHE", base_cache())
            .env_remove("SCALESET_ENDPOINT")
            .env_remove("SCALESET_TOKEN");
        c
    }

    /// Runs the CLI; returns (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run scaleset");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "scaleset {args:?} failed:\n{err}\n{out}");
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("scaleset {args:?}: not JSON ({e}): {out}"))
    }

    fn start_serve(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.join("serve.log"))
            .unwrap();
        let child = self
            .cmd()
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start serve");
        self.serve = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.run(&["group", "list"]).0 {
            assert!(
                Instant::now() < deadline,
                "daemon did not come up; log:\n{}",
                std::fs::read_to_string(self.home.join("serve.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill_serve(&mut self) {
        if let Some(mut c) = self.serve.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    fn instances(&self) -> Vec<Value> {
        self.json(&[
            "vmss",
            "list-instances",
            "-g",
            "rg",
            "-n",
            "web",
            "-o",
            "json",
        ])
        .as_array()
        .cloned()
        .unwrap_or_default()
    }

    fn machine_pids(&self) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = std::fs::read_dir(self.home.join("machines"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let pid = std::fs::read_to_string(e.path().join("pid"))
                            .ok()?
                            .split_whitespace()
                            .next()?
                            .parse()
                            .ok()?;
                        Some((e.file_name().to_string_lossy().into_owned(), pid))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.kill_serve();
        // Load balancer processes.
        if let Ok(rd) = std::fs::read_dir(self.home.join("lb")) {
            for e in rd.flatten() {
                if let Some(pid) = std::fs::read_to_string(e.path().join("pid"))
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    // SAFETY: kill(2) on the LB process this test started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        // Machines, their mounts and namespaces, then the bridge.
        if let Ok(m) = runtime::NspawnMachines::new(runtime::RuntimeConfig {
            state_dir: self.home.join("machines"),
            prefix: "e2e".into(),
        }) {
            use runtime::Machines;
            for name in m.list().unwrap_or_default() {
                let _ = m.delete(&name);
            }
        }
        if let Some(net) = std::fs::read_to_string(self.home.join("network.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        {
            if let (Some(bridge), Ok(subnet)) =
                (net["bridge"].as_str(), SUBNET.parse::<runtime::Ipv4Net>())
            {
                let _ = runtime::teardown_network(&runtime::NetworkSpec {
                    bridge: bridge.into(),
                    gateway: subnet.host(1),
                    subnet,
                });
            }
        }
        if std::env::var_os("SCALESET_KEEP_TEST_HOME").is_none() {
            let _ = std::fs::remove_dir_all(&self.home);
        }
    }
}

fn base_cache() -> PathBuf {
    std::env::var_os("SCALESET_BASE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/scaleset-test-base"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    for tool in ["systemd-nspawn", "debootstrap", "ip"] {
        let found = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists());
        if !found {
            return Some(format!(
                "{tool} is not installed (apt-get install systemd-container debootstrap iproute2)"
            ));
        }
    }
    None
}

/// The example's drop: the release-built my_app binary plus its deployment files.
fn example_drop(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "my_app"])
        .current_dir(&root)
        .status()
        .expect("cargo build my_app");
    assert!(status.success());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let drop = dir.join("drop");
    std::fs::create_dir_all(drop.join("nginx")).unwrap();
    let ex = root.join("examples/my_app");
    std::fs::copy(target.join("release/my_app"), drop.join("my_app")).unwrap();
    for f in ["setupscript.sh", "my_app.service", "nginx/my_app"] {
        std::fs::copy(ex.join(f), drop.join(f)).unwrap();
    }
    drop
}

/// A minimal HTTP/1.1 GET over a kept-alive connection; returns (status, body).
fn http_get(stream: &mut BufReader<TcpStream>, path: &str) -> std::io::Result<(u16, String)> {
    write!(stream.get_mut(), "GET {path} HTTP/1.1\r\nHost: lb\r\n\r\n")?;
    let mut line = String::new();
    if stream.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut len = 0usize;
    loop {
        line.clear();
        stream.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to LB");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    http_get(&mut BufReader::new(s), path).expect("GET through the LB")
}

/// Keep-alive clients hammering the LB until stopped; counts successes and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let (stop, ok, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(300);
                    let mut conn: Option<BufReader<TcpStream>> = None;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        if conn.is_none() {
                            match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                                Ok(s) => {
                                    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                                    conn = Some(BufReader::new(s));
                                }
                                Err(_) => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    std::thread::sleep(Duration::from_millis(10));
                                    continue;
                                }
                            }
                        }
                        match http_get(conn.as_mut().unwrap(), "/page1") {
                            Ok((200, body)) if body.contains("You are currently on Page1.") => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((status, _)) => {
                                eprintln!(
                                    "load: HTTP {status} at {:?}",
                                    std::time::SystemTime::now()
                                );
                                failed.fetch_add(1, Ordering::Relaxed);
                                conn = None;
                            }
                            Err(e) => {
                                eprintln!("load: {e}");
                                failed.fetch_add(1, Ordering::Relaxed);
                                conn = None;
                            }
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Stops the clients; returns (ok, failed).
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// SIGKILLs every process named `comm` inside the machine whose nspawn pid is given (processes
/// in the same pid namespace as the machine's init). Returns how many were killed.
fn kill_in_machine(nspawn_pid: u32, comm: &str) -> usize {
    let children =
        std::fs::read_to_string(format!("/proc/{nspawn_pid}/task/{nspawn_pid}/children"))
            .unwrap_or_default();
    let init: u32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("machine init pid");
    let ns = std::fs::read_link(format!("/proc/{init}/ns/pid")).expect("pid namespace");
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let same_ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|p| p == ns);
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if same_ns && name.trim() == comm {
            // SAFETY: kill(2) on a process inside a machine this test created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            n += 1;
        }
    }
    n
}

/// GET /status from the load balancer's admin socket (HTTP/1.1 over a unix socket).
fn lb_status(home: &Path) -> Value {
    let dir = std::fs::read_dir(home.join("lb"))
        .unwrap()
        .flatten()
        .next()
        .expect("an LB dir")
        .path();
    let mut s =
        std::os::unix::net::UnixStream::connect(dir.join("admin.sock")).expect("LB admin socket");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /status HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    // Tolerate chunked encoding: take the JSON object.
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map(|i| i + 1).unwrap_or(body.len());
    serde_json::from_str(&body[start..end])
        .unwrap_or_else(|e| panic!("LB status not JSON ({e}): {resp}"))
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn healthy(vms: &[Value]) -> usize {
    vms.iter()
        .filter(|v| {
            v.pointer("/properties/instanceView/vmHealth/status/code")
                .and_then(Value::as_str)
                == Some("HealthState/healthy")
        })
        .count()
}

#[test]
fn scale_set_behind_load_balancer() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED scale_set_behind_load_balancer: {why}");
        return;
    }
    let home = std::env::temp_dir().join(format!("scaleset-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    let mut h = Harness {
        home: home.clone(),
        api: SocketAddr::from(([127, 0, 0, 1], free_port())),
        serve: None,
    };
    let lb_port = free_port();
    let lb_addr = SocketAddr::from(([127, 0, 0, 1], lb_port));

    // Image, from the example's drop, the way the release pipeline bakes it.
    let drop = example_drop(&home);
    h.ok(&[
        "image",
        "bake",
        "--base",
        "debian:bookworm",
        "--package",
        drop.to_str().unwrap(),
        "--script",
        "setupscript.sh",
        "--name",
        "120",
    ]);

    h.start_serve();
    h.ok(&["group", "create", "-n", "rg"]);
    h.ok(&[
        "network",
        "lb",
        "create",
        "-g",
        "rg",
        "-n",
        "lb",
        "--backend-pool-name",
        "be",
    ]);
    h.ok(&[
        "network",
        "lb",
        "probe",
        "create",
        "-g",
        "rg",
        "--lb-name",
        "lb",
        "-n",
        "http",
        "--protocol",
        "Http",
        "--port",
        "80",
        "--path",
        "/health",
        "--interval",
        "5",
        "--probe-threshold",
        "2",
    ]);
    let port = lb_port.to_string();
    h.ok(&[
        "network",
        "lb",
        "rule",
        "create",
        "-g",
        "rg",
        "--lb-name",
        "lb",
        "-n",
        "web",
        "--protocol",
        "Tcp",
        "--frontend-port",
        &port,
        "--backend-port",
        "80",
        "--probe-name",
        "http",
    ]);

    // Bad input: clear message, non-zero exit, nothing created.
    let (ok, _, err) = h.run(&[
        "vmss", "create", "-g", "rg", "-n", "bad name", "--image", "120",
    ]);
    assert!(!ok && err.contains("InvalidResourceName"), "{err}");
    let (ok, _, err) = h.run(&[
        "vmss", "create", "-g", "rg", "-n", "web", "--image", "121", "--lb", "lb",
    ]);
    assert!(!ok && err.contains("ImageNotFound"), "{err}");
    let (ok, _, err) = h.run(&[
        "network",
        "lb",
        "probe",
        "create",
        "-g",
        "rg",
        "--lb-name",
        "lb",
        "-n",
        "p2",
        "--protocol",
        "Http",
        "--port",
        "80",
        "--path",
        "/",
        "--interval",
        "2",
    ]);
    assert!(!ok && err.contains("intervalInSeconds"), "{err}");
    assert_eq!(h.json(&["vmss", "list", "-g", "rg"]), Value::Array(vec![]));

    let created = h.json(&[
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
    assert_eq!(created["properties"]["provisioningState"], "Succeeded");
    wait_until("3 healthy instances", Duration::from_secs(60), || {
        healthy(&h.instances()) == 3
    });
    let vms = h.instances();
    for v in &vms {
        assert_eq!(
            v.pointer("/properties/latestModelApplied"),
            Some(&Value::Bool(true))
        );
        let codes: Vec<&str> = v
            .pointer("/properties/instanceView/statuses")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["code"].as_str())
            .collect();
        assert_eq!(codes, ["ProvisioningState/succeeded", "PowerState/running"]);
    }
    let mut ids: Vec<&str> = vms
        .iter()
        .map(|v| v["instanceId"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["0", "1", "2"]);
    let table = h.ok(&[
        "vmss",
        "list-instances",
        "-g",
        "rg",
        "-n",
        "web",
        "-o",
        "table",
    ]);
    assert_eq!(
        table
            .lines()
            .filter(|l| l.contains("running") && l.contains("healthy"))
            .count(),
        3,
        "{table}"
    );

    // The three pages through the LB, exact texts and links, and the footer.
    let pages = [
        (
            "/",
            "You are currently on the Home page.",
            vec![
                ("/page1", "Navigate to page1"),
                ("/page2", "Navigate to Page2"),
            ],
        ),
        (
            "/page1",
            "You are currently on Page1.",
            vec![("/", "Navigate to Home"), ("/page2", "Navigate to Page2")],
        ),
        (
            "/page2",
            "You are currently on Page2.",
            vec![("/", "Navigate to Home"), ("/page1", "Navigate to Page1")],
        ),
    ];
    for (path, text, links) in pages {
        let (status, body) = get(lb_addr, path);
        assert_eq!(status, 200, "{path}");
        assert!(
            body.contains(&format!("Sample app to demo Azure DevOps for VMSS. {text}")),
            "{path}: {body}"
        );
        for (href, label) in links {
            assert!(
                body.contains(&format!("<a href=\"{href}\">{label}</a>")),
                "{path} lacks link {label}: {body}"
            );
        }
        assert_eq!(body.matches("<a href").count(), 2, "{path}");
        assert!(
            body.contains("from image <span id=\"image\">120</span>"),
            "{body}"
        );
    }
    let mut served_by = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let (_, body) = get(lb_addr, "/");
        let inst = body
            .split("<span id=\"instance\">")
            .nth(1)
            .and_then(|s| s.split('<').next())
            .unwrap()
            .to_string();
        served_by.insert(inst);
    }
    assert!(served_by.len() >= 2, "served by {served_by:?}");
    assert!(
        served_by.iter().all(|i| i.starts_with("web_")),
        "{served_by:?}"
    );

    // The web server inside instance 1 dies (the machine stays up): the probe takes it out of
    // rotation within intervalInSeconds × probeThreshold, and no request fails.
    let before = h.machine_pids();
    assert_eq!(before.len(), 3);
    let load = Load::start(lb_addr, 4);
    std::thread::sleep(Duration::from_secs(1));
    let (sick, sick_pid) = before[1].clone();
    let killed_at = Instant::now();
    let n = kill_in_machine(sick_pid, "nginx");
    assert!(n >= 1, "no nginx process found in {sick}");
    let mut out_after = None;
    wait_until(
        "the instance without a web server to be probed down",
        Duration::from_secs(20),
        || {
            let s = lb_status(&home);
            let down = s["backends"].as_array().unwrap().iter().any(|b| {
                b["id"] == Value::String(sick.clone()) && b["healthy"] == Value::Bool(false)
            });
            if down {
                out_after = Some(killed_at.elapsed());
            }
            down
        },
    );
    assert!(
        out_after.unwrap() <= Duration::from_secs(5 * 2 + 2),
        "took {out_after:?}"
    );
    wait_until(
        "the instance view to show it unhealthy",
        Duration::from_secs(5),
        || healthy(&h.instances()) == 2,
    );
    // Restarting it (drained first) brings it back.
    let sick_id = h
        .instances()
        .iter()
        .find(|v| {
            v.pointer("/properties/instanceView/vmHealth/status/code")
                .and_then(Value::as_str)
                == Some("HealthState/unhealthy")
        })
        .and_then(|v| v["instanceId"].as_str().map(str::to_string))
        .unwrap();
    h.ok(&[
        "vmss",
        "restart",
        "-g",
        "rg",
        "-n",
        "web",
        "--instance-ids",
        &sick_id,
    ]);
    wait_until(
        "the restarted instance to be healthy",
        Duration::from_secs(60),
        || healthy(&h.instances()) == 3,
    );
    let (ok_n, failed) = load.finish();
    assert_eq!(
        failed, 0,
        "failed requests while a web server died and its instance restarted ({ok_n} ok)"
    );
    assert!(ok_n > 100, "too little load: {ok_n}");

    // A whole machine killed under load: idempotent requests keep succeeding (the LB retries
    // them elsewhere) and the engine boots the machine again.
    let before = h.machine_pids();
    let load = Load::start(lb_addr, 4);
    std::thread::sleep(Duration::from_secs(1));
    let (victim, victim_pid) = before[2].clone();
    // SAFETY: kill(2) on the nspawn process of a machine this test created.
    unsafe { libc::kill(victim_pid as i32, libc::SIGKILL) };
    wait_until(
        "the killed machine to be booted again",
        Duration::from_secs(30),
        || {
            h.machine_pids()
                .iter()
                .any(|(n, p)| *n == victim && *p != victim_pid)
        },
    );
    wait_until(
        "all instances healthy again",
        Duration::from_secs(60),
        || healthy(&h.instances()) == 3,
    );
    let (ok_n, failed) = load.finish();
    assert_eq!(
        failed, 0,
        "failed requests while a machine was killed ({ok_n} ok)"
    );
    assert!(ok_n > 100, "too little load: {ok_n}");

    // The daemon SIGKILLed under load, then restarted: it adopts the running machines and the
    // load balancer instead of restarting them, and no request fails.
    let pids = h.machine_pids();
    let lb_pid = std::fs::read_dir(home.join("lb"))
        .unwrap()
        .flatten()
        .next()
        .map(|e| std::fs::read_to_string(e.path().join("pid")).unwrap())
        .unwrap();
    let load = Load::start(lb_addr, 4);
    std::thread::sleep(Duration::from_millis(500));
    h.kill_serve();
    std::thread::sleep(Duration::from_secs(2));
    h.start_serve();
    std::thread::sleep(Duration::from_secs(3));
    let (ok_n, failed) = load.finish();
    assert_eq!(
        failed, 0,
        "failed requests across a daemon SIGKILL ({ok_n} ok)"
    );
    assert!(ok_n > 100, "too little load: {ok_n}");
    assert_eq!(
        h.machine_pids(),
        pids,
        "machines were restarted instead of adopted"
    );
    let lb_pid_after = std::fs::read_dir(home.join("lb"))
        .unwrap()
        .flatten()
        .next()
        .map(|e| std::fs::read_to_string(e.path().join("pid")).unwrap())
        .unwrap();
    assert_eq!(
        lb_pid, lb_pid_after,
        "the load balancer was restarted instead of adopted"
    );
    assert_eq!(healthy(&h.instances()), 3);

    // Scale in under load: the newest instance (Default policy) is drained and removed.
    let load = Load::start(lb_addr, 4);
    h.ok(&[
        "vmss",
        "scale",
        "-g",
        "rg",
        "-n",
        "web",
        "--new-capacity",
        "2",
    ]);
    let (ok_n, failed) = load.finish();
    assert_eq!(failed, 0, "failed requests during scale-in ({ok_n} ok)");
    let mut ids: Vec<String> = h
        .instances()
        .iter()
        .map(|v| v["instanceId"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["0", "1"]);
    assert_eq!(h.machine_pids().len(), 2);

    // Stop and start an instance under load: drained first, then powered off; back on start.
    let load = Load::start(lb_addr, 4);
    eprintln!("phase: stop at {:?}", std::time::SystemTime::now());
    h.ok(&[
        "vmss",
        "stop",
        "-g",
        "rg",
        "-n",
        "web",
        "--instance-ids",
        "1",
    ]);
    let power = |id: &str| -> String {
        h.instances()
            .iter()
            .find(|v| v["instanceId"] == id)
            .and_then(|v| {
                v.pointer("/properties/instanceView/statuses/1/code")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_default()
    };
    assert_eq!(power("1"), "PowerState/stopped");
    eprintln!("phase: start at {:?}", std::time::SystemTime::now());
    h.ok(&[
        "vmss",
        "start",
        "-g",
        "rg",
        "-n",
        "web",
        "--instance-ids",
        "1",
    ]);
    assert_eq!(power("1"), "PowerState/running");
    wait_until(
        "the started instance to be healthy",
        Duration::from_secs(60),
        || healthy(&h.instances()) == 2,
    );
    // Reimage wipes the instance's writable layer (the ephemeral OS disk).
    let machine0 = h.machine_pids().into_iter().next().unwrap().0;
    let marker = home
        .join("machines")
        .join(&machine0)
        .join("root/var/tmp/marker");
    std::fs::write(&marker, "written on the old disk").unwrap();
    eprintln!("phase: reimage at {:?}", std::time::SystemTime::now());
    h.ok(&[
        "vmss",
        "reimage",
        "-g",
        "rg",
        "-n",
        "web",
        "--instance-ids",
        "0",
    ]);
    wait_until(
        "the reimaged instance to be healthy",
        Duration::from_secs(60),
        || healthy(&h.instances()) == 2,
    );
    assert!(!marker.exists(), "reimage kept the old writable layer");
    let (ok_n, failed) = load.finish();
    assert_eq!(
        failed, 0,
        "failed requests during stop/start/reimage ({ok_n} ok)"
    );

    // Out of range and unknown: a clear error and nothing changed.
    let (ok, _, err) = h.run(&[
        "vmss",
        "scale",
        "-g",
        "rg",
        "-n",
        "web",
        "--new-capacity",
        "5000",
    ]);
    assert!(!ok && err.contains("out of range"), "{err}");
    let (ok, _, err) = h.run(&[
        "vmss",
        "update",
        "-g",
        "rg",
        "-n",
        "web",
        "--set",
        "properties.upgradePolicy.mode=Sometimes",
    ]);
    assert!(!ok && err.contains("Allowed values"), "{err}");
    assert_eq!(
        h.json(&["vmss", "show", "-g", "rg", "-n", "web"])["sku"]["capacity"],
        2
    );
    let (ok, _, err) = h.run(&["vmss", "show", "-g", "rg", "-n", "nope"]);
    assert!(!ok && err.contains("ResourceNotFound"), "{err}");

    // Delete: machines gone.
    h.ok(&["vmss", "delete", "-g", "rg", "-n", "web"]);
    assert!(h.machine_pids().is_empty());
    let (ok, _, err) = h.run(&["vmss", "show", "-g", "rg", "-n", "web"]);
    assert!(!ok && err.contains("ResourceNotFound"), "{err}");
}
