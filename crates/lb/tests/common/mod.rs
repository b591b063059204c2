//! Helpers for the integration tests: loopback HTTP/TCP backends, an LB
//! harness and a tiny HTTP client.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use lb::{client, LbConfig, LbStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Binds the same free port on every given loopback IP.
pub fn bind_same_port(ips: &[IpAddr]) -> (u16, Vec<std::net::TcpListener>) {
    'outer: for _ in 0..100 {
        let first = std::net::TcpListener::bind((ips[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for ip in &ips[1..] {
            match std::net::TcpListener::bind((*ip, port)) {
                Ok(l) => all.push(l),
                Err(_) => continue 'outer,
            }
        }
        for l in &all {
            l.set_nonblocking(true).unwrap();
        }
        return (port, all);
    }
    panic!("no common free port");
}

/// A free port on 127.0.0.1 (released; tiny race accepted).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Tiny HTTP backend: `/health` (200 or 500 per `healthy`), `/slow`
/// (answers after 600 ms), anything else answers its id.
pub struct HttpBackend {
    pub id: String,
    pub addr: SocketAddr,
    pub healthy: Arc<AtomicBool>,
    pub hits: Arc<AtomicU64>,
    /// Connections that carried at least one non-probe request (total / open).
    pub app_conns: Arc<AtomicU64>,
    pub open_app_conns: Arc<AtomicU64>,
    kill: watch::Sender<u8>,
}

impl HttpBackend {
    pub fn start(id: &str, listener: std::net::TcpListener) -> HttpBackend {
        let listener = TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let hits = Arc::new(AtomicU64::new(0));
        let (kill, kill_rx) = watch::channel(0u8);
        let app_conns = Arc::new(AtomicU64::new(0));
        let open_app_conns = Arc::new(AtomicU64::new(0));
        let b = HttpBackend {
            id: id.to_owned(),
            addr,
            healthy: healthy.clone(),
            hits: hits.clone(),
            app_conns: app_conns.clone(),
            open_app_conns: open_app_conns.clone(),
            kill,
        };
        let id = id.to_owned();
        tokio::spawn(async move {
            let mut k = kill_rx.clone();
            loop {
                let (s, _) = tokio::select! {
                    _ = k.changed() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let (id, healthy, hits, mut k2) =
                    (id.clone(), healthy.clone(), hits.clone(), kill_rx.clone());
                let app = ConnGauge {
                    seen: Arc::new(AtomicBool::new(false)),
                    total: app_conns.clone(),
                    open: open_app_conns.clone(),
                };
                tokio::spawn(async move {
                    let app2 = app.clone();
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (id, healthy, hits, app) =
                            (id.clone(), healthy.clone(), hits.clone(), app2.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            if path != "/health" {
                                app.mark();
                            }
                            let xff = req
                                .headers()
                                .get("x-forwarded-for")
                                .map(|v| v.to_str().unwrap_or("").to_owned())
                                .unwrap_or_default();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let mut status = StatusCode::OK;
                            match path.as_str() {
                                "/health" => {
                                    if !healthy.load(SeqCst) {
                                        status = StatusCode::INTERNAL_SERVER_ERROR;
                                    }
                                }
                                "/slow" => {
                                    hits.fetch_add(1, SeqCst);
                                    tokio::time::sleep(Duration::from_millis(600)).await
                                }
                                _ => {
                                    hits.fetch_add(1, SeqCst);
                                }
                            }
                            let mut r = Response::new(Full::new(Bytes::from(format!(
                                "{id}|{xff}|{}",
                                body.len()
                            ))));
                            *r.status_mut() = status;
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc);
                    tokio::pin!(conn);
                    let _app = app;
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = k2.changed() => {}
                    }
                    if *k2.borrow() == 2 {
                        return; // hard kill: sockets just vanish, mid-request or not
                    }
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                });
            }
        });
        b
    }

    /// Stops accepting and closes every connection once its in-flight
    /// response is written (like a process dying between requests).
    pub fn kill(&self) {
        let _ = self.kill.send(1);
    }

    /// Stops accepting and drops every connection at once (like SIGKILL).
    pub fn kill_hard(&self) {
        let _ = self.kill.send(2);
    }
}

#[derive(Clone)]
struct ConnGauge {
    seen: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
}

impl ConnGauge {
    fn mark(&self) {
        if !self.seen.swap(true, SeqCst) {
            self.total.fetch_add(1, SeqCst);
            self.open.fetch_add(1, SeqCst);
        }
    }
}

impl Drop for ConnGauge {
    fn drop(&mut self) {
        // Only the last clone (the connection task's) closes the gauge.
        if Arc::strong_count(&self.seen) == 1 && self.seen.load(SeqCst) {
            self.open.fetch_sub(1, SeqCst);
        }
    }
}

/// TCP backend: writes `id\n` on connect, then echoes.
pub struct EchoBackend {
    kill: watch::Sender<bool>,
}

impl EchoBackend {
    pub fn start(id: &str, listener: std::net::TcpListener) -> EchoBackend {
        let listener = TcpListener::from_std(listener).unwrap();
        let (kill, mut kill_rx) = watch::channel(false);
        let id = id.to_owned();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = tokio::select! {
                    _ = kill_rx.changed() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let id = id.clone();
                tokio::spawn(async move {
                    let _ = s.write_all(format!("{id}\n").as_bytes()).await;
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        EchoBackend { kill }
    }

    /// Stops accepting (established connections continue).
    pub fn stop_listening(&self) {
        let _ = self.kill.send(true);
    }
}

/// A running LB (in-process) with its own config file and admin socket.
pub struct Harness {
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub cfg_path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), lb::LbError>>>,
}

impl Harness {
    pub fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lbt-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub async fn start_in(dir: PathBuf) -> Harness {
        let sock = dir.join("admin.sock");
        let cfg_path = dir.join("lb.json");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (c, s) = (cfg_path.clone(), sock.clone());
        let task = tokio::spawn(async move {
            lb::serve_until(&c, &s, async move {
                let _ = rx.await;
            })
            .await
        });
        let h = Harness {
            dir,
            sock,
            cfg_path,
            stop: Some(tx),
            task: Some(task),
        };
        for _ in 0..200 {
            if client::get_status(&h.sock).await.is_ok() {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("lb did not come up");
    }

    pub async fn start(name: &str, cfg: &LbConfig) -> Harness {
        let h = Harness::start_in(Harness::dir(name)).await;
        client::put_config(&h.sock, cfg).await.unwrap();
        h
    }

    pub async fn status(&self) -> LbStatus {
        client::get_status(&self.sock).await.unwrap()
    }

    /// Polls status until `f` holds (5 s max).
    pub async fn wait_for(&self, what: &str, f: impl Fn(&LbStatus) -> bool) -> LbStatus {
        for _ in 0..500 {
            let s = self.status().await;
            if f(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}: {:?}", self.status().await);
    }

    pub async fn wait_healthy(&self, ids: &[&str]) {
        self.wait_for("backends healthy", |s| {
            ids.iter()
                .all(|id| s.backends.iter().any(|b| b.id == *id && b.healthy))
        })
        .await;
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// Keep-alive HTTP/1.1 client connection.
pub struct Http {
    tx: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Http {
    pub async fn connect(addr: SocketAddr) -> Http {
        let s = TcpStream::connect(addr).await.unwrap();
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        Http { tx }
    }

    pub async fn request(&mut self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.tx.ready().await.unwrap();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "lb.test")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let res = self.tx.send_request(req).await.unwrap();
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    pub async fn get(&mut self, path: &str) -> (u16, String) {
        self.request("GET", path, "").await
    }
}

/// One-shot GET on a fresh connection.
pub async fn get_once(addr: SocketAddr, path: &str) -> (u16, String) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "lb.test")
        .body(Empty::new())
        .unwrap();
    let res = tx.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Backend id from a test backend's response body.
pub fn who(body: &str) -> &str {
    body.split('|').next().unwrap_or("")
}
