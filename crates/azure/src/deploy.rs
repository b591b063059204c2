//! ARM template deployments (`Microsoft.Resources/deployments`), the pure part: the body from a
//! template and az-style `--parameters`, the deployment's state, per-resource progress from its
//! operations, the per-resource errors of a failed one, and the public IP addresses among its
//! outputs. The PUT and the polling are `ops::Azure::deploy`.
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The largest template or parameters file read (ARM itself refuses templates over 4 MiB).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Operations listed per poll are bounded (a template has at most 800 resources).
pub const MAX_OPERATIONS: usize = 800;

/// A deployment's `properties.provisioningState`, as far as waiting is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl State {
    /// Accepted, Running, Creating, Updating, Validating, ... are all still running.
    pub fn of(deployment: &Value) -> State {
        let s = deployment
            .pointer("/properties/provisioningState")
            .and_then(Value::as_str)
            .unwrap_or("");
        match s.to_ascii_lowercase().as_str() {
            "succeeded" => State::Succeeded,
            "failed" => State::Failed,
            "canceled" | "cancelled" => State::Canceled,
            _ => State::Running,
        }
    }

    pub fn done(self) -> bool {
        self != State::Running
    }
}

/// The PUT body: an inline template, its parameters, Incremental mode (az's default).
pub fn body(template: Value, parameters: Map<String, Value>) -> Value {
    json!({"properties": {"mode": "Incremental", "template": template, "parameters": parameters}})
}

/// az's `--parameters`, each one `@file.json` (a parameters file, with or without its
/// `$schema`/`parameters` wrapper), inline JSON of the same shape, or `name=value` (the value
/// typed by the template's declaration: int, bool, object and array values are JSON). Later
/// ones win. `read` reads a file (bounded by the caller). Names must be declared by the
/// template, as ARM refuses undeclared ones.
pub fn parameters(
    template: &Value,
    args: &[String],
    read: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Map<String, Value>, String> {
    let declared = template
        .get("parameters")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut out = Map::new();
    for a in args {
        let a = a.trim();
        let file_or_json = if let Some(path) = a.strip_prefix('@') {
            Some(read(path)?)
        } else if a.starts_with('{') {
            Some(a.to_string())
        } else {
            None
        };
        match file_or_json {
            Some(text) => {
                let v: Value = serde_json::from_str(&text)
                    .map_err(|e| format!("--parameters {a}: not JSON ({e})"))?;
                let inner = v
                    .get("parameters")
                    .filter(|_| v.get("$schema").is_some() || v.get("contentVersion").is_some());
                let obj = inner.unwrap_or(&v).as_object().ok_or_else(|| {
                    format!(
                        "--parameters {a}: expected an object of {{\"name\": {{\"value\": ...}}}}"
                    )
                })?;
                for (k, p) in obj {
                    if p.get("value").is_none() && p.get("reference").is_none() {
                        return Err(format!(
                            "--parameters {a}: parameter '{k}' has no \"value\""
                        ));
                    }
                    out.insert(k.clone(), p.clone());
                }
            }
            None => {
                let (k, v) = a.split_once('=').ok_or_else(|| {
                    format!("--parameters '{a}': expected name=value, @file.json or JSON")
                })?;
                let ty = declared
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(k))
                    .and_then(|(_, d)| d.get("type").and_then(Value::as_str))
                    .unwrap_or("string")
                    .to_ascii_lowercase();
                let value = match ty.as_str() {
                    "int" | "bool" | "object" | "array" | "secureobject" => serde_json::from_str(v)
                        .map_err(|_| format!("--parameters {k}: '{v}' is not a valid {ty}"))?,
                    _ => Value::String(v.to_string()),
                };
                out.insert(k.to_string(), json!({"value": value}));
            }
        }
    }
    for k in out.keys() {
        if !declared.keys().any(|d| d.eq_ignore_ascii_case(k)) {
            return Err(format!(
                "the template declares no parameter '{k}' (it has: {})",
                declared.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    Ok(out)
}

/// One resource of a deployment, as its operations report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceState {
    /// `type/name`, e.g. `Microsoft.Network/publicIPAddresses/lb-fe-ip`.
    pub resource: String,
    pub state: String,
}

fn target(op: &Value) -> Option<String> {
    let t = op.pointer("/properties/targetResource")?;
    let ty = t.get("resourceType").and_then(Value::as_str)?;
    let name = t.get("resourceName").and_then(Value::as_str)?;
    Some(format!("{ty}/{name}"))
}

/// The state of each resource the operations touch (the last operation on it wins; operations
/// without a target, such as the deployment's own, are left out), in the order first seen.
pub fn resource_states(ops: &[Value]) -> Vec<ResourceState> {
    let mut out: Vec<ResourceState> = Vec::new();
    for op in ops.iter().take(MAX_OPERATIONS) {
        let Some(resource) = target(op) else { continue };
        let state = op
            .pointer("/properties/provisioningState")
            .and_then(Value::as_str)
            .unwrap_or("Unknown")
            .to_string();
        match out.iter_mut().find(|r| r.resource == resource) {
            Some(r) => r.state = state,
            None => out.push(ResourceState { resource, state }),
        }
    }
    out
}

/// Progress lines for what changed since `seen` (resource → state), which is updated.
pub fn progress(seen: &mut BTreeMap<String, String>, now: &[ResourceState]) -> Vec<String> {
    let mut lines = Vec::new();
    for r in now {
        if seen.get(&r.resource) != Some(&r.state) {
            lines.push(format!("{}: {}", r.resource, r.state));
            seen.insert(r.resource.clone(), r.state.clone());
        }
    }
    lines
}

/// `(code) message`, with the details ARM nests inside (bounded depth and count). The spec
/// declares a deployment's and an operation's error as `ErrorResponse` (`{"error": {...}}`);
/// ARM has been seen answering the inner object alone: both are read.
fn error_text(e: &Value, depth: usize) -> String {
    let e = match e.get("error") {
        Some(inner) if e.get("code").is_none() && inner.is_object() => inner,
        _ => e,
    };
    let code = e.get("code").and_then(Value::as_str).unwrap_or("Error");
    let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
    let mut s = format!("({code}) {msg}");
    if depth < 3 {
        for d in e
            .get("details")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .take(10)
        {
            s.push_str(&format!("; {}", error_text(d, depth + 1)));
        }
    }
    s
}

/// The per-resource errors of failed operations: `type/name: (code) message`.
pub fn failures(ops: &[Value]) -> Vec<String> {
    ops.iter()
        .take(MAX_OPERATIONS)
        .filter(|op| {
            op.pointer("/properties/provisioningState")
                .and_then(Value::as_str)
                .is_some_and(|s| s.eq_ignore_ascii_case("Failed"))
        })
        .map(|op| {
            let who = target(op).unwrap_or_else(|| "deployment".into());
            let err = op
                .pointer("/properties/statusMessage/error")
                .or_else(|| op.pointer("/properties/statusMessage"))
                .map(|e| error_text(e, 0))
                .unwrap_or_else(|| "(Failed) no error reported".into());
            format!("{who}: {err}")
        })
        .collect()
}

/// The deployment's own error, `(code) message; details...`.
pub fn deployment_error(deployment: &Value) -> Option<String> {
    deployment
        .pointer("/properties/error")
        .map(|e| error_text(e, 0))
}

/// The outputs that are IP addresses (`scaleset export azure` names its frontends'
/// `{lb}{frontend}Address`): `(output name, address)`.
pub fn public_ips(deployment: &Value) -> Vec<(String, String)> {
    let Some(outputs) = deployment
        .pointer("/properties/outputs")
        .and_then(Value::as_object)
    else {
        return Vec::new();
    };
    outputs
        .iter()
        .filter_map(|(k, o)| {
            let v = o.get("value").and_then(Value::as_str)?;
            v.parse::<std::net::IpAddr>().ok()?;
            Some((k.clone(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Value {
        json!({"parameters": {
            "location": {"type": "string"}, "imageId": {"type": "string"},
            "deployScaleSet": {"type": "bool"}, "count": {"type": "int"},
            "tags": {"type": "object"},
        }})
    }

    fn params(args: &[&str]) -> Result<Map<String, Value>, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let read = |p: &str| {
            match p {
            "p.json" => Ok(r#"{"$schema": "x", "contentVersion": "1.0.0.0", "parameters": {"imageId": {"value": "/img"}}}"#.to_string()),
            "bare.json" => Ok(r#"{"location": {"value": "westeurope"}}"#.to_string()),
            other => Err(format!("cannot read {other}")),
        }
        };
        parameters(&template(), &args, &read)
    }

    #[test]
    fn parameters_as_az_takes_them() {
        let p = params(&[
            "@p.json",
            "@bare.json",
            "deployScaleSet=false",
            "count=3",
            "tags={\"a\":\"b\"}",
            "location=northeurope",
        ])
        .unwrap();
        assert_eq!(p["imageId"], json!({"value": "/img"}));
        assert_eq!(p["deployScaleSet"], json!({"value": false}));
        assert_eq!(p["count"], json!({"value": 3}));
        assert_eq!(p["tags"], json!({"value": {"a": "b"}}));
        assert_eq!(p["location"], json!({"value": "northeurope"}), "later wins");
        let p = params(&[r#"{"imageId": {"value": "/x"}}"#]).unwrap();
        assert_eq!(p["imageId"]["value"], "/x");
        // A string parameter keeps '=' and JSON-looking text as it is.
        let p = params(&["imageId=a=b"]).unwrap();
        assert_eq!(p["imageId"]["value"], "a=b");
    }

    #[test]
    fn parameter_refusals() {
        for (args, why) in [
            (vec!["nope=1"], "declares no parameter 'nope'"),
            (vec!["count=three"], "not a valid int"),
            (vec!["deployScaleSet=yes"], "not a valid bool"),
            (vec!["@missing.json"], "cannot read missing.json"),
            (vec!["{not json"], "not JSON"),
            (vec![r#"{"imageId": "/x"}"#], "has no \"value\""),
            (vec!["[1]"], "expected name=value"),
            (vec!["justaword"], "expected name=value"),
        ] {
            let e = params(&args).unwrap_err();
            assert!(e.contains(why), "{args:?}: {e}");
        }
    }

    #[test]
    fn states() {
        for (s, want) in [
            ("Accepted", State::Running),
            ("Running", State::Running),
            ("Succeeded", State::Succeeded),
            ("Failed", State::Failed),
            ("Canceled", State::Canceled),
            ("", State::Running),
        ] {
            assert_eq!(
                State::of(&json!({"properties": {"provisioningState": s}})),
                want,
                "{s}"
            );
        }
        assert!(!State::Running.done() && State::Failed.done());
    }

    fn op(ty: &str, name: &str, state: &str) -> Value {
        json!({"properties": {"provisioningState": state,
            "targetResource": {"resourceType": ty, "resourceName": name}}})
    }

    #[test]
    fn progress_reports_changes_once() {
        let mut seen = BTreeMap::new();
        let a = resource_states(&[
            op("T/pip", "ip", "Running"),
            json!({"properties": {"provisioningState": "Running"}}),
        ]);
        assert_eq!(progress(&mut seen, &a), vec!["T/pip/ip: Running"]);
        assert!(progress(&mut seen, &a).is_empty());
        let b = resource_states(&[
            op("T/pip", "ip", "Running"),
            op("T/pip", "ip", "Succeeded"),
            op("T/lb", "lb", "Running"),
        ]);
        assert_eq!(
            progress(&mut seen, &b),
            vec!["T/pip/ip: Succeeded", "T/lb/lb: Running"]
        );
    }

    #[test]
    fn failures_name_each_resource() {
        let mut bad = op("Microsoft.Compute/virtualMachineScaleSets", "web", "Failed");
        bad["properties"]["statusMessage"] = json!({"status": "Failed", "error": {"code": "InvalidParameter",
            "message": "The image was not found.", "details": [{"code": "NotFound", "message": "img"}]}});
        let mut wrapped = op("T/nsg", "nsg", "Failed");
        wrapped["properties"]["statusMessage"] =
            json!({"error": {"error": {"code": "Conflict", "message": "busy"}}});
        let ops = [
            op("T/pip", "ip", "Succeeded"),
            bad,
            op("T/lb", "lb", "Failed"),
            wrapped,
        ];
        assert_eq!(
            failures(&ops),
            vec![
                "Microsoft.Compute/virtualMachineScaleSets/web: (InvalidParameter) The image was not found.; (NotFound) img",
                "T/lb/lb: (Failed) no error reported",
                "T/nsg/nsg: (Conflict) busy",
            ]
        );
        let d = json!({"properties": {"error": {"code": "DeploymentFailed", "message": "At least one resource deployment operation failed."}}});
        assert_eq!(
            deployment_error(&d).unwrap(),
            "(DeploymentFailed) At least one resource deployment operation failed."
        );
    }

    #[test]
    fn public_ips_among_outputs() {
        let d = json!({"properties": {"outputs": {
            "lbfeAddress": {"type": "String", "value": "20.1.2.3"},
            "storageAccountName": {"type": "String", "value": "ssetabc"},
            "n": {"type": "Int", "value": 3},
        }}});
        assert_eq!(
            public_ips(&d),
            vec![("lbfeAddress".to_string(), "20.1.2.3".to_string())]
        );
        assert!(public_ips(&json!({})).is_empty());
    }
}
