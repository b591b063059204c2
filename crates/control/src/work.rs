//! What is asked of an instance and who is acting on it, as types that admit only the states
//! that exist (these were five independent booleans).
use serde::{Deserialize, Serialize};

/// An operation requested on an instance and not yet carried out. One at a time: a later
/// request merges by precedence, `Delete` > `Reimage` > `Restart`, the order in which
/// `plan::reconcile` acts on them. A deletion supersedes everything (it is never withdrawn);
/// a reimage reboots the machine, so it absorbs a restart asked before or after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Pending {
    /// Reboot, keeping the disk.
    Restart,
    /// Reimage onto the latest model (a reimage or a manual upgrade).
    Reimage,
    /// Drain, stop and remove (scale-in, delete-instances, repair by replacement, the scale set's
    /// deletion, a rollout's removal of surplus instances).
    Delete,
}

/// Who is acting on an instance besides the reconciler. Repairs run only while no rollout does
/// and each pass awaits its operations, so the two never overlap; should a rollout reach an
/// instance whose repair outlived its pass, the rollout takes it over (its mark also holds the
/// reconciler back) and the repair's end leaves the rollout's mark alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    /// A rolling upgrade is reimaging, rolling back or removing it.
    Rollout,
    /// An automatic repair is restarting, reimaging or replacing it.
    Repair,
}

/// An instance's requested operation and its actor. Stored as `pending` and `actor` (left out
/// when none); records from before carry the booleans `deleting`, `reimageRequested`,
/// `restartRequested`, `upgrading` and `repairing` instead (`draining` stayed a field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Legacy")]
pub struct Work {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
}

impl Work {
    /// Asks for `p`, keeping a pending request that takes precedence.
    pub fn request(&mut self, p: Pending) {
        self.pending = self.pending.max(Some(p));
    }

    /// `p` was carried out: clears it unless a request that supersedes it arrived meanwhile.
    pub fn settle(&mut self, p: Pending) {
        if self.pending == Some(p) {
            self.pending = None;
        }
    }

    pub fn is_deleting(&self) -> bool {
        self.pending == Some(Pending::Delete)
    }

    pub fn begin(&mut self, a: Actor) {
        self.actor = Some(a);
    }

    /// `a` is done: clears its mark, not another actor's.
    pub fn end(&mut self, a: Actor) {
        if self.actor == Some(a) {
            self.actor = None;
        }
    }

    pub fn by(&self, a: Actor) -> bool {
        self.actor == Some(a)
    }
}

/// The stored form, old or new. Old booleans map onto the precedence the reconciler applied to
/// them; `upgrading` with `repairing` (never written together) reads as the rollout's, which a
/// restart clears as it cleared both.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Legacy {
    pending: Option<Pending>,
    actor: Option<Actor>,
    deleting: bool,
    reimage_requested: bool,
    restart_requested: bool,
    upgrading: bool,
    repairing: bool,
}

impl From<Legacy> for Work {
    fn from(s: Legacy) -> Work {
        let mut w = Work::default();
        for (set, p) in [
            (s.restart_requested, Pending::Restart),
            (s.reimage_requested, Pending::Reimage),
            (s.deleting, Pending::Delete),
        ] {
            if set {
                w.request(p);
            }
        }
        if let Some(p) = s.pending {
            w.request(p);
        }
        w.actor = s.actor.or(if s.upgrading {
            Some(Actor::Rollout)
        } else if s.repairing {
            Some(Actor::Repair)
        } else {
            None
        });
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second request merges by precedence; settling clears only what was carried out; an
    /// actor's end leaves another's mark.
    #[test]
    fn requests_merge_by_precedence() {
        let mut w = Work::default();
        w.request(Pending::Restart);
        w.request(Pending::Reimage);
        assert_eq!(w.pending, Some(Pending::Reimage));
        w.request(Pending::Restart);
        assert_eq!(w.pending, Some(Pending::Reimage));
        w.settle(Pending::Restart);
        assert_eq!(w.pending, Some(Pending::Reimage));
        w.request(Pending::Delete);
        w.request(Pending::Reimage);
        w.settle(Pending::Reimage);
        assert!(w.is_deleting());
        w.begin(Actor::Rollout);
        w.end(Actor::Repair);
        assert!(w.by(Actor::Rollout));
        w.end(Actor::Rollout);
        assert_eq!(w.actor, None);
    }
}
