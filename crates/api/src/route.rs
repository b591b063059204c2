//! Request → action. A pure parser over method, path and query, so it can be table-tested and
//! fuzzed without a server. ARM path segments are case-insensitive; names keep their case.
use crate::error::ApiError;
pub use axum::http::Method;

pub use control::{Res, AUTOSCALE, IMAGE, LB, RG, VMSS};
/// The api-version put into the operation URLs we hand out (any valid version is accepted).
pub const COMPUTE_OPERATIONS_API_VERSION: &str = "2024-11-01";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub sub: String,
    pub rg: Option<String>,
}

pub use control::PowerAction;
pub use model::lb_child::LbChild;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    ListGroups {
        sub: String,
    },
    Group {
        method: Method,
        res: Res,
    },
    List {
        kind: &'static str,
        scope: Scope,
    },
    Resource {
        kind: &'static str,
        method: Method,
        res: Res,
    },
    /// A load balancer's child collection (`name` None: the list) or one child.
    LbChild {
        method: Method,
        res: Res,
        child: LbChild,
        name: Option<String>,
    },
    VmssInstanceView(Res),
    /// GET `skus`: the VM sizes the scale set can use (`model::sizes`).
    VmssSkus(Res),
    VmssAction(Res, PowerAction),
    Vms(Res),
    Vm {
        method: Method,
        res: Res,
        instance: String,
    },
    VmInstanceView(Res, String),
    VmAction(Res, String, PowerAction),
    /// POST `virtualMachines/{id}/runCommand` (Azure's RunCommandInput → RunCommandResult).
    RunCommand(Res, String),
    /// POST `virtualMachines/{id}/retrieveBootDiagnosticsData`: where the console log is.
    BootDiagnosticsData(Res, String),
    /// GET `virtualMachines/{id}/serialConsoleLog` (scaleset's): the console log's tail, text.
    SerialConsoleLog(Res, String),
    /// GET `virtualMachines/{id}/journal?unit=&since=&lines=&follow=` (scaleset's): the
    /// instance's journal, text, streamed while `follow`.
    Journal(Res, String),
    /// POST osRollingUpgrade (start), POST rollingUpgrades/cancel, GET rollingUpgrades/latest.
    RollingStart(Res),
    RollingCancel(Res),
    RollingLatest(Res),
    /// POST rollback (scaleset's extension): the model returns to the last one that completed.
    Rollback(Res),
    /// POST setOrchestrationServiceState (suspend or resume automatic repairs).
    SetOrchestrationServiceState(Res),
    /// GET `providers/Microsoft.Insights/metrics` of a scale set (Azure Monitor's host metrics).
    Metrics(Res),
    /// GET `providers/Microsoft.Insights/metricDefinitions` of a scale set.
    MetricDefinitions(Res),
    /// GET `{autoscale setting}/activityLog` (scaleset's extension): the setting's autoscale
    /// events, newest first.
    ActivityLog(Res),
    /// GET the status (`operations/{id}`) or result (`operationResults/{id}`) of a long-running
    /// operation (see `operations.rs`).
    Operation {
        sub: String,
        id: String,
        result: bool,
    },
}

impl Route {
    /// The provider namespace this route belongs to, to check `api-version` against.
    pub fn api_versions(&self) -> &'static [&'static str] {
        let kind = match self {
            Route::Metrics(_) | Route::MetricDefinitions(_) => return model::MONITOR_API_VERSIONS,
            Route::ActivityLog(_) => return model::AUTOSCALE_API_VERSIONS,
            Route::ListGroups { .. } | Route::Group { .. } => RG,
            Route::List { kind, .. } | Route::Resource { kind, .. } => kind,
            Route::LbChild { .. } => LB,
            _ => VMSS,
        };
        match kind {
            LB => model::NETWORK_API_VERSIONS,
            AUTOSCALE => model::AUTOSCALE_API_VERSIONS,
            RG => model::RESOURCES_API_VERSIONS,
            _ => model::COMPUTE_API_VERSIONS,
        }
    }

    /// The resource type Azure names in an api-version refusal.
    fn type_name(&self) -> String {
        match self {
            Route::Metrics(_) => "metrics".into(),
            Route::MetricDefinitions(_) => "metricDefinitions".into(),
            Route::ActivityLog(_) => "autoscalesettings".into(),
            Route::Operation { .. } => "locations/operations".into(),
            Route::LbChild { child, .. } => format!("loadBalancers/{}", child.collection()),
            Route::List { kind, .. } | Route::Resource { kind, .. } => {
                kind.split('/').nth(1).unwrap_or(kind).to_string()
            }
            _ => "virtualMachineScaleSets".into(),
        }
    }

    /// Whether `version` (well-formed) is one this route's resource type speaks. Azure refuses
    /// others with 400: Resource Manager itself for resource groups (`InvalidApiVersionParameter`),
    /// the resource provider's registration for its types (`NoRegisteredProviderFound`).
    pub fn check_api_version(&self, version: &str) -> Result<(), ApiError> {
        let supported = self.api_versions();
        if supported.iter().any(|s| s.eq_ignore_ascii_case(version)) {
            return Ok(());
        }
        if matches!(self, Route::ListGroups { .. } | Route::Group { .. }) {
            return Err(ApiError::bad_request(
                "InvalidApiVersionParameter",
                format!(
                    "The api-version '{version}' is invalid. The supported versions are '{}'.",
                    supported.join(",")
                ),
            ));
        }
        Err(ApiError::bad_request(
            "NoRegisteredProviderFound",
            format!(
                "No registered resource provider found for location '{loc}' and API version '{version}' for type '{}'. The supported api-versions are '{}'. The supported locations are '{loc}'.",
                self.type_name(),
                supported.join(", "),
                loc = model::DEFAULT_LOCATION,
            ),
        ))
    }
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn not_found(path: &str) -> ApiError {
    ApiError::not_found(
        "NotFound",
        format!(
            "No route for '{path}'. See ARCHITECTURE.md for the API surface scaleset implements."
        ),
    )
}

fn method_not_allowed(method: &Method, path: &str) -> ApiError {
    ApiError::Client {
        status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
        code: "MethodNotAllowed",
        message: format!("The method {method} is not allowed on '{path}'."),
    }
}

fn action(name: &str, instance: bool) -> Option<PowerAction> {
    Some(match name.to_ascii_lowercase().as_str() {
        "start" => PowerAction::Start,
        "poweroff" => PowerAction::PowerOff,
        "deallocate" => PowerAction::Deallocate,
        "restart" => PowerAction::Restart,
        "reimage" => PowerAction::Reimage,
        "reimageall" => PowerAction::ReimageAll,
        // One host: moving a machine to another node is stopping and starting it again.
        "redeploy" => PowerAction::Restart,
        "manualupgrade" if !instance => PowerAction::ManualUpgrade,
        "delete" if !instance => PowerAction::DeleteInstances,
        _ => return None,
    })
}

/// Percent-decodes one path segment (`%20` → space); invalid escapes stay as they are.
pub fn decode_segment(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse(method: &Method, path: &str) -> Result<Route, ApiError> {
    let decoded: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(decode_segment)
        .collect();
    let mut segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
    // The SDKs' generic resource calls (`resources.check_existence`, `get`, ...) put the parent
    // resource path between the namespace and the type; a top-level resource's is empty, which
    // leaves `providers/{ns}//{type}/{name}`, and ARM reads it as the resource.
    if segs.len() > 7 && eq(segs[4], "providers") && segs[6].is_empty() {
        segs.remove(6);
    }
    if segs.iter().any(|s| s.is_empty()) || segs.len() < 2 || !eq(segs[0], "subscriptions") {
        return Err(not_found(path));
    }
    let sub = segs[1].to_string();
    model::names::subscription(&sub)?;
    let get_only = |r: Route| {
        if *method == Method::GET {
            Ok(r)
        } else {
            Err(method_not_allowed(method, path))
        }
    };
    let post_only = |r: Route| {
        if *method == Method::POST {
            Ok(r)
        } else {
            Err(method_not_allowed(method, path))
        }
    };
    let allowed = |r: Route, methods: &[Method]| {
        if methods.contains(method) {
            Ok(r)
        } else {
            Err(method_not_allowed(method, path))
        }
    };
    let crud = |r: Route| {
        allowed(
            r,
            &[Method::GET, Method::PUT, Method::PATCH, Method::DELETE],
        )
    };
    // HEAD: ARM's existence check (204 or 404) of resource groups and resources.
    let crud_head = |r: Route| {
        let m = [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ];
        allowed(r, &m)
    };
    if segs.len() == 3 && eq(segs[2], "resourceGroups") {
        return get_only(Route::ListGroups { sub });
    }
    if segs.len() < 4 || !eq(segs[2], "resourceGroups") {
        return Err(not_found(path));
    }
    let rg = segs[3].to_string();
    if segs.len() == 4 {
        return crud_head(Route::Group {
            method: method.clone(),
            res: Res {
                sub,
                rg,
                name: String::new(),
            },
        });
    }
    if segs.len() < 7 || !eq(segs[4], "providers") {
        return Err(not_found(path));
    }
    let kind = match (
        segs[5].to_ascii_lowercase().as_str(),
        segs[6].to_ascii_lowercase().as_str(),
    ) {
        ("microsoft.compute", "virtualmachinescalesets") => VMSS,
        ("microsoft.compute", "images") => IMAGE,
        ("microsoft.network", "loadbalancers") => LB,
        ("microsoft.insights", "autoscalesettings") => AUTOSCALE,
        _ => return Err(not_found(path)),
    };
    if segs.len() == 7 {
        return get_only(Route::List {
            kind,
            scope: Scope { sub, rg: Some(rg) },
        });
    }
    let res = Res {
        sub,
        rg,
        name: segs[7].to_string(),
    };
    let rest = &segs[8..];
    match (kind, rest) {
        (_, []) => crud_head(Route::Resource {
            kind,
            method: method.clone(),
            res,
        }),
        (LB, [c, name @ ..]) if name.len() <= 1 => {
            let Some(child) = LbChild::parse(c) else {
                return Err(not_found(path));
            };
            let methods: &[Method] = match name {
                [_] if child.writable() => &[Method::GET, Method::PUT, Method::DELETE],
                _ => &[Method::GET],
            };
            let r = Route::LbChild {
                method: method.clone(),
                res,
                child,
                name: name.first().map(|n| n.to_string()),
            };
            allowed(r, methods)
        }
        (AUTOSCALE, [v]) if eq(v, "activityLog") => get_only(Route::ActivityLog(res)),
        (VMSS, [v]) if eq(v, "instanceView") => get_only(Route::VmssInstanceView(res)),
        (VMSS, [v]) if eq(v, "skus") => get_only(Route::VmssSkus(res)),
        (VMSS, [v]) if eq(v, "virtualMachines") => get_only(Route::Vms(res)),
        (VMSS, [v]) if eq(v, "osRollingUpgrade") => post_only(Route::RollingStart(res)),
        (VMSS, [v]) if eq(v, "rollback") => post_only(Route::Rollback(res)),
        (VMSS, [v]) if eq(v, "setOrchestrationServiceState") => {
            post_only(Route::SetOrchestrationServiceState(res))
        }
        (VMSS, [r, c]) if eq(r, "rollingUpgrades") && eq(c, "cancel") => {
            post_only(Route::RollingCancel(res))
        }
        (VMSS, [r, l]) if eq(r, "rollingUpgrades") && eq(l, "latest") => {
            get_only(Route::RollingLatest(res))
        }
        (VMSS, [p, ns, m]) if eq(p, "providers") && eq(ns, "Microsoft.Insights") => {
            match m.to_ascii_lowercase().as_str() {
                "metrics" => get_only(Route::Metrics(res)),
                "metricdefinitions" => get_only(Route::MetricDefinitions(res)),
                _ => Err(not_found(path)),
            }
        }
        (VMSS, [a]) => match action(a, false) {
            Some(act) => post_only(Route::VmssAction(res, act)),
            None => Err(not_found(path)),
        },
        (VMSS, [v, id]) if eq(v, "virtualMachines") => crud(Route::Vm {
            method: method.clone(),
            res,
            instance: id.to_string(),
        }),
        (VMSS, [v, id, w]) if eq(v, "virtualMachines") && eq(w, "instanceView") => {
            get_only(Route::VmInstanceView(res, id.to_string()))
        }
        (VMSS, [v, id, a]) if eq(v, "virtualMachines") && eq(a, "runCommand") => {
            post_only(Route::RunCommand(res, id.to_string()))
        }
        (VMSS, [v, id, a]) if eq(v, "virtualMachines") && eq(a, "retrieveBootDiagnosticsData") => {
            post_only(Route::BootDiagnosticsData(res, id.to_string()))
        }
        (VMSS, [v, id, a]) if eq(v, "virtualMachines") && eq(a, "serialConsoleLog") => {
            get_only(Route::SerialConsoleLog(res, id.to_string()))
        }
        (VMSS, [v, id, a]) if eq(v, "virtualMachines") && eq(a, "journal") => {
            get_only(Route::Journal(res, id.to_string()))
        }
        (VMSS, [v, id, a]) if eq(v, "virtualMachines") => match action(a, true) {
            Some(act) => post_only(Route::VmAction(res, id.to_string(), act)),
            None => Err(not_found(path)),
        },
        _ => Err(not_found(path)),
    }
}

/// Long-running operation status: `/subscriptions/{sub}/providers/Microsoft.Compute/locations/
/// {loc}/operations/{id}` and `.../operationResults/{id}`.
pub fn parse_operation(method: &Method, path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    if *method != Method::GET
        || segs.len() != 8
        || !eq(segs[0], "subscriptions")
        || !eq(segs[2], "providers")
        || !eq(segs[3], "Microsoft.Compute")
        || !eq(segs[4], "locations")
    {
        return None;
    }
    let result = match segs[6] {
        s if eq(s, "operations") => false,
        s if eq(s, "operationResults") => true,
        _ => return None,
    };
    Some(Route::Operation {
        sub: segs[1].to_string(),
        id: segs[7].to_string(),
        result,
    })
}

/// Subscription-wide lists: `/subscriptions/{sub}/providers/{ns}/{type}`.
pub fn parse_sub_list(method: &Method, path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    if *method != Method::GET
        || segs.len() != 5
        || !eq(segs[0], "subscriptions")
        || !eq(segs[2], "providers")
    {
        return None;
    }
    let kind = match (
        segs[3].to_ascii_lowercase().as_str(),
        segs[4].to_ascii_lowercase().as_str(),
    ) {
        ("microsoft.compute", "virtualmachinescalesets") => VMSS,
        ("microsoft.compute", "images") => IMAGE,
        ("microsoft.network", "loadbalancers") => LB,
        ("microsoft.insights", "autoscalesettings") => AUTOSCALE,
        _ => return None,
    };
    Some(Route::List {
        kind,
        scope: Scope {
            sub: segs[1].to_string(),
            rg: None,
        },
    })
}

/// What a pipeline run's own credential (the `az` shim's) may do: read, and what a release
/// does to a scale set — update its model (PUT/PATCH), manual or rolling upgrades. Nothing
/// else: no deletes, no power actions, no resource groups, load balancers or images.
pub fn release_may(route: &Route) -> bool {
    let read = |m: &Method| m == Method::GET || m == Method::HEAD;
    match route {
        Route::ListGroups { .. }
        | Route::List { .. }
        | Route::VmssInstanceView(_)
        | Route::VmssSkus(_)
        | Route::Vms(_)
        | Route::VmInstanceView(..)
        | Route::RollingLatest(_)
        | Route::Metrics(_)
        | Route::MetricDefinitions(_)
        | Route::ActivityLog(_)
        | Route::Operation { .. } => true,
        Route::Group { method, .. } | Route::Vm { method, .. } | Route::LbChild { method, .. } => {
            read(method)
        }
        Route::Resource { kind, method, .. } => {
            read(method) || (*kind == VMSS && (method == Method::PUT || method == Method::PATCH))
        }
        Route::VmssAction(_, a) => *a == PowerAction::ManualUpgrade,
        Route::RollingStart(_) | Route::RollingCancel(_) => true,
        Route::VmAction(..) | Route::Rollback(_) | Route::SetOrchestrationServiceState(_) => false,
        // What runs in or reads from inside an instance is the operator's, not a release's.
        Route::RunCommand(..)
        | Route::BootDiagnosticsData(..)
        | Route::SerialConsoleLog(..)
        | Route::Journal(..) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_run_credential_may_do() {
        let p = "/subscriptions/s/resourceGroups/rg/providers";
        let v = format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v");
        let may = |m: Method, path: &str| release_may(&parse(&m, path).unwrap());
        assert!(may(Method::GET, "/subscriptions/s/resourcegroups"));
        assert!(may(Method::GET, &v));
        assert!(may(Method::PUT, &v));
        assert!(may(Method::PATCH, &v));
        assert!(may(Method::POST, &format!("{v}/manualUpgrade")));
        assert!(may(Method::POST, &format!("{v}/osRollingUpgrade")));
        assert!(may(Method::GET, &format!("{v}/rollingUpgrades/latest")));
        assert!(may(
            Method::GET,
            &format!("{v}/providers/Microsoft.Insights/metrics")
        ));
        assert!(may(
            Method::GET,
            &format!("{p}/Microsoft.Network/loadBalancers/lb")
        ));
        assert!(!may(Method::DELETE, &v));
        assert!(!may(Method::POST, &format!("{v}/delete")));
        assert!(!may(Method::POST, &format!("{v}/restart")));
        assert!(!may(
            Method::POST,
            &format!("{v}/virtualMachines/3/powerOff")
        ));
        assert!(!may(Method::POST, &format!("{v}/rollback")));
        for (m, a) in [
            (Method::POST, "runCommand"),
            (Method::POST, "retrieveBootDiagnosticsData"),
            (Method::GET, "serialConsoleLog"),
            (Method::GET, "journal"),
        ] {
            assert!(!may(m, &format!("{v}/virtualMachines/3/{a}")), "{a}");
        }
        assert!(!may(Method::PUT, "/subscriptions/s/resourcegroups/rg2"));
        assert!(!may(Method::DELETE, "/subscriptions/s/resourcegroups/rg"));
        assert!(!may(
            Method::PUT,
            &format!("{p}/Microsoft.Network/loadBalancers/lb")
        ));
        assert!(!may(
            Method::DELETE,
            &format!("{p}/Microsoft.Compute/images/i")
        ));
    }

    #[test]
    fn api_versions_per_resource_type() {
        let p = "/subscriptions/s/resourceGroups/rg/providers";
        let route = |m: Method, path: &str| parse(&m, path).unwrap();
        let vmss = route(
            Method::GET,
            &format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v"),
        );
        let lb = route(
            Method::GET,
            &format!("{p}/Microsoft.Network/loadBalancers/v"),
        );
        let probes = route(
            Method::GET,
            &format!("{p}/Microsoft.Network/loadBalancers/v/probes"),
        );
        let rg = route(Method::HEAD, "/subscriptions/s/resourcegroups/rg");
        let metrics = route(
            Method::GET,
            &format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/providers/Microsoft.Insights/metrics"),
        );
        // (route, version, accepted): what our CLI, the az shim, the SDKs and the tests send.
        let table: Vec<(&Route, &str, bool)> = vec![
            (&vmss, "2024-11-01", true),
            (&vmss, "2024-05-01", false),
            (&lb, "2024-05-01", true),
            (&lb, "2024-11-01", false),
            (&probes, "2024-03-01", true),
            (&rg, "2021-04-01", true),
            (&rg, "2025-04-01", true),
            (&rg, "2024-11-01", true),
            (&rg, "2099-01-01", false),
            (&metrics, "2023-10-01", true),
            (&metrics, "2024-11-01", false),
        ];
        for (r, v, ok) in table {
            assert_eq!(r.check_api_version(v).is_ok(), ok, "{r:?} {v}");
        }
        let msg = |r: &Route, v: &str| match r.check_api_version(v) {
            Err(ApiError::Client {
                status,
                code,
                message,
            }) => (status.as_u16(), code, message),
            other => panic!("{other:?}"),
        };
        let (status, code, message) = msg(&vmss, "2015-01-01");
        assert_eq!((status, code), (400, "NoRegisteredProviderFound"));
        assert!(message.starts_with("No registered resource provider found for location 'local' and API version '2015-01-01' for type 'virtualMachineScaleSets'. The supported api-versions are '2024-11-01, 2024-07-01"), "{message}");
        let (_, _, message) = msg(&probes, "2015-01-01");
        assert!(
            message.contains("for type 'loadBalancers/probes'"),
            "{message}"
        );
        let (status, code, message) = msg(&rg, "2015-01-01");
        assert_eq!((status, code), (400, "InvalidApiVersionParameter"));
        assert!(message.starts_with("The api-version '2015-01-01' is invalid. The supported versions are '2025-04-01,2024-11-01,"), "{message}");
    }

    #[test]
    fn table() {
        let p = "/subscriptions/s/resourceGroups/rg/providers";
        let res = Res {
            sub: "s".into(),
            rg: "rg".into(),
            name: "v".into(),
        };
        let ok: Vec<(Method, String, Route)> = vec![
            (Method::GET, format!("{p}/Microsoft.Compute/virtualMachineScaleSets"), Route::List { kind: VMSS, scope: Scope { sub: "s".into(), rg: Some("rg".into()) } }),
            (Method::PUT, format!("{p}/microsoft.compute/VIRTUALMACHINESCALESETS/v"), Route::Resource { kind: VMSS, method: Method::PUT, res: res.clone() }),
            (Method::POST, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/manualupgrade"), Route::VmssAction(res.clone(), PowerAction::ManualUpgrade)),
            (Method::POST, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/delete"), Route::VmssAction(res.clone(), PowerAction::DeleteInstances)),
            (Method::POST, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/SetOrchestrationServiceState"), Route::SetOrchestrationServiceState(res.clone())),
            (Method::GET, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/virtualMachines"), Route::Vms(res.clone())),
            (Method::GET, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/virtualMachines/3/instanceView"), Route::VmInstanceView(res.clone(), "3".into())),
            (Method::GET, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/SKUS"), Route::VmssSkus(res.clone())),
            (Method::POST, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/virtualMachines/3/powerOff"), Route::VmAction(res.clone(), "3".into(), PowerAction::PowerOff)),
            (Method::POST, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/virtualmachines/3/runCommand"), Route::RunCommand(res.clone(), "3".into())),
            (Method::POST, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/virtualmachines/3/retrieveBootDiagnosticsData"), Route::BootDiagnosticsData(res.clone(), "3".into())),
            (Method::GET, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/virtualMachines/3/serialConsoleLog"), Route::SerialConsoleLog(res.clone(), "3".into())),
            (Method::GET, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/virtualMachines/3/journal"), Route::Journal(res.clone(), "3".into())),
            (Method::DELETE, format!("{p}/Microsoft.Network/loadBalancers/v"), Route::Resource { kind: LB, method: Method::DELETE, res: res.clone() }),
            (Method::PUT, "/subscriptions/s/resourcegroups/rg".into(), Route::Group { method: Method::PUT, res: Res { sub: "s".into(), rg: "rg".into(), name: String::new() } }),
            (Method::GET, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/providers/Microsoft.Insights/metrics"), Route::Metrics(res.clone())),
            (Method::GET, format!("{p}/microsoft.compute/virtualmachinescalesets/v/PROVIDERS/microsoft.insights/METRICDEFINITIONS"), Route::MetricDefinitions(res.clone())),
            (Method::PATCH, format!("{p}/microsoft.insights/AutoscaleSettings/v"), Route::Resource { kind: AUTOSCALE, method: Method::PATCH, res: res.clone() }),
            (Method::GET, format!("{p}/Microsoft.Insights/autoscalesettings"), Route::List { kind: AUTOSCALE, scope: Scope { sub: "s".into(), rg: Some("rg".into()) } }),
            (Method::GET, format!("{p}/Microsoft.Insights/autoscalesettings/v/activitylog"), Route::ActivityLog(res.clone())),
            (Method::HEAD, "/subscriptions/s/resourcegroups/rg".into(), Route::Group { method: Method::HEAD, res: Res { sub: "s".into(), rg: "rg".into(), name: String::new() } }),
            (Method::HEAD, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v"), Route::Resource { kind: VMSS, method: Method::HEAD, res: res.clone() }),
            (Method::HEAD, format!("{p}/Microsoft.Network/loadBalancers/v"), Route::Resource { kind: LB, method: Method::HEAD, res: res.clone() }),
            (Method::HEAD, format!("{p}/Microsoft.Network//loadBalancers/v"), Route::Resource { kind: LB, method: Method::HEAD, res: res.clone() }),
            (Method::POST, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/virtualmachines/3/redeploy"), Route::VmAction(res.clone(), "3".into(), PowerAction::Restart)),
            (Method::GET, format!("{p}/Microsoft.Network/loadBalancers/v/probes"), Route::LbChild { method: Method::GET, res: res.clone(), child: LbChild::Probes, name: None }),
            (Method::PUT, format!("{p}/Microsoft.Network/loadBalancers/v/PROBES/http"), Route::LbChild { method: Method::PUT, res: res.clone(), child: LbChild::Probes, name: Some("http".into()) }),
            (Method::DELETE, format!("{p}/Microsoft.Network/loadBalancers/v/loadBalancingRules/web"), Route::LbChild { method: Method::DELETE, res: res.clone(), child: LbChild::LoadBalancingRules, name: Some("web".into()) }),
            (Method::GET, format!("{p}/Microsoft.Network/loadBalancers/v/backendAddressPools/be"), Route::LbChild { method: Method::GET, res: res.clone(), child: LbChild::BackendAddressPools, name: Some("be".into()) }),
            (Method::GET, format!("{p}/Microsoft.Network/loadBalancers/v/frontendIPConfigurations"), Route::LbChild { method: Method::GET, res: res.clone(), child: LbChild::FrontendIpConfigurations, name: None }),
        ];
        for (m, path, want) in ok {
            assert_eq!(parse(&m, &path).unwrap(), want, "{m} {path}");
        }
        let bad: Vec<(Method, String, u16)> = vec![
            (Method::GET, "/".into(), 404),
            (Method::GET, "/subscriptions".into(), 404),
            (Method::GET, "/subscriptions/bad sub/resourceGroups".into(), 400),
            (Method::GET, format!("{p}/Microsoft.Web/sites"), 404),
            (Method::POST, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v"), 405),
            (Method::GET, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/start"), 405),
            (Method::POST, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/explode"), 404),
            (Method::POST, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/virtualMachines/1/manualupgrade"), 404),
            (Method::GET, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/virtualMachines/1/a/b"), 404),
            (Method::GET, format!("{p}//x"), 404),
            (Method::GET, format!("{p}/Microsoft.Network//loadBalancers/v//probes"), 404),
            (Method::POST, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/providers/Microsoft.Insights/metrics"), 405),
            (Method::GET, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/providers/Microsoft.Insights/diagnosticSettings"), 404),
            (Method::GET, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/providers/Microsoft.Web/metrics"), 404),
            (Method::GET, format!("{p}/Microsoft.Network/loadBalancers/v/providers/Microsoft.Insights/metrics"), 404),
            (Method::POST, format!("{p}/Microsoft.Insights/autoscalesettings/v/activityLog"), 405),
            (Method::GET, format!("{p}/Microsoft.Insights/autoscalesettings/v/instanceView"), 404),
            (Method::POST, format!("{p}/Microsoft.Insights/autoscalesettings/v"), 405),
            (Method::HEAD, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/virtualMachines/1"), 405),
            (Method::HEAD, "/subscriptions/s/resourcegroups".into(), 405),
            (Method::PUT, format!("{p}/Microsoft.Network/loadBalancers/v/probes"), 405),
            (Method::PATCH, format!("{p}/Microsoft.Network/loadBalancers/v/probes/p"), 405),
            (Method::PUT, format!("{p}/Microsoft.Network/loadBalancers/v/backendAddressPools/be"), 405),
            (Method::DELETE, format!("{p}/Microsoft.Network/loadBalancers/v/frontendIPConfigurations/fe"), 405),
            (Method::GET, format!("{p}/Microsoft.Network/loadBalancers/v/inboundNatRules"), 404),
            (Method::GET, format!("{p}/Microsoft.Network/loadBalancers/v/probes/p/x"), 404),
            (Method::GET, format!("{p}/Microsoft.Compute/virtualMachineScaleSets/v/probes"), 404),
        ];
        for (m, path, status) in bad {
            match parse(&m, &path) {
                Err(ApiError::Client { status: s, .. }) => {
                    assert_eq!(s.as_u16(), status, "{m} {path}")
                }
                other => panic!("{m} {path}: {other:?}"),
            }
        }
        assert_eq!(decode_segment("bad%20name"), "bad name");
        assert_eq!(decode_segment("100%"), "100%");
        assert_eq!(decode_segment("%zz%4"), "%zz%4");
        match parse(
            &Method::PUT,
            &format!("{p}/Microsoft.Compute/virtualMachineScaleSets/bad%20name"),
        ) {
            Ok(Route::Resource { res, .. }) => assert_eq!(res.name, "bad name"),
            other => panic!("{other:?}"),
        }
        assert!(parse_sub_list(
            &Method::GET,
            "/subscriptions/s/providers/Microsoft.Network/loadBalancers"
        )
        .is_some());
        assert_eq!(
            parse_sub_list(
                &Method::GET,
                "/subscriptions/s/providers/microsoft.insights/autoscalesettings"
            ),
            Some(Route::List {
                kind: AUTOSCALE,
                scope: Scope {
                    sub: "s".into(),
                    rg: None
                }
            })
        );
        let op = "/subscriptions/s/providers/microsoft.compute/locations/local";
        assert_eq!(
            parse_operation(&Method::GET, &format!("{op}/operationResults/ab")),
            Some(Route::Operation {
                sub: "s".into(),
                id: "ab".into(),
                result: true
            })
        );
        assert!(parse_operation(&Method::GET, &format!("{op}/operations/ab")).is_some());
        assert!(parse_operation(&Method::POST, &format!("{op}/operations/ab")).is_none());
        assert!(parse_operation(&Method::GET, &format!("{op}/other/ab")).is_none());
    }
}
