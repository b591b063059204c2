//! Executes parsed routes: bodies parsed, `control` commands called, results rendered. Changes to
//! instances are recorded as intent (power, reimage, restart, deletion) that the engine carries
//! out; every change is committed before the response is sent. Like ARM, a PUT answers for its
//! path (the name, the resource group) before it reads the body, so handlers check those first
//! (the group, load balancer and image commands check them again; `put_vmss` relies on it).
use crate::error::ApiError;
use crate::render;
use crate::route::{self, PowerAction, Res, Route, Scope, AUTOSCALE, IMAGE, LB, RG, VMSS};
use crate::state::{AppState, InstanceRecord, VmssDoc};
use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;

pub type Reply = Result<(StatusCode, Value), ApiError>;

fn ok(v: Value) -> Reply {
    Ok((StatusCode::OK, v))
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "InvalidRequestContent",
            format!("The request content was invalid and could not be deserialized: {e}."),
        )
    })
}

fn require_object(v: Value) -> Result<Value, ApiError> {
    if v.is_object() {
        Ok(v)
    } else {
        Err(ApiError::bad_request(
            "InvalidRequestContent",
            "The request content must be a JSON object.",
        ))
    }
}

fn not_found(kind: &str, res: &Res) -> ApiError {
    control::not_found(kind, res).into()
}

/// 201 for a created resource, 200 for an updated one.
fn put_status(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// A PUT or PATCH body: the whole resource or a merge patch.
fn put_body(method: &Method, body: Value) -> control::Put {
    if *method == Method::PATCH {
        control::Put::Merge(body)
    } else {
        control::Put::Replace(body)
    }
}

/// 200 when a DELETE removed something, 204 when there was nothing to remove.
fn deleted(existed: bool) -> Reply {
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::NO_CONTENT
    };
    Ok((status, Value::Null))
}

pub async fn execute(
    st: &AppState,
    route: Route,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Reply {
    // HEAD is ARM's existence check: the GET's outcome, without a body.
    let (route, head) = as_get_if_head(route);
    let is_get = match &route {
        Route::Group { method, .. }
        | Route::Resource { method, .. }
        | Route::Vm { method, .. }
        | Route::LbChild { method, .. } => *method == Method::GET,
        Route::ListGroups { .. }
        | Route::List { .. }
        | Route::Vms(_)
        | Route::VmssInstanceView(_)
        | Route::VmssSkus(_)
        | Route::VmInstanceView(..) => true,
        Route::RollingLatest(_)
        | Route::Operation { .. }
        | Route::Metrics(_)
        | Route::MetricDefinitions(_)
        | Route::ActivityLog(_) => true,
        Route::SerialConsoleLog(..) | Route::Journal(..) => true,
        Route::RunCommand(..) | Route::BootDiagnosticsData(..) => false,
        Route::VmssAction(..)
        | Route::VmAction(..)
        | Route::RollingStart(_)
        | Route::RollingCancel(_)
        | Route::Rollback(_)
        | Route::SetOrchestrationServiceState(_) => false,
    };
    let mutating = !is_get;
    let reply = match route {
        Route::ListGroups { sub } => ok(json!({"value": st.cp.list_groups(&sub)?})),
        Route::Group { method, res } => group(st, method, &res, body),
        Route::List { kind, scope } => list(st, kind, &scope),
        Route::Resource {
            kind: VMSS,
            method,
            res,
        } => vmss(st, method, &res, body),
        Route::Resource {
            kind: LB,
            method,
            res,
        } => load_balancer(st, method, &res, body),
        Route::Resource {
            kind: IMAGE,
            method,
            res,
        } => images(st, method, &res),
        Route::Resource {
            kind: AUTOSCALE,
            method,
            res,
        } => autoscale(st, method, &res, body),
        Route::Resource { .. } => Err(ApiError::not_found("NotFound", "Unknown resource type.")),
        Route::LbChild {
            method,
            res,
            child,
            name,
        } => lb_child(st, method, &res, child, name.as_deref(), body),
        Route::ActivityLog(res) => {
            st.cp.autoscale(&res)?;
            ok(render::activity_log(&res, &st.cp.autoscale_state(&res)?))
        }
        Route::VmssInstanceView(res) => vmss_instance_view(st, &res),
        Route::VmssSkus(res) => {
            st.vmss_doc(&res)?.ok_or_else(|| not_found(VMSS, &res))?;
            ok(render::vmss_skus())
        }
        Route::Vms(res) => vms(st, &res, query),
        Route::VmssAction(res, act) => power(st, &res, act, instance_ids(&parse_body(body)?)?),
        Route::RollingLatest(res) => rolling_latest(st, &res),
        Route::SetOrchestrationServiceState(res) => set_orchestration_state(st, &res, body),
        Route::Vm {
            method,
            res,
            instance,
        } => vm(st, method, &res, &instance, query, body),
        Route::VmInstanceView(res, instance) => {
            let (_, rec) = find_vm(st, &res, &instance)?;
            ok(render::instance_view(&rec, &st.observation(&rec.machine)))
        }
        Route::VmAction(res, instance, act) => {
            // The instance is the resource here: a missing one is a 404, as its GET.
            find_vm(st, &res, &instance)?;
            power(st, &res, act, Some(vec![instance]))
        }
        Route::RunCommand(res, instance) => {
            crate::inspect::run_command(st, &res, &instance, body).await
        }
        // Answered before the body is read (`inspect::special`).
        Route::BootDiagnosticsData(..) | Route::SerialConsoleLog(..) | Route::Journal(..) => {
            Err(ApiError::internal("text route reached the JSON handlers"))
        }
        Route::RollingStart(res) => {
            st.start_rollout(&res)?;
            Ok((StatusCode::ACCEPTED, Value::Null))
        }
        Route::RollingCancel(res) => {
            st.cancel_rollout(&res, crate::engine::unix_now())?;
            Ok((StatusCode::ACCEPTED, Value::Null))
        }
        Route::Rollback(res) => {
            let stored = st.cp.rollback(&st.images, &res)?;
            let p = vmss_provisioning(st, &res, &stored.doc)?;
            ok(render::vmss(&res, &stored.doc, &p))
        }
        Route::Operation { sub, id, result } => crate::operations::get(st, &sub, &id, result),
        Route::Metrics(res) => metrics(st, &res, query),
        Route::MetricDefinitions(res) => {
            st.vmss_doc(&res)?.ok_or_else(|| not_found(VMSS, &res))?;
            ok(render::metric_definitions(&res))
        }
    };
    if reply.is_ok() && mutating {
        st.wake.notify_one();
    }
    if head {
        return existence(reply);
    }
    reply
}

/// A HEAD of a resource group or resource, as the GET it checks.
fn as_get_if_head(route: Route) -> (Route, bool) {
    match route {
        Route::Group { method, res } if method == Method::HEAD => (
            Route::Group {
                method: Method::GET,
                res,
            },
            true,
        ),
        Route::Resource { kind, method, res } if method == Method::HEAD => (
            Route::Resource {
                kind,
                method: Method::GET,
                res,
            },
            true,
        ),
        r => (r, false),
    }
}

/// ARM's answer to HEAD: 204 when the GET finds the resource, 404 when it does not, both
/// without a body; other refusals (a bad name) stay errors.
fn existence(reply: Reply) -> Reply {
    match reply {
        Ok(_) => Ok((StatusCode::NO_CONTENT, Value::Null)),
        Err(ApiError::Client { status, .. }) if status == StatusCode::NOT_FOUND => {
            Ok((StatusCode::NOT_FOUND, Value::Null))
        }
        Err(e) => Err(e),
    }
}

fn vmss_instance_view(st: &AppState, res: &Res) -> Reply {
    let doc = st.vmss_doc(res)?.ok_or_else(|| not_found(VMSS, res))?;
    let (m, _) = model::vmss::parse(&doc.arm, &doc.name)?;
    let recs = st.instances(&res.key(VMSS))?.into_iter().map(|r| {
        let o = st.observation(&r.machine);
        (r, o)
    });
    let repairs = m
        .repairs
        .enabled
        .then(|| st.repairs_state(res))
        .transpose()?;
    ok(render::vmss_instance_view(
        &recs.collect::<Vec<_>>(),
        repairs.as_ref(),
    ))
}

fn vms(st: &AppState, res: &Res, query: &HashMap<String, String>) -> Reply {
    let doc = st.vmss_doc(res)?.ok_or_else(|| not_found(VMSS, res))?;
    let expand = query
        .get("$expand")
        .is_some_and(|e| e.eq_ignore_ascii_case("instanceView"));
    let v: Vec<Value> = st
        .instances(&res.key(VMSS))?
        .iter()
        .map(|r| render::vm(res, &doc, r, &st.observation(&r.machine), expand))
        .collect();
    ok(json!({"value": v}))
}

/// Azure Monitor's metrics of a scale set: the query parsed and bounded (`model::metrics`), the
/// engine's series read (`Core::query_metrics`), the answer rendered.
fn metrics(st: &AppState, res: &Res, query: &HashMap<String, String>) -> Reply {
    let doc = st.vmss_doc(res)?.ok_or_else(|| not_found(VMSS, res))?;
    // Azure's query parameters are case-insensitive (`AutoAdjustTimegrain`, `$filter`).
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let params = model::metrics::Params {
        metricnames: get("metricnames"),
        timespan: get("timespan"),
        interval: get("interval"),
        aggregation: get("aggregation"),
        filter: get("$filter"),
        top: get("top"),
        orderby: get("orderby"),
        result_type: get("resultType"),
        metricnamespace: get("metricnamespace"),
        auto_adjust_timegrain: get("AutoAdjustTimegrain"),
        rollupby: get("rollupby"),
    };
    let q = model::metrics::parse_query(&params, crate::engine::unix_now())?;
    let results = st.query_metrics(&res.key(VMSS), &q)?;
    let location = doc.arm["location"]
        .as_str()
        .unwrap_or(model::DEFAULT_LOCATION);
    ok(render::metrics(res, location, &q, &results))
}

/// `instanceIds` of a scale set action's body (absent: every instance).
fn instance_ids(body: &Value) -> Result<Option<Vec<String>>, ApiError> {
    Ok(match body.get("instanceIds") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|x| {
                    x.as_str().map(str::to_string).ok_or_else(|| {
                        ApiError::bad_request(
                            "InvalidParameter",
                            "instanceIds must be a list of strings.",
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => {
            return Err(ApiError::bad_request(
                "InvalidParameter",
                "instanceIds must be a list of strings.",
            ))
        }
    })
}

fn rolling_latest(st: &AppState, res: &Res) -> Reply {
    st.vmss_doc(res)?.ok_or_else(|| not_found(VMSS, res))?;
    let doc = st.rollout(res)?.ok_or_else(|| {
        ApiError::not_found(
            "NotFound",
            format!("No rolling upgrade has run on scale set '{}'.", res.name),
        )
    })?;
    let recs = st.instances(&res.key(VMSS))?;
    let insts = crate::engine::roll_instances(st, &recs);
    ok(render::rolling_status(
        res,
        &doc,
        plan::rolling::progress(&doc.state, &insts),
    ))
}

/// `POST .../setOrchestrationServiceState` `{"serviceName":"AutomaticRepairs","action":"Resume"|"Suspend"}`.
fn set_orchestration_state(st: &AppState, res: &Res, body: &[u8]) -> Reply {
    let doc = st.vmss_doc(res)?.ok_or_else(|| not_found(VMSS, res))?;
    let body = require_object(parse_body(body)?)?;
    let field = |name: &str| -> Result<String, ApiError> {
        match body.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) => Err(ApiError::bad_request(
                "InvalidParameter",
                format!("Required parameter '{name}' is missing (null)."),
            )),
            Some(x) => Err(ApiError::bad_request(
                "InvalidParameter",
                format!("The value of parameter '{name}' must be a string, got {x}."),
            )),
        }
    };
    let service = field("serviceName")?;
    let action = field("action")?;
    if !service.eq_ignore_ascii_case("AutomaticRepairs") {
        return Err(ApiError::bad_request(
            "InvalidParameter",
            format!("The value '{service}' of parameter 'serviceName' is not allowed. Allowed values are: AutomaticRepairs."),
        ));
    }
    let resume = match action.to_ascii_lowercase().as_str() {
        "resume" => true,
        "suspend" => false,
        _ => {
            return Err(ApiError::bad_request(
                "InvalidParameter",
                format!("The value '{action}' of parameter 'action' is not allowed. Allowed values are: Resume, Suspend."),
            ))
        }
    };
    let (m, _) = model::vmss::parse(&doc.arm, &doc.name)?;
    if !m.repairs.enabled {
        return Err(ApiError::conflict(
            "OperationNotAllowed",
            format!("Automatic repairs are not enabled on scale set '{}'; set automaticRepairsPolicy.enabled first.", res.name),
        ));
    }
    st.update_repairs(res, |s| plan::repairs::set_service_state(s, resume))?;
    Ok((StatusCode::OK, Value::Null))
}

fn group(st: &AppState, method: Method, res: &Res, body: &[u8]) -> Reply {
    control::check_name(RG, res)?;
    match method {
        Method::PUT | Method::PATCH => {
            let put = put_body(&method, parse_body(body)?);
            let stored = st.cp.put_group(res, put)?;
            Ok((put_status(stored.created), stored.doc))
        }
        Method::GET => ok(st.cp.group(res)?),
        Method::DELETE => deleted(st.cp.delete_group(res)?),
        _ => Err(ApiError::bad_request(
            "MethodNotAllowed",
            "unsupported method",
        )),
    }
}

fn list(st: &AppState, kind: &'static str, scope: &Scope) -> Reply {
    let (sub, rg) = (&scope.sub, scope.rg.as_deref());
    let mut out = Vec::new();
    match kind {
        IMAGE => {
            let rg = rg.unwrap_or("images");
            for img in st.cp.list_images(&st.images)? {
                let res = Res {
                    sub: sub.clone(),
                    rg: rg.to_string(),
                    name: img.name.clone(),
                };
                out.push(render::image(&res, &img));
            }
        }
        VMSS => {
            for (res, doc) in st.cp.list_vmss(sub, rg)? {
                let p = vmss_provisioning(st, &res, &doc)?;
                out.push(render::vmss(&res, &doc, &p));
            }
        }
        AUTOSCALE => {
            for (res, s) in st.cp.list_autoscale(sub, rg)? {
                out.push(render::autoscale(&res, &s));
            }
        }
        _ => {
            for (res, v) in st.cp.list_lbs(sub, rg)? {
                out.push(render::lb(&res, v));
            }
        }
    }
    ok(json!({"value": out}))
}

/// The scale set's provisioning state (`ControlPlane::vmss_provisioning`).
pub(crate) fn vmss_provisioning(
    st: &AppState,
    res: &Res,
    doc: &VmssDoc,
) -> Result<String, ApiError> {
    Ok(st.cp.vmss_provisioning(res, doc)?.to_string())
}

fn vmss(st: &AppState, method: Method, res: &Res, body: &[u8]) -> Reply {
    control::check_name(VMSS, res)?;
    let existing = st.vmss_doc(res)?;
    match method {
        Method::GET => {
            let doc = existing.ok_or_else(|| not_found(VMSS, res))?;
            let p = vmss_provisioning(st, res, &doc)?;
            ok(render::vmss(res, &doc, &p))
        }
        Method::PUT | Method::PATCH => {
            st.cp.require_group(res)?;
            let put = put_body(&method, require_object(parse_body(body)?)?);
            let control::Stored { doc, created } = st.cp.put_vmss(&st.images, res, put)?;
            let p = vmss_provisioning(st, res, &doc)?;
            Ok((put_status(created), render::vmss(res, &doc, &p)))
        }
        Method::DELETE => {
            if !st.delete_vmss(res)? {
                return Ok((StatusCode::NO_CONTENT, Value::Null));
            }
            Ok((StatusCode::ACCEPTED, Value::Null))
        }
        _ => Err(ApiError::bad_request(
            "MethodNotAllowed",
            "unsupported method",
        )),
    }
}

fn find_vm(
    st: &AppState,
    res: &Res,
    instance: &str,
) -> Result<(VmssDoc, InstanceRecord), ApiError> {
    let doc = st.vmss_doc(res)?.ok_or_else(|| not_found(VMSS, res))?;
    let id: u32 = instance.parse().map_err(|_| {
        ApiError::not_found(
            "NotFound",
            format!("The instance id '{instance}' is not a decimal instance id."),
        )
    })?;
    let rec = st
        .instances(&res.key(VMSS))?
        .into_iter()
        .find(|r| r.instance_id == id)
        .ok_or_else(|| ApiError::not_found("NotFound", format!("The Resource 'Microsoft.Compute/virtualMachineScaleSets/{}/virtualMachines/{instance}' under resource group '{}' was not found.", res.name, res.rg)))?;
    Ok((doc, rec))
}

fn vm(
    st: &AppState,
    method: Method,
    res: &Res,
    instance: &str,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Reply {
    let (doc, rec) = find_vm(st, res, instance)?;
    let key = res.key(VMSS);
    match method {
        Method::GET => {
            let expand = query
                .get("$expand")
                .is_some_and(|e| e.eq_ignore_ascii_case("instanceView"));
            ok(render::vm(
                res,
                &doc,
                &rec,
                &st.observation(&rec.machine),
                expand,
            ))
        }
        Method::PUT | Method::PATCH => {
            let body = require_object(parse_body(body)?)?;
            let pp = body.pointer("/properties/protectionPolicy");
            let get = |f: &str, cur: bool| -> Result<bool, ApiError> {
                match pp.and_then(|p| p.get(f)) {
                    None | Some(Value::Null) => Ok(cur),
                    Some(Value::Bool(b)) => Ok(*b),
                    Some(x) => Err(ApiError::bad_request(
                        "InvalidParameter",
                        format!("protectionPolicy.{f} must be a boolean, got {x}."),
                    )),
                }
            };
            let (a, b) = (
                get("protectFromScaleIn", rec.protect_from_scale_in)?,
                get(
                    "protectFromScaleSetActions",
                    rec.protect_from_scale_set_actions,
                )?,
            );
            if b && !a {
                return Err(ApiError::bad_request(
                    "InvalidParameter",
                    "protectFromScaleSetActions requires protectFromScaleIn to be true.",
                ));
            }
            st.update_instance(&key, rec.instance_id, |r| {
                r.protect_from_scale_in = a;
                r.protect_from_scale_set_actions = b;
            })?;
            let (doc, rec) = find_vm(st, res, instance)?;
            ok(render::vm(
                res,
                &doc,
                &rec,
                &st.observation(&rec.machine),
                false,
            ))
        }
        Method::DELETE => power(
            st,
            res,
            PowerAction::DeleteInstances,
            Some(vec![instance.to_string()]),
        ),
        _ => Err(ApiError::bad_request(
            "MethodNotAllowed",
            "unsupported method",
        )),
    }
}

fn power(st: &AppState, res: &Res, act: PowerAction, ids: Option<Vec<String>>) -> Reply {
    st.cp.power(res, act, ids)?;
    // Accepted: the engine carries it out; the operation URLs (operations.rs) report when done.
    Ok((StatusCode::ACCEPTED, Value::Null))
}

fn load_balancer(st: &AppState, method: Method, res: &Res, body: &[u8]) -> Reply {
    control::check_name(LB, res)?;
    match method {
        Method::GET => ok(render::lb(res, st.cp.lb(res)?)),
        Method::PUT | Method::PATCH => {
            st.cp.require_group(res)?;
            let put = put_body(&method, require_object(parse_body(body)?)?);
            let stored = st.cp.put_lb(res, put, &st.cfg.limits.lb_allowed)?;
            Ok((put_status(stored.created), render::lb(res, stored.doc)))
        }
        Method::DELETE => deleted(st.cp.delete_lb(res)?),
        _ => Err(ApiError::bad_request(
            "MethodNotAllowed",
            "unsupported method",
        )),
    }
}

/// A load balancer's child collection or child: list and get from the rendered parent; PUT and
/// DELETE of probes and rules as a new parent (`ControlPlane::put_lb_child`).
fn lb_child(
    st: &AppState,
    method: Method,
    res: &Res,
    child: route::LbChild,
    name: Option<&str>,
    body: &[u8],
) -> Reply {
    control::check_name(LB, res)?;
    let allowed = &st.cfg.limits.lb_allowed;
    let Some(name) = name else {
        let lb = render::lb(res, st.cp.lb(res)?);
        let items = model::lb_child::list(&lb, child);
        let v: Vec<Value> = items
            .into_iter()
            .map(|i| render::lb_child(child, i))
            .collect();
        return ok(json!({"value": v}));
    };
    match method {
        Method::GET => {
            let lb = render::lb(res, st.cp.lb(res)?);
            let item = model::lb_child::get(&lb, child, name)
                .ok_or_else(|| child_not_found(res, child, name))?;
            ok(render::lb_child(child, item.clone()))
        }
        Method::PUT => {
            st.cp.require_group(res)?;
            let item = require_object(parse_body(body)?)?;
            let stored = st.cp.put_lb_child(res, child, name, &item, allowed)?;
            let lb = render::lb(res, stored.doc);
            let item = model::lb_child::get(&lb, child, name)
                .ok_or_else(|| ApiError::internal("the child just stored is missing"))?;
            Ok((
                put_status(stored.created),
                render::lb_child(child, item.clone()),
            ))
        }
        Method::DELETE => deleted(st.cp.delete_lb_child(res, child, name, allowed)?),
        _ => Err(ApiError::bad_request(
            "MethodNotAllowed",
            "unsupported method",
        )),
    }
}

/// Azure's 404 for a missing child of an existing load balancer.
fn child_not_found(res: &Res, child: route::LbChild, name: &str) -> ApiError {
    ApiError::not_found(
        "NotFound",
        format!(
            "Resource {}/{}/{name} not found.",
            res.id(LB),
            child.collection()
        ),
    )
}

fn autoscale(st: &AppState, method: Method, res: &Res, body: &[u8]) -> Reply {
    control::check_autoscale_name(&res.name)?;
    match method {
        Method::GET => ok(render::autoscale(res, &st.cp.autoscale(res)?)),
        Method::PUT | Method::PATCH => {
            st.cp.require_group(res)?;
            let put = put_body(&method, require_object(parse_body(body)?)?);
            let stored = st.cp.put_autoscale(res, put)?;
            Ok((
                put_status(stored.created),
                render::autoscale(res, &stored.doc),
            ))
        }
        Method::DELETE => deleted(st.cp.delete_autoscale(res)?),
        _ => Err(ApiError::bad_request(
            "MethodNotAllowed",
            "unsupported method",
        )),
    }
}

fn images(st: &AppState, method: Method, res: &Res) -> Reply {
    control::check_name(IMAGE, res)?;
    match method {
        Method::GET => ok(render::image(res, &st.cp.image(&st.images, res)?)),
        Method::DELETE => deleted(st.cp.delete_image(&st.images, res)?),
        Method::PUT | Method::PATCH => Err(st.cp.put_image(res).into()),
        _ => Err(ApiError::bad_request(
            "MethodNotAllowed",
            "unsupported method",
        )),
    }
}
