//! The benchmark behind `scripts/bench.sh`, which builds this example and runs it: ballast
//! beside no proxy, the floor (`scripts/floor_relay.rs`), HAProxy and nginx on the same local
//! backends, systems interleaved in each round, and a Markdown table of medians. `--help`
//! (the text below) says what it measures and which settings it reads.

#[path = "harness/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{ErrorKind, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{Proc, Ready, Res, Stop, fatal, interrupted, note, pause};

const USAGE: &str = "\
Usage: scripts/bench.sh

Measures, in one go and on the same backends (two `ballast-backend` servers and one
`iperf3 -s`), five ways to reach them: direct (no proxy), floor (the bare epoll relay of
scripts/floor_relay.rs: what any user-space relay costs at the least), ballast, HAProxy
(`mode tcp`, default threads) and nginx (`stream`, `worker_processes auto`). Every round
runs each system in turn with a freshly started proxy (round 1: direct, floor, ballast,
haproxy, nginx; round 2: the same ...), so drift on a noisy machine affects them all alike:

  keep-alive   wrk -t2 -c64 --latency GET /: requests/s and p99 latency
  churn        the same with `Connection: close`: requests/s
  bulk         iperf3 -c through the proxy to iperf3 -s: MB/s received (10^6 bytes/s)
  idle memory  4000 connections through the proxy, one request each, held open: growth
               of the proxy's resident memory (VmRSS summed over its processes) per
               connection, in KiB (n/a for direct)
  scale        keep-alive requests/s at 1000 connections / requests/s at 64

It prints the medians as a Markdown table (stdout) with, for each figure, the ratio to the
best of HAProxy and nginx, followed by the machine and the command; the same text goes to
$BALLAST_RUN_DIR/bench.md. Progress goes to stderr; configurations and raw outputs are kept
in $BALLAST_RUN_DIR/bench/.

It installs nothing: a tool or peer that is missing is skipped with a note naming the
Debian packages that bring it (wrk, iperf3, haproxy, nginx + libnginx-mod-stream).
Everything listens on 127.0.0.1 only and everything started is stopped on exit. Needs
Linux (/proc). The soft open-files limit is raised to the hard one. The work is done by
scripts/bench.rs (the cargo example `bench`), which this script builds and runs.

Environment:
  BENCH_SECONDS=5          length of each wrk and iperf3 run
  BENCH_RUNS=3             rounds; the table shows medians
  BENCH_CONNS=64           connections of the keep-alive and churn runs
  BENCH_SCALE_CONNS=1000   connections of the scale run
  BENCH_IDLE_CONNS=4000    connections of the idle-memory run
  BENCH_THREADS=2          wrk threads
  BENCH_WARMUP=1           seconds of wrk warm-up after each proxy starts
  BENCH_SYSTEMS=\"direct floor ballast haproxy nginx\"
                           systems to run, in this order
  BENCH_BALLAST_EXTRA      extra top-level keys for ballast's configurations, such as
                           'workers: 1,' (to compare settings)
  BENCH_PORT=18100         first of eleven consecutive ports used on 127.0.0.1
  BENCH_READY_TIMEOUT=10   seconds to wait for a process to listen
  BENCH_STOP_TIMEOUT=10    seconds after SIGTERM before SIGKILL
  BALLAST_BIN_DIR          use ballast, ballast-backend and examples/floor_relay (and
                           examples/bench, when there) from this directory and skip
                           `cargo build --release`
  BALLAST_RUN_DIR          output directory (default: target/ballast-run)

ballast and the backends run with RUST_LOG=warn (no per-connection logging, like the
generated HAProxy and nginx configurations).
";

fn main() -> ExitCode {
    harness::init("bench.sh");
    let result = run();
    harness::exit_code(result, USAGE)
}

fn run() -> Res<u8> {
    match std::env::args().nth(1).as_deref() {
        Some("-h" | "--help") => {
            print!("{USAGE}");
            return Ok(0);
        }
        None | Some("") => {}
        Some(other) => return harness::usage_error(format!("unexpected argument {other}")),
    }
    let started = Instant::now();
    let settings = Settings::from_env()?;
    let mut bench = Bench::prepare(settings, started)?;
    bench.start_servers()?;
    note(format!(
        "systems: {}; {} run(s) of {}s per workload; logs in {}",
        names(&bench.systems),
        bench.s.runs,
        bench.s.secs,
        bench.log_dir.display()
    ));
    for round in 1..=bench.s.runs {
        for sys in bench.systems.clone() {
            bench.run_system(round, sys)?;
        }
    }
    bench.report()?;
    Ok(0)
}

// --- settings --------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Sys {
    Direct,
    Floor,
    Ballast,
    Haproxy,
    Nginx,
}

impl Sys {
    const ALL: [Sys; 5] = [
        Sys::Direct,
        Sys::Floor,
        Sys::Ballast,
        Sys::Haproxy,
        Sys::Nginx,
    ];

    fn name(self) -> &'static str {
        match self {
            Sys::Direct => "direct",
            Sys::Floor => "floor",
            Sys::Ballast => "ballast",
            Sys::Haproxy => "haproxy",
            Sys::Nginx => "nginx",
        }
    }

    fn parse(s: &str) -> Option<Sys> {
        Sys::ALL.into_iter().find(|sys| sys.name() == s)
    }
}

fn names(systems: &[Sys]) -> String {
    systems
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(" ")
}

struct Settings {
    secs: u64,
    runs: u64,
    conns: u64,
    scale_conns: u64,
    idle_conns: u64,
    threads: u64,
    warmup: u64,
    base_port: u16,
    ready_timeout: Duration,
    systems: Vec<Sys>,
    ballast_extra: String,
}

impl Settings {
    fn from_env() -> Res<Settings> {
        let get = |name: &str, default: u64| harness::env_uint(name, default).or_else(fatal);
        let secs = get("BENCH_SECONDS", 5)?;
        let runs = get("BENCH_RUNS", 3)?;
        let conns = get("BENCH_CONNS", 64)?;
        let scale_conns = get("BENCH_SCALE_CONNS", 1000)?;
        let idle_conns = get("BENCH_IDLE_CONNS", 4000)?;
        let threads = get("BENCH_THREADS", 2)?;
        let warmup = get("BENCH_WARMUP", 1)?;
        let base_port = get("BENCH_PORT", 18100)?;
        let ready = get("BENCH_READY_TIMEOUT", 10)?;
        let stop = get("BENCH_STOP_TIMEOUT", 10)?;
        if secs < 1 || runs < 1 || threads < 1 || idle_conns < 1 {
            return fatal(
                "BENCH_SECONDS, BENCH_RUNS, BENCH_THREADS and BENCH_IDLE_CONNS must be at least 1",
            );
        }
        if conns < threads || scale_conns < threads {
            return fatal(format!(
                "BENCH_CONNS and BENCH_SCALE_CONNS must be at least BENCH_THREADS ({threads})"
            ));
        }
        if !(1024..=65525).contains(&base_port) {
            return fatal("BENCH_PORT must be 1024..65525");
        }
        let list = std::env::var("BENCH_SYSTEMS")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "direct floor ballast haproxy nginx".to_string());
        let mut systems = Vec::new();
        for word in list.split_whitespace() {
            match Sys::parse(word) {
                Some(sys) => systems.push(sys),
                None => {
                    return fatal(format!(
                        "BENCH_SYSTEMS: unknown system '{word}' (expected direct, floor, ballast, haproxy, nginx)"
                    ));
                }
            }
        }
        if systems.is_empty() {
            return fatal("BENCH_SYSTEMS is empty");
        }
        harness::set_stop_timeout(stop);
        Ok(Settings {
            secs,
            runs,
            conns,
            scale_conns,
            idle_conns,
            threads,
            warmup,
            base_port: base_port as u16,
            ready_timeout: Duration::from_secs(ready),
            systems,
            ballast_extra: std::env::var("BENCH_BALLAST_EXTRA").unwrap_or_default(),
        })
    }
}

/// The exact command, with the BENCH_ settings it ran with.
fn command_line() -> String {
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("BENCH_"))
        .collect();
    vars.sort();
    let mut out = String::new();
    for (k, v) in vars {
        let _ = write!(out, "{k}={} ", harness::shell_quote(&v));
    }
    out + &std::env::args()
        .next()
        .unwrap_or_else(|| "scripts/bench.sh".into())
}

/// The eleven ports from BENCH_PORT on.
struct Ports {
    b1: u16,
    b2: u16,
    iperf: u16,
}

impl Ports {
    /// The HTTP and bulk ports of a system.
    fn of(&self, sys: Sys) -> (u16, u16) {
        let base = self.b1;
        match sys {
            Sys::Direct => (self.b1, self.iperf),
            Sys::Ballast => (base + 3, base + 4),
            Sys::Haproxy => (base + 5, base + 6),
            Sys::Nginx => (base + 7, base + 8),
            Sys::Floor => (base + 9, base + 10),
        }
    }
}

// --- the run ---------------------------------------------------------------------------------

#[derive(Default)]
struct Versions {
    ballast: String,
    haproxy: String,
    nginx: String,
    wrk: String,
    iperf: String,
}

/// A system of one round: its processes (none for direct), those whose memory counts, its
/// ports.
struct Running {
    sys: Sys,
    round: u64,
    procs: Vec<Proc>,
    mem: Vec<u32>,
    http: u16,
    bulk: u16,
    died_noted: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        harness::stop_all(&mut self.procs, true);
    }
}

/// One measurement: round, system, metric, value as recorded.
type Sample = (u64, Sys, &'static str, f64);

struct Bench {
    s: Settings,
    ports: Ports,
    wrk: Option<PathBuf>,
    iperf: Option<PathBuf>,
    haproxy: Option<PathBuf>,
    nginx: Option<PathBuf>,
    ballast: PathBuf,
    backend: PathBuf,
    floor: PathBuf,
    nginx_args: Vec<String>,
    systems: Vec<Sys>,
    log_dir: PathBuf,
    conf_dir: PathBuf,
    results_path: PathBuf,
    notes_path: PathBuf,
    report_path: PathBuf,
    notes: Vec<String>,
    results: Vec<Sample>,
    versions: Versions,
    command: String,
    started: Instant,
    backends: Vec<Proc>,
    iperf_server: Option<Proc>,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let mut all: Vec<&mut Proc> = self
            .backends
            .iter_mut()
            .chain(self.iperf_server.as_mut())
            .collect();
        harness::stop(&mut all, true);
    }
}

impl Bench {
    /// Everything before the first process starts: tools, binaries, configurations.
    fn prepare(s: Settings, started: Instant) -> Res<Bench> {
        let command = command_line();
        if fs::read_to_string("/proc/net/tcp").is_err() {
            return fatal("needs Linux: /proc/net/tcp is not readable");
        }
        // Every connection of the idle test costs a proxy two descriptors: use the whole
        // hard limit.
        let nofile = harness::raise_nofile();
        if nofile < 2 * s.idle_conns + 256 {
            note(format!(
                "the open-files limit ({nofile}) is low for {} idle connections through a proxy (needs about {}); the idle-memory run may fail",
                s.idle_conns,
                2 * s.idle_conns + 256
            ));
        }

        let run_dir = harness::run_dir();
        let bench_dir = run_dir.join("bench");
        let log_dir = bench_dir.join("logs");
        let conf_dir = bench_dir.join("conf");
        let nginx_dir = bench_dir.join("nginx");
        for dir in [&log_dir, &conf_dir, &nginx_dir] {
            if let Err(e) = fs::create_dir_all(dir) {
                return fatal(format!("cannot create {}: {e}", dir.display()));
            }
        }
        for entry in fs::read_dir(&log_dir).into_iter().flatten().flatten() {
            let _ = fs::remove_file(entry.path());
        }
        let results_path = bench_dir.join("results.tsv");
        let notes_path = bench_dir.join("notes.txt");
        harness::write(&results_path, "")?;
        harness::write(&notes_path, "")?;

        let base = s.base_port;
        for port in base..=base + 10 {
            if harness::listening(port) {
                return fatal(format!(
                    "127.0.0.1:{port} is in use; choose another range of eleven ports with BENCH_PORT"
                ));
            }
        }
        let ports = Ports {
            b1: base,
            b2: base + 1,
            iperf: base + 2,
        };

        let mut bench = Bench {
            ports,
            wrk: harness::find_program("wrk"),
            iperf: harness::find_program("iperf3"),
            haproxy: harness::find_program("haproxy"),
            nginx: harness::find_program("nginx"),
            ballast: PathBuf::new(),
            backend: PathBuf::new(),
            floor: PathBuf::new(),
            nginx_args: Vec::new(),
            systems: s.systems.clone(),
            log_dir,
            conf_dir,
            results_path,
            notes_path,
            report_path: run_dir.join("bench.md"),
            notes: Vec::new(),
            results: Vec::new(),
            versions: Versions::default(),
            command,
            started,
            backends: Vec::new(),
            iperf_server: None,
            s,
        };
        if bench.wrk.is_none() {
            bench.add_note(
                "wrk is not installed (Debian package: wrk): keep-alive, churn and scale are skipped",
            );
        }
        if bench.iperf.is_none() {
            bench.add_note("iperf3 is not installed (Debian package: iperf3): bulk is skipped");
        }
        if bench.wants(Sys::Haproxy) && bench.haproxy.is_none() {
            bench.skip(
                Sys::Haproxy,
                "HAProxy is skipped: not installed (Debian package: haproxy)",
            );
        }
        if bench.wants(Sys::Nginx) && bench.nginx.is_none() {
            bench.skip(
                Sys::Nginx,
                "nginx is skipped: not installed (Debian packages: nginx libnginx-mod-stream)",
            );
        }
        let nginx_load = if bench.wants(Sys::Nginx) {
            bench.nginx_stream_module()
        } else {
            String::new()
        };

        let bin_dir = harness::binaries(&[
            "--bin",
            "ballast",
            "--bin",
            "ballast-backend",
            "--example",
            "floor_relay",
        ])?;
        bench.ballast = bin_dir.join("ballast");
        bench.backend = bin_dir.join("ballast-backend");
        bench.floor = bin_dir.join("examples/floor_relay");
        if bench.wants(Sys::Floor) && !harness::is_executable(&bench.floor) {
            let message = format!(
                "floor is skipped: no {} (cargo build --release --example floor_relay)",
                bench.floor.display()
            );
            bench.skip(Sys::Floor, &message);
        }

        bench.write_configs(&nginx_dir, &nginx_load, nofile)?;
        if bench.systems.is_empty() {
            return fatal("nothing to run");
        }
        bench.read_versions();
        Ok(bench)
    }

    fn wants(&self, sys: Sys) -> bool {
        self.systems.contains(&sys)
    }

    /// Drops `sys` from the run with a note.
    fn skip(&mut self, sys: Sys, why: &str) {
        self.add_note(why);
        self.systems.retain(|&s| s != sys);
    }

    /// A remark for the report (and stderr).
    fn add_note(&mut self, text: impl Into<String>) {
        let text = text.into();
        note(&text);
        if let Ok(mut f) = fs::OpenOptions::new().append(true).open(&self.notes_path) {
            let _ = writeln!(f, "{text}");
        }
        self.notes.push(text);
    }

    /// nginx's stream module is built in (--with-stream), a dynamic module
    /// (--with-stream=dynamic, Debian: libnginx-mod-stream installs ngx_stream_module.so) or
    /// absent. Returns the `load_module` line it needs; skips nginx when there is none.
    fn nginx_stream_module(&mut self) -> String {
        let Some(nginx) = &self.nginx else {
            return String::new();
        };
        let flags = output_of(nginx, &["-V"]);
        let flags: Vec<&str> = flags.split_whitespace().collect();
        let modules = flags
            .iter()
            .find_map(|f| f.strip_prefix("--modules-path="))
            .unwrap_or("/usr/lib/nginx/modules")
            .to_string();
        let so = format!("{modules}/ngx_stream_module.so");
        let has_so = Path::new(&so).is_file();
        if flags.contains(&"--with-stream") {
            String::new()
        } else if flags.contains(&"--with-stream=dynamic") && !has_so {
            self.skip(
                Sys::Nginx,
                &format!(
                    "nginx is skipped: its stream module ({so}) is not installed (Debian package: libnginx-mod-stream)"
                ),
            );
            String::new()
        } else if has_so {
            format!("load_module {so};")
        } else {
            self.skip(
                Sys::Nginx,
                "nginx is skipped: it has no stream module (Debian package: libnginx-mod-stream)",
            );
            String::new()
        }
    }

    /// Writes and checks ballast's, HAProxy's and nginx's configurations.
    fn write_configs(&mut self, nginx_dir: &Path, nginx_load: &str, nofile: u64) -> Res<()> {
        let Ports { b1, b2, iperf } = self.ports;
        let extra = &self.s.ballast_extra;
        let (ballast_http, ballast_bulk) = self.ports.of(Sys::Ballast);
        let http = format!(
            "// Generated by scripts/bench.sh: ballast over the two benchmark backends.
(
    listen: \"127.0.0.1:{ballast_http}\",
    algorithm: RoundRobin,
    backends: [
        (name: \"b1\", addr: \"127.0.0.1:{b1}\"),
        (name: \"b2\", addr: \"127.0.0.1:{b2}\"),
    ],
    timeouts: (grace: \"2s\"),
    limits: (max_connections: 20000),
    {extra}
)
"
        );
        let bulk = format!(
            "// Generated by scripts/bench.sh: ballast in front of the iperf3 server. Health checks are
// an hour apart so that no probe reaches iperf3 (it would take it for a client).
(
    listen: \"127.0.0.1:{ballast_bulk}\",
    algorithm: RoundRobin,
    backends: [
        (name: \"iperf3\", addr: \"127.0.0.1:{iperf}\"),
    ],
    timeouts: (grace: \"2s\"),
    limits: (max_connections: 20000),
    health: (interval: \"1h\"),
    {extra}
)
"
        );
        for (name, text) in [("ballast-http", http), ("ballast-bulk", bulk)] {
            let path = self.conf_dir.join(format!("{name}.ron"));
            harness::write(&path, &text)?;
            if self.wants(Sys::Ballast) {
                let log = self.log_dir.join(format!("{name}-check.log"));
                let mut check = Command::new(&self.ballast);
                check.arg("--config").arg(&path).arg("--check");
                if !check_ok(check, &log)? {
                    eprint!("{}", harness::tail(&log, 20));
                    return fatal(format!("ballast rejects the generated {}", path.display()));
                }
            }
        }

        // Two descriptors per proxied connection, some to spare.
        let maxconn = (nofile.saturating_sub(200) / 2).min(20000);
        let (h_http, h_bulk) = self.ports.of(Sys::Haproxy);
        let haproxy_cfg = self.conf_dir.join("haproxy.cfg");
        harness::write(
            &haproxy_cfg,
            &format!(
                "# Generated by scripts/bench.sh: HAProxy in TCP mode over the same backends as ballast.
# No nbthread: HAProxy's default of one thread per CPU.
global
    maxconn {maxconn}

defaults
    mode tcp
    maxconn {maxconn}
    timeout connect 5s
    timeout client 10m
    timeout server 10m

frontend http
    bind 127.0.0.1:{h_http}
    default_backend http_backends

backend http_backends
    balance roundrobin
    server b1 127.0.0.1:{b1}
    server b2 127.0.0.1:{b2}

frontend bulk
    bind 127.0.0.1:{h_bulk}
    default_backend iperf3

backend iperf3
    balance roundrobin
    server iperf3 127.0.0.1:{iperf}
"
            ),
        )?;
        if self.wants(Sys::Haproxy)
            && let Some(haproxy) = self.haproxy.clone()
        {
            let log = self.log_dir.join("haproxy-check.log");
            let mut check = Command::new(haproxy);
            check.arg("-c").arg("-f").arg(&haproxy_cfg);
            if !check_ok(check, &log)? {
                eprint!("{}", harness::tail(&log, 20));
                let message = format!(
                    "HAProxy is skipped: it rejects the generated {}",
                    haproxy_cfg.display()
                );
                self.skip(Sys::Haproxy, &message);
            }
        }

        // nginx runs as the current user with everything under its own prefix. (As root the
        // workers would otherwise switch to `nobody`.)
        let user = match effective_ids() {
            Some((0, gid)) => format!(
                "user {} {};",
                name_of("/etc/passwd", 0).unwrap_or_else(|| "root".into()),
                name_of("/etc/group", gid).unwrap_or_else(|| "root".into())
            ),
            _ => String::new(),
        };
        let connections = nofile.saturating_sub(100).min(20000);
        let (n_http, n_bulk) = self.ports.of(Sys::Nginx);
        let dir = nginx_dir.display();
        let conf = nginx_dir.join("nginx.conf");
        harness::write(
            &conf,
            &format!(
                "# Generated by scripts/bench.sh: nginx stream (TCP) proxy over the same backends as ballast.
{nginx_load}
{user}
worker_processes auto;
worker_rlimit_nofile {nofile};
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections {connections};
}}

stream {{
    upstream http_backends {{
        server 127.0.0.1:{b1};
        server 127.0.0.1:{b2};
    }}
    server {{
        listen 127.0.0.1:{n_http};
        proxy_pass http_backends;
    }}

    upstream iperf3 {{
        server 127.0.0.1:{iperf};
    }}
    server {{
        listen 127.0.0.1:{n_bulk};
        proxy_pass iperf3;
    }}
}}
"
            ),
        )?;
        self.nginx_args = vec![
            "-p".into(),
            format!("{dir}/"),
            "-c".into(),
            conf.display().to_string(),
            "-e".into(),
            format!("{dir}/error.log"),
        ];
        if self.wants(Sys::Nginx)
            && let Some(nginx) = self.nginx.clone()
        {
            let log = self.log_dir.join("nginx-check.log");
            let mut check = Command::new(nginx);
            check.arg("-t").args(&self.nginx_args);
            if !check_ok(check, &log)? {
                eprint!("{}", harness::tail(&log, 20));
                let message = format!(
                    "nginx is skipped: it rejects the generated {}",
                    conf.display()
                );
                self.skip(Sys::Nginx, &message);
            }
        }
        Ok(())
    }

    /// Versions for the report.
    fn read_versions(&mut self) {
        let of = |program: &Option<PathBuf>, flag: &str, dots: (usize, usize)| {
            program.as_ref().map_or_else(String::new, |p| {
                first_version(&output_of(p, &[flag]), dots.0, dots.1, false)
            })
        };
        self.versions = Versions {
            ballast: first_version(&output_of(&self.ballast, &["--version"]), 1, 1, true),
            haproxy: of(&self.haproxy, "-v", (2, 2)),
            nginx: of(&self.nginx, "-v", (2, 2)),
            wrk: of(&self.wrk, "-v", (2, 2)),
            iperf: of(&self.iperf, "-v", (1, 2)),
        };
    }

    // --- backends ----------------------------------------------------------------------------

    fn start_servers(&mut self) -> Res<()> {
        for (i, port) in [(1, self.ports.b1), (2, self.ports.b2)] {
            let out = self.log_dir.join(format!("backend-b{i}.out"));
            let log = self.log_dir.join(format!("backend-b{i}.log"));
            let mut command = harness::command(&self.backend);
            command
                .args([
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--id",
                    &format!("b{i}"),
                ])
                .env("RUST_LOG", "warn")
                .stdout(harness::create(&out)?)
                .stderr(harness::create(&log)?);
            let what = format!("backend b{i} (127.0.0.1:{port})");
            let mut proc = harness::start(command, &what)?;
            let ready = harness::wait_for_line(
                &out,
                |l| l.starts_with("listening on "),
                &mut proc,
                self.s.ready_timeout,
            )?;
            self.backends.push(proc);
            match ready {
                Ready::Line(_) => {}
                Ready::Exited(_) => {
                    return harness::fail_showing_log(
                        format!("{what} exited before it was ready"),
                        &log,
                    );
                }
                Ready::TimedOut => {
                    return harness::fail_showing_log(
                        format!(
                            "{what} was not ready within {}s",
                            self.s.ready_timeout.as_secs()
                        ),
                        &log,
                    );
                }
            }
        }
        if self.iperf.is_some() && !self.ensure_iperf_server()? {
            return Err(Stop::Exit(1));
        }
        Ok(())
    }

    /// (Re)starts the iperf3 server when it is not running.
    fn ensure_iperf_server(&mut self) -> Res<bool> {
        let Some(iperf) = self.iperf.clone() else {
            return Ok(false);
        };
        let log = self.log_dir.join("iperf3-server.log");
        if let Some(server) = &mut self.iperf_server {
            if server.alive() {
                return Ok(true);
            }
            self.add_note(format!(
                "the iperf3 server had exited; restarted it (log: {})",
                log.display()
            ));
        }
        let port = self.ports.iperf;
        if !self.wait_port_free(port)? {
            return Ok(false);
        }
        let file = harness::append(&log)?;
        let mut command = harness::command(iperf);
        command
            .args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()])
            .stdout(file.try_clone().or_else(fatal)?)
            .stderr(file);
        let mut server = harness::start(command, "iperf3 -s")?;
        let ok = self.wait_listening(&mut server, &log, &[port])?;
        self.iperf_server = Some(server);
        Ok(ok)
    }

    /// Waits until nothing listens on `port` any more (a stopped proxy of the last round).
    fn wait_port_free(&self, port: u16) -> Res<bool> {
        let end = Instant::now() + self.s.ready_timeout;
        while harness::listening(port) {
            if Instant::now() >= end {
                note(format!(
                    "127.0.0.1:{port} is still in use after {}s",
                    self.s.ready_timeout.as_secs()
                ));
                return Ok(false);
            }
            pause(Duration::from_millis(100))?;
        }
        Ok(true)
    }

    /// Waits until `proc` listens on each of `ports`; says why not when it does not.
    fn wait_listening(&self, proc: &mut Proc, log: &Path, ports: &[u16]) -> Res<bool> {
        let end = Instant::now() + self.s.ready_timeout;
        for &port in ports {
            while !harness::listening(port) {
                let why = if !proc.alive() {
                    format!("{} exited before listening on 127.0.0.1:{port}", proc.what)
                } else if Instant::now() >= end {
                    format!(
                        "{} did not listen on 127.0.0.1:{port} within {}s",
                        proc.what,
                        self.s.ready_timeout.as_secs()
                    )
                } else {
                    pause(Duration::from_millis(50))?;
                    continue;
                };
                note(format!("{why}; its log ({}):", log.display()));
                eprint!("{}", harness::tail(log, 20));
                return Ok(false);
            }
        }
        Ok(true)
    }

    // --- systems -----------------------------------------------------------------------------

    /// Starts one process of a system with its output in `LOG`, and waits until it listens on
    /// `ports`.
    fn start_process(
        &self,
        run: &mut Running,
        mut command: Command,
        what: &str,
        log: &Path,
        ports: &[u16],
    ) -> Res<bool> {
        for &port in ports {
            if !self.wait_port_free(port)? {
                return Ok(false);
            }
        }
        let file = harness::create(log)?;
        command
            .stdout(file.try_clone().or_else(fatal)?)
            .stderr(file);
        let mut proc = harness::start(command, what)?;
        let ok = self.wait_listening(&mut proc, log, ports)?;
        run.procs.push(proc);
        Ok(ok)
    }

    fn start_system(&self, run: &mut Running) -> Res<bool> {
        let round = run.round;
        let (http, bulk) = (run.http, run.bulk);
        let log = |name: &str| self.log_dir.join(format!("r{round}-{name}.log"));
        match run.sys {
            Sys::Direct => {}
            Sys::Ballast => {
                // RUST_LOG=warn: at info ballast writes an access-log line per connection.
                // Readiness is then the listening socket (nothing is logged).
                for (name, port) in [("ballast-http", http), ("ballast-bulk", bulk)] {
                    let mut command = harness::command(&self.ballast);
                    command
                        .arg("--config")
                        .arg(self.conf_dir.join(format!("{name}.ron")))
                        .env("RUST_LOG", "warn");
                    let what = format!("ballast ({name})");
                    if !self.start_process(run, command, &what, &log(name), &[port])? {
                        return Ok(false);
                    }
                }
                run.mem = vec![run.procs[0].pid()];
            }
            Sys::Floor => {
                let backends = format!("127.0.0.1:{},127.0.0.1:{}", self.ports.b1, self.ports.b2);
                let bulk_backend = format!("127.0.0.1:{}", self.ports.iperf);
                for (name, port, to) in [
                    ("floor-http", http, backends),
                    ("floor-bulk", bulk, bulk_backend),
                ] {
                    let mut command = harness::command(&self.floor);
                    command.arg(format!("127.0.0.1:{port}")).arg(to);
                    if !self.start_process(run, command, "floor_relay", &log(name), &[port])? {
                        return Ok(false);
                    }
                }
                run.mem = vec![run.procs[0].pid()];
            }
            Sys::Haproxy => {
                let Some(haproxy) = &self.haproxy else {
                    return Ok(false);
                };
                let mut command = harness::command(haproxy);
                command
                    .arg("-f")
                    .arg(self.conf_dir.join("haproxy.cfg"))
                    .arg("-db");
                if !self.start_process(run, command, "haproxy", &log("haproxy"), &[http, bulk])? {
                    return Ok(false);
                }
                run.mem = vec![run.procs[0].pid()];
            }
            Sys::Nginx => {
                let Some(nginx) = &self.nginx else {
                    return Ok(false);
                };
                let mut command = harness::command(nginx);
                command.args(&self.nginx_args);
                if !self.start_process(run, command, "nginx", &log("nginx"), &[http, bulk])? {
                    return Ok(false);
                }
                run.mem = vec![run.procs[0].pid()];
            }
        }
        Ok(true)
    }

    /// True while every process of the system runs; notes it once otherwise.
    fn system_alive(&mut self, run: &mut Running) -> bool {
        let dead = run
            .procs
            .iter_mut()
            .find_map(|p| (!p.alive()).then(|| p.pid()));
        match dead {
            None => true,
            Some(pid) => {
                if !run.died_noted {
                    run.died_noted = true;
                    self.add_note(format!(
                        "round {}: {} (pid {pid}) exited during the run; logs in {}",
                        run.round,
                        run.sys.name(),
                        self.log_dir.display()
                    ));
                }
                false
            }
        }
    }

    fn record(&mut self, run: &Running, metric: &'static str, value: &str) {
        if let Ok(mut f) = fs::OpenOptions::new().append(true).open(&self.results_path) {
            let _ = writeln!(f, "{}\t{}\t{metric}\t{value}", run.round, run.sys.name());
        }
        if let Ok(v) = value.parse::<f64>() {
            self.results.push((run.round, run.sys, metric, v));
        }
    }

    fn run_system(&mut self, round: u64, sys: Sys) -> Res<()> {
        let (http, bulk) = self.ports.of(sys);
        let mut run = Running {
            sys,
            round,
            procs: Vec::new(),
            mem: Vec::new(),
            http,
            bulk,
            died_noted: false,
        };
        let name = sys.name();
        if !self.start_system(&mut run)? {
            self.add_note(format!(
                "round {round}: {name} did not start; logs in {}",
                self.log_dir.display()
            ));
            harness::stop_all(&mut run.procs, false);
            return Ok(());
        }
        if sys != Sys::Direct {
            let roots: Vec<u32> = run.procs.iter().map(Proc::pid).collect();
            let pids: String = harness::tree_pids(&roots)
                .iter()
                .map(|p| format!("{p} "))
                .collect();
            let threads = harness::status_field(run.mem[0], "Threads")
                .map_or("?".to_string(), |t| t.to_string());
            note(format!(
                "round {round}: {name} running (pids: {pids}threads of the main process: {threads})"
            ));
        }
        // Warm-up, which also checks the path works.
        let warm = if self.wrk.is_some() && self.s.warmup > 0 {
            let (conns, secs) = (self.s.conns, self.s.warmup);
            self.run_wrk(&run, "warmup", conns, secs, &[])?
                .is_some_and(|w| w.errors == 0)
        } else {
            let n = self.s.conns as usize;
            match open_idle(run.http, n, Duration::from_secs(30))? {
                Ok(conns) => {
                    drop(conns);
                    true
                }
                Err(e) => {
                    let out = self.log_dir.join(format!("r{round}-{name}-warmup.out"));
                    harness::write(&out, &format!("{e}\n"))?;
                    false
                }
            }
        };
        if !warm {
            self.add_note(format!(
                "round {round}: {name}: the warm-up failed; skipping it this round (logs in {})",
                self.log_dir.display()
            ));
            harness::stop_all(&mut run.procs, false);
            return Ok(());
        }
        if sys != Sys::Direct {
            self.measure_idle(&mut run)?;
        }
        if self.wrk.is_some() {
            let (conns, scale) = (self.s.conns, self.s.scale_conns);
            self.measure_http(&mut run, "keepalive", conns, &[])?;
            self.measure_http(&mut run, "churn", conns, &["-H", "Connection: close"])?;
            self.measure_http(&mut run, "scale", scale, &[])?;
        }
        if self.iperf.is_some() {
            self.measure_bulk(&mut run)?;
        }
        self.system_alive(&mut run);
        harness::stop_all(&mut run.procs, false);
        Ok(())
    }

    /// Runs `program ARGS` with its output in `out`, killed after `limit`; its exit status
    /// (124 when it had to be killed, as with GNU timeout).
    fn run_bounded(
        &self,
        program: &Path,
        args: &[String],
        out: &Path,
        limit: Duration,
    ) -> Res<i32> {
        let file = harness::create(out)?;
        let mut command = harness::command(program);
        command
            .args(args)
            .stdout(file.try_clone().or_else(fatal)?)
            .stderr(file);
        let what = program
            .file_name()
            .map_or("tool".into(), |n| n.to_string_lossy().into_owned());
        let mut proc = harness::start(command, what)?;
        match proc.wait_exit(limit)? {
            Some(status) => Ok(harness::status_code(status)),
            None => {
                harness::stop(&mut [&mut proc], false);
                Ok(124)
            }
        }
    }

    /// Runs wrk against the system's HTTP port; `None` (noted) when it fails.
    fn run_wrk(
        &mut self,
        run: &Running,
        name: &str,
        conns: u64,
        secs: u64,
        extra: &[&str],
    ) -> Res<Option<Wrk>> {
        let Some(wrk) = self.wrk.clone() else {
            return Ok(None);
        };
        let (round, sys) = (run.round, run.sys.name());
        let out = self.log_dir.join(format!("r{round}-{sys}-{name}.wrk"));
        let mut args = vec![
            format!("-t{}", self.s.threads),
            format!("-c{conns}"),
            format!("-d{secs}s"),
            "--latency".to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        args.push(format!("http://127.0.0.1:{}/", run.http));
        let status = self.run_bounded(&wrk, &args, &out, Duration::from_secs(secs + 30))?;
        let out_name = out.display();
        if status != 0 {
            self.add_note(format!(
                "round {round}: {sys} {name}: wrk failed (status {status}; output: {out_name})"
            ));
            return Ok(None);
        }
        let Some(result) = parse_wrk(&fs::read_to_string(&out).unwrap_or_default()) else {
            self.add_note(format!(
                "round {round}: {sys} {name}: cannot read wrk's output ({out_name})"
            ));
            return Ok(None);
        };
        if result.requests == 0 {
            self.add_note(format!(
                "round {round}: {sys} {name}: no request completed ({out_name})"
            ));
            return Ok(None);
        }
        if result.errors * 100 > result.requests {
            self.add_note(format!(
                "round {round}: {sys} {name}: {} errors for {} requests ({out_name})",
                result.errors, result.requests
            ));
        }
        Ok(Some(result))
    }

    fn measure_http(
        &mut self,
        run: &mut Running,
        name: &str,
        conns: u64,
        extra: &[&str],
    ) -> Res<()> {
        if !self.system_alive(run) {
            return Ok(());
        }
        let Some(w) = self.run_wrk(run, name, conns, self.s.secs, extra)? else {
            return Ok(());
        };
        let (round, sys) = (run.round, run.sys.name());
        let p99 = format!("{:.3}", w.p99_ms);
        match name {
            "keepalive" => {
                self.record(run, "ka_rps", &w.rps);
                self.record(run, "ka_p99_ms", &p99);
                note(format!(
                    "round {round}: {sys} keep-alive: {} req/s, p99 {p99} ms",
                    w.rps
                ));
            }
            "churn" => {
                self.record(run, "churn_rps", &w.rps);
                note(format!("round {round}: {sys} churn: {} req/s", w.rps));
            }
            _ => {
                self.record(run, "scale_rps", &w.rps);
                note(format!(
                    "round {round}: {sys} {conns} connections: {} req/s, p99 {p99} ms",
                    w.rps
                ));
            }
        }
        pause(Duration::from_millis(500))
    }

    fn measure_bulk(&mut self, run: &mut Running) -> Res<()> {
        if !self.system_alive(run) || !self.ensure_iperf_server()? {
            return Ok(());
        }
        let Some(iperf) = self.iperf.clone() else {
            return Ok(());
        };
        let (round, sys) = (run.round, run.sys.name());
        let out = self.log_dir.join(format!("r{round}-{sys}-bulk.json"));
        let secs = self.s.secs;
        let args: Vec<String> = [
            "-c",
            "127.0.0.1",
            "-p",
            &run.bulk.to_string(),
            "-t",
            &secs.to_string(),
            "-J",
        ]
        .map(String::from)
        .to_vec();
        let status = self.run_bounded(&iperf, &args, &out, Duration::from_secs(secs + 30))?;
        match parse_iperf(&fs::read_to_string(&out).unwrap_or_default()) {
            Ok(mbps) if status == 0 => {
                self.record(run, "bulk_mbps", &mbps);
                note(format!("round {round}: {sys} bulk: {mbps} MB/s"));
            }
            result => {
                let why = result.err().unwrap_or_default();
                let why: String = why.chars().take(200).collect();
                self.add_note(format!(
                    "round {round}: {sys} bulk: iperf3 failed (status {status}: {why}; output: {})",
                    out.display()
                ));
            }
        }
        // iperf3 -s takes a moment to accept the next test.
        pause(Duration::from_secs(1))
    }

    /// Memory per idle connection: the proxy's RSS before, and while the idle connections,
    /// each having had one response, are held open.
    fn measure_idle(&mut self, run: &mut Running) -> Res<()> {
        if !self.system_alive(run) {
            return Ok(());
        }
        let (round, sys, n) = (run.round, run.sys.name(), self.s.idle_conns);
        pause(Duration::from_secs(1))?;
        let (before, procs_before) = harness::tree_rss(&run.mem);
        let limit = Duration::from_secs(n / 50 + 30);
        let conns = match open_idle(run.http, n as usize, limit)? {
            Ok(conns) => conns,
            Err(e) => {
                self.add_note(format!(
                    "round {round}: {sys} idle: could not open {n} connections: {e}"
                ));
                return Ok(());
            }
        };
        // Let the proxy settle (buffers released after the responses) before reading RSS.
        pause(Duration::from_secs(1))?;
        let (after, procs) = harness::tree_rss(&run.mem);
        let lost = conns.iter().filter(|c| closed_by_peer(c)).count();
        drop(conns);
        if procs == 0 || procs_before == 0 {
            self.add_note(format!(
                "round {round}: {sys} idle: could not read the proxy's memory (/proc/{}/status); not recorded",
                run.mem[0]
            ));
            return Ok(());
        }
        if lost != 0 {
            self.add_note(format!(
                "round {round}: {sys} idle: connections did not stay open (closed held {n} lost {lost}); not recorded"
            ));
            return Ok(());
        }
        let kib = format!("{:.2}", (after as f64 - before as f64) / n as f64);
        self.record(run, "idle_kib", &kib);
        note(format!(
            "round {round}: {sys} idle: RSS {before} KiB -> {after} KiB over {procs} process(es) with {n} connections: {kib} KiB/connection"
        ));
        if procs != procs_before {
            self.add_note(format!(
                "round {round}: {sys} idle: process count changed from {procs_before} to {procs} during the measurement"
            ));
        }
        pause(Duration::from_millis(500))
    }

    // --- report ------------------------------------------------------------------------------

    fn report(&mut self) -> Res<()> {
        let elapsed = self.started.elapsed().as_secs();
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim_end() == "model name").then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default().trim().to_string();
        let kernel = format!(
            "{} {}",
            read("/proc/sys/kernel/ostype"),
            read("/proc/sys/kernel/osrelease")
        );
        let distro = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default();
        let input = ReportInput {
            systems: &self.systems,
            runs: self.s.runs,
            secs: self.s.secs,
            conns: self.s.conns,
            scale_conns: self.s.scale_conns,
            idle_conns: self.s.idle_conns,
            threads: self.s.threads,
            have_wrk: self.wrk.is_some(),
            have_iperf: self.iperf.is_some(),
            versions: &self.versions,
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            kernel,
            distro,
            command: &self.command,
            elapsed,
            date: harness::utc_now(),
            results: &self.results,
            notes: &self.notes,
        };
        let text = render_report(&input);
        harness::write(&self.report_path, &text)?;
        print!("{text}");
        let _ = std::io::stdout().flush();
        note(format!(
            "report written to {} (took {elapsed}s)",
            self.report_path.display()
        ));
        Ok(())
    }
}

/// Runs a configuration check with its output in `log`; true when it passes.
fn check_ok(mut command: Command, log: &Path) -> Res<bool> {
    let file = harness::create(log)?;
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone().or_else(fatal)?)
        .stderr(file);
    Ok(command.status().is_ok_and(|s| s.success()))
}

/// What `program ARGS` prints on stdout and stderr (empty when it cannot run).
fn output_of(program: &Path, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_default()
}

/// This process's effective user and group ids.
fn effective_ids() -> Option<(u32, u32)> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let effective = |key: &str| -> Option<u32> {
        let ids = status.lines().find_map(|l| l.strip_prefix(key))?;
        ids.split_whitespace().nth(1)?.parse().ok()
    };
    Some((effective("Uid:")?, effective("Gid:")?))
}

/// The name of `id` in /etc/passwd or /etc/group (`name:x:id:...`).
fn name_of(file: &str, id: u32) -> Option<String> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut fields = l.split(':');
        let name = fields.next()?;
        (fields.nth(1)? == id.to_string()).then(|| name.to_string())
    })
}

/// The first `N.N...` in `text` with `min..=max` dots; with `rest`, followed by whatever
/// non-blank characters come after it (as `grep -o '[0-9]+\.[0-9]+[^ ]*'` would).
fn first_version(text: &str, min_dots: usize, max_dots: usize, rest: bool) -> String {
    for line in text.lines() {
        let b = line.as_bytes();
        for start in 0..b.len() {
            if !b[start].is_ascii_digit() {
                continue;
            }
            let mut end = start;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            let mut dots = 0;
            while dots < max_dots
                && end + 1 < b.len()
                && b[end] == b'.'
                && b[end + 1].is_ascii_digit()
            {
                end += 1;
                while end < b.len() && b[end].is_ascii_digit() {
                    end += 1;
                }
                dots += 1;
            }
            if dots < min_dots {
                continue;
            }
            if rest {
                while end < b.len() && b[end] != b' ' {
                    end += 1;
                }
            }
            return line[start..end].to_string();
        }
    }
    String::new()
}

// --- wrk and iperf3 output -------------------------------------------------------------------

/// What a wrk run reported.
#[derive(Debug, PartialEq)]
struct Wrk {
    /// Requests/sec as wrk printed it.
    rps: String,
    p99_ms: f64,
    requests: u64,
    /// Socket errors and non-2xx/3xx replies.
    errors: u64,
}

fn parse_wrk(text: &str) -> Option<Wrk> {
    let (mut rps, mut p99, mut requests, mut errors) = (None, None, None, 0);
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rps = rest.split_whitespace().next().map(str::to_string);
        } else if line.starts_with([' ', '\t'])
            && fields.first().is_some_and(|f| {
                f.strip_suffix('%').is_some_and(|p| {
                    p == "99"
                        || p.strip_prefix("99.")
                            .is_some_and(|z| !z.is_empty() && z.bytes().all(|c| c == b'0'))
                })
            })
        {
            let value = fields.get(1).copied().unwrap_or_default();
            let split = value
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(value.len());
            let factor = match &value[split..] {
                "us" => 0.001,
                "ms" => 1.0,
                "s" => 1000.0,
                "m" => 60_000.0,
                "h" => 3_600_000.0,
                _ => continue,
            };
            if let Ok(v) = value[..split].parse::<f64>() {
                p99 = Some(v * factor);
            }
        } else if line.contains(" requests in ") {
            requests = fields.first().and_then(|f| f.parse().ok());
        } else if line.contains("Socket errors:") {
            let cleaned = line.replace(',', "");
            let f: Vec<&str> = cleaned.split_whitespace().collect();
            errors += [3, 5, 7, 9]
                .iter()
                .filter_map(|&i| f.get(i)?.parse::<u64>().ok())
                .sum::<u64>();
        } else if line.contains("Non-2xx or 3xx responses:") {
            errors += fields
                .last()
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Some(Wrk {
        rps: rps?,
        p99_ms: p99?,
        requests: requests?,
        errors,
    })
}

/// MB/s received (10^6 bytes/s, one decimal) from `iperf3 -J`, or why there is none.
fn parse_iperf(text: &str) -> Result<String, String> {
    let data: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("no JSON: {e}"))?;
    if let Some(error) = data.get("error").filter(|e| !e.is_null()) {
        return Err(error
            .as_str()
            .map_or_else(|| error.to_string(), str::to_string));
    }
    data.pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .map(|bps| format!("{:.1}", bps / 8e6))
        .ok_or_else(|| "no end.sum_received in the output".to_string())
}

// --- idle connections ------------------------------------------------------------------------

/// Connections being set up at once, so that a listen backlog never overflows.
const IDLE_CONCURRENCY: usize = 200;

/// Opens `n` keep-alive connections to 127.0.0.1:`port`, does `GET /` on each and reads the
/// whole response (Content-Length framing); returns them open, or why it could not within
/// `limit`.
fn open_idle(port: u16, n: usize, limit: Duration) -> Res<Result<Vec<TcpStream>, String>> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fatal(format!("cannot start a tokio runtime: {e}")),
    };
    runtime.block_on(async move {
        let gate = Arc::new(tokio::sync::Semaphore::new(IDLE_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let gate = Arc::clone(&gate);
            tasks.spawn(async move {
                let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
                open_one(port).await
            });
        }
        let deadline = tokio::time::Instant::now() + limit;
        let mut open = Vec::with_capacity(n);
        let mut failed = 0;
        let mut first = None;
        let mut timed_out = false;
        loop {
            interrupted()?;
            tokio::select! {
                next = tasks.join_next() => match next {
                    None => break,
                    Some(Ok(Ok(stream))) => open.push(stream),
                    Some(Ok(Err(e))) => {
                        failed += 1;
                        first.get_or_insert(e);
                    }
                    Some(Err(e)) => {
                        failed += 1;
                        first.get_or_insert(e.to_string());
                    }
                },
                () = tokio::time::sleep_until(deadline) => {
                    timed_out = true;
                    break;
                }
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        let pending = tasks.len();
        let mut why = Vec::new();
        if failed > 0 {
            why.push(format!(
                "{failed} of {n} connections to 127.0.0.1:{port} failed; first: {}",
                first.unwrap_or_default()
            ));
        }
        if timed_out && pending > 0 {
            why.push(format!(
                "{pending} of {n} connections were not set up within {}s",
                limit.as_secs()
            ));
        }
        Ok(if why.is_empty() {
            Ok(open)
        } else {
            Err(why.join("; "))
        })
    })
}

async fn open_one(port: u16) -> Result<TcpStream, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request =
        format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: ballast-bench\r\n\r\n");
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err("response head over 64 KiB".into());
        }
        match s.read_buf(&mut buf).await {
            Ok(0) => return Err("closed before a whole response".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    };
    let length = response_length(&String::from_utf8_lossy(&buf[..head_end]))?;
    let mut have = buf.len() - head_end;
    let mut chunk = [0u8; 4096];
    while have < length {
        match s.read(&mut chunk).await {
            Ok(0) => return Err("closed before a whole response".into()),
            Ok(k) => have += k,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    s.into_std().map_err(|e| e.to_string())
}

/// The body length of a keep-alive response head, or why it is not one.
fn response_length(head: &str) -> Result<usize, String> {
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    let (version, code) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if !version.starts_with("HTTP/1.")
        || code.is_empty()
        || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("bad status line {status:?}"));
    }
    let mut length = None;
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => {
                length = Some(
                    value
                        .parse()
                        .map_err(|_| format!("bad Content-Length {value:?}"))?,
                );
            }
            "transfer-encoding" => return Err("chunked responses are not supported".into()),
            "connection" if value.eq_ignore_ascii_case("close") => {
                return Err("the server closes the connection (Connection: close)".into());
            }
            _ => {}
        }
    }
    length.ok_or_else(|| "response without Content-Length".to_string())
}

/// True when the peer has closed `stream` (it is non-blocking: nothing to read is fine).
fn closed_by_peer(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

// --- the report ------------------------------------------------------------------------------

struct ReportInput<'a> {
    systems: &'a [Sys],
    runs: u64,
    secs: u64,
    conns: u64,
    scale_conns: u64,
    idle_conns: u64,
    threads: u64,
    have_wrk: bool,
    have_iperf: bool,
    versions: &'a Versions,
    nproc: usize,
    cpu: String,
    kernel: String,
    distro: String,
    command: &'a str,
    elapsed: u64,
    date: String,
    results: &'a [Sample],
    notes: &'a [String],
}

/// What a column needs to have been measured at all.
#[derive(Clone, Copy, PartialEq)]
enum Needs {
    Wrk,
    Iperf,
    Nothing,
}

struct Column {
    key: &'static str,
    header: String,
    higher_is_better: bool,
    format: fn(f64) -> String,
    needs: Needs,
}

fn column(
    key: &'static str,
    header: &str,
    higher_is_better: bool,
    format: fn(f64) -> String,
    needs: Needs,
) -> Column {
    let header = header.to_string();
    Column {
        key,
        header,
        higher_is_better,
        format,
        needs,
    }
}

fn fixed1(v: f64) -> String {
    format!("{v:.1}")
}

fn fixed2(v: f64) -> String {
    format!("{v:.2}")
}

/// `1234567.4` as `1,234,567`.
fn thousands(v: f64) -> String {
    let s = format!("{v:.0}");
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn render_report(r: &ReportInput) -> String {
    // system -> metric -> round -> value (a round's later value wins).
    let mut data: BTreeMap<Sys, BTreeMap<&str, BTreeMap<u64, f64>>> = BTreeMap::new();
    for &(round, sys, metric, v) in r.results {
        data.entry(sys)
            .or_default()
            .entry(metric)
            .or_default()
            .insert(round, v);
    }
    for metrics in data.values_mut() {
        let ka = metrics.get("ka_rps").cloned().unwrap_or_default();
        let scale: BTreeMap<u64, f64> = metrics
            .get("scale_rps")
            .into_iter()
            .flatten()
            .filter_map(|(round, sc)| {
                ka.get(round)
                    .filter(|&&k| k != 0.0)
                    .map(|k| (*round, sc / k))
            })
            .collect();
        metrics.insert("scale", scale);
    }
    let scale = format!("Scale {}/{}", r.scale_conns, r.conns);
    let columns = [
        column("ka_rps", "Keep-alive req/s", true, thousands, Needs::Wrk),
        column("ka_p99_ms", "Keep-alive p99 ms", false, fixed2, Needs::Wrk),
        column("churn_rps", "Churn req/s", true, thousands, Needs::Wrk),
        column("bulk_mbps", "Bulk MB/s", true, thousands, Needs::Iperf),
        column("idle_kib", "Idle KiB/conn", false, fixed1, Needs::Nothing),
        column("scale", &scale, true, fixed2, Needs::Wrk),
    ];
    let have = |needs: Needs| match needs {
        Needs::Wrk => r.have_wrk,
        Needs::Iperf => r.have_iperf,
        Needs::Nothing => true,
    };

    let mut medians: BTreeMap<(Sys, &str), f64> = BTreeMap::new();
    let mut partial = Vec::new();
    for &sys in r.systems {
        for c in &columns {
            let values: Vec<f64> = data
                .get(&sys)
                .and_then(|m| m.get(c.key))
                .map(|by_round| by_round.values().copied().collect())
                .unwrap_or_default();
            if values.is_empty() {
                continue;
            }
            if (values.len() as u64) < r.runs {
                partial.push(format!(
                    "{} {}: median of {} of {} runs",
                    sys.name(),
                    c.header,
                    values.len(),
                    r.runs
                ));
            }
            medians.insert((sys, c.key), median(values));
        }
    }

    let peers: Vec<Sys> = [Sys::Haproxy, Sys::Nginx]
        .into_iter()
        .filter(|p| r.systems.contains(p))
        .collect();
    let best = |c: &Column| {
        let values = peers
            .iter()
            .filter_map(|&p| medians.get(&(p, c.key)).copied());
        if c.higher_is_better {
            values.reduce(f64::max)
        } else {
            values.reduce(f64::min)
        }
    };
    let label = |sys: Sys| {
        let with = |name: &str, v: &str| format!("{name} {v}").trim().to_string();
        match sys {
            Sys::Direct => "direct (no proxy)".to_string(),
            Sys::Floor => "floor (bare epoll relay)".to_string(),
            Sys::Ballast => with("ballast", &r.versions.ballast),
            Sys::Haproxy => with("HAProxy", &r.versions.haproxy),
            Sys::Nginx => with("nginx", &r.versions.nginx),
        }
    };

    let mut out = Vec::new();
    out.push(format!(
        "Medians of {} run{}, systems interleaved in each round, {} s per wrk or iperf3 run.",
        r.runs,
        if r.runs == 1 { "" } else { "s" },
        r.secs
    ));
    out.push(String::new());
    let headers: Vec<&str> = columns.iter().map(|c| c.header.as_str()).collect();
    out.push(format!("| System | {} |", headers.join(" | ")));
    out.push(format!("|---|{}", "---:|".repeat(columns.len())));
    for &sys in r.systems {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| {
                if (sys == Sys::Direct && c.key == "idle_kib") || !have(c.needs) {
                    return "n/a".to_string();
                }
                let Some(&v) = medians.get(&(sys, c.key)) else {
                    return "failed".to_string();
                };
                let mut cell = (c.format)(v);
                if let Some(b) = best(c).filter(|&b| b > 0.0 && v >= 0.0) {
                    let _ = write!(cell, " ({:.2}x)", v / b);
                }
                cell
            })
            .collect();
        out.push(format!("| {} | {} |", label(sys), cells.join(" | ")));
    }
    out.push(String::new());
    if peers.is_empty() {
        out.push("No ratios: neither HAProxy nor nginx ran.".to_string());
    } else {
        let base: Vec<&str> = peers
            .iter()
            .map(|p| {
                if *p == Sys::Haproxy {
                    "HAProxy"
                } else {
                    "nginx"
                }
            })
            .collect();
        out.push(format!(
            "(N.NNx) is the ratio to the best of {}: higher is better for req/s, MB/s and scale, lower for p99 and KiB/conn.",
            base.join(" and ")
        ));
    }
    let (secs, conns, threads) = (r.secs, r.conns, r.threads);
    out.push(format!(
        "Keep-alive: `wrk -t{threads} -c{conns} -d{secs}s --latency` on GET / (a 196-byte page); \
churn: the same with `-H 'Connection: close'`; bulk: `iperf3 -c -t {secs}` (one TCP stream) to \
`iperf3 -s`, received MB/s (10^6 bytes/s); idle: growth of the proxy's resident memory (VmRSS \
of all its processes) with {} open connections that have each had one request, per connection; \
scale: keep-alive req/s at {} connections / at {conns}. Proxies round-robin over two \
`ballast-backend` servers on the same machine (direct: wrk to the first one, iperf3 straight to \
the server); HAProxy `mode tcp` with its default threads, nginx `stream` with `worker_processes \
auto`, ballast with its default of one worker thread per CPU and RUST_LOG=warn, floor \
(`scripts/floor_relay.rs`: the leanest relay we can write, one level-triggered epoll loop per CPU \
and nothing else) with one thread per CPU too; no proxy logs connections.",
        r.idle_conns, r.scale_conns
    ));
    let tools: Vec<String> = [("wrk", &r.versions.wrk), ("iperf3", &r.versions.iperf)]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(name, v)| format!("{name} {v}"))
        .collect();
    let distro = if r.distro.is_empty() {
        String::new()
    } else {
        format!(", {}", r.distro)
    };
    let tools = if tools.is_empty() {
        String::new()
    } else {
        format!("; {}", tools.join(", "))
    };
    out.push(String::new());
    out.push(format!(
        "Machine: {} CPUs ({}), {}{distro}{tools}.",
        r.nproc, r.cpu, r.kernel
    ));
    out.push(format!(
        "Command: `{}` ({}, took {}m{:02}s).",
        r.command,
        r.date,
        r.elapsed / 60,
        r.elapsed % 60
    ));
    let notes: Vec<&String> = r
        .notes
        .iter()
        .filter(|n| !n.trim().is_empty())
        .chain(partial.iter())
        .collect();
    if !notes.is_empty() {
        out.push(String::new());
        out.push("Notes:".to_string());
        out.extend(notes.iter().map(|n| format!("- {}", n.trim())));
    }
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUTPUT: &str = "\
Running 5s test @ http://127.0.0.1:18103/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms  500.00us   9.00ms   80.00%
    Req/Sec    30.00k     2.00k   35.00k    70.00%
  Latency Distribution
     50%    1.00ms
     75%    1.20ms
     90%    1.50ms
     99%  850.00us
  300000 requests in 5.00s, 80.00MB read
  Socket errors: connect 0, read 3, write 1, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:  60000.12
Transfer/sec:     16.00MB
";

    #[test]
    fn reads_wrk_totals() {
        assert_eq!(
            parse_wrk(WRK_OUTPUT),
            Some(Wrk {
                rps: "60000.12".into(),
                p99_ms: 0.85,
                requests: 300_000,
                errors: 10,
            })
        );
        let seconds = WRK_OUTPUT.replace("850.00us", "1.50s");
        assert_eq!(parse_wrk(&seconds).map(|w| w.p99_ms), Some(1500.0));
        assert_eq!(parse_wrk("unable to connect to 127.0.0.1:1"), None);
    }

    #[test]
    fn reads_iperf_json() {
        let ok = r#"{"end": {"sum_received": {"bits_per_second": 17440000000.0}}}"#;
        assert_eq!(parse_iperf(ok), Ok("2180.0".into()));
        let failed = r#"{"start": {}, "error": "unable to connect to server"}"#;
        assert_eq!(
            parse_iperf(failed),
            Err("unable to connect to server".into())
        );
        assert!(parse_iperf("").unwrap_err().starts_with("no JSON"));
    }

    #[test]
    fn finds_versions_like_grep() {
        let wrk = "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer";
        assert_eq!(first_version(wrk, 2, 2, false), "4.1.0");
        assert_eq!(
            first_version("iperf 3.12 (cJSON 1.7.15)", 1, 2, false),
            "3.12"
        );
        assert_eq!(
            first_version("ballast 0.1.0-dev extra\n", 1, 1, true),
            "0.1.0-dev"
        );
        assert_eq!(
            first_version("HAProxy version 2.6.12-1+deb12u4 2026/10/17", 2, 2, false),
            "2.6.12"
        );
        assert_eq!(first_version("no version", 1, 2, false), "");
    }

    #[test]
    fn response_heads() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 196\r\nContent-Type: text/html\r\n\r\n";
        assert_eq!(response_length(ok), Ok(196));
        assert!(
            response_length("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n")
                .is_err()
        );
        assert!(response_length("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(response_length("SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn numbers_as_the_table_shows_them() {
        assert_eq!(thousands(61_920.4), "61,920");
        assert_eq!(thousands(999.6), "1,000");
        assert_eq!(thousands(12.0), "12");
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn report_has_medians_ratios_and_notes() {
        let mut results = Vec::new();
        for (round, scale) in [(1, 1.0), (2, 1.0), (3, 2.0)] {
            for (sys, ka) in [
                (Sys::Ballast, 60_000.0),
                (Sys::Haproxy, 50_000.0),
                (Sys::Nginx, 40_000.0),
            ] {
                results.push((round, sys, "ka_rps", ka * scale));
                results.push((round, sys, "scale_rps", ka * scale * 0.8));
                results.push((round, sys, "ka_p99_ms", 2.0));
                results.push((round, sys, "churn_rps", 10_000.0));
                results.push((round, sys, "bulk_mbps", 1000.0));
            }
            results.push((round, Sys::Direct, "ka_rps", 100_000.0));
        }
        results.push((1, Sys::Ballast, "idle_kib", 1.5));
        results.push((1, Sys::Haproxy, "idle_kib", 3.0));
        let versions = Versions {
            ballast: "0.1.0".into(),
            haproxy: "2.6.12".into(),
            wrk: "4.1.0".into(),
            ..Versions::default()
        };
        let notes = vec!["nginx: something".to_string()];
        let text = render_report(&ReportInput {
            systems: &[Sys::Direct, Sys::Ballast, Sys::Haproxy, Sys::Nginx],
            runs: 3,
            secs: 5,
            conns: 64,
            scale_conns: 1000,
            idle_conns: 4000,
            threads: 2,
            have_wrk: true,
            have_iperf: false,
            versions: &versions,
            nproc: 2,
            cpu: "AMD EPYC".into(),
            kernel: "Linux 6.1".into(),
            distro: "Debian GNU/Linux 12 (bookworm)".into(),
            command: "scripts/bench.sh",
            elapsed: 413,
            date: "2026-11-29 05:25 UTC".into(),
            results: &results,
            notes: &notes,
        });
        let expected = "\
Medians of 3 runs, systems interleaved in each round, 5 s per wrk or iperf3 run.

| System | Keep-alive req/s | Keep-alive p99 ms | Churn req/s | Bulk MB/s | Idle KiB/conn | Scale 1000/64 |
|---|---:|---:|---:|---:|---:|---:|
| direct (no proxy) | 100,000 (2.00x) | failed | failed | n/a | n/a | failed |
| ballast 0.1.0 | 60,000 (1.20x) | 2.00 (1.00x) | 10,000 (1.00x) | n/a | 1.5 (0.50x) | 0.80 (1.00x) |
| HAProxy 2.6.12 | 50,000 (1.00x) | 2.00 (1.00x) | 10,000 (1.00x) | n/a | 3.0 (1.00x) | 0.80 (1.00x) |
| nginx | 40,000 (0.80x) | 2.00 (1.00x) | 10,000 (1.00x) | n/a | failed | 0.80 (1.00x) |

(N.NNx) is the ratio to the best of HAProxy and nginx: higher is better for req/s, MB/s and scale, lower for p99 and KiB/conn.
";
        assert!(text.starts_with(expected), "{text}");
        assert!(text.contains("\nMachine: 2 CPUs (AMD EPYC), Linux 6.1, Debian GNU/Linux 12 (bookworm); wrk 4.1.0.\n"), "{text}");
        assert!(
            text.contains("\nCommand: `scripts/bench.sh` (2026-11-29 05:25 UTC, took 6m53s).\n"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "\nNotes:\n- nginx: something\n- ballast Idle KiB/conn: median of 1 of 3 runs\n- haproxy Idle KiB/conn: median of 1 of 3 runs\n"
            ),
            "{text}"
        );
    }
}
