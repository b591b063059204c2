//! Status document served by `GET /status`: health, and the counters the daemon's `/metrics`
//! and the deploy receipt are made of.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Snapshot of the whole LB.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LbStatus {
    pub name: String,
    pub backends: Vec<BackendStatus>,
    pub totals: Counters,
    /// One per listening frontend (an LB process of an older version reports none).
    #[serde(default)]
    pub frontends: Vec<FrontendStatus>,
}

/// Per-backend health and counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    pub id: String,
    pub ip: IpAddr,
    /// The image the daemon said the instance runs (the counters are this image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
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
    /// L7 responses this backend sent, by [`StatusClass`].
    #[serde(default)]
    pub responses: [u64; StatusClass::COUNT],
    /// `failures` by kind: refused or unreachable connects, connects that timed out, and
    /// exchanges that broke (before or during the response).
    #[serde(default)]
    pub connect_errors: u64,
    #[serde(default)]
    pub connect_timeouts: u64,
    #[serde(default)]
    pub exchange_errors: u64,
}

/// One frontend (a rule's listening address).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendStatus {
    /// The rule that listens there.
    pub rule: String,
    pub frontend: SocketAddr,
    pub layer: crate::config::Layer,
    /// Client connections (L7) or flows (L4) accepted, and those open now.
    pub connections: u64,
    pub open_connections: u64,
    /// L7 responses sent to clients (the LB's own 502/503 included), by [`StatusClass`].
    pub responses: [u64; StatusClass::COUNT],
    /// Extra tries after a failed try.
    pub retries: u64,
    /// Requests (flows) refused because the rule had no candidate backend (503, RST).
    pub no_backend: u64,
    /// Requests (flows) whose every try failed (502, RST).
    pub tries_exhausted: u64,
    /// Time from a request's head to the end of its response (its body handed to the client
    /// connection, or the connection gone), L7.
    pub latency: Histogram,
}

/// A response's status class, as HAProxy counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
    Other,
}

impl StatusClass {
    pub const COUNT: usize = 6;
    pub const ALL: [StatusClass; StatusClass::COUNT] = [
        StatusClass::Informational,
        StatusClass::Success,
        StatusClass::Redirection,
        StatusClass::ClientError,
        StatusClass::ServerError,
        StatusClass::Other,
    ];

    pub fn of(status: u16) -> StatusClass {
        match status {
            100..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            500..=599 => StatusClass::ServerError,
            _ => StatusClass::Other,
        }
    }

    /// `1xx` .. `5xx`, `other`.
    pub fn label(self) -> &'static str {
        ["1xx", "2xx", "3xx", "4xx", "5xx", "other"][self as usize]
    }
}

/// Upper bounds of the latency buckets, in nanoseconds (1 ms .. 10 s; Prometheus' default
/// buckets with 1 ms and 2.5 ms added below, since a proxy's answers are mostly that fast).
pub const LATENCY_BOUNDS_NS: [u64; 13] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A fixed-bucket histogram: observations per bucket (not cumulative; the last one is above
/// every bound) and their sum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Histogram {
    /// `LATENCY_BOUNDS_NS.len() + 1` entries.
    pub buckets: Vec<u64>,
    pub sum_ns: u64,
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
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

/// Responses by class (hot path: one relaxed add each).
#[derive(Debug, Default)]
pub(crate) struct AtomicClasses([AtomicU64; StatusClass::COUNT]);

impl AtomicClasses {
    pub fn count(&self, status: u16) {
        self.0[StatusClass::of(status) as usize].fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> [u64; StatusClass::COUNT] {
        std::array::from_fn(|i| self.0[i].load(Relaxed))
    }
}

/// [`Histogram`]'s hot-path counterpart: two relaxed adds per observation.
#[derive(Debug, Default)]
pub(crate) struct AtomicHistogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl AtomicHistogram {
    #[cfg(test)]
    pub fn observe(&self, d: std::time::Duration) {
        self.observe_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn observe_ns(&self, ns: u64) {
        self.buckets[bucket(ns)].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    pub fn snapshot(&self) -> Histogram {
        Histogram {
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum_ns: self.sum_ns.load(Relaxed),
        }
    }
}

/// The monotonic clock in nanoseconds: `clock_gettime` alone, without `Instant`'s checked
/// arithmetic (about 90 instructions a request less in the L7 profile).
pub(crate) fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// The bucket of an observation: the first bound it does not exceed (`le`), or the last.
fn bucket(ns: u64) -> usize {
    LATENCY_BOUNDS_NS.partition_point(|&b| b < ns)
}

/// A frontend's counters (hot path).
#[derive(Debug, Default)]
pub(crate) struct FrontendCounters {
    pub connections: AtomicU64,
    pub open: AtomicU64,
    pub responses: AtomicClasses,
    pub retries: AtomicU64,
    pub no_backend: AtomicU64,
    pub tries_exhausted: AtomicU64,
    pub latency: AtomicHistogram,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn status_classes() {
        for (s, c) in [
            (100, "1xx"),
            (200, "2xx"),
            (204, "2xx"),
            (301, "3xx"),
            (404, "4xx"),
            (502, "5xx"),
            (599, "5xx"),
            (600, "other"),
            (99, "other"),
        ] {
            assert_eq!(StatusClass::of(s).label(), c, "{s}");
        }
        for (i, c) in StatusClass::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn buckets_are_le_bounds() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1_000_000), 0, "on the bound: le");
        assert_eq!(bucket(1_000_001), 1);
        assert_eq!(bucket(10_000_000_000), 12);
        assert_eq!(bucket(10_000_000_001), 13, "above every bound");
        let h = AtomicHistogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.buckets.len(), 14);
        assert_eq!((s.buckets[0], s.buckets[2], s.buckets[13]), (1, 1, 1));
        assert_eq!(s.count(), 3);
        assert_eq!(s.sum_ns, 500_000 + 3_000_000 + 60_000_000_000);
    }
}
