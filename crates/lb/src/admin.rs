//! Admin API on a unix socket: `GET /status`, `PUT /config`.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tracing::{info, warn};

use crate::config::LbConfig;
use crate::core::Lb;
use crate::LbError;

/// Largest accepted config document.
const MAX_BODY: usize = 8 << 20;

pub(crate) async fn run(lb: Arc<Lb>, listener: UnixListener) {
    let mut shutdown = lb.shutdown.subscribe();
    loop {
        let stream = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let lb = lb.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let lb = lb.clone();
                async move { Ok::<_, Infallible>(route(&lb, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    json(status, body.to_string().into_bytes())
}

async fn route(lb: &Arc<Lb>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/status") => match serde_json::to_vec(&lb.status()) {
            Ok(b) => json(StatusCode::OK, b),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal",
                &e.to_string(),
            ),
        },
        (&Method::GET, "/config") => {
            let cfg = crate::core::lock(&lb.ctl).config.clone();
            match serde_json::to_vec(&cfg) {
                Ok(b) => json(StatusCode::OK, b),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal",
                    &e.to_string(),
                ),
            }
        }
        (&Method::PUT, "/config") => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return error(StatusCode::BAD_REQUEST, "BadBody", &e.to_string()),
            };
            match put_config(lb, &body).await {
                Ok(()) => json(StatusCode::OK, b"{}".to_vec()),
                Err(e) => {
                    warn!(lb = %lb.name.load(), error = %e.full_message(), "config rejected");
                    let status = match e {
                        LbError::ConfigFile { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                        _ => StatusCode::BAD_REQUEST,
                    };
                    error(status, e.code(), &e.full_message())
                }
            }
        }
        (_, "/status") | (_, "/config") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "method not allowed",
        ),
        _ => error(StatusCode::NOT_FOUND, "NotFound", "no such endpoint"),
    }
}

/// Validates, binds, persists, then commits.
pub(crate) async fn put_config(lb: &Arc<Lb>, body: &[u8]) -> Result<(), LbError> {
    let cfg = LbConfig::from_json(body)?;
    let _serial = lb.apply_lock.lock().await;
    let prepared = lb.prepare(cfg.clone()).await?;
    persist(&lb.config_path, &cfg).await?;
    lb.commit(prepared);
    info!(lb = %cfg.name, rules = cfg.rules.len(), backends = cfg.backends.len(), "config applied");
    Ok(())
}

/// Writes the config atomically (temp file + fsync + rename).
pub(crate) async fn persist(path: &std::path::Path, cfg: &LbConfig) -> Result<(), LbError> {
    let err = |source| LbError::ConfigFile {
        path: path.to_owned(),
        source,
    };
    let data = serde_json::to_vec_pretty(cfg).map_err(|e| err(std::io::Error::other(e)))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let path2 = path.to_owned();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path2)
    })
    .await
    .map_err(|e| err(std::io::Error::other(e)))?
    .map_err(err)
}

/// Loads the persisted config; a missing file is an empty config.
pub(crate) async fn load(path: &std::path::Path) -> Result<LbConfig, LbError> {
    match tokio::fs::read(path).await {
        Ok(b) => LbConfig::from_json(&b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LbConfig::default()),
        Err(source) => Err(LbError::ConfigFile {
            path: path.to_owned(),
            source,
        }),
    }
}
