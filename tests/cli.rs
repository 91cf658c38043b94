//! The `ballast` command line as scripts and users meet it: `--check`, `--help`,
//! `--version`, and every bad configuration giving a non-zero exit with a message that
//! names the file, the position and what was expected.

mod common;

use common::{TempDir, run_ballast};

const VALID: &str = r#"(
    listen: "127.0.0.1:8080",
    algorithm: WeightedRoundRobin,
    backends: [
        (name: "vm4", addr: "127.0.0.1:8081", weight: 3),
        (name: "vm5", addr: "127.0.0.1:8082", weight: 5),
        (name: "spare", addr: "127.0.0.1:8083", weight: 0),
    ],
)
"#;

/// Runs `ballast --check --config <file with text>`; returns (exit code, stdout, stderr, path).
fn check(text: &str) -> (i32, String, String, String) {
    let dir = TempDir::new();
    let path = dir.write("balancer.ron", text);
    let path = path.to_string_lossy().into_owned();
    let (code, out, err) = run_ballast(&["--check", "--config", &path]);
    (code, out, err, path)
}

/// Runs the balancer itself (not --check) on `text`; it must refuse to start.
fn start(text: &str) -> (i32, String, String) {
    let dir = TempDir::new();
    let path = dir.write("balancer.ron", text);
    let (code, _, err) = run_ballast(&["-c", &path.to_string_lossy()]);
    (code, err, path.to_string_lossy().into_owned())
}

#[test]
fn check_accepts_a_valid_file_and_prints_a_summary() {
    let (code, out, err, path) = check(VALID);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("{path}: configuration is valid\n")),
        "{out}"
    );
    assert!(out.contains("listen     127.0.0.1:8080"), "{out}");
    assert!(out.contains("algorithm  WeightedRoundRobin"), "{out}");
    assert!(out.contains("vm4    127.0.0.1:8081  weight 3\n"), "{out}");
    assert!(out.contains("vm5    127.0.0.1:8082  weight 5\n"), "{out}");
    assert!(
        out.contains("spare  127.0.0.1:8083  weight 0  (drained)"),
        "{out}"
    );
}

/// The shipped sample passes, and its summary is the one README.md shows (but for the
/// `workers` line, which follows the machine's CPUs).
#[test]
fn check_validates_the_shipped_sample_as_the_readme_shows() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(common::BALLAST)
        .args(["--check", "--config", "balancer.ron"])
        .current_dir(root)
        .output()
        .expect("run ballast");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README.md");
    let start = readme
        .find("```\nbalancer.ron: configuration is valid\n")
        .expect("the --check output of balancer.ron in README.md")
        + 4;
    let shown = &readme[start..start + readme[start..].find("```").expect("end of block")];
    let workers = |text: &str| -> String {
        text.lines()
            .map(|l| {
                if l.starts_with("workers ") {
                    "workers    N"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(workers(&stdout), workers(shown));
    assert!(
        stdout.contains("admin      http://127.0.0.1:9000/\n"),
        "{stdout}"
    );
}

/// Asserts that both `--check` and a real start reject `text` with exit code 1 and
/// `ballast: <path><suffix>` on stderr.
fn assert_rejected(text: &str, suffix: &str) {
    let (code, out, err, path) = check(text);
    assert_eq!(code, 1, "--check should fail; stdout: {out}");
    assert_eq!(err.trim_end(), format!("ballast: {path}{suffix}"));
    let (code, err, path) = start(text);
    assert_eq!(code, 1, "start should fail");
    assert_eq!(err.trim_end(), format!("ballast: {path}{suffix}"));
}

#[test]
fn missing_file_names_the_path() {
    let (code, _, err) = run_ballast(&["--config", "/nonexistent/ballast.ron"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim_end(),
        "ballast: /nonexistent/ballast.ron: cannot read configuration: No such file or directory (os error 2)"
    );
}

#[test]
fn syntax_error_gives_line_column_and_expectation() {
    let text = VALID.replace("weight: 3),", "weight: 3");
    let (code, _, err, path) = check(&text);
    assert_eq!(code, 1);
    assert!(err.starts_with(&format!("ballast: {path}:6:")), "{err}");
    assert!(err.to_lowercase().contains("expected"), "{err}");
}

#[test]
fn unknown_algorithm_lists_the_valid_names() {
    assert_rejected(
        &VALID.replace("WeightedRoundRobin", "Fastest"),
        ":3:16: unknown algorithm `Fastest`: expected one of RoundRobin, WeightedRoundRobin, LeastConnections, WorkloadSensitive, Maglev, PowerOfTwoChoices",
    );
}

#[test]
fn no_backends() {
    assert_rejected(
        r#"(listen: "127.0.0.1:8080", algorithm: RoundRobin, backends: [])"#,
        ":1:62: no backends: `backends` must list at least one (name: \"...\", addr: \"host:port\")",
    );
}

#[test]
fn unparsable_address() {
    assert_rejected(
        &VALID.replace("127.0.0.1:8082", "localhost"),
        ":6:30: invalid address \"localhost\": expected IP:port or host:port such as \"127.0.0.1:8081\", \"[::1]:8081\" or \"web.internal:8080\"",
    );
}

#[test]
fn duplicate_backend_names() {
    assert_rejected(
        &VALID.replace("\"spare\"", "\"vm4\""),
        ":7:17: duplicate backend name \"vm4\": names must be unique within a service",
    );
}

#[test]
fn no_backend_can_receive_traffic() {
    let text = VALID
        .replace("weight: 3", "weight: 0")
        .replace("weight: 5", "weight: 0");
    assert_rejected(
        &text,
        ":8:5: every backend has weight 0 (drained): no backend can receive traffic",
    );
}

#[test]
fn value_rules_point_at_the_value() {
    let cases = [
        (
            VALID.replace("weight: 5", "weight: 500"),
            ":6:55: weight 500: expected 0 (drained) to 256",
        ),
        (
            VALID.replace("weight: 5", "weight: 5, max_connections: 0"),
            ":6:75: max_connections 0: expected at least 1 (use weight: 0 to drain)",
        ),
        (
            VALID.replace("\"spare\"", "\" \""),
            ":7:17: a blank backend name: expected a name such as \"vm4\"",
        ),
        (
            VALID.replace("weight: 5", "weight: 5, load_path: \"load\""),
            ":6:70: path \"load\" is not usable: expected an absolute path such as \"/load\", without spaces or control characters",
        ),
        (
            VALID.replace("    backends", "    workers: 0,\n    backends"),
            ":4:14: workers is 0: expected 1 to 256",
        ),
        (
            VALID.replace(
                "    backends",
                "    timeouts: (idle: \"0s\"),\n    backends",
            ),
            ":4:23: a zero duration: expected more than zero, such as \"1s\"",
        ),
        (
            VALID.replace(
                "    backends",
                "    limits: (max_connections: 0),\n    backends",
            ),
            ":4:31: max_connections 0: expected at least 1",
        ),
        (
            VALID.replace("    backends", "    health: (fall: 0),\n    backends"),
            ":4:20: 0 checks in a row: expected 1 or more",
        ),
        (
            VALID.replace("    backends", "    admin_token: \"a b\",\n    backends"),
            ":4:19: admin_token must be non-empty printable ASCII without spaces",
        ),
    ];
    for (text, suffix) in cases {
        assert_rejected(&text, suffix);
    }
}

#[test]
fn positions_found_after_parsing_skip_comments() {
    // A key or name mentioned in a comment is not where the error is.
    let text = VALID
        .replace(
            "    backends",
            "    // admin: \"127.0.0.1:8080\", name: \"vm4\"\n    /* admin: */ admin: \"127.0.0.1:8080\",\n    backends",
        );
    assert_rejected(
        &text,
        ":5:26: admin must listen on another address than the services (127.0.0.1:8080)",
    );
    let text = VALID
        .replace("    backends", "    // name: \"vm4\"\n    backends")
        .replace("\"spare\"", "\"vm4\"");
    assert_rejected(
        &text,
        ":8:17: duplicate backend name \"vm4\": names must be unique within a service",
    );
}

#[test]
fn unknown_field() {
    assert_rejected(
        &VALID.replace("listen:", "listen_on:"),
        ":2:5: unknown field `listen_on`: expected one of listen, algorithm, backends, accept_proxy, services, workers, timeouts, limits, relay, health, load_poll, access_log, slow_start, maglev_table_size, admin, admin_token, dns",
    );
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    let (code, _, err) = run_ballast(&["--bogus"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("ballast: unknown argument `--bogus`\n"),
        "{err}"
    );
    assert!(err.contains("Usage: ballast"), "{err}");
}

/// `--help` prints the usage exactly as README.md shows it.
#[test]
fn help_and_version() {
    let (code, out, _) = run_ballast(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("Usage: ballast [--config PATH] [--check] [--watch]\n"),
        "{out}"
    );
    assert!(
        out.contains("\n      --watch        reload when the configuration file changes\n"),
        "{out}"
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README.md");
    let start = readme
        .find("```\nUsage: ballast [")
        .expect("ballast's usage in README.md")
        + 4;
    let shown = &readme[start..start + readme[start..].find("```").expect("end of block")];
    assert_eq!(out, shown);
    let (code, out, _) = run_ballast(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(out, format!("ballast {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn config_takes_its_value_in_every_form() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/balancer.ron");
    for args in [
        vec!["--check".to_string(), format!("--config={sample}")],
        vec!["--check".to_string(), "-c".to_string(), sample.to_string()],
        vec![format!("-c{sample}"), "--check".to_string()],
    ] {
        let (code, out, err) = common::run(common::BALLAST, &args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(
            out.starts_with(&format!("{sample}: configuration is valid\n")),
            "{args:?}: {out}"
        );
    }
    let (code, _, err) = run_ballast(&["--check=yes"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("ballast: --check takes no value, but was given `yes`\n"),
        "{err}"
    );
}

#[test]
fn an_argument_that_is_not_utf8_exits_2_naming_it() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let bad = OsStr::from_bytes(b"--config=b\xffd.ron");
    let (code, out, err) = common::run(common::BALLAST, &[OsStr::new("--check"), bad]);
    assert_eq!(code, 2);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with("ballast: argument \"--config=b\\xFFd.ron\" is not valid UTF-8\n"),
        "{err}"
    );
    assert!(err.contains("Usage: ballast"), "{err}");
}

/// `--help` and `--version` stop at once, whatever follows them, even an argument that is
/// not UTF-8; for both binaries.
#[test]
fn help_and_version_stop_before_an_argument_that_is_not_utf8() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let bad = OsStr::from_bytes(b"\xff");
    for (program, name) in [
        (common::BALLAST, "ballast"),
        (common::BACKEND, "ballast-backend"),
    ] {
        let (code, out, err) = common::run(program, &[OsStr::new("--help"), bad]);
        assert_eq!((code, err.as_str()), (0, ""), "{name} --help");
        assert!(out.starts_with(&format!("Usage: {name}")), "{out}");
        let (code, out, _) = common::run(program, &[OsStr::new("--version"), bad]);
        assert_eq!(code, 0, "{name} --version");
        assert!(out.starts_with(name), "{out}");
    }
}
