//! What the benchmark and soak harnesses share (`scripts/bench.rs` and `scripts/soak.rs`, run
//! by `scripts/bench.sh` and `scripts/soak.sh`; each includes this file with `#[path]`):
//! messages and exit statuses, settings from the environment, the binaries under test, child
//! processes that cannot outlive the harness, signals, and readings from /proc. Linux only.
//! Every wait here is bounded and polls a real condition (a line, a socket, an exit).

#![allow(dead_code)] // each harness uses its own subset

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// The checkout the harness was built from.
pub(crate) const REPO_ROOT: &str = env!("CARGO_MANIFEST_DIR");

// --- messages and exits ----------------------------------------------------------------------

static NAME: OnceLock<&'static str> = OnceLock::new();

/// The name messages start with, such as `bench.sh`: the entry point the user ran.
pub(crate) fn name() -> &'static str {
    NAME.get().copied().unwrap_or("harness")
}

/// A progress or error message on stderr, `NAME: MESSAGE`.
pub(crate) fn note(message: impl Display) {
    eprintln!("{}: {message}", name());
}

/// Why a harness stops before its normal end.
#[derive(Debug)]
pub(crate) enum Stop {
    /// Bad usage: the message and the (short) usage, then exit status 2.
    Usage(String),
    /// A signal asked it to stop: exit status 128 + the signal's number.
    Signal(i32),
    /// Exit with this status, everything already said.
    Exit(u8),
}

pub(crate) type Res<T> = Result<T, Stop>;

/// Says `message` and stops with exit status 1 (said at once, so before the processes
/// stop, as a shell script's `die` would).
pub(crate) fn fatal<T>(message: impl Display) -> Res<T> {
    note(message);
    Err(Stop::Exit(1))
}

/// `Err(Stop::Usage(message))`.
pub(crate) fn usage_error<T>(message: impl Display) -> Res<T> {
    Err(Stop::Usage(message.to_string()))
}

/// Sets the message name and catches SIGINT, SIGTERM and SIGHUP (see [`interrupted`]).
///
/// signal-hook, not a `sigaction` of our own: the crates forbid `unsafe`, and its iterator
/// runs the bookkeeping on a thread of its own, outside the signal handler.
pub(crate) fn init(name: &'static str) {
    let _ = NAME.set(name);
    let caught = [
        Signal::SIGINT as i32,
        Signal::SIGTERM as i32,
        Signal::SIGHUP as i32,
    ];
    match signal_hook::iterator::Signals::new(caught) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                for sig in signals.forever() {
                    on_signal(sig);
                }
            });
        }
        Err(e) => note(format!("cannot catch SIGINT, SIGTERM and SIGHUP: {e}")),
    }
}

/// Turns what `run` returned into the exit status, saying what it has to: `usage` follows a
/// bad-usage message. Call it after everything `run` started has been dropped (stopped).
pub(crate) fn exit_code(result: Res<u8>, usage: &str) -> ExitCode {
    match result {
        Ok(code) | Err(Stop::Exit(code)) => ExitCode::from(code),
        Err(Stop::Usage(message)) => {
            eprint!("{}: {message}\n\n{usage}", name());
            ExitCode::from(2)
        }
        Err(Stop::Signal(n)) => ExitCode::from(128u8.saturating_add(n as u8)),
    }
}

// --- signals ---------------------------------------------------------------------------------

static SIGNALS: AtomicUsize = AtomicUsize::new(0);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);
static SIGNAL_NOTED: AtomicBool = AtomicBool::new(false);

fn on_signal(sig: i32) {
    LAST_SIGNAL.store(sig, Ordering::SeqCst);
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

/// How many of the caught signals have arrived so far.
pub(crate) fn signals() -> usize {
    SIGNALS.load(Ordering::SeqCst)
}

/// `Err(Stop::Signal)` once SIGINT, SIGTERM or SIGHUP has arrived (saying so, once), so that
/// `?` unwinds to main, dropping and so stopping what was started.
pub(crate) fn interrupted() -> Res<()> {
    if signals() == 0 {
        return Ok(());
    }
    let n = LAST_SIGNAL.load(Ordering::SeqCst);
    if !SIGNAL_NOTED.swap(true, Ordering::SeqCst) {
        let sig = Signal::try_from(n).map_or("signal", Signal::as_str);
        note(format!("{sig}: stopping"));
    }
    Err(Stop::Signal(n))
}

/// Sleeps for `d`, returning early with `Err` when a signal arrives.
pub(crate) fn pause(d: Duration) -> Res<()> {
    let end = Instant::now() + d;
    loop {
        interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

// --- settings and paths ----------------------------------------------------------------------

/// The whole number in the environment variable `name` (`default` when it is unset or
/// empty), or the message saying it is not one.
pub(crate) fn env_uint(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => {
            parse_uint(&v).ok_or(format!("{name} must be a whole number, not '{v}'"))
        }
        _ => Ok(default),
    }
}

/// A whole number of at most nine digits.
pub(crate) fn parse_uint(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A path the user gave, relative to the directory the script was run from.
pub(crate) fn absolute(path: impl AsRef<Path>) -> PathBuf {
    let path = path.as_ref();
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("."))
            .join(path)
    }
}

/// `$BALLAST_RUN_DIR`, by default `target/ballast-run` in the checkout.
pub(crate) fn run_dir() -> PathBuf {
    match std::env::var_os("BALLAST_RUN_DIR") {
        Some(dir) if !dir.is_empty() => absolute(dir),
        _ => Path::new(REPO_ROOT).join("target/ballast-run"),
    }
}

/// The directory of the binaries under test: `$BALLAST_BIN_DIR`, or the release build after
/// `cargo build --release TARGETS...` (its output on stderr). Checks that `ballast` and
/// `ballast-backend` are there.
pub(crate) fn binaries(targets: &[&str]) -> Res<PathBuf> {
    let dir = match std::env::var_os("BALLAST_BIN_DIR") {
        Some(dir) if !dir.is_empty() => absolute(dir),
        _ => {
            note("cargo build --release");
            let stderr = io::stderr().as_fd().try_clone_to_owned();
            let status = Command::new("cargo")
                .args(["build", "--release"])
                .args(targets)
                .current_dir(REPO_ROOT)
                .stdin(Stdio::null())
                .stdout(stderr.map_or_else(|_| Stdio::null(), Stdio::from))
                .status();
            interrupted()?;
            if !status.is_ok_and(|s| s.success()) {
                return fatal("cargo build --release failed");
            }
            let target = match std::env::var_os("CARGO_TARGET_DIR") {
                Some(dir) if !dir.is_empty() => absolute(dir),
                _ => Path::new(REPO_ROOT).join("target"),
            };
            target.join("release")
        }
    };
    for name in ["ballast", "ballast-backend"] {
        if !is_executable(&dir.join(name)) {
            return fatal(format!("no executable {name} in {}", dir.display()));
        }
    }
    Ok(dir)
}

pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A program on PATH or in the sbin directories (not on a normal user's PATH on Debian).
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// Creates (truncates) `path` for a child's output, saying which file failed.
pub(crate) fn create(path: &Path) -> Res<File> {
    File::create(path).or_else(|e| fatal(format!("cannot create {}: {e}", path.display())))
}

/// Opens `path` for appending, creating it.
pub(crate) fn append(path: &Path) -> Res<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .or_else(|e| fatal(format!("cannot open {}: {e}", path.display())))
}

/// Writes `text` to `path`, saying which file failed.
pub(crate) fn write(path: &Path, text: &str) -> Res<()> {
    fs::write(path, text).or_else(|e| fatal(format!("cannot write {}: {e}", path.display())))
}

/// Says `what` went wrong, points at `log` and shows its last 20 lines, then stops the
/// harness with exit status 1: how every child that fails to start is reported.
pub(crate) fn fail_showing_log<T>(what: impl Display, log: &Path) -> Res<T> {
    note(format!("{what}; its log ({}):", log.display()));
    eprint!("{}", tail(log, 20));
    Err(Stop::Exit(1))
}

/// The last `n` lines of a log, indented, for a message about a process that failed.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}\n"))
        .collect()
}

// --- processes -------------------------------------------------------------------------------

/// Seconds a stop waits after SIGTERM before SIGKILL (set by the harness).
static STOP_TIMEOUT: AtomicU64 = AtomicU64::new(10);

pub(crate) fn set_stop_timeout(secs: u64) {
    STOP_TIMEOUT.store(secs, Ordering::Relaxed);
}

/// A child process. It gets SIGTERM from the kernel if the harness dies, however it dies
/// (its parent-death signal), runs in a process group of its own (so a Ctrl-C reaches only
/// the harness, which stops it), and is stopped when dropped.
pub(crate) struct Proc {
    child: Child,
    status: Option<ExitStatus>,
    pub what: String,
}

/// A command for `program` that the kernel stops with SIGTERM when the harness dies, however
/// it dies (`setpriv --pdeathsig`, from util-linux; without setpriv, a plain command, which
/// the harness still stops when it exits normally or on a signal). Spawn it with [`start`],
/// from the main thread only: the parent-death signal follows the thread that spawned.
pub(crate) fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    static SETPRIV: OnceLock<bool> = OnceLock::new();
    let have = *SETPRIV.get_or_init(|| {
        Command::new("setpriv")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if have {
        let mut command = Command::new("setpriv");
        command.args(["--pdeathsig", "TERM", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Starts `command` (made by [`command`]; stdin from /dev/null; the caller directs stdout
/// and stderr) in a process group of its own.
pub(crate) fn start(mut command: Command, what: impl Into<String>) -> Res<Proc> {
    let what = what.into();
    command.stdin(Stdio::null()).process_group(0);
    match command.spawn() {
        Ok(child) => Ok(Proc {
            child,
            status: None,
            what,
        }),
        Err(e) => fatal(format!("cannot start {what}: {e}")),
    }
}

/// Converts an exit status to the shell's number: the code, or 128 + the signal.
pub(crate) fn status_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while it runs; reaps it once it has exited.
    pub(crate) fn alive(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.status = Some(status);
                false
            }
            Err(_) => false,
        }
    }

    /// How it exited, once it has (and been reaped).
    pub(crate) fn status(&mut self) -> Option<ExitStatus> {
        self.alive();
        self.status
    }

    /// Sends `sig` unless it has exited (and so may have given its pid away).
    pub(crate) fn signal(&mut self, sig: Signal) -> bool {
        self.alive() && signal::kill(pid(self.pid()), sig).is_ok()
    }

    /// SIGKILL at once, and reap.
    pub(crate) fn kill_now(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Waits up to `limit` for it to exit by itself; its status, if it did.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Res<Option<ExitStatus>> {
        let end = Instant::now() + limit;
        while self.alive() {
            interrupted()?;
            if Instant::now() >= end {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(self.status)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        stop(&mut [self], false);
    }
}

/// [`stop`] for a list of processes.
pub(crate) fn stop_all(procs: &mut [Proc], say: bool) {
    let mut refs: Vec<&mut Proc> = procs.iter_mut().collect();
    stop(&mut refs, say);
}

fn pid(p: u32) -> Pid {
    Pid::from_raw(p as i32)
}

/// Stops processes and their descendants: SIGTERM to the given ones, a wait (bounded by the
/// stop timeout) for the whole trees, then SIGKILL to whatever is left. A signal to the
/// harness during the wait sends SIGKILL at once. With `say`, notes what it does.
pub(crate) fn stop(procs: &mut [&mut Proc], say: bool) {
    let roots: Vec<u32> = procs
        .iter_mut()
        .filter_map(|p| p.alive().then(|| p.pid()))
        .collect();
    if roots.is_empty() {
        return;
    }
    if say {
        note(format!("stopping {} process(es)", roots.len()));
    }
    let descendants: Vec<u32> = tree_pids(&roots)
        .into_iter()
        .filter(|p| !roots.contains(p))
        .collect();
    for p in procs.iter_mut() {
        p.signal(Signal::SIGTERM);
    }
    let seen = signals();
    let end = Instant::now() + Duration::from_secs(STOP_TIMEOUT.load(Ordering::Relaxed));
    loop {
        let mut left: Vec<u32> = procs
            .iter_mut()
            .filter_map(|p| p.alive().then(|| p.pid()))
            .collect();
        left.extend(descendants.iter().copied().filter(|&d| pid_alive(d)));
        if left.is_empty() {
            return;
        }
        if signals() > seen || Instant::now() >= end {
            let list: Vec<String> = left.iter().map(u32::to_string).collect();
            note(format!(
                "still running after SIGTERM, sending SIGKILL to {}",
                list.join(" ")
            ));
            for p in procs.iter_mut() {
                p.kill_now();
            }
            for &d in &descendants {
                if pid_alive(d) {
                    let _ = signal::kill(pid(d), Signal::SIGKILL);
                }
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What [`wait_for_line`] found.
pub(crate) enum Ready {
    Line(String),
    /// The process exited first, with this status.
    Exited(ExitStatus),
    TimedOut,
}

/// Waits up to `limit` for a line of `path` that satisfies `pred` while `proc` runs.
pub(crate) fn wait_for_line(
    path: &Path,
    pred: impl Fn(&str) -> bool,
    proc: &mut Proc,
    limit: Duration,
) -> Res<Ready> {
    let end = Instant::now() + limit;
    loop {
        if let Ok(text) = fs::read_to_string(path)
            && let Some(line) = text.lines().find(|l| pred(l))
        {
            return Ok(Ready::Line(line.to_string()));
        }
        if !proc.alive() {
            return Ok(proc.status.map_or(Ready::TimedOut, Ready::Exited));
        }
        interrupted()?;
        if Instant::now() >= end {
            return Ok(Ready::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// --- /proc -----------------------------------------------------------------------------------

/// True while `pid` exists and is not a zombie.
pub(crate) fn pid_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// The given pids and all their descendants, parents first.
pub(crate) fn tree_pids(roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process that exits meanwhile leaves no file or a partial line.
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(p);
        }
    }
    let mut out = Vec::new();
    let mut queue: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < queue.len() {
        let p = queue[i];
        i += 1;
        if out.contains(&p) {
            continue;
        }
        out.push(p);
        queue.extend(children.get(&p).into_iter().flatten());
    }
    out
}

/// A numeric field of /proc/PID/status (`VmRSS`, `VmHWM` in kB; `Threads`).
pub(crate) fn status_field(pid: u32, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

/// VmRSS in KiB summed over the given processes and their descendants, and how many
/// processes that is.
pub(crate) fn tree_rss(roots: &[u32]) -> (u64, usize) {
    tree_pids(roots)
        .into_iter()
        .filter_map(|p| status_field(p, "VmRSS"))
        .fold((0, 0), |(sum, n), kib| (sum + kib, n + 1))
}

/// Open descriptors of `pid`, or `None` when it is gone.
pub(crate) fn fd_count(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Sockets among `pid`'s descriptors.
pub(crate) fn socket_count(pid: u32) -> Option<usize> {
    let dir = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        dir.flatten()
            .filter(|e| {
                fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
            })
            .count(),
    )
}

/// True when `pid` runs and its command line contains `word` (a recycled pid is not ours).
pub(crate) fn is_ours(pid: u32, word: &str) -> bool {
    pid_alive(pid)
        && fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .contains(word)
        })
}

/// The rows of /proc/net/tcp (and tcp6): (local port, remote port, state), read as text so
/// that no probe connection is made (one through a proxy would reach iperf3 as a client).
fn tcp_rows(files: &[&str]) -> Vec<(String, u16, u8)> {
    let mut rows = Vec::new();
    for file in files {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            let Some((addr, port)) = local.rsplit_once(':') else {
                continue;
            };
            let (Ok(port), Ok(state)) =
                (u16::from_str_radix(port, 16), u8::from_str_radix(state, 16))
            else {
                continue;
            };
            rows.push((addr.to_string(), port, state));
        }
    }
    rows
}

/// True when a socket listens on 127.0.0.1:PORT or 0.0.0.0:PORT.
pub(crate) fn listening(port: u16) -> bool {
    tcp_rows(&["/proc/net/tcp"]).iter().any(|(addr, p, state)| {
        *p == port && *state == 0x0A && (addr == "0100007F" || addr == "00000000")
    })
}

/// Local ports of every TCP socket on the machine, in any state.
pub(crate) fn used_ports() -> HashSet<u16> {
    tcp_rows(&["/proc/net/tcp", "/proc/net/tcp6"])
        .into_iter()
        .map(|(_, p, _)| p)
        .collect()
}

/// Raises the soft open-files limit to the hard one; returns the soft limit then in force.
pub(crate) fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    let target = if hard == nix::sys::resource::RLIM_INFINITY {
        fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1_048_576)
    } else {
        hard
    };
    if target > soft && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
        return target;
    }
    soft
}

// --- small things ----------------------------------------------------------------------------

/// `value` quoted for a shell command line when it needs quoting.
pub(crate) fn shell_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:,+-".contains(c));
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// The current time in UTC as `YYYY-MM-DD HH:MM UTC`.
pub(crate) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

/// A small pseudo-random generator (no cryptographic use): picking ports.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn seeded() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng(nanos ^ (u64::from(std::process::id()) << 32) | 1)
    }

    /// A number in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo + 1)
    }
}

/// Reads what was appended to a log since the last call, in whole lines.
pub(crate) struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl LogTail {
    pub(crate) fn new(path: &Path) -> LogTail {
        LogTail {
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
        }
    }

    /// The whole lines appended since the last call.
    pub(crate) fn new_lines(&mut self) -> Vec<String> {
        use std::io::{Seek, SeekFrom};
        let Ok(mut file) = File::open(&self.path) else {
            return Vec::new();
        };
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut bytes).is_err()
        {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let Some(end) = self.partial.rfind('\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(end + 1);
        let done = std::mem::replace(&mut self.partial, rest);
        done.lines().map(str::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(shell_quote("scripts/bench.sh"), "scripts/bench.sh");
        assert_eq!(shell_quote("workers: 1,"), "'workers: 1,'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn whole_numbers_only() {
        assert_eq!(parse_uint("007"), Some(7));
        assert_eq!(parse_uint("-1"), None);
        assert_eq!(parse_uint("1.5"), None);
        assert_eq!(parse_uint("1234567890"), None);
    }

    #[test]
    fn this_process_is_in_its_own_tree() {
        let me = std::process::id();
        assert!(pid_alive(me));
        assert_eq!(tree_pids(&[me])[0], me);
        assert!(tree_rss(&[me]).0 > 0);
        assert!(fd_count(me).is_some_and(|n| n >= 3));
    }

    #[test]
    fn log_tail_returns_whole_lines_once() {
        let path = std::env::temp_dir().join(format!("harness-tail-{}", std::process::id()));
        fs::write(&path, "one\ntw").expect("write");
        let mut tail = LogTail::new(&path);
        assert_eq!(tail.new_lines(), ["one"]);
        fs::write(&path, "one\ntwo\nthree\n").expect("write");
        assert_eq!(tail.new_lines(), ["two", "three"]);
        assert!(tail.new_lines().is_empty());
        let _ = fs::remove_file(&path);
    }

    #[test]
    fn utc_date_has_the_expected_shape() {
        let now = utc_now();
        assert_eq!(now.len(), "2026-01-01 00:00 UTC".len(), "{now}");
        assert!(now.ends_with(" UTC") && now.starts_with("20"), "{now}");
    }
}
