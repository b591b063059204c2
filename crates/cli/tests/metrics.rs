//! `GET /metrics` of a real daemon (in-process: the API server and the engine) with a real load
//! balancer process (`scaleset lb-serve`) in front of real HTTP backends, and fake machines
//! (`runtime::fake`) whose instance addresses are loopback addresses the backends listen on: no
//! root, no machine boots. The exposition is parsed by Prometheus' own Python parser
//! (prometheus_client, from PyPI in a venv) and its counters move by exactly the requests sent.
mod common;

use common::*;
use serde_json::{json, Value};
use sha2::Digest;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

/// Instance addresses: fake machines, so loopback (never a bridge); .4 and up are allocated.
const SUBNET: &str = "127.0.170.0/24";
const REQUESTS: u64 = 137;

/// The venv with prometheus_client, built once under a lock (`Err`: why it could not be).
fn ensure_venv(requirements: &Path) -> Result<PathBuf, String> {
    let dir = std::env::var_os("SCALESET_PROM_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/scaleset-prom-venv"));
    let python = Command::new("python3").arg("--version").output();
    let python = python.map_err(|e| format!("python3: {e}"))?;
    let want = format!(
        "{}{}",
        String::from_utf8_lossy(&python.stdout),
        std::fs::read_to_string(requirements).unwrap()
    );
    let lock = std::fs::File::create(format!("{}.lock", dir.display())).unwrap();
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let marker = dir.join("scaleset-requirements.txt");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(want.as_str()) {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let run = |c: &mut Command| -> Result<(), String> {
        let out = c.output().map_err(|e| format!("{c:?}: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "{c:?} failed (Debian needs python3-venv: scripts/install-deps.sh; pip needs PyPI):\n{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    run(Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(requirements))?;
    std::fs::write(&marker, want).unwrap();
    Ok(dir)
}

/// The exposition as Prometheus' parser reads it: samples by name and labels.
struct Parsed {
    families: BTreeMap<String, (String, String)>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Parsed {
    fn new(venv: &Path, script: &Path, text: &str) -> Parsed {
        let mut child = Command::new(venv.join("bin/python"))
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the parser refused the exposition: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let families = v["families"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, f)| {
                let s = |i: usize| f[i].as_str().unwrap().to_owned();
                (k.clone(), (s(0), s(1)))
            })
            .collect();
        let samples = v["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let labels = serde_json::from_value(s[1].clone()).unwrap();
                (
                    s[0].as_str().unwrap().to_owned(),
                    labels,
                    s[2].as_f64().unwrap(),
                )
            })
            .collect();
        Parsed { families, samples }
    }

    /// The samples named `name` whose labels include `with`.
    fn find(&self, name: &str, with: &[(&str, &str)]) -> Vec<(&BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && with
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, l, v)| (l, *v))
            .collect()
    }

    fn one(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        let found = self.find(name, with);
        assert_eq!(found.len(), 1, "{name} {with:?}: {found:?}");
        found[0].1
    }

    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.find(name, with).iter().map(|(_, v)| v).sum()
    }
}

/// A keep-alive HTTP/1.1 backend: `/health` answers 200, anything else 200 with its name and
/// the example's page 1 line (what `common::Load` checks), counted.
fn backend(listener: TcpListener, name: String, hits: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let (name, hits) = (name.clone(), hits.clone());
            std::thread::spawn(move || serve_conn(conn, &name, &hits));
        }
    });
}

fn serve_conn(conn: TcpStream, name: &str, hits: &AtomicU64) {
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim_end().is_empty() {
                break;
            }
        }
        if path != "/health" {
            hits.fetch_add(1, SeqCst);
        }
        let body = format!("{name}: You are currently on Page1.\n");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if r.get_mut().write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// `GET /metrics` with an optional bearer token: (status, content type, body).
fn scrape(api: SocketAddr, token: Option<&str>) -> (u16, String, String) {
    let mut s = TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, ctype, body.to_owned())
}

/// An image in the store without baking: a one-file `docker save` archive, imported.
fn import_image(images: &image::ImageStore, dir: &Path, name: &str) {
    let entry = |h: &mut tar::Header, len: usize| {
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(len as u64);
    };
    let mut layer = tar::Builder::new(Vec::new());
    let data = format!("image {name}\n");
    let mut h = tar::Header::new_gnu();
    entry(&mut h, data.len());
    layer
        .append_data(&mut h, "etc/scaleset-image", data.as_bytes())
        .unwrap();
    let layer = layer.into_inner().unwrap();
    let diff = hex::encode(sha2::Sha256::digest(&layer));
    let cfg = json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff}")]}});
    let manifest = json!([{"Config": "cfg.json", "RepoTags": [format!("{name}:1")], "Layers": ["l/layer.tar"]}]);
    let mut b = tar::Builder::new(Vec::new());
    for (p, d) in [
        ("manifest.json", serde_json::to_vec(&manifest).unwrap()),
        ("cfg.json", serde_json::to_vec(&cfg).unwrap()),
        ("l/layer.tar", layer),
    ] {
        let mut h = tar::Header::new_gnu();
        entry(&mut h, d.len());
        b.append_data(&mut h, p, d.as_slice()).unwrap();
    }
    let archive = dir.join(format!("{name}.tar"));
    std::fs::write(&archive, b.into_inner().unwrap()).unwrap();
    images.import(&archive, name, &mut std::io::sink()).unwrap();
}

fn daemon_config(home: &Path, listen: SocketAddr, anonymous: bool) -> api::DaemonConfig {
    api::DaemonConfig {
        home: home.to_path_buf(),
        listen,
        network: api::DaemonConfig::network_for(home, SUBNET.parse().unwrap(), None),
        prefix: "pm".into(),
        exe: EXE.into(),
        base_cache: base_cache(),
        probe_interval_ms: Some(200),
        rolling_health_timeout_secs: 300,
        repair_grace_secs: None,
        autoscale_interval_ms: None,
        limits: Default::default(),
        metrics_anonymous_loopback: anonymous,
    }
}

#[test]
fn metrics_parse_and_count_exactly_the_requests_sent() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/prom");
    if !testkit::require(testkit::missing_python_modules(&["venv", "ensurepip"])) {
        return;
    }
    let venv = match ensure_venv(&here.join("requirements.txt")) {
        Ok(v) => v,
        Err(why) => {
            testkit::require(Some(format!("the prometheus_client venv: {why}")));
            return;
        }
    };
    let parser = here.join("parse.py");

    // Backends on the addresses the first instances get, before the scale set exists.
    let port = free_port();
    let mut hits = BTreeMap::new();
    for host in 4..=9 {
        let ip = format!("127.0.170.{host}");
        let l = TcpListener::bind((ip.as_str(), port)).unwrap();
        let n = Arc::new(AtomicU64::new(0));
        backend(l, ip.clone(), n.clone());
        hits.insert(ip, n);
    }

    let api_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let h = Harness {
        home: std::env::temp_dir().join(format!("scaleset-metrics-{}", std::process::id())),
        api: api_addr,
        serve: None,
        subnet: SUBNET,
        prefix: "pm",
        env: vec![],
    };
    let _ = std::fs::remove_dir_all(&h.home);
    std::fs::create_dir_all(&h.home).unwrap();
    let fake = Arc::new(runtime::fake::FakeMachines::new());
    let st = api::open_state(daemon_config(&h.home, api_addr, true), fake.clone()).unwrap();
    import_image(&st.images, &h.home, "app1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(api::serve(st.clone(), async move {
        let _ = stopped.await;
    }));
    // The same state behind a router that does not allow anonymous scrapes (no engine).
    let off_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let off = Arc::new(api::state::AppState {
        cfg: daemon_config(&h.home, off_addr, false),
        auth: api::state::Auth {
            token: st.auth.token.clone(),
            run_tokens: Default::default(),
        },
        pipelines: None,
        core: st.core.clone(),
        dashboard: Default::default(),
    });
    rt.spawn(async move {
        let l = tokio::net::TcpListener::bind(off_addr).await.unwrap();
        let app = api::app(off).into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(l, app).await.unwrap();
    });
    wait_until("the API", Duration::from_secs(30), || {
        TcpStream::connect(api_addr).is_ok() && TcpStream::connect(off_addr).is_ok()
    });

    let fport = free_port();
    let (fp, bp) = (fport.to_string(), port.to_string());
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
        &bp,
        "--path",
        "/health",
        "--interval",
        "5",
        "--probe-threshold",
        "1",
    ]);
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
        &fp,
        "--backend-port",
        &bp,
        "--probe-name",
        "http",
    ]);
    h.ok(&[
        "vmss",
        "create",
        "-g",
        "rg",
        "-n",
        "web",
        "--image",
        "app1",
        "--instance-count",
        "2",
        "--lb",
        "lb",
        "--backend-pool-name",
        "be",
        "--health-probe",
        "http",
        "--upgrade-policy-mode",
        "Rolling",
    ]);
    wait_until("2 healthy instances", Duration::from_secs(60), || {
        healthy(&h.instances()) == 2
    });

    // Usage the sampler reads from each machine's cgroup (here: what the fake reports).
    use runtime::Machines;
    let machines = fake.list().unwrap();
    assert_eq!(machines.len(), 2, "{machines:?}");
    for (i, m) in machines.iter().enumerate() {
        fake.set_usage(
            m,
            runtime::MachineUsage {
                cpu: Some(Duration::from_millis(12_500 + i as u64)),
                memory_bytes: Some(64 << 20),
                memory_limit_bytes: Some(1 << 30),
                net_in_bytes: Some(1000),
                net_out_bytes: Some(2000),
            },
        );
    }
    rt.block_on(api::engine::sample_metrics(&st.core, control_now_ms()));

    let token = st.auth.token.clone();
    let (status, ctype, before) = scrape(api_addr, Some(&token));
    assert_eq!(status, 200, "{before}");
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    let before = Parsed::new(&venv, &parser, &before);

    let front: SocketAddr = format!("127.0.0.1:{fport}").parse().unwrap();
    let served_before: u64 = hits.values().map(|n| n.load(SeqCst)).sum();
    let mut conns: Vec<_> = (0..3)
        .map(|_| BufReader::new(TcpStream::connect(front).unwrap()))
        .collect();
    for i in 0..REQUESTS {
        let (status, _) = http_get(&mut conns[(i % 3) as usize], "/").unwrap();
        assert_eq!(status, 200);
    }
    drop(conns);
    let served = hits.values().map(|n| n.load(SeqCst)).sum::<u64>() - served_before;
    assert_eq!(served, REQUESTS);

    let (status, _, after) = scrape(api_addr, Some(&token));
    assert_eq!(status, 200);
    let after = Parsed::new(&venv, &parser, &after);
    let rule = [("lb", "lb"), ("rule", "web"), ("code", "2xx")];
    let delta = |name: &str, with: &[(&str, &str)]| after.sum(name, with) - before.sum(name, with);
    assert_eq!(delta("scaleset_lb_requests_total", &rule), REQUESTS as f64);
    assert_eq!(
        delta("scaleset_lb_requests_total", &[("lb", "lb")]),
        REQUESTS as f64,
        "no other class moved"
    );
    assert_eq!(
        delta(
            "scaleset_lb_request_duration_seconds_count",
            &[("rule", "web")]
        ),
        REQUESTS as f64
    );
    assert_eq!(
        after.one(
            "scaleset_lb_request_duration_seconds_bucket",
            &[("rule", "web"), ("le", "+Inf")]
        ),
        after.one(
            "scaleset_lb_request_duration_seconds_count",
            &[("rule", "web")]
        )
    );
    // Per backend: the image and VM the engine knows, and each one's share exactly.
    let b2xx = [
        ("lb", "lb"),
        ("code", "2xx"),
        ("image", "app1"),
        ("vmss", "web"),
    ];
    assert_eq!(
        delta("scaleset_lb_backend_responses_total", &b2xx),
        REQUESTS as f64
    );
    let mut shares = BTreeMap::new();
    for (labels, v) in after.find("scaleset_lb_backend_responses_total", &b2xx) {
        let vm = labels["vm"].clone();
        let was = before.sum(
            "scaleset_lb_backend_responses_total",
            &[("code", "2xx"), ("vm", &vm)],
        );
        shares.insert(vm, v - was);
    }
    assert_eq!(shares.len(), 2, "{shares:?}");
    assert!(shares.keys().all(|vm| vm.starts_with("web_")), "{shares:?}");
    // Round robin over two backends.
    assert!(
        shares
            .values()
            .all(|n| *n == (REQUESTS / 2) as f64 || *n == (REQUESTS / 2 + 1) as f64),
        "{shares:?}"
    );
    assert_eq!(after.sum("scaleset_lb_backend_errors_total", &[]), 0.0);
    assert_eq!(after.find("scaleset_lb_backend_up", &[]).len(), 2);
    assert!(after
        .find("scaleset_lb_backend_up", &[])
        .iter()
        .all(|(_, v)| *v == 1.0));
    assert_eq!(after.one("scaleset_lb_up", &[("lb", "lb")]), 1.0);

    // Control plane and host metrics.
    assert_eq!(after.one("scaleset_vmss_capacity", &[("vmss", "web")]), 2.0);
    assert_eq!(
        after.one("scaleset_vmss_instances", &[("vmss", "web")]),
        2.0
    );
    let cpu = after.find("scaleset_instance_cpu_seconds_total", &[("vmss", "web")]);
    let mut cpu: Vec<f64> = cpu.iter().map(|(_, v)| *v).collect();
    cpu.sort_by(f64::total_cmp);
    assert_eq!(cpu, [12.5, 12.501]);
    assert_eq!(
        after.sum("scaleset_instance_memory_used_bytes", &[("vmss", "web")]),
        2.0 * (64u64 << 20) as f64
    );
    assert_eq!(
        after
            .find("scaleset_instance_health", &[("state", "Healthy")])
            .iter()
            .map(|(_, v)| v)
            .sum::<f64>(),
        2.0
    );
    assert_eq!(after.one("scaleset_instance_info", &[("vm", "web_0")]), 1.0);
    // HELP and TYPE for each family, as the parser read them.
    let (kind, help) = &after.families["scaleset_lb_request_duration_seconds"];
    assert_eq!(kind, "histogram");
    assert!(help.starts_with("Time from a request's head"), "{help}");
    assert_eq!(after.families["scaleset_lb_requests"].0, "counter");

    // A rolling upgrade to another image: its state and progress, and the backends' requests
    // now counted for the new image alone.
    import_image(&st.images, &h.home, "app2");
    // Clients all along (the rollout drains, reimages and probes each instance).
    let load = Load::start(front, 2);
    h.ok(&[
        "vmss", "update", "-g", "rg", "-n", "web", "--set",
        "virtualMachineProfile.storageProfile.imageReference.id=/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute/images/app2",
    ]);
    let latest = || {
        h.json(&[
            "vmss",
            "rolling-upgrade",
            "get-latest",
            "-g",
            "rg",
            "-n",
            "web",
        ])
    };
    wait_until(
        "the rolling upgrade completes",
        Duration::from_secs(120),
        || latest().pointer("/properties/runningStatus/code") == Some(&json!("Completed")),
    );
    wait_until("2 healthy instances", Duration::from_secs(60), || {
        healthy(&h.instances()) == 2
    });
    let (load_ok, load_failed) = load.finish();
    assert_eq!(load_failed, 0);
    assert!(load_ok > 0);
    let (_, _, text) = scrape(api_addr, Some(&token));
    let mid = Parsed::new(&venv, &parser, &text);
    let mut conns: Vec<_> = (0..3)
        .map(|_| BufReader::new(TcpStream::connect(front).unwrap()))
        .collect();
    for i in 0..REQUESTS {
        let (status, _) = http_get(&mut conns[(i % 3) as usize], "/").unwrap();
        assert_eq!(status, 200);
    }
    drop(conns);
    let (_, _, text) = scrape(api_addr, Some(&token));
    let rolled = Parsed::new(&venv, &parser, &text);
    let on = |p: &Parsed, image: &str| {
        p.sum(
            "scaleset_lb_backend_responses_total",
            &[("code", "2xx"), ("image", image)],
        )
    };
    // The reimaged backends' series are the new image's alone: app1's are gone.
    assert_eq!(on(&mid, "app1"), 0.0);
    assert_eq!(
        (on(&rolled, "app2") - on(&mid, "app2"), on(&rolled, "app1")),
        (REQUESTS as f64, 0.0)
    );
    // The frontend counted every request: both rounds of 137 and the clients' during the rollout.
    assert_eq!(
        rolled.sum("scaleset_lb_requests_total", &rule),
        (2 * REQUESTS + load_ok) as f64
    );
    assert_eq!(rolled.sum("scaleset_lb_failed_requests_total", &[]), 0.0);
    let web = [("vmss", "web")];
    assert_eq!(
        rolled.one(
            "scaleset_rollout_status",
            &[("vmss", "web"), ("status", "Completed")]
        ),
        1.0
    );
    assert_eq!(
        rolled.sum("scaleset_rollout_status", &web),
        1.0,
        "one state at a time"
    );
    assert_eq!(
        rolled.one(
            "scaleset_rollout_instances",
            &[("vmss", "web"), ("progress", "successful")]
        ),
        2.0
    );
    assert_eq!(
        rolled.one("scaleset_rollout_target_model_version", &web),
        2.0
    );
    assert_eq!(
        rolled
            .find(
                "scaleset_instance_info",
                &[("image", "app2"), ("model_version", "2")]
            )
            .len(),
        2
    );

    // Auth: anonymous from loopback only where allowed; a token sent is always checked.
    assert_eq!(scrape(api_addr, None).0, 200);
    assert_eq!(scrape(api_addr, Some("wrong")).0, 401);
    let (status, _, body) = scrape(off_addr, None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("AuthenticationFailed"), "{body}");
    assert_eq!(scrape(off_addr, Some("wrong")).0, 401);
    assert_eq!(scrape(off_addr, Some(&token)).0, 200);

    rt.block_on(api::engine::stop_everything(&st.core));
    let _ = stop.send(());
    let _ = rt.block_on(server);
}

fn control_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
