//! Frontend limits against clients that hold connections: the L7 header timeout (slowloris)
//! and the per-frontend connection cap (L7 and L4). Real sockets on loopback only.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use lb::{
    Backend, FrontendLimits, Layer, LbConfig, LoadDistribution, NoHealthyBackendsBehavior, Probe,
    ProbeProtocol, Rule,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(layer: Layer, fport: u16, bport: u16, backend: &str, limits: FrontendLimits) -> LbConfig {
    let (protocol, request_path) = match layer {
        Layer::L7 => (ProbeProtocol::Http, Some("/health".to_string())),
        Layer::L4 => (ProbeProtocol::Tcp, None),
    };
    LbConfig {
        name: "limits".into(),
        rules: vec![Rule {
            name: "r".into(),
            frontend: SocketAddr::new(ip("127.0.0.1"), fport),
            backend_port: bport,
            layer,
            load_distribution: LoadDistribution::Default,
            idle_timeout_in_minutes: 4,
            enable_tcp_reset: false,
            probe: Some("p".into()),
        }],
        probes: vec![Probe {
            name: "p".into(),
            protocol,
            port: bport,
            request_path,
            interval_in_seconds: 5,
            probe_threshold: 1,
            interval_ms: Some(50),
        }],
        backends: vec![Backend {
            id: "b0".into(),
            ip: ip(backend),
            draining: false,
            image: None,
        }],
        no_healthy_backends_behavior: NoHealthyBackendsBehavior::AllProbedDown,
        frontend_limits: limits,
    }
}

/// A slowloris client: opens a connection, starts a request head and trickles one header
/// line every 100 ms, reconnecting whenever the LB closes it, until `stop`. Counts the
/// connections the LB closed and any response it got (there must be none).
async fn slowloris(
    front: SocketAddr,
    stop: Arc<AtomicBool>,
    closed: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
) {
    while !stop.load(SeqCst) {
        let Ok(mut s) = TcpStream::connect(front).await else {
            continue;
        };
        if s.write_all(b"GET / HTTP/1.1\r\nHost: lb.test\r\n")
            .await
            .is_err()
        {
            closed.fetch_add(1, SeqCst);
            continue;
        }
        let mut buf = [0u8; 256];
        loop {
            if stop.load(SeqCst) {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                Err(_) => {}
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed.fetch_add(1, SeqCst);
                    break;
                }
                Ok(Ok(_)) => {
                    answered.fetch_add(1, SeqCst);
                    break;
                }
            }
            // A write to a connection the LB closed fails (or is reset); the next read says so.
            let _ = s.write_all(b"X-Slow: 1\r\n").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_slowloris_is_cut_at_the_header_timeout_and_clients_keep_getting_200() {
    let (bport, ls) = bind_same_port(&[ip("127.0.0.50")]);
    let _backend = HttpBackend::start("b0", ls.into_iter().next().unwrap());
    let fport = free_port();
    let front = SocketAddr::new(ip("127.0.0.1"), fport);
    let limits = FrontendLimits {
        max_connections: 16,
        header_timeout_ms: 500,
    };
    let h = Harness::start(
        "slowloris",
        &config(Layer::L7, fport, bport, "127.0.0.50", limits),
    )
    .await;
    h.wait_healthy(&["b0"]).await;

    // One connection that sends half a head and then nothing: open before the header
    // timeout, closed after it.
    let mut half = TcpStream::connect(front).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let opened = Instant::now();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(250), half.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "closed before the header timeout: {early:?}"
    );
    let r = tokio::time::timeout(Duration::from_secs(10), half.read(&mut buf))
        .await
        .expect("a half-sent head is closed at the header timeout");
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "no response to half a head: {r:?}"
    );
    assert!(opened.elapsed() >= Duration::from_millis(500));

    // 32 slowloris clients against a cap of 16, while a normal client asks 10 times, each on a
    // fresh connection that has to get through the same backlog.
    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = (0..32)
        .map(|_| {
            tokio::spawn(slowloris(
                front,
                stop.clone(),
                closed.clone(),
                answered.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ok = 0;
    for i in 0..10 {
        let (status, body) = tokio::time::timeout(Duration::from_secs(20), get_once(front, "/"))
            .await
            .unwrap_or_else(|_| panic!("request {i} starved"));
        assert_eq!((status, who(&body)), (200, "b0"), "request {i}");
        ok += 1;
    }
    // Keep the attack going until the LB has cut as many slow connections as there are attackers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while closed.load(SeqCst) < 32 {
        assert!(Instant::now() < deadline, "closed {}", closed.load(SeqCst));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, SeqCst);
    for a in attackers {
        a.await.unwrap();
    }
    assert_eq!(ok, 10);
    assert_eq!(
        answered.load(SeqCst),
        0,
        "a slow head never gets a response"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_idle_keepalive_gets_the_idle_timeout_not_the_header_timeout() {
    let (bport, ls) = bind_same_port(&[ip("127.0.0.51")]);
    let _backend = HttpBackend::start("b0", ls.into_iter().next().unwrap());
    let fport = free_port();
    let limits = FrontendLimits {
        max_connections: 16,
        header_timeout_ms: 300,
    };
    let h = Harness::start(
        "keepalive",
        &config(Layer::L7, fport, bport, "127.0.0.51", limits),
    )
    .await;
    h.wait_healthy(&["b0"]).await;
    let front = SocketAddr::new(ip("127.0.0.1"), fport);
    let mut c = Http::connect(front).await;
    assert_eq!(c.get("/a").await.0, 200);
    // Idle between requests for several header timeouts: the connection stays.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(c.get("/b").await.0, 200);
    assert_eq!(h.status().await.totals.connections, 1, "one connection");
    h.shutdown().await;
}

async fn greeting(s: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut buf = [0u8; 16];
    match tokio::time::timeout(wait, s.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_connection_cap_queues_flows_until_a_slot_frees() {
    let (bport, ls) = bind_same_port(&[ip("127.0.0.52")]);
    let _echo = EchoBackend::start("b0", ls.into_iter().next().unwrap());
    let fport = free_port();
    let mut cfg = config(
        Layer::L4,
        fport,
        bport,
        "127.0.0.52",
        FrontendLimits {
            max_connections: 3,
            header_timeout_ms: 1000,
        },
    );
    let h = Harness::start("l4cap", &cfg).await;
    h.wait_healthy(&["b0"]).await;
    let front = SocketAddr::new(ip("127.0.0.1"), fport);
    let mut flows = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(front).await.unwrap();
        assert_eq!(
            greeting(&mut s, Duration::from_secs(5)).await.as_deref(),
            Some("b0\n")
        );
        flows.push(s);
    }
    // The fourth waits in the backlog: connected by the kernel, not relayed.
    let mut fourth = TcpStream::connect(front).await.unwrap();
    assert_eq!(
        greeting(&mut fourth, Duration::from_millis(500)).await,
        None
    );
    drop(flows.pop());
    assert_eq!(
        greeting(&mut fourth, Duration::from_secs(5))
            .await
            .as_deref(),
        Some("b0\n")
    );
    // A larger cap from a config update applies to the running listener.
    let mut fifth = TcpStream::connect(front).await.unwrap();
    assert_eq!(greeting(&mut fifth, Duration::from_millis(500)).await, None);
    cfg.frontend_limits.max_connections = 4;
    lb::client::put_config(&h.sock, &cfg).await.unwrap();
    assert_eq!(
        greeting(&mut fifth, Duration::from_secs(5))
            .await
            .as_deref(),
        Some("b0\n")
    );
    assert_eq!(h.status().await.totals.connections, 5);
    h.shutdown().await;
}
