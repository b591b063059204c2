//! What a client may cost the daemon: body sizes per route, read timeouts, open connections,
//! and the addresses load balancer frontends may listen on. Bodies are read only after the
//! request is authenticated (see `dispatch` and `pipelines::handle`), and only up to the
//! route's limit.
use crate::error::ApiError;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;

pub use control::Cidr;
use std::time::Duration;

/// Azure Resource Manager's request size limit.
pub const ARM_BODY_LIMIT: usize = 4 << 20;
/// GitHub's webhook payload cap.
pub const WEBHOOK_BODY_LIMIT: usize = 25 << 20;
/// The daemon's own JSON endpoints (`/scaleset/repos`, runs): like ARM.
pub const JSON_BODY_LIMIT: usize = ARM_BODY_LIMIT;

/// `scaleset serve`'s limits (flags and environment in `crates/cli/src/daemon.rs`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// A request's headers must arrive within this time of the connection being ready for
    /// them: from accept, and from the end of the previous response (so an idle keep-alive
    /// connection is closed after it too).
    pub header_timeout: Duration,
    /// A buffered body (ARM, webhooks, JSON) must arrive within this time; a streamed push may
    /// pause this long between two chunks.
    pub body_timeout: Duration,
    /// Open API connections; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Largest git request body (a push's pack), streamed to `git http-backend`.
    pub max_push_bytes: u64,
    /// Where load balancer frontends may listen (`privateIPAddress`).
    pub lb_allowed: Vec<Cidr>,
    /// Connection cap and header timeout of every load balancer frontend.
    pub lb_frontend: lb::FrontendLimits,
    /// The most each scope's bake download cache keeps (bytes; oldest files go first).
    pub download_cache_bytes: u64,
    /// How long a run command may run before it is killed.
    pub run_command_timeout: Duration,
}

pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_MAX_PUSH_BYTES: u64 = 1 << 30;
/// Azure's run command gives up after 90 minutes.
pub const DEFAULT_RUN_COMMAND_TIMEOUT: Duration = Duration::from_secs(90 * 60);
pub const DEFAULT_LB_ALLOWED: &str = "127.0.0.0/8,::1/128";

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_push_bytes: DEFAULT_MAX_PUSH_BYTES,
            lb_allowed: Cidr::parse_list(DEFAULT_LB_ALLOWED).unwrap_or_default(),
            lb_frontend: lb::FrontendLimits::default(),
            download_cache_bytes: image::cache::DEFAULT_CAP_BYTES,
            run_command_timeout: DEFAULT_RUN_COMMAND_TIMEOUT,
        }
    }
}

/// ARM's answer to a body over its limit (`RequestContentTooLarge`, 413).
pub fn too_large(limit: u64) -> ApiError {
    ApiError::Client {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "RequestContentTooLarge",
        message: format!(
            "The request content size exceeds the maximum size of {}.",
            human(limit)
        ),
    }
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MB", n >> 20),
        n => format!("{n} bytes"),
    }
}

/// The request's `Content-Length`, when it has a valid one.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// What a refused client may still send after the answer, read and dropped, and for how long:
/// enough for it to read the answer instead of a connection reset (HTTP clients, git's curl
/// among them, stop sending when they see an error), little next to what was refused.
pub const LINGER_BYTES: u64 = 32 << 20;
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// Drops the rest of a refused request's body in the background, bounded by `LINGER_BYTES`
/// and `LINGER_TIME`; the connection closes after.
pub fn linger(body: Body) {
    use http_body::Body as _;
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let drain = async {
            let (mut body, mut n) = (body, 0u64);
            while let Some(Ok(f)) = body.frame().await {
                n += f.data_ref().map_or(0, |d| d.len() as u64);
                if n > LINGER_BYTES {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
}

/// An error answer to a request whose body was not (all) read: `unread` lingers, and the
/// connection closes after the answer.
pub fn refuse(e: ApiError, unread: Option<Body>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut r = e.into_response();
    let pending = unread
        .as_ref()
        .is_some_and(|b| !http_body::Body::is_end_stream(b));
    if pending || r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        let close = axum::http::HeaderValue::from_static("close");
        r.headers_mut()
            .insert(axum::http::header::CONNECTION, close);
    }
    if let Some(b) = unread {
        linger(b);
    }
    r
}

/// Reads a whole body of at most `limit` bytes within `timeout`. A `Content-Length` over the
/// limit is refused before anything is read. A refused body lingers (see `linger`).
pub async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    if content_length(headers).is_some_and(|n| n > limit as u64) {
        linger(body);
        return Err(too_large(limit as u64));
    }
    let read = async {
        let mut body = body;
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::bad_request(
                    "InvalidRequestContent",
                    format!("the request body could not be read: {e}"),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            if buf.len() + data.len() > limit {
                linger(body);
                return Err(too_large(limit as u64));
            }
            buf.extend_from_slice(&data);
        }
        Ok(Bytes::from(buf))
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| Err(body_timeout(timeout)))
}

pub fn body_timeout(t: Duration) -> ApiError {
    ApiError::Client {
        status: StatusCode::REQUEST_TIMEOUT,
        code: "RequestTimeout",
        message: format!(
            "The request body did not arrive within {} seconds.",
            t.as_secs()
        ),
    }
}

/// Raises the soft limit of open files to the hard limit: every connection is a descriptor,
/// and the cap (not the default soft limit of 1024) should decide how many are served.
pub fn raise_nofile_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: r is a valid rlimit to fill and then to read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_contains() {
        let l = Cidr::parse_list(DEFAULT_LB_ALLOWED).unwrap();
        let ok = |s: &str| l.iter().any(|c| c.contains(s.parse().unwrap()));
        assert!(ok("127.0.0.1") && ok("127.255.0.9") && ok("::1"));
        assert!(!ok("0.0.0.0") && !ok("10.1.2.3") && !ok("128.0.0.1") && !ok("::"));
        let c: Cidr = "10.1.2.3".parse().unwrap();
        assert_eq!(c.to_string(), "10.1.2.3/32");
        assert!(
            c.contains("10.1.2.3".parse().unwrap()) && !c.contains("10.1.2.4".parse().unwrap())
        );
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()) && !all.contains("::1".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(
            v6.contains("fd12::1".parse().unwrap()) && !v6.contains("fe80::1".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "x", "10.0.0.0/", "::1/129", "1.2.3/8"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(Cidr::parse_list(" 10.0.0.0/8 , ,").unwrap().len(), 1);
    }

    #[test]
    fn too_large_names_the_limit() {
        assert_eq!(
            too_large(ARM_BODY_LIMIT as u64).to_string(),
            "The request content size exceeds the maximum size of 4 MB."
        );
        assert!(too_large(1 << 30).to_string().ends_with("1 GB."));
        assert!(too_large(1000).to_string().ends_with("1000 bytes."));
    }

    #[tokio::test]
    async fn read_body_limits() {
        let mut h = HeaderMap::new();
        let t = Duration::from_secs(5);
        let b = read_body(Body::from("abcd"), &h, 4, t).await.unwrap();
        assert_eq!(&b[..], b"abcd");
        let e = read_body(Body::from("abcde"), &h, 4, t).await.unwrap_err();
        assert!(e.to_string().contains("maximum size"), "{e}");
        // A declared length over the limit is refused without reading.
        h.insert("content-length", "5".parse().unwrap());
        let e = read_body(Body::from(""), &h, 4, t).await.unwrap_err();
        assert!(
            matches!(e, ApiError::Client { status, .. } if status == StatusCode::PAYLOAD_TOO_LARGE)
        );
        // A body that never ends times out.
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|x| (x, rx)) },
            );
        let e = read_body(
            Body::from_stream(stream),
            &HeaderMap::new(),
            4,
            Duration::from_millis(50),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                e,
                ApiError::Client {
                    code: "RequestTimeout",
                    ..
                }
            ),
            "{e}"
        );
    }
}
