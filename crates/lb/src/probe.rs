//! The one health prober: a TCP handshake, or an HTTP/1.1 `GET` whose status
//! (and, when asked, body) comes back. The LB's probes ([`crate::Probe`])
//! and the daemon's Application Health extension both use [`probe_once`];
//! each gives the result its own meaning (the LB: handshake or `200`).

use std::net::SocketAddr;
use std::time::Duration;

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Uri};
use tokio::net::TcpStream;

pub use crate::config::ProbeProtocol;
use crate::upstream::{self, RawConn, Step};

/// How to probe an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    pub protocol: ProbeProtocol,
    /// HTTP only; `/` when unset.
    pub request_path: Option<String>,
    /// The `Host` header; the target's `ip:port` when unset.
    pub host: Option<String>,
    pub user_agent: String,
    /// Bounds the whole probe (connect, request, response).
    pub timeout: Duration,
    /// Body bytes read and returned; 0 reads the response head only.
    pub max_body: usize,
}

/// What one probe got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// No connection, a timeout, or no parseable response head.
    NoAnswer,
    /// TCP probe: the handshake completed.
    Connected,
    /// HTTP probe: the final status and up to `max_body` bytes of the body
    /// (as far as it arrived intact; invalid UTF-8 replaced).
    Http { status: u16, body: String },
}

impl ProbeResult {
    /// Azure Load Balancer semantics: a TCP handshake, or HTTP `200`.
    pub fn is_up(&self) -> bool {
        matches!(
            self,
            ProbeResult::Connected | ProbeResult::Http { status: 200, .. }
        )
    }
}

/// Probes `target` once, within `spec.timeout`.
pub async fn probe_once(target: SocketAddr, spec: &ProbeSpec) -> ProbeResult {
    let attempt = async {
        let stream = TcpStream::connect(target).await.ok()?;
        match spec.protocol {
            ProbeProtocol::Tcp => Some(ProbeResult::Connected),
            ProbeProtocol::Http => http_get(stream, target, spec).await,
        }
    };
    tokio::time::timeout(spec.timeout, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(ProbeResult::NoAnswer)
}

async fn http_get(stream: TcpStream, target: SocketAddr, spec: &ProbeSpec) -> Option<ProbeResult> {
    let _ = stream.set_nodelay(true);
    let uri: Uri = spec.request_path.as_deref().unwrap_or("/").parse().ok()?;
    let mut headers = HeaderMap::with_capacity(3);
    if let Some(h) = &spec.host {
        headers.insert(header::HOST, HeaderValue::from_str(h).ok()?);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_str(&spec.user_agent).ok()?,
    );
    let mut conn = RawConn::new(stream);
    conn.send_head(&Method::GET, &uri, &headers, || target.to_string())
        .await
        .ok()?;
    let head = conn.read_head(&Method::GET).await.ok()?;
    let mut body = Vec::new();
    let mut framing = head.framing;
    while body.len() < spec.max_body {
        let step =
            std::future::poll_fn(|cx| upstream::poll_body(&mut conn, &mut framing, false, cx));
        // A body cut short or malformed still counts as far as it came.
        let Ok(Step::Frame(f)) = step.await else {
            break;
        };
        if let Some(d) = f.data_ref() {
            let room = spec.max_body - body.len();
            body.extend_from_slice(&d[..d.len().min(room)]);
        }
    }
    Some(ProbeResult::Http {
        status: head.status.as_u16(),
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn spec(protocol: ProbeProtocol, max_body: usize) -> ProbeSpec {
        ProbeSpec {
            protocol,
            request_path: Some("/health?x=1".into()),
            host: None,
            user_agent: "probe-test".into(),
            timeout: Duration::from_secs(5),
            max_body,
        }
    }

    /// Answers one connection with `resp` and returns the request head it read.
    async fn backend(resp: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).await.unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&b[..n]);
            }
            let _ = s.write_all(resp).await;
            String::from_utf8(req).unwrap()
        });
        (addr, task)
    }

    fn http(status: u16, body: &str) -> ProbeResult {
        ProbeResult::Http {
            status,
            body: body.into(),
        }
    }

    #[tokio::test]
    async fn http_request_head_and_response() {
        let (addr, req) = backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOKextra").await;
        let got = probe_once(addr, &spec(ProbeProtocol::Http, 1024)).await;
        assert_eq!(got, http(200, "OK"));
        assert!(got.is_up());
        let req = req.await.unwrap();
        assert_eq!(
            req,
            format!("GET /health?x=1 HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\nuser-agent: probe-test\r\n\r\n")
        );
        // An explicit Host header replaces the address.
        let (addr, req) = backend(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let mut s = spec(ProbeProtocol::Http, 0);
        s.host = Some("10.0.0.4".into());
        let got = probe_once(addr, &s).await;
        assert_eq!(got, http(204, ""));
        assert!(!got.is_up());
        assert!(req.await.unwrap().contains("\r\nhost: 10.0.0.4\r\n"));
    }

    /// Bodies: chunked, close-delimited, cut short, malformed, limited.
    #[tokio::test]
    async fn http_bodies() {
        let cases: [(&'static [u8], usize, ProbeResult); 7] = [
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n3;x=y\r\n 1}\r\n0\r\n\r\n",
                1024,
                http(200, "{\"a\": 1}"),
            ),
            (b"HTTP/1.0 503 Service Unavailable\r\n\r\ndown", 1024, http(503, "down")),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", 1024, http(200, "short")),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 1024, http(200, "")),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n123456789", 4, http(200, "1234")),
            // 1xx interim heads are skipped.
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 Oops\r\nContent-Length: 1\r\n\r\nx", 0, http(500, "")),
            (b"SSH-2.0-OpenSSH\r\n\r\n", 1024, ProbeResult::NoAnswer),
        ];
        for (resp, max_body, want) in cases {
            let (addr, _req) = backend(resp).await;
            let got = probe_once(addr, &spec(ProbeProtocol::Http, max_body)).await;
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(resp));
        }
    }

    #[tokio::test]
    async fn tcp_refused_and_timeout() {
        let (addr, _req) = backend(b"").await;
        assert_eq!(
            probe_once(addr, &spec(ProbeProtocol::Tcp, 0)).await,
            ProbeResult::Connected
        );
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        for p in [ProbeProtocol::Tcp, ProbeProtocol::Http] {
            assert_eq!(probe_once(closed, &spec(p, 0)).await, ProbeResult::NoAnswer);
        }
        // A backend that accepts but never answers: the timeout ends the probe.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut s = spec(ProbeProtocol::Http, 0);
        s.timeout = Duration::from_millis(200);
        assert_eq!(
            probe_once(l.local_addr().unwrap(), &s).await,
            ProbeResult::NoAnswer
        );
    }
}
