//! L4 (TCP pass-through) data path.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::balance::{Failure, Tries, CONNECT_TIMEOUT};
use crate::core::{Listener, OpenGuard};

pub(crate) async fn serve_conn(
    l: Arc<Listener>,
    client: TcpStream,
    peer: SocketAddr,
    _open: OpenGuard,
) {
    let _ = client.set_nodelay(true);
    let mut tries = Tries::new(&l, peer);
    let mut connected = None;
    while let Some(t) = tries.next() {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(t.target.addr)).await {
            Ok(Ok(s)) => {
                connected = Some((s, t.active));
                break;
            }
            Ok(Err(e)) => tries.failed(t, Failure::connect(&e)),
            Err(_) => tries.failed(t, Failure::ConnectTimeout),
        }
    }
    let Some((backend, _active)) = connected else {
        // No healthy backend (AllProbedDown) or every try failed: refuse with RST.
        tries.give_up();
        let _ = client.set_zero_linger();
        return;
    };
    let _ = backend.set_nodelay(true);
    let (idle, reset) = {
        let rule = &l.view.load().rule;
        let idle = match rule.idle_timeout_in_minutes {
            0 => Duration::from_secs(4 * 60),
            m => Duration::from_secs(u64::from(m) * 60),
        };
        (idle, rule.enable_tcp_reset)
    };
    relay(client, backend, idle, reset).await;
    debug!(lb = %l.lb.name.load(), %peer, "l4 flow closed");
}

/// Copies both directions until both sides close or the flow is idle for
/// `idle`; an idle flow is closed with RST on both sides when `reset`.
pub(crate) async fn relay(
    client: TcpStream,
    backend: TcpStream,
    idle: Duration,
    reset: bool,
) -> bool {
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let mut a = Activity {
        inner: client,
        last: &last,
        start,
    };
    let mut b = Activity {
        inner: backend,
        last: &last,
        start,
    };
    let timed_out = {
        // 64 KiB buffers: half the syscalls of the 8 KiB default on bulk transfers.
        let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 64 * 1024, 64 * 1024);
        tokio::pin!(copy);
        let mut deadline = start + idle;
        loop {
            tokio::select! {
                _ = &mut copy => break false,
                _ = tokio::time::sleep_until(deadline) => {
                    let last_at = start + Duration::from_millis(last.load(Relaxed));
                    if Instant::now().duration_since(last_at) >= idle {
                        break true;
                    }
                    deadline = last_at + idle;
                }
            }
        }
    };
    if timed_out && reset {
        let _ = a.inner.set_zero_linger();
        let _ = b.inner.set_zero_linger();
    }
    timed_out
}

/// Stream wrapper recording the time of the last successful I/O.
struct Activity<'a> {
    inner: TcpStream,
    last: &'a AtomicU64,
    start: Instant,
}

impl Activity<'_> {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }
}

impl AsyncRead for Activity<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Activity<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// client <-> (c_lb  relay  b_lb) <-> server
    async fn setup(
        idle: Duration,
        reset: bool,
    ) -> (TcpStream, TcpStream, tokio::task::JoinHandle<bool>) {
        let (client, c_lb) = pair().await;
        let (b_lb, server) = pair().await;
        let relay = tokio::spawn(relay(c_lb, b_lb, idle, reset));
        (client, server, relay)
    }

    #[tokio::test]
    async fn relays_both_ways_and_half_close() {
        let (mut client, mut server, relay) = setup(Duration::from_secs(60), true).await;
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        server.write_all(b"world").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"world");
        client.shutdown().await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
        server.write_all(b"late!").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"late!");
        drop(server);
        assert!(!relay.await.unwrap(), "not an idle timeout");
    }

    #[tokio::test]
    async fn idle_flow_is_reset_when_tcp_reset_enabled() {
        let (mut client, mut server, relay) = setup(Duration::from_millis(150), true).await;
        // Activity keeps it alive past one timeout.
        for _ in 0..4 {
            client.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            server.read_exact(&mut b).await.unwrap();
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        assert!(relay.await.unwrap(), "idle timeout");
        let mut b = [0u8; 1];
        let r = client.read(&mut b).await;
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
        let r = server.read(&mut b).await;
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn idle_flow_is_closed_with_fin_without_tcp_reset() {
        let (mut client, _server, relay) = setup(Duration::from_millis(100), false).await;
        assert!(relay.await.unwrap());
        let mut b = [0u8; 1];
        assert_eq!(client.read(&mut b).await.unwrap(), 0);
    }
}
