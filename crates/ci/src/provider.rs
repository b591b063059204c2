//! The azure provider of the release tasks (`SCALESET_PIPELINE_PROVIDER=azure`): PackerBuild@1
//! bakes with Azure Image Builder, AzureVmssDeployment@1 updates a real scale set, and AzureCLI@2's
//! `az` acts on the subscription.
use crate::CiError;
use pipeline::tasks::{BakeRequest, BakedImage, Baker, EnvVar};
use std::sync::Arc;

/// The release tasks' Azure back ends: the subscription, and Image Builder's settings (or why
/// they are missing, reported by PackerBuild@1 when a pipeline bakes).
pub(crate) struct AzureTasks {
    pub(crate) azure: Arc<azure::Azure>,
    pub(crate) image_builder: Result<azure::tasks::ImageBuilderSettings, String>,
}

/// The `az` environment of AzureCLI@2 with the azure provider: the shim acts on Azure with an
/// access token the daemon got for the run (ARM only, masked, expiring within about an hour; an
/// Azure token cannot be revoked early, unlike the local run tokens). Nothing of the daemon's
/// own credential (a client secret, the az login) reaches the job.
pub(crate) fn azure_az_env(az: &azure::Azure, token: Option<&str>) -> Vec<EnvVar> {
    let mut env = vec![
        EnvVar::plain("SCALESET_PROVIDER", "azure"),
        EnvVar::plain("AZURE_SUBSCRIPTION_ID", az.subscription.clone()),
        EnvVar::plain("SCALESET_AZURE_ENDPOINT", az.client.base()),
        EnvVar::plain("SCALESET_HOME", "/nonexistent"),
    ];
    if let Some(t) = token {
        env.push(EnvVar::secret("AZURE_ACCESS_TOKEN", t));
    }
    env
}

/// A baker that cannot bake: says why.
pub(crate) struct NoBaker(pub(crate) String);

impl Baker for NoBaker {
    fn bake(&self, _: BakeRequest, _: &mut dyn FnMut(&str)) -> Result<BakedImage, String> {
        Err(self.0.clone())
    }
}

/// `SCALESET_PIPELINE_PROVIDER`: unset or `local` (the daemon), or `azure` (from the
/// environment: `azure::Azure::from_env`, `azure::tasks::ImageBuilderSettings::from_env`).
pub(crate) fn azure_tasks(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<AzureTasks>, CiError> {
    match env("SCALESET_PIPELINE_PROVIDER").as_deref() {
        None | Some("") | Some("local") => Ok(None),
        Some("azure") => {
            let az = azure::Azure::from_env(env).map_err(CiError::AzureProvider)?;
            Ok(Some(AzureTasks {
                azure: Arc::new(az),
                image_builder: azure::tasks::ImageBuilderSettings::from_env(env),
            }))
        }
        Some(other) => Err(CiError::UnknownProvider(other.to_string())),
    }
}

/// A run's access token for Azure (the `az` shim's), when the provider is azure and the
/// daemon's credential yields one.
pub(crate) async fn run_access_token(azure: Option<&AzureTasks>, run: u64) -> Option<String> {
    let a = azure?;
    match a
        .azure
        .client
        .credential()
        .get_token(azure::credential::ARM_RESOURCE)
        .await
    {
        Ok(t) => Some(t.token),
        Err(e) => {
            tracing::warn!(run, error = %e, "no Azure access token for the run's az");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_provider_from_env() {
        let with = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let err =
            |r: Result<Option<AzureTasks>, CiError>| r.err().map(|e| control::error_chain(&e));
        assert!(azure_tasks(&with(&[])).unwrap().is_none());
        assert!(
            azure_tasks(&with(&[("SCALESET_PIPELINE_PROVIDER", "local")]))
                .unwrap()
                .is_none()
        );
        assert_eq!(
            err(azure_tasks(&with(&[("SCALESET_PIPELINE_PROVIDER", "aws")]))),
            Some("SCALESET_PIPELINE_PROVIDER `aws`: expected local or azure".to_string())
        );
        assert_eq!(
            err(azure_tasks(&with(&[(
                "SCALESET_PIPELINE_PROVIDER",
                "azure"
            )]))),
            Some(
                "SCALESET_PIPELINE_PROVIDER=azure: the azure provider needs AZURE_SUBSCRIPTION_ID"
                    .to_string()
            )
        );
        // Without Image Builder settings the scale sets still act on Azure; bakes say why not.
        let a = azure_tasks(&with(&[
            ("SCALESET_PIPELINE_PROVIDER", "azure"),
            ("AZURE_SUBSCRIPTION_ID", "sub"),
            ("AZURE_ACCESS_TOKEN", "tok"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(a.azure.subscription, "sub");
        let names = |env: Vec<EnvVar>| -> Vec<(String, String, bool)> {
            env.into_iter()
                .map(|e| (e.name, e.value, e.secret))
                .collect()
        };
        let plain = |k: &str, v: &str| (k.to_string(), v.to_string(), false);
        let base = vec![
            plain("SCALESET_PROVIDER", "azure"),
            plain("AZURE_SUBSCRIPTION_ID", "sub"),
            plain("SCALESET_AZURE_ENDPOINT", "https://management.azure.com"),
            plain("SCALESET_HOME", "/nonexistent"),
        ];
        assert_eq!(names(azure_az_env(&a.azure, None)), base);
        let mut with_token = base.clone();
        with_token.push(("AZURE_ACCESS_TOKEN".into(), "t1".into(), true));
        assert_eq!(names(azure_az_env(&a.azure, Some("t1"))), with_token);
        assert_eq!(
            a.image_builder.err(),
            Some("PackerBuild@1 on Azure needs SCALESET_AZURE_LOCATION".to_string())
        );
    }
}
