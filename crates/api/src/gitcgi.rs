//! `git http-backend` with the request body streamed from the client, never held in memory:
//! a push of any size costs the daemon a pipe buffer. The body is capped (`--max-push-bytes`):
//! the bytes past the cap are never passed on, so the pack stays incomplete and no ref moves,
//! and the backend is killed. The response (small for pushes, which need it whole to append
//! the queued runs) is read whole, as `pipeline::git::http_backend` does.
use axum::body::Body;
use http_body_util::BodyExt;
use pipeline::git::{parse_cgi_response, CgiResponse};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// The first bytes of the body, kept for the caller (a push's commands and capabilities).
pub const PREFIX: usize = 64 << 10;
/// What is kept of the backend's stderr.
const STDERR_MAX: usize = 64 << 10;

/// A smart-HTTP request whose body comes from the client.
pub struct Request<'a> {
    pub method: &'a str,
    pub path_info: &'a str,
    pub query: &'a str,
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    pub git_protocol: Option<&'a str>,
    /// The declared length; without one (chunked) the backend reads to the end.
    pub content_length: Option<u64>,
    pub remote_user: Option<&'a str>,
    pub remote_addr: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
pub enum CgiError {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the request body paused for more than {} seconds", .0.as_secs())]
    Timeout(Duration),
    #[error("the request body could not be read: {0}")]
    Client(String),
    #[error("git http-backend: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs `git http-backend` under `root` for one request, feeding it `body` (at most `cap`
/// bytes, pausing at most `idle` between chunks). Returns the response and the body's first
/// `PREFIX` bytes.
pub async fn http_backend(
    root: &Path,
    req: &Request<'_>,
    body: Body,
    cap: u64,
    idle: Duration,
) -> Result<(CgiResponse, Vec<u8>), CgiError> {
    if req.content_length.is_some_and(|n| n > cap) {
        crate::limits::linger(body);
        return Err(CgiError::TooLarge(cap));
    }
    if req.path_info.split('/').any(|s| s == "..") {
        let bad = CgiResponse {
            status: 400,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: b"bad path\n".to_vec(),
        };
        return Ok((bad, Vec::new()));
    }
    let mut child = command(root, req).spawn()?;
    let stdin = child.stdin.take();
    let mut stdout = child.stdout.take().ok_or_else(|| no_pipe("stdout"))?;
    let stderr = child.stderr.take().ok_or_else(|| no_pipe("stderr"))?;
    let mut prefix = Vec::new();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let fed = {
        let read = async {
            let _ = tokio::join!(
                stdout.read_to_end(&mut out),
                read_capped(stderr, &mut err, STDERR_MAX)
            );
        };
        tokio::pin!(read);
        let feed = feed(stdin, body, cap, idle, &mut prefix);
        tokio::select! {
            r = feed => {
                if r.is_ok() {
                    read.await;
                }
                r
            }
            // The backend finished without reading everything (an error it reports itself).
            _ = &mut read => Ok(()),
        }
    };
    if let Err(e) = fed {
        // Nothing past the cap reached git; killing it also stops its receive-pack early.
        let _ = child.start_kill();
        return Err(e);
    }
    let status = child.wait().await?;
    if out.is_empty() && !status.success() {
        let failed = CgiResponse {
            status: 500,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: format!(
                "git http-backend failed: {}\n",
                String::from_utf8_lossy(&err).trim()
            )
            .into_bytes(),
        };
        return Ok((failed, prefix));
    }
    Ok((parse_cgi_response(&out), prefix))
}

fn no_pipe(what: &str) -> CgiError {
    CgiError::Io(std::io::Error::other(format!("no {what} pipe")))
}

/// The one `git http-backend` command (`pipeline::git::backend_command`), the body streamed.
fn command(root: &Path, req: &Request<'_>) -> tokio::process::Command {
    let head = pipeline::git::CgiRequest {
        method: req.method,
        path_info: req.path_info,
        query: req.query,
        content_type: req.content_type,
        content_encoding: req.content_encoding,
        git_protocol: req.git_protocol,
        body: &[],
        remote_user: req.remote_user,
        remote_addr: req.remote_addr,
    };
    pipeline::git::backend_command(root, &head, req.content_length)
}

/// Copies the body into the backend's stdin, counting; stops at the cap, a pause longer than
/// `idle`, or a client error. A backend that stops reading ends the copy quietly.
async fn feed(
    stdin: Option<tokio::process::ChildStdin>,
    mut body: Body,
    cap: u64,
    idle: Duration,
    prefix: &mut Vec<u8>,
) -> Result<(), CgiError> {
    let mut w = stdin;
    let mut total = 0u64;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(CgiError::Timeout(idle)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(CgiError::Client(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        total += data.len() as u64;
        if total > cap {
            crate::limits::linger(body);
            return Err(CgiError::TooLarge(cap));
        }
        let room = PREFIX.saturating_sub(prefix.len()).min(data.len());
        prefix.extend_from_slice(&data[..room]);
        let Some(pipe) = w.as_mut() else { break };
        if pipe.write_all(&data).await.is_err() {
            break;
        }
    }
    if let Some(mut pipe) = w {
        let _ = pipe.shutdown().await;
    }
    Ok(())
}

async fn read_capped(mut r: impl AsyncRead + Unpin, out: &mut Vec<u8>, max: usize) {
    let mut buf = [0u8; 8192];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            return;
        }
        let room = max.saturating_sub(out.len()).min(n);
        out.extend_from_slice(&buf[..room]);
    }
}
