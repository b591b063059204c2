//! Executes parsed routes against the store. Changes to instances are recorded as intent (power,
//! reimage, restart, deletion) that the engine carries out; every change is committed before the
//! response is sent.
use crate::error::ApiError;
use crate::render;
use crate::route::{PowerAction, Res, Route, Scope, IMAGE, LB, RG, VMSS};
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

fn group_key(res: &Res) -> store::Key {
    store::Key::new(RG, &res.sub, &res.rg, &res.rg)
}

fn require_group(st: &AppState, res: &Res) -> Result<(), ApiError> {
    if st.store.get(&group_key(res))?.is_none() {
        return Err(ApiError::not_found(
            "ResourceGroupNotFound",
            format!("Resource group '{}' could not be found.", res.rg),
        ));
    }
    Ok(())
}

fn not_found(kind: &str, res: &Res) -> ApiError {
    ApiError::not_found(
        "ResourceNotFound",
        format!(
            "The Resource '{kind}/{}' under resource group '{}' was not found.",
            res.name, res.rg
        ),
    )
}

pub async fn execute(
    st: &AppState,
    route: Route,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Reply {
    let is_get = match &route {
        Route::Group { method, .. } | Route::Resource { method, .. } | Route::Vm { method, .. } => {
            *method == Method::GET
        }
        Route::ListGroups { .. }
        | Route::List { .. }
        | Route::Vms(_)
        | Route::VmssInstanceView(_)
        | Route::VmInstanceView(..) => true,
        Route::RollingLatest(_) | Route::Operation { .. } => true,
        Route::VmssAction(..)
        | Route::VmAction(..)
        | Route::RollingStart(_)
        | Route::RollingCancel(_)
        | Route::Rollback(_)
        | Route::SetOrchestrationServiceState(_) => false,
    };
    let mutating = !is_get;
    let reply = match route {
        Route::ListGroups { sub } => {
            let v: Vec<Value> = st
                .store
                .list(RG, Some(&sub), None)?
                .into_iter()
                .map(|(_, v)| v)
                .collect();
            ok(json!({"value": v}))
        }
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
        Route::Resource { .. } => Err(ApiError::not_found("NotFound", "Unknown resource type.")),
        Route::VmssInstanceView(res) => vmss_instance_view(st, &res),
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
        Route::VmAction(res, instance, act) => power(st, &res, act, Some(vec![instance])),
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
    };
    if reply.is_ok() && mutating {
        st.wake.notify_one();
    }
    reply
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
    model::names::resource_group(&res.rg)?;
    let key = group_key(res);
    let render = |location: &Value| json!({"id": res.id(RG), "name": res.rg, "type": "Microsoft.Resources/resourceGroups", "location": location, "properties": {"provisioningState": "Succeeded"}});
    match method {
        Method::PUT | Method::PATCH => {
            let body = parse_body(body)?;
            let existing = st.store.get(&key)?;
            let location = body
                .get("location")
                .cloned()
                .or_else(|| existing.as_ref().and_then(|e| e.get("location").cloned()))
                .unwrap_or(json!(model::DEFAULT_LOCATION));
            if method == Method::PATCH && existing.is_none() {
                return Err(ApiError::not_found(
                    "ResourceGroupNotFound",
                    format!("Resource group '{}' could not be found.", res.rg),
                ));
            }
            let v = render(&location);
            st.store.put(&key, &v)?;
            Ok((
                if existing.is_some() {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                },
                v,
            ))
        }
        Method::GET => st
            .store
            .get(&key)?
            .map(|v| (StatusCode::OK, v))
            .ok_or_else(|| {
                ApiError::not_found(
                    "ResourceGroupNotFound",
                    format!("Resource group '{}' could not be found.", res.rg),
                )
            }),
        Method::DELETE => {
            let scope = Scope {
                sub: res.sub.clone(),
                rg: Some(res.rg.clone()),
            };
            let mut left = Vec::new();
            for kind in [VMSS, LB] {
                for (k, _) in st.store.list(kind, Some(&scope.sub), scope.rg.as_deref())? {
                    left.push(format!("{kind}/{}", k.name));
                }
            }
            if !left.is_empty() {
                return Err(ApiError::conflict(
                    "ResourceGroupNotEmpty",
                    format!(
                        "Resource group '{}' still contains {}; delete them first.",
                        res.rg,
                        left.join(", ")
                    ),
                ));
            }
            if st.store.delete(&key)? {
                Ok((StatusCode::OK, Value::Null))
            } else {
                Ok((StatusCode::NO_CONTENT, Value::Null))
            }
        }
        _ => Err(ApiError::bad_request(
            "MethodNotAllowed",
            "unsupported method",
        )),
    }
}

fn list(st: &AppState, kind: &'static str, scope: &Scope) -> Reply {
    let mut out = Vec::new();
    match kind {
        IMAGE => {
            let rg = scope.rg.clone().unwrap_or_else(|| "images".into());
            for img in st.images.list().map_err(ApiError::internal)? {
                out.push(render::image(
                    &Res {
                        sub: scope.sub.clone(),
                        rg: rg.clone(),
                        name: img.name.clone(),
                    },
                    &img,
                ));
            }
        }
        _ => {
            for (k, v) in st.store.list(kind, Some(&scope.sub), scope.rg.as_deref())? {
                let rg = v
                    .get("x-resourceGroup")
                    .and_then(Value::as_str)
                    .unwrap_or(&k.rg)
                    .to_string();
                out.push(match kind {
                    VMSS => {
                        let doc: VmssDoc = serde_json::from_value(v).map_err(ApiError::internal)?;
                        let rg = doc.resource_group.clone();
                        let res = Res {
                            sub: scope.sub.clone(),
                            rg,
                            name: doc.name.clone(),
                        };
                        let p = vmss_provisioning(st, &res, &doc)?;
                        render::vmss(&res, &doc, &p)
                    }
                    _ => {
                        let name = v
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or(&k.name)
                            .to_string();
                        render_lb(
                            &Res {
                                sub: scope.sub.clone(),
                                rg,
                                name,
                            },
                            v,
                        )
                    }
                });
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
    model::names::vmss(&res.name)?;
    let existing = st.vmss_doc(res)?;
    match method {
        Method::GET => {
            let doc = existing.ok_or_else(|| not_found(VMSS, res))?;
            let p = vmss_provisioning(st, res, &doc)?;
            ok(render::vmss(res, &doc, &p))
        }
        Method::PUT | Method::PATCH => {
            require_group(st, res)?;
            let body = require_object(parse_body(body)?)?;
            let put = if method == Method::PATCH {
                control::Put::Merge(body)
            } else {
                control::Put::Replace(body)
            };
            let control::Stored { doc, created } = st.cp.put_vmss(&st.images, res, put)?;
            let p = vmss_provisioning(st, res, &doc)?;
            Ok((
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                render::vmss(res, &doc, &p),
            ))
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
    model::names::network_or_image("load balancer", &res.name)?;
    let key = res.key(LB);
    let render = |v: Value| render_lb(res, v);
    match method {
        Method::GET => st
            .store
            .get(&key)?
            .map(|v| (StatusCode::OK, render(v)))
            .ok_or_else(|| not_found(LB, res)),
        Method::PUT | Method::PATCH => {
            require_group(st, res)?;
            let body = require_object(parse_body(body)?)?;
            let existing = st.store.get(&key)?;
            let merged = match (&method, &existing) {
                (&Method::PATCH, None) => return Err(not_found(LB, res)),
                (&Method::PATCH, Some(e)) => {
                    let mut m = e.clone();
                    model::vmss::merge_patch(&mut m, &body);
                    m
                }
                _ => body,
            };
            let (m, arm) = model::lb::parse(&merged)?;
            check_frontend_addresses(st, &m)?;
            // Frontends are real sockets on this machine: two load balancers cannot share one.
            for (k, other) in st.store.list(LB, None, None)? {
                if k.path() == key.path() {
                    continue;
                }
                let Ok((om, _)) = model::lb::parse(&other) else {
                    continue;
                };
                for r in &m.rules {
                    let ip = m.frontends.iter().find(|f| f.0 == r.frontend).map(|f| f.1);
                    for or in &om.rules {
                        let oip = om
                            .frontends
                            .iter()
                            .find(|f| f.0 == or.frontend)
                            .map(|f| f.1);
                        if or.frontend_port == r.frontend_port && ip == oip {
                            return Err(ApiError::conflict(
                                "FrontendPortInUse",
                                format!(
                                    "Frontend {}:{} is already used by load balancer '{}'.",
                                    ip.map(|i| i.to_string()).unwrap_or_default(),
                                    r.frontend_port,
                                    k.name
                                ),
                            ));
                        }
                    }
                }
            }
            let mut stored = arm.clone();
            stored["name"] = json!(res.name);
            stored["x-resourceGroup"] = json!(res.rg);
            st.store.put(&key, &stored)?;
            Ok((
                if existing.is_some() {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                },
                render(arm),
            ))
        }
        Method::DELETE => {
            if st.store.get(&key)?.is_none() {
                return Ok((StatusCode::NO_CONTENT, Value::Null));
            }
            for (k, v) in st.store.list(VMSS, None, None)? {
                let doc: VmssDoc = serde_json::from_value(v).map_err(ApiError::internal)?;
                if let Ok((m, _)) = model::vmss::parse(&doc.arm, &k.name) {
                    let uses = m
                        .backend_pools
                        .iter()
                        .chain(m.health_probe.iter())
                        .any(|id| {
                            id.name.eq_ignore_ascii_case(&res.name)
                                && id.resource_group.eq_ignore_ascii_case(&res.rg)
                        });
                    if uses {
                        return Err(ApiError::conflict("LoadBalancerInUseByVirtualMachineScaleSet", format!("Cannot delete load balancer '{}': it is in use by virtual machine scale set '{}'.", res.name, k.name)));
                    }
                }
            }
            st.store.delete(&key)?;
            Ok((StatusCode::OK, Value::Null))
        }
        _ => Err(ApiError::bad_request(
            "MethodNotAllowed",
            "unsupported method",
        )),
    }
}

/// Frontends listen on this machine, only where `scaleset serve --lb-allowed-addresses` lets
/// them (loopback by default): an address outside would expose instances to the network.
fn check_frontend_addresses(st: &AppState, m: &model::lb::LbModel) -> Result<(), ApiError> {
    let limits = &st.cfg.limits;
    match m.frontends.iter().find(|f| !limits.lb_address_allowed(f.1)) {
        None => Ok(()),
        Some((name, ip)) => Err(ApiError::bad_request(
            "InvalidParameter",
            format!(
                "Frontend IP configuration '{name}': privateIPAddress {ip} is outside the addresses load balancers may listen on ({}). Use one of them, or start the daemon with --lb-allowed-addresses (SCALESET_LB_ALLOWED_ADDRESSES) including it.",
                limits.lb_allowed_list()
            ),
        )),
    }
}

pub fn render_lb(res: &Res, mut v: Value) -> Value {
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

fn images(st: &AppState, method: Method, res: &Res) -> Reply {
    model::names::network_or_image("image", &res.name)?;
    match method {
        Method::GET => {
            let img = st.images.get(&res.name).map_err(ApiError::internal)?.ok_or_else(|| not_found(IMAGE, res))?;
            ok(render::image(res, &img))
        }
        Method::DELETE => {
            if st.images.get(&res.name).map_err(ApiError::internal)?.is_none() {
                return Ok((StatusCode::NO_CONTENT, Value::Null));
            }
            for (k, v) in st.store.list(VMSS, None, None)? {
                let doc: VmssDoc = serde_json::from_value(v).map_err(ApiError::internal)?;
                let in_model = model::vmss::parse(&doc.arm, &k.name).ok().and_then(|(m, _)| m.image).is_some_and(|i| i.name == res.name);
                let on_instance = st.instances(&k)?.iter().any(|r| r.image == res.name);
                if in_model || on_instance {
                    return Err(ApiError::conflict("ImageInUse", format!("Image '{}' is in use by virtual machine scale set '{}' and cannot be deleted.", res.name, k.name)));
                }
            }
            st.images.delete(&res.name).map_err(ApiError::internal)?;
            Ok((StatusCode::OK, Value::Null))
        }
        Method::PUT | Method::PATCH => Err(ApiError::bad_request(
            "OperationNotAllowed",
            "Images are created by baking: `scaleset image bake --base debian:bookworm --package DIR --script setupscript.sh --name NAME`.",
        )),
        _ => Err(ApiError::bad_request("MethodNotAllowed", "unsupported method")),
    }
}
