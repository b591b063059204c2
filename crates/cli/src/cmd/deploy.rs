//! `scaleset --provider azure deploy`: an ARM template deployment (what `scaleset export azure`
//! writes, or any template) into a resource group, followed to Succeeded or Failed with each
//! resource's progress, then the public IP addresses among its outputs (the load balancer's
//! frontends). The decisions are `azure::deploy`'s; the PUT and polling `Azure::deploy`.
use super::{client, print};
use crate::output::{Columns, Output};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

const DEPLOY_COLS: Columns = &[
    ("Name", "/name"),
    ("State", "/properties/provisioningState"),
    ("Timestamp", "/properties/timestamp"),
    ("Duration", "/properties/duration"),
];

#[derive(Args)]
pub struct DeployArgs {
    /// Resource group (it must exist: `group create -l <region>`).
    #[arg(long = "resource-group", short = 'g')]
    rg: String,
    /// The ARM template (e.g. the azuredeploy.json `scaleset export azure` wrote).
    #[arg(long, short = 'f')]
    template: PathBuf,
    /// Parameters as az takes them: `@file.json`, inline JSON, or `name=value` (repeatable;
    /// later ones win).
    #[arg(long, short = 'p', num_args = 1..)]
    parameters: Vec<String>,
    /// The deployment's name (default: the template file's name without extension).
    #[arg(long, short = 'n')]
    name: Option<String>,
}

/// Reads a template or parameters file, bounded as ARM bounds templates.
fn read_bounded(path: &Path) -> Result<String, String> {
    let f =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut s = String::new();
    f.take(azure::deploy::MAX_FILE_BYTES + 1)
        .read_to_string(&mut s)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if s.len() as u64 > azure::deploy::MAX_FILE_BYTES {
        return Err(format!("{} is over 4 MiB, ARM's limit", path.display()));
    }
    Ok(s)
}

pub async fn run(a: DeployArgs, out: Output) -> Result<()> {
    if !crate::client::azure_selected() {
        bail!("deploy submits an ARM template to Azure: use --provider azure (the daemon runs no templates; see README, \"Moving to Azure\")");
    }
    let c = client()?;
    let az = c
        .azure_ops()
        .ok_or_else(|| anyhow!("--provider azure gave no Azure client"))?;
    let template: Value = serde_json::from_str(&read_bounded(&a.template).map_err(|e| anyhow!(e))?)
        .with_context(|| format!("{} is not JSON", a.template.display()))?;
    let params =
        azure::deploy::parameters(&template, &a.parameters, &|p| read_bounded(Path::new(p)))
            .map_err(|e| anyhow!(e))?;
    let name = match a.name {
        Some(n) => n,
        None => a
            .template
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "deployment".into()),
    };
    eprintln!("deployment '{name}' in resource group '{}':", a.rg);
    let body = azure::deploy::body(template, params);
    let done = az
        .deploy(&a.rg, &name, &body, &mut |line: &str| eprintln!("  {line}"))
        .await
        .map_err(crate::client::arm_error)?;
    print(&done.deployment, out, DEPLOY_COLS);
    use azure::deploy::State;
    match done.state {
        State::Succeeded => {
            for (output, ip) in azure::deploy::public_ips(&done.deployment) {
                eprintln!("frontend public IP ({output}): {ip}");
            }
            Ok(())
        }
        state => {
            for f in &done.failures {
                eprintln!("  failed: {f}");
            }
            let why = azure::deploy::deployment_error(&done.deployment)
                .unwrap_or_else(|| "no error reported".into());
            bail!("deployment '{name}' {state:?}: {why}")
        }
    }
}
