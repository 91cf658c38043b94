//! Backends given by host name, end to end: the `ballast` binary asks the loopback test DNS
//! server (`tests/common/dns.rs`) for a name's addresses, serves one backend per address,
//! follows the name as its addresses change, keeps the last good ones while the server
//! fails (saying so once), all of them while only its `AAAA` (or `A`) queries fail, and
//! serves its other services while a name never resolves.
//!
//! The backends are `ballast-backend` processes on 127.0.0.2 and 127.0.0.3, on the one port
//! the configuration's `host:port` names.
//!
//! The tests run on a multi-threaded runtime: the DNS server's tasks must answer while the
//! test blocks on the balancer's log.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::dns::{DnsServer, Mode};
use common::*;
use hickory_proto::rr::RecordType;

/// The `dns.interval` of these tests.
const INTERVAL: Duration = Duration::from_millis(500);

/// The name the backends are given by.
const HOST: &str = "pods.test";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// The level of a log line: `INFO`, `WARN`, `DEBUG`...
fn level(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or_default()
}

/// `count` sequential `GET /` through `b`; the id of the backend that served each.
async fn ids(b: &Balancer, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(page_id(&http_get(b.addr, "/").await));
    }
    ids
}

/// Demo backends `two` on 127.0.0.2 and `three` on 127.0.0.3, on the same port: `two` takes
/// a free port, then `three` tries that port on its address; where it is taken there, both
/// start again, 20 times at most.
fn two_backends_on_one_port() -> (DemoBackend, DemoBackend, u16) {
    for _ in 0..20 {
        let two = DemoBackend::start_exactly(&["--listen", "127.0.0.2:0", "--id", "two"], &[]);
        let port = two.addr.port();
        let listen = format!("127.0.0.3:{port}");
        let three = DemoBackend::try_start_exactly(&["--listen", &listen, "--id", "three"], &[]);
        if let Some(three) = three {
            return (two, three, port);
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3 in 20 tries");
}

/// One service `web` over the backends of `HOST:port`, resolved by `dns` every `INTERVAL`.
fn named_config(dns: &DnsServer, port: u16) -> String {
    format!(
        r#"(
    services: [
        (name: "web", listen: "127.0.0.1:0", algorithm: RoundRobin,
         backends: [(name: "pods", addr: "{HOST}:{port}")]),
    ],
    dns: (servers: ["{}"], interval: "{}ms"),
    {NO_PROBES}
)"#,
        dns.addr(),
        INTERVAL.as_millis()
    )
}

/// Whether `line` is the warning that `HOST` does not resolve (the first failure).
fn warns_failing(line: &str) -> bool {
    level(line) == "WARN" && message(line).starts_with(&format!("dns: cannot resolve {HOST}: "))
}

/// Whether `line` is the debug line every failed lookup of `HOST` writes.
fn failed_lookup(line: &str) -> bool {
    level(line) == "DEBUG" && message(line).starts_with(&format!("dns: cannot resolve {HOST}: "))
}

/// Whether `line` says `HOST` resolves again.
fn recovered(line: &str) -> bool {
    level(line) == "INFO"
        && message(line).starts_with(&format!("dns: {HOST} resolves again, after "))
}

/// Whether `line` says a service was rebuilt for new addresses of its host names.
fn dns_change(line: &str) -> bool {
    message(line).contains(" after a DNS change")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follows_a_name_from_two_addresses_to_one() {
    let dns = DnsServer::start().await;
    let (_two, _three, port) = two_backends_on_one_port();
    dns.set(HOST, &[ip("127.0.0.3"), ip("127.0.0.2")]);
    let b = Balancer::start(&named_config(&dns, port));
    let addr = b.addr;
    b.log.wait_for(1, |l| {
        message(l) == format!("listening on {addr}, service web, algorithm RoundRobin, 2 backends")
    });
    for ip in ["127.0.0.2", "127.0.0.3"] {
        let line = format!("service web: backend pods@{ip}:{port} at {ip}:{port} weight 1");
        b.log.wait_for(1, |l| message(l) == line);
    }
    // Round robin over the addresses in order: both ids, alternating.
    assert_eq!(ids(&b, 4).await, ["two", "three", "two", "three"]);

    let changed = Instant::now();
    dns.set(HOST, &[ip("127.0.0.2")]);
    b.log.wait_for(1, |l| {
        message(l) == "service web: 1 backend after a DNS change"
    });
    let took = changed.elapsed();
    assert!(
        took < 2 * INTERVAL,
        "the change took {took:?}, more than two intervals of {INTERVAL:?}"
    );
    let left = format!("dns: {HOST} resolves to 127.0.0.2 (left: 127.0.0.3)");
    assert_eq!(b.log.count(|l| message(l) == left), 1);
    assert_eq!(ids(&b, 4).await, ["two", "two", "two", "two"]);
    assert_eq!(b.log.count(dns_change), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_dns_server_keeps_the_last_addresses_and_says_so_once() {
    let dns = DnsServer::start().await;
    let (_two, _three, port) = two_backends_on_one_port();
    dns.set(HOST, &[ip("127.0.0.2"), ip("127.0.0.3")]);
    let b = Balancer::start(&named_config(&dns, port));
    assert_eq!(ids(&b, 2).await, ["two", "three"]);

    // Each episode: the server fails for several lookups, then answers again.
    for (episode, mode) in [(1, Mode::ServFail), (2, Mode::Silent)] {
        let failed_before = b.log.count(failed_lookup);
        dns.set_mode(mode);
        let warning = b.log.wait_for(episode, warns_failing);
        assert!(
            message(&warning).ends_with("; keeping its last 2 addresses"),
            "{warning}"
        );
        // Three failed lookups in this episode, and one warning for them.
        b.log.wait_for(failed_before + 3, failed_lookup);
        assert_eq!(b.log.count(warns_failing), episode, "{mode:?}");
        // The last good addresses still serve, in the same turns.
        assert_eq!(
            ids(&b, 4).await,
            ["two", "three", "two", "three"],
            "{mode:?}"
        );

        dns.set_mode(Mode::Answer);
        b.log.wait_for(episode, recovered);
        // A few good lookups later (A and AAAA each: two queries a lookup), still one
        // recovery line for this episode.
        let queries = dns.queries();
        dns.wait_queries(queries + 6).await;
        assert_eq!(b.log.count(recovered), episode, "{mode:?}");
        assert_eq!(b.log.count(warns_failing), episode, "{mode:?}");
    }
    // The addresses never changed: no rebuild for them, no "resolves to" beyond the first.
    assert_eq!(b.log.count(dns_change), 0);
    assert_eq!(
        b.log
            .count(|l| message(l).starts_with(&format!("dns: {HOST} resolves to "))),
        1
    );
    assert_eq!(ids(&b, 2).await, ["two", "three"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_never_resolves_leaves_the_other_service_serving() {
    let dns = DnsServer::start().await;
    let plain = named_backend("plain").await;
    // Where the name will point once it resolves, at the end.
    let late = DemoBackend::start_exactly(&["--listen", "127.0.0.2:0", "--id", "late"], &[]);
    let port = late.addr.port();
    let mut b = Balancer::start(&format!(
        r#"(
    services: [
        (name: "ghosts", listen: "127.0.0.1:0", algorithm: RoundRobin,
         backends: [(name: "ghost", addr: "ghost.test:{port}")]),
        (name: "plain", listen: "127.0.0.1:0", algorithm: RoundRobin,
         backends: [(name: "plain", addr: "{plain}")]),
    ],
    dns: (servers: ["{}"], interval: "{}ms"),
    {NO_PROBES}
)"#,
        dns.addr(),
        INTERVAL.as_millis()
    ));
    let [ghosts] = b.service_addrs("ghosts")[..] else {
        panic!("one address for ghosts")
    };
    let [plain_addr] = b.service_addrs("plain")[..] else {
        panic!("one address for plain")
    };
    b.log.wait_for(1, |l| {
        message(l)
            == format!("listening on {ghosts}, service ghosts, algorithm RoundRobin, 0 backends")
    });
    b.log.wait_for(1, |l| {
        message(l)
            == format!("listening on {plain_addr}, service plain, algorithm RoundRobin, 1 backend")
    });
    let failing = "dns: cannot resolve ghost.test: no such name; it has no addresses yet";
    b.log.wait_for(1, |l| message(l) == failing);

    for _ in 0..3 {
        assert_eq!(read_all(plain_addr).await, "plain");
    }
    // The service without backends turns its clients away, one by one.
    assert_eq!(read_all(ghosts).await, "");
    b.log.wait_for(1, |l| {
        let m = message(l);
        m.contains(" -> -: 0 bytes up, 0 bytes down, ") && m.ends_with(" ms, no backend")
    });
    // Several lookups later, still running, still serving, and the failure said once.
    b.log.wait_for(4, |l| {
        level(l) == "DEBUG" && message(l).starts_with("dns: cannot resolve ghost.test: ")
    });
    assert_eq!(b.log.count(|l| message(l) == failing), 1);
    assert_eq!(read_all(plain_addr).await, "plain");
    assert!(
        b.proc.child.try_wait().expect("try_wait").is_none(),
        "ballast exited"
    );

    // `--check` on the same file: valid, with a warning naming the host.
    let path = b.config_path.to_string_lossy().into_owned();
    let (code, out, err) = run_ballast(&["--check", "--config", &path]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("{path}: configuration is valid\n")),
        "{out}"
    );
    let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(
        warnings,
        [
            "warning: cannot resolve ghost.test: no such name (service ghosts backend ghost): it has no addresses until it resolves"
        ]
    );

    // Once the name resolves, the service serves. It resolves for the first time: not
    // "again".
    dns.set("ghost.test", &[ip("127.0.0.2")]);
    b.log.wait_for(1, |l| {
        message(l) == "service ghosts: 1 backend after a DNS change"
    });
    let resolves = b.log.wait_for(1, |l| {
        level(l) == "INFO" && message(l).starts_with("dns: ghost.test resolves (after ")
    });
    assert!(
        message(&resolves).ends_with(" failed lookups)"),
        "{resolves}"
    );
    assert_eq!(b.log.count(|l| message(l).contains(" resolves again")), 0);
    let page = http_get(ghosts, "/").await;
    assert_eq!(page_id(&page), "late");
    assert_eq!(read_all(plain_addr).await, "plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_family_failing_keeps_every_address_and_says_so_once() {
    let dns = DnsServer::start().await;
    // No client in this test: the backends need not listen (health checks are hourly).
    let port = 9;
    dns.set(HOST, &[ip("127.0.0.2"), ip("127.0.0.3"), ip("::1")]);
    let b = Balancer::start(&named_config(&dns, port));
    let first = format!("dns: {HOST} resolves to 127.0.0.2, 127.0.0.3, ::1");
    b.log.wait_for(1, |l| message(l) == first);

    // Each episode: the AAAA queries alone fail (the A queries answer), then recover; then
    // the same with the A queries.
    let episodes = [
        (RecordType::AAAA, Mode::ServFail),
        (RecordType::AAAA, Mode::Silent),
        (RecordType::A, Mode::Silent),
    ];
    for (episode, (family, mode)) in (1..).zip(episodes) {
        let failed_before = b.log.count(failed_lookup);
        dns.set_mode_for(family, mode);
        b.log.wait_for(episode, warns_failing);
        let warnings: Vec<String> = b
            .log
            .snapshot()
            .into_iter()
            .filter(|l| warns_failing(l))
            .collect();
        let warning = message(&warnings[episode - 1]);
        assert!(
            warning.contains(&format!(": {family} query: "))
                && warning.ends_with("; keeping its last 3 addresses"),
            "{family} {mode:?}: {warning}"
        );
        // Three failed lookups in this episode, and one warning for them.
        b.log.wait_for(failed_before + 3, failed_lookup);
        assert_eq!(b.log.count(warns_failing), episode, "{family} {mode:?}");

        dns.set_mode(Mode::Answer);
        b.log.wait_for(episode, recovered);
        // A few good lookups later, still one recovery line for this episode.
        let queries = dns.queries();
        dns.wait_queries(queries + 6).await;
        assert_eq!(b.log.count(recovered), episode, "{family} {mode:?}");
        assert_eq!(b.log.count(warns_failing), episode, "{family} {mode:?}");
    }
    // No family was ever dropped: no rebuild, no "resolves to" beyond the first.
    assert_eq!(b.log.count(dns_change), 0);
    assert_eq!(
        b.log
            .count(|l| message(l).starts_with(&format!("dns: {HOST} resolves to "))),
        1
    );
}

/// A balancer whose every backend is a name that does not resolve yet (a Kubernetes
/// headless Service before its pods are ready) starts, serves nobody and says why, and
/// serves as soon as the name resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_whose_names_resolve_later_starts_and_waits_for_them() {
    let dns = DnsServer::start().await;
    let late = DemoBackend::start_exactly(&["--listen", "127.0.0.2:0", "--id", "late"], &[]);
    let b = Balancer::start(&named_config(&dns, late.addr.port()));
    b.log.wait_for(1, |l| {
        message(l)
            == "no service can serve: every backend is a host name that resolves to nothing yet; serving, and not ready until a name resolves"
    });
    let addr = b.addr;
    b.log.wait_for(1, |l| {
        message(l) == format!("listening on {addr}, service web, algorithm RoundRobin, 0 backends")
    });
    dns.set(HOST, &[ip("127.0.0.2")]);
    b.log.wait_for(1, |l| {
        message(l) == "service web: 1 backend after a DNS change"
    });
    assert_eq!(ids(&b, 2).await, ["late", "late"]);
}
