//! `lb`: the scaleset load balancer data plane, with Azure Standard Load
//! Balancer semantics.
//!
//! It runs as its own process (`lb::serve`) so it keeps forwarding while the
//! control daemon is down. The control plane drives it through an HTTP/1.1
//! admin API on a unix socket (see [`client`]):
//!
//! * `GET /status` → [`LbStatus`] JSON: health, and the counters (LB totals, per frontend and
//!   per backend) the daemon's `/metrics` and deploy receipts are made of
//! * `PUT /config` ([`LbConfig`] JSON) → validated, applied atomically, and
//!   persisted to the config file (temp + rename) so a restarted LB comes
//!   back with it. Errors: `400 {"error":{"code":"...","message":"..."}}`.
//! * `GET /config` → the config in force (debugging aid).
//!
//! Data path: L4 rules are TCP pass-through (5/3/2-tuple hashing); L7 rules
//! are an HTTP/1.1 reverse proxy with per-request balancing, keep-alive pools
//! per backend and retries for idempotent requests (see [`select`] for the
//! distribution modes). The healthy set of each rule lives in an `ArcSwap`
//! and is replaced by the health tasks / config updates; the hot path takes
//! no locks other than the per-backend keep-alive pool's short push/pop.
//! Both layers pick and retry through one path (`balance`); LB probes and
//! the daemon's Application Health checks share one prober ([`probe`]).

mod admin;
mod balance;
pub mod codec;
pub mod config;
mod core;
mod error;
mod health;
mod l4;
mod l7;
pub mod probe;
pub mod probe_state;
pub mod rotation;
pub mod select;
mod status;
mod upstream;

pub mod client;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

pub use config::{
    Backend, FrontendLimits, Layer, LbConfig, LoadDistribution, NoHealthyBackendsBehavior, Probe,
    ProbeProtocol, Rule,
};
pub use error::LbError;
pub use status::{
    BackendStatus, Counters, FrontendStatus, Histogram, LbStatus, StatusClass, LATENCY_BOUNDS_NS,
};

/// How long shutdown waits for in-flight connections.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the LB until SIGTERM or SIGINT, then drains gracefully (stops
/// accepting, lets in-flight connections finish for up to ~10 s).
///
/// Loads `config_path` at start (a missing file is an empty config) and
/// serves the admin API on `admin_socket`. Call it from a tokio runtime with
/// the I/O and time drivers (multi-threaded, or current-thread when the
/// process has one CPU).
pub async fn serve(config_path: &Path, admin_socket: &Path) -> Result<(), LbError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(LbError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(LbError::Signal)?;
    serve_until(config_path, admin_socket, async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
    .await
}

/// Like [`serve`], but runs until `shutdown` completes instead of a signal
/// (used by tests and embedders).
pub async fn serve_until(
    config_path: &Path,
    admin_socket: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LbError> {
    let cfg = admin::load(config_path).await?;
    let lb = core::Lb::new(config_path.to_owned());
    let prepared = lb.prepare(cfg).await?;
    lb.commit(prepared);

    let sock_err = |source| LbError::AdminSocket {
        path: admin_socket.to_owned(),
        source,
    };
    match std::fs::remove_file(admin_socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            lb.stop_all();
            return Err(sock_err(e));
        }
    }
    let listener = match tokio::net::UnixListener::bind(admin_socket) {
        Ok(l) => l,
        Err(e) => {
            lb.stop_all();
            return Err(sock_err(e));
        }
    };
    tracing::info!(lb = %lb.name.load(), admin = %admin_socket.display(), "lb serving");
    let admin = tokio::spawn(admin::run(lb.clone(), listener));

    shutdown.await;
    tracing::info!(lb = %lb.name.load(), "shutting down; draining");
    lb.stop_all();
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    loop {
        let notified = lb.open_changed.notified();
        if lb.open.load(Relaxed) == 0 {
            break;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            tracing::warn!(lb = %lb.name.load(), open = lb.open.load(Relaxed), "drain timeout");
            break;
        }
    }
    admin.abort();
    let _ = std::fs::remove_file(admin_socket);
    Ok(())
}
