//! The shipped shell scripts run as a user would: `scripts/demo.sh` in front of its demo
//! backends and `scripts/backends.sh start|status|stop`, against real processes on
//! 127.0.0.1. Every wait is bounded and waits for a real signal (a printed line, an exit, a
//! byte), never a fixed sleep; every script runs under a guard that stops it (and so, through
//! its traps, its children) if the test fails half way.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{BALLAST, Proc, TempDir, WAIT};

const DEMO_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo.sh");
const BACKENDS_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/backends.sh");
const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/balancer.ron");

/// How long a script guard waits after SIGTERM before killing the script's process group.
/// Above demo.sh's own stop bound (`DEMO_STOP_TIMEOUT`, set to 5 below) plus margin.
const STOP_WAIT: Duration = Duration::from_secs(20);

/// The directory holding the binaries under test, so the scripts skip `cargo build`.
fn bin_dir() -> &'static Path {
    Path::new(BALLAST).parent().expect("binary directory")
}

// --- helpers local to this file ----------------------------------------------------------

/// Lines one stream of a child wrote, collected by a reader thread, plus whether the
/// stream has reached end-of-file. (common's `Lines` cannot be built outside its module.)
#[derive(Clone, Default)]
struct Output {
    inner: Arc<(Mutex<Collected>, Condvar)>,
}

/// The lines read so far and whether the stream has ended.
type Collected = (Vec<String>, bool);

impl Output {
    fn collect(stream: impl Read + Send + 'static) -> Output {
        let output = Output::default();
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let n = reader.read_until(b'\n', &mut buf).unwrap_or(0);
                let (state, signal) = &*sink.inner;
                let mut state = state.lock().expect("output lock");
                if n == 0 {
                    state.1 = true;
                    signal.notify_all();
                    break;
                }
                let line = String::from_utf8_lossy(&buf);
                state
                    .0
                    .push(line.trim_end_matches(['\n', '\r']).to_string());
                signal.notify_all();
            }
        });
        output
    }

    /// Waits (within `limit`) until `done` holds for the state; returns what `done` returned.
    fn wait<T>(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn(&[String], bool) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        let (state, signal) = &*self.inner;
        let mut state = state.lock().expect("output lock");
        loop {
            if let Some(found) = done(&state.0, state.1) {
                return found;
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out after {limit:?} waiting for {what}; got:\n{}",
                state.0.join("\n")
            );
            state = signal
                .wait_timeout(state, deadline - now)
                .expect("output lock")
                .0;
        }
    }

    /// The first line matching `pred`, waiting for it within `WAIT`.
    fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait(WAIT, what, |lines, eof| {
            let found = lines.iter().find(|l| pred(l)).cloned();
            assert!(
                found.is_some() || !eof,
                "stream ended before {what}; got:\n{}",
                lines.join("\n")
            );
            found
        })
    }

    /// Everything, once the stream has ended (within `WAIT`).
    fn wait_eof(&self) -> String {
        self.wait(WAIT, "end of output", |lines, eof| {
            eof.then(|| lines.iter().map(|l| format!("{l}\n")).collect())
        })
    }
}

/// A running script: `bash SCRIPT ARGS...` in a process group of its own. Dropped while
/// still running, it sends SIGTERM (the scripts trap it and stop their children), waits up
/// to `STOP_WAIT`, then SIGKILLs the whole process group, so a failing test leaks nothing.
struct Script {
    proc: Proc,
    out: Output,
    err: Output,
}

impl Script {
    fn spawn(script: &str, args: &[&str], env: &[(&str, &Path)]) -> Script {
        let mut command = Command::new("bash");
        command
            .arg(script)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("BALLAST_RUN_DIR")
            .env_remove("BALLAST_BIN_DIR")
            .env_remove("CARGO_TARGET_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // Only what each test sets, whatever the caller's environment says.
        for key in [
            "DEMO_DURATION",
            "DEMO_BACKEND_ARGS",
            "DEMO_READY_TIMEOUT",
            "DEMO_STOP_TIMEOUT",
            "BALLAST_READY_TIMEOUT",
            "BALLAST_STOP_TIMEOUT",
        ] {
            command.env_remove(key);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn bash");
        let out = Output::collect(child.stdout.take().expect("stdout"));
        let err = Output::collect(child.stderr.take().expect("stderr"));
        Script {
            proc: Proc { child },
            out,
            err,
        }
    }

    /// Waits for the script to exit (within `WAIT`) and for both streams to end; returns
    /// (status, stdout, stderr).
    fn finish(&mut self) -> (ExitStatus, String, String) {
        let status = self.proc.wait_exit();
        (status, self.out.wait_eof(), self.err.wait_eof())
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let pid = self.proc.child.id();
        if !matches!(self.proc.child.try_wait(), Ok(None)) {
            return; // exited (and reaped) already: its pid may be someone else's now
        }
        signal_quietly(&format!("-TERM {pid}"));
        let deadline = Instant::now() + STOP_WAIT;
        while Instant::now() < deadline {
            if !matches!(self.proc.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Still not reaped, so the group id is still this script's: take everything in it.
        signal_quietly(&format!("-KILL -{pid}"));
        // `Proc`'s own drop reaps the script.
    }
}

/// `kill ARGS` through the shell builtin, ignoring failure (used while cleaning up).
fn signal_quietly(args: &str) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("kill {args} 2>/dev/null"))
        .stdin(Stdio::null())
        .status();
}

/// Runs a script to completion within `WAIT`; returns (exit code, stdout, stderr).
fn run_script(script: &str, args: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let mut s = Script::spawn(script, args, env);
    let (status, out, err) = s.finish();
    (status.code().unwrap_or(-1), out, err)
}

/// `count` distinct loopback ports that were free a moment ago (all held at once, so they
/// differ, then released).
fn free_ports(count: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// A base port such that `count` consecutive loopback ports were free a moment ago. Tries
/// pseudo-random bases in 20000..32000, below Linux's default ephemeral range (32768..61000)
/// so ports other tests get from binding port 0 do not race with it.
fn free_consecutive_ports(count: u16) -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut seed = u64::from(std::process::id()) << 32 | u64::from(nanos);
    for _ in 0..500 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let base = 20_000 + ((seed >> 33) % 12_000) as u16;
        let held: Result<Vec<TcpListener>, _> = (0..count)
            .map(|i| TcpListener::bind(("127.0.0.1", base + i)))
            .collect();
        if held.is_ok() {
            return base;
        }
    }
    panic!("found no {count} consecutive free ports in 20000..32000");
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Sends `request` to `addr` and reads one response (head and `Content-Length` body) within
/// `WAIT`, without waiting for the server to close; returns its text and the open stream.
fn exchange(addr: SocketAddr, request: &str) -> (String, TcpStream) {
    let deadline = Instant::now() + WAIT;
    let mut s = TcpStream::connect_timeout(&addr, WAIT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_write_timeout(Some(WAIT)).expect("write timeout");
    s.write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("write to {addr}: {e}"));
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end + 4]);
            let length = Response::parse(&head)
                .header("Content-Length")
                .first()
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("no Content-Length from {addr}: {text:?}"));
            if out.len() - (end + 4) >= length {
                return (text, s);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no whole response from {addr} within {WAIT:?}; got:\n{text}"
        );
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => panic!("{addr} closed before a whole response; got:\n{text}"),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read from {addr}: {e}; got:\n{text}"),
        }
    }
}

/// Asserts that the server closes `stream` (end-of-file, nothing more) within `limit`.
fn assert_closed_by_server(mut stream: TcpStream, limit: Duration) {
    stream.set_read_timeout(Some(limit)).expect("read timeout");
    let mut buf = [0u8; 256];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "bytes after the response: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!("connection not closed by the server within {limit:?}: {e}"),
    }
}

/// A parsed response: status line, headers, body.
struct Response {
    status: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn parse(text: &str) -> Response {
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default().to_string();
        let headers = lines
            .map(|l| {
                let (name, value) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad header {l:?} in {text:?}"));
                (name.trim().to_string(), value.trim().to_string())
            })
            .collect();
        Response {
            status,
            headers,
            body: body.to_string(),
        }
    }

    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The backend id from the page's `This is from ID` paragraph.
    fn from(&self) -> String {
        let rest = self
            .body
            .split("This is from ")
            .nth(1)
            .unwrap_or_else(|| panic!("no `This is from` in {:?}", self.body));
        rest.split('<').next().unwrap_or_default().to_string()
    }
}

/// `GET /` as a browser sends it: HTTP/1.1 without a `Connection` header, so the
/// connection stays open unless the server says otherwise. Returns the response and the
/// still-open stream.
fn browser_get(addr: SocketAddr) -> (Response, TcpStream) {
    get(
        addr,
        &format!("GET / HTTP/1.1\r\nHost: {addr}\r\nAccept: text/html\r\n\r\n"),
    )
}

/// `GET /` asking the server to close after the response.
fn get_and_close(addr: SocketAddr) -> Response {
    get(
        addr,
        &format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .0
}

fn get(addr: SocketAddr, request: &str) -> (Response, TcpStream) {
    let (text, stream) = exchange(addr, request);
    let response = Response::parse(&text);
    assert_eq!(response.status, "HTTP/1.1 200 OK", "{text}");
    (response, stream)
}

/// Asserts that connecting to `addr` is refused: nothing listens there.
fn assert_refused(addr: SocketAddr, what: &str) {
    match TcpStream::connect_timeout(&addr, WAIT) {
        Ok(_) => panic!("{what} ({addr}) still accepts connections"),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{what} ({addr}): {e}"
        ),
    }
}

/// The shipped sample configuration with its four ports (the balancer's, the two backends'
/// and the admin listener's, in that order) replaced.
fn sample_with_ports(ports: &[u16]) -> String {
    let sample = std::fs::read_to_string(SAMPLE).expect("read balancer.ron");
    let mut text = sample.clone();
    let shipped = [
        "\"127.0.0.1:8080\"",
        "\"127.0.0.1:8081\"",
        "\"127.0.0.1:8082\"",
        "\"127.0.0.1:9000\"",
    ];
    assert_eq!(ports.len(), shipped.len());
    for (from, &to) in shipped.into_iter().zip(ports) {
        assert_eq!(
            text.matches(from).count(),
            1,
            "balancer.ron no longer has {from} once:\n{sample}"
        );
        text = text.replace(from, &format!("\"127.0.0.1:{to}\""));
    }
    text
}

/// Files demo.sh leaves in its run directory only while it runs or after it started things.
fn demo_leftovers(run_dir: &Path) -> Vec<PathBuf> {
    let demo = run_dir.join("demo");
    let Ok(entries) = std::fs::read_dir(&demo) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name == "pids"
                || name == "demo.pid"
                || name == "watchdog.fifo"
                || name.starts_with("backend")
                || name.starts_with("ballast.")
        })
        .collect()
}

// --- scripts/demo.sh -------------------------------------------------------------------------

/// Starts demo.sh on the sample configuration with four free ports (listen, vm4, vm5,
/// admin) and waits until it prints the URL. A port found free may be taken before the
/// script binds it: then the script fails saying so, and this retries with other ports
/// (twice at most).
fn start_demo(dir: &TempDir, run_dir: &Path) -> (Script, [u16; 4]) {
    for attempt in 1.. {
        let ports = free_ports(4);
        let config = dir.write("balancer.ron", &sample_with_ports(&ports));
        let mut demo = Script::spawn(
            DEMO_SH,
            &[config.to_str().expect("utf-8 path")],
            &[
                ("BALLAST_BIN_DIR", bin_dir()),
                ("BALLAST_RUN_DIR", run_dir),
                ("DEMO_DURATION", Path::new("30")),
                ("DEMO_STOP_TIMEOUT", Path::new("5")),
            ],
        );
        let url_line = demo.out.wait(WAIT, "the URL line", |lines, eof| {
            match lines.iter().find(|l| l.contains("Open http://")) {
                Some(line) => Some(Some(line.clone())),
                None => eof.then_some(None),
            }
        });
        if let Some(url_line) = url_line {
            assert_eq!(
                url_line,
                format!(
                    "Open http://127.0.0.1:{}/ and refresh: each refresh lands on the next backend.",
                    ports[0]
                )
            );
            return (demo, [ports[0], ports[1], ports[2], ports[3]]);
        }
        let (status, out, err) = demo.finish();
        assert!(
            attempt < 3 && err.contains("is the port taken?"),
            "demo.sh ended ({status}) before printing the URL:\nstdout:\n{out}\nstderr:\n{err}"
        );
    }
    unreachable!()
}

/// demo.sh on the sample configuration (with free ports): it prints the URL once
/// everything listens, refreshes land on vm4/vm5 in smooth weighted round-robin order for
/// 3:5, every response closes its connection, and SIGTERM stops everything with status 0.
#[test]
fn demo_serves_weighted_round_robin_and_stops_on_sigterm() {
    let dir = TempDir::new();
    let run_dir = dir.path.join("run");
    let (mut demo, [listen, vm4, vm5, admin]) = start_demo(&dir, &run_dir);
    let status = demo
        .out
        .wait_line("the status page line", |l| l.starts_with("Status page: "));
    assert_eq!(
        status,
        format!(
            "Status page: http://127.0.0.1:{admin}/ (Prometheus metrics at http://127.0.0.1:{admin}/metrics)"
        )
    );

    // By the time the URL is printed the balancer's readiness line has been copied to
    // stderr.
    demo.err
        .wait_line("the balancer's log copied to stderr", |l| {
            l.contains(&format!("listening on 127.0.0.1:{listen}"))
        });
    let note = demo.out.wait_line("the duration note", |l| {
        l.starts_with("Stopping by itself in 30s")
    });
    assert_eq!(note, "Stopping by itself in 30s (DEMO_DURATION).");

    let balancer = loopback(listen);
    let mut seen = Vec::new();
    for _ in 0..8 {
        let (response, stream) = browser_get(balancer);
        assert_eq!(
            response.header("Connection"),
            ["close"],
            "--max-requests 1 backends close every connection: {:?}",
            response.headers
        );
        // Closed right after the response (not after the backend's 10s idle timeout), so
        // the next refresh is a new connection.
        assert_closed_by_server(stream, Duration::from_secs(3));
        seen.push(response.from());
    }
    assert_eq!(
        seen,
        ["vm5", "vm4", "vm5", "vm4", "vm5", "vm5", "vm4", "vm5"]
    );
    // The status page's address serves the page, and its metrics count the split.
    let admin_addr = loopback(admin);
    assert!(get_and_close(admin_addr).body.contains("<html"));
    let metrics = get(
        admin_addr,
        &format!("GET /metrics HTTP/1.1\r\nHost: {admin_addr}\r\nConnection: close\r\n\r\n"),
    )
    .0
    .body;
    for (name, count) in [("vm4", 3), ("vm5", 5)] {
        let line = format!(
            "ballast_backend_connections_total{{service=\"default\",backend=\"{name}\"}} {count}\n"
        );
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }

    demo.proc.signal("TERM");
    let (status, _, stderr) = demo.finish();
    assert_eq!(status.code(), Some(0), "demo.sh stderr:\n{stderr}");
    assert!(stderr.contains("demo.sh: SIGTERM: stopping"), "{stderr}");
    assert!(stderr.contains("SIGTERM: shutting down"), "{stderr}");
    assert!(
        !stderr.contains("SIGKILL"),
        "everything should stop on SIGTERM:\n{stderr}"
    );

    assert_refused(balancer, "the balancer");
    assert_refused(loopback(vm4), "backend vm4");
    assert_refused(loopback(vm5), "backend vm5");
    assert_refused(admin_addr, "the admin listener");
    for name in ["pids", "demo.pid", "watchdog.fifo"] {
        let path = run_dir.join("demo").join(name);
        assert!(!path.exists(), "demo.sh left {} behind", path.display());
    }
}

/// A configuration `ballast --check` rejects makes demo.sh fail at once with ballast's
/// `path:line:col` message, before starting anything.
#[test]
fn demo_rejects_a_bad_config_before_starting_anything() {
    let ports = free_ports(4);
    let text = sample_with_ports(&ports).replacen(
        "algorithm: WeightedRoundRobin",
        "algorithm: Fastest",
        1,
    );
    let at = text.find("Fastest").expect("Fastest in config");
    let line = text[..at].matches('\n').count() + 1;
    let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    let dir = TempDir::new();
    let config = dir.write("balancer.ron", &text);
    let path = config.to_str().expect("utf-8 path");
    let run_dir = dir.path.join("run");

    let started = Instant::now();
    let (code, out, err) = run_script(
        DEMO_SH,
        &[path],
        &[
            ("BALLAST_BIN_DIR", bin_dir()),
            ("BALLAST_RUN_DIR", &run_dir),
            ("DEMO_DURATION", Path::new("30")),
        ],
    );
    let took = started.elapsed();

    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains(&format!(
            "ballast: {path}:{line}:{col}: unknown algorithm `Fastest`: expected one of"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("demo.sh: {path} is not a valid configuration")),
        "{err}"
    );
    assert!(!out.contains("Open http://"), "{out}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    for port in &ports {
        assert_refused(loopback(*port), "a port of the rejected configuration");
    }
    assert_eq!(demo_leftovers(&run_dir), Vec::<PathBuf>::new());
}

// --- scripts/backends.sh ---------------------------------------------------------------------

/// Runs `backends.sh stop` for its run directory when dropped, so backends never outlive a
/// failing test. Quiet and bounded: it must not panic while a panic unwinds.
struct BackendsGuard {
    env: Vec<(&'static str, PathBuf)>,
}

impl BackendsGuard {
    fn env(&self) -> Vec<(&str, &Path)> {
        self.env.iter().map(|(k, v)| (*k, v.as_path())).collect()
    }
}

impl Drop for BackendsGuard {
    fn drop(&mut self) {
        let Ok(mut child) = Command::new("bash")
            .arg(BACKENDS_SH)
            .arg("stop")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            return;
        };
        let deadline = Instant::now() + STOP_WAIT;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// backends.sh starts N backends on consecutive ports, each answering as `backend-PORT`;
/// `status` lists them; `stop` stops them all and `status` then fails.
#[test]
fn backends_start_status_stop() {
    let dir = TempDir::new();
    let guard = BackendsGuard {
        env: vec![
            ("BALLAST_BIN_DIR", bin_dir().to_path_buf()),
            ("BALLAST_RUN_DIR", dir.path.join("run")),
        ],
    };
    let env = guard.env();

    // A port picked as free may be taken before the backend binds it: retry on that only.
    let mut attempt = 0;
    let (first, out) = loop {
        attempt += 1;
        let first = free_consecutive_ports(3);
        let (code, out, err) = run_script(BACKENDS_SH, &["start", "3", &first.to_string()], &env);
        if code == 0 {
            break (first, out);
        }
        assert!(
            attempt < 3 && err.contains("is the port taken?"),
            "start failed ({code}):\nstdout:\n{out}\nstderr:\n{err}"
        );
    };
    let ports: Vec<u16> = (first..first + 3).collect();

    let listed: Vec<&str> = out.lines().collect();
    assert_eq!(listed.len(), 3, "{out}");
    for (line, port) in listed.iter().zip(&ports) {
        assert!(
            line.starts_with(&format!("127.0.0.1:{port}\tbackend-{port}\tpid ")),
            "{out}"
        );
    }

    for port in &ports {
        let response = get_and_close(loopback(*port));
        assert_eq!(
            response.from(),
            format!("backend-{port}"),
            "{}",
            response.body
        );
    }

    let (code, out, err) = run_script(BACKENDS_SH, &["status"], &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    for port in &ports {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("127.0.0.1:{port}\t")) && l.ends_with("\trunning")),
            "{out}"
        );
    }

    let (code, _, err) = run_script(BACKENDS_SH, &["stop"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("stopped 3 backend(s)"), "{err}");
    for port in &ports {
        assert_refused(loopback(*port), "a stopped backend");
    }

    let (code, out, err) = run_script(BACKENDS_SH, &["status"], &env);
    assert_ne!(code, 0, "status after stop:\n{out}\n{err}");
}
