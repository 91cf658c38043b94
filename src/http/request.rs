//! Reading one request: the head (bounded in size and time, parsed by `httparse` as its lines
//! arrive), its framing, and discarding what a closing connection still receives.
//!
//! httparse checks the syntax: methods and header names are tokens, targets and values carry
//! no control characters, bare-LF line endings and blank lines before the request line are
//! fine, obsolete line folding is not. ballast adds what httparse leaves to its caller: the
//! size and time bounds, ASCII-only targets, 505 rather than 400 for a well-formed version
//! other than 1.0 and 1.1, and the body's framing.

use std::fmt;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt};

/// Resource bounds applied while reading one request.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
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
pub(crate) enum Version {
    Http10,
    Http11,
}

/// A parsed request head. The body, if any, has already been consumed and discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub method: String,
    pub target: String,
    pub version: Version,
    /// Header fields in arrival order; names keep their original case.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// First value of header `name`, compared case-insensitively.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether any `name` header carries `token` in its comma-separated list
    /// (`Connection: keep-alive, Upgrade`), case-insensitively.
    pub(crate) fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Path part of the target, without the query. Absolute-form targets
    /// (`http://host/path`) are reduced to their path, as RFC 9112 §3.2.2 requires servers to
    /// accept them.
    pub(crate) fn path(&self) -> &str {
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
    pub(crate) fn wants_keep_alive(&self) -> bool {
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
pub(crate) enum HttpError {
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
    pub(crate) fn status(&self) -> Option<u16> {
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
pub(crate) async fn read_request(
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
    let Some(request) = read_head(reader, limits.max_head_bytes).await? else {
        return Ok(None);
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

/// Reads one request head into a buffer of at most `max` bytes and parses it with httparse.
/// Only the head's own bytes are taken from `reader`: whatever follows (a body, the next
/// pipelined request) stays in its buffer. `Ok(None)` is a clean EOF with nothing but blank
/// lines read.
///
/// A line is judged once it ends, as the head is: httparse runs on the bytes up to the last
/// line feed, and only when a read brings a new one. So a peer that stops, or runs out of
/// room, halfway through a line gets the same answer whatever that line holds (`UnexpectedEof`,
/// or 431), and a head dripped in tiny reads is not parsed again for every byte.
async fn read_head(
    reader: &mut (impl AsyncBufRead + Unpin),
    max: usize,
) -> Result<Option<Request>, HttpError> {
    let mut head = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            // Only blank lines so far (which httparse has let through) is a clean close.
            let blank =
                head.last() != Some(&b'\r') && head.iter().all(|&b| b == b'\r' || b == b'\n');
            return if blank {
                Ok(None)
            } else {
                Err(HttpError::UnexpectedEof)
            };
        }
        let old = head.len();
        let taken = available.len().min(max - old);
        head.extend_from_slice(&available[..taken]);
        let parsed = match head[old..].iter().rposition(|&b| b == b'\n') {
            Some(last) => parse_head(&head[..=old + last])?,
            None => None,
        };
        if let Some((len, request)) = parsed {
            // The head ends in these new bytes: had it ended earlier, an earlier parse of a
            // prefix would have found it.
            reader.consume(len - old);
            return Ok(Some(request));
        }
        reader.consume(taken);
        if head.len() == max {
            return Err(HttpError::HeadTooLarge);
        }
    }
}

/// httparse's defaults are the strict request parsing we want, spelled out so that no change
/// of default can loosen them: single spaces in the request line, no whitespace before a
/// header's colon or before the first header line, and a bad header line rejected rather
/// than skipped. Obsolete line folding, a classic request-smuggling vector that RFC 9112 §5.2
/// lets a server reject with 400, httparse never accepts in a request.
fn parser() -> httparse::ParserConfig {
    let mut config = httparse::ParserConfig::default();
    config
        .allow_multiple_spaces_in_request_line_delimiters(false)
        .allow_space_before_first_header_name(false)
        .ignore_invalid_headers_in_requests(false);
    config
}

/// The request whose head is at the start of `buf`, with the head's length; `None` while it
/// is incomplete. httparse skips blank lines before the request line (RFC 9112 §2.2), accepts
/// bare LF line endings, checks methods and header names against `tchar`, rejects control
/// characters in targets and values, and trims a value's surrounding whitespace.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Request)>, HttpError> {
    // Every header line ends with a line feed and takes at least three bytes (`a:\n`), so no
    // header count can fail a parse, and the head's size bounds the array.
    let lines = buf.iter().filter(|&&b| b == b'\n').count();
    let mut headers = vec![httparse::EMPTY_HEADER; lines.min(buf.len() / 3)];
    let mut parsed = httparse::Request::new(&mut headers);
    let result = parser().parse_request(&mut parsed, buf);
    // httparse lets UTF-8 through in the target, but RFC 9112's request-target is ASCII. The
    // target is judged as soon as httparse has it, before the version and the headers.
    if parsed
        .path
        .is_some_and(|target| !target.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(HttpError::BadRequest("invalid request target"));
    }
    let len = match result {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::Version) => return Err(version_error(buf)),
        Err(e) => return Err(HttpError::BadRequest(describe(e))),
    };
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(HttpError::BadRequest("incomplete request line"));
    };
    let version = match minor {
        0 => Version::Http10,
        1 => Version::Http11,
        _ => return Err(HttpError::VersionNotSupported),
    };
    let headers = parsed
        .headers
        .iter()
        // obs-text (bytes ≥ 0x80) is legal in values; lossy decoding keeps them harmless.
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let request = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        version,
        headers,
    };
    Ok(Some((len, request)))
}

/// httparse knows only HTTP/1.0 and HTTP/1.1. A version it refuses is still a well-formed one
/// we do not support (505) if it reads `HTTP/x.y`; anything else is malformed (400). httparse
/// has accepted the method and the target by then, and the request line has ended in `buf`.
fn version_error(buf: &[u8]) -> HttpError {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n');
    let line = buf[start.unwrap_or(buf.len())..]
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line.splitn(3, |&b| b == b' ').nth(2) {
        Some([b'H', b'T', b'T', b'P', b'/', major, b'.', minor])
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            HttpError::VersionNotSupported
        }
        _ => HttpError::BadRequest("invalid HTTP version"),
    }
}

fn describe(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::Token => "invalid method or request target",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::HeaderName => "invalid header line",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::Version => "invalid HTTP version",
        httparse::Error::Status | httparse::Error::TooManyHeaders => "malformed request head",
    }
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
pub(crate) async fn discard_input(
    reader: &mut (impl AsyncRead + Unpin),
    max_bytes: u64,
    timeout: Duration,
) {
    let mut limited = (&mut *reader).take(max_bytes);
    let mut sink = tokio::io::sink();
    // Any outcome is fine: the point is only to delay the close a little.
    let _ = tokio::time::timeout(timeout, tokio::io::copy(&mut limited, &mut sink)).await;
}
