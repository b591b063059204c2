//! Virtual machine scale set model: parse + validate an ARM body, apply Azure's defaults.
use crate::ids::ResourceId;
use crate::ModelError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum UpgradeMode {
    Automatic,
    #[default]
    Manual,
    Rolling,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ScaleInRule {
    #[default]
    Default,
    NewestVM,
    OldestVM,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RepairAction {
    #[default]
    Replace,
    Restart,
    Reimage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollingUpgradePolicy {
    pub max_batch_instance_percent: u32,
    pub max_unhealthy_instance_percent: u32,
    pub max_unhealthy_upgraded_instance_percent: u32,
    pub pause_time_between_batches_secs: u64,
    pub enable_cross_zone_upgrade: bool,
    pub prioritize_unhealthy_instances: bool,
    pub rollback_failed_instances_on_policy_breach: bool,
    pub max_surge: bool,
}

impl Default for RollingUpgradePolicy {
    fn default() -> Self {
        Self {
            max_batch_instance_percent: 20,
            max_unhealthy_instance_percent: 20,
            max_unhealthy_upgraded_instance_percent: 20,
            pause_time_between_batches_secs: 0,
            enable_cross_zone_upgrade: false,
            prioritize_unhealthy_instances: false,
            rollback_failed_instances_on_policy_breach: false,
            max_surge: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutomaticRepairsPolicy {
    pub enabled: bool,
    pub grace_period_secs: u64,
    pub repair_action: RepairAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppHealthProtocol {
    Http,
    Tcp,
}

/// The Application Health extension (`Microsoft.ManagedServices/ApplicationHealthLinux`) of a
/// scale set: the engine probes each instance's endpoint and this health, not the load
/// balancer's, drives rolling upgrades and automatic repairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppHealthExtension {
    pub name: String,
    pub protocol: AppHealthProtocol,
    pub port: u16,
    /// HTTP only.
    pub request_path: Option<String>,
    pub interval_in_seconds: u32,
    /// Consecutive results needed to change state.
    pub number_of_probes: u32,
    /// Seconds an instance stays Initializing at most after it boots.
    pub grace_period_secs: u32,
    /// typeHandlerVersion 2.x: Rich Health States (Healthy, Unhealthy, Initializing, Unknown);
    /// 1.x: Binary (HTTP 200 or a TCP handshake is Healthy, anything else Unhealthy).
    pub rich: bool,
}

/// Parses the Application Health extension out of `extensionProfile.extensions` (other
/// extensions are refused by `refuse_unimplemented`).
fn app_health(body: &Value) -> Result<Option<AppHealthExtension>, ModelError> {
    let Some(exts) = get(
        body,
        &[
            "properties",
            "virtualMachineProfile",
            "extensionProfile",
            "extensions",
        ],
    ) else {
        return Ok(None);
    };
    let exts = exts
        .as_array()
        .ok_or_else(|| ModelError::invalid("extensionProfile.extensions must be a list."))?;
    let mut found = None;
    for e in exts {
        let ty = string(e, &["properties", "type"], "extensions.properties.type")?.unwrap_or("");
        if ty.eq_ignore_ascii_case("ApplicationHealthWindows") {
            return Err(ModelError::invalid(
                "ApplicationHealthWindows needs Windows instances; scaleset runs Linux machines: use ApplicationHealthLinux.",
            ));
        }
        if !ty.eq_ignore_ascii_case("ApplicationHealthLinux") {
            continue;
        }
        if found.is_some() {
            return Err(ModelError::invalid(
                "A scale set can have only one Application Health extension.",
            ));
        }
        found = Some(app_health_one(e)?);
    }
    Ok(found)
}

/// One ApplicationHealthLinux extension.
fn app_health_one(e: &Value) -> Result<AppHealthExtension, ModelError> {
    let name = string(e, &["name"], "extensions.name")?
        .unwrap_or("HealthExtension")
        .to_string();
    let publisher = string(
        e,
        &["properties", "publisher"],
        "extensions.properties.publisher",
    )?;
    if let Some(p) = publisher {
        if !p.eq_ignore_ascii_case("Microsoft.ManagedServices") {
            return Err(ModelError::invalid(format!(
                "The publisher of ApplicationHealthLinux is Microsoft.ManagedServices, not '{p}'."
            )));
        }
    }
    let version = string(
        e,
        &["properties", "typeHandlerVersion"],
        "extensions.properties.typeHandlerVersion",
    )?
    .unwrap_or("2.0");
    let rich = match version.split('.').next() {
    Some("1") => false,
    Some("2") => true,
    _ => {
        return Err(ModelError::invalid(format!(
            "typeHandlerVersion '{version}' of ApplicationHealthLinux is not supported: use 1.0 (binary health states) or 2.0 (rich health states)."
        )))
    }
};
    let st = |f: &'static str| -> Vec<&'static str> { vec!["properties", "settings", f] };
    let (protocol, port, request_path) = health_endpoint(e)?;
    let interval = int_in(
        e,
        &st("intervalInSeconds"),
        "settings.intervalInSeconds",
        5,
        60,
        5,
    )? as u32;
    let probes = int_in(
        e,
        &st("numberOfProbes"),
        "settings.numberOfProbes",
        1,
        24,
        1,
    )? as u32;
    let grace = int_in(
        e,
        &st("gracePeriod"),
        "settings.gracePeriod",
        0,
        14400,
        (interval * probes) as i64,
    )? as u32;
    Ok(AppHealthExtension {
        name,
        protocol,
        port,
        request_path,
        interval_in_seconds: interval,
        number_of_probes: probes,
        grace_period_secs: grace,
        rich,
    })
}

/// The settings' protocol, port and request path.
fn health_endpoint(e: &Value) -> Result<(AppHealthProtocol, u16, Option<String>), ModelError> {
    let st = |f: &'static str| -> Vec<&'static str> { vec!["properties", "settings", f] };
    let protocol = match string(e, &st("protocol"), "settings.protocol")? {
    None => {
        return Err(ModelError::invalid(
            "The Application Health extension needs settings.protocol (http or tcp).",
        ))
    }
    Some(p) if p.eq_ignore_ascii_case("http") => AppHealthProtocol::Http,
    Some(p) if p.eq_ignore_ascii_case("tcp") => AppHealthProtocol::Tcp,
    Some(p) if p.eq_ignore_ascii_case("https") => {
        return Err(ModelError::invalid(
            "settings.protocol https is not available locally (instances serve plain HTTP behind the load balancer): use http or tcp.",
        ))
    }
    Some(p) => {
        return Err(ModelError::invalid(format!(
            "The value '{p}' of parameter 'settings.protocol' is not allowed. Allowed values are: http, https, tcp."
        )))
    }
};
    let port = match get(e, &st("port")) {
        None if protocol == AppHealthProtocol::Tcp => {
            return Err(ModelError::invalid(
                "settings.port is required when settings.protocol is tcp.",
            ))
        }
        None => 80,
        Some(_) => int_in(e, &st("port"), "settings.port", 1, 65535, 80)? as u16,
    };
    let request_path = string(e, &st("requestPath"), "settings.requestPath")?;
    let request_path = match (protocol, request_path) {
        (AppHealthProtocol::Tcp, Some(_)) => {
            return Err(ModelError::invalid(
                "settings.requestPath is only allowed with protocol http.",
            ))
        }
        (AppHealthProtocol::Tcp, None) => None,
        (AppHealthProtocol::Http, None) => Some("/".to_string()),
        (AppHealthProtocol::Http, Some(p)) => {
            if !p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ModelError::invalid(format!(
                    "settings.requestPath '{p}' must be an absolute path without spaces."
                )));
            }
            Some(p.to_string())
        }
    };
    Ok((protocol, port, request_path))
}

/// The typed, validated view of a scale set's model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmssModel {
    pub capacity: u32,
    pub sku_name: String,
    /// `virtualMachineProfile.storageProfile.imageReference.id`, parsed.
    pub image: Option<ResourceId>,
    pub computer_name_prefix: String,
    pub upgrade_mode: UpgradeMode,
    pub rolling: RollingUpgradePolicy,
    pub scale_in: ScaleInRule,
    pub health_probe: Option<ResourceId>,
    pub backend_pools: Vec<ResourceId>,
    pub repairs: AutomaticRepairsPolicy,
    pub app_health: Option<AppHealthExtension>,
}

/// Largest capacity we accept (Azure's Uniform limit with a platform image is 1000).
pub const MAX_CAPACITY: u64 = 1000;
/// The capacity of a scale set whose body names none (az's default instance count).
pub const DEFAULT_CAPACITY: u64 = 2;

/// Parses an ISO-8601 duration of the form `PnDTnHnMnS` (what Azure uses for
/// pauseTimeBetweenBatches and gracePeriod) into seconds.
pub fn parse_iso8601_duration(s: &str) -> Option<u64> {
    let rest = s.strip_prefix('P').or_else(|| s.strip_prefix('p'))?;
    if rest.is_empty() {
        return None;
    }
    let (date, time) = match rest.find(['T', 't']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let mut total: u64 = 0;
    let mut any = false;
    let mut eat = |part: &str, units: &[(char, u64)]| -> Option<()> {
        let mut num = String::new();
        let mut last_unit = 0usize;
        for c in part.chars() {
            if c.is_ascii_digit() {
                num.push(c);
            } else {
                let pos = units.iter().position(|(u, _)| u.eq_ignore_ascii_case(&c))?;
                if pos < last_unit || num.is_empty() {
                    return None;
                }
                last_unit = pos + 1;
                let n: u64 = num.parse().ok()?;
                total = total.checked_add(n.checked_mul(units[pos].1)?)?;
                num.clear();
                any = true;
            }
        }
        num.is_empty().then_some(())
    };
    eat(date, &[('D', 86400)])?;
    if let Some(t) = time {
        if t.is_empty() {
            return None;
        }
        eat(t, &[('H', 3600), ('M', 60), ('S', 1)])?;
    }
    any.then_some(total)
}

pub fn format_iso8601_duration(secs: u64) -> String {
    if secs == 0 {
        return "PT0S".into();
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::from("PT");
    if h > 0 {
        out += &format!("{h}H");
    }
    if m > 0 {
        out += &format!("{m}M");
    }
    if s > 0 {
        out += &format!("{s}S");
    }
    out
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    (!cur.is_null()).then_some(cur)
}

fn int_in(
    v: &Value,
    path: &[&str],
    field: &str,
    lo: i64,
    hi: i64,
    default: i64,
) -> Result<i64, ModelError> {
    match get(v, path) {
        None => Ok(default),
        Some(x) => {
            let n = x.as_i64().ok_or_else(|| {
                ModelError::invalid(format!(
                    "The value of parameter '{field}' must be an integer, got {x}."
                ))
            })?;
            if n < lo || n > hi {
                return Err(ModelError::out_of_range(field, n, lo, hi));
            }
            Ok(n)
        }
    }
}

fn boolean(v: &Value, path: &[&str], field: &str) -> Result<bool, ModelError> {
    match get(v, path) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(x) => Err(ModelError::invalid(format!(
            "The value of parameter '{field}' must be a boolean, got {x}."
        ))),
    }
}

fn string<'a>(v: &'a Value, path: &[&str], field: &str) -> Result<Option<&'a str>, ModelError> {
    match get(v, path) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(x) => Err(ModelError::invalid(format!(
            "The value of parameter '{field}' must be a string, got {x}."
        ))),
    }
}

fn enum_of<T: Copy>(
    v: &Value,
    path: &[&str],
    field: &str,
    options: &[(&str, T)],
    default: T,
) -> Result<T, ModelError> {
    match string(v, path, field)? {
        None => Ok(default),
        Some(s) => options
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                ModelError::invalid(format!(
                "The value '{s}' of parameter '{field}' is not allowed. Allowed values are: {}.",
                options.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ))
            }),
    }
}

fn duration(v: &Value, path: &[&str], field: &str, default: u64) -> Result<u64, ModelError> {
    match string(v, path, field)? {
        None => Ok(default),
        Some(s) => parse_iso8601_duration(s).ok_or_else(|| ModelError::invalid(format!("The value '{s}' of parameter '{field}' is not a valid ISO 8601 duration (for example PT0S, PT5M, PT1H30M)."))),
    }
}

/// Validates an ARM scale set body (PUT, or the merged result of a PATCH) and returns the typed
/// model and the body with defaults filled in and read-only fields removed.
pub fn parse(body: &Value, default_prefix: &str) -> Result<(VmssModel, Value), ModelError> {
    if !body.is_object() {
        return Err(ModelError::new(
            "InvalidRequestContent",
            "The request content must be a JSON object.",
        ));
    }
    let p = props_path;
    let capacity = int_in(
        body,
        &["sku", "capacity"],
        "sku.capacity",
        0,
        MAX_CAPACITY as i64,
        DEFAULT_CAPACITY as i64,
    )? as u32;
    // Azure's spelling of a known size: it decides the instances' CPU and memory.
    let sku_name = crate::sizes::require(
        string(body, &["sku", "name"], "sku.name")?.unwrap_or("Standard_B1s"),
    )?
    .name
    .to_string();
    let image = image_ref(body)?;
    refuse_unknown_members(body)?;
    refuse_unimplemented(body)?;
    let prefix = computer_name_prefix(body, default_prefix)?;
    let upgrade_mode = enum_of(
        body,
        &p(&["upgradePolicy", "mode"]),
        "upgradePolicy.mode",
        &[
            ("Automatic", UpgradeMode::Automatic),
            ("Manual", UpgradeMode::Manual),
            ("Rolling", UpgradeMode::Rolling),
        ],
        UpgradeMode::Manual,
    )?;
    let rolling = rolling_policy(body)?;
    let scale_in = scale_in_rule(body)?;
    let health_probe = health_probe(body)?;
    let backend_pools = backend_pools(body)?;
    let repairs = repairs_policy(body)?;
    let app_health = app_health(body)?;
    if repairs.enabled && health_probe.is_none() && app_health.is_none() {
        return Err(ModelError::invalid("Automatic repairs need a health source: set virtualMachineProfile.networkProfile.healthProbe.id or add the Application Health extension."));
    }
    if repairs.enabled && health_probe.is_some() && app_health.is_some() {
        return Err(ModelError::invalid("Automatic repairs need exactly one health source: remove either networkProfile.healthProbe or the Application Health extension."));
    }
    if upgrade_mode == UpgradeMode::Rolling && health_probe.is_none() && app_health.is_none() {
        return Err(ModelError::invalid("Rolling upgrade mode requires a health probe: set virtualMachineProfile.networkProfile.healthProbe.id or add the Application Health extension."));
    }
    let model = VmssModel {
        capacity,
        sku_name,
        image,
        computer_name_prefix: prefix.to_string(),
        upgrade_mode,
        rolling,
        scale_in,
        health_probe,
        backend_pools,
        repairs,
        app_health,
    };
    let mut out = body.clone();
    normalize(&mut out, &model);
    Ok((model, out))
}

/// `["properties", rest...]`, the path of a member of the scale set's properties.
fn props_path(rest: &[&'static str]) -> Vec<&'static str> {
    let mut v = vec!["properties"];
    v.extend_from_slice(rest);
    v
}

/// `imageReference.id`, a managed image; marketplace and gallery references are refused.
fn image_ref(body: &Value) -> Result<Option<ResourceId>, ModelError> {
    let p = props_path;
    let image = match string(
        body,
        &p(&[
            "virtualMachineProfile",
            "storageProfile",
            "imageReference",
            "id",
        ]),
        "imageReference.id",
    )? {
        None => None,
        Some(id) => {
            let rid = ResourceId::parse(id)?;
            if !rid.is("Microsoft.Compute", "images") || rid.child.is_some() {
                return Err(ModelError::invalid(format!("imageReference.id '{id}' must reference a managed image (Microsoft.Compute/images/{{name}}).")));
            }
            Some(rid)
        }
    };
    if image.is_none() {
        if let Some(ir) = get(
            body,
            &p(&["virtualMachineProfile", "storageProfile", "imageReference"]),
        ) {
            if ir.get("publisher").is_some() || ir.get("offer").is_some() {
                return Err(ModelError::invalid("Marketplace image references (publisher/offer/sku) are not available locally; use imageReference.id of a managed image baked with `scaleset image bake`."));
            }
            for g in ["sharedGalleryImageId", "communityGalleryImageId"] {
                if ir.get(g).is_some_and(|v| !v.is_null()) {
                    return Err(ModelError::invalid(format!("imageReference.{g}: gallery images are not available locally; use imageReference.id of a managed image baked with `scaleset image bake`.")));
                }
            }
        }
    }
    Ok(image)
}

fn computer_name_prefix<'a>(
    body: &'a Value,
    default_prefix: &'a str,
) -> Result<&'a str, ModelError> {
    let p = props_path;
    let prefix = string(
        body,
        &p(&["virtualMachineProfile", "osProfile", "computerNamePrefix"]),
        "computerNamePrefix",
    )?
    .unwrap_or(default_prefix);
    if prefix.is_empty()
        || prefix.len() > 58
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
        || prefix.starts_with('-')
    {
        return Err(ModelError::invalid(format!("computerNamePrefix '{prefix}' is invalid: 1-58 letters, digits or hyphens, not starting with a hyphen.")));
    }
    Ok(prefix)
}

fn rolling_policy(body: &Value) -> Result<RollingUpgradePolicy, ModelError> {
    let p = props_path;
    let r = p(&["upgradePolicy", "rollingUpgradePolicy"]);
    let rp = |f: &'static str| -> Vec<&'static str> {
        let mut v = r.clone();
        v.push(f);
        v
    };
    let rolling = RollingUpgradePolicy {
        max_batch_instance_percent: int_in(
            body,
            &rp("maxBatchInstancePercent"),
            "rollingUpgradePolicy.maxBatchInstancePercent",
            5,
            100,
            20,
        )? as u32,
        max_unhealthy_instance_percent: int_in(
            body,
            &rp("maxUnhealthyInstancePercent"),
            "rollingUpgradePolicy.maxUnhealthyInstancePercent",
            5,
            100,
            20,
        )? as u32,
        max_unhealthy_upgraded_instance_percent: int_in(
            body,
            &rp("maxUnhealthyUpgradedInstancePercent"),
            "rollingUpgradePolicy.maxUnhealthyUpgradedInstancePercent",
            0,
            100,
            20,
        )? as u32,
        pause_time_between_batches_secs: duration(
            body,
            &rp("pauseTimeBetweenBatches"),
            "rollingUpgradePolicy.pauseTimeBetweenBatches",
            0,
        )?,
        enable_cross_zone_upgrade: boolean(
            body,
            &rp("enableCrossZoneUpgrade"),
            "rollingUpgradePolicy.enableCrossZoneUpgrade",
        )?,
        prioritize_unhealthy_instances: boolean(
            body,
            &rp("prioritizeUnhealthyInstances"),
            "rollingUpgradePolicy.prioritizeUnhealthyInstances",
        )?,
        rollback_failed_instances_on_policy_breach: boolean(
            body,
            &rp("rollbackFailedInstancesOnPolicyBreach"),
            "rollingUpgradePolicy.rollbackFailedInstancesOnPolicyBreach",
        )?,
        max_surge: boolean(body, &rp("maxSurge"), "rollingUpgradePolicy.maxSurge")?,
    };
    if rolling.pause_time_between_batches_secs > 3600 {
        return Err(ModelError::invalid(
            "rollingUpgradePolicy.pauseTimeBetweenBatches must be between PT0S and PT1H.",
        ));
    }
    Ok(rolling)
}

fn scale_in_rule(body: &Value) -> Result<ScaleInRule, ModelError> {
    let p = props_path;
    Ok(match get(body, &p(&["scaleInPolicy", "rules"])) {
        None => ScaleInRule::Default,
        Some(Value::Array(rules)) if rules.len() <= 1 => match rules.first() {
            None => ScaleInRule::Default,
            Some(rule) => enum_of(
                &json!({"r": rule}),
                &["r"],
                "scaleInPolicy.rules",
                &[
                    ("Default", ScaleInRule::Default),
                    ("NewestVM", ScaleInRule::NewestVM),
                    ("OldestVM", ScaleInRule::OldestVM),
                ],
                ScaleInRule::Default,
            )?,
        },
        Some(_) => return Err(ModelError::invalid(
            "scaleInPolicy.rules must be a list with at most one of Default, NewestVM, OldestVM.",
        )),
    })
}

/// `networkProfile.healthProbe.id`, a load balancer probe.
fn health_probe(body: &Value) -> Result<Option<ResourceId>, ModelError> {
    let p = props_path;
    Ok(
        match string(
            body,
            &p(&[
                "virtualMachineProfile",
                "networkProfile",
                "healthProbe",
                "id",
            ]),
            "healthProbe.id",
        )? {
            None => None,
            Some(id) => {
                let rid = ResourceId::parse(id)?;
                if !rid.is("Microsoft.Network", "loadBalancers")
                    || !matches!(&rid.child, Some((k, _)) if k.eq_ignore_ascii_case("probes"))
                {
                    return Err(ModelError::invalid(format!("healthProbe.id '{id}' must reference a load balancer probe (.../loadBalancers/{{lb}}/probes/{{probe}}).")));
                }
                Some(rid)
            }
        },
    )
}

/// The load balancer backend pools the instances' NICs join.
fn backend_pools(body: &Value) -> Result<Vec<ResourceId>, ModelError> {
    let p = props_path;
    let mut backend_pools = Vec::new();
    if let Some(nics) = get(
        body,
        &p(&[
            "virtualMachineProfile",
            "networkProfile",
            "networkInterfaceConfigurations",
        ]),
    ) {
        let nics = nics
            .as_array()
            .ok_or_else(|| ModelError::invalid("networkInterfaceConfigurations must be a list."))?;
        for nic in nics {
            for ipc in nic
                .pointer("/properties/ipConfigurations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for pool in ipc
                    .pointer("/properties/loadBalancerBackendAddressPools")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let id = pool.get("id").and_then(Value::as_str).ok_or_else(|| {
                        ModelError::invalid("loadBalancerBackendAddressPools entries need an 'id'.")
                    })?;
                    let rid = ResourceId::parse(id)?;
                    if !rid.is("Microsoft.Network", "loadBalancers")
                        || !matches!(&rid.child, Some((k, _)) if k.eq_ignore_ascii_case("backendAddressPools"))
                    {
                        return Err(ModelError::invalid(format!(
                            "'{id}' is not a load balancer backend address pool id."
                        )));
                    }
                    backend_pools.push(rid);
                }
            }
        }
    }
    Ok(backend_pools)
}

fn repairs_policy(body: &Value) -> Result<AutomaticRepairsPolicy, ModelError> {
    let p = props_path;
    let a = p(&["automaticRepairsPolicy"]);
    let ap = |f: &'static str| -> Vec<&'static str> {
        let mut v = a.clone();
        v.push(f);
        v
    };
    let repairs = AutomaticRepairsPolicy {
        enabled: boolean(body, &ap("enabled"), "automaticRepairsPolicy.enabled")?,
        grace_period_secs: duration(
            body,
            &ap("gracePeriod"),
            "automaticRepairsPolicy.gracePeriod",
            600,
        )?,
        repair_action: enum_of(
            body,
            &ap("repairAction"),
            "automaticRepairsPolicy.repairAction",
            &[
                ("Replace", RepairAction::Replace),
                ("Restart", RepairAction::Restart),
                ("Reimage", RepairAction::Reimage),
            ],
            RepairAction::Replace,
        )?,
    };
    if !(600..=5400).contains(&repairs.grace_period_secs) {
        return Err(ModelError::invalid(
            "automaticRepairsPolicy.gracePeriod must be between PT10M and PT90M.",
        ));
    }
    Ok(repairs)
}

/// The members of the scale set objects scaleset reads, as Microsoft's spec (compute 2024-11-01)
/// declares them (space-separated), with the object type names Azure's errors use. The API's
/// contract test checks this table against the spec, so it neither refuses valid input nor
/// drifts.
pub const MEMBERS: &[(&str, &str, &str)] = &[
    ("", "VirtualMachineScaleSet", "etag extendedLocation id identity location name plan properties sku tags type zones"),
    ("sku", "Sku", "capacity name tier"),
    ("properties", "VirtualMachineScaleSetProperties", "additionalCapabilities automaticRepairsPolicy constrainedMaximumCapacity doNotRunExtensionsOnOverprovisionedVMs hostGroup orchestrationMode overprovision platformFaultDomainCount priorityMixPolicy provisioningState proximityPlacementGroup resiliencyPolicy scaleInPolicy scheduledEventsPolicy singlePlacementGroup skuProfile spotRestorePolicy timeCreated uniqueId upgradePolicy virtualMachineProfile zonalPlatformFaultDomainAlignMode zoneBalance"),
    ("properties.upgradePolicy", "UpgradePolicy", "automaticOSUpgradePolicy mode rollingUpgradePolicy"),
    ("properties.upgradePolicy.rollingUpgradePolicy", "RollingUpgradePolicy", "enableCrossZoneUpgrade maxBatchInstancePercent maxSurge maxUnhealthyInstancePercent maxUnhealthyUpgradedInstancePercent pauseTimeBetweenBatches prioritizeUnhealthyInstances rollbackFailedInstancesOnPolicyBreach"),
    ("properties.automaticRepairsPolicy", "AutomaticRepairsPolicy", "enabled gracePeriod repairAction"),
    ("properties.scaleInPolicy", "ScaleInPolicy", "forceDeletion prioritizeUnhealthyVMs rules"),
    ("properties.virtualMachineProfile", "VirtualMachineScaleSetVMProfile", "applicationProfile billingProfile capacityReservation diagnosticsProfile evictionPolicy extensionProfile hardwareProfile licenseType networkProfile osProfile priority scheduledEventsProfile securityPostureReference securityProfile serviceArtifactReference storageProfile timeCreated userData"),
    ("properties.virtualMachineProfile.osProfile", "VirtualMachineScaleSetOSProfile", "adminPassword adminUsername allowExtensionOperations computerNamePrefix customData linuxConfiguration requireGuestProvisionSignal secrets windowsConfiguration"),
    ("properties.virtualMachineProfile.storageProfile", "VirtualMachineScaleSetStorageProfile", "dataDisks diskControllerType imageReference osDisk"),
    ("properties.virtualMachineProfile.storageProfile.imageReference", "ImageReference", "communityGalleryImageId exactVersion id offer publisher sharedGalleryImageId sku version"),
    ("properties.virtualMachineProfile.networkProfile", "VirtualMachineScaleSetNetworkProfile", "healthProbe networkApiVersion networkInterfaceConfigurations"),
    ("properties.virtualMachineProfile.networkProfile.healthProbe", "ApiEntityReference", "id"),
];

/// Azure's Compute RP refuses members its types do not have (a misspelt `healthProbe` would
/// otherwise be stored and silently do nothing); names compare case-insensitively, as there.
fn refuse_unknown_members(body: &Value) -> Result<(), ModelError> {
    for (path, ty, members) in MEMBERS {
        let mut cur = Some(body);
        for part in path.split('.').filter(|p| !p.is_empty()) {
            cur = cur.and_then(|v| v.get(part));
        }
        let Some(obj) = cur.and_then(Value::as_object) else {
            continue;
        };
        for k in obj.keys() {
            if !members.split(' ').any(|m| m.eq_ignore_ascii_case(k)) {
                let at = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                return Err(ModelError::new(
                    "InvalidRequestContent",
                    format!("The request content was invalid and could not be deserialized: Could not find member '{k}' on object of type '{ty}'. Path '{at}'."),
                ));
            }
        }
    }
    Ok(())
}

/// Settings that would silently do nothing here although the user relies on them to get a working
/// scale set are refused with a clear error instead of being stored (ARCHITECTURE.md, "API
/// contract"). Settings without such an effect (zones, priority, diagnostics, ...) are stored and
/// returned.
fn refuse_unimplemented(body: &Value) -> Result<(), ModelError> {
    if let Some(mode) = string(
        body,
        &["properties", "orchestrationMode"],
        "orchestrationMode",
    )? {
        if !mode.eq_ignore_ascii_case("Uniform") {
            return Err(ModelError::invalid(format!(
                "orchestrationMode '{mode}' is not available locally; scale sets here are Uniform."
            )));
        }
    }
    let vp = ["properties", "virtualMachineProfile"];
    let has = |rest: &[&str]| {
        let mut path = vp.to_vec();
        path.extend_from_slice(rest);
        get(body, &path).is_some_and(|v| match v {
            Value::Array(a) => !a.is_empty(),
            Value::String(s) => !s.is_empty(),
            _ => true,
        })
    };
    // The Application Health extension is run (by the engine, from the host); others are not.
    if let Some(exts) = get(
        body,
        &[
            "properties",
            "virtualMachineProfile",
            "extensionProfile",
            "extensions",
        ],
    )
    .and_then(Value::as_array)
    {
        for e in exts {
            let ty = e
                .pointer("/properties/type")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !ty.eq_ignore_ascii_case("ApplicationHealthLinux")
                && !ty.eq_ignore_ascii_case("ApplicationHealthWindows")
            {
                return Err(ModelError::invalid("VM extensions (virtualMachineProfile.extensionProfile.extensions) other than the Application Health extension (ApplicationHealthLinux) are not run locally; put the setup into the image (`scaleset image bake`, or PackerBuild@1 in a pipeline)."));
            }
        }
    }
    for (field, what) in [
        (&["osProfile", "customData"][..], "osProfile.customData"),
        (&["userData"][..], "userData"),
    ] {
        if has(field) {
            return Err(ModelError::invalid(format!("virtualMachineProfile.{what} is not run locally (there is no cloud-init); put the setup into the image (`scaleset image bake`).")));
        }
    }
    Ok(())
}

fn obj<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    if !v.get(key).is_some_and(Value::is_object) {
        v[key] = json!({});
    }
    &mut v[key]
}

fn normalize(body: &mut Value, m: &VmssModel) {
    if let Some(o) = body.as_object_mut() {
        for k in ["id", "name", "type", "etag"] {
            o.remove(k);
        }
    }
    let sku = obj(body, "sku");
    sku["name"] = json!(m.sku_name);
    sku["capacity"] = json!(m.capacity);
    if sku.get("tier").is_none() {
        sku["tier"] = json!("Standard");
    }
    if body.get("location").and_then(Value::as_str).is_none() {
        body["location"] = json!(crate::DEFAULT_LOCATION);
    }
    let props = obj(body, "properties");
    if let Some(o) = props.as_object_mut() {
        for k in ["provisioningState", "uniqueId", "timeCreated"] {
            o.remove(k);
        }
    }
    let up = obj(props, "upgradePolicy");
    up["mode"] = json!(format!("{:?}", m.upgrade_mode));
    let r = &m.rolling;
    up["rollingUpgradePolicy"] = json!({
        "maxBatchInstancePercent": r.max_batch_instance_percent,
        "maxUnhealthyInstancePercent": r.max_unhealthy_instance_percent,
        "maxUnhealthyUpgradedInstancePercent": r.max_unhealthy_upgraded_instance_percent,
        "pauseTimeBetweenBatches": format_iso8601_duration(r.pause_time_between_batches_secs),
        "enableCrossZoneUpgrade": r.enable_cross_zone_upgrade,
        "prioritizeUnhealthyInstances": r.prioritize_unhealthy_instances,
        "rollbackFailedInstancesOnPolicyBreach": r.rollback_failed_instances_on_policy_breach,
        "maxSurge": r.max_surge,
    });
    props["scaleInPolicy"] = json!({"rules": [format!("{:?}", m.scale_in)]});
    props["automaticRepairsPolicy"] = json!({
        "enabled": m.repairs.enabled,
        "gracePeriod": format_iso8601_duration(m.repairs.grace_period_secs),
        "repairAction": format!("{:?}", m.repairs.repair_action),
    });
    let vp = obj(props, "virtualMachineProfile");
    let os = obj(vp, "osProfile");
    os["computerNamePrefix"] = json!(m.computer_name_prefix);
    if props.get("overprovision").is_none() {
        props["overprovision"] = json!(false);
    }
    if props.get("orchestrationMode").is_none() {
        props["orchestrationMode"] = json!("Uniform");
    }
}

/// Merges a PATCH body into the existing resource (RFC 7386 JSON merge patch, which is what ARM
/// PATCH does for the properties we implement).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (s, want) in [
            ("PT0S", Some(0)),
            ("PT5M", Some(300)),
            ("PT1H30M", Some(5400)),
            ("P1DT1S", Some(86401)),
            ("PT10M", Some(600)),
            ("P", None),
            ("PT", None),
            ("5M", None),
            ("PT5X", None),
            ("PTM", None),
            ("PT5S5M", None),
            ("PT90M", Some(5400)),
        ] {
            assert_eq!(parse_iso8601_duration(s), want, "{s}");
        }
        for secs in [0, 1, 59, 60, 61, 3600, 3661, 5400] {
            assert_eq!(
                parse_iso8601_duration(&format_iso8601_duration(secs)),
                Some(secs)
            );
        }
    }

    fn body(props: Value) -> Value {
        json!({"sku": {"capacity": 3}, "properties": props})
    }

    #[test]
    fn defaults() {
        let (m, out) = parse(&body(json!({})), "vm").unwrap();
        assert_eq!(m.capacity, 3);
        assert_eq!(m.upgrade_mode, UpgradeMode::Manual);
        assert_eq!(m.rolling, RollingUpgradePolicy::default());
        assert_eq!(m.scale_in, ScaleInRule::Default);
        assert_eq!(
            out["properties"]["upgradePolicy"]["rollingUpgradePolicy"]["pauseTimeBetweenBatches"],
            "PT0S"
        );
        assert_eq!(
            out["properties"]["virtualMachineProfile"]["osProfile"]["computerNamePrefix"],
            "vm"
        );
        assert_eq!(out["location"], "local");
        assert_eq!(m.repairs.grace_period_secs, 600);
    }

    #[test]
    fn validation_table() {
        let probe = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/lb/probes/p";
        let cases: Vec<(Value, Option<&str>)> = vec![
            (json!({"sku": {"capacity": -1}}), Some("out of range")),
            (json!({"sku": {"capacity": 1001}}), Some("out of range")),
            (json!({"sku": {"name": "Standard_A0"}}), Some("provided for the VM size is not valid")),
            (json!({"sku": {"name": "standard_b2s"}}), None),
            (
                json!({"sku": {"capacity": "3"}}),
                Some("must be an integer"),
            ),
            (
                body(json!({"upgradePolicy": {"mode": "Sometimes"}})),
                Some("Allowed values are: Automatic, Manual, Rolling"),
            ),
            (
                body(json!({"upgradePolicy": {"mode": "rolling"}})),
                Some("requires a health probe"),
            ),
            (
                body(
                    json!({"upgradePolicy": {"mode": "Rolling"}, "virtualMachineProfile": {"networkProfile": {"healthProbe": {"id": probe}}}}),
                ),
                None,
            ),
            (
                body(
                    json!({"upgradePolicy": {"rollingUpgradePolicy": {"maxBatchInstancePercent": 4}}}),
                ),
                Some("between 5 and 100"),
            ),
            (
                body(
                    json!({"upgradePolicy": {"rollingUpgradePolicy": {"maxBatchInstancePercent": 101}}}),
                ),
                Some("between 5 and 100"),
            ),
            (
                body(
                    json!({"upgradePolicy": {"rollingUpgradePolicy": {"maxUnhealthyUpgradedInstancePercent": 0}}}),
                ),
                None,
            ),
            (
                body(
                    json!({"upgradePolicy": {"rollingUpgradePolicy": {"maxUnhealthyInstancePercent": 3}}}),
                ),
                Some("between 5 and 100"),
            ),
            (
                body(
                    json!({"upgradePolicy": {"rollingUpgradePolicy": {"pauseTimeBetweenBatches": "5 minutes"}}}),
                ),
                Some("ISO 8601"),
            ),
            (
                body(json!({"upgradePolicy": {"rollingUpgradePolicy": {"maxSurge": "yes"}}})),
                Some("boolean"),
            ),
            (
                body(json!({"scaleInPolicy": {"rules": ["OldestVM"]}})),
                None,
            ),
            (
                body(json!({"scaleInPolicy": {"rules": ["Random"]}})),
                Some("Allowed values"),
            ),
            (
                body(json!({"automaticRepairsPolicy": {"enabled": true, "gracePeriod": "PT5M"}})),
                Some("between PT10M and PT90M"),
            ),
            (
                body(json!({"automaticRepairsPolicy": {"enabled": true}})),
                Some("health source"),
            ),
            (
                body(
                    json!({"virtualMachineProfile": {"storageProfile": {"imageReference": {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/120"}}}}),
                ),
                None,
            ),
            (
                body(
                    json!({"virtualMachineProfile": {"storageProfile": {"imageReference": {"id": "nonsense"}}}}),
                ),
                Some("invalid"),
            ),
            (
                body(
                    json!({"virtualMachineProfile": {"storageProfile": {"imageReference": {"publisher": "Canonical", "offer": "x"}}}}),
                ),
                Some("Marketplace"),
            ),
            (
                body(
                    json!({"virtualMachineProfile": {"osProfile": {"computerNamePrefix": "bad_prefix"}}}),
                ),
                Some("computerNamePrefix"),
            ),
            (
                body(
                    json!({"virtualMachineProfile": {"networkProfile": {"healthProbe": {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/lb"}}}}),
                ),
                Some("probe"),
            ),
            (json!([1, 2]), Some("JSON object")),
            (
                ext(json!({"protocol": "http", "port": 80, "requestPath": "/health"})),
                None,
            ),
            (ext(json!({"protocol": "tcp", "port": 80})), None),
            (
                ext(json!({"protocol": "tcp"})),
                Some("settings.port is required"),
            ),
            (
                ext(json!({"protocol": "tcp", "port": 80, "requestPath": "/"})),
                Some("only allowed with protocol http"),
            ),
            (
                ext(json!({"protocol": "https", "port": 443})),
                Some("https is not available"),
            ),
            (
                ext(json!({"protocol": "udp"})),
                Some("Allowed values are: http, https, tcp"),
            ),
            (ext(json!({"port": 80})), Some("settings.protocol")),
            (
                ext(json!({"protocol": "http", "port": 0})),
                Some("settings.port"),
            ),
            (
                ext(json!({"protocol": "http", "intervalInSeconds": 4})),
                Some("settings.intervalInSeconds"),
            ),
            (
                ext(json!({"protocol": "http", "numberOfProbes": 25})),
                Some("settings.numberOfProbes"),
            ),
            (
                ext(json!({"protocol": "http", "gracePeriod": 14401})),
                Some("settings.gracePeriod"),
            ),
            (
                ext(json!({"protocol": "http", "requestPath": "health"})),
                Some("absolute path"),
            ),
            (
                json!({"sku": {"capacity": 1}, "properties": {"upgradePolicy": {"mode": "Rolling"}, "virtualMachineProfile": {"extensionProfile": {"extensions": [
                    {"name": "h", "properties": {"publisher": "Microsoft.ManagedServices", "type": "ApplicationHealthLinux", "typeHandlerVersion": "2.0", "settings": {"protocol": "http"}}}]}}}}),
                None,
            ),
            (
                json!({"sku": {"capacity": 1}, "properties": {"automaticRepairsPolicy": {"enabled": true}, "virtualMachineProfile": {"networkProfile": {"healthProbe": {"id": probe}}, "extensionProfile": {"extensions": [
                    {"name": "h", "properties": {"publisher": "Microsoft.ManagedServices", "type": "ApplicationHealthLinux", "typeHandlerVersion": "2.0", "settings": {"protocol": "http"}}}]}}}}),
                Some("exactly one health source"),
            ),
            (
                json!({"sku": {"capacity": 1}, "properties": {"virtualMachineProfile": {"extensionProfile": {"extensions": [
                    {"name": "h", "properties": {"publisher": "Contoso", "type": "ApplicationHealthLinux", "typeHandlerVersion": "2.0", "settings": {"protocol": "http"}}}]}}}}),
                Some("Microsoft.ManagedServices"),
            ),
            (
                json!({"sku": {"capacity": 1}, "properties": {"virtualMachineProfile": {"extensionProfile": {"extensions": [
                    {"name": "h", "properties": {"type": "ApplicationHealthLinux", "typeHandlerVersion": "3.0", "settings": {"protocol": "http"}}}]}}}}),
                Some("typeHandlerVersion"),
            ),
            (
                body(json!({"orchestrationMode": "Flexible"})),
                Some("Uniform"),
            ),
            (body(json!({"orchestrationMode": "Uniform"})), None),
            (
                body(json!({"virtualMachineProfile": {"networkProfile": {"healtProbe": {"id": probe}}}})),
                Some("Could not find member 'healtProbe' on object of type 'VirtualMachineScaleSetNetworkProfile'. Path 'properties.virtualMachineProfile.networkProfile.healtProbe'"),
            ),
            (json!({"sku": {"capacity": 1}, "propertie": {}}), Some("Path 'propertie'")),
            (
                body(json!({"virtualMachineProfile": {"storageProfile": {"imageReference": {"sharedGalleryImageId": "/SharedGalleries/g/Images/i/Versions/1"}}}})),
                Some("gallery images"),
            ),
            (
                body(json!({"UPGRADEPOLICY": {"Mode": "Manual"}, "provisioningState": "Succeeded"})),
                None,
            ),
            (
                body(
                    json!({"virtualMachineProfile": {"extensionProfile": {"extensions": [{"name": "cse"}]}}}),
                ),
                Some("extensions"),
            ),
            (
                body(json!({"virtualMachineProfile": {"extensionProfile": {"extensions": []}}})),
                None,
            ),
            (
                body(
                    json!({"virtualMachineProfile": {"osProfile": {"customData": "IyEvYmluL3No"}}}),
                ),
                Some("cloud-init"),
            ),
            (
                body(json!({"virtualMachineProfile": {"userData": "IyEvYmluL3No"}})),
                Some("userData"),
            ),
        ];
        for (b, want) in cases {
            match (parse(&b, "vm"), want) {
                (Ok(_), None) => {}
                (Err(e), Some(msg)) => assert!(e.message.contains(msg), "{b}: {}", e.message),
                (r, w) => panic!("{b}: got {r:?}, want {w:?}"),
            }
        }
    }

    fn ext(settings: Value) -> Value {
        json!({"sku": {"capacity": 1}, "properties": {"virtualMachineProfile": {"extensionProfile": {"extensions": [
            {"name": "HealthExtension", "properties": {"publisher": "Microsoft.ManagedServices", "type": "ApplicationHealthLinux", "typeHandlerVersion": "1.0", "settings": settings}}]}}}})
    }

    #[test]
    fn app_health_defaults() {
        let (m, _) = parse(&ext(json!({"protocol": "http"})), "vm").unwrap();
        assert_eq!(
            m.app_health,
            Some(AppHealthExtension {
                name: "HealthExtension".into(),
                protocol: AppHealthProtocol::Http,
                port: 80,
                request_path: Some("/".into()),
                interval_in_seconds: 5,
                number_of_probes: 1,
                grace_period_secs: 5,
                rich: false,
            })
        );
        let (m, _) = parse(
            &ext(json!({"protocol": "tcp", "port": 8080, "intervalInSeconds": 10, "numberOfProbes": 3})),
            "vm",
        )
        .unwrap();
        let a = m.app_health.unwrap();
        assert_eq!(
            (a.port, a.grace_period_secs, a.request_path),
            (8080, 30, None)
        );
        let (m, _) = parse(&body(json!({})), "vm").unwrap();
        assert_eq!(m.app_health, None);
    }

    #[test]
    fn backend_pools_and_patch() {
        let pool = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/lb/backendAddressPools/be";
        let mut b = body(
            json!({"virtualMachineProfile": {"networkProfile": {"networkInterfaceConfigurations": [{"name": "n", "properties": {"ipConfigurations": [{"name": "i", "properties": {"loadBalancerBackendAddressPools": [{"id": pool}]}}]}}]}}}),
        );
        let (m, _) = parse(&b, "vm").unwrap();
        assert_eq!(m.backend_pools.len(), 1);
        assert_eq!(m.backend_pools[0].name, "lb");
        merge_patch(
            &mut b,
            &json!({"sku": {"capacity": 5}, "properties": {"upgradePolicy": {"mode": "Automatic"}}}),
        );
        let (m, _) = parse(&b, "vm").unwrap();
        assert_eq!(
            (m.capacity, m.upgrade_mode, m.backend_pools.len()),
            (5, UpgradeMode::Automatic, 1)
        );
    }
}
