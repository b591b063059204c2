//! A client connection's driver: the requests `codec` takes are served
//! inline, in this task, with one read buffer and one write buffer for the
//! connection's life; the first request it leaves hands the connection, with
//! its buffered bytes, to hyper for good.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame};
use hyper::header::HeaderValue;
use hyper::{Method, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use super::{handle, serve_hyper, ConnActivity, Finished, Head, Listener, ProxyBody, Watched};
use crate::codec::{self, BodyLen, Encoding, NotInline, ResponseHead};

/// Read size; a request head rarely needs more (larger ones grow the buffer). One page:
/// with 8 KiB, 64 busy connections held 0.6 MiB more for no fewer reads.
const READ_BUF: usize = 4 * 1024;
/// Data frames at least this large are written from their own buffer
/// (`writev`) instead of being copied behind the head.
const COPY_MAX: usize = 16 * 1024;
/// Buffered response bytes are written out at this size.
const WRITE_MAX: usize = 64 * 1024;

/// The client side of a connection and its buffers.
struct Front {
    io: TcpStream,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    parser: codec::Parser,
}

/// Serves a connection until it closes: inline while the codec takes its
/// requests, then through hyper.
pub(super) async fn drive(
    l: Arc<Listener>,
    io: TcpStream,
    peer: SocketAddr,
    activity: Arc<ConnActivity>,
    xff: Option<HeaderValue>,
) {
    let mut c = Front {
        io,
        rbuf: BytesMut::new(),
        wbuf: Vec::new(),
        parser: codec::Parser::default(),
    };
    match inline(&l, &mut c, peer, &activity, &xff).await {
        Ok(Some(why)) => {
            debug!(peer = %peer, reason = %why, "client connection handed to hyper");
            let io = Rewind {
                prefix: c.rbuf.freeze(),
                io: Watched {
                    io: c.io,
                    activity: activity.clone(),
                },
            };
            serve_hyper(l, io, peer, activity, xff).await;
        }
        Ok(None) => {}
        Err(e) => debug!(peer = %peer, error = %e, "client connection error"),
    }
}

/// The inline request loop; `Some` when a request is left to hyper (still
/// in `rbuf`), `None` when the connection is done.
async fn inline(
    l: &Listener,
    c: &mut Front,
    peer: SocketAddr,
    activity: &Arc<ConnActivity>,
    xff: &Option<HeaderValue>,
) -> io::Result<Option<NotInline>> {
    loop {
        let req = match c.parser.parse(&mut c.rbuf) {
            Ok(Some(req)) => req,
            Ok(None) => {
                if !c.fill(activity).await? {
                    return Ok(None);
                }
                continue;
            }
            Err(why) => return Ok(Some(why)),
        };
        activity.head_parsed();
        let done = Finished(activity.clone());
        let head_request = req.method == Method::HEAD;
        let head = Head {
            method: req.method,
            uri: req.uri,
            headers: req.headers,
        };
        let resp = handle(l, head, None, peer, xff.clone()).await;
        let close = req.close || activity.closing.load(Relaxed);
        let kept = c.respond(resp, head_request, close).await?;
        drop(done);
        if !kept || close || activity.closing.load(Relaxed) {
            return Ok(None);
        }
        if !c.rbuf.is_empty() {
            // A pipelined head: its header timeout runs from now.
            activity.bytes_read();
        }
    }
}

/// What a body poll gave: a frame, or nothing yet with bytes to write first.
enum Next {
    Frame(Option<Result<Frame<Bytes>, super::BoxError>>),
    Flush,
}

impl Front {
    /// Reads more request bytes; false at end of stream or on shutdown.
    async fn fill(&mut self, activity: &ConnActivity) -> io::Result<bool> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_BUF / 8 {
            // Reclaims the buffer in place once the last request's headers
            // (which share it) are gone.
            self.rbuf.reserve(READ_BUF);
        }
        let n = poll_fn(|cx| {
            if activity.closing.load(Relaxed) {
                return Poll::Ready(Ok(0));
            }
            // `read_buf` is cancel-safe; polled in place it keeps tokio's
            // short-read readiness clearing (no EAGAIN read per request).
            pin!(self.io.read_buf(&mut self.rbuf)).poll(cx)
        })
        .await?;
        if n > 0 {
            activity.bytes_read();
        }
        Ok(n > 0)
    }

    /// Writes a response; false when the connection cannot carry another.
    async fn respond(
        &mut self,
        resp: Response<ProxyBody>,
        head_request: bool,
        close: bool,
    ) -> io::Result<bool> {
        let (parts, mut body) = resp.into_parts();
        let len = if body.is_end_stream() {
            BodyLen::Empty
        } else {
            body.size_hint()
                .exact()
                .map_or(BodyLen::Unknown, BodyLen::Known)
        };
        let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
        let head = ResponseHead {
            status: parts.status,
            reason: reason.map(|r| r.as_bytes()),
            headers: &parts.headers,
            body: len,
            head_request,
            close,
        };
        self.wbuf.clear();
        let enc = match codec::encode_head(&mut self.wbuf, &head, &date()) {
            Ok(enc) => enc,
            Err(e) => {
                debug!(error = %e, "response not sent");
                return Ok(false);
            }
        };
        if enc == Encoding::Length(0) {
            self.flush().await?;
            return Ok(true);
        }
        self.send_body(&mut body, enc).await
    }

    /// Streams the body after the buffered head; false when it did not end
    /// as framed (the client must see the connection close).
    async fn send_body(&mut self, body: &mut ProxyBody, enc: Encoding) -> io::Result<bool> {
        let mut left = match enc {
            Encoding::Length(n) => Some(n),
            Encoding::Chunked => None,
        };
        loop {
            let next = poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending if !self.wbuf.is_empty() => Poll::Ready(Next::Flush),
                Poll::Pending => Poll::Pending,
                Poll::Ready(f) => Poll::Ready(Next::Frame(f)),
            })
            .await;
            let data = match next {
                Next::Flush => {
                    self.flush().await?;
                    continue;
                }
                Next::Frame(None) => break,
                Next::Frame(Some(Err(e))) => {
                    debug!(error = %e, "response body failed");
                    return Ok(false);
                }
                // Trailers are dropped, as hyper does without a `Trailer` header.
                Next::Frame(Some(Ok(f))) => match f.into_data() {
                    Ok(d) if !d.is_empty() => d,
                    _ => continue,
                },
            };
            if !self.put_data(&mut left, data).await? {
                return Ok(false);
            }
        }
        match left {
            None => self.wbuf.extend_from_slice(codec::LAST_CHUNK),
            Some(0) => {}
            Some(_) => {
                self.flush().await?;
                debug!("response body shorter than its length");
                return Ok(false);
            }
        }
        self.flush().await?;
        Ok(true)
    }

    /// Frames and queues one data frame; false when it overruns the length.
    async fn put_data(&mut self, left: &mut Option<u64>, data: Bytes) -> io::Result<bool> {
        match left {
            Some(n) if data.len() as u64 > *n => {
                debug!("response body longer than its length");
                return Ok(false);
            }
            Some(n) => *n -= data.len() as u64,
            None => codec::chunk_size_line(&mut self.wbuf, data.len()),
        }
        if data.len() >= COPY_MAX {
            self.write_with(&data).await?;
        } else {
            self.wbuf.extend_from_slice(&data);
        }
        if left.is_none() {
            self.wbuf.extend_from_slice(b"\r\n");
        }
        if self.wbuf.len() >= WRITE_MAX {
            self.flush().await?;
        }
        Ok(true)
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Writes the buffered bytes and then `data`, gathered.
    async fn write_with(&mut self, data: &[u8]) -> io::Result<()> {
        let (mut a, mut b) = (0, 0);
        while a < self.wbuf.len() || b < data.len() {
            let bufs = [IoSlice::new(&self.wbuf[a..]), IoSlice::new(&data[b..])];
            let n = self.io.write_vectored(&bufs).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let from_a = n.min(self.wbuf.len() - a);
            a += from_a;
            b += n - from_a;
        }
        self.wbuf.clear();
        Ok(())
    }
}

/// The `Date` header's value, formatted once a second per thread.
fn date() -> [u8; 29] {
    thread_local! {
        static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let s = httpdate::fmt_http_date(now);
            if s.len() == 29 {
                d.1.copy_from_slice(s.as_bytes());
            }
            d.0 = secs;
        }
        d.1
    })
}

/// The client stream for hyper: the bytes the inline codec had buffered
/// first, then the socket.
pub(super) struct Rewind {
    prefix: Bytes,
    io: Watched,
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
