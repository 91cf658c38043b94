//! Health checks judge the backend, and only the backend: the real `ballast` against
//! in-process backends whose answers the test scripts byte for byte.
//!
//! - An HTTP check decides on the status line alone, whatever the body's framing or size.
//! - A check or load poll that cannot run for lack of ballast's own descriptors is not held
//!   against the backend (ballast runs under `ulimit -n 64` for that).
//!
//! Readiness is always a log line, a byte, an accept or a probe counted where it lands.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Where the tests' checks point.
const HEALTHZ: &str = "/healthz";

/// Blocks on a log wait without starving the in-process servers of this test's runtime.
fn wait_log(b: &Balancer, count: usize, pred: impl Fn(&str) -> bool) -> String {
    tokio::task::block_in_place(|| b.log.wait_for(count, pred))
}

/// Reads a request head (up to 16 KiB); `None` if the peer closed or sent too much first.
async fn read_request_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(n) if n > 0 && head.len() < 16 * 1024 => head.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    Some(head)
}

/// How a test backend answers `GET /healthz`.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// 200 with a short `Content-Length` body.
    Plain,
    /// 200 with a chunked body, as Node's `res.write()` + `res.end()` sends.
    Chunked,
    /// 200 with a 1 MiB `Content-Length` body.
    Big,
    /// 200 without a length: the body streams until the prober closes (64 MiB at most).
    Endless,
    /// 503 with an empty body.
    Unavailable,
    /// Not HTTP at all.
    Garbage,
    /// 200 followed by 100 header lines of 100 bytes (a 10 KB head, as some frameworks
    /// send with every cookie and policy header).
    BigHead,
    /// A status line followed by headers that never end.
    EndlessHead,
    /// Closes without a byte.
    Silent,
}

/// One slice of an endless body or head.
fn filler(line: &[u8]) -> Vec<u8> {
    line.iter().copied().cycle().take(16 * 1024).collect()
}

/// Writes `piece` over and over until the peer goes away or `limit` bytes are out.
async fn stream_until_closed(s: &mut TcpStream, piece: &[u8], limit: usize) {
    let mut sent = 0;
    while sent < limit && s.write_all(piece).await.is_ok() {
        sent += piece.len();
    }
}

async fn answer(s: &mut TcpStream, answer: Answer) {
    const UP: &[u8] = b"{\"status\":\"UP\"}";
    // Write errors are expected: a prober may close after the head.
    match answer {
        Answer::Plain => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                UP.len()
            );
            let _ = s.write_all(&[head.as_bytes(), UP].concat()).await;
        }
        Answer::Chunked => {
            let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            let _ = s.write_all(head).await;
            let _ = s.write_all(b"f\r\n{\"status\":\"UP\"}\r\n0\r\n\r\n").await;
        }
        Answer::Big => {
            let len = 1 << 20;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            );
            if s.write_all(head.as_bytes()).await.is_ok() {
                stream_until_closed(s, &filler(b"x"), len).await;
            }
        }
        Answer::Endless => {
            let head = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n";
            if s.write_all(head).await.is_ok() {
                stream_until_closed(s, &filler(b"still healthy\n"), 64 << 20).await;
            }
        }
        Answer::Unavailable => {
            let _ = s
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
        Answer::Garbage => {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        }
        Answer::BigHead => {
            let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
            for i in 0..100 {
                head.extend_from_slice(
                    format!("X-Header-{i:03}: {}\r\n", "v".repeat(82)).as_bytes(),
                );
            }
            head.extend_from_slice(b"\r\nok");
            let _ = s.write_all(&head).await;
        }
        Answer::EndlessHead => {
            if s.write_all(b"HTTP/1.1 200 OK\r\n").await.is_ok() {
                stream_until_closed(s, &filler(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaa\r\n"), 1 << 20)
                    .await;
            }
        }
        Answer::Silent => {}
    }
}

/// A backend that answers `GET /healthz` with `kind` and counts those requests; any other
/// request head gets `name` and a close, so the test sees which backend a client reached.
async fn http_backend(name: &'static str, kind: Answer) -> (SocketAddr, watch::Receiver<usize>) {
    let (tx, rx) = watch::channel(0usize);
    let addr = spawn_backend(move |mut s| {
        let tx = tx.clone();
        async move {
            let Some(head) = read_request_head(&mut s).await else {
                return;
            };
            if head.starts_with(format!("GET {HEALTHZ} ").as_bytes()) {
                tx.send_modify(|n| *n += 1);
                answer(&mut s, kind).await;
            } else {
                let _ = s.write_all(name.as_bytes()).await;
            }
        }
    })
    .await;
    (addr, rx)
}

/// Waits until a backend has counted at least `count` probes.
async fn wait_probes(rx: &mut watch::Receiver<usize>, count: usize) {
    within(rx.wait_for(|&n| n >= count))
        .await
        .expect("backend gone");
}

/// One client connection through the balancer: which backend answered.
async fn whose(addr: SocketAddr) -> String {
    let mut s = connect(addr).await;
    within(s.write_all(b"WHO\r\n\r\n")).await.expect("write");
    let mut out = Vec::new();
    within(s.read_to_end(&mut out)).await.expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

fn http_checks(backends: &[(&str, SocketAddr, u32)]) -> String {
    config_with(
        "RoundRobin",
        backends,
        "health: (check: Http(\"/healthz\"), interval: \"100ms\", timeout: \"1s\", rise: 1, fall: 2),",
    )
}

/// Every 200 passes, whatever its body and whatever its headers (a 10 KB head too): the
/// check reads the head and closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_passes_any_200_whatever_its_body() {
    let kinds = [
        ("plain", Answer::Plain),
        ("chunked", Answer::Chunked),
        ("big", Answer::Big),
        ("endless", Answer::Endless),
        ("big-head", Answer::BigHead),
    ];
    let mut backends = Vec::new();
    let mut probes = Vec::new();
    for (name, kind) in kinds {
        let (addr, rx) = http_backend(name, kind).await;
        backends.push((name, addr, 1));
        probes.push(rx);
    }
    let b = Balancer::start(&http_checks(&backends));
    // Checks of one backend run one after the other: once the fifth has arrived, four have
    // been judged, twice `fall`.
    for rx in &mut probes {
        wait_probes(rx, 5).await;
    }
    let mut names = Vec::new();
    for _ in 0..4 * kinds.len() {
        names.push(whose(b.addr).await);
    }
    // Every connection's line is in the log, so every verdict logged before it is too.
    tokio::task::block_in_place(|| {
        for (name, _) in kinds {
            match names.iter().filter(|n| *n == name).count() {
                0 => {}
                count => b.wait_finished(name, count),
            }
        }
    });
    let down: Vec<String> = b
        .log
        .snapshot()
        .into_iter()
        .filter(|l| l.contains(" is down"))
        .collect();
    assert!(down.is_empty(), "healthy backends marked down: {down:#?}");
    let counts = tally(&names);
    for (name, _) in kinds {
        assert_eq!(
            counts.get(name),
            Some(&4),
            "round robin over all: {counts:?}"
        );
    }
}

/// A check fails on what the backend answers: a non-2xx status, something that is not
/// HTTP, a head that never ends, or no answer at all. Each is logged as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_fails_a_bad_status_or_a_malformed_answer() {
    let (good, _) = http_backend("good", Answer::Plain).await;
    let failing = [
        ("unavailable", Answer::Unavailable, "status 503"),
        ("garbage", Answer::Garbage, "bad response: not HTTP/1.x"),
        (
            "endless-head",
            Answer::EndlessHead,
            "bad response: head larger than 64 KiB",
        ),
        (
            "silent",
            Answer::Silent,
            "bad response: closed before the end of the head",
        ),
    ];
    let mut backends = vec![("good", good, 1)];
    for (name, kind, _) in failing {
        backends.push((name, http_backend(name, kind).await.0, 1));
    }
    let b = Balancer::start(&http_checks(&backends));
    for ((name, _, why), (_, addr, _)) in failing.iter().zip(&backends[1..]) {
        let expected = format!("backend {name} ({addr}) is down: health check failed: {why}");
        let line = wait_log(&b, 1, |l| {
            l.contains(&format!("backend {name} ({addr}) is down"))
        });
        assert!(line.ends_with(&expected), "{line}\nexpected: {expected}");
    }
    for _ in 0..5 {
        assert_eq!(whose(b.addr).await, "good");
    }
    tokio::task::block_in_place(|| b.wait_finished("good", 5));
    assert_eq!(
        b.log
            .count(|l| l.contains("backend good (") && l.contains(" is down")),
        0
    );
}

// ---------------------------------------------------------------------------------------
// Out of descriptors
// ---------------------------------------------------------------------------------------

/// The descriptor limit ballast runs under.
const FD_LIMIT: usize = 64;

/// Descriptors `pid` holds right now.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// The bound admin address, from `admin listening on http://ADDR/`.
fn admin_addr(b: &Balancer) -> SocketAddr {
    let line = b.log.wait_for(1, |l| l.contains("admin listening on"));
    line.split("admin listening on http://")
        .nth(1)
        .and_then(|rest| rest.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no admin address in {line:?}"))
}

/// A load agent that answers every request with a good reading.
async fn load_agent() -> SocketAddr {
    spawn_backend(|mut s| async move {
        if read_request_head(&mut s).await.is_some() {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n12.5")
                .await;
        }
    })
    .await
}

/// Sends one byte through an open relayed connection and waits for the echo.
async fn echo_byte(s: &mut TcpStream) {
    within(s.write_all(b"x")).await.expect("write");
    let mut back = [0u8; 1];
    within(s.read_exact(&mut back)).await.expect("echo");
    assert_eq!(&back, b"x");
}

/// Out of descriptors (`ulimit -n 64`, idle relayed connections held, the rest taken by
/// idle admin connections), the TCP check and the load poll cannot open a socket. That is
/// ballast's shortage, not the backend's: it is logged once as ballast's own error, the
/// backend stays up, and once descriptors are back new clients are served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_that_cannot_run_for_lack_of_descriptors_mark_nothing_down() {
    let echo = echo_backend().await;
    let agent = load_agent().await;
    let config = format!(
        "(\n    listen: \"127.0.0.1:0\",\n    algorithm: WorkloadSensitive,\n    workers: 1,\n    \
         admin: \"127.0.0.1:0\",\n    relay: (splice: Off),\n    \
         health: (check: Tcp, interval: \"100ms\", timeout: \"500ms\", rise: 1, fall: 2),\n    \
         load_poll: (interval: \"100ms\", timeout: \"500ms\"),\n    \
         backends: [(name: \"echo\", addr: \"{echo}\", load_addr: \"{agent}\")],\n)\n"
    );
    let mut shell = Command::new("sh");
    shell.args([
        "-c",
        &format!("ulimit -n {FD_LIMIT} && exec \"$0\" \"$@\""),
        BALLAST,
    ]);
    let b = Balancer::start_in(&config, shell);
    let admin = admin_addr(&b);
    let pid = b.proc.child.id();
    let readings_good = format!("backend echo: load readings from http://{agent}/load are good");
    wait_log(&b, 1, |l| l.contains(&readings_good));

    // Idle relayed connections, each proven relayed by an echo, while at least four
    // descriptors are left (a check in flight may hold one for a moment).
    let mut held = Vec::new();
    while FD_LIMIT - open_fds(pid) >= 4 {
        let mut s = connect(b.addr).await;
        echo_byte(&mut s).await;
        held.push(s);
    }
    assert!(
        held.len() >= 10,
        "only {} relayed connections fit",
        held.len()
    );
    // Idle admin connections take one descriptor each, so they take exactly what is left;
    // those beyond it wait in the backlog and take each descriptor that frees up.
    let mut idle_admin = Vec::new();
    for _ in 0..8 {
        idle_admin.push(connect(admin).await);
    }
    wait_log(&b, 1, |l| {
        l.contains("admin accept failed: Too many open files")
    });

    // The check and the poll now fail for ballast's own lack of descriptors. An old
    // verdict, "is down", would land here instead of the two errors.
    let check_line =
        format!("cannot run the health check of backend echo ({echo}) of service default");
    let poll_line =
        format!("cannot poll the load of backend echo of service default at http://{agent}/load");
    let blamed = |l: &str| {
        l.contains(" is down") || l.contains("load readings from http://") && l.contains("failing")
    };
    wait_log(&b, 2, |l| {
        l.contains(&check_line) || l.contains(&poll_line) || blamed(l)
    });
    let wrong: Vec<String> = b.log.snapshot().into_iter().filter(|l| blamed(l)).collect();
    assert!(wrong.is_empty(), "blamed on the backend: {wrong:#?}");
    let own = ": Too many open files (os error 24); ballast's own resources, not counted against the backend";
    for what in [&check_line, &poll_line] {
        let line = wait_log(&b, 1, |l| l.contains(what.as_str()));
        assert!(
            line.contains("ERROR") && line.ends_with(&format!("{what}{own}")),
            "{line}"
        );
    }
    // Several more checks and polls that could not run, twice `fall` at the least.
    let check_skipped = format!("health check of backend echo ({echo}) of service default not run");
    let poll_skipped =
        format!("load poll of backend echo of service default at http://{agent}/load not run");
    wait_log(&b, 4, |l| l.contains(&check_skipped));
    wait_log(&b, 4, |l| l.contains(&poll_skipped));

    // Descriptors come back.
    drop(idle_admin);
    drop(held);
    let check_again =
        format!("health check of backend echo ({echo}) of service default runs again after");
    let poll_again = format!(
        "load poll of backend echo of service default at http://{agent}/load runs again after"
    );
    wait_log(&b, 1, |l| l.contains(&check_again));
    wait_log(&b, 1, |l| l.contains(&poll_again));
    let status = http_get(admin, "/api/status").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(status.contains("\"state\":\"up\""), "{status}");
    // New clients are served at once: the backend was never marked down.
    for _ in 0..10 {
        let mut s = connect(b.addr).await;
        echo_byte(&mut s).await;
    }
    tokio::task::block_in_place(|| b.wait_finished("echo", 10));
    let log = b.log.snapshot();
    let wrong: Vec<&String> = log
        .iter()
        .filter(|l| blamed(l) || l.contains("no backend available"))
        .collect();
    assert!(wrong.is_empty(), "blamed on the backend: {wrong:#?}");
    assert_eq!(log.iter().filter(|l| l.contains(&check_line)).count(), 1);
    assert_eq!(log.iter().filter(|l| l.contains(&poll_line)).count(), 1);
}
