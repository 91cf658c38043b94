//! Workload-sensitive balancing and health checks end to end: the real `ballast` against
//! real `ballast-backend` processes whose `/load` the test sets through a file, plus
//! in-process load agents that misbehave on purpose. Readiness is always a log line, a byte
//! or an accept; the only sleep is where the spec itself is a time bound.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// The load poll interval of the workload tests.
const POLL: Duration = Duration::from_millis(200);
const POLL_SECTION: &str = "load_poll: (interval: \"200ms\", timeout: \"500ms\"),";
/// Share of 100 requests the issue requires for the lighter backend of 10% vs 90%.
const LIGHTER_AT_LEAST: usize = 75;

// ---------------------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------------------

/// Blocks on a log wait without starving the in-process servers of this test's runtime.
fn wait_log(b: &Balancer, count: usize, pred: impl Fn(&str) -> bool) -> String {
    tokio::task::block_in_place(|| b.log.wait_for(count, pred))
}

/// `count` sequential `GET /` (Connection: close) through the balancer; the id of each.
async fn demo_ids(b: &Balancer, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(page_id(&http_get(b.addr, "/").await));
    }
    ids
}

/// `count` sequential connections through the balancer; the greeting of each.
async fn greetings(b: &Balancer, count: usize) -> Vec<String> {
    let mut names = Vec::with_capacity(count);
    for _ in 0..count {
        names.push(read_all(b.addr).await);
    }
    names
}

fn share(names: &[String], name: &str) -> usize {
    names.iter().filter(|n| *n == name).count()
}

/// One backend entry of a configuration; `extra` holds optional fields such as
/// `check: Http("/")` or `load_addr: "..."`.
fn entry(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!("        (name: \"{name}\", addr: \"{addr}\", weight: 1, {extra}),")
}

/// A configuration from raw backend entries (the shared `config_with` has no per-backend
/// fields).
fn config_entries(algorithm: &str, sections: &str, entries: &[String]) -> String {
    format!(
        "(\n    listen: \"127.0.0.1:0\",\n    algorithm: {algorithm},\n    {sections}\n    backends: [\n{}\n    ],\n)\n",
        entries.join("\n")
    )
}

/// Replaces a load file atomically, so a poll never reads it half written.
fn set_load(path: &Path, value: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, value).expect("write load file");
    std::fs::rename(&tmp, path).expect("replace load file");
}

/// A demo backend serving `/load` from a file holding `load`.
fn demo_with_load(dir: &TempDir, id: &str, load: &str) -> (DemoBackend, PathBuf) {
    let path = dir.write(&format!("{id}.load"), load);
    let path_text = path.to_str().expect("utf-8 temp path").to_string();
    (DemoBackend::start(id, &["--load-file", &path_text]), path)
}

fn down_line(name: &str, addr: SocketAddr) -> String {
    format!("backend {name} ({addr}) is down")
}

fn up_line(name: &str, addr: SocketAddr) -> String {
    format!("backend {name} ({addr}) is up")
}

fn good_readings(name: &str) -> String {
    format!("backend {name}: load readings from http://")
}

/// Starts `ballast-backend --listen ADDR --id ID EXTRA...` on a fixed address (the shared starter
/// always asks for port 0), killed on drop. The port was just released by the backend this
/// replaces; should something else hold it for a moment, binding is retried until `WAIT`.
fn start_demo_at(id: &str, addr: SocketAddr, extra: &[&str]) -> DemoBackend {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut child = Command::new(BACKEND)
            .args(["--listen", &addr.to_string(), "--id", id])
            .args(extra)
            .env_remove("NAME")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ballast-backend");
        let stdout = child.stdout.take().expect("stdout");
        let proc = Proc { child };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        if line.starts_with(&format!("listening on {addr}")) {
            return DemoBackend { proc, addr };
        }
        // No readiness line: the process exited (address still taken) or hung.
        drop(proc);
        assert!(
            Instant::now() < deadline,
            "ballast-backend could not listen on {addr} again within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A load agent under the test's control: it reads each request head, answers with
/// `response` (or never, when `None`) and publishes how many connections it has accepted.
async fn load_agent(response: Option<&'static str>) -> (SocketAddr, watch::Receiver<usize>) {
    let listener = listener().await;
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = watch::channel(0usize);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tx.send_modify(|n| *n += 1);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                if let Some(response) = response
                    && (s.write_all(response.as_bytes()).await.is_err()
                        || s.shutdown().await.is_err())
                {
                    return;
                }
                // Hold the connection until the prober closes it (after its timeout when
                // we never answer).
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, rx)
}

/// Waits until the agent behind `rx` has accepted at least `count` connections.
async fn wait_accepts(rx: &mut watch::Receiver<usize>, count: usize) {
    within(rx.wait_for(|&n| n >= count))
        .await
        .expect("load agent gone");
}

// ---------------------------------------------------------------------------------------
// Workload-sensitive selection
// ---------------------------------------------------------------------------------------

/// Starts two demo backends with the given loads and a WorkloadSensitive balancer over them,
/// and waits until both loads have been read.
fn workload_pair(dir: &TempDir, loads: [&str; 2]) -> ([(DemoBackend, PathBuf); 2], Balancer) {
    let demos = [
        demo_with_load(dir, "light", loads[0]),
        demo_with_load(dir, "heavy", loads[1]),
    ];
    let b = Balancer::start(&config_with(
        "WorkloadSensitive",
        &[("light", demos[0].0.addr, 1), ("heavy", demos[1].0.addr, 1)],
        POLL_SECTION,
    ));
    for name in ["light", "heavy"] {
        let needle = good_readings(name);
        wait_log(&b, 1, |l| l.contains(&needle) && l.contains("are good"));
    }
    (demos, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_versus_ninety() {
    let dir = TempDir::new();
    let (_demos, b) = workload_pair(&dir, ["10", "90"]);
    assert!(
        b.log
            .count(|l| l.contains("load readings") && l.contains("are good (10.0%)"))
            >= 1
    );
    let ids = demo_ids(&b, 100).await;
    let light = share(&ids, "light");
    assert_eq!(light + share(&ids, "heavy"), 100, "{ids:?}");
    assert!(
        light >= LIGHTER_AT_LEAST,
        "10% vs 90%: the lighter backend got {light} of 100: {:?}",
        tally(&ids)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_loads_spread_evenly() {
    let dir = TempDir::new();
    let (_demos, b) = workload_pair(&dir, ["40", "40"]);
    let ids = demo_ids(&b, 100).await;
    let counts = tally(&ids);
    assert_eq!(counts.values().sum::<usize>(), 100, "{counts:?}");
    for name in ["light", "heavy"] {
        let got = share(&ids, name);
        assert!((30..=70).contains(&got), "40% vs 40%: {counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_loads_are_followed_within_three_intervals() {
    let dir = TempDir::new();
    let (demos, b) = workload_pair(&dir, ["10", "90"]);
    let before = demo_ids(&b, 100).await;
    assert!(
        share(&before, "light") >= LIGHTER_AT_LEAST,
        "before the swap: {:?}",
        tally(&before)
    );

    set_load(&demos[0].1, "90");
    set_load(&demos[1].1, "10");
    // The spec's bound: the new loads are in use within three poll intervals.
    tokio::time::sleep(POLL * 3).await;
    let after = demo_ids(&b, 100).await;
    let heavy = share(&after, "heavy");
    assert!(
        heavy >= LIGHTER_AT_LEAST,
        "after the swap the backend now at 10% got {heavy} of 100: {:?}",
        tally(&after)
    );
    assert_eq!(
        b.log.count(|l| l.contains("failing")),
        0,
        "the load files were replaced atomically, every reading should be good"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_load_endpoint_is_unknown_and_logged_once() {
    let (garbage_agent, mut garbage_polls) =
        load_agent(Some("HTTP/1.1 200 OK\r\n\r\nbanana")).await;
    let (silent_agent, mut silent_polls) = load_agent(None).await;
    let entries = [
        entry(
            "garbage",
            named_backend("garbage").await,
            &format!("load_addr: \"{garbage_agent}\""),
        ),
        entry(
            "silent",
            named_backend("silent").await,
            &format!("load_addr: \"{silent_agent}\""),
        ),
    ];
    // With `fall: 1` a single failed poll counted as a failed check would take a backend out.
    let b = Balancer::start(&config_entries(
        "WorkloadSensitive",
        "health: (interval: \"100ms\", timeout: \"500ms\", fall: 1),\n    \
         load_poll: (interval: \"150ms\", timeout: \"100ms\"),",
        &entries,
    ));
    let garbage_failing =
        format!("backend garbage: load readings from http://{garbage_agent}/load failing");
    let silent_failing =
        format!("backend silent: load readings from http://{silent_agent}/load failing");
    let first = wait_log(&b, 1, |l| l.contains(&garbage_failing));
    assert!(first.contains("\"banana\" is not a number"), "{first}");
    let first = wait_log(&b, 1, |l| l.contains(&silent_failing));
    assert!(first.contains("timed out after 100ms"), "{first}");

    // Several more failed polls of each, counted where they land.
    wait_accepts(&mut garbage_polls, 6).await;
    wait_accepts(&mut silent_polls, 5).await;

    // Unknown loads count as equal: the backends share the traffic as least connections would.
    let names = greetings(&b, 100).await;
    let counts = tally(&names);
    assert_eq!(counts.values().sum::<usize>(), 100, "{counts:?}");
    for name in ["garbage", "silent"] {
        assert!((30..=70).contains(&share(&names, name)), "{counts:?}");
    }
    // Every connection's line is in the log, so everything logged before it is too,
    // including whatever the polls counted above may have logged.
    tokio::task::block_in_place(|| {
        b.wait_finished("garbage", share(&names, "garbage"));
        b.wait_finished("silent", share(&names, "silent"));
    });

    assert_eq!(b.log.count(|l| l.contains(&garbage_failing)), 1);
    assert_eq!(b.log.count(|l| l.contains(&silent_failing)), 1);
    assert_eq!(b.log.count(|l| l.contains("are good")), 0);
    assert_eq!(
        b.log.count(|l| l.contains(" is down")),
        0,
        "a failing load endpoint is not a failed health check"
    );
}

// ---------------------------------------------------------------------------------------
// Health checks
// ---------------------------------------------------------------------------------------

const FAST_CHECKS: &str =
    "health: (check: Tcp, interval: \"100ms\", timeout: \"100ms\", rise: 2, fall: 2),";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_goes_down_after_fall_and_returns_after_rise() {
    let one = DemoBackend::start("one", &[]);
    let mut two = DemoBackend::start("two", &[]);
    let two_addr = two.addr;
    let b = Balancer::start(&config_with(
        "RoundRobin",
        &[("one", one.addr, 1), ("two", two_addr, 1)],
        FAST_CHECKS,
    ));
    let ids = demo_ids(&b, 10).await;
    assert_eq!(share(&ids, "one"), 5, "{ids:?}");

    two.proc.kill();
    let line = wait_log(&b, 1, |l| l.contains(&down_line("two", two_addr)));
    assert!(
        line.contains("health check failed: connect failed"),
        "{line}"
    );
    let ids = demo_ids(&b, 10).await;
    assert!(ids.iter().all(|id| id == "one"), "{ids:?}");
    assert_eq!(
        b.log
            .count(|l| l.contains("connect failed; trying another")),
        0,
        "a backend marked down is not even tried"
    );

    let _two = start_demo_at("two", two_addr, &[]);
    wait_log(&b, 1, |l| l.contains(&up_line("two", two_addr)));
    let ids = demo_ids(&b, 10).await;
    assert_eq!(share(&ids, "one"), 5, "{ids:?}");
    assert!(
        ids.windows(2).all(|pair| pair[0] != pair[1]),
        "round robin alternates again: {ids:?}"
    );
    assert_eq!(b.log.count(|l| l.contains(&down_line("one", one.addr))), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_then_one_back() {
    let mut solo = DemoBackend::start("solo", &[]);
    let addr = solo.addr;
    let b = Balancer::start(&config_with(
        "RoundRobin",
        &[("solo", addr, 1)],
        "health: (interval: \"100ms\", timeout: \"100ms\", rise: 2, fall: 1),",
    ));
    assert_eq!(page_id(&http_get(b.addr, "/").await), "solo");

    solo.proc.kill();
    wait_log(&b, 1, |l| l.contains(&down_line("solo", addr)));
    let started = Instant::now();
    let mut s = connect(b.addr).await;
    let mut got = Vec::new();
    // EOF or reset, but promptly and with no data.
    let read = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut got))
        .await
        .expect("the client was not closed within 1 s");
    assert!(got.is_empty(), "got data: {got:?}");
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    wait_log(&b, 1, |l| {
        l.contains("no backend available") && l.contains("WARN")
    });
    assert_eq!(
        b.log
            .count(|l| l.contains("connect failed; trying another")),
        0,
        "a down backend is not tried"
    );

    let _solo = start_demo_at("solo", addr, &[]);
    wait_log(&b, 1, |l| l.contains(&up_line("solo", addr)));
    let page = http_get(b.addr, "/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert_eq!(page_id(&page), "solo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_check_expects_2xx() {
    let bad = DemoBackend::start("bad", &[]);
    let good = DemoBackend::start("good", &[]);
    // The global check is `GET /`; "bad" overrides it with a path the demo answers 404.
    let b = Balancer::start(&config_entries(
        "RoundRobin",
        "health: (check: Http(\"/\"), interval: \"100ms\", timeout: \"500ms\", rise: 2, fall: 2),",
        &[
            entry("bad", bad.addr, "check: Http(\"/nope\")"),
            entry("good", good.addr, ""),
        ],
    ));
    let line = wait_log(&b, 1, |l| l.contains(&down_line("bad", bad.addr)));
    assert!(line.contains("health check failed: status 404"), "{line}");
    let ids = demo_ids(&b, 10).await;
    assert!(ids.iter().all(|id| id == "good"), "{ids:?}");
    assert_eq!(
        b.log.count(|l| l.contains(&down_line("good", good.addr))),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_poll_success_counts_as_health_pass() {
    // TCP checks only every 2 s (so at least 1.5 s apart) and rise 2: after the check that
    // takes the backend down, checks alone cannot bring it back for 3 s. Polls every 100 ms
    // on the backend's own address can, within a few hundred milliseconds.
    let dir = TempDir::new();
    let (mut demo, load) = demo_with_load(&dir, "polled", "20");
    let addr = demo.addr;
    let b = Balancer::start(&config_with(
        "WorkloadSensitive",
        &[("polled", addr, 1)],
        "health: (check: Tcp, interval: \"2s\", timeout: \"500ms\", rise: 2, fall: 1),\n    \
         load_poll: (interval: \"100ms\", timeout: \"500ms\"),",
    ));
    wait_log(&b, 1, |l| {
        l.contains(&good_readings("polled")) && l.contains("are good")
    });

    demo.proc.kill();
    // Failed polls are not failed checks: only the next TCP check takes it down.
    let down = wait_log(&b, 1, |l| l.contains(&down_line("polled", addr)));
    assert!(
        down.contains("health check failed: connect failed"),
        "{down}"
    );
    let down_seen = Instant::now();

    let load_text = load.to_str().expect("utf-8 temp path");
    let _demo = start_demo_at("polled", addr, &["--load-file", load_text]);
    wait_log(&b, 1, |l| l.contains(&up_line("polled", addr)));
    let took = down_seen.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "up {took:?} after down: only two passed checks (3 s at the earliest) would explain it"
    );
    assert_eq!(page_id(&http_get(b.addr, "/").await), "polled");
}

/// Good `/load` readings must not mask a failing HTTP check: were every reading counted as a
/// pass, polls at least as frequent as checks would keep the failure streak below `fall`
/// forever. The intervals keep the defaults' 2:1 ratio of checks to polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_http_check_is_not_masked_by_good_load_readings() {
    let dir = TempDir::new();
    let (demo, _load) = demo_with_load(&dir, "masked", "20");
    let b = Balancer::start(&config_with(
        "WorkloadSensitive",
        &[("masked", demo.addr, 1)],
        "health: (check: Http(\"/nope\"), interval: \"200ms\", timeout: \"500ms\", rise: 2, fall: 3),\n    \
         load_poll: (interval: \"100ms\", timeout: \"500ms\"),",
    ));
    // The demo answers 404 to every check; about 50 checks run within WAIT.
    let down = wait_log(&b, 1, |l| l.contains(&down_line("masked", demo.addr)));
    assert!(down.contains("status 404"), "{down}");
}
