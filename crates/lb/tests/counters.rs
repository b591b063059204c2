//! The counters `/metrics` is made of, against real backends on loopback: they move by exactly
//! the requests sent, per frontend and per backend.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;

use common::*;
use lb::{
    Backend, Layer, LbConfig, LoadDistribution, NoHealthyBackendsBehavior, Rule, StatusClass,
};

const SUCCESS: usize = StatusClass::Success as usize;
const SERVER_ERROR: usize = StatusClass::ServerError as usize;

fn config(fport: u16, bport: u16, ips: &[&str], draining: bool) -> LbConfig {
    LbConfig {
        name: "counted".into(),
        rules: vec![Rule {
            name: "web".into(),
            frontend: SocketAddr::new(ip("127.0.0.1"), fport),
            backend_port: bport,
            layer: Layer::L7,
            load_distribution: LoadDistribution::Default,
            idle_timeout_in_minutes: 4,
            enable_tcp_reset: false,
            // No probe: the dead backend is a candidate until its connect fails.
            probe: None,
        }],
        probes: vec![],
        backends: ips
            .iter()
            .enumerate()
            .map(|(i, a)| Backend {
                id: format!("b{i}"),
                ip: ip(a),
                draining,
                image: Some("v1".into()),
            })
            .collect(),
        no_healthy_backends_behavior: NoHealthyBackendsBehavior::AllProbedDown,
        frontend_limits: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_the_requests_sent() {
    let ips = ["127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.24"];
    let addrs: Vec<_> = ips.iter().map(|a| ip(a)).collect();
    let (bport, mut ls) = bind_same_port(&addrs);
    drop(ls.pop()); // b3: nothing listens there
    let bs: Vec<HttpBackend> = ls
        .into_iter()
        .enumerate()
        .map(|(i, l)| HttpBackend::start(&format!("b{i}"), l))
        .collect();
    let fport = free_port();
    let h = Harness::start("counted", &config(fport, bport, &ips, false)).await;

    // 137 requests over 3 keep-alive connections, every one answered 2xx.
    let mut conns = vec![
        Http::connect(front(fport)).await,
        Http::connect(front(fport)).await,
        Http::connect(front(fport)).await,
    ];
    for i in 0..137 {
        let (status, _) = conns[i % 3].get("/x").await;
        assert_eq!(status, 200);
    }
    let s = h.status().await;
    let f = &s.frontends[0];
    assert_eq!((f.rule.as_str(), f.frontend), ("web", front(fport)));
    assert_eq!(f.open_connections, 3);
    // 5 answers 5xx from the backends themselves (`/health` of an unhealthy backend).
    for b in &bs {
        b.healthy.store(false, SeqCst);
    }
    for i in 0..5 {
        let (status, _) = conns[i % 3].get("/health").await;
        assert_eq!(status, 500);
    }
    drop(conns);

    // Every backend draining: the LB's own 503s, counted on the frontend only.
    client_put(&h, &config(fport, bport, &ips, true)).await;
    for _ in 0..3 {
        let (status, _) = get_once(front(fport), "/x").await;
        assert_eq!(status, 503);
    }

    let s = h
        .wait_for("connections closed", |s| {
            s.frontends[0].open_connections == 0
        })
        .await;
    assert_eq!(s.frontends.len(), 1);
    let f = &s.frontends[0];
    assert_eq!(f.connections, 3 + 3);
    assert_eq!(f.responses[SUCCESS], 137);
    assert_eq!(f.responses[SERVER_ERROR], 5 + 3);
    assert_eq!(f.responses.iter().sum::<u64>(), 145);
    assert_eq!(f.no_backend, 3);
    assert_eq!(f.tries_exhausted, 0);
    // The dead backend was tried once, then skipped as suspect.
    assert_eq!(f.retries, 1);
    assert_eq!(f.latency.count(), 145);
    assert_eq!(f.latency.buckets.len(), lb::LATENCY_BOUNDS_NS.len() + 1);
    assert!(f.latency.sum_ns > 0);

    let backend_2xx: u64 = s.backends.iter().map(|b| b.responses[SUCCESS]).sum();
    let backend_5xx: u64 = s.backends.iter().map(|b| b.responses[SERVER_ERROR]).sum();
    assert_eq!((backend_2xx, backend_5xx), (137, 5));
    for (b, backend) in s.backends.iter().zip(&bs) {
        // `hits` counts what the backend answered but `/health`.
        assert_eq!(b.responses[SUCCESS], backend.hits.load(SeqCst), "{}", b.id);
        assert_eq!((b.failures, b.connect_errors), (0, 0), "{}", b.id);
    }
    let dead = s.backends.iter().find(|b| b.id == "b3").unwrap();
    assert_eq!(dead.responses, [0; StatusClass::COUNT]);
    assert_eq!(
        (
            dead.failures,
            dead.connect_errors,
            dead.connect_timeouts,
            dead.exchange_errors
        ),
        (1, 1, 0, 0)
    );
    // The LB-wide totals the deploy receipt reads agree.
    assert_eq!(s.totals.responses_2xx, 137);
    assert_eq!(s.totals.responses_non_2xx, 8);
    assert_eq!(s.totals.failed, 3);

    // b0 reimaged onto another image: a new backend whose counters start at zero; the others
    // keep theirs, and the frontend's keep counting.
    let mut cfg = config(fport, bport, &ips, false);
    cfg.backends[0].image = Some("v2".into());
    client_put(&h, &cfg).await;
    let s2 = h.status().await;
    let b0 = &s2.backends[0];
    assert_eq!((b0.id.as_str(), b0.image.as_deref()), ("b0", Some("v2")));
    assert_eq!((b0.responses, b0.requests), ([0; StatusClass::COUNT], 0));
    assert_eq!(s2.backends[1].responses, s.backends[1].responses);
    assert_eq!(s2.backends[1].image.as_deref(), Some("v1"));
    assert_eq!(s2.frontends[0].responses, s.frontends[0].responses);
    h.shutdown().await;
}

fn front(port: u16) -> SocketAddr {
    SocketAddr::new(ip("127.0.0.1"), port)
}

async fn client_put(h: &Harness, cfg: &LbConfig) {
    lb::client::put_config(&h.sock, cfg).await.unwrap();
}

/// A backend whose image changes in one config (a reimage that ended between two pushes) is a
/// new backend: out of rotation until probed up again, counters at zero. A config that names
/// an image for the first time (a newer daemon) changes neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_image_is_probed_again_a_first_label_is_not() {
    let ips = ["127.0.0.25", "127.0.0.26"];
    let addrs: Vec<_> = ips.iter().map(|a| ip(a)).collect();
    let (bport, ls) = bind_same_port(&addrs);
    let bs: Vec<HttpBackend> = ls
        .into_iter()
        .enumerate()
        .map(|(i, l)| HttpBackend::start(&format!("b{i}"), l))
        .collect();
    let fport = free_port();
    let mut cfg = config(fport, bport, &ips, false);
    cfg.rules[0].probe = Some("hp".into());
    cfg.probes = vec![lb::Probe {
        name: "hp".into(),
        protocol: lb::ProbeProtocol::Http,
        port: bport,
        request_path: Some("/health".into()),
        interval_in_seconds: 5,
        // Two probes: a backend probed again stays down for a while.
        probe_threshold: 2,
        interval_ms: Some(200),
    }];
    for b in &mut cfg.backends {
        b.image = None;
    }
    let h = Harness::start("reprobe", &cfg).await;
    h.wait_healthy(&["b0", "b1"]).await;
    let mut c = Http::connect(front(fport)).await;
    for _ in 0..10 {
        assert_eq!(c.get("/x").await.0, 200);
    }

    // First label: same backends, still healthy, counters kept.
    for b in &mut cfg.backends {
        b.image = Some("v1".into());
    }
    client_put(&h, &cfg).await;
    let s = h.status().await;
    assert!(s.backends.iter().all(|b| b.healthy), "{s:?}");
    assert_eq!(
        s.backends.iter().map(|b| b.responses[SUCCESS]).sum::<u64>(),
        10
    );
    assert!(s.backends.iter().all(|b| b.image.as_deref() == Some("v1")));

    // b0 on v2 (in the same config as its undrain) and not answering its probe yet: down at
    // once (a new backend), where the old probe state would keep it up for two failures.
    bs[0].healthy.store(false, SeqCst);
    cfg.backends[0].image = Some("v2".into());
    client_put(&h, &cfg).await;
    let s = h.status().await;
    let (b0, b1) = (&s.backends[0], &s.backends[1]);
    assert_eq!(
        (b0.healthy, b0.requests, b0.image.as_deref()),
        (false, 0, Some("v2"))
    );
    assert!(b1.healthy);
    // Meanwhile every request goes to b1.
    for _ in 0..6 {
        let (status, body) = c.get("/x").await;
        assert_eq!((status, who(&body)), (200, "b1"));
    }
    bs[0].healthy.store(true, SeqCst);
    h.wait_healthy(&["b0", "b1"]).await;
    h.shutdown().await;
}
