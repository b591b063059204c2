//! The operations the CLI verbs and the release pipeline use on a real subscription: scale sets,
//! load balancers, images, the image-update flow and Azure VM Image Builder.
use crate::client::{ArmClient, DEFAULT_BASE};
use crate::credential;
use crate::error::AzureError;
use crate::transport::{CurlTransport, HttpTransport, Transport};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Percent-encodes one path segment.
pub fn seg(s: &str) -> String {
    crate::credential::pct(s)
}

/// A subscription's resources through ARM.
pub struct Azure {
    pub client: ArmClient,
    pub subscription: String,
    /// How long a Rolling scale set may take to show the rolling upgrade a model change starts.
    pub rolling_grace: Duration,
}

/// How a template deployment ended.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub state: crate::deploy::State,
    /// The deployment as last read (outputs, error).
    pub deployment: Value,
    /// `type/name: (code) message` of each failed resource operation.
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeStep {
    /// Manual: the model changed, instances keep the old one until upgraded explicitly.
    ManualUpgradeAll,
    /// Automatic: Azure upgrades every instance itself.
    Nothing,
    /// Rolling: Azure rolls the change out in batches; follow `rollingUpgrades/latest`.
    FollowRolling,
}

/// What an image update does after the PATCH, from `upgradePolicy.mode` (Azure's default is
/// Manual).
pub fn upgrade_step(vmss: &Value) -> UpgradeStep {
    let mode = vmss
        .pointer("/properties/upgradePolicy/mode")
        .and_then(Value::as_str)
        .unwrap_or("Manual");
    match mode.to_ascii_lowercase().as_str() {
        "automatic" => UpgradeStep::Nothing,
        "rolling" => UpgradeStep::FollowRolling,
        _ => UpgradeStep::ManualUpgradeAll,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rolling {
    /// No rolling upgrade newer than the one seen before the change (yet).
    NotStarted,
    InProgress(String),
    Completed,
    Failed(AzureError),
}

/// The state of the rolling upgrade after a model change, from `rollingUpgrades/latest` (`None`
/// for a 404: never rolled). `before` is the `runningStatus.startTime` seen before the change,
/// so an older, finished upgrade is not mistaken for this one.
pub fn rolling_state(before: Option<&str>, latest: Option<&Value>) -> Rolling {
    let Some(v) = latest else {
        return Rolling::NotStarted;
    };
    let s = |p: &str| v.pointer(p).and_then(Value::as_str);
    if before.is_some() && s("/properties/runningStatus/startTime") == before {
        return Rolling::NotStarted;
    }
    let n = |k: &str| {
        v.pointer(&format!("/properties/progress/{k}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let progress = format!(
        "{} succeeded, {} failed, {} in progress, {} pending",
        n("successfulInstanceCount"),
        n("failedInstanceCount"),
        n("inProgressInstanceCount"),
        n("pendingInstanceCount")
    );
    match s("/properties/runningStatus/code").unwrap_or("") {
        "RollingForward" => Rolling::InProgress(progress),
        "Completed" => Rolling::Completed,
        code @ ("Faulted" | "Cancelled") => Rolling::Failed(AzureError::Operation {
            status: code.to_string(),
            code: s("/properties/error/code")
                .unwrap_or(if code == "Faulted" {
                    "RollingUpgradeFaulted"
                } else {
                    "RollingUpgradeCancelled"
                })
                .to_string(),
            message: s("/properties/error/message")
                .map(str::to_string)
                .unwrap_or_else(|| format!("the rolling upgrade ended {code} ({progress})")),
        }),
        other => Rolling::Failed(AzureError::InvalidResponse {
            url: "rollingUpgrades/latest".into(),
            reason: format!("unknown runningStatus.code {other:?}"),
        }),
    }
}

/// What [`Azure::update_image`] did after the PATCH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageUpdate {
    ManualUpgraded(Vec<String>),
    Automatic,
    Rolled,
    /// Rolling mode, but no rolling upgrade appeared within the grace period (for instance no
    /// instance needed one).
    RollingNotStarted,
}

/// An image template for Azure VM Image Builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageTemplate {
    pub location: String,
    /// A user-assigned identity with rights on the target resource group (Image Builder needs one).
    pub identity: String,
    /// Platform image `publisher:offer:sku:version`.
    pub source: (String, String, String, String),
    /// Files to copy before the script: (sourceUri, destination), e.g. the drop in Blob storage.
    pub files: Vec<(String, String)>,
    /// Shell commands run as root (PackerBuild@1's deployment script invocation).
    pub inline: Vec<String>,
    pub image_id: String,
    pub run_output_name: String,
    pub vm_size: String,
}

/// The `imageTemplates` PUT body: platform-image source, File then Shell customizers,
/// ManagedImage distribution.
pub fn image_template_body(t: &ImageTemplate) -> Value {
    let mut customize: Vec<Value> = t
        .files
        .iter()
        .enumerate()
        .map(|(i, (uri, dest))| {
            json!({"type": "File", "name": format!("file{i}"), "sourceUri": uri, "destination": dest})
        })
        .collect();
    if !t.inline.is_empty() {
        customize.push(json!({"type": "Shell", "name": "deploy", "inline": t.inline}));
    }
    json!({
        "location": t.location,
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {t.identity.clone(): {}}},
        "properties": {
            "source": {
                "type": "PlatformImage",
                "publisher": t.source.0, "offer": t.source.1, "sku": t.source.2, "version": t.source.3,
            },
            "customize": customize,
            "distribute": [{
                "type": "ManagedImage",
                "imageId": t.image_id,
                "location": t.location,
                "runOutputName": t.run_output_name,
            }],
            "vmProfile": {"vmSize": t.vm_size},
        }
    })
}

impl Azure {
    /// A client for the subscription the environment names (`env` reads a variable):
    /// `AZURE_SUBSCRIPTION_ID`; credentials as [`credential::choose`] picks them; ARM at
    /// `SCALESET_AZURE_ENDPOINT` (default https://management.azure.com; plain `http://` is
    /// for the replay tests), polls without Retry-After every `SCALESET_AZURE_POLL_MS` (5 s). HTTPS goes through the system curl ([`CurlTransport`]).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Azure, AzureError> {
        let get = |k: &str| env(k).filter(|v| !v.is_empty());
        let sub = get("AZURE_SUBSCRIPTION_ID").ok_or_else(|| {
            AzureError::Config("the azure provider needs AZURE_SUBSCRIPTION_ID".into())
        })?;
        let base = get("SCALESET_AZURE_ENDPOINT").unwrap_or_else(|| DEFAULT_BASE.to_string());
        let http: Arc<dyn Transport> = Arc::new(HttpTransport::new(Duration::from_secs(100)));
        let https: Arc<dyn Transport> = Arc::new(CurlTransport::new(Duration::from_secs(100)));
        // IMDS answers at once on an Azure VM and not at all elsewhere.
        let imds: Arc<dyn Transport> = Arc::new(HttpTransport::new(Duration::from_secs(5)));
        let choice = credential::choose(&get, &|| credential::AzCli::find().is_ok());
        let cred = credential::build(choice, imds, https.clone())?;
        let transport = if base.starts_with("http://") {
            http
        } else {
            https
        };
        let mut client = ArmClient::new(&base, transport, Arc::new(cred))?;
        // Polls without a Retry-After (a deployment's) wait this long; tests shorten it.
        if let Some(ms) = get("SCALESET_AZURE_POLL_MS").and_then(|v| v.parse::<u64>().ok()) {
            client.poll_delay = Duration::from_millis(ms.min(60_000));
        }
        Ok(Azure::new(client, &sub))
    }

    pub fn new(client: ArmClient, subscription: &str) -> Self {
        Azure {
            client,
            subscription: subscription.to_string(),
            rolling_grace: Duration::from_secs(120),
        }
    }

    pub fn rg_path(&self, rg: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}",
            seg(&self.subscription),
            seg(rg)
        )
    }

    fn res(&self, rg: &str, provider_type: &str, name: &str) -> String {
        format!(
            "{}/providers/{provider_type}/{}",
            self.rg_path(rg),
            seg(name)
        )
    }

    pub fn vmss_path(&self, rg: &str, name: &str) -> String {
        self.res(rg, "Microsoft.Compute/virtualMachineScaleSets", name)
    }
    pub fn lb_path(&self, rg: &str, name: &str) -> String {
        self.res(rg, "Microsoft.Network/loadBalancers", name)
    }
    pub fn image_path(&self, rg: &str, name: &str) -> String {
        self.res(rg, "Microsoft.Compute/images", name)
    }
    pub fn template_path(&self, rg: &str, name: &str) -> String {
        self.res(rg, "Microsoft.VirtualMachineImages/imageTemplates", name)
    }

    pub async fn vmss_get(&self, rg: &str, name: &str) -> Result<Value, AzureError> {
        self.client
            .call("GET", &self.vmss_path(rg, name), None)
            .await
    }
    pub async fn vmss_create_or_update(
        &self,
        rg: &str,
        name: &str,
        body: &Value,
    ) -> Result<Value, AzureError> {
        self.client
            .call("PUT", &self.vmss_path(rg, name), Some(body))
            .await
    }
    pub async fn vmss_update(
        &self,
        rg: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Value, AzureError> {
        self.client
            .call("PATCH", &self.vmss_path(rg, name), Some(patch))
            .await
    }
    pub async fn vmss_delete(&self, rg: &str, name: &str) -> Result<(), AzureError> {
        self.client
            .call("DELETE", &self.vmss_path(rg, name), None)
            .await
            .map(drop)
    }
    pub async fn vmss_list_instances(
        &self,
        rg: &str,
        name: &str,
    ) -> Result<Vec<Value>, AzureError> {
        self.client
            .list(&format!("{}/virtualMachines", self.vmss_path(rg, name)))
            .await
    }
    pub async fn vmss_manual_upgrade(
        &self,
        rg: &str,
        name: &str,
        ids: &[String],
    ) -> Result<(), AzureError> {
        self.client
            .call(
                "POST",
                &format!("{}/manualupgrade", self.vmss_path(rg, name)),
                Some(&json!({"instanceIds": ids})),
            )
            .await
            .map(drop)
    }
    /// Starts a rolling upgrade (OS image upgrade) and waits for its operation.
    pub async fn vmss_start_rolling_upgrade(&self, rg: &str, name: &str) -> Result<(), AzureError> {
        self.client
            .call(
                "POST",
                &format!("{}/osRollingUpgrade", self.vmss_path(rg, name)),
                None,
            )
            .await
            .map(drop)
    }
    pub async fn vmss_rolling_latest(
        &self,
        rg: &str,
        name: &str,
    ) -> Result<Option<Value>, AzureError> {
        self.client
            .get_opt(&format!(
                "{}/rollingUpgrades/latest",
                self.vmss_path(rg, name)
            ))
            .await
    }
    pub async fn lb_get(&self, rg: &str, name: &str) -> Result<Value, AzureError> {
        self.client.call("GET", &self.lb_path(rg, name), None).await
    }
    pub async fn lb_create_or_update(
        &self,
        rg: &str,
        name: &str,
        body: &Value,
    ) -> Result<Value, AzureError> {
        self.client
            .call("PUT", &self.lb_path(rg, name), Some(body))
            .await
    }
    /// Creates or updates resource group `rg` in `location` (an Azure region).
    pub async fn group_create(&self, rg: &str, location: &str) -> Result<Value, AzureError> {
        crate::create::check_location(location).map_err(AzureError::Config)?;
        self.client
            .call(
                "PUT",
                &self.rg_path(rg),
                Some(&json!({"location": location})),
            )
            .await
    }

    /// The location of resource group `rg`, where az puts a group's new resources.
    pub async fn group_location(&self, rg: &str) -> Result<String, AzureError> {
        let v = self.client.call("GET", &self.rg_path(rg), None).await?;
        v["location"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| AzureError::Config(format!("resource group '{rg}' has no location")))
    }

    /// The id of public IP `name`, created (Standard, static) when it does not exist yet.
    pub async fn ensure_public_ip(
        &self,
        rg: &str,
        name: &str,
        location: &str,
    ) -> Result<String, AzureError> {
        let path = self.res(rg, "Microsoft.Network/publicIPAddresses", name);
        if self.client.get_opt(&path).await?.is_none() {
            let body = crate::create::public_ip(location);
            self.client.call("PUT", &path, Some(&body)).await?;
        }
        Ok(path)
    }

    /// Creates or updates network security group `name` with `body`; returns its id.
    pub async fn put_nsg(&self, rg: &str, name: &str, body: &Value) -> Result<String, AzureError> {
        let path = self.nsg_path(rg, name);
        self.client.call("PUT", &path, Some(body)).await?;
        Ok(path)
    }

    /// Whether network security group `name` exists in `rg`.
    pub async fn nsg_exists(&self, rg: &str, name: &str) -> Result<bool, AzureError> {
        Ok(self
            .client
            .get_opt(&self.nsg_path(rg, name))
            .await?
            .is_some())
    }

    /// The id of network security group `name` in `rg`.
    pub fn nsg_path(&self, rg: &str, name: &str) -> String {
        self.res(rg, "Microsoft.Network/networkSecurityGroups", name)
    }

    /// The id of subnet `subnet` of virtual network `vnet`; a virtual network that does not
    /// exist is created with that subnet (az's defaults), a missing subnet of an existing one is
    /// an error (its address range is the user's choice).
    pub async fn ensure_subnet(
        &self,
        rg: &str,
        vnet: &str,
        subnet: &str,
        location: &str,
    ) -> Result<String, AzureError> {
        let vnet_path = self.res(rg, "Microsoft.Network/virtualNetworks", vnet);
        let path = format!("{vnet_path}/subnets/{}", seg(subnet));
        if self.client.get_opt(&vnet_path).await?.is_none() {
            let body = crate::create::virtual_network(location, subnet);
            self.client.call("PUT", &vnet_path, Some(&body)).await?;
            return Ok(path);
        }
        match self.client.get_opt(&path).await? {
            Some(_) => Ok(path),
            None => Err(AzureError::Config(format!(
                "virtual network '{vnet}' has no subnet '{subnet}': create it, or name another with --subnet"
            ))),
        }
    }

    /// Deployment `name` in resource group `rg`.
    pub fn deployment_path(&self, rg: &str, name: &str) -> String {
        self.res(rg, "Microsoft.Resources/deployments", name)
    }

    /// Submits a template deployment (`deploy::body`) and follows it until it succeeds, fails
    /// or is canceled, reporting each resource's state as its operations change it (one line
    /// per change to `progress`). A failed deployment is an outcome, not an error: its
    /// per-resource errors are in [`Deployed::failures`].
    pub async fn deploy<F: FnMut(&str) + ?Sized>(
        &self,
        rg: &str,
        name: &str,
        body: &Value,
        progress: &mut F,
    ) -> Result<Deployed, AzureError> {
        use crate::deploy;
        let path = self.deployment_path(rg, name);
        // The spec lists a deployment's operations under `resourcegroups/{rg}/deployments`.
        let ops_path = format!("{}/deployments/{}/operations", self.rg_path(rg), seg(name));
        let mut v = self.client.call_no_wait("PUT", &path, Some(body)).await?;
        let mut seen = std::collections::BTreeMap::new();
        let mut waited = Duration::ZERO;
        loop {
            let state = deploy::State::of(&v);
            let ops = self.client.list(&ops_path).await?;
            for line in deploy::progress(&mut seen, &deploy::resource_states(&ops)) {
                progress(&line);
            }
            if state.done() {
                return Ok(Deployed {
                    state,
                    failures: deploy::failures(&ops),
                    deployment: v,
                });
            }
            if waited >= self.client.lro_timeout {
                return Err(AzureError::Timeout {
                    what: format!("deployment {name}"),
                    secs: waited.as_secs(),
                });
            }
            self.client.sleep(self.client.poll_delay).await;
            waited += self.client.poll_delay;
            v = self.client.call("GET", &path, None).await?;
        }
    }

    pub async fn image_get(&self, rg: &str, name: &str) -> Result<Value, AzureError> {
        self.client
            .call("GET", &self.image_path(rg, name), None)
            .await
    }

    /// The release's image update: PATCH `imageReference.id`, then what the upgrade policy
    /// dictates (Manual: manualUpgrade of every instance; Automatic: nothing; Rolling: follow
    /// the rolling upgrade until it completes or faults). `progress` gets one line per change.
    pub async fn update_image<F: FnMut(&str) + ?Sized>(
        &self,
        rg: &str,
        name: &str,
        image_id: &str,
        progress: &mut F,
    ) -> Result<ImageUpdate, AzureError> {
        let before = self.vmss_rolling_latest(rg, name).await?.and_then(|v| {
            v.pointer("/properties/runningStatus/startTime")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        let patch = json!({"properties": {"virtualMachineProfile": {"storageProfile": {"imageReference": {"id": image_id}}}}});
        let v = self.vmss_update(rg, name, &patch).await?;
        match upgrade_step(&v) {
            UpgradeStep::Nothing => Ok(ImageUpdate::Automatic),
            UpgradeStep::ManualUpgradeAll => {
                let ids: Vec<String> = self
                    .vmss_list_instances(rg, name)
                    .await?
                    .iter()
                    .filter_map(|i| i.get("instanceId").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect();
                if !ids.is_empty() {
                    progress(&format!("manual upgrade of {} instances", ids.len()));
                    self.vmss_manual_upgrade(rg, name, &ids).await?;
                }
                Ok(ImageUpdate::ManualUpgraded(ids))
            }
            UpgradeStep::FollowRolling => {
                let mut waited = Duration::ZERO;
                let mut last = String::new();
                loop {
                    let latest = self.vmss_rolling_latest(rg, name).await?;
                    match rolling_state(before.as_deref(), latest.as_ref()) {
                        Rolling::Completed => return Ok(ImageUpdate::Rolled),
                        Rolling::Failed(e) => return Err(e),
                        Rolling::NotStarted if waited >= self.rolling_grace => {
                            return Ok(ImageUpdate::RollingNotStarted)
                        }
                        Rolling::NotStarted => {}
                        Rolling::InProgress(line) => {
                            if line != last {
                                progress(&format!("rolling upgrade RollingForward: {line}"));
                                last = line;
                            }
                            if waited >= self.client.lro_timeout {
                                return Err(AzureError::Timeout {
                                    what: format!("the rolling upgrade of {name}"),
                                    secs: waited.as_secs(),
                                });
                            }
                        }
                    }
                    waited += self.client.poll_delay;
                    self.client.sleep(self.client.poll_delay).await;
                }
            }
        }
    }

    /// Bakes with Azure VM Image Builder: (re)create the image template, run it, wait, and
    /// return the managed image id from its run output. The template's files must already be
    /// reachable by Image Builder (`Azure::packer_build` uploads the drop first).
    pub async fn bake_with_image_builder(
        &self,
        rg: &str,
        template: &str,
        t: &ImageTemplate,
    ) -> Result<String, AzureError> {
        let path = self.template_path(rg, template);
        // Image templates cannot be updated: a re-run replaces the previous one.
        match self.client.call("DELETE", &path, None).await {
            Err(e) if e.status() != Some(404) => return Err(e),
            _ => {}
        }
        self.client
            .call("PUT", &path, Some(&image_template_body(t)))
            .await?;
        self.client
            .call("POST", &format!("{path}/run"), None)
            .await?;
        let out = self
            .client
            .call(
                "GET",
                &format!("{path}/runOutputs/{}", seg(&t.run_output_name)),
                None,
            )
            .await?;
        out.pointer("/properties/artifactId")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| AzureError::InvalidResponse {
                url: path,
                reason: "run output has no properties.artifactId".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_steps() {
        let cases = [
            (
                json!({"properties": {"upgradePolicy": {"mode": "Manual"}}}),
                UpgradeStep::ManualUpgradeAll,
            ),
            (
                json!({"properties": {"upgradePolicy": {"mode": "Automatic"}}}),
                UpgradeStep::Nothing,
            ),
            (
                json!({"properties": {"upgradePolicy": {"mode": "rolling"}}}),
                UpgradeStep::FollowRolling,
            ),
            (json!({"properties": {}}), UpgradeStep::ManualUpgradeAll),
        ];
        for (v, want) in cases {
            assert_eq!(upgrade_step(&v), want, "{v}");
        }
    }

    #[test]
    fn rolling_states() {
        let st = |code: &str, start: &str| json!({"properties": {"runningStatus": {"code": code, "startTime": start}, "progress": {"successfulInstanceCount": 1, "failedInstanceCount": 0, "inProgressInstanceCount": 1, "pendingInstanceCount": 2}}});
        let faulted = json!({"properties": {"runningStatus": {"code": "Faulted", "startTime": "t2"}, "error": {"code": "MaxUnhealthyInstancePercentExceededInRollingUpgrade", "message": "too many unhealthy"}}});
        let cases: Vec<(Option<&str>, Option<Value>, Rolling)> = vec![
            (None, None, Rolling::NotStarted),
            (Some("t1"), Some(st("Completed", "t1")), Rolling::NotStarted),
            (Some("t1"), Some(st("RollingForward", "t2")), Rolling::InProgress("1 succeeded, 0 failed, 1 in progress, 2 pending".into())),
            (None, Some(st("RollingForward", "t2")), Rolling::InProgress("1 succeeded, 0 failed, 1 in progress, 2 pending".into())),
            (Some("t1"), Some(st("Completed", "t2")), Rolling::Completed),
            (Some("t1"), Some(faulted), Rolling::Failed(AzureError::Operation { status: "Faulted".into(), code: "MaxUnhealthyInstancePercentExceededInRollingUpgrade".into(), message: "too many unhealthy".into() })),
            (None, Some(st("Cancelled", "t2")), Rolling::Failed(AzureError::Operation { status: "Cancelled".into(), code: "RollingUpgradeCancelled".into(), message: "the rolling upgrade ended Cancelled (1 succeeded, 0 failed, 1 in progress, 2 pending)".into() })),
        ];
        for (i, (before, latest, want)) in cases.into_iter().enumerate() {
            assert_eq!(rolling_state(before, latest.as_ref()), want, "case {i}");
        }
    }

    #[test]
    fn template_body() {
        let t = ImageTemplate {
            location: "westus".into(),
            identity: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aib".into(),
            source: ("Canonical".into(), "0001-com-ubuntu-server-jammy".into(), "22_04-lts".into(), "latest".into()),
            files: vec![("https://acct.blob.core.windows.net/drop/drop.tar.gz".into(), "/tmp/drop.tar.gz".into())],
            inline: vec!["sudo mkdir -p /deployTemp".into(), "sudo bash /deployTemp/drop/setupscript.sh".into()],
            image_id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/121".into(),
            run_output_name: "out121".into(),
            vm_size: "Standard_D2s_v3".into(),
        };
        let b = image_template_body(&t);
        assert_eq!(b["properties"]["source"]["type"], "PlatformImage");
        assert_eq!(b["properties"]["customize"][0]["type"], "File");
        assert_eq!(
            b["properties"]["customize"][0]["destination"],
            "/tmp/drop.tar.gz"
        );
        assert_eq!(b["properties"]["customize"][1]["type"], "Shell");
        assert_eq!(
            b["properties"]["customize"][1]["inline"][1],
            "sudo bash /deployTemp/drop/setupscript.sh"
        );
        assert_eq!(b["properties"]["distribute"][0]["imageId"], t.image_id);
        assert_eq!(b["properties"]["distribute"][0]["runOutputName"], "out121");
        assert!(b["identity"]["userAssignedIdentities"]
            .get(&t.identity)
            .is_some());
    }
}
