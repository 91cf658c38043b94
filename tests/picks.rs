//! Backups and slow starts end to end: which backend real connections reach, and the
//! effective weight the admin listener reports while a newcomer ramps up.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// `count` sequential connections through the balancer; the greeting of each.
async fn sequential_names(addr: std::net::SocketAddr, count: usize) -> Vec<String> {
    let mut names = Vec::with_capacity(count);
    for _ in 0..count {
        names.push(read_all(addr).await);
    }
    names
}

#[tokio::test]
async fn a_backup_serves_only_while_no_other_backend_can() {
    let text = format!(
        r#"(listen: "127.0.0.1:0", algorithm: RoundRobin, health: (interval: "1h"),
            backends: [
                (name: "a", addr: "{}"),
                (name: "spare", addr: "{}", backup: true),
                (name: "b", addr: "{}"),
            ])"#,
        named_backend("a").await,
        named_backend("spare").await,
        named_backend("b").await,
    );
    let live = InProcess::start(&text).await;
    assert_eq!(
        sequential_names(live.addr, 6).await,
        ["a", "b", "a", "b", "a", "b"]
    );
    // The others refuse: every client fails over to the backup.
    let text = format!(
        r#"(listen: "127.0.0.1:0", algorithm: RoundRobin, health: (interval: "1h"),
            backends: [
                (name: "a", addr: "{}"),
                (name: "spare", addr: "{}", backup: true),
                (name: "b", addr: "{}"),
            ])"#,
        refusing_addr(),
        named_backend("spare").await,
        refusing_addr(),
    );
    let dead = InProcess::start(&text).await;
    assert_eq!(sequential_names(dead.addr, 3).await, ["spare"; 3]);
}

/// Backend `name` of the single service in `/api/status`.
async fn backend_status(admin: std::net::SocketAddr, name: &str) -> Value {
    let reply = http_get(admin, "/api/status").await;
    let body = reply.split("\r\n\r\n").nth(1).expect("a body");
    let status: Value = serde_json::from_str(body).expect("JSON");
    status["services"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no backend {name} in {status}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_added_by_a_reload_ramps_up_over_slow_start() {
    let old = named_backend("old").await;
    let new = named_backend("new").await;
    let base = format!(
        r#"(listen: "127.0.0.1:0", admin: "127.0.0.1:0", algorithm: WeightedRoundRobin,
            slow_start: "2s", health: (interval: "1h"),
            backends: [(name: "old", addr: "{old}", weight: 4)])"#
    );
    let b = Balancer::start(&base);
    let admin = admin_addr(&b);
    // There from the start: its whole weight at once.
    let first = backend_status(admin, "old").await;
    assert_eq!(
        (first["weight"].clone(), first["effective_weight"].clone()),
        (4.into(), 4.0.into())
    );

    let grown = base.replace(
        "weight: 4)]",
        &format!("weight: 4), (name: \"new\", addr: \"{new}\", weight: 4)]"),
    );
    let reloaded = Instant::now();
    let verdict = tokio::task::block_in_place(|| b.reload(&grown));
    assert!(verdict.contains("reloaded"), "{verdict}");
    let start = backend_status(admin, "new").await;
    let weight = start["effective_weight"].as_f64().expect("a number");
    assert!(
        reloaded.elapsed() >= Duration::from_secs(2) || weight < 4.0,
        "no ramp: {start}"
    );
    assert!(weight >= 0.25, "below a sixteenth: {start}");
    // The newcomer takes a small share of connections at first (ramp 1/16 to about 1/4
    // over the first half second: at most 1 in 5).
    let early = sequential_names(b.addr, 20).await;
    let share = early.iter().filter(|n| *n == "new").count();
    if reloaded.elapsed() < Duration::from_millis(500) {
        assert!(share <= 4, "{share} of 20 went to the newcomer: {early:?}");
    }
    // Then its effective weight rises to the whole, reported as it goes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = vec![weight];
    loop {
        let now = backend_status(admin, "new").await["effective_weight"]
            .as_f64()
            .expect("a number");
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        if now == 4.0 {
            break;
        }
        assert!(Instant::now() < deadline, "never reached 4: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "not rising: {seen:?}"
    );
    assert!(seen.len() >= 3, "too few steps seen: {seen:?}");
    let metrics = http_get(admin, "/metrics").await;
    assert!(
        metrics
            .contains("ballast_backend_effective_weight{service=\"default\",backend=\"new\"} 4\n"),
        "{metrics}"
    );
    // And it gets its full share: 4 of every 8.
    let names = sequential_names(b.addr, 16).await;
    assert_eq!(names.iter().filter(|n| *n == "new").count(), 8, "{names:?}");
}
