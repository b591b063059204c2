//! The API against Microsoft's OpenAPI specs (../shared/specs/azure-rest-api): every request
//! these tests send and every response the API returns is checked against the operation's schema
//! (request body parameter; the response for the status code, `default` = CloudError for
//! errors). Microsoft's example requests are sent too, and Microsoft's example responses must pass
//! the same validator (so it is not stricter than Azure itself). The engine is not running: no
//! machine boots; instance records are written the way the engine writes them.
mod common;
mod support;

use common::Env;

use api::state::{InstanceRecord, Observation};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sha2::Digest;
use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use support::swagger::{At, Dir, Specs};
use tower::ServiceExt;

const SUB_ID: &str = "00000000-0000-0000-0000-000000000000";
const COMPUTE: &str = "compute/resource-manager/Microsoft.Compute/ComputeRP/stable/2024-11-01";
const NETWORK: &str = "network/resource-manager/Microsoft.Network/stable/2024-05-01";

fn spec_files() -> [String; 3] {
    [
        format!("{COMPUTE}/virtualMachineScaleSet.json"),
        format!("{COMPUTE}/image.json"),
        format!("{NETWORK}/loadBalancer.json"),
    ]
}

/// Microsoft's specs, `None` (after [`testkit::require`]) when they are not beside the project.
fn spec_root() -> Option<PathBuf> {
    const SPECS: &str = "specs/azure-rest-api/specification";
    testkit::require(testkit::missing_shared(SPECS)).then(|| testkit::shared_dir().join(SPECS))
}

const SETUP: common::Setup = common::Setup {
    kind: "contract",
    subnet: "10.213.251.0/24",
    listen: "127.0.0.1:0",
    prefix: "c",
};

fn env(tag: &str) -> Env {
    common::env_with(&SETUP, tag, common::nspawn("c"))
}

/// A daemon state over the machines `machines` makes for the home.
fn env_with(
    tag: &str,
    machines: impl FnOnce(&std::path::Path) -> Arc<dyn runtime::Machines>,
) -> Env {
    common::env_with(&SETUP, tag, machines)
}

/// An image in the store without baking: a one-file `docker save` archive, imported.
fn import_image(e: &Env, name: &str) {
    let mut layer = tar::Builder::new(Vec::new());
    let data = format!("image {name}\n");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    layer
        .append_data(&mut h, "etc/scaleset-image", data.as_bytes())
        .unwrap();
    let layer = layer.into_inner().unwrap();
    let diff = hex::encode(sha2::Sha256::digest(&layer));
    let cfg = json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff}")]}});
    let manifest = json!([{"Config": "cfg.json", "RepoTags": [format!("{name}:1")], "Layers": ["l/layer.tar"]}]);
    let mut b = tar::Builder::new(Vec::new());
    for (p, d) in [
        ("manifest.json", serde_json::to_vec(&manifest).unwrap()),
        ("cfg.json", serde_json::to_vec(&cfg).unwrap()),
        ("l/layer.tar", layer),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(d.len() as u64);
        b.append_data(&mut h, p, d.as_slice()).unwrap();
    }
    let archive = e.dir.join(format!("{name}.tar"));
    std::fs::write(&archive, b.into_inner().unwrap()).unwrap();
    e.st.images
        .import(&archive, name, &mut std::io::sink())
        .unwrap();
}

/// Drives the router and checks every exchange against the specs.
struct Contract {
    e: Env,
    specs: Specs,
    violations: RefCell<Vec<String>>,
    /// Operation ids exercised, with the status codes seen.
    seen: RefCell<std::collections::BTreeSet<String>>,
    /// The Azure-AsyncOperation URL of the last reply that had one.
    last_async: RefCell<Option<String>>,
}

impl Contract {
    fn new(tag: &str, root: PathBuf) -> Self {
        Self {
            e: env(tag),
            specs: Specs::new(root),
            violations: Default::default(),
            seen: Default::default(),
            last_async: Default::default(),
        }
    }

    fn flag(&self, what: String) {
        self.violations.borrow_mut().push(what);
    }

    /// Sends a request whose body is meant to be valid Azure input (so it is checked too).
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.exchange(method, path, body, true).await
    }

    /// Sends a body that is bad on purpose; only the response is checked.
    async fn call_bad(&self, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.exchange(method, path, Some(body), false).await
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        valid_input: bool,
    ) -> (StatusCode, Value) {
        let body_sent = body.clone();
        let bare = path.split('?').next().unwrap();
        let rg_only = bare.trim_matches('/').split('/').count() <= 4;
        let what = format!("{method} {bare}");
        let uri = format!(
            "{path}{}api-version={}",
            if path.contains('?') { "&" } else { "?" },
            if path.contains("Microsoft.Network") {
                "2024-05-01"
            } else if rg_only {
                "2021-04-01"
            } else {
                "2024-11-01"
            }
        );
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", self.e.st.auth.token));
        let resp = api::app(self.e.st.clone())
            .oneshot(
                req.body(Body::from(
                    body.as_ref().map(|b| b.to_string()).unwrap_or_default(),
                ))
                .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let async_op = resp
            .headers()
            .get("azure-asyncoperation")
            .map(|h| h.to_str().unwrap().to_string());
        let location = resp
            .headers()
            .get("location")
            .map(|h| h.to_str().unwrap().to_string());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{what}: response is not JSON ({e})"))
        };
        if async_op.is_some() {
            *self.last_async.borrow_mut() = async_op.clone();
        }
        // A long-running operation tells the client where to poll (as ARM does).
        if status == StatusCode::ACCEPTED {
            match (&async_op, &location) {
                (Some(a), Some(l)) => {
                    self.check_operation(&what, a, false).await;
                    self.check_operation(&what, l, true).await;
                }
                _ => self.flag(format!(
                    "{what}: 202 without Azure-AsyncOperation and Location"
                )),
            }
        } else if let Some(a) = &async_op {
            self.check_operation(&what, a, false).await;
        }
        let files = spec_files();
        let files: Vec<&str> = files.iter().map(String::as_str).collect();
        if let Some(op) = self.specs.operation(&files, method, bare) {
            self.seen
                .borrow_mut()
                .insert(format!("{} {}", op.id, status.as_u16()));
        }
        let request = body_sent.as_ref().filter(|_| valid_input);
        for x in self.specs.check_exchange(
            &files,
            method,
            bare,
            request,
            status.as_u16(),
            &v,
            &support::swagger::scaleset_extension,
        ) {
            self.flag(x);
        }
        (status, v)
    }

    /// GETs an operation URL: the status resource answers 200 with a status, the result 202
    /// (in progress; the engine is not running here) or 200/204.
    async fn check_operation(&self, what: &str, url: &str, result: bool) {
        let path = url
            .strip_prefix("http://")
            .and_then(|u| u.find('/').map(|i| &u[i..]))
            .unwrap_or(url);
        let req = Request::builder()
            .uri(path)
            .header("authorization", format!("Bearer {}", self.e.st.auth.token));
        let resp = api::app(self.e.st.clone())
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let retry = resp.headers().contains_key("retry-after");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let ok = if result {
            matches!(status.as_u16(), 200 | 202 | 204) && (status != StatusCode::ACCEPTED || retry)
        } else {
            let s = v["status"].as_str().unwrap_or("");
            status == StatusCode::OK
                && ["InProgress", "Succeeded", "Failed", "Canceled"].contains(&s)
                && (s != "InProgress" || retry)
                && v["startTime"].is_string()
        };
        if !ok {
            self.flag(format!("{what}: operation {path} answered {status} {v}"));
        }
    }

    /// The status of the last long-running operation.
    async fn last_status(&self) -> String {
        let url = self.last_async.borrow().clone().expect("an operation URL");
        let path = &url[url.find("/subscriptions").unwrap()..];
        let (s, v) = self
            .call("GET", path.split('?').next().unwrap(), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["status"].as_str().unwrap().to_string()
    }

    fn assert_clean(&self) {
        let v = self.violations.borrow();
        eprintln!("operations exercised: {:?}", self.seen.borrow());
        eprintln!(
            "references left open (files not in the shared folder): {:?}",
            self.specs.open_refs.borrow()
        );
        assert!(
            v.is_empty(),
            "{} spec violations:\n{}",
            v.len(),
            v.join("\n")
        );
    }
}

fn lb_body(lb_id: &str, port: u16) -> Value {
    json!({"location": "local", "sku": {"name": "Standard"}, "tags": {"scaleset.layer": "L7"}, "properties": {
        "frontendIPConfigurations": [{"name": "fe", "properties": {"privateIPAddress": "127.0.0.1"}}],
        "backendAddressPools": [{"name": "be"}],
        "probes": [{"name": "p", "properties": {"protocol": "Http", "port": 80, "requestPath": "/health", "intervalInSeconds": 5, "probeThreshold": 2}}],
        "loadBalancingRules": [{"name": "r", "properties": {"protocol": "Tcp", "frontendPort": port, "backendPort": 80,
            "loadDistribution": "Default", "idleTimeoutInMinutes": 4, "enableTcpReset": false,
            "frontendIPConfiguration": {"id": format!("{lb_id}/frontendIPConfigurations/fe")},
            "backendAddressPool": {"id": format!("{lb_id}/backendAddressPools/be")},
            "probe": {"id": format!("{lb_id}/probes/p")}}}],
    }})
}

fn image_id(rg: &str, name: &str) -> String {
    format!("{rg}/providers/Microsoft.Compute/images/{name}")
}

fn vmss_body(rg: &str, lb_id: &str, image: &str) -> Value {
    json!({
        "location": "local",
        "sku": {"name": "Standard_B1s", "tier": "Standard", "capacity": 0},
        "tags": {"app": "web"},
        "properties": {
            "overprovision": false,
            "upgradePolicy": {"mode": "Rolling", "rollingUpgradePolicy": {
                "maxBatchInstancePercent": 50, "maxUnhealthyInstancePercent": 50,
                "maxUnhealthyUpgradedInstancePercent": 20, "pauseTimeBetweenBatches": "PT1S"}},
            "scaleInPolicy": {"rules": ["OldestVM"]},
            "virtualMachineProfile": {
                "osProfile": {"computerNamePrefix": "web", "adminUsername": "azureuser", "adminPassword": "Not-Returned-1"},
                "storageProfile": {"imageReference": {"id": image_id(rg, image)}},
                "networkProfile": {
                    "healthProbe": {"id": format!("{lb_id}/probes/p")},
                    "networkInterfaceConfigurations": [{"name": "nic", "properties": {"primary": true, "ipConfigurations": [
                        {"name": "ip", "properties": {"loadBalancerBackendAddressPools": [{"id": format!("{lb_id}/backendAddressPools/be")}]}}]}}]
                }
            }
        }
    })
}

/// Instance records as the engine writes them when it creates instances.
fn add_instances(e: &Env, rg: &str, vmss: &str, n: u32) {
    let res = api::route::Res {
        sub: SUB_ID.into(),
        rg: rg.into(),
        name: vmss.into(),
    };
    let key = res.key(api::route::VMSS);
    for i in 0..n {
        let machine = format!("c-{vmss}-{i}");
        e.st.put_instance(
            &key,
            &InstanceRecord {
                instance_id: i,
                created_seq: i as u64,
                model_version: 1,
                image: "img1".into(),
                ip: std::net::Ipv4Addr::new(10, 213, 251, 4 + i as u8),
                computer_name: format!("web{i:06}"),
                machine: machine.clone(),
                time_created: "2026-01-01T00:00:00Z".into(),
                vm_id: api::state::uuid(),
                intent: plan::PowerIntent::Running,
                provisioning_state: api::state::ProvisioningState::Succeeded,
                work: Default::default(),
                draining: false,
                vm_size: None,
                protect_from_scale_in: false,
                protect_from_scale_set_actions: false,
                last_error: (i == 1).then(|| "boot timed out".to_string()),
                state_changed_at: None,
                repair_attempts: 0,
                deallocated: false,
            },
        )
        .unwrap();
        e.st.observed.lock().unwrap().insert(
            machine,
            Observation {
                running: i == 0,
                healthy: Some(i == 0),
                app_health: None,
                booted_at: None,
            },
        );
    }
}

/// Our own traffic: every resource and error shape the API produces, checked both ways.
#[tokio::test]
async fn requests_and_responses_match_the_specs() {
    let Some(root) = spec_root() else { return };
    let c = Contract::new("ours", root);
    let sub = format!("/subscriptions/{SUB_ID}");
    let rg = format!("{sub}/resourceGroups/rg");
    let lb = format!("{rg}/providers/Microsoft.Network/loadBalancers/lb");
    let vmss = format!("{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/web");
    assert_eq!(
        c.call("PUT", &rg, Some(json!({"location": "local"})))
            .await
            .0,
        StatusCode::CREATED
    );

    // Load balancers: create, update, tags, get, lists, errors.
    let (s, v) = c.call("PUT", &lb, Some(lb_body(&lb, 18181))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        c.call("PUT", &lb, Some(lb_body(&lb, 18181))).await.0,
        StatusCode::OK
    );
    let (s, v) = c
        .call(
            "PATCH",
            &lb,
            Some(json!({"tags": {"scaleset.layer": "L7", "team": "web"}})),
        )
        .await;
    assert_eq!(
        (s, &v["tags"]["team"]),
        (StatusCode::OK, &json!("web")),
        "{v}"
    );
    assert_eq!(c.call("GET", &lb, None).await.0, StatusCode::OK);
    let (_, list) = c
        .call(
            "GET",
            &format!("{rg}/providers/Microsoft.Network/loadBalancers"),
            None,
        )
        .await;
    assert_eq!(list["value"].as_array().map(Vec::len), Some(1));
    c.call(
        "GET",
        &format!("{sub}/providers/Microsoft.Network/loadBalancers"),
        None,
    )
    .await;
    let (s, _) = c.call("GET", &format!("{lb}x"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let mut bad = lb_body(&lb, 18182);
    bad["properties"]["probes"][0]["properties"]["probeThreshold"] = json!(0);
    let (s, _) = c.call_bad("PUT", &format!("{lb}2"), bad).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Images (imported; the API only reads and deletes them).
    import_image(&c.e, "img1");
    import_image(&c.e, "img2");
    let (s, v) = c.call("GET", &image_id(&rg, "img1"), None).await;
    assert_eq!((s, &v["name"]), (StatusCode::OK, &json!("img1")));
    let (_, list) = c
        .call(
            "GET",
            &format!("{rg}/providers/Microsoft.Compute/images"),
            None,
        )
        .await;
    assert_eq!(list["value"].as_array().map(Vec::len), Some(2));
    c.call(
        "GET",
        &format!("{sub}/providers/Microsoft.Compute/images"),
        None,
    )
    .await;
    assert_eq!(
        c.call("GET", &image_id(&rg, "nope"), None).await.0,
        StatusCode::NOT_FOUND
    );

    // A scale set: create (capacity 0), get, lists, instance view.
    let (s, v) = c
        .call("PUT", &vmss, Some(vmss_body(&rg, &lb, "img1")))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        c.call("PUT", &vmss, Some(vmss_body(&rg, &lb, "img1")))
            .await
            .0,
        StatusCode::OK
    );
    let (s, got) = c.call("GET", &vmss, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        got.pointer("/properties/virtualMachineProfile/osProfile/adminUsername"),
        Some(&json!("azureuser"))
    );
    // A GET body PUT back unchanged (what az's generic update does) is accepted.
    // The stored adminPassword is kept, so this is no model change: no rolling upgrade starts.
    assert_eq!(c.call("PUT", &vmss, Some(got)).await.0, StatusCode::OK);
    assert_eq!(
        c.call("GET", &format!("{vmss}/rollingUpgrades/latest"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    c.call(
        "GET",
        &format!("{rg}/providers/Microsoft.Compute/virtualMachineScaleSets"),
        None,
    )
    .await;
    c.call(
        "GET",
        &format!("{sub}/providers/Microsoft.Compute/virtualMachineScaleSets"),
        None,
    )
    .await;
    c.call("GET", &format!("{vmss}/instanceView"), None).await;
    // The sizes it can use: every one of model::sizes, as VirtualMachineScaleSetListSkusResult.
    let (s, skus) = c.call("GET", &format!("{vmss}/skus"), None).await;
    assert_eq!(s, StatusCode::OK, "{skus}");
    let skus = skus["value"].as_array().unwrap();
    assert_eq!(skus.len(), model::sizes::SIZES.len());
    assert_eq!(
        skus[1],
        json!({"resourceType": "Microsoft.Compute/virtualMachineScaleSets",
            "sku": {"name": "Standard_B1s", "tier": "Standard"},
            "capacity": {"minimum": 0, "maximum": 1000, "defaultCapacity": 2, "scaleType": "Automatic"}})
    );
    assert_eq!(
        c.call("GET", &format!("{vmss}x/skus"), None).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, vms) = c
        .call("GET", &format!("{vmss}/virtualMachines"), None)
        .await;
    assert_eq!(vms["value"], json!([]));

    // Its instances (one running and healthy, one that failed to boot).
    add_instances(&c.e, "rg", "web", 2);
    let (_, vms) = c
        .call(
            "GET",
            &format!("{vmss}/virtualMachines?$expand=instanceView"),
            None,
        )
        .await;
    assert_eq!(vms["value"].as_array().map(Vec::len), Some(2));
    c.call("GET", &format!("{vmss}/virtualMachines"), None)
        .await;
    c.call("GET", &format!("{vmss}/virtualMachines/0"), None)
        .await;
    c.call(
        "GET",
        &format!("{vmss}/virtualMachines/1?$expand=instanceView"),
        None,
    )
    .await;
    c.call(
        "GET",
        &format!("{vmss}/virtualMachines/1/instanceView"),
        None,
    )
    .await;
    c.call("GET", &format!("{vmss}/instanceView"), None).await;
    assert_eq!(
        c.call("GET", &format!("{vmss}/virtualMachines/7"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (s, v) = c
        .call(
            "PUT",
            &format!("{vmss}/virtualMachines/0"),
            Some(json!({"location": "local", "properties": {"protectionPolicy": {"protectFromScaleIn": true}}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Accepted work is reported in progress until the engine has done it.
    let (s, _) = c
        .call(
            "POST",
            &format!("{vmss}/restart"),
            Some(json!({"instanceIds": ["0"]})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(c.last_status().await, "InProgress");
    let key = api::route::Res {
        sub: SUB_ID.into(),
        rg: "rg".into(),
        name: "web".into(),
    }
    .key(api::route::VMSS);
    c.e.st
        .update_instance(&key, 0, |r| r.work.settle(control::Pending::Restart))
        .unwrap();
    assert_eq!(c.last_status().await, "Succeeded");
    for (action, body) in [
        ("restart", Some(json!({"instanceIds": ["0"]}))),
        ("poweroff", Some(json!({"instanceIds": ["1"]}))),
        ("start", None),
        ("deallocate", Some(json!({"instanceIds": ["1"]}))),
        ("reimage", Some(json!({"instanceIds": ["1"]}))),
        ("reimageall", Some(json!({"instanceIds": ["1"]}))),
        ("manualupgrade", Some(json!({"instanceIds": ["0", "1"]}))),
    ] {
        let (s, v) = c.call("POST", &format!("{vmss}/{action}"), body).await;
        assert!(s.is_success(), "{action}: {s} {v}");
    }
    for action in [
        "restart",
        "poweroff",
        "start",
        "deallocate",
        "reimage",
        "reimageall",
    ] {
        let (s, v) = c
            .call("POST", &format!("{vmss}/virtualMachines/0/{action}"), None)
            .await;
        assert!(s.is_success(), "{action}: {s} {v}");
    }
    let (s, _) = c
        .call_bad(
            "POST",
            &format!("{vmss}/restart"),
            json!({"instanceIds": ["9"]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // A new image through PATCH (VirtualMachineScaleSetUpdate): a rolling upgrade starts.
    let (s, v) = c
        .call(
            "PATCH",
            &vmss,
            Some(json!({"properties": {"virtualMachineProfile": {"storageProfile": {"imageReference": {"id": image_id(&rg, "img2")}}}}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = c
        .call("GET", &format!("{vmss}/rollingUpgrades/latest"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        c.call("POST", &format!("{vmss}/osRollingUpgrade"), None)
            .await
            .0,
        StatusCode::CONFLICT
    );
    assert!(c
        .call("POST", &format!("{vmss}/rollingUpgrades/cancel"), None)
        .await
        .0
        .is_success());
    c.call("GET", &format!("{vmss}/rollingUpgrades/latest"), None)
        .await;
    // The engine (not running here) ends a cancelled rollout; then a new one can start.
    let res = api::route::Res {
        sub: SUB_ID.into(),
        rg: "rg".into(),
        name: "web".into(),
    };
    c.e.st
        .update_rollout(&res, |d| {
            d.as_mut().unwrap().state.phase = plan::rolling::Phase::Done;
            true
        })
        .unwrap();
    c.call("GET", &format!("{vmss}/rollingUpgrades/latest"), None)
        .await;
    assert_eq!(
        c.call("POST", &format!("{vmss}/osRollingUpgrade"), None)
            .await
            .0,
        StatusCode::ACCEPTED
    );
    assert_eq!(c.last_status().await, "InProgress");
    // A rollout the engine faulted: its error is rendered, and its operation reports it.
    c.e.st
        .update_rollout(&res, |d| {
            let s = &mut d.as_mut().unwrap().state;
            s.phase = plan::rolling::Phase::Done;
            s.status = plan::rolling::RunningStatus::Faulted;
            s.error = Some(plan::rolling::RolloutError {
                code: "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade".into(),
                message: "1 of 1 upgraded instances are unhealthy.".into(),
                // A failed unit seen inside the instance: Azure's ApiErrorBase.
                details: vec![plan::rolling::ErrorDetail {
                    code: plan::rolling::CODE_UNIT_FAILED.into(),
                    target: "instances/0/units/my_app.service".into(),
                    message: "my_app.service failed on instance 0. Last journal lines:\nx".into(),
                }],
            });
            true
        })
        .unwrap();
    let (s, v) = c
        .call("GET", &format!("{vmss}/rollingUpgrades/latest"), None)
        .await;
    assert_eq!(
        (s, &v["properties"]["runningStatus"]["code"]),
        (StatusCode::OK, &json!("Faulted")),
        "{v}"
    );
    assert_eq!(
        v["properties"]["error"]["details"][0]["code"], "UnitFailed",
        "{v}"
    );
    assert_eq!(c.last_status().await, "Failed");

    // Errors in Azure's shape.
    let (s, _) = c
        .call_bad(
            "PUT",
            &format!("{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/web2"),
            json!({"sku": {"capacity": 0}, "properties": {"upgradePolicy": {"mode": "Sideways"}}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        c.call("GET", &format!("{vmss}x"), None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.call("GET", &format!("{vmss}x/rollingUpgrades/latest"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.call("DELETE", &image_id(&rg, "img2"), None).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(c.call("DELETE", &lb, None).await.0, StatusCode::CONFLICT);

    // Deletes.
    assert!(c
        .call(
            "POST",
            &format!("{vmss}/delete"),
            Some(json!({"instanceIds": ["1"]}))
        )
        .await
        .0
        .is_success());
    assert!(c.call("DELETE", &vmss, None).await.0.is_success());
    assert_eq!(
        c.call("DELETE", &format!("{vmss}x"), None).await.0,
        StatusCode::NO_CONTENT
    );
    c.assert_clean();
}

/// Every Microsoft example whose operation scaleset implements: the example request is valid (a
/// check of the validator), and what our API answers to it validates. Microsoft's example
/// responses must pass the validator too, so it is not stricter than Azure.
#[tokio::test]
async fn microsoft_examples_against_the_specs_and_the_api() {
    let Some(root) = spec_root() else { return };
    let c = Contract::new("examples", root.clone());
    let sub = format!("/subscriptions/{SUB_ID}");
    let rg = format!("{sub}/resourceGroups/rg");
    let lb = format!("{rg}/providers/Microsoft.Network/loadBalancers/lb");
    c.call("PUT", &rg, Some(json!({"location": "local"}))).await;
    c.call("PUT", &lb, Some(lb_body(&lb, 18183))).await;
    import_image(&c.e, "img1");
    let web = format!("{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/web");
    let (s, v) = c.call("PUT", &web, Some(vmss_body(&rg, &lb, "img1"))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    add_instances(&c.e, "rg", "web", 2);

    // What scaleset implements; the others' examples are only used to check the validator.
    let implemented = [
        "VirtualMachineScaleSets_CreateOrUpdate",
        "VirtualMachineScaleSets_Update",
        "VirtualMachineScaleSets_Delete",
        "VirtualMachineScaleSets_Get",
        "VirtualMachineScaleSets_GetInstanceView",
        "VirtualMachineScaleSets_UpdateInstances",
        "VirtualMachineScaleSets_Reimage",
        "VirtualMachineScaleSets_DeleteInstances",
        "VirtualMachineScaleSetRollingUpgrades_Cancel",
        "VirtualMachineScaleSetRollingUpgrades_GetLatest",
        "VirtualMachineScaleSetVMs_List",
        "Images_CreateOrUpdate",
        "Images_Get",
        "Images_Delete",
        "LoadBalancers_CreateOrUpdate",
        "LoadBalancers_Get",
    ];
    let mut examples: Vec<(String, String, String, String, PathBuf)> = Vec::new();
    for f in spec_files() {
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(root.join(&f)).unwrap()).unwrap();
        for (tpl, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                for (_, ex) in op["x-ms-examples"].as_object().into_iter().flatten() {
                    let rel = ex["$ref"].as_str().unwrap();
                    let mut p = root.join(&f).parent().unwrap().join(rel);
                    // The 2024-05-01 LB Get example is stored with the 2024-03-01 specs.
                    if !p.exists() && rel.ends_with("LoadBalancerGet.json") {
                        p = root.join("network/resource-manager/Microsoft.Network/stable/2024-03-01/examples/LoadBalancerGet.json");
                    }
                    if p.exists() {
                        examples.push((
                            f.clone(),
                            tpl.clone(),
                            method.to_uppercase(),
                            op["operationId"].as_str().unwrap().to_string(),
                            p,
                        ));
                    }
                }
            }
        }
    }
    assert!(
        examples.len() >= 18,
        "only {} examples found",
        examples.len()
    );
    // Deletes last, so that the other examples find the scale set.
    examples.sort_by_key(|e| e.2 == "DELETE");
    let mut outcomes = Vec::new();
    for (file, tpl, method, op_id, path) in &examples {
        let ex: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let files = [file.as_str()];
        let op = c.specs.operation(&files, method, tpl).unwrap();
        let body_param = op.op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|p| {
                let p = match p.get("$ref").and_then(Value::as_str) {
                    Some(r) => c.specs.resolve(&op.file, r).unwrap().schema,
                    None => p.clone(),
                };
                (p["in"] == "body").then(|| p["name"].as_str().unwrap().to_string())
            });
        let body = body_param.and_then(|n| ex["parameters"].get(&n).cloned());
        // Microsoft's own requests and responses must satisfy the validator.
        if let (Some(b), Some(s)) = (&body, c.specs.request_schema(&op)) {
            for v in c.specs.validate(&s, b, Dir::Request, &|_| false) {
                c.flag(format!("validator rejects Microsoft's request {name}: {v}"));
            }
        }
        for (status, r) in ex["responses"].as_object().unwrap() {
            let Some(b) = r.get("body") else { continue };
            let Some(Some(s)) = c.specs.response_schema(&op, status.parse().unwrap()) else {
                continue;
            };
            for v in c.specs.validate(&s, b, Dir::Response, &|_| false) {
                c.flag(format!(
                    "validator rejects Microsoft's response {name} {status}: {v}"
                ));
            }
        }
        if !implemented.contains(&op_id.as_str()) {
            continue;
        }
        // Our API answers the example request, in our resource group, on our scale set.
        let mut url = String::new();
        for seg in tpl.trim_matches('/').split('/') {
            let v = match seg.trim_start_matches('{').trim_end_matches('}') {
                "subscriptionId" => SUB_ID.to_string(),
                "resourceGroupName" => "rg".into(),
                "vmScaleSetName" | "virtualMachineScaleSetName" => "web".into(),
                p if seg.starts_with('{') => ex["parameters"][p].as_str().unwrap().to_string(),
                _ => seg.to_string(),
            };
            url.push('/');
            url.push_str(&v);
        }
        if op_id == "LoadBalancers_CreateOrUpdate" {
            // Each example LB on its own local port, removed again below.
            url.push_str("ex");
        }
        let body = body.map(|mut b| {
            if let Some(rules) = b
                .pointer_mut("/properties/loadBalancingRules")
                .and_then(Value::as_array_mut)
            {
                for (i, r) in rules.iter_mut().enumerate() {
                    r["properties"]["frontendPort"] = json!(18300 + i);
                }
            }
            b
        });
        let (s, v) = c.call(method, &url, body).await;
        outcomes.push(format!(
            "{name}: {} {} {}",
            s.as_u16(),
            v.pointer("/error/code")
                .and_then(Value::as_str)
                .unwrap_or(""),
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("")
        ));
        if !s.is_success() {
            let msg = v
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("");
            assert!(msg.len() > 20, "{name}: unclear error {v}");
        }
        if op_id == "LoadBalancers_CreateOrUpdate" && s.is_success() {
            c.call("DELETE", &url, None).await;
        }
    }
    eprintln!("example requests → our API:\n  {}", outcomes.join("\n  "));
    c.assert_clean();
}

/// The members scaleset refuses unknown ones against (model::vmss::MEMBERS) are the spec's.
#[test]
fn refused_members_table_is_the_specs() {
    let Some(root) = spec_root() else { return };
    let specs = Specs::new(root);
    let files = spec_files();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let p =
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/v";
    let op = specs.operation(&files, "PUT", p).unwrap();
    let schema = specs.request_schema(&op).unwrap();
    for (path, _, members) in model::vmss::MEMBERS {
        let parts: Vec<&str> = path.split('.').filter(|p| !p.is_empty()).collect();
        let mut want = specs.declared_members(&schema, &parts);
        want.sort_by_key(|m| m.to_ascii_lowercase());
        let got: Vec<String> = members.split(' ').map(str::to_string).collect();
        assert_eq!(got, want, "members of '{path}'");
    }
}

/// The validator can fail: each broken copy of a valid body is caught.
#[test]
fn validator_catches_violations() {
    let Some(root) = spec_root() else { return };
    let specs = Specs::new(root);
    let files = spec_files();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let p =
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/v";
    let op = specs.operation(&files, "GET", p).unwrap();
    assert_eq!(op.id, "VirtualMachineScaleSets_Get");
    let schema: At = specs.response_schema(&op, 200).unwrap().unwrap();
    let good = json!({"id": "/x", "name": "v", "type": "t", "location": "westus",
        "sku": {"name": "Standard_B1s", "capacity": 2},
        "properties": {"upgradePolicy": {"mode": "Rolling"}, "provisioningState": "Succeeded",
            "timeCreated": "2024-01-02T03:04:05.123+00:00", "uniqueId": "u",
            "virtualMachineProfile": {"osProfile": {"computerNamePrefix": "v", "adminUsername": "a"}}}});
    assert_eq!(
        specs.validate(&schema, &good, Dir::Response, &|_| false),
        Vec::<String>::new()
    );
    let broken: Vec<(&str, Value, &str)> = vec![
        ("/sku/capacity", json!("2"), "expected integer"),
        (
            "/properties/upgradePolicy/mode",
            json!("Sideways"),
            "is not one of",
        ),
        (
            "/properties/upgradePolicy/mode",
            json!("rolling"),
            "is not one of",
        ),
        ("/properties/timeCreated", json!("yesterday"), "date-time"),
        (
            "/properties/virtualMachineProfile/osProfile/adminPassword",
            json!("x"),
            "secret",
        ),
        ("/properties/receipt", json!({}), "not declared"),
        (
            "/properties/upgradePolicy/rollingUpgradePolicy",
            json!({"maxBatchInstancePercent": 1u64 << 40}),
            "int32",
        ),
        (
            "/properties/virtualMachineProfile/osProfile/bogus",
            json!(1),
            "not declared",
        ),
        (
            "/sku",
            json!({"name": "x", "capacity": -1.5}),
            "expected integer",
        ),
        ("/properties/overprovision", Value::Null, "null"),
    ];
    for (ptr, val, want) in broken {
        let mut b = good.clone();
        let (parent, key) = ptr.rsplit_once('/').unwrap();
        b.pointer_mut(parent).unwrap()[key] = val;
        let v = specs.validate(&schema, &b, Dir::Response, &|_| false);
        assert!(
            v.iter().any(|x| x.contains(want)),
            "{ptr}: want {want}, got {v:?}"
        );
    }
    // Deep inside a list of VMs (items → allOf → properties → instanceView → statuses).
    let list = specs
        .operation(&files, "GET", &format!("{p}/virtualMachines"))
        .unwrap();
    let list_schema = specs.response_schema(&list, 200).unwrap().unwrap();
    let vm = json!({"value": [{"location": "l", "instanceId": "0", "properties": {"latestModelApplied": true,
        "instanceView": {"statuses": [{"code": "PowerState/running", "level": "Info"}]}}}]});
    assert_eq!(
        specs.validate(&list_schema, &vm, Dir::Response, &|_| false),
        Vec::<String>::new()
    );
    for (ptr, val, want) in [
        (
            "/value/0/properties/instanceView/statuses/0/level",
            json!("Fine"),
            "not one of",
        ),
        (
            "/value/0/properties/instanceView/statuses/0/bogus",
            json!(1),
            "not declared",
        ),
        (
            "/value/0/properties/latestModelApplied",
            json!("yes"),
            "expected boolean",
        ),
    ] {
        let mut b = vm.clone();
        let (parent, key) = ptr.rsplit_once('/').unwrap();
        b.pointer_mut(parent).unwrap()[key] = val;
        let v = specs.validate(&list_schema, &b, Dir::Response, &|_| false);
        assert!(
            v.iter().any(|x| x.contains(want)),
            "{ptr}: want {want}, got {v:?}"
        );
    }
    // Location is required on a Resource; read-only fields are ignored in requests.
    let mut b = good.clone();
    b.as_object_mut().unwrap().remove("location");
    let v = specs.validate(&schema, &b, Dir::Response, &|_| false);
    assert!(
        v.iter().any(|x| x.contains("'location' is missing")),
        "{v:?}"
    );
    let put = specs.operation(&files, "PUT", p).unwrap();
    let req = specs.request_schema(&put).unwrap();
    let mut b = good.clone();
    b["properties"]["provisioningState"] = json!(17);
    b["properties"]["upgradePolicy"]["mode"] = json!("rolling");
    assert_eq!(
        specs.validate(&req, &b, Dir::Request, &|_| false),
        Vec::<String>::new()
    );
    b["properties"]["upgradePolicy"]["mode"] = json!("Sideways");
    assert_eq!(specs.validate(&req, &b, Dir::Request, &|_| false).len(), 1);
}

/// `scaleset export azure`'s template for the local deployment validates against the specs, and
/// its pipelines parse.
#[tokio::test]
async fn exported_azure_template_matches_the_specs() {
    let Some(root) = spec_root() else { return };
    let c = Contract::new("export", root);
    let rg = format!("/subscriptions/{SUB_ID}/resourceGroups/rg");
    let lb = format!("{rg}/providers/Microsoft.Network/loadBalancers/lb");
    let vmss = format!("{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/web");
    c.call("PUT", &rg, Some(json!({"location": "local"}))).await;
    c.call("PUT", &lb, Some(lb_body(&lb, 18184))).await;
    import_image(&c.e, "img1");
    let mut body = vmss_body(&rg, &lb, "img1");
    body["sku"]["capacity"] = json!(3);
    body["properties"]["automaticRepairsPolicy"] = json!({"enabled": true, "gracePeriod": "PT10M"});
    assert_eq!(
        c.call("PUT", &vmss, Some(body)).await.0,
        StatusCode::CREATED
    );
    let (_, lb_v) = c.call("GET", &lb, None).await;
    let (_, vmss_v) = c.call("GET", &vmss, None).await;
    c.assert_clean();

    let t = model::export::azure_template("rg", &[lb_v], &[vmss_v]).unwrap();
    let v = c.specs.check_arm_template(&t);
    eprintln!("references left open: {:?}", c.specs.open_refs.borrow());
    assert!(v.is_empty(), "{} problems:\n{}", v.len(), v.join("\n"));
    let types: Vec<&str> = t["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    for want in [
        "Microsoft.Network/virtualNetworks",
        "Microsoft.Network/networkSecurityGroups",
        "Microsoft.Network/publicIPAddresses",
        "Microsoft.Network/loadBalancers",
        "Microsoft.Compute/virtualMachineScaleSets",
        "Microsoft.Storage/storageAccounts",
    ] {
        assert!(types.contains(&want), "{want} missing from {types:?}");
    }
    // Equivalent to the local deployment.
    let s = t["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "web")
        .unwrap();
    assert_eq!(s["sku"]["capacity"], 3);
    assert_eq!(s["properties"]["upgradePolicy"]["mode"], "Rolling");
    assert_eq!(
        s["properties"]["upgradePolicy"]["rollingUpgradePolicy"]["maxBatchInstancePercent"],
        50
    );
    assert_eq!(
        s["properties"]["virtualMachineProfile"]["networkProfile"]["healthProbe"]["id"],
        "[resourceId('Microsoft.Network/loadBalancers/probes', 'lb', 'p')]"
    );
    let l = t["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "lb")
        .unwrap();
    assert_eq!(
        l["properties"]["loadBalancingRules"][0]["properties"]["frontendPort"],
        18184
    );
    assert_eq!(
        l["properties"]["probes"][0]["properties"]["requestPath"],
        "/health"
    );

    // The check can fail: a broken copy is caught.
    let mut bad = t.clone();
    bad["resources"][0]["properties"]["bogus"] = json!(1);
    bad["resources"][0]["apiVersion"] = json!("2020-01-01");
    let last = bad["resources"].as_array().unwrap().len() - 1;
    bad["resources"][last]["properties"]["upgradePolicy"]["mode"] = json!("Sideways");
    bad["resources"][last]["dependsOn"] =
        json!(["[resourceId('Microsoft.Network/loadBalancers', 'nope')]"]);
    let v = c.specs.check_arm_template(&bad);
    for want in ["bogus", "apiVersion", "Sideways", "nope"] {
        assert!(
            v.iter().any(|x| x.contains(want)),
            "{want} not caught: {v:?}"
        );
    }

    // The pipelines parse (as the local runner reads Azure Pipelines YAML).
    let app = model::export::App {
        binary: "my_app".into(),
        files: vec![
            "setupscript.sh".into(),
            "my_app.service".into(),
            "nginx".into(),
        ],
        script: "setupscript.sh".into(),
        dir: "examples/my_app".into(),
    };
    let ci = model::export::ci_pipeline(&app);
    let release = model::export::release_pipeline(&app, "rg", "my_app", "azure-connection");
    for (file, text) in [
        ("azure-pipelines.yml", &ci),
        ("release-pipeline.yml", &release),
    ] {
        let p = pipeline::parse_pipeline(file, text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let tasks: Vec<String> = p
            .steps()
            .filter_map(|(_, _, s)| match &s.kind {
                pipeline::StepKind::Task { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect();
        let want: &[&str] = if file == "azure-pipelines.yml" {
            &["PublishPipelineArtifact"]
        } else {
            &[
                "AzureResourceManagerTemplateDeployment",
                "PackerBuild",
                "AzureResourceManagerTemplateDeployment",
            ]
        };
        assert_eq!(tasks, want, "{file}");
    }
    assert!(release.contains("deployScriptPath: setupscript.sh"));
    assert!(ci.contains("cp -r 'examples/my_app/nginx'"));
}

/// A request straight to the router (for what the shared specs do not cover).
async fn send(e: &Env, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", e.st.auth.token));
    let body = Body::from(body.map(|b| b.to_string()).unwrap_or_default());
    let resp = api::app(e.st.clone())
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The members `metrics_API.json` (2023-10-01) and `commonMonitoringTypes.json` declare, checked
/// by hand: Microsoft's monitor specs are not in the shared folder. Required members present, no
/// undeclared ones (oav's strictness), units from the `Unit` enum.
fn check_metrics_shape(v: &Value) {
    let keys = |x: &Value, allowed: &[&str], required: &[&str], what: &str| {
        let o = x
            .as_object()
            .unwrap_or_else(|| panic!("{what}: not an object: {x}"));
        for k in o.keys() {
            assert!(
                allowed.contains(&k.as_str()),
                "{what}: undeclared '{k}' in {x}"
            );
        }
        for k in required {
            assert!(o.contains_key(*k), "{what}: '{k}' missing in {x}");
        }
    };
    let response = [
        "cost",
        "timespan",
        "interval",
        "namespace",
        "resourceregion",
        "value",
    ];
    keys(v, &response, &["timespan", "value"], "Response");
    let metric = [
        "id",
        "type",
        "name",
        "displayDescription",
        "errorCode",
        "errorMessage",
        "unit",
        "timeseries",
    ];
    let units = [
        "Count",
        "Bytes",
        "Seconds",
        "CountPerSecond",
        "BytesPerSecond",
        "Percent",
        "MilliSeconds",
        "ByteSeconds",
        "Unspecified",
        "Cores",
        "MilliCores",
        "NanoCores",
        "BitsPerSecond",
    ];
    for m in v["value"].as_array().unwrap() {
        keys(
            m,
            &metric,
            &["id", "type", "name", "unit", "timeseries"],
            "Metric",
        );
        keys(
            &m["name"],
            &["value", "localizedValue"],
            &["value"],
            "LocalizableString",
        );
        assert!(units.contains(&m["unit"].as_str().unwrap()), "{m}");
        for ts in m["timeseries"].as_array().unwrap() {
            keys(ts, &["metadatavalues", "data"], &[], "TimeSeriesElement");
            for md in ts["metadatavalues"].as_array().into_iter().flatten() {
                keys(md, &["name", "value"], &[], "MetadataValue");
            }
            for d in ts["data"].as_array().into_iter().flatten() {
                let mv = [
                    "timeStamp",
                    "average",
                    "minimum",
                    "maximum",
                    "total",
                    "count",
                ];
                keys(d, &mv, &["timeStamp"], "MetricValue");
            }
        }
    }
}

/// Azure Monitor's metrics of a scale set from usage injected into fake machines, sampled by the
/// engine's sampler at chosen times: exact numbers, the response's shape, the definitions and the
/// errors (Azure Monitor's `BadRequest`).
#[tokio::test]
async fn metrics_from_fake_usage() {
    use runtime::MachineUsage;
    let fake = Arc::new(runtime::fake::FakeMachines::new());
    let e = env_with("metrics", |_| fake.clone());
    import_image(&e, "img1");
    let rg = format!("/subscriptions/{SUB_ID}/resourceGroups/rg");
    let v = "2024-11-01";
    let lb_id = format!("{rg}/providers/Microsoft.Network/loadBalancers/lb");
    let vmss_id = format!("{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/web");
    let puts = [
        (
            format!("{rg}?api-version=2021-04-01"),
            json!({"location": "local"}),
        ),
        (
            format!("{lb_id}?api-version=2024-05-01"),
            lb_body(&lb_id, 18090),
        ),
        (
            format!("{vmss_id}?api-version={v}"),
            vmss_body(&rg, &lb_id, "img1"),
        ),
    ];
    for (uri, body) in puts {
        let (s, b) = send(&e, "PUT", &uri, Some(body)).await;
        assert!(s.is_success(), "{uri}: {s} {b}");
    }
    add_instances(&e, "rg", "web", 2);
    let key = api::route::Res {
        sub: SUB_ID.into(),
        rg: "rg".into(),
        name: "web".into(),
    }
    .key(api::route::VMSS);
    for id in 0..2 {
        e.st.update_instance(&key, id, |r| r.vm_size = Some("Standard_B2s".into()))
            .unwrap();
    }
    // 30 s apart on two vCPUs each: web_0 uses 15 s of CPU (25 %), web_1 30 s (50 %).
    let gib = 1u64 << 30;
    let usage = |cpu_s: u64, used_gib: u64, net: (u64, u64)| MachineUsage {
        cpu: Some(std::time::Duration::from_secs(cpu_s)),
        memory_bytes: Some(used_gib * gib),
        memory_limit_bytes: Some(4 * gib),
        net_in_bytes: Some(net.0),
        net_out_bytes: Some(net.1),
    };
    let t0: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    for (at, k) in [(t0, 0), (t0 + 30_000, 1)] {
        fake.set_usage("c-web-0", usage(k * 15, 1, (k * 1500, k * 100)));
        fake.set_usage("c-web-1", usage(k * 30, 3, (k * 500, k * 300)));
        api::engine::sample_metrics(&e.st.core, at).await;
    }
    let metrics = |q: &str| {
        format!("{vmss_id}/providers/Microsoft.Insights/metrics?api-version=2023-10-01&{q}")
    };
    let span = "timespan=2026-01-01T00:00:00Z/2026-01-01T00:02:00Z";

    // Across instances: CPU averaged over both, bytes summed.
    let (s, got) = send(&e, "GET", &metrics(&format!("metricnames=Percentage%20CPU,Network%20In%20Total&{span}&interval=PT1M&aggregation=average,total")), None).await;
    assert_eq!(s, StatusCode::OK, "{got}");
    check_metrics_shape(&got);
    let m = |name: &str, unit: &str, desc: &str, data: Value| {
        json!({
            "id": format!("{vmss_id}/providers/Microsoft.Insights/metrics/{name}"),
            "type": "Microsoft.Insights/metrics",
            "name": {"value": name, "localizedValue": name},
            "displayDescription": desc, "unit": unit, "errorCode": "Success",
            "timeseries": [{"data": data}],
        })
    };
    let cpu = model::metrics::Metric::PercentageCpu.description();
    let net = model::metrics::Metric::NetworkInTotal.description();
    assert_eq!(
        got,
        json!({
            "cost": 0,
            "timespan": "2026-01-01T00:00:00Z/2026-01-01T00:02:00Z",
            "interval": "PT1M",
            "namespace": "Microsoft.Compute/virtualMachineScaleSets",
            "resourceregion": "local",
            "value": [
                m("Percentage CPU", "Percent", cpu, json!([{"timeStamp": "2026-01-01T00:00:00Z", "average": 37.5, "total": 75.0}, {"timeStamp": "2026-01-01T00:01:00Z"}])),
                m("Network In Total", "Bytes", net, json!([{"timeStamp": "2026-01-01T00:00:00Z", "average": 1000.0, "total": 2000.0}, {"timeStamp": "2026-01-01T00:01:00Z"}])),
            ],
        })
    );

    // Split by VMName: memory per instance (the primary aggregation, Average), metadatavalues.
    let (s, got) = send(
        &e,
        "GET",
        &metrics(&format!(
            "metricnames=Available%20Memory%20Bytes&{span}&%24filter=VMName%20eq%20%27*%27"
        )),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{got}");
    check_metrics_shape(&got);
    let series = got["value"][0]["timeseries"].as_array().unwrap();
    let per_vm: Vec<(Value, Value)> = series
        .iter()
        .map(|t| {
            (
                t["metadatavalues"][0]["value"].clone(),
                t["data"][0]["average"].clone(),
            )
        })
        .collect();
    assert_eq!(
        per_vm,
        [
            (json!("web_0"), json!(3.0 * gib as f64)),
            (json!("web_1"), json!(gib as f64))
        ]
    );
    assert_eq!(
        series[0]["metadatavalues"][0]["name"],
        json!({"value": "vmname", "localizedValue": "vmname"})
    );

    // One instance, the whole timespan in one point.
    let (s, got) = send(
        &e,
        "GET",
        &metrics(&format!(
            "metricnames=network%20out%20total&{span}&interval=FULL&%24filter=VMName+eq+%27web_1%27"
        )),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(got["interval"], "PT2M");
    assert_eq!(
        got["value"][0]["timeseries"],
        json!([{"metadatavalues": [{"name": {"value": "vmname", "localizedValue": "vmname"}, "value": "web_1"}], "data": [{"timeStamp": "2026-01-01T00:00:00Z", "total": 300.0}]}])
    );

    // Definitions: Azure's four host metrics with their units, the VMName dimension.
    let (s, defs) = send(
        &e,
        "GET",
        &format!("{vmss_id}/providers/Microsoft.Insights/metricDefinitions?api-version=2023-10-01"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{defs}");
    let summary: Vec<(&str, &str, &str)> = defs["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"]["value"].as_str().unwrap(),
                d["unit"].as_str().unwrap(),
                d["primaryAggregationType"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("Percentage CPU", "Percent", "Average"),
            ("Available Memory Bytes", "Bytes", "Average"),
            ("Network In Total", "Bytes", "Total"),
            ("Network Out Total", "Bytes", "Total")
        ]
    );
    assert_eq!(
        defs["value"][0]["dimensions"],
        json!([{"value": "VMName", "localizedValue": "VMName"}])
    );
    assert_eq!(
        defs["value"][0]["metricAvailabilities"][0],
        json!({"timeGrain": "PT1M", "retention": "PT12H"})
    );

    // Refusals: Azure Monitor's BadRequest, nothing else; an unknown scale set is a 404.
    let many = vec!["Percentage%20CPU"; 21].join(",");
    for q in [
        "metricnames=Disk%20Read%20Bytes".to_string(),
        format!("metricnames={many}"),
        "interval=PT2M".into(),
        "timespan=2026-01-01T00:00:00Z/2026-03-01T00:00:00Z".into(),
        "timespan=yesterday".into(),
        "aggregation=median".into(),
        "$filter=Tier%20eq%20%27*%27".into(),
    ] {
        let (s, err) = send(&e, "GET", &metrics(&q), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {err}");
        assert_eq!(err["error"]["code"], "BadRequest", "{q}: {err}");
    }
    let (_, err) = send(&e, "GET", &metrics("metricnames=Disk%20Read%20Bytes"), None).await;
    assert!(err["error"]["message"].as_str().unwrap().starts_with("Failed to find metric configuration for provider: Microsoft.Compute, resource Type: virtualMachineScaleSets, metric: Disk Read Bytes, Valid metrics: Percentage CPU,Available Memory Bytes,Network In Total,Network Out Total"), "{err}");
    let other = format!("{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/nope/providers/Microsoft.Insights/metrics?api-version=2023-10-01");
    assert_eq!(send(&e, "GET", &other, None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        send(&e, "POST", &metrics(""), None).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

/// Autoscale settings through the API: PUT (201, then 200), GET, PATCH, list by group and by
/// subscription, the activity log, a missing target (404 with Azure's envelope), DELETE (200,
/// then 204), and DELETE still working once the scale set is gone.
#[tokio::test]
async fn autoscale_settings_crud() {
    let e = env("autoscale");
    let rg = format!("/subscriptions/{SUB_ID}/resourceGroups/rg");
    let vmss_id = format!("{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/web");
    let (s, b) = send(
        &e,
        "PUT",
        &format!("{rg}?api-version=2021-04-01"),
        Some(json!({"location": "local"})),
    )
    .await;
    assert!(s.is_success(), "{b}");
    let a = format!("{rg}/providers/Microsoft.Insights/autoscalesettings/auto");
    let q = "?api-version=2022-10-01";
    let body = |target: &str| {
        json!({"location": "local", "properties": {"enabled": true, "targetResourceUri": target,
        "profiles": [{"name": "p", "capacity": {"minimum": "1", "maximum": "3", "default": "1"}, "rules": []}]}})
    };
    let (s, b) = send(&e, "PUT", &format!("{a}{q}"), Some(body(&vmss_id))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert_eq!(b["error"]["code"], "ResourceNotFound");
    let vmss = json!({"sku": {"capacity": 0}, "properties": {"upgradePolicy": {"mode": "Manual"}, "virtualMachineProfile": {}}});
    let (s, b) = send(
        &e,
        "PUT",
        &format!("{vmss_id}?api-version=2024-11-01"),
        Some(vmss),
    )
    .await;
    assert!(s.is_success(), "{b}");
    let (s, b) = send(&e, "PUT", &format!("{a}{q}"), Some(body(&vmss_id))).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(
        b["id"],
        format!("{rg}/providers/microsoft.insights/autoscalesettings/auto")
    );
    assert_eq!(b["type"], "Microsoft.Insights/autoscaleSettings");
    assert_eq!(b["properties"]["targetResourceUri"], vmss_id);
    let (s, _) = send(&e, "PUT", &format!("{a}{q}"), Some(body(&vmss_id))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = send(
        &e,
        "PATCH",
        &format!("{a}{q}"),
        Some(json!({"properties": {"enabled": false}})),
    )
    .await;
    assert_eq!(
        (s, &b["properties"]["enabled"]),
        (StatusCode::OK, &json!(false)),
        "{b}"
    );
    let (s, b) = send(&e, "GET", &format!("{a}{q}"), None).await;
    assert_eq!(
        (s, &b["properties"]["enabled"]),
        (StatusCode::OK, &json!(false))
    );
    for list in [
        format!("{rg}/providers/Microsoft.Insights/autoscalesettings{q}"),
        format!("/subscriptions/{SUB_ID}/providers/microsoft.insights/autoscalesettings{q}"),
    ] {
        let (s, b) = send(&e, "GET", &list, None).await;
        assert_eq!(s, StatusCode::OK, "{list}: {b}");
        assert_eq!(b["value"][0]["name"], "auto", "{list}");
    }
    let (s, b) = send(&e, "GET", &format!("{a}/activityLog{q}"), None).await;
    assert_eq!((s, b), (StatusCode::OK, json!({"value": []})));
    let (s, b) = send(
        &e,
        "PUT",
        &format!("{a}{q}"),
        Some(json!({"location": "local", "properties": {"bogus": 1}})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(b["error"]["message"].is_string());
    // The scale set goes (as the engine removes it); the setting is still read and deleted.
    e.st.cp
        .store
        .delete(
            &api::route::Res {
                sub: SUB_ID.into(),
                rg: "rg".into(),
                name: "web".into(),
            }
            .key(api::route::VMSS),
        )
        .unwrap();
    let (s, _) = send(&e, "GET", &format!("{a}{q}"), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = send(&e, "DELETE", &format!("{a}{q}"), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = send(&e, "DELETE", &format!("{a}{q}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, b) = send(&e, "GET", &format!("{a}{q}"), None).await;
    assert_eq!(
        (s, &b["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("ResourceNotFound"))
    );
}

/// Autoscale settings against `autoscale_API.json` (2022-10-01): Microsoft's example PUT and
/// PATCH bodies are sent (their target scale set created first), and every answer — PUT 201 and
/// 200, GET, PATCH, both lists, DELETE 200 and 204, a missing target's 404 — must match the spec.
#[tokio::test]
async fn autoscale_settings_match_the_spec() {
    let Some(root) = spec_root() else { return };
    const FILE: &str =
        "monitor/resource-manager/Microsoft.Insights/stable/2022-10-01/autoscale_API.json";
    let examples =
        root.join("monitor/resource-manager/Microsoft.Insights/stable/2022-10-01/examples");
    let example = |name: &str| -> Value {
        let text = std::fs::read_to_string(examples.join(name)).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let specs = Specs::new(root.clone());
    let e = env("autoscale-spec");
    let put = example("createOrUpdateAutoscaleSetting.json");
    let p = &put["parameters"];
    let (sub, rg, name) = (
        p["subscriptionId"].as_str().unwrap(),
        p["resourceGroupName"].as_str().unwrap(),
        p["autoscaleSettingName"].as_str().unwrap(),
    );
    let group = format!("/subscriptions/{sub}/resourceGroups/{rg}");
    let setting = format!("{group}/providers/microsoft.insights/autoscalesettings/{name}");
    let mut violations = Vec::new();
    let mut check =
        |method: &str, path: &str, request: Option<&Value>, s: StatusCode, v: &Value| {
            violations.extend(specs.check_exchange(
                &[FILE],
                method,
                path,
                request,
                s.as_u16(),
                v,
                &|_| false,
            ));
        };
    let q = "?api-version=2022-10-01";
    let body = &p["parameters"];
    // The target does not exist yet: Azure's 404 in the spec's error shape.
    send(
        &e,
        "PUT",
        &format!("{group}?api-version=2021-04-01"),
        Some(json!({"location": "local"})),
    )
    .await;
    let (s, v) = send(&e, "PUT", &format!("{setting}{q}"), Some(body.clone())).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    check("PUT", &setting, Some(body), s, &v);
    let vmss = json!({"sku": {"capacity": 0}, "properties": {"upgradePolicy": {"mode": "Manual"}, "virtualMachineProfile": {}}});
    let (s, v) = send(&e, "PUT", &format!("{group}/providers/Microsoft.Compute/virtualMachineScaleSets/testingsc?api-version=2024-11-01"), Some(vmss)).await;
    assert!(s.is_success(), "{v}");
    for want in [StatusCode::CREATED, StatusCode::OK] {
        let (s, v) = send(&e, "PUT", &format!("{setting}{q}"), Some(body.clone())).await;
        assert_eq!(s, want, "{v}");
        check("PUT", &setting, Some(body), s, &v);
    }
    let patch = example("patchAutoscaleSetting.json");
    let patch_body = &patch["parameters"]["autoscaleSettingResource"];
    let (s, v) = send(
        &e,
        "PATCH",
        &format!("{setting}{q}"),
        Some(patch_body.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    check("PATCH", &setting, Some(patch_body), s, &v);
    for path in [
        setting.clone(),
        format!("{group}/providers/microsoft.insights/autoscalesettings"),
        format!("/subscriptions/{sub}/providers/microsoft.insights/autoscalesettings"),
    ] {
        let (s, v) = send(&e, "GET", &format!("{path}{q}"), None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        check("GET", &path, None, s, &v);
    }
    for want in [StatusCode::OK, StatusCode::NO_CONTENT] {
        let (s, v) = send(&e, "DELETE", &format!("{setting}{q}"), None).await;
        assert_eq!(s, want);
        check("DELETE", &setting, None, s, &v);
    }
    assert!(
        violations.is_empty(),
        "{} spec violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
    // The validator sees these operations: an undeclared member is caught.
    let mut bad = model::autoscale::render(&model::autoscale::parse(body).unwrap(), &setting, name);
    bad["properties"]["bogus"] = json!(1);
    assert!(!specs
        .check_exchange(&[FILE], "GET", &setting, None, 200, &bad, &|_| false)
        .is_empty());
}

const RESOURCES: &str =
    "resources/resource-manager/Microsoft.Resources/resources/stable/2025-04-01/resources.json";

/// Percent-encodes a path segment (UTF-8 bytes outside ARM's plain characters).
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'(' | b')' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Contract {
    /// A HEAD (ARM's existence check): its status, after checking that it has no body; a
    /// resource group's against `ResourceGroups_CheckExistence`.
    async fn head(&self, path: &str, api_version: &str) -> u16 {
        let uri = format!("{path}?api-version={api_version}");
        let (s, v) = send(&self.e, "HEAD", &uri, None).await;
        if !v.is_null() {
            self.flag(format!("HEAD {path}: a body {v}"));
        }
        if path.trim_matches('/').split('/').count() == 4 {
            for x in
                self.specs
                    .check_exchange(&[RESOURCES], "HEAD", path, None, s.as_u16(), &v, &|_| false)
            {
                self.flag(x);
            }
            self.seen
                .borrow_mut()
                .insert(format!("ResourceGroups_CheckExistence {}", s.as_u16()));
        }
        s.as_u16()
    }

    /// A child PUT or DELETE of a load balancer (Microsoft's specs define probes and rules
    /// only as members of the parent): the body and the answer against the child's definition
    /// (`Probe`, `LoadBalancingRule`), errors against `CloudError`'s shape.
    async fn child(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        def: &str,
    ) -> (StatusCode, Value) {
        let uri = format!("{path}?api-version=2024-05-01");
        let (s, v) = send(&self.e, method, &uri, body.clone()).await;
        let file = format!("{NETWORK}/loadBalancer.json");
        let found =
            self.specs
                .check_lb_child(&file, def, (method, path), body.as_ref(), s.as_u16(), &v);
        for x in found {
            self.flag(x);
        }
        (s, v)
    }
}

/// The ARM surface Microsoft's SDKs call beyond create/read/update/delete: existence checks
/// (HEAD), Unicode resource group names, the load balancer's child resources (list and get as
/// the spec defines them; PUT and DELETE of probes and rules, validated as the parent's PUT),
/// per-instance power actions, and Azure's refusal of an api-version a type does not speak.
#[tokio::test]
async fn arm_surface_the_sdks_call() {
    let Some(root) = spec_root() else { return };
    let c = Contract::new("surface", root);
    let sub = format!("/subscriptions/{SUB_ID}");
    let rg = format!("{sub}/resourceGroups/rg");
    let lb = format!("{rg}/providers/Microsoft.Network/loadBalancers/lb");
    let vmss = format!("{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/web");

    // Resource groups: HEAD before and after, in every version the SDK and our CLI send.
    assert_eq!(c.head(&rg, "2025-04-01").await, 404);
    c.call("PUT", &rg, Some(json!({"location": "local"}))).await;
    assert_eq!(c.head(&rg, "2025-04-01").await, 204);
    assert_eq!(c.head(&rg, "2021-04-01").await, 204);
    assert_eq!(
        c.head(&format!("{sub}/resourceGroups/RG"), "2025-04-01")
            .await,
        204
    );
    // Azure's naming rule: Unicode letters and digits, _-.() , up to 90, not ending in '.'.
    let name = "Grupo-Producción_(1).資源";
    let uni = format!("{sub}/resourceGroups/{}", pct(name));
    let (s, v) = c
        .call("PUT", &uni, Some(json!({"location": "local"})))
        .await;
    assert_eq!((s, &v["name"]), (StatusCode::CREATED, &json!(name)), "{v}");
    let upper = format!("{sub}/resourceGroups/{}", pct(&name.to_uppercase()));
    assert_eq!(
        c.head(&upper, "2025-04-01").await,
        204,
        "names compare without case"
    );
    let (s, v) = c.call("GET", &upper, None).await;
    assert_eq!((s, &v["name"]), (StatusCode::OK, &json!(name)), "{v}");
    for bad in ["ends.", "has space", "emoji😀", &"ü".repeat(91)] {
        let path = format!("{sub}/resourceGroups/{}", pct(bad));
        let (s, v) = c.call_bad("PUT", &path, json!({"location": "local"})).await;
        assert_eq!(
            (s, &v["error"]["code"]),
            (StatusCode::BAD_REQUEST, &json!("InvalidResourceName")),
            "{bad}: {v}"
        );
    }
    assert_eq!(c.call("DELETE", &uni, None).await.0, StatusCode::OK);
    assert_eq!(c.head(&uni, "2025-04-01").await, 404);

    // Resources: HEAD as `resources.check_existence_by_id` sends it.
    assert_eq!(c.head(&lb, "2024-05-01").await, 404);
    c.call("PUT", &lb, Some(lb_body(&lb, 18191))).await;
    import_image(&c.e, "img1");
    let (s, v) = c
        .call("PUT", &vmss, Some(vmss_body(&rg, &lb, "img1")))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(c.head(&lb, "2024-05-01").await, 204);
    // `resources.check_existence` with an empty parent resource path.
    let generic = format!("{rg}/providers/Microsoft.Network//loadBalancers/lb");
    assert_eq!(c.head(&generic, "2024-05-01").await, 204);
    assert_eq!(c.head(&format!("{lb}x"), "2024-05-01").await, 404);
    assert_eq!(c.head(&vmss, "2024-11-01").await, 204);
    assert_eq!(c.head(&format!("{vmss}x"), "2024-11-01").await, 404);
    assert_eq!(c.head(&image_id(&rg, "img1"), "2024-11-01").await, 204);
    assert_eq!(c.head(&image_id(&rg, "nope"), "2024-11-01").await, 404);

    // The load balancer's children: list and get, as the spec defines them.
    for (coll, name) in [
        ("frontendIPConfigurations", "fe"),
        ("backendAddressPools", "be"),
        ("probes", "p"),
        ("loadBalancingRules", "r"),
    ] {
        let (s, v) = c.call("GET", &format!("{lb}/{coll}"), None).await;
        assert_eq!(
            (s, v["value"].as_array().map(Vec::len)),
            (StatusCode::OK, Some(1)),
            "{coll}: {v}"
        );
        let (s, v) = c
            .call("GET", &format!("{lb}/{coll}/{}", name.to_uppercase()), None)
            .await;
        assert_eq!(
            (s, &v["name"]),
            (StatusCode::OK, &json!(name)),
            "{coll}: {v}"
        );
        assert_eq!(v["id"], json!(format!("{lb}/{coll}/{name}")));
        let (s, _) = c.call("GET", &format!("{lb}/{coll}/nope"), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{coll}");
        let (s, _) = c.call("GET", &format!("{lb}x/{coll}"), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{coll}");
    }

    // PUT and DELETE of probes and rules: the parent's validation, read-modify-write.
    let tcp = json!({"properties": {"protocol": "Tcp", "port": 8080, "intervalInSeconds": 5}});
    let (s, v) = c
        .child(
            "PUT",
            &format!("{lb}/probes/tcp"),
            Some(tcp.clone()),
            "Probe",
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        v["properties"]["probeThreshold"],
        json!(1),
        "the parent's defaults: {v}"
    );
    let (s, _) = c
        .child("PUT", &format!("{lb}/probes/tcp"), Some(tcp), "Probe")
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, parent) = c.call("GET", &lb, None).await;
    assert_eq!(
        parent["properties"]["probes"].as_array().map(Vec::len),
        Some(2)
    );
    let (s, v) = c
        .child(
            "PUT",
            &format!("{lb}/probes/bad"),
            Some(json!({"properties": {"protocol": "Tcp", "port": 80, "probeThreshold": 0}})),
            "Probe",
        )
        .await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("InvalidParameter")),
        "{v}"
    );
    let rule = |port: u16, probe: &str| {
        json!({"properties": {"protocol": "Tcp", "frontendPort": port, "backendPort": 8080,
            "frontendIPConfiguration": {"id": format!("{lb}/frontendIPConfigurations/fe")},
            "backendAddressPool": {"id": format!("{lb}/backendAddressPools/be")},
            "probe": {"id": format!("{lb}/probes/{probe}")}}})
    };
    let (s, v) = c
        .child(
            "PUT",
            &format!("{lb}/loadBalancingRules/r2"),
            Some(rule(18192, "tcp")),
            "LoadBalancingRule",
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["properties"]["idleTimeoutInMinutes"], json!(4), "{v}");
    let (s, v) = c
        .child(
            "PUT",
            &format!("{lb}/loadBalancingRules/r3"),
            Some(rule(18193, "missing")),
            "LoadBalancingRule",
        )
        .await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("InvalidResourceReference")),
        "{v}"
    );
    // Another load balancer's frontend port, as for the parent's PUT.
    let other = format!("{rg}/providers/Microsoft.Network/loadBalancers/other");
    c.call("PUT", &other, Some(lb_body(&other, 18194))).await;
    let (s, v) = c
        .child(
            "PUT",
            &format!("{lb}/loadBalancingRules/r3"),
            Some(rule(18194, "tcp")),
            "LoadBalancingRule",
        )
        .await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (StatusCode::CONFLICT, &json!("FrontendPortInUse")),
        "{v}"
    );
    let (s, v) = c
        .child(
            "PUT",
            &format!("{lb}/loadBalancingRules/r3"),
            Some(json!({"name": "r4"})),
            "LoadBalancingRule",
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // A probe a rule uses cannot go; the one rule on the scale set's health probe cannot either.
    let (s, v) = c
        .child("DELETE", &format!("{lb}/probes/tcp"), None, "Probe")
        .await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("InvalidResourceReference")),
        "{v}"
    );
    let (s, v) = c
        .child(
            "DELETE",
            &format!("{lb}/loadBalancingRules/r"),
            None,
            "LoadBalancingRule",
        )
        .await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (
            StatusCode::BAD_REQUEST,
            &json!("CannotRemoveRuleUsedByProbeUsedByVMSS")
        ),
        "{v}"
    );
    let (s, _) = c
        .child(
            "DELETE",
            &format!("{lb}/loadBalancingRules/r2"),
            None,
            "LoadBalancingRule",
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = c
        .child(
            "DELETE",
            &format!("{lb}/loadBalancingRules/r2"),
            None,
            "LoadBalancingRule",
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = c
        .child("DELETE", &format!("{lb}/probes/tcp"), None, "Probe")
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, parent) = c.call("GET", &lb, None).await;
    assert_eq!(
        parent["properties"]["probes"].as_array().map(Vec::len),
        Some(1),
        "{parent}"
    );
    assert_eq!(
        parent["properties"]["loadBalancingRules"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    // Pools and frontends go with the parent.
    let (s, _) = send(
        &c.e,
        "PUT",
        &format!("{lb}/backendAddressPools/be2?api-version=2024-05-01"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);

    // Per-instance power actions (VirtualMachineScaleSetVMs_*), and the instance's DELETE.
    add_instances(&c.e, "rg", "web", 2);
    for action in [
        "start",
        "powerOff",
        "deallocate",
        "restart",
        "reimage",
        "reimageall",
        "redeploy",
    ] {
        let (s, v) = c
            .call("POST", &format!("{vmss}/virtualMachines/0/{action}"), None)
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{action}: {v}");
    }
    let (s, v) = c
        .call("POST", &format!("{vmss}/virtualMachines/7/restart"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(
        c.call("DELETE", &format!("{vmss}/virtualMachines/1"), None)
            .await
            .0,
        StatusCode::ACCEPTED
    );

    // An api-version the type does not speak: Azure's 400s.
    for (path, version, code) in [
        (vmss.clone(), "2015-06-15", "NoRegisteredProviderFound"),
        (
            format!("{lb}/probes"),
            "2024-11-01",
            "NoRegisteredProviderFound",
        ),
        (rg.clone(), "2016-01-01", "InvalidApiVersionParameter"),
        (
            format!("{sub}/resourcegroups"),
            "2099-12-31",
            "InvalidApiVersionParameter",
        ),
    ] {
        let (s, v) = send(&c.e, "GET", &format!("{path}?api-version={version}"), None).await;
        assert_eq!(
            (s, &v["error"]["code"]),
            (StatusCode::BAD_REQUEST, &json!(code)),
            "{path}: {v}"
        );
        assert!(
            v["error"]["message"].as_str().unwrap().contains(version),
            "{v}"
        );
    }
    c.assert_clean();
}
