//! The azure provider against a local replay server that answers with Microsoft's example
//! responses (../shared/specs/azure-rest-api) in a scripted order, recording every request.
//! Delays are recorded by a fake sleeper instead of slept through.
use azure::blob::{Blobs, DropSpec};
use azure::client::{ArmClient, Sleeper};
use azure::credential::{
    self, AzCli, Cached, ClientSecret, Credential, ManagedIdentity, StaticToken,
};
use azure::ops::{ImageTemplate, ImageUpdate};
use azure::transport::{BoxFuture, CurlTransport, HttpTransport, Transport};
use azure::{Azure, AzureError};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use support::replay::{example, have_specs, response, Replay, Seen};

mod support {
    pub mod replay;
    #[path = "../../../api/tests/support/swagger.rs"]
    pub mod swagger;
}

const SUB: &str = "00000000-0000-0000-0000-0000000000aa";
const COMPUTE_EX: &str =
    "compute/resource-manager/Microsoft.Compute/ComputeRP/stable/2024-11-01/examples";
const NETWORK_EX: &str = "network/resource-manager/Microsoft.Network/stable/2024-05-01/examples";
const AIB_EX: &str =
    "imagebuilder/resource-manager/Microsoft.VirtualMachineImages/stable/2024-02-01/examples";

#[derive(Default)]
struct RecSleeper(Mutex<Vec<Duration>>);

impl Sleeper for RecSleeper {
    fn sleep(&self, d: Duration) -> BoxFuture<'_, ()> {
        self.0.lock().unwrap().push(d);
        Box::pin(async {})
    }
}

impl RecSleeper {
    fn take(&self) -> Vec<Duration> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

fn azure_with(
    r: &Replay,
    transport: Arc<dyn Transport>,
    cred: Arc<dyn Credential>,
) -> (Azure, Arc<RecSleeper>) {
    let sl = Arc::new(RecSleeper::default());
    let c = ArmClient::new(&r.base, transport, cred)
        .unwrap()
        .with_sleeper(sl.clone());
    (Azure::new(c, SUB), sl)
}

fn azure(r: &Replay) -> (Azure, Arc<RecSleeper>) {
    azure_with(
        r,
        Arc::new(HttpTransport::new(Duration::from_secs(10))),
        Arc::new(StaticToken::arm("tok")),
    )
}

fn req(method: &str, path: &str, body: Option<Value>) -> Seen {
    Seen {
        method: method.into(),
        path: path.into(),
        auth: Some("Bearer tok".into()),
        body,
    }
}

fn vmss(rg: &str, name: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/{name}")
}

const V: &str = "?api-version=2024-11-01";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[tokio::test]
async fn throttled_get_honours_retry_after_then_returns_the_resource() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let (az, sl) = azure(&r);
    let body = response(
        &format!("{COMPUTE_EX}/virtualMachineScaleSetExamples/VirtualMachineScaleSet_Get.json"),
        "200",
    );
    r.push(
        429,
        &[("Retry-After", "3")],
        Some(&json!({"error": {"code": "TooManyRequests", "message": "throttled"}})),
    );
    r.push(
        503,
        &[(
            "Retry-After",
            &httpdate::fmt_http_date(SystemTime::now() + secs(30)),
        )],
        None,
    );
    r.push(200, &[], Some(&body));
    let v = az.vmss_get("myResourceGroup", "myScaleSet").await.unwrap();
    assert_eq!(v, body);
    let get = req(
        "GET",
        &format!("{}{V}", vmss("myResourceGroup", "myScaleSet")),
        None,
    );
    assert_eq!(r.seen(), vec![get.clone(), get.clone(), get]);
    let slept = sl.take();
    assert_eq!(slept[0], secs(3));
    // The HTTP date form: about 30 s from now (whole seconds on the wire).
    assert!(slept[1] > secs(27) && slept[1] <= secs(30), "{slept:?}");
    assert_eq!(slept.len(), 2);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_then_surfaced() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let (az, sl) = azure(&r);
    let err = json!({"error": {"code": "InternalServerError", "message": "An unexpected error occured while processing the request."}});
    for _ in 0..4 {
        r.push(500, &[], Some(&err));
    }
    let e = az.vmss_get("rg", "web").await.unwrap_err();
    assert_eq!(
        e,
        AzureError::Api {
            status: 500,
            code: "InternalServerError".into(),
            message: "An unexpected error occured while processing the request.".into()
        }
    );
    assert_eq!(r.seen().len(), 4);
    let slept = sl.take();
    assert_eq!(slept.len(), 3);
    for (d, base) in slept.iter().zip([0.8, 1.6, 3.2]) {
        let s = d.as_secs_f64();
        assert!(s >= base * 0.8 && s <= base * 1.2, "{slept:?}");
    }
    // Not retried: a client error.
    r.push(
        404,
        &[],
        Some(&json!({"error": {"code": "ResourceNotFound", "message": "The Resource 'Microsoft.Compute/virtualMachineScaleSets/web' under resource group 'rg' was not found."}})),
    );
    let e = az.vmss_get("rg", "web").await.unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert_eq!(r.seen().len(), 5);
    assert!(sl.take().is_empty());
}

#[tokio::test]
async fn patch_polls_azure_async_operation_then_reads_the_resource() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let (az, sl) = azure(&r);
    let ex = example(&format!(
        "{COMPUTE_EX}/virtualMachineScaleSetExamples/VirtualMachineScaleSet_Update_MaximumSet_Gen.json"
    ));
    let patch = ex["parameters"]["parameters"].clone();
    let done = ex["responses"]["200"]["body"].clone();
    let mut updating = done.clone();
    updating["properties"]["provisioningState"] = json!("Updating");
    let op = format!(
        "/subscriptions/{SUB}/providers/Microsoft.Compute/locations/westus/operations/op-1{V}"
    );
    r.push(
        200,
        &[
            ("Azure-AsyncOperation", &format!("{{base}}{op}")),
            ("Retry-After", "1"),
        ],
        Some(&updating),
    );
    r.push(
        200,
        &[("Retry-After", "2")],
        Some(&json!({"status": "InProgress", "startTime": "2026-11-26T06:00:00Z"})),
    );
    r.push(
        200,
        &[],
        Some(&json!({"status": "Succeeded", "startTime": "2026-11-26T06:00:00Z", "endTime": "2026-11-26T06:01:00Z"})),
    );
    r.push(200, &[], Some(&done));
    let v = az.vmss_update("rgcompute", "web", &patch).await.unwrap();
    assert_eq!(v, done);
    let res = format!("{}{V}", vmss("rgcompute", "web"));
    assert_eq!(
        r.seen(),
        vec![
            req("PATCH", &res, Some(patch)),
            req("GET", &op, None),
            req("GET", &op, None),
            req("GET", &res, None),
        ]
    );
    assert_eq!(sl.take(), vec![secs(1), secs(2)]);
}

#[tokio::test]
async fn manual_upgrade_polls_location_until_not_202() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let (az, sl) = azure(&r);
    let ex = example(&format!(
        "{COMPUTE_EX}/virtualMachineScaleSetExamples/VirtualMachineScaleSet_UpdateInstances_MaximumSet_Gen.json"
    ));
    let ids: Vec<String> =
        serde_json::from_value(ex["parameters"]["vmInstanceIDs"]["instanceIds"].clone()).unwrap();
    let loc = format!(
        "/subscriptions/{SUB}/providers/Microsoft.Compute/locations/westus/operationResults/op-2{V}"
    );
    r.push(202, &[("Location", &format!("{{base}}{loc}"))], None);
    r.push(202, &[("Retry-After", "1")], None);
    r.push(200, &[], None);
    az.vmss_manual_upgrade("rgcompute", "web", &ids)
        .await
        .unwrap();
    assert_eq!(
        r.seen(),
        vec![
            req(
                "POST",
                &format!("{}/manualupgrade{V}", vmss("rgcompute", "web")),
                Some(json!({"instanceIds": ids}))
            ),
            req("GET", &loc, None),
            req("GET", &loc, None),
        ]
    );
    // No Retry-After on the 202: the client's default poll interval.
    assert_eq!(sl.take(), vec![secs(5), secs(1)]);
}

#[tokio::test]
async fn operation_urls_elsewhere_do_not_get_the_token() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let (az, _) = azure(&r);
    let ex = example(&format!(
        "{COMPUTE_EX}/virtualMachineScaleSetExamples/VirtualMachineScaleSet_UpdateInstances_MaximumSet_Gen.json"
    ));
    // The example's own Location header is another host.
    let foreign = ex["responses"]["202"]["headers"]["location"]
        .as_str()
        .unwrap()
        .to_string();
    r.push(202, &[("Location", &foreign)], None);
    let e = az
        .vmss_manual_upgrade("rg", "web", &["0".into()])
        .await
        .unwrap_err();
    assert_eq!(e, AzureError::ForeignHost(foreign));
    assert_eq!(r.seen().len(), 1);
}

#[tokio::test]
async fn failed_operation_surfaces_its_error() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let (az, _) = azure(&r);
    let op = format!(
        "/subscriptions/{SUB}/providers/Microsoft.Compute/locations/westus/operations/op-3{V}"
    );
    r.push(
        202,
        &[
            ("Azure-AsyncOperation", &format!("{{base}}{op}")),
            ("Retry-After", "0"),
        ],
        None,
    );
    r.push(
        200,
        &[],
        Some(&json!({"status": "Failed", "error": {"code": "OperationNotAllowed", "message": "The operation is not allowed while a rolling upgrade is in progress."}})),
    );
    let e = az.vmss_delete("rg", "web").await.unwrap_err();
    assert_eq!(
        e,
        AzureError::Operation {
            status: "Failed".into(),
            code: "OperationNotAllowed".into(),
            message: "The operation is not allowed while a rolling upgrade is in progress.".into()
        }
    );
    assert_eq!(e.to_string(), "(OperationNotAllowed) The operation is not allowed while a rolling upgrade is in progress.");
    assert_eq!(
        r.seen(),
        vec![
            req("DELETE", &format!("{}{V}", vmss("rg", "web")), None),
            req("GET", &op, None)
        ]
    );
}

#[tokio::test]
async fn list_instances_follows_next_link() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let (az, _) = azure(&r);
    let mut page1 = response(
        &format!("{COMPUTE_EX}/virtualMachineScaleSetExamples/VirtualMachineScaleSetVM_List_MaximumSet_Gen.json"),
        "200",
    );
    let first_id = page1["value"][0]["instanceId"].clone();
    let vms = format!("{}/virtualMachines", vmss("rgcompute", "web"));
    let next = format!("{vms}{V}&$skiptoken=page2");
    page1["nextLink"] = json!(format!("{}{next}", r.base));
    let mut item2 = page1["value"][0].clone();
    item2["instanceId"] = json!("7");
    let page2 = json!({"value": [item2]});
    r.push(200, &[], Some(&page1));
    r.push(200, &[], Some(&page2));
    let items = az.vmss_list_instances("rgcompute", "web").await.unwrap();
    let ids: Vec<&Value> = items.iter().map(|i| &i["instanceId"]).collect();
    assert_eq!(ids, vec![&first_id, &json!("7")]);
    assert_eq!(
        r.seen(),
        vec![
            req("GET", &format!("{vms}{V}"), None),
            req("GET", &next, None)
        ]
    );
}

#[tokio::test]
async fn load_balancer_and_image() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let (az, _) = azure(&r);
    let ex = example(&format!("{NETWORK_EX}/LoadBalancerCreateWithZones.json"));
    let body = ex["parameters"]["parameters"].clone();
    let created = ex["responses"]["201"]["body"].clone();
    let got = ex["responses"]["200"]["body"].clone();
    let lb = format!(
        "/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Network/loadBalancers/lb"
    );
    let op = format!("/subscriptions/{SUB}/providers/Microsoft.Network/locations/eastus/operations/op-4?api-version=2024-05-01");
    r.push(
        201,
        &[
            ("Azure-AsyncOperation", &format!("{{base}}{op}")),
            ("Retry-After", "10"),
        ],
        Some(&created),
    );
    r.push(200, &[], Some(&json!({"status": "Succeeded"})));
    r.push(200, &[], Some(&got));
    assert_eq!(
        az.lb_create_or_update("rg1", "lb", &body).await.unwrap(),
        got
    );
    r.push(200, &[], Some(&got));
    assert_eq!(az.lb_get("rg1", "lb").await.unwrap(), got);
    let image = response(&format!("{COMPUTE_EX}/imageExamples/Image_Get.json"), "200");
    r.push(200, &[], Some(&image));
    assert_eq!(
        az.image_get("myResourceGroup", "myImage").await.unwrap(),
        image
    );
    let lbv = format!("{lb}?api-version=2024-05-01");
    assert_eq!(
        r.seen(),
        vec![
            req("PUT", &lbv, Some(body)),
            req("GET", &op, None),
            req("GET", &lbv, None),
            req("GET", &lbv, None),
            req("GET", &format!("/subscriptions/{SUB}/resourceGroups/myResourceGroup/providers/Microsoft.Compute/images/myImage{V}"), None),
        ]
    );
}

fn image_patch(id: &str) -> Value {
    json!({"properties": {"virtualMachineProfile": {"storageProfile": {"imageReference": {"id": id}}}}})
}

const IMG: &str = "/subscriptions/00000000-0000-0000-0000-0000000000aa/resourceGroups/rg/providers/Microsoft.Compute/images/121";

fn not_found() -> Value {
    json!({"error": {"code": "NotFound", "message": "The entity was not found."}})
}

#[tokio::test]
async fn image_update_manual_upgrades_every_instance() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let (az, _) = azure(&r);
    let updated = response(
        &format!("{COMPUTE_EX}/virtualMachineScaleSetExamples/VirtualMachineScaleSet_Update_MaximumSet_Gen.json"),
        "200",
    );
    assert_eq!(updated["properties"]["upgradePolicy"]["mode"], "Manual");
    let mut list = response(
        &format!("{COMPUTE_EX}/virtualMachineScaleSetExamples/VirtualMachineScaleSetVM_List_MaximumSet_Gen.json"),
        "200",
    );
    list.as_object_mut().unwrap().remove("nextLink");
    let id = list["value"][0]["instanceId"].as_str().unwrap().to_string();
    r.push(404, &[], Some(&not_found()));
    r.push(200, &[], Some(&updated));
    r.push(200, &[], Some(&list));
    r.push(200, &[], None);
    let mut lines = vec![];
    let out = az
        .update_image("rg", "web", IMG, &mut |l| lines.push(l.to_string()))
        .await
        .unwrap();
    assert_eq!(out, ImageUpdate::ManualUpgraded(vec![id.clone()]));
    let s = vmss("rg", "web");
    assert_eq!(
        r.seen(),
        vec![
            req("GET", &format!("{s}/rollingUpgrades/latest{V}"), None),
            req("PATCH", &format!("{s}{V}"), Some(image_patch(IMG))),
            req("GET", &format!("{s}/virtualMachines{V}"), None),
            req(
                "POST",
                &format!("{s}/manualupgrade{V}"),
                Some(json!({"instanceIds": [id]}))
            ),
        ]
    );
    assert_eq!(lines, vec!["manual upgrade of 1 instances"]);
}

#[tokio::test]
async fn image_update_automatic_does_nothing_more() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let (az, _) = azure(&r);
    let got = response(
        &format!("{COMPUTE_EX}/virtualMachineScaleSetExamples/VirtualMachineScaleSet_Get.json"),
        "200",
    );
    assert_eq!(got["properties"]["upgradePolicy"]["mode"], "Automatic");
    r.push(404, &[], Some(&not_found()));
    r.push(200, &[], Some(&got));
    let out = az
        .update_image("rg", "web", IMG, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(out, ImageUpdate::Automatic);
    assert_eq!(r.seen().len(), 2);
    assert!(r.exhausted());
}

fn rolling_vmss() -> Value {
    let mut v = response(
        &format!("{COMPUTE_EX}/virtualMachineScaleSetExamples/VirtualMachineScaleSet_Get.json"),
        "200",
    );
    v["properties"]["upgradePolicy"]["mode"] = json!("Rolling");
    v
}

fn latest(code: &str, start: &str) -> Value {
    let mut v = response(
        &format!("{COMPUTE_EX}/virtualMachineScaleSetExamples/VirtualMachineScaleSetRollingUpgrade_GetLatest_MaximumSet_Gen.json"),
        "200",
    );
    v["properties"]["runningStatus"]["code"] = json!(code);
    v["properties"]["runningStatus"]["startTime"] = json!(start);
    v
}

#[tokio::test]
async fn image_update_rolling_follows_the_new_rollout() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let (az, sl) = azure(&r);
    let old = latest("Completed", "2026-11-25T10:00:00Z");
    r.push(200, &[], Some(&old));
    r.push(200, &[], Some(&rolling_vmss()));
    // Not started yet: the previous upgrade is still the latest.
    r.push(200, &[], Some(&old));
    let running = latest("RollingForward", "2026-11-26T07:00:00Z");
    r.push(200, &[], Some(&running));
    r.push(200, &[], Some(&running));
    r.push(200, &[], Some(&latest("Completed", "2026-11-26T07:00:00Z")));
    let mut lines = vec![];
    let out = az
        .update_image("rg", "web", IMG, &mut |l| lines.push(l.to_string()))
        .await
        .unwrap();
    assert_eq!(out, ImageUpdate::Rolled);
    assert_eq!(
        lines,
        vec!["rolling upgrade RollingForward: 6 succeeded, 25 failed, 20 in progress, 27 pending"]
    );
    let s = vmss("rg", "web");
    let l = req("GET", &format!("{s}/rollingUpgrades/latest{V}"), None);
    assert_eq!(
        r.seen(),
        vec![
            l.clone(),
            req("PATCH", &format!("{s}{V}"), Some(image_patch(IMG))),
            l.clone(),
            l.clone(),
            l.clone(),
            l
        ]
    );
    assert_eq!(sl.take(), vec![secs(5); 3]);
}

#[tokio::test]
async fn image_update_rolling_fault_is_an_error() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let (az, _) = azure(&r);
    r.push(404, &[], Some(&not_found()));
    r.push(200, &[], Some(&rolling_vmss()));
    let mut faulted = latest("Faulted", "2026-11-26T07:00:00Z");
    faulted["properties"]["error"]["code"] =
        json!("MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade");
    faulted["properties"]["error"]["message"] = json!("Too many upgraded instances are unhealthy.");
    r.push(200, &[], Some(&faulted));
    let e = az
        .update_image("rg", "web", IMG, &mut |_| {})
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "(MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade) Too many upgraded instances are unhealthy."
    );
    assert!(r.exhausted());
}

#[tokio::test]
async fn image_builder_template_run_and_output() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let (az, _) = azure(&r);
    let tpl = example(&format!("{AIB_EX}/CreateImageTemplateLinux.json"));
    let run = example(&format!("{AIB_EX}/RunImageTemplate.json"));
    let output = response(&format!("{AIB_EX}/GetRunOutput.json"), "200");
    let t = ImageTemplate {
        location: "westus".into(),
        identity: "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg1/providers/Microsoft.ManagedIdentity/userAssignedIdentities/identity_1".into(),
        source: ("Canonical".into(), "0001-com-ubuntu-server-jammy".into(), "22_04-lts".into(), "latest".into()),
        files: vec![("https://acct.blob.core.windows.net/drop/drop.tar.gz".into(), "/tmp/drop.tar.gz".into())],
        inline: vec!["sudo mkdir -p /deployTemp && sudo tar -xzf /tmp/drop.tar.gz -C /deployTemp".into()],
        image_id: "/subscriptions/s/resourceGroups/rg1/providers/Microsoft.Compute/images/121".into(),
        run_output_name: "myManagedImageOutput".into(),
        vm_size: "Standard_D2s_v3".into(),
    };
    let api = "?api-version=2024-02-01";
    let path = format!("/subscriptions/{SUB}/resourceGroups/myResourceGroup/providers/Microsoft.VirtualMachineImages/imageTemplates/myImageTemplate");
    let op1 = format!("/subscriptions/{SUB}/providers/Microsoft.VirtualMachineImages/locations/westus/operations/put-1{api}");
    // The run's operation URL as Microsoft's example has it, on the replay server.
    let op2 = run["responses"]["202"]["headers"]["Azure-AsyncOperation"]
        .as_str()
        .unwrap()
        .replace("https://management.azure.com", "")
        .replace("{subscription-id}", SUB)
        .replace("{location}", "westus")
        .replace("{operation-id}", "run-1");
    // No template from an earlier run.
    r.push(
        404,
        &[],
        Some(&json!({"error": {"code": "ResourceNotFound", "message": "not found"}})),
    );
    r.push(
        201,
        &[("Azure-AsyncOperation", &format!("{{base}}{op1}"))],
        Some(&tpl["responses"]["201"]["body"]),
    );
    r.push(200, &[], Some(&json!({"status": "Succeeded"})));
    r.push(200, &[], Some(&tpl["responses"]["200"]["body"]));
    r.push(
        202,
        &[("Azure-AsyncOperation", &format!("{{base}}{op2}"))],
        None,
    );
    r.push(200, &[], Some(&json!({"status": "Running"})));
    r.push(200, &[], Some(&json!({"status": "Succeeded"})));
    r.push(200, &[], Some(&output));
    let id = az
        .bake_with_image_builder("myResourceGroup", "myImageTemplate", &t)
        .await
        .unwrap();
    assert_eq!(id, output["properties"]["artifactId"].as_str().unwrap());
    assert_eq!(
        r.seen(),
        vec![
            req("DELETE", &format!("{path}{api}"), None),
            req(
                "PUT",
                &format!("{path}{api}"),
                Some(azure::ops::image_template_body(&t))
            ),
            req("GET", &op1, None),
            req("GET", &format!("{path}{api}"), None),
            req("POST", &format!("{path}/run{api}"), None),
            req("GET", &op2, None),
            req("GET", &op2, None),
            req(
                "GET",
                &format!("{path}/runOutputs/myManagedImageOutput{api}"),
                None
            ),
        ]
    );
}

#[tokio::test]
async fn curl_transport_speaks_to_the_replay_server() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let (az, sl) = azure_with(
        &r,
        Arc::new(CurlTransport::new(Duration::from_secs(10))),
        Arc::new(StaticToken::arm("tok")),
    );
    let ex = example(&format!("{NETWORK_EX}/LoadBalancerCreateWithZones.json"));
    let body = ex["parameters"]["parameters"].clone();
    let got = ex["responses"]["200"]["body"].clone();
    let op = format!("/subscriptions/{SUB}/providers/Microsoft.Network/locations/eastus/operations/op-5?api-version=2024-05-01");
    r.push(
        201,
        &[
            ("Azure-AsyncOperation", &format!("{{base}}{op}")),
            ("Retry-After", "4"),
        ],
        Some(&ex["responses"]["201"]["body"]),
    );
    r.push(429, &[("Retry-After", "2")], None);
    r.push(200, &[], Some(&json!({"status": "Succeeded"})));
    r.push(200, &[], Some(&got));
    assert_eq!(
        az.lb_create_or_update("rg1", "lb", &body).await.unwrap(),
        got
    );
    r.push(202, &[("Location", &format!("{{base}}/op-6{V}"))], None);
    r.push(204, &[], None);
    az.vmss_start_rolling_upgrade("rg1", "web").await.unwrap();
    let lbv = format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Network/loadBalancers/lb?api-version=2024-05-01");
    let rec = r.recorded();
    let seen: Vec<Seen> = rec.iter().map(|x| x.seen.clone()).collect();
    assert_eq!(
        seen,
        vec![
            req("PUT", &lbv, Some(body)),
            req("GET", &op, None),
            req("GET", &op, None),
            req("GET", &lbv, None),
            req(
                "POST",
                &format!("{}/osRollingUpgrade{V}", vmss("rg1", "web")),
                None
            ),
            req("GET", &format!("/op-6{V}"), None),
        ]
    );
    let h = |i: usize, k: &str| {
        rec[i]
            .headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(h(0, "content-type").as_deref(), Some("application/json"));
    // A body-less POST still says how long it is (ARM answers 411 otherwise).
    assert_eq!(h(4, "content-length").as_deref(), Some("0"));
    assert_eq!(sl.take(), vec![secs(4), secs(2), secs(5)]);
}

#[tokio::test]
async fn service_principal_token_is_fetched_once_and_used() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let http: Arc<dyn Transport> = Arc::new(HttpTransport::new(Duration::from_secs(10)));
    let sp = Cached::new(Box::new(ClientSecret {
        transport: http.clone(),
        authority: r.base.clone(),
        tenant: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
        client_id: "app-1".into(),
        secret: "s3cr&t=".into(),
    }));
    r.push(
        200,
        &[],
        Some(&json!({"token_type": "Bearer", "expires_in": 3599, "access_token": "sp-tok"})),
    );
    let (az, _) = azure_with(&r, http, Arc::new(sp));
    r.push(200, &[], Some(&json!({"id": "x"})));
    r.push(200, &[], Some(&json!({"id": "x"})));
    az.vmss_get("rg", "web").await.unwrap();
    az.vmss_get("rg", "web").await.unwrap();
    let rec = r.recorded();
    assert_eq!(rec.len(), 3);
    assert_eq!(rec[0].seen.method, "POST");
    assert_eq!(
        rec[0].seen.path,
        "/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token"
    );
    assert_eq!(rec[0].seen.auth, None);
    assert_eq!(
        rec[0].raw_body,
        "grant_type=client_credentials&client_id=app-1&client_secret=s3cr%26t%3D&scope=https%3A%2F%2Fmanagement.azure.com%2F.default"
    );
    for x in &rec[1..] {
        assert_eq!(x.seen.auth.as_deref(), Some("Bearer sp-tok"));
    }
}

#[tokio::test]
async fn managed_identity_asks_imds_and_renews_short_tokens() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let mi = Cached::new(Box::new(ManagedIdentity {
        transport: Arc::new(HttpTransport::new(Duration::from_secs(10))),
        endpoint: format!("{}/metadata/identity/oauth2/token", r.base),
        client_id: Some("cid-1".into()),
    }));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Expires within the renewal margin: fetched again on the next call. IMDS's transient
    // errors are retried.
    r.push(429, &[("Retry-After", "0")], None);
    r.push(200, &[], Some(&json!({"access_token": "mi-1", "expires_on": (now + 60).to_string(), "resource": "https://management.azure.com/", "token_type": "Bearer"})));
    r.push(
        200,
        &[],
        Some(&json!({"access_token": "mi-2", "expires_on": (now + 3600).to_string()})),
    );
    assert_eq!(
        mi.get_token(credential::ARM_RESOURCE).await.unwrap().token,
        "mi-1"
    );
    assert_eq!(
        mi.get_token(credential::ARM_RESOURCE).await.unwrap().token,
        "mi-2"
    );
    assert_eq!(
        mi.get_token(credential::ARM_RESOURCE).await.unwrap().token,
        "mi-2"
    );
    let rec = r.recorded();
    assert_eq!(rec.len(), 3);
    for x in &rec {
        assert_eq!(x.seen.path, "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F&client_id=cid-1");
        assert!(x
            .headers
            .iter()
            .any(|(k, v)| k == "metadata" && v == "true"));
    }
    r.push(
        400,
        &[],
        Some(&json!({"error": "invalid_request", "error_description": "Identity not found"})),
    );
    let bare = ManagedIdentity {
        transport: Arc::new(HttpTransport::new(Duration::from_secs(10))),
        endpoint: format!("{}/metadata/identity/oauth2/token", r.base),
        client_id: None,
    };
    let e = bare
        .get_token(credential::ARM_RESOURCE)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("cannot get an Azure access token: managed identity endpoint answered 400: "),
        "{e}"
    );
    assert!(e.contains("Identity not found"), "{e}");
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("azure-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn az_cli_credential_skips_our_own_shim() {
    if !have_specs() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let me = std::env::current_exe().unwrap();
    let shim = scratch("shim");
    // The pipeline's az shim is a copy of the scaleset binary.
    std::fs::copy(&me, shim.join("az")).unwrap();
    let real = scratch("real");
    let script = format!(
        "#!/bin/sh\n[ \"${}\" = 1 ] || exit 3\necho \"$@\" > {}/args\nprintf '{{\"accessToken\":\"cli-tok\",\"expires_on\":4102444800,\"tokenType\":\"Bearer\"}}'\n",
        credential::AZ_GUARD_ENV,
        real.display()
    );
    std::fs::write(real.join("az"), script).unwrap();
    std::fs::set_permissions(real.join("az"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = AzCli::find_in(shim.as_os_str(), Some(&me)).err().unwrap();
    assert!(e.to_string().contains("no az CLI on PATH"), "{e}");
    let path = std::env::join_paths([&shim, &real]).unwrap();
    let cli = AzCli::find_in(&path, Some(&me)).unwrap();
    assert_eq!(cli.program, real.join("az"));
    let t = cli.get_token(credential::ARM_RESOURCE).await.unwrap();
    assert_eq!(t.token, "cli-tok");
    assert_eq!(
        t.expires_at,
        SystemTime::UNIX_EPOCH + Duration::from_secs(4102444800)
    );
    assert_eq!(
        std::fs::read_to_string(real.join("args")).unwrap(),
        "account get-access-token --resource https://management.azure.com/ -o json\n"
    );
    let _ = std::fs::remove_dir_all(shim);
    let _ = std::fs::remove_dir_all(real);
}

fn blobs(transport: Arc<dyn Transport>, sl: Arc<RecSleeper>) -> Blobs {
    Blobs {
        transport,
        credential: Arc::new(StaticToken {
            arm: "tok".into(),
            storage: Some("stor-tok".into()),
        }),
        sleeper: sl,
        retry: Default::default(),
    }
}

#[tokio::test]
async fn drop_upload_through_curl_is_byte_exact_and_storage_errors_read_well() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let sl = Arc::new(RecSleeper::default());
    let b = blobs(
        Arc::new(CurlTransport::new(Duration::from_secs(10))),
        sl.clone(),
    );
    // Not UTF-8: staged in a temporary file for curl.
    let data: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    r.push(503, &[("Retry-After", "1")], None);
    r.push(201, &[], None);
    let url = format!("{}/drop/my_app-120.tar.gz", r.base);
    b.put_block_blob(&url, data.clone(), "application/gzip")
        .await
        .unwrap();
    let rec = r.recorded();
    assert_eq!(rec.len(), 2);
    for x in &rec {
        assert_eq!(x.seen.method, "PUT");
        assert_eq!(x.seen.path, "/drop/my_app-120.tar.gz");
        assert_eq!(x.seen.auth.as_deref(), Some("Bearer stor-tok"));
        assert_eq!(x.raw, data);
        let h = |k: &str| {
            x.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(h("x-ms-blob-type"), Some("BlockBlob"));
        assert_eq!(h("x-ms-version"), Some("2021-08-06"));
        assert_eq!(h("content-type"), Some("application/gzip"));
    }
    assert_eq!(sl.take(), vec![secs(1)]);
    r.push_raw(
        403,
        &[("x-ms-error-code", "AuthorizationPermissionMismatch")],
        b"<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthorizationPermissionMismatch</Code><Message>This request is not authorized to perform this operation using this permission.\nRequestId:1</Message></Error>",
    );
    let e = b
        .put_block_blob(&url, b"x".to_vec(), "application/gzip")
        .await
        .unwrap_err();
    assert_eq!(
        e,
        AzureError::Api {
            status: 403,
            code: "AuthorizationPermissionMismatch".into(),
            message:
                "This request is not authorized to perform this operation using this permission."
                    .into()
        }
    );
}

#[tokio::test]
async fn packer_build_uploads_the_drop_then_bakes_with_image_builder() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let (az, sl) = azure(&r);
    let b = blobs(Arc::new(HttpTransport::new(Duration::from_secs(10))), sl);
    let pkg = scratch("pkg").join("drop");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(
        pkg.join("setupscript.sh"),
        "#!/bin/sh\napt-get install -y nginx\n",
    )
    .unwrap();
    let tpl = example(&format!("{AIB_EX}/CreateImageTemplateLinux.json"));
    let output = response(&format!("{AIB_EX}/GetRunOutput.json"), "200");
    let t = ImageTemplate {
        location: "westus".into(),
        identity: "/subscriptions/s/resourcegroups/rg1/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aib".into(),
        source: ("Canonical".into(), "0001-com-ubuntu-server-jammy".into(), "22_04-lts".into(), "latest".into()),
        files: vec![],
        inline: vec![],
        image_id: "/subscriptions/s/resourceGroups/rg1/providers/Microsoft.Compute/images/120".into(),
        run_output_name: "myManagedImageOutput".into(),
        vm_size: "Standard_D2s_v3".into(),
    };
    let drop_url = format!("{}/drops/120.tar.gz", r.base);
    let op = format!("/subscriptions/{SUB}/providers/Microsoft.VirtualMachineImages/locations/westus/operations/o{V}");
    r.push(201, &[], None);
    // A template from an earlier run of the same build is replaced.
    r.push(200, &[], None);
    r.push(201, &[], Some(&tpl["responses"]["201"]["body"]));
    r.push(
        202,
        &[("Azure-AsyncOperation", &format!("{{base}}{op}"))],
        None,
    );
    r.push(200, &[], Some(&json!({"status": "Succeeded"})));
    r.push(200, &[], Some(&output));
    let id = az
        .packer_build(
            &b,
            "rg1",
            "img-120",
            &DropSpec {
                package: &pkg,
                script: "setupscript.sh",
                args: &[],
                url: &drop_url,
            },
            t,
        )
        .await
        .unwrap();
    assert_eq!(id, output["properties"]["artifactId"].as_str().unwrap());
    let rec = r.recorded();
    assert_eq!(rec[0].seen.path, "/drops/120.tar.gz");
    assert_eq!(rec[0].seen.auth.as_deref(), Some("Bearer stor-tok"));
    // The uploaded drop is the package under its folder name.
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&rec[0].raw[..]));
    let names: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(
        names.contains(&"drop/setupscript.sh".to_string()),
        "{names:?}"
    );
    assert_eq!(rec[1].seen.method, "DELETE");
    let put = rec[2].seen.body.clone().unwrap();
    assert_eq!(rec[2].seen.method, "PUT");
    assert_eq!(
        put["properties"]["customize"],
        json!([
            {"type": "File", "name": "file0", "sourceUri": drop_url, "destination": "/tmp/scaleset-drop.tar.gz"},
            {"type": "Shell", "name": "deploy", "inline": [
                "sudo mkdir -p /deployTemp",
                "sudo tar -xzf /tmp/scaleset-drop.tar.gz -C /deployTemp",
                "sudo chmod +x /deployTemp/'drop/setupscript.sh' && cd /deployTemp && sudo './drop/setupscript.sh'",
                "sudo rm -rf /deployTemp /tmp/scaleset-drop.tar.gz"
            ]}
        ])
    );
    assert_eq!(rec.len(), 6);
    let _ = std::fs::remove_dir_all(pkg.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmss_deployment_task_finds_the_group_and_updates_the_image() {
    if !have_specs() {
        return;
    }
    use pipeline::tasks::ScaleSets;
    let r = Replay::start().await;
    let (az, _) = azure(&r);
    let mut v = response(
        &format!("{COMPUTE_EX}/virtualMachineScaleSetExamples/VirtualMachineScaleSet_Get.json"),
        "200",
    );
    let s = vmss("prod", "web");
    v["id"] = json!(s);
    v["name"] = json!("web");
    let mut other = v.clone();
    other["id"] = json!(vmss("dev", "api"));
    other["name"] = json!("api");
    r.push(200, &[], Some(&json!({"value": [other, v]})));
    r.push(404, &[], Some(&not_found()));
    r.push(200, &[], Some(&v));
    let ss = azure::tasks::AzureScaleSets {
        azure: Arc::new(az),
        rt: tokio::runtime::Handle::current(),
    };
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = vec![];
        ss.update_image(None, "web", "121", &mut |l| lines.push(l.to_string()))
            .map(|_| lines)
    })
    .await
    .unwrap()
    .unwrap();
    let img =
        format!("/subscriptions/{SUB}/resourceGroups/prod/providers/Microsoft.Compute/images/121");
    assert_eq!(
        r.seen(),
        vec![
            req(
                "GET",
                &format!(
                    "/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachineScaleSets{V}"
                ),
                None
            ),
            req("GET", &format!("{s}/rollingUpgrades/latest{V}"), None),
            req("PATCH", &format!("{s}{V}"), Some(image_patch(&img))),
        ]
    );
    assert_eq!(
        lines,
        vec![format!(
            "scale set prod/web now uses image {img}; Azure upgrades the instances (Automatic)"
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packer_build_task_bakes_on_image_builder() {
    if !have_specs() {
        return;
    }
    use pipeline::tasks::{BakeRequest, Baker};
    let r = Replay::start().await;
    let (az, sl) = azure(&r);
    let pkg = scratch("task-pkg").join("drop");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("setupscript.sh"), "#!/bin/sh\n").unwrap();
    let output = response(&format!("{AIB_EX}/GetRunOutput.json"), "200");
    let op = format!("/subscriptions/{SUB}/providers/Microsoft.VirtualMachineImages/locations/westus/operations/o{V}");
    r.push(201, &[], None);
    r.push(204, &[], None);
    r.push(201, &[], Some(&json!({})));
    r.push(
        202,
        &[("Azure-AsyncOperation", &format!("{{base}}{op}"))],
        None,
    );
    r.push(200, &[], Some(&json!({"status": "Succeeded"})));
    r.push(200, &[], Some(&output));
    let baker = azure::tasks::AzureBaker {
        blobs: blobs(Arc::new(HttpTransport::new(Duration::from_secs(10))), sl),
        azure: Arc::new(az),
        settings: azure::tasks::ImageBuilderSettings {
            location: "westus".into(),
            identity: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aib".into(),
            drop_container: format!("{}/drops", r.base),
            base_image: ("Canonical".into(), "ubuntu-24_04-lts".into(), "server".into(), "latest".into()),
            vm_size: "Standard_D2s_v3".into(),
        },
        rt: tokio::runtime::Handle::current(),
    };
    let req_for = |rg: Option<&str>| BakeRequest {
        name: "120".into(),
        base: "debian:bookworm".into(),
        package_dir: pkg.clone(),
        script: "setupscript.sh".into(),
        args: vec![],
        resource_group: rg.map(str::to_string),
        cache_scope: None,
    };
    let (no_rg, baked) = (req_for(None), req_for(Some("rg1")));
    let (e, img) = tokio::task::spawn_blocking(move || {
        let e = baker.bake(no_rg, &mut |_| {});
        (e, baker.bake(baked, &mut |_| {}))
    })
    .await
    .unwrap();
    assert_eq!(
        e.unwrap_err(),
        "PackerBuild@1 on Azure needs azureResourceGroup"
    );
    let img = img.unwrap();
    assert_eq!(img.name, "120");
    assert_eq!(img.id, output["properties"]["artifactId"].as_str().unwrap());
    let paths: Vec<(String, String)> = r.seen().into_iter().map(|s| (s.method, s.path)).collect();
    let tpl = format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.VirtualMachineImages/imageTemplates/scaleset-120");
    let api = "?api-version=2024-02-01";
    let want: Vec<(String, String)> = [
        ("PUT", "/drops/120.tar.gz".to_string()),
        ("DELETE", format!("{tpl}{api}")),
        ("PUT", format!("{tpl}{api}")),
        ("POST", format!("{tpl}/run{api}")),
        ("GET", op.clone()),
        ("GET", format!("{tpl}/runOutputs/scaleset{api}")),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_string(), p))
    .collect();
    assert_eq!(paths, want);
    let put = r.seen()[2].body.clone().unwrap();
    assert_eq!(put["properties"]["source"]["offer"], "ubuntu-24_04-lts");
    assert_eq!(
        put["properties"]["distribute"][0]["imageId"],
        format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/images/120")
    );
    let _ = std::fs::remove_dir_all(pkg.parent().unwrap());
}

const DEPLOY_EX: &str =
    "resources/resource-manager/Microsoft.Resources/deployments/stable/2025-04-01/examples";
const DEPLOYMENTS: &str =
    "resources/resource-manager/Microsoft.Resources/deployments/stable/2025-04-01/deployments.json";

/// A deployment operation on one resource, in `DeploymentOperation`'s shape.
fn deploy_op(id: &str, ty: &str, name: &str, state: &str, error: Option<Value>) -> Value {
    let mut props = json!({
        "provisioningOperation": "Create", "provisioningState": state,
        "timestamp": "2026-01-01T00:00:00Z", "duration": "PT5S",
        "serviceRequestId": "00000000-0000-0000-0000-000000000000",
        "statusCode": if state == "Failed" { "BadRequest" } else { "OK" },
        "targetResource": {"id": format!("/subscriptions/{SUB}/resourceGroups/rg/providers/{ty}/{name}"),
            "resourceType": ty, "resourceName": name},
    });
    if let Some(e) = error {
        props["statusMessage"] = json!({"status": "Failed", "error": e});
    }
    json!({"id": format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Resources/deployments/azuredeploy/operations/{id}"),
        "operationId": id, "properties": props})
}

/// The exchanges of a deployment against `deployments.json` (Deployments_CreateOrUpdate,
/// Deployments_Get, DeploymentOperations_List): requests and the replies they got.
fn check_deployment_exchanges(r: &Replay, replies: &[(u16, Value)]) {
    use support::swagger::Specs;
    let specs = Specs::new(testkit::shared_dir().join("specs/azure-rest-api/specification"));
    let mut violations = Vec::new();
    let seen = r.seen();
    assert_eq!(seen.len(), replies.len());
    for (s, (status, reply)) in seen.iter().zip(replies) {
        let path = s.path.split('?').next().unwrap();
        let op = specs.operation(&[DEPLOYMENTS], &s.method, path);
        assert!(
            op.is_some(),
            "{} {path}: no operation in deployments.json",
            s.method
        );
        violations.extend(specs.check_exchange(
            &[DEPLOYMENTS],
            &s.method,
            path,
            s.body.as_ref(),
            *status,
            reply,
            &|_| false,
        ));
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[tokio::test]
async fn template_deployment_is_followed_to_succeeded_with_per_resource_progress() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let (az, sl) = azure(&r);
    let ex = format!("{DEPLOY_EX}/PutDeploymentResourceGroup.json");
    let accepted = response(&ex, "201");
    let mut running = accepted.clone();
    running["properties"]["provisioningState"] = json!("Running");
    let mut succeeded = response(&ex, "200");
    succeeded["properties"]["outputs"] = json!({
        "weblbLoadBalancerFrontEndAddress": {"type": "String", "value": "20.61.7.9"},
        "storageAccountName": {"type": "String", "value": "ssetx"},
    });
    let pip = "Microsoft.Network/publicIPAddresses";
    let lb = "Microsoft.Network/loadBalancers";
    let mut replies = Vec::new();
    let mut push = |v: Value| {
        r.push(if replies.is_empty() { 201 } else { 200 }, &[], Some(&v));
        replies.push((if replies.is_empty() { 201 } else { 200 }, v));
    };
    push(accepted);
    push(json!({"value": [deploy_op("1", pip, "lb-fe-ip", "Running", None)]}));
    push(running);
    push(
        json!({"value": [deploy_op("1", pip, "lb-fe-ip", "Succeeded", None), deploy_op("2", lb, "lb", "Running", None)]}),
    );
    push(succeeded);
    push(
        json!({"value": [deploy_op("1", pip, "lb-fe-ip", "Succeeded", None), deploy_op("2", lb, "lb", "Succeeded", None)]}),
    );
    let template = json!({"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0", "parameters": {"imageId": {"type": "string"}}, "resources": []});
    let params = azure::deploy::parameters(&template, &["imageId=/img".to_string()], &|_| {
        Err("no files".into())
    })
    .unwrap();
    let body = azure::deploy::body(template.clone(), params);
    let mut lines = Vec::new();
    let done = az
        .deploy("rg", "azuredeploy", &body, &mut |l: &str| {
            lines.push(l.to_string())
        })
        .await
        .unwrap();
    assert_eq!(done.state, azure::deploy::State::Succeeded);
    assert!(done.failures.is_empty());
    assert_eq!(
        lines,
        vec![
            format!("{pip}/lb-fe-ip: Running"),
            format!("{pip}/lb-fe-ip: Succeeded"),
            format!("{lb}/lb: Running"),
            format!("{lb}/lb: Succeeded"),
        ]
    );
    assert_eq!(
        azure::deploy::public_ips(&done.deployment),
        vec![(
            "weblbLoadBalancerFrontEndAddress".to_string(),
            "20.61.7.9".to_string()
        )]
    );
    let d = format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Resources/deployments/azuredeploy?api-version=2021-04-01");
    let o = format!("/subscriptions/{SUB}/resourceGroups/rg/deployments/azuredeploy/operations?api-version=2021-04-01");
    let seen = r.seen();
    let calls: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        calls,
        vec![
            ("PUT", d.as_str()),
            ("GET", o.as_str()),
            ("GET", d.as_str()),
            ("GET", o.as_str()),
            ("GET", d.as_str()),
            ("GET", o.as_str())
        ]
    );
    assert_eq!(
        seen[0].body,
        Some(
            json!({"properties": {"mode": "Incremental", "template": template, "parameters": {"imageId": {"value": "/img"}}}})
        )
    );
    // Two polls, each after the client's poll delay.
    assert_eq!(sl.take(), vec![az.client.poll_delay; 2]);
    check_deployment_exchanges(&r, &replies);
    assert!(r.exhausted());
}

#[tokio::test]
async fn failed_template_deployment_reports_each_failed_resource() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let (az, _) = azure(&r);
    let ex = format!("{DEPLOY_EX}/PutDeploymentResourceGroup.json");
    let accepted = response(&ex, "201");
    let mut failed = response(&ex, "200");
    failed["properties"]["provisioningState"] = json!("Failed");
    // Errors in the spec's shape (`ErrorResponse`: the details inside `error`; `deploy` also
    // reads the inner object alone, which ARM has been seen sending).
    failed["properties"]["error"] = json!({"error": {"code": "DeploymentFailed",
        "message": "At least one resource deployment operation failed. Please list deployment operations for details.",
        "details": [{"code": "BadRequest", "message": "{\"error\":{\"code\":\"InvalidParameter\"}}"}]}});
    let vmss_err = json!({"error": {"code": "InvalidParameter", "target": "imageReference",
        "message": "The image '/subscriptions/x/resourceGroups/rg/providers/Microsoft.Compute/images/none' was not found."}});
    let ops = json!({"value": [
        deploy_op("1", "Microsoft.Network/loadBalancers", "lb", "Succeeded", None),
        deploy_op("2", "Microsoft.Compute/virtualMachineScaleSets", "web", "Failed", Some(vmss_err)),
        deploy_op("3", "Microsoft.Network/networkSecurityGroups", "rg-nsg", "Failed",
            Some(json!({"error": {"code": "SecurityRuleInvalidPortRange", "message": "Security rule has invalid Port range."}}))),
    ]});
    let replies = vec![
        (201, accepted.clone()),
        (200, json!({"value": []})),
        (200, failed.clone()),
        (200, ops.clone()),
    ];
    for (status, v) in &replies {
        r.push(*status, &[], Some(v));
    }
    let body = azure::deploy::body(json!({"resources": []}), Default::default());
    let mut lines = Vec::new();
    let done = az
        .deploy("rg", "azuredeploy", &body, &mut |l: &str| {
            lines.push(l.to_string())
        })
        .await
        .unwrap();
    assert_eq!(done.state, azure::deploy::State::Failed);
    assert_eq!(
        done.failures,
        vec![
            "Microsoft.Compute/virtualMachineScaleSets/web: (InvalidParameter) The image '/subscriptions/x/resourceGroups/rg/providers/Microsoft.Compute/images/none' was not found.",
            "Microsoft.Network/networkSecurityGroups/rg-nsg: (SecurityRuleInvalidPortRange) Security rule has invalid Port range.",
        ]
    );
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(azure::deploy::deployment_error(&done.deployment)
        .unwrap()
        .starts_with("(DeploymentFailed) At least one resource deployment operation failed."));
    assert!(azure::deploy::public_ips(&done.deployment).is_empty());
    check_deployment_exchanges(&r, &replies);
    assert!(r.exhausted());

    // A PUT ARM refuses outright (an invalid template) is an error, not an outcome.
    r.push(400, &[], Some(&json!({"error": {"code": "InvalidTemplate", "message": "Deployment template validation failed: 'The template resource 'x' is not valid.'"}})));
    match az
        .deploy("rg", "azuredeploy", &body, &mut |_: &str| {})
        .await
    {
        Err(AzureError::Api {
            status: 400, code, ..
        }) => assert_eq!(code, "InvalidTemplate"),
        other => panic!("{other:?}"),
    }
}

/// The create verbs' helpers reuse what exists: a public IP or subnet that is there is not put
/// again, a virtual network without the subnet is an error (its ranges are the user's), and
/// `local` is no Azure location (refused before anything is sent). The scale set body
/// `create::scale_set` builds is what Microsoft's spec declares.
#[tokio::test]
async fn create_helpers_reuse_what_exists_and_bodies_match_the_spec() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let (az, _) = azure(&r);
    let net = format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network");
    let nv = "?api-version=2024-05-01";
    r.push(200, &[], Some(&json!({"name": "ip"})));
    let id = az.ensure_public_ip("rg", "ip", "westeurope").await.unwrap();
    assert_eq!(id, format!("{net}/publicIPAddresses/ip"));
    r.push(200, &[], Some(&json!({"name": "vnet"})));
    r.push(200, &[], Some(&json!({"name": "default"})));
    let id = az
        .ensure_subnet("rg", "vnet", "default", "westeurope")
        .await
        .unwrap();
    assert_eq!(id, format!("{net}/virtualNetworks/vnet/subnets/default"));
    r.push(200, &[], Some(&json!({"name": "vnet"})));
    r.push(
        404,
        &[],
        Some(&json!({"error": {"code": "NotFound", "message": "Resource not found."}})),
    );
    match az.ensure_subnet("rg", "vnet", "other", "westeurope").await {
        Err(AzureError::Config(m)) => assert!(m.contains("has no subnet 'other'"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        az.group_create("rg", "local").await,
        Err(AzureError::Config(_))
    ));
    assert_eq!(
        r.seen(),
        vec![
            req("GET", &format!("{net}/publicIPAddresses/ip{nv}"), None),
            req("GET", &format!("{net}/virtualNetworks/vnet{nv}"), None),
            req(
                "GET",
                &format!("{net}/virtualNetworks/vnet/subnets/default{nv}"),
                None
            ),
            req("GET", &format!("{net}/virtualNetworks/vnet{nv}"), None),
            req(
                "GET",
                &format!("{net}/virtualNetworks/vnet/subnets/other{nv}"),
                None
            ),
        ]
    );

    // The scale set body, sent and answered with Microsoft's example, against the spec.
    let spec = azure::create::ScaleSetSpec {
        name: "web".into(),
        location: "westeurope".into(),
        vm_size: "Standard_D2s_v3".into(),
        capacity: 3,
        image_id: format!(
            "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/images/app"
        ),
        subnet_id: format!("{net}/virtualNetworks/vnet/subnets/default"),
        pools: vec![format!("{net}/loadBalancers/lb/backendAddressPools/be")],
        health_probe: Some(format!("{net}/loadBalancers/lb/probes/http")),
        admin_username: "azureuser".into(),
        ssh_public_key: "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 me@host".into(),
        computer_name_prefix: Some("web".into()),
        upgrade_mode: "Rolling".into(),
        scale_in: Some("NewestVM".into()),
        repairs: Some((10, "Reimage".into())),
        nsg: Some(format!("{net}/networkSecurityGroups/webNSG")),
    };
    let body = azure::create::scale_set(&spec).unwrap();
    let reply = response(
        &format!("{COMPUTE_EX}/virtualMachineScaleSetExamples/VirtualMachineScaleSet_Create_WithAzureLoadBalancer.json"),
        "201",
    );
    r.push(201, &[], Some(&reply));
    az.vmss_create_or_update("rg", "web", &body).await.unwrap();
    let specs = support::swagger::Specs::new(
        testkit::shared_dir().join("specs/azure-rest-api/specification"),
    );
    let files = ["compute/resource-manager/Microsoft.Compute/ComputeRP/stable/2024-11-01/virtualMachineScaleSet.json"];
    let v = specs.check_exchange(
        &files,
        "PUT",
        &vmss("rg", "web"),
        Some(&body),
        201,
        &reply,
        &|_| false,
    );
    assert!(v.is_empty(), "{}", v.join("\n"));
    assert!(r.exhausted());
}
