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
use crate::upstream::Span;

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
    crate::upstream::header_spans(req.headers, base, spans);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> (Result<Option<RequestHead>, NotInline>, BytesMut) {
        let mut buf = BytesMut::from(input);
        let r = parse_request(&mut buf);
        (r, buf)
    }

    #[test]
    fn simple_get_is_taken_and_what_follows_stays() {
        let (r, rest) =
            parse(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\nGET /next");
        let h = r.unwrap().unwrap();
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.uri, "/a?b=1");
        assert_eq!(h.headers["host"], "x");
        assert_eq!(h.headers.get_all("x-a").iter().count(), 2);
        assert!(!h.close);
        assert_eq!(
            &rest[..],
            b"GET /next",
            "a pipelined request stays buffered"
        );
    }

    #[test]
    fn request_lines_and_targets() {
        for (input, method, uri) in [
            (&b"HEAD / HTTP/1.1\r\n\r\n"[..], Method::HEAD, "/"),
            (b"DELETE /x HTTP/1.1\r\n\r\n", Method::DELETE, "/x"),
            (b"OPTIONS * HTTP/1.1\r\n\r\n", Method::OPTIONS, "*"),
            (
                b"GET http://h:1/p?q HTTP/1.1\r\n\r\n",
                Method::GET,
                "http://h:1/p?q",
            ),
            // LF-only line ends: httparse (and so hyper) accepts them.
            (b"GET /lf HTTP/1.1\nHost: x\n\n", Method::GET, "/lf"),
            (
                b"PURGE /c HTTP/1.1\r\n\r\n",
                Method::from_bytes(b"PURGE").unwrap(),
                "/c",
            ),
        ] {
            let h = parse(input).0.unwrap().unwrap();
            assert_eq!(
                (h.method, h.uri.to_string()),
                (method, uri.to_owned()),
                "{input:?}"
            );
        }
    }

    #[test]
    fn connection_close_tokens() {
        for (value, close) in [
            ("close", true),
            ("Keep-Alive, Close", true),
            (" CLOSE ", true),
            ("keep-alive", false),
            ("closed", false),
            ("x-close", false),
        ] {
            let input = format!("GET / HTTP/1.1\r\nConnection: {value}\r\n\r\n");
            let h = parse(input.as_bytes()).0.unwrap().unwrap();
            assert_eq!(h.close, close, "{value}");
        }
    }

    #[test]
    fn partial_heads_wait_for_more_bytes() {
        for input in [
            &b""[..],
            b"GE",
            b"GET / HTTP/1.1\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r",
        ] {
            let (r, rest) = parse(input);
            assert!(matches!(r, Ok(None)), "{input:?}");
            assert_eq!(&rest[..], input);
        }
    }

    /// Everything that decides framing, or that hyper answers with an error,
    /// is left to hyper, with the bytes untouched.
    #[test]
    fn left_to_hyper() {
        use NotInline::*;
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let long = format!("GET / HTTP/1.1\r\nX-Long: {}", "a".repeat(MAX_INLINE_HEAD));
        let long_uri = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_URI_LEN));
        let cases: Vec<(&[u8], NotInline)> = vec![
            (b"GET / HTTP/1.0\r\n\r\n", Version),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", Version),
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", Body),
            (b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", Body),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                Body,
            ),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                Body,
            ),
            // Smuggling shapes: CL+TE either order, duplicate lengths, bad chunk sizes.
            (
                b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                Body,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
                Body,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                Body,
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n", Body),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                Body,
            ),
            (
                b"GET / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
                Invalid,
            ),
            (
                b"GET / HTTP/1.1\r\n Transfer-Encoding: chunked\r\n\r\n",
                Invalid,
            ),
            // obs-fold
            (b"GET / HTTP/1.1\r\nX-A: 1\r\n 2\r\n\r\n", Invalid),
            (b"GET / HTTP/1.1\r\nX-A: 1\r\n\t2\r\n\r\n", Invalid),
            (b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", Invalid),
            (b"GET / HTTP/1.1\r\nX\x01A: 1\r\n\r\n", Invalid),
            (b"GET / HTTP/1.1\r\n: empty\r\n\r\n", Invalid),
            (b"G(T / HTTP/1.1\r\n\r\n", Invalid),
            (b"GET /a b HTTP/1.1\r\n\r\n", Invalid),
            (b"GET / HTTP/2.0\r\n\r\n", Invalid),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Invalid),
            (b"\x00\x01garbage \r\n\r\n", Invalid),
            (b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", Expect),
            (
                b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                Upgrade,
            ),
            (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", Upgrade),
            (many.as_bytes(), TooLarge),
            (long.as_bytes(), TooLarge),
            (long_uri.as_bytes(), TooLarge),
        ];
        for (input, want) in cases {
            let mut with_next = input.to_vec();
            with_next.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
            // A partial head followed by more bytes is a different head.
            let complete = input.windows(4).any(|w| w == b"\r\n\r\n");
            let inputs = if complete {
                vec![input, &with_next[..]]
            } else {
                vec![input]
            };
            for bytes in inputs {
                let (r, rest) = parse(bytes);
                let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]);
                assert_eq!(r.err(), Some(want), "{shown:?}");
                assert_eq!(&rest[..], bytes, "bytes kept for hyper");
            }
        }
    }

    #[test]
    fn parser_reuse_across_pipelined_heads() {
        let mut p = Parser::default();
        let mut buf = BytesMut::from(&b"GET /1 HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\nGET /2 HTTP/1.1\r\n\r\nPOST /3 HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"[..]);
        assert_eq!(p.parse(&mut buf).unwrap().unwrap().headers.len(), 2);
        let h = p.parse(&mut buf).unwrap().unwrap();
        assert_eq!((h.uri.path(), h.headers.len()), ("/2", 0));
        assert_eq!(p.parse(&mut buf).err(), Some(NotInline::Body));
        assert!(buf.starts_with(b"POST /3 "));
    }

    #[test]
    fn content_length_values() {
        for (v, want) in [
            (&b"0"[..], Some(0)),
            (b"123", Some(123)),
            (b"18446744073709551615", Some(u64::MAX)),
            (b"18446744073709551616", None),
            (b"", None),
            (b"+1", None),
            (b"-1", None),
            (b"1 ", None),
            (b"0x10", None),
            (b"1,1", None),
        ] {
            assert_eq!(parse_length(v), want, "{v:?}");
        }
    }

    #[test]
    fn chunk_size_lines() {
        for (n, want) in [
            (0, "0\r\n"),
            (1, "1\r\n"),
            (255, "ff\r\n"),
            (4096, "1000\r\n"),
        ] {
            let mut w = Vec::new();
            chunk_size_line(&mut w, n);
            assert_eq!(w, want.as_bytes());
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    fn encode(
        status: u16,
        h: &[(&'static str, &'static str)],
        body: BodyLen,
        head_request: bool,
        close: bool,
    ) -> (String, Result<Encoding, EncodeError>) {
        let map = headers(h);
        let r = ResponseHead {
            status: StatusCode::from_u16(status).unwrap(),
            reason: None,
            headers: &map,
            body,
            head_request,
            close,
        };
        let mut w = Vec::new();
        let e = encode_head(&mut w, &r, b"D");
        (String::from_utf8(w).unwrap(), e)
    }

    /// Status, headers, body, HEAD request, the header lines after the status line, framing.
    type Case = (
        u16,
        &'static [(&'static str, &'static str)],
        BodyLen,
        bool,
        &'static str,
        Encoding,
    );

    #[test]
    fn response_framing_follows_hypers_rules() {
        use BodyLen::*;
        use Encoding::*;
        let cl5 = &[("content-length", "5")][..];
        let cases: Vec<Case> = vec![
            (
                200,
                &[],
                Known(5),
                false,
                "content-length: 5\r\ndate: D\r\n",
                Length(5),
            ),
            (
                200,
                cl5,
                Known(5),
                false,
                "content-length: 5\r\ndate: D\r\n",
                Length(5),
            ),
            (
                200,
                cl5,
                Unknown,
                false,
                "content-length: 5\r\ndate: D\r\n",
                Length(5),
            ),
            (
                200,
                &[],
                Unknown,
                false,
                "transfer-encoding: chunked\r\ndate: D\r\n",
                Chunked,
            ),
            (
                200,
                &[],
                Empty,
                false,
                "content-length: 0\r\ndate: D\r\n",
                Length(0),
            ),
            (
                200,
                &[("content-length", "0")],
                Empty,
                false,
                "content-length: 0\r\ndate: D\r\n",
                Length(0),
            ),
            // HEAD keeps the length of the body it stands for, and sends none.
            (
                200,
                &[("content-length", "9")],
                Empty,
                true,
                "content-length: 9\r\ndate: D\r\n",
                Length(0),
            ),
            (200, &[], Empty, true, "date: D\r\n", Length(0)),
            (200, &[], Unknown, true, "date: D\r\n", Length(0)),
            (204, &[], Empty, false, "date: D\r\n", Length(0)),
            (304, &[], Known(3), false, "date: D\r\n", Length(0)),
            (
                503,
                &[("content-type", "text/plain")],
                Known(3),
                false,
                "content-type: text/plain\r\ncontent-length: 3\r\ndate: D\r\n",
                Length(3),
            ),
            (
                200,
                &[("date", "Mon")],
                Known(1),
                false,
                "date: Mon\r\ncontent-length: 1\r\n",
                Length(1),
            ),
        ];
        for (status, h, body, head_request, want, enc) in cases {
            let (w, e) = encode(status, h, body, head_request, false);
            let line = w.split_once("\r\n").unwrap().1;
            assert_eq!(line, format!("{want}\r\n"), "{status} {h:?} {body:?}");
            assert_eq!(e, Ok(enc), "{status} {h:?} {body:?}");
        }
    }

    #[test]
    fn status_lines_close_and_errors() {
        use BodyLen::Empty;
        assert!(encode(200, &[], Empty, false, false)
            .0
            .starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(encode(502, &[], Empty, false, false)
            .0
            .starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(encode(599, &[], Empty, false, false)
            .0
            .starts_with("HTTP/1.1 599 <none>\r\n"));
        let (w, _) = encode(200, &[], Empty, false, true);
        assert!(w.ends_with("connection: close\r\ndate: D\r\n\r\n"), "{w}");
        let map = HeaderMap::new();
        let mut w = Vec::new();
        let r = ResponseHead {
            status: StatusCode::CREATED,
            reason: Some(b"Made"),
            headers: &map,
            body: BodyLen::Empty,
            head_request: false,
            close: false,
        };
        encode_head(&mut w, &r, b"D").unwrap();
        assert!(w.starts_with(b"HTTP/1.1 201 Made\r\n"));
        // Nothing is left half-written on an error.
        let (w, e) = encode(
            200,
            &[("content-length", "x")],
            BodyLen::Unknown,
            false,
            false,
        );
        assert_eq!((w.as_str(), e), ("", Err(EncodeError::Length)));
        let mut h = headers(&[("content-length", "1")]);
        h.append("content-length", HeaderValue::from_static("2"));
        let r = ResponseHead {
            headers: &h,
            body: BodyLen::Unknown,
            ..r
        };
        let mut w = Vec::new();
        assert_eq!(encode_head(&mut w, &r, b"D"), Err(EncodeError::Length));
        assert!(w.is_empty());
        assert_eq!(
            encode(101, &[], Empty, false, false).1,
            Err(EncodeError::Informational)
        );
    }
}
