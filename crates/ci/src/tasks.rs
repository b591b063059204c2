//! The tasks of a run: the standard tasks over the daemon's image store and control plane (or
//! the azure provider's), and the `az` shim's environment.
use crate::provider::{azure_az_env, NoBaker};
use crate::PipelineService;
use pipeline::tasks::{BakeRequest, BakedImage, Baker, EnvVar, ScaleSets, StdTasks};
use std::sync::{Arc, Weak};

/// The subscription of the daemon's own resources.
const DEFAULT_SUB: &str = "00000000-0000-0000-0000-000000000000";

impl PipelineService {
    /// The tasks of one run; `run_token` is the run's own ARM credential for the `az` shim, or
    /// with the azure provider `azure_token` an access token for Azure.
    pub(crate) fn tasks(&self, run_token: &str, azure_token: Option<&str>) -> StdTasks {
        let mut t = StdTasks::new(self.artifacts.clone());
        let weak = Arc::downgrade(&self.core);
        t.baker = Some(Arc::new(DaemonBaker(weak.clone())));
        t.scale_sets = Some(Arc::new(DaemonScaleSets(weak)));
        if let Some(a) = &self.azure {
            let rt = tokio::runtime::Handle::current();
            t.scale_sets = Some(Arc::new(azure::tasks::AzureScaleSets {
                azure: a.azure.clone(),
                rt: rt.clone(),
            }));
            t.baker = Some(match &a.image_builder {
                Ok(settings) => Arc::new(azure::tasks::AzureBaker {
                    blobs: azure::blob::Blobs::for_azure(&a.azure),
                    azure: a.azure.clone(),
                    settings: settings.clone(),
                    rt,
                }),
                Err(e) => Arc::new(NoBaker(e.clone())),
            });
        }
        t.az_shim_dir = Some(self.shim_dir.clone());
        t.az_env = vec![
            EnvVar::plain("SCALESET_ENDPOINT", self.endpoint()),
            EnvVar::secret("SCALESET_TOKEN", run_token.to_string()),
            // Nothing of the daemon's home: the shim needs only the endpoint and the token.
            EnvVar::plain("SCALESET_HOME", "/nonexistent"),
        ];
        if let Some(a) = &self.azure {
            t.az_env = azure_az_env(&a.azure, azure_token);
        }
        t
    }
}

/// A bake's output, line by line, to the task's log.
struct LineWriter<'a> {
    buf: Vec<u8>,
    log: &'a mut dyn FnMut(&str),
}

impl std::io::Write for LineWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        while let Some(i) = self.buf.iter().position(|c| *c == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            (self.log)(String::from_utf8_lossy(&line[..line.len() - 1]).trim_end());
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// PackerBuild@1 → the daemon's image store.
struct DaemonBaker(Weak<engine::Core>);

impl Baker for DaemonBaker {
    fn bake(&self, req: BakeRequest, log: &mut dyn FnMut(&str)) -> Result<BakedImage, String> {
        let core = self.0.upgrade().ok_or("the daemon is shutting down")?;
        let spec = image::BakeSpec {
            name: req.name.clone(),
            base: req.base.clone(),
            package_dir: req.package_dir.clone(),
            script: req.script.clone(),
            args: req.args.clone(),
            // Packer's build VM has network access (deployment scripts apt-get install).
            network: true,
            mirror: None,
            host_network: true,
            cache: req.cache_scope.clone(),
        };
        let mut w = LineWriter {
            buf: Vec::new(),
            log,
        };
        let img = core
            .images
            .bake(&spec, &mut w)
            .map_err(|e| control::error_chain(&e))?;
        let rg = req.resource_group.as_deref().unwrap_or("images");
        Ok(BakedImage {
            id: format!(
                "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.Compute/images/{}",
                DEFAULT_SUB, img.name
            ),
            name: img.name,
            warnings: img.warnings,
        })
    }
}

/// AzureVmssDeployment@1 → the control plane's `set_image` (what `az vmss update --set
/// virtualMachineProfile.storageProfile.imageReference.id=...` does through the API).
struct DaemonScaleSets(Weak<engine::Core>);

impl ScaleSets for DaemonScaleSets {
    fn update_image(
        &self,
        resource_group: Option<&str>,
        vmss: &str,
        image_id: &str,
        log: &mut dyn FnMut(&str),
    ) -> Result<(), String> {
        let core = self.0.upgrade().ok_or("the daemon is shutting down")?;
        let rg = match resource_group {
            Some(rg) => rg.to_string(),
            None => core
                .cp
                .find_vmss_group(DEFAULT_SUB, vmss)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("scale set `{vmss}` not found in any resource group"))?,
        };
        let image_id = if image_id.starts_with('/') {
            image_id.to_string()
        } else {
            format!("/subscriptions/{DEFAULT_SUB}/resourceGroups/{rg}/providers/Microsoft.Compute/images/{image_id}")
        };
        let res = control::Res {
            sub: DEFAULT_SUB.into(),
            rg: rg.clone(),
            name: vmss.to_string(),
        };
        model::names::vmss(vmss).map_err(|e| e.message)?;
        core.cp
            .set_image(&core.images, &res, &image_id)
            .map_err(|e| e.to_string())?;
        log(&format!("scale set {rg}/{vmss} now uses image {image_id}"));
        Ok(())
    }
}
