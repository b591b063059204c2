//! The one pick-and-retry path of both layers.
//!
//! A flow (L4) or a request (L7) makes up to [`MAX_TRIES`] tries. Each try
//! picks a backend from the rule's current view ([`select::pick`]), skipping
//! the backends it already tried (by their member key) — from the best tier
//! of the view that has one left (`rotation::tiers`) —, counts the retry, and
//! holds the backend's active count while it runs. The layers only say how a
//! try connects and whether the failure allows another try.
//!
//! [`select::pick`]: crate::select::pick

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Layer, LoadDistribution};
use crate::core::{BackendRt, Listener, Target};
use crate::select::{pick, FlowKey, PROTO_TCP};

/// Backend connect timeout (per try).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Tries per new flow/request (first try + retries).
pub(crate) const MAX_TRIES: usize = 3;

/// Counts a backend's active flows/requests while alive.
pub(crate) struct ActiveGuard(Arc<BackendRt>);

impl ActiveGuard {
    fn new(b: &Arc<BackendRt>) -> Self {
        b.active.fetch_add(1, Relaxed);
        b.requests.fetch_add(1, Relaxed);
        ActiveGuard(b.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// One try: the backend picked for it and its active count.
pub(crate) struct Try {
    pub target: Target,
    pub active: ActiveGuard,
}

/// How a try failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection to the backend: it becomes suspect.
    Connect,
    /// The connect timed out ([`CONNECT_TIMEOUT`]): suspect too.
    ConnectTimeout,
    /// The connection failed during the exchange.
    Exchange,
}

/// Why a flow/request got no backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GaveUp {
    /// The rule had no candidate backend.
    NoBackend,
    /// Every try failed (or a failure allowed no retry).
    Failed,
}

/// The tries of one flow or request.
pub(crate) struct Tries<'a> {
    l: &'a Listener,
    key: FlowKey,
    /// Member keys of the backends tried so far.
    tried: [u64; MAX_TRIES],
    n: usize,
}

impl<'a> Tries<'a> {
    pub fn new(l: &'a Listener, peer: SocketAddr) -> Self {
        Tries {
            l,
            key: FlowKey {
                src: peer,
                dst: l.local,
                proto: PROTO_TCP,
            },
            tried: [0; MAX_TRIES],
            n: 0,
        }
    }

    /// Picks the backend for the next try; `None` when the tries are used up
    /// or every candidate was tried.
    pub fn next(&mut self) -> Option<Try> {
        if self.n == MAX_TRIES {
            return None;
        }
        let view = self.l.view.load();
        let rule = &view.rule;
        // Only L7 `Default` rotates; the shared counter is not touched otherwise.
        let rotation =
            if rule.layer == Layer::L7 && rule.load_distribution == LoadDistribution::Default {
                self.l.rotation.fetch_add(1, Relaxed)
            } else {
                0
            };
        let tried = &self.tried[..self.n];
        // The best tier with an untried backend (suspect ones come after the others).
        let mut start = 0;
        let i = view.tier_ends.iter().find_map(|&end| {
            let t = &view.targets[start..end];
            let found = pick(
                t.len(),
                rule.layer,
                rule.load_distribution,
                &self.key,
                rotation,
                |i| t[i].backend.key,
                |i| tried.contains(&t[i].backend.key),
            )
            .map(|i| start + i);
            start = end;
            found
        })?;
        let target = view.targets[i].clone();
        drop(view);
        if self.n > 0 {
            self.l.lb.totals.retries.fetch_add(1, Relaxed);
            self.l.stats.retries.fetch_add(1, Relaxed);
        }
        self.tried[self.n] = target.backend.key;
        self.n += 1;
        let active = ActiveGuard::new(&target.backend);
        Some(Try { target, active })
    }

    /// Records a failed try; a failed connect makes the backend suspect.
    pub fn failed(&self, t: Try, failure: Failure) {
        let Try { target, active } = t;
        drop(active);
        target.backend.failed(failure);
        if failure != Failure::Exchange {
            self.l.lb.mark_suspect(&target.backend);
        }
    }

    /// Ends the flow/request without a backend (counted as failed).
    pub fn give_up(&self) -> GaveUp {
        self.l.lb.totals.failed.fetch_add(1, Relaxed);
        if self.n == 0 {
            self.l.stats.no_backend.fetch_add(1, Relaxed);
            GaveUp::NoBackend
        } else {
            self.l.stats.tries_exhausted.fetch_add(1, Relaxed);
            GaveUp::Failed
        }
    }
}

impl Failure {
    /// A failed connect's kind.
    pub fn connect(e: &std::io::Error) -> Failure {
        if e.kind() == std::io::ErrorKind::TimedOut {
            Failure::ConnectTimeout
        } else {
            Failure::Connect
        }
    }
}

impl BackendRt {
    /// Counts a failure against this backend, in the total and by kind.
    pub(crate) fn failed(&self, failure: Failure) {
        self.failures.fetch_add(1, Relaxed);
        let kind = match failure {
            Failure::Connect => &self.connect_errors,
            Failure::ConnectTimeout => &self.connect_timeouts,
            Failure::Exchange => &self.exchange_errors,
        };
        kind.fetch_add(1, Relaxed);
    }
}
