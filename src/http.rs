//! Minimal HTTP/1.1 server-side plumbing, hand-written on tokio (no framework).
//!
//! Only what a tiny origin server needs: read one request head at a time (bounded in size and
//! time), discard a `Content-Length` body, and write a complete response in one buffer. It is
//! shared by the demo backend and is meant to be reused by small admin endpoints.
//!
//! Deliberate limits, each mapped to a status by [`HttpError::status`]:
//!
//! - the request head (request line + header lines, including the blank lines that may precede
//!   the request line) is at most [`Limits::max_head_bytes`] → 431;
//! - a `Content-Length` body larger than [`Limits::max_body_bytes`] → 413;
//! - any `Transfer-Encoding` → **501 Not Implemented**: we do not decode chunked bodies, and
//!   RFC 9112 §6.1 asks a server that does not understand a transfer coding to answer 501;
//! - a well-formed but unsupported version (`HTTP/2.0`, `HTTP/0.9`…) → 505;
//! - anything malformed → 400.
//!
//! A missing `Host` header is tolerated on purpose: the peers of these endpoints are probes and
//! scripts on a private network, and being lenient there costs nothing.
//!
//! Every error means the connection must be closed afterwards: after a framing error the next
//! request boundary is unknowable.

use std::fmt;
use std::io;
use std::time::Duration;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};

/// Resource bounds applied while reading one request.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Maximum size of the request head in bytes, line terminators included.
    pub max_head_bytes: usize,
    /// Maximum `Content-Length` accepted; the body is read and discarded.
    pub max_body_bytes: u64,
    /// Time allowed for one whole request, counted from the moment we start waiting for it.
    /// It therefore also bounds how long an idle keep-alive connection is kept open, and stops
    /// slow-drip clients from holding a task forever.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 8 * 1024,
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The HTTP versions we speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// A parsed request head. The body, if any, has already been consumed and discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub version: Version,
    /// Header fields in arrival order; names keep their original case.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// First value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether any `name` header carries `token` in its comma-separated list
    /// (`Connection: keep-alive, Upgrade`), case-insensitively.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Path part of the target, without the query. Absolute-form targets
    /// (`http://host/path`) are reduced to their path, as RFC 9112 §3.2.2 requires servers to
    /// accept them.
    pub fn path(&self) -> &str {
        let t = self.target.as_str();
        let t = match t.find("://") {
            Some(i) if !t.starts_with('/') => {
                let rest = &t[i + 3..];
                match rest.find('/') {
                    Some(j) => &rest[j..],
                    None => "/",
                }
            }
            _ => t,
        };
        match t.find('?') {
            Some(i) => &t[..i],
            None => t,
        }
    }

    /// Persistence per RFC 9112 §9.3: HTTP/1.1 keeps the connection unless `Connection: close`;
    /// HTTP/1.0 closes unless the client asked for `Connection: keep-alive`.
    pub fn wants_keep_alive(&self) -> bool {
        if self.has_token("connection", "close") {
            return false;
        }
        match self.version {
            Version::Http11 => true,
            Version::Http10 => self.has_token("connection", "keep-alive"),
        }
    }
}

/// Why a request could not be read. See [`HttpError::status`] for what to answer.
#[derive(Debug)]
pub enum HttpError {
    /// Malformed request; the message says what was wrong (for logs, not for the peer).
    BadRequest(&'static str),
    HeadTooLarge,
    BodyTooLarge,
    /// The request used `Transfer-Encoding`, which we do not implement.
    TransferEncoding,
    VersionNotSupported,
    /// The request did not arrive within [`Limits::request_timeout`].
    Timeout,
    /// The peer closed the connection in the middle of a request.
    UnexpectedEof,
    Io(io::Error),
}

impl HttpError {
    /// Status to send before closing, or `None` when the peer is gone or too slow and the
    /// connection should simply be dropped.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::BadRequest(_) => Some(400),
            HttpError::HeadTooLarge => Some(431),
            HttpError::BodyTooLarge => Some(413),
            HttpError::TransferEncoding => Some(501),
            HttpError::VersionNotSupported => Some(505),
            HttpError::Timeout | HttpError::UnexpectedEof | HttpError::Io(_) => None,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::BadRequest(why) => write!(f, "bad request: {why}"),
            HttpError::HeadTooLarge => f.write_str("request head too large"),
            HttpError::BodyTooLarge => f.write_str("request body too large"),
            HttpError::TransferEncoding => f.write_str("transfer-encoding not implemented"),
            HttpError::VersionNotSupported => f.write_str("HTTP version not supported"),
            HttpError::Timeout => f.write_str("timed out waiting for the request"),
            HttpError::UnexpectedEof => f.write_str("connection closed mid-request"),
            HttpError::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HttpError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for HttpError {
    fn from(e: io::Error) -> Self {
        HttpError::Io(e)
    }
}

/// Reads one request. `Ok(None)` means the peer closed cleanly between requests (blank lines
/// before a request line are ignored, per RFC 9112 §2.2, and do not count as a request).
///
/// The reader must be the same buffered reader for the whole connection: it may hold bytes of
/// the next pipelined request when this returns.
pub async fn read_request(
    reader: &mut (impl AsyncBufRead + Unpin),
    limits: &Limits,
) -> Result<Option<Request>, HttpError> {
    match tokio::time::timeout(limits.request_timeout, read_request_untimed(reader, limits)).await {
        Ok(result) => result,
        Err(_) => Err(HttpError::Timeout),
    }
}

async fn read_request_untimed(
    reader: &mut (impl AsyncBufRead + Unpin),
    limits: &Limits,
) -> Result<Option<Request>, HttpError> {
    let mut budget = limits.max_head_bytes;
    let mut line = Vec::new();

    let (method, target, version) = loop {
        match read_line(reader, &mut budget, &mut line).await? {
            None => return Ok(None),
            Some([]) => continue,
            Some(l) => break parse_request_line(l)?,
        }
    };

    let mut headers = Vec::new();
    loop {
        match read_line(reader, &mut budget, &mut line).await? {
            None => return Err(HttpError::UnexpectedEof),
            Some([]) => break,
            Some(l) => headers.push(parse_header(l)?),
        }
    }

    let request = Request {
        method,
        target,
        version,
        headers,
    };
    let body_len = body_length(&request, limits)?;
    if body_len > 0 {
        let copied =
            tokio::io::copy(&mut (&mut *reader).take(body_len), &mut tokio::io::sink()).await?;
        if copied < body_len {
            return Err(HttpError::UnexpectedEof);
        }
    }
    Ok(Some(request))
}

/// Reads one line (LF or CRLF terminated) into `buf`, charging its bytes to `budget`.
/// `Ok(None)` is a clean EOF before the first byte of the line.
async fn read_line<'b>(
    reader: &mut (impl AsyncBufRead + Unpin),
    budget: &mut usize,
    buf: &'b mut Vec<u8>,
) -> Result<Option<&'b [u8]>, HttpError> {
    buf.clear();
    let allowed = u64::try_from(*budget).unwrap_or(u64::MAX);
    let n = (&mut *reader).take(allowed).read_until(b'\n', buf).await?;
    *budget = budget.saturating_sub(n);
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        if buf.contains(&b'\r') {
            return Err(HttpError::BadRequest("bare CR in request head"));
        }
        return Ok(Some(buf.as_slice()));
    }
    if *budget == 0 {
        Err(HttpError::HeadTooLarge)
    } else if n == 0 {
        Ok(None)
    } else {
        Err(HttpError::UnexpectedEof)
    }
}

/// `tchar` from RFC 9110 §5.6.2: the characters allowed in methods and header names.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_request_line(line: &[u8]) -> Result<(String, String, Version), HttpError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::BadRequest(
            "request line is not METHOD SP TARGET SP VERSION",
        ));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::BadRequest("invalid method"));
    }
    if target.is_empty() || !target.iter().all(|&b| b.is_ascii_graphic()) {
        return Err(HttpError::BadRequest("invalid request target"));
    }
    let version = match version {
        b"HTTP/1.1" => Version::Http11,
        b"HTTP/1.0" => Version::Http10,
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            return Err(HttpError::VersionNotSupported);
        }
        _ => return Err(HttpError::BadRequest("invalid HTTP version")),
    };
    // Both checks above restrict the bytes to ASCII, so the conversions are lossless.
    Ok((
        String::from_utf8_lossy(method).into_owned(),
        String::from_utf8_lossy(target).into_owned(),
        version,
    ))
}

fn parse_header(line: &[u8]) -> Result<(String, String), HttpError> {
    // Obsolete line folding is a classic request-smuggling vector; RFC 9112 §5.2 lets a server
    // reject it with 400.
    if line.starts_with(b" ") || line.starts_with(b"\t") {
        return Err(HttpError::BadRequest("obsolete header line folding"));
    }
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Err(HttpError::BadRequest("header line without colon"));
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    // Rejecting non-tchar also rejects whitespace before the colon, which RFC 9112 §5.1
    // requires.
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::BadRequest("invalid header name"));
    }
    let value = trim_ows(value);
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(HttpError::BadRequest("control character in header value"));
    }
    // obs-text (bytes ≥ 0x80) is legal in values; lossy decoding keeps them harmless.
    Ok((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// Strips optional whitespace (SP / HTAB only, RFC 9110 §5.6.3) from both ends.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn body_length(request: &Request, limits: &Limits) -> Result<u64, HttpError> {
    if request.header("transfer-encoding").is_some() {
        return Err(HttpError::TransferEncoding);
    }
    let mut length = None;
    for (_, value) in request
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HttpError::BadRequest("invalid Content-Length"));
        }
        // All digits, so the only possible parse failure is overflow: certainly too large.
        let n: u64 = value.parse().map_err(|_| HttpError::BodyTooLarge)?;
        // Disagreeing duplicates would let two parsers frame the message differently.
        if length.is_some_and(|prev| prev != n) {
            return Err(HttpError::BadRequest("conflicting Content-Length headers"));
        }
        length = Some(n);
    }
    let length = length.unwrap_or(0);
    if length > limits.max_body_bytes {
        return Err(HttpError::BodyTooLarge);
    }
    Ok(length)
}

/// A complete response. Extra header names and values come from the server, never from the
/// peer, so they are written verbatim.
#[derive(Debug, Clone)]
pub struct Response<'a> {
    pub status: u16,
    pub content_type: &'a str,
    pub body: &'a [u8],
    pub extra_headers: &'a [(&'a str, &'a str)],
    /// Whether the connection stays open after this response.
    pub keep_alive: bool,
    /// Answer to a HEAD request: all headers, including the body's `Content-Length`, but no
    /// body.
    pub head_only: bool,
}

impl Response<'_> {
    /// The wire bytes, so the response goes out in a single write.
    pub fn encode(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len()
        );
        // `keep-alive` is spelled out because HTTP/1.0 clients assume close without it; for
        // HTTP/1.1 clients it is redundant but harmless.
        head.push_str(if self.keep_alive {
            "Connection: keep-alive\r\n"
        } else {
            "Connection: close\r\n"
        });
        for (name, value) in self.extra_headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body);
        }
        out
    }

    pub async fn write_to(&self, writer: &mut (impl AsyncWrite + Unpin)) -> io::Result<()> {
        writer.write_all(&self.encode()).await?;
        writer.flush().await
    }
}

/// Writes a complete response with the usual headers in one write.
pub async fn write_response(
    writer: &mut (impl AsyncWrite + Unpin),
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) -> io::Result<()> {
    Response {
        status,
        content_type,
        body,
        extra_headers: &[],
        keep_alive,
        head_only: false,
    }
    .write_to(writer)
    .await
}

/// Standard reason phrase; empty (which the grammar allows) for codes we never send.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Reads and drops whatever the peer still sends, up to `max_bytes` or `timeout`, until EOF.
///
/// Call it after shutting down the write half when the server decides to close: closing a
/// socket that still has unread input makes the kernel send RST, and an RST can destroy the
/// response (say, the 431) before the client has read it.
pub async fn discard_input(
    reader: &mut (impl AsyncRead + Unpin),
    max_bytes: u64,
    timeout: Duration,
) {
    let mut limited = (&mut *reader).take(max_bytes);
    let mut sink = tokio::io::sink();
    // Any outcome is fine: the point is only to delay the close a little.
    let _ = tokio::time::timeout(timeout, tokio::io::copy(&mut limited, &mut sink)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn parse(input: &[u8]) -> Result<Option<Request>, HttpError> {
        parse_with(input, &Limits::default()).await
    }

    async fn parse_with(input: &[u8], limits: &Limits) -> Result<Option<Request>, HttpError> {
        let mut reader = BufReader::new(input);
        read_request(&mut reader, limits).await
    }

    async fn parse_ok(input: &[u8]) -> Request {
        match parse(input).await {
            Ok(Some(r)) => r,
            other => panic!("expected a request from {input:?}, got {other:?}"),
        }
    }

    async fn status_of(input: &[u8]) -> Option<u16> {
        match parse(input).await {
            Err(e) => e.status(),
            other => panic!("expected an error from {input:?}, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn parses_a_simple_get() {
        let r = parse_ok(b"GET /load?x=1 HTTP/1.1\r\nHost: example\r\nAccept: */*\r\n\r\n").await;
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/load?x=1");
        assert_eq!(r.path(), "/load");
        assert_eq!(r.version, Version::Http11);
        assert_eq!(
            r.headers,
            vec![
                ("Host".to_string(), "example".to_string()),
                ("Accept".to_string(), "*/*".to_string())
            ]
        );
    }

    #[tokio::test]
    async fn accepts_bare_lf_and_leading_blank_lines() {
        let r = parse_ok(b"\r\n\nGET / HTTP/1.0\nHost: a\n\n").await;
        assert_eq!(r.method, "GET");
        assert_eq!(r.version, Version::Http10);
        assert_eq!(r.header("host"), Some("a"));
    }

    #[tokio::test]
    async fn header_lookup_is_case_insensitive_and_trims_whitespace() {
        let r =
            parse_ok(b"GET / HTTP/1.1\r\ncOnTeNt-TyPe: \t text/plain \t\r\nX-Empty:\r\n\r\n").await;
        assert_eq!(r.header("Content-Type"), Some("text/plain"));
        assert_eq!(r.header("CONTENT-TYPE"), Some("text/plain"));
        assert_eq!(r.header("x-empty"), Some(""));
        assert_eq!(r.header("missing"), None);
    }

    #[tokio::test]
    async fn absolute_form_target_reduces_to_path() {
        let r = parse_ok(b"GET http://h:80/load?q HTTP/1.1\r\n\r\n").await;
        assert_eq!(r.path(), "/load");
        let r = parse_ok(b"GET http://h HTTP/1.1\r\n\r\n").await;
        assert_eq!(r.path(), "/");
    }

    #[tokio::test]
    async fn keep_alive_rules() {
        let cases: &[(&[u8], bool)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", true),
            (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
            (
                b"GET / HTTP/1.1\r\nconnection: Upgrade, CLOSE\r\n\r\n",
                false,
            ),
            (b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
                false,
            ),
        ];
        for (input, expected) in cases {
            let r = parse_ok(input).await;
            assert_eq!(
                r.wants_keep_alive(),
                *expected,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[tokio::test]
    async fn content_length_body_is_discarded_and_next_request_follows() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n";
        let mut reader = BufReader::new(&input[..]);
        let limits = Limits::default();
        let first = read_request(&mut reader, &limits).await.unwrap().unwrap();
        assert_eq!(first.target, "/a");
        let second = read_request(&mut reader, &limits).await.unwrap().unwrap();
        assert_eq!(second.target, "/b");
        assert!(read_request(&mut reader, &limits).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn clean_eof_is_none() {
        assert!(parse(b"").await.unwrap().is_none());
        assert!(parse(b"\r\n\r\n").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn eof_mid_request_is_unexpected_eof() {
        for input in [
            &b"GE"[..],
            b"GET / HTTP/1.1",
            b"GET / HTTP/1.1\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
        ] {
            let result = parse(input).await;
            assert!(
                matches!(result, Err(HttpError::UnexpectedEof)),
                "{input:?} gave {result:?}"
            );
            assert_eq!(result.err().and_then(|e| e.status()), None);
        }
    }

    #[tokio::test]
    async fn oversize_head_is_431() {
        let limits = Limits {
            max_head_bytes: 64,
            ..Limits::default()
        };
        // Exactly at the limit is fine: 16 + 46 + 2 = 64 bytes.
        let mut exact = b"GET / HTTP/1.1\r\n".to_vec();
        exact.extend_from_slice(format!("X: {}\r\n", "a".repeat(41)).as_bytes());
        exact.extend_from_slice(b"\r\n");
        assert_eq!(exact.len(), 64);
        assert!(parse_with(&exact, &limits).await.unwrap().is_some());

        let mut over = b"GET / HTTP/1.1\r\n".to_vec();
        over.extend_from_slice(format!("X: {}\r\n", "a".repeat(42)).as_bytes());
        over.extend_from_slice(b"\r\n");
        let err = parse_with(&over, &limits).await.unwrap_err();
        assert!(matches!(err, HttpError::HeadTooLarge), "{err:?}");
        assert_eq!(err.status(), Some(431));

        // A line that never ends must not be buffered without bound either.
        let endless = vec![b'A'; 100_000];
        let err = parse_with(&endless, &limits).await.unwrap_err();
        assert!(matches!(err, HttpError::HeadTooLarge), "{err:?}");

        // Nor an endless run of blank lines before the request line.
        let blanks = b"\r\n".repeat(1000);
        let err = parse_with(&blanks, &limits).await.unwrap_err();
        assert!(matches!(err, HttpError::HeadTooLarge), "{err:?}");
    }

    #[tokio::test]
    async fn default_head_limit_is_8_kib() {
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.extend_from_slice(&vec![b'a'; 8 * 1024]);
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status_of(&big).await, Some(431));
    }

    #[tokio::test]
    async fn malformed_request_lines_are_400() {
        for input in [
            &b"GET\r\n\r\n"[..],
            b"GET /\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b" GET / HTTP/1.1\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\n\r\n",
            b"GET / http/1.1\r\n\r\n",
            b"GET / HTTP/1.1x\r\n\r\n",
            b"GET / HTTP/1\r\n\r\n",
            b"GET\t/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\r\n\r\n",
        ] {
            assert_eq!(status_of(input).await, Some(400), "{input:?}");
        }
    }

    #[tokio::test]
    async fn malformed_headers_are_400() {
        for input in [
            &b"GET / HTTP/1.1\r\nNoColon\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\n: empty-name\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : space-before-colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: nul\x00byte\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: bare\rcr\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length:\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ] {
            assert_eq!(status_of(input).await, Some(400), "{input:?}");
        }
    }

    #[tokio::test]
    async fn body_limits_and_transfer_encoding() {
        assert_eq!(
            status_of(b"POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n").await,
            Some(413)
        );
        assert_eq!(
            status_of(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n").await,
            Some(413)
        );
        assert_eq!(
            status_of(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").await,
            Some(501)
        );
        // Transfer-Encoding wins over Content-Length, as RFC 9112 §6.3 says it must.
        assert_eq!(
            status_of(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: gzip\r\n\r\n")
                .await,
            Some(501)
        );
        let ok =
            parse_ok(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab").await;
        assert_eq!(ok.method, "POST");
    }

    #[tokio::test]
    async fn unsupported_versions_are_505() {
        assert_eq!(status_of(b"GET / HTTP/2.0\r\n\r\n").await, Some(505));
        assert_eq!(status_of(b"GET / HTTP/0.9\r\n\r\n").await, Some(505));
    }

    #[tokio::test]
    async fn binary_garbage_is_rejected() {
        assert_eq!(
            status_of(b"\x00\xff\xfe\x16\x03\x01\r\n\r\n").await,
            Some(400)
        );
        // A TLS ClientHello sent to the plain-text port.
        let r = parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").await;
        assert!(r.is_err(), "{r:?}");
        let r = parse(b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n").await;
        assert!(r.is_ok(), "obs-text is legal in values: {r:?}");
    }

    /// Pseudo-random inputs and mutations of a valid request must never panic.
    #[tokio::test]
    async fn never_panics_on_random_input() {
        let valid =
            b"POST /x?y HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let limits = Limits {
            max_head_bytes: 96,
            max_body_bytes: 8,
            ..Limits::default()
        };
        for round in 0..3000 {
            let input: Vec<u8> = if round % 2 == 0 {
                let len = (next() % 128) as usize;
                (0..len).map(|_| next() as u8).collect()
            } else {
                let mut v = valid.to_vec();
                for _ in 0..(next() % 4 + 1) {
                    let i = (next() as usize) % v.len();
                    match next() % 3 {
                        0 => v[i] = next() as u8,
                        1 => {
                            v.remove(i);
                        }
                        _ => v.insert(i, next() as u8),
                    }
                }
                v
            };
            let _ = parse_with(&input, &limits).await;
        }
    }

    #[tokio::test]
    async fn slow_request_times_out() {
        let (client, server) = tokio::io::duplex(64);
        let limits = Limits {
            request_timeout: Duration::from_millis(50),
            ..Limits::default()
        };
        let mut reader = BufReader::new(server);
        let result = read_request(&mut reader, &limits).await;
        assert!(matches!(result, Err(HttpError::Timeout)), "{result:?}");
        assert_eq!(result.err().and_then(|e| e.status()), None);
        drop(client);
    }

    #[test]
    fn response_encoding_is_exact() {
        let r = Response {
            status: 200,
            content_type: "text/plain",
            body: b"12.5",
            extra_headers: &[],
            keep_alive: true,
            head_only: false,
        };
        assert_eq!(
            r.encode(),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\n12.5"
        );
        let r = Response {
            status: 405,
            content_type: "text/plain",
            body: b"no",
            extra_headers: &[("Allow", "GET, HEAD")],
            keep_alive: false,
            head_only: true,
        };
        assert_eq!(
            r.encode(),
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\nAllow: GET, HEAD\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn write_response_writes_everything() {
        let mut out = Vec::new();
        write_response(&mut out, 404, "text/plain", b"not found\n", false)
            .await
            .unwrap();
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n"
        );
    }

    #[test]
    fn unknown_status_has_empty_reason() {
        assert_eq!(reason_phrase(299), "");
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
    }
}

/// The answer to one request, as a responder builds it for [`serve_requests`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: &'static [(&'static str, &'static str)],
}

impl Reply {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
            headers: &[],
        }
    }

    pub fn with_headers(mut self, headers: &'static [(&'static str, &'static str)]) -> Reply {
        self.headers = headers;
        self
    }
}

/// How long a connection we are closing keeps draining the client's input, so the last
/// response is not lost to a reset.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Serves the requests of one connection in turn, the loop the demo backend and the admin
/// listener share: each request goes to `respond`, whose reply is written with keep-alive
/// as HTTP/1.1 defines it, until the client closes or asks to, or `max_requests` have been
/// answered. A malformed request gets `on_error(status, why)` and the connection closes.
pub async fn serve_requests<R, Fut>(
    mut stream: tokio::net::TcpStream,
    limits: &Limits,
    max_requests: Option<u64>,
    on_error: fn(u16, &str) -> Reply,
    mut respond: R,
) -> io::Result<()>
where
    R: FnMut(Request) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    // Each response is a single write, but pipelined responses would otherwise wait for the
    // peer's delayed ACK.
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.split();
    let mut rd = tokio::io::BufReader::new(rd);
    let mut served: u64 = 0;
    loop {
        let request = match read_request(&mut rd, limits).await {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()),
            Err(e) => {
                if let Some(status) = e.status() {
                    let reply = on_error(status, &e.to_string());
                    write_response(&mut wr, status, reply.content_type, &reply.body, false).await?;
                    wr.shutdown().await?;
                    discard_input(&mut rd, limits.max_body_bytes, CLOSE_LINGER).await;
                }
                return Err(io::Error::other(e));
            }
        };
        served += 1;
        let keep_alive = request.wants_keep_alive() && max_requests.is_none_or(|max| served < max);
        let head_only = request.method == "HEAD";
        let reply = respond(request).await;
        Response {
            status: reply.status,
            content_type: reply.content_type,
            body: &reply.body,
            extra_headers: reply.headers,
            keep_alive,
            head_only,
        }
        .write_to(&mut wr)
        .await?;
        if !keep_alive {
            wr.shutdown().await?;
            discard_input(&mut rd, limits.max_body_bytes, CLOSE_LINGER).await;
            return Ok(());
        }
    }
}
