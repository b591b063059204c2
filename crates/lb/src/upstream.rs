//! Minimal HTTP/1.1 client for body-less requests to backends, driven inline
//! by the client connection's task.
//!
//! hyper's client runs every backend connection as its own task and hands
//! each request and response over channels; for the common GET that was
//! about a third of the proxy's instructions per request. Here the request
//! head is written straight from the incoming `HeaderMap`, the response head
//! is parsed with `httparse` into a `HeaderMap` that shares the read buffer,
//! and the body is decoded (length, chunked or until close) as the client
//! side pulls it. Requests with a body still go through hyper's client,
//! which sends and receives concurrently.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use hyper::body::Frame;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Read size to start with; it doubles while reads fill it (large bodies),
/// up to `MAX_READ`, and halves again when they do not.
const READ_BUF: usize = 4 * 1024;
const MAX_READ: usize = 256 * 1024;
/// Largest response head (and chunk-size line, and trailer block) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest number of response headers accepted (hyper's client default).
const MAX_HEADERS: usize = 100;

/// What went wrong talking to a backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("backend closed the connection early")]
    Closed,
    #[error("backend I/O")]
    Io(#[from] io::Error),
    #[error("malformed backend response: {0}")]
    Malformed(&'static str),
}

/// A keep-alive connection to a backend with its buffers.
pub(crate) struct RawConn {
    stream: TcpStream,
    rbuf: BytesMut,
    /// Current read size (adaptive, see `READ_BUF`).
    read_size: usize,
    wbuf: Vec<u8>,
    /// Header (name, value) offsets of the head being parsed; kept to reuse
    /// the allocation.
    spans: Vec<Span>,
}

/// Offset and length of a header's name and of its value in the read buffer.
pub(crate) type Span = (usize, usize, usize, usize);

/// Each parsed header's name and value as (offset, length) pairs from `base`, the start of
/// the buffer `headers` borrow from: values can then share that buffer once it is frozen.
pub(crate) fn header_spans(headers: &[httparse::Header], base: usize, spans: &mut Vec<Span>) {
    spans.clear();
    spans.extend(headers.iter().map(|h| {
        (
            h.name.as_ptr() as usize - base,
            h.name.len(),
            h.value.as_ptr() as usize - base,
            h.value.len(),
        )
    }));
}

impl RawConn {
    pub fn new(stream: TcpStream) -> Self {
        RawConn {
            stream,
            rbuf: BytesMut::new(),
            read_size: READ_BUF,
            wbuf: Vec::new(),
            spans: Vec::new(),
        }
    }

    /// The socket, for hyper's client (only when `is_clean`).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Nothing unread is buffered (the response ended where it said).
    pub fn is_clean(&self) -> bool {
        self.rbuf.is_empty()
    }

    /// False when the backend closed (or wrote to) the idle connection. Uses
    /// the reactor's readiness, so a quiet connection costs no syscall.
    pub fn is_reusable(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more bytes into `rbuf`; `Ok(0)` is end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < self.read_size / 4 {
            self.rbuf.reserve(self.read_size);
        }
        let room = self.rbuf.capacity() - self.rbuf.len();
        // `read_buf` is cancel-safe; polling it in place keeps tokio's
        // short-read readiness clearing (no extra EAGAIN read per request).
        let n = ready!(pin!(self.stream.read_buf(&mut self.rbuf)).poll(cx))?;
        if n == room {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        } else if n < self.read_size / 2 {
            self.read_size = (self.read_size / 2).max(READ_BUF);
        }
        Poll::Ready(Ok(n))
    }

    /// Drops a read buffer grown by a large body before the connection
    /// idles in the pool.
    pub fn shrink(&mut self) {
        if self.rbuf.capacity() > 4 * READ_BUF {
            self.rbuf = BytesMut::new();
            self.read_size = READ_BUF;
        }
    }

    async fn fill(&mut self) -> Result<(), UpstreamError> {
        match std::future::poll_fn(|cx| self.poll_fill(cx)).await? {
            0 => Err(UpstreamError::Closed),
            _ => Ok(()),
        }
    }

    /// Writes the request head. `host` is used when the client sent none.
    pub async fn send_head(
        &mut self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        host: impl FnOnce() -> String,
    ) -> io::Result<()> {
        let w = &mut self.wbuf;
        w.clear();
        w.extend_from_slice(method.as_str().as_bytes());
        w.push(b' ');
        w.extend_from_slice(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
        w.extend_from_slice(b" HTTP/1.1\r\n");
        if !headers.contains_key(header::HOST) {
            w.extend_from_slice(b"host: ");
            w.extend_from_slice(host().as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        // Like hyper's client: methods that usually carry a body say it is
        // empty.
        if matches!(*method, Method::POST | Method::PUT | Method::PATCH)
            && !headers.contains_key(header::CONTENT_LENGTH)
        {
            w.extend_from_slice(b"content-length: 0\r\n");
        }
        for (name, value) in headers {
            w.extend_from_slice(name.as_str().as_bytes());
            w.extend_from_slice(b": ");
            w.extend_from_slice(value.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        w.extend_from_slice(b"\r\n");
        self.stream.write_all(&self.wbuf).await
    }

    /// Reads the response head (skipping 1xx interim responses).
    pub async fn read_head(&mut self, method: &Method) -> Result<RespHead, UpstreamError> {
        loop {
            match self.parse_head(method)? {
                Parsed::Head(head) => return Ok(head),
                // The next head may already be buffered.
                Parsed::Interim => continue,
                Parsed::Partial => {}
            }
            if self.rbuf.len() > MAX_HEAD {
                return Err(UpstreamError::Malformed("response head too large"));
            }
            self.fill().await?;
        }
    }

    /// Parses one complete head out of `rbuf`; interim 1xx heads are
    /// consumed.
    fn parse_head(&mut self, method: &Method) -> Result<Parsed, UpstreamError> {
        if self.rbuf.is_empty() {
            return Ok(Parsed::Partial);
        }
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let base = self.rbuf.as_ptr() as usize;
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, &self.rbuf, &mut slots)
        {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(_) => return Err(UpstreamError::Malformed("unparsable response head")),
        };
        let code = res.code.unwrap_or(0);
        let Ok(status) = StatusCode::from_u16(code) else {
            return Err(UpstreamError::Malformed("bad status code"));
        };
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                // Upgrade is hop-by-hop and stripped; a backend must not switch.
                return Err(UpstreamError::Malformed("unexpected 101"));
            }
            let _ = self.rbuf.split_to(len);
            return Ok(Parsed::Interim);
        }
        let http11 = res.version == Some(1);
        let reason = res.reason.filter(|r| Some(*r) != status.canonical_reason());
        let reason = reason.map(|r| (r.as_ptr() as usize - base, r.len()));
        // Offsets into the buffer, so that values can share it once frozen.
        let spans = &mut self.spans;
        header_spans(res.headers, base, spans);
        let n = spans.len();
        let raw = self.rbuf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(n);
        let mut framing = Framing::Close;
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut te = false;
        let mut close = !http11;
        for &(no, nl, vo, vl) in self.spans.iter() {
            let name = HeaderName::from_bytes(&raw[no..no + nl])
                .map_err(|_| UpstreamError::Malformed("bad header name"))?;
            let value = HeaderValue::from_maybe_shared(raw.slice(vo..vo + vl))
                .map_err(|_| UpstreamError::Malformed("bad header value"))?;
            if name == header::CONTENT_LENGTH {
                let v = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or(UpstreamError::Malformed("bad content-length"))?;
                if length.is_some_and(|l| l != v) {
                    return Err(UpstreamError::Malformed("conflicting content-length"));
                }
                length = Some(v);
            } else if name == header::TRANSFER_ENCODING {
                te = true;
                // Only the last coding decides whether the body is chunked.
                chunked = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.rsplit(',').next())
                    .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            } else if name == header::CONNECTION {
                let v = value.to_str().unwrap_or("");
                if v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")) {
                    close = true;
                } else if !http11
                    && v.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("keep-alive"))
                {
                    close = false;
                }
            }
            headers.append(name, value);
        }
        let bodyless = *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        if bodyless {
            framing = Framing::Length(0);
        } else if te {
            if chunked {
                framing = Framing::Chunked(Chunk::Size);
            }
            // Transfer-Encoding with Content-Length: the length is ignored and
            // the connection must not be reused (RFC 9112, 6.3).
            if length.is_some() {
                close = true;
            }
        } else if let Some(l) = length {
            framing = Framing::Length(l);
        }
        if framing == Framing::Close {
            close = true;
        }
        let reason =
            reason.and_then(|(o, l)| hyper::ext::ReasonPhrase::try_from(raw.slice(o..o + l)).ok());
        Ok(Parsed::Head(RespHead {
            status,
            headers,
            reason,
            framing,
            keep_alive: !close,
        }))
    }
}

enum Parsed {
    Head(RespHead),
    /// A 1xx head was consumed.
    Interim,
    /// More bytes are needed.
    Partial,
}

/// A parsed response head.
pub(crate) struct RespHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub reason: Option<hyper::ext::ReasonPhrase>,
    pub framing: Framing,
    pub keep_alive: bool,
}

/// How the response body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// This many bytes remain.
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes.
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// Outcome of one `poll_frame` step of a body decoder.
pub(crate) enum Step {
    Frame(Frame<Bytes>),
    /// The body is complete; the connection may be reused when `reusable`.
    End {
        reusable: bool,
    },
}

impl Framing {
    /// Exact body length when known up front.
    pub fn exact(&self) -> Option<u64> {
        match self {
            Framing::Length(n) => Some(*n),
            _ => None,
        }
    }
}

/// Decodes the body of a response from `conn`.
pub(crate) fn poll_body(
    conn: &mut RawConn,
    framing: &mut Framing,
    keep_alive: bool,
    cx: &mut Context<'_>,
) -> Poll<Result<Step, UpstreamError>> {
    loop {
        match framing {
            Framing::Length(0) => {
                return Poll::Ready(Ok(Step::End {
                    reusable: keep_alive && conn.rbuf.is_empty(),
                }))
            }
            Framing::Length(rem) => {
                if !conn.rbuf.is_empty() {
                    let n = (*rem).min(conn.rbuf.len() as u64);
                    *rem -= n;
                    let data = conn.rbuf.split_to(n as usize).freeze();
                    return Poll::Ready(Ok(Step::Frame(Frame::data(data))));
                }
            }
            Framing::Close => {
                if !conn.rbuf.is_empty() {
                    let data = conn.rbuf.split().freeze();
                    return Poll::Ready(Ok(Step::Frame(Frame::data(data))));
                }
                if ready!(conn.poll_fill(cx))? == 0 {
                    return Poll::Ready(Ok(Step::End { reusable: false }));
                }
                continue;
            }
            Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(&conn.rbuf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    let _ = conn.rbuf.split_to(used);
                    *framing = Framing::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                    continue;
                }
                Ok(httparse::Status::Partial) if conn.rbuf.len() > MAX_HEAD => {
                    return Poll::Ready(Err(UpstreamError::Malformed("chunk size line too long")))
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Poll::Ready(Err(UpstreamError::Malformed("bad chunk size"))),
            },
            Framing::Chunked(Chunk::Data(rem)) => {
                if !conn.rbuf.is_empty() {
                    let n = (*rem).min(conn.rbuf.len() as u64);
                    let data = conn.rbuf.split_to(n as usize).freeze();
                    *framing = Framing::Chunked(if n == *rem {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(*rem - n)
                    });
                    return Poll::Ready(Ok(Step::Frame(Frame::data(data))));
                }
            }
            Framing::Chunked(Chunk::DataEnd) => {
                if conn.rbuf.len() >= 2 {
                    if &conn.rbuf[..2] != b"\r\n" {
                        return Poll::Ready(Err(UpstreamError::Malformed("bad chunk end")));
                    }
                    let _ = conn.rbuf.split_to(2);
                    *framing = Framing::Chunked(Chunk::Size);
                    continue;
                }
            }
            Framing::Chunked(Chunk::Trailers) => {
                let mut slots = [httparse::EMPTY_HEADER; 32];
                match httparse::parse_headers(&conn.rbuf, &mut slots) {
                    Ok(httparse::Status::Complete((used, hs))) => {
                        let mut trailers = HeaderMap::new();
                        for h in hs.iter() {
                            if let (Ok(n), Ok(v)) = (
                                HeaderName::from_bytes(h.name.as_bytes()),
                                HeaderValue::from_bytes(h.value),
                            ) {
                                trailers.append(n, v);
                            }
                        }
                        let _ = conn.rbuf.split_to(used);
                        *framing = Framing::Length(0);
                        if !trailers.is_empty() {
                            return Poll::Ready(Ok(Step::Frame(Frame::trailers(trailers))));
                        }
                        continue;
                    }
                    Ok(httparse::Status::Partial) if conn.rbuf.len() > MAX_HEAD => {
                        return Poll::Ready(Err(UpstreamError::Malformed("trailers too large")))
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Poll::Ready(Err(UpstreamError::Malformed("bad trailers"))),
                }
            }
        }
        // Need more bytes.
        if ready!(conn.poll_fill(cx))? == 0 {
            return Poll::Ready(Err(UpstreamError::Closed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A backend that answers one request with `resp` (written in pieces).
    async fn exchange(
        method: Method,
        resp: &'static [&'static [u8]],
    ) -> (RespHead, Vec<Frame<Bytes>>, bool, Vec<u8>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = vec![0u8; 4096];
            let mut got = 0;
            while !req[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                got += s.read(&mut req[got..]).await.unwrap();
            }
            for part in resp {
                s.write_all(part).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            req.truncate(got);
            req
        });
        let mut c = RawConn::new(TcpStream::connect(addr).await.unwrap());
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        c.send_head(&method, &Uri::from_static("/p?q=1"), &h, || "b:1".into())
            .await
            .unwrap();
        let mut head = c.read_head(&method).await.unwrap();
        let mut frames = Vec::new();
        let mut framing = head.framing;
        let reusable = loop {
            match std::future::poll_fn(|cx| poll_body(&mut c, &mut framing, head.keep_alive, cx))
                .await
                .unwrap()
            {
                Step::Frame(f) => frames.push(f),
                Step::End { reusable } => break reusable,
            }
        };
        head.framing = framing;
        (head, frames, reusable, server.await.unwrap())
    }

    fn data(frames: &[Frame<Bytes>]) -> Vec<u8> {
        frames
            .iter()
            .filter_map(|f| f.data_ref())
            .flat_map(|d| d.iter().copied())
            .collect()
    }

    #[tokio::test]
    async fn content_length_body_in_pieces_and_request_head() {
        let (head, frames, reusable, req) = exchange(
            Method::GET,
            &[
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-B: 2\r\n\r\nhe",
                b"llo",
            ],
        )
        .await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers["x-b"], "2");
        assert_eq!(data(&frames), b"hello");
        assert!(reusable);
        assert_eq!(
            String::from_utf8(req).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nhost: b:1\r\nx-a: 1\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn large_body_arrives_whole_and_reads_grow() {
        static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let big = BIG.get_or_init(|| {
            let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
            let mut r =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            r.extend_from_slice(&body);
            r
        });
        let parts: &'static [&'static [u8]] = Box::leak(Box::new([big.as_slice()]));
        let (_, frames, reusable, _) = exchange(Method::GET, parts).await;
        let got = data(&frames);
        assert_eq!(got.len(), 1_000_000);
        assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
        assert!(reusable);
        // 4 KiB reads throughout would take more than 240.
        assert!(frames.len() < 60, "{} reads", frames.len());
    }

    #[tokio::test]
    async fn interim_and_final_head_in_one_read() {
        let (head, frames, _, _) = exchange(
            Method::GET,
            &[b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
        )
        .await;
        assert_eq!(head.status, StatusCode::OK);
        assert!(!head.headers.contains_key("link"));
        assert_eq!(data(&frames), b"ok");
    }

    #[tokio::test]
    async fn chunked_body_with_trailers() {
        let (head, frames, reusable, _) = exchange(
            Method::GET,
            &[
                b"HTTP/1.1 201 Made\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n",
                b"2\r\nde\r\n0\r\nT: 1\r\n\r\n",
            ],
        )
        .await;
        assert_eq!(head.status, StatusCode::CREATED);
        assert!(head.reason.is_some(), "non-canonical reason kept");
        assert_eq!(data(&frames), b"abcde");
        assert!(frames
            .last()
            .unwrap()
            .trailers_ref()
            .is_some_and(|t| t["t"] == "1"));
        assert!(reusable);
    }

    #[tokio::test]
    async fn close_delimited_and_connection_close_are_not_reused() {
        let (_, frames, reusable, _) =
            exchange(Method::GET, &[b"HTTP/1.1 200 OK\r\n\r\nuntil close"]).await;
        assert_eq!(data(&frames), b"until close");
        assert!(!reusable);
        let (head, _, reusable, _) = exchange(
            Method::GET,
            &[b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"],
        )
        .await;
        assert!(!head.keep_alive && !reusable);
    }

    #[tokio::test]
    async fn head_and_204_have_no_body() {
        let (_, frames, reusable, req) = exchange(
            Method::HEAD,
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"],
        )
        .await;
        assert!(frames.is_empty() && reusable);
        assert!(req.starts_with(b"HEAD /p?q=1 HTTP/1.1\r\n"));
        let (_, frames, _, _) = exchange(Method::GET, &[b"HTTP/1.1 204 No Content\r\n\r\n"]).await;
        assert!(frames.is_empty());
    }

    #[tokio::test]
    async fn malformed_responses_are_errors_not_panics() {
        for resp in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 101 Switching\r\n\r\n",
        ] {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                s.write_all(resp).await.unwrap();
            });
            let mut c = RawConn::new(TcpStream::connect(addr).await.unwrap());
            c.send_head(
                &Method::GET,
                &Uri::from_static("/"),
                &HeaderMap::new(),
                || "h".into(),
            )
            .await
            .unwrap();
            assert!(c.read_head(&Method::GET).await.is_err(), "{resp:?}");
        }
    }
}
