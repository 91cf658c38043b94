//! The soak test behind `scripts/soak.sh`, which builds this example and runs it: keep-alive
//! load through the balancer while backends are killed and restarted and the configuration
//! is reloaded, then a check that nothing leaked. `--help` (the text below) has the details.

#[path = "harness/mod.rs"]
mod harness;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use harness::{LogTail, Proc, Ready, Res, Stop, fatal, interrupted, note, pause};
use nix::sys::signal::Signal;

const USAGE: &str = "\
Usage: scripts/soak.sh [DURATION_SECONDS]

Builds the release binaries, starts 3 demo backends (`ballast-backend`) and `ballast` on
a generated configuration, all on free 127.0.0.1 ports, warms up, records the balancer's
memory (VmRSS) and open file descriptors, then for DURATION_SECONDS (default 60, at most
3600) runs `wrk` through the balancer (keep-alive, -t2 -c32) while, in parallel:

  - every 10 s one backend is killed with SIGKILL and restarted on the same port 3 s later
    (the backends take turns; none is killed when the run would end before its restart);
  - every 5 s the configuration is rewritten (the algorithm alternates between
    LeastConnections and RoundRobin, the weights change) and the balancer gets SIGHUP.

Afterwards, once the load has stopped and the balancer's descriptor count has settled, it
prints a summary: wrk's totals (requests, socket errors, non-2xx/3xx responses), the kills,
the reloads accepted and rejected (counted in the balancer's log), and the balancer's
memory and descriptors at the start and at the end. Finally it stops the balancer with
SIGTERM.

What to expect: client-visible failures come only from connections that were open on a
backend at the moment it was killed (wrk counts them as read errors, at most one per such
connection, so at most -c per kill); reloads cause none, nor do new connections that meet
a dead backend (the balancer fails over).

Exit status: 0 when the balancer was alive at the end of the load, its descriptors came
back within SOAK_FD_MARGIN of the start and it stopped cleanly on SIGTERM; 1 otherwise;
2 for bad usage or when wrk is not installed (Debian package `wrk`); 128+N when stopped by
signal N (Ctrl-C: 130). Everything the script starts is stopped when it exits, however it
exits (after a SIGKILL of the script, the kernel sends them SIGTERM: their parent-death
signal). The work is done by scripts/soak.rs (the cargo example `soak`), which this script
builds and runs.

Environment:
  SOAK_CONNECTIONS       wrk connections (default: 32)
  SOAK_THREADS           wrk threads (default: 2)
  SOAK_KEEPALIVE         1: keep-alive connections (default); 0: every request asks for
                         `Connection: close`, so wrk opens a new connection per request and
                         reloads and kills meet a constant stream of new connections
  SOAK_KILL_INTERVAL     seconds between backend kills; 0 disables them (default: 10)
  SOAK_RESTART_DELAY     seconds a killed backend stays down (default: 3)
  SOAK_RELOAD_INTERVAL   seconds between reloads; 0 disables them (default: 5)
  SOAK_FD_MARGIN         descriptors the end may exceed the start by (default: 8)
  SOAK_SETTLE_TIMEOUT    seconds to wait for the descriptor count to settle (default: 30)
  SOAK_READY_TIMEOUT     seconds to wait for each process to listen (default: 10)
  SOAK_STOP_TIMEOUT      seconds to wait after SIGTERM before SIGKILL (default: 15; the
                         balancer drains for up to its grace period, 10 s)
  BALLAST_BIN_DIR        use ballast and ballast-backend (and examples/soak, when there)
                         from this directory and skip `cargo build --release`
  BALLAST_RUN_DIR        logs and state (default: target/ballast-run); the soak uses its
                         `soak` subdirectory, which keeps the logs of the last run
";

/// What bad usage shows: the full help is long.
const SHORT_USAGE: &str = "\
Usage: scripts/soak.sh [DURATION_SECONDS]

Run \"scripts/soak.sh --help\" for the details.
";

const MAX_DURATION: u64 = 3600;
const NAMES: [&str; 3] = ["a", "b", "c"];
const ALGORITHMS: [&str; 2] = ["RoundRobin", "LeastConnections"];
const WEIGHT_SETS: [[u32; 3]; 4] = [[1, 1, 1], [3, 1, 2], [1, 2, 3], [2, 3, 1]];

fn main() -> ExitCode {
    harness::init("soak.sh");
    let result = run();
    harness::exit_code(result, SHORT_USAGE)
}

struct Settings {
    duration: u64,
    connections: u64,
    threads: u64,
    keepalive: bool,
    kill_interval: u64,
    restart_delay: u64,
    reload_interval: u64,
    fd_margin: u64,
    settle_timeout: u64,
    ready_timeout: Duration,
    stop_timeout: u64,
}

impl Settings {
    fn parse(args: &[String]) -> Res<Option<Settings>> {
        let first = args.first().map_or("", String::as_str);
        if first == "-h" || first == "--help" {
            print!("{USAGE}");
            return Ok(None);
        }
        if first.starts_with('-') {
            return harness::usage_error(format!("unknown option '{first}'"));
        }
        if args.len() > 1 {
            return harness::usage_error("expected at most one argument, the duration in seconds");
        }
        let given = if first.is_empty() { "60" } else { first };
        let Some(duration) = harness::parse_uint(given) else {
            return harness::usage_error(format!(
                "the duration must be whole seconds (1 to {MAX_DURATION}), not '{given}'"
            ));
        };
        if !(1..=MAX_DURATION).contains(&duration) {
            return harness::usage_error(format!(
                "the duration must be 1 to {MAX_DURATION} seconds, not {duration}"
            ));
        }
        let get =
            |name: &str, default| harness::env_uint(name, default).or_else(harness::usage_error);
        let s = Settings {
            duration,
            connections: get("SOAK_CONNECTIONS", 32)?,
            threads: get("SOAK_THREADS", 2)?,
            kill_interval: get("SOAK_KILL_INTERVAL", 10)?,
            restart_delay: get("SOAK_RESTART_DELAY", 3)?,
            reload_interval: get("SOAK_RELOAD_INTERVAL", 5)?,
            fd_margin: get("SOAK_FD_MARGIN", 8)?,
            settle_timeout: get("SOAK_SETTLE_TIMEOUT", 30)?,
            ready_timeout: Duration::from_secs(get("SOAK_READY_TIMEOUT", 10)?),
            stop_timeout: get("SOAK_STOP_TIMEOUT", 15)?,
            keepalive: match get("SOAK_KEEPALIVE", 1)? {
                0 => false,
                1 => true,
                other => {
                    return harness::usage_error(format!(
                        "SOAK_KEEPALIVE must be 0 or 1, not '{other}'"
                    ));
                }
            },
        };
        if s.threads < 1 || s.connections < s.threads {
            return harness::usage_error(format!(
                "SOAK_CONNECTIONS ({}) must be at least SOAK_THREADS ({}), which must be at least 1",
                s.connections, s.threads
            ));
        }
        if s.kill_interval != 0 && s.kill_interval <= s.restart_delay {
            return harness::usage_error(format!(
                "SOAK_KILL_INTERVAL ({}) must be longer than SOAK_RESTART_DELAY ({}): one backend down at a time",
                s.kill_interval, s.restart_delay
            ));
        }
        Ok(Some(s))
    }

    fn mode(&self) -> &'static str {
        if self.keepalive {
            "keep-alive"
        } else {
            "Connection: close, a new connection per request"
        }
    }
}

fn run() -> Res<u8> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(settings) = Settings::parse(&args)? else {
        return Ok(0);
    };
    harness::set_stop_timeout(settings.stop_timeout);
    let Some(wrk) = harness::find_program("wrk") else {
        note("wrk is not installed. It comes in the Debian package `wrk`:");
        note("    apt-get install wrk");
        note("(this script installs nothing itself)");
        return Err(Stop::Exit(2));
    };
    let mut soak = Soak::prepare(settings, wrk)?;
    soak.start()?;
    soak.warm_up()?;
    soak.load()?;
    let passed = soak.finish()?;
    Ok(if passed { 0 } else { 1 })
}

// --- the balancer's log ----------------------------------------------------------------------

/// Counts of the balancer's log lines that the summary reports, kept up to date from a
/// [`LogTail`].
#[derive(Default)]
struct LogCounts {
    hup_seen: u64,
    reloads_ok: u64,
    reloads_rejected: u64,
    failovers: u64,
    no_backend: u64,
    down_flips: u64,
    up_flips: u64,
    errors: u64,
    access_lines: u64,
    cut_by_backend: u64,
    /// The last reload outcome, without the log line's `[time level target] ` head.
    last_reload: String,
}

impl LogCounts {
    fn add(&mut self, line: &str) {
        let has = |s: &str| line.contains(s);
        self.hup_seen += u64::from(has("SIGHUP: reloading"));
        self.failovers += u64::from(has("connect failed"));
        self.no_backend += u64::from(has("no backend available"));
        if has("reloaded: listening on") || has("reload rejected") {
            self.reloads_ok += u64::from(has("reloaded: listening on"));
            self.reloads_rejected += u64::from(has("reload rejected"));
            self.last_reload = line
                .rfind("] ")
                .map_or(line, |i| &line[i + 2..])
                .to_string();
        }
        if let Some(i) = line.find("backend ") {
            self.down_flips += u64::from(line[i..].contains(" is down"));
            self.up_flips += u64::from(line.ends_with(" is up"));
        }
        let head = line.split(']').next().unwrap_or_default();
        self.errors += u64::from(line.starts_with('[') && head.contains(" ERROR "));
        if let Some(i) = line.find("ballast::access]") {
            self.access_lines += 1;
            let rest = &line[i..];
            self.cut_by_backend +=
                u64::from(rest.contains("backend error") || rest.contains("backend closed"));
        }
    }

    fn reloads_answered(&self) -> u64 {
        self.reloads_ok + self.reloads_rejected
    }
}

// --- wrk's totals ----------------------------------------------------------------------------

/// The `SOAK key=value ...` line our wrk script prints.
#[derive(Default, Debug, PartialEq)]
struct Totals {
    requests: u64,
    duration_us: u64,
    bytes: u64,
    connect: u64,
    read: u64,
    write: u64,
    status: u64,
    timeout: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

fn read_totals(text: &str) -> Option<Totals> {
    let line = text.lines().find_map(|l| l.strip_prefix("SOAK "))?;
    let mut t = Totals::default();
    for pair in line.split_whitespace() {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        let Ok(v) = value.parse::<u64>() else {
            continue;
        };
        let field = match key {
            "requests" => &mut t.requests,
            "duration_us" => &mut t.duration_us,
            "bytes" => &mut t.bytes,
            "connect" => &mut t.connect,
            "read" => &mut t.read,
            "write" => &mut t.write,
            "status" => &mut t.status,
            "timeout" => &mut t.timeout,
            "p50_us" => &mut t.p50_us,
            "p99_us" => &mut t.p99_us,
            "max_us" => &mut t.max_us,
            _ => continue,
        };
        *field = v;
    }
    Some(t)
}

/// wrk reports its totals through this script's done() in one line that is easy to read
/// back.
fn wrk_script(keepalive: bool) -> String {
    let mut s = String::from(
        "-- Written by scripts/soak.sh: prints wrk's totals on one line for the script to read.\n",
    );
    if !keepalive {
        s.push_str("wrk.headers[\"Connection\"] = \"close\"\n");
    }
    s.push_str(
        r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "SOAK requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%d p99_us=%d max_us=%d\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"#,
    );
    s
}

// --- formatting ------------------------------------------------------------------------------

/// Milliseconds as seconds with one (truncated) decimal.
fn secs(ms: u64) -> String {
    format!("{}.{}", ms / 1000, ms % 1000 / 100)
}

/// kB as MiB with one decimal, or `?`.
fn mib(kb: Option<u64>) -> String {
    kb.map_or("?".into(), |kb| format!("{:.1} MiB", kb as f64 / 1024.0))
}

/// The change from `a` to `b` kB in MiB, or `?`.
fn mib_change(a: Option<u64>, b: Option<u64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:+.1} MiB", (b as f64 - a as f64) / 1024.0),
        _ => "?".into(),
    }
}

fn or_q(v: Option<impl ToString>) -> String {
    v.map_or("?".into(), |v| v.to_string())
}

// --- the run ---------------------------------------------------------------------------------

/// The balancer's descriptors once they settled (or not).
struct Settled {
    fds: usize,
    settled: bool,
    ms: u64,
}

struct Soak {
    s: Settings,
    wrk_bin: PathBuf,
    ballast_bin: PathBuf,
    backend_bin: PathBuf,
    rust_log: String,
    run_dir: PathBuf,
    config: PathBuf,
    balancer_log: PathBuf,
    events: PathBuf,
    wrk_out: PathBuf,
    wrk_script: PathBuf,
    ports: Vec<u16>,
    picked: HashSet<u16>,
    rng: harness::Rng,
    backends: Vec<Option<Proc>>,
    balancer: Option<Proc>,
    wrk: Option<Proc>,
    listen_port: u16,
    log_tail: Option<LogTail>,
    log: LogCounts,
    load_start: Option<Instant>,
    kills: u64,
    restarts: u64,
    restart_failures: u64,
    sighups: u64,
    // Measured before and after the load.
    start_fds: usize,
    start_sockets: Option<usize>,
    start_rss: Option<u64>,
    start_threads: Option<u64>,
    wrk_hung: bool,
}

impl Drop for Soak {
    /// Stops everything this harness started.
    fn drop(&mut self) {
        let mut all: Vec<&mut Proc> = self
            .wrk
            .as_mut()
            .into_iter()
            .chain(self.balancer.as_mut())
            .chain(self.backends.iter_mut().flatten())
            .collect();
        harness::stop(&mut all, true);
        let _ = fs::remove_file(self.run_dir.join("soak.pid"));
        let _ = fs::remove_file(self.config.with_extension("ron.tmp"));
    }
}

impl Soak {
    fn prepare(s: Settings, wrk_bin: PathBuf) -> Res<Soak> {
        let run_dir = harness::run_dir().join("soak");
        if let Err(e) = fs::create_dir_all(&run_dir) {
            return fatal(format!("cannot create {}: {e}", run_dir.display()));
        }
        let pid_file = run_dir.join("soak.pid");
        if let Some(other) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            && other != std::process::id()
            && harness::is_ours(other, "soak.sh")
        {
            return fatal(format!(
                "another soak.sh (pid {other}) uses {}; stop it first",
                run_dir.display()
            ));
        }
        for entry in fs::read_dir(&run_dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = (name.starts_with("backend-")
                && (name.ends_with(".out") || name.ends_with(".log")))
                || [
                    "ballast.log",
                    "ballast.out",
                    "events.log",
                    "wrk.out",
                    "warmup.out",
                    "summary.txt",
                    "balancer.ron",
                    "balancer.ron.tmp",
                ]
                .contains(&name.as_str());
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }

        let bin_dir = harness::binaries(&["--bin", "ballast", "--bin", "ballast-backend"])?;
        let script = run_dir.join("totals.lua");
        harness::write(&script, &wrk_script(s.keepalive))?;

        // Info level: readiness and reloads are logged there. Without keep-alive, a
        // per-connection access log would grow by thousands of lines a second, so it is left
        // out unless asked for.
        let mut rust_log = match std::env::var("RUST_LOG") {
            Ok(v) if !v.is_empty() => v,
            _ if s.keepalive => "info".to_string(),
            _ => "info,ballast::access=warn".to_string(),
        };
        if !["info", "debug", "trace"]
            .iter()
            .any(|l| rust_log.contains(l))
        {
            rust_log.push_str(",ballast::server=info");
        }

        harness::write(&pid_file, &format!("{}\n", std::process::id()))?;
        let events = run_dir.join("events.log");
        harness::write(&events, "")?;
        Ok(Soak {
            wrk_bin,
            ballast_bin: bin_dir.join("ballast"),
            backend_bin: bin_dir.join("ballast-backend"),
            rust_log,
            config: run_dir.join("balancer.ron"),
            balancer_log: run_dir.join("ballast.log"),
            events,
            wrk_out: run_dir.join("wrk.out"),
            wrk_script: script,
            run_dir,
            ports: vec![0; NAMES.len()],
            picked: HashSet::new(),
            rng: harness::Rng::seeded(),
            backends: (0..NAMES.len()).map(|_| None).collect(),
            balancer: None,
            wrk: None,
            listen_port: 0,
            log_tail: None,
            log: LogCounts::default(),
            load_start: None,
            kills: 0,
            restarts: 0,
            restart_failures: 0,
            sighups: 0,
            start_fds: 0,
            start_sockets: None,
            start_rss: None,
            start_threads: None,
            wrk_hung: false,
            s,
        })
    }

    /// Milliseconds since the load started (0 before).
    fn now_ms(&self) -> u64 {
        self.load_start
            .map_or(0, |t| t.elapsed().as_millis() as u64)
    }

    /// Appends a timestamped line (seconds since the load started) to the event log.
    fn event(&self, text: impl AsRef<str>) {
        if let Ok(mut f) = fs::OpenOptions::new().append(true).open(&self.events) {
            let _ = writeln!(f, "t={:>7}s  {}", secs(self.now_ms()), text.as_ref());
        }
    }

    /// Picks a port no TCP socket on this machine uses, below the ephemeral range when there
    /// is room, so no outgoing connection can take it while a killed backend is down.
    fn pick_port(&mut self) -> Res<u16> {
        let range =
            fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
        let mut bounds = range
            .split_whitespace()
            .filter_map(|v| v.parse::<u64>().ok());
        let (lo, hi) = (
            bounds.next().unwrap_or(32768),
            bounds.next().unwrap_or(60999),
        );
        let (first, last) = if lo > 12000 {
            (10000, lo - 1)
        } else if hi < 63000 {
            (hi + 1, 65535)
        } else {
            (1024, 65535)
        };
        let used = harness::used_ports();
        for _ in 0..500 {
            let candidate = self.rng.range(first, last) as u16;
            if used.contains(&candidate) || !self.picked.insert(candidate) {
                continue;
            }
            return Ok(candidate);
        }
        fatal("found no free port")
    }

    // --- processes ---------------------------------------------------------------------------

    /// Starts backend `i` on its port and waits until it listens. False (leaving nothing
    /// running) when it exits first or does not report in time.
    fn launch_backend(&mut self, i: usize) -> Res<bool> {
        let (name, port) = (NAMES[i], self.ports[i]);
        let out = self.run_dir.join(format!("backend-{name}.out"));
        let log = self.run_dir.join(format!("backend-{name}.log"));
        let mut log_file = harness::append(&log)?;
        let _ = writeln!(log_file, "--- soak.sh: starting on 127.0.0.1:{port}");
        let mut command = harness::command(&self.backend_bin);
        command
            .args(["--listen", &format!("127.0.0.1:{port}"), "--id", name])
            .env("RUST_LOG", &self.rust_log)
            .stdout(harness::create(&out)?)
            .stderr(log_file);
        let mut proc = harness::start(command, format!("backend {name}"))?;
        let ready = harness::wait_for_line(
            &out,
            |l| l.starts_with("listening on "),
            &mut proc,
            self.s.ready_timeout,
        )?;
        let why = match ready {
            Ready::Line(_) => {
                self.backends[i] = Some(proc);
                return Ok(true);
            }
            Ready::Exited(status) => format!(
                "exited (status {}) before listening",
                harness::status_code(status)
            ),
            Ready::TimedOut => {
                proc.kill_now();
                format!(
                    "did not report listening within {}s",
                    self.s.ready_timeout.as_secs()
                )
            }
        };
        note(format!(
            "backend {name} on 127.0.0.1:{port} {why}; its log ({}):",
            log.display()
        ));
        eprint!("{}", harness::tail(&log, 5));
        self.backends[i] = None;
        Ok(false)
    }

    /// Restarts killed backend `i` on the same port; a port still held (it should not be) is
    /// retried for up to the ready timeout.
    fn restart_backend(&mut self, i: usize) -> Res<()> {
        let end = Instant::now() + self.s.ready_timeout;
        loop {
            if self.launch_backend(i)? {
                self.restarts += 1;
                let pid = self.backends[i].as_ref().map_or(0, Proc::pid);
                self.event(format!("restarted backend {} (pid {pid})", NAMES[i]));
                return Ok(());
            }
            if Instant::now() >= end {
                self.restart_failures += 1;
                self.event(format!("could not restart backend {}", NAMES[i]));
                note(format!(
                    "could not restart backend {} on port {}; continuing without it",
                    NAMES[i], self.ports[i]
                ));
                return Ok(());
            }
            pause(Duration::from_millis(200))?;
        }
    }

    /// Writes the balancer's configuration (atomically: a reload never reads half a file).
    fn write_config(&self, algorithm: &str, weights: [u32; 3], label: &str) -> Res<()> {
        let mut text = format!(
            "// Generated by scripts/soak.sh ({label}); rewritten before every SIGHUP.\n(\n    listen: \"127.0.0.1:{}\",\n    algorithm: {algorithm},\n    backends: [\n",
            self.listen_port
        );
        for (i, name) in NAMES.iter().enumerate() {
            let _ = writeln!(
                text,
                "        (name: \"{name}\", addr: \"127.0.0.1:{}\", weight: {}),",
                self.ports[i], weights[i]
            );
        }
        text.push_str(
            "    ],\n    health: (interval: \"500ms\", timeout: \"300ms\", rise: 2, fall: 2),\n)\n",
        );
        let tmp = self.config.with_extension("ron.tmp");
        harness::write(&tmp, &text)?;
        fs::rename(&tmp, &self.config)
            .or_else(|e| fatal(format!("cannot write {}: {e}", self.config.display())))
    }

    /// Reads what the balancer logged since the last call into the counts.
    fn scan_log(&mut self) {
        if let Some(tail) = &mut self.log_tail {
            for line in tail.new_lines() {
                self.log.add(&line);
            }
        }
    }

    fn balancer_alive(&mut self) -> bool {
        self.balancer.as_mut().is_some_and(Proc::alive)
    }

    fn balancer_pid(&self) -> u32 {
        self.balancer.as_ref().map_or(0, Proc::pid)
    }

    /// Rewrites the configuration for reload number `n` and sends SIGHUP, then waits
    /// (bounded) for the balancer to log the outcome.
    fn reload(&mut self, n: usize) -> Res<()> {
        let algorithm = ALGORITHMS[n % 2];
        let weights = WEIGHT_SETS[n % 4];
        self.write_config(algorithm, weights, &format!("reload {n}"))?;
        self.scan_log();
        let before = self.log.reloads_answered();
        if !self
            .balancer
            .as_mut()
            .is_some_and(|b| b.signal(Signal::SIGHUP))
        {
            return Ok(());
        }
        self.sighups += 1;
        let end = Instant::now() + Duration::from_secs(5);
        let mut outcome = "no answer within 5s".to_string();
        while Instant::now() < end && self.balancer_alive() {
            self.scan_log();
            if self.log.reloads_answered() > before {
                outcome = self.log.last_reload.clone();
                break;
            }
            pause(Duration::from_millis(20))?;
        }
        let w: Vec<String> = weights.iter().map(u32::to_string).collect();
        self.event(format!(
            "reload {n} ({algorithm}, weights {}): {outcome}",
            w.join(",")
        ));
        Ok(())
    }

    /// Samples the balancer's descriptor count every 0.25 s until 8 samples in a row (2 s)
    /// agree, for up to the settle timeout. The count is the lowest of the last 2 s, so a
    /// health probe caught in flight does not count. `None` when the balancer is gone.
    fn settle_fds(&mut self) -> Res<Option<Settled>> {
        let start = Instant::now();
        let mut window: Vec<usize> = Vec::new();
        loop {
            let Some(fds) =
                harness::fd_count(self.balancer_pid()).filter(|_| self.balancer_alive())
            else {
                return Ok(None);
            };
            window.push(fds);
            if window.len() > 8 {
                window.remove(0);
            }
            let (min, max) = (
                window.iter().copied().min().unwrap_or(fds),
                window.iter().copied().max().unwrap_or(fds),
            );
            let ms = start.elapsed().as_millis() as u64;
            if window.len() == 8 && min == max {
                return Ok(Some(Settled {
                    fds: min,
                    settled: true,
                    ms,
                }));
            }
            if ms >= self.s.settle_timeout * 1000 {
                return Ok(Some(Settled {
                    fds: min,
                    settled: false,
                    ms,
                }));
            }
            pause(Duration::from_millis(250))?;
        }
    }

    /// Runs wrk through the balancer: `-tT -cC -dD`, output in `out`.
    fn spawn_wrk(&self, threads: u64, conns: u64, secs: u64, out: &Path) -> Res<Proc> {
        let file = harness::create(out)?;
        let mut command = harness::command(&self.wrk_bin);
        command
            .arg(format!("-t{threads}"))
            .arg(format!("-c{conns}"))
            .arg(format!("-d{secs}s"))
            .args(["--timeout", "2s", "-s"])
            .arg(&self.wrk_script)
            .arg(self.url())
            .stdout(file.try_clone().or_else(fatal)?)
            .stderr(file);
        harness::start(command, "wrk")
    }

    fn target(&self) -> String {
        format!("127.0.0.1:{}", self.listen_port)
    }

    fn url(&self) -> String {
        format!("http://{}/", self.target())
    }

    // --- the phases --------------------------------------------------------------------------

    /// Starts the backends and the balancer, each on a free port.
    fn start(&mut self) -> Res<()> {
        for (i, name) in NAMES.iter().enumerate() {
            for attempt in 1..=5 {
                self.ports[i] = self.pick_port()?;
                if self.launch_backend(i)? {
                    break;
                }
                if attempt == 5 {
                    return fatal(format!("could not start backend {name}"));
                }
                note("trying another port");
            }
            let pid = self.backends[i].as_ref().map_or(0, Proc::pid);
            self.event(format!(
                "started backend {name} on 127.0.0.1:{} (pid {pid})",
                self.ports[i]
            ));
        }

        let log = self.balancer_log.clone();
        for attempt in 1..=5 {
            self.listen_port = self.pick_port()?;
            self.write_config("RoundRobin", WEIGHT_SETS[0], "initial")?;
            let mut command = harness::command(&self.ballast_bin);
            command
                .arg("--config")
                .arg(&self.config)
                .env("RUST_LOG", &self.rust_log)
                .stdout(harness::create(&self.run_dir.join("ballast.out"))?)
                .stderr(harness::create(&log)?);
            let mut proc = harness::start(command, "ballast")?;
            let ready = harness::wait_for_line(
                &log,
                |l| l.contains("listening on "),
                &mut proc,
                self.s.ready_timeout,
            )?;
            match ready {
                Ready::Line(_) => {
                    self.balancer = Some(proc);
                    break;
                }
                Ready::TimedOut => {
                    self.balancer = Some(proc);
                    return harness::fail_showing_log(
                        format!(
                            "ballast did not report listening within {}s",
                            self.s.ready_timeout.as_secs()
                        ),
                        &log,
                    );
                }
                Ready::Exited(status) => {
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    if attempt < 5 && text.contains("cannot listen on") {
                        note(format!(
                            "ballast could not listen on {}; trying another port",
                            self.target()
                        ));
                        continue;
                    }
                    return harness::fail_showing_log(
                        format!(
                            "ballast exited (status {}) before listening",
                            harness::status_code(status)
                        ),
                        &log,
                    );
                }
            }
        }
        self.log_tail = Some(LogTail::new(&log));
        let pid = self.balancer_pid();
        self.event(format!("started ballast on {} (pid {pid})", self.target()));
        note(format!(
            "ballast on {} (pid {pid}) in front of backends {} on ports {}; logs in {}",
            self.target(),
            NAMES.join(" "),
            self.ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            self.run_dir.display()
        ));
        Ok(())
    }

    /// A short run through every path (accept, pick, connect, relay), so the allocator and
    /// the runtime have their working set before the baseline is taken.
    fn warm_up(&mut self) -> Res<()> {
        note("warm-up: wrk -t1 -c4 -d2s");
        let out = self.run_dir.join("warmup.out");
        let mut wrk = self.spawn_wrk(1, 4, 2, &out)?;
        let status = wrk.wait_exit(Duration::from_secs(30))?;
        let printed = fs::read_to_string(&out).unwrap_or_default();
        if !status.is_some_and(|s| s.success()) {
            return fatal(format!(
                "wrk failed during the warm-up; its output: {printed}"
            ));
        }
        let Some(t) = read_totals(&printed) else {
            return fatal(format!(
                "no totals from the warm-up; wrk printed: {printed}"
            ));
        };
        if t.requests == 0 || t.status > 0 || t.connect > 0 {
            return fatal(format!(
                "the balancer does not serve the warm-up ({} requests, {} bad statuses, {} connect errors); see {}",
                t.requests,
                t.status,
                t.connect,
                self.balancer_log.display()
            ));
        }
        let gone = format!(
            "ballast exited during the warm-up; see {}",
            self.balancer_log.display()
        );
        if !self.balancer_alive() {
            return fatal(gone);
        }
        let Some(settled) = self.settle_fds()? else {
            return fatal(gone);
        };
        let pid = self.balancer_pid();
        self.start_fds = settled.fds;
        self.start_sockets = harness::socket_count(pid);
        self.start_rss = harness::status_field(pid, "VmRSS");
        self.start_threads = harness::status_field(pid, "Threads");
        note(format!(
            "baseline: {} fds ({} sockets), VmRSS {}, {} threads",
            self.start_fds,
            or_q(self.start_sockets),
            mib(self.start_rss),
            or_q(self.start_threads)
        ));
        Ok(())
    }

    /// wrk for the duration while backends are killed and restarted and reloads happen.
    fn load(&mut self) -> Res<()> {
        let s = &self.s;
        let (duration, threads, conns) = (s.duration, s.threads, s.connections);
        let (kill_every, delay, reload_every) = (
            s.kill_interval * 1000,
            s.restart_delay * 1000,
            s.reload_interval * 1000,
        );
        note(format!(
            "load: wrk -t{threads} -c{conns} -d{duration}s {} ({}); kills every {}s (0: none), reloads every {}s (0: none)",
            self.url(),
            s.mode(),
            s.kill_interval,
            s.reload_interval
        ));
        self.load_start = Some(Instant::now());
        let load_end = duration * 1000;
        let wrk_out = self.wrk_out.clone();
        self.wrk = Some(self.spawn_wrk(threads, conns, duration, &wrk_out)?);
        let wrk_pid = self.wrk.as_ref().map_or(0, Proc::pid);
        self.event(format!(
            "wrk started (pid {wrk_pid}): -t{threads} -c{conns} -d{duration}s"
        ));

        let mut next_kill = if kill_every == 0 { 0 } else { kill_every };
        let mut next_reload = if reload_every == 0 { 0 } else { reload_every };
        let mut victim = 0;
        let mut down: Option<(usize, u64)> = None;
        let mut reloads_done = 0;
        let mut balancer_died = false;
        let hard_deadline = load_end + 30_000;
        while self.wrk.as_mut().is_some_and(Proc::alive) {
            if !self.balancer_alive() {
                balancer_died = true;
                break;
            }
            let now = self.now_ms();
            if now >= hard_deadline {
                self.wrk_hung = true;
                break;
            }
            if let Some((i, at)) = down
                && now >= at
            {
                self.restart_backend(i)?;
                down = None;
            }
            // Kill only when the restart still falls inside the load, with a second to spare.
            if next_kill > 0 && now >= next_kill && down.is_none() {
                if now + delay + 1000 <= load_end {
                    if let Some(mut backend) = self.backends[victim].take()
                        && backend.alive()
                    {
                        backend.kill_now();
                        self.kills += 1;
                        self.event(format!(
                            "SIGKILL backend {} (pid {})",
                            NAMES[victim],
                            backend.pid()
                        ));
                    }
                    down = Some((victim, now + delay));
                    victim = (victim + 1) % NAMES.len();
                }
                next_kill += kill_every;
            }
            if next_reload > 0 && now >= next_reload {
                if now + 1000 <= load_end {
                    reloads_done += 1;
                    self.reload(reloads_done)?;
                }
                next_reload += reload_every;
            }
            pause(Duration::from_millis(100))?;
        }
        self.event("load over");

        // wrk stops early and still prints its totals on SIGINT (not on SIGTERM).
        if let Some(wrk) = &mut self.wrk {
            if self.wrk_hung {
                note("wrk still running 30 s after its duration; stopping it");
                wrk.signal(Signal::SIGINT);
            }
            if balancer_died {
                note("ballast exited during the load; stopping wrk");
                wrk.signal(Signal::SIGINT);
            }
            // Give wrk a moment to print, then make sure it is gone.
            wrk.wait_exit(Duration::from_secs(5))?;
            wrk.kill_now();
        }
        self.wrk = None;
        if let Some((i, _)) = down {
            self.restart_backend(i)?;
        }
        Ok(())
    }

    /// The end state, the SIGTERM stop and the summary; true when it passed.
    fn finish(&mut self) -> Res<bool> {
        let mut end_alive = self.balancer_alive();
        let balancer_status = if end_alive {
            None
        } else {
            self.balancer.as_mut().and_then(Proc::status)
        };
        let (mut end_fds, mut end_sockets, mut end_rss, mut end_hwm, mut end_threads) =
            (None, None, None, None, None);
        let mut settled = None;
        if end_alive {
            note(format!(
                "load over; waiting up to {}s for the balancer's descriptors to settle",
                self.s.settle_timeout
            ));
            match self.settle_fds()? {
                Some(s) => {
                    let pid = self.balancer_pid();
                    end_fds = Some(s.fds);
                    end_sockets = harness::socket_count(pid);
                    end_rss = harness::status_field(pid, "VmRSS");
                    end_hwm = harness::status_field(pid, "VmHWM");
                    end_threads = harness::status_field(pid, "Threads");
                    settled = Some(s);
                }
                None => end_alive = false,
            }
        }
        // What wrk saw and the balancer logged, before the stop adds its own lines.
        self.scan_log();

        let mut stop_result = "not attempted (not running)".to_string();
        let mut stop_ok = false;
        if end_alive && let Some(balancer) = &mut self.balancer {
            let started = Instant::now();
            balancer.signal(Signal::SIGTERM);
            let limit = Duration::from_secs(self.s.stop_timeout);
            match balancer.wait_exit(limit)? {
                None => {
                    stop_result = format!(
                        "still running {}s after SIGTERM (killed)",
                        self.s.stop_timeout
                    );
                    balancer.kill_now();
                }
                Some(status) => {
                    let code = harness::status_code(status);
                    stop_result = format!(
                        "exit {code} after {} s",
                        secs(started.elapsed().as_millis() as u64)
                    );
                    stop_ok = code == 0;
                }
            }
            self.balancer = None;
        }

        let totals = read_totals(&fs::read_to_string(&self.wrk_out).unwrap_or_default());
        let s = &self.s;
        let fd_ok = end_fds.is_some_and(|e| e as u64 <= self.start_fds as u64 + s.fd_margin);
        let mut failures = Vec::new();
        if !end_alive {
            failures.push("the balancer did not survive the load".to_string());
        }
        if end_alive && !fd_ok {
            failures.push(format!(
                "open fds went from {} to {} (allowed: +{})",
                self.start_fds,
                or_q(end_fds),
                s.fd_margin
            ));
        }
        if end_alive && !stop_ok {
            failures.push(format!("SIGTERM: {stop_result}"));
        }
        if self.wrk_hung {
            failures.push("wrk did not finish".to_string());
        }
        let log = &self.log;
        // With an access log (one line per connection, at info), the connections a backend
        // ended: under keep-alive load only a killed backend ends one, so this is what the
        // kills cut. (Without keep-alive the backends end every connection, so the count says
        // nothing.)
        let access_lines = if s.keepalive { log.access_lines } else { 0 };
        let mut warnings = Vec::new();
        match &totals {
            Some(t) => {
                let unexpected = t.connect + t.timeout + t.status;
                if unexpected != 0 {
                    warnings.push(format!("{unexpected} connect errors, timeouts or bad statuses: kills and reloads should cause none"));
                }
                let rw = t.read + t.write;
                if access_lines > 0 && rw > log.cut_by_backend {
                    warnings.push(format!(
                        "{rw} read/write errors but only {} connections ended by a backend: {} unexplained by the kills",
                        log.cut_by_backend,
                        rw - log.cut_by_backend
                    ));
                } else if rw > self.kills * s.connections {
                    warnings.push(format!(
                        "{rw} read/write errors: more than the {} kill(s) x {} connections could explain",
                        self.kills, s.connections
                    ));
                }
            }
            None => warnings.push("wrk printed no totals".to_string()),
        }
        if self.sighups != log.reloads_ok {
            warnings.push(format!(
                "{} SIGHUPs sent but {} reloads accepted",
                self.sighups, log.reloads_ok
            ));
        }
        if self.restart_failures != 0 {
            warnings.push(format!(
                "{} backend restart(s) failed",
                self.restart_failures
            ));
        }
        if log.no_backend != 0 {
            warnings.push(format!(
                "the balancer turned {} client(s) away with no backend available",
                log.no_backend
            ));
        }

        // --- the summary ---
        let mut out = String::new();
        let o = &mut out;
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "== ballast soak: {} s of wrk -t{} -c{} ({}) through {}, 3 backends ==",
            s.duration,
            s.threads,
            s.connections,
            s.mode(),
            self.target()
        );
        let _ = writeln!(o);
        let _ = writeln!(o, "wrk");
        match &totals {
            Some(t) => {
                let rps = t.requests * 1_000_000 / t.duration_us.max(1);
                let rps = if t.duration_us == 0 { 0 } else { rps };
                let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
                let _ = writeln!(
                    o,
                    "  {:<26} {}  ({rps} req/s, {} read)",
                    "requests",
                    t.requests,
                    mib(Some(t.bytes / 1024))
                );
                let _ = writeln!(
                    o,
                    "  {:<26} p50 {} ms, p99 {} ms, max {} ms",
                    "latency",
                    ms(t.p50_us),
                    ms(t.p99_us),
                    ms(t.max_us)
                );
                let _ = writeln!(
                    o,
                    "  {:<26} connect {}, read {}, write {}, timeout {}",
                    "socket errors", t.connect, t.read, t.write, t.timeout
                );
                let _ = writeln!(o, "  {:<26} {}", "non-2xx/3xx responses", t.status);
            }
            None => {
                let _ = writeln!(o, "  no totals: wrk printed");
                for line in fs::read_to_string(&self.wrk_out)
                    .unwrap_or_default()
                    .lines()
                {
                    let _ = writeln!(o, "    {line}");
                }
            }
        }
        let _ = writeln!(o);
        let _ = writeln!(o, "chaos");
        let _ = writeln!(
            o,
            "  {:<26} {} (restarted {}, restart failures {})",
            "backend kills (SIGKILL)", self.kills, self.restarts, self.restart_failures
        );
        let _ = writeln!(
            o,
            "  {:<26} {} sent, {} seen, {} accepted, {} rejected",
            "reloads (SIGHUP)", self.sighups, log.hup_seen, log.reloads_ok, log.reloads_rejected
        );
        let _ = writeln!(
            o,
            "  {:<26} {} connect failures (failed over), {} down / {} up flips,",
            "balancer log", log.failovers, log.down_flips, log.up_flips
        );
        let _ = writeln!(
            o,
            "  {:<26} {} \"no backend available\", {} ERROR lines",
            "", log.no_backend, log.errors
        );
        if access_lines > 0 {
            let _ = writeln!(
                o,
                "  {:<26} {} connections ended by their backend (access log)",
                "", log.cut_by_backend
            );
        }
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<28} {:<12} {:<12} change",
            "balancer (ballast)", "start", "end"
        );
        let _ = writeln!(
            o,
            "  {:<26} {:<12} {:<12} {}  (peak {})",
            "VmRSS",
            mib(self.start_rss),
            mib(end_rss),
            mib_change(self.start_rss, end_rss),
            mib(end_hwm)
        );
        let settle_note = match &settled {
            Some(st) if st.settled => format!("  (settled after {} s)", secs(st.ms)),
            _ if end_alive => format!(
                "  (NOT settled in {}s; lowest of the last 2 s)",
                s.settle_timeout
            ),
            _ => String::new(),
        };
        let change = |a: usize, b: Option<usize>| {
            b.map_or("?".to_string(), |b| format!("{:+}", b as i64 - a as i64))
        };
        let _ = writeln!(
            o,
            "  {:<26} {:<12} {:<12} {}{settle_note}",
            "open fds",
            self.start_fds,
            or_q(end_fds),
            change(self.start_fds, end_fds)
        );
        let _ = writeln!(
            o,
            "  {:<26} {:<12} {:<12} {}",
            "  of which sockets",
            or_q(self.start_sockets),
            or_q(end_sockets),
            match self.start_sockets {
                Some(start) => change(start, end_sockets),
                None => "?".into(),
            }
        );
        let _ = writeln!(
            o,
            "  {:<26} {:<12} {}",
            "threads",
            or_q(self.start_threads),
            or_q(end_threads)
        );
        let alive = if end_alive {
            "yes".to_string()
        } else {
            format!(
                "NO (exit status {})",
                or_q(balancer_status.map(harness::status_code))
            )
        };
        let _ = writeln!(o, "  {:<26} {alive}", "alive after the load");
        let _ = writeln!(o, "  {:<26} {stop_result}", "SIGTERM");
        let _ = writeln!(o);
        if failures.is_empty() {
            let _ = writeln!(
                o,
                "verdict: PASS (alive, fds back within +{} of the start, clean stop)",
                s.fd_margin
            );
        } else {
            let _ = writeln!(o, "verdict: FAIL");
            for f in &failures {
                let _ = writeln!(o, "  - {f}");
            }
        }
        if !warnings.is_empty() {
            let _ = writeln!(o, "warnings:");
            for w in &warnings {
                let _ = writeln!(o, "  - {w}");
            }
        }
        let _ = writeln!(
            o,
            "expected: read errors only from connections open on a backend when it was killed"
        );
        let _ = writeln!(
            o,
            "          (at most {} per kill), nothing from reloads.",
            s.connections
        );
        let _ = writeln!(
            o,
            "logs: {} (events.log: timeline, wrk.out: wrk's own report)",
            self.run_dir.display()
        );
        harness::write(&self.run_dir.join("summary.txt"), &out)?;
        print!("{out}");
        let _ = std::io::stdout().flush();
        interrupted()?;
        Ok(failures.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_totals_line() {
        let text = "Running 2s test\nSOAK requests=10 duration_us=2000000 bytes=4096 connect=0 read=2 write=0 status=1 timeout=0 p50_us=800 p99_us=6491 max_us=43619\n";
        assert_eq!(
            read_totals(text),
            Some(Totals {
                requests: 10,
                duration_us: 2_000_000,
                bytes: 4096,
                read: 2,
                status: 1,
                p50_us: 800,
                p99_us: 6491,
                max_us: 43619,
                ..Totals::default()
            })
        );
        assert_eq!(read_totals("unable to connect"), None);
    }

    #[test]
    fn counts_log_lines_as_grep_did() {
        let mut log = LogCounts::default();
        for line in [
            "[2026-01-01T00:00:00Z INFO  ballast] SIGHUP: reloading /x/balancer.ron",
            "[2026-01-01T00:00:00Z INFO  ballast::server] reloaded: listening on 127.0.0.1:1 (RoundRobin)",
            "[2026-01-01T00:00:00Z ERROR ballast] reload rejected: bad; keeping the running configuration",
            "[2026-01-01T00:00:00Z WARN  ballast::backend] backend a (127.0.0.1:2) is down: connect failed: refused",
            "[2026-01-01T00:00:00Z INFO  ballast::backend] backend a (127.0.0.1:2) is up",
            "[2026-01-01T00:00:00Z INFO  ballast::access] 127.0.0.1:3 -> a: 10 B up, 20 B down, backend closed",
            "[2026-01-01T00:00:00Z WARN  ballast::server::connect] 127.0.0.1:4: no backend available (3 tried); closing",
        ] {
            log.add(line);
        }
        assert_eq!(
            (
                log.hup_seen,
                log.reloads_ok,
                log.reloads_rejected,
                log.errors
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(
            log.last_reload,
            "reload rejected: bad; keeping the running configuration"
        );
        assert_eq!((log.down_flips, log.up_flips, log.failovers), (1, 1, 1));
        assert_eq!(
            (log.access_lines, log.cut_by_backend, log.no_backend),
            (1, 1, 1)
        );
    }

    #[test]
    fn formats_like_the_summary() {
        assert_eq!(secs(1749), "1.7");
        assert_eq!(mib(Some(4300)), "4.2 MiB");
        assert_eq!(mib(None), "?");
        assert_eq!(mib_change(Some(4300), Some(4506)), "+0.2 MiB");
        assert_eq!(mib_change(Some(4506), Some(4300)), "-0.2 MiB");
    }

    #[test]
    fn usage_errors() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for bad in [&["-x"][..], &["0"], &["3601"], &["1.5"], &["10", "20"]] {
            assert!(
                matches!(Settings::parse(&args(bad)), Err(Stop::Usage(_))),
                "{bad:?}"
            );
        }
    }
}
