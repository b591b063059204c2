//! Admin API client used by the control daemon.

use std::path::Path;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::UnixStream;

use crate::config::LbConfig;
use crate::status::LbStatus;
use crate::LbError;

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

async fn call(
    admin_socket: &Path,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> Result<Bytes, LbError> {
    let stream =
        UnixStream::connect(admin_socket)
            .await
            .map_err(|source| LbError::AdminSocket {
                path: admin_socket.to_owned(),
                source,
            })?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(LbError::AdminHttp)?;
    let conn = tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "lb")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| LbError::AdminApi {
            status: 0,
            code: "BadRequest".into(),
            message: e.to_string(),
        })?;
    let res = tx.send_request(req).await.map_err(LbError::AdminHttp)?;
    let status = res.status();
    let bytes = res
        .into_body()
        .collect()
        .await
        .map_err(LbError::AdminHttp)?
        .to_bytes();
    conn.abort();
    if status.is_success() {
        return Ok(bytes);
    }
    let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(e) => (e.error.code, e.error.message),
        Err(_) => (
            "Unknown".to_owned(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ),
    };
    Err(LbError::AdminApi {
        status: status.as_u16(),
        code,
        message,
    })
}

/// `GET /status`.
pub async fn get_status(admin_socket: &Path) -> Result<LbStatus, LbError> {
    let b = call(admin_socket, Method::GET, "/status", Vec::new()).await?;
    serde_json::from_slice(&b).map_err(LbError::AdminDecode)
}

/// `PUT /config`; the LB validates, applies and persists it.
pub async fn put_config(admin_socket: &Path, cfg: &LbConfig) -> Result<(), LbError> {
    let body = serde_json::to_vec(cfg).map_err(LbError::AdminDecode)?;
    call(admin_socket, Method::PUT, "/config", body).await?;
    Ok(())
}
