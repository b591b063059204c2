//! A small ARM client for the local daemon: bearer token, api-version, JSON, `{"error":...}`.
//! With `--provider azure` the same calls go to a real subscription through the `azure` crate
//! (retries, long-running operations, paging, credentials from the environment).
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub const COMPUTE: &str = "2024-11-01";
pub const NETWORK: &str = "2024-05-01";
pub const RESOURCES: &str = "2021-04-01";
pub const DEFAULT_SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000000";

pub struct Client {
    endpoint: String,
    token: String,
    pub sub: String,
    http: HyperClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    /// Set with `--provider azure`: ARM calls go to Azure instead of the daemon.
    azure: Option<azure::Azure>,
}

/// Where the az verbs act.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Provider {
    /// The local daemon (`scaleset serve`).
    #[default]
    Local,
    /// A real Azure subscription (AZURE_SUBSCRIPTION_ID; credentials from the environment).
    Azure,
}

static PROVIDER: OnceLock<Provider> = OnceLock::new();

/// `path` with the api-version of its provider, unless the caller gave one (Azure Monitor's).
fn versioned(path: &str) -> String {
    if path.contains("?api-version=") || path.contains("&api-version=") {
        return path.to_string();
    }
    let version = if path.contains("Microsoft.Network") {
        NETWORK
    } else if path.contains("/providers/") {
        COMPUTE
    } else {
        RESOURCES
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}api-version={version}")
}

/// Chosen once by `main` from `--provider` / `SCALESET_PROVIDER`.
pub fn set_provider(p: Provider) {
    let _ = PROVIDER.set(p);
}

fn provider() -> Provider {
    PROVIDER.get().copied().unwrap_or_default()
}

/// Whether `--provider azure` was chosen.
pub fn azure_selected() -> bool {
    provider() == Provider::Azure
}

pub fn home() -> PathBuf {
    std::env::var_os("SCALESET_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/scaleset"))
}

/// An API error as the daemon reported it.
#[derive(Debug)]
pub struct ArmError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ArmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}) {}", self.code, self.message)
    }
}
impl std::error::Error for ArmError {}

fn not_found_as_none(r: Result<Value>) -> Result<Option<Value>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e)
            if e.downcast_ref::<ArmError>()
                .is_some_and(|a| a.status == 404) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Percent-encodes a path segment so any name reaches the API (which then validates it).
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub fn from_home(home: &Path) -> Result<Self> {
        if provider() == Provider::Azure {
            return Self::azure();
        }
        let endpoint = match std::env::var("SCALESET_ENDPOINT") {
            Ok(e) if !e.is_empty() => e,
            _ => std::fs::read_to_string(home.join("endpoint"))
                .map(|s| s.trim().to_string())
                .map_err(|_| anyhow!("the scaleset daemon is not running (no {}); start it with `scaleset serve` or `scaleset up`", home.join("endpoint").display()))?,
        };
        let token = match std::env::var("SCALESET_TOKEN") {
            Ok(t) if !t.is_empty() => t,
            _ => std::fs::read_to_string(home.join("token"))
                .map(|s| s.trim().to_string())
                .with_context(|| {
                    format!(
                        "cannot read the API token {} (run as root, or set SCALESET_TOKEN)",
                        home.join("token").display()
                    )
                })?,
        };
        Ok(Self::new(endpoint, token))
    }

    pub fn new(endpoint: String, token: String) -> Self {
        let sub = std::env::var("SCALESET_SUBSCRIPTION")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SUBSCRIPTION.into());
        Self {
            endpoint,
            token,
            sub,
            // Under the daemon's default header timeout (10 s), which also closes idle
            // keep-alive connections: a pooled connection is dropped here before the daemon
            // closes it under a request.
            http: HyperClient::builder(TokioExecutor::new())
                .pool_idle_timeout(std::time::Duration::from_secs(5))
                .build_http(),
            azure: None,
        }
    }

    /// A client for a real subscription (`azure::Azure::from_env`: AZURE_SUBSCRIPTION_ID,
    /// credentials from the environment).
    pub fn azure() -> Result<Self> {
        let az = azure::Azure::from_env(&|k| std::env::var(k).ok())?;
        let mut c = Self::new(az.client.base().to_string(), String::new());
        c.sub = az.subscription.clone();
        c.azure = Some(az);
        Ok(c)
    }

    /// Whether calls go to Azure (and so already waited for their long-running operation).
    pub fn is_azure(&self) -> bool {
        self.azure.is_some()
    }

    /// The subscription's operations, with `--provider azure`.
    pub fn azure_ops(&self) -> Option<&azure::Azure> {
        self.azure.as_ref()
    }

    pub fn rg_path(&self, rg: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}",
            enc(&self.sub),
            enc(rg)
        )
    }
    pub fn vmss_path(&self, rg: &str, name: &str) -> String {
        format!(
            "{}/providers/Microsoft.Compute/virtualMachineScaleSets/{}",
            self.rg_path(rg),
            enc(name)
        )
    }
    pub fn lb_path(&self, rg: &str, name: &str) -> String {
        format!(
            "{}/providers/Microsoft.Network/loadBalancers/{}",
            self.rg_path(rg),
            enc(name)
        )
    }
    /// A load balancer's child (`probes/{name}`, `loadBalancingRules/{name}`, ...).
    pub fn lb_child_path(&self, rg: &str, lb: &str, coll: &str, name: &str) -> String {
        format!("{}/{coll}/{}", self.lb_path(rg, lb), enc(name))
    }
    pub fn image_path(&self, rg: &str, name: &str) -> String {
        format!(
            "{}/providers/Microsoft.Compute/images/{}",
            self.rg_path(rg),
            enc(name)
        )
    }

    /// Sends a request to `uri` (a path on the daemon); a status of 400 or more becomes an
    /// [`ArmError`] with the daemon's `{"error":{"code","message"}}`.
    async fn send(
        &self,
        method: &str,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        if self.azure.is_some() {
            bail!("repos, pipelines and runs live in the local daemon: not available with --provider azure");
        }
        let data = body.map(|b| b.to_string()).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{uri}", self.endpoint))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(data)))
            .context("building request")?;
        let resp =
            self.http.request(req).await.map_err(|e| {
                anyhow!("cannot reach the scaleset daemon at {}: {e}", self.endpoint)
            })?;
        let status = resp.status().as_u16();
        if status < 400 {
            return Ok(resp);
        }
        let bytes = resp
            .into_body()
            .collect()
            .await
            .context("reading response")?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Err(ArmError {
            status,
            code: v
                .pointer("/error/code")
                .and_then(Value::as_str)
                .unwrap_or("Error")
                .to_string(),
            message: v
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}")),
        }
        .into())
    }

    async fn send_json(&self, method: &str, uri: &str, body: Option<&Value>) -> Result<Value> {
        let bytes = self
            .send(method, uri, body)
            .await?
            .into_body()
            .collect()
            .await
            .context("reading response")?
            .to_bytes();
        Ok(if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        })
    }

    /// An ARM call (the api-version is added); 404 on GET becomes `Ok(None)` only through
    /// `get_opt`.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        if let Some(a) = &self.azure {
            return a.client.call(method, path, body).await.map_err(arm_error);
        }
        self.send_json(method, &versioned(path), body).await
    }

    /// A DELETE on the daemon: whether there was something to delete (ARM answers 204 when
    /// there was not).
    pub async fn delete_existing(&self, path: &str) -> Result<bool> {
        let resp = self.send("DELETE", &versioned(path), None).await?;
        Ok(resp.status() != hyper::StatusCode::NO_CONTENT)
    }

    /// [`Client::call`] for commands with `--no-wait`: on Azure, `wait: false` returns the first
    /// response instead of waiting for the long-running operation. The daemon answers at once
    /// either way (the commands then poll it themselves).
    pub async fn call_wait(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        wait: bool,
    ) -> Result<Value> {
        match &self.azure {
            Some(a) if !wait => a
                .client
                .call_no_wait(method, path, body)
                .await
                .map_err(arm_error),
            _ => self.call(method, path, body).await,
        }
    }

    /// A call to the daemon's own `/scaleset/...` endpoints (repos, pipelines, runs).
    pub async fn scaleset(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        self.send_json(method, &format!("/scaleset{path}"), body)
            .await
    }

    /// A call to another of the daemon's own endpoints (`/ui/login-url`), as JSON.
    pub async fn daemon(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        self.send_json(method, path, body).await
    }

    /// A `/scaleset/...` response as text.
    pub async fn scaleset_text(&self, path: &str) -> Result<String> {
        let bytes = self
            .send("GET", &format!("/scaleset{path}"), None)
            .await?
            .into_body()
            .collect()
            .await
            .context("reading response")?
            .to_bytes();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// An ARM path's response as a stream (text routes: an instance's journal and console
    /// log); the api-version is added.
    pub async fn arm_stream(&self, path: &str) -> Result<hyper::Response<hyper::body::Incoming>> {
        let sep = if path.contains('?') { '&' } else { '?' };
        self.send("GET", &format!("{path}{sep}api-version={COMPUTE}"), None)
            .await
    }

    /// A `/scaleset/...` response as a stream (followed logs).
    pub async fn scaleset_stream(
        &self,
        path: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        self.send("GET", &format!("/scaleset{path}"), None).await
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub async fn get_opt(&self, path: &str) -> Result<Option<Value>> {
        not_found_as_none(self.call("GET", path, None).await)
    }

    pub async fn get_opt_scaleset(&self, path: &str) -> Result<Option<Value>> {
        not_found_as_none(self.scaleset("GET", path, None).await)
    }

    pub async fn list(&self, path: &str) -> Result<Vec<Value>> {
        if let Some(a) = &self.azure {
            return a.client.list(path).await.map_err(arm_error);
        }
        let v = self.call("GET", path, None).await?;
        Ok(v.get("value")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }
}

/// Azure's API errors become [`ArmError`]s, so callers treat them like the daemon's (404 as
/// absence, `(Code) message`).
pub fn arm_error(e: azure::AzureError) -> anyhow::Error {
    match e {
        azure::AzureError::Api {
            status,
            code,
            message,
        } => ArmError {
            status,
            code,
            message,
        }
        .into(),
        e => e.into(),
    }
}
