//! `scaleset export azure`: the local deployment of a resource group, for real Azure — an ARM
//! template and the Azure Pipelines YAML (see `model::export`).
use crate::client::Client;
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum ExportCmd {
    /// Write azuredeploy.json (virtual network, NSG, public IP, Standard load balancer, scale set,
    /// storage account), azure-pipelines.yml (CI) and release-pipeline.yml (bake with
    /// PackerBuild@1, deploy) equivalent to the resource group's local deployment.
    Azure(AzureArgs),
}

#[derive(Args)]
pub struct AzureArgs {
    #[arg(long, short = 'g', default_value = super::up::RG)]
    resource_group: String,
    /// Folder the files are written to.
    #[arg(long, default_value = "azure")]
    out: PathBuf,
    /// The app's Cargo package (default: the example, as `scaleset up`); a path relative to the
    /// repository root, where the pipelines run.
    #[arg(long)]
    app: Option<PathBuf>,
    /// The Azure Resource Manager service connection the release uses.
    #[arg(long, default_value = "azure")]
    service_connection: String,
    /// The CI pipeline's name in Azure DevOps (the release runs after it).
    #[arg(long)]
    ci_pipeline: Option<String>,
}

/// The binary a Cargo package builds: its first `[[bin]]` name, else the package name.
fn binary_name(manifest: &str) -> Option<String> {
    let mut section = "";
    let (mut package, mut bin) = (None, None);
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
            continue;
        }
        let Some(v) = line
            .strip_prefix("name")
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix('='))
        else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_string();
        match section {
            "[package]" if package.is_none() => package = Some(v),
            "[[bin]]" if bin.is_none() => bin = Some(v),
            _ => {}
        }
    }
    bin.or(package)
}

/// `dir`'s path inside its git repository ("" at the root).
fn repo_prefix(dir: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--show-prefix"])
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_end_matches('/')
            .to_string()
    })
}

/// The drop's deployment files: what `scaleset up` copies besides the binary.
fn deployment_files(dir: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let n = e?.file_name().to_string_lossy().into_owned();
        if ["src", "target", "tests", "Cargo.toml", "Cargo.lock"].contains(&n.as_str())
            || n.starts_with('.')
            || n.ends_with(".yml")
            || n.ends_with(".md")
        {
            continue;
        }
        files.push(n);
    }
    files.sort();
    Ok(files)
}

pub async fn run(cmd: ExportCmd) -> Result<()> {
    let ExportCmd::Azure(a) = cmd;
    let dir = match a.app {
        Some(d) => d,
        None => super::up::example_dir()?,
    };
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))
        .with_context(|| format!("{} has no Cargo.toml", dir.display()))?;
    let binary = binary_name(&manifest)
        .ok_or_else(|| anyhow!("no package name in {}/Cargo.toml", dir.display()))?;
    if !dir.join("setupscript.sh").is_file() {
        bail!(
            "{} has no setupscript.sh (the script PackerBuild@1 runs)",
            dir.display()
        );
    }
    // The pipelines run at the repository root: the app's path from there.
    let rel = repo_prefix(&dir).unwrap_or_else(|| {
        eprintln!(
            "note: {} is not in a git repository; the pipelines assume the app is at the repository root",
            dir.display()
        );
        String::new()
    });
    let app = model::export::App {
        binary: binary.clone(),
        files: deployment_files(&dir)?,
        script: "setupscript.sh".into(),
        dir: if rel.is_empty() { ".".into() } else { rel },
    };

    let c = Client::from_home(&crate::client::home())?;
    let rg = &a.resource_group;
    let lbs = c
        .list(&format!(
            "{}/providers/Microsoft.Network/loadBalancers",
            c.rg_path(rg)
        ))
        .await?;
    let sets = c
        .list(&format!(
            "{}/providers/Microsoft.Compute/virtualMachineScaleSets",
            c.rg_path(rg)
        ))
        .await?;
    let template = model::export::azure_template(rg, &lbs, &sets)
        .map_err(|e| anyhow!("({}) {}", e.code, e.message))?;
    let ci_name = a.ci_pipeline.unwrap_or_else(|| binary.replace('_', "-"));
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let files = [
        (
            "azuredeploy.json",
            serde_json::to_string_pretty(&template)? + "\n",
        ),
        ("azure-pipelines.yml", model::export::ci_pipeline(&app)),
        (
            "release-pipeline.yml",
            model::export::release_pipeline(&app, rg, &ci_name, &a.service_connection),
        ),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let p = a.out.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        written.push(p.display().to_string());
    }
    let resources: Vec<Value> = template["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| json!({"type": r["type"], "name": r["name"]}))
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({"files": written, "resources": resources}))?
    );
    eprintln!("Commit these at the repository root; azure-pipelines.yml copies azuredeploy.json into the drop. Create the release from release-pipeline.yml and give it the secret variable adminSshPublicKey.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_names() {
        assert_eq!(
            binary_name("[package]\nname = \"my_app\"\nversion = \"1\"\n").as_deref(),
            Some("my_app")
        );
        assert_eq!(
            binary_name("[package]\nname=\"pkg\"\n[[bin]]\nname = \"server\"\n").as_deref(),
            Some("server")
        );
        assert_eq!(
            binary_name("[dependencies]\nname = \"x\"\n").as_deref(),
            None
        );
    }
}
