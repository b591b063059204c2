//! The API in-process (`app()` + tower's oneshot): ARM paths, validation, errors, auth. The
//! engine is not running, so nothing boots; these tests check what the API accepts, rejects and
//! stores.
mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::Env;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const SETUP: common::Setup = common::Setup {
    kind: "api",
    subnet: "10.213.250.0/24",
    listen: "127.0.0.1:0",
    prefix: "t",
};

fn env(tag: &str) -> Env {
    common::env_with(&SETUP, tag, common::nspawn("t"))
}

const SUB: &str = "/subscriptions/00000000-0000-0000-0000-000000000000";

async fn call(e: &Env, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    call_raw(
        e,
        method,
        &format!(
            "{path}{}api-version={}",
            if path.contains('?') { "&" } else { "?" },
            // Each resource type answers only its own versions (as Azure).
            if path.contains("Microsoft.Network") {
                "2024-05-01"
            } else {
                "2024-11-01"
            }
        ),
        body.map(|b| b.to_string()),
        true,
    )
    .await
}

async fn call_raw(
    e: &Env,
    method: &str,
    uri: &str,
    body: Option<String>,
    auth: bool,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if auth {
        req = req.header("authorization", format!("Bearer {}", e.st.auth.token));
    }
    let resp = api::app(e.st.clone())
        .oneshot(req.body(Body::from(body.unwrap_or_default())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        },
    )
}

fn lb_body() -> Value {
    let id = format!("{SUB}/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/lb");
    json!({"location": "local", "properties": {
        "frontendIPConfigurations": [{"name": "fe", "properties": {"privateIPAddress": "127.0.0.1"}}],
        "backendAddressPools": [{"name": "be"}],
        "probes": [{"name": "p", "properties": {"protocol": "Http", "port": 80, "requestPath": "/health"}}],
        "loadBalancingRules": [{"name": "r", "properties": {"protocol": "Tcp", "frontendPort": 18080, "backendPort": 80,
            "frontendIPConfiguration": {"id": format!("{id}/frontendIPConfigurations/fe")},
            "backendAddressPool": {"id": format!("{id}/backendAddressPools/be")},
            "probe": {"id": format!("{id}/probes/p")}}}],
    }})
}

#[tokio::test]
async fn auth_and_api_version() {
    let e = env("auth");
    let (s, v) = call_raw(
        &e,
        "GET",
        &format!("{SUB}/resourceGroups?api-version=2021-04-01"),
        None,
        false,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "AuthenticationFailed");
    let mut req = Request::builder()
        .uri(format!("{SUB}/resourceGroups?api-version=2021-04-01"))
        .header("authorization", "Bearer nope");
    req = req.header("content-type", "application/json");
    let resp = api::app(e.st.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (s, v) = call_raw(&e, "GET", &format!("{SUB}/resourceGroups"), None, true).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("MissingApiVersionParameter"))
    );
    let (s, v) = call_raw(
        &e,
        "GET",
        &format!("{SUB}/resourceGroups?api-version=yesterday"),
        None,
        true,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("InvalidApiVersionParameter"))
    );
    let mode = std::fs::metadata(e.dir.join("token"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600);
}

#[tokio::test]
async fn resources_and_validation() {
    let e = env("res");
    let rg = format!("{SUB}/resourceGroups/rg");
    let vmss = format!("{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/vmss1");
    let lb = format!("{rg}/providers/Microsoft.Network/loadBalancers/lb");

    // Nothing exists yet.
    let (s, v) = call(&e, "PUT", &lb, Some(lb_body())).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("ResourceGroupNotFound"))
    );
    assert_eq!(
        call(&e, "PUT", &rg, Some(json!({"location": "local"})))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        call(&e, "PUT", &rg, Some(json!({"location": "local"})))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(
            &e,
            "PUT",
            &format!("{SUB}/resourceGroups/bad."),
            Some(json!({}))
        )
        .await
        .1["error"]["code"],
        "InvalidResourceName"
    );

    // Load balancer: created, defaults filled, child ids rendered.
    let (s, v) = call(&e, "PUT", &lb, Some(lb_body())).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        v["properties"]["probes"][0]["properties"]["intervalInSeconds"],
        5
    );
    assert!(v["properties"]["probes"][0]["id"]
        .as_str()
        .unwrap()
        .ends_with("/loadBalancers/lb/probes/p"));
    // Same frontend on another LB → conflict; bad values → 400 and nothing stored.
    let (s, v) = call(
        &e,
        "PUT",
        &format!("{rg}/providers/Microsoft.Network/loadBalancers/lb2"),
        Some(lb_body()),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("FrontendPortInUse"))
    );
    let mut bad = lb_body();
    bad["properties"]["probes"][0]["properties"]["probeThreshold"] = json!(0);
    let (s, v) = call(
        &e,
        "PUT",
        &format!("{rg}/providers/Microsoft.Network/loadBalancers/lb3"),
        Some(bad),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("probeThreshold"),
        "{v}"
    );
    assert_eq!(
        call(
            &e,
            "GET",
            &format!("{rg}/providers/Microsoft.Network/loadBalancers/lb3"),
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );

    // Malformed JSON and a non-object.
    let (s, v) = call_raw(
        &e,
        "PUT",
        &format!("{vmss}?api-version=2024-11-01"),
        Some("{not json".into()),
        true,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("InvalidRequestContent"))
    );
    assert_eq!(
        call(&e, "PUT", &vmss, Some(json!([1]))).await.0,
        StatusCode::BAD_REQUEST
    );

    // A scale set whose image does not exist → 404 ImageNotFound, nothing stored.
    let body = json!({"sku": {"capacity": 2}, "properties": {"virtualMachineProfile": {"storageProfile": {"imageReference": {"id": format!("{rg}/providers/Microsoft.Compute/images/nope")}}}}});
    let (s, v) = call(&e, "PUT", &vmss, Some(body)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("ImageNotFound")),
        "{v}"
    );
    assert_eq!(call(&e, "GET", &vmss, None).await.0, StatusCode::NOT_FOUND);
    // Out of range, bad enum, bad name.
    for (body, want) in [
        (json!({"sku": {"capacity": 5000}}), "sku.capacity"),
        (
            json!({"sku": {"capacity": 0}, "properties": {"upgradePolicy": {"mode": "Sideways"}}}),
            "Allowed values",
        ),
        (
            json!({"sku": {"capacity": 0}, "properties": {"upgradePolicy": {"rollingUpgradePolicy": {"maxBatchInstancePercent": 1}}}}),
            "maxBatchInstancePercent",
        ),
    ] {
        let (s, v) = call(&e, "PUT", &vmss, Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(
            v["error"]["message"].as_str().unwrap().contains(want),
            "{v}"
        );
    }
    let (s, v) = call(
        &e,
        "PUT",
        &format!("{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/-bad"),
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("InvalidResourceName"))
    );

    // A capacity-0 scale set referencing the LB pool and probe is accepted and listed; the LB
    // cannot be deleted while it is in use; a model change bumps latestModel.
    let pool = format!("{lb}/backendAddressPools/be");
    let body = json!({"sku": {"capacity": 0}, "properties": {"upgradePolicy": {"mode": "Rolling"}, "virtualMachineProfile": {"networkProfile": {
        "healthProbe": {"id": format!("{lb}/probes/p")},
        "networkInterfaceConfigurations": [{"name": "n", "properties": {"ipConfigurations": [{"name": "i", "properties": {"loadBalancerBackendAddressPools": [{"id": pool}]}}]}}]}}}});
    let (s, v) = call(&e, "PUT", &vmss, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        v["properties"]["upgradePolicy"]["rollingUpgradePolicy"]["maxBatchInstancePercent"],
        20
    );
    assert_eq!(v["properties"]["provisioningState"], "Succeeded");
    assert_eq!(v["name"], "vmss1");
    let (_, list) = call(
        &e,
        "GET",
        &format!("{rg}/providers/Microsoft.Compute/virtualMachineScaleSets"),
        None,
    )
    .await;
    assert_eq!(list["value"].as_array().unwrap().len(), 1);
    assert_eq!(list["value"][0]["name"], "vmss1");
    let (s, v) = call(&e, "DELETE", &lb, None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (
            StatusCode::CONFLICT,
            Some("LoadBalancerInUseByVirtualMachineScaleSet")
        )
    );
    // Unknown instance ids and missing required ids.
    let (s, v) = call(
        &e,
        "POST",
        &format!("{vmss}/manualupgrade"),
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("InvalidParameter"))
    );
    let (s, v) = call(
        &e,
        "POST",
        &format!("{vmss}/restart"),
        Some(json!({"instanceIds": ["7"]})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not an active"),
        "{v}"
    );
    assert_eq!(
        call(&e, "GET", &format!("{vmss}/virtualMachines/0"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&e, "POST", &format!("{vmss}/explode"), None).await.0,
        StatusCode::NOT_FOUND
    );
    // Case-insensitive paths, as ARM.
    assert_eq!(
        call(
            &e,
            "GET",
            &format!(
                "{SUB}/resourcegroups/RG/providers/microsoft.compute/virtualmachinescalesets/VMSS1"
            ),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    // Resource group with resources cannot be deleted.
    assert_eq!(call(&e, "DELETE", &rg, None).await.0, StatusCode::CONFLICT);
    // Images cannot be PUT (they are baked).
    assert_eq!(
        call(
            &e,
            "PUT",
            &format!("{rg}/providers/Microsoft.Compute/images/x"),
            Some(json!({}))
        )
        .await
        .1["error"]["code"],
        "OperationNotAllowed"
    );
}

/// Microsoft's own example requests (from the specs in ../shared) are accepted, or refused with a
/// clear error where scaleset differs on purpose.
#[tokio::test]
async fn microsoft_example_requests() {
    const SPECS: &str = "specs/azure-rest-api/specification";
    if !testkit::require(testkit::missing_shared(SPECS)) {
        return;
    }
    let root = testkit::shared_dir().join(SPECS);
    let example = |rel: &str| -> Value {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(root.join(rel)).unwrap()).unwrap();
        v["parameters"].clone()
    };
    let e = env("examples");
    let rg = format!("{SUB}/resourceGroups/rg1");
    assert_eq!(
        call(&e, "PUT", &rg, Some(json!({"location": "local"})))
            .await
            .0,
        StatusCode::CREATED
    );

    // A Standard load balancer with zones, a subnet frontend, an Http probe and NAT rules: accepted
    // (the frontend binds 127.0.0.1 locally; NAT rules are stored, not acted on).
    let p = example("network/resource-manager/Microsoft.Network/stable/2024-05-01/examples/LoadBalancerCreateWithZones.json");
    let lb = format!("{rg}/providers/Microsoft.Network/loadBalancers/lb");
    let mut body = p["parameters"].clone();
    body["properties"]["loadBalancingRules"][0]["properties"]["frontendPort"] = json!(18090);
    let (s, v) = call(&e, "PUT", &lb, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        v["properties"]["probes"][0]["properties"]["requestPath"],
        "healthcheck.aspx"
    );
    assert_eq!(
        v["properties"]["frontendIPConfigurations"][0]["properties"]["privateIPAddress"],
        "127.0.0.1"
    );

    // A scale set from a marketplace image: a clear error (images here are baked), nothing stored.
    let p = example("compute/resource-manager/Microsoft.Compute/ComputeRP/stable/2024-11-01/examples/virtualMachineScaleSetExamples/VirtualMachineScaleSet_Create_WithAzureLoadBalancer.json");
    let vmss = format!("{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/vmss");
    let (s, v) = call(&e, "PUT", &vmss, Some(p["parameters"].clone())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Marketplace image references"),
        "{v}"
    );
    assert_eq!(call(&e, "GET", &vmss, None).await.0, StatusCode::NOT_FOUND);

    // A managed image from a VM: refused, images are created by baking.
    let p = example("compute/resource-manager/Microsoft.Compute/ComputeRP/stable/2024-11-01/examples/imageExamples/Image_CreateFromAVM.json");
    let (s, v) = call(
        &e,
        "PUT",
        &format!("{rg}/providers/Microsoft.Compute/images/myImage"),
        Some(p["parameters"].clone()),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("OperationNotAllowed"))
    );

    // Deleting instances of a scale set that does not exist: 404 in Azure's shape.
    let p = example("compute/resource-manager/Microsoft.Compute/ComputeRP/stable/2024-11-01/examples/virtualMachineScaleSetExamples/VirtualMachineScaleSet_DeleteInstances_MaximumSet_Gen.json");
    let (s, v) = call(
        &e,
        "POST",
        &format!("{vmss}/delete"),
        Some(p["vmInstanceIDs"].clone()),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("ResourceNotFound"))
    );
}

#[tokio::test]
async fn automatic_repairs_service_state() {
    let e = env("repairs");
    let rg = format!("{SUB}/resourceGroups/rg");
    let lb = format!("{rg}/providers/Microsoft.Network/loadBalancers/lb");
    let vmss = format!("{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/web");
    assert!(call(&e, "PUT", &rg, Some(json!({"location": "local"})))
        .await
        .0
        .is_success());
    assert!(call(&e, "PUT", &lb, Some(lb_body())).await.0.is_success());
    let probe = json!({"id": format!("{lb}/probes/p")});
    let set = format!("{vmss}/setOrchestrationServiceState");
    let suspend = json!({"serviceName": "AutomaticRepairs", "action": "Suspend"});

    // Without the policy: the service is NotRunning and cannot be suspended or resumed.
    let body = json!({"sku": {"capacity": 0}, "properties": {"virtualMachineProfile": {"networkProfile": {"healthProbe": probe}}}});
    assert_eq!(
        call(&e, "PUT", &vmss, Some(body)).await.0,
        StatusCode::CREATED
    );
    let (_, v) = call(&e, "GET", &format!("{vmss}/instanceView"), None).await;
    assert_eq!(
        v["orchestrationServices"][0],
        json!({"serviceName": "AutomaticRepairs", "serviceState": "NotRunning"})
    );
    let (s, v) = call(&e, "POST", &set, Some(suspend.clone())).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("OperationNotAllowed")),
        "{v}"
    );

    // Policy validation: grace period range, action enum, a health source.
    for (repairs, want) in [
        (json!({"enabled": true, "gracePeriod": "PT9M"}), "PT10M"),
        (json!({"enabled": true, "gracePeriod": "PT91M"}), "PT90M"),
        (
            json!({"enabled": true, "repairAction": "Redeploy"}),
            "Replace, Restart, Reimage",
        ),
    ] {
        let body = json!({"sku": {"capacity": 0}, "properties": {"automaticRepairsPolicy": repairs, "virtualMachineProfile": {"networkProfile": {"healthProbe": probe}}}});
        let (s, v) = call(&e, "PUT", &vmss, Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(want),
            "{v}"
        );
    }
    let (s, v) = call(
        &e,
        "PATCH",
        &vmss,
        Some(json!({"properties": {"automaticRepairsPolicy": {"enabled": true, "gracePeriod": "PT30M", "repairAction": "restart"}}})),
    )
    .await;
    assert!(s.is_success(), "{v}");
    assert_eq!(
        v["properties"]["automaticRepairsPolicy"],
        json!({"enabled": true, "gracePeriod": "PT30M", "repairAction": "Restart"})
    );
    assert_eq!(repairs_state(&e, &vmss).await, "Running");

    // Bad bodies change nothing.
    for (body, want) in [
        (
            json!({"serviceName": "AutomaticZoneRebalancing", "action": "Suspend"}),
            "serviceName",
        ),
        (
            json!({"serviceName": "AutomaticRepairs", "action": "Pause"}),
            "Resume, Suspend",
        ),
        (json!({"serviceName": "AutomaticRepairs"}), "'action'"),
        (json!({"action": "Suspend"}), "'serviceName'"),
        (
            json!({"serviceName": "AutomaticRepairs", "action": 1}),
            "must be a string",
        ),
    ] {
        let (s, v) = call(&e, "POST", &set, Some(body)).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("InvalidParameter")),
            "{v}"
        );
        assert!(
            v["error"]["message"].as_str().unwrap().contains(want),
            "{v}"
        );
    }
    assert_eq!(repairs_state(&e, &vmss).await, "Running");

    // Suspend, then resume (names are case-insensitive like ARM's enums).
    assert_eq!(
        call(&e, "POST", &set, Some(suspend)).await.0,
        StatusCode::OK
    );
    assert_eq!(repairs_state(&e, &vmss).await, "Suspended");
    let (s, _) = call(
        &e,
        "POST",
        &set,
        Some(json!({"serviceName": "automaticrepairs", "action": "resume"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(repairs_state(&e, &vmss).await, "Running");
    // GET is not allowed on the action.
    assert_eq!(
        call(&e, "GET", &set, None).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

async fn repairs_state(e: &Env, vmss: &str) -> Value {
    let (_, v) = call(e, "GET", &format!("{vmss}/instanceView"), None).await;
    v["orchestrationServices"][0]["serviceState"].clone()
}

/// `GET /metrics` in-process (no client address, so never anonymous): the daemon token only.
#[tokio::test]
async fn metrics_need_the_daemon_token() {
    let e = env("metrics");
    let get = |auth: Option<String>, method: &str| {
        let mut req = Request::builder().method(method).uri("/metrics");
        if let Some(a) = auth {
            req = req.header("authorization", format!("Bearer {a}"));
        }
        let app = api::app(e.st.clone());
        async move {
            let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
            let status = resp.status();
            let ctype = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, ctype, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let (status, _, body) = get(None, "GET").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("AuthenticationFailed"), "{body}");
    let (status, ctype, body) = get(Some(e.st.auth.token.clone()), "GET").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ctype.as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(
        body.contains("# TYPE scaleset_build_info gauge\n"),
        "{body}"
    );
    // A pipeline run's credential reaches the ARM API only.
    let run = e.st.auth.run_tokens.mint(7);
    let (status, _, body) = get(Some(run), "GET").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("AuthorizationFailed"), "{body}");
    let (status, _, _) = get(Some(e.st.auth.token.clone()), "POST").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}
