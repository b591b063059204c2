//! The web dashboard: pages and assets embedded in the binary, sign-in through a one-time URL,
//! a session cookie (HttpOnly, SameSite=Strict) with a CSRF token for every mutation, and live
//! views as server-sent events.
//!
//! - `GET /` (also `/ui`, `/ui/`): the page, only with a session (its CSRF token in a `<meta>`).
//! - `GET /ui/login?once=<secret>`: consumes the one-time secret, sets the cookie, redirects to
//!   `/` (the secret leaves the address bar and history).
//! - `POST /ui/login-url` with the daemon's bearer token (never a run's): a new one-time URL
//!   (`scaleset dashboard url`).
//! - `POST /ui/logout`: ends the session.
//! - `/ui/app.js`, `/ui/app.css`: the assets (with a session too).
//! - `/ui/api/arm/<ARM path>`: the ARM API itself, authenticated by the session; `/ui/api/ci/…`
//!   the CI front end's JSON endpoints (`/scaleset/…`) likewise.
//! - `GET /ui/api/view?view=…`: a view's data once; `GET /ui/events?view=…` the same as a
//!   stream, an event whenever it changes; `GET /ui/events/log?run=N` a run's log lines live.
//!
//! Every request but the login needs the session; every one not GET or HEAD also needs the
//! session's CSRF token in `X-CSRF-Token`. The bearer-token API is unchanged: cookies are
//! read here only, never by `/subscriptions/...` or `/scaleset/...`.
pub mod session;
pub mod sse;
pub mod views;

use crate::error::ApiError;
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use session::{Denied, Sessions};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Event streams open at once, over all sessions (a browser opens at most 6 per host).
pub const MAX_STREAMS: usize = 16;
/// A view stream ends after this long; `EventSource` reconnects by itself.
const STREAM_LIFETIME: Duration = Duration::from_secs(3600);
/// How often a view is recomputed for its stream.
const VIEW_EVERY: Duration = Duration::from_secs(1);
/// A stream with nothing new sends a comment this often.
const KEEP_ALIVE_TICKS: u32 = 15;
/// Lines of a run's log a stream starts with (its tail); longer lines are cut.
pub const LOG_TAIL_LINES: usize = 2000;
pub const MAX_LOG_LINE: usize = 4096;

/// The dashboard's state in the daemon.
pub struct Dashboard {
    sessions: Mutex<Sessions>,
    streams: Arc<Semaphore>,
}

impl Default for Dashboard {
    fn default() -> Self {
        Dashboard {
            sessions: Mutex::default(),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }
}

fn now_ms() -> u64 {
    control::now_ms()
}

/// 32 random bytes as hex.
fn secret() -> String {
    let b: [u8; 32] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Dashboard {
    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new one-time sign-in secret (for `/ui/login?once=`).
    pub fn mint(&self) -> String {
        let s = secret();
        self.sessions().add_once(&s, now_ms());
        s
    }
}

/// The one-time sign-in URL for `secret` on the daemon at `base` (`http://host:port`).
pub fn login_url(base: &str, secret: &str) -> String {
    format!("{base}/ui/login?once={secret}")
}

pub fn is_ui_path(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/")
}

/// The session cookie's name: per port, since browsers share cookies across a host's ports.
fn cookie_name(st: &AppState) -> String {
    format!("scaleset_session_{}", st.cfg.listen.port())
}

fn session_id<'a>(st: &AppState, headers: &'a HeaderMap) -> Option<&'a str> {
    let name = cookie_name(st);
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| session::cookie(h, &name))
}

/// Headers every dashboard answer carries: no caching, no framing, no sniffing, scripts and
/// styles from the daemon only.
fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

/// A small HTML page (sign-in needed, link used): no data, only the message.
fn html_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>scaleset</title><h1>scaleset</h1><p>{}</p>",
        views::escape_html(message)
    );
    (status, [("content-type", "text/html; charset=utf-8")], body).into_response()
}

/// Entry point for `/`, `/ui` and everything under `/ui/`.
pub async fn handle(
    st: Arc<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = uri.path();
    let r = match (method.as_str(), path) {
        ("GET", "/ui/login") => login(&st, &uri),
        ("POST", "/ui/login-url") => mint_url(&st, &headers),
        _ => match authorize(&st, &method, &headers) {
            Ok(sid) => {
                return secure(signed_in(st, method, uri, headers, body, sid).await);
            }
            Err(e)
                if method == Method::GET
                    && !path.starts_with("/ui/api")
                    && !path.starts_with("/ui/events") =>
            {
                html_page(StatusCode::UNAUTHORIZED, &e.to_string())
            }
            Err(e) => return secure(crate::limits::refuse(e.into(), Some(body))),
        },
    };
    crate::limits::linger(body);
    secure(r)
}

/// The session of a request (and its CSRF token for anything but GET and HEAD).
fn authorize(st: &AppState, method: &Method, headers: &HeaderMap) -> Result<String, Denied> {
    let sid = session_id(st, headers);
    let sessions = st.dashboard.sessions();
    if method == Method::GET || method == Method::HEAD {
        sessions.session(sid, now_ms())?;
    } else {
        let csrf = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
        sessions.check_mutation(sid, csrf, now_ms())?;
    }
    Ok(sid.unwrap_or_default().to_string())
}

fn login(st: &AppState, uri: &Uri) -> Response {
    let q = crate::query_map(uri);
    let once = q.get("once").map(String::as_str).unwrap_or("");
    let (sid, csrf) = (secret(), secret());
    if let Err(e) = st.dashboard.sessions().sign_in(once, &sid, &csrf, now_ms()) {
        return html_page(StatusCode::FORBIDDEN, &e.to_string());
    }
    let cookie = format!(
        "{}={sid}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        cookie_name(st),
        session::SESSION_TTL_MS / 1000
    );
    let mut r = (StatusCode::SEE_OTHER, [("location", "/")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert("set-cookie", v);
    }
    r
}

/// `POST /ui/login-url`: only the daemon token mints sign-in URLs (a run's credential never).
fn mint_url(st: &AppState, headers: &HeaderMap) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    if !token.is_some_and(|t| control::ct_eq(t.as_bytes(), st.auth.token.as_bytes())) {
        return ApiError::Client {
            status: StatusCode::UNAUTHORIZED,
            code: "AuthenticationFailed",
            message: "a sign-in URL needs the daemon token (Authorization: Bearer)".into(),
        }
        .into_response();
    }
    let base = match headers.get("host").and_then(|h| h.to_str().ok()) {
        Some(h) => format!("http://{h}"),
        None => format!("http://{}", st.cfg.listen),
    };
    let url = login_url(&base, &st.dashboard.mint());
    (StatusCode::OK, axum::Json(json!({ "url": url }))).into_response()
}

async fn signed_in(
    st: Arc<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
    sid: String,
) -> Response {
    let path = uri.path().to_string();
    if let Some(arm_path) = path.strip_prefix("/ui/api/arm") {
        let q = crate::query_map(&uri);
        return crate::arm(
            &st,
            &method,
            arm_path,
            &q,
            &headers,
            body,
            crate::Caller::Session,
        )
        .await;
    }
    if let Some(ci_path) = path.strip_prefix("/ui/api/ci") {
        return ci(&st, &method, ci_path, &uri, &headers, body).await;
    }
    crate::limits::linger(body);
    let text = |ct: &'static str, s: &'static str| {
        (StatusCode::OK, [("content-type", ct)], s).into_response()
    };
    match (method.as_str(), path.as_str()) {
        ("GET", "/" | "/ui" | "/ui/") => index(&st, &sid),
        ("GET", "/ui/app.js") => text("text/javascript; charset=utf-8", APP_JS),
        ("GET", "/ui/app.css") => text("text/css; charset=utf-8", APP_CSS),
        ("POST", "/ui/logout") => {
            st.dashboard.sessions().sign_out(&sid);
            let clear = format!(
                "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
                cookie_name(&st)
            );
            let mut r = StatusCode::NO_CONTENT.into_response();
            if let Ok(v) = HeaderValue::from_str(&clear) {
                r.headers_mut().insert("set-cookie", v);
            }
            r
        }
        ("GET", "/ui/api/view") => match views::View::parse(&crate::query_map(&uri)) {
            Ok(v) => {
                let mut rates = views::Rates::default();
                (
                    StatusCode::OK,
                    axum::Json(views::render(&st, &v, &mut rates).await),
                )
                    .into_response()
            }
            Err(e) => e.into_response(),
        },
        ("GET", "/ui/events") => view_events(st, &uri, sid),
        ("GET", "/ui/events/log") => log_events(st, &uri, &headers, sid),
        _ => ApiError::not_found("NotFound", format!("no dashboard endpoint {method} {path}"))
            .into_response(),
    }
}

/// The page, with the session's CSRF token for its scripts.
fn index(st: &AppState, sid: &str) -> Response {
    let csrf = match st.dashboard.sessions().session(Some(sid), now_ms()) {
        Ok(s) => s.csrf.clone(),
        Err(e) => return html_page(StatusCode::UNAUTHORIZED, &e.to_string()),
    };
    let page = INDEX.replace("{{CSRF}}", &csrf);
    (
        StatusCode::OK,
        [("content-type", "text/html; charset=utf-8")],
        page,
    )
        .into_response()
}

/// `/ui/api/ci/…`: the CI front end's JSON endpoints, as `/scaleset/…` answers them.
async fn ci(
    st: &AppState,
    method: &Method,
    path: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let Some(svc) = st.pipelines.clone() else {
        return ApiError::not_found("PipelinesUnavailable", "pipelines are not enabled")
            .into_response();
    };
    if path.starts_with("/git") {
        return crate::limits::refuse(
            ApiError::not_found("NotFound", "git is served at /scaleset/git"),
            Some(body),
        );
    }
    let limit = crate::limits::JSON_BODY_LIMIT;
    let body =
        match crate::limits::read_body(body, headers, limit, st.cfg.limits.body_timeout).await {
            Ok(b) => b,
            Err(e) => return crate::limits::refuse(e, None),
        };
    let q = crate::query_map(uri);
    match crate::pipelines::api(&svc, method, path, &q, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn stream_permit(st: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    st.dashboard
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Client {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "TooManyStreams",
            message: format!("at most {MAX_STREAMS} dashboard event streams may be open at once"),
        })
}

fn event_stream(body: Body) -> Response {
    (
        StatusCode::OK,
        [
            ("content-type", "text/event-stream"),
            ("x-accel-buffering", "no"),
        ],
        body,
    )
        .into_response()
}

/// What a view stream carries between ticks.
struct ViewStream {
    st: Arc<AppState>,
    view: views::View,
    sid: String,
    rates: views::Rates,
    last: String,
    id: u64,
    ticks: u32,
    started: tokio::time::Instant,
    _permit: OwnedSemaphorePermit,
}

/// `GET /ui/events?view=…`: the view now, then again whenever it changes (checked every
/// second), until the session ends or the stream's lifetime is over.
fn view_events(st: Arc<AppState>, uri: &Uri, sid: String) -> Response {
    let view = match views::View::parse(&crate::query_map(uri)) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let permit = match stream_permit(&st) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let s = ViewStream {
        st,
        view,
        sid,
        rates: Default::default(),
        last: String::new(),
        id: 0,
        ticks: 0,
        started: tokio::time::Instant::now(),
        _permit: permit,
    };
    let stream = futures_util::stream::unfold(s, |mut s| async move {
        loop {
            if s.started.elapsed() > STREAM_LIFETIME
                || s.st
                    .dashboard
                    .sessions()
                    .session(Some(&s.sid), now_ms())
                    .is_err()
            {
                return None;
            }
            if s.id > 0 || s.ticks > 0 {
                tokio::time::sleep(VIEW_EVERY).await;
            }
            s.ticks += 1;
            let text = views::render(&s.st, &s.view, &mut s.rates)
                .await
                .to_string();
            if text != s.last {
                s.id += 1;
                let ev = sse::event("view", Some(s.id), &text);
                s.last = text;
                s.ticks = 0;
                return Some((Ok::<_, std::io::Error>(Bytes::from(ev)), s));
            }
            if s.ticks >= KEEP_ALIVE_TICKS {
                s.ticks = 0;
                return Some((Ok(Bytes::from(sse::comment("keep-alive"))), s));
            }
        }
    });
    event_stream(Body::from_stream(stream))
}

/// A run's log as a stream: lines numbered from 1, the first `skip` left out.
struct LogStream {
    rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    skip: usize,
    n: usize,
    done: bool,
    st: Arc<AppState>,
    sid: String,
    _permit: OwnedSemaphorePermit,
}

impl LogStream {
    /// The next event: a line, a keep-alive comment, or `end`; `None` after `end` or when the
    /// session is gone.
    async fn next(&mut self) -> Option<String> {
        while !self.done {
            if self
                .st
                .dashboard
                .sessions()
                .session(Some(&self.sid), now_ms())
                .is_err()
            {
                return None;
            }
            match tokio::time::timeout(Duration::from_secs(15), self.rx.recv()).await {
                Err(_) => return Some(sse::comment("keep-alive")),
                Ok(None) => {
                    self.done = true;
                    return Some(sse::event("end", None, ""));
                }
                Ok(Some(line)) => {
                    self.n += 1;
                    if self.n > self.skip {
                        let line = views::truncate(line.trim_end_matches('\n'), MAX_LOG_LINE);
                        return Some(sse::event("line", Some(self.n as u64), line));
                    }
                }
            }
        }
        None
    }
}

/// `GET /ui/events/log?run=N`: the run's log as `line` events (id = line number; the last
/// `LOG_TAIL_LINES` first, or from after `Last-Event-ID` on a reconnect), then `end` when the
/// run is over.
fn log_events(st: Arc<AppState>, uri: &Uri, headers: &HeaderMap, sid: String) -> Response {
    let result = (|| {
        let q = crate::query_map(uri);
        let id = q
            .get("run")
            .and_then(|r| r.parse::<u64>().ok())
            .ok_or_else(|| ApiError::bad_request("InvalidRunId", "`run` must be a run id"))?;
        let svc = st.pipelines.clone().ok_or_else(|| {
            ApiError::not_found("PipelinesUnavailable", "pipelines are not enabled")
        })?;
        let total = svc.logs(id)?.lines().count();
        let resume = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let skip = resume
            .unwrap_or(0)
            .max(total.saturating_sub(LOG_TAIL_LINES));
        let rx = svc.follow_logs(id)?;
        let permit = stream_permit(&st)?;
        Ok::<_, ApiError>((rx, skip, permit))
    })();
    let (rx, skip, permit) = match result {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let s = LogStream {
        rx,
        skip,
        n: 0,
        done: false,
        st,
        sid,
        _permit: permit,
    };
    let stream = futures_util::stream::unfold(s, |mut s| async move {
        let ev = s.next().await?;
        Some((Ok::<_, std::io::Error>(Bytes::from(ev)), s))
    });
    event_stream(Body::from_stream(stream))
}
