//! Background health probing: one task per (probe, backend).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::config::{Probe, ProbeProtocol};
use crate::core::Lb;

/// Probes `ip` with `probe` forever (first probe immediately), feeding
/// results into the LB until the entry is removed.
pub(crate) async fn run(
    lb: Arc<Lb>,
    key: (String, String),
    generation: u64,
    probe: Probe,
    ip: IpAddr,
) {
    let addr = SocketAddr::new(ip, probe.port);
    let interval = probe.interval();
    // Until a backend has answered once (a booting instance), probe it quickly so it enters
    // rotation about when its app starts listening, not up to a whole interval later.
    let initial = interval.min(Duration::from_millis(250));
    let mut ever_up = false;
    let mut next = tokio::time::Instant::now();
    loop {
        let ok = probe_once(&probe, addr).await;
        debug!(lb = %lb.name.load(), probe = %key.0, backend = %key.1, ok, "probe");
        if !lb.probe_result(&key, generation, ok) {
            return;
        }
        ever_up |= ok;
        next += if ever_up { interval } else { initial };
        let now = tokio::time::Instant::now();
        if next < now {
            next = now;
        }
        tokio::time::sleep_until(next).await;
    }
}

/// One probe attempt, bounded by min(interval, 30 s).
pub(crate) async fn probe_once(probe: &Probe, addr: SocketAddr) -> bool {
    let attempt = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        if probe.protocol == ProbeProtocol::Tcp {
            return Some(true);
        }
        let _ = stream.set_nodelay(true);
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .ok()?;
        let _conn = AbortOnDrop(tokio::spawn(conn));
        let path = probe.request_path.as_deref().unwrap_or("/");
        let req = Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::CONNECTION, "close")
            .header(hyper::header::USER_AGENT, "scaleset-lb-probe")
            .body(Empty::new())
            .ok()?;
        let res = tx.send_request(req).await.ok()?;
        Some(res.status() == StatusCode::OK)
    };
    matches!(
        tokio::time::timeout(probe.timeout(), attempt).await,
        Ok(Some(true))
    )
}

/// Aborts the probe's connection task however the probe ends (incl. timeout).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
