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

use crate::balance::{ActiveGuard, Failure, GaveUp, Tries, Try, CONNECT_TIMEOUT};
use crate::core::{lock, BackendRt, Lb, Listener, OpenGuard, Target};
use crate::status::{mono_ns, FrontendCounters};
use crate::upstream::{self, Framing, RawConn, RespHead, Step};

mod front;

/// Idle pooled connections older than this are discarded.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Maximum idle connections kept per backend port.
const POOL_MAX_IDLE: usize = 512;

type Sender = client_http1::SendRequest<ReqBody>;

struct Idle {
    conn: RawConn,
    since: Instant,
}

/// Keep-alive connection pool to one backend address. Body-less requests
/// drive a pooled connection inline (`upstream`); a request with a body
/// borrows one for hyper's client and gets it back after a clean exchange.
pub(crate) struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<Idle>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("addr", &self.addr).finish()
    }
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

    fn put(&self, backend: &BackendRt, mut conn: RawConn) {
        if backend.draining.load(Relaxed) || !conn.is_clean() {
            return;
        }
        conn.shrink();
        let mut idle = lock(&self.idle);
        if idle.len() < POOL_MAX_IDLE {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Reuses a live idle connection or opens a new one; the flag says
    /// whether it was reused.
    async fn get(&self) -> std::io::Result<(RawConn, bool)> {
        loop {
            let Some(mut c) = lock(&self.idle).pop() else {
                break;
            };
            if c.since.elapsed() <= POOL_IDLE_TIMEOUT && c.conn.is_reusable() {
                return Ok((c.conn, true));
            }
        }
        // Boxed: the connect future is large, and every request's future
        // would otherwise carry (and move) its space.
        Box::pin(async {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            let _ = stream.set_nodelay(true);
            Ok((RawConn::new(stream), false))
        })
        .await
    }

    /// Runs hyper's client over a pooled connection for one request with a
    /// body. The connection comes back to the pool when the whole request
    /// body went out and the response ended cleanly with keep-alive (the
    /// lease sets `reuse` then).
    async fn lend_to_hyper(
        self: &Arc<Self>,
        backend: &Arc<BackendRt>,
        conn: RawConn,
        sent: Arc<AtomicBool>,
        reuse: Arc<AtomicBool>,
    ) -> std::io::Result<Sender> {
        let (tx, conn) = client_http1::Builder::new()
            .handshake(TokioIo::new(conn.into_stream()))
            .await
            .map_err(std::io::Error::other)?;
        let (pool, backend) = (self.clone(), backend.clone());
        tokio::spawn(async move {
            // Completes once the lease dropped `tx` and the exchange is over.
            if let Ok(parts) = conn.without_shutdown().await {
                if sent.load(Acquire) && reuse.load(Acquire) && parts.read_buf.is_empty() {
                    pool.put(&backend, RawConn::new(parts.io.into_inner()));
                }
            }
        });
        Ok(tx)
    }
}

/// Request body sent to a backend; `sent` turns true once all of it went
/// out (only then may the connection be reused).
struct ReqBody {
    body: Incoming,
    sent: Arc<AtomicBool>,
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.body).poll_frame(cx);
        match &r {
            Poll::Ready(None) => this.sent.store(true, Release),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.sent.store(true, Release),
            _ => {}
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Keeps a backend connection and its accounting alive while the response
/// body streams; returns the connection to the pool at end of stream.
struct Lease {
    tx: Sender,
    target: Target,
    _active: ActiveGuard,
    /// Read by the connection's task once `tx` is dropped.
    reuse: Arc<AtomicBool>,
    keep_alive: bool,
}

/// Like `Lease`, for an inline-driven connection.
struct RawLease {
    conn: RawConn,
    target: Target,
    _active: ActiveGuard,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Response body returned to clients.
enum ProxyBody {
    Backend {
        body: Incoming,
        lease: Option<Lease>,
    },
    Raw {
        lease: Option<RawLease>,
        framing: Framing,
        keep_alive: bool,
    },
    Static(Option<Bytes>),
}

impl ProxyBody {
    fn finish(lease: &mut Option<Lease>) {
        if let Some(l) = lease.take() {
            l.reuse.store(l.keep_alive, Release);
            drop(l.tx);
        }
    }

    fn finish_raw(lease: &mut Option<RawLease>, reusable: bool) {
        if let Some(l) = lease.take() {
            if reusable {
                l.target.pool.put(&l.target.backend, l.conn);
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Backend { body, lease } => {
                let r = Pin::new(&mut *body).poll_frame(cx);
                match &r {
                    Poll::Ready(None) => Self::finish(lease),
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => Self::finish(lease),
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(l) = lease.take() {
                            l.target.backend.failed(Failure::Exchange);
                        }
                    }
                    _ => {}
                }
                r.map_err(Into::into)
            }
            ProxyBody::Raw {
                lease,
                framing,
                keep_alive,
            } => {
                let Some(l) = lease.as_mut() else {
                    return Poll::Ready(None);
                };
                match std::task::ready!(upstream::poll_body(&mut l.conn, framing, *keep_alive, cx))
                {
                    Ok(Step::Frame(f)) => {
                        // Last bytes of a sized body: hand the connection back now.
                        if *framing == Framing::Length(0) {
                            Self::finish_raw(lease, *keep_alive);
                        }
                        Poll::Ready(Some(Ok(f)))
                    }
                    Ok(Step::End { reusable }) => {
                        Self::finish_raw(lease, reusable);
                        Poll::Ready(None)
                    }
                    Err(e) => {
                        if let Some(l) = lease.take() {
                            l.target.backend.failed(Failure::Exchange);
                        }
                        Poll::Ready(Some(Err(e.into())))
                    }
                }
            }
            ProxyBody::Static(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Backend { body, .. } => body.is_end_stream(),
            ProxyBody::Raw { lease, framing, .. } => {
                lease.is_none() || *framing == Framing::Length(0)
            }
            ProxyBody::Static(b) => b.is_none(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Backend { body, .. } => body.size_hint(),
            ProxyBody::Raw { lease: None, .. } => SizeHint::with_exact(0),
            ProxyBody::Raw { framing, .. } => framing
                .exact()
                .map_or_else(SizeHint::default, SizeHint::with_exact),
            ProxyBody::Static(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Static(None) => SizeHint::with_exact(0),
        }
    }
}

/// Requests started and finished on one client connection, for its idle and
/// header timers. Only this connection's task touches it (relaxed atomics, no
/// contention).
struct ConnActivity {
    started: AtomicU64,
    finished: AtomicU64,
    /// Ticks of the connection's ticker so far.
    ticks: AtomicU64,
    /// A request head is being read: set by the first byte that arrives while
    /// no request is in flight (and at accept), cleared when a head is parsed.
    head_pending: AtomicBool,
    /// `ticks` when `head_pending` was set.
    head_since: AtomicU64,
    /// When the request in flight's head was parsed (`mono_ns`); hyper serves a connection's
    /// requests one after the other, so one slot per connection (no growth of the per-request
    /// future).
    started_ns: AtomicU64,
    /// The frontend's counters, where each request's duration goes.
    stats: Arc<FrontendCounters>,
    /// Shutdown: finish the request in flight (if any), then close.
    closing: AtomicBool,
}

impl ConnActivity {
    fn new(stats: Arc<FrontendCounters>) -> Self {
        ConnActivity {
            started_ns: AtomicU64::new(0),
            stats,
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            // A new connection owes its first head from the moment it is accepted.
            head_pending: AtomicBool::new(true),
            head_since: AtomicU64::new(0),
            closing: AtomicBool::new(false),
        }
    }

    fn bytes_read(&self) {
        if !self.head_pending.load(Relaxed)
            && self.started.load(Relaxed) == self.finished.load(Relaxed)
        {
            self.head_since.store(self.ticks.load(Relaxed), Relaxed);
            self.head_pending.store(true, Relaxed);
        }
    }

    fn head_parsed(&self) {
        self.started_ns.store(mono_ns(), Relaxed);
        self.head_pending.store(false, Relaxed);
        self.started.fetch_add(1, Relaxed);
    }

    /// Whether a pending head has had `limit` ticks.
    fn head_overdue(&self, limit: u64) -> bool {
        self.head_pending.load(Relaxed)
            && self.ticks.load(Relaxed) - self.head_since.load(Relaxed) >= limit
    }
}

/// The client stream, telling the connection's activity when bytes arrive.
struct Watched {
    io: TcpStream,
    activity: Arc<ConnActivity>,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_read();
        }
        r
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Counts a response as finished when hyper drops its body (fully written or
/// connection gone), and its duration since its head was parsed.
struct Finished(Arc<ConnActivity>);

impl Drop for Finished {
    fn drop(&mut self) {
        let a = &self.0;
        a.finished.fetch_add(1, Relaxed);
        let started = a.started_ns.load(Relaxed);
        a.stats
            .latency
            .observe_ns(mono_ns().saturating_sub(started));
    }
}

/// The idle timer checks at least this often per idle timeout; a connection
/// closes between `idle` and `idle + idle / IDLE_TICKS` after its last request.
const IDLE_TICKS: u32 = 8;
/// Likewise per header timeout.
const HEADER_TICKS: u32 = 4;

/// The connection ticker's period and how many ticks make the idle and the
/// header timeouts.
fn tick_plan(idle: Duration, header: Duration) -> (Duration, u64, u64) {
    let tick = (idle / IDLE_TICKS)
        .min(header / HEADER_TICKS)
        .max(Duration::from_millis(10));
    let ticks = |d: Duration| d.as_nanos().div_ceil(tick.as_nanos()).max(1) as u64;
    (tick, ticks(idle), ticks(header))
}

pub(crate) async fn serve_conn(
    l: Arc<Listener>,
    stream: TcpStream,
    peer: SocketAddr,
    _open: OpenGuard,
) {
    let _ = stream.set_nodelay(true);
    let mut shutdown = l.lb.shutdown.subscribe();
    let xff = HeaderValue::from_str(&peer.ip().to_string()).ok();
    let activity = Arc::new(ConnActivity::new(l.stats.clone()));
    // Azure idle timeout for client keep-alive connections, and the header
    // timeout (slowloris). hyper's header_read_timeout would do the latter,
    // but arms and drops a timer entry (boxed) for every request; this coarse
    // per-connection ticker costs nothing per request.
    let (idle, header) = {
        let v = l.view.load();
        (
            Duration::from_secs(u64::from(v.rule.idle_timeout_in_minutes.max(1)) * 60),
            v.limits.header_timeout(),
        )
    };
    let (tick, idle_limit, header_limit) = tick_plan(idle, header);
    let conn = front::drive(l, stream, peer, activity.clone(), xff);
    tokio::pin!(conn);
    let ticker = tokio::time::sleep(tick);
    tokio::pin!(ticker);
    let changed = shutdown.changed();
    tokio::pin!(changed);
    let mut side = SideWake::new();
    let (mut seen, mut idle_ticks) = (0, 0);
    let shut_down = std::future::poll_fn(|cx| {
        if conn.as_mut().poll(cx).is_ready() {
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
            activity.ticks.fetch_add(1, Relaxed);
            if activity.head_overdue(header_limit) {
                debug!(peer = %peer, "client connection header timeout");
                return Poll::Ready(false);
            }
            let started = activity.started.load(Relaxed);
            if started == seen && activity.finished.load(Relaxed) == started {
                idle_ticks += 1;
                if idle_ticks >= idle_limit {
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
    // The driver sees the flag when polled: an idle connection closes, a busy
    // one after its response (hyper's graceful shutdown, once handed over).
    activity.closing.store(true, Relaxed);
    conn.await;
}

/// Serves the rest of a connection with hyper, from the buffered bytes on:
/// the requests the inline codec leaves (bodies, upgrades, HTTP/1.0,
/// malformed or oversized heads) get hyper's checks and answers.
async fn serve_hyper(
    l: Arc<Listener>,
    io: front::Rewind,
    peer: SocketAddr,
    activity: Arc<ConnActivity>,
    xff: Option<HeaderValue>,
) {
    let svc = {
        let activity = activity.clone();
        service_fn(move |req: Request<Incoming>| {
            let l = l.clone();
            let xff = xff.clone();
            activity.head_parsed();
            let done = Finished(activity.clone());
            async move {
                let (parts, body) = req.into_parts();
                let head = Head {
                    method: parts.method,
                    uri: parts.uri,
                    headers: parts.headers,
                };
                let resp = handle(&l, head, Some(body), peer, xff).await;
                Ok::<_, Infallible>(resp.map(|body| ConnBody { body, _done: done }))
            }
        })
    };
    let conn = server_http1::Builder::new()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut shutting = false;
    let r = std::future::poll_fn(|cx| {
        if !shutting && activity.closing.load(Relaxed) {
            shutting = true;
            conn.as_mut().graceful_shutdown();
        }
        conn.as_mut().poll(cx)
    })
    .await;
    if let Err(e) = r {
        debug!(error = %e, "client connection error");
    }
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
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
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

/// The head sent to backends: hop-by-hop headers stripped, the client's
/// address appended to `X-Forwarded-For`, the URI in origin form.
fn forward_head(req: Head, xff: Option<HeaderValue>) -> Head {
    let mut headers = req.headers;
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
    let path = req
        .uri
        .into_parts()
        .path_and_query
        .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
    Head {
        method: req.method,
        uri: Uri::from(path),
        headers,
    }
}

/// Sends a body-less request over an inline-driven connection and reads
/// the response head. Errors are logged here.
async fn send_raw(lb: &Lb, target: &Target, head: &Head) -> Result<(RawConn, RespHead), Failure> {
    let (mut conn, reused) = match target.pool.get().await {
        Ok(c) => c,
        Err(e) => {
            debug!(lb = %lb.name.load(), backend = %target.backend.id, error = %e, "backend connect failed");
            return Err(Failure::connect(&e));
        }
    };
    let sent = conn
        .send_head(&head.method, &head.uri, &head.headers, || {
            target.addr.to_string()
        })
        .await;
    let res = match sent {
        Ok(()) => conn.read_head(&head.method).await,
        Err(e) => Err(e.into()),
    };
    match res {
        Ok(rh) => Ok((conn, rh)),
        Err(e) => {
            debug!(lb = %lb.name.load(), backend = %target.backend.id, error = %e, reused, "backend request failed");
            Err(Failure::Exchange)
        }
    }
}

fn raw_response(rh: RespHead, conn: RawConn, t: Try) -> Response<ProxyBody> {
    let RespHead {
        status,
        mut headers,
        reason,
        framing,
        keep_alive,
    } = rh;
    strip_hop_by_hop(&mut headers);
    let mut lease = Some(RawLease {
        conn,
        target: t.target,
        _active: t.active,
    });
    if framing == Framing::Length(0) {
        ProxyBody::finish_raw(&mut lease, keep_alive);
    }
    let mut resp = Response::new(ProxyBody::Raw {
        lease,
        framing,
        keep_alive,
    });
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    if let Some(r) = reason {
        resp.extensions_mut().insert(r);
    }
    resp
}

/// A failed try; `true` when the request could be sent again (it went out
/// whole, or not at all). Whether it is, depends on the method too.
type Resendable = bool;

/// One try of a body-less request, driven inline.
async fn try_raw(
    lb: &Lb,
    tries: &Tries<'_>,
    t: Try,
    head: &Head,
) -> Result<Response<ProxyBody>, Resendable> {
    match send_raw(lb, &t.target, head).await {
        Ok((conn, rh)) => {
            t.target.backend.responses.count(rh.status.as_u16());
            Ok(raw_response(rh, conn, t))
        }
        Err(failure) => {
            tries.failed(t, failure);
            // Sent or not, a body-less request can go again (as with hyper's
            // client below, only when it is idempotent).
            Err(true)
        }
    }
}

/// A request with a body across its tries: the client's body on the first
/// try, afterwards the request hyper handed back unsent.
struct Outgoing {
    pending: Option<Request<ReqBody>>,
    first: Option<ReqBody>,
}

impl Outgoing {
    fn take(&mut self, head: &mut Head) -> Option<Request<ReqBody>> {
        if let Some(r) = self.pending.take() {
            return Some(r);
        }
        let mut r = Request::new(self.first.take()?);
        *r.method_mut() = head.method.clone();
        *r.uri_mut() = head.uri.clone();
        *r.headers_mut() = std::mem::take(&mut head.headers);
        Some(r)
    }
}

/// One try of a request with a body, through hyper's client over a pooled
/// connection.
async fn try_hyper(
    lb: &Lb,
    tries: &Tries<'_>,
    t: Try,
    out: &mut Outgoing,
    head: &mut Head,
) -> Result<Response<ProxyBody>, Resendable> {
    let Some(mut req) = out.take(head) else {
        return Err(false);
    };
    let sent = req.body().sent.clone();
    let reuse = Arc::new(AtomicBool::new(false));
    let target = &t.target;
    let conn = match target.pool.get().await {
        Ok((c, reused)) => target
            .pool
            .lend_to_hyper(&target.backend, c, sent, reuse.clone())
            .await
            .map(|tx| (tx, reused)),
        Err(e) => Err(e),
    };
    let (mut tx, reused) = match conn {
        Ok(c) => c,
        Err(e) => {
            debug!(lb = %lb.name.load(), backend = %target.backend.id, error = %e, "backend connect failed");
            out.pending = Some(req);
            tries.failed(t, Failure::connect(&e));
            return Err(true);
        }
    };
    if !req.headers().contains_key(header::HOST) {
        if let Ok(h) = HeaderValue::from_str(&target.addr.to_string()) {
            req.headers_mut().insert(header::HOST, h);
        }
    }
    match tx.try_send_request(req).await {
        Ok(resp) => {
            t.target.backend.responses.count(resp.status().as_u16());
            Ok(hyper_response(resp, tx, t, reuse))
        }
        Err(mut e) => {
            debug!(lb = %lb.name.load(), backend = %target.backend.id, error = %e.error(), reused, "backend request failed");
            // A request that went out (its streamed body) cannot be replayed.
            out.pending = e.take_message();
            let resendable = out.pending.is_some();
            tries.failed(t, Failure::Exchange);
            Err(resendable)
        }
    }
}

fn hyper_response(
    resp: Response<Incoming>,
    tx: Sender,
    t: Try,
    reuse: Arc<AtomicBool>,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    let keep_alive = parts.version == hyper::Version::HTTP_11
        && !parts.headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .unwrap_or("close")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"))
        });
    strip_hop_by_hop(&mut parts.headers);
    let mut lease = Some(Lease {
        tx,
        target: t.target,
        _active: t.active,
        reuse,
        keep_alive,
    });
    if body.is_end_stream() {
        ProxyBody::finish(&mut lease);
    }
    Response::from_parts(parts, ProxyBody::Backend { body, lease })
}

/// Proxies one request; `body` is `None` for a request known to have none
/// (the inline codec's).
async fn handle(
    l: &Listener,
    req: Head,
    body: Option<Incoming>,
    peer: SocketAddr,
    xff: Option<HeaderValue>,
) -> Response<ProxyBody> {
    let lb = &l.lb;
    lb.totals.requests.fetch_add(1, Relaxed);
    let resp = proxy(l, req, body, peer, xff).await;
    if resp.status().is_success() {
        lb.totals.responses_2xx.fetch_add(1, Relaxed);
    } else {
        lb.totals.responses_non_2xx.fetch_add(1, Relaxed);
    }
    l.stats.responses.count(resp.status().as_u16());
    resp
}

async fn proxy(
    l: &Listener,
    req: Head,
    body: Option<Incoming>,
    peer: SocketAddr,
    xff: Option<HeaderValue>,
) -> Response<ProxyBody> {
    let lb = &l.lb;
    let idempotent = is_idempotent(&req.method);
    let body = body.filter(|b| !b.is_end_stream());
    let bodyless = body.is_none();
    let mut head = forward_head(req, xff);
    let mut out = Outgoing {
        pending: None,
        first: body.map(|body| ReqBody {
            body,
            sent: Arc::new(AtomicBool::new(false)),
        }),
    };
    let mut tries = Tries::new(l, peer);
    while let Some(t) = tries.next() {
        let res = if bodyless {
            try_raw(lb, &tries, t, &head).await
        } else {
            try_hyper(lb, &tries, t, &mut out, &mut head).await
        };
        match res {
            Ok(resp) => return resp,
            Err(resendable) if resendable && idempotent => continue,
            Err(_) => break,
        }
    }
    match tries.give_up() {
        GaveUp::NoBackend => {
            static_response(StatusCode::SERVICE_UNAVAILABLE, "no healthy backend\n")
        }
        GaveUp::Failed => static_response(StatusCode::BAD_GATEWAY, "bad gateway\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_plan_covers_both_timeouts() {
        let s = Duration::from_secs;
        // Azure's 4 min idle with the default 10 s header timeout: 2.5 s ticks.
        assert_eq!(
            tick_plan(s(240), s(10)),
            (Duration::from_millis(2500), 96, 4)
        );
        // A long header timeout: the idle timeout sets the pace, as before.
        assert_eq!(tick_plan(s(240), s(3600)), (s(30), 8, 120));
        // Rounding up: a timeout never fires early.
        assert_eq!(
            tick_plan(s(240), Duration::from_millis(1000)),
            (Duration::from_millis(250), 960, 4)
        );
        assert_eq!(tick_plan(s(1), s(1)).0, Duration::from_millis(125));
    }

    #[test]
    fn head_pending_follows_reads_and_requests() {
        let a = ConnActivity::new(Default::default());
        assert!(a.head_overdue(0), "a new connection owes a head");
        a.ticks.store(4, Relaxed);
        assert!(a.head_overdue(4) && !a.head_overdue(5));
        a.head_parsed();
        assert!(!a.head_overdue(0));
        // Body bytes of the request in flight start no head.
        a.bytes_read();
        assert!(!a.head_overdue(0));
        a.finished.fetch_add(1, Relaxed);
        a.ticks.store(10, Relaxed);
        // Idle keep-alive: no head pending until a byte arrives.
        assert!(!a.head_overdue(0));
        a.bytes_read();
        a.ticks.store(13, Relaxed);
        assert!(a.head_overdue(3) && !a.head_overdue(4));
    }

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
