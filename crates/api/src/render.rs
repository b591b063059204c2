//! ARM JSON for what we return: scale sets, their VMs and instance views, load balancers, images,
//! Azure Monitor's metrics and metric definitions of a scale set, autoscale settings and their
//! activity log.
use crate::route::{Res, AUTOSCALE, IMAGE, LB, VMSS};
use crate::state::{InstanceRecord, Observation, VmssDoc};
use control::ProvisioningState;
use serde_json::{json, Value};

pub fn vmss(res: &Res, doc: &VmssDoc, provisioning: &str) -> Value {
    let mut v = doc.arm.clone();
    v["id"] = json!(res.id(VMSS));
    v["name"] = json!(res.name);
    v["type"] = json!(VMSS);
    let p = &mut v["properties"];
    p["provisioningState"] = json!(provisioning);
    p["uniqueId"] = json!(doc.unique_id);
    p["timeCreated"] = json!(doc.time_created);
    // The spec marks it x-ms-secret: Azure accepts it and never returns it.
    if let Some(os) = p
        .pointer_mut("/virtualMachineProfile/osProfile")
        .and_then(Value::as_object_mut)
    {
        os.remove("adminPassword");
    }
    v
}

fn power_code(rec: &InstanceRecord, obs: &Observation) -> (&'static str, &'static str) {
    match (rec.intent, obs.running, rec.provisioning_state) {
        (_, _, ProvisioningState::Deleting) => ("PowerState/stopping", "VM stopping"),
        (plan::PowerIntent::Running, true, _) => ("PowerState/running", "VM running"),
        (plan::PowerIntent::Running, false, _) => ("PowerState/starting", "VM starting"),
        (plan::PowerIntent::Stopped, true, _) if rec.deallocated => {
            ("PowerState/deallocating", "VM deallocating")
        }
        (plan::PowerIntent::Stopped, true, _) => ("PowerState/stopping", "VM stopping"),
        (plan::PowerIntent::Stopped, false, _) if rec.deallocated => {
            ("PowerState/deallocated", "VM deallocated")
        }
        (plan::PowerIntent::Stopped, false, _) => ("PowerState/stopped", "VM stopped"),
    }
}

pub fn instance_view(rec: &InstanceRecord, obs: &Observation) -> Value {
    let (pcode, pdisp) = power_code(rec, obs);
    let prov = rec.provisioning_state.as_str().to_ascii_lowercase();
    let mut view = json!({
        "platformUpdateDomain": 0,
        "platformFaultDomain": 0,
        "computerName": rec.computer_name,
        "osName": "debian",
        "osVersion": "12",
        "statuses": [
            {"code": format!("ProvisioningState/{prov}"), "level": if prov == "failed" { "Error" } else { "Info" }, "displayStatus": format!("Provisioning {prov}"), "message": rec.last_error, "time": rec.time_created},
            {"code": pcode, "level": "Info", "displayStatus": pdisp},
        ],
    });
    if rec.last_error.is_none() {
        view["statuses"][0]
            .as_object_mut()
            .map(|o| o.remove("message"));
    }
    if let Some(h) = obs.health() {
        use plan::repairs::Health;
        let (code, disp) = match h {
            Health::Healthy => ("HealthState/healthy", "The VM is healthy"),
            Health::Unhealthy => ("HealthState/unhealthy", "The VM is unhealthy"),
            Health::Initializing => ("HealthState/initializing", "The VM health is initializing"),
            Health::Unknown => ("HealthState/unknown", "The VM health is unknown"),
        };
        view["vmHealth"] =
            json!({"status": {"code": code, "level": "Info", "displayStatus": disp}});
    }
    view
}

pub fn vm(
    res: &Res,
    doc: &VmssDoc,
    rec: &InstanceRecord,
    obs: &Observation,
    expand: bool,
) -> Value {
    let vmss_id = res.id(VMSS);
    let image_id = format!(
        "/subscriptions/{}/resourceGroups/{}/providers/{}/{}",
        res.sub, res.rg, IMAGE, rec.image
    );
    let mut v = json!({
        "id": format!("{vmss_id}/virtualMachines/{}", rec.instance_id),
        "name": plan::naming::vm_name(&res.name, rec.instance_id),
        "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
        "location": doc.arm.get("location").cloned().unwrap_or(json!(model::DEFAULT_LOCATION)),
        "instanceId": rec.instance_id.to_string(),
        "sku": doc.arm.get("sku").cloned().unwrap_or(json!({})),
        "tags": {"scaleset.privateIPAddress": rec.ip.to_string(), "scaleset.image": rec.image},
        "properties": {
            "latestModelApplied": rec.model_version == doc.model_version,
            "vmId": rec.vm_id,
            "provisioningState": rec.provisioning_state,
            "timeCreated": rec.time_created,
            "osProfile": {"computerName": rec.computer_name},
            "storageProfile": {"imageReference": {"id": image_id}},
            "protectionPolicy": {
                "protectFromScaleIn": rec.protect_from_scale_in,
                "protectFromScaleSetActions": rec.protect_from_scale_set_actions,
            },
        },
    });
    if expand {
        v["properties"]["instanceView"] = instance_view(rec, obs);
    }
    v
}

/// A stored load balancer as ARM returns it: identity, `provisioningState`, the ids of its
/// children.
pub fn lb(res: &Res, mut v: Value) -> Value {
    let id = res.id(LB);
    if let Some(o) = v.as_object_mut() {
        o.remove("x-resourceGroup");
    }
    v["id"] = json!(id);
    v["name"] = json!(res.name);
    v["type"] = json!(LB);
    let p = &mut v["properties"];
    if !p.is_object() {
        *p = json!({});
    }
    p["provisioningState"] = json!("Succeeded");
    for coll in [
        "frontendIPConfigurations",
        "backendAddressPools",
        "probes",
        "loadBalancingRules",
    ] {
        if let Some(items) = p.get_mut(coll).and_then(Value::as_array_mut) {
            for it in items {
                let n = it
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                it["id"] = json!(format!("{id}/{coll}/{n}"));
            }
        }
    }
    v
}

/// One child of a rendered load balancer (it has its `id` already), with its type and state.
pub fn lb_child(child: model::lb_child::LbChild, mut item: Value) -> Value {
    item["type"] = json!(child.resource_type());
    if item["properties"].is_object() {
        item["properties"]["provisioningState"] = json!("Succeeded");
    }
    item
}

pub fn image(res: &Res, img: &image::Image) -> Value {
    let mut v = json!({
        "id": res.id(IMAGE),
        "name": img.name,
        "type": IMAGE,
        "location": model::DEFAULT_LOCATION,
        "tags": {"scaleset.digest": img.digest, "scaleset.base": img.base},
        "properties": {
            "provisioningState": "Succeeded",
            "hyperVGeneration": "V2",
            "storageProfile": {"osDisk": {"osType": "Linux", "osState": "Generalized"}},
        },
    });
    // Not Azure's: what the bake's summary said (the image may not serve).
    if !img.warnings.is_empty() {
        v["properties"]["scalesetBakeWarnings"] = json!(img.warnings);
    }
    v
}

/// The aggregate instance view of a scale set (`GET .../instanceView`).
/// `repairs` is the automatic repairs service state when the policy is enabled.
pub fn vmss_instance_view(
    recs: &[(InstanceRecord, Observation)],
    repairs: Option<&plan::repairs::RepairsState>,
) -> Value {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for (r, o) in recs {
        *counts.entry(power_code(r, o).0).or_default() += 1;
    }
    let service = match repairs {
        None => json!({"serviceName": "AutomaticRepairs", "serviceState": "NotRunning"}),
        Some(s) => {
            let mut v = json!({"serviceName": "AutomaticRepairs", "serviceState": format!("{:?}", s.service_state)});
            if let Some(reason) = &s.reason {
                v["message"] = json!(reason);
            }
            v
        }
    };
    json!({
        "virtualMachine": {"statusesSummary": counts.iter().map(|(c, n)| json!({"code": c, "count": n})).collect::<Vec<_>>()},
        "statuses": [{"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": "Provisioning succeeded"}],
        "orchestrationServices": [service],
    })
}

/// `GET .../skus`: every size of `model::sizes` as Azure's `VirtualMachineScaleSetSku`, with the
/// capacity range a scale set here accepts (0 to `MAX_CAPACITY`, 2 when the body names none).
pub fn vmss_skus() -> Value {
    let value: Vec<Value> = model::sizes::SIZES
        .iter()
        .map(|s| {
            json!({
                "resourceType": VMSS,
                "sku": {"name": s.name, "tier": "Standard"},
                "capacity": {
                    "minimum": 0,
                    "maximum": model::vmss::MAX_CAPACITY,
                    "defaultCapacity": model::vmss::DEFAULT_CAPACITY,
                    "scaleType": "Automatic",
                },
            })
        })
        .collect();
    json!({ "value": value })
}

fn rfc(secs: u64) -> String {
    image::rfc3339(secs)
}

/// `GET .../rollingUpgrades/latest`: Azure's RollingUpgradeStatusInfo, plus our deploy receipt.
pub fn rolling_status(
    res: &Res,
    doc: &crate::state::RolloutDoc,
    p: plan::rolling::Progress,
) -> Value {
    let s = &doc.state;
    let r = &s.policy;
    let (requests, non_2xx, failed) = doc.receipt.totals();
    let mut v = json!({
        "name": "latest",
        "type": "Microsoft.Compute/virtualMachineScaleSets/rollingUpgrades",
        "location": model::DEFAULT_LOCATION,
        "id": format!("{}/rollingUpgrades/latest", res.id(VMSS)),
        "properties": {
            "policy": {
                "maxBatchInstancePercent": r.max_batch_instance_percent,
                "maxUnhealthyInstancePercent": r.max_unhealthy_instance_percent,
                "maxUnhealthyUpgradedInstancePercent": r.max_unhealthy_upgraded_instance_percent,
                "pauseTimeBetweenBatches": model::vmss::format_iso8601_duration(r.pause_time_between_batches_secs),
                "enableCrossZoneUpgrade": r.enable_cross_zone_upgrade,
                "prioritizeUnhealthyInstances": r.prioritize_unhealthy_instances,
                "rollbackFailedInstancesOnPolicyBreach": r.rollback_failed_instances_on_policy_breach,
                "maxSurge": r.max_surge,
            },
            "runningStatus": {
                "code": format!("{:?}", s.status),
                "startTime": rfc(s.start_time),
                "lastAction": format!("{:?}", s.last_action),
                "lastActionTime": rfc(s.last_action_time),
            },
            "progress": {
                "successfulInstanceCount": p.successful,
                "failedInstanceCount": p.failed,
                "inProgressInstanceCount": p.in_progress,
                "pendingInstanceCount": p.pending,
            },
            "receipt": {
                "requests": requests,
                "non2xxResponses": non_2xx,
                "failedRequests": failed,
                "requestsPerImage": doc.receipt.requests_per_image,
                "targetModelVersion": s.target_version,
                "previousModelVersion": s.previous_version,
            },
        },
    });
    if let Some(e) = &s.error {
        v["properties"]["error"] = json!({"code": e.code, "message": e.message});
        if !e.details.is_empty() {
            // Azure's ApiErrorBase: a failed unit, its instance and its last journal lines.
            v["properties"]["error"]["details"] = e
                .details
                .iter()
                .map(|d| json!({"code": d.code, "target": d.target, "message": d.message}))
                .collect();
        }
    }
    v
}

/// Azure Monitor's metrics `Response` (`metrics_API.json`): per metric its series (per
/// `VMName` with a `$filter`, `metadatavalues` only then), each point with only the requested
/// aggregations (none for a grain without readings).
pub fn metrics(
    res: &Res,
    location: &str,
    q: &model::metrics::Query,
    results: &[plan::metrics::MetricResult],
) -> Value {
    use model::metrics::{format_datetime, iso_duration, NAMESPACE};
    let vmss_id = res.id(VMSS);
    let filtered = q.split != model::metrics::Split::None;
    let value: Vec<Value> = results
        .iter()
        .map(|r| {
            let name = r.metric.name();
            let aggs = q.aggregations_of(r.metric);
            let series: Vec<Value> = r
                .series
                .iter()
                .map(|s| time_series(s, &aggs, filtered, q.metadata_only))
                .collect();
            json!({
                "id": format!("{vmss_id}/providers/Microsoft.Insights/metrics/{name}"),
                "type": "Microsoft.Insights/metrics",
                "name": {"value": name, "localizedValue": name},
                "displayDescription": r.metric.description(),
                "unit": r.metric.unit(),
                "timeseries": series,
                "errorCode": "Success",
            })
        })
        .collect();
    let mut v = json!({
        "cost": 0,
        "timespan": format!("{}/{}", format_datetime(q.start), format_datetime(q.end)),
        "interval": iso_duration(q.grain_secs()),
        "namespace": NAMESPACE,
        "resourceregion": location,
        "value": value,
    });
    if q.metadata_only {
        // As Azure: a metadata answer has no interval.
        v.as_object_mut().map(|o| o.remove("interval"));
    }
    v
}

fn time_series(
    s: &plan::metrics::TimeSeries,
    aggs: &[model::metrics::Aggregation],
    filtered: bool,
    metadata_only: bool,
) -> Value {
    let mut out = serde_json::Map::new();
    if filtered {
        let vm = s.vm.as_deref().unwrap_or_default();
        out.insert(
            "metadatavalues".into(),
            json!([{"name": {"value": "vmname", "localizedValue": "vmname"}, "value": vm}]),
        );
    }
    if !metadata_only {
        let data: Vec<Value> = s.points.iter().map(|p| point(p, aggs)).collect();
        out.insert("data".into(), Value::Array(data));
    }
    Value::Object(out)
}

fn point(p: &plan::metrics::Point, aggs: &[model::metrics::Aggregation]) -> Value {
    let mut v = serde_json::Map::new();
    v.insert(
        "timeStamp".into(),
        json!(model::metrics::format_datetime(p.at)),
    );
    for a in aggs {
        if let Some(x) = p.agg.value(*a) {
            v.insert(a.field().into(), json!(x));
        }
    }
    Value::Object(v)
}

/// `metricDefinitions` of a scale set (`metricDefinitions_API.json` `MetricDefinitionCollection`).
pub fn metric_definitions(res: &Res) -> Value {
    use model::metrics::{iso_duration, Aggregation, Metric, DIMENSION, GRAINS, NAMESPACE};
    let vmss_id = res.id(VMSS);
    let retention = iso_duration(plan::metrics::RETENTION_MINUTES as u64 * 60);
    let availabilities: Vec<Value> = GRAINS
        .iter()
        .map(|g| json!({"timeGrain": iso_duration(*g), "retention": retention}))
        .collect();
    let mut supported = vec!["None"];
    supported.extend(Aggregation::ALL.iter().map(|a| a.name()));
    let value: Vec<Value> = Metric::ALL
        .iter()
        .map(|m| {
            json!({
                "id": format!("{vmss_id}/providers/microsoft.insights/metricdefinitions/{}", m.name()),
                "resourceId": vmss_id,
                "namespace": NAMESPACE,
                "name": {"value": m.name(), "localizedValue": m.name()},
                "displayDescription": m.description(),
                "isDimensionRequired": false,
                "unit": m.unit(),
                "primaryAggregationType": m.primary().name(),
                "supportedAggregationTypes": supported,
                "metricAvailabilities": availabilities,
                "dimensions": [{"value": DIMENSION, "localizedValue": DIMENSION}],
            })
        })
        .collect();
    json!({ "value": value })
}

/// An autoscale setting as ARM returns it (Azure's id spells the provider in lower case).
pub fn autoscale(res: &Res, s: &model::autoscale::AutoscaleSetting) -> Value {
    let id = model::autoscale::resource_id(&res.sub, &res.rg, &res.name);
    model::autoscale::render(s, &id, &res.name)
}

/// A setting's activity log, newest first, in the shape of Azure's activity log `EventData`
/// (`operationName`/`status`/`category` as `{value, localizedValue}`, counts in `properties`).
pub fn activity_log(res: &Res, st: &control::AutoscaleState) -> Value {
    let id = model::autoscale::resource_id(&res.sub, &res.rg, &res.name);
    let named = |value: &str, localized: &str| json!({"value": value, "localizedValue": localized});
    let events: Vec<Value> = st
        .log
        .iter()
        .rev()
        .map(|e| {
            let op = match e.operation_name.as_str() {
                "Autoscale scale up" => "Microsoft.Insights/AutoscaleSettings/Scaleup/Action",
                "Autoscale scale down" => "Microsoft.Insights/AutoscaleSettings/Scaledown/Action",
                _ => "Microsoft.Insights/AutoscaleSettings/Evaluate/Action",
            };
            json!({
                "eventTimestamp": e.event_timestamp,
                "operationName": named(op, &e.operation_name),
                "status": named(&e.status, &e.status),
                "category": named("Autoscale", "Autoscale"),
                "resourceId": id,
                "resourceType": named(AUTOSCALE, AUTOSCALE),
                "resourceGroupName": res.rg,
                "description": e.description,
                "properties": {
                    "OldInstancesCount": e.old_capacity.to_string(),
                    "NewInstancesCount": e.new_capacity.to_string(),
                    "Description": e.description,
                },
            })
        })
        .collect();
    json!({"value": events})
}

#[cfg(test)]
mod tests {
    use super::*;
    use plan::app_health::AppHealthState;
    use plan::repairs::Health;

    fn rec() -> InstanceRecord {
        serde_json::from_value(json!({
            "instanceId": 0, "createdSeq": 1, "modelVersion": 1, "image": "120",
            "ip": "10.0.0.4", "computerName": "vm000000", "machine": "m", "timeCreated": "t",
            "vmId": "id", "intent": "Running", "provisioningState": "Succeeded",
        }))
        .unwrap()
    }

    fn app(results: &[Health]) -> AppHealthState {
        let mut s = AppHealthState::new(0);
        for (i, r) in results.iter().enumerate() {
            s.observe(*r, 1000 * (i as u64 + 1), 1, 2000);
        }
        s
    }

    #[test]
    fn vm_health_codes() {
        let obs = |healthy: Option<bool>, app_health: Option<AppHealthState>| Observation {
            running: true,
            healthy,
            app_health,
            booted_at: None,
        };
        for (o, want) in [
            (obs(None, None), None),
            (obs(Some(true), None), Some("HealthState/healthy")),
            (obs(Some(false), None), Some("HealthState/unhealthy")),
            // The extension, when it reports, is the health source (not the LB probe).
            (
                obs(Some(true), Some(app(&[Health::Unknown]))),
                Some("HealthState/initializing"),
            ),
            (
                obs(Some(true), Some(app(&[Health::Unknown; 3]))),
                Some("HealthState/unknown"),
            ),
            (
                obs(Some(false), Some(app(&[Health::Healthy]))),
                Some("HealthState/healthy"),
            ),
            (
                obs(Some(true), Some(app(&[Health::Healthy, Health::Unhealthy]))),
                Some("HealthState/unhealthy"),
            ),
        ] {
            let v = instance_view(&rec(), &o);
            assert_eq!(
                v.pointer("/vmHealth/status/code").and_then(Value::as_str),
                want,
                "{o:?}"
            );
        }
    }

    #[test]
    fn power_state_codes() {
        let obs = |running| Observation {
            running,
            healthy: None,
            app_health: None,
            booted_at: None,
        };
        let stopped = |deallocated| InstanceRecord {
            intent: plan::PowerIntent::Stopped,
            deallocated,
            ..rec()
        };
        for (r, running, want) in [
            (rec(), true, "PowerState/running"),
            (rec(), false, "PowerState/starting"),
            (stopped(false), true, "PowerState/stopping"),
            (stopped(false), false, "PowerState/stopped"),
            (stopped(true), true, "PowerState/deallocating"),
            (stopped(true), false, "PowerState/deallocated"),
        ] {
            let v = instance_view(&r, &obs(running));
            assert_eq!(v["statuses"][1]["code"], want, "{r:?} running={running}");
        }
    }

    #[test]
    fn orchestration_services() {
        let none = vmss_instance_view(&[], None);
        assert_eq!(
            none["orchestrationServices"],
            json!([{"serviceName": "AutomaticRepairs", "serviceState": "NotRunning"}])
        );
        let s = plan::repairs::record_failure(
            &plan::repairs::record_failure(
                &plan::repairs::record_failure(&Default::default(), "instance 1"),
                "instance 1",
            ),
            "instance 1",
        );
        let v = vmss_instance_view(&[], Some(&s));
        assert_eq!(v["orchestrationServices"][0]["serviceState"], "Suspended");
        assert!(v["orchestrationServices"][0]["message"]
            .as_str()
            .unwrap()
            .contains("instance 1"));
    }

    /// `image show` keeps what the bake's summary said; images without failures show nothing.
    #[test]
    fn image_shows_bake_warnings() {
        let mut img: image::Image = serde_json::from_value(json!({
            "name": "120", "digest": "sha256:ab", "base": "debian:bookworm", "layers": [],
            "created": "t", "log": "/l"
        }))
        .unwrap();
        let res = Res {
            sub: "s".into(),
            rg: "rg".into(),
            name: "120".into(),
        };
        assert!(image(&res, &img)["properties"]
            .get("scalesetBakeWarnings")
            .is_none());
        img.warnings = vec!["setup script line 3: `false` exited with 1".into()];
        assert_eq!(
            image(&res, &img)["properties"]["scalesetBakeWarnings"],
            json!(["setup script line 3: `false` exited with 1"])
        );
    }
}
