//! The PROXY protocol end to end: `send_proxy` headers read back byte-exact by a backend,
//! `accept_proxy` passing the header's client address on, and clients whose header is
//! malformed, truncated or slow closed alone.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The v2 signature (HAProxy's `proxy-protocol.txt`, section 2.2).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A backend that sends back the first `header_len` bytes it receives, then echoes.
async fn header_mirror(header_len: usize) -> SocketAddr {
    spawn_backend(move |mut s| async move {
        let mut header = vec![0u8; header_len];
        if s.read_exact(&mut header).await.is_ok() && s.write_all(&header).await.is_ok() {
            echo(s).await;
        }
    })
    .await
}

fn with_proxy(backend: SocketAddr, send_proxy: &str, extra: &str) -> String {
    format!(
        "(listen: \"127.0.0.1:0\", algorithm: RoundRobin, {extra}
          backends: [(name: \"b\", addr: \"{backend}\", send_proxy: {send_proxy})],
          health: (interval: \"1h\"))"
    )
}

#[tokio::test]
async fn send_proxy_v1_is_byte_exact() {
    // The exact length depends on the client's port: 5 digits from the ephemeral range.
    let backend = spawn_backend(|mut s| async move {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") && s.read_exact(&mut byte).await.is_ok() {
            line.push(byte[0]);
        }
        if s.write_all(&line).await.is_ok() {
            echo(s).await;
        }
    })
    .await;
    let b = InProcess::start(&with_proxy(backend, "V1", "")).await;
    let mut s = connect(b.addr).await;
    let me = s.local_addr().expect("addr");
    within(s.write_all(b"hello")).await.expect("write");
    let expected = format!(
        "PROXY TCP4 {} {} {} {}\r\nhello",
        me.ip(),
        b.addr.ip(),
        me.port(),
        b.addr.port()
    );
    let mut got = vec![0u8; expected.len()];
    within(s.read_exact(&mut got)).await.expect("read");
    assert_eq!(String::from_utf8_lossy(&got), expected);
}

#[tokio::test]
async fn send_proxy_v2_is_byte_exact() {
    let b_backend = header_mirror(28).await;
    let b = InProcess::start(&with_proxy(b_backend, "V2", "")).await;
    let mut s = connect(b.addr).await;
    let me = s.local_addr().expect("addr");
    within(s.write_all(b"hello")).await.expect("write");
    let mut expected = V2_SIGNATURE.to_vec();
    expected.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 1, 127, 0, 0, 1]);
    expected.extend_from_slice(&me.port().to_be_bytes());
    expected.extend_from_slice(&b.addr.port().to_be_bytes());
    expected.extend_from_slice(b"hello");
    let mut got = vec![0u8; expected.len()];
    within(s.read_exact(&mut got)).await.expect("read");
    assert_eq!(got, expected);
}

/// A client behind another balancer: its v1 or v2 header names the real client, whose
/// address ballast passes on in its own header to the backend; the bytes after the header
/// are the client's stream, untouched.
#[tokio::test]
async fn accept_proxy_passes_the_headers_address_on() {
    let line = "PROXY TCP4 192.0.2.7 198.51.100.9 4242 80\r\n";
    let backend = header_mirror(line.len()).await;
    let b = InProcess::start(&with_proxy(backend, "V1", "accept_proxy: true,")).await;
    let mut v2 = V2_SIGNATURE.to_vec();
    v2.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 7, 198, 51, 100, 9]);
    v2.extend_from_slice(&4242u16.to_be_bytes());
    v2.extend_from_slice(&80u16.to_be_bytes());
    for incoming in [line.as_bytes().to_vec(), v2] {
        let mut s = connect(b.addr).await;
        // Header and data in one write, as a balancer in front sends them.
        let sent = [&incoming[..], b"payload"].concat();
        within(s.write_all(&sent)).await.expect("write");
        let expected = format!("{line}payload");
        let mut got = vec![0u8; expected.len()];
        within(s.read_exact(&mut got)).await.expect("read");
        assert_eq!(String::from_utf8_lossy(&got), expected);
    }
}

/// Reads until the connection ends; true when it ended without a byte from ballast.
async fn closed_without_a_byte(s: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match within(s.read(&mut buf)).await {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// Malformed, truncated and slow headers each close that client alone, with one warning
/// saying why; a well-behaved client at the same time is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_headers_close_only_their_client() {
    let backend = echo_backend().await;
    let b = Balancer::start(&format!(
        "(listen: \"127.0.0.1:0\", algorithm: RoundRobin, accept_proxy: true,
          timeouts: (connect: \"500ms\"), admin: \"127.0.0.1:0\",
          backends: [(name: \"echo\", addr: \"{backend}\")], health: (interval: \"1h\"))"
    ));
    // Slow: says nothing, held open.
    let mut slow = connect(b.addr).await;
    // Malformed v1, malformed v2, and not PROXY at all.
    for (bad, why) in [
        (
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"[..],
            "bad PROXY v1 header: bad port",
        ),
        (
            b"\r\n\r\n\0\r\nQUIT\n\x11\x11\x00\x0c",
            "bad PROXY v2 header: version is not 2",
        ),
        (b"GET / HTTP/1.1\r\n\r\n", "not a PROXY protocol header"),
    ] {
        let mut s = connect(b.addr).await;
        within(s.write_all(bad)).await.expect("write");
        assert!(closed_without_a_byte(&mut s).await, "{why}");
        b.log
            .wait_for(1, |l| l.contains(why) && l.contains("closing the client"));
    }
    // Truncated: half a header, then the client's side closes.
    let mut cut = connect(b.addr).await;
    within(cut.write_all(b"PROXY TCP4 192.0.2.7 "))
        .await
        .expect("write");
    within(cut.shutdown()).await.expect("half-close");
    assert!(closed_without_a_byte(&mut cut).await);
    b.log
        .wait_for(1, |l| l.contains("closed before its PROXY header ended"));
    // Meanwhile a good client is served.
    let mut good = connect(b.addr).await;
    within(good.write_all(b"PROXY TCP4 192.0.2.8 198.51.100.9 5000 80\r\nping"))
        .await
        .expect("write");
    let mut pong = [0u8; 4];
    within(good.read_exact(&mut pong)).await.expect("echo");
    assert_eq!(&pong, b"ping");
    drop(good);
    b.log
        .wait_for(1, |l| l.contains("192.0.2.8:5000 -> echo ("));
    // The slow one is cut at the limit.
    assert!(closed_without_a_byte(&mut slow).await);
    b.log
        .wait_for(1, |l| l.contains("no complete PROXY header within 500ms"));
    // Five clients refused for their header, counted; the good one relayed.
    let metrics = http_get(admin_addr(&b), "/metrics").await;
    for line in [
        "ballast_connections_bad_proxy_header_total 5",
        "ballast_service_connections_bad_proxy_header_total{service=\"default\"} 5",
        "ballast_connections_accepted_total 6",
        "ballast_connections_no_backend_total 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn ipv4_clients_of_a_dual_stack_listener_are_sent_on_as_tcp4() {
    if std::net::TcpListener::bind("[::]:0").is_err() {
        println!("skipped: no IPv6 on this machine");
        return;
    }
    // A v2 header for IPv4 is 16 + 12 bytes.
    let backend = header_mirror(28).await;
    let text = with_proxy(backend, "V2", "").replace("127.0.0.1:0", "[::]:0");
    let b = InProcess::start(&text).await;
    let to = SocketAddr::from(([127, 0, 0, 1], b.addr.port()));
    let mut s = connect(to).await;
    let me = s.local_addr().expect("addr");
    within(s.write_all(b"x")).await.expect("write");
    let mut got = [0u8; 29];
    within(s.read_exact(&mut got)).await.expect("read");
    // PROXY command, TCP over IPv4: not TCP6 with IPv4-mapped addresses.
    assert_eq!(&got[12..16], &[0x21, 0x11, 0, 12]);
    assert_eq!(&got[16..20], &[127, 0, 0, 1]);
    assert_eq!(&got[20..24], &[127, 0, 0, 1]);
    assert_eq!(u16::from_be_bytes([got[24], got[25]]), me.port());
    assert_eq!(u16::from_be_bytes([got[26], got[27]]), to.port());
    assert_eq!(got[28], b'x');
}
