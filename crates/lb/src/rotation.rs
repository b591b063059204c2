//! Which backends of a rule take new flows (pure, table-tested).
//!
//! Probes decide health, as in Azure: a backend is in rotation when every probe of its rule
//! says it is up. A failed connect makes a probed-up backend *suspect* (`balance`): new flows
//! prefer the others until it answers again. Suspicion is only a preference: the backends are
//! ranked in tiers, a flow's first try goes to the best tier and its retries fall back to the
//! next tier once every backend of the better ones was tried, since trying a suspect backend
//! (a refused connect costs a retry) beats answering 502 or 503. With `AllProbedUp`, backends
//! probed down come last (the non-suspect ones first); otherwise they never take flows.

/// What the data path knows of one backend that is not draining.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    /// Up according to the rule's probe (true when the rule has none).
    pub probed_up: bool,
    /// A connect failed since its last successful probe.
    pub suspect: bool,
}

/// Preference of a backend, lower first; `None`: never in rotation.
fn tier(s: Standing, all_probed_up: bool) -> Option<u8> {
    match (s.probed_up, s.suspect) {
        (true, false) => Some(0),
        (true, true) => Some(1),
        (false, false) if all_probed_up => Some(2),
        (false, true) if all_probed_up => Some(3),
        (false, _) => None,
    }
}

/// The backends that may take flows, as indexes into `backends`, in tiers best first (no
/// empty tier). A flow tries the first tier, then the next once every member was tried.
pub fn tiers(backends: &[Standing], all_probed_up: bool) -> Vec<Vec<usize>> {
    let mut out: Vec<(u8, Vec<usize>)> = Vec::new();
    for (i, s) in backends.iter().enumerate() {
        let Some(t) = tier(*s, all_probed_up) else {
            continue;
        };
        match out.iter_mut().find(|(k, _)| *k == t) {
            Some((_, v)) => v.push(i),
            None => out.push((t, vec![i])),
        }
    }
    out.sort_by_key(|(t, _)| *t);
    out.into_iter().map(|(_, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backends as letters: `U` up, `u` up and suspect, `D` down, `d` down and suspect.
    fn standings(s: &str) -> Vec<Standing> {
        s.chars()
            .map(|c| Standing {
                probed_up: c.eq_ignore_ascii_case(&'u'),
                suspect: c.is_ascii_lowercase(),
            })
            .collect()
    }

    #[test]
    fn table() {
        // (backends, AllProbedUp, tiers)
        let cases: &[(&str, bool, &[&[usize]])] = &[
            ("", false, &[]),
            ("UUU", false, &[&[0, 1, 2]]),
            ("uUU", false, &[&[1, 2], &[0]]),
            ("uuU", false, &[&[2], &[0, 1]]),
            // Stacked suspicion (machines killed in turn faster than probes run): the
            // probed-up backends still take flows.
            ("uuu", false, &[&[0, 1, 2]]),
            ("uuD", false, &[&[0, 1]]),
            ("Duu", true, &[&[1, 2], &[0]]),
            ("DDD", false, &[]),
            ("ddd", false, &[]),
            ("DUd", false, &[&[1]]),
            ("DdD", true, &[&[0, 2], &[1]]),
            ("ddd", true, &[&[0, 1, 2]]),
            ("dDu", true, &[&[2], &[1], &[0]]),
            ("UdDu", true, &[&[0], &[3], &[2], &[1]]),
        ];
        for (backends, all_probed_up, want) in cases {
            let want: Vec<Vec<usize>> = want.iter().map(|t| t.to_vec()).collect();
            assert_eq!(
                tiers(&standings(backends), *all_probed_up),
                want,
                "{backends} all_probed_up={all_probed_up}"
            );
        }
    }
}
