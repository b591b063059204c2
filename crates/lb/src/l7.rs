//! L7 (HTTP/1.1) data path: client-side server, per-backend keep-alive
//! pools, retries, and counting.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{
    AtomicBool, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1 as client_http1;
use hyper::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::core::{lock, BackendRt, Listener, OpenGuard, Target};
use crate::l4::{ActiveGuard, CONNECT_TIMEOUT, MAX_TRIES};
use crate::select::{pick, FlowKey, PROTO_TCP};

/// Idle pooled connections older than this are discarded.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Maximum idle connections kept per backend port.
const POOL_MAX_IDLE: usize = 512;

type Sender = client_http1::SendRequest<ReqBody>;

struct Idle {
    tx: Sender,
    since: Instant,
}

/// Keep-alive connection pool to one backend address.
pub(crate) struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<Idle>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("addr", &self.addr).finish()
    }
}

/// A checked-out connection.
struct Conn {
    tx: Sender,
    reused: bool,
}

impl Pool {
    pub fn new(addr: SocketAddr) -> Self {
        Pool {
            addr,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Closes every idle connection (draining / removed backends).
    pub fn clear_idle(&self) {
        let drained: Vec<Idle> = std::mem::take(&mut *lock(&self.idle));
        drop(drained);
    }

    fn pop(&self) -> Option<Idle> {
        lock(&self.idle).pop()
    }

    fn put(&self, backend: &BackendRt, tx: Sender) {
        if backend.draining.load(Relaxed) || tx.is_closed() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < POOL_MAX_IDLE {
            idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    /// Reuses a live idle connection or opens a new one.
    async fn get(&self) -> std::io::Result<Conn> {
        while let Some(mut c) = self.pop() {
            if c.tx.is_closed() || c.since.elapsed() > POOL_IDLE_TIMEOUT {
                continue;
            }
            if c.tx.ready().await.is_ok() {
                return Ok(Conn {
                    tx: c.tx,
                    reused: true,
                });
            }
        }
        // Boxed: the connect and handshake futures are large, and every
        // request's future would otherwise carry (and move) their space.
        Box::pin(self.connect()).await
    }

    async fn connect(&self) -> std::io::Result<Conn> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let _ = stream.set_nodelay(true);
        let (tx, conn) = client_http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { tx, reused: false })
    }
}

/// Request body sent to a backend.
enum ReqBody {
    Incoming(Incoming),
    Empty,
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Incoming(b) => Pin::new(b).poll_frame(cx),
            ReqBody::Empty => Poll::Ready(None),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Incoming(b) => b.is_end_stream(),
            ReqBody::Empty => true,
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Incoming(b) => b.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Keeps a backend connection and its accounting alive while the response
/// body streams; returns the connection to the pool at end of stream.
struct Lease {
    tx: Sender,
    target: Target,
    _active: ActiveGuard,
}

/// Response body returned to clients.
enum ProxyBody {
    Backend {
        body: Incoming,
        lease: Option<Lease>,
    },
    Static(Option<Bytes>),
}

impl ProxyBody {
    fn finish(lease: &mut Option<Lease>) {
        if let Some(l) = lease.take() {
            l.target.pool.put(&l.target.backend, l.tx);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Backend { body, lease } => {
                let r = Pin::new(&mut *body).poll_frame(cx);
                match &r {
                    Poll::Ready(None) => Self::finish(lease),
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => Self::finish(lease),
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(l) = lease.take() {
                            l.target.backend.failures.fetch_add(1, Relaxed);
                        }
                    }
                    _ => {}
                }
                r
            }
            ProxyBody::Static(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Backend { body, .. } => body.is_end_stream(),
            ProxyBody::Static(b) => b.is_none(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Backend { body, .. } => body.size_hint(),
            ProxyBody::Static(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Static(None) => SizeHint::with_exact(0),
        }
    }
}

/// Requests started and finished on one client connection, for its idle
/// timer.
#[derive(Default)]
struct ConnActivity {
    started: AtomicU64,
    finished: AtomicU64,
}

/// Counts a response as finished when hyper drops its body (fully written or
/// connection gone).
struct Finished(Arc<ConnActivity>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Relaxed);
    }
}

/// The idle timer checks this often; a connection closes between `idle` and
/// `idle + idle / IDLE_TICKS` after its last request.
const IDLE_TICKS: u32 = 8;

pub(crate) async fn serve_conn(
    l: Arc<Listener>,
    stream: TcpStream,
    peer: SocketAddr,
    _open: OpenGuard,
) {
    let _ = stream.set_nodelay(true);
    let mut shutdown = l.lb.shutdown.subscribe();
    let xff = HeaderValue::from_str(&peer.ip().to_string()).ok();
    let activity = Arc::new(ConnActivity::default());
    let svc = {
        let l = l.clone();
        let activity = activity.clone();
        service_fn(move |req| {
            let l = l.clone();
            let xff = xff.clone();
            activity.started.fetch_add(1, Relaxed);
            let done = Finished(activity.clone());
            async move {
                let resp = handle(&l, req, peer, xff).await;
                Ok::<_, Infallible>(resp.map(|body| ConnBody { body, _done: done }))
            }
        })
    };
    // Azure idle timeout for client keep-alive connections. hyper's
    // header_read_timeout would do it too, but arms and drops a timer entry
    // (boxed) for every request; this coarse per-connection ticker costs
    // nothing per request.
    let idle =
        Duration::from_secs(u64::from(l.view.load().rule.idle_timeout_in_minutes.max(1)) * 60);
    let tick = idle / IDLE_TICKS;
    let conn = server_http1::Builder::new()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let ticker = tokio::time::sleep(tick);
    tokio::pin!(ticker);
    let changed = shutdown.changed();
    tokio::pin!(changed);
    let mut side = SideWake::new();
    let (mut seen, mut idle_ticks) = (0, 0);
    let shut_down = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            if let Err(e) = r {
                debug!(error = %e, "client connection error");
            }
            return Poll::Ready(false);
        }
        let Some(waker) = side.fired(cx.waker()) else {
            return Poll::Pending;
        };
        let mut scx = Context::from_waker(&waker);
        if changed.as_mut().poll(&mut scx).is_ready() {
            return Poll::Ready(true);
        }
        while ticker.as_mut().poll(&mut scx).is_ready() {
            let started = activity.started.load(Relaxed);
            if started == seen && activity.finished.load(Relaxed) == started {
                idle_ticks += 1;
                if idle_ticks >= IDLE_TICKS {
                    debug!(peer = %peer, "client connection idle timeout");
                    return Poll::Ready(false);
                }
            } else {
                (seen, idle_ticks) = (started, 0);
            }
            ticker.as_mut().reset(Instant::now() + tick);
        }
        Poll::Pending
    })
    .await;
    if !shut_down {
        return;
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Lets a connection task poll its rarely-ready side futures (shutdown
/// signal, idle ticker) only after one of them woke it, instead of on every
/// wake-up of the busy HTTP connection (polling `watch::Receiver::changed`
/// takes a mutex each time).
struct SideWake {
    inner: Arc<SideInner>,
    waker: Waker,
    /// The task waker last handed to `inner`.
    task: Option<Waker>,
}

struct SideInner {
    fired: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for SideInner {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Release);
        if let Some(w) = lock(&self.task).as_ref() {
            w.wake_by_ref();
        }
    }
}

impl SideWake {
    fn new() -> Self {
        let inner = Arc::new(SideInner {
            // Poll the side futures once so that they register.
            fired: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        SideWake {
            waker: Waker::from(inner.clone()),
            inner,
            task: None,
        }
    }

    /// The waker to poll the side futures with, when one of them fired since
    /// the last call.
    fn fired(&mut self, task: &Waker) -> Option<Waker> {
        if !self.task.as_ref().is_some_and(|t| t.will_wake(task)) {
            self.task = Some(task.clone());
            *lock(&self.inner.task) = Some(task.clone());
        }
        self.inner
            .fired
            .swap(false, Acquire)
            .then(|| self.waker.clone())
    }
}

/// Response body to the client, tied to its connection's activity count.
struct ConnBody {
    body: ProxyBody,
    _done: Finished,
}

impl Body for ConnBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// A const: `HeaderName::from_static` at run time re-validates the name on
/// every call.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Same set as `HOP_BY_HOP`; a string match (length first) is cheaper than
/// seven `HeaderName` comparisons.
fn is_hop_by_hop(n: &HeaderName) -> bool {
    matches!(
        n.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none: one pass over their few names is much cheaper
    // than seven hashed removes.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    if let Some(c) = h.get(header::CONNECTION) {
        // Headers named in Connection are hop-by-hop too.
        let named: Vec<HeaderName> = c
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
}

fn static_response(status: StatusCode, msg: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::Static(Some(Bytes::from_static(msg.as_bytes()))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

fn build(head: &Head, body: ReqBody) -> Request<ReqBody> {
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.headers_mut() = head.headers.clone();
    req
}

enum TryError {
    /// Connect failed: nothing was sent.
    Connect,
    /// The request came back unsent.
    Unsent(Box<Request<ReqBody>>),
    /// Failed after (possibly) sending.
    Sent,
}

async fn handle(
    l: &Listener,
    req: Request<Incoming>,
    peer: SocketAddr,
    xff: Option<HeaderValue>,
) -> Response<ProxyBody> {
    let lb = &l.lb;
    lb.totals.requests.fetch_add(1, Relaxed);
    let resp = proxy(l, req, peer, xff).await;
    if resp.status().is_success() {
        lb.totals.responses_2xx.fetch_add(1, Relaxed);
    } else {
        lb.totals.responses_non_2xx.fetch_add(1, Relaxed);
    }
    resp
}

async fn proxy(
    l: &Listener,
    req: Request<Incoming>,
    peer: SocketAddr,
    xff: Option<HeaderValue>,
) -> Response<ProxyBody> {
    let lb = &l.lb;
    let (parts, body) = req.into_parts();
    let idempotent = is_idempotent(&parts.method);
    let bodyless = body.is_end_stream();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    if let Some(v) = xff {
        // One hashed lookup for both the read and the write.
        match headers.entry(X_FORWARDED_FOR) {
            Entry::Vacant(e) => {
                e.insert(v);
            }
            Entry::Occupied(mut e) => match e.get().to_str() {
                Ok(prev) => {
                    if let Ok(v) =
                        HeaderValue::from_str(&format!("{prev}, {}", v.to_str().unwrap_or("")))
                    {
                        e.insert(v);
                    }
                }
                Err(_) => {
                    e.insert(v);
                }
            },
        }
    }
    let mut head = Head {
        method: parts.method,
        uri: Uri::from(
            parts
                .uri
                .into_parts()
                .path_and_query
                .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/")),
        ),
        headers,
    };
    let mut pending: Option<Request<ReqBody>> = None;
    let mut first_body = Some(ReqBody::Incoming(body));
    let key = FlowKey {
        src: peer,
        dst: l.local,
        proto: PROTO_TCP,
    };
    let mut tried: [usize; MAX_TRIES] = [0; MAX_TRIES];
    let mut any_target = false;
    for attempt in 0..MAX_TRIES {
        let view = l.view.load();
        let rule = &view.rule;
        let rot = l.rotation.fetch_add(1, Relaxed);
        let Some(i) = pick(
            view.targets.len(),
            rule.layer,
            rule.load_distribution,
            &key,
            rot,
            |i| view.targets[i].backend.key,
            |i| tried[..attempt].contains(&(Arc::as_ptr(&view.targets[i].backend) as usize)),
        ) else {
            break;
        };
        any_target = true;
        let target = view.targets[i].clone();
        drop(view);
        tried[attempt] = Arc::as_ptr(&target.backend) as usize;
        if attempt > 0 {
            lb.totals.retries.fetch_add(1, Relaxed);
        }
        let active = ActiveGuard::new(&target.backend);
        // Request for this try: an unsent one from the previous try, the
        // original body on the first try, or a rebuilt body-less one.
        let req = match (pending.take(), first_body.take()) {
            (Some(r), b) => {
                first_body = b;
                r
            }
            (None, Some(b)) => {
                let mut r = Request::new(b);
                *r.method_mut() = head.method.clone();
                *r.uri_mut() = head.uri.clone();
                // Keep a copy only when a sent request may be replayed.
                *r.headers_mut() = if idempotent && bodyless {
                    head.headers.clone()
                } else {
                    std::mem::take(&mut head.headers)
                };
                r
            }
            (None, None) if bodyless => build(&head, ReqBody::Empty),
            (None, None) => break,
        };
        let res = match target.pool.get().await {
            Err(e) => {
                debug!(lb = %lb.name.load(), backend = %target.backend.id, error = %e, "backend connect failed");
                lb.mark_suspect(&target.backend);
                pending = Some(req);
                Err(TryError::Connect)
            }
            Ok(mut conn) => {
                let mut req = req;
                if !req.headers().contains_key(header::HOST) {
                    if let Ok(h) = HeaderValue::from_str(&target.addr.to_string()) {
                        req.headers_mut().insert(header::HOST, h);
                    }
                }
                match conn.tx.try_send_request(req).await {
                    Ok(resp) => Ok((conn.tx, resp)),
                    Err(mut e) => {
                        debug!(lb = %lb.name.load(), backend = %target.backend.id, error = %e.error(), reused = conn.reused, "backend request failed");
                        match e.take_message() {
                            Some(r) => Err(TryError::Unsent(Box::new(r))),
                            None => Err(TryError::Sent),
                        }
                    }
                }
            }
        };
        match res {
            Ok((tx, resp)) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let mut lease = Some(Lease {
                    tx,
                    target,
                    _active: active,
                });
                if body.is_end_stream() {
                    ProxyBody::finish(&mut lease);
                }
                return Response::from_parts(parts, ProxyBody::Backend { body, lease });
            }
            Err(err) => {
                target.backend.failures.fetch_add(1, Relaxed);
                drop(active);
                let retry = match err {
                    TryError::Connect => idempotent,
                    TryError::Unsent(r) => {
                        pending = Some(*r);
                        idempotent
                    }
                    TryError::Sent => idempotent && bodyless,
                };
                if !retry {
                    break;
                }
            }
        }
    }
    lb.totals.failed.fetch_add(1, Relaxed);
    if !any_target {
        static_response(StatusCode::SERVICE_UNAVAILABLE, "no healthy backend\n")
    } else {
        static_response(StatusCode::BAD_GATEWAY, "bad gateway\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_match_agrees_with_the_list() {
        for n in &HOP_BY_HOP {
            assert!(is_hop_by_hop(n), "{n}");
        }
        for n in [header::HOST, header::CONTENT_LENGTH, X_FORWARDED_FOR] {
            assert!(!is_hop_by_hop(&n), "{n}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-a"));
        h.insert(
            HeaderName::from_static("x-a"),
            HeaderValue::from_static("1"),
        );
        h.insert(header::HOST, HeaderValue::from_static("h"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::HOST));
    }
}
