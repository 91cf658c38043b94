//! The `ballast-backend` command line.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{Arg, Args, Command, Program};
use crate::demo::LoadSource;

/// The `--help` text.
pub const USAGE: &str = "\
Usage: ballast-backend --listen ADDR [OPTIONS]
       ballast-backend --config PATH [OPTIONS]

Demo HTTP backend for the ballast load balancer.

Options:
  --listen ADDR        address to listen on, e.g. 127.0.0.1:8081 (port 0 picks a free port)
  --id ID              name shown on the page [default: backend-PORT]
  -c, --config PATH    serve every backend of a ballast configuration instead: one listener
                       per backend, on its address, with its name as ID
  --load KIND          what /load reports: system or process [default: system]
  --load-file PATH     serve the trimmed contents of PATH as /load (overrides --load)
  --max-requests N     close each connection after N responses (N >= 1)
  --burn-ms N          busy-loop N ms of CPU before each GET /
  -h, --help           print this help
  -V, --version        print the version

Environment:
  NAME                 who the page greets [default: world]
  RUST_LOG             log filter [default: info]

Once every listener is bound, prints one line per listener to stdout, all at once:
`listening on ADDR`, or `listening on ADDR as NAME` with --config.";

/// The demo backend binary, for its messages.
pub const PROGRAM: Program = Program {
    name: "ballast-backend",
    usage: USAGE,
};

/// What `ballast-backend` runs with.
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    /// Where it listens and under which ID.
    pub serve: Serve,
    /// What `/load` reports, on every listener.
    pub load: LoadSource,
    /// `--max-requests`: close each connection after this many responses.
    pub max_requests: Option<u64>,
    /// `--burn-ms`: CPU to burn before each `GET /`.
    pub burn: Duration,
}

/// Where the demo backend listens.
#[derive(Debug, PartialEq, Eq)]
pub enum Serve {
    /// `--listen ADDR [--id ID]`: one listener; without an ID it is `backend-PORT`.
    Listen {
        /// The address to bind (port 0 picks a free port).
        addr: SocketAddr,
        /// `--id`.
        id: Option<String>,
    },
    /// `--config PATH`: one listener per backend of this ballast configuration.
    Config(PathBuf),
}

/// Parses the arguments after the program name. Values are checked as they are read, so the
/// first bad argument is the one reported.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command<Options>, String> {
    let mut args = Args::new(args)?;
    let mut listen = None;
    let mut id = None;
    let mut config = None;
    let mut load_kind = LoadSource::System;
    let mut load_file = None;
    let mut max_requests = None;
    let mut burn = Duration::ZERO;

    while let Some(arg) = args.next()? {
        let Arg::Flag(flag) = arg else {
            return Err(arg.unknown());
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--listen" => {
                let v = args.value(&flag, "a value")?;
                listen = Some(
                    v.parse::<SocketAddr>()
                        .map_err(|_| format!("--listen: `{v}` is not an IP:PORT address"))?,
                );
            }
            "--id" => {
                let v = args.value(&flag, "a value")?;
                if v.is_empty() {
                    return Err("--id must not be empty".into());
                }
                id = Some(v);
            }
            "-c" | "--config" => config = Some(PathBuf::from(args.value(&flag, "a file path")?)),
            "--load" => {
                let v = args.value(&flag, "a value")?;
                load_kind = match v.as_str() {
                    "system" => LoadSource::System,
                    "process" => LoadSource::Process,
                    _ => return Err(format!("--load: `{v}` is not `system` or `process`")),
                };
            }
            "--load-file" => load_file = Some(PathBuf::from(args.value(&flag, "a file path")?)),
            "--max-requests" => {
                let v = args.value(&flag, "a value")?;
                match v.parse::<u64>() {
                    Ok(n) if n >= 1 => max_requests = Some(n),
                    _ => return Err(format!("--max-requests: `{v}` is not a whole number >= 1")),
                }
            }
            "--burn-ms" => {
                let v = args.value(&flag, "a value")?;
                let ms = v
                    .parse::<u64>()
                    .map_err(|_| format!("--burn-ms: `{v}` is not a whole number"))?;
                burn = Duration::from_millis(ms);
            }
            _ => return Err(Arg::Flag(flag).unknown()),
        }
    }

    let serve = match (listen, config) {
        (Some(addr), None) => Serve::Listen { addr, id },
        (None, Some(path)) if id.is_none() => Serve::Config(path),
        (None, Some(_)) => {
            return Err(
                "--id does not go with --config: each listener's ID is its backend's name".into(),
            );
        }
        (Some(_), Some(_)) => {
            return Err("--listen does not go with --config: each listener listens on its backend's address".into());
        }
        (None, None) => return Err("--listen ADDR is required (or --config PATH)".into()),
    };
    Ok(Command::Run(Options {
        serve,
        load: load_file.map_or(load_kind, LoadSource::File),
        max_requests,
        burn,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Command<Options>, String> {
        parse(args.iter().map(OsString::from))
    }

    fn run_args(args: &[&str]) -> Options {
        match parse_str(args) {
            Ok(Command::Run(a)) => a,
            Ok(_) => panic!("{args:?} did not parse to a run"),
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    #[test]
    fn parses_all_flags() {
        let a = run_args(&[
            "--listen",
            "127.0.0.1:0",
            "--id=VM4",
            "--load",
            "process",
            "--max-requests",
            "1",
            "--burn-ms",
            "20",
        ]);
        assert_eq!(
            a.serve,
            Serve::Listen {
                addr: "127.0.0.1:0".parse().unwrap(),
                id: Some("VM4".into())
            }
        );
        assert_eq!(a.load, LoadSource::Process);
        assert_eq!(a.max_requests, Some(1));
        assert_eq!(a.burn, Duration::from_millis(20));
    }

    #[test]
    fn every_flag_takes_its_value_after_an_equals_sign_too() {
        let a = run_args(&[
            "--listen=127.0.0.1:0",
            "--id=VM4",
            "--load=process",
            "--max-requests=1",
            "--burn-ms=20",
        ]);
        assert_eq!(
            a,
            run_args(&[
                "--listen",
                "127.0.0.1:0",
                "--id",
                "VM4",
                "--load",
                "process",
                "--max-requests",
                "1",
                "--burn-ms",
                "20"
            ])
        );
        let a = run_args(&["--config=b.ron", "--load-file=/tmp/l"]);
        assert_eq!(a.serve, Serve::Config("b.ron".into()));
        assert_eq!(a.load, LoadSource::File("/tmp/l".into()));
        assert_eq!(run_args(&["-c", "b.ron"]).serve, a.serve);
    }

    #[test]
    fn load_file_overrides_load() {
        let a = run_args(&[
            "--load-file",
            "/tmp/l",
            "--listen",
            "[::1]:80",
            "--load",
            "process",
        ]);
        assert_eq!(a.load, LoadSource::File("/tmp/l".into()));
    }

    #[test]
    fn rejects_bad_arguments_naming_them() {
        for (args, needle) in [
            (&["--listen", "nope"][..], "--listen"),
            (&[][..], "--listen ADDR is required"),
            (&["--listen"][..], "--listen needs a value"),
            (
                &["--listen", "127.0.0.1:0", "--frobnicate"][..],
                "--frobnicate",
            ),
            (&["--listen", "127.0.0.1:0", "--load", "gpu"][..], "gpu"),
            (
                &["--listen", "127.0.0.1:0", "--max-requests", "0"][..],
                "--max-requests",
            ),
            (
                &["--listen", "127.0.0.1:0", "--burn-ms", "-1"][..],
                "--burn-ms",
            ),
            (&["--listen", "127.0.0.1:0", "--id="][..], "--id"),
            (&["--config"][..], "--config needs a file path"),
            (
                &["--config", "b.ron", "--listen", "127.0.0.1:0"][..],
                "--listen does not go with --config",
            ),
            (
                &["--config", "b.ron", "--id", "x"][..],
                "--id does not go with --config",
            ),
            (
                &["--listen", "127.0.0.1:0", "x"][..],
                "unknown argument `x`",
            ),
        ] {
            match parse_str(args) {
                Err(e) => assert!(e.contains(needle), "{args:?}: {e}"),
                Ok(_) => panic!("{args:?} was accepted"),
            }
        }
    }

    #[test]
    fn help_and_version_stop_parsing() {
        // Arguments are checked in order, so a bad one before --help is still reported.
        assert!(parse_str(&["--listen", "x", "--help"]).is_err());
        assert_eq!(parse_str(&["--help", "--listen", "x"]), Ok(Command::Help));
        assert_eq!(parse_str(&["-V"]), Ok(Command::Version));
    }
}
