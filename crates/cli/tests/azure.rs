//! `--provider azure`: the same verbs against ARM, here a replay server answering with
//! Microsoft's example responses (no live Azure in CI). Checks the exact requests the binary makes.
#[path = "../../azure/tests/support/replay.rs"]
mod replay;
#[path = "../../api/tests/support/swagger.rs"]
mod swagger;

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
        .env("SCALESET_AZURE_POLL_MS", "10")
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

const NET_EX: &str = "network/resource-manager/Microsoft.Network/stable/2024-05-01/examples";
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIa7c0ffee0dd1ce0c0de0face0feed0beef0cafe0f00d test@scaleset";

/// Every request body the binary sent (and the reply it got) against Microsoft's specs.
fn check_against_specs(r: &Replay, replies: &[(u16, Value)]) {
    let specs =
        swagger::Specs::new(testkit::shared_dir().join("specs/azure-rest-api/specification"));
    let files = [
        "compute/resource-manager/Microsoft.Compute/ComputeRP/stable/2024-11-01/virtualMachineScaleSet.json",
        "network/resource-manager/Microsoft.Network/stable/2024-05-01/loadBalancer.json",
        "network/resource-manager/Microsoft.Network/stable/2024-05-01/publicIpAddress.json",
        "network/resource-manager/Microsoft.Network/stable/2024-05-01/virtualNetwork.json",
        "network/resource-manager/Microsoft.Network/stable/2024-05-01/networkSecurityGroup.json",
        "resources/resource-manager/Microsoft.Resources/resources/stable/2025-04-01/resources.json",
    ];
    let mut violations = Vec::new();
    for (seen, (status, reply)) in r.seen().iter().zip(replies) {
        let path = seen.path.split('?').next().unwrap();
        if specs.operation(&files, &seen.method, path).is_none() {
            violations.push(format!("{} {path}: no operation in the specs", seen.method));
        }
        violations.extend(specs.check_exchange(
            &files,
            &seen.method,
            path,
            seen.body.as_ref(),
            *status,
            reply,
            &|_| false,
        ));
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// `group create`, `network lb create` (public IP frontend, then a subnet frontend) and
/// `vmss create` on Azure: the requests in order, Azure-shaped bodies that validate against
/// Microsoft's specs, and what they refuse before sending anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_verbs_send_azure_shaped_bodies() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let rg = format!("/subscriptions/{SUB}/resourceGroups/rg");
    let net = format!("{rg}/providers/Microsoft.Network");
    let nv = "?api-version=2024-05-01";
    let group = response(
        "resources/resource-manager/Microsoft.Resources/resources/examples/2025-04-01/CreateResourceGroup.json",
        "201",
    );
    let mut replies: Vec<(u16, Value)> = Vec::new();
    let mut push = |status: u16, v: Value| {
        r.push(status, &[], Some(&v));
        replies.push((status, v));
    };
    let not_found =
        json!({"error": {"code": "ResourceNotFound", "message": "The Resource was not found."}});
    let lb_reply = response(&format!("{NET_EX}/LoadBalancerCreateWithZones.json"), "201");
    let pip_reply = json!({"id": format!("{net}/publicIPAddresses/lb-ip"), "name": "lb-ip", "location": "westeurope",
        "sku": {"name": "Standard"}, "properties": {"provisioningState": "Succeeded", "publicIPAllocationMethod": "Static", "ipAddress": "20.1.2.3"}});
    let vnet_reply = json!({"id": format!("{net}/virtualNetworks/vnet"), "name": "vnet", "location": "westeurope",
        "properties": {"provisioningState": "Succeeded", "addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
            "subnets": [{"name": "default", "id": format!("{net}/virtualNetworks/vnet/subnets/default"), "properties": {"addressPrefix": "10.0.0.0/24"}}]}});
    let mut lb_get = lb_reply.clone();
    lb_get["properties"]["backendAddressPools"] =
        json!([{"name": "be", "id": format!("{net}/loadBalancers/lb/backendAddressPools/be")}]);
    let vmss_reply = response(
        &format!("{EX}/VirtualMachineScaleSet_Create_WithAzureLoadBalancer.json"),
        "201",
    );
    push(201, group.clone()); // group create
    push(200, group.clone()); // lb create: the group's location
    push(404, not_found.clone()); // its public IP is missing
    push(201, pip_reply); // made
    push(201, lb_reply.clone());
    push(201, lb_reply); // the subnet-fronted one (location given: no GET of the group)
    push(200, group); // vmss create: the group's location
    push(404, not_found.clone()); // the virtual network is missing
    push(201, vnet_reply); // made with the subnet
    push(200, lb_get); // the load balancer's pools, probe and rules
    push(404, not_found); // no webNSG yet
                          // webNSG, opening the rule's backend port (hand-written in the spec's shape).
    push(
        201,
        json!({"id": format!("{net}/networkSecurityGroups/webNSG"), "name": "webNSG",
            "location": "eastus", "properties": {"provisioningState": "Succeeded",
            "securityRules": [{"name": "allow-lb-rulelb", "id": format!("{net}/networkSecurityGroups/webNSG/securityRules/allow-lb-rulelb"),
                "properties": {"protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": "80",
                    "sourceAddressPrefix": "Internet", "destinationAddressPrefix": "*", "access": "Allow",
                    "priority": 100, "direction": "Inbound", "provisioningState": "Succeeded"}}]}}),
    );
    push(201, vmss_reply);
    let ok = |(code, out, err): (i32, String, String)| {
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    ok(scaleset(
        &r,
        &["group", "create", "-n", "rg", "-l", "westeurope"],
        &[],
    )
    .await);
    ok(scaleset(
        &r,
        &[
            "network",
            "lb",
            "create",
            "-g",
            "rg",
            "-n",
            "lb",
            "--backend-pool-name",
            "be",
        ],
        &[],
    )
    .await);
    ok(scaleset(
        &r,
        &[
            "network",
            "lb",
            "create",
            "-g",
            "rg",
            "-n",
            "ilb",
            "--subnet",
            "default",
            "--vnet-name",
            "vnet",
            "--private-ip-address",
            "10.0.0.9",
            "-l",
            "westeurope",
        ],
        &[],
    )
    .await);
    ok(scaleset(
        &r,
        &[
            "vmss",
            "create",
            "-g",
            "rg",
            "-n",
            "web",
            "--image",
            "app-img",
            "--instance-count",
            "2",
            "--lb",
            "lb",
            "--backend-pool-name",
            "be",
            "--health-probe",
            "http",
            "--upgrade-policy-mode",
            "Rolling",
            "--vnet-name",
            "vnet",
            "--subnet",
            "default",
            "--ssh-key-value",
            KEY,
        ],
        &[],
    )
    .await);
    assert!(r.exhausted());
    let seen = r.seen();
    let calls: Vec<(String, String)> = seen
        .iter()
        .map(|s| (s.method.clone(), s.path.clone()))
        .collect();
    let want: Vec<(String, String)> = [
        ("PUT", format!("{rg}?api-version=2021-04-01")),
        ("GET", format!("{rg}?api-version=2021-04-01")),
        ("GET", format!("{net}/publicIPAddresses/lb-ip{nv}")),
        ("PUT", format!("{net}/publicIPAddresses/lb-ip{nv}")),
        ("PUT", format!("{net}/loadBalancers/lb{nv}")),
        ("PUT", format!("{net}/loadBalancers/ilb{nv}")),
        ("GET", format!("{rg}?api-version=2021-04-01")),
        ("GET", format!("{net}/virtualNetworks/vnet{nv}")),
        ("PUT", format!("{net}/virtualNetworks/vnet{nv}")),
        ("GET", format!("{net}/loadBalancers/lb{nv}")),
        ("GET", format!("{net}/networkSecurityGroups/webNSG{nv}")),
        ("PUT", format!("{net}/networkSecurityGroups/webNSG{nv}")),
        (
            "PUT",
            format!("{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/web{V}"),
        ),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_string(), p))
    .collect();
    assert_eq!(calls, want);
    let body = |i: usize| seen[i].body.clone().unwrap();
    assert_eq!(body(0), json!({"location": "westeurope"}));
    assert_eq!(body(3)["sku"]["name"], "Standard");
    assert_eq!(
        body(4)["properties"]["frontendIPConfigurations"][0]["properties"],
        json!({"publicIPAddress": {"id": format!("{net}/publicIPAddresses/lb-ip")}})
    );
    assert_eq!(body(4)["location"], "eastus", "the group's location");
    assert_eq!(
        body(5)["properties"]["frontendIPConfigurations"][0]["properties"],
        json!({"subnet": {"id": format!("{net}/virtualNetworks/vnet/subnets/default")},
            "privateIPAllocationMethod": "Static", "privateIPAddress": "10.0.0.9"})
    );
    // A Standard load balancer is closed to inbound traffic unless an NSG opens it: the rule's
    // backend port (80 in Microsoft's example) is opened to the Internet, in the group's region.
    let nsg = body(11);
    assert_eq!(nsg["location"], "eastus");
    let rule = &nsg["properties"]["securityRules"][0];
    assert_eq!(rule["name"], "allow-lb-rulelb");
    assert_eq!(
        (
            &rule["properties"]["destinationPortRange"],
            &rule["properties"]["access"],
            &rule["properties"]["direction"],
            &rule["properties"]["sourceAddressPrefix"],
        ),
        (
            &json!("80"),
            &json!("Allow"),
            &json!("Inbound"),
            &json!("Internet")
        )
    );
    let v = body(12);
    let vm = &v["properties"]["virtualMachineProfile"];
    assert_eq!(
        vm["networkProfile"]["networkInterfaceConfigurations"][0]["properties"]
            ["networkSecurityGroup"]["id"],
        format!("{net}/networkSecurityGroups/webNSG")
    );
    assert_eq!(
        v["sku"],
        json!({"name": "Standard_B1s", "tier": "Standard", "capacity": 2})
    );
    assert_eq!(
        vm["storageProfile"]["imageReference"]["id"],
        format!("{rg}/providers/Microsoft.Compute/images/app-img")
    );
    assert_eq!(
        vm["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"],
        KEY
    );
    assert_eq!(
        vm["osProfile"]["linuxConfiguration"]["disablePasswordAuthentication"],
        true
    );
    let ipc = &vm["networkProfile"]["networkInterfaceConfigurations"][0]["properties"]
        ["ipConfigurations"][0]["properties"];
    assert_eq!(
        ipc["subnet"]["id"],
        format!("{net}/virtualNetworks/vnet/subnets/default")
    );
    assert_eq!(
        ipc["loadBalancerBackendAddressPools"][0]["id"],
        format!("{net}/loadBalancers/lb/backendAddressPools/be")
    );
    assert_eq!(
        vm["networkProfile"]["healthProbe"]["id"],
        format!("{net}/loadBalancers/lb/probes/http")
    );
    assert_eq!(v["properties"]["upgradePolicy"]["mode"], "Rolling");
    check_against_specs(&r, &replies);

    // Refused before anything is sent: the local location, a Rolling set without a probe, no
    // subnet, a private key passed as the public one.
    let before = r.seen().len();
    for (args, why) in [
        (vec!["group", "create", "-n", "rg"], "not an Azure location"),
        (
            vec![
                "vmss",
                "create",
                "-g",
                "rg",
                "-n",
                "w",
                "--image",
                "i",
                "-l",
                "westeurope",
                "--ssh-key-value",
                KEY,
            ],
            "--subnet is required",
        ),
        (
            vec![
                "vmss",
                "create",
                "-g",
                "rg",
                "-n",
                "w",
                "--image",
                "i",
                "-l",
                "westeurope",
                "--subnet",
                "/subscriptions/x/s",
                "--upgrade-policy-mode",
                "Rolling",
                "--ssh-key-value",
                KEY,
            ],
            "health probe",
        ),
        (
            vec![
                "vmss",
                "create",
                "-g",
                "rg",
                "-n",
                "w",
                "--image",
                "i",
                "-l",
                "westeurope",
                "--subnet",
                "/subscriptions/x/s",
                "--ssh-key-value",
                "/nonexistent/id.pub",
            ],
            "neither an OpenSSH public key",
        ),
        (
            vec![
                "network",
                "lb",
                "create",
                "-g",
                "rg",
                "-n",
                "x",
                "-l",
                "westeurope",
                "--subnet",
                "s",
            ],
            "needs --vnet-name",
        ),
    ] {
        let (code, _, err) = scaleset(&r, &args, &[]).await;
        assert_eq!(code, 1, "{args:?}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
    assert_eq!(
        r.seen().len(),
        before,
        "nothing was sent for refused commands"
    );
}

/// `scaleset --provider azure deploy`: the template and parameters as az takes them, progress
/// per resource, the frontend's public IP on success; per-resource errors and exit 1 on failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_follows_the_template_deployment() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let dir = std::env::temp_dir().join(format!("scaleset-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let template = dir.join("azuredeploy.json");
    std::fs::write(
        &template,
        json!({"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
            "contentVersion": "1.0.0.0",
            "parameters": {"imageId": {"type": "string"}, "deployScaleSet": {"type": "bool"}},
            "resources": []})
        .to_string(),
    )
    .unwrap();
    let params = dir.join("params.json");
    std::fs::write(&params, r#"{"$schema": "x", "contentVersion": "1.0.0.0", "parameters": {"imageId": {"value": "/img"}}}"#).unwrap();
    let ex = "resources/resource-manager/Microsoft.Resources/deployments/stable/2025-04-01/examples/PutDeploymentResourceGroup.json";
    let op = |state: &str| {
        json!({"value": [{"operationId": "1", "properties": {"provisioningState": state,
            "targetResource": {"resourceType": "Microsoft.Network/publicIPAddresses", "resourceName": "weblb-fe-ip"}}}]})
    };
    let mut done = response(ex, "200");
    done["properties"]["outputs"] =
        json!({"weblbfeAddress": {"type": "String", "value": "20.61.7.9"}});
    r.push(201, &[], Some(&response(ex, "201")));
    r.push(200, &[], Some(&op("Running")));
    r.push(200, &[], Some(&done));
    r.push(200, &[], Some(&op("Succeeded")));
    let t = template.display().to_string();
    let p = format!("@{}", params.display());
    let (code, out, err) = scaleset(
        &r,
        &[
            "deploy",
            "-g",
            "rg",
            "--template",
            &t,
            "--parameters",
            &p,
            "deployScaleSet=false",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["properties"]["provisioningState"], "Succeeded");
    for want in [
        "deployment 'azuredeploy' in resource group 'rg':",
        "  Microsoft.Network/publicIPAddresses/weblb-fe-ip: Running",
        "  Microsoft.Network/publicIPAddresses/weblb-fe-ip: Succeeded",
        "frontend public IP (weblbfeAddress): 20.61.7.9",
    ] {
        assert!(err.lines().any(|l| l == want), "{want:?} not in:\n{err}");
    }
    let put = r.seen()[0].body.clone().unwrap();
    assert_eq!(
        put["properties"]["parameters"],
        json!({"imageId": {"value": "/img"}, "deployScaleSet": {"value": false}})
    );
    assert_eq!(put["properties"]["mode"], "Incremental");

    // A failed deployment: each failed resource, the deployment's error, exit 1.
    let mut failed = response(ex, "200");
    failed["properties"]["provisioningState"] = json!("Failed");
    failed["properties"]["error"] = json!({"code": "DeploymentFailed", "message": "At least one resource deployment operation failed."});
    let mut bad = op("Failed");
    bad["value"][0]["properties"]["statusMessage"] = json!({"status": "Failed", "error": {"code": "PublicIPCountLimitReached", "message": "Cannot create more than 10 public IP addresses for this subscription in this region."}});
    r.push(201, &[], Some(&response(ex, "201")));
    r.push(200, &[], Some(&op("Running")));
    r.push(200, &[], Some(&failed));
    r.push(200, &[], Some(&bad));
    let (code, _, err) = scaleset(&r, &["deploy", "-g", "rg", "-f", &t, "-n", "second"], &[]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("  failed: Microsoft.Network/publicIPAddresses/weblb-fe-ip: (PublicIPCountLimitReached) Cannot create more than 10 public IP addresses"), "{err}");
    assert!(err.contains("ERROR: deployment 'second' Failed: (DeploymentFailed) At least one resource deployment operation failed."), "{err}");
    assert!(
        r.seen()[4].path.contains("/deployments/second?"),
        "{:?}",
        r.seen()[4]
    );
    assert!(r.exhausted());

    // Refused before sending: an undeclared parameter; locally, deploy is not available.
    let n = r.seen().len();
    let (code, _, err) = scaleset(&r, &["deploy", "-g", "rg", "-f", &t, "-p", "nope=1"], &[]).await;
    assert_eq!(code, 1);
    assert!(err.contains("declares no parameter 'nope'"), "{err}");
    let (code, _, err) = scaleset(
        &r,
        &["--provider", "local", "deploy", "-g", "rg", "-f", &t],
        &[],
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("use --provider azure"), "{err}");
    assert_eq!(r.seen().len(), n);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `network lb probe|rule create|delete` on Azure: no child PUT or DELETE exists there
/// (loadBalancer.json: GET only), so each is a GET of the load balancer and a PUT of it with
/// the child added, replaced or removed, the rest as it was; a missing child's delete sends no
/// PUT and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_and_rule_edits_write_the_whole_load_balancer() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let lb_path = format!(
        "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/lb"
    );
    let lb = response(&format!("{NET_EX}/LoadBalancerCreateWithZones.json"), "201");
    let mut with_http = lb.clone();
    with_http["properties"]["probes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "http", "id": format!("{lb_path}/probes/http"),
            "properties": {"protocol": "Http", "port": 80, "requestPath": "/healthz", "intervalInSeconds": 5,
                "numberOfProbes": 2, "provisioningState": "Succeeded"}}));
    let mut without_rule = with_http.clone();
    without_rule["properties"]["loadBalancingRules"] = json!([]);
    let mut replies: Vec<(u16, Value)> = Vec::new();
    let mut push = |status: u16, v: &Value| {
        r.push(status, &[], Some(v));
        replies.push((status, v.clone()));
    };
    push(200, &lb); // probe create: the parent
    push(200, &with_http); // written back with the probe
    push(200, &with_http); // rule delete: the parent
    push(200, &without_rule); // written back without the rule
    push(200, &without_rule); // deleting it again: the parent only
    let (code, out, err) = scaleset(
        &r,
        &[
            "network",
            "lb",
            "probe",
            "create",
            "-g",
            "rg",
            "--lb-name",
            "lb",
            "-n",
            "http",
            "--protocol",
            "Http",
            "--port",
            "80",
            "--path",
            "/healthz",
            "--interval",
            "5",
            "--probe-threshold",
            "2",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["name"], "http");
    let delete = [
        "network",
        "lb",
        "rule",
        "delete",
        "-g",
        "rg",
        "--lb-name",
        "lb",
        "-n",
        "rulelb",
    ];
    let (code, _, err) = scaleset(&r, &delete, &[]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = scaleset(&r, &delete, &[]).await;
    assert_ne!(code, 0);
    assert!(err.contains("(NotFound) 'rulelb' was not found"), "{err}");
    assert!(r.exhausted());
    let seen = r.seen();
    let v = "?api-version=2024-05-01";
    let calls: Vec<(String, String)> = seen
        .iter()
        .map(|s| (s.method.clone(), s.path.clone()))
        .collect();
    let want: Vec<(String, String)> = ["GET", "PUT", "GET", "PUT", "GET"]
        .iter()
        .map(|m| (m.to_string(), format!("{lb_path}{v}")))
        .collect();
    assert_eq!(calls, want);
    // The probe was added to what was read, everything else sent back as it came.
    let put = seen[1].body.clone().unwrap();
    let probes = put["properties"]["probes"].as_array().unwrap();
    assert_eq!(
        probes.len(),
        lb["properties"]["probes"].as_array().unwrap().len() + 1
    );
    let http = probes.iter().find(|p| p["name"] == "http").unwrap();
    assert_eq!(
        (
            &http["properties"]["protocol"],
            &http["properties"]["port"],
            &http["properties"]["requestPath"]
        ),
        (&json!("Http"), &json!(80), &json!("/healthz"))
    );
    assert_eq!(
        put["properties"]["loadBalancingRules"],
        lb["properties"]["loadBalancingRules"]
    );
    assert_eq!(
        put["properties"]["frontendIPConfigurations"],
        lb["properties"]["frontendIPConfigurations"]
    );
    let put = seen[3].body.clone().unwrap();
    assert_eq!(put["properties"]["loadBalancingRules"], json!([]));
    assert_eq!(
        put["properties"]["probes"],
        with_http["properties"]["probes"]
    );
    check_against_specs(&r, &replies);
}

/// An NSG named `<name>NSG` that exists already is used as it is: a PUT would replace the rules
/// its owner added to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_default_nsg_is_not_rewritten() {
    if !have_specs() {
        return;
    }
    let r = Replay::start().await;
    let rg = format!("/subscriptions/{SUB}/resourceGroups/rg");
    let net = format!("{rg}/providers/Microsoft.Network");
    let mut lb = response(&format!("{NET_EX}/LoadBalancerCreateWithZones.json"), "201");
    lb["properties"]["backendAddressPools"] =
        json!([{"name": "be", "id": format!("{net}/loadBalancers/lb/backendAddressPools/be")}]);
    let nsg = json!({"id": format!("{net}/networkSecurityGroups/webNSG"), "name": "webNSG",
        "location": "westeurope", "properties": {"provisioningState": "Succeeded", "securityRules": []}});
    let vmss = response(
        &format!("{EX}/VirtualMachineScaleSet_Create_WithAzureLoadBalancer.json"),
        "201",
    );
    let replies = vec![(200, lb), (200, nsg), (201, vmss)];
    for (status, v) in &replies {
        r.push(*status, &[], Some(v));
    }
    let subnet = format!("{net}/virtualNetworks/vnet/subnets/default");
    let (code, _, err) = scaleset(
        &r,
        &[
            "vmss",
            "create",
            "-g",
            "rg",
            "-n",
            "web",
            "--image",
            "app-img",
            "--lb",
            "lb",
            "-l",
            "westeurope",
            "--subnet",
            &subnet,
            "--ssh-key-value",
            KEY,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("'webNSG' exists: used as it is"), "{err}");
    let seen = r.seen();
    let methods: Vec<&str> = seen.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(methods, ["GET", "GET", "PUT"], "no PUT of the NSG");
    let nic = &seen[2].body.as_ref().unwrap()["properties"]["virtualMachineProfile"]
        ["networkProfile"]["networkInterfaceConfigurations"][0]["properties"];
    assert_eq!(
        nic["networkSecurityGroup"]["id"],
        format!("{net}/networkSecurityGroups/webNSG")
    );
    check_against_specs(&r, &replies);
}
