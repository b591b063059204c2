//! Which instances to remove when capacity drops (scaleInPolicy.rules).
use model::vmss::ScaleInRule;

#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub instance_id: u32,
    /// Creation order (monotonic); larger is newer.
    pub created_seq: u64,
    pub protected: bool,
    pub healthy: bool,
}

/// Picks up to `count` instances to remove. Protected instances are never chosen (Azure: scale-in
/// skips protected instances and the scale set may stay above capacity). Instances that are
/// unhealthy go first (they serve nothing), then Default/NewestVM remove the newest and OldestVM
/// the oldest; ties break on the instance id.
pub fn choose(cands: &[Candidate], count: usize, rule: ScaleInRule) -> Vec<u32> {
    let mut v: Vec<&Candidate> = cands.iter().filter(|c| !c.protected).collect();
    v.sort_by(|a, b| {
        a.healthy.cmp(&b.healthy).then_with(|| match rule {
            ScaleInRule::Default | ScaleInRule::NewestVM => b
                .created_seq
                .cmp(&a.created_seq)
                .then(b.instance_id.cmp(&a.instance_id)),
            ScaleInRule::OldestVM => a
                .created_seq
                .cmp(&b.created_seq)
                .then(a.instance_id.cmp(&b.instance_id)),
        })
    });
    v.into_iter().take(count).map(|c| c.instance_id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u32, seq: u64, protected: bool, healthy: bool) -> Candidate {
        Candidate {
            instance_id: id,
            created_seq: seq,
            protected,
            healthy,
        }
    }

    #[test]
    fn table() {
        let set = vec![
            c(0, 1, false, true),
            c(1, 2, false, true),
            c(2, 3, true, true),
            c(3, 4, false, true),
        ];
        let cases: &[(ScaleInRule, usize, &[u32])] = &[
            (ScaleInRule::Default, 1, &[3]),
            (ScaleInRule::NewestVM, 2, &[3, 1]),
            (ScaleInRule::OldestVM, 2, &[0, 1]),
            (ScaleInRule::Default, 10, &[3, 1, 0]),
            (ScaleInRule::OldestVM, 0, &[]),
        ];
        for (rule, n, want) in cases {
            assert_eq!(choose(&set, *n, *rule), want.to_vec(), "{rule:?} {n}");
        }
        let sick = vec![c(0, 1, false, false), c(1, 2, false, true)];
        assert_eq!(choose(&sick, 1, ScaleInRule::Default), vec![0]);
        assert_eq!(choose(&sick, 1, ScaleInRule::OldestVM), vec![0]);
    }
}
