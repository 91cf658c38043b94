//! What platforms expect of a daemon, against the real `ballast` binary: `--watch` reloading
//! on a change of the configuration file (edited in place, or swapped as a Kubernetes
//! ConfigMap volume does), and systemd's `Type=notify` messages over `NOTIFY_SOCKET`. The
//! `/healthz` and `/readyz` probes are tested with the rest of the admin listener
//! (`tests/admin.rs`).

mod common;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;

use common::*;
use tokio::io::AsyncReadExt;

/// What the message about an unknown algorithm lists.
const ALGORITHMS: &str = "RoundRobin, WeightedRoundRobin, LeastConnections, WorkloadSensitive, Maglev, PowerOfTwoChoices";

/// A reload's verdict in the log.
fn verdict(line: &str) -> bool {
    line.contains("reloaded: listening on") || line.contains("reload rejected")
}

/// Waits for the verdict after the first `before` ones and returns it.
fn next_verdict(b: &Balancer, before: usize) -> String {
    b.log.wait_for(before + 1, verdict);
    b.log
        .snapshot()
        .into_iter()
        .filter(|l| verdict(l))
        .nth(before)
        .expect("verdict line")
}

/// One backend, `name`, behind the single-service form.
fn one(name: &str, addr: SocketAddr) -> String {
    config("RoundRobin", &[(name, addr, 1)])
}

/// `ballast --watch`.
fn watching() -> Command {
    let mut command = Command::new(BALLAST);
    command.arg("--watch");
    command
}

/// How many inotify instances process `pid` holds.
fn inotify_instances(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains("inotify"))
        .count()
}

// --- --watch ---------------------------------------------------------------------------------

#[tokio::test]
async fn watch_reloads_a_file_edited_in_place_and_sighup_still_reloads() {
    let (a, bb) = (named_backend("a").await, named_backend("b").await);
    let b = Balancer::start_in(&one("a", a), watching());
    let path = b.config_path.display().to_string();
    b.log
        .wait_for(1, |l| l.contains(&format!("watching {path} for changes")));
    assert_eq!(read_all(b.addr).await, "a");

    std::fs::write(&b.config_path, one("b", bb)).expect("edit");
    let line = next_verdict(&b, 0);
    assert!(
        line.contains("reloaded: listening on") && line.ends_with("(default changed)"),
        "{line}"
    );
    b.log.wait_for(1, |l| {
        message(l) == format!("{path} changed: reloading {path}")
    });
    assert_eq!(read_all(b.addr).await, "b");

    // SIGHUP feeds the same channel.
    b.proc.signal("HUP");
    let line = next_verdict(&b, 1);
    assert!(line.ends_with("(no service changed)"), "{line}");
    b.log
        .wait_for(1, |l| message(l) == format!("SIGHUP: reloading {path}"));

    // The same bytes written again: looked at, and no reload.
    let unchanged = |l: &str| message(l) == format!("{path}: content unchanged, no reload");
    let before = b.log.count(unchanged);
    std::fs::write(&b.config_path, one("b", bb)).expect("rewrite");
    b.log.wait_for(before + 1, unchanged);
    assert_eq!(b.log.count(verdict), 2, "{:#?}", b.log.snapshot());
    assert_eq!(read_all(b.addr).await, "b");
}

/// Lays out `dir` as a ConfigMap volume holding `balancer.ron` with `text`:
/// `balancer.ron -> ..data/balancer.ron`, `..data -> ..2026_12_02_STAMP`.
fn configmap(dir: &Path, stamp: &str, text: &str) {
    let data = dir.join(format!("..2026_12_02_{stamp}"));
    std::fs::create_dir(&data).expect("data dir");
    std::fs::write(data.join("balancer.ron"), text).expect("write");
    std::os::unix::fs::symlink(data.file_name().expect("name"), dir.join("..data"))
        .expect("..data");
    std::os::unix::fs::symlink("..data/balancer.ron", dir.join("balancer.ron"))
        .expect("balancer.ron");
}

/// Updates the ConfigMap volume in `dir` as the kubelet does: a new timestamped directory,
/// a new `..data` symlink renamed over the old one, the old directory removed.
fn configmap_swap(dir: &Path, old: &str, new: &str, text: &str) {
    let data = dir.join(format!("..2026_12_02_{new}"));
    std::fs::create_dir(&data).expect("data dir");
    std::fs::write(data.join("balancer.ron"), text).expect("write");
    std::os::unix::fs::symlink(data.file_name().expect("name"), dir.join("..data_tmp"))
        .expect("..data_tmp");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap");
    std::fs::remove_dir_all(dir.join(format!("..2026_12_02_{old}"))).expect("remove old");
}

#[tokio::test]
async fn watch_follows_a_configmap_symlink_swap() {
    let (a, bb) = (named_backend("a").await, named_backend("b").await);
    let dir = TempDir::new();
    let root = dir.path.clone();
    configmap(&root, "01_00_00.1", &one("a", a));
    let b = Balancer::start_file(watching(), root.join("balancer.ron"), dir);
    assert_eq!(read_all(b.addr).await, "a");

    configmap_swap(&root, "01_00_00.1", "01_01_00.2", &one("b", bb));
    let line = next_verdict(&b, 0);
    assert!(line.ends_with("(default changed)"), "{line}");
    assert_eq!(read_all(b.addr).await, "b");

    // Again, from the directory the first swap brought in.
    configmap_swap(&root, "01_01_00.2", "01_02_00.3", &one("a", a));
    let line = next_verdict(&b, 1);
    assert!(line.ends_with("(default changed)"), "{line}");
    assert_eq!(read_all(b.addr).await, "a");
}

#[tokio::test]
async fn watch_follows_a_symlink_to_a_file_elsewhere() {
    let (a, bb) = (named_backend("a").await, named_backend("b").await);
    let (dir, elsewhere) = (TempDir::new(), TempDir::new());
    let target = elsewhere.write("real.ron", &one("a", a));
    let link = dir.path.join("balancer.ron");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let b = Balancer::start_file(watching(), link, dir);
    assert_eq!(read_all(b.addr).await, "a");
    // Nothing happens in the link's directory: the target's is watched too.
    std::fs::write(&target, one("b", bb)).expect("edit the target");
    let line = next_verdict(&b, 0);
    assert!(line.ends_with("(default changed)"), "{line}");
    assert_eq!(read_all(b.addr).await, "b");
}

#[tokio::test]
async fn watch_rejects_a_bad_file_and_keeps_serving() {
    let (a, bb) = (named_backend("a").await, named_backend("b").await);
    let b = Balancer::start_in(&one("a", a), watching());
    let path = b.config_path.display().to_string();

    let broken = one("a", bb).replace("RoundRobin", "Roundrobin");
    std::fs::write(&b.config_path, broken).expect("break");
    let line = next_verdict(&b, 0);
    assert!(
        line.contains(&format!(
            "reload rejected: {path}:3:16: unknown algorithm `Roundrobin`: expected one of {ALGORITHMS}; \
             keeping the running configuration"
        )),
        "{line}"
    );
    for _ in 0..3 {
        assert_eq!(read_all(b.addr).await, "a");
    }
    // The watch goes on.
    std::fs::write(&b.config_path, one("b", bb)).expect("fix");
    let line = next_verdict(&b, 1);
    assert!(line.contains("reloaded: listening on"), "{line}");
    assert_eq!(read_all(b.addr).await, "b");
}

/// A writer that pauses half way (the first half written, the rest 400 ms later) gets one
/// reload of the finished file, not a rejection of the half.
#[tokio::test]
async fn watch_waits_for_a_slow_writer_to_finish() {
    use std::io::Write as _;
    let (a, bb) = (named_backend("a").await, named_backend("b").await);
    let b = Balancer::start_in(&one("a", a), watching());
    let text = one("b", bb);
    let (first, rest) = text.split_at(text.len() / 2);
    let mut file = std::fs::File::create(&b.config_path).expect("truncate");
    file.write_all(first.as_bytes()).expect("first half");
    file.flush().expect("flush");
    // The pause is what this test is about: longer than the watcher's quiet period.
    std::thread::sleep(std::time::Duration::from_millis(400));
    file.write_all(rest.as_bytes()).expect("the rest");
    drop(file);
    let line = next_verdict(&b, 0);
    assert!(line.contains("reloaded: listening on"), "{line}");
    assert_eq!(read_all(b.addr).await, "b");
    assert_eq!(b.log.count(|l| l.contains("reload rejected")), 0);
}

#[tokio::test]
async fn without_watch_a_change_waits_for_sighup() {
    let (a, bb) = (named_backend("a").await, named_backend("b").await);
    let plain = Balancer::start(&one("a", a));
    // The same edit to a watching balancer's file, made after: once it has reloaded, the
    // plain one has had as long to notice.
    let watched = Balancer::start_in(&one("a", a), watching());
    assert_eq!(inotify_instances(plain.proc.child.id()), 0);
    assert_eq!(inotify_instances(watched.proc.child.id()), 1);

    std::fs::write(&plain.config_path, one("b", bb)).expect("edit");
    std::fs::write(&watched.config_path, one("b", bb)).expect("edit");
    let line = next_verdict(&watched, 0);
    assert!(line.ends_with("(default changed)"), "{line}");
    assert_eq!(read_all(watched.addr).await, "b");
    assert_eq!(plain.log.count(verdict), 0, "{:#?}", plain.log.snapshot());
    assert_eq!(read_all(plain.addr).await, "a");

    plain.proc.signal("HUP");
    let line = next_verdict(&plain, 0);
    assert!(line.ends_with("(default changed)"), "{line}");
    assert_eq!(read_all(plain.addr).await, "b");
}

// --- systemd ---------------------------------------------------------------------------------

/// The next datagram on `socket`, within `WAIT`.
fn next_message(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the time limit");
    String::from_utf8(buf[..n].to_vec()).expect("UTF-8 notification")
}

/// Checks a `RELOADING=1` message and returns its `MONOTONIC_USEC`.
fn reloading(message: &str, status: &str) -> u64 {
    let lines: Vec<&str> = message.lines().collect();
    assert!(message.ends_with('\n'), "{message:?}");
    assert_eq!(lines.len(), 3, "{message:?}");
    assert_eq!(lines[0], "RELOADING=1", "{message:?}");
    assert_eq!(lines[2], format!("STATUS={status}"), "{message:?}");
    let usec = lines[1]
        .strip_prefix("MONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {message:?}"));
    usec.parse()
        .unwrap_or_else(|_| panic!("bad MONOTONIC_USEC in {message:?}"))
}

#[tokio::test]
async fn systemd_hears_ready_reloading_and_stopping() {
    let (a, bb) = (named_backend("a").await, named_backend("b").await);
    let dir = TempDir::new();
    let socket_path = dir.path.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut command = Command::new(BALLAST);
    command.env("NOTIFY_SOCKET", &socket_path);
    let mut b = Balancer::start_in(&one("a", a), command);
    let path = b.config_path.display().to_string();
    let addr = b.addr;

    assert_eq!(
        next_message(&socket),
        format!("READY=1\nSTATUS=listening on {addr}; 1 service\n")
    );

    // A reload of the same file: accepted, nothing changed.
    b.proc.signal("HUP");
    let first = reloading(&next_message(&socket), "reloading: SIGHUP");
    assert_eq!(
        next_message(&socket),
        format!("READY=1\nSTATUS=reloaded: listening on {addr}; 1 service (no service changed)\n")
    );

    // A bad file: rejected, and the reload is over all the same.
    std::fs::write(
        &b.config_path,
        one("a", a).replace("RoundRobin", "Roundrobin"),
    )
    .expect("break");
    b.proc.signal("HUP");
    let second = reloading(&next_message(&socket), "reloading: SIGHUP");
    assert!(second >= first, "{second} < {first}");
    assert_eq!(
        next_message(&socket),
        format!(
            "READY=1\nSTATUS=reload rejected: {path}:3:16: unknown algorithm `Roundrobin`: \
             expected one of {ALGORITHMS}; keeping the running configuration\n"
        )
    );

    // A good change.
    std::fs::write(&b.config_path, one("b", bb)).expect("change");
    b.proc.signal("HUP");
    reloading(&next_message(&socket), "reloading: SIGHUP");
    assert_eq!(
        next_message(&socket),
        format!("READY=1\nSTATUS=reloaded: listening on {addr}; 1 service (default changed)\n")
    );
    assert_eq!(read_all(addr).await, "b");

    // One connection held open through the drain.
    let mut open = connect(addr).await;
    let mut greeting = [0u8; 1];
    within(open.read_exact(&mut greeting))
        .await
        .expect("greeting");
    assert_eq!(&greeting, b"b");
    b.proc.signal("TERM");
    assert_eq!(
        next_message(&socket),
        "STOPPING=1\nSTATUS=shutting down: draining 1 open connection\n"
    );
    // A SIGHUP during the drain starts no reload.
    b.proc.signal("HUP");
    b.log
        .wait_for(1, |l| message(l) == "SIGHUP: shutting down, no reload");
    drop(open);
    assert_eq!(b.proc.wait_exit().code(), Some(0));
    assert_eq!(b.log.count(|l| l.contains("SIGHUP: reloading")), 3);
    // Nothing after STOPPING=1.
    socket.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 4096];
    let after = socket.recv(&mut buf).map(|n| buf[..n].to_vec());
    assert_eq!(
        after.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock)
    );
}

#[tokio::test]
async fn without_notify_socket_nothing_is_sent_and_all_runs_as_before() {
    // Balancer::start removes NOTIFY_SOCKET: the notifications are a no-op, and the process
    // starts, reloads and stops as ever.
    let mut b = Balancer::start(&one("a", named_backend("a").await));
    b.proc.signal("HUP");
    assert!(next_verdict(&b, 0).contains("reloaded"));
    b.proc.signal("TERM");
    assert_eq!(b.proc.wait_exit().code(), Some(0));
    assert_eq!(b.log.count(|l| l.contains("systemd notification")), 0);
}
