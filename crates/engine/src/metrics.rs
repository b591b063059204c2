//! Host metrics: at every interval (15 s, `EngineConfig::metrics_interval_ms` in tests) each
//! instance's machine usage is read off the async threads and fed to the pure
//! `plan::metrics::Store`; the API reads it through [`Core::query_metrics`].
use super::*;
use plan::metrics::{MetricResult, Sample, Store};

/// Time between two readings of every instance.
pub const METRICS_INTERVAL: Duration = Duration::from_secs(15);

/// The series of every scale set's instances (in memory: metrics start afresh with the daemon).
#[derive(Debug, Default)]
pub struct Metrics(Mutex<Store>);

impl Metrics {
    pub(crate) fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` over the store (held locked: keep it short).
    pub fn with_store<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&self.store())
    }

    /// Bytes the kept values take.
    pub fn memory_bytes(&self) -> usize {
        self.store().memory_bytes()
    }
}

impl Core {
    /// The answer to a metrics query on the scale set `key`.
    pub fn query_metrics(
        &self,
        key: &Key,
        q: &model::metrics::Query,
    ) -> Result<Vec<MetricResult>, model::ModelError> {
        self.metrics.store().query(&key.path(), q)
    }
}

/// One instance to read: where its values go, its machine, its CPUs.
struct Target {
    scope: String,
    vm: String,
    machine: String,
    vcpus: u32,
}

pub(crate) async fn metrics_loop(st: Arc<Core>) {
    let every = st
        .cfg
        .metrics_interval_ms
        .map_or(METRICS_INTERVAL, Duration::from_millis)
        .max(Duration::from_millis(100));
    loop {
        sample_metrics(&st, now_ms()).await;
        tokio::time::sleep(every).await;
    }
}

/// One reading of every instance, recorded as taken at `at_ms` (tests pass their own times).
pub async fn sample_metrics(st: &Arc<Core>, at_ms: u64) {
    let targets = targets(st);
    let machines = st.machines.clone();
    let read = blocking(move || {
        Ok(targets
            .into_iter()
            .map(|t| {
                let u = machines.usage(&t.machine).unwrap_or_else(|e| {
                    tracing::debug!(machine = %t.machine, error = %e, "cannot read usage");
                    None
                });
                (t, u)
            })
            .collect::<Vec<_>>())
    })
    .await;
    let readings = match read {
        Ok(r) => r,
        Err(e) => return warn!(error = %e, "cannot read machine usage"),
    };
    let mut store = st.metrics.store();
    for (t, u) in readings {
        let sample = u.map(|u| Sample {
            at_ms,
            cpu_ns: u.cpu.map(|d| d.as_nanos() as u64),
            vcpus: t.vcpus,
            memory_used: u.memory_bytes,
            memory_limit: u.memory_limit_bytes,
            net_in: u.net_in_bytes,
            net_out: u.net_out_bytes,
        });
        store.record(&t.scope, &t.vm, sample);
    }
    store.prune(at_ms);
}

/// Every instance of every scale set, with its VM name and its size's vCPUs.
fn targets(st: &Core) -> Vec<Target> {
    let host_cpus = host_cpus();
    let mut out = Vec::new();
    for (key, v) in st.store.list(VMSS, None, None).unwrap_or_default() {
        let Ok(doc) = serde_json::from_value::<VmssDoc>(v) else {
            continue;
        };
        for r in st.instances(&key).unwrap_or_default() {
            let vcpus = r.vm_size.as_deref().and_then(model::sizes::lookup);
            out.push(Target {
                scope: key.path(),
                vm: plan::naming::vm_name(&doc.name, r.instance_id),
                machine: r.machine,
                vcpus: vcpus.map_or(host_cpus, |s| s.vcpus),
            });
        }
    }
    out
}

/// CPUs online on the host: what an instance without a size may use.
fn host_cpus() -> u32 {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u32::try_from(n).unwrap_or(1).max(1)
}

impl Core {
    /// The last minute's average of each host metric (`Metric::ALL` order) of instance `vm` of
    /// the scale set `key`, for views; `None` before its first reading.
    pub fn latest_usage(&self, key: &Key, vm: &str) -> Option<[Option<f64>; 4]> {
        let store = self.metrics.store();
        let m = store.series(&key.path(), vm)?.minutes().back()?;
        Some(
            m.aggs
                .map(|a| a.value(model::metrics::Aggregation::Average)),
        )
    }
}
