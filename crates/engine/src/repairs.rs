//! Automatic repairs: ask `plan::repairs::decide`, record intent, act.
use super::*;

/// The repairs service's view of an instance's health: the Application Health extension's
/// state or the LB probe's verdict (None until either has reported).
pub(crate) fn repair_health(o: &Observation) -> Option<plan::repairs::Health> {
    o.health()
}

/// One automatic repairs step for the scale set: ask `plan::repairs`, record intent, act.
pub(crate) async fn repairs_pass(
    st: &Arc<Core>,
    eng: &Arc<Engine>,
    key: &Key,
    res: &Res,
    doc: &VmssDoc,
    m: &model::vmss::VmssModel,
) -> Result<(), String> {
    if !m.repairs.enabled {
        return Ok(());
    }
    let now = eng.clock.now();
    let recs = st.instances(key).map_err(|e| error_chain(&e))?;
    // Records from before state changes were timed: their grace period starts now.
    for r in recs.iter().filter(|r| r.state_changed_at.is_none()) {
        if r.provisioning_state == ProvisioningState::Succeeded {
            st.update_instance(key, r.instance_id, |r| r.state_changed_at = Some(now))
                .map_err(|e| error_chain(&e))?;
        }
    }
    let insts: Vec<plan::repairs::RepairInstance> = recs
        .iter()
        .map(|r| {
            let o = st.observation(&r.machine);
            plan::repairs::RepairInstance {
                id: r.instance_id,
                health: repair_health(&o),
                intent_running: r.intent == PowerIntent::Running,
                machine_running: o.running,
                deleting: r.work.is_deleting(),
                busy: r.work.by(Actor::Rollout)
                    || matches!(r.work.pending, Some(Pending::Reimage | Pending::Restart))
                    || r.draining,
                protected: r.protect_from_scale_in || r.protect_from_scale_set_actions,
                provisioning_failed: r.provisioning_state == ProvisioningState::Failed,
                state_changed_at: r.state_changed_at.unwrap_or(now),
                repairing: r.work.by(Actor::Repair),
                repair_attempts: r.repair_attempts,
            }
        })
        .collect();
    let grace = st
        .cfg
        .repair_grace_secs
        .unwrap_or(m.repairs.grace_period_secs);
    let cur = st.repairs_state(res).map_err(|e| error_chain(&e))?;
    let d = plan::repairs::decide(true, m.repairs.repair_action, grace, &cur, &insts, now);
    for id in &d.recovered {
        info!(vmss = %res.name, instance = id, "automatic repair: instance healthy again");
        st.update_instance(key, *id, |r| r.repair_attempts = 0)
            .map_err(|e| error_chain(&e))?;
    }
    if d.state != cur {
        // Compare-and-set against a resume or suspend that arrived meanwhile.
        st.update_repairs(res, |s| {
            if *s == cur {
                d.state.clone()
            } else {
                s.clone()
            }
        })
        .map_err(|e| error_chain(&e))?;
        if d.state.service_state == plan::repairs::ServiceState::Suspended {
            warn!(vmss = %res.name, reason = ?d.state.reason, "automatic repairs suspended");
        }
    }
    if d.repair.is_empty() {
        return Ok(());
    }
    let image = m.image.as_ref().map(|i| i.name.clone());
    let mut tasks = Vec::new();
    let ctx = Pass {
        st,
        eng,
        key,
        res,
        doc,
        image,
        size: m.sku_name.clone(),
    };
    let mut result = Ok(());
    for (id, action) in d.repair {
        let Some(rec) = recs.iter().find(|r| r.instance_id == id).cloned() else {
            continue;
        };
        result = repair(&ctx, rec, action, &mut tasks);
        if result.is_err() {
            break;
        }
    }
    // Repairs already started finish within this pass even when a later one could not start:
    // a detached repair could overlap the next pass's work on the same instance.
    for t in tasks {
        let _ = t.await;
    }
    st.wake.notify_one();
    result
}

pub(crate) fn repair_failed(st: &Core, key: &Key, res: &Res, id: u32, e: String) {
    warn!(instance = id, error = %e, "automatic repair failed");
    let _ = st.update_instance(key, id, |r| r.last_error = Some(e.clone()));
    let _ = st.update_repairs(res, |s| {
        plan::repairs::record_failure(s, &format!("instance {id}: {e}"))
    });
}

/// Records one repair's intent and starts it on its own task.
fn repair(
    ctx: &Pass,
    rec: InstanceRecord,
    action: model::vmss::RepairAction,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<(), String> {
    let Pass {
        st,
        eng,
        key,
        res,
        doc,
        ..
    } = *ctx;
    let id = rec.instance_id;
    info!(vmss = %res.name, instance = id, ?action, attempts = rec.repair_attempts, "automatic repair");
    let attempts = rec.repair_attempts + 1;
    if action == model::vmss::RepairAction::Replace && ctx.image.is_none() {
        return Ok(());
    }
    // Intent first, as the durable request the reconciler already acts on: a daemon killed
    // mid-repair finishes the operation by reconciling (the repair's mark is cleared at start).
    st.update_instance(key, id, |r| {
        r.work.begin(Actor::Repair);
        r.repair_attempts = attempts;
        r.work.request(match action {
            model::vmss::RepairAction::Replace => Pending::Delete,
            model::vmss::RepairAction::Restart => Pending::Restart,
            model::vmss::RepairAction::Reimage => Pending::Reimage,
        });
    })
    .map_err(|e| error_chain(&e))?;
    let (st2, eng2, key2, res2) = (st.clone(), eng.clone(), key.clone(), res.clone());
    match action {
        model::vmss::RepairAction::Replace => {
            let Some(image) = ctx.image.clone() else {
                return Ok(());
            };
            // Delete then create, as Azure does: the new instance gets a new id and address
            // and the latest model; the old one is drained before it stops.
            let new = new_instances(st, key, res, doc, &image, 1)?;
            for n in &new {
                st.update_instance(key, n.instance_id, |r| r.repair_attempts = attempts)
                    .map_err(|e| error_chain(&e))?;
            }
            for n in new {
                tasks.push(tokio::spawn(start_instance(
                    st.clone(),
                    eng.clone(),
                    key.clone(),
                    res.name.clone(),
                    n,
                )));
            }
            tasks.push(tokio::spawn(async move {
                if let Err(e) = delete_instance(&st2, &eng2, &key2, &rec).await {
                    repair_failed(&st2, &key2, &res2, id, e);
                }
            }));
        }
        model::vmss::RepairAction::Restart | model::vmss::RepairAction::Reimage => {
            let target = ctx.latest();
            let name = res.name.clone();
            tasks.push(tokio::spawn(async move {
                let r = if action == model::vmss::RepairAction::Restart {
                    restart_instance(&st2, &eng2, &key2, &rec).await
                } else {
                    // Azure's reimage applies the scale set's latest model.
                    upgrade_instance(&st2, &eng2, &key2, &name, &rec, target).await
                };
                let _ = st2.update_instance(&key2, id, |r| r.work.end(Actor::Repair));
                if let Err(e) = r {
                    repair_failed(&st2, &key2, &res2, id, e);
                }
            }));
        }
    }
    Ok(())
}
