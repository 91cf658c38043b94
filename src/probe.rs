//! One-shot probes of a backend: a TCP connect, or one raw HTTP/1.1 `GET` whose response is
//! read up to a small bound. Used by health checks and the `/load` poller; no HTTP client
//! library, and nothing a backend sends can make us read or allocate more than the bound.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most of a probe response we read; a `/load` body is a few bytes.
pub const MAX_RESPONSE: usize = 4096;

#[derive(Debug)]
pub enum ProbeError {
    Timeout(Duration),
    Connect(io::Error),
    Io(io::Error),
    /// The response is not HTTP/1.x, or is larger than [`MAX_RESPONSE`].
    BadResponse(&'static str),
    Status(u16),
    BadLoad(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Timeout(limit) => write!(f, "timed out after {limit:?}"),
            ProbeError::Connect(e) => write!(f, "connect failed: {e}"),
            ProbeError::Io(e) => write!(f, "{e}"),
            ProbeError::BadResponse(what) => write!(f, "bad response: {what}"),
            ProbeError::Status(code) => write!(f, "status {code}"),
            ProbeError::BadLoad(why) => write!(f, "bad load reading: {why}"),
        }
    }
}

impl std::error::Error for ProbeError {}

/// Opens (and closes) a TCP connection to `addr` within `limit`.
pub async fn tcp_connect(addr: SocketAddr, limit: Duration) -> Result<(), ProbeError> {
    tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| ProbeError::Timeout(limit))?
        .map_err(ProbeError::Connect)?;
    Ok(())
}

/// `GET path` from `addr`; the whole exchange must finish within `limit`. Returns the body of
/// a 2xx response.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> Result<Vec<u8>, ProbeError> {
    tokio::time::timeout(limit, exchange(addr, path))
        .await
        .map_err(|_| ProbeError::Timeout(limit))?
}

async fn exchange(addr: SocketAddr, path: &str) -> Result<Vec<u8>, ProbeError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ballast-probe\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(ProbeError::Io)?;
    let mut response = Vec::with_capacity(512);
    // One byte past the bound tells "exactly at the bound" from "too large".
    let mut limited = (&mut stream).take(MAX_RESPONSE as u64 + 1);
    limited
        .read_to_end(&mut response)
        .await
        .map_err(ProbeError::Io)?;
    if response.len() > MAX_RESPONSE {
        return Err(ProbeError::BadResponse("larger than 4 KiB"));
    }
    parse_response(&response)
}

/// Splits a complete `Connection: close` response into status and body; returns the body of
/// a 2xx response. Honours `Content-Length`; a chunked body is refused rather than guessed.
pub fn parse_response(response: &[u8]) -> Result<Vec<u8>, ProbeError> {
    let head_end = find(response, b"\r\n\r\n").ok_or(ProbeError::BadResponse("no header end"))?;
    let head = std::str::from_utf8(&response[..head_end])
        .map_err(|_| ProbeError::BadResponse("header is not text"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(ProbeError::BadResponse("not HTTP/1.x"));
    }
    let status: u16 = parts
        .next()
        .and_then(|code| code.parse().ok())
        .filter(|code| (100..600).contains(code))
        .ok_or(ProbeError::BadResponse("bad status line"))?;
    if !(200..300).contains(&status) {
        return Err(ProbeError::Status(status));
    }
    let mut body = &response[head_end + 4..];
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ProbeError::BadResponse("bad header line"));
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ProbeError::BadResponse("chunked body"));
        }
        if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value
                .trim()
                .parse()
                .map_err(|_| ProbeError::BadResponse("bad Content-Length"))?;
            body = body
                .get(..len)
                .ok_or(ProbeError::BadResponse("body shorter than Content-Length"))?;
        }
    }
    Ok(body.to_vec())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses a `/load` body: a CPU percentage from 0 to 100, surrounding whitespace allowed
/// (`12.3`, `12.3\n`, `7`). Anything else, including values outside 0-100, is rejected:
/// a backend that reports an impossible load is not believed.
pub fn parse_load(body: &[u8]) -> Result<f32, ProbeError> {
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

    #[test]
    fn responses() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\n12.5";
        assert_eq!(parse_response(ok).ok(), Some(b"12.5".to_vec()));
        // Without Content-Length the body runs to the close.
        let close = b"HTTP/1.0 200 OK\r\n\r\n7\n";
        assert_eq!(parse_response(close).ok(), Some(b"7\n".to_vec()));
        // Content-Length shorter than what followed: only the declared body.
        let extra = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n33garbage";
        assert_eq!(parse_response(extra).ok(), Some(b"33".to_vec()));
    }

    #[test]
    fn bad_responses() {
        let cases: [&[u8]; 7] = [
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n12.5\r\n0\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"\x00\x01\x02\x03",
        ];
        for case in cases {
            assert!(parse_response(case).is_err(), "{case:?} was accepted");
        }
        assert!(matches!(
            parse_response(cases[0]),
            Err(ProbeError::Status(500))
        ));
    }
}
