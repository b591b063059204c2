//! The HTTP front end of the CI service (crate `ci`: repositories, the pipelines' naming rule,
//! pushes, the run queue and worker): the daemon's `/scaleset/...` endpoints (outside ARM).
//! Here are routing, request parsing, auth and rendering; the work is the service's, and its
//! errors become HTTP answers in `crate::error`.
//!
//! - `/scaleset/git/<name>.git/...`: git smart HTTP (`git http-backend`) over the repositories in
//!   `$SCALESET_HOME/repos`. Auth: HTTP Basic whose password is the daemon token (any user name),
//!   or `Authorization: Bearer <token>`; an unauthenticated request gets a Basic challenge so
//!   `git push http://x:<token>@host/scaleset/git/app.git` works. Pushes to one repository are
//!   serialized; each updated ref is matched against the repository's pipelines and the matching
//!   runs are queued (`ci::PipelineService::begin_push`). The push answer carries `remote:` lines
//!   naming the queued runs (or saying that no pipeline matched); `GET /scaleset/repos/{name}`
//!   shows the last push's outcome too.
//! - `POST /scaleset/hooks/<name>`: a mirror's push webhook, authenticated by the mirror's own
//!   secret (never the daemon token).
//! - JSON endpoints: `GET /scaleset/repos`, `GET|PUT|DELETE /scaleset/repos/{name}`,
//!   `GET /scaleset/pipelines`, `GET /scaleset/pipelines/{name}`,
//!   `GET|POST /scaleset/pipelines/{name}/runs` (POST body `{"branch": "main"}`, optional),
//!   `GET /scaleset/runs[?pipeline=]`, `GET /scaleset/runs/{id}`,
//!   `GET /scaleset/runs/{id}/logs[?follow=true]` (text; follow streams until the run ends),
//!   `POST /scaleset/runs/{id}/cancel`.
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use ci::PipelineService;
use pipeline::git;
use pipeline::runner::{PipelineDefinition, RunStatus};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

type Reply = Result<Response, ApiError>;

fn bearer_or_basic_ok(st: &AppState, headers: &HeaderMap) -> Option<String> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (user, token) = if let Some(t) = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
    {
        ("scaleset".to_string(), t.to_string())
    } else {
        let b = v
            .strip_prefix("Basic ")
            .or_else(|| v.strip_prefix("basic "))?;
        let dec = b64_decode(b.trim())?;
        let s = String::from_utf8(dec).ok()?;
        let (u, p) = s.split_once(':')?;
        (
            if u.is_empty() {
                "scaleset".into()
            } else {
                u.to_string()
            },
            p.to_string(),
        )
    };
    control::ct_eq(token.as_bytes(), st.auth.token.as_bytes()).then_some(user)
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn unavailable() -> ApiError {
    ApiError::Client {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "PipelinesUnavailable",
        message: "pipelines are not enabled in this daemon".into(),
    }
}

/// Entry point for every `/scaleset/...` request.
pub async fn handle(
    st: Arc<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Webhooks authenticate with the repository's own secret, never the daemon token.
    if let Some(name) = uri.path().strip_prefix("/scaleset/hooks/") {
        if method != Method::POST {
            let e = ApiError::Client {
                status: StatusCode::METHOD_NOT_ALLOWED,
                code: "MethodNotAllowed",
                message: "webhooks are POST requests".into(),
            };
            return crate::limits::refuse(e, Some(body));
        }
        let Some(svc) = st.pipelines.clone() else {
            return crate::limits::refuse(unavailable(), Some(body));
        };
        return webhook(&st, &svc, name, &headers, body).await;
    }
    let Some(user) = bearer_or_basic_ok(&st, &headers) else {
        let e = ApiError::Client {
            status: StatusCode::UNAUTHORIZED,
            code: "AuthenticationFailed",
            message: "Authentication failed: send the daemon token as a Bearer token or as the HTTP Basic password.".into(),
        };
        let mut r = crate::limits::refuse(e, Some(body));
        r.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static("Basic realm=\"scaleset\""),
        );
        return r;
    };
    let Some(svc) = st.pipelines.clone() else {
        return crate::limits::refuse(unavailable(), Some(body));
    };
    let path = uri
        .path()
        .strip_prefix("/scaleset")
        .unwrap_or("")
        .to_string();
    if let Some(rest) = path.strip_prefix("/git") {
        return git_request(
            &st,
            &svc,
            &method,
            rest,
            uri.query().unwrap_or(""),
            &headers,
            body,
            &user,
        )
        .await;
    }
    let q = crate::query_map(&uri);
    let limit = crate::limits::JSON_BODY_LIMIT;
    let body =
        match crate::limits::read_body(body, &headers, limit, st.cfg.limits.body_timeout).await {
            Ok(b) => b,
            Err(e) => return crate::limits::refuse(e, None),
        };
    match api(&svc, &method, &path, &q, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn git_request(
    st: &AppState,
    svc: &Arc<PipelineService>,
    method: &Method,
    path_info: &str,
    query: &str,
    headers: &HeaderMap,
    body: Body,
    user: &str,
) -> Response {
    let Some(gp) = git::parse_path_info(method.as_str(), path_info, query) else {
        let e = ApiError::not_found(
            "RepositoryNotFound",
            format!("no repository at {path_info}"),
        );
        return crate::limits::refuse(e, Some(body));
    };
    if !svc.repos.path(&gp.repo).is_dir() {
        let e = ApiError::not_found(
            "RepositoryNotFound",
            format!(
                "repository `{}` does not exist; create it with `scaleset repo create {}`",
                gp.repo, gp.repo
            ),
        );
        return crate::limits::refuse(e, Some(body));
    }
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let req = crate::gitcgi::Request {
        method: method.as_str(),
        path_info,
        query,
        content_type: h("content-type"),
        content_encoding: h("content-encoding"),
        git_protocol: h("git-protocol"),
        content_length: crate::limits::content_length(headers),
        remote_user: Some(user),
        remote_addr: Some("127.0.0.1"),
    };
    let push = if gp.is_push_post {
        Some(svc.begin_push(&gp.repo).await)
    } else {
        None
    };
    let (cap, idle) = (st.cfg.limits.max_push_bytes, st.cfg.limits.body_timeout);
    let (resp, prefix) =
        match crate::gitcgi::http_backend(svc.repos.root(), &req, body, cap, idle).await {
            Ok(r) => r,
            Err(e) => return crate::limits::refuse(git_body_error(&gp.repo, e), None),
        };
    let mut out_body = resp.body;
    if let Some(push) = push.filter(|_| resp.status < 300) {
        let notes = push.finish().await;
        push_notes(&mut out_body, &prefix, &notes);
    }
    let mut r = Response::builder().status(resp.status);
    for (k, v) in &resp.headers {
        if !k.eq_ignore_ascii_case("content-length") {
            r = r.header(k, v);
        }
    }
    r.body(Body::from(out_body))
        .unwrap_or_else(|e| ApiError::internal(e).into_response())
}

/// The push's notes as `remote:` lines: side-band messages before the answer's final flush
/// packet, when the client asked for a side band.
fn push_notes(out_body: &mut Vec<u8>, prefix: &[u8], notes: &[String]) {
    // The capabilities are on the first command line, well within the prefix.
    let sideband = prefix.windows(9).any(|w| w == b"side-band");
    if sideband && out_body.ends_with(b"0000") {
        out_body.truncate(out_body.len() - 4);
        for n in notes {
            let msg = format!("scaleset: {n}\n");
            out_body.extend_from_slice(format!("{:04x}", msg.len() + 5).as_bytes());
            out_body.push(2);
            out_body.extend_from_slice(msg.as_bytes());
        }
        out_body.extend_from_slice(b"0000");
    }
}

/// A git request body the daemon refused: too large, too slow, or broken.
fn git_body_error(repo: &str, e: crate::gitcgi::CgiError) -> ApiError {
    use crate::gitcgi::CgiError;
    let (status, code) = match &e {
        CgiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PushTooLarge"),
        CgiError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "RequestTimeout"),
        CgiError::Client(_) => (StatusCode::BAD_REQUEST, "InvalidRequestContent"),
        CgiError::Io(_) => return ApiError::internal(e),
    };
    let message = match &e {
        CgiError::TooLarge(cap) => format!(
            "the push to `{repo}` is larger than this daemon's limit of {cap} bytes \
             (scaleset serve --max-push-bytes, SCALESET_MAX_PUSH_BYTES); nothing was changed"
        ),
        e => format!("push to `{repo}`: {e}; nothing was changed"),
    };
    tracing::warn!(repo, %message, "git request refused");
    ApiError::Client {
        status,
        code,
        message,
    }
}

/// `POST /scaleset/hooks/{repo}`: a push webhook from GitHub or Azure Repos for a mirror.
/// Authenticated by the mirror's secret (see `pipeline::webhook`); the payload only says that
/// refs moved: the mirror is fetched and the refs that really moved trigger pipelines like a
/// push.
async fn webhook(
    st: &AppState,
    svc: &Arc<PipelineService>,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let name = crate::route::decode_segment(name);
    let auth = match webhook_credentials(svc, &name, headers) {
        Ok(a) => a,
        Err(e) => return crate::limits::refuse(e, Some(body)),
    };
    let limit = crate::limits::WEBHOOK_BODY_LIMIT;
    let body =
        match crate::limits::read_body(body, headers, limit, st.cfg.limits.body_timeout).await {
            Ok(b) => b,
            Err(e) => return crate::limits::refuse(e, None),
        };
    match webhook_push(svc, &name, headers, &auth, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// A webhook call's credentials: the mirror's secret, the signature, the Basic password.
struct HookAuth {
    secret: String,
    signature: Option<String>,
    password: Option<String>,
}

fn hook_unauthenticated(e: pipeline::webhook::HookError) -> ApiError {
    ApiError::Client {
        status: StatusCode::UNAUTHORIZED,
        code: "AuthenticationFailed",
        message: e.to_string(),
    }
}

/// Everything about a webhook's authentication that needs no body: a mirror with a secret, and
/// a signature or a password (which is checked here). Nothing is read before this passes.
fn webhook_credentials(
    svc: &PipelineService,
    name: &str,
    headers: &HeaderMap,
) -> Result<HookAuth, ApiError> {
    use pipeline::webhook::authenticate;
    // Unknown repositories and repositories without a secret look the same as a bad secret.
    let secret = svc.webhook_secret(name);
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let password = h("authorization")
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| b64_decode(b.trim()))
        .and_then(|d| String::from_utf8(d).ok())
        .and_then(|up| up.split_once(':').map(|(_, p)| p.to_string()));
    let signature = h("x-hub-signature-256").map(str::to_string);
    if signature.is_none() {
        authenticate(&secret, b"", None, password.as_deref()).map_err(hook_unauthenticated)?;
    } else if secret.is_empty() {
        authenticate("", b"", signature.as_deref(), None).map_err(hook_unauthenticated)?;
    }
    Ok(HookAuth {
        secret,
        signature,
        password,
    })
}

/// An authenticated webhook's payload: fetch the mirror, trigger what really moved.
async fn webhook_push(
    svc: &Arc<PipelineService>,
    name: &str,
    headers: &HeaderMap,
    auth: &HookAuth,
    body: &[u8],
) -> Reply {
    use pipeline::webhook::{authenticate, parse, HookEvent};
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    authenticate(
        &auth.secret,
        body,
        auth.signature.as_deref(),
        auth.password.as_deref(),
    )
    .map_err(hook_unauthenticated)?;
    let refs = match parse(h("x-github-event"), body)
        .map_err(|e| ApiError::bad_request("InvalidWebhookPayload", e.to_string()))?
    {
        HookEvent::Ping => return json_ok(StatusCode::OK, json!({"notes": ["pong"]})),
        HookEvent::Ignored(ev) => {
            return json_ok(
                StatusCode::OK,
                json!({"notes": [format!("event `{ev}` ignored: only pushes trigger pipelines")]}),
            )
        }
        HookEvent::Push(refs) => refs,
    };
    let notes = svc.hook_push(name, &refs).await?;
    json_ok(StatusCode::OK, json!({ "notes": notes }))
}

/// A request body as JSON; an empty body is `null`.
fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "InvalidRequestContent",
            format!("the body is not JSON: {e}"),
        )
    })
}

fn json_ok(status: StatusCode, v: Value) -> Reply {
    Ok((status, axum::Json(v)).into_response())
}

/// A repository as `GET /scaleset/repos/{name}` shows it.
pub(crate) fn repo_json(svc: &PipelineService, info: &git::RepoInfo) -> Value {
    let endpoint = svc.endpoint();
    let defs = svc.default_definitions(info);
    json!({
        "name": info.name,
        "url": format!("{endpoint}/scaleset/git/{}.git", info.name),
        "defaultBranch": PipelineService::default_branch(info),
        "branches": info.branches,
        "pipelines": defs.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
        "lastPush": svc.last_push(&info.name),
        "mirror": info.mirror,
        "webhookUrl": info.mirror.as_ref().map(|_| format!("{endpoint}/scaleset/hooks/{}", info.name)),
    })
}

/// A pipeline as `GET /scaleset/pipelines/{name}` shows it.
pub(crate) fn def_json(svc: &PipelineService, d: &PipelineDefinition) -> Value {
    let last = svc.last_run(&d.name);
    json!({
        "name": d.name,
        "repository": d.repo,
        "yamlPath": d.yaml_path,
        "defaultBranch": d.default_branch,
        "lastRun": last.as_ref().map(|r| r.id),
        "lastResult": last.as_ref().and_then(|r| r.result.map(|x| x.to_string())).or_else(|| last.as_ref().map(|r| format!("{:?}", r.status).to_lowercase())),
    })
}

/// A run as `GET /scaleset/runs/{id}` shows it: its record, its `state` and when it was queued.
pub(crate) fn run_json(r: &pipeline::runner::RunRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert(
            "state".into(),
            json!(match (&r.status, &r.result) {
                (RunStatus::Completed, Some(res)) => res.to_string().to_lowercase(),
                (s, _) => format!("{s:?}").to_lowercase(),
            }),
        );
        m.insert(
            "queued".into(),
            json!(pipeline::runner::rfc3339(r.queued_ms)),
        );
    }
    v
}

fn list_json(v: Vec<Value>) -> Reply {
    json_ok(StatusCode::OK, json!({ "value": v }))
}

fn run_id(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request("InvalidRunId", format!("`{s}` is not a run id")))
}

/// The JSON endpoints (see the module docs).
pub(crate) async fn api(
    svc: &Arc<PipelineService>,
    method: &Method,
    path: &str,
    q: &HashMap<String, String>,
    body: &[u8],
) -> Reply {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segs.as_slice()) {
        ("GET", ["repos"]) => list_json(
            svc.list_repos()?
                .iter()
                .map(|i| repo_json(svc, i))
                .collect(),
        ),
        ("GET", ["repos", name]) => json_ok(StatusCode::OK, repo_json(svc, &svc.repo(name)?)),
        ("PUT", ["repos", name]) => put_repo(svc, name, body).await,
        ("DELETE", ["repos", name]) => {
            // The build directories of its pipelines go with it.
            svc.delete_repo(name)?;
            Ok(StatusCode::OK.into_response())
        }
        ("GET", ["pipelines"]) => list_json(
            svc.all_definitions()
                .iter()
                .map(|d| def_json(svc, d))
                .collect(),
        ),
        ("GET", ["pipelines", name]) => {
            json_ok(StatusCode::OK, def_json(svc, &svc.definition(name)?))
        }
        ("GET", ["pipelines", name, "runs"]) => {
            list_json(svc.list_runs(Some(name))?.iter().map(run_json).collect())
        }
        ("POST", ["pipelines", name, "runs"]) => queue_run(svc, name, body),
        ("GET", ["runs"]) => {
            let list = svc.list_runs(q.get("pipeline").map(String::as_str))?;
            list_json(list.iter().map(run_json).collect())
        }
        ("GET", ["runs", id]) => json_ok(StatusCode::OK, run_json(&svc.run(run_id(id)?)?)),
        ("GET", ["runs", id, "logs"]) => run_logs(svc, run_id(id)?, q),
        ("POST", ["runs", id, "cancel"]) => {
            json_ok(StatusCode::ACCEPTED, run_json(&svc.cancel(run_id(id)?)?))
        }
        _ => Err(ApiError::not_found(
            "NotFound",
            format!("no such endpoint: {method} /scaleset{path}"),
        )),
    }
}

/// `PUT /scaleset/repos/{name}`: a hosted repository, or a mirror of `mirror` (with its webhook
/// secret).
async fn put_repo(svc: &Arc<PipelineService>, name: &str, body: &[u8]) -> Reply {
    let spec = json_body(body)?;
    if let Some(url) = spec.get("mirror") {
        let url = url.as_str().ok_or_else(|| {
            ApiError::bad_request("InvalidParameter", "`mirror` must be a repository URL")
        })?;
        let secret = spec["webhookSecret"].as_str().ok_or_else(|| {
            ApiError::bad_request(
                "InvalidParameter",
                "a mirror needs `webhookSecret`: webhook calls are authenticated with it",
            )
        })?;
        let info = svc.create_mirror(name, url, secret).await?;
        return json_ok(StatusCode::CREATED, repo_json(svc, &info));
    }
    let (info, created) = svc.create_repo(name)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json_ok(status, repo_json(svc, &info))
}

/// `POST /scaleset/pipelines/{name}/runs`: queues a manual run of a branch.
fn queue_run(svc: &Arc<PipelineService>, name: &str, body: &[u8]) -> Reply {
    let d = svc.definition(name)?;
    let req = json_body(body)?;
    let rec = svc.queue_manual(d, req["branch"].as_str())?;
    json_ok(StatusCode::CREATED, run_json(&rec))
}

/// `GET /scaleset/runs/{id}/logs[?follow=true]`.
fn run_logs(svc: &Arc<PipelineService>, id: u64, q: &HashMap<String, String>) -> Reply {
    let text = [("content-type", "text/plain; charset=utf-8")];
    let follow = q.get("follow").is_some_and(|v| v == "true" || v == "1");
    if !follow {
        return Ok((StatusCode::OK, text, svc.logs(id)?).into_response());
    }
    let rx = svc.follow_logs(id)?;
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|s| (Ok::<_, std::io::Error>(Bytes::from(s)), rx))
    });
    Ok((StatusCode::OK, text, Body::from_stream(stream)).into_response())
}
