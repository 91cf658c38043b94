//! Shared helpers for the integration tests: spawn the real `ballast` and `ballast-backend`
//! binaries, start loopback test backends, make one connection or one HTTP request.
//! Every wait here is bounded and waits for a real signal (a readiness line, a log line,
//! a byte), never for a fixed sleep.

#![allow(dead_code)] // each test file uses its own subset

pub(crate) mod dns;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upper bound for any single wait in a test, so a bug fails the test instead of hanging it.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

pub(crate) const BALLAST: &str = env!("CARGO_BIN_EXE_ballast");
pub(crate) const BACKEND: &str = env!("CARGO_BIN_EXE_ballast-backend");

/// A child process killed (and reaped) when dropped, so a failing assertion leaks nothing.
pub(crate) struct Proc {
    pub child: Child,
}

impl Proc {
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`) with the shell's built-in `kill`, which
    /// every machine has even without procps.
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{name} {}", self.child.id()))
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit by itself, within `WAIT`.
    pub(crate) fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit in {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Lines a child wrote to one of its streams, collected by a reader thread.
#[derive(Clone, Default)]
pub(crate) struct Lines {
    inner: Arc<(Mutex<Store>, Condvar)>,
}

/// What the reader thread has collected so far.
#[derive(Default)]
struct Store {
    lines: Vec<String>,
    /// The stream has ended (the child closed it or exited): no more lines come.
    ended: bool,
}

impl Lines {
    pub(crate) fn collect(stream: impl std::io::Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            let (store, signal) = &*sink.inner;
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                store.lock().expect("lines lock").lines.push(line);
                signal.notify_all();
            }
            store.lock().expect("lines lock").ended = true;
            signal.notify_all();
        });
        lines
    }

    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.inner.0.lock().expect("lines lock").lines.clone()
    }

    /// Waits until at least `count` lines satisfy `pred`; returns the first of them.
    pub(crate) fn wait_for(&self, count: usize, pred: impl Fn(&str) -> bool) -> String {
        self.wait_for_or_end(count, pred).unwrap_or_else(|| {
            panic!(
                "the stream ended before {count} matching lines; got:\n{}",
                self.snapshot().join("\n")
            )
        })
    }

    /// Waits until at least `count` lines satisfy `pred` and returns the first of them, or
    /// returns `None` once the stream has ended without them.
    pub(crate) fn wait_for_or_end(
        &self,
        count: usize,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + WAIT;
        let (store, signal) = &*self.inner;
        let mut store = store.lock().expect("lines lock");
        loop {
            let matching: Vec<&String> = store.lines.iter().filter(|l| pred(l)).collect();
            if matching.len() >= count {
                return Some(matching[0].clone());
            }
            if store.ended {
                return None;
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out waiting for {count} matching lines; got:\n{}",
                store.lines.join("\n")
            );
            store = signal
                .wait_timeout(store, deadline - now)
                .expect("lines lock")
                .0;
        }
    }

    pub(crate) fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.snapshot().iter().filter(|l| pred(l)).count()
    }
}

/// Parses the address out of a `... listening on ADDR ...` line.
fn listening_addr(line: &str) -> SocketAddr {
    let rest = line
        .split("listening on ")
        .nth(1)
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let addr = rest.split([' ', ',']).next().unwrap_or_default();
    addr.parse()
        .unwrap_or_else(|_| panic!("bad address in {line:?}"))
}

/// The message of a log line: what follows `[TIME LEVEL TARGET] `.
pub(crate) fn message(line: &str) -> &str {
    line.split_once("] ").map_or(line, |(_, m)| m)
}

/// The service name and addresses of a service's announcement, the message
/// `listening on A, B, service NAME, algorithm X, N backends` (at start) or
/// `serving A, B, service NAME, ...` (after a reload); `None` for any other line.
fn service_line(line: &str) -> Option<(String, Vec<SocketAddr>)> {
    let (_, said) = line.split_once("] ")?;
    let rest = said
        .strip_prefix("listening on ")
        .or_else(|| said.strip_prefix("serving "))?;
    let (head, _) = rest.split_once(", algorithm ")?;
    let (addrs, name) = head.rsplit_once(", service ")?;
    let addrs = addrs
        .split(", ")
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("bad address {a:?} in {line:?}"))
        })
        .collect();
    Some((name.to_string(), addrs))
}

/// A unique scratch directory under the target dir, removed on drop.
pub(crate) struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub(crate) fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "ballast-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub(crate) fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A configuration with the given algorithm and `(name, addr, weight)` backends, listening on
/// an ephemeral loopback port.
pub(crate) fn config(algorithm: &str, backends: &[(&str, SocketAddr, u32)]) -> String {
    config_with(algorithm, backends, "")
}

/// Like [`config`], with `sections` (such as `health: (interval: "1h"),`) added at the top
/// level.
pub(crate) fn config_with(
    algorithm: &str,
    backends: &[(&str, SocketAddr, u32)],
    sections: &str,
) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(name, addr, weight)| {
            format!("        (name: \"{name}\", addr: \"{addr}\", weight: {weight}),")
        })
        .collect();
    format!(
        "(\n    listen: \"127.0.0.1:0\",\n    algorithm: {algorithm},\n    {sections}\n    backends: [\n{}\n    ],\n)\n",
        list.join("\n")
    )
}

/// A running `ballast` process with its log.
pub(crate) struct Balancer {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub log: Lines,
    pub config_path: PathBuf,
    _dir: TempDir,
}

impl Balancer {
    /// Starts `ballast` on `config_text` (debug logging) and waits until it listens.
    pub(crate) fn start(config_text: &str) -> Balancer {
        Balancer::start_in(config_text, Command::new(BALLAST))
    }

    /// Starts `command` (which must end up running `ballast`, e.g. through a shell that sets
    /// limits first) with `--config FILE` appended.
    pub(crate) fn start_in(config_text: &str, command: Command) -> Balancer {
        let dir = TempDir::new();
        let path = dir.write("balancer.ron", config_text);
        Balancer::start_file(command, path, dir)
    }

    /// Starts `command` (which must end up running `ballast`) with `--config PATH` appended,
    /// `path` a file the caller laid out in `dir` (kept until the balancer is dropped), and
    /// waits until it listens. `NOTIFY_SOCKET` is removed unless `command` sets it.
    pub(crate) fn start_file(mut command: Command, path: PathBuf, dir: TempDir) -> Balancer {
        if !command.get_envs().any(|(key, _)| key == "NOTIFY_SOCKET") {
            command.env_remove("NOTIFY_SOCKET");
        }
        let mut child = command
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ballast");
        let log = Lines::collect(child.stderr.take().expect("stderr"));
        let proc = Proc { child };
        let line = log.wait_for(1, |l| l.contains("listening on"));
        Balancer {
            proc,
            addr: listening_addr(&line),
            log,
            config_path: path,
            _dir: dir,
        }
    }

    /// Rewrites the configuration file, sends SIGHUP and waits for the verdict; returns the
    /// log line that accepted (`reloaded: ...`) or rejected (`reload rejected: ...`) it.
    pub(crate) fn reload(&self, config_text: &str) -> String {
        let verdict =
            |l: &str| l.contains("reloaded: listening on") || l.contains("reload rejected");
        let before = self.log.count(verdict);
        std::fs::write(&self.config_path, config_text).expect("rewrite config");
        self.proc.signal("HUP");
        self.log.wait_for(before + 1, verdict);
        self.log
            .snapshot()
            .into_iter()
            .filter(|l| verdict(l))
            .nth(before)
            .expect("verdict line")
    }

    /// The addresses service `name` listens on, in configuration order, from the last line
    /// announcing it: `listening on A, B, service NAME, ...` at start, `serving A, B,
    /// service NAME, ...` after a reload. Waits (bounded) for the first such line.
    pub(crate) fn service_addrs(&self, name: &str) -> Vec<SocketAddr> {
        let announces = |l: &str| service_line(l).is_some_and(|(n, _)| n == name);
        self.log.wait_for(1, announces);
        let last = self
            .log
            .snapshot()
            .into_iter()
            .rfind(|l| announces(l))
            .expect("an announcement");
        service_line(&last).expect("an announcement").1
    }

    /// Waits until the balancer has logged `count` finished connections to backend `name`.
    pub(crate) fn wait_finished(&self, name: &str, count: usize) {
        let needle = format!(" -> {name} (");
        self.log.wait_for(count, |l| l.contains(&needle));
    }
}

/// ballast served inside the test process through `server::run` (no process spawned), for
/// tests of the accept, pick and relay path that need no signal, exit code or log line.
/// Stops when dropped.
pub(crate) struct InProcess {
    pub addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl InProcess {
    /// Starts ballast on `config_text`, listening on an ephemeral loopback port. The port is
    /// bound before this returns, so clients may connect at once.
    pub(crate) async fn start(config_text: &str) -> InProcess {
        let config = ballast::config::Config::parse(config_text, std::path::Path::new("test.ron"))
            .unwrap_or_else(|e| panic!("bad test configuration: {e}"));
        let server = ballast::server::Server::bind(config).expect("bind");
        let addr = server.local_addrs()[0].1;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        InProcess { addr, _stop: stop }
    }
}

/// A running `ballast-backend` process.
pub(crate) struct DemoBackend {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl DemoBackend {
    pub(crate) fn start(id: &str, extra: &[&str]) -> DemoBackend {
        DemoBackend::start_with(&["--id", id], extra, &[])
    }

    /// Starts `ballast-backend --listen 127.0.0.1:0 ARGS... EXTRA...` with `env` set and
    /// `NAME` unset unless given, and waits for its readiness line.
    pub(crate) fn start_with(args: &[&str], extra: &[&str], env: &[(&str, &str)]) -> DemoBackend {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        all.extend_from_slice(extra);
        DemoBackend::start_exactly(&all, env)
    }

    /// Starts `ballast-backend ARGS...` (which must include `--listen`) with `env` set and
    /// `NAME` unset unless given, and waits for its readiness line, which must be exactly
    /// `listening on ADDR`.
    pub(crate) fn start_exactly(args: &[&str], env: &[(&str, &str)]) -> DemoBackend {
        DemoBackend::try_start_exactly(args, env)
            .unwrap_or_else(|| panic!("ballast-backend {args:?} exited before it was ready"))
    }

    /// Like [`DemoBackend::start_exactly`], but returns `None` when the process exits
    /// without a readiness line (e.g. its address is taken).
    pub(crate) fn try_start_exactly(args: &[&str], env: &[(&str, &str)]) -> Option<DemoBackend> {
        let (proc, mut ready) = try_spawn_backend_process(args, env, 1)?;
        let (addr, name) = ready.remove(0);
        assert_eq!(name, None, "--listen announces no name");
        Some(DemoBackend { proc, addr })
    }
}

/// A running `ballast-backend --config FILE`: one listener per backend of the file.
pub(crate) struct DemoBackends {
    pub proc: Proc,
    /// Each backend's name and the address its listener got, in the file's order.
    pub listeners: Vec<(String, SocketAddr)>,
}

impl DemoBackends {
    /// Starts `ballast-backend --config CONFIG EXTRA...` (`NAME` unset) and waits for the
    /// readiness lines of its `count` listeners.
    pub(crate) fn start(config: &Path, count: usize, extra: &[&str]) -> DemoBackends {
        let config = config.to_str().expect("UTF-8 path");
        let mut args = vec!["--config", config];
        args.extend_from_slice(extra);
        let (proc, ready) = spawn_backend_process(&args, &[], count);
        let listeners = ready
            .into_iter()
            .map(|(addr, name)| (name.expect("`listening on ADDR as NAME`"), addr))
            .collect();
        DemoBackends { proc, listeners }
    }

    /// The address of the listener for backend `name`.
    pub(crate) fn addr(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no listener for {name} in {:?}", self.listeners))
            .1
    }
}

/// Each readiness line's address and, after ` as `, name.
type Ready = Vec<(SocketAddr, Option<String>)>;

/// Starts `ballast-backend ARGS...` with `env` set and `NAME` unset unless given, and waits
/// for `count` readiness lines; returns each line's address and, after ` as `, name.
fn spawn_backend_process(args: &[&str], env: &[(&str, &str)], count: usize) -> (Proc, Ready) {
    try_spawn_backend_process(args, env, count)
        .unwrap_or_else(|| panic!("ballast-backend {args:?} exited before it was ready"))
}

/// Like [`spawn_backend_process`], but `None` when the process closes its output before
/// `count` readiness lines.
fn try_spawn_backend_process(
    args: &[&str],
    env: &[(&str, &str)],
    count: usize,
) -> Option<(Proc, Ready)> {
    let mut command = Command::new(BACKEND);
    command
        .args(args)
        .env_remove("NAME")
        .env("RUST_LOG", "warn");
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ballast-backend");
    let out = Lines::collect(child.stdout.take().expect("stdout"));
    let proc = Proc { child };
    let is_ready = |l: &str| l.starts_with("listening on");
    out.wait_for_or_end(count, is_ready)?;
    let ready = out
        .snapshot()
        .into_iter()
        .filter(|l| is_ready(l))
        .map(|l| {
            let name = l.split_once(" as ").map(|(_, name)| name.to_string());
            (listening_addr(&l), name)
        })
        .collect();
    Some((proc, ready))
}

/// Runs `ballast` with `args` to completion; returns (exit code, stdout, stderr).
pub(crate) fn run_ballast(args: &[&str]) -> (i32, String, String) {
    run(BALLAST, args)
}

/// Runs `program` with `args` to completion (these commands exit at once, so no time limit
/// beyond the test's own); returns (exit code, or -1 if killed by a signal, stdout, stderr).
/// The arguments need not be UTF-8.
pub(crate) fn run<A: AsRef<OsStr>>(program: &str, args: &[A]) -> (i32, String, String) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run program");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An address on which nothing listens: connecting to it is refused.
pub(crate) fn refusing_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// Sections for tests whose backend accepts exactly one connection: health probes would
/// take that accept, so they are pushed far beyond the test's life.
pub(crate) const NO_PROBES: &str = "health: (interval: \"1h\"),";

/// Binds an ephemeral loopback listener.
pub(crate) async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

/// A test backend: binds an ephemeral loopback listener and runs `handle` on every
/// connection it accepts, each in its own task. Returns the address.
pub(crate) async fn spawn_backend<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = listener().await;
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(handle(s));
        }
    });
    addr
}

/// A backend that greets every connection with `name`, then closes once the client has
/// closed its side.
pub(crate) async fn named_backend(name: &'static str) -> SocketAddr {
    spawn_backend(move |mut s| async move {
        if s.write_all(name.as_bytes()).await.is_ok() && s.shutdown().await.is_ok() {
            let mut sink = [0u8; 64];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    })
    .await
}

/// Echoes everything `s` sends and closes its side when the client closes its side.
pub(crate) async fn echo(mut s: TcpStream) {
    let (mut r, mut w) = s.split();
    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
        let _ = w.shutdown().await;
    }
}

/// A backend that runs [`echo`] on every connection.
pub(crate) async fn echo_backend() -> SocketAddr {
    spawn_backend(echo).await
}

/// Connects through `addr`, reads everything until EOF and returns it as text.
pub(crate) async fn read_all(addr: SocketAddr) -> String {
    let mut s = connect(addr).await;
    let mut out = Vec::new();
    within(s.read_to_end(&mut out)).await.expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) async fn connect(addr: SocketAddr) -> TcpStream {
    within(TcpStream::connect(addr)).await.expect("connect")
}

/// Sends one HTTP/1.1 request with `Connection: close` and returns the whole response.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = connect(addr).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    within(s.write_all(request.as_bytes()))
        .await
        .expect("write");
    let mut out = Vec::new();
    within(s.read_to_end(&mut out)).await.expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// Awaits `f`, failing the test if it takes longer than `WAIT`.
pub(crate) async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?}"))
}

/// Counts how many times each name appears.
pub(crate) fn tally(names: &[String]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for n in names {
        *counts.entry(n.clone()).or_insert(0) += 1;
    }
    counts
}

/// Sends `data` through the balancer to an echo backend and returns what comes back.
pub(crate) async fn echo_through(addr: std::net::SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let s = connect(addr).await;
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.expect("write");
        w.shutdown().await.expect("shutdown");
    });
    let mut back = Vec::new();
    within(r.read_to_end(&mut back)).await.expect("read");
    within(writer).await.expect("writer");
    back
}

/// Deterministic bytes that are not a short repeating pattern.
pub(crate) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// One parsed HTTP response, as the tests that speak HTTP read it.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first header called `name`, whatever its case.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The bound admin address, from `admin listening on http://ADDR/`.
pub(crate) fn admin_addr(b: &Balancer) -> SocketAddr {
    let line = b.log.wait_for(1, |l| l.contains("admin listening on"));
    let rest = line
        .split("admin listening on http://")
        .nth(1)
        .unwrap_or_else(|| panic!("no admin address in {line:?}"));
    rest.trim_end()
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|_| panic!("bad admin address in {line:?}"))
}

/// The id a demo backend put on its page (`This is from ID</p>`).
pub(crate) fn page_id(page: &str) -> String {
    page.split("This is from ")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_else(|| panic!("no backend id in {page:?}"))
        .to_string()
}
