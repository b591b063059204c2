//! The HTTP application: three static HTML pages, a health probe, a CPU-heavy page (`/work`,
//! for load tests and autoscale demos) and a 404.
//!
//! Pages are rendered once at startup: the instance name and image version
//! are fixed for the life of the process, so each request only clones a
//! reference-counted `Bytes`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::Semaphore;

/// Upper bound for the `?sleep_ms=N` test knob on `/`.
pub const MAX_SLEEP_MS: u64 = 10_000;

/// Upper bound for `/work?ms=N`: the CPU time one request may burn.
pub const MAX_WORK_MS: u64 = 1_000;

/// `/work` requests burning CPU at once; more wait their turn (each holds a thread).
const WORK_CONCURRENCY: usize = 8;

/// Application Health extension "rich health state" body.
pub const HEALTH_BODY: &str = r#"{"ApplicationHealthState":"Healthy"}"#;

const INTRO: &str = "Sample app to demo Azure DevOps for VMSS.";

/// The router's state.
struct App {
    pages: Pages,
    /// Bounds the `/work` requests burning CPU at once.
    work: Semaphore,
}

/// Pre-rendered pages.
#[derive(Debug, Clone)]
pub struct Pages {
    home: Bytes,
    page1: Bytes,
    page2: Bytes,
}

impl Pages {
    pub fn new(instance: &str, image: &str) -> Self {
        let footer = format!(
            "<footer>Served by instance <span id=\"instance\">{}</span> from image <span id=\"image\">{}</span></footer>",
            escape_html(instance),
            escape_html(image)
        );
        Pages {
            home: render(
                "Home",
                "the Home page",
                &[
                    ("/page1", "Navigate to page1"),
                    ("/page2", "Navigate to Page2"),
                ],
                &footer,
            ),
            page1: render(
                "Page1",
                "Page1",
                &[("/", "Navigate to Home"), ("/page2", "Navigate to Page2")],
                &footer,
            ),
            page2: render(
                "Page2",
                "Page2",
                &[("/", "Navigate to Home"), ("/page1", "Navigate to Page1")],
                &footer,
            ),
        }
    }
}

fn render(title: &str, location: &str, links: &[(&str, &str)], footer: &str) -> Bytes {
    let mut html = String::with_capacity(512);
    html.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>");
    html.push_str(title);
    html.push_str("</title>\n</head>\n<body>\n<p>");
    html.push_str(INTRO);
    html.push_str(" You are currently on ");
    html.push_str(location);
    html.push_str(".</p>\n");
    for (href, text) in links {
        html.push_str("<p><a href=\"");
        html.push_str(href);
        html.push_str("\">");
        html.push_str(text);
        html.push_str("</a></p>\n");
    }
    html.push_str(footer);
    html.push_str("\n</body>\n</html>\n");
    Bytes::from(html)
}

/// Minimal HTML escaping for text and attribute contexts.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Extracts `sleep_ms` from a raw query string.
///
/// `Ok(None)` when absent, `Err(())` when present but not a non-negative
/// integer. The value is capped at [`MAX_SLEEP_MS`].
pub fn parse_sleep_ms(query: Option<&str>) -> Result<Option<u64>, ()> {
    parse_ms(query, "sleep_ms", MAX_SLEEP_MS)
}

/// Extracts `ms` for `/work`: `Ok(None)` when absent, `Err(())` when not a
/// non-negative integer, capped at [`MAX_WORK_MS`].
pub fn parse_work_ms(query: Option<&str>) -> Result<Option<u64>, ()> {
    parse_ms(query, "ms", MAX_WORK_MS)
}

/// The last `key=N` of a raw query string, capped at `max`.
fn parse_ms(query: Option<&str>, key: &str, max: u64) -> Result<Option<u64>, ()> {
    let Some(query) = query else {
        return Ok(None);
    };
    let mut found = None;
    for pair in query.split('&') {
        let (k, value) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            let ms: u64 = value.parse().map_err(|_| ())?;
            found = Some(ms.min(max));
        }
    }
    Ok(found)
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the one we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Burns `cpu` of this thread's CPU time, however long the machine's CPU quota makes that
/// take; returns a checksum so the work is kept.
pub fn burn(cpu: Duration) -> u64 {
    let start = thread_cpu_time();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while thread_cpu_time() - start < cpu {
        for _ in 0..1_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        x = std::hint::black_box(x);
    }
    x
}

pub fn router(pages: Pages) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/page1", get(page1))
        .route("/page2", get(page2))
        .route("/health", get(health))
        .route("/work", get(work))
        .fallback(not_found)
        .with_state(Arc::new(App {
            pages,
            work: Semaphore::new(WORK_CONCURRENCY),
        }))
}

async fn home(State(app): State<Arc<App>>, RawQuery(query): RawQuery) -> Response {
    match parse_sleep_ms(query.as_deref()) {
        Ok(None) => {}
        Ok(Some(ms)) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Err(()) => {
            return (
                StatusCode::BAD_REQUEST,
                "sleep_ms must be a non-negative integer\n",
            )
                .into_response()
        }
    }
    Html(app.pages.home.clone()).into_response()
}

async fn page1(State(app): State<Arc<App>>) -> Html<Bytes> {
    Html(app.pages.page1.clone())
}

async fn page2(State(app): State<Arc<App>>) -> Html<Bytes> {
    Html(app.pages.page2.clone())
}

/// `/work?ms=N`: burns N ms of CPU (at most [`MAX_WORK_MS`]) on a blocking thread, so the
/// other pages and the health probe keep answering.
async fn work(State(app): State<Arc<App>>, RawQuery(query): RawQuery) -> Response {
    let ms = match parse_work_ms(query.as_deref()) {
        Ok(Some(ms)) => ms,
        Ok(None) | Err(()) => {
            return (
                StatusCode::BAD_REQUEST,
                "ms must be given as a non-negative integer\n",
            )
                .into_response()
        }
    };
    let Ok(_permit) = app.work.acquire().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    match tokio::task::spawn_blocking(move || burn(Duration::from_millis(ms))).await {
        Ok(_) => format!("worked {ms} ms\n").into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn health() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], HEALTH_BODY)
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "404 Not Found\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape_html("vm-0"), "vm-0");
    }

    #[test]
    fn parses_sleep_ms() {
        assert_eq!(parse_sleep_ms(None), Ok(None));
        assert_eq!(parse_sleep_ms(Some("")), Ok(None));
        assert_eq!(parse_sleep_ms(Some("a=1&b")), Ok(None));
        assert_eq!(parse_sleep_ms(Some("sleep_ms=250")), Ok(Some(250)));
        assert_eq!(
            parse_sleep_ms(Some("x=1&sleep_ms=99999")),
            Ok(Some(MAX_SLEEP_MS))
        );
        assert_eq!(parse_sleep_ms(Some("sleep_ms=-1")), Err(()));
        assert_eq!(parse_sleep_ms(Some("sleep_ms")), Err(()));
    }

    #[test]
    fn parses_work_ms() {
        assert_eq!(parse_work_ms(None), Ok(None));
        assert_eq!(parse_work_ms(Some("sleep_ms=5")), Ok(None));
        assert_eq!(parse_work_ms(Some("ms=20")), Ok(Some(20)));
        assert_eq!(parse_work_ms(Some("ms=1&ms=7")), Ok(Some(7)));
        assert_eq!(parse_work_ms(Some("ms=99999999")), Ok(Some(MAX_WORK_MS)));
        assert_eq!(parse_work_ms(Some("ms=1e3")), Err(()));
        assert_eq!(parse_work_ms(Some("ms=")), Err(()));
    }

    #[test]
    fn burn_uses_the_cpu_time_asked_for() {
        let before = thread_cpu_time();
        burn(Duration::from_millis(30));
        let used = thread_cpu_time() - before;
        assert!(used >= Duration::from_millis(30), "{used:?}");
    }

    #[test]
    fn renders_pages() {
        let pages = Pages::new("vm<1>", "img&v2");
        let home = std::str::from_utf8(&pages.home).unwrap();
        assert!(home.contains(
            "<p>Sample app to demo Azure DevOps for VMSS. You are currently on the Home page.</p>"
        ));
        assert!(home.contains(r#"<a href="/page1">Navigate to page1</a>"#));
        assert!(home.contains(r#"<a href="/page2">Navigate to Page2</a>"#));
        assert!(home.contains(r#"<span id="instance">vm&lt;1&gt;</span>"#));
        assert!(home.contains(r#"<span id="image">img&amp;v2</span>"#));
        let p1 = std::str::from_utf8(&pages.page1).unwrap();
        assert!(p1.contains("You are currently on Page1.</p>"));
        let p2 = std::str::from_utf8(&pages.page2).unwrap();
        assert!(p2.contains("You are currently on Page2.</p>"));
        assert!(p2.contains(r#"<a href="/page1">Navigate to Page1</a>"#));
    }
}
