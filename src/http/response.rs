//! Writing one response, and the reply a responder builds.

use std::io;

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A complete response. Extra header names and values come from the server, never from the
/// peer, so they are written verbatim.
#[derive(Debug, Clone)]
pub(crate) struct Response<'a> {
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
    pub(crate) fn encode(&self) -> Vec<u8> {
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

    pub(crate) async fn write_to(&self, writer: &mut (impl AsyncWrite + Unpin)) -> io::Result<()> {
        writer.write_all(&self.encode()).await?;
        writer.flush().await
    }
}

/// Writes a complete response with the usual headers in one write.
pub(crate) async fn write_response(
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
pub(crate) fn reason_phrase(status: u16) -> &'static str {
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

/// The answer to one request, as a responder builds it for [`serve_requests`](super::serve_requests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: &'static [(&'static str, &'static str)],
}

impl Reply {
    pub(crate) fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
            headers: &[],
        }
    }

    pub(crate) fn with_headers(
        mut self,
        headers: &'static [(&'static str, &'static str)],
    ) -> Reply {
        self.headers = headers;
        self
    }
}
