//! The balancer end to end: selection over real connections, failover, the relay's
//! half-close and integrity guarantees, concurrency. Tests that need no log line run ballast
//! in-process ([`InProcess`]); the others run the `ballast` binary.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `count` sequential connections through the balancer; the greeting of each.
async fn sequential_names(addr: std::net::SocketAddr, count: usize) -> Vec<String> {
    let mut names = Vec::with_capacity(count);
    for _ in 0..count {
        names.push(read_all(addr).await);
    }
    names
}

#[tokio::test]
async fn round_robin_rotates_strictly() {
    let backends = [
        ("a", named_backend("a").await, 1),
        ("b", named_backend("b").await, 1),
        ("c", named_backend("c").await, 1),
    ];
    let b = InProcess::start(&config("RoundRobin", &backends)).await;
    let names = sequential_names(b.addr, 30).await;
    let expected: Vec<&str> = ["a", "b", "c"].iter().cycle().take(30).copied().collect();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn weighted_three_to_five_interleaves_in_every_cycle() {
    let backends = [
        ("vm4", named_backend("vm4").await, 3),
        ("vm5", named_backend("vm5").await, 5),
    ];
    let b = InProcess::start(&config("WeightedRoundRobin", &backends)).await;
    let names = sequential_names(b.addr, 80).await;
    for cycle in names.chunks(8) {
        assert_eq!(
            cycle,
            ["vm5", "vm4", "vm5", "vm4", "vm5", "vm5", "vm4", "vm5"]
        );
    }
}

#[tokio::test]
async fn drained_backend_gets_no_connections() {
    let backends = [
        ("a", named_backend("a").await, 1),
        ("drained", named_backend("drained").await, 0),
        ("c", named_backend("c").await, 1),
    ];
    let b = InProcess::start(&config("RoundRobin", &backends)).await;
    let names = sequential_names(b.addr, 10).await;
    let expected: Vec<&str> = ["a", "c"].iter().cycle().take(10).copied().collect();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn least_connections_prefers_the_idle_backend() {
    let backends = [
        ("busy", named_backend("busy").await, 1),
        ("idle", named_backend("idle").await, 1),
    ];
    let b = Balancer::start(&config("LeastConnections", &backends));
    // Hold connections open until three sit on "busy"; least connections spreads them, so
    // "idle" holds two or three as well. Then release those on "idle".
    let mut busy = Vec::new();
    let mut idle = Vec::new();
    while busy.len() < 3 {
        let mut s = connect(b.addr).await;
        let mut name = vec![0u8; 4];
        within(s.read_exact(&mut name)).await.expect("greeting");
        if name == b"busy" {
            busy.push(s)
        } else {
            idle.push(s)
        }
    }
    let mut on_idle = idle.len();
    assert!(
        (2..=3).contains(&on_idle),
        "least connections spread 3 vs {on_idle}"
    );
    drop(idle);
    b.wait_finished("idle", on_idle);
    // "busy" has 3 open connections, "idle" none: every new connection goes to "idle".
    for _ in 0..10 {
        assert_eq!(read_all(b.addr).await, "idle");
        on_idle += 1;
        b.wait_finished("idle", on_idle);
    }
    drop(busy);
}

/// Which of `names` (weight 1 each) Maglev gives `client`, with the backends at `down`
/// unavailable: the library's own selector, so the test predicts instead of trusting.
fn maglev_choice(names: &[&str], down: &[usize], client: &str) -> usize {
    use ballast::selection::{Algorithm, Candidate, Selector};
    let members: Vec<(&str, u32)> = names.iter().map(|&n| (n, 1)).collect();
    let mut candidates = vec![Candidate::new(1, 0); names.len()];
    for &i in down {
        candidates[i].available = false;
    }
    let client = client.parse().expect("an address");
    Selector::new(Algorithm::Maglev, &members)
        .select(&candidates[..], client)
        .expect("a backend")
}

#[tokio::test]
async fn maglev_keeps_a_client_on_its_backend_and_its_fallback() {
    // A refusing backend named so that 127.0.0.1 hashes to it: every connection is refused
    // there first (or skipped once it is marked down) and must land on the same fallback.
    let live = ["a", "b", "c"];
    let dead = (0..)
        .map(|k| format!("dead{k}"))
        .find(|dead| maglev_choice(&[dead, "a", "b", "c"], &[], "127.0.0.1") == 0)
        .expect("a name that 127.0.0.1 hashes to");
    let fallback = maglev_choice(&[&dead, "a", "b", "c"], &[0], "127.0.0.1");
    let backends = [
        (dead.as_str(), refusing_addr(), 1),
        ("a", named_backend("a").await, 1),
        ("b", named_backend("b").await, 1),
        ("c", named_backend("c").await, 1),
    ];
    let b = InProcess::start(&config("Maglev", &backends)).await;
    let names = sequential_names(b.addr, 12).await;
    assert!(names.iter().all(|n| *n == live[fallback - 1]), "{names:?}");
}

#[tokio::test]
async fn maglev_hashes_the_proxy_headers_client() {
    // Behind another balancer every connection comes from one address: the PROXY header's
    // source is the client that must be hashed.
    let names = ["a", "b", "c"];
    let backends = [
        ("a", named_backend("a").await, 1),
        ("b", named_backend("b").await, 1),
        ("c", named_backend("c").await, 1),
    ];
    let b = InProcess::start(&config_with("Maglev", &backends, "accept_proxy: true,")).await;
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..2 {
        for k in 1..=20 {
            let source = format!("198.51.100.{k}");
            let mut s = connect(b.addr).await;
            let header = format!("PROXY TCP4 {source} 127.0.0.1 4242 80\r\n");
            within(s.write_all(header.as_bytes())).await.expect("write");
            let mut got = Vec::new();
            within(s.read_to_end(&mut got)).await.expect("read");
            let expected = names[maglev_choice(&names, &[], &source)];
            assert_eq!(
                String::from_utf8_lossy(&got),
                expected,
                "{source}, round {round}"
            );
            seen.insert(expected);
        }
    }
    assert!(seen.len() >= 2, "20 clients on one backend: {seen:?}");
}

#[tokio::test]
async fn power_of_two_choices_uses_every_backend_and_fails_over() {
    let backends = [
        ("dead", refusing_addr(), 1),
        ("a", named_backend("a").await, 1),
        ("b", named_backend("b").await, 1),
        ("c", named_backend("c").await, 1),
    ];
    let b = InProcess::start(&config("PowerOfTwoChoices", &backends)).await;
    let names = sequential_names(b.addr, 60).await;
    let counts = tally(&names);
    // Random draws: a backend of three missing from 60 picks has odds of about 1 in 10^10.
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["a", "b", "c"],
        "{names:?}"
    );
}

#[tokio::test]
async fn fails_over_past_a_refusing_backend() {
    let dead = refusing_addr();
    let backends = [
        ("dead", dead, 1),
        ("live1", named_backend("live1").await, 1),
        ("live2", named_backend("live2").await, 1),
    ];
    let b = Balancer::start(&config("RoundRobin", &backends));
    let names = sequential_names(b.addr, 12).await;
    let counts = tally(&names);
    assert_eq!(
        counts.get("live1").copied().unwrap_or(0) + counts.get("live2").copied().unwrap_or(0),
        12,
        "{names:?}"
    );
    assert!(counts.get("live1").copied().unwrap_or(0) >= 4, "{names:?}");
    assert!(counts.get("live2").copied().unwrap_or(0) >= 4, "{names:?}");
    assert!(
        b.log
            .count(|l| l.contains("backend dead") && l.contains("connect failed"))
            >= 1,
        "the refused connect is logged"
    );
}

#[tokio::test]
async fn fails_over_past_a_backend_killed_mid_run() {
    let mut demo: Vec<DemoBackend> = ["vm1", "vm2", "vm3"]
        .iter()
        .map(|id| DemoBackend::start(id, &[]))
        .collect();
    let backends: Vec<(&str, std::net::SocketAddr, u32)> = vec![
        ("vm1", demo[0].addr, 1),
        ("vm2", demo[1].addr, 1),
        ("vm3", demo[2].addr, 1),
    ];
    let b = InProcess::start(&config("RoundRobin", &backends)).await;
    let from = |page: &str| {
        page.split("This is from ")
            .nth(1)
            .map(|rest| rest.chars().take(3).collect::<String>())
            .unwrap_or_else(|| panic!("no backend id in {page:?}"))
    };
    let mut before = Vec::new();
    for _ in 0..6 {
        before.push(from(&http_get(b.addr, "/").await));
    }
    assert_eq!(before, ["vm1", "vm2", "vm3", "vm1", "vm2", "vm3"]);

    demo[1].proc.kill();
    let mut after = Vec::new();
    for _ in 0..12 {
        after.push(from(&http_get(b.addr, "/").await));
    }
    let counts = tally(&after);
    assert_eq!(counts.get("vm2"), None, "{after:?}");
    assert_eq!(counts.values().sum::<usize>(), 12, "{after:?}");
    assert!(counts.get("vm1").copied().unwrap_or(0) >= 4, "{after:?}");
    assert!(counts.get("vm3").copied().unwrap_or(0) >= 4, "{after:?}");
}

#[tokio::test]
async fn with_no_reachable_backend_the_client_is_closed_at_once() {
    let b = Balancer::start(&config("RoundRobin", &[("dead", refusing_addr(), 1)]));
    let mut s = connect(b.addr).await;
    let mut buf = [0u8; 16];
    // EOF or reset, but promptly and with no data.
    let n = within(s.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0);
    b.log.wait_for(1, |l| {
        l.contains("no backend available") && l.contains("WARN")
    });
}

#[tokio::test]
async fn client_half_close_still_gets_the_reply() {
    // The backend answers only after it has seen EOF: the reply must still reach the client.
    let listener = listener().await;
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut request = Vec::new();
        s.read_to_end(&mut request).await.expect("read");
        let reply = format!("got {} bytes", request.len());
        s.write_all(reply.as_bytes()).await.expect("write");
        s.shutdown().await.expect("shutdown");
    });
    let b = InProcess::start(&config_with("RoundRobin", &[("a", addr, 1)], NO_PROBES)).await;
    let mut s = connect(b.addr).await;
    within(s.write_all(&[7u8; 1000])).await.expect("write");
    within(s.shutdown()).await.expect("half-close");
    let mut reply = String::new();
    within(s.read_to_string(&mut reply)).await.expect("read");
    assert_eq!(reply, "got 1000 bytes");
}

#[tokio::test]
async fn backend_half_close_still_receives_the_client() {
    // The backend closes its sending side first and keeps reading.
    let listener = listener().await;
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        s.write_all(b"hello").await.expect("write");
        s.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.expect("read");
        let _ = tx.send(rest);
    });
    let b = InProcess::start(&config_with("RoundRobin", &[("a", addr, 1)], NO_PROBES)).await;
    let mut s = connect(b.addr).await;
    let mut greeting = Vec::new();
    within(s.read_to_end(&mut greeting)).await.expect("read");
    assert_eq!(greeting, b"hello");
    within(s.write_all(b"still here"))
        .await
        .expect("write after EOF");
    within(s.shutdown()).await.expect("shutdown");
    assert_eq!(within(rx).await.expect("backend result"), b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_mib_arrive_byte_exact() {
    let b = InProcess::start(&config("RoundRobin", &[("echo", echo_backend().await, 1)])).await;
    let data = pattern(16 * 1024 * 1024, 42);
    let back = echo_through(b.addr, data.clone()).await;
    assert_eq!(back.len(), data.len());
    assert!(back == data, "16 MiB came back altered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_connections_each_byte_exact() {
    let backends = [
        ("e1", echo_backend().await, 1),
        ("e2", echo_backend().await, 1),
    ];
    let b = InProcess::start(&config("LeastConnections", &backends)).await;
    let addr = b.addr;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..500u64 {
        tasks.spawn(async move {
            let data = pattern(4096, i);
            (echo_through(addr, data.clone()).await == data, i)
        });
    }
    let mut ok = 0;
    while let Some(result) = tasks.join_next().await {
        let (same, i) = result.expect("task");
        assert!(same, "connection {i} came back altered");
        ok += 1;
    }
    assert_eq!(ok, 500);
}

#[tokio::test]
async fn demo_backend_rotation_through_the_balancer() {
    let demo = [
        DemoBackend::start("VM4", &[]),
        DemoBackend::start("VM5", &[]),
    ];
    let b = InProcess::start(&config(
        "WeightedRoundRobin",
        &[("vm4", demo[0].addr, 3), ("vm5", demo[1].addr, 5)],
    ))
    .await;
    let mut seen = Vec::new();
    for _ in 0..8 {
        let page = http_get(b.addr, "/").await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        seen.push(if page.contains("This is from VM4") {
            "VM4"
        } else {
            "VM5"
        });
    }
    assert_eq!(
        seen,
        ["VM5", "VM4", "VM5", "VM4", "VM5", "VM5", "VM4", "VM5"]
    );
}
