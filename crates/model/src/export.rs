//! `scaleset export azure`: the local deployment of a resource group as what real Azure needs —
//! an ARM template (virtual network, NSG, public IP per frontend, Standard load balancer with its
//! probes and rules, scale set with its upgrade policy and health probe, storage account for
//! Packer) and the Azure Pipelines YAML: CI (build, publish the drop) and release (bake the drop
//! with PackerBuild@1, deploy the template with the new image; the scale set's upgrade policy
//! rolls it out). Pure: the local resources' ARM JSON in, JSON/YAML out.
use crate::ModelError;
use serde_json::{json, Value};

pub const COMPUTE_API_VERSION: &str = "2024-11-01";
pub const NETWORK_API_VERSION: &str = "2024-05-01";
pub const STORAGE_API_VERSION: &str = "2023-05-01";

/// The app the pipelines build: a Cargo package whose binary and deployment files make the drop
/// (the same drop `scaleset up` bakes).
#[derive(Debug, Clone)]
pub struct App {
    /// The binary `cargo build --release` produces.
    pub binary: String,
    /// Deployment files and folders copied into the drop (setupscript.sh, units, configs).
    pub files: Vec<String>,
    /// The deployment script run when baking (PackerBuild@1 deployScriptPath).
    pub script: String,
    /// The package folder inside the repository ("." when it is the root).
    pub dir: String,
}

/// `resourceId('kind', 'a', 'b')`, the template function for an id in this resource group.
fn rid_call(kind: &str, names: &[&str]) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    format!("resourceId('{kind}', {})", names.join(", "))
}

/// The same as a template expression string.
fn rid(kind: &str, names: &[&str]) -> String {
    format!("[{}]", rid_call(kind, names))
}

const LB: &str = "Microsoft.Network/loadBalancers";
const VMSS: &str = "Microsoft.Compute/virtualMachineScaleSets";
const VNET: &str = "Microsoft.Network/virtualNetworks";
const NSG: &str = "Microsoft.Network/networkSecurityGroups";
const PIP: &str = "Microsoft.Network/publicIPAddresses";
const STORAGE: &str = "Microsoft.Storage/storageAccounts";

fn lb_name(v: &Value) -> Result<String, ModelError> {
    v.get("name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ModelError::invalid("A load balancer without a name cannot be exported."))
}

/// The ARM template for a resource group holding `lbs` and `scale_sets` (their GET bodies).
pub fn azure_template(rg: &str, lbs: &[Value], scale_sets: &[Value]) -> Result<Value, ModelError> {
    if scale_sets.is_empty() {
        return Err(ModelError::new(
            "ResourceNotFound",
            format!("Resource group '{rg}' has no scale set to export."),
        ));
    }
    let vnet = format!("{rg}-vnet");
    let nsg = format!("{rg}-nsg");
    let subnet = "default";
    let mut resources = Vec::new();
    let mut nsg_rules = Vec::new();
    let mut outputs = serde_json::Map::new();

    for lb in lbs {
        export_lb(lb, &mut resources, &mut nsg_rules, &mut outputs)?;
    }

    resources.push(json!({
        "type": NSG, "apiVersion": NETWORK_API_VERSION, "name": nsg,
        "location": "[parameters('location')]",
        "properties": {"securityRules": nsg_rules},
    }));
    resources.push(json!({
        "type": VNET, "apiVersion": NETWORK_API_VERSION, "name": vnet,
        "location": "[parameters('location')]",
        "dependsOn": [rid(NSG, &[&nsg])],
        "properties": {
            "addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
            "subnets": [{"name": subnet, "properties": {
                "addressPrefix": "10.0.0.0/24",
                "networkSecurityGroup": {"id": rid(NSG, &[&nsg])},
            }}],
        },
    }));
    // Packer (PackerBuild@1) needs a storage account in the resource group.
    resources.push(json!({
        "type": STORAGE, "apiVersion": STORAGE_API_VERSION, "name": "[variables('storageAccountName')]",
        "location": "[parameters('location')]",
        "sku": {"name": "Standard_LRS"}, "kind": "StorageV2",
        "properties": {"minimumTlsVersion": "TLS1_2", "allowBlobPublicAccess": false, "supportsHttpsTrafficOnly": true},
    }));
    outputs.insert(
        "storageAccountName".into(),
        json!({"type": "string", "value": "[variables('storageAccountName')]"}),
    );

    for s in scale_sets {
        resources.push(export_vmss(s, &vnet, subnet)?);
    }

    Ok(json!({
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "metadata": {"generator": "scaleset export azure", "resourceGroup": rg},
        "parameters": {
            "location": {"type": "string", "defaultValue": "[resourceGroup().location]"},
            "deployScaleSet": {"type": "bool", "defaultValue": true,
                "metadata": {"description": "false deploys the network and the storage account only (before the first image exists)"}},
            "imageId": {"type": "string", "defaultValue": "",
                "metadata": {"description": "The managed image the scale set runs (PackerBuild@1's imageId output)"}},
            "adminUsername": {"type": "string", "defaultValue": "azureuser"},
            "adminSshPublicKey": {"type": "string", "defaultValue": "",
                "metadata": {"description": "SSH public key for the instances (password login is disabled)"}},
        },
        "variables": {"storageAccountName": "[concat('sset', uniqueString(resourceGroup().id))]"},
        "resources": resources,
        "outputs": outputs,
    }))
}

/// A load balancer and its public IPs; each rule opens its backend port in the NSG and each
/// frontend's address is an output.
fn export_lb(
    lb: &Value,
    resources: &mut Vec<Value>,
    nsg_rules: &mut Vec<Value>,
    outputs: &mut serde_json::Map<String, Value>,
) -> Result<(), ModelError> {
    let name = lb_name(lb)?;
    let (m, _) = crate::lb::parse(lb)?;
    let mut depends = Vec::new();
    let mut frontends = Vec::new();
    for (fe, _) in &m.frontends {
        // A local frontend is an address on this machine; in Azure it is a public IP.
        let pip = format!("{name}-{fe}-ip");
        resources.push(json!({
            "type": PIP, "apiVersion": NETWORK_API_VERSION, "name": pip,
            "location": "[parameters('location')]",
            "sku": {"name": "Standard", "tier": "Regional"},
            "properties": {"publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4"},
        }));
        depends.push(rid(PIP, &[&pip]));
        frontends.push(
            json!({"name": fe, "properties": {"publicIPAddress": {"id": rid(PIP, &[&pip])}}}),
        );
        outputs.insert(
            format!("{}{}Address", name.replace(['-', '.', '_'], ""), fe.replace(['-', '.', '_'], "")),
            json!({"type": "string", "value": format!("[reference({}).ipAddress]", rid_call(PIP, &[&pip]))}),
        );
    }
    let probes: Vec<Value> = m.probes.iter().map(probe_json).collect();
    let rules: Vec<Value> = m.rules.iter().map(|r| rule_json(&name, r)).collect();
    for r in &m.rules {
        let priority = 100 + nsg_rules.len();
        nsg_rules.push(json!({
            "name": format!("allow-{name}-{}", r.name),
            "properties": {
                "description": format!("Clients of load balancer {name}, rule {} (port {} → {})", r.name, r.frontend_port, r.backend_port),
                "protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": r.backend_port.to_string(),
                "sourceAddressPrefix": "Internet", "destinationAddressPrefix": "*",
                "access": "Allow", "priority": priority, "direction": "Inbound",
            },
        }));
    }
    resources.push(json!({
        "type": LB, "apiVersion": NETWORK_API_VERSION, "name": name,
        "location": "[parameters('location')]",
        "sku": {"name": "Standard", "tier": "Regional"},
        "dependsOn": depends,
        "properties": {
            "frontendIPConfigurations": frontends,
            "backendAddressPools": m.pools.iter().map(|p| json!({"name": p})).collect::<Vec<_>>(),
            "probes": probes,
            "loadBalancingRules": rules,
        },
    }));
    Ok(())
}

fn probe_json(p: &crate::lb::ProbeModel) -> Value {
    let mut props = json!({
        "protocol": format!("{:?}", p.protocol),
        "port": p.port,
        "intervalInSeconds": p.interval_in_seconds,
        "probeThreshold": p.probe_threshold,
    });
    if let Some(path) = &p.request_path {
        props["requestPath"] = json!(path);
    }
    if p.all_probed_up {
        props["noHealthyBackendsBehavior"] = json!("AllProbedUp");
    }
    json!({"name": p.name, "properties": props})
}

fn rule_json(name: &str, r: &crate::lb::RuleModel) -> Value {
    let mut props = json!({
        // Locally "All" proxies TCP; in Azure "All" means HA ports.
        "protocol": "Tcp",
        "frontendPort": r.frontend_port,
        "backendPort": r.backend_port,
        "idleTimeoutInMinutes": r.idle_timeout_in_minutes,
        "enableTcpReset": r.enable_tcp_reset,
        "loadDistribution": format!("{:?}", r.load_distribution),
        "disableOutboundSnat": false,
        "frontendIPConfiguration": {"id": rid(&format!("{LB}/frontendIPConfigurations"), &[name, &r.frontend])},
        "backendAddressPool": {"id": rid(&format!("{LB}/backendAddressPools"), &[name, &r.pool])},
    });
    if let Some(p) = &r.probe {
        props["probe"] = json!({"id": rid(&format!("{LB}/probes"), &[name, p])});
    }
    json!({"name": r.name, "properties": props})
}

/// A scale set on the subnet, running the `imageId` parameter's image.
fn export_vmss(s: &Value, vnet: &str, subnet: &str) -> Result<Value, ModelError> {
    let name = s
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ModelError::invalid("A scale set without a name cannot be exported."))?
        .to_string();
    let (m, _) = crate::vmss::parse(s, &name)?;
    let mut depends = vec![rid(VNET, &[vnet])];
    let child_rid = |id: &crate::ids::ResourceId, kind: &str| {
        let child = id.child.as_ref().map(|c| c.1.as_str()).unwrap_or_default();
        rid(&format!("{LB}/{kind}"), &[&id.name, child])
    };
    for lb in m.backend_pools.iter().chain(m.health_probe.iter()) {
        let d = rid(LB, &[&lb.name]);
        if !depends.contains(&d) {
            depends.push(d);
        }
    }
    let r = &m.rolling;
    let mut props = json!({
        "orchestrationMode": "Uniform",
        "overprovision": false,
        "upgradePolicy": {
            "mode": format!("{:?}", m.upgrade_mode),
        },
        "scaleInPolicy": {"rules": [format!("{:?}", m.scale_in)]},
        "virtualMachineProfile": {
            "osProfile": {
                "computerNamePrefix": m.computer_name_prefix,
                "adminUsername": "[parameters('adminUsername')]",
                "linuxConfiguration": {
                    "disablePasswordAuthentication": true,
                    "ssh": {"publicKeys": [{
                        "path": "[format('/home/{0}/.ssh/authorized_keys', parameters('adminUsername'))]",
                        "keyData": "[parameters('adminSshPublicKey')]",
                    }]},
                },
            },
            "storageProfile": {
                "imageReference": {"id": "[parameters('imageId')]"},
                "osDisk": {"createOption": "FromImage", "caching": "ReadWrite", "managedDisk": {"storageAccountType": "Standard_LRS"}},
            },
            "networkProfile": {
                "networkInterfaceConfigurations": [{"name": format!("{name}-nic"), "properties": {
                    "primary": true,
                    "ipConfigurations": [{"name": "ipconfig", "properties": {
                        "subnet": {"id": rid(&format!("{VNET}/subnets"), &[vnet, subnet])},
                        "loadBalancerBackendAddressPools": m.backend_pools.iter().map(|p| json!({"id": child_rid(p, "backendAddressPools")})).collect::<Vec<_>>(),
                    }}],
                }}],
            },
            "diagnosticsProfile": {"bootDiagnostics": {"enabled": true}},
        },
    });
    if m.upgrade_mode == crate::vmss::UpgradeMode::Rolling {
        props["upgradePolicy"]["rollingUpgradePolicy"] = json!({
            "maxBatchInstancePercent": r.max_batch_instance_percent,
            "maxUnhealthyInstancePercent": r.max_unhealthy_instance_percent,
            "maxUnhealthyUpgradedInstancePercent": r.max_unhealthy_upgraded_instance_percent,
            "pauseTimeBetweenBatches": crate::vmss::format_iso8601_duration(r.pause_time_between_batches_secs),
            "prioritizeUnhealthyInstances": r.prioritize_unhealthy_instances,
            "rollbackFailedInstancesOnPolicyBreach": r.rollback_failed_instances_on_policy_breach,
            "maxSurge": r.max_surge,
        });
    }
    if let Some(p) = &m.health_probe {
        props["virtualMachineProfile"]["networkProfile"]["healthProbe"] =
            json!({"id": child_rid(p, "probes")});
    }
    if m.repairs.enabled {
        props["automaticRepairsPolicy"] = json!({
            "enabled": true,
            "gracePeriod": crate::vmss::format_iso8601_duration(m.repairs.grace_period_secs),
            "repairAction": format!("{:?}", m.repairs.repair_action),
        });
    }
    Ok(json!({
        "type": VMSS, "apiVersion": COMPUTE_API_VERSION, "name": name,
        // The first release deploys the network and storage only; Packer needs the storage
        // account before there is an image for the scale set.
        "condition": "[parameters('deployScaleSet')]",
        "location": "[parameters('location')]",
        "sku": {"name": m.sku_name, "tier": "Standard", "capacity": m.capacity},
        "dependsOn": depends,
        "properties": props,
    }))
}

/// The CI pipeline: build the app, publish the drop (binary, deployment files, the template).
pub fn ci_pipeline(app: &App) -> String {
    let mut copies = String::new();
    let dir = |f: &str| {
        if app.dir == "." {
            f.to_string()
        } else {
            format!("{}/{f}", app.dir)
        }
    };
    for f in &app.files {
        copies.push_str(&format!(
            "    cp -r '{}' \"$(Build.ArtifactStagingDirectory)/drop/\"\n",
            dir(f)
        ));
    }
    let manifest = dir("Cargo.toml");
    format!(
        r#"# CI, written by `scaleset export azure`: build the app and publish the drop that the release
# bakes into an image (the same drop `scaleset up` bakes locally).
trigger:
  branches:
    include:
    - main
pool:
  vmImage: ubuntu-latest
steps:
- script: cargo build --release --manifest-path '{manifest}'
  displayName: Build
- script: |
    mkdir -p "$(Build.ArtifactStagingDirectory)/drop"
    cp "$(cargo metadata --format-version 1 --no-deps --manifest-path '{manifest}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/{bin}" "$(Build.ArtifactStagingDirectory)/drop/"
{copies}    cp azuredeploy.json "$(Build.ArtifactStagingDirectory)/drop/"
  displayName: Package the drop
- task: PublishPipelineArtifact@1
  inputs:
    targetPath: $(Build.ArtifactStagingDirectory)/drop
    artifact: drop
"#,
        bin = app.binary,
    )
}

/// The release pipeline: after CI, deploy the network and storage, bake the drop into a managed
/// image with PackerBuild@1 (builtin template, the same script as locally), then deploy the
/// template with that image: the scale set's upgrade policy rolls it out.
pub fn release_pipeline(app: &App, rg: &str, ci_name: &str, service_connection: &str) -> String {
    format!(
        r###"# Release, written by `scaleset export azure`: runs when CI completes on main.
# Define the secret variable adminSshPublicKey in the pipeline's settings.
trigger: none
resources:
  pipelines:
  - pipeline: ci
    source: {ci_name}
    trigger:
      branches:
        include:
        - main
variables:
  azureSubscription: {service_connection}
  resourceGroup: {rg}
  location: westeurope
pool:
  vmImage: ubuntu-latest
steps:
- download: ci
  artifact: drop
- task: AzureResourceManagerTemplateDeployment@3
  displayName: Network, load balancer and storage
  inputs:
    deploymentScope: Resource Group
    azureResourceManagerConnection: $(azureSubscription)
    action: Create Or Update Resource Group
    resourceGroupName: $(resourceGroup)
    location: $(location)
    templateLocation: Linked artifact
    csmFile: $(Pipeline.Workspace)/ci/drop/azuredeploy.json
    overrideParameters: -deployScaleSet false
    deploymentMode: Incremental
    deploymentOutputs: infra
- script: |
    echo "##vso[task.setvariable variable=storageAccountName]$(echo '$(infra)' | python3 -c 'import json,sys; print(json.load(sys.stdin)["storageAccountName"]["value"])')"
  displayName: Storage account for Packer
- task: PackerBuild@1
  displayName: Bake the drop into an image
  inputs:
    templateType: builtin
    ConnectedServiceName: $(azureSubscription)
    isManagedImage: true
    managedImageName: {image_prefix}-$(resources.pipeline.ci.runID)
    location: $(location)
    storageAccountName: $(storageAccountName)
    azureResourceGroup: $(resourceGroup)
    baseImageSource: default
    baseImage: Canonical:UbuntuServer:18.04-LTS:linux
    packagePath: $(Pipeline.Workspace)/ci/drop
    deployScriptPath: {script}
    imageId: bakedImageId
- task: AzureResourceManagerTemplateDeployment@3
  displayName: Scale set on the new image (rolled out by its upgrade policy)
  inputs:
    deploymentScope: Resource Group
    azureResourceManagerConnection: $(azureSubscription)
    action: Create Or Update Resource Group
    resourceGroupName: $(resourceGroup)
    location: $(location)
    templateLocation: Linked artifact
    csmFile: $(Pipeline.Workspace)/ci/drop/azuredeploy.json
    overrideParameters: -deployScaleSet true -imageId "$(bakedImageId)" -adminSshPublicKey "$(adminSshPublicKey)"
    deploymentMode: Incremental
"###,
        image_prefix = app.binary.replace('_', "-"),
        script = app.script,
    )
}
