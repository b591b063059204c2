//! The release's tasks on Azure: AzureVmssDeployment@1 ([`AzureScaleSets`]: the image update as
//! the upgrade policy dictates) and PackerBuild@1 ([`AzureBaker`]: the drop to Blob storage,
//! then Azure VM Image Builder). The pipeline runner calls them from a blocking thread.
use crate::blob::{Blobs, DropSpec};
use crate::credential::pct;
use crate::error::AzureError;
use crate::ops::{Azure, ImageTemplate, ImageUpdate};
use pipeline::tasks::{BakeRequest, BakedImage, Baker, ScaleSets};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

/// The resource group of the subscription's scale set `name` (AzureVmssDeployment@1 may omit it).
pub async fn find_vmss_rg(az: &Azure, name: &str) -> Result<String, AzureError> {
    let all = az
        .client
        .list(&format!(
            "/subscriptions/{}/providers/Microsoft.Compute/virtualMachineScaleSets",
            pct(&az.subscription)
        ))
        .await?;
    all.iter()
        .find(|s| {
            s.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .and_then(|s| s.get("id").and_then(Value::as_str))
        .and_then(|id| id.split('/').nth(4))
        .map(str::to_string)
        .ok_or_else(|| AzureError::Api {
            status: 404,
            code: "ResourceNotFound".into(),
            message: format!(
                "scale set `{name}` not found in subscription {}",
                az.subscription
            ),
        })
}

pub struct AzureScaleSets {
    pub azure: Arc<Azure>,
    pub rt: tokio::runtime::Handle,
}

impl ScaleSets for AzureScaleSets {
    fn update_image(
        &self,
        resource_group: Option<&str>,
        vmss: &str,
        image_id: &str,
        log: &mut dyn FnMut(&str),
    ) -> Result<(), String> {
        let az = &self.azure;
        self.rt.block_on(async {
            let rg = match resource_group {
                Some(rg) => rg.to_string(),
                None => find_vmss_rg(az, vmss).await.map_err(|e| e.to_string())?,
            };
            let image_id = if image_id.starts_with('/') {
                image_id.to_string()
            } else {
                az.image_path(&rg, image_id)
            };
            let out = az
                .update_image(&rg, vmss, &image_id, &mut |l: &str| log(l))
                .await
                .map_err(|e| e.to_string())?;
            log(&match out {
                ImageUpdate::ManualUpgraded(ids) => format!(
                    "scale set {rg}/{vmss} now uses image {image_id}; upgraded instances {}",
                    ids.join(", ")
                ),
                ImageUpdate::Automatic => format!(
                    "scale set {rg}/{vmss} now uses image {image_id}; Azure upgrades the instances (Automatic)"
                ),
                ImageUpdate::Rolled => {
                    format!("scale set {rg}/{vmss} now uses image {image_id}; rolling upgrade completed")
                }
                ImageUpdate::RollingNotStarted => format!(
                    "scale set {rg}/{vmss} now uses image {image_id}; no rolling upgrade started"
                ),
            });
            Ok(())
        })
    }
}

/// Where and how Image Builder bakes (the PackerBuild@1 inputs say what, not where).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBuilderSettings {
    pub location: String,
    /// User-assigned identity for Image Builder: Contributor on the image's resource group and
    /// Storage Blob Data Reader on the drop container.
    pub identity: String,
    /// Blob container URL the drops are uploaded to.
    pub drop_container: String,
    /// Platform image `publisher:offer:sku:version`.
    pub base_image: (String, String, String, String),
    pub vm_size: String,
}

impl ImageBuilderSettings {
    /// `SCALESET_AZURE_LOCATION`, `SCALESET_AZURE_IMAGE_IDENTITY`, `SCALESET_AZURE_DROP_CONTAINER`
    /// (required); `SCALESET_AZURE_BASE_IMAGE` (default Ubuntu 22.04 LTS) and
    /// `SCALESET_AZURE_VM_SIZE` (default Standard_D2s_v3).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let get = |k: &str| env(k).filter(|v| !v.is_empty());
        let need = |k: &str| get(k).ok_or_else(|| format!("PackerBuild@1 on Azure needs {k}"));
        let base = get("SCALESET_AZURE_BASE_IMAGE")
            .unwrap_or_else(|| "Canonical:0001-com-ubuntu-server-jammy:22_04-lts:latest".into());
        let parts: Vec<&str> = base.split(':').collect();
        let [p, o, s, v] = parts[..] else {
            return Err(format!(
                "SCALESET_AZURE_BASE_IMAGE `{base}` is not publisher:offer:sku:version"
            ));
        };
        Ok(ImageBuilderSettings {
            location: need("SCALESET_AZURE_LOCATION")?,
            identity: need("SCALESET_AZURE_IMAGE_IDENTITY")?,
            drop_container: need("SCALESET_AZURE_DROP_CONTAINER")?
                .trim_end_matches('/')
                .to_string(),
            base_image: (p.into(), o.into(), s.into(), v.into()),
            vm_size: get("SCALESET_AZURE_VM_SIZE").unwrap_or_else(|| "Standard_D2s_v3".into()),
        })
    }
}

/// An image template name from the image name (1-64 of letters, digits, `-_.`).
pub fn template_name(image: &str) -> String {
    let cleaned: String = image
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("scaleset-{cleaned}").chars().take(64).collect()
}

pub struct AzureBaker {
    pub azure: Arc<Azure>,
    pub blobs: Blobs,
    pub settings: ImageBuilderSettings,
    pub rt: tokio::runtime::Handle,
}

impl Baker for AzureBaker {
    fn bake(&self, req: BakeRequest, log: &mut dyn FnMut(&str)) -> Result<BakedImage, String> {
        let rg = req
            .resource_group
            .as_deref()
            .ok_or("PackerBuild@1 on Azure needs azureResourceGroup")?;
        let s = &self.settings;
        let image_id = self.azure.image_path(rg, &req.name);
        let template = template_name(&req.name);
        let url = format!("{}/{}.tar.gz", s.drop_container, pct(&req.name));
        log(&format!(
            "Azure VM Image Builder: base {}:{}:{}:{} (SCALESET_AZURE_BASE_IMAGE), drop {url}, template {rg}/{template}",
            s.base_image.0, s.base_image.1, s.base_image.2, s.base_image.3
        ));
        let t = ImageTemplate {
            location: s.location.clone(),
            identity: s.identity.clone(),
            source: s.base_image.clone(),
            files: vec![],
            inline: vec![],
            image_id,
            run_output_name: "scaleset".into(),
            vm_size: s.vm_size.clone(),
        };
        let drop = DropSpec {
            package: Path::new(&req.package_dir),
            script: &req.script,
            args: &req.args,
            url: &url,
        };
        let id = self
            .rt
            .block_on(
                self.azure
                    .packer_build(&self.blobs, rg, &template, &drop, t),
            )
            .map_err(|e| e.to_string())?;
        log(&format!("image {id}"));
        Ok(BakedImage {
            name: req.name,
            id,
            warnings: vec![],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn template_names() {
        assert_eq!(template_name("120"), "scaleset-120");
        assert_eq!(template_name("my app/1"), "scaleset-my-app-1");
        assert_eq!(template_name(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn settings_from_env() {
        let full: HashMap<&str, &str> = [
            ("SCALESET_AZURE_LOCATION", "westeurope"),
            ("SCALESET_AZURE_IMAGE_IDENTITY", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aib"),
            ("SCALESET_AZURE_DROP_CONTAINER", "https://acct.blob.core.windows.net/drops/"),
        ]
        .into();
        let env = |m: &HashMap<&str, &str>, k: &str| m.get(k).map(|v| v.to_string());
        let s = ImageBuilderSettings::from_env(&|k| env(&full, k)).unwrap();
        assert_eq!(s.drop_container, "https://acct.blob.core.windows.net/drops");
        assert_eq!(s.base_image.1, "0001-com-ubuntu-server-jammy");
        assert_eq!(s.vm_size, "Standard_D2s_v3");
        let mut bad = full.clone();
        bad.insert("SCALESET_AZURE_BASE_IMAGE", "ubuntu");
        assert_eq!(
            ImageBuilderSettings::from_env(&|k| env(&bad, k)).unwrap_err(),
            "SCALESET_AZURE_BASE_IMAGE `ubuntu` is not publisher:offer:sku:version"
        );
        let mut missing = full.clone();
        missing.remove("SCALESET_AZURE_DROP_CONTAINER");
        assert_eq!(
            ImageBuilderSettings::from_env(&|k| env(&missing, k)).unwrap_err(),
            "PackerBuild@1 on Azure needs SCALESET_AZURE_DROP_CONTAINER"
        );
    }
}
