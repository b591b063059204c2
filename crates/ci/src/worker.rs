//! The run worker: one run at a time, in queue order; a completed run queues the release runs
//! it triggers.
use crate::provider::run_access_token;
use crate::PipelineService;
use pipeline::runner::{pipelines_for_completed_run, RunRequest, RunStatus};
use std::sync::Arc;
use tokio::sync::watch;

impl PipelineService {
    /// Completes runs interrupted by a restart and starts the run worker (call once, from the
    /// daemon's `serve`).
    pub fn start(self: &Arc<Self>) {
        self.recover();
        self.catch_up();
        let Some(mut rx) = self
            .queue_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                let Some(svc) = weak.upgrade() else { return };
                svc.run_one(req).await;
            }
        });
    }

    /// What a previous daemon left: its runs' processes die, its running runs fail, and its
    /// acknowledged queued runs are resumed, in order, before anything new is queued.
    fn recover(&self) {
        if let Some(h) = &self.runner.config.cgroups {
            for name in h.existing() {
                if let Err(e) = h.get(&name).remove() {
                    tracing::error!(cgroup = %name, error = %e, "cannot clean up a previous run's processes");
                }
            }
        }
        match self.runs.fail_interrupted() {
            Ok(ids) if !ids.is_empty() => {
                tracing::warn!(?ids, "runs interrupted by a restart failed")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot scan pipeline runs"),
        }
        for r in self.runs.queued().unwrap_or_default() {
            match r.request(&self.repos) {
                Some(req) => {
                    tracing::info!(run = r.id, pipeline = %r.pipeline, "resuming a queued run");
                    let _ = self.queue_tx.send(req);
                }
                None => {
                    let _ = self.runs.cancel_queued(r.id);
                }
            }
        }
    }

    /// Runs one queued run (unless it was canceled while queued) with its own credentials,
    /// then queues what its completion triggers.
    async fn run_one(self: &Arc<Self>, req: RunRequest) {
        match self.runs.get(req.run_id) {
            Ok(Some(r)) if r.status == RunStatus::Queued => {}
            _ => return, // canceled while queued
        }
        let (tx, cancel) = watch::channel(false);
        self.cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req.run_id, tx);
        let id = req.run_id;
        let run_token = self.tokens.mint(id);
        let azure_token = run_access_token(self.azure.as_ref(), id).await;
        let tasks = self.tasks(&run_token, azure_token.as_deref());
        let rec = self.runner.run(req, &tasks, cancel).await;
        self.tokens.revoke(&run_token);
        self.cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        tracing::info!(run = id, pipeline = %rec.pipeline, result = ?rec.result, "pipeline run finished");
        // Reads and compiles YAML: off the async workers.
        let (s2, r2) = (self.clone(), rec.clone());
        let m = tokio::task::spawn_blocking(move || {
            pipelines_for_completed_run(&s2.all_definitions(), &s2.repos, &r2)
        })
        .await
        .unwrap_or_default();
        for n in &m.notes {
            tracing::warn!(run = id, "{n}");
        }
        for t in &m.runs {
            match self.enqueue(t) {
                Ok(rid) => {
                    tracing::info!(run = rid, pipeline = %t.definition.name, trigger = id, "queued by pipeline resource")
                }
                Err(e) => tracing::error!(error = %e, "cannot queue run"),
            }
        }
    }
}
