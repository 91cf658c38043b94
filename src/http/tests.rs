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

/// Hands out its input at most `chunk` bytes per read, as a slow or fragmenting peer would.
struct Drip<'a> {
    input: &'a [u8],
    chunk: usize,
}

impl tokio::io::AsyncRead for Drip<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let n = self.chunk.min(self.input.len()).min(buf.remaining());
        let (now, later) = self.input.split_at(n);
        buf.put_slice(now);
        self.input = later;
        std::task::Poll::Ready(Ok(()))
    }
}

/// Every request read from `input` delivered `chunk` bytes at a time, up to the clean end or
/// the first error, as Debug text (errors carry no I/O error here, so the text compares).
async fn outcomes(input: &[u8], chunk: usize, limits: &Limits) -> Vec<String> {
    let mut reader = BufReader::new(Drip { input, chunk });
    let mut seen = Vec::new();
    loop {
        let result = read_request(&mut reader, limits).await;
        let last = !matches!(result, Ok(Some(_)));
        seen.push(format!("{result:?}"));
        if last {
            return seen;
        }
    }
}

#[tokio::test]
async fn a_head_split_across_many_small_reads_reads_as_one() {
    let limits = Limits {
        max_head_bytes: 64,
        ..Limits::default()
    };
    let inputs: &[&[u8]] = &[
        b"\r\n\nGET /a?b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.0\nX: y\n\n",
        b"GET / HTTP/1.1\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\nGET /c HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET / HTTP/1.2\nHost: x\n\n",
        b"GET / HTTP/1\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\r\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab",
        b"\r\n\r\n\r",
    ];
    for input in inputs {
        let whole = outcomes(input, usize::MAX, &limits).await;
        for chunk in [1, 2, 3, 5, 8, 13] {
            assert_eq!(
                outcomes(input, chunk, &limits).await,
                whole,
                "{} in {chunk}-byte reads",
                String::from_utf8_lossy(input)
            );
        }
    }
    // What the pieces add up to, for a few of them.
    let whole = outcomes(inputs[0], 1, &limits).await;
    assert_eq!(whole.len(), 3, "{whole:?}");
    assert!(
        whole[0].contains("\"/a?b\"") && whole[1].contains("\"/b\""),
        "{whole:?}"
    );
    assert_eq!(whole[2], "Ok(None)");
    // The version is judged on the whole request line, though `HTTP/2` already differs.
    let mut reader = BufReader::new(Drip {
        input: b"GET / HTTP/2.0\r\n\r\n",
        chunk: 1,
    });
    let err = read_request(&mut reader, &limits).await.unwrap_err();
    assert_eq!(err.status(), Some(505), "{err:?}");
}

#[tokio::test]
async fn a_head_exactly_at_the_limit_leaves_the_body_and_the_next_request() {
    let limits = Limits {
        max_head_bytes: 64,
        ..Limits::default()
    };
    // 17 + 19 + (5 + pad) + 2 bytes of head.
    let head = |pad: usize| {
        let mut head = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n".to_vec();
        head.extend_from_slice(format!("X: {}\r\n\r\n", "a".repeat(pad)).as_bytes());
        head
    };
    // 64 bytes of head, then a body and a pipelined request, all in one read or dripped.
    let mut input = head(21);
    assert_eq!(input.len(), 64);
    input.extend_from_slice(b"xyzGET /next HTTP/1.1\r\n\r\n");
    for chunk in [usize::MAX, 1, 7] {
        let seen = outcomes(&input, chunk, &limits).await;
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen[0].contains("\"POST\""), "{seen:?}");
        assert!(seen[1].contains("\"/next\""), "{seen:?}");
    }

    // Blank lines before the request line count: one more byte of them is one too many.
    let exact = [b"\n".as_slice(), &head(20), b"xyz"].concat();
    assert!(parse_with(&exact, &limits).await.unwrap().is_some());
    let over = [b"\r\n".as_slice(), &head(20), b"xyz"].concat();
    let err = parse_with(&over, &limits).await.unwrap_err();
    assert!(matches!(err, HttpError::HeadTooLarge), "{err:?}");
    // A head whose final LF would be the 65th byte.
    let over = [head(22), b"xyz".to_vec()].concat();
    let err = parse_with(&over, &limits).await.unwrap_err();
    assert!(matches!(err, HttpError::HeadTooLarge), "{err:?}");
}

#[tokio::test]
async fn obsolete_line_folding_is_400_wherever_it_is() {
    for input in [
        &b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nA: b\r\n\tfolded\r\n\r\n",
        b"GET / HTTP/1.1\r\nA:\r\n folded\r\n\r\n",
        // A first header line that starts with whitespace folds onto the request line.
        b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",
        b"GET / HTTP/1.1\n\tHost: x\n\n",
    ] {
        assert_eq!(status_of(input).await, Some(400), "{input:?}");
    }
}

#[tokio::test]
async fn duplicate_content_lengths_must_agree() {
    let input = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 003\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n";
    let seen = outcomes(input, usize::MAX, &Limits::default()).await;
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen[1].contains("\"/b\""),
        "the body is discarded once: {seen:?}"
    );
    for input in [
        &b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"[..],
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3x\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3,3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc",
    ] {
        assert_eq!(status_of(input).await, Some(400), "{input:?}");
    }
    // Disagreement is judged before size; agreeing lengths over the limit are 413.
    assert_eq!(
        status_of(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 65537\r\n\r\n").await,
        Some(400)
    );
    assert_eq!(
        status_of(b"POST / HTTP/1.1\r\nContent-Length: 65537\r\nContent-Length: 65537\r\n\r\n")
            .await,
        Some(413)
    );
}

#[tokio::test]
async fn request_targets_are_visible_ascii() {
    for input in [
        &b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n"[..],
        b"GET /\xff HTTP/1.1\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\n\r\n",
        b"GET /a\x00 HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(status_of(input).await, Some(400), "{input:?}");
    }
    // Judged as soon as its line ends: before the version, and before the head overflows.
    assert_eq!(
        status_of(b"GET /caf\xc3\xa9 HTTP/2.0\r\n\r\n").await,
        Some(400)
    );
    let limits = Limits {
        max_head_bytes: 64,
        ..Limits::default()
    };
    let mut input = b"GET /caf\xc3\xa9 HTTP/1.1\r\nX: ".to_vec();
    input.resize(200, b'a');
    let err = parse_with(&input, &limits).await.unwrap_err();
    assert_eq!(err.status(), Some(400), "{err:?}");
    let r = parse_ok(b"OPTIONS * HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.target, "*");
}

#[tokio::test]
async fn versions_are_http_digit_dot_digit() {
    for (input, status) in [
        (&b"GET / HTTP/1.2\r\n\r\n"[..], 505),
        (b"GET / HTTP/3.0\n\n", 505),
        (b"GET / HTTP/10.0\r\n\r\n", 400),
        (b"GET / HTTP/2\r\n\r\n", 400),
        (b"GET / HTTP/2.0 \r\n\r\n", 400),
        (b"GET / HTTP/1.1 \r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\r\n\r\n", 400),
        (b"GET / HTTPS/1.1\r\n\r\n", 400),
        // The request line is judged before the headers that follow it.
        (b"GET / HTTP/2.0\r\nBad Header\r\n\r\n", 505),
        (b"G(T / HTTP/2.0\r\n\r\n", 400),
    ] {
        assert_eq!(status_of(input).await, Some(status), "{input:?}");
    }
}

#[tokio::test]
async fn many_small_headers_fit_if_the_head_does() {
    let mut input = b"GET / HTTP/1.1\r\n".to_vec();
    for _ in 0..1500 {
        input.extend_from_slice(b"a:b\n");
    }
    input.extend_from_slice(b"\n");
    let r = parse_ok(&input).await;
    assert_eq!(r.headers.len(), 1500);
    assert!(r.headers.iter().all(|(n, v)| n == "a" && v == "b"));
}

/// A line is judged once it ends: a peer that stops (or runs out of room) halfway through a
/// bad line gets what it would have got on a good one.
#[tokio::test]
async fn a_line_is_judged_when_it_ends() {
    for input in [
        &b"G(T / HTTP/1.1"[..],
        b"GET / HTTP/1.1\r\nBad\x01",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let result = parse(input).await;
        assert!(
            matches!(result, Err(HttpError::UnexpectedEof)),
            "{input:?} gave {result:?}"
        );
    }
    let limits = Limits {
        max_head_bytes: 64,
        ..Limits::default()
    };
    let mut input = b"GET / HTTP/1.1\r\nX: \x01".to_vec();
    input.resize(200, b'a');
    let err = parse_with(&input, &limits).await.unwrap_err();
    assert!(matches!(err, HttpError::HeadTooLarge), "{err:?}");
    let err = parse_with(&[0u8; 200], &limits).await.unwrap_err();
    assert!(matches!(err, HttpError::HeadTooLarge), "{err:?}");
    // The same bad line, ended, is a bad request.
    assert_eq!(
        status_of(b"GET / HTTP/1.1\r\nBad\x01\r\n\r\n").await,
        Some(400)
    );
    assert_eq!(status_of(b"\0\0\0\n").await, Some(400));
}

#[tokio::test]
async fn blank_lines_before_the_end_are_a_clean_close() {
    for input in [&b"\n"[..], b"\r\n", b"\r\n\n\r\n"] {
        assert!(parse(input).await.unwrap().is_none(), "{input:?}");
    }
    for input in [&b"\r"[..], b"\r\n\r", b"\n\r"] {
        let result = parse(input).await;
        assert!(
            matches!(result, Err(HttpError::UnexpectedEof)),
            "{input:?} gave {result:?}"
        );
    }
    for input in [
        &b"\r\r\nGET / HTTP/1.1\r\n\r\n"[..],
        b" \r\nGET / HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(status_of(input).await, Some(400), "{input:?}");
    }
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
