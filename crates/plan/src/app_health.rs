//! The Application Health extension's semantics, pure: what one probe result means (binary or
//! rich health states) and how results move an instance between states.
//!
//! - Binary (typeHandlerVersion 1.x): HTTP 200 or a TCP handshake is Healthy; anything else,
//!   including no answer, is Unhealthy.
//! - Rich (2.x): a TCP handshake is Healthy; an HTTP 2xx whose JSON body has
//!   `"ApplicationHealthState": "Healthy" | "Unhealthy"` is that state; no answer, another
//!   status or another body is Unknown.
//! - An instance starts Initializing when it boots. It leaves Initializing for Healthy after
//!   `numberOfProbes` consecutive Healthy results; once the grace period has passed, any state
//!   seen `numberOfProbes` times in a row ends it. Afterwards the state changes when
//!   `numberOfProbes` consecutive results agree on another state.
use crate::repairs::Health;

/// What one probe got from the instance's endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No connection, a timeout, or an unparseable answer.
    NoAnswer,
    /// TCP probe: the handshake completed.
    Connected,
    Http {
        status: u16,
        body: String,
    },
}

/// The health one probe result stands for.
pub fn classify(rich: bool, outcome: &Outcome) -> Health {
    match (rich, outcome) {
        (_, Outcome::Connected) => Health::Healthy,
        (false, Outcome::Http { status: 200, .. }) => Health::Healthy,
        (false, _) => Health::Unhealthy,
        (true, Outcome::NoAnswer) => Health::Unknown,
        (true, Outcome::Http { status, body }) if (200..300).contains(status) => {
            let state = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| {
                    v.as_object()?
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("ApplicationHealthState"))
                        .and_then(|(_, v)| v.as_str().map(str::to_ascii_lowercase))
                });
            match state.as_deref() {
                Some("healthy") => Health::Healthy,
                Some("unhealthy") => Health::Unhealthy,
                _ => Health::Unknown,
            }
        }
        (true, Outcome::Http { .. }) => Health::Unknown,
    }
}

/// One instance's health as the extension reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppHealthState {
    state: Health,
    /// When the instance booted (ms): the grace period runs from here.
    started_ms: u64,
    last: Option<Health>,
    streak: u32,
}

impl AppHealthState {
    /// A freshly booted instance: Initializing.
    pub fn new(now_ms: u64) -> Self {
        AppHealthState {
            state: Health::Initializing,
            started_ms: now_ms,
            last: None,
            streak: 0,
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// Feeds one classified probe result; returns the new state if it changed.
    pub fn observe(
        &mut self,
        result: Health,
        now_ms: u64,
        number_of_probes: u32,
        grace_ms: u64,
    ) -> Option<Health> {
        if self.last == Some(result) {
            self.streak += 1;
        } else {
            self.last = Some(result);
            self.streak = 1;
        }
        let enough = self.streak >= number_of_probes.max(1);
        let next = match self.state {
            Health::Initializing => {
                let grace_over = now_ms >= self.started_ms.saturating_add(grace_ms);
                (enough && (result == Health::Healthy || grace_over)).then_some(result)
            }
            cur => (enough && result != cur).then_some(result),
        };
        let next = next.filter(|n| *n != self.state)?;
        self.state = next;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::*;

    fn http(status: u16, body: &str) -> Outcome {
        Outcome::Http {
            status,
            body: body.into(),
        }
    }

    #[test]
    fn classification() {
        let rich_healthy = r#"{"ApplicationHealthState": "Healthy"}"#;
        let rich_unhealthy = r#"{"applicationHealthState":"unhealthy","detail":"db down"}"#;
        for (rich, outcome, want) in [
            (false, http(200, ""), Healthy),
            (false, http(200, rich_unhealthy), Healthy),
            (false, http(204, ""), Unhealthy),
            (false, http(500, ""), Unhealthy),
            (false, Outcome::NoAnswer, Unhealthy),
            (false, Outcome::Connected, Healthy),
            (true, Outcome::Connected, Healthy),
            (true, Outcome::NoAnswer, Unknown),
            (true, http(200, rich_healthy), Healthy),
            (true, http(201, rich_healthy), Healthy),
            (true, http(200, rich_unhealthy), Unhealthy),
            (true, http(200, ""), Unknown),
            (true, http(200, "OK"), Unknown),
            (
                true,
                http(200, r#"{"ApplicationHealthState": "Sleepy"}"#),
                Unknown,
            ),
            (true, http(200, r#"{"ApplicationHealthState": 1}"#), Unknown),
            (true, http(200, r#"["Healthy"]"#), Unknown),
            (true, http(503, rich_healthy), Unknown),
        ] {
            assert_eq!(classify(rich, &outcome), want, "{rich} {outcome:?}");
        }
    }

    /// Feeds results one second apart from boot at t=0; returns the state after each.
    fn run(results: &[Health], probes: u32, grace_s: u64) -> Vec<Health> {
        let mut s = AppHealthState::new(0);
        results
            .iter()
            .enumerate()
            .map(|(i, r)| {
                s.observe(*r, (i as u64 + 1) * 1000, probes, grace_s * 1000);
                s.state()
            })
            .collect()
    }

    #[test]
    fn transitions() {
        type Case = (&'static str, Vec<Health>, u32, u64, Vec<Health>);
        let cases: Vec<Case> = vec![
            (
                "one probe: healthy at once",
                vec![Healthy],
                1,
                10,
                vec![Healthy],
            ),
            (
                "three probes needed to become healthy",
                vec![Healthy, Healthy, Healthy],
                3,
                10,
                vec![Initializing, Initializing, Healthy],
            ),
            (
                "failures during grace keep it initializing",
                vec![Unknown, Unknown, Unknown],
                1,
                10,
                vec![Initializing, Initializing, Initializing],
            ),
            (
                "after grace a failure shows",
                vec![Unknown, Unknown, Unknown],
                1,
                2,
                vec![Initializing, Unknown, Unknown],
            ),
            (
                "a broken healthy streak restarts",
                vec![Healthy, Unhealthy, Healthy, Healthy],
                2,
                60,
                vec![Initializing, Initializing, Initializing, Healthy],
            ),
            (
                "going down needs numberOfProbes in a row",
                vec![Healthy, Healthy, Unhealthy, Healthy, Unhealthy, Unhealthy],
                2,
                0,
                vec![Initializing, Healthy, Healthy, Healthy, Healthy, Unhealthy],
            ),
            (
                "unhealthy to unknown to healthy",
                vec![Healthy, Unhealthy, Unknown, Healthy],
                1,
                0,
                vec![Healthy, Unhealthy, Unknown, Healthy],
            ),
        ];
        for (name, results, probes, grace, want) in cases {
            assert_eq!(run(&results, probes, grace), want, "{name}");
        }
    }

    #[test]
    fn transition_is_reported_once() {
        let mut s = AppHealthState::new(0);
        assert_eq!(s.observe(Healthy, 1000, 1, 0), Some(Healthy));
        assert_eq!(s.observe(Healthy, 2000, 1, 0), None);
        assert_eq!(s.observe(Unhealthy, 3000, 1, 0), Some(Unhealthy));
    }
}
