//! Access tokens for ARM (`https://management.azure.com/`): a static token, the az CLI, managed
//! identity (IMDS) or a service principal's client secret, each behind [`Credential`], and a
//! cache that keeps a token until shortly before it expires.
use crate::error::AzureError;
use crate::retry::{self, Decision, Outcome, RetryPolicy};
use crate::transport::{BoxFuture, Headers, Request, Transport};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const ARM_RESOURCE: &str = "https://management.azure.com/";
/// Blob storage (the drop Image Builder copies).
pub const STORAGE_RESOURCE: &str = "https://storage.azure.com/";
pub const IMDS_TOKEN_URL: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
pub const AUTHORITY: &str = "https://login.microsoftonline.com";
/// Set in the environment of the `az` we run: if it turns out to be our own shim after all,
/// the shim's azure provider must not run `az` again.
pub const AZ_GUARD_ENV: &str = "SCALESET_AZ_CREDENTIAL_CHILD";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub token: String,
    pub expires_at: SystemTime,
}

pub trait Credential: Send + Sync {
    /// A token for `resource` ([`ARM_RESOURCE`], [`STORAGE_RESOURCE`]).
    fn get_token<'a>(&'a self, resource: &'a str)
        -> BoxFuture<'a, Result<AccessToken, AzureError>>;
}

fn cred_err(msg: impl std::fmt::Display) -> AzureError {
    AzureError::Credential(msg.to_string())
}

/// Whether a cached token is still good for a request started now (`margin` before expiry the
/// token is renewed, so a long LRO poll never starts with a token about to lapse).
pub fn is_fresh(expires_at: SystemTime, now: SystemTime, margin: Duration) -> bool {
    now.checked_add(margin).is_some_and(|t| t < expires_at)
}

/// Caches the inner credential's tokens (one per resource) until `margin` before expiry.
pub struct Cached {
    inner: Box<dyn Credential>,
    margin: Duration,
    tokens: tokio::sync::Mutex<HashMap<String, AccessToken>>,
}

impl Cached {
    pub fn new(inner: Box<dyn Credential>) -> Self {
        Cached {
            inner,
            margin: Duration::from_secs(300),
            tokens: tokio::sync::Mutex::new(HashMap::new()),
        }
    }
}

impl Credential for Cached {
    fn get_token<'a>(
        &'a self,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<AccessToken, AzureError>> {
        Box::pin(async move {
            // Held across the fetch so concurrent callers wait for one token request.
            let mut tokens = self.tokens.lock().await;
            if let Some(t) = tokens.get(resource) {
                if is_fresh(t.expires_at, SystemTime::now(), self.margin) {
                    return Ok(t.clone());
                }
            }
            let t = self.inner.get_token(resource).await?;
            tokens.insert(resource.to_string(), t.clone());
            Ok(t)
        })
    }
}

/// Tokens given as they are (`AZURE_ACCESS_TOKEN` for ARM, `AZURE_STORAGE_ACCESS_TOKEN` for Blob
/// storage); their expiry is unknown, so they are never renewed.
pub struct StaticToken {
    pub arm: String,
    pub storage: Option<String>,
}

impl StaticToken {
    pub fn arm(token: &str) -> StaticToken {
        StaticToken {
            arm: token.to_string(),
            storage: None,
        }
    }
}

impl Credential for StaticToken {
    fn get_token<'a>(
        &'a self,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<AccessToken, AzureError>> {
        let t = match resource {
            ARM_RESOURCE => Some(self.arm.clone()),
            STORAGE_RESOURCE => self.storage.clone(),
            _ => None,
        };
        Box::pin(async move {
            let token = t.ok_or_else(|| {
                cred_err(format!(
                    "no static token for {resource} (AZURE_ACCESS_TOKEN is for ARM; set AZURE_STORAGE_ACCESS_TOKEN for Blob storage)"
                ))
            })?;
            Ok(AccessToken {
                token,
                expires_at: SystemTime::now() + Duration::from_secs(3600 * 24 * 365),
            })
        })
    }
}

/// `expires_on` (epoch seconds, a number or a string) or `expires_in` (seconds from now, ditto),
/// as IMDS, AAD and az report them.
fn expiry(v: &Value, now: SystemTime) -> Option<SystemTime> {
    let num = |k: &str| match v.get(k)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    if let Some(on) = num("expires_on") {
        return Some(UNIX_EPOCH + Duration::from_secs(on));
    }
    num("expires_in").map(|s| now + Duration::from_secs(s))
}

/// An OAuth token response (IMDS or AAD's v2 endpoint); AAD's `{error, error_description}` is
/// the error.
pub fn parse_oauth_token(body: &[u8], now: SystemTime) -> Result<AccessToken, AzureError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| cred_err(format!("token response: {e}")))?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        let desc = v
            .get("error_description")
            .and_then(Value::as_str)
            .unwrap_or("");
        return Err(cred_err(format!("{err}: {desc}")));
    }
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| cred_err("token response has no access_token"))?;
    Ok(AccessToken {
        token: token.to_string(),
        // Unknown lifetime: renew soon rather than use an expired token.
        expires_at: expiry(&v, now).unwrap_or(now + Duration::from_secs(300)),
    })
}

/// `az account get-access-token -o json`: `accessToken` and, since az 2.54, `expires_on`
/// (epoch seconds). Older az only has `expiresOn` in local time, which is not worth parsing:
/// such a token is renewed after 5 minutes.
pub fn parse_az_token(out: &[u8], now: SystemTime) -> Result<AccessToken, AzureError> {
    let v: Value = serde_json::from_slice(out).map_err(|e| cred_err(format!("az output: {e}")))?;
    let token = v
        .get("accessToken")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| cred_err("az output has no accessToken"))?;
    Ok(AccessToken {
        token: token.to_string(),
        expires_at: expiry(&v, now).unwrap_or(now + Duration::from_secs(300)),
    })
}

/// Percent-encodes for a query string or a form body (RFC 3986 unreserved kept).
pub fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Managed identity through the instance metadata service (plain HTTP, `Metadata: true`).
pub struct ManagedIdentity {
    pub transport: Arc<dyn Transport>,
    pub endpoint: String,
    /// A user-assigned identity's client id; the system-assigned identity when `None`.
    pub client_id: Option<String>,
}

impl Credential for ManagedIdentity {
    fn get_token<'a>(
        &'a self,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<AccessToken, AzureError>> {
        Box::pin(async move {
            let mut url = format!(
                "{}?api-version=2018-02-01&resource={}",
                self.endpoint,
                pct(resource)
            );
            if let Some(id) = &self.client_id {
                url.push_str(&format!("&client_id={}", pct(id)));
            }
            let mut headers = Headers::default();
            headers.push("Metadata", "true");
            let policy = RetryPolicy::default();
            let mut attempt = 0;
            loop {
                attempt += 1;
                // No retry without an answer: off Azure nothing listens, and that should fail fast.
                let resp = self
                    .transport
                    .send(Request {
                        method: "GET".into(),
                        url: url.clone(),
                        headers: headers.clone(),
                        body: None,
                    })
                    .await
                    .map_err(|e| cred_err(format!("managed identity: {e}")))?;
                if resp.status == 200 {
                    return parse_oauth_token(&resp.body, SystemTime::now());
                }
                // IMDS also answers 404/410 while an identity is being assigned or IMDS updates.
                let status = if matches!(resp.status, 404 | 410) {
                    503
                } else {
                    resp.status
                };
                let ra = retry::retry_after(&resp.headers, SystemTime::now());
                match retry::decide(&policy, attempt, Outcome::Status(status), ra, rand::random()) {
                    Decision::Retry(d) => tokio::time::sleep(d).await,
                    Decision::Accept | Decision::GiveUp => {
                        return Err(cred_err(format!(
                            "managed identity endpoint answered {}: {} (off Azure, set AZURE_ACCESS_TOKEN or a service principal, or az login)",
                            resp.status,
                            String::from_utf8_lossy(&resp.body).trim()
                        )))
                    }
                }
            }
        })
    }
}

/// A service principal's client secret (client credentials grant against AAD).
pub struct ClientSecret {
    pub transport: Arc<dyn Transport>,
    pub authority: String,
    pub tenant: String,
    pub client_id: String,
    pub secret: String,
}

impl Credential for ClientSecret {
    fn get_token<'a>(
        &'a self,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<AccessToken, AzureError>> {
        Box::pin(async move {
            // The tenant becomes a path segment: a GUID or a domain name, nothing else.
            if self.tenant.is_empty()
                || !self
                    .tenant
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(cred_err(format!("invalid tenant id {:?}", self.tenant)));
            }
            let mut headers = Headers::default();
            headers.push("Content-Type", "application/x-www-form-urlencoded");
            let scope = format!("{resource}.default");
            let body = form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &self.client_id),
                ("client_secret", &self.secret),
                ("scope", &scope),
            ]);
            let resp = self
                .transport
                .send(Request {
                    method: "POST".into(),
                    url: format!(
                        "{}/{}/oauth2/v2.0/token",
                        self.authority.trim_end_matches('/'),
                        self.tenant
                    ),
                    headers,
                    body: Some(body.into_bytes()),
                })
                .await
                .map_err(|e| cred_err(format!("service principal: {e}")))?;
            parse_oauth_token(&resp.body, SystemTime::now())
        })
    }
}

/// The az CLI's login. Never our own `az` shim (a copy of the scaleset binary installed in
/// pipeline jobs): that would call itself.
pub struct AzCli {
    pub program: PathBuf,
}

fn same_file_contents(a: &Path, b: &Path) -> bool {
    use sha2::{Digest, Sha256};
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    if ma.len() != mb.len() {
        return false;
    }
    let hash = |p: &Path| std::fs::read(p).ok().map(|d| Sha256::digest(d).to_vec());
    matches!((hash(a), hash(b)), (Some(x), Some(y)) if x == y)
}

impl AzCli {
    /// The first real `az` on PATH: skips copies of (or links to) the running executable.
    pub fn find() -> Result<AzCli, AzureError> {
        if std::env::var_os(AZ_GUARD_ENV).is_some() {
            return Err(cred_err(
                "refusing to run az from inside an az credential call",
            ));
        }
        let me = std::env::current_exe().ok();
        AzCli::find_in(&std::env::var_os("PATH").unwrap_or_default(), me.as_deref())
    }

    /// [`AzCli::find`] over an explicit PATH value and running executable.
    pub fn find_in(path: &std::ffi::OsStr, me: Option<&Path>) -> Result<AzCli, AzureError> {
        for dir in std::env::split_paths(path) {
            let cand = dir.join("az");
            if !cand.is_file() {
                continue;
            }
            let ours = me.is_some_and(|me| {
                std::fs::canonicalize(&cand).ok() == std::fs::canonicalize(me).ok()
                    || same_file_contents(&cand, me)
            });
            if !ours {
                return Ok(AzCli { program: cand });
            }
        }
        Err(cred_err(
            "no az CLI on PATH (scaleset's own az shim does not count)",
        ))
    }
}

impl Credential for AzCli {
    fn get_token<'a>(
        &'a self,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<AccessToken, AzureError>> {
        Box::pin(async move {
            let out = tokio::process::Command::new(&self.program)
                .args([
                    "account",
                    "get-access-token",
                    "--resource",
                    resource,
                    "-o",
                    "json",
                ])
                .env(AZ_GUARD_ENV, "1")
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output()
                .await
                .map_err(|e| cred_err(format!("cannot run {}: {e}", self.program.display())))?;
            if !out.status.success() {
                return Err(cred_err(format!(
                    "az account get-access-token failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            parse_az_token(&out.stdout, SystemTime::now())
        })
    }
}

/// Which credential the environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Static {
        arm: String,
        storage: Option<String>,
    },
    ServicePrincipal {
        tenant: String,
        client_id: String,
        secret: String,
        authority: String,
    },
    ManagedIdentity {
        endpoint: String,
        client_id: Option<String>,
    },
    AzCli,
}

/// Picks a credential from environment variables, in DefaultAzureCredential's spirit:
/// `AZURE_ACCESS_TOKEN`; a service principal (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
/// `AZURE_CLIENT_SECRET`); `AZURE_CREDENTIAL=managed-identity|az` to force one; else the az CLI
/// when a real one is installed, else managed identity (`AZURE_CLIENT_ID` selects a
/// user-assigned identity).
/// `az_installed` is only asked when nothing else applies (it searches PATH).
pub fn choose(env: &dyn Fn(&str) -> Option<String>, az_installed: &dyn Fn() -> bool) -> Choice {
    let get = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(arm) = get("AZURE_ACCESS_TOKEN") {
        return Choice::Static {
            arm,
            storage: get("AZURE_STORAGE_ACCESS_TOKEN"),
        };
    }
    let mi = || Choice::ManagedIdentity {
        endpoint: get("AZURE_IMDS_ENDPOINT").unwrap_or_else(|| IMDS_TOKEN_URL.into()),
        client_id: get("AZURE_CLIENT_ID"),
    };
    match get("AZURE_CREDENTIAL").as_deref() {
        Some("managed-identity") => return mi(),
        Some("az") => return Choice::AzCli,
        _ => {}
    }
    if let (Some(tenant), Some(client_id), Some(secret)) = (
        get("AZURE_TENANT_ID"),
        get("AZURE_CLIENT_ID"),
        get("AZURE_CLIENT_SECRET"),
    ) {
        return Choice::ServicePrincipal {
            tenant,
            client_id,
            secret,
            authority: get("AZURE_AUTHORITY_HOST").unwrap_or_else(|| AUTHORITY.into()),
        };
    }
    if az_installed() {
        Choice::AzCli
    } else {
        mi()
    }
}

/// The cached credential for `choice`; `http` serves IMDS, `https` AAD.
pub fn build(
    choice: Choice,
    http: Arc<dyn Transport>,
    https: Arc<dyn Transport>,
) -> Result<Cached, AzureError> {
    let inner: Box<dyn Credential> = match choice {
        Choice::Static { arm, storage } => Box::new(StaticToken { arm, storage }),
        Choice::ServicePrincipal {
            tenant,
            client_id,
            secret,
            authority,
        } => Box::new(ClientSecret {
            transport: https,
            authority,
            tenant,
            client_id,
            secret,
        }),
        Choice::ManagedIdentity {
            endpoint,
            client_id,
        } => Box::new(ManagedIdentity {
            transport: http,
            endpoint,
            client_id,
        }),
        Choice::AzCli => Box::new(AzCli::find()?),
    };
    Ok(Cached::new(inner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn freshness() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let m = Duration::from_secs(300);
        let cases = [
            (now + Duration::from_secs(3600), true),
            (now + Duration::from_secs(301), true),
            (now + Duration::from_secs(300), false),
            (now, false),
            (UNIX_EPOCH, false),
        ];
        for (exp, want) in cases {
            assert_eq!(is_fresh(exp, now, m), want, "{exp:?}");
        }
    }

    #[test]
    fn token_responses() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        type Want = Result<(&'static str, SystemTime), &'static str>;
        let cases: &[(&str, Want)] = &[
            (r#"{"access_token":"a","expires_on":"5000","expires_in":"3599"}"#, Ok(("a", at(5000)))),
            (r#"{"access_token":"b","expires_in":3599,"token_type":"Bearer"}"#, Ok(("b", at(4599)))),
            (r#"{"access_token":"c"}"#, Ok(("c", at(1300)))),
            (r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret"}"#, Err("cannot get an Azure access token: invalid_client: AADSTS7000215: Invalid client secret")),
            (r#"{"access_token":""}"#, Err("cannot get an Azure access token: token response has no access_token")),
        ];
        for (body, want) in cases {
            let got = parse_oauth_token(body.as_bytes(), now);
            match want {
                Ok((t, exp)) => assert_eq!(
                    got.unwrap(),
                    AccessToken {
                        token: t.to_string(),
                        expires_at: *exp
                    }
                ),
                Err(msg) => assert_eq!(got.unwrap_err().to_string(), *msg),
            }
        }
        let az = br#"{"accessToken":"z","expiresOn":"2026-11-26 08:00:00.000000","expires_on":7000,"subscription":"s","tenant":"t","tokenType":"Bearer"}"#;
        assert_eq!(parse_az_token(az, now).unwrap().expires_at, at(7000));
        let old_az = br#"{"accessToken":"z","expiresOn":"2026-11-26 08:00:00.000000"}"#;
        assert_eq!(parse_az_token(old_az, now).unwrap().expires_at, at(1300));
        assert!(parse_az_token(b"ERROR: Please run 'az login'", now).is_err());
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form(&[
                ("scope", "https://management.azure.com/.default"),
                ("client_secret", "a+b=c&d ~")
            ]),
            "scope=https%3A%2F%2Fmanagement.azure.com%2F.default&client_secret=a%2Bb%3Dc%26d%20~"
        );
    }

    #[test]
    fn choices() {
        let sp = [
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "s"),
        ];
        let stat = |storage: Option<&str>| Choice::Static {
            arm: "x".into(),
            storage: storage.map(str::to_string),
        };
        let spc = Choice::ServicePrincipal {
            tenant: "t".into(),
            client_id: "c".into(),
            secret: "s".into(),
            authority: AUTHORITY.into(),
        };
        let mi = |id: Option<&str>| Choice::ManagedIdentity {
            endpoint: IMDS_TOKEN_URL.into(),
            client_id: id.map(str::to_string),
        };
        type Env = Vec<(&'static str, &'static str)>;
        let cases: Vec<(Env, bool, Choice)> = vec![
            (vec![("AZURE_ACCESS_TOKEN", "x")], false, stat(None)),
            (
                vec![
                    ("AZURE_ACCESS_TOKEN", "x"),
                    ("AZURE_STORAGE_ACCESS_TOKEN", "y"),
                ],
                false,
                stat(Some("y")),
            ),
            (
                [&sp[..], &[("AZURE_ACCESS_TOKEN", "x")]].concat(),
                true,
                stat(None),
            ),
            (sp.to_vec(), true, spc.clone()),
            (vec![("AZURE_ACCESS_TOKEN", "")], true, Choice::AzCli),
            (vec![], true, Choice::AzCli),
            (vec![], false, mi(None)),
            (vec![("AZURE_CLIENT_ID", "c")], false, mi(Some("c"))),
            (
                [&sp[..], &[("AZURE_CREDENTIAL", "managed-identity")]].concat(),
                true,
                mi(Some("c")),
            ),
            (vec![("AZURE_CREDENTIAL", "az")], false, Choice::AzCli),
        ];
        for (i, (vars, az, want)) in cases.into_iter().enumerate() {
            let m: HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(choose(&|k| m.get(k).cloned(), &|| az), want, "case {i}");
        }
    }
}
