//! Load balancer model (Microsoft.Network/loadBalancers): parse + validate, Azure's defaults.
//!
//! Locally a frontend IP configuration is an address on this machine (`privateIPAddress`,
//! default 127.0.0.1). Whether rules proxy at L4 (TCP, Azure's semantics) or L7 (HTTP/1.1 with
//! retries and draining) is chosen by the LB's tag `scaleset.layer` (`L7` default, or `L4`).
use crate::names;
use crate::ModelError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeProtocol {
    Tcp,
    Http,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeModel {
    pub name: String,
    pub protocol: ProbeProtocol,
    pub port: u16,
    pub request_path: Option<String>,
    pub interval_in_seconds: u32,
    pub probe_threshold: u32,
    pub all_probed_up: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Distribution {
    Default,
    SourceIP,
    SourceIPProtocol,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleModel {
    pub name: String,
    pub frontend: String,
    pub pool: String,
    pub probe: Option<String>,
    pub frontend_port: u16,
    pub backend_port: u16,
    pub load_distribution: Distribution,
    pub idle_timeout_in_minutes: u32,
    pub enable_tcp_reset: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LbModel {
    pub frontends: Vec<(String, IpAddr)>,
    pub pools: Vec<String>,
    pub probes: Vec<ProbeModel>,
    pub rules: Vec<RuleModel>,
    pub l7: bool,
}

fn props(item: &Value) -> &Value {
    item.get("properties").unwrap_or(&Value::Null)
}

fn name_of(kind: &str, item: &Value) -> Result<String, ModelError> {
    let n = item
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ModelError::invalid(format!("Every {kind} needs a 'name'.")))?;
    names::network_or_image(kind, n)?;
    Ok(n.to_string())
}

fn list<'a>(body: &'a Value, key: &str) -> Result<&'a [Value], ModelError> {
    match body.pointer(&format!("/properties/{key}")) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(ModelError::invalid(format!(
            "properties.{key} must be a list."
        ))),
    }
}

fn int(
    v: &Value,
    key: &str,
    field: &str,
    lo: i64,
    hi: i64,
    default: Option<i64>,
) -> Result<i64, ModelError> {
    match v.get(key) {
        None | Some(Value::Null) => {
            default.ok_or_else(|| ModelError::invalid(format!("'{field}' is required.")))
        }
        Some(x) => {
            let n = x.as_i64().ok_or_else(|| {
                ModelError::invalid(format!("'{field}' must be an integer, got {x}."))
            })?;
            if n < lo || n > hi {
                return Err(ModelError::out_of_range(field, n, lo, hi));
            }
            Ok(n)
        }
    }
}

/// Last segment of a child reference id (`{"id": ".../probes/p"}`), checked to be of `kind`.
fn child_ref(v: &Value, key: &str, kind: &str) -> Result<Option<String>, ModelError> {
    let Some(r) = v.get(key).filter(|x| !x.is_null()) else {
        return Ok(None);
    };
    let id = r
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| ModelError::invalid(format!("'{key}' must be an object with an 'id'.")))?;
    let mut parts = id.rsplit('/');
    let (name, k) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !k.eq_ignore_ascii_case(kind) || name.is_empty() {
        return Err(ModelError::new(
            "InvalidResourceReference",
            format!("Resource '{id}' referenced by '{key}' is not a {kind} reference."),
        ));
    }
    Ok(Some(name.to_string()))
}

pub fn parse(body: &Value) -> Result<(LbModel, Value), ModelError> {
    if !body.is_object() {
        return Err(ModelError::new(
            "InvalidRequestContent",
            "The request content must be a JSON object.",
        ));
    }
    if let Some(sku) = body.pointer("/sku/name").and_then(Value::as_str) {
        if !sku.eq_ignore_ascii_case("Standard") {
            return Err(ModelError::invalid(format!(
                "Load balancer SKU '{sku}' is not supported locally; only Standard."
            )));
        }
    }
    let l7 = match body.pointer("/tags/scaleset.layer").and_then(Value::as_str) {
        None => true,
        Some(s) if s.eq_ignore_ascii_case("L7") => true,
        Some(s) if s.eq_ignore_ascii_case("L4") => false,
        Some(s) => {
            return Err(ModelError::invalid(format!(
                "Tag scaleset.layer must be L4 or L7, got '{s}'."
            )))
        }
    };
    let frontends = list(body, "frontendIPConfigurations")?
        .iter()
        .map(frontend)
        .collect::<Result<Vec<_>, _>>()?;
    let mut pools = Vec::new();
    for p in list(body, "backendAddressPools")? {
        pools.push(name_of("backend address pool", p)?);
    }
    let probes = list(body, "probes")?
        .iter()
        .map(probe)
        .collect::<Result<Vec<_>, _>>()?;
    let mut rules = Vec::new();
    for r in list(body, "loadBalancingRules")? {
        rules.push(rule(r, &frontends, &pools, &probes)?);
    }
    check_unique(&frontends, &pools, &probes, &rules)?;
    let model = LbModel {
        frontends,
        pools,
        probes,
        rules,
        l7,
    };
    let out = echo(body, &model);
    Ok((model, out))
}

fn frontend(f: &Value) -> Result<(String, IpAddr), ModelError> {
    let name = name_of("frontend IP configuration", f)?;
    let ip = match props(f).get("privateIPAddress").and_then(Value::as_str) {
        None => IpAddr::from([127, 0, 0, 1]),
        Some(s) => s.parse().map_err(|_| {
            ModelError::invalid(format!(
                "privateIPAddress '{s}' of frontend '{name}' is not an IP address."
            ))
        })?,
    };
    Ok((name, ip))
}

fn probe(p: &Value) -> Result<ProbeModel, ModelError> {
    let name = name_of("probe", p)?;
    let pp = props(p);
    let protocol = match pp.get("protocol").and_then(Value::as_str) {
        Some(s) if s.eq_ignore_ascii_case("Tcp") => ProbeProtocol::Tcp,
        Some(s) if s.eq_ignore_ascii_case("Http") => ProbeProtocol::Http,
        Some(s) if s.eq_ignore_ascii_case("Https") => {
            return Err(ModelError::invalid(format!(
                "Probe '{name}': protocol Https is not supported locally; use Http or Tcp."
            )))
        }
        Some(s) => {
            return Err(ModelError::invalid(format!(
            "Probe '{name}': protocol '{s}' is not allowed. Allowed values are: Tcp, Http, Https."
        )))
        }
        None => {
            return Err(ModelError::invalid(format!(
                "Probe '{name}': 'protocol' is required."
            )))
        }
    };
    let port = int(pp, "port", "probe.port", 1, 65535, None)? as u16;
    let request_path = pp.get("requestPath").and_then(Value::as_str).map(|s| {
        if s.starts_with('/') {
            s.to_string()
        } else {
            format!("/{s}")
        }
    });
    match (protocol, &request_path) {
        (ProbeProtocol::Http, None) => {
            return Err(ModelError::invalid(format!(
                "Probe '{name}': requestPath is required for protocol Http."
            )))
        }
        (ProbeProtocol::Tcp, Some(_)) => {
            return Err(ModelError::invalid(format!(
                "Probe '{name}': requestPath is not allowed for protocol Tcp."
            )))
        }
        _ => {}
    }
    let interval = int(
        pp,
        "intervalInSeconds",
        "probe.intervalInSeconds",
        5,
        2147483646,
        Some(5),
    )? as u32;
    let threshold = int(
        pp,
        "probeThreshold",
        "probe.probeThreshold",
        1,
        100,
        Some(1),
    )? as u32;
    let all_probed_up = match pp.get("noHealthyBackendsBehavior").and_then(Value::as_str) {
        None => false,
        Some(s) if s.eq_ignore_ascii_case("AllProbedDown") => false,
        Some(s) if s.eq_ignore_ascii_case("AllProbedUp") => true,
        Some(s) => return Err(ModelError::invalid(format!("Probe '{name}': noHealthyBackendsBehavior '{s}' is not allowed. Allowed values are: AllProbedDown, AllProbedUp."))),
    };
    Ok(ProbeModel {
        name,
        protocol,
        port,
        request_path,
        interval_in_seconds: interval,
        probe_threshold: threshold,
        all_probed_up,
    })
}

/// One load-balancing rule; its references must name the frontends, pools and probes parsed.
fn rule(
    r: &Value,
    frontends: &[(String, IpAddr)],
    pools: &[String],
    probes: &[ProbeModel],
) -> Result<RuleModel, ModelError> {
    let name = name_of("load balancing rule", r)?;
    let rp = props(r);
    match rp.get("protocol").and_then(Value::as_str) {
        Some(s) if s.eq_ignore_ascii_case("Tcp") || s.eq_ignore_ascii_case("All") => {}
        Some(s) if s.eq_ignore_ascii_case("Udp") => {
            return Err(ModelError::invalid(format!(
                "Rule '{name}': protocol Udp is not supported locally; use Tcp."
            )))
        }
        Some(s) => {
            return Err(ModelError::invalid(format!(
                "Rule '{name}': protocol '{s}' is not allowed. Allowed values are: Tcp, Udp, All."
            )))
        }
        None => {
            return Err(ModelError::invalid(format!(
                "Rule '{name}': 'protocol' is required."
            )))
        }
    }
    let frontend_port = int(
        rp,
        "frontendPort",
        "loadBalancingRule.frontendPort",
        0,
        65534,
        None,
    )? as u16;
    if frontend_port == 0 {
        return Err(ModelError::invalid(format!(
            "Rule '{name}': frontendPort 0 (HA ports) is not supported locally."
        )));
    }
    let backend_port = match int(
        rp,
        "backendPort",
        "loadBalancingRule.backendPort",
        0,
        65535,
        Some(0),
    )? as u16
    {
        0 => frontend_port,
        p => p,
    };
    let frontend = child_ref(rp, "frontendIPConfiguration", "frontendIPConfigurations")?
        .or_else(|| (frontends.len() == 1).then(|| frontends[0].0.clone()))
        .ok_or_else(|| {
            ModelError::invalid(format!(
                "Rule '{name}': frontendIPConfiguration is required."
            ))
        })?;
    let pool = child_ref(rp, "backendAddressPool", "backendAddressPools")?
        .or_else(|| (pools.len() == 1).then(|| pools[0].clone()))
        .ok_or_else(|| {
            ModelError::invalid(format!("Rule '{name}': backendAddressPool is required."))
        })?;
    let probe = child_ref(rp, "probe", "probes")?;
    if !frontends.iter().any(|(f, _)| *f == frontend) {
        return Err(ModelError::new("InvalidResourceReference", format!("Rule '{name}' references frontend IP configuration '{frontend}' which does not exist in this load balancer.")));
    }
    if !pools.contains(&pool) {
        return Err(ModelError::new("InvalidResourceReference", format!("Rule '{name}' references backend address pool '{pool}' which does not exist in this load balancer.")));
    }
    if let Some(p) = &probe {
        if !probes.iter().any(|x| x.name == *p) {
            return Err(ModelError::new("InvalidResourceReference", format!("Rule '{name}' references probe '{p}' which does not exist in this load balancer.")));
        }
    }
    let load_distribution = match rp.get("loadDistribution").and_then(Value::as_str) {
        None => Distribution::Default,
        Some(s) if s.eq_ignore_ascii_case("Default") => Distribution::Default,
        Some(s) if s.eq_ignore_ascii_case("SourceIP") => Distribution::SourceIP,
        Some(s) if s.eq_ignore_ascii_case("SourceIPProtocol") => Distribution::SourceIPProtocol,
        Some(s) => return Err(ModelError::invalid(format!("Rule '{name}': loadDistribution '{s}' is not allowed. Allowed values are: Default, SourceIP, SourceIPProtocol."))),
    };
    let idle = int(
        rp,
        "idleTimeoutInMinutes",
        "loadBalancingRule.idleTimeoutInMinutes",
        4,
        30,
        Some(4),
    )? as u32;
    let enable_tcp_reset = rp
        .get("enableTcpReset")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(RuleModel {
        name,
        frontend,
        pool,
        probe,
        frontend_port,
        backend_port,
        load_distribution,
        idle_timeout_in_minutes: idle,
        enable_tcp_reset,
    })
}

/// Names are unique per collection (ignoring case), and so is each frontend address and port.
fn check_unique(
    frontends: &[(String, IpAddr)],
    pools: &[String],
    probes: &[ProbeModel],
    rules: &[RuleModel],
) -> Result<(), ModelError> {
    for (kind, mut names) in [
        (
            "frontend IP configuration",
            frontends.iter().map(|f| f.0.clone()).collect::<Vec<_>>(),
        ),
        ("backend address pool", pools.to_vec()),
        ("probe", probes.iter().map(|p| p.name.clone()).collect()),
        (
            "load balancing rule",
            rules.iter().map(|r| r.name.clone()).collect(),
        ),
    ] {
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0].eq_ignore_ascii_case(&w[1])) {
            return Err(ModelError::invalid(format!(
                "Duplicate {kind} name '{}'.",
                w[0]
            )));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for r in rules {
        let ip = frontends.iter().find(|f| f.0 == r.frontend).map(|f| f.1);
        if !seen.insert((ip, r.frontend_port)) {
            return Err(ModelError::invalid(format!(
                "Rule '{}': another rule already uses frontend {}:{}.",
                r.name,
                ip.map(|i| i.to_string()).unwrap_or_default(),
                r.frontend_port
            )));
        }
    }
    Ok(())
}

/// The body as ARM echoes it back: read-only fields dropped, defaults filled in.
fn echo(body: &Value, model: &LbModel) -> Value {
    let mut out = body.clone();
    if let Some(o) = out.as_object_mut() {
        for k in ["id", "name", "type", "etag"] {
            o.remove(k);
        }
        o.entry("sku")
            .or_insert(json!({"name": "Standard", "tier": "Regional"}));
        o.entry("location")
            .or_insert(json!(crate::DEFAULT_LOCATION));
    }
    // Fill defaults into the echoed body, the way ARM returns them.
    if let Some(arr) = out
        .pointer_mut("/properties/probes")
        .and_then(Value::as_array_mut)
    {
        for (p, m) in arr.iter_mut().zip(&model.probes) {
            let pp = &mut p["properties"];
            pp["intervalInSeconds"] = json!(m.interval_in_seconds);
            pp["probeThreshold"] = json!(m.probe_threshold);
            if pp.get("noHealthyBackendsBehavior").is_none() {
                pp["noHealthyBackendsBehavior"] = json!("AllProbedDown");
            }
        }
    }
    if let Some(arr) = out
        .pointer_mut("/properties/loadBalancingRules")
        .and_then(Value::as_array_mut)
    {
        for (r, m) in arr.iter_mut().zip(&model.rules) {
            let rp = &mut r["properties"];
            rp["backendPort"] = json!(m.backend_port);
            rp["idleTimeoutInMinutes"] = json!(m.idle_timeout_in_minutes);
            rp["loadDistribution"] = json!(format!("{:?}", m.load_distribution));
            rp["enableTcpReset"] = json!(m.enable_tcp_reset);
        }
    }
    if let Some(arr) = out
        .pointer_mut("/properties/frontendIPConfigurations")
        .and_then(Value::as_array_mut)
    {
        for (f, m) in arr.iter_mut().zip(&model.frontends) {
            f["properties"]["privateIPAddress"] = json!(m.1.to_string());
            f["properties"]["privateIPAllocationMethod"] = json!("Static");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(probe: Value, rule: Value) -> Value {
        json!({"properties": {
            "frontendIPConfigurations": [{"name": "fe", "properties": {"privateIPAddress": "127.0.0.1"}}],
            "backendAddressPools": [{"name": "be"}],
            "probes": [probe],
            "loadBalancingRules": [rule],
        }})
    }
    fn probe() -> Value {
        json!({"name": "p", "properties": {"protocol": "Http", "port": 80, "requestPath": "/health"}})
    }
    fn rule() -> Value {
        json!({"name": "r", "properties": {"protocol": "Tcp", "frontendPort": 8080, "backendPort": 80, "probe": {"id": "/x/loadBalancers/lb/probes/p"}}})
    }

    #[test]
    fn ok_and_defaults() {
        let (m, out) = parse(&lb(probe(), rule())).unwrap();
        assert!(m.l7);
        assert_eq!(m.rules[0].frontend, "fe");
        assert_eq!(m.rules[0].pool, "be");
        assert_eq!(m.rules[0].probe.as_deref(), Some("p"));
        assert_eq!(m.rules[0].idle_timeout_in_minutes, 4);
        assert_eq!(m.probes[0].interval_in_seconds, 5);
        assert_eq!(m.probes[0].probe_threshold, 1);
        assert_eq!(
            out["properties"]["probes"][0]["properties"]["noHealthyBackendsBehavior"],
            "AllProbedDown"
        );
    }

    #[test]
    fn errors() {
        let with = |f: &dyn Fn(&mut Value, &mut Value), want: &str| {
            let (mut p, mut r) = (probe(), rule());
            f(&mut p, &mut r);
            let e = parse(&lb(p, r)).unwrap_err();
            assert!(e.message.contains(want), "{want}: {}", e.message);
        };
        with(
            &|p, _| p["properties"]["port"] = json!(0),
            "between 1 and 65535",
        );
        with(
            &|p, _| p["properties"]["intervalInSeconds"] = json!(4),
            "between 5 and",
        );
        with(
            &|p, _| p["properties"]["probeThreshold"] = json!(101),
            "between 1 and 100",
        );
        with(
            &|p, _| p["properties"]["protocol"] = json!("Icmp"),
            "not allowed",
        );
        with(
            &|p, _| {
                p["properties"]
                    .as_object_mut()
                    .unwrap()
                    .remove("requestPath")
                    .map(|_| ())
                    .unwrap_or(())
            },
            "requestPath is required",
        );
        with(
            &|p, _| p["properties"]["noHealthyBackendsBehavior"] = json!("Maybe"),
            "AllProbedDown, AllProbedUp",
        );
        with(
            &|_, r| r["properties"]["idleTimeoutInMinutes"] = json!(31),
            "between 4 and 30",
        );
        with(
            &|_, r| r["properties"]["frontendPort"] = json!(65535),
            "between 0 and 65534",
        );
        with(
            &|_, r| r["properties"]["loadDistribution"] = json!("RoundRobin"),
            "SourceIPProtocol",
        );
        with(
            &|_, r| r["properties"]["protocol"] = json!("Udp"),
            "Udp is not supported",
        );
        with(
            &|_, r| r["properties"]["probe"] = json!({"id": "/x/loadBalancers/lb/probes/nope"}),
            "does not exist",
        );
        with(
            &|_, r| {
                r["properties"]["probe"] =
                    json!({"id": "/x/loadBalancers/lb/backendAddressPools/be"})
            },
            "not a probes reference",
        );
        with(&|_, r| r["name"] = json!("bad name"), "invalid");
        assert!(parse(&json!({"tags": {"scaleset.layer": "L5"}})).is_err());
        assert!(
            !parse(&json!({"tags": {"scaleset.layer": "L4"}}))
                .unwrap()
                .0
                .l7
        );
        let dup = json!({"properties": {"backendAddressPools": [{"name": "be"}, {"name": "BE"}]}});
        assert!(parse(&dup).unwrap_err().message.contains("Duplicate"));
    }
}
