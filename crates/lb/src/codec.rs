//! The L7 frontend's own HTTP/1.1 codec for the hot path: body-less
//! HTTP/1.1 requests in, responses out. Pure functions over bytes.
//!
//! hyper's server side was half of the proxy's user-space instructions per
//! request. This codec takes only the requests whose framing cannot be
//! ambiguous: HTTP/1.1, no `Content-Length`, no `Transfer-Encoding`, no
//! `Expect`, no upgrade, no `CONNECT`, a head that parses with the same
//! `httparse` configuration hyper uses. Everything else — bodies, the
//! smuggling cases (CL+TE, duplicate lengths, chunked), obs-fold, bad tokens,
//! oversized heads, HTTP/1.0 — is handed to hyper with the connection's
//! buffered bytes, so hyper's checks, limits and error responses apply to
//! them exactly as before.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode, Uri};

/// Most request headers taken inline; more are hyper's (its default limit,
/// answered with 431).
pub const MAX_HEADERS: usize = 100;
/// A head still incomplete at this size goes to hyper, which allows up to
/// about 400 KiB and then answers 431.
pub const MAX_INLINE_HEAD: usize = 16 * 1024;
/// hyper's request-target limit (414 above it).
const MAX_URI_LEN: usize = u16::MAX as usize - 1;

/// Why a request is left to hyper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotInline {
    #[error("request head does not parse")]
    Invalid,
    #[error("not HTTP/1.1")]
    Version,
    #[error("request has a body (Content-Length or Transfer-Encoding)")]
    Body,
    #[error("request has Expect")]
    Expect,
    #[error("upgrade or CONNECT")]
    Upgrade,
    #[error("request head too large or too many headers")]
    TooLarge,
}

/// A body-less request head taken inline.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// The client asked to close after this response (`Connection: close`).
    pub close: bool,
}

/// Offsets of one header's name and value in the buffer.
type Span = (usize, usize, usize, usize);

/// Parses one request head at the start of `buf`. On success the head is
/// split off `buf` (whatever follows stays: a pipelined request); `Ok(None)`
/// means more bytes are needed; on `Err` `buf` is untouched, for hyper.
pub fn parse_request(buf: &mut BytesMut) -> Result<Option<RequestHead>, NotInline> {
    Parser::default().parse(buf)
}

/// `parse_request` with the header offsets' allocation kept between heads
/// (one per connection).
#[derive(Default)]
pub struct Parser {
    spans: Vec<Span>,
}

impl Parser {
    /// As `parse_request`.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<RequestHead>, NotInline> {
        let Some((len, line)) = scan(buf, &mut self.spans)? else {
            return if buf.len() >= MAX_INLINE_HEAD {
                Err(NotInline::TooLarge)
            } else {
                Ok(None)
            };
        };
        take(buf, len, line, &self.spans)
    }
}

/// Splits a scanned head off `buf` and builds it.
fn take(
    buf: &mut BytesMut,
    len: usize,
    line: Line,
    spans: &[Span],
) -> Result<Option<RequestHead>, NotInline> {
    let (method, version, (po, pl)) = line;
    if version != 1 {
        return Err(NotInline::Version);
    }
    let method = Method::from_bytes(&buf[..method]).map_err(|_| NotInline::Invalid)?;
    if method == Method::CONNECT {
        return Err(NotInline::Upgrade);
    }
    let head = buf.split_to(len).freeze();
    let built = build(&head, spans).and_then(|(headers, close)| {
        let uri =
            Uri::from_maybe_shared(head.slice(po..po + pl)).map_err(|_| NotInline::Invalid)?;
        Ok(RequestHead {
            method,
            uri,
            headers,
            close,
        })
    });
    if built.is_err() {
        // Give hyper the bytes back, in front of anything buffered after them.
        let rest = std::mem::replace(buf, BytesMut::from(&head[..]));
        buf.extend_from_slice(&rest);
    }
    built.map(Some)
}

/// Method length, HTTP minor version and request-target span of a head.
type Line = (usize, u8, (usize, usize));

/// Runs `httparse` over `buf`: the head's length, request line and header
/// spans when complete.
fn scan(buf: &[u8], spans: &mut Vec<Span>) -> Result<Option<(usize, Line)>, NotInline> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(NotInline::TooLarge),
        Err(_) => return Err(NotInline::Invalid),
    };
    let base = buf.as_ptr() as usize;
    let (Some(m), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(NotInline::Invalid);
    };
    if path.len() > MAX_URI_LEN {
        return Err(NotInline::TooLarge);
    }
    spans.clear();
    spans.extend(req.headers.iter().map(|h| {
        (
            h.name.as_ptr() as usize - base,
            h.name.len(),
            h.value.as_ptr() as usize - base,
            h.value.len(),
        )
    }));
    let target = (path.as_ptr() as usize - base, path.len());
    Ok(Some((len, (m.len(), version, target))))
}

/// The header map of a head (values share `head`) and whether it asks to
/// close; refuses the framing and upgrade headers this codec leaves to hyper.
fn build(head: &bytes::Bytes, spans: &[Span]) -> Result<(HeaderMap, bool), NotInline> {
    // One more for the X-Forwarded-For the proxy adds: growing the map
    // later rehashes it.
    let mut headers = HeaderMap::with_capacity(spans.len() + 1);
    let mut close = false;
    for &(no, nl, vo, vl) in spans {
        let name = HeaderName::from_bytes(&head[no..no + nl]).map_err(|_| NotInline::Invalid)?;
        let value = HeaderValue::from_maybe_shared(head.slice(vo..vo + vl))
            .map_err(|_| NotInline::Invalid)?;
        match name {
            header::CONTENT_LENGTH | header::TRANSFER_ENCODING => return Err(NotInline::Body),
            header::EXPECT => return Err(NotInline::Expect),
            header::UPGRADE => return Err(NotInline::Upgrade),
            header::CONNECTION => close |= has_token(value.as_bytes(), b"close"),
            _ => {}
        }
        headers.append(name, value);
    }
    Ok((headers, close))
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// What the response body is known to be before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLen {
    /// Already at its end.
    Empty,
    Known(u64),
    Unknown,
}

/// How the response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Exactly this many bytes (0: no body at all).
    Length(u64),
    Chunked,
}

/// Why a response head cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("1xx response")]
    Informational,
    #[error("invalid or conflicting Content-Length in the response")]
    Length,
}

/// A response head to encode.
pub struct ResponseHead<'a> {
    pub status: StatusCode,
    /// A non-canonical reason phrase to keep.
    pub reason: Option<&'a [u8]>,
    pub headers: &'a HeaderMap,
    pub body: BodyLen,
    /// The request was `HEAD`.
    pub head_request: bool,
    /// Say `Connection: close` (the connection closes after this response).
    pub close: bool,
}

/// Appends the head to `w` with the framing rules of hyper's server: a
/// `Content-Length` header decides the length, else the body's known length
/// does, else it is chunked; HEAD, 204 and 304 have no body; a `Date` is
/// added when the headers have none. Hop-by-hop headers are already gone.
pub fn encode_head(
    w: &mut Vec<u8>,
    r: &ResponseHead<'_>,
    date: &[u8],
) -> Result<Encoding, EncodeError> {
    if r.status.is_informational() {
        return Err(EncodeError::Informational);
    }
    let start = w.len();
    status_line(w, r.status, r.reason);
    let bodiless_status = matches!(r.status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let mut enc = None;
    let mut wrote_date = false;
    for (name, value) in r.headers {
        if name == header::CONTENT_LENGTH {
            match content_length(r, value, enc) {
                Ok(Some(e)) if enc.is_none() => enc = Some(e),
                Ok(_) => continue,
                Err(e) => {
                    w.truncate(start);
                    return Err(e);
                }
            }
        }
        wrote_date |= name == header::DATE;
        line(w, name.as_str().as_bytes(), value.as_bytes());
    }
    let enc = match enc {
        Some(e) => e,
        None => implicit_length(w, r, bodiless_status),
    };
    if r.close {
        w.extend_from_slice(b"connection: close\r\n");
    }
    if !wrote_date {
        line(w, b"date", date);
    }
    w.extend_from_slice(b"\r\n");
    let no_body = r.head_request || bodiless_status;
    Ok(if no_body { Encoding::Length(0) } else { enc })
}

/// The framing a `Content-Length` header gives (`None`: skip the header).
fn content_length(
    r: &ResponseHead<'_>,
    value: &HeaderValue,
    seen: Option<Encoding>,
) -> Result<Option<Encoding>, EncodeError> {
    match r.body {
        BodyLen::Known(n) => Ok(Some(Encoding::Length(n))),
        BodyLen::Unknown => {
            let n = parse_length(value.as_bytes()).ok_or(EncodeError::Length)?;
            match seen {
                Some(Encoding::Length(prev)) if prev != n => Err(EncodeError::Length),
                _ => Ok(Some(Encoding::Length(n))),
            }
        }
        // A HEAD response keeps the length of the body it stands for.
        BodyLen::Empty if r.head_request => Ok(Some(Encoding::Length(0))),
        BodyLen::Empty => Ok(None),
    }
}

/// Framing and header when the response has no `Content-Length` header.
fn implicit_length(w: &mut Vec<u8>, r: &ResponseHead<'_>, bodiless_status: bool) -> Encoding {
    match r.body {
        BodyLen::Unknown if !(r.head_request || bodiless_status) => {
            w.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Encoding::Chunked
        }
        BodyLen::Unknown => Encoding::Length(0),
        BodyLen::Empty | BodyLen::Known(0) => {
            if !(r.head_request || bodiless_status) {
                w.extend_from_slice(b"content-length: 0\r\n");
            }
            Encoding::Length(0)
        }
        BodyLen::Known(n) => {
            if !bodiless_status {
                line(
                    w,
                    b"content-length",
                    itoa::Buffer::new().format(n).as_bytes(),
                );
            }
            Encoding::Length(n)
        }
    }
}

fn status_line(w: &mut Vec<u8>, status: StatusCode, reason: Option<&[u8]>) {
    if status == StatusCode::OK && reason.is_none() {
        w.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    w.extend_from_slice(b"HTTP/1.1 ");
    w.extend_from_slice(status.as_str().as_bytes());
    w.push(b' ');
    // A reason must be written: many parsers expect one.
    let canonical = status.canonical_reason().unwrap_or("<none>").as_bytes();
    w.extend_from_slice(reason.unwrap_or(canonical));
    w.extend_from_slice(b"\r\n");
}

fn line(w: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    w.extend_from_slice(name);
    w.extend_from_slice(b": ");
    w.extend_from_slice(value);
    w.extend_from_slice(b"\r\n");
}

/// A Content-Length value: digits only (as hyper's check), no overflow.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, b| {
        let d = b.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Appends a chunk-size line for `len` bytes of data.
pub fn chunk_size_line(w: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    w.extend_from_slice(&digits[i..]);
    w.extend_from_slice(b"\r\n");
}

/// The end of a chunked body (no trailers: hyper sends none either unless
/// a `Trailer` header, which is hop-by-hop here, announced them).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
