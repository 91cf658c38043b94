//! Reading a response head with httparse: the final status a check decides on, and the
//! framing of the body a poll reads.

use super::*;

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
pub(super) fn parser() -> httparse::ParserConfig {
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
pub(super) type OneHead = (usize, (u16, Result<Framing, &'static str>));

pub(super) fn parse_one(rest: &[u8]) -> Result<Option<OneHead>, ProbeError> {
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

pub(super) fn describe(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::Version => "not HTTP/1.x",
        httparse::Error::Status => "malformed status line",
        _ => "malformed head",
    }
}

/// The body's framing, after RFC 9112 section 6.3: no body for 204 and 304,
/// `Transfer-Encoding` over `Content-Length`, and otherwise the body runs to the close.
pub(super) fn framing(
    status: u16,
    headers: &[httparse::Header<'_>],
) -> Result<Framing, &'static str> {
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
