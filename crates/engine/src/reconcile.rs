//! Reconcile: observe a scale set's machines, ask `plan::reconcile`, carry out the actions.
use super::*;

pub(crate) fn spec_for(st: &Core, vmss: &str, rec: &InstanceRecord) -> Result<MachineSpec, String> {
    // Verified on use: a tampered layer is refused instead of booted.
    let img = st
        .images
        .open_for_use(&rec.image)
        .map_err(|e| error_chain(&e))?;
    let vm = plan::naming::vm_name(vmss, rec.instance_id);
    Ok(MachineSpec {
        name: rec.machine.clone(),
        hostname: rec.computer_name.clone(),
        layers: img.layers.clone(),
        ip: rec.ip,
        network: st.cfg.network.clone(),
        files: vec![(
            PathBuf::from("/etc/scaleset/instance.env"),
            format!("SCALESET_INSTANCE={vm}\nSCALESET_IMAGE={}\nSCALESET_VMSS={vmss}\nSCALESET_COMPUTER_NAME={}\n", rec.image, rec.computer_name),
        )],
        size: machine_size(rec.vm_size.as_deref()),
    })
}

/// The VM size's CPU and memory; records from before sizes were recorded run uncapped.
pub(crate) fn machine_size(name: Option<&str>) -> Option<runtime::MachineSize> {
    let s = model::sizes::lookup(name?)?;
    Some(runtime::MachineSize {
        vcpus: s.vcpus,
        memory_mib: s.memory_mib,
    })
}

/// Observes the instances' machines (and records whether each runs) as `plan` sees them.
async fn observe(
    st: &Core,
    recs: &[InstanceRecord],
    vmss_deleting: bool,
) -> Result<Vec<InstanceState>, String> {
    let names: Vec<String> = recs.iter().map(|r| r.machine.clone()).collect();
    let machines = st.machines.clone();
    let states = blocking(move || {
        names
            .iter()
            .map(|n| machines.state(n))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    let mut observed = Vec::new();
    for (r, s) in recs.iter().zip(&states) {
        let running = matches!(s, MachineState::Running { .. });
        let healthy = st.observation(&r.machine).is_healthy();
        {
            let mut obs = st.observed.lock().unwrap_or_else(|e| e.into_inner());
            obs.entry(r.machine.clone()).or_default().running = running;
        }
        observed.push(InstanceState {
            id: r.instance_id,
            created_seq: r.created_seq,
            model_version: r.model_version,
            intent: r.intent,
            machine: match s {
                MachineState::Running { .. } => Observed::Running,
                MachineState::Stopped => Observed::Stopped,
                MachineState::Missing => Observed::Missing,
            },
            healthy: healthy.unwrap_or(false),
            protect_from_scale_in: r.protect_from_scale_in,
            protect_from_scale_set_actions: r.protect_from_scale_set_actions,
            deleting: r.work.is_deleting() || vmss_deleting,
            reimage_requested: r.work.pending == Some(Pending::Reimage),
            restart_requested: r.work.pending == Some(Pending::Restart),
        });
    }
    Ok(observed)
}

/// One reconcile pass's scale set, for the functions that act on it.
pub(crate) struct Pass<'a> {
    pub st: &'a Arc<Core>,
    pub eng: &'a Arc<Engine>,
    pub key: &'a Key,
    pub res: &'a Res,
    pub doc: &'a VmssDoc,
    /// The model's image (new instances and upgrades get it).
    pub image: Option<String>,
    /// The model's VM size.
    pub size: String,
}

/// What an upgrade reimages an instance onto: a model version's image and VM size.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub image: Option<String>,
    pub version: u64,
    pub size: String,
}

impl Pass<'_> {
    /// The latest model.
    pub fn latest(&self) -> Target {
        Target {
            image: self.image.clone(),
            version: self.doc.model_version,
            size: self.size.clone(),
        }
    }

    /// Model version `v` (a rollback's), as far as it was recorded.
    pub fn version(&self, v: u64) -> Target {
        Target {
            image: self
                .doc
                .versions
                .get(&v)
                .cloned()
                .or_else(|| self.image.clone()),
            version: v,
            size: self
                .doc
                .sizes
                .get(&v)
                .cloned()
                .unwrap_or_else(|| self.size.clone()),
        }
    }
}

/// Starts the actions `plan::reconcile` decided, each on its own task.
fn act(
    ctx: &Pass,
    recs: &[InstanceRecord],
    actions: Vec<Action>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let Pass {
        st,
        eng,
        key,
        res,
        doc,
        ..
    } = *ctx;
    let mut tasks = Vec::new();
    for action in actions {
        match action {
            Action::Create { count } => {
                let Some(image) = ctx.image.clone() else {
                    continue;
                };
                for rec in new_instances(st, key, res, doc, &image, count)? {
                    tasks.push(tokio::spawn(start_instance(
                        st.clone(),
                        eng.clone(),
                        key.clone(),
                        res.name.clone(),
                        rec,
                    )));
                }
            }
            Action::Start { id } => {
                let Some(rec) = recs.iter().find(|r| r.instance_id == id).cloned() else {
                    continue;
                };
                let recent = eng
                    .failed_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&rec.machine)
                    .is_some_and(|t| eng.clock.now_ms().saturating_sub(*t) < 5000);
                if !recent {
                    tasks.push(tokio::spawn(start_instance(
                        st.clone(),
                        eng.clone(),
                        key.clone(),
                        res.name.clone(),
                        rec,
                    )));
                }
            }
            Action::Stop { id }
            | Action::Restart { id }
            | Action::Upgrade { id }
            | Action::Delete { id } => {
                let Some(rec) = recs.iter().find(|r| r.instance_id == id).cloned() else {
                    continue;
                };
                let (st, eng, key, name) = (st.clone(), eng.clone(), key.clone(), res.name.clone());
                let target = ctx.latest();
                tasks.push(tokio::spawn(async move {
                    let r = match action {
                        Action::Stop { .. } => stop_instance(&st, &eng, &key, &rec).await,
                        Action::Restart { .. } => restart_instance(&st, &eng, &key, &rec).await,
                        Action::Upgrade { .. } => {
                            upgrade_instance(&st, &eng, &key, &name, &rec, target).await
                        }
                        _ => delete_instance(&st, &eng, &key, &rec).await,
                    };
                    if let Err(e) = &r {
                        warn!(instance = rec.instance_id, error = %e, "instance operation failed");
                        let _ = st.update_instance(&key, rec.instance_id, |r| {
                            r.last_error = Some(e.clone())
                        });
                    }
                }));
            }
        }
    }
    Ok(tasks)
}

pub(crate) async fn reconcile_vmss((st, eng): &Shared, key: &Key) -> Result<(), String> {
    let res = Res {
        sub: key.sub.clone(),
        rg: key.rg.clone(),
        name: key.name.clone(),
    };
    let Some(doc) = st.vmss_doc(&res).map_err(|e| error_chain(&e))? else {
        return Ok(());
    };
    let res = Res {
        name: doc.name.clone(),
        rg: doc.resource_group.clone(),
        ..res
    };
    let (m, _) = model::vmss::parse(&doc.arm, &doc.name).map_err(|e| error_chain(&e))?;
    let recs = st.instances(key).map_err(|e| error_chain(&e))?;
    if doc.deleting && recs.is_empty() {
        st.store.delete(key).map_err(|e| error_chain(&e))?;
        let _ = st.store.delete(&res.key(control::ROLLOUT));
        info!(vmss = %res.name, "scale set deleted");
        st.wake.notify_one();
        return Ok(());
    }
    tracing::debug!("observing");
    let observed = observe(st, &recs, doc.deleting).await?;
    let rollout = st.rollout(&res).map_err(|e| error_chain(&e))?;
    let rolling_active = rollout
        .as_ref()
        .is_some_and(|d| d.state.phase != plan::rolling::Phase::Done);
    let active_count = recs.iter().filter(|r| !r.work.is_deleting()).count() as u32;
    let desired = plan::Desired {
        // A rollout owns the instance count while it runs (maxSurge adds and removes instances).
        capacity: if doc.deleting {
            0
        } else if rolling_active {
            active_count
        } else {
            m.capacity
        },
        model_version: doc.model_version,
        upgrade_mode: m.upgrade_mode,
        scale_in: m.scale_in,
    };
    let mut actions = plan::reconcile(&desired, &observed);
    tracing::debug!(?actions, "decided");
    // Instances a rollout is acting on are the rollout's.
    actions.retain(|a| match a {
        Action::Start { id }
        | Action::Stop { id }
        | Action::Restart { id }
        | Action::Upgrade { id } => !recs
            .iter()
            .any(|r| r.instance_id == *id && r.work.by(Actor::Rollout)),
        _ => true,
    });
    if actions.is_empty() {
        if rolling_active && !doc.deleting {
            rolling_pass(st, eng, key, &res, &doc, &m).await?;
        } else if !doc.deleting {
            // Repairs wait for a steady scale set: nothing to reconcile, no rollout running.
            repairs_pass(st, eng, key, &res, &doc, &m).await?;
        }
        return Ok(());
    }
    info!(vmss = %res.name, ?actions, "reconcile");
    let ctx = Pass {
        st,
        eng,
        key,
        res: &res,
        doc: &doc,
        image: m.image.as_ref().map(|i| i.name.clone()),
        size: m.sku_name.clone(),
    };
    let tasks = act(&ctx, &recs, actions)?;
    let acted = !tasks.is_empty();
    for t in tasks {
        let _ = t.await;
        tracing::debug!("action finished");
    }
    if rolling_active && !doc.deleting {
        rolling_pass(st, eng, key, &res, &doc, &m).await?;
    }
    // Decide again at once after acting; actions held back (a start that just failed) wait for
    // the next tick instead of spinning.
    if acted {
        st.wake.notify_one();
    }
    Ok(())
}

/// Records new instances (intent first, durable) with ids, addresses and names.
pub(crate) fn new_instances(
    st: &Core,
    key: &Key,
    res: &Res,
    doc: &VmssDoc,
    image: &str,
    count: u32,
) -> Result<Vec<InstanceRecord>, String> {
    let (m, _) = model::vmss::parse(&doc.arm, &doc.name).map_err(|e| error_chain(&e))?;
    let _g = st.records.lock().unwrap_or_else(|e| e.into_inner());
    let mut used = Vec::new();
    for (k, _) in st
        .store
        .list(VMSS, None, None)
        .map_err(|e| error_chain(&e))?
    {
        for (_, v) in st.store.instances(&k).map_err(|e| error_chain(&e))? {
            if let Some(ip) = v
                .get("ip")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
            {
                used.push(ip);
            }
        }
    }
    let net = &st.cfg.network;
    let mut out = Vec::new();
    for _ in 0..count {
        let ip = plan::naming::allocate_ip(net.subnet.network(), net.subnet.prefix_len, &used)
            .ok_or_else(|| format!("subnet {} has no free addresses", net.subnet))?;
        used.push(ip);
        let id = st
            .store
            .bump(&format!("{}:ids", key.path()), 1)
            .map_err(|e| error_chain(&e))? as u32;
        let seq = st
            .store
            .bump("instance-seq", 1)
            .map_err(|e| error_chain(&e))?;
        let rec = InstanceRecord {
            instance_id: id,
            created_seq: seq,
            model_version: doc.model_version,
            image: image.to_string(),
            ip,
            computer_name: plan::naming::computer_name(&m.computer_name_prefix, id),
            machine: format!(
                "{}-{}-{id}-{}",
                st.cfg.prefix,
                sanitize(&res.name),
                short_hash(&key.path(), 4)
            ),
            time_created: now_rfc3339(),
            vm_id: uuid(),
            intent: PowerIntent::Running,
            provisioning_state: ProvisioningState::Creating,
            work: Default::default(),
            draining: false,
            vm_size: Some(m.sku_name.clone()),
            protect_from_scale_in: false,
            protect_from_scale_set_actions: false,
            last_error: None,
            state_changed_at: None,
            repair_attempts: 0,
            deallocated: false,
        };
        st.store
            .put_instance(
                key,
                id,
                &serde_json::to_value(&rec).map_err(|e| error_chain(&e))?,
            )
            .map_err(|e| error_chain(&e))?;
        info!(vmss = %res.name, instance = id, %ip, "instance recorded");
        out.push(rec);
    }
    Ok(out)
}

pub(crate) fn sanitize(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    t.trim_matches('-').to_string()
}
