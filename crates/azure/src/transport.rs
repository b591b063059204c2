//! The network boundary: one request in, one response out (no retries, no auth; the client adds
//! those).
//!
//! Two implementations. [`HttpTransport`] is hyper over plain HTTP: the replay server in tests and
//! the instance metadata service (IMDS). [`CurlTransport`] runs the system `curl` for HTTPS
//! (management.azure.com, login.microsoftonline.com): a TLS stack in the build (rustls + ring or
//! openssl-sys) would cost more build time on our 2 cores than every other dependency of this crate
//! together, and Debian ships curl with the system's CA store and proxy support. Secrets never
//! reach curl's command line (visible in /proc): the whole request is written to its stdin as a
//! config file.
use crate::error::AzureError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::future::Future;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Header pairs in order; names compare case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn push(&mut self, name: &str, value: &str) {
        self.0.push((name.to_string(), value.to_string()));
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl From<Vec<(String, String)>> for Headers {
    fn from(v: Vec<(String, String)>) -> Self {
        Headers(v)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Headers,
    pub body: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

pub trait Transport: Send + Sync {
    fn send(&self, req: Request) -> BoxFuture<'_, Result<Response, AzureError>>;
}

fn transport_err(url: &str, reason: impl std::fmt::Display) -> AzureError {
    AzureError::Transport {
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

/// Plain HTTP through hyper; `https://` URLs are refused (see [`CurlTransport`]).
pub struct HttpTransport {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    timeout: Duration,
}

impl HttpTransport {
    pub fn new(timeout: Duration) -> Self {
        HttpTransport {
            client: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build_http(),
            timeout,
        }
    }
}

impl Transport for HttpTransport {
    fn send(&self, req: Request) -> BoxFuture<'_, Result<Response, AzureError>> {
        Box::pin(async move {
            if !req.url.starts_with("http://") {
                return Err(transport_err(
                    &req.url,
                    "the plain HTTP transport only speaks http://",
                ));
            }
            let mut b = hyper::Request::builder()
                .method(req.method.as_str())
                .uri(req.url.as_str());
            for (k, v) in req.headers.iter() {
                b = b.header(k, v);
            }
            let r = b
                .body(Full::new(Bytes::from(req.body.unwrap_or_default())))
                .map_err(|e| transport_err(&req.url, e))?;
            let fut = async {
                let resp = self
                    .client
                    .request(r)
                    .await
                    .map_err(|e| transport_err(&req.url, error_chain(&e)))?;
                let status = resp.status().as_u16();
                let headers = Headers(
                    resp.headers()
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                );
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| transport_err(&req.url, e))?
                    .to_bytes()
                    .to_vec();
                Ok(Response {
                    status,
                    headers,
                    body,
                })
            };
            tokio::time::timeout(self.timeout, fut)
                .await
                .map_err(|_| transport_err(&req.url, "timed out"))?
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Plain HTTP through hyper, HTTPS through curl.
pub struct AutoTransport {
    pub http: HttpTransport,
    pub https: CurlTransport,
}

impl AutoTransport {
    pub fn new(timeout: Duration) -> Self {
        AutoTransport {
            http: HttpTransport::new(timeout),
            https: CurlTransport::new(timeout),
        }
    }
}

impl Transport for AutoTransport {
    fn send(&self, req: Request) -> BoxFuture<'_, Result<Response, AzureError>> {
        if req.url.starts_with("http://") {
            self.http.send(req)
        } else {
            self.https.send(req)
        }
    }
}

/// HTTPS (and HTTP) through the system `curl` binary.
pub struct CurlTransport {
    pub program: String,
    pub timeout: Duration,
}

impl CurlTransport {
    pub fn new(timeout: Duration) -> Self {
        CurlTransport {
            program: "curl".into(),
            timeout,
        }
    }
}

/// A double-quoted curl config value (curl's escapes: `\\ \" \t \n \r \v`).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\u{b}' => out.push_str("\\v"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The curl config (read from stdin with `--config -`) that sends `req`. A body that is not
/// UTF-8 (a drop tarball) cannot be written inline: it is read from `body_file`.
pub fn curl_config(
    req: &Request,
    timeout: Duration,
    body_file: Option<&std::path::Path>,
) -> Result<String, AzureError> {
    let body = match (&req.body, body_file) {
        (Some(_), Some(_)) => None,
        (Some(b), None) => Some(
            std::str::from_utf8(b)
                .map_err(|_| transport_err(&req.url, "curl transport: body is not UTF-8"))?,
        ),
        // ARM wants a Content-Length on body-less POSTs (411 otherwise); an empty data-raw
        // makes curl send `Content-Length: 0`.
        (None, _) if req.method != "GET" && req.method != "HEAD" => Some(""),
        (None, _) => None,
    };
    let mut c = String::new();
    c.push_str("silent\nshow-error\ninclude\nsuppress-connect-headers\n");
    c.push_str("proto = \"=http,https\"\n");
    c.push_str(&format!("max-time = {}\n", timeout.as_secs().max(1)));
    c.push_str(&format!("url = {}\n", quote(&req.url)));
    c.push_str(&format!("request = {}\n", quote(&req.method)));
    // No `Expect: 100-continue` round trip for larger bodies.
    c.push_str("header = \"Expect:\"\n");
    for (k, v) in req.headers.iter() {
        if k.contains(['\r', '\n', ':']) || v.contains(['\r', '\n']) {
            return Err(transport_err(&req.url, "invalid header"));
        }
        c.push_str(&format!("header = {}\n", quote(&format!("{k}: {v}"))));
    }
    if let Some(b) = body {
        // data-raw: a leading '@' is data, not a file name.
        c.push_str(&format!("data-raw = {}\n", quote(b)));
    }
    if let (Some(_), Some(f)) = (&req.body, body_file) {
        let f = f
            .to_str()
            .ok_or_else(|| transport_err(&req.url, "temporary file name is not UTF-8"))?;
        c.push_str(&format!("data-binary = {}\n", quote(&format!("@{f}"))));
    }
    Ok(c)
}

/// curl's `--include` output: header block(s) then the body. Interim 1xx blocks are skipped.
pub fn parse_curl_output(out: &[u8]) -> Result<Response, String> {
    let mut rest = out;
    loop {
        let end = find(rest, b"\r\n\r\n").ok_or("no header block in curl's output")?;
        let head = std::str::from_utf8(&rest[..end]).map_err(|_| "headers are not UTF-8")?;
        rest = &rest[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .filter(|_| status_line.starts_with("HTTP/"))
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        if (100..200).contains(&status) {
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        return Ok(Response {
            status,
            headers: Headers(headers),
            body: rest.to_vec(),
        });
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A private temporary file, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn write(data: &[u8]) -> std::io::Result<TempFile> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = std::env::temp_dir().join(format!(
            "scaleset-curl-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let t = TempFile(path);
        f.write_all(data)?;
        Ok(t)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Transport for CurlTransport {
    fn send(&self, req: Request) -> BoxFuture<'_, Result<Response, AzureError>> {
        Box::pin(async move {
            let binary = req
                .body
                .as_ref()
                .filter(|b| std::str::from_utf8(b).is_err());
            let body_file = match binary {
                Some(b) => Some(TempFile::write(b).map_err(|e| {
                    transport_err(&req.url, format!("cannot stage the request body: {e}"))
                })?),
                None => None,
            };
            let config = curl_config(
                &req,
                self.timeout,
                body_file.as_ref().map(|f| f.0.as_path()),
            )?;
            let mut child = tokio::process::Command::new(&self.program)
                .args(["--config", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| {
                    transport_err(&req.url, format!("cannot run {}: {e}", self.program))
                })?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin
                    .write_all(config.as_bytes())
                    .await
                    .map_err(|e| transport_err(&req.url, format!("writing to curl: {e}")))?;
            }
            let out = child
                .wait_with_output()
                .await
                .map_err(|e| transport_err(&req.url, format!("waiting for curl: {e}")))?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                return Err(transport_err(
                    &req.url,
                    format!("curl failed ({}): {}", out.status, err.trim()),
                ));
            }
            parse_curl_output(&out.stdout).map_err(|e| transport_err(&req.url, e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_escapes_and_never_reads_files() {
        let mut headers = Headers::default();
        headers.push("Authorization", "Bearer t\"k");
        let req = Request {
            method: "PUT".into(),
            url: "https://management.azure.com/x?api-version=1".into(),
            headers,
            body: Some(b"@/etc/passwd \"q\"\n\\".to_vec()),
        };
        let c = curl_config(&req, Duration::from_secs(30), None).unwrap();
        assert!(c.contains("url = \"https://management.azure.com/x?api-version=1\"\n"));
        assert!(c.contains("request = \"PUT\"\n"));
        assert!(c.contains("header = \"Authorization: Bearer t\\\"k\"\n"));
        assert!(c.contains("data-raw = \"@/etc/passwd \\\"q\\\"\\n\\\\\"\n"));
        assert!(c.contains("max-time = 30\n"));
        assert!(!c.contains("data-binary"));
    }

    #[test]
    fn config_posts_empty_body_and_refuses_header_injection() {
        let req = Request {
            method: "POST".into(),
            url: "https://h/x".into(),
            headers: Headers::default(),
            body: None,
        };
        assert!(curl_config(&req, Duration::from_secs(1), None)
            .unwrap()
            .contains("data-raw = \"\"\n"));
        let get = Request {
            method: "GET".into(),
            ..req.clone()
        };
        assert!(!curl_config(&get, Duration::from_secs(1), None)
            .unwrap()
            .contains("data-raw"));
        let mut headers = Headers::default();
        headers.push("X", "a\nurl = \"file:///etc/passwd\"");
        let bad = Request { headers, ..req };
        assert!(curl_config(&bad, Duration::from_secs(1), None).is_err());
    }

    #[test]
    fn binary_bodies_come_from_a_file() {
        let req = Request {
            method: "PUT".into(),
            url: "https://acct.blob.core.windows.net/drop/x.tar.gz".into(),
            headers: Headers::default(),
            body: Some(vec![0x1f, 0x8b, 0xff]),
        };
        assert!(curl_config(&req, Duration::from_secs(1), None).is_err());
        let c = curl_config(
            &req,
            Duration::from_secs(1),
            Some(std::path::Path::new("/tmp/b")),
        )
        .unwrap();
        assert!(c.contains("data-binary = \"@/tmp/b\"\n"), "{c}");
        assert!(!c.contains("data-raw"), "{c}");
    }

    #[test]
    fn parses_curl_output() {
        let out = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/2 202 \r\nlocation: https://x/op\r\nRetry-After: 5\r\n\r\n{\"a\":1}";
        let r = parse_curl_output(out).unwrap();
        assert_eq!(r.status, 202);
        assert_eq!(r.headers.get("Location"), Some("https://x/op"));
        assert_eq!(r.headers.get("retry-after"), Some("5"));
        assert_eq!(r.body, b"{\"a\":1}");
        let r = parse_curl_output(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
        assert!(parse_curl_output(b"garbage").is_err());
        assert!(parse_curl_output(b"SMTP 220 x\r\n\r\n").is_err());
    }
}
