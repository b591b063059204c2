//! Background health probing: one task per (probe, backend), which also re-probes the
//! backend quickly while it is suspect.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use crate::config::Probe;
use crate::core::{BackendRt, Lb};
use crate::probe::{probe_once, ProbeSpec};

/// Probes `backend` with `probe` forever (first probe immediately), feeding
/// results into the LB until the entry is removed.
///
/// Between scheduled probes, a backend marked suspect (a connect failed) is re-probed every
/// `initial`: its first answer puts it back in rotation, so the mark lasts about as long as the
/// outage, not until the next scheduled probe (up to an interval later, while more backends may
/// fail). Only scheduled results feed the probe state machine, so when a backend goes down
/// stays Azure's (`probeThreshold` failures `intervalInSeconds` apart).
pub(crate) async fn run(
    lb: Arc<Lb>,
    key: (String, String),
    generation: u64,
    probe: Probe,
    backend: Arc<BackendRt>,
) {
    let interval = probe.interval();
    let task = Task {
        addr: SocketAddr::new(backend.ip, probe.port),
        spec: spec(&probe),
        // Until a backend has answered once (a booting instance), probe it quickly so it enters
        // rotation about when its app starts listening, not up to a whole interval later.
        initial: interval.min(Duration::from_millis(250)),
        lb,
        key,
        generation,
        backend,
    };
    let mut ever_up = false;
    let mut next = tokio::time::Instant::now();
    loop {
        let ok = probe_once(task.addr, &task.spec).await.is_up();
        debug!(lb = %task.lb.name.load(), probe = %task.key.0, backend = %task.key.1, ok, "probe");
        if !task.lb.probe_result(&task.key, task.generation, ok) {
            return;
        }
        ever_up |= ok;
        next += if ever_up { interval } else { task.initial };
        let now = tokio::time::Instant::now();
        if next < now {
            next = now;
        }
        if !task.wait_until(next).await {
            return;
        }
    }
}

/// One health task's fixed parts.
struct Task {
    lb: Arc<Lb>,
    key: (String, String),
    generation: u64,
    backend: Arc<BackendRt>,
    addr: SocketAddr,
    spec: ProbeSpec,
    initial: Duration,
}

impl Task {
    /// Sleeps until `next`, re-probing the backend every `initial` while it is suspect.
    /// Returns false when the entry is gone.
    async fn wait_until(&self, next: tokio::time::Instant) -> bool {
        loop {
            // Registered before the flag is read, so a mark set in between still wakes us.
            let marked = self.backend.reprobe.notified();
            tokio::pin!(marked);
            marked.as_mut().enable();
            if !self.backend.suspect.load(Relaxed) {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => return true,
                    _ = marked => continue,
                }
            }
            let at = (tokio::time::Instant::now() + self.initial).min(next);
            tokio::time::sleep_until(at).await;
            if at == next {
                return true;
            }
            if self.backend.suspect.load(Relaxed)
                && probe_once(self.addr, &self.spec).await.is_up()
                && !self.lb.reprobe_ok(&self.key, self.generation)
            {
                return false;
            }
        }
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
