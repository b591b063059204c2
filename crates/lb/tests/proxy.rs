//! Integration tests: real sockets on loopback only.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use lb::{
    client, Backend, Layer, LbConfig, LbError, LoadDistribution, NoHealthyBackendsBehavior, Probe,
    ProbeProtocol, Rule,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn http_probe(port: u16) -> Probe {
    Probe {
        name: "hp".into(),
        protocol: ProbeProtocol::Http,
        port,
        request_path: Some("/health".into()),
        interval_in_seconds: 5,
        probe_threshold: 2,
        interval_ms: Some(50),
    }
}

fn rule(name: &str, fport: u16, bport: u16, layer: Layer, probe: Option<&str>) -> Rule {
    Rule {
        name: name.into(),
        frontend: SocketAddr::new(ip("127.0.0.1"), fport),
        backend_port: bport,
        layer,
        load_distribution: LoadDistribution::Default,
        idle_timeout_in_minutes: 4,
        enable_tcp_reset: true,
        probe: probe.map(str::to_owned),
    }
}

fn backends(ips: &[IpAddr]) -> Vec<Backend> {
    ips.iter()
        .enumerate()
        .map(|(i, ip)| Backend {
            id: format!("b{i}"),
            ip: *ip,
            draining: false,
            image: None,
        })
        .collect()
}

/// LB config with one L7 rule + Http probe over backends b0..bn on `ips`.
fn l7_config(name: &str, fport: u16, bport: u16, ips: &[IpAddr]) -> LbConfig {
    LbConfig {
        name: name.into(),
        rules: vec![rule("http", fport, bport, Layer::L7, Some("hp"))],
        probes: vec![http_probe(bport)],
        backends: backends(ips),
        no_healthy_backends_behavior: NoHealthyBackendsBehavior::AllProbedDown,
        frontend_limits: Default::default(),
    }
}

fn front(port: u16) -> SocketAddr {
    SocketAddr::new(ip("127.0.0.1"), port)
}

fn start_http(ips: &[IpAddr]) -> (u16, Vec<HttpBackend>) {
    let (port, ls) = bind_same_port(ips);
    let bs = ls
        .into_iter()
        .enumerate()
        .map(|(i, l)| HttpBackend::start(&format!("b{i}"), l))
        .collect();
    (port, bs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_spreads_requests_round_robin_and_counts() {
    let ips = [ip("127.0.0.2"), ip("127.0.0.3"), ip("127.0.0.4")];
    let (bport, bs) = start_http(&ips);
    let fport = free_port();
    let h = Harness::start("spread", &l7_config("spread", fport, bport, &ips)).await;
    h.wait_healthy(&["b0", "b1", "b2"]).await;

    let mut c = Http::connect(front(fport)).await;
    let mut per: HashMap<String, u32> = HashMap::new();
    for _ in 0..30 {
        let (status, body) = c.get("/x").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("|127.0.0.1|"),
            "X-Forwarded-For missing: {body}"
        );
        *per.entry(who(&body).to_owned()).or_default() += 1;
    }
    assert_eq!(per.len(), 3, "{per:?}");
    assert!(per.values().all(|n| *n == 10), "{per:?}");
    // Bodies are forwarded.
    let (status, body) = c.request("POST", "/p", "hello").await;
    assert_eq!((status, body.ends_with("|5")), (200, true), "{body}");
    let (status, body) = c.request("PUT", "/p", "hello world").await;
    assert_eq!((status, body.ends_with("|11")), (200, true), "{body}");

    let s = h
        .wait_for("idle", |s| {
            s.backends.iter().all(|b| b.active_connections == 0)
        })
        .await;
    assert_eq!(s.name, "spread");
    assert_eq!(s.totals.connections, 1);
    assert_eq!(s.totals.requests, 32);
    assert_eq!(s.totals.responses_2xx, 32);
    assert_eq!(s.totals.responses_non_2xx, 0);
    assert_eq!(s.totals.failed, 0);
    assert_eq!(s.totals.retries, 0);
    assert_eq!(s.backends.iter().map(|b| b.requests).sum::<u64>(), 32);
    assert!(s
        .backends
        .iter()
        .all(|b| b.requests >= 10 && b.failures == 0));
    // Sequential requests reuse one pooled keep-alive connection per backend.
    for b in &bs {
        assert_eq!(
            b.app_conns.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{}",
            b.id
        );
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_killed_backend_under_load_fails_no_get() {
    let ips = [ip("127.0.0.5"), ip("127.0.0.6"), ip("127.0.0.7")];
    let (bport, bs) = start_http(&ips);
    let fport = free_port();
    let h = Harness::start("kill", &l7_config("kill", fport, bport, &ips)).await;
    h.wait_healthy(&["b0", "b1", "b2"]).await;

    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(async move {
            let mut c = Http::connect(front(fport)).await;
            let mut statuses = Vec::new();
            for _ in 0..150 {
                statuses.push(c.get("/x").await.0);
            }
            statuses
        }));
    }
    while bs[1].hits.load(std::sync::atomic::Ordering::SeqCst) < 20 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bs[1].kill_hard();
    while bs[2].hits.load(std::sync::atomic::Ordering::SeqCst) < 60 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bs[2].kill();
    let mut total = 0;
    for t in tasks {
        let statuses = t.await.unwrap();
        total += statuses.len();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    assert_eq!(total, 600);
    let s = h
        .wait_for("b1 down", |s| {
            s.backends.iter().any(|b| b.id == "b1" && !b.healthy)
        })
        .await;
    assert_eq!(s.totals.failed, 0);
    eprintln!("kill test totals: {:?}", s.totals);
    assert_eq!(s.totals.responses_2xx, 600);
    assert_eq!(s.totals.responses_non_2xx, 0);

    // Out of rotation: no more traffic reaches it.
    let hits = bs[1].hits.load(std::sync::atomic::Ordering::SeqCst);
    let mut c = Http::connect(front(fport)).await;
    for _ in 0..20 {
        let (status, body) = c.get("/x").await;
        assert_eq!(status, 200);
        assert_eq!(who(&body), "b0");
    }
    assert_eq!(bs[1].hits.load(std::sync::atomic::Ordering::SeqCst), hits);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_connect_failure_is_retried_and_backend_becomes_suspect() {
    // b1 has no listener and the rule has no probe: the first request routed
    // to it fails to connect, is retried on b0, and b1 is skipped afterwards.
    let ips = [ip("127.0.0.8"), ip("127.0.0.9")];
    let (bport, mut ls) = bind_same_port(&ips);
    let dead = ls.pop().unwrap();
    drop(dead);
    let _b0 = HttpBackend::start("b0", ls.pop().unwrap());
    let fport = free_port();
    let mut cfg = l7_config("retry", fport, bport, &ips);
    cfg.rules[0].probe = None;
    cfg.probes.clear();
    let h = Harness::start("retry", &cfg).await;
    let mut c = Http::connect(front(fport)).await;
    for _ in 0..10 {
        let (status, body) = c.get("/x").await;
        assert_eq!((status, who(&body)), (200, "b0"));
    }
    let s = h.status().await;
    assert_eq!(s.totals.retries, 1);
    assert_eq!(s.totals.failed, 0);
    assert_eq!(s.totals.responses_2xx, 10);
    let b1 = s.backends.iter().find(|b| b.id == "b1").unwrap();
    assert_eq!((b1.failures, b1.requests, b1.healthy), (1, 1, true));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_post_is_not_retried_on_connect_failure() {
    let ips = [ip("127.0.0.10")];
    let (bport, ls) = bind_same_port(&ips);
    drop(ls);
    let fport = free_port();
    let mut cfg = l7_config("post", fport, bport, &ips);
    cfg.rules[0].probe = None;
    cfg.probes.clear();
    cfg.backends.push(Backend {
        id: "b1".into(),
        ip: ip("127.0.0.11"),
        draining: false,
        image: None,
    });
    let h = Harness::start("post", &cfg).await;
    let mut c = Http::connect(front(fport)).await;
    let (status, _) = c.request("POST", "/x", "data").await;
    assert_eq!(status, 502);
    let s = h.status().await;
    assert_eq!(
        (
            s.totals.failed,
            s.totals.retries,
            s.totals.responses_non_2xx
        ),
        (1, 0, 1)
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_draining_backend_gets_no_new_requests_and_inflight_completes() {
    let ips = [ip("127.0.0.12"), ip("127.0.0.13")];
    let (bport, bs) = start_http(&ips);
    let fport = free_port();
    let mut cfg = l7_config("drain", fport, bport, &ips);
    let h = Harness::start("drain", &cfg).await;
    h.wait_healthy(&["b0", "b1"]).await;

    let slow = tokio::spawn(get_once(front(fport), "/slow"));
    let s = h
        .wait_for("slow in flight", |s| {
            s.backends.iter().any(|b| b.active_connections == 1)
        })
        .await;
    let busy = s
        .backends
        .iter()
        .find(|b| b.active_connections == 1)
        .unwrap()
        .id
        .clone();
    // Round robin: of the next two requests one goes to the busy backend,
    // over a second connection that then sits idle in the pool.
    let mut c = Http::connect(front(fport)).await;
    let mut to_busy = 0;
    for _ in 0..2 {
        let (status, body) = c.get("/x").await;
        assert_eq!(status, 200);
        to_busy += usize::from(who(&body) == busy);
    }
    assert_eq!(to_busy, 1);
    let busy_b = bs.iter().find(|b| b.id == busy).unwrap();
    let open = || {
        busy_b
            .open_app_conns
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    assert_eq!(open(), 2);

    for b in &mut cfg.backends {
        b.draining = b.id == busy;
    }
    client::put_config(&h.sock, &cfg).await.unwrap();
    // The idle pooled connection is closed right away; the in-flight one stays.
    for _ in 0..200 {
        if open() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(open(), 1);
    let s = h.status().await;
    let b = s.backends.iter().find(|b| b.id == busy).unwrap();
    assert!(b.draining);
    assert_eq!(b.active_connections, 1, "in-flight request still reported");

    for _ in 0..10 {
        let (status, body) = c.get("/x").await;
        assert_eq!(status, 200);
        assert_ne!(who(&body), busy);
    }
    assert!(!slow.is_finished());
    let (status, body) = slow.await.unwrap();
    assert_eq!((status, who(&body)), (200, busy.as_str()));
    h.wait_for("drained", |s| {
        s.backends.iter().all(|b| b.active_connections == 0)
    })
    .await;
    let s = h.status().await;
    assert_eq!(s.totals.failed, 0);
    assert_eq!(s.totals.responses_2xx, 13);
    // The connection that carried the slow request is not pooled again.
    for _ in 0..200 {
        if open() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(open(), 0);
    assert_eq!(
        busy_b.app_conns.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_no_healthy_backend_behaviors() {
    let ips = [ip("127.0.0.14"), ip("127.0.0.15")];
    let (bport, bs) = start_http(&ips);
    for b in &bs {
        b.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    }
    let fport = free_port();
    let mut cfg = l7_config("down", fport, bport, &ips);
    let h = Harness::start("down", &cfg).await;
    let s = h.status().await;
    assert!(
        s.backends.iter().all(|b| !b.healthy),
        "new backends start down"
    );
    let (status, _) = get_once(front(fport), "/x").await;
    assert_eq!(status, 503);
    let s = h.status().await;
    assert_eq!(
        (
            s.totals.failed,
            s.totals.responses_non_2xx,
            s.totals.requests
        ),
        (1, 1, 1)
    );

    cfg.no_healthy_backends_behavior = NoHealthyBackendsBehavior::AllProbedUp;
    client::put_config(&h.sock, &cfg).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut c = Http::connect(front(fport)).await;
    for _ in 0..4 {
        let (status, body) = c.get("/x").await;
        assert_eq!(status, 200);
        seen.insert(who(&body).to_owned());
    }
    assert_eq!(seen.len(), 2);

    // Probes recover after `threshold` successes... and b0 alone is used.
    bs[0]
        .healthy
        .store(true, std::sync::atomic::Ordering::SeqCst);
    h.wait_healthy(&["b0"]).await;
    for _ in 0..4 {
        let (status, body) = c.get("/x").await;
        assert_eq!((status, who(&body)), (200, "b0"));
    }
    h.shutdown().await;
}

async fn read_line(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b).await {
            Ok(1) if b[0] != b'\n' => out.push(b[0]),
            _ => return String::from_utf8(out).unwrap(),
        }
    }
}

async fn echo(s: &mut TcpStream, msg: &str) -> String {
    s.write_all(msg.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).await.unwrap();
    String::from_utf8(buf).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_proxies_and_established_flow_survives_unhealthy_backend() {
    let ips = [ip("127.0.0.16"), ip("127.0.0.17")];
    let (bport, ls) = bind_same_port(&ips);
    let _echo: Vec<EchoBackend> = ls
        .into_iter()
        .enumerate()
        .map(|(i, l)| EchoBackend::start(&format!("b{i}"), l))
        .collect();
    let (pport, pls) = bind_same_port(&ips);
    let probes: Vec<EchoBackend> = pls
        .into_iter()
        .map(|l| EchoBackend::start("p", l))
        .collect();
    let fport = free_port();
    let cfg = LbConfig {
        name: "l4".into(),
        rules: vec![rule("tcp", fport, bport, Layer::L4, Some("tp"))],
        probes: vec![Probe {
            name: "tp".into(),
            protocol: ProbeProtocol::Tcp,
            port: pport,
            request_path: None,
            interval_in_seconds: 5,
            probe_threshold: 2,
            interval_ms: Some(50),
        }],
        backends: backends(&ips),
        no_healthy_backends_behavior: NoHealthyBackendsBehavior::AllProbedDown,
        frontend_limits: Default::default(),
    };
    let h = Harness::start("l4", &cfg).await;
    h.wait_healthy(&["b0", "b1"]).await;

    let mut flow = TcpStream::connect(front(fport)).await.unwrap();
    let id = read_line(&mut flow).await;
    assert!(id == "b0" || id == "b1", "{id}");
    assert_eq!(echo(&mut flow, "ping").await, "ping");
    let idx: usize = id[1..].parse().unwrap();
    let other = format!("b{}", 1 - idx);

    // Its probe starts failing: out of rotation for new flows only.
    probes[idx].stop_listening();
    h.wait_for("down", |s| {
        s.backends.iter().any(|b| b.id == id && !b.healthy)
    })
    .await;
    assert_eq!(echo(&mut flow, "still there").await, "still there");
    for _ in 0..10 {
        let mut s = TcpStream::connect(front(fport)).await.unwrap();
        assert_eq!(read_line(&mut s).await, other);
    }
    let s = h
        .wait_for("counts", |s| {
            s.backends
                .iter()
                .all(|b| b.active_connections == u64::from(b.id == id))
        })
        .await;
    assert_eq!(s.totals.failed, 0);
    drop(flow);
    h.wait_for("flow closed", |s| {
        s.backends.iter().all(|b| b.active_connections == 0)
    })
    .await;

    // Nothing healthy (AllProbedDown): new flows are refused.
    probes[1 - idx].stop_listening();
    h.wait_for("all down", |s| s.backends.iter().all(|b| !b.healthy))
        .await;
    // The RST may already surface on connect, or on the first read.
    if let Ok(mut s) = TcpStream::connect(front(fport)).await {
        let mut buf = [0u8; 8];
        let r = s.read(&mut buf).await;
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
    h.wait_for("refusal counted", |s| s.totals.failed == 1)
        .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_validates_persists_and_manages_listeners() {
    let dir = Harness::dir("persist");
    let h = Harness::start_in(dir.clone()).await;
    let s = h.status().await;
    assert_eq!((s.name.as_str(), s.backends.len()), ("", 0));

    let ips = [ip("127.0.0.18")];
    let (bport, _bs) = start_http(&ips);
    let (f1, f2) = (free_port(), free_port());
    let mut cfg = l7_config("persist", f1, bport, &ips);
    cfg.rules[0].probe = None;
    client::put_config(&h.sock, &cfg).await.unwrap();
    assert_eq!(get_once(front(f1), "/").await.0, 200);

    // Invalid config: 400 with a code, nothing changes.
    let mut bad = cfg.clone();
    bad.probes[0].probe_threshold = 0;
    match client::put_config(&h.sock, &bad).await {
        Err(LbError::AdminApi {
            status,
            code,
            message,
        }) => {
            assert_eq!((status, code.as_str()), (400, "InvalidConfig"));
            assert!(message.contains("probeThreshold"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Malformed JSON over a raw socket.
    let mut raw = tokio::net::UnixStream::connect(&h.sock).await.unwrap();
    raw.write_all(
        b"PUT /config HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope",
    )
    .await
    .unwrap();
    let mut resp = String::new();
    raw.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("\"code\":\"MalformedJson\""), "{resp}");

    // Adding a rule adds a listener; removing it closes it.
    cfg.rules.push(rule("second", f2, bport, Layer::L7, None));
    client::put_config(&h.sock, &cfg).await.unwrap();
    assert_eq!(get_once(front(f2), "/").await.0, 200);
    cfg.rules.pop();
    client::put_config(&h.sock, &cfg).await.unwrap();
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(front(f2)).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "removed listener still accepting");
    assert_eq!(get_once(front(f1), "/").await.0, 200);

    // Restart: the persisted config comes back.
    h.shutdown().await;
    assert!(!dir.join("lb.json.tmp").exists());
    let h = Harness::start_in(dir).await;
    let s = h.status().await;
    assert_eq!(s.name, "persist");
    assert_eq!(
        s.backends.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
        vec!["b0"]
    );
    assert_eq!(get_once(front(f1), "/").await.0, 200);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_lets_inflight_finish() {
    let ips = [ip("127.0.0.19")];
    let (bport, _bs) = start_http(&ips);
    let fport = free_port();
    let mut cfg = l7_config("graceful", fport, bport, &ips);
    cfg.rules[0].probe = None;
    let h = Harness::start("graceful", &cfg).await;
    let slow = tokio::spawn(get_once(front(fport), "/slow"));
    h.wait_for("in flight", |s| s.backends[0].active_connections == 1)
        .await;
    let sock = h.sock.clone();
    // A guard against a hang, not a speed check: shutdown returns once the request is done.
    tokio::time::timeout(Duration::from_secs(60), h.shutdown())
        .await
        .expect("shutdown waits only for the in-flight request");
    assert_eq!(slow.await.unwrap().0, 200, "in-flight request completed");
    assert!(
        TcpStream::connect(front(fport)).await.is_err(),
        "listener closed"
    );
    assert!(!sock.exists(), "admin socket removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_source_ip_is_sticky_and_malformed_http_is_rejected() {
    let ips = [ip("127.0.0.20"), ip("127.0.0.21"), ip("127.0.0.22")];
    let (bport, _bs) = start_http(&ips);
    let fport = free_port();
    let mut cfg = l7_config("sticky", fport, bport, &ips);
    cfg.rules[0].load_distribution = LoadDistribution::SourceIp;
    let h = Harness::start("sticky", &cfg).await;
    h.wait_healthy(&["b0", "b1", "b2"]).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5 {
        let mut c = Http::connect(front(fport)).await;
        for _ in 0..4 {
            let (status, body) = c.get("/x").await;
            assert_eq!(status, 200);
            seen.insert(who(&body).to_owned());
        }
    }
    assert_eq!(seen.len(), 1, "SourceIP must pin one client IP: {seen:?}");

    let mut raw = TcpStream::connect(front(fport)).await.unwrap();
    raw.write_all(b"\x00\x01garbage \r\n\r\n").await.unwrap();
    let mut resp = Vec::new();
    let _ = raw.read_to_end(&mut resp).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 400"),
        "{resp}"
    );
    // Still serving.
    assert_eq!(get_once(front(fport), "/x").await.0, 200);
    h.shutdown().await;
}

/// Raw HTTP/1.1 backend for the framings a hyper test backend does not
/// produce: a chunked body written in two pieces, `Connection: close`, and
/// a HEAD answer. Counts accepted connections.
fn start_raw_http(l: std::net::TcpListener) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    let conns = std::sync::Arc::new(AtomicU64::new(0));
    let l = tokio::net::TcpListener::from_std(l).unwrap();
    let count = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut b = [0u8; 1024];
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    if head.starts_with("HEAD ") {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
                            .await;
                    } else if head.starts_with("GET /close ") {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                            .await;
                        return;
                    } else {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                            .await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let _ = s.write_all(b"6\r\n world\r\n0\r\n\r\n").await;
                    }
                }
            });
        }
    });
    conns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_streams_chunked_head_and_close_responses_and_reuses_connections() {
    use std::sync::atomic::Ordering::SeqCst;
    let ips = [ip("127.0.0.46")];
    let (bport, mut ls) = bind_same_port(&ips);
    let conns = start_raw_http(ls.remove(0));
    let fport = free_port();
    let cfg = LbConfig {
        name: "framing".into(),
        rules: vec![rule("http", fport, bport, Layer::L7, None)],
        probes: vec![],
        backends: backends(&ips),
        no_healthy_backends_behavior: NoHealthyBackendsBehavior::AllProbedDown,
        frontend_limits: Default::default(),
    };
    let h = Harness::start("framing", &cfg).await;
    let mut c = Http::connect(front(fport)).await;
    for _ in 0..2 {
        assert_eq!(c.get("/chunked").await, (200, "hello world".to_owned()));
    }
    assert_eq!(c.request("HEAD", "/h", "").await, (200, String::new()));
    assert_eq!(conns.load(SeqCst), 1, "kept alive after chunked and HEAD");
    assert_eq!(c.get("/close").await, (200, "ok".to_owned()));
    assert_eq!(c.get("/chunked").await, (200, "hello world".to_owned()));
    assert_eq!(conns.load(SeqCst), 2, "not reused after Connection: close");
    let s = h.status().await;
    assert_eq!((s.totals.requests, s.totals.failed), (5, 0));
    h.shutdown().await;
}

/// Binds `addr` again once the killed backend that held it has let it go.
async fn rebind(addr: SocketAddr) -> std::net::TcpListener {
    for _ in 0..200 {
        if let Ok(l) = std::net::TcpListener::bind(addr) {
            l.set_nonblocking(true).unwrap();
            return l;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{addr} not free again");
}

/// A config whose probes run once at the start and then not for a minute: anything that
/// happens during the test is seen by the data path alone.
fn l7_config_slow_probe(name: &str, fport: u16, bport: u16, ips: &[IpAddr]) -> LbConfig {
    let mut cfg = l7_config(name, fport, bport, ips);
    cfg.probes[0].interval_ms = Some(60_000);
    cfg
}

/// Per client: 200s and every other status.
type LoadClient = tokio::task::JoinHandle<(u64, Vec<u16>)>;

/// Clients sending GETs until stopped.
fn get_load(fport: u16, clients: usize) -> (tokio::sync::watch::Sender<bool>, Vec<LoadClient>) {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let tasks = (0..clients)
        .map(|_| {
            let rx = rx.clone();
            tokio::spawn(async move {
                let mut c = Http::connect(front(fport)).await;
                let (mut ok, mut bad) = (0, Vec::new());
                while !*rx.borrow() {
                    match c.get("/x").await.0 {
                        200 => ok += 1,
                        s => bad.push(s),
                    }
                }
                (ok, bad)
            })
        })
        .collect();
    (stop, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_suspect_backend_back_at_its_address_returns_before_its_next_probe() {
    // b0 dies (its connections and listener vanish), a request marks it suspect, and it comes
    // back at the same address: it is back in rotation as soon as it answers, not at its next
    // scheduled probe (a minute away here).
    let ips = [ip("127.0.0.40"), ip("127.0.0.41")];
    let (bport, mut bs) = start_http(&ips);
    let fport = free_port();
    let h = Harness::start(
        "reprobe",
        &l7_config_slow_probe("reprobe", fport, bport, &ips),
    )
    .await;
    h.wait_healthy(&["b0", "b1"]).await;
    let addr = bs[0].addr;
    bs[0].kill_hard();
    let mut c = Http::connect(front(fport)).await;
    for _ in 0..4 {
        let (status, body) = c.get("/x").await;
        assert_eq!((status, who(&body)), (200, "b1"));
    }
    let s = h
        .wait_for("b0 suspect", |s| {
            s.backends.iter().any(|b| b.id == "b0" && b.suspect)
        })
        .await;
    assert!(s.backends.iter().all(|b| b.healthy), "{s:?}");
    bs[0] = HttpBackend::start("b0", rebind(addr).await);
    h.wait_for("b0 back in rotation", |s| {
        s.backends.iter().all(|b| b.healthy && !b.suspect)
    })
    .await;
    let mut seen = HashMap::<String, u32>::new();
    for _ in 0..10 {
        let (status, body) = c.get("/x").await;
        assert_eq!(status, 200);
        *seen.entry(who(&body).to_owned()).or_default() += 1;
    }
    assert_eq!(seen.get("b0"), Some(&5), "{seen:?}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_backends_killed_in_turn_under_load_fail_no_get() {
    // The e2e chaos test at the LB's level: three machines killed in turn under load, each back
    // at its address (serving directly) before the next dies. No probe runs in between, so
    // only the data path's suspect marks know of the outages; they must neither outlive an
    // outage nor, stacked, leave no backend.
    let ips = [ip("127.0.0.42"), ip("127.0.0.43"), ip("127.0.0.44")];
    let (bport, mut bs) = start_http(&ips);
    let fport = free_port();
    let h = Harness::start(
        "inturn",
        &l7_config_slow_probe("inturn", fport, bport, &ips),
    )
    .await;
    h.wait_healthy(&["b0", "b1", "b2"]).await;
    let (stop, tasks) = get_load(fport, 4);
    for (i, b) in bs.iter_mut().enumerate() {
        let hits = b.hits.load(std::sync::atomic::Ordering::SeqCst);
        while b.hits.load(std::sync::atomic::Ordering::SeqCst) < hits + 20 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let addr = b.addr;
        b.kill_hard();
        let id = format!("b{i}");
        h.wait_for("the dead backend suspect", |s| {
            s.backends.iter().any(|b| b.id == id && b.suspect)
        })
        .await;
        *b = HttpBackend::start(&id, rebind(addr).await);
        assert_eq!(get_once(addr, "/x").await.0, 200);
        // What the e2e test could see: every backend probed up.
        h.wait_healthy(&["b0", "b1", "b2"]).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop.send(true);
    let (mut ok, mut bad) = (0, Vec::new());
    for t in tasks {
        let (o, b) = t.await.unwrap();
        ok += o;
        bad.extend(b);
    }
    let s = h.status().await;
    assert!(
        bad.is_empty(),
        "{} failed ({ok} ok): {bad:?} {s:?}",
        bad.len()
    );
    assert!(ok > 100, "too little load: {ok}");
    assert_eq!(s.totals.failed, 0, "{s:?}");
    h.shutdown().await;
}

/// One response off a raw client connection (Content-Length bodies only):
/// head and body, or `None` at end of stream.
async fn raw_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, String)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                buf.drain(..end + 4 + len);
                return Some((head, body));
            }
        }
        let mut b = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&b[..n]),
            Err(_) => panic!("no response in 5 s: {:?}", String::from_utf8_lossy(buf)),
        }
    }
}

/// Sends `input` in one write and reads responses until the LB closes.
async fn raw_exchange(fport: u16, input: &[u8]) -> Vec<(String, String)> {
    let mut s = TcpStream::connect(front(fport)).await.unwrap();
    s.write_all(input).await.unwrap();
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    while let Some(r) = raw_response(&mut s, &mut buf).await {
        let close = r.0.contains("connection: close") || r.0.starts_with("http/1.0");
        out.push(r);
        if close {
            // The LB must close now; nothing more may come.
            assert!(raw_response(&mut s, &mut buf).await.is_none());
            break;
        }
    }
    out
}

/// The inline codec and the hyper fallback on one connection: pipelined
/// requests answered in order across the hand-over, X-Forwarded-For, and the
/// framing cases hyper still decides (smuggling shapes, HTTP/1.0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_pipelining_fallback_and_smuggling_shapes() {
    let ips = [ip("127.0.0.47")];
    let (bport, _bs) = start_http(&ips);
    let fport = free_port();
    let h = Harness::start("codec", &l7_config("codec", fport, bport, &ips)).await;
    h.wait_healthy(&["b0"]).await;

    let got = raw_exchange(
        fport,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n\
          POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
          GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let bodies: Vec<&str> = got.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(
        bodies,
        [
            "b0|127.0.0.1|0",
            "b0|10.0.0.1, 127.0.0.1|0",
            "b0|127.0.0.1|3",
            "b0|127.0.0.1|0"
        ]
    );
    assert!(got.iter().all(|(h, _)| h.starts_with("http/1.1 200 ")));
    assert!(got[0].0.contains("\r\ndate: "), "{}", got[0].0);

    // CL+TE: hyper takes the chunked body and closes; the tail is never a request.
    let got = raw_exchange(
        fport,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(got.len(), 1, "{got:?}");
    // Conflicting lengths, obs-fold, a bad chunk size: 400 (or a close) and nothing else.
    // A bad chunk size shows only while hyper streams the body to the backend: 502, as
    // before the codec.
    for bad in [
        &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxGET / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nX-A: 1\r\n 2\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    ] {
        let got = raw_exchange(fport, bad).await;
        assert!(
            got.len() <= 1
                && got
                    .iter()
                    .all(|(h, _)| h.starts_with("http/1.1 400") || h.starts_with("http/1.1 502")),
            "{:?}: {got:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // HTTP/1.0 (hyper's): answered as 1.0, then closed.
    let got = raw_exchange(fport, b"GET /e HTTP/1.0\r\n\r\nGET /f HTTP/1.0\r\n\r\n").await;
    assert_eq!(got.len(), 1);
    assert!(got[0].0.starts_with("http/1.0 200 "), "{}", got[0].0);
    // A HEAD answer keeps its length and has no body; the next request follows.
    let got = raw_exchange(
        fport,
        b"HEAD /g HTTP/1.1\r\n\r\nGET /h HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(got.len(), 2);
    assert!(got[0].0.contains("content-length: 14"), "{}", got[0].0);
    let s = h.status().await;
    assert_eq!(s.totals.failed, 1, "only the bad chunked body");
    h.shutdown().await;
}
