//! The ARM REST client: bearer token, api-version per resource provider, retries, long-running
//! operations and paging. Decisions come from [`crate::retry`] and [`crate::lro`]; this module
//! only sends, waits and loops.
use crate::credential::Credential;
use crate::error::AzureError;
use crate::lro::{self, Start, Step};
use crate::retry::{self, Decision, Outcome, RetryPolicy};
use crate::transport::{BoxFuture, Headers, Request, Response, Transport};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub const DEFAULT_BASE: &str = "https://management.azure.com";
pub const COMPUTE: &str = "2024-11-01";
pub const NETWORK: &str = "2024-05-01";
pub const IMAGE_BUILDER: &str = "2024-02-01";
pub const RESOURCES: &str = "2021-04-01";

/// The api-version for a path, from its (last) resource provider namespace.
pub fn api_version(path: &str) -> &'static str {
    let p = path.split('?').next().unwrap_or("").to_ascii_lowercase();
    match p.rsplit("/providers/").next() {
        Some(ns) if p.contains("/providers/") => {
            let ns = ns.split('/').next().unwrap_or("");
            match ns {
                "microsoft.compute" => COMPUTE,
                "microsoft.network" => NETWORK,
                "microsoft.virtualmachineimages" => IMAGE_BUILDER,
                _ => RESOURCES,
            }
        }
        _ => RESOURCES,
    }
}

/// `scheme://host[:port]` in lower case, default ports dropped; `None` if not http(s).
pub fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let host = rest.split(['/', '?', '#']).next()?.to_ascii_lowercase();
    if host.is_empty() || host.contains('@') {
        return None;
    }
    let default = if scheme == "https" { ":443" } else { ":80" };
    let host = host.strip_suffix(default).unwrap_or(&host);
    Some(format!("{scheme}://{host}"))
}

/// Waiting, behind a trait so tests can record the delays instead of sleeping through them.
pub trait Sleeper: Send + Sync {
    fn sleep(&self, d: Duration) -> BoxFuture<'_, ()>;
}

pub struct TokioSleeper;

impl Sleeper for TokioSleeper {
    fn sleep(&self, d: Duration) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(d))
    }
}

pub struct ArmClient {
    base: String,
    base_origin: String,
    transport: Arc<dyn Transport>,
    credential: Arc<dyn Credential>,
    sleeper: Arc<dyn Sleeper>,
    pub retry: RetryPolicy,
    /// Poll interval when an operation sends no Retry-After.
    pub poll_delay: Duration,
    /// The longest a single long-running operation is waited for.
    pub lro_timeout: Duration,
}

impl ArmClient {
    /// `base` is `https://management.azure.com` for Azure, or a test server.
    pub fn new(
        base: &str,
        transport: Arc<dyn Transport>,
        credential: Arc<dyn Credential>,
    ) -> Result<Self, AzureError> {
        let base = base.trim_end_matches('/').to_string();
        let base_origin = origin(&base).ok_or_else(|| {
            AzureError::Config(format!("the ARM endpoint {base:?} is not an http(s) URL"))
        })?;
        Ok(ArmClient {
            base,
            base_origin,
            transport,
            credential,
            sleeper: Arc::new(TokioSleeper),
            retry: RetryPolicy::default(),
            poll_delay: Duration::from_secs(5),
            lro_timeout: Duration::from_secs(3 * 3600),
        })
    }

    pub fn with_sleeper(mut self, s: Arc<dyn Sleeper>) -> Self {
        self.sleeper = s;
        self
    }

    /// The credential, for other Azure services (Blob storage).
    pub fn credential(&self) -> Arc<dyn Credential> {
        self.credential.clone()
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub(crate) async fn sleep(&self, d: Duration) {
        self.sleeper.sleep(d).await
    }

    /// The absolute URL for a path (api-version added when missing) or for a URL ARM gave us
    /// (nextLink, operation status): those must point at the same endpoint, since they get the
    /// bearer token.
    pub fn url(&self, path_or_url: &str) -> Result<String, AzureError> {
        let url = if path_or_url.starts_with('/') {
            format!("{}{path_or_url}", self.base)
        } else {
            if origin(path_or_url).as_deref() != Some(self.base_origin.as_str()) {
                return Err(AzureError::ForeignHost(path_or_url.to_string()));
            }
            path_or_url.to_string()
        };
        let has_version = url
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|kv| kv.starts_with("api-version=")));
        Ok(if has_version {
            url
        } else {
            let path = url.split('?').next().unwrap_or("");
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}api-version={}", api_version(path))
        })
    }

    /// One request with retries; an error status (after retries) becomes [`AzureError::Api`].
    pub async fn send(
        &self,
        method: &str,
        path_or_url: &str,
        body: Option<&Value>,
    ) -> Result<Response, AzureError> {
        let url = self.url(path_or_url)?;
        let data = body.map(|b| b.to_string().into_bytes());
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = self
                .credential
                .get_token(crate::credential::ARM_RESOURCE)
                .await?;
            let mut headers = Headers::default();
            headers.push("Authorization", &format!("Bearer {}", token.token));
            headers.push("Accept", "application/json");
            if data.is_some() {
                headers.push("Content-Type", "application/json");
            }
            let result = self
                .transport
                .send(Request {
                    method: method.to_string(),
                    url: url.clone(),
                    headers,
                    body: data.clone(),
                })
                .await;
            let (outcome, ra) = match &result {
                Ok(r) => (
                    Outcome::Status(r.status),
                    retry::retry_after(&r.headers, SystemTime::now()),
                ),
                Err(AzureError::Transport { .. }) => (Outcome::TransportError, None),
                Err(_) => return result,
            };
            match retry::decide(&self.retry, attempt, outcome, ra, rand::random::<f64>()) {
                Decision::Retry(d) => self.sleeper.sleep(d).await,
                Decision::Accept | Decision::GiveUp => {
                    let r = result?;
                    if r.status >= 400 {
                        return Err(AzureError::from_response(r.status, &r.body));
                    }
                    return Ok(r);
                }
            }
        }
    }

    /// A call that waits for its long-running operation, if any, and returns the resulting
    /// resource (`Null` for an empty result).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, AzureError> {
        let url = self.url(path)?;
        let resp = self.send(method, &url, body).await?;
        match lro::start(method, &url, resp.status, &resp.headers) {
            Start::Done => json(&url, &resp.body),
            Start::Poll(p) => {
                // The first poll too waits as the operation asks (ARM's RPC guidelines).
                let first =
                    retry::retry_after(&resp.headers, SystemTime::now()).unwrap_or(self.poll_delay);
                self.sleeper.sleep(first).await;
                self.wait(p, first).await
            }
        }
    }

    /// A call that does not wait for its long-running operation: the first response's body.
    pub async fn call_no_wait(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, AzureError> {
        let url = self.url(path)?;
        let resp = self.send(method, &url, body).await?;
        json(&url, &resp.body)
    }

    async fn wait(&self, mut p: lro::Poller, waited: Duration) -> Result<Value, AzureError> {
        let mut waited = waited;
        loop {
            let r = self.send("GET", &p.url, None).await?;
            let ra = retry::retry_after(&r.headers, SystemTime::now());
            match lro::next(&p, r.status, &r.headers, &r.body, ra, self.poll_delay) {
                Step::Wait { url, delay } => {
                    if waited >= self.lro_timeout {
                        return Err(AzureError::Timeout {
                            what: format!("operation {}", p.url),
                            secs: waited.as_secs(),
                        });
                    }
                    p.url = url;
                    waited += delay;
                    self.sleeper.sleep(delay).await;
                }
                Step::Get(url) => {
                    let r = self.send("GET", &url, None).await?;
                    return json(&url, &r.body);
                }
                Step::Body => return json(&p.url, &r.body),
                Step::Empty => return Ok(Value::Null),
                Step::Failed(e) => return Err(e),
            }
        }
    }

    /// GET; 404 is `None`.
    pub async fn get_opt(&self, path: &str) -> Result<Option<Value>, AzureError> {
        match self.call("GET", path, None).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// All items of a list, following `nextLink`.
    pub async fn list(&self, path: &str) -> Result<Vec<Value>, AzureError> {
        let mut out = Vec::new();
        let mut next = Some(self.url(path)?);
        let mut seen = std::collections::HashSet::new();
        while let Some(url) = next.take() {
            if !seen.insert(url.clone()) {
                return Err(AzureError::InvalidResponse {
                    url,
                    reason: "nextLink repeats an earlier page".into(),
                });
            }
            let r = self.send("GET", &url, None).await?;
            let v = json(&url, &r.body)?;
            match v.get("value") {
                Some(Value::Array(items)) => out.extend(items.iter().cloned()),
                None | Some(Value::Null) => {}
                Some(_) => {
                    return Err(AzureError::InvalidResponse {
                        url,
                        reason: "\"value\" is not an array".into(),
                    })
                }
            }
            next = v
                .get("nextLink")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
        }
        Ok(out)
    }
}

fn json(url: &str, body: &[u8]) -> Result<Value, AzureError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| AzureError::InvalidResponse {
        url: url.to_string(),
        reason: format!("body is not JSON: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        let cases = [
            ("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/w", COMPUTE),
            ("/subscriptions/s/resourceGroups/rg/providers/microsoft.network/loadBalancers/l?x=1", NETWORK),
            ("/subscriptions/s/resourceGroups/rg/providers/Microsoft.VirtualMachineImages/imageTemplates/t/run", IMAGE_BUILDER),
            ("/subscriptions/s/resourceGroups/rg", RESOURCES),
            ("/subscriptions/s/providers/Microsoft.Compute/locations/westus/operations/1", COMPUTE),
        ];
        for (p, want) in cases {
            assert_eq!(api_version(p), want, "{p}");
        }
    }

    #[test]
    fn origins() {
        let cases = [
            (
                "https://management.azure.com/x",
                Some("https://management.azure.com"),
            ),
            (
                "https://Management.Azure.com:443/x?y",
                Some("https://management.azure.com"),
            ),
            ("http://127.0.0.1:8080", Some("http://127.0.0.1:8080")),
            ("http://127.0.0.1:80/a", Some("http://127.0.0.1")),
            ("https://management.azure.com@evil.example/x", None),
            ("file:///etc/passwd", None),
            ("/relative", None),
        ];
        for (u, want) in cases {
            assert_eq!(origin(u).as_deref(), want, "{u}");
        }
    }
}
