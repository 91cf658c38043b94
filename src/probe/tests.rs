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
    let early = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n\r\nbody";
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
async fn serve(pieces: Vec<Vec<u8>>, then: usize) -> (SocketAddr, tokio::task::JoinHandle<usize>) {
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
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n33garbage",
            b"33",
        ),
        (b"HTTP/1.0 200 OK\r\n\r\n7\n", b"7\n"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n12\r\n2\r\n.5\r\n0\r\n\r\n",
            b"12.5",
        ),
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
