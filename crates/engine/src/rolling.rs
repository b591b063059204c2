//! Rolling upgrades: ask `plan::rolling::next`, compare-and-set the rollout, act on the step;
//! the deploy receipt from the load balancers' counters.
use super::*;

/// The rolling-upgrade planner's view of a scale set's instances.
pub fn roll_instances(st: &Core, recs: &[InstanceRecord]) -> Vec<plan::rolling::RollInstance> {
    recs.iter()
        .filter(|r| !r.work.is_deleting() || r.work.by(Actor::Rollout))
        .map(|r| {
            let o = st.observation(&r.machine);
            plan::rolling::RollInstance {
                id: r.instance_id,
                model_version: r.model_version,
                healthy: o.is_healthy() == Some(true),
                running: o.running,
                protected: r.protect_from_scale_set_actions,
                upgrading: r.work.by(Actor::Rollout),
                created_seq: r.created_seq,
                failed_units: Vec::new(),
                failed_for_ms: 0,
            }
        })
        .collect()
}

/// Updates the deploy receipt from the scale set's load balancers' counters.
pub(crate) async fn observe_receipt(
    st: &Core,
    m: &model::vmss::VmssModel,
    recs: &[InstanceRecord],
    receipt: &mut control::Receipt,
) {
    let mut totals = [0u64; 5];
    let mut any = false;
    let mut lbs: Vec<Key> = m
        .backend_pools
        .iter()
        .map(|p| Key::new(LB, &p.subscription, &p.resource_group, &p.name))
        .collect();
    lbs.dedup_by(|a, b| a.path() == b.path());
    for key in lbs {
        let sock = lb_dir(st, &key).join("admin.sock");
        let Ok(status) = lb_call(lb::client::get_status(&sock)).await else {
            continue;
        };
        any = true;
        let t = &status.totals;
        for (i, v) in [
            t.requests,
            t.responses_2xx,
            t.responses_non_2xx,
            t.failed,
            t.retries,
        ]
        .into_iter()
        .enumerate()
        {
            totals[i] += v;
        }
        for b in status.backends {
            let Some(rec) = recs.iter().find(|r| r.machine == b.id) else {
                continue;
            };
            let seen = receipt.seen.entry(b.id.clone()).or_insert(b.requests);
            let delta = b.requests.saturating_sub(*seen);
            *seen = b.requests;
            if delta > 0 {
                *receipt
                    .requests_per_image
                    .entry(rec.image.clone())
                    .or_default() += delta;
            }
        }
    }
    if any {
        receipt.baseline.get_or_insert(totals);
        receipt.latest = Some(totals);
    }
}

/// One step of the scale set's rolling upgrade: ask the planner, persist, act.
pub(crate) async fn rolling_pass(
    st: &Arc<Core>,
    eng: &Arc<Engine>,
    key: &Key,
    res: &Res,
    doc: &VmssDoc,
    m: &model::vmss::VmssModel,
) -> Result<(), String> {
    let recs = st.instances(key).map_err(|e| error_chain(&e))?;
    let Some(cur) = st.rollout(res).map_err(|e| error_chain(&e))? else {
        return Ok(());
    };
    let mut insts = roll_instances(st, &recs);
    let watching = matches!(
        cur.state.phase,
        plan::rolling::Phase::Upgrading | plan::rolling::Phase::Surging
    );
    if watching {
        let target = cur.state.target_version;
        inspect::observe_failed_units(st, eng, &recs, &mut insts, target).await;
    }
    let mut receipt = cur.receipt.clone();
    observe_receipt(st, m, &recs, &mut receipt).await;
    let (step, next_state) = plan::rolling::next(
        &m.rolling,
        &cur.state,
        &insts,
        eng.clock.now(),
        st.cfg.rolling_health_timeout_secs,
    );
    // Compare-and-set: a cancel or a new model that arrived meanwhile wins; decide again next tick.
    let mut raced = false;
    st.update_rollout(res, |d| match d {
        Some(d) if d.state == cur.state => {
            d.state = next_state.clone();
            d.receipt = receipt;
            true
        }
        _ => {
            raced = true;
            false
        }
    })
    .map_err(|e| error_chain(&e))?;
    if raced {
        return Ok(());
    }
    if next_state.status != cur.state.status || next_state.batches != cur.state.batches {
        info!(vmss = %res.name, status = ?next_state.status, batch = next_state.batches, ids = ?next_state.batch, "rolling upgrade");
    }
    let acts = !matches!(
        step,
        plan::rolling::Step::Wait | plan::rolling::Step::Finish(_)
    );
    if let plan::rolling::Step::Finish(status) = &step {
        if cur.state.phase != plan::rolling::Phase::Done {
            info!(vmss = %res.name, ?status, error = ?next_state.error, "rolling upgrade finished");
        }
    }
    let ctx = Pass {
        st,
        eng,
        key,
        res,
        doc,
        image: m.image.as_ref().map(|i| i.name.clone()),
        size: m.sku_name.clone(),
    };
    let mut tasks = Vec::new();
    let acted = act_step(&ctx, &recs, step, &next_state, &mut tasks);
    // What the step started finishes within this pass even when a later part could not start
    // (detached, it could overlap the next pass's work on the same instance).
    for t in tasks {
        let _ = t.await;
    }
    acted?;
    // A new batch is persisted with a `Wait` and acted on by the next call: make that call now,
    // not a pass interval (up to 1 s per batch) later.
    if acts || next_state != cur.state {
        st.wake.notify_one();
    }
    Ok(())
}

/// Carries out a rolling step: reimage (forward or back), surge, or remove instances.
fn act_step(
    ctx: &Pass,
    recs: &[InstanceRecord],
    step: plan::rolling::Step,
    next_state: &plan::rolling::RolloutState,
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
    let rollback = matches!(step, plan::rolling::Step::Rollback(_));
    match step {
        plan::rolling::Step::Wait | plan::rolling::Step::Finish(_) => {}
        plan::rolling::Step::Upgrade(ids) | plan::rolling::Step::Rollback(ids) => {
            let version = if rollback {
                next_state.previous_version
            } else {
                next_state.target_version
            };
            let target = ctx.version(version);
            for id in ids {
                let Some(rec) = recs.iter().find(|r| r.instance_id == id).cloned() else {
                    continue;
                };
                st.update_instance(key, id, |r| r.work.begin(Actor::Rollout))
                    .map_err(|e| error_chain(&e))?;
                let (st, eng, key, name, target) = (
                    st.clone(),
                    eng.clone(),
                    key.clone(),
                    res.name.clone(),
                    target.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    info!(
                        instance = id,
                        version, rollback, "rolling upgrade: reimaging"
                    );
                    if let Err(e) = upgrade_instance(&st, &eng, &key, &name, &rec, target).await {
                        warn!(instance = id, error = %e, "rolling upgrade: reimage failed");
                        let _ = st.update_instance(&key, id, |r| r.last_error = Some(e.clone()));
                    }
                    let _ = st.update_instance(&key, id, |r| r.work.end(Actor::Rollout));
                }));
            }
        }
        plan::rolling::Step::Surge { count } => {
            if let Some(image) = ctx.version(next_state.target_version).image {
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
        }
        plan::rolling::Step::Remove(ids) => {
            for id in ids {
                let Some(rec) = recs.iter().find(|r| r.instance_id == id).cloned() else {
                    continue;
                };
                st.update_instance(key, id, |r| {
                    r.work.begin(Actor::Rollout);
                    r.work.request(Pending::Delete);
                })
                .map_err(|e| error_chain(&e))?;
                let (st, eng, key) = (st.clone(), eng.clone(), key.clone());
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = delete_instance(&st, &eng, &key, &rec).await {
                        warn!(instance = id, error = %e, "rolling upgrade: removal failed");
                        let _ = st.update_instance(&key, id, |r| r.work.end(Actor::Rollout));
                    }
                }));
            }
        }
    }
    Ok(())
}
