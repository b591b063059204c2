//! The dashboard's HTTP surface in-process (`app()` + tower's oneshot): the one-time sign-in,
//! the session cookie, the CSRF check on every mutation, the ARM and CI APIs through the session,
//! views and their event streams, the streams' bound. The browser test is
//! `crates/cli/tests/dashboard.rs`.
mod common;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use common::Env;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const SETUP: common::Setup = common::Setup {
    kind: "dash",
    subnet: "10.213.161.0/24",
    listen: "127.0.0.1:7150",
    prefix: "t",
};

fn env(tag: &str) -> Env {
    common::env_with(&SETUP, tag, common::nspawn("t"))
}

async fn send(
    e: &Env,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response<Body> {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    api::app(e.st.clone())
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap()
}

async fn text(r: Response<Body>) -> String {
    String::from_utf8_lossy(&r.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

/// Signs in with a fresh one-time URL; the `Cookie` header value and the page's CSRF token.
async fn sign_in(e: &Env) -> (String, String) {
    let bearer = format!("Bearer {}", e.st.auth.token);
    let r = send(
        e,
        "POST",
        "/ui/login-url",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = serde_json::from_str(&text(r).await).unwrap();
    let url = v["url"].as_str().unwrap();
    let path = url.trim_start_matches("http://127.0.0.1:7150");
    assert!(path.starts_with("/ui/login?once="), "{url}");
    let r = send(e, "GET", path, &[], "").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    // The link works once.
    assert_eq!(
        send(e, "GET", path, &[], "").await.status(),
        StatusCode::FORBIDDEN
    );
    let cookie = set.split(';').next().unwrap().to_string();
    assert!(cookie.starts_with("scaleset_session_7150="), "{cookie}");
    let page = text(send(e, "GET", "/", &[("cookie", &cookie)], "").await).await;
    let csrf = page
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    assert_eq!(csrf.len(), 64);
    (cookie, csrf)
}

const GROUP: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/dash-rg?api-version=2024-11-01";

#[tokio::test]
async fn nothing_without_a_session() {
    let e = env("anon");
    for path in [
        "/",
        "/ui",
        "/ui/app.js",
        "/ui/app.css",
        "/ui/api/view?view=overview",
        "/ui/events?view=overview",
        "/ui/events/log?run=1",
        &format!("/ui/api/arm{GROUP}"),
        "/ui/api/ci/repos",
    ] {
        let r = send(&e, "GET", path, &[], "").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(r.headers()["cache-control"], "no-store");
        let body = text(r).await;
        assert!(
            !body.contains("app.js") && !body.contains("csrf"),
            "{path}: {body}"
        );
    }
    // A made-up cookie is no session.
    let r = send(
        &e,
        "GET",
        "/ui/api/view",
        &[("cookie", "scaleset_session_7150=00")],
        "",
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Unknown one-time secrets are refused.
    for q in [
        "",
        "?once=",
        "?once=abc",
        &format!("?once={}", "f".repeat(5000)),
    ] {
        let r = send(&e, "GET", &format!("/ui/login{q}"), &[], "").await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{q}");
        assert!(r.headers().get("set-cookie").is_none());
    }
}

#[tokio::test]
async fn only_the_daemon_token_mints_sign_in_urls() {
    let e = env("mint");
    let run = format!("Bearer {}", e.st.auth.run_tokens.mint(7));
    for auth in [None, Some("Bearer nope"), Some(run.as_str())] {
        let h: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let r = send(&e, "POST", "/ui/login-url", &h, "").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
    }
    sign_in(&e).await;
}

#[tokio::test]
async fn mutations_need_the_sessions_csrf_token() {
    let e = env("csrf");
    let (cookie, csrf) = sign_in(&e).await;
    let arm = format!("/ui/api/arm{GROUP}");
    let body = json!({"location": "local"}).to_string();
    // The last hex digit changed (appending a fixed "0" was the real token one time in 16).
    let last = if csrf.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &csrf[..63]);
    assert_ne!(forged, csrf);
    for (what, h, want) in [
        (
            "no token",
            vec![("cookie", cookie.as_str())],
            StatusCode::FORBIDDEN,
        ),
        (
            "forged token",
            vec![
                ("cookie", cookie.as_str()),
                ("x-csrf-token", forged.as_str()),
            ],
            StatusCode::FORBIDDEN,
        ),
        (
            "no cookie",
            vec![("x-csrf-token", csrf.as_str())],
            StatusCode::UNAUTHORIZED,
        ),
    ] {
        let r = send(&e, "PUT", &arm, &h, &body).await;
        assert_eq!(r.status(), want, "{what}");
        let v: Value = serde_json::from_str(&text(r).await).unwrap();
        assert!(v["error"]["code"].is_string(), "{what}: {v}");
    }
    // Nothing was created; the cookie alone is no credential for the ARM API either.
    let r = send(
        &e,
        "PUT",
        GROUP,
        &[("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())],
        &body,
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(e
        .st
        .cp
        .list_groups("00000000-0000-0000-0000-000000000000")
        .unwrap()
        .is_empty());
    // With both, the ARM API answers as it does to the bearer token.
    let ok = [
        ("cookie", cookie.as_str()),
        ("x-csrf-token", csrf.as_str()),
        ("content-type", "application/json"),
    ];
    let r = send(&e, "PUT", &arm, &ok, &body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = send(&e, "GET", &arm, &[("cookie", cookie.as_str())], "").await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = send(
        &e,
        "GET",
        "/ui/api/view?view=overview",
        &[("cookie", cookie.as_str())],
        "",
    )
    .await;
    let v: Value = serde_json::from_str(&text(r).await).unwrap();
    assert_eq!(v["groups"], json!(["dash-rg"]));
    let r = send(
        &e,
        "GET",
        "/ui/api/ci/repos",
        &[("cookie", cookie.as_str())],
        "",
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    // Signing out ends the session (with its token too).
    let r = send(&e, "POST", "/ui/logout", &[("cookie", cookie.as_str())], "").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = send(&e, "POST", "/ui/logout", &ok, "").await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = send(
        &e,
        "GET",
        "/ui/api/view",
        &[("cookie", cookie.as_str())],
        "",
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn pages_assets_and_headers() {
    let e = env("pages");
    let (cookie, _) = sign_in(&e).await;
    for (path, ct) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = send(&e, "GET", path, &[("cookie", cookie.as_str())], "").await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(ct),
            "{path}"
        );
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        assert_eq!(r.headers()["x-frame-options"], "DENY");
    }
    let r = send(
        &e,
        "GET",
        "/ui/api/view?view=nope",
        &[("cookie", cookie.as_str())],
        "",
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn views_stream_as_server_sent_events_and_are_bounded() {
    let e = env("sse");
    let (cookie, _) = sign_in(&e).await;
    let mut open = vec![];
    for _ in 0..api::ui::MAX_STREAMS {
        let r = send(
            &e,
            "GET",
            "/ui/events?view=overview",
            &[("cookie", cookie.as_str())],
            "",
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        open.push(r.into_body());
    }
    let r = send(
        &e,
        "GET",
        "/ui/events?view=overview",
        &[("cookie", cookie.as_str())],
        "",
    )
    .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let first = open[0].frame().await.unwrap().unwrap().into_data().unwrap();
    let first = String::from_utf8_lossy(&first).into_owned();
    assert!(first.starts_with("event: view\nid: 1\ndata: {"), "{first}");
    assert!(first.contains("\"groups\":[]"), "{first}");
    // A closed stream gives its place back.
    open.clear();
    let r = send(
        &e,
        "GET",
        "/ui/events?view=overview",
        &[("cookie", cookie.as_str())],
        "",
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
}
