//! Status document served by `GET /status`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// Snapshot of the whole LB.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LbStatus {
    pub name: String,
    pub backends: Vec<BackendStatus>,
    pub totals: Counters,
}

/// Per-backend health and counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    pub id: String,
    pub ip: IpAddr,
    /// Up according to every probe referenced by a rule; true if no rule has a probe.
    pub healthy: bool,
    pub draining: bool,
    /// A connect to it failed since its last successful probe: new flows skip it while others
    /// can take them. (Absent from an older LB process's status.)
    #[serde(default)]
    pub suspect: bool,
    /// L4 flows plus in-flight L7 requests currently using this backend.
    pub active_connections: u64,
    /// L4 flows + L7 requests ever sent to this backend (including failed tries).
    pub requests: u64,
    /// Connect failures and request errors against this backend.
    pub failures: u64,
}

/// LB-wide counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// Client connections accepted (L4 and L7).
    pub connections: u64,
    /// HTTP requests received (L7).
    pub requests: u64,
    pub responses_2xx: u64,
    pub responses_non_2xx: u64,
    /// Requests we answered 502/503 or connections we refused/reset.
    pub failed: u64,
    /// Extra tries after a failed try.
    pub retries: u64,
}

/// Atomic counterpart of [`Counters`] (hot path).
#[derive(Debug, Default)]
pub(crate) struct AtomicCounters {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub responses_2xx: AtomicU64,
    pub responses_non_2xx: AtomicU64,
    pub failed: AtomicU64,
    pub retries: AtomicU64,
}

impl AtomicCounters {
    pub fn snapshot(&self) -> Counters {
        Counters {
            connections: self.connections.load(Relaxed),
            requests: self.requests.load(Relaxed),
            responses_2xx: self.responses_2xx.load(Relaxed),
            responses_non_2xx: self.responses_non_2xx.load(Relaxed),
            failed: self.failed.load(Relaxed),
            retries: self.retries.load(Relaxed),
        }
    }
}
