//! The Application Health extension, probed from the host.
use super::*;

/// The Application Health extension, run from the host: every running instance of a scale set
/// with the extension is probed at its interval (or `SCALESET_PROBE_INTERVAL_MS`), and each result
/// is fed to the instance's pure state machine.
pub(crate) async fn app_health_loop(st: Arc<Core>) {
    let mut last: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(sets) = st.store.list(VMSS, None, None) else {
            continue;
        };
        let mut seen = HashSet::new();
        for (key, v) in sets {
            let Ok(doc) = serde_json::from_value::<VmssDoc>(v) else {
                continue;
            };
            let Ok((m, _)) = model::vmss::parse(&doc.arm, &doc.name) else {
                continue;
            };
            let recs = st.instances(&key).unwrap_or_default();
            let Some(ext) = m.app_health else {
                // The extension was removed: the LB probe is the health source again.
                let mut obs = st.observed.lock().unwrap_or_else(|e| e.into_inner());
                for r in &recs {
                    if let Some(o) = obs.get_mut(&r.machine) {
                        o.app_health = None;
                    }
                }
                continue;
            };
            let interval = st
                .cfg
                .probe_interval_ms
                .unwrap_or(ext.interval_in_seconds as u64 * 1000)
                .max(100);
            for r in recs {
                seen.insert(r.machine.clone());
                if r.deleting || !st.observation(&r.machine).running {
                    continue;
                }
                if last
                    .get(&r.machine)
                    .is_some_and(|t| t.elapsed() < Duration::from_millis(interval))
                {
                    continue;
                }
                last.insert(r.machine.clone(), Instant::now());
                tokio::spawn(probe_app_health(
                    st.clone(),
                    r.machine,
                    r.ip,
                    ext.clone(),
                    interval,
                ));
            }
        }
        last.retain(|m, _| seen.contains(m));
    }
}

pub(crate) async fn probe_app_health(
    st: Arc<Core>,
    machine: String,
    ip: std::net::Ipv4Addr,
    ext: model::vmss::AppHealthExtension,
    interval_ms: u64,
) {
    // Shorter than the interval so probes of one instance never overlap.
    let timeout = Duration::from_millis((interval_ms * 8 / 10).clamp(100, 5000));
    let outcome = app_health_request(ip, &ext, timeout).await;
    let result = plan::app_health::classify(ext.rich, &outcome);
    let now = now_ms();
    let mut obs = st.observed.lock().unwrap_or_else(|e| e.into_inner());
    let Some(o) = obs.get_mut(&machine) else {
        return;
    };
    if !o.running {
        return;
    }
    let state = o
        .app_health
        .get_or_insert_with(|| plan::app_health::AppHealthState::new(now));
    if let Some(new) = state.observe(
        result,
        now,
        ext.number_of_probes,
        ext.grace_period_secs as u64 * 1000,
    ) {
        info!(%machine, health = ?new, ?outcome, "application health changed");
    }
}

/// One probe of the instance's endpoint from the host (HTTP GET or a TCP handshake).
pub(crate) async fn app_health_request(
    ip: std::net::Ipv4Addr,
    ext: &model::vmss::AppHealthExtension,
    timeout: Duration,
) -> plan::app_health::Outcome {
    use plan::app_health::Outcome;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = std::net::SocketAddr::from((ip, ext.port));
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        match ext.protocol {
            model::vmss::AppHealthProtocol::Tcp => Some(Outcome::Connected),
            model::vmss::AppHealthProtocol::Http => {
                let path = ext.request_path.as_deref().unwrap_or("/");
                let req = format!("GET {path} HTTP/1.1\r\nHost: {ip}\r\nUser-Agent: scaleset-ApplicationHealthExtension\r\nConnection: close\r\n\r\n");
                s.write_all(req.as_bytes()).await.ok()?;
                let mut buf = Vec::new();
                (&mut s).take(64 * 1024).read_to_end(&mut buf).await.ok()?;
                Some(plan::app_health::parse_http_response(&buf))
            }
        }
    };
    tokio::time::timeout(timeout, probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(Outcome::NoAnswer)
}
