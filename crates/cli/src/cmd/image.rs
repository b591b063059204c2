//! `scaleset image`: bake, import, export and collect images in the home's store (no daemon
//! needed), and list/show/delete them through the API.
use super::{client, print, serve};
use crate::output::{self, Output};
use anyhow::{anyhow, Result};
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Bake an image: base + package folder + deployment script (PackerBuild@1's builtin template).
    Bake {
        /// Base image, e.g. debian:bookworm.
        #[arg(long, default_value = "debian:bookworm")]
        base: String,
        /// The deployment package folder (the CI's drop).
        #[arg(long)]
        package: std::path::PathBuf,
        /// Deployment script, relative to the package folder.
        #[arg(long)]
        script: String,
        /// Arguments passed to the script.
        #[arg(long, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
        /// Image name (the seed names images by build id).
        #[arg(long, short = 'n')]
        name: String,
        /// Bake without network access.
        #[arg(long)]
        no_network: bool,
        /// Debian mirror for the base image.
        #[arg(long)]
        mirror: Option<String>,
        /// Don't lend the script the host's CA bundle and proxy settings (by default a networked
        /// bake gets them, never captured into the image).
        #[arg(long)]
        no_host_network: bool,
        /// Share a download cache (apt's archives, pip's cache) with other bakes of this scope,
        /// so a rebake downloads nothing it already has. Pipeline bakes use their repository.
        #[arg(long, value_name = "SCOPE")]
        download_cache: Option<String>,
    },
    /// Import a base from an OCI image layout (directory or tarball) or a `docker save` tarball.
    Import {
        /// The OCI layout or tarball.
        #[arg(long)]
        source: std::path::PathBuf,
        #[arg(long, short = 'n')]
        name: String,
    },
    /// Export an image as an OCI image layout tarball.
    Export {
        #[arg(long, short = 'n')]
        name: String,
        /// Destination tarball.
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Remove layers no image references (and leftovers of crashed bakes).
    Gc,
    List {
        #[arg(long = "resource-group", short = 'g')]
        rg: Option<String>,
    },
    Show(ImageTarget),
    /// Delete an image (refused while a scale set's model or instance uses it).
    Delete(ImageTarget),
}

/// An image: images are the home's, in no resource group of their own, so `-g` is optional
/// (as `image list` shows them without one).
#[derive(clap::Args, Clone)]
pub struct ImageTarget {
    /// Resource group (ignored: accepted for az compatibility).
    #[arg(long = "resource-group", short = 'g')]
    pub rg: Option<String>,
    /// Image name.
    #[arg(long, short = 'n')]
    pub name: String,
}

/// The resource group images are listed under when none is given.
const IMAGES_RG: &str = "images";

pub async fn run(cmd: ImageCmd, out: Output) -> Result<()> {
    match cmd {
        ImageCmd::Bake {
            base,
            package,
            script,
            args,
            name,
            no_network,
            mirror,
            no_host_network,
            download_cache,
        } => {
            let spec = image::BakeSpec {
                name,
                base,
                package_dir: package,
                script,
                args,
                network: !no_network,
                mirror,
                host_network: !no_host_network,
                cache: download_cache,
            };
            bake(spec, out).await?;
        }
        ImageCmd::Import { source, name } => {
            serve::preflight()?;
            model::names::network_or_image("image", &name).map_err(|e| anyhow!(e.message))?;
            let store = store();
            let img = tokio::task::spawn_blocking(move || {
                store.import(&source, &name, &mut std::io::stderr())
            })
            .await?
            .map_err(|e| anyhow!(api::error::error_chain(&e)))?;
            print(
                &json!({"name": img.name, "digest": img.digest, "base": img.base}),
                out,
                &[("Name", "/name"), ("Digest", "/digest"), ("Base", "/base")],
            );
        }
        ImageCmd::Export { name, file } => {
            let store = store();
            let f = file.clone();
            let digest = tokio::task::spawn_blocking(move || store.export(&name, &f))
                .await?
                .map_err(|e| anyhow!(api::error::error_chain(&e)))?;
            print(
                &json!({"file": file, "manifestDigest": digest}),
                out,
                &[("File", "/file"), ("ManifestDigest", "/manifestDigest")],
            );
        }
        ImageCmd::Gc => {
            let store = store();
            let r = tokio::task::spawn_blocking(move || store.gc())
                .await?
                .map_err(|e| anyhow!(api::error::error_chain(&e)))?;
            print(
                &json!({"removedLayers": r.removed_layers, "freedBytes": r.freed_bytes}),
                out,
                &[
                    ("RemovedLayers", "/removedLayers"),
                    ("FreedBytes", "/freedBytes"),
                ],
            );
        }
        ImageCmd::List { rg } => {
            let c = client()?;
            let path = format!(
                "{}/providers/Microsoft.Compute/images",
                c.rg_path(rg.as_deref().unwrap_or(IMAGES_RG))
            );
            print(&Value::Array(c.list(&path).await?), out, output::IMAGE_COLS);
        }
        ImageCmd::Show(t) => {
            let c = client()?;
            print(
                &c.call(
                    "GET",
                    &c.image_path(t.rg.as_deref().unwrap_or(IMAGES_RG), &t.name),
                    None,
                )
                .await?,
                out,
                output::IMAGE_COLS,
            );
        }
        ImageCmd::Delete(t) => {
            let c = client()?;
            let rg = t.rg.as_deref().unwrap_or(IMAGES_RG);
            c.call("DELETE", &c.image_path(rg, &t.name), None).await?;
        }
    }
    Ok(())
}

/// The image store of the home (the daemon's, when it runs).
fn store() -> image::ImageStore {
    let home = crate::client::home();
    image::ImageStore::new(home.join("images"), image::default_base_cache(&home))
}

async fn bake(spec: image::BakeSpec, out: Output) -> Result<()> {
    serve::preflight()?;
    model::names::network_or_image("image", &spec.name).map_err(|e| anyhow!(e.message))?;
    if spec.network {
        // The bake joins the home's instance network (outbound NAT only): choose it now
        // if no daemon has yet, as `scaleset serve` would.
        let subnet = std::env::var("SCALESET_SUBNET")
            .ok()
            .filter(|s| !s.is_empty());
        serve::network(&crate::client::home(), subnet.as_deref())?;
    }
    let store = store();
    let img = tokio::task::spawn_blocking(move || {
        // The full log is kept with the image (or the failed bake); the terminal gets
        // the stage as a progress line and the script's output above it.
        let mut p = crate::progress::Progress::stderr();
        let name = spec.name.clone();
        store.bake_with_progress(&spec, &mut std::io::sink(), &mut |e| {
            print_bake_event(&mut p, &name, e)
        })
    })
    .await?
    .map_err(|e| anyhow!(api::error::error_chain(&e)))?;
    print(
        &json!({"name": img.name, "digest": img.digest, "base": img.base, "created": img.created, "log": img.log}),
        out,
        &[("Name", "/name"), ("Digest", "/digest"), ("Base", "/base")],
    );
    Ok(())
}

fn print_bake_event(p: &mut crate::progress::Progress, name: &str, e: image::BakeEvent) {
    match &e {
        image::BakeEvent::ScriptLine(l) => p.println(&format!("    {l}")),
        image::BakeEvent::Done {
            digest,
            cache_hit,
            secs,
        } => {
            p.finish();
            eprintln!(
                "==> {digest}{} in {secs:.2}s",
                if *cache_hit { " (cache hit)" } else { "" }
            )
        }
        _ => {
            if let Some(stage) = crate::progress::bake_stage(&e) {
                p.update(&format!("==> bake {name} · {stage}"));
            }
        }
    }
}
