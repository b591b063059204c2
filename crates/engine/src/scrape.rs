//! What the daemon's `/metrics` shows of the engine, gathered as plain data (rendering is the
//! API's): each load balancer's `/status` counters, each scale set's capacity, instances
//! (their image and model version, health, last cgroup reading), rolling upgrade and repairs
//! state, and the images' bake durations.
use super::*;
use plan::metrics::Sample;
use plan::repairs::{Health, RepairsState};
use plan::rolling::{Phase, Progress, RunningStatus};

/// One scrape of the engine's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub lbs: Vec<LbScrape>,
    pub scale_sets: Vec<VmssScrape>,
    pub images: Vec<ImageScrape>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LbScrape {
    pub resource_group: String,
    pub name: String,
    /// `None`: its process did not answer on the admin socket.
    pub status: Option<lb::LbStatus>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VmssScrape {
    pub resource_group: String,
    pub name: String,
    /// `sku.capacity`.
    pub capacity: u32,
    pub model_version: u64,
    pub instances: Vec<InstanceScrape>,
    pub rollout: Option<RolloutScrape>,
    /// `None` unless automatic repairs are enabled.
    pub repairs: Option<RepairsState>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceScrape {
    /// `{vmss}_{id}`.
    pub vm: String,
    /// The runtime machine: the load balancer's backend id.
    pub machine: String,
    pub image: String,
    pub model_version: u64,
    pub health: Option<Health>,
    /// The sampler's last cgroup reading (cumulative CPU time, memory now).
    pub usage: Option<Sample>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutScrape {
    pub status: RunningStatus,
    pub phase: Phase,
    pub target_version: u64,
    pub start_time: u64,
    pub progress: Progress,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageScrape {
    pub name: String,
    pub bake_ms: Option<u64>,
}

impl Core {
    /// Reads everything `/metrics` shows; the load balancers are asked now (5 s at most each).
    pub async fn scrape(&self) -> Scrape {
        let mut lbs = Vec::new();
        for (key, arm) in self.store.list(LB, None, None).unwrap_or_default() {
            let sock = lb_dir(self, &key).join("admin.sock");
            let status = lb_call(lb::client::get_status(&sock)).await.ok();
            let name = arm.get("name").and_then(Value::as_str).unwrap_or(&key.name);
            lbs.push(LbScrape {
                resource_group: key.rg.clone(),
                name: name.to_owned(),
                status,
            });
        }
        let images = self
            .images
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|i| ImageScrape {
                name: i.name,
                bake_ms: i.bake_ms,
            })
            .collect();
        Scrape {
            lbs,
            scale_sets: self.scrape_scale_sets(),
            images,
        }
    }

    fn scrape_scale_sets(&self) -> Vec<VmssScrape> {
        let mut out = Vec::new();
        for (key, v) in self.store.list(VMSS, None, None).unwrap_or_default() {
            let Ok(doc) = serde_json::from_value::<VmssDoc>(v) else {
                continue;
            };
            let Ok((m, _)) = model::vmss::parse(&doc.arm, &doc.name) else {
                continue;
            };
            let res = Res {
                sub: key.sub.clone(),
                rg: key.rg.clone(),
                name: key.name.clone(),
            };
            let recs = self.instances(&key).unwrap_or_default();
            let rollout = self.rollout(&res).ok().flatten().map(|d| RolloutScrape {
                status: d.state.status,
                phase: d.state.phase,
                target_version: d.state.target_version,
                start_time: d.state.start_time,
                progress: plan::rolling::progress(&d.state, &roll_instances(self, &recs)),
            });
            let repairs = m
                .repairs
                .enabled
                .then(|| self.repairs_state(&res).unwrap_or_default());
            let instances = self.scrape_instances(&key, &doc.name, &recs);
            out.push(VmssScrape {
                resource_group: doc.resource_group.clone(),
                name: doc.name.clone(),
                capacity: m.capacity,
                model_version: doc.model_version,
                instances,
                rollout,
                repairs,
            });
        }
        out
    }

    fn scrape_instances(
        &self,
        key: &Key,
        vmss: &str,
        recs: &[InstanceRecord],
    ) -> Vec<InstanceScrape> {
        let scope = key.path();
        let metrics = self.metrics.store();
        recs.iter()
            .map(|r| {
                let vm = plan::naming::vm_name(vmss, r.instance_id);
                let usage = metrics.series(&scope, &vm).and_then(|s| s.last().copied());
                InstanceScrape {
                    machine: r.machine.clone(),
                    image: r.image.clone(),
                    model_version: r.model_version,
                    health: self.observation(&r.machine).health(),
                    usage,
                    vm,
                }
            })
            .collect()
    }
}
