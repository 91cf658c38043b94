//! `scripts/cluster.sh` run as a user would: three ballast instances behind an ECMP router
//! in network namespaces, with the four checks it prints. It needs root, network
//! namespaces, dnsmasq, nft, ss and python3; where any is missing the test says why and
//! passes, unless `BALLAST_CLUSTER_REQUIRED=1` (which `.ci/run` sets once it has installed
//! them) makes that a failure. Besides a full run, it interrupts one run half way and checks
//! that nothing the script made is left: no namespace, no process.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{BALLAST, TempDir};

const CLUSTER_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh");

/// A whole run takes about 15 s with release binaries, longer with debug ones on a busy
/// machine; the script bounds every wait itself, this only catches a hang.
const RUN_LIMIT: Duration = Duration::from_secs(240);
/// After SIGTERM the script stops its processes (each within its own bounded wait) and
/// deletes its namespaces.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// The directory holding the binaries under test, so the script skips `cargo build`.
fn bin_dir() -> &'static Path {
    Path::new(BALLAST).parent().expect("binary directory")
}

/// A shell command line that runs `command` with the sbin directories (where `ip`,
/// `dnsmasq` and `nft` live) on its PATH, as the script itself does.
fn sbin(command: &str) -> String {
    format!("PATH=\"$PATH:/usr/sbin:/sbin\" {command}")
}

/// Runs `program args` quietly; true when it exits 0.
fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Why the script cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if output("id", &["-u"]).trim() != "0" {
        return Some("not root".into());
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("ss", "iproute2"),
        ("dnsmasq", "dnsmasq-base"),
        ("nft", "nftables"),
        ("python3", "python3"),
    ] {
        if !succeeds("sh", &["-c", &sbin(&format!("command -v {tool}"))]) {
            return Some(format!("{tool} is missing (Debian package {package})"));
        }
    }
    let probe = format!("ballast-probe-{}", std::process::id());
    let ip = |args: &str| succeeds("sh", &["-c", &sbin(&format!("ip {args}"))]);
    if !ip(&format!("netns add {probe}")) {
        return Some("`ip netns add` fails: no network namespaces here".into());
    }
    assert!(
        ip(&format!("netns del {probe}")),
        "could not delete the probe namespace {probe}"
    );
    None
}

/// True when the test must run (CI, after `.ci/run` installed the tools): then a missing
/// prerequisite fails the test instead of skipping it.
fn required() -> bool {
    std::env::var("BALLAST_CLUSTER_REQUIRED").is_ok_and(|v| v == "1")
}

/// Skips (prints why and returns true) where the script cannot run.
fn skip() -> bool {
    match missing_prerequisite() {
        None => false,
        Some(why) => {
            assert!(
                !required(),
                "BALLAST_CLUSTER_REQUIRED=1 but scripts/cluster.sh cannot run: {why}"
            );
            eprintln!("skipped: scripts/cluster.sh cannot run here: {why}");
            true
        }
    }
}

/// A running `bash scripts/cluster.sh` in a process group of its own, writing to files.
/// Dropped while running, it gets SIGTERM (its traps clean up), then its group SIGKILL.
struct Run {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Run {
    fn start(dir: &TempDir, args: &[&str]) -> Run {
        let out = dir.path.join("cluster.out");
        let err = dir.path.join("cluster.err");
        let child = Command::new("bash")
            .arg(CLUSTER_SH)
            .args(args)
            .env("BALLAST_BIN_DIR", bin_dir())
            .env("BALLAST_RUN_DIR", dir.path.join("run"))
            .env_remove("RUST_LOG")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CLUSTER_CLIENTS")
            .env_remove("CLUSTER_READY_TIMEOUT")
            .env_remove("CLUSTER_STOP_TIMEOUT")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("create stdout file"))
            .stderr(std::fs::File::create(&err).expect("create stderr file"))
            .process_group(0)
            .spawn()
            .expect("spawn bash");
        Run { child, out, err }
    }

    /// The namespace prefix of this run: the script names them after its pid.
    fn prefix(&self) -> String {
        format!("ballast-cl{}-", self.child.id())
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits for the script to exit within `limit`.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "cluster.sh still running after {limit:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (within `limit`) until stderr has a line containing `text`.
    fn wait_stderr(&mut self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.stderr().contains(text) {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "cluster.sh exited ({status}) before {text:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} from cluster.sh within {limit:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, name: &str) {
        assert!(succeeds(
            "sh",
            &["-c", &format!("kill -{name} {}", self.child.id())]
        ));
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let pid = self.child.id();
        let _ = succeeds("sh", &["-c", &format!("kill -TERM {pid} 2>/dev/null")]);
        let deadline = Instant::now() + STOP_LIMIT;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = succeeds("sh", &["-c", &format!("kill -KILL -{pid} 2>/dev/null")]);
        let _ = self.child.wait();
    }
}

/// What a run left behind: namespaces named with its prefix, and processes that belong to
/// it (their command line names its run directory, or a backend address of the topology).
fn leftovers(prefix: &str, run_dir: &Path) -> Vec<String> {
    let mut left: Vec<String> = output("sh", &["-c", &sbin("ip netns list")])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| ns.starts_with(prefix))
        .map(|ns| format!("namespace {ns}"))
        .collect();
    let run_dir = run_dir.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
                continue;
            }
            let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            let ours = cmdline.contains(&run_dir)
                || (cmdline.contains("ballast-backend") && cmdline.contains("--listen 10.0.3."));
            if ours {
                left.push(format!("process {name}: {cmdline}"));
            }
        }
    }
    left
}

#[test]
fn cluster_script_help_and_bad_usage() {
    let out = Command::new("bash")
        .args([CLUSTER_SH, "--help"])
        .stdin(Stdio::null())
        .output()
        .expect("run cluster.sh --help");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for text in [
        "Usage: scripts/cluster.sh",
        "dnsmasq-base",
        "--plain-ecmp",
        "(d)",
    ] {
        assert!(stdout.contains(text), "no {text:?} in:\n{stdout}");
    }
    let out = Command::new("bash")
        .args([CLUSTER_SH, "--bogus"])
        .stdin(Stdio::null())
        .output()
        .expect("run cluster.sh --bogus");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown option '--bogus'"));
}

/// One run interrupted with SIGTERM half way leaves nothing behind; then a whole run
/// passes its four checks, prints its figures, and leaves nothing behind either. (One
/// test, so the two runs do not share the machine's two cores with each other.)
#[test]
fn cluster_script_passes_and_cleans_up() {
    if skip() {
        return;
    }

    // Interrupted once the instances serve and clients are connecting.
    let dir = TempDir::new();
    let mut run = Run::start(&dir, &[]);
    let prefix = run.prefix();
    run.wait_stderr("(a) ", RUN_LIMIT);
    run.signal("TERM");
    let status = run.wait(STOP_LIMIT);
    let stderr = run.stderr();
    assert_eq!(status.code(), Some(143), "stderr:\n{stderr}");
    assert!(stderr.contains("cluster.sh: SIGTERM: stopping"), "{stderr}");
    assert_eq!(
        leftovers(&prefix, &dir.path.join("run")),
        Vec::<String>::new(),
        "after SIGTERM; stderr:\n{stderr}"
    );
    drop(run);

    // A whole run.
    let dir = TempDir::new();
    let mut run = Run::start(&dir, &[]);
    let prefix = run.prefix();
    let started = Instant::now();
    let status = run.wait(RUN_LIMIT);
    let took = started.elapsed();
    let (stdout, stderr) = (run.stdout(), run.stderr());
    // The figures, for whoever reads the test's output.
    println!("{stdout}\n(took {took:?})");
    assert_eq!(
        status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for check in ["(a)", "(b)", "(c)", "(d)"] {
        assert_eq!(
            stdout
                .lines()
                .filter(|l| l.starts_with(&format!("{check} PASS: ")))
                .count(),
            2,
            "{check} should pass (once as it runs, once in the summary):\n{stdout}"
        );
    }
    assert!(stdout.contains("verdict: PASS (4 of 4 checks)"), "{stdout}");
    assert!(
        stdout.contains("flows pinned by conntrack"),
        "the topology is printed first:\n{stdout}"
    );
    assert!(
        took < Duration::from_secs(180),
        "took {took:?}: the script should stay well under its bounds"
    );
    assert_eq!(
        leftovers(&prefix, &dir.path.join("run")),
        Vec::<String>::new(),
        "after a whole run; stderr:\n{stderr}"
    );
}
