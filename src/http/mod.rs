//! Minimal HTTP/1.1 server-side plumbing on tokio, with no framework: the `httparse` crate
//! parses each request head, and the rest (reading, framing, limits, keep-alive, responses) is
//! written here.
//!
//! Only what a tiny origin server needs: read one request head at a time (bounded in size and
//! time), discard a `Content-Length` body, and write a complete response in one buffer. It is
//! shared by the demo backend and the admin listener.
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

use std::io;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

mod request;
mod response;
#[cfg(test)]
mod tests;

pub(crate) use request::*;
pub(crate) use response::*;

/// How long a connection we are closing keeps draining the client's input, so the last
/// response is not lost to a reset.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Serves the requests of one connection in turn, the loop the demo backend and the admin
/// listener share: each request goes to `respond`, whose reply is written with keep-alive
/// as HTTP/1.1 defines it, until the client closes or asks to, or `max_requests` have been
/// answered. A malformed request gets `on_error(status, why)` and the connection closes.
pub(crate) async fn serve_requests<R, Fut>(
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
