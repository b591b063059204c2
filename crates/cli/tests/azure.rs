//! `--provider azure`: the same verbs against ARM, here a replay server answering with
//! Microsoft's example responses (no live Azure in CI). Checks the exact requests the binary makes.
#[path = "../../azure/tests/support/replay.rs"]
mod replay;

use replay::{have_specs, response, Replay, Seen};
use serde_json::{json, Value};

const SUB: &str = "00000000-0000-0000-0000-0000000000bb";
const EX: &str = "compute/resource-manager/Microsoft.Compute/ComputeRP/stable/2024-11-01/examples/virtualMachineScaleSetExamples";
const V: &str = "?api-version=2024-11-01";

async fn scaleset(r: &Replay, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_scaleset"));
    cmd.args(args)
        .env("SCALESET_PROVIDER", "azure")
        .env("AZURE_SUBSCRIPTION_ID", SUB)
        .env("SCALESET_AZURE_ENDPOINT", &r.base)
        .env("AZURE_ACCESS_TOKEN", "tok")
        // Nothing local may be consulted.
        .env("SCALESET_HOME", "/nonexistent/scaleset-home")
        .env_remove("SCALESET_ENDPOINT")
        .env_remove("SCALESET_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn get(path: &str) -> Seen {
    Seen {
        method: "GET".into(),
        path: path.into(),
        auth: Some("Bearer tok".into()),
        body: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmss_update_sets_the_image_on_azure() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let before = response(&format!("{EX}/VirtualMachineScaleSet_Get.json"), "200");
    let img =
        format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/images/121");
    let mut after = before.clone();
    after["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"] =
        json!({"id": img});
    let path = format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web");
    let op = format!(
        "/subscriptions/{SUB}/providers/Microsoft.Compute/locations/westus/operations/u1{V}"
    );
    r.push(200, &[], Some(&before));
    r.push(
        201,
        &[
            ("Azure-AsyncOperation", &format!("{{base}}{op}")),
            ("Retry-After", "0"),
        ],
        Some(&after),
    );
    r.push(
        200,
        &[("Retry-After", "0")],
        Some(&json!({"status": "InProgress"})),
    );
    r.push(200, &[], Some(&json!({"status": "Succeeded"})));
    r.push(200, &[], Some(&after));
    r.push(
        404,
        &[],
        Some(&json!({"error": {"code": "NotFound", "message": "No rolling upgrade."}})),
    );
    r.push(200, &[], Some(&after));
    let (code, out, err) = scaleset(
        &r,
        &[
            "vmss",
            "update",
            "-g",
            "rg",
            "-n",
            "web",
            "--set",
            &format!("virtualMachineProfile.storageProfile.imageReference.id={img}"),
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v.pointer("/properties/virtualMachineProfile/storageProfile/imageReference/id"),
        Some(&json!(img))
    );
    let seen = r.seen();
    let res = format!("{path}{V}");
    let latest = format!("{path}/rollingUpgrades/latest{V}");
    let methods: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        methods,
        vec![
            ("GET", res.as_str()),
            ("PUT", res.as_str()),
            ("GET", op.as_str()),
            ("GET", op.as_str()),
            ("GET", res.as_str()),
            ("GET", latest.as_str()),
            ("GET", res.as_str()),
        ]
    );
    assert!(seen.iter().all(|s| s.auth.as_deref() == Some("Bearer tok")));
    // az's generic update: the resource as read, with the one path set.
    let put = seen[1].body.clone().unwrap();
    assert_eq!(
        put.pointer("/properties/virtualMachineProfile/storageProfile/imageReference/id"),
        Some(&json!(img))
    );
    assert_eq!(put["sku"], before["sku"]);
    assert_eq!(
        put["properties"]["upgradePolicy"],
        before["properties"]["upgradePolicy"]
    );
    assert!(r.exhausted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_instances_pages_and_errors_read_like_az() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let mut page1 = response(
        &format!("{EX}/VirtualMachineScaleSetVM_List_MaximumSet_Gen.json"),
        "200",
    );
    let vms = format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web/virtualMachines");
    let next = format!("{vms}?$expand=instanceView&api-version=2024-11-01&$skiptoken=2");
    page1["nextLink"] = json!(format!("{}{next}", r.base));
    let mut vm2 = page1["value"][0].clone();
    vm2["instanceId"] = json!("42");
    r.push(200, &[], Some(&page1));
    r.push(200, &[], Some(&json!({"value": [vm2]})));
    let (code, out, err) = scaleset(
        &r,
        &["vmss", "list-instances", "-g", "rg", "-n", "web"],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&Value> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["instanceId"])
        .collect();
    assert_eq!(ids, vec![&page1["value"][0]["instanceId"], &json!("42")]);
    assert_eq!(
        r.seen(),
        vec![
            get(&format!(
                "{vms}?$expand=instanceView&api-version=2024-11-01"
            )),
            get(&next)
        ]
    );

    r.push(
        404,
        &[],
        Some(&json!({"error": {"code": "ResourceNotFound", "message": "The Resource 'Microsoft.Compute/virtualMachineScaleSets/gone' under resource group 'rg' was not found."}})),
    );
    let (code, _, err) = scaleset(&r, &["vmss", "show", "-g", "rg", "-n", "gone"], &[]).await;
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "ERROR: (ResourceNotFound) The Resource 'Microsoft.Compute/virtualMachineScaleSets/gone' under resource group 'rg' was not found."
    );
    let (code, _, err) = scaleset(&r, &["pipeline", "list"], &[]).await;
    assert_eq!(code, 1);
    assert!(err.contains("not available with --provider azure"), "{err}");
    let (code, _, err) = scaleset(
        &r,
        &["vmss", "show", "-g", "rg", "-n", "web"],
        &[("AZURE_SUBSCRIPTION_ID", "")],
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("the azure provider needs AZURE_SUBSCRIPTION_ID"),
        "{err}"
    );
    // Three requests in all: the failing commands sent nothing more than the one 404.
    assert_eq!(r.seen().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wait_returns_the_first_response() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let mut updating = response(&format!("{EX}/VirtualMachineScaleSet_Get.json"), "200");
    updating["sku"]["capacity"] = json!(5);
    updating["properties"]["provisioningState"] = json!("Updating");
    let op = format!(
        "/subscriptions/{SUB}/providers/Microsoft.Compute/locations/westus/operations/s1{V}"
    );
    r.push(
        200,
        &[("Azure-AsyncOperation", &format!("{{base}}{op}"))],
        Some(&updating),
    );
    let (code, out, err) = scaleset(
        &r,
        &[
            "vmss",
            "scale",
            "-g",
            "rg",
            "-n",
            "web",
            "--new-capacity",
            "5",
            "--no-wait",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["properties"]["provisioningState"], "Updating");
    assert_eq!(
        r.seen(),
        vec![Seen {
            method: "PATCH".into(),
            path: format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web{V}"),
            auth: Some("Bearer tok".into()),
            body: Some(json!({"sku": {"capacity": 5}})),
        }]
    );
}
