//! One-shot probes of a backend: a TCP connect, an HTTP health check, or the `/load` poll.
//! Raw HTTP/1.1 over a socket of our own, with `httparse` reading the response head: no HTTP
//! client library. Nothing a backend sends can make us read more than [`MAX_CHECK_HEAD`] for
//! a check, or [`MAX_HEAD`] plus [`MAX_BODY`] for `/load`, and what we allocate stays within
//! a small multiple of that.
//!
//! The health check judges the status line alone. It reads the response head, never the
//! body, then closes, so a body's framing (chunked, a length, none) and its size cannot fail
//! it. Only the `/load` poll reads a body, because the reading is in it.
//!
//! An error that comes from ballast's own shortage of resources (see [`crate::fault`]) is
//! [`ProbeError::Local`]: the probe did not run, so it says nothing about the backend.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fault::{self, Fault};

/// The most of a response head we read, interim (1xx) heads included. nginx's and HAProxy's
/// usual buffers are 8 KiB and up; a health endpoint's head is a few hundred bytes.
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// The largest response head a health check reads through. Only the status line decides,
/// but the check reads to the head's end, so a backend that closes mid-head fails. HAProxy
/// reads heads into its 16 KiB buffer; frameworks that send every cookie and policy header
/// can pass 8 KiB.
pub(crate) const MAX_CHECK_HEAD: usize = 64 * 1024;
/// The most of a `/load` body we read; a reading is a few bytes.
pub(crate) const MAX_BODY: usize = 4 * 1024;

#[derive(Debug)]
pub(crate) enum ProbeError {
    /// The probe could not run for lack of ballast's own resources (descriptors, memory,
    /// local ports: [`Fault::Ours`]). No verdict on the backend.
    Local(io::Error),
    Timeout(Duration),
    Connect(io::Error),
    Io(io::Error),
    /// The answer is not an HTTP/1.x response, or breaks one of our bounds.
    BadResponse(&'static str),
    /// The response head did not end within this many KiB.
    TooLarge(usize),
    /// A final status other than 2xx.
    Status(u16),
    BadLoad(String),
}

impl ProbeError {
    /// A failed `connect`, sorted by whose fault it is.
    fn connect(e: io::Error) -> ProbeError {
        match fault::classify(&e) {
            Fault::Ours => ProbeError::Local(e),
            Fault::Peer => ProbeError::Connect(e),
        }
    }

    /// A failed read or write, sorted by whose fault it is.
    fn io(e: io::Error) -> ProbeError {
        match fault::classify(&e) {
            Fault::Ours => ProbeError::Local(e),
            Fault::Peer => ProbeError::Io(e),
        }
    }
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Local(e) => write!(f, "{e}"),
            ProbeError::Timeout(limit) => write!(f, "timed out after {limit:?}"),
            ProbeError::Connect(e) => write!(f, "connect failed: {e}"),
            ProbeError::Io(e) => write!(f, "{e}"),
            ProbeError::BadResponse(what) => write!(f, "bad response: {what}"),
            ProbeError::TooLarge(kib) => write!(f, "bad response: head larger than {kib} KiB"),
            ProbeError::Status(code) => write!(f, "status {code}"),
            ProbeError::BadLoad(why) => write!(f, "bad load reading: {why}"),
        }
    }
}

impl std::error::Error for ProbeError {}

/// Opens (and closes) a TCP connection to `addr` within `limit`.
pub(crate) async fn tcp_connect(addr: SocketAddr, limit: Duration) -> Result<(), ProbeError> {
    tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| ProbeError::Timeout(limit))?
        .map_err(ProbeError::connect)?;
    Ok(())
}

/// The HTTP health check: `GET path` from `addr` passes when the final status is 2xx. Reads
/// the response head only and closes; the whole exchange must finish within `limit`.
pub(crate) async fn http_check(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> Result<(), ProbeError> {
    let check = async {
        // Any media type: a health endpoint that only speaks JSON must not fail with 406.
        let mut stream = send_get(addr, path, "*/*").await?;
        let (status, _) = read_until(&mut stream, parse_status, MAX_CHECK_HEAD).await?;
        success(status)
        // Dropping the stream closes it with the body (if any) unread.
    };
    tokio::time::timeout(limit, check)
        .await
        .map_err(|_| ProbeError::Timeout(limit))?
}

/// The `/load` poll: `GET path` from `addr`; returns the body of a 2xx response, at most
/// [`MAX_BODY`] bytes, framed by `Content-Length`, chunked, or running to the close. The
/// whole exchange must finish within `limit`.
pub(crate) async fn http_get(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> Result<Vec<u8>, ProbeError> {
    let poll = async {
        let mut stream = send_get(addr, path, "text/plain").await?;
        let (head, buf) = read_until(&mut stream, parse_head, MAX_HEAD).await?;
        success(head.status)?;
        let framing = head.framing.map_err(ProbeError::BadResponse)?;
        read_body(&mut stream, buf[head.len..].to_vec(), framing).await
    };
    tokio::time::timeout(limit, poll)
        .await
        .map_err(|_| ProbeError::Timeout(limit))?
}

fn success(status: u16) -> Result<(), ProbeError> {
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(ProbeError::Status(status))
    }
}

/// Connects and sends `GET path` with `Connection: close`.
async fn send_get(addr: SocketAddr, path: &str, accept: &str) -> Result<TcpStream, ProbeError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::connect)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ballast-probe\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(ProbeError::io)?;
    Ok(stream)
}

/// Reads until `parse` finds what it looks for (the final status, or the final head), at
/// most `max` bytes. Returns it with everything read so far: the head, and whatever
/// part of the body came with it.
async fn read_until<T>(
    stream: &mut TcpStream,
    parse: fn(&[u8]) -> Result<Option<T>, ProbeError>,
    max: usize,
) -> Result<(T, Vec<u8>), ProbeError> {
    let mut buf = Vec::with_capacity(MAX_HEAD.min(max));
    loop {
        let room = max - buf.len();
        let old = buf.len();
        let read = if room == 0 {
            0
        } else {
            (&mut *stream)
                .take(room as u64)
                .read_buf(&mut buf)
                .await
                .map_err(ProbeError::io)?
        };
        if read == 0 {
            // Closed, or the bound is reached: what is wrong with what we have, if anything,
            // says more than "incomplete".
            return match parse(&buf)? {
                Some(head) => Ok((head, buf)),
                None if room == 0 => Err(ProbeError::TooLarge(max / 1024)),
                None => Err(ProbeError::BadResponse("closed before the end of the head")),
            };
        }
        // A head (or a bad status line) can only be complete once a line is.
        if buf[old..].contains(&b'\n')
            && let Some(head) = parse(&buf)?
        {
            return Ok((head, buf));
        }
    }
}

/// A final response head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub status: u16,
    /// Bytes from the start of the response to the end of this head (interim heads before
    /// it included): where the body starts.
    pub len: usize,
    /// How the body is delimited, or why that is unclear. Only a reader of the body cares:
    /// a health check does not, so a bad `Content-Length` cannot fail it.
    pub framing: Result<Framing, &'static str>,
}

/// How a response body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked,
    /// At the close of the connection.
    Close,
}

/// Tolerates what real servers send and browsers accept (extra spaces, folded or invalid
/// header lines): the verdict is the status line's, and no header can spoil it.
fn parser() -> httparse::ParserConfig {
    let mut config = httparse::ParserConfig::default();
    config
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .ignore_invalid_headers_in_responses(true);
    config
}

/// The final status of the response at the start of `buf`, once its head has ended (an
/// empty line); `Ok(None)` until then. What a health check decides on: interim 1xx heads
/// are skipped, and the final head's header lines are only looked through for its end, so
/// no header's content can fail a check. A status line that is not `HTTP/1.x NNN` is an
/// error, as in [`parse_head`].
pub(crate) fn parse_status(buf: &[u8]) -> Result<Option<u16>, ProbeError> {
    let mut start = 0;
    loop {
        let rest = &buf[start..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        // The status line alone, closed by an empty line: a complete head without headers.
        let mut line = rest[..=end].to_vec();
        line.extend_from_slice(b"\r\n");
        let mut response = httparse::Response::new(&mut []);
        match parser().parse_response(&mut response, &line) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => {
                return Err(ProbeError::BadResponse("malformed status line"));
            }
            Err(e) => return Err(ProbeError::BadResponse(describe(e))),
        }
        let status = response
            .code
            .filter(|code| (100..600).contains(code))
            .ok_or(ProbeError::BadResponse("malformed status line"))?;
        if !(100..200).contains(&status) || status == 101 {
            let ended =
                rest.windows(2).any(|w| w == b"\n\n") || rest.windows(3).any(|w| w == b"\n\r\n");
            return Ok(ended.then_some(status));
        }
        match parse_one(rest)? {
            Some((len, _)) => start += len,
            None => return Ok(None),
        }
    }
}

/// Parses the response head at the start of `buf`: `Ok(None)` while it is incomplete.
/// Interim 1xx heads (such as 103 Early Hints) are skipped, as RFC 9110 asks of every
/// client; `101 Switching Protocols`, which we never ask for, is final. A status line that
/// is not `HTTP/1.x NNN` (reason phrase optional) is an error; so is a code outside 100-599.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<Head>, ProbeError> {
    let mut start = 0;
    loop {
        let Some((len, (status, framing))) = parse_one(&buf[start..])? else {
            return Ok(None);
        };
        start += len;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        return Ok(Some(Head {
            status,
            len: start,
            framing,
        }));
    }
}

/// The status and framing of the one head at the start of `rest`, and its length; `None`
/// while it is incomplete.
type OneHead = (usize, (u16, Result<Framing, &'static str>));

fn parse_one(rest: &[u8]) -> Result<Option<OneHead>, ProbeError> {
    // Every header ends with a line feed and takes at least three bytes (`a:\n`), so there
    // are never more headers than this: no header count can fail a parse, and the head's
    // size bounds the array (32 bytes an entry).
    let lines = rest.iter().filter(|&&b| b == b'\n').count();
    let mut headers = vec![httparse::EMPTY_HEADER; lines.min(rest.len() / 3)];
    let mut response = httparse::Response::new(&mut headers);
    let len = match parser().parse_response(&mut response, rest) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ProbeError::BadResponse(describe(e))),
    };
    let status = response
        .code
        .filter(|code| (100..600).contains(code))
        .ok_or(ProbeError::BadResponse("malformed status line"))?;
    Ok(Some((len, (status, framing(status, response.headers)))))
}

fn describe(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::Version => "not HTTP/1.x",
        httparse::Error::Status => "malformed status line",
        _ => "malformed head",
    }
}

/// The body's framing, after RFC 9112 section 6.3: no body for 204 and 304,
/// `Transfer-Encoding` over `Content-Length`, and otherwise the body runs to the close.
fn framing(status: u16, headers: &[httparse::Header<'_>]) -> Result<Framing, &'static str> {
    if status == 204 || status == 304 {
        return Ok(Framing::Length(0));
    }
    let mut length = None;
    let mut chunked = false;
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only plain chunking: any other coding would need decoding we do not do.
            if !header.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err("unsupported Transfer-Encoding");
            }
            chunked = true;
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let value = header.value.trim_ascii();
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Err("bad Content-Length");
            }
            let len = std::str::from_utf8(value)
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .ok_or("bad Content-Length")?;
            if length.is_some_and(|seen| seen != len) {
                return Err("conflicting Content-Length");
            }
            length = Some(len);
        }
    }
    Ok(match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(len)) => Framing::Length(len),
        (false, None) => Framing::Close,
    })
}

/// Reads a body framed by `framing`, at most [`MAX_BODY`] bytes of it on the wire;
/// `body` holds what already came with the head.
async fn read_body(
    stream: &mut TcpStream,
    mut body: Vec<u8>,
    framing: Framing,
) -> Result<Vec<u8>, ProbeError> {
    const TOO_LARGE: ProbeError = ProbeError::BadResponse("body larger than 4 KiB");
    let wanted = match framing {
        Framing::Length(len) => {
            let len = usize::try_from(len)
                .ok()
                .filter(|len| *len <= MAX_BODY)
                .ok_or(TOO_LARGE)?;
            Some(len)
        }
        Framing::Chunked | Framing::Close => None,
    };
    loop {
        match (framing, wanted) {
            (_, Some(len)) if body.len() >= len => {
                // Anything after the declared length is not the body.
                body.truncate(len);
                return Ok(body);
            }
            (Framing::Chunked, _) => {
                if let Some(decoded) = decode_chunked(&body)? {
                    return Ok(decoded);
                }
            }
            _ => {}
        }
        if body.len() > MAX_BODY {
            return Err(TOO_LARGE);
        }
        // One byte past the bound tells "exactly at the bound" from "too large".
        let room = wanted.unwrap_or(MAX_BODY + 1) - body.len();
        let read = (&mut *stream)
            .take(room as u64)
            .read_buf(&mut body)
            .await
            .map_err(ProbeError::io)?;
        if read == 0 {
            return match framing {
                Framing::Close => Ok(body),
                Framing::Length(_) => {
                    Err(ProbeError::BadResponse("body shorter than Content-Length"))
                }
                Framing::Chunked => Err(ProbeError::BadResponse(
                    "closed in the middle of a chunked body",
                )),
            };
        }
    }
}

/// Decodes a chunked body: `Ok(None)` until its last chunk has arrived. Trailers are not
/// read (the connection closes after the response anyway).
pub(crate) fn decode_chunked(raw: &[u8]) -> Result<Option<Vec<u8>>, ProbeError> {
    const BAD: ProbeError = ProbeError::BadResponse("bad chunked body");
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (data_at, size) = match httparse::parse_chunk_size(&raw[at..]) {
            Ok(httparse::Status::Complete((line, size))) => (at + line, size),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::InvalidChunkSize) => return Err(BAD),
        };
        if size == 0 {
            return Ok(Some(body));
        }
        let size = usize::try_from(size)
            .ok()
            .filter(|size| *size <= MAX_BODY)
            .ok_or(ProbeError::BadResponse("body larger than 4 KiB"))?;
        let data_end = data_at + size;
        let Some(after) = raw.get(data_end..) else {
            return Ok(None);
        };
        match after {
            [b'\r', b'\n', ..] => at = data_end + 2,
            [] | [b'\r'] => return Ok(None),
            _ => return Err(BAD),
        }
        body.extend_from_slice(&raw[data_at..data_end]);
    }
}

/// Parses a `/load` body: a CPU percentage from 0 to 100, surrounding whitespace allowed
/// (`12.3`, `12.3\n`, `7`). Anything else, including values outside 0-100, is rejected:
/// a backend that reports an impossible load is not believed.
pub(crate) fn parse_load(body: &[u8]) -> Result<f32, ProbeError> {
    const LONGEST: usize = 32;
    let text = std::str::from_utf8(body)
        .map_err(|_| ProbeError::BadLoad("not text".into()))?
        .trim();
    if text.is_empty() {
        return Err(ProbeError::BadLoad("empty".into()));
    }
    if text.len() > LONGEST {
        return Err(ProbeError::BadLoad(format!(
            "longer than {LONGEST} characters"
        )));
    }
    // f32's parser accepts "inf", "nan" and exponents; only plain decimals are loads.
    if !text
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'+')
    {
        return Err(ProbeError::BadLoad(format!("{text:?} is not a number")));
    }
    let load: f32 = text
        .parse()
        .map_err(|_| ProbeError::BadLoad(format!("{text:?} is not a number")))?;
    if !(0.0..=100.0).contains(&load) {
        return Err(ProbeError::BadLoad(format!("{load} is outside 0-100")));
    }
    Ok(load)
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::net::TcpListener;

    fn head(response: &[u8]) -> Result<Option<Head>, ProbeError> {
        parse_head(response)
    }

    fn status(response: &[u8]) -> u16 {
        match head(response) {
            Ok(Some(head)) => head.status,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(response)),
        }
    }

    fn bad(response: &[u8]) -> String {
        match head(response) {
            Err(e) => e.to_string(),
            other => panic!(
                "{:?} was accepted: {other:?}",
                String::from_utf8_lossy(response)
            ),
        }
    }

    #[test]
    fn the_status_line_decides_whatever_the_body() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nf\r\n{\"status\":\"UP\"}\r\n0\r\n\r\n";
        assert_eq!(status(chunked), 200);
        let huge = b"HTTP/1.1 200 OK\r\nContent-Length: 8388608\r\n\r\nxxxx";
        assert_eq!(status(huge), 200);
        assert_eq!(status(b"HTTP/1.0 200 OK\r\n\r\n"), 200);
        // No reason phrase, with and without the space; bare line feeds.
        assert_eq!(status(b"HTTP/1.1 200\r\n\r\n"), 200);
        assert_eq!(status(b"HTTP/1.1 204 \r\n\r\n"), 204);
        assert_eq!(status(b"HTTP/1.1 200 OK\nServer: x\n\n"), 200);
        // Header lines that are not well-formed do not spoil the verdict.
        assert_eq!(
            status(b"HTTP/1.1 200 OK\r\nno colon here\r\nX: y\r\n\r\n"),
            200
        );
        assert_eq!(
            status(b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n"),
            200
        );
        // As many headers as fit the bound: no header count fails a check.
        let many = [&b"HTTP/1.1 200 OK\n"[..], &b"a:\n".repeat(2700), b"\n"].concat();
        assert!(many.len() <= MAX_HEAD);
        assert_eq!(status(&many), 200);
        assert_eq!(status(b"HTTP/1.1 500 Internal Server Error\r\n\r\n"), 500);
        assert_eq!(status(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"), 503);
        assert_eq!(status(b"HTTP/1.1 302 Found\r\nLocation: /\r\n\r\n"), 302);
    }

    #[test]
    fn interim_responses_are_skipped() {
        let early =
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n\r\nbody";
        let parsed = head(early).ok().flatten().expect("complete");
        assert_eq!(parsed.status, 200);
        assert_eq!(&early[parsed.len..], b"body");
        // The interim head alone is not an answer yet.
        assert!(matches!(head(&early[..48]), Ok(None)));
        assert_eq!(status(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"), 101);
    }

    #[test]
    fn malformed_status_lines_fail() {
        assert_eq!(
            bad(b"SSH-2.0-OpenSSH_9.6\r\n"),
            "bad response: not HTTP/1.x"
        );
        assert_eq!(bad(b"HTTP/2 200\r\n\r\n"), "bad response: not HTTP/1.x");
        assert_eq!(bad(b"\x00\x01\x02\x03"), "bad response: not HTTP/1.x");
        // Not a header that is not well-formed, but bytes that make the head unreadable.
        for unreadable in [
            &b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
        ] {
            assert_eq!(bad(unreadable), "bad response: malformed head");
        }
        for line in [
            &b"HTTP/1.1 abc OK\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 099 Odd\r\n\r\n",
            b"HTTP/1.1 600 Odd\r\n\r\n",
            b"HTTP/1.1 200 O\x00K\r\n\r\n",
        ] {
            assert_eq!(bad(line), "bad response: malformed status line", "{line:?}");
        }
    }

    #[test]
    fn an_incomplete_head_is_not_an_answer_yet() {
        let full = b"HTTP/1.1 200 OK\r\nServer: test\r\n\r\n";
        for cut in 0..full.len() {
            assert!(matches!(head(&full[..cut]), Ok(None)), "{cut}");
        }
        assert_eq!(status(full), 200);
    }

    #[test]
    fn framing_follows_the_headers() {
        let framing = |response: &[u8]| head(response).ok().flatten().expect("complete").framing;
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"),
            Ok(Framing::Length(4))
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nContent-Length: 4\r\n\r\n"),
            Ok(Framing::Length(4))
        );
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\n\r\n"), Ok(Framing::Close));
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nContent-Length: 9\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing(b"HTTP/1.1 204 No Content\r\n\r\n"),
            Ok(Framing::Length(0))
        );
        for (response, why) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"[..],
                "conflicting Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: +4\r\n\r\n",
                "bad Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                "bad Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "unsupported Transfer-Encoding",
            ),
        ] {
            assert_eq!(framing(response), Err(why));
        }
    }

    #[test]
    fn chunked_bodies_decode() {
        assert_eq!(
            decode_chunked(b"4\r\n12.5\r\n0\r\n\r\n").ok(),
            Some(Some(b"12.5".to_vec()))
        );
        // Split into chunks, with extensions and upper-case hex; trailers are not needed.
        let split = b"2;ext=1\r\n12\r\n2\r\n.5\r\nA\r\n0123456789\r\n0\r\n";
        assert_eq!(
            decode_chunked(split).ok(),
            Some(Some(b"12.50123456789".to_vec()))
        );
        let whole = b"4\r\n12.5\r\n0\r\n\r\n";
        for cut in 0..8 {
            assert!(matches!(decode_chunked(&whole[..cut]), Ok(None)), "{cut}");
        }
        for bad in [&b"x\r\n"[..], b"4\r\n12.5XX0\r\n", b"fffffffffffffffff\r\n"] {
            assert!(decode_chunked(bad).is_err(), "{bad:?}");
        }
        // A chunk larger than the body bound is refused before it is read.
        assert_eq!(
            decode_chunked(b"100000\r\n").err().map(|e| e.to_string()),
            Some("bad response: body larger than 4 KiB".to_string())
        );
    }

    #[test]
    fn loads_as_the_seed_and_our_backend_write_them() {
        assert_eq!(parse_load(b"12.3").ok(), Some(12.3));
        assert_eq!(parse_load(b" 12.3\n").ok(), Some(12.3));
        assert_eq!(parse_load(b"\t0\r\n").ok(), Some(0.0));
        assert_eq!(parse_load(b"100").ok(), Some(100.0));
        assert_eq!(parse_load(b"+5").ok(), Some(5.0));
    }

    #[test]
    fn hostile_loads_are_rejected() {
        for bad in [
            &b""[..],
            b"   ",
            b"NaN",
            b"nan",
            b"inf",
            b"-1",
            b"-0.5",
            b"100.5",
            b"1e2",
            b"12.3.4",
            b"12%",
            b"\xff\xfe\x00",
            b"0x10",
        ] {
            assert!(parse_load(bad).is_err(), "{bad:?} was accepted");
        }
        let huge = vec![b'1'; 1_000_000];
        assert!(parse_load(&huge).is_err());
    }

    // -----------------------------------------------------------------------------------
    // Over a real loopback socket
    // -----------------------------------------------------------------------------------

    const LIMIT: Duration = Duration::from_secs(5);

    /// A one-connection server: reads the request head, then sends each of `pieces` in its
    /// own write (flushed, with a pause, so they arrive as separate reads), then `then`
    /// bytes of filler unless the peer has gone, then closes. Returns the address and the
    /// number of filler bytes the peer took before it went.
    async fn serve(
        pieces: Vec<Vec<u8>>,
        then: usize,
    ) -> (SocketAddr, tokio::task::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            s.set_nodelay(true).expect("nodelay");
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") {
                if s.read(&mut byte).await.unwrap_or(0) == 0 {
                    return 0;
                }
                request.push(byte[0]);
            }
            for piece in pieces {
                if s.write_all(&piece).await.is_err() {
                    return 0;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let filler = [b'x'; 16 * 1024];
            let mut sent = 0;
            while sent < then {
                match s.write(&filler[..filler.len().min(then - sent)]).await {
                    Ok(n) if n > 0 => sent += n,
                    _ => break,
                }
            }
            sent
        });
        (addr, task)
    }

    fn one(bytes: &[u8]) -> Vec<Vec<u8>> {
        vec![bytes.to_vec()]
    }

    #[tokio::test]
    async fn a_check_reads_the_head_and_closes_before_a_large_body() {
        let eight_mib = 8 << 20;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {eight_mib}\r\n\r\n");
        let (addr, sent) = serve(one(head.as_bytes()), eight_mib).await;
        assert!(http_check(addr, "/healthz", LIMIT).await.is_ok());
        let sent = sent.await.expect("server");
        assert!(
            sent < eight_mib,
            "the check read the whole body ({sent} bytes)"
        );
    }

    #[tokio::test]
    async fn a_check_passes_a_chunked_200() {
        let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nf\r\n{\"status\":\"UP\"}\r\n0\r\n\r\n";
        let (addr, _) = serve(one(response), 0).await;
        assert!(http_check(addr, "/healthz", LIMIT).await.is_ok());
    }

    #[tokio::test]
    async fn a_head_split_across_many_reads_is_put_together() {
        let response = b"HTTP/1.1 200 OK\r\nServer: trickle\r\nContent-Length: 4\r\n\r\n12.5";
        let pieces: Vec<Vec<u8>> = response.chunks(3).map(<[u8]>::to_vec).collect();
        let (addr, _) = serve(pieces.clone(), 0).await;
        assert!(http_check(addr, "/healthz", LIMIT).await.is_ok());
        let (addr, _) = serve(pieces, 0).await;
        assert_eq!(
            http_get(addr, "/load", LIMIT).await.ok(),
            Some(b"12.5".to_vec())
        );
    }

    #[tokio::test]
    async fn a_check_fails_on_the_status_and_on_a_bad_head() {
        let cases: [(&[u8], usize, &str); 4] = [
            (
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                0,
                "status 503",
            ),
            (b"SSH-2.0-OpenSSH_9.6\r\n", 0, "bad response: not HTTP/1.x"),
            (
                b"HTTP/1.1 200 OK\r\nServer: half",
                0,
                "bad response: closed before the end of the head",
            ),
            // Headers that never end: 1 MiB of filler after a status line.
            (
                b"HTTP/1.1 200 OK\r\nX-Pad: ",
                1 << 20,
                "bad response: head larger than 64 KiB",
            ),
        ];
        for (response, filler, expected) in cases {
            let (addr, _) = serve(one(response), filler).await;
            let verdict = http_check(addr, "/healthz", LIMIT).await;
            assert_eq!(
                verdict.err().map(|e| e.to_string()).as_deref(),
                Some(expected)
            );
        }
    }

    #[tokio::test]
    async fn load_bodies_in_every_framing() {
        let cases: [(&[u8], &[u8]); 4] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n12.5", b"12.5"),
            // More than the declared length: only the declared body.
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n33garbage", b"33"),
            (b"HTTP/1.0 200 OK\r\n\r\n7\n", b"7\n"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n12\r\n2\r\n.5\r\n0\r\n\r\n", b"12.5"),
        ];
        for (response, body) in cases {
            let (addr, _) = serve(one(response), 0).await;
            assert_eq!(
                http_get(addr, "/load", LIMIT).await.ok().as_deref(),
                Some(body),
                "{:?}",
                String::from_utf8_lossy(response)
            );
        }
    }

    #[tokio::test]
    async fn load_bodies_stay_bounded() {
        let cases: [(&[u8], usize, &str); 5] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 8388608\r\n\r\n",
                0,
                "bad response: body larger than 4 KiB",
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\n",
                1 << 20,
                "bad response: body larger than 4 KiB",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                1 << 20,
                "bad response: bad chunked body",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                0,
                "bad response: body shorter than Content-Length",
            ),
            (
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
                0,
                "status 500",
            ),
        ];
        for (response, filler, expected) in cases {
            let (addr, _) = serve(one(response), filler).await;
            let got = http_get(addr, "/load", LIMIT).await;
            assert_eq!(got.err().map(|e| e.to_string()).as_deref(), Some(expected));
        }
    }
}
