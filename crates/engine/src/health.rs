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
                if r.work.is_deleting() || !st.observation(&r.machine).running {
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

/// One probe of the instance's endpoint from the host (HTTP GET or a TCP handshake), through the
/// LB's prober; the extension reads up to 64 KiB of the body (rich health states are JSON).
pub(crate) async fn app_health_request(
    ip: std::net::Ipv4Addr,
    ext: &model::vmss::AppHealthExtension,
    timeout: Duration,
) -> plan::app_health::Outcome {
    use lb::probe::{ProbeResult, ProbeSpec};
    use plan::app_health::Outcome;
    let spec = ProbeSpec {
        protocol: match ext.protocol {
            model::vmss::AppHealthProtocol::Tcp => lb::ProbeProtocol::Tcp,
            model::vmss::AppHealthProtocol::Http => lb::ProbeProtocol::Http,
        },
        request_path: ext.request_path.clone(),
        host: Some(ip.to_string()),
        user_agent: "scaleset-ApplicationHealthExtension".into(),
        timeout,
        max_body: 64 * 1024,
    };
    match lb::probe::probe_once(std::net::SocketAddr::from((ip, ext.port)), &spec).await {
        ProbeResult::NoAnswer => Outcome::NoAnswer,
        ProbeResult::Connected => Outcome::Connected,
        ProbeResult::Http { status, body } => Outcome::Http { status, body },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn ext(protocol: model::vmss::AppHealthProtocol, port: u16) -> model::vmss::AppHealthExtension {
        model::vmss::AppHealthExtension {
            name: "HealthExtension".into(),
            protocol,
            port,
            request_path: Some("/health".into()),
            interval_in_seconds: 5,
            number_of_probes: 1,
            grace_period_secs: 0,
            rich: true,
        }
    }

    /// The extension's request (path, Host = the instance's address, its user agent) and a rich
    /// health body read back through the LB's prober.
    #[tokio::test]
    async fn http_probe_reads_rich_state() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = vec![0u8; 4096];
            let n = s.read(&mut req).await.unwrap();
            let body = r#"{"ApplicationHealthState": "Healthy"}"#;
            let resp = format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&req[..n]).to_ascii_lowercase()
        });
        let e = ext(model::vmss::AppHealthProtocol::Http, port);
        let got = app_health_request(Ipv4Addr::LOCALHOST, &e, Duration::from_secs(5)).await;
        assert_eq!(
            plan::app_health::classify(true, &got),
            plan::repairs::Health::Healthy,
            "{got:?}"
        );
        let req = server.await.unwrap();
        assert!(req.starts_with("get /health http/1.1\r\n"), "{req}");
        assert!(req.contains("\r\nhost: 127.0.0.1\r\n"), "{req}");
        assert!(
            req.contains("user-agent: scaleset-applicationhealthextension"),
            "{req}"
        );
        // Nothing listening: no answer (Unknown for rich states).
        drop(e);
        let closed = ext(model::vmss::AppHealthProtocol::Tcp, port);
        let got = app_health_request(Ipv4Addr::LOCALHOST, &closed, Duration::from_secs(5)).await;
        assert_eq!(got, plan::app_health::Outcome::NoAnswer);
    }
}
