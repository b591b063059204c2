//! Pure health-probe state machine (no I/O, no tokio).
//!
//! * A brand-new backend starts DOWN and is brought UP by its first
//!   successful probe (the first probe runs immediately on add), so scale-out
//!   is not delayed by `threshold` intervals.
//! * Once it has been UP, `threshold` consecutive failures take it DOWN and
//!   then `threshold` consecutive successes bring it back UP.
//! * A result that agrees with the current state resets the streak.

/// Health as seen by one probe for one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeState {
    up: bool,
    /// Whether the backend has ever been up (new backends need one success).
    ever_up: bool,
    /// Consecutive results contradicting `up`.
    streak: u32,
}

/// State change caused by one probe result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    WentUp,
    WentDown,
}

impl Default for ProbeState {
    fn default() -> Self {
        Self::new()
    }
}

impl ProbeState {
    /// A new backend: DOWN until probed up.
    pub const fn new() -> Self {
        ProbeState {
            up: false,
            ever_up: false,
            streak: 0,
        }
    }

    /// Whether the backend is in rotation according to this probe.
    pub const fn is_up(&self) -> bool {
        self.up
    }

    /// Feeds one probe result; returns the transition it caused, if any.
    /// `threshold` of 0 is treated as 1.
    pub fn observe(&mut self, success: bool, threshold: u32) -> Option<Transition> {
        let threshold = threshold.max(1);
        if success == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if success && !self.ever_up {
            1
        } else {
            threshold
        };
        if self.streak >= needed {
            self.up = success;
            self.ever_up |= success;
            self.streak = 0;
            Some(if success {
                Transition::WentUp
            } else {
                Transition::WentDown
            })
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Transition::*;

    /// (threshold, results, expected transitions per step, final up)
    #[test]
    fn table() {
        type Case = (u32, &'static str, &'static str, bool);
        // results: '+' success, '-' failure. transitions: 'U' up, 'D' down, '.' none
        let cases: &[Case] = &[
            (1, "", "", false),
            (1, "-", ".", false),
            (1, "+", "U", true),
            (2, "+", "U", true),     // new backend: first success is enough
            (3, "--+", "..U", true), // new backend failing first, then ok
            (2, "+-", "U.", true),
            (2, "+--", "U.D", false),
            (2, "+-+-", "U...", true), // alternating never crosses threshold
            (2, "+--+", "U.D.", false),
            (2, "+--++", "U.D.U", true),
            (3, "+---++-++", "U..D.....", false),
            (3, "+---+++", "U..D..U", true),
            (1, "+-+-", "UDUD", false),
            (0, "+-", "UD", false), // threshold 0 behaves like 1
            (2, "+++---", "U...D.", false),
        ];
        for (threshold, results, transitions, final_up) in cases {
            let mut s = ProbeState::new();
            assert!(!s.is_up());
            let mut got = String::new();
            for r in results.chars() {
                got.push(match s.observe(r == '+', *threshold) {
                    Some(WentUp) => 'U',
                    Some(WentDown) => 'D',
                    None => '.',
                });
            }
            assert_eq!(&got, transitions, "threshold {threshold} results {results}");
            assert_eq!(
                s.is_up(),
                *final_up,
                "threshold {threshold} results {results}"
            );
        }
    }
}
