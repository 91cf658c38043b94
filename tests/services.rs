//! Many services in one process, end to end through the `ballast` binary: each service's
//! addresses reach its own backends by its own algorithm, one service on IPv4 and IPv6 at
//! once, a reload that adds one service and removes another while connections stay open,
//! `accept_proxy` on one service only, and the configuration errors of the services form.
//!
//! Every address is an ephemeral loopback port; the tests read the bound ones from the
//! `listening on ..., service NAME, ...` lines.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Waits for the line whose message is exactly `expected`.
fn wait_message(b: &Balancer, expected: &str) -> String {
    b.log.wait_for(1, |l| message(l) == expected)
}

/// Connects and reads the one-word greeting of a [`named_backend`], keeping the connection
/// open.
async fn greeted(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = connect(addr).await;
    let mut name = [0u8; 1];
    within(s.read_exact(&mut name)).await.expect("greeting");
    (s, String::from_utf8_lossy(&name).into_owned())
}

/// Writes `msg` on an established connection to an echo backend and reads it back.
async fn echo_once(s: &mut TcpStream, msg: &[u8]) {
    within(s.write_all(msg)).await.expect("write");
    let mut back = vec![0u8; msg.len()];
    within(s.read_exact(&mut back)).await.expect("echo");
    assert_eq!(back, msg);
}

/// Half-closes `s` and reads to its end: the other side closes cleanly (EOF, no reset)
/// without sending anything more.
async fn close_cleanly(mut s: TcpStream) {
    within(s.shutdown()).await.expect("half-close");
    let mut rest = Vec::new();
    within(s.read_to_end(&mut rest))
        .await
        .expect("a clean end, not a reset");
    assert!(rest.is_empty(), "unexpected bytes {rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_reaches_only_its_backends_by_its_own_algorithm() {
    let mut backends = Vec::new();
    for name in ["a", "b", "c", "d", "e", "f"] {
        backends.push(named_backend(name).await);
    }
    let [a, b, c, d, e, f] = backends[..] else {
        unreachable!()
    };
    let text = format!(
        r#"(
    services: [
        (name: "rr", listen: "127.0.0.1:0", algorithm: RoundRobin,
         backends: [(name: "a", addr: "{a}"), (name: "b", addr: "{b}")]),
        (name: "wrr", listen: "127.0.0.1:0", algorithm: WeightedRoundRobin,
         backends: [(name: "c", addr: "{c}", weight: 1), (name: "d", addr: "{d}", weight: 3)]),
        (name: "lc", listen: "127.0.0.1:0", algorithm: LeastConnections,
         backends: [(name: "e", addr: "{e}"), (name: "f", addr: "{f}")]),
    ],
    {NO_PROBES}
)"#
    );
    let bal = Balancer::start(&text);
    let rr = bal.service_addrs("rr");
    let wrr = bal.service_addrs("wrr");
    let lc = bal.service_addrs("lc");
    for (addrs, line) in [
        (&rr, "service rr, algorithm RoundRobin, 2 backends"),
        (
            &wrr,
            "service wrr, algorithm WeightedRoundRobin, 2 backends",
        ),
        (&lc, "service lc, algorithm LeastConnections, 2 backends"),
    ] {
        let [addr] = addrs[..] else {
            panic!("one address expected: {addrs:?}")
        };
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        wait_message(&bal, &format!("listening on {addr}, {line}"));
    }
    let distinct: std::collections::BTreeSet<SocketAddr> = [rr[0], wrr[0], lc[0]].into();
    assert_eq!(distinct.len(), 3, "three ports: {distinct:?}");

    // Interleaved, so that each service's turn counter is seen to be its own.
    let (mut rr_names, mut wrr_names) = (Vec::new(), Vec::new());
    for _ in 0..12 {
        rr_names.push(read_all(rr[0]).await);
        wrr_names.push(read_all(wrr[0]).await);
    }
    let expected_rr: Vec<&str> = ["a", "b"].iter().cycle().take(12).copied().collect();
    assert_eq!(rr_names, expected_rr);
    // Smooth weighted round robin for 1:3 (`smooth_weighted_schedule(&[1, 3])` is
    // [1, 0, 1, 1]): d, c, d, d in every cycle.
    let expected_wrr: Vec<&str> = ["d", "c", "d", "d"]
        .iter()
        .cycle()
        .take(12)
        .copied()
        .collect();
    assert_eq!(wrr_names, expected_wrr);

    // Least connections, with every connection held open: from equal counts the first of a
    // pair may go to either backend, the second must go to the other.
    let mut held = Vec::new();
    for round in 0..3 {
        let (first, one) = greeted(lc[0]).await;
        let (second, other) = greeted(lc[0]).await;
        let mut pair = [one.clone(), other.clone()];
        pair.sort();
        assert_eq!(pair, ["e", "f"], "round {round}: {one} then {other}");
        held.extend([first, second]);
    }
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_service_listens_on_ipv4_and_ipv6_loopback() {
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        println!("skipped: IPv6 loopback [::1] is not available here ({e})");
        return;
    }
    let backend = echo_backend().await;
    let bal = Balancer::start(&format!(
        r#"(services: [(name: "dual", listen: ["127.0.0.1:0", "[::1]:0"], algorithm: RoundRobin,
             backends: [(name: "echo", addr: "{backend}")])], {NO_PROBES})"#
    ));
    let addrs = bal.service_addrs("dual");
    let [v4, v6] = addrs[..] else {
        panic!("two addresses expected: {addrs:?}")
    };
    assert_eq!(v4.ip(), std::net::Ipv4Addr::LOCALHOST);
    assert_eq!(v6.ip(), std::net::Ipv6Addr::LOCALHOST);
    wait_message(
        &bal,
        &format!("listening on {v4}, {v6}, service dual, algorithm RoundRobin, 1 backend"),
    );
    for (addr, msg) in [(v4, &b"over IPv4"[..]), (v6, &b"over IPv6"[..])] {
        let mut s = connect(addr).await;
        let me = s.local_addr().expect("local address");
        assert_eq!(me.is_ipv6(), addr.is_ipv6());
        echo_once(&mut s, msg).await;
        close_cleanly(s).await;
        // The access line names the client as it connected: an IPv6 address over IPv6.
        let line = bal.log.wait_for(1, |l| {
            message(l).starts_with(&format!("{me} -> echo ({backend}): "))
        });
        let n = msg.len();
        assert!(
            message(&line).starts_with(&format!(
                "{me} -> echo ({backend}): {n} bytes up, {n} bytes down, "
            )) && line.ends_with(" ms, client closed"),
            "{line}"
        );
    }
}

/// The configuration of the reload test: `keep` always, then `gone` or `new`.
fn reload_config(keep: SocketAddr, other: &str) -> String {
    format!(
        r#"(
    services: [
        (name: "keep", listen: "127.0.0.1:0", algorithm: RoundRobin,
         backends: [(name: "keep-echo", addr: "{keep}")]),
        {other}
    ],
    {NO_PROBES}
)"#
    )
}

/// A connection refused at `addr` (connecting to a port nobody listens on). A connect that
/// the kernel pairs with itself (source port = destination port, possible on loopback in
/// the ephemeral range) is dropped and tried again, a bounded number of times.
async fn assert_refused(addr: SocketAddr) {
    for _ in 0..5 {
        match within(TcpStream::connect(addr)).await {
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                return;
            }
            Ok(s) if s.local_addr().ok() == Some(addr) => continue,
            Ok(s) => panic!("{addr} still accepts: {s:?}"),
        }
    }
    panic!("{addr}: only self-connections in 5 tries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_services_while_connections_stay_open() {
    let keep_echo = echo_backend().await;
    let gone_echo = echo_backend().await;
    let greeter = named_backend("n").await;
    let gone = format!(
        r#"(name: "gone", listen: "127.0.0.1:0", algorithm: RoundRobin,
         backends: [(name: "gone-echo", addr: "{gone_echo}")], timeouts: (grace: "30s")),"#
    );
    let added = format!(
        r#"(name: "new", listen: "127.0.0.1:0", algorithm: RoundRobin,
         backends: [(name: "greeter", addr: "{greeter}")]),"#
    );
    let bal = Balancer::start(&reload_config(keep_echo, &gone));
    let [keep_addr] = bal.service_addrs("keep")[..] else {
        panic!("one address for keep")
    };
    let [gone_addr] = bal.service_addrs("gone")[..] else {
        panic!("one address for gone")
    };

    // One connection open on each service, bytes flowing both ways.
    let mut on_keep = connect(keep_addr).await;
    let keep_me = on_keep.local_addr().expect("local address");
    echo_once(&mut on_keep, b"keep before").await;
    let mut on_gone = connect(gone_addr).await;
    let gone_me = on_gone.local_addr().expect("local address");
    echo_once(&mut on_gone, b"gone before").await;

    let verdict = bal.reload(&reload_config(keep_echo, &added));
    let [new_addr] = bal.service_addrs("new")[..] else {
        panic!("one address for new")
    };
    assert_eq!(
        message(&verdict),
        format!(
            "reloaded: listening on {keep_addr}, {new_addr}; 2 services (new added, gone removed)"
        )
    );
    // Right after the verdict: the removed service's address refuses, the added one serves,
    // the kept one still listens where it did.
    assert_refused(gone_addr).await;
    assert_eq!(read_all(new_addr).await, "n");
    assert_eq!(bal.service_addrs("keep"), [keep_addr]);
    wait_message(
        &bal,
        "service gone: service removed: waiting up to 30s for 1 open connections",
    );

    // The connection on the kept service: the same TCP connection carries bytes both ways.
    echo_once(&mut on_keep, b"keep after").await;
    let mut fresh = connect(keep_addr).await;
    echo_once(&mut fresh, b"a new one").await;
    close_cleanly(fresh).await;

    // The connection on the removed service is finishing, not cut: it still carries bytes,
    // and ends cleanly when its client closes, well within the grace period.
    echo_once(&mut on_gone, b"gone after").await;
    close_cleanly(on_gone).await;
    let n = "gone before".len() + "gone after".len();
    let line = bal.log.wait_for(1, |l| {
        message(l).starts_with(&format!("{gone_me} -> gone-echo ({gone_echo}): "))
    });
    assert!(
        message(&line).starts_with(&format!(
            "{gone_me} -> gone-echo ({gone_echo}): {n} bytes up, {n} bytes down, "
        )) && line.ends_with(" ms, client closed"),
        "{line}"
    );

    close_cleanly(on_keep).await;
    let n = "keep before".len() + "keep after".len();
    let line = bal.log.wait_for(1, |l| {
        message(l).starts_with(&format!("{keep_me} -> keep-echo ({keep_echo}): "))
    });
    assert!(
        message(&line).starts_with(&format!(
            "{keep_me} -> keep-echo ({keep_echo}): {n} bytes up, {n} bytes down, "
        )) && line.ends_with(" ms, client closed"),
        "{line}"
    );
    assert_eq!(bal.log.count(|l| l.contains("grace period over")), 0);
    assert_eq!(bal.log.count(|l| l.contains("reload rejected")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_proxy_applies_to_its_service_only() {
    let proxied_echo = echo_backend().await;
    let plain_echo = echo_backend().await;
    let bal = Balancer::start(&format!(
        r#"(
    services: [
        (name: "proxied", listen: "127.0.0.1:0", algorithm: RoundRobin, accept_proxy: true,
         backends: [(name: "pecho", addr: "{proxied_echo}")]),
        (name: "plain", listen: "127.0.0.1:0", algorithm: RoundRobin,
         backends: [(name: "echo", addr: "{plain_echo}")]),
    ],
    admin: "127.0.0.1:0",
    {NO_PROBES}
)"#
    ));
    let [proxied] = bal.service_addrs("proxied")[..] else {
        panic!("one address for proxied")
    };
    let [plain] = bal.service_addrs("plain")[..] else {
        panic!("one address for plain")
    };
    let no_header = b"GET / HTTP/1.1\r\n\r\n";
    let header = b"PROXY TCP4 192.0.2.8 198.51.100.9 5000 80\r\n";

    // Without a header: the proxied service closes the client without a byte...
    let mut s = connect(proxied).await;
    within(s.write_all(no_header)).await.expect("write");
    let mut buf = [0u8; 64];
    match within(s.read(&mut buf)).await {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the client closed without a byte, got {other:?}"),
    }
    bal.log.wait_for(1, |l| {
        l.contains("not a PROXY protocol header") && l.contains("closing the client")
    });
    // ...and the plain one relays the same bytes.
    let mut s = connect(plain).await;
    echo_once(&mut s, no_header).await;
    close_cleanly(s).await;

    // With a header: the proxied service takes the client's address from it and relays
    // only what follows; the plain one relays the header as data.
    let sent = [&header[..], b"payload"].concat();
    let mut s = connect(proxied).await;
    within(s.write_all(&sent)).await.expect("write");
    let mut back = [0u8; 7];
    within(s.read_exact(&mut back)).await.expect("echo");
    assert_eq!(&back, b"payload");
    close_cleanly(s).await;
    bal.log.wait_for(1, |l| {
        message(l).starts_with(&format!(
            "192.0.2.8:5000 -> pecho ({proxied_echo}): 7 bytes up, 7 bytes down, "
        ))
    });
    let mut s = connect(plain).await;
    let me = s.local_addr().expect("local address");
    echo_once(&mut s, &sent).await;
    close_cleanly(s).await;
    let n = sent.len();
    bal.log.wait_for(1, |l| {
        message(l).starts_with(&format!(
            "{me} -> echo ({plain_echo}): {n} bytes up, {n} bytes down, "
        ))
    });

    let metrics = http_get(admin_addr(&bal), "/metrics").await;
    for line in [
        "ballast_service_connections_bad_proxy_header_total{service=\"proxied\"} 1",
        "ballast_service_connections_bad_proxy_header_total{service=\"plain\"} 0",
        "ballast_service_connections_accepted_total{service=\"proxied\"} 2",
        "ballast_service_connections_accepted_total{service=\"plain\"} 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

/// A valid file of two services, the base of the error cases.
const TWO: &str = r#"(
    services: [
        (name: "web", listen: "127.0.0.1:8080", algorithm: RoundRobin,
         backends: [(name: "a", addr: "127.0.0.1:8081")]),
        (name: "db", listen: "127.0.0.1:5432", algorithm: LeastConnections,
         backends: [(name: "b", addr: "127.0.0.1:5433")]),
    ],
)
"#;

/// Runs `ballast ARGS --config FILE` on `text`; returns (exit code, stdout, stderr, path).
fn ballast_on(text: &str, args: &[&str]) -> (i32, String, String, String) {
    let dir = TempDir::new();
    let path = dir.write("balancer.ron", text);
    let path = path.to_string_lossy().into_owned();
    let mut all = args.to_vec();
    all.extend(["--config", &path]);
    let (code, out, err) = run_ballast(&all);
    (code, out, err, path)
}

/// `ballast --check` and a real start both refuse `text`, exit 1, with exactly
/// `ballast: PATH<suffix>` on stderr.
fn assert_rejected(text: &str, suffix: &str) {
    let (code, out, err, path) = ballast_on(text, &["--check"]);
    assert_eq!(code, 1, "--check should fail; stdout: {out}");
    assert_eq!(err.trim_end(), format!("ballast: {path}{suffix}"));
    let (code, _, err, path) = ballast_on(text, &[]);
    assert_eq!(code, 1, "start should fail");
    assert_eq!(err.trim_end(), format!("ballast: {path}{suffix}"));
}

#[test]
fn the_base_of_the_error_cases_is_valid() {
    let (code, out, err, path) = ballast_on(TWO, &["--check"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("{path}: configuration is valid\n")),
        "{out}"
    );
    assert!(
        out.contains("service    web\n  listen     127.0.0.1:8080\n  algorithm  RoundRobin\n"),
        "{out}"
    );
    assert!(
        out.contains("service    db\n  listen     127.0.0.1:5432\n  algorithm  LeastConnections\n"),
        "{out}"
    );
}

#[test]
fn a_duplicate_service_name_is_rejected_at_the_second() {
    assert_rejected(
        &TWO.replace("name: \"db\"", "name: \"web\""),
        ":5:17: duplicate service name \"web\": service names must be unique",
    );
}

#[test]
fn an_address_listened_on_by_two_services_is_rejected_at_the_second() {
    assert_rejected(
        &TWO.replace("127.0.0.1:5432", "127.0.0.1:8080"),
        ":5:31: 127.0.0.1:8080 is already listened on by service \"web\": each address belongs to one service",
    );
    // A wildcard address takes every address of its port.
    assert_rejected(
        &TWO.replace("127.0.0.1:5432", "0.0.0.0:8080"),
        ":5:31: 0.0.0.0:8080 is already listened on by service \"web\" (as 127.0.0.1:8080): each address belongs to one service",
    );
}

#[test]
fn the_two_forms_do_not_mix() {
    let hint = "write each service's `listen`, `algorithm`, `backends` and `accept_proxy` inside its entry of `services`";
    assert_rejected(
        &TWO.replace(
            "    services:",
            "    listen: \"127.0.0.1:9090\",\n    services:",
        ),
        &format!(":2:5: top-level `listen` beside `services`: {hint}"),
    );
    assert_rejected(
        &TWO.replace("    ],\n)", "    ],\n    accept_proxy: true,\n)"),
        &format!(":8:5: top-level `accept_proxy` beside `services`: {hint}"),
    );
}

/// A service identifies each of its listening addresses by the address as written (a
/// reload keeps `127.0.0.1:0` on the port it got), so one written twice cannot be told
/// apart: ballast used to bind two ports, announce one of them twice and never close the
/// other, neither at shutdown nor when a reload removed the service.
#[test]
fn a_port_zero_address_listed_twice_by_one_service_is_rejected() {
    assert_rejected(
        &TWO.replace(
            "listen: \"127.0.0.1:8080\"",
            "listen: [\"127.0.0.1:0\", \"[::1]:0\", \"127.0.0.1:0\"]",
        ),
        ":3:59: 127.0.0.1:0 is listed twice by service \"web\": list each address once",
    );
    // Port 0 in two services asks for a free port for each: that stays valid.
    let (code, _, err, _) = ballast_on(
        &TWO.replace("127.0.0.1:8080", "127.0.0.1:0")
            .replace("127.0.0.1:5432", "127.0.0.1:0"),
        &["--check"],
    );
    assert_eq!(code, 0, "{err}");
}

/// A reload that cannot be served whole is refused whole: when an added service's address
/// cannot be bound, the admin listener the same reload moves stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_reload_leaves_the_admin_listener_where_it_was() {
    let backend = echo_backend().await;
    // Held by the test, without SO_REUSEPORT: ballast cannot listen there.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("address");
    let keep = format!(
        r#"(name: "keep", listen: "127.0.0.1:0", algorithm: RoundRobin,
         backends: [(name: "echo", addr: "{backend}")]),"#
    );
    let with = |admin: &str, extra: &str| {
        format!("(services: [{keep} {extra}], admin: \"{admin}\", {NO_PROBES})")
    };
    let bal = Balancer::start(&with("127.0.0.1:0", ""));
    let admin = admin_addr(&bal);
    assert!(
        http_get(admin, "/metrics")
            .await
            .starts_with("HTTP/1.1 200")
    );

    let extra = format!(
        r#"(name: "extra", listen: "{taken}", algorithm: RoundRobin,
         backends: [(name: "echo", addr: "{backend}")]),"#
    );
    let verdict = bal.reload(&with("127.0.0.2:0", &extra));
    assert!(
        message(&verdict).starts_with(&format!(
            "reload rejected: service extra: cannot listen on {taken}: "
        )) && verdict.ends_with("; keeping the running configuration"),
        "{verdict}"
    );
    // The admin listener still answers where it was, and none was announced elsewhere.
    assert!(
        http_get(admin, "/metrics")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert_eq!(bal.log.count(|l| l.contains("admin listening on")), 1);
    let [keep_addr] = bal.service_addrs("keep")[..] else {
        panic!("one address for keep")
    };
    let mut s = connect(keep_addr).await;
    echo_once(&mut s, b"still served").await;
    close_cleanly(s).await;

    // The same reload without the unusable address moves the admin listener.
    let verdict = bal.reload(&with("127.0.0.2:0", ""));
    assert_eq!(
        message(&verdict),
        format!("reloaded: listening on {keep_addr}; 1 service (no service changed)")
    );
    let moved = bal
        .log
        .wait_for(1, |l| l.contains("admin listening on http://127.0.0.2:"));
    let moved: SocketAddr = message(&moved)
        .trim_start_matches("admin listening on http://")
        .trim_end_matches('/')
        .parse()
        .expect("admin address");
    assert!(
        http_get(moved, "/metrics")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert_refused(admin).await;
}
