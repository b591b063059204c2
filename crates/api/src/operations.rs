//! Long-running operations the way ARM reports them, so Azure's SDKs (and az) wait for the work
//! and not just for the acknowledgement: a 202 (and a 200/201 scale set PUT/PATCH that is not yet
//! `Succeeded`) carries `Azure-AsyncOperation` and `Location` URLs and `Retry-After`.
//! `GET .../locations/{loc}/operations/{id}` answers `{"status": "InProgress"|"Succeeded"|
//! "Failed"|"Canceled", ...}`; `GET .../operationResults/{id}` answers 202 while in progress, then
//! 200/204 (or the error). The id encodes what to check (no record is stored), so an operation
//! outlives a daemon restart; its status is computed from the store on each GET.
use crate::error::ApiError;
use crate::route::{PowerAction, Res, Route, VMSS};
use crate::state::AppState;
use axum::http::{Method, StatusCode};
use control::ProvisioningState;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    /// A scale set PUT/PATCH: done when the scale set is provisioned.
    Model,
    /// A scale set DELETE: done when it is gone.
    Delete,
    /// Start/stop/restart/reimage/upgrade of instances: done when they settled.
    Instances,
    /// Deletion of instances: done when they are gone.
    RemoveInstances,
    /// A rolling upgrade start or cancel: done when the rollout ended.
    Rolling,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OpId {
    k: Kind,
    rg: String,
    n: String,
    /// Target instances; None = all of them at poll time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ids: Option<Vec<u32>>,
    /// Start time (unix seconds).
    t: u64,
}

impl OpId {
    fn encode(&self) -> String {
        let s = serde_json::to_string(self).unwrap_or_default();
        s.bytes().map(|b| format!("{b:02x}")).collect()
    }

    fn decode(s: &str) -> Option<Self> {
        if !s.len().is_multiple_of(2) || s.len() > 8192 {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
            .collect();
        serde_json::from_slice(&bytes?).ok()
    }

    fn res(&self, sub: &str) -> Res {
        Res {
            sub: sub.to_string(),
            rg: self.rg.clone(),
            name: self.n.clone(),
        }
    }
}

/// The operation a reply starts, if it is long-running and not finished yet.
fn started(route: &Route, status: StatusCode, reply: &Value, body: &[u8]) -> Option<(Res, OpId)> {
    let now = crate::engine::unix_now();
    let op = |k: Kind, res: &Res, ids: Option<Vec<u32>>| {
        Some((
            res.clone(),
            OpId {
                k,
                rg: res.rg.clone(),
                n: res.name.clone(),
                ids,
                t: now,
            },
        ))
    };
    let ids_of = |body: &[u8]| -> Option<Vec<u32>> {
        let v: Value = serde_json::from_slice(body).ok()?;
        v.get("instanceIds")?
            .as_array()?
            .iter()
            .map(|x| x.as_str().and_then(|s| s.parse().ok()))
            .collect()
    };
    match route {
        Route::Resource {
            kind: VMSS,
            method,
            res,
        } if (*method == Method::PUT || *method == Method::PATCH)
            && status.is_success()
            && reply.pointer("/properties/provisioningState") != Some(&json!("Succeeded")) =>
        {
            op(Kind::Model, res, None)
        }
        _ if status != StatusCode::ACCEPTED => None,
        Route::Resource {
            kind: VMSS,
            method,
            res,
        } if *method == Method::DELETE => op(Kind::Delete, res, None),
        Route::VmssAction(res, PowerAction::DeleteInstances) => {
            op(Kind::RemoveInstances, res, ids_of(body))
        }
        Route::VmssAction(res, _) => op(Kind::Instances, res, ids_of(body)),
        Route::Vm {
            method,
            res,
            instance,
            ..
        } if *method == Method::DELETE => op(
            Kind::RemoveInstances,
            res,
            Some(vec![instance.parse().ok()?]),
        ),
        Route::VmAction(res, instance, _) => {
            op(Kind::Instances, res, Some(vec![instance.parse().ok()?]))
        }
        Route::RollingStart(res) | Route::RollingCancel(res) => op(Kind::Rolling, res, None),
        _ => None,
    }
}

/// Response headers for a reply that starts a long-running operation. `base` is the URL prefix
/// clients reach us at (`http://host:port`).
pub fn headers(
    route: &Route,
    status: StatusCode,
    reply: &Value,
    body: &[u8],
    base: &str,
) -> Vec<(&'static str, String)> {
    let Some((res, op)) = started(route, status, reply, body) else {
        return Vec::new();
    };
    let loc = reply
        .get("location")
        .and_then(Value::as_str)
        .unwrap_or(model::DEFAULT_LOCATION);
    let prefix = format!(
        "{base}/subscriptions/{}/providers/Microsoft.Compute/locations/{loc}",
        res.sub
    );
    let id = op.encode();
    let v = crate::route::COMPUTE_OPERATIONS_API_VERSION;
    let mut h = vec![
        (
            "Azure-AsyncOperation",
            format!("{prefix}/operations/{id}?api-version={v}"),
        ),
        ("Retry-After", "1".to_string()),
    ];
    if status == StatusCode::ACCEPTED {
        h.push((
            "Location",
            format!("{prefix}/operationResults/{id}?api-version={v}"),
        ));
    }
    h
}

enum State {
    InProgress,
    Succeeded,
    Failed(String, String),
    Canceled,
}

fn state(st: &AppState, sub: &str, op: &OpId) -> Result<State, ApiError> {
    let res = op.res(sub);
    let Some(doc) = st.vmss_doc(&res)? else {
        return Ok(match op.k {
            Kind::Delete | Kind::RemoveInstances => State::Succeeded,
            _ => State::Failed(
                "ResourceNotFound".into(),
                format!("Scale set '{}' no longer exists.", res.name),
            ),
        });
    };
    Ok(match op.k {
        Kind::Delete => State::InProgress,
        Kind::Model => match crate::handlers::vmss_provisioning(st, &res, &doc)?.as_str() {
            "Succeeded" => State::Succeeded,
            "Deleting" => State::Failed(
                "OperationPreempted".into(),
                format!("Scale set '{}' is being deleted.", res.name),
            ),
            _ => State::InProgress,
        },
        Kind::Rolling => match st.rollout(&res)? {
            None => State::Succeeded,
            Some(d) if d.state.phase != plan::rolling::Phase::Done => State::InProgress,
            Some(d) => match d.state.status {
                plan::rolling::RunningStatus::Completed => State::Succeeded,
                plan::rolling::RunningStatus::Cancelled => State::Canceled,
                plan::rolling::RunningStatus::Faulted => {
                    let (code, msg) =
                        d.state
                            .error
                            .map(|e| (e.code, e.message))
                            .unwrap_or_else(|| {
                                (
                                    "RollingUpgradeFailed".into(),
                                    "The rolling upgrade failed.".into(),
                                )
                            });
                    State::Failed(code, msg)
                }
                plan::rolling::RunningStatus::RollingForward => State::InProgress,
            },
        },
        Kind::Instances | Kind::RemoveInstances => {
            let recs = st.instances(&res.key(VMSS))?;
            let targets = recs.iter().filter(|r| {
                op.ids
                    .as_ref()
                    .is_none_or(|ids| ids.contains(&r.instance_id))
            });
            let mut out = State::Succeeded;
            for r in targets {
                if op.k == Kind::RemoveInstances {
                    out = State::InProgress;
                    break;
                }
                if r.work.is_deleting() {
                    continue;
                }
                if r.provisioning_state == ProvisioningState::Failed {
                    out = State::Failed(
                        "VMProvisioningFailed".into(),
                        format!(
                            "Instance {} failed: {}",
                            r.instance_id,
                            r.last_error.as_deref().unwrap_or("provisioning failed")
                        ),
                    );
                    break;
                }
                let running = st.observation(&r.machine).running;
                let settled = r.work.pending.is_none()
                    && r.provisioning_state == ProvisioningState::Succeeded
                    && running == (r.intent == plan::PowerIntent::Running);
                if !settled {
                    out = State::InProgress;
                }
            }
            out
        }
    })
}

/// `GET .../operations/{id}` (status) or `.../operationResults/{id}` (result).
pub fn get(st: &AppState, sub: &str, id: &str, result: bool) -> crate::handlers::Reply {
    let op = OpId::decode(id).ok_or_else(|| {
        ApiError::not_found(
            "OperationNotFound",
            format!("The operation '{id}' was not found."),
        )
    })?;
    let s = state(st, sub, &op)?;
    if result {
        return match s {
            State::InProgress => Ok((StatusCode::ACCEPTED, Value::Null)),
            State::Succeeded | State::Canceled => Ok((StatusCode::OK, Value::Null)),
            State::Failed(code, message) => Err(ApiError::Failed {
                status: StatusCode::CONFLICT,
                code,
                message,
            }),
        };
    }
    let (status, error) = match s {
        State::InProgress => ("InProgress", None),
        State::Succeeded => ("Succeeded", None),
        State::Canceled => ("Canceled", None),
        State::Failed(code, message) => ("Failed", Some(json!({"code": code, "message": message}))),
    };
    let mut v = json!({
        "name": id,
        "status": status,
        "startTime": image::rfc3339(op.t),
    });
    if status != "InProgress" {
        v["endTime"] = json!(crate::state::now_rfc3339());
    }
    if let Some(e) = error {
        v["error"] = e;
    }
    Ok((StatusCode::OK, v))
}

/// Whether a status reply is still in progress (it then carries `Retry-After`).
pub fn in_progress(route: &Route, status: StatusCode, reply: &Value) -> bool {
    matches!(route, Route::Operation { .. })
        && (status == StatusCode::ACCEPTED || reply.get("status") == Some(&json!("InProgress")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_garbage_is_refused() {
        let op = OpId {
            k: Kind::RemoveInstances,
            rg: "rg".into(),
            n: "web".into(),
            ids: Some(vec![1, 3]),
            t: 7,
        };
        let back = OpId::decode(&op.encode()).unwrap();
        assert_eq!(
            (back.k, back.ids, back.t),
            (Kind::RemoveInstances, Some(vec![1, 3]), 7)
        );
        for bad in ["", "zz", "abc", "7b7d", &"00".repeat(5000)] {
            assert!(OpId::decode(bad).is_none(), "{bad}");
        }
    }
}
