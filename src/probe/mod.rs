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
//!
//! Here the exchanges and their bounds; `head` reads a response head, `body` a bounded
//! body, `load` the `/load` reading.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fault::{self, Fault};

mod body;
mod head;
mod load;
#[cfg(test)]
mod tests;

use body::*;
pub(crate) use head::*;
pub(crate) use load::*;

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
