//! Running it in production: reload on SIGHUP, graceful shutdown, connection limits and the
//! queue, and running out of file descriptors.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `msg` and reads the same number of bytes back.
async fn echo_once(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    within(s.write_all(msg)).await.expect("write");
    let mut back = vec![0u8; msg.len()];
    within(s.read_exact(&mut back)).await.expect("echo");
    back
}

/// An echo backend that counts the connections it accepted.
async fn counting_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let addr = spawn_backend(move |s| {
        // Counted when accepted, before the echo task runs.
        count.fetch_add(1, Ordering::SeqCst);
        echo(s)
    })
    .await;
    (addr, accepted)
}

/// Reads until EOF or reset; true when the peer closed without sending anything.
async fn closed_without_data(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(within(s.read(&mut buf)).await, Ok(0) | Err(_))
}

#[tokio::test]
async fn reload_moves_new_connections_while_established_ones_continue() {
    let echo = echo_backend().await;
    let b = Balancer::start(&config("RoundRobin", &[("echo", echo, 1)]));
    let mut established = connect(b.addr).await;
    assert_eq!(echo_once(&mut established, b"before").await, b"before");

    let verdict = b.reload(&config(
        "WeightedRoundRobin",
        &[
            ("x", named_backend("x").await, 1),
            ("y", named_backend("y").await, 2),
        ],
    ));
    assert!(verdict.contains("reloaded: listening on"), "{verdict}");
    let names: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(read_all(b.addr).await);
        }
        v
    };
    assert_eq!(names, ["y", "x", "y", "y", "x", "y"]);
    // The connection opened under the old configuration still relays both ways.
    assert_eq!(echo_once(&mut established, b"after").await, b"after");
}

#[tokio::test]
async fn invalid_reload_is_rejected_and_the_old_configuration_keeps_serving() {
    let b = Balancer::start(&config("RoundRobin", &[("a", named_backend("a").await, 1)]));
    let broken = config("RoundRobin", &[("a", named_backend("b").await, 1)])
        .replace("RoundRobin", "Roundrobin");
    let verdict = b.reload(&broken);
    let path = b.config_path.display().to_string();
    assert!(
        verdict.contains(&format!(
            "reload rejected: {path}:3:16: unknown algorithm `Roundrobin`"
        )),
        "{verdict}"
    );
    assert!(
        verdict.contains("keeping the running configuration"),
        "{verdict}"
    );
    for _ in 0..3 {
        assert_eq!(read_all(b.addr).await, "a");
    }
}

#[tokio::test]
async fn reload_with_a_new_listen_address_moves_the_listener() {
    let a = named_backend("a").await;
    let b = Balancer::start(&config("RoundRobin", &[("a", a, 1)]));
    let old = b.addr;
    let new_port = refusing_addr();
    let text = config("RoundRobin", &[("a", a, 1)]).replace("127.0.0.1:0", &new_port.to_string());
    let verdict = b.reload(&text);
    assert!(
        verdict.contains(&format!("reloaded: listening on {new_port}")),
        "{verdict}"
    );
    assert_eq!(read_all(new_port).await, "a");
    assert!(
        TcpStream::connect(old).await.is_err(),
        "old address still accepts"
    );
}

#[tokio::test]
async fn sigterm_stops_accepting_drains_and_exits_zero() {
    let mut b = Balancer::start(&config_with(
        "RoundRobin",
        &[("echo", echo_backend().await, 1)],
        "timeouts: (grace: \"30s\"),",
    ));
    let mut open = connect(b.addr).await;
    assert_eq!(echo_once(&mut open, b"one").await, b"one");
    b.proc.signal("TERM");
    b.log.wait_for(1, |l| {
        l.contains("shutting down: waiting up to 30s for 1 open connections")
    });
    assert!(TcpStream::connect(b.addr).await.is_err(), "still accepting");
    // The open connection is untouched by the shutdown.
    assert_eq!(echo_once(&mut open, b"two").await, b"two");
    within(open.shutdown()).await.expect("shutdown");
    let mut rest = Vec::new();
    within(open.read_to_end(&mut rest)).await.expect("drain");
    let status = b.proc.wait_exit();
    assert_eq!(status.code(), Some(0));
    assert_eq!(b.log.count(|l| l.contains("grace period over")), 0);
}

#[tokio::test]
async fn grace_period_bounds_the_drain() {
    let echo = echo_backend().await;
    let mut b = Balancer::start(&config_with(
        "RoundRobin",
        &[("echo", echo, 1)],
        "timeouts: (grace: \"300ms\"),",
    ));
    let mut open = connect(b.addr).await;
    assert_eq!(echo_once(&mut open, b"x").await, b"x");
    let asked = Instant::now();
    b.proc.signal("TERM");
    // Cut off mid-stream: a reset, so the client cannot take it for a complete stream.
    let mut buf = [0u8; 16];
    let cut = within(open.read(&mut buf)).await;
    assert_eq!(
        cut.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    let status = b.proc.wait_exit();
    assert_eq!(status.code(), Some(0));
    assert!(asked.elapsed() >= Duration::from_millis(300));
    b.log.wait_for(1, |l| {
        l.contains("grace period over: closing 1 remaining connections")
    });
    // The cut connection still gets its access-log line, with what it moved.
    let client = open.local_addr().expect("client address");
    let line = b.log.wait_for(1, |l| l.contains("ballast::access"));
    let moved = format!("] default: {client} -> echo ({echo}): 1 bytes up, 1 bytes down, ");
    assert!(line.contains(&moved), "{line}");
    assert!(
        line.ends_with(" ms, closed at end of grace period"),
        "{line}"
    );
}

#[tokio::test]
async fn a_second_sigint_exits_at_once() {
    let mut b = Balancer::start(&config_with(
        "RoundRobin",
        &[("echo", echo_backend().await, 1)],
        "timeouts: (grace: \"1h\"),",
    ));
    let mut open = connect(b.addr).await;
    assert_eq!(echo_once(&mut open, b"x").await, b"x");
    b.proc.signal("INT");
    b.log
        .wait_for(1, |l| l.contains("shutting down: waiting up to"));
    b.proc.signal("INT");
    let status = b.proc.wait_exit();
    assert_eq!(status.code(), Some(130));
    b.log.wait_for(1, |l| l.contains("second SIGINT"));
}

#[tokio::test]
async fn at_max_connections_new_clients_wait_in_the_backlog() {
    let (echo, accepted) = counting_echo().await;
    let b = Balancer::start(&config_with(
        "RoundRobin",
        &[("echo", echo, 1)],
        &format!("{NO_PROBES} limits: (max_connections: 2),"),
    ));
    let mut first = connect(b.addr).await;
    let mut second = connect(b.addr).await;
    assert_eq!(echo_once(&mut first, b"1").await, b"1");
    assert_eq!(echo_once(&mut second, b"2").await, b"2");
    // The third is queued by the kernel, not refused, and not served yet.
    let mut third = connect(b.addr).await;
    within(third.write_all(b"3")).await.expect("write");
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut byte)).await;
    assert!(early.is_err(), "served beyond max_connections");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    drop(first);
    within(third.read_exact(&mut byte))
        .await
        .expect("served once a slot is free");
    assert_eq!(&byte, b"3");
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_full_backend_is_skipped() {
    let (full, _) = counting_echo().await;
    let (roomy, roomy_accepts) = counting_echo().await;
    let text = config_with(
        "RoundRobin",
        &[("full", full, 1), ("roomy", roomy, 1)],
        NO_PROBES,
    )
    .replace(
        "weight: 1),\n        (name: \"roomy\"",
        "weight: 1, max_connections: 1),\n        (name: \"roomy\"",
    );
    let b = Balancer::start(&text);
    let mut on_full = connect(b.addr).await;
    assert_eq!(echo_once(&mut on_full, b"f").await, b"f");
    // Round robin would alternate; with "full" at its limit every client goes to "roomy".
    let mut others = Vec::new();
    for i in 0..4u8 {
        let mut s = connect(b.addr).await;
        assert_eq!(echo_once(&mut s, &[i]).await, [i]);
        others.push(s);
    }
    assert_eq!(roomy_accepts.load(Ordering::SeqCst), 4);
}

/// Backends `a` and `b`, each limited to one connection, with the given queue settings.
async fn two_single_slot_backends(queue: &str) -> Balancer {
    two_single_slot_backends_and(queue, "").await
}

async fn two_single_slot_backends_and(queue: &str, extra: &str) -> Balancer {
    let text = config_with(
        "RoundRobin",
        &[
            ("a", echo_backend().await, 1),
            ("b", echo_backend().await, 1),
        ],
        &format!("{NO_PROBES} limits: ({queue}), {extra}"),
    )
    .replace("weight: 1)", "weight: 1, max_connections: 1)");
    Balancer::start(&text)
}

#[tokio::test]
async fn when_every_backend_is_full_clients_queue_until_one_has_room() {
    let b = two_single_slot_backends("queue: 8, queue_timeout: \"10s\"").await;
    let mut first = connect(b.addr).await;
    let mut second = connect(b.addr).await;
    assert_eq!(echo_once(&mut first, b"1").await, b"1");
    assert_eq!(echo_once(&mut second, b"2").await, b"2");
    let mut queued = connect(b.addr).await;
    within(queued.write_all(b"q")).await.expect("write");
    drop(first);
    let mut byte = [0u8; 1];
    within(queued.read_exact(&mut byte))
        .await
        .expect("served after a release");
    assert_eq!(&byte, b"q");
}

#[tokio::test]
async fn the_queue_is_bounded_in_time_and_size() {
    let b = two_single_slot_backends("queue: 1, queue_timeout: \"300ms\"").await;
    let mut first = connect(b.addr).await;
    let mut second = connect(b.addr).await;
    assert_eq!(echo_once(&mut first, b"1").await, b"1");
    assert_eq!(echo_once(&mut second, b"2").await, b"2");
    let mut waiting = connect(b.addr).await;
    b.log
        .wait_for(1, |l| l.contains("every backend is full; queued"));
    // The queue holds one: a second waiter is turned away at once.
    let mut turned_away = connect(b.addr).await;
    assert!(closed_without_data(&mut turned_away).await);
    b.log.wait_for(1, |l| {
        l.contains("every backend is full and the queue is full")
    });
    // The first waiter gives up after the queue timeout.
    let started = Instant::now();
    assert!(closed_without_data(&mut waiting).await);
    assert!(started.elapsed() < Duration::from_secs(5));
    b.log
        .wait_for(1, |l| l.contains("every backend stayed full for 300ms"));
    // The connections being served never noticed.
    assert_eq!(echo_once(&mut first, b"3").await, b"3");
}

#[tokio::test]
async fn a_client_still_queued_when_the_grace_period_ends_is_closed_and_logged() {
    let mut b = two_single_slot_backends_and(
        "queue: 8, queue_timeout: \"1h\"",
        "timeouts: (grace: \"300ms\"),",
    )
    .await;
    let mut first = connect(b.addr).await;
    let mut second = connect(b.addr).await;
    assert_eq!(echo_once(&mut first, b"1").await, b"1");
    assert_eq!(echo_once(&mut second, b"2").await, b"2");
    let mut queued = connect(b.addr).await;
    b.log
        .wait_for(1, |l| l.contains("every backend is full; queued"));
    b.proc.signal("TERM");
    assert!(closed_without_data(&mut queued).await);
    assert_eq!(b.proc.wait_exit().code(), Some(0));
    let client = queued.local_addr().expect("client address");
    let line = b.log.wait_for(1, |l| {
        l.contains(&format!(
            "] default: {client} -> -: 0 bytes up, 0 bytes down, "
        ))
    });
    assert!(
        line.ends_with(" ms, closed at end of grace period"),
        "{line}"
    );
}

/// User and system CPU time of `pid` so far, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().expect("number"))
        .collect();
    Duration::from_millis((fields[0] + fields[1]) * 10) // USER_HZ is 100 on Linux
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_backs_off_and_recovers() {
    let echo = echo_backend().await;
    let mut shell = Command::new("sh");
    shell.args(["-c", "ulimit -n 64 && exec \"$0\" \"$@\"", BALLAST]);
    let mut b = Balancer::start_in(
        &config_with("RoundRobin", &[("echo", echo, 1)], NO_PROBES),
        shell,
    );
    // Each relayed client costs two descriptors; 60 clients exhaust 64.
    let mut clients = Vec::new();
    for _ in 0..60 {
        clients.push(connect(b.addr).await);
    }
    b.log.wait_for(1, |l| {
        l.contains("Too many open files")
            && (l.contains("retrying in") || l.contains("cannot open"))
    });
    let pid = b.proc.child.id();
    let before = cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_time(pid) - before;
    assert!(
        spent < Duration::from_millis(500),
        "spinning: {spent:?} of CPU in 1 s"
    );
    drop(clients);
    // Descriptors come back and the balancer serves again.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut s = connect(b.addr).await;
        if s.write_all(b"ok").await.is_ok() {
            let mut back = [0u8; 2];
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut back)).await
            {
                assert_eq!(&back, b"ok");
                break;
            }
        }
        assert!(Instant::now() < deadline, "never recovered");
    }
    assert!(
        b.proc.child.try_wait().expect("try_wait").is_none(),
        "exited"
    );
}

#[tokio::test]
async fn a_second_balancer_on_a_busy_port_refuses_to_start() {
    let b = Balancer::start(&config("RoundRobin", &[("a", named_backend("a").await, 1)]));
    let dir = TempDir::new();
    let text = config("RoundRobin", &[("a", refusing_addr(), 1)])
        .replace("127.0.0.1:0", &b.addr.to_string());
    let path = dir.write("second.ron", &text);
    let (code, _, err) = run_ballast(&["--config", &path.to_string_lossy()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "cannot listen on {}: Address already in use",
            b.addr
        )),
        "{err}"
    );
    // The first one never shared its port.
    for _ in 0..4 {
        assert_eq!(read_all(b.addr).await, "a");
    }
}

#[tokio::test]
async fn raising_max_connections_by_reload_counts_the_open_ones() {
    let (echo, accepted) = counting_echo().await;
    let limited = |max: usize| {
        config_with(
            "RoundRobin",
            &[("echo", echo, 1)],
            &format!("{NO_PROBES} limits: (max_connections: {max}),"),
        )
    };
    let b = Balancer::start(&limited(1));
    let mut first = connect(b.addr).await;
    assert_eq!(echo_once(&mut first, b"1").await, b"1");
    let mut second = connect(b.addr).await;
    within(second.write_all(b"2")).await.expect("write");
    // Raised to 2: the waiting client gets the new slot, the open one keeps its own.
    let verdict = b.reload(&limited(2));
    assert!(verdict.contains("reloaded"), "{verdict}");
    let mut byte = [0u8; 1];
    within(second.read_exact(&mut byte))
        .await
        .expect("served after the raise");
    assert_eq!(&byte, b"2");
    // Both slots are taken: a third client waits.
    let mut third = connect(b.addr).await;
    within(third.write_all(b"3")).await.expect("write");
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut byte)).await;
    assert!(early.is_err(), "served beyond the raised limit");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    drop(first);
    within(third.read_exact(&mut byte))
        .await
        .expect("served once a slot is free");
    assert_eq!(&byte, b"3");
}
