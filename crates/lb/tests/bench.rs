//! Rough throughput check (ignored by default):
//! `cargo test --release -p lb --test bench -- --ignored --nocapture`

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use lb::{Backend, Layer, LbConfig, LoadDistribution, NoHealthyBackendsBehavior, Rule};

async fn load(addr: SocketAddr, conns: usize, dur: Duration) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut c = Http::connect(addr).await;
            let mut n = 0u64;
            while start.elapsed() < dur {
                let (s, _) = c.get("/x").await;
                assert_eq!(s, 200);
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn bench_l7_and_l4() {
    let ips = [ip("127.0.0.30"), ip("127.0.0.31")];
    let (bport, ls) = bind_same_port(&ips);
    let _bs: Vec<HttpBackend> = ls
        .into_iter()
        .enumerate()
        .map(|(i, l)| HttpBackend::start(&format!("b{i}"), l))
        .collect();
    let (f7, f4) = (free_port(), free_port());
    let mk = |name: &str, port: u16, layer: Layer| Rule {
        name: name.into(),
        frontend: SocketAddr::new(ip("127.0.0.1"), port),
        backend_port: bport,
        layer,
        load_distribution: LoadDistribution::Default,
        idle_timeout_in_minutes: 4,
        enable_tcp_reset: false,
        probe: None,
    };
    let cfg = LbConfig {
        name: "bench".into(),
        rules: vec![mk("l7", f7, Layer::L7), mk("l4", f4, Layer::L4)],
        probes: vec![],
        backends: ips
            .iter()
            .enumerate()
            .map(|(i, ip)| Backend {
                id: format!("b{i}"),
                ip: *ip,
                draining: false,
                image: None,
            })
            .collect(),
        no_healthy_backends_behavior: NoHealthyBackendsBehavior::AllProbedDown,
        frontend_limits: Default::default(),
    };
    let h = Harness::start("bench", &cfg).await;
    let d = Duration::from_secs(3);
    let direct = load(SocketAddr::new(ips[0], bport), 32, d).await;
    let l7 = load(SocketAddr::new(ip("127.0.0.1"), f7), 32, d).await;
    let l4 = load(SocketAddr::new(ip("127.0.0.1"), f4), 32, d).await;
    println!("direct {direct:.0} req/s, via L7 {l7:.0} req/s, via L4 {l4:.0} req/s");
    println!("{:?}", h.status().await.totals);
    h.shutdown().await;
}
