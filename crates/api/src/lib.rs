//! The control plane: an HTTP API in Azure Resource Manager's dialect over durable state, and the
//! engine that drives machines and load balancers to match it.
//!
//! `app()` is the whole router (tests drive it in-process); `serve()` runs the daemon. Under
//! `/scaleset/...` it is the HTTP front end of the CI service (crate `ci`; see `pipelines`).
pub mod error;
pub mod exposition;
mod gitcgi;
pub mod handlers;
pub mod inspect;
pub mod limits;
mod metrics;
pub mod operations;
pub mod pipelines;
pub mod prom;
pub mod render;
pub mod route;
mod server;
pub mod state;
pub mod ui;

/// The engine (its own crate; re-exported for the binary and tests).
pub use ::engine;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use error::ApiError;
use state::AppState;
use std::collections::HashMap;
use std::sync::Arc;

pub use state::DaemonConfig;

/// The API router. Every request goes through one dispatcher: auth, api-version, route parse,
/// body (read only then, up to the route's limit), execute, and one error mapping.
pub fn app(st: Arc<AppState>) -> Router {
    Router::new().fallback(dispatch).with_state(st)
}

pub(crate) fn query_map(uri: &Uri) -> HashMap<String, String> {
    parse_query(uri.query().unwrap_or(""))
}

/// A query string's parameters, percent-decoded (a repeated name keeps its last value).
pub fn parse_query(query: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(pct_decode(k), pct_decode(v));
    }
    out
}

/// Query-string decoding: `+` is a space, then percent escapes as in path segments.
fn pct_decode(s: &str) -> String {
    route::decode_segment(&s.replace('+', " "))
}

/// Checks the bearer token; `Ok(true)` for a pipeline run's own credential (see
/// [`route::release_may`]), `Ok(false)` for the daemon's.
fn check_auth(st: &AppState, headers: &HeaderMap) -> Result<bool, ApiError> {
    let unauth = |code: &'static str, message: &str| ApiError::Client {
        status: StatusCode::UNAUTHORIZED,
        code,
        message: message.into(),
    };
    let h = headers.get("authorization").ok_or_else(|| {
        unauth(
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        )
    })?;
    let v = h.to_str().unwrap_or("");
    let token = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .ok_or_else(|| {
            unauth(
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is not a Bearer token.",
            )
        })?;
    // Constant-time comparison: the token is the daemon's only credential.
    // A pipeline run's own credential (the `az` shim's) reaches the ARM API while the run lasts.
    if control::ct_eq(token.as_bytes(), st.auth.token.as_bytes()) {
        return Ok(false);
    }
    if !st.is_run_token(token) {
        return Err(unauth(
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        ));
    }
    Ok(true)
}

/// The api-version must be given, well-formed, and one the route's resource type speaks.
fn check_api_version(q: &HashMap<String, String>, route: &route::Route) -> Result<(), ApiError> {
    let v = q.get("api-version").ok_or_else(|| {
        ApiError::bad_request(
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )
    })?;
    let date = v.strip_suffix("-preview").unwrap_or(v);
    let ok = date.len() == 10
        && date.chars().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    if !ok {
        return Err(ApiError::bad_request(
            "InvalidApiVersionParameter",
            format!(
                "The api-version '{v}' is invalid. The supported versions include {}.",
                route.api_versions()[0]
            ),
        ));
    }
    route.check_api_version(v)
}

async fn dispatch(
    State(st): State<Arc<AppState>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if uri.path().starts_with("/scaleset/") {
        return pipelines::handle(st, method, uri, headers, body).await;
    }
    if uri.path() == "/metrics" {
        let peer = peer.map(|p| (p.0).0);
        return metrics::handle(&st, &method, &headers, peer, body).await;
    }
    if ui::is_ui_path(uri.path()) {
        return ui::handle(st, method, uri, headers, body).await;
    }
    let caller = match check_auth(&st, &headers) {
        Ok(true) => Caller::Run,
        Ok(false) => Caller::Daemon,
        Err(e) => return limits::refuse(e, Some(body)),
    };
    arm(
        &st,
        &method,
        uri.path(),
        &query_map(&uri),
        &headers,
        body,
        caller,
    )
    .await
}

/// Who an authenticated ARM request comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    /// The daemon token.
    Daemon,
    /// A pipeline run's credential (see [`route::release_may`]).
    Run,
    /// A dashboard session (its CSRF token already checked for a mutation).
    Session,
}

/// An authenticated ARM request at `path`: route, api-version, body, execute, render.
pub(crate) async fn arm(
    st: &Arc<AppState>,
    method: &Method,
    path: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Body,
    caller: Caller,
) -> Response {
    // Everything that needs no body is checked before a byte of it is read.
    let checked = (|| {
        let route = match route::parse_sub_list(method, path)
            .or_else(|| route::parse_operation(method, path))
        {
            Some(r) => r,
            None => route::parse(method, path)?,
        };
        if caller == Caller::Run && !route::release_may(&route) {
            return Err(ApiError::Client {
                status: StatusCode::FORBIDDEN,
                code: "AuthorizationFailed",
                message: format!(
                    "The pipeline run's credential does not have authorization to perform action '{method}' over scope '{path}': a run may read, update a scale set's model and start or cancel its upgrades."
                ),
            });
        }
        check_api_version(q, &route)?;
        Ok::<_, ApiError>(route)
    })();
    let route = match checked {
        Ok(r) => r,
        Err(e) => return limits::refuse(e, Some(body)),
    };
    let base = match headers.get("host").and_then(|h| h.to_str().ok()) {
        Some(h) => format!("http://{h}"),
        None => format!("http://{}", st.cfg.listen),
    };
    if let Some(reply) = inspect::special(st, &route, q, &base).await {
        return reply.unwrap_or_else(|e| limits::refuse(e, Some(body)));
    }
    let result = async {
        let limit = limits::ARM_BODY_LIMIT;
        let body = limits::read_body(body, headers, limit, st.cfg.limits.body_timeout).await?;
        let reply = handlers::execute(st, route.clone(), q, &body).await?;
        Ok::<_, ApiError>((route, reply, body))
    }
    .await;
    match result {
        Ok((route, (status, v), body)) => {
            // Clients poll the URLs of long-running operations where they reached us.
            let mut extra = operations::headers(&route, status, &v, &body, &base);
            if operations::in_progress(&route, status, &v) {
                extra.push(("Retry-After", "1".into()));
            }
            let mut resp = if v.is_null() {
                status.into_response()
            } else {
                (status, axum::Json(v)).into_response()
            };
            for (k, val) in extra {
                if let Ok(val) = axum::http::HeaderValue::from_str(&val) {
                    resp.headers_mut().insert(k, val);
                }
            }
            resp
        }
        Err(e) => limits::refuse(e, None),
    }
}

/// Opens state, creates the token on first start (mode 0600), and returns the shared state.
pub fn open_state(
    cfg: DaemonConfig,
    machines: Arc<dyn runtime::Machines>,
) -> Result<Arc<AppState>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(&cfg.home)
        .map_err(|e| format!("cannot create {}: {e}", cfg.home.display()))?;
    // Other users (pipeline jobs run as one) may traverse the home to reach their build
    // directories, but not list it; the state itself is the daemon's alone.
    use std::os::unix::fs::PermissionsExt;
    let private = |p: &std::path::Path, mode: u32| {
        if p.exists() {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
        }
    };
    private(&cfg.home, 0o711);
    let store =
        store::Store::open(&cfg.home.join("state.db")).map_err(|e| error::error_chain(&e))?;
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        private(&cfg.home.join(f), 0o600);
    }
    let token_path = cfg.home.join("token");
    let token = match std::fs::read_to_string(&token_path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let bytes: [u8; 32] = rand::random();
            let t: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&token_path)
                .map_err(|e| format!("cannot write {}: {e}", token_path.display()))?;
            // On disk before any client can have seen it.
            std::io::Write::write_all(&mut f, t.as_bytes())
                .and_then(|_| f.sync_all())
                .and_then(|_| std::fs::File::open(&cfg.home)?.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", token_path.display()))?;
            t
        }
    };
    let images = image::ImageStore::new(cfg.home.join("images"), cfg.base_cache.clone())
        .with_download_cache_cap(cfg.limits.download_cache_bytes);
    let core = Arc::new(engine::Core {
        cfg: cfg.engine(),
        cp: control::ControlPlane::new(store),
        machines,
        images,
        metrics: Default::default(),
    });
    let run_tokens = Arc::new(ci::RunTokens::default());
    let pipelines = ci::PipelineService::open(ci_config(&cfg), core.clone(), run_tokens.clone())
        .map_err(|e| error::error_chain(&e))?;
    Ok(Arc::new(AppState {
        dashboard: ui::Dashboard::default(),
        pipelines: Some(Arc::new(pipelines)),
        cfg,
        auth: state::Auth { token, run_tokens },
        core,
    }))
}

/// The part of the configuration the CI service reads.
fn ci_config(cfg: &DaemonConfig) -> ci::CiConfig {
    ci::CiConfig {
        home: cfg.home.clone(),
        exe: cfg.exe.clone(),
        default_endpoint: format!("http://{}", cfg.listen),
    }
}

/// Runs the API until `shutdown` resolves; the engine runs alongside.
pub async fn serve(
    st: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    limits::raise_nofile_limit();
    let listener = server::bind(st.cfg.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", st.cfg.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    std::fs::write(st.cfg.home.join("endpoint"), format!("http://{addr}"))
        .map_err(|e| e.to_string())?;
    tracing::info!(%addr, home = %st.cfg.home.display(), "scaleset daemon listening");
    let engine = tokio::spawn(engine::run(st.core.clone()));
    if let Some(svc) = &st.pipelines {
        svc.start();
    }
    let limits = st.cfg.limits.clone();
    server::run(listener, app(st), &limits, shutdown).await;
    engine.abort();
    Ok(())
}
