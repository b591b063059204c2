//! Operations on one instance: boot, drain, stop, restart, reimage, delete.
use super::*;

pub(crate) async fn start_instance(
    st: Arc<Core>,
    eng: Arc<Engine>,
    key: Key,
    vmss: String,
    rec: InstanceRecord,
) {
    let span = tracing::info_span!("start", vmss = %vmss, instance = rec.instance_id);
    async {
        let r = async {
            let spec = spec_for(&st, &vmss, &rec)?;
            let machines = st.machines.clone();
            blocking(move || {
                machines.create(&spec)?;
                machines.start(&spec.name)
            })
            .await
        }
        .await;
        match r {
            Ok(pid) => {
                info!(pid, "machine booted");
                forget_health(&st, &rec.machine);
                let _ = st.update_instance(&key, rec.instance_id, |r| {
                    r.provisioning_state = ProvisioningState::Succeeded;
                    r.draining = false;
                    r.work.settle(Pending::Restart);
                    r.last_error = None;
                    r.state_changed_at = Some(eng.clock.now());
                });
            }
            Err(e) => {
                warn!(error = %e, "machine failed to start");
                eng.failed_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(rec.machine.clone(), eng.clock.now_ms());
                let _ = st.update_instance(&key, rec.instance_id, |r| {
                    r.provisioning_state = ProvisioningState::Failed;
                    r.last_error = Some(e.clone());
                });
            }
        }
    }
    .instrument(span)
    .await
}

/// Forgets an instance's health after its machine (re)booted: the load balancer probes it up
/// again before it serves, and views must not show the health it had before.
pub(crate) fn forget_health(st: &Core, machine: &str) {
    let mut obs = st.observed.lock().unwrap_or_else(|e| e.into_inner());
    let o = obs.entry(machine.to_string()).or_default();
    o.healthy = None;
    o.app_health = None;
    o.booted_at = Some(Instant::now());
}

/// Takes the instance out of rotation and waits for its in-flight requests to finish.
pub(crate) async fn drain(st: &Arc<Core>, eng: &Arc<Engine>, key: &Key, rec: &InstanceRecord) {
    let _ = st.update_instance(key, rec.instance_id, |r| r.draining = true);
    if let Err(e) = sync_lbs(st, eng).await {
        warn!(error = %e, "load balancer sync during drain failed");
    }
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let mut active = 0;
        for sock in lb_sockets(st) {
            if let Ok(s) = lb_call(lb::client::get_status(&sock)).await {
                active += s
                    .backends
                    .iter()
                    .filter(|b| b.id == rec.machine)
                    .map(|b| b.active_connections)
                    .sum::<u64>();
            }
        }
        if active == 0 || Instant::now() > deadline {
            if active > 0 {
                warn!(instance = rec.instance_id, active, "drain timed out");
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn stop_instance(
    st: &Arc<Core>,
    eng: &Arc<Engine>,
    key: &Key,
    rec: &InstanceRecord,
) -> Result<(), String> {
    drain(st, eng, key, rec).await;
    let (m, name) = (st.machines.clone(), rec.machine.clone());
    blocking(move || m.stop(&name, STOP_TIMEOUT)).await?;
    info!(instance = rec.instance_id, "stopped");
    Ok(())
}

pub(crate) async fn restart_instance(
    st: &Arc<Core>,
    eng: &Arc<Engine>,
    key: &Key,
    rec: &InstanceRecord,
) -> Result<(), String> {
    stop_instance(st, eng, key, rec).await?;
    let (m, name) = (st.machines.clone(), rec.machine.clone());
    blocking(move || m.start(&name)).await?;
    forget_health(st, &rec.machine);
    st.update_instance(key, rec.instance_id, |r| {
        r.work.settle(Pending::Restart);
        r.draining = false;
        r.state_changed_at = Some(eng.clock.now());
    })
    .map_err(|e| error_chain(&e))?;
    sync_lbs(st, eng).await?;
    Ok(())
}

pub(crate) async fn upgrade_instance(
    st: &Arc<Core>,
    eng: &Arc<Engine>,
    key: &Key,
    vmss: &str,
    rec: &InstanceRecord,
    target: Target,
) -> Result<(), String> {
    let Target {
        image,
        version,
        size,
    } = target;
    let image = image.ok_or("the scale set model has no image")?;
    st.update_instance(key, rec.instance_id, |r| {
        r.provisioning_state = ProvisioningState::Updating
    })
    .map_err(|e| error_chain(&e))?;
    stop_instance(st, eng, key, rec).await?;
    let mut next = rec.clone();
    next.image = image.clone();
    next.vm_size = Some(size.clone());
    let spec = spec_for(st, vmss, &next)?;
    let m = st.machines.clone();
    blocking(move || {
        m.reimage(&spec)?;
        m.start(&spec.name)
    })
    .await?;
    forget_health(st, &rec.machine);
    st.update_instance(key, rec.instance_id, |r| {
        r.image = image.clone();
        r.vm_size = Some(size.clone());
        r.model_version = version;
        r.work.settle(Pending::Reimage);
        r.draining = false;
        r.provisioning_state = ProvisioningState::Succeeded;
        r.last_error = None;
        r.state_changed_at = Some(eng.clock.now());
    })
    .map_err(|e| error_chain(&e))?;
    info!(instance = rec.instance_id, image = %image, "reimaged onto the latest model");
    sync_lbs(st, eng).await?;
    Ok(())
}

pub(crate) async fn delete_instance(
    st: &Arc<Core>,
    eng: &Arc<Engine>,
    key: &Key,
    rec: &InstanceRecord,
) -> Result<(), String> {
    st.update_instance(key, rec.instance_id, |r| {
        r.work.request(Pending::Delete);
        r.provisioning_state = ProvisioningState::Deleting;
    })
    .map_err(|e| error_chain(&e))?;
    drain(st, eng, key, rec).await;
    let (m, name) = (st.machines.clone(), rec.machine.clone());
    blocking(move || m.delete(&name)).await?;
    st.store
        .delete_instance(key, rec.instance_id)
        .map_err(|e| error_chain(&e))?;
    st.observed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&rec.machine);
    info!(instance = rec.instance_id, "deleted");
    sync_lbs(st, eng).await?;
    Ok(())
}
