//! When to retry a request, and how long to wait first. Pure: the client supplies the attempt
//! number, what happened, the server's Retry-After and a jitter sample.
use crate::transport::Headers;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled for each further attempt.
    pub base: Duration,
    /// Cap of the computed backoff.
    pub max_delay: Duration,
    /// A Retry-After longer than this is not waited for: the error is returned instead.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// Close to the Azure SDKs' defaults (3 retries, exponential from 0.8 s).
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(800),
            max_delay: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

/// What an attempt produced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Status(u16),
    /// No response at all (connection refused, reset, ...).
    TransportError,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Use this response (success, or an error not worth retrying).
    Accept,
    Retry(Duration),
    /// Retryable, but out of attempts or asked to wait too long: surface the error.
    GiveUp,
}

/// Throttling and server-side failures are transient; 501 and 505 will not change.
pub fn is_retryable(status: u16) -> bool {
    status == 408 || status == 429 || (500..600).contains(&status) && status != 501 && status != 505
}

/// `attempt` is the number of attempts made so far (1 after the first); `jitter` is a sample in
/// [0, 1) that spreads the computed backoff over ±20% so throttled clients do not retry in step.
pub fn decide(
    policy: &RetryPolicy,
    attempt: u32,
    outcome: Outcome,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Decision {
    let retryable = match outcome {
        Outcome::Status(s) => is_retryable(s),
        Outcome::TransportError => true,
    };
    if !retryable {
        return Decision::Accept;
    }
    if attempt >= policy.max_attempts {
        return Decision::GiveUp;
    }
    if let Some(ra) = retry_after {
        return if ra > policy.max_retry_after {
            Decision::GiveUp
        } else {
            Decision::Retry(ra)
        };
    }
    let exp = policy
        .base
        .saturating_mul(1u32 << (attempt - 1).min(20))
        .min(policy.max_delay);
    let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    Decision::Retry(exp.mul_f64(factor).min(policy.max_delay))
}

/// A Retry-After value: delay-seconds or an HTTP date (a date in the past means now).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The server's requested delay: ARM's millisecond headers first, then Retry-After.
pub fn retry_after(headers: &Headers, now: SystemTime) -> Option<Duration> {
    for h in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = headers.get(h).and_then(|v| v.trim().parse::<u64>().ok()) {
            return Some(Duration::from_millis(ms));
        }
    }
    headers
        .get("retry-after")
        .and_then(|v| parse_retry_after(v, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn decisions() {
        let p = RetryPolicy::default();
        use Decision::*;
        use Outcome::*;
        let cases: &[(u32, Outcome, Option<Duration>, f64, Decision)] = &[
            (1, Status(200), None, 0.5, Accept),
            (1, Status(201), None, 0.5, Accept),
            (1, Status(404), None, 0.5, Accept),
            (1, Status(409), None, 0.5, Accept),
            (1, Status(501), None, 0.5, Accept),
            (1, Status(429), Some(secs(7.0)), 0.5, Retry(secs(7.0))),
            (1, Status(503), Some(secs(0.0)), 0.9, Retry(secs(0.0))),
            // No Retry-After: exponential from 0.8 s, jitter ±20%.
            (1, Status(500), None, 0.5, Retry(secs(0.8))),
            (2, Status(502), None, 0.5, Retry(secs(1.6))),
            (3, Status(429), None, 0.0, Retry(secs(3.2 * 0.8))),
            (3, TransportError, None, 0.5, Retry(secs(3.2))),
            (4, Status(429), Some(secs(1.0)), 0.5, GiveUp),
            (4, TransportError, None, 0.5, GiveUp),
            (1, Status(429), Some(secs(301.0)), 0.5, GiveUp),
        ];
        for (i, (attempt, outcome, ra, jitter, want)) in cases.iter().enumerate() {
            let got = decide(&p, *attempt, *outcome, *ra, *jitter);
            match (got, want) {
                (Retry(a), Retry(b)) => assert!(
                    (a.as_secs_f64() - b.as_secs_f64()).abs() < 1e-9,
                    "case {i}: {a:?} != {b:?}"
                ),
                _ => assert_eq!(got, *want, "case {i}"),
            }
        }
    }

    #[test]
    fn backoff_is_capped() {
        let p = RetryPolicy {
            max_attempts: 30,
            ..RetryPolicy::default()
        };
        assert_eq!(
            decide(&p, 25, Outcome::Status(503), None, 0.99),
            Decision::Retry(p.max_delay)
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").unwrap();
        let cases: &[(&str, Option<Duration>)] = &[
            ("3", Some(secs(3.0))),
            (" 120 ", Some(secs(120.0))),
            ("Wed, 21 Oct 2026 07:28:30 GMT", Some(secs(30.0))),
            ("Wed, 21 Oct 2026 07:27:00 GMT", Some(Duration::ZERO)),
            ("-1", None),
            ("soon", None),
        ];
        for (v, want) in cases {
            assert_eq!(parse_retry_after(v, now), *want, "{v}");
        }
    }

    #[test]
    fn millisecond_headers_win() {
        let now = SystemTime::UNIX_EPOCH;
        let h = Headers::from(vec![
            ("Retry-After".to_string(), "10".to_string()),
            ("x-ms-retry-after-ms".to_string(), "250".to_string()),
        ]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_millis(250)));
        let h = Headers::from(vec![("Retry-After".to_string(), "10".to_string())]);
        assert_eq!(retry_after(&h, now), Some(secs(10.0)));
        assert_eq!(retry_after(&Headers::default(), now), None);
    }
}
