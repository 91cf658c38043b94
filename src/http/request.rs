//! Reading one request: the head (bounded in size and time), its framing, and discarding
//! what a closing connection still receives.

use std::fmt;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt};

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
