//! Pushes: ref updates matched against the repository's pipelines and queued as runs, whether
//! they come from git (a push to a hosted repository), from a mirror's webhook (a fetch), or
//! from a daemon that died in between (replayed at start).
use crate::{CiError, PipelineService};
use pipeline::git;
use pipeline::runner::{pipelines_for_push, RunReason};
use pipeline::webhook::PushedRef;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

type Refs = BTreeMap<String, String>;

/// A push in progress: holds the repository's push lock (pushes to one repository are
/// serialized) and its refs from before the push.
pub struct Push {
    svc: Arc<PipelineService>,
    repo: String,
    before: Refs,
    _lock: tokio::sync::OwnedMutexGuard<()>,
}

impl PipelineService {
    /// Waits for the repository's earlier pushes, then notes its refs; git moves them next.
    pub async fn begin_push(self: &Arc<Self>, repo: &str) -> Push {
        let lock = self.repo_lock(repo).lock_owned().await;
        Push {
            svc: self.clone(),
            repo: repo.to_string(),
            before: self.repos.refs(repo).unwrap_or_default(),
            _lock: lock,
        }
    }

    /// A mirror's webhook said refs moved (`refs`, as its payload lists them): fetches the
    /// mirror and triggers pipelines for the refs that really moved, like a push. The notes say
    /// what was queued, and which refs are not where the payload says.
    pub async fn hook_push(
        self: &Arc<Self>,
        name: &str,
        refs: &[PushedRef],
    ) -> Result<Vec<String>, CiError> {
        let lock = self.repo_lock(name);
        let _g = lock.lock().await;
        let before = self.repos.refs(name)?;
        let (repos, n) = (self.repos.clone(), name.to_string());
        tokio::task::spawn_blocking(move || repos.fetch_mirror(&n))
            .await
            .map_err(|e| CiError::Internal(e.to_string()))?
            .map_err(CiError::MirrorFetch)?;
        let after = self.repos.refs(name)?;
        let mut notes = self.on_push_blocking(name, &before, &after).await;
        for r in refs {
            if after.get(&r.name) != Some(&r.new) && !r.new.bytes().all(|b| b == b'0') {
                notes.push(format!(
                    "{} is at {} after the fetch, not {} as the payload says",
                    r.name,
                    after.get(&r.name).map(String::as_str).unwrap_or("(absent)"),
                    r.new
                ));
            }
        }
        Ok(notes)
    }

    /// [`Self::on_push`] on a blocking thread: it runs git and compiles every pipeline's YAML.
    async fn on_push_blocking(
        self: &Arc<Self>,
        repo: &str,
        before: &Refs,
        after: &Refs,
    ) -> Vec<String> {
        let (svc, repo, before, after) = (
            self.clone(),
            repo.to_string(),
            before.clone(),
            after.clone(),
        );
        tokio::task::spawn_blocking(move || svc.on_push(&repo, &before, &after))
            .await
            .unwrap_or_else(|e| vec![format!("matching the push against pipelines failed: {e}")])
    }

    /// Matches a push's ref updates against the repository's pipelines and queues runs. Returns
    /// human-readable lines (also stored as the repository's last push). The refs are compared
    /// with those the last processed push left (`before` only when none is recorded), and the
    /// runs are queued in one transaction with `after`: a daemon that dies between git moving
    /// the refs and this point replays the push at start ([`Self::catch_up`]).
    fn on_push(&self, repo: &str, before: &Refs, after: &Refs) -> Vec<String> {
        let before = match self.runs.processed_refs(repo) {
            Ok(Some(p)) => p,
            _ => before.clone(),
        };
        let mut notes = Vec::new();
        let default_branch = self
            .repos
            .get(repo)
            .ok()
            .flatten()
            .map(|i| PipelineService::default_branch(&i))
            .unwrap_or_else(|| "main".into());
        let mut matches = Vec::new();
        for u in git::diff_refs(&before, after) {
            let defs = if u.is_delete() {
                vec![]
            } else {
                self.definitions_at(repo, &u.new, &default_branch)
            };
            match pipelines_for_push(&defs, &self.repos, repo, &u) {
                Ok(m) => {
                    notes.extend(m.notes.iter().cloned());
                    matches.extend(m.runs.into_iter().map(|t| (t, u.clone())));
                }
                Err(e) => notes.push(format!("{}: {e}", u.name)),
            }
        }
        let mut reqs = Vec::new();
        for (t, _) in &matches {
            match self.runs.next_id() {
                Ok(id) => reqs.push(t.request(id, &self.repos)),
                Err(e) => notes.push(format!("cannot queue `{}`: {e}", t.definition.name)),
            }
        }
        if let Err(e) = self.runs.commit_push(repo, after, &reqs) {
            notes.push(format!("cannot queue the push's runs: {e}"));
            return notes;
        }
        let mut queued = Vec::new();
        for ((t, u), req) in matches.iter().zip(reqs) {
            let id = req.run_id;
            if self.queue_tx.send(req).is_err() {
                notes.push(format!(
                    "run {id} is queued; it starts when the daemon restarts"
                ));
            }
            if t.reason == (RunReason::Push { batched: true }) {
                for old in self
                    .runs
                    .batch_into(&t.definition.name, &t.branch, id)
                    .unwrap_or_default()
                {
                    notes.push(format!(
                        "run {old}, still queued, was batched into run {id}"
                    ));
                }
            }
            queued.push(id);
            notes.push(format!(
                "queued run {id} of pipeline `{}` for {} at {}",
                t.definition.name,
                u.name,
                &u.new[..u.new.len().min(12)]
            ));
        }
        self.record_last_push(repo, &queued, &notes);
        notes
    }

    /// The push's outcome, for [`Self::last_push`].
    fn record_last_push(&self, repo: &str, queued: &[u64], notes: &[String]) {
        let rec = json!({"repository": repo, "time": control::now_rfc3339(), "runs": queued, "notes": notes});
        let _ = std::fs::write(self.last_push_path(repo), rec.to_string());
    }

    pub(crate) fn last_push_path(&self, repo: &str) -> std::path::PathBuf {
        self.root.join(format!("last-push-{repo}.json"))
    }

    /// A new repository's refs (a mirror's, as cloned) count as processed: only later pushes run.
    pub(crate) fn record_refs(&self, name: &str) -> Result<(), CiError> {
        let refs = self.repos.refs(name)?;
        Ok(self.runs.commit_push(name, &refs, &[])?)
    }

    /// At start: pushes whose refs moved but whose runs were never queued (the daemon died in
    /// between) are matched now; a repository without a record starts from its current refs.
    pub(crate) fn catch_up(&self) {
        for info in self.repos.list().unwrap_or_default() {
            let now = self.repos.refs(&info.name).unwrap_or_default();
            match self.runs.processed_refs(&info.name) {
                Ok(Some(done)) if done != now => {
                    for n in self.on_push(&info.name, &done, &now) {
                        tracing::warn!(repo = %info.name, "push replayed at start: {n}");
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    if let Err(e) = self.runs.commit_push(&info.name, &now, &[]) {
                        tracing::error!(repo = %info.name, error = %e, "cannot record the repository's refs");
                    }
                }
                Err(e) => {
                    tracing::error!(repo = %info.name, error = %e, "cannot read processed refs")
                }
            }
        }
    }
}

impl Push {
    /// After git accepted the push: matches the refs that moved against the repository's
    /// pipelines and queues the runs; returns the notes (for the pusher's `remote:` lines).
    pub async fn finish(self) -> Vec<String> {
        let after = self.svc.repos.refs(&self.repo).unwrap_or_default();
        self.svc
            .on_push_blocking(&self.repo, &self.before, &after)
            .await
    }
}
