//! `GET /metrics`: Prometheus' text format over the engine's scrape and the pipeline runs
//! (`exposition`, `prom`). A scrape needs the daemon token, unless the daemon allows anonymous
//! scrapes from loopback and the client is on a loopback address; a pipeline run's token is
//! refused (it reaches the ARM API only).
use crate::error::ApiError;
use crate::exposition::{self, RunScrape, Snapshot};
use crate::state::AppState;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;

pub(crate) async fn handle(
    st: &AppState,
    method: &Method,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    body: Body,
) -> Response {
    if let Err(e) = authorize(st, method, headers, peer) {
        return crate::limits::refuse(e, Some(body));
    }
    let snapshot = Snapshot {
        engine: st.core.scrape().await,
        runs: runs(st),
    };
    let text = crate::prom::render(&exposition::families(&snapshot));
    let mut r = (StatusCode::OK, text).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::prom::CONTENT_TYPE),
    );
    r
}

fn authorize(
    st: &AppState,
    method: &Method,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<(), ApiError> {
    if method != Method::GET {
        return Err(ApiError::Client {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "MethodNotAllowed",
            message: format!("{method} /metrics is not supported; use GET."),
        });
    }
    if anonymous_ok(
        st.cfg.metrics_anonymous_loopback,
        headers.contains_key(header::AUTHORIZATION),
        peer,
    ) {
        return Ok(());
    }
    if crate::check_auth(st, headers)? {
        return Err(ApiError::Client {
            status: StatusCode::FORBIDDEN,
            code: "AuthorizationFailed",
            message: "A pipeline run's credential cannot read /metrics.".into(),
        });
    }
    Ok(())
}

/// Whether a request may scrape without a token: only when allowed, from a loopback address,
/// and without a credential (one that is sent is checked).
fn anonymous_ok(allowed: bool, has_credential: bool, peer: Option<SocketAddr>) -> bool {
    allowed && !has_credential && peer.is_some_and(|p| p.ip().to_canonical().is_loopback())
}

/// Completed runs with their durations (a run that never started has none).
fn runs(st: &AppState) -> Vec<RunScrape> {
    let Some(p) = &st.pipelines else {
        return vec![];
    };
    let records = p.list_runs(None).unwrap_or_else(|e| {
        tracing::warn!(error = %crate::error::error_chain(&e), "cannot list runs for /metrics");
        vec![]
    });
    records
        .into_iter()
        .filter_map(|r| {
            let (start, end) = (r.started_ms?, r.finished_ms?);
            Some(RunScrape {
                pipeline: r.pipeline,
                result: r.result?.as_str().to_owned(),
                duration_secs: end.saturating_sub(start) as f64 / 1000.0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::anonymous_ok;

    #[test]
    fn anonymous_only_when_allowed_from_loopback_without_credential() {
        let lo = Some("127.0.0.1:5000".parse().unwrap());
        let lo6 = Some("[::1]:5000".parse().unwrap());
        let mapped = Some("[::ffff:127.0.0.1]:5000".parse().unwrap());
        let lan = Some("10.213.170.5:5000".parse().unwrap());
        assert!(anonymous_ok(true, false, lo));
        assert!(anonymous_ok(true, false, lo6));
        assert!(anonymous_ok(true, false, mapped));
        assert!(!anonymous_ok(false, false, lo), "not allowed");
        assert!(
            !anonymous_ok(true, true, lo),
            "a credential sent is checked"
        );
        assert!(!anonymous_ok(true, false, lan), "not loopback");
        assert!(
            !anonymous_ok(true, false, None),
            "no address known (in-process)"
        );
    }
}
