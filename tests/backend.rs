//! End-to-end tests of the `ballast-backend` binary: spawn it, wait for its readiness line,
//! and speak raw HTTP/1.1 to it.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::Reply;

/// Upper bound for anything the backend should do promptly; only reached when a test fails.
const TIMEOUT: Duration = common::WAIT;

/// A running backend, killed on drop so a failed assertion cannot leak the process.
struct Backend(common::DemoBackend);

impl Backend {
    fn start(args: &[&str]) -> Backend {
        Backend::start_with_env(args, &[])
    }

    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Backend {
        Backend(common::DemoBackend::start_with(args, &[], env))
    }

    fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr()).expect("connect to backend");
        s.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
        s.set_write_timeout(Some(TIMEOUT)).expect("write timeout");
        s
    }

    /// One request on a fresh connection.
    fn get(&self, path: &str) -> Reply {
        let mut s = self.connect();
        send(&mut s, &format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
        read_reply(&mut s)
    }

    /// Sends SIGTERM and waits for the exit status.
    fn terminate(&mut self) -> ExitStatus {
        self.0.proc.signal("TERM");
        self.0.proc.wait_exit()
    }
}

fn send(s: &mut TcpStream, request: &str) {
    s.write_all(request.as_bytes()).expect("send request");
}

/// Reads exactly one response (head plus `Content-Length` body), leaving the connection
/// positioned at the next one.
fn read_reply(s: &mut TcpStream) -> Reply {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        // read_exact retries reads interrupted by a signal.
        match s.read_exact(&mut byte) {
            Ok(()) => head.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => panic!(
                "EOF inside a response head: {:?}",
                String::from_utf8_lossy(&head)
            ),
            Err(e) => panic!("reading a response head: {e}"),
        }
    }
    let head = String::from_utf8(head).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header with colon");
            (n.to_string(), v.trim().to_string())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .expect("Content-Length");
    let mut body = vec![0; len];
    s.read_exact(&mut body).expect("read body");
    Reply {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

/// The server must have closed its side: the next read is EOF (not a timeout).
fn assert_eof(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let read = loop {
        match s.read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    match read {
        Ok(0) => {}
        Ok(n) => panic!("expected EOF, got {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("expected EOF, got {e}"),
    }
}

fn temp_file(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "ballast-backend-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Removes the file on drop, so a failing test leaves nothing behind.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn root_page_greets_world_and_names_backend() {
    let b = Backend::start(&["--id", "VM4"]);
    let r = b.get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(r.body.contains("Hello world!"), "{}", r.body);
    assert!(r.body.contains("This is from VM4"), "{}", r.body);
    assert!(
        r.body.contains(r#"<link rel="icon" href="data:,">"#),
        "{}",
        r.body
    );
}

#[test]
fn root_page_greets_name_from_env() {
    let b = Backend::start_with_env(&["--id", "VM4"], &[("NAME", "Ann")]);
    let r = b.get("/");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("Hello Ann!"), "{}", r.body);
    assert!(r.body.contains("This is from VM4"), "{}", r.body);
}

#[test]
fn default_id_is_derived_from_port() {
    let b = Backend::start(&[]);
    let r = b.get("/");
    let expected = format!("This is from backend-{}", b.addr().port());
    assert!(r.body.contains(&expected), "{}", r.body);
}

fn assert_percentage(body: &str) {
    let value: f64 = body
        .parse()
        .unwrap_or_else(|_| panic!("/load body {body:?} is not a number"));
    assert!((0.0..=100.0).contains(&value), "{value} out of range");
    let (_, decimals) = body.split_once('.').expect("one decimal");
    assert_eq!(decimals.len(), 1, "{body:?}");
}

#[test]
fn load_reports_system_percentage() {
    let b = Backend::start(&[]);
    let r = b.get("/load");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_percentage(&r.body);
}

#[test]
fn load_reports_process_percentage() {
    let b = Backend::start(&["--load", "process"]);
    let r = b.get("/load");
    assert_eq!(r.status, 200);
    assert_percentage(&r.body);
}

#[test]
fn load_file_is_served_verbatim_and_followed() {
    let file = TempFile(temp_file("load"));
    std::fs::write(&file.0, "42.5\n").unwrap();
    let path = file.0.to_str().expect("UTF-8 temp path");
    let b = Backend::start(&["--load-file", path, "--load", "system"]);

    let r = b.get("/load");
    assert_eq!((r.status, r.body.as_str()), (200, "42.5"));

    std::fs::write(&file.0, "  7 \n").unwrap();
    let r = b.get("/load");
    assert_eq!((r.status, r.body.as_str()), (200, "7"));

    std::fs::remove_file(&file.0).unwrap();
    let r = b.get("/load");
    assert_eq!(r.status, 503);
}

#[test]
fn unknown_path_is_404() {
    let b = Backend::start(&[]);
    let r = b.get("/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.body.trim(), "not found");
}

#[test]
fn other_methods_are_405_and_head_has_no_body() {
    let b = Backend::start(&[]);
    let mut s = b.connect();
    send(&mut s, "DELETE / HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = read_reply(&mut s);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));

    // On the same connection: HEAD carries the GET's length but no body, so what follows
    // must be the next response's status line.
    send(
        &mut s,
        "HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("read HEAD reply");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(!head.contains("Content-Length: 0\r\n"), "{head}");
    assert_eq!(read_reply(&mut s).status, 404);
}

#[test]
fn malformed_request_line_is_400_and_closed() {
    let b = Backend::start(&[]);
    let mut s = b.connect();
    send(&mut s, "GARBAGE\r\n\r\n");
    let r = read_reply(&mut s);
    assert_eq!(r.status, 400);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eof(&mut s);
}

#[test]
fn keep_alive_serves_two_requests_on_one_connection() {
    let b = Backend::start(&["--id", "VM4"]);
    let mut s = b.connect();
    send(&mut s, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let first = read_reply(&mut s);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("connection"), Some("keep-alive"));
    send(&mut s, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    let second = read_reply(&mut s);
    assert_eq!(second.status, 404);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let b = Backend::start(&[]);
    let mut s = b.connect();
    send(
        &mut s,
        "GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(read_reply(&mut s).status, 404);
    assert_eq!(read_reply(&mut s).status, 200);
}

#[test]
fn connection_close_is_honoured() {
    let b = Backend::start(&[]);
    let mut s = b.connect();
    send(
        &mut s,
        "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let r = read_reply(&mut s);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eof(&mut s);
}

#[test]
fn http10_closes_by_default() {
    let b = Backend::start(&[]);
    let mut s = b.connect();
    send(&mut s, "GET / HTTP/1.0\r\n\r\n");
    let r = read_reply(&mut s);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eof(&mut s);
}

#[test]
fn max_requests_1_closes_after_first_response() {
    let b = Backend::start(&["--max-requests", "1"]);
    let mut s = b.connect();
    send(&mut s, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = read_reply(&mut s);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eof(&mut s);
}

#[test]
fn max_requests_2_closes_after_second_response() {
    let b = Backend::start(&["--max-requests", "2"]);
    let mut s = b.connect();
    send(&mut s, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(read_reply(&mut s).header("connection"), Some("keep-alive"));
    send(&mut s, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(read_reply(&mut s).header("connection"), Some("close"));
    assert_eof(&mut s);
}

#[test]
fn oversize_header_is_431() {
    let b = Backend::start(&[]);
    let mut s = b.connect();
    let big = "a".repeat(10 * 1024);
    send(
        &mut s,
        &format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n"),
    );
    let r = read_reply(&mut s);
    assert_eq!(r.status, 431);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eof(&mut s);
}

#[test]
fn burn_still_answers() {
    let b = Backend::start(&["--burn-ms", "50"]);
    let started = Instant::now();
    let r = b.get("/");
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[cfg(unix)]
#[test]
fn sigterm_exits_zero() {
    let mut b = Backend::start(&[]);
    assert_eq!(b.get("/").status, 200);
    let status = b.terminate();
    assert!(status.success(), "{status:?}");
}

fn run_to_exit(args: &[&str]) -> (Option<i32>, String, String) {
    let (code, out, err) = common::run(common::BACKEND, args);
    (Some(code), out, err)
}

#[test]
fn bad_cli_argument_exits_2_with_message() {
    let (code, out, err) = run_to_exit(&["--listen", "127.0.0.1:0", "--bogus"]);
    assert_eq!(code, Some(2));
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("--bogus"), "{err}");
    assert!(err.contains("Usage:"), "{err}");

    let (code, _, err) = run_to_exit(&["--listen", "not-an-address"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not-an-address"), "{err}");

    let (code, _, err) = run_to_exit(&[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--listen"), "{err}");
}

#[test]
fn help_and_version_exit_0() {
    let (code, out, _) = run_to_exit(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("--load-file"), "{out}");

    let (code, out, _) = run_to_exit(&["--version"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        out.trim(),
        format!("ballast-backend {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn every_flag_takes_its_value_after_an_equals_sign() {
    let b = Backend(common::DemoBackend::start_with(
        &["--id=VM4", "--max-requests=1", "--burn-ms=20"],
        &[],
        &[],
    ));
    let mut s = b.connect();
    let started = Instant::now();
    send(&mut s, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = read_reply(&mut s);
    assert!(started.elapsed() >= Duration::from_millis(20));
    assert!(r.body.contains("This is from VM4"), "{}", r.body);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eof(&mut s);

    // `--listen=` and `--load-file=` too.
    let file = TempFile(temp_file("load"));
    std::fs::write(&file.0, "12.5\n").unwrap();
    let load_file = format!("--load-file={}", file.0.to_str().expect("UTF-8 temp path"));
    let b = Backend(common::DemoBackend::start_exactly(
        &["--listen=127.0.0.1:0", "--load=process", &load_file],
        &[],
    ));
    let r = b.get("/load");
    assert_eq!((r.status, r.body.as_str()), (200, "12.5"));
}

#[test]
fn an_argument_that_is_not_utf8_exits_2_naming_it() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let bad = OsStr::from_bytes(b"--id=vm\xff4");
    let (code, out, err) = common::run(common::BACKEND, &[OsStr::new("--listen=127.0.0.1:0"), bad]);
    assert_eq!(code, 2);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with("ballast-backend: argument \"--id=vm\\xFF4\" is not valid UTF-8\n"),
        "{err}"
    );
    assert!(err.contains("Usage: ballast-backend"), "{err}");
}

// --- ballast-backend --config ---------------------------------------------------------------

/// A balancer configuration whose backends vm4 and vm5 listen on port 0.
fn two_backends_on_port_0() -> String {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    common::config("WeightedRoundRobin", &[("vm4", any, 3), ("vm5", any, 5)])
}

/// One process serves every backend of a configuration, each under its name on its own
/// port (announced on its readiness line), with the other flags applying to all of them;
/// SIGTERM stops them all.
#[test]
fn config_serves_every_backend_under_its_name() {
    let dir = common::TempDir::new();
    let config = dir.write("balancer.ron", &two_backends_on_port_0());
    let mut b = common::DemoBackends::start(&config, 2, &["--max-requests=1"]);
    let names: Vec<&str> = b.listeners.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["vm4", "vm5"]);
    let (vm4, vm5) = (b.addr("vm4"), b.addr("vm5"));
    assert_ne!(vm4.port(), 0);
    assert_ne!(vm4, vm5);

    for (name, addr) in [("vm4", vm4), ("vm5", vm5)] {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        send(&mut s, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = read_reply(&mut s);
        assert_eq!(r.status, 200);
        assert!(
            r.body.contains(&format!("This is from {name}")),
            "{}",
            r.body
        );
        assert!(r.body.contains("Hello world!"), "{}", r.body);
        assert_eq!(r.header("connection"), Some("close"), "--max-requests=1");
        assert_eof(&mut s);

        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        send(&mut s, "GET /load HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = read_reply(&mut s);
        assert_eq!(r.status, 200);
        assert_percentage(&r.body);
    }

    b.proc.signal("TERM");
    let status = b.proc.wait_exit();
    assert!(status.success(), "{status:?}");
    for addr in [vm4, vm5] {
        let refused = TcpStream::connect(addr).expect_err("still listening after SIGTERM");
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{addr}");
    }
}

/// A configuration `ballast --check` rejects is rejected with the same `path:line:col`
/// message and exit code 1.
#[test]
fn config_errors_are_ballast_checks() {
    let dir = common::TempDir::new();
    let path = dir.write(
        "balancer.ron",
        &two_backends_on_port_0().replace("WeightedRoundRobin", "Fastest"),
    );
    let path = path.to_str().expect("UTF-8 path");
    let (code, out, err) = run_to_exit(&["--config", path]);
    let (check_code, _, check_err) = common::run_ballast(&["--check", "--config", path]);
    assert_eq!((code, check_code), (Some(1), 1));
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with(&format!(
            "ballast-backend: {path}:3:16: unknown algorithm `Fastest`"
        )),
        "{err}"
    );
    assert_eq!(
        err.strip_prefix("ballast-backend: "),
        check_err.strip_prefix("ballast: ")
    );

    let (code, _, err) = run_to_exit(&["--config=/nonexistent/balancer.ron"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim_end(),
        "ballast-backend: /nonexistent/balancer.ron: cannot read configuration: No such file or directory (os error 2)"
    );
}

/// A backend on an address that is not this machine's cannot be served from here: the
/// error says which backend and why, and nothing is announced.
#[test]
fn config_with_a_backend_elsewhere_fails_naming_it() {
    let dir = common::TempDir::new();
    // 192.0.2.0/24 is TEST-NET-1: never an address of this machine (only bound, never sent to).
    let text = two_backends_on_port_0().replacen(
        "127.0.0.1:0\", weight: 5",
        "192.0.2.1:8082\", weight: 5",
        1,
    );
    assert!(text.contains("192.0.2.1:8082"), "{text}");
    let config = dir.write("balancer.ron", &text);
    let (code, out, err) = run_to_exit(&["--config", config.to_str().expect("UTF-8 path")]);
    assert_eq!(code, Some(1));
    assert!(out.is_empty(), "nothing may be announced: {out}");
    assert_eq!(
        err.trim_end(),
        "ballast-backend: backend vm5: cannot listen on 192.0.2.1:8082: not an address of this machine (ballast-backend serves only backends on local addresses)"
    );
}

#[test]
fn config_does_not_mix_with_listen_or_id() {
    for args in [
        &["--config", "b.ron", "--listen", "127.0.0.1:0"][..],
        &["--config=b.ron", "--id=vm4"],
    ] {
        let (code, out, err) = run_to_exit(args);
        assert_eq!(code, Some(2), "{args:?}");
        assert!(out.is_empty(), "{out}");
        assert!(err.contains("does not go with --config"), "{err}");
        assert!(err.contains("Usage: ballast-backend"), "{err}");
    }
}
