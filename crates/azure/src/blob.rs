//! PackerBuild@1 on Azure: the drop goes to Blob storage (one Put Blob with an AAD token), Azure
//! VM Image Builder copies it in with a File customizer and runs the deployment script with a
//! Shell customizer, the way PackerBuild's builtin template does (`/deployTemp/<package>`, run
//! as root from `/deployTemp`).
use crate::client::Sleeper;
use crate::credential::{Credential, STORAGE_RESOURCE};
use crate::error::AzureError;
use crate::ops::{Azure, ImageTemplate};
use crate::retry::{self, Decision, Outcome, RetryPolicy};
use crate::transport::{Headers, Request, Transport};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// Storage's REST version; OAuth needs 2017-11-09 or later.
pub const STORAGE_VERSION: &str = "2021-08-06";

/// A storage error: `x-ms-error-code` or the XML body's `<Code>`, and its `<Message>`.
pub fn storage_error(status: u16, headers: &Headers, body: &[u8]) -> AzureError {
    let text = String::from_utf8_lossy(body);
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{t}>"))? + start;
        Some(text[start..end].trim().to_string())
    };
    AzureError::Api {
        status,
        code: headers
            .get("x-ms-error-code")
            .map(str::to_string)
            .or_else(|| tag("Code"))
            .unwrap_or_else(|| format!("HttpStatus{status}")),
        message: tag("Message")
            .map(|m| m.lines().next().unwrap_or("").to_string())
            .unwrap_or_else(|| format!("HTTP {status}")),
    }
}

/// Blob uploads with retries like ARM calls.
pub struct Blobs {
    pub transport: Arc<dyn Transport>,
    pub credential: Arc<dyn Credential>,
    pub sleeper: Arc<dyn Sleeper>,
    pub retry: RetryPolicy,
}

impl Blobs {
    /// Uploads with `azure`'s credential (tokens for Blob storage); http URLs (tests) through
    /// hyper, https through curl.
    pub fn for_azure(azure: &Azure) -> Blobs {
        Blobs {
            transport: Arc::new(crate::transport::AutoTransport::new(
                std::time::Duration::from_secs(600),
            )),
            credential: azure.client.credential(),
            sleeper: Arc::new(crate::client::TokioSleeper),
            retry: RetryPolicy::default(),
        }
    }

    /// Put Blob (a block blob in one request; up to 5000 MiB at this version).
    pub async fn put_block_blob(
        &self,
        url: &str,
        data: Vec<u8>,
        content_type: &str,
    ) -> Result<(), AzureError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = self.credential.get_token(STORAGE_RESOURCE).await?;
            let mut headers = Headers::default();
            headers.push("Authorization", &format!("Bearer {}", token.token));
            headers.push("x-ms-version", STORAGE_VERSION);
            headers.push("x-ms-blob-type", "BlockBlob");
            headers.push("Content-Type", content_type);
            let result = self
                .transport
                .send(Request {
                    method: "PUT".into(),
                    url: url.to_string(),
                    headers,
                    body: Some(data.clone()),
                })
                .await;
            let (outcome, ra) = match &result {
                Ok(r) => (
                    Outcome::Status(r.status),
                    retry::retry_after(&r.headers, SystemTime::now()),
                ),
                Err(AzureError::Transport { .. }) => (Outcome::TransportError, None),
                Err(_) => return result.map(drop),
            };
            match retry::decide(&self.retry, attempt, outcome, ra, rand::random::<f64>()) {
                Decision::Retry(d) => self.sleeper.sleep(d).await,
                Decision::Accept | Decision::GiveUp => {
                    let r = result?;
                    if r.status >= 300 {
                        return Err(storage_error(r.status, &r.headers, &r.body));
                    }
                    return Ok(());
                }
            }
        }
    }
}

/// The package folder as a gzipped tarball whose top directory is the folder's name.
pub fn pack_drop(package: &Path) -> Result<Vec<u8>, AzureError> {
    let io = |e: std::io::Error| AzureError::InvalidResponse {
        url: package.display().to_string(),
        reason: format!("cannot pack the drop: {e}"),
    };
    let name = package
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io(std::io::Error::other("the package path has no folder name")))?;
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all(name, package).map_err(io)?;
    tar.into_inner().map_err(io)?.finish().map_err(io)
}

/// A POSIX shell single-quoted word.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Where Image Builder's File customizer puts the drop on the build VM.
pub const DROP_ON_VM: &str = "/tmp/scaleset-drop.tar.gz";

/// The Shell customizer's commands: unpack to `/deployTemp`, run `<package>/<script> <args>`
/// from `/deployTemp` as root, remove `/deployTemp` (Image Builder deprovisions the VM itself).
pub fn deploy_commands(package: &str, script: &str, args: &[String]) -> Vec<String> {
    let run = std::iter::once(format!("./{package}/{script}"))
        .chain(args.iter().cloned())
        .map(|a| sh_quote(&a))
        .collect::<Vec<_>>()
        .join(" ");
    vec![
        "sudo mkdir -p /deployTemp".into(),
        format!("sudo tar -xzf {DROP_ON_VM} -C /deployTemp"),
        format!(
            "sudo chmod +x /deployTemp/{} && cd /deployTemp && sudo {run}",
            sh_quote(&format!("{package}/{script}"))
        ),
        format!("sudo rm -rf /deployTemp {DROP_ON_VM}"),
    ]
}

/// What PackerBuild@1 bakes: a package folder and its deployment script, and the blob URL the
/// drop is uploaded to (readable by the template's identity).
pub struct DropSpec<'a> {
    pub package: &'a Path,
    pub script: &'a str,
    pub args: &'a [String],
    pub url: &'a str,
}

impl Azure {
    /// PackerBuild@1's builtin template on Azure: upload the package, then bake with Image
    /// Builder. `t.files` and `t.inline` are replaced. Returns the managed image id.
    pub async fn packer_build(
        &self,
        blobs: &Blobs,
        rg: &str,
        template: &str,
        drop: &DropSpec<'_>,
        mut t: ImageTemplate,
    ) -> Result<String, AzureError> {
        let name = drop
            .package
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("drop")
            .to_string();
        let data = pack_drop(drop.package)?;
        blobs
            .put_block_blob(drop.url, data, "application/gzip")
            .await?;
        t.files = vec![(drop.url.to_string(), DROP_ON_VM.to_string())];
        t.inline = deploy_commands(&name, drop.script, drop.args);
        self.bake_with_image_builder(rg, template, &t).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors() {
        let xml = br#"<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthorizationPermissionMismatch</Code><Message>This request is not authorized to perform this operation using this permission.
RequestId:1
Time:2026-11-26T07:00:00Z</Message></Error>"#;
        let e = storage_error(403, &Headers::default(), xml);
        assert_eq!(e.to_string(), "(AuthorizationPermissionMismatch) This request is not authorized to perform this operation using this permission.");
        let mut h = Headers::default();
        h.push("x-ms-error-code", "ContainerNotFound");
        assert_eq!(
            storage_error(404, &h, b"").to_string(),
            "(ContainerNotFound) HTTP 404"
        );
    }

    #[test]
    fn quoting_and_commands() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        let c = deploy_commands("drop", "setupscript.sh", &["--port".into(), "8 0".into()]);
        assert_eq!(
            c,
            vec![
                "sudo mkdir -p /deployTemp",
                "sudo tar -xzf /tmp/scaleset-drop.tar.gz -C /deployTemp",
                "sudo chmod +x /deployTemp/'drop/setupscript.sh' && cd /deployTemp && sudo './drop/setupscript.sh' '--port' '8 0'",
                "sudo rm -rf /deployTemp /tmp/scaleset-drop.tar.gz",
            ]
        );
    }

    #[test]
    fn drop_round_trip() {
        let dir = std::env::temp_dir().join(format!("azure-pack-{}", std::process::id()));
        let pkg = dir.join("drop");
        std::fs::create_dir_all(pkg.join("nginx")).unwrap();
        std::fs::write(pkg.join("setupscript.sh"), "#!/bin/sh\necho hi\n").unwrap();
        std::fs::write(pkg.join("nginx/my_app"), "server {}\n").unwrap();
        let gz = pack_drop(&pkg).unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
        let mut files: Vec<(String, String)> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.header().entry_type().is_file())
            .map(|mut e| {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut e, &mut s).unwrap();
                (e.path().unwrap().display().to_string(), s)
            })
            .collect();
        files.sort();
        assert_eq!(
            files,
            vec![
                ("drop/nginx/my_app".to_string(), "server {}\n".to_string()),
                (
                    "drop/setupscript.sh".to_string(),
                    "#!/bin/sh\necho hi\n".to_string()
                ),
            ]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
