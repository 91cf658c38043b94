use super::*;
use tokio::io::BufReader;

async fn parse(input: &[u8]) -> Result<Option<Request>, HttpError> {
    parse_with(input, &Limits::default()).await
}

async fn parse_with(input: &[u8], limits: &Limits) -> Result<Option<Request>, HttpError> {
    let mut reader = BufReader::new(input);
    read_request(&mut reader, limits).await
}

async fn parse_ok(input: &[u8]) -> Request {
    match parse(input).await {
        Ok(Some(r)) => r,
        other => panic!("expected a request from {input:?}, got {other:?}"),
    }
}

async fn status_of(input: &[u8]) -> Option<u16> {
    match parse(input).await {
        Err(e) => e.status(),
        other => panic!("expected an error from {input:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn parses_a_simple_get() {
    let r = parse_ok(b"GET /load?x=1 HTTP/1.1\r\nHost: example\r\nAccept: */*\r\n\r\n").await;
    assert_eq!(r.method, "GET");
    assert_eq!(r.target, "/load?x=1");
    assert_eq!(r.path(), "/load");
    assert_eq!(r.version, Version::Http11);
    assert_eq!(
        r.headers,
        vec![
            ("Host".to_string(), "example".to_string()),
            ("Accept".to_string(), "*/*".to_string())
        ]
    );
}

#[tokio::test]
async fn accepts_bare_lf_and_leading_blank_lines() {
    let r = parse_ok(b"\r\n\nGET / HTTP/1.0\nHost: a\n\n").await;
    assert_eq!(r.method, "GET");
    assert_eq!(r.version, Version::Http10);
    assert_eq!(r.header("host"), Some("a"));
}

#[tokio::test]
async fn header_lookup_is_case_insensitive_and_trims_whitespace() {
    let r = parse_ok(b"GET / HTTP/1.1\r\ncOnTeNt-TyPe: \t text/plain \t\r\nX-Empty:\r\n\r\n").await;
    assert_eq!(r.header("Content-Type"), Some("text/plain"));
    assert_eq!(r.header("CONTENT-TYPE"), Some("text/plain"));
    assert_eq!(r.header("x-empty"), Some(""));
    assert_eq!(r.header("missing"), None);
}

#[tokio::test]
async fn absolute_form_target_reduces_to_path() {
    let r = parse_ok(b"GET http://h:80/load?q HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.path(), "/load");
    let r = parse_ok(b"GET http://h HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.path(), "/");
}

#[tokio::test]
async fn keep_alive_rules() {
    let cases: &[(&[u8], bool)] = &[
        (b"GET / HTTP/1.1\r\n\r\n", true),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
        (
            b"GET / HTTP/1.1\r\nconnection: Upgrade, CLOSE\r\n\r\n",
            false,
        ),
        (b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", true),
        (b"GET / HTTP/1.0\r\n\r\n", false),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
        (
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
            false,
        ),
    ];
    for (input, expected) in cases {
        let r = parse_ok(input).await;
        assert_eq!(
            r.wants_keep_alive(),
            *expected,
            "{}",
            String::from_utf8_lossy(input)
        );
    }
}

#[tokio::test]
async fn content_length_body_is_discarded_and_next_request_follows() {
    let input = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n";
    let mut reader = BufReader::new(&input[..]);
    let limits = Limits::default();
    let first = read_request(&mut reader, &limits).await.unwrap().unwrap();
    assert_eq!(first.target, "/a");
    let second = read_request(&mut reader, &limits).await.unwrap().unwrap();
    assert_eq!(second.target, "/b");
    assert!(read_request(&mut reader, &limits).await.unwrap().is_none());
}

#[tokio::test]
async fn clean_eof_is_none() {
    assert!(parse(b"").await.unwrap().is_none());
    assert!(parse(b"\r\n\r\n").await.unwrap().is_none());
}

#[tokio::test]
async fn eof_mid_request_is_unexpected_eof() {
    for input in [
        &b"GE"[..],
        b"GET / HTTP/1.1",
        b"GET / HTTP/1.1\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
    ] {
        let result = parse(input).await;
        assert!(
            matches!(result, Err(HttpError::UnexpectedEof)),
            "{input:?} gave {result:?}"
        );
        assert_eq!(result.err().and_then(|e| e.status()), None);
    }
}

#[tokio::test]
async fn oversize_head_is_431() {
    let limits = Limits {
        max_head_bytes: 64,
        ..Limits::default()
    };
    // Exactly at the limit is fine: 16 + 46 + 2 = 64 bytes.
    let mut exact = b"GET / HTTP/1.1\r\n".to_vec();
    exact.extend_from_slice(format!("X: {}\r\n", "a".repeat(41)).as_bytes());
    exact.extend_from_slice(b"\r\n");
    assert_eq!(exact.len(), 64);
    assert!(parse_with(&exact, &limits).await.unwrap().is_some());

    let mut over = b"GET / HTTP/1.1\r\n".to_vec();
    over.extend_from_slice(format!("X: {}\r\n", "a".repeat(42)).as_bytes());
    over.extend_from_slice(b"\r\n");
    let err = parse_with(&over, &limits).await.unwrap_err();
    assert!(matches!(err, HttpError::HeadTooLarge), "{err:?}");
    assert_eq!(err.status(), Some(431));

    // A line that never ends must not be buffered without bound either.
    let endless = vec![b'A'; 100_000];
    let err = parse_with(&endless, &limits).await.unwrap_err();
    assert!(matches!(err, HttpError::HeadTooLarge), "{err:?}");

    // Nor an endless run of blank lines before the request line.
    let blanks = b"\r\n".repeat(1000);
    let err = parse_with(&blanks, &limits).await.unwrap_err();
    assert!(matches!(err, HttpError::HeadTooLarge), "{err:?}");
}

#[tokio::test]
async fn default_head_limit_is_8_kib() {
    let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend_from_slice(&vec![b'a'; 8 * 1024]);
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(status_of(&big).await, Some(431));
}

#[tokio::test]
async fn malformed_request_lines_are_400() {
    for input in [
        &b"GET\r\n\r\n"[..],
        b"GET /\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b" GET / HTTP/1.1\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\n\r\n",
        b"GET / http/1.1\r\n\r\n",
        b"GET / HTTP/1.1x\r\n\r\n",
        b"GET / HTTP/1\r\n\r\n",
        b"GET\t/ HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\r\n\r\n",
    ] {
        assert_eq!(status_of(input).await, Some(400), "{input:?}");
    }
}

#[tokio::test]
async fn malformed_headers_are_400() {
    for input in [
        &b"GET / HTTP/1.1\r\nNoColon\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\n: empty-name\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : space-before-colon\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: nul\x00byte\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: bare\rcr\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length:\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ] {
        assert_eq!(status_of(input).await, Some(400), "{input:?}");
    }
}

#[tokio::test]
async fn body_limits_and_transfer_encoding() {
    assert_eq!(
        status_of(b"POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n").await,
        Some(413)
    );
    assert_eq!(
        status_of(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n").await,
        Some(413)
    );
    assert_eq!(
        status_of(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").await,
        Some(501)
    );
    // Transfer-Encoding wins over Content-Length, as RFC 9112 §6.3 says it must.
    assert_eq!(
        status_of(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: gzip\r\n\r\n").await,
        Some(501)
    );
    let ok = parse_ok(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab").await;
    assert_eq!(ok.method, "POST");
}

#[tokio::test]
async fn unsupported_versions_are_505() {
    assert_eq!(status_of(b"GET / HTTP/2.0\r\n\r\n").await, Some(505));
    assert_eq!(status_of(b"GET / HTTP/0.9\r\n\r\n").await, Some(505));
}

#[tokio::test]
async fn binary_garbage_is_rejected() {
    assert_eq!(
        status_of(b"\x00\xff\xfe\x16\x03\x01\r\n\r\n").await,
        Some(400)
    );
    // A TLS ClientHello sent to the plain-text port.
    let r = parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").await;
    assert!(r.is_err(), "{r:?}");
    let r = parse(b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n").await;
    assert!(r.is_ok(), "obs-text is legal in values: {r:?}");
}

/// Pseudo-random inputs and mutations of a valid request must never panic.
#[tokio::test]
async fn never_panics_on_random_input() {
    let valid =
        b"POST /x?y HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let limits = Limits {
        max_head_bytes: 96,
        max_body_bytes: 8,
        ..Limits::default()
    };
    for round in 0..3000 {
        let input: Vec<u8> = if round % 2 == 0 {
            let len = (next() % 128) as usize;
            (0..len).map(|_| next() as u8).collect()
        } else {
            let mut v = valid.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % v.len();
                match next() % 3 {
                    0 => v[i] = next() as u8,
                    1 => {
                        v.remove(i);
                    }
                    _ => v.insert(i, next() as u8),
                }
            }
            v
        };
        let _ = parse_with(&input, &limits).await;
    }
}

#[tokio::test]
async fn slow_request_times_out() {
    let (client, server) = tokio::io::duplex(64);
    let limits = Limits {
        request_timeout: Duration::from_millis(50),
        ..Limits::default()
    };
    let mut reader = BufReader::new(server);
    let result = read_request(&mut reader, &limits).await;
    assert!(matches!(result, Err(HttpError::Timeout)), "{result:?}");
    assert_eq!(result.err().and_then(|e| e.status()), None);
    drop(client);
}

#[test]
fn response_encoding_is_exact() {
    let r = Response {
        status: 200,
        content_type: "text/plain",
        body: b"12.5",
        extra_headers: &[],
        keep_alive: true,
        head_only: false,
    };
    assert_eq!(
        r.encode(),
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\n12.5"
    );
    let r = Response {
        status: 405,
        content_type: "text/plain",
        body: b"no",
        extra_headers: &[("Allow", "GET, HEAD")],
        keep_alive: false,
        head_only: true,
    };
    assert_eq!(
        r.encode(),
        b"HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\nAllow: GET, HEAD\r\n\r\n"
    );
}

#[tokio::test]
async fn write_response_writes_everything() {
    let mut out = Vec::new();
    write_response(&mut out, 404, "text/plain", b"not found\n", false)
        .await
        .unwrap();
    assert_eq!(
        out,
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n"
    );
}

#[test]
fn unknown_status_has_empty_reason() {
    assert_eq!(reason_phrase(299), "");
    assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
}
