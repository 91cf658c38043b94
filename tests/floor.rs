//! The benchmark's floor relay (`scripts/floor_relay.rs`) is only a fair floor if it relays
//! correctly: bytes intact both ways under back-pressure, half-close passed on, connections
//! spread round robin. These tests run the real example binary on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use common::{Proc, echo_through, named_backend, pattern, read_all, spawn_listening, tally};

/// `cargo test` (and `--all-targets`) builds the examples next to the test binaries' `deps`
/// directory; a run filtered to one test file (`--test floor`) does not.
fn floor_relay_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile directory");
    let path = profile.join("examples").join("floor_relay");
    assert!(
        path.exists(),
        "{} is not built: run `cargo test --all-targets` or `cargo build --example floor_relay`",
        path.display()
    );
    path
}

fn start_floor(backends: &[SocketAddr], threads: usize) -> (Proc, SocketAddr) {
    let list: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
    let mut command = Command::new(floor_relay_path());
    command
        .arg("127.0.0.1:0")
        .arg(list.join(","))
        .arg(threads.to_string());
    spawn_listening(command)
}

#[tokio::test]
async fn large_transfers_come_back_intact_after_half_close() {
    let backend = common::echo_backend().await;
    let (_relay, addr) = start_floor(&[backend], 2);
    for (len, seed) in [(1, 1), (70_000, 2), (8 * 1024 * 1024, 3)] {
        let data = pattern(len, seed);
        let back = echo_through(addr, data.clone()).await;
        assert_eq!(back.len(), data.len());
        assert!(back == data, "{len} bytes came back altered");
    }
}

#[tokio::test]
async fn connections_alternate_between_backends() {
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let (_relay, addr) = start_floor(&[a, b], 1);
    let mut names = Vec::new();
    for _ in 0..6 {
        names.push(read_all(addr).await);
    }
    assert_eq!(names, ["a", "b", "a", "b", "a", "b"]);
    assert_eq!(tally(&names).len(), 2);
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    let (code, _, err) = common::run(floor_relay_path().to_str().expect("utf-8 path"), &[]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "usage: floor_relay LISTEN BACKEND[,BACKEND...] [THREADS]\n"
    );
}
