//! Reading a bounded response body: by `Content-Length`, chunked, or to the close.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::*;

/// Reads a body framed by `framing`, at most [`MAX_BODY`] bytes of it on the wire;
/// `body` holds what already came with the head.
pub(super) async fn read_body(
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
