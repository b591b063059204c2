//! Background health probing: one task per (probe, backend).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use crate::config::Probe;
use crate::core::Lb;
use crate::probe::{probe_once, ProbeSpec};

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
    let spec = spec(&probe);
    let mut next = tokio::time::Instant::now();
    loop {
        let ok = probe_once(addr, &spec).await.is_up();
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

/// The prober's settings for an LB probe: the response head is enough.
fn spec(probe: &Probe) -> ProbeSpec {
    ProbeSpec {
        protocol: probe.protocol,
        request_path: probe.request_path.clone(),
        host: None,
        user_agent: "scaleset-lb-probe".into(),
        timeout: probe.timeout(),
        max_body: 0,
    }
}
