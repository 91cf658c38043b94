//! `ballast-backend`: the demo backend. All behaviour lives in [`ballast::demo`]; this file
//! only parses arguments, binds, announces readiness and waits for a signal.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ballast::demo::{self, DemoOptions, LoadSource};
use ballast::signal::Shutdown;

const USAGE: &str = "\
Usage: ballast-backend --listen ADDR [OPTIONS]

Demo HTTP backend for the ballast load balancer.

Options:
  --listen ADDR        address to listen on, e.g. 127.0.0.1:8081 (port 0 picks a free port)
  --id ID              name shown on the page [default: backend-PORT]
  --load KIND          what /load reports: system or process [default: system]
  --load-file PATH     serve the trimmed contents of PATH as /load (overrides --load)
  --max-requests N     close each connection after N responses (N >= 1)
  --burn-ms N          busy-loop N ms of CPU before each GET /
  -h, --help           print this help
  -V, --version        print the version

Environment:
  NAME                 who the page greets [default: world]
  RUST_LOG             log filter [default: info]

Once bound, prints exactly one line to stdout: `listening on ADDR`.";

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    id: Option<String>,
    load: LoadSource,
    max_requests: Option<u64>,
    burn: Duration,
}

enum Command {
    Run(Args),
    Help,
    Version,
}

fn parse_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Command, String> {
    let mut listen = None;
    let mut id = None;
    let mut load_kind = LoadSource::System;
    let mut load_file = None;
    let mut max_requests = None;
    let mut burn = Duration::ZERO;

    let mut args = args.into_iter();
    while let Some(raw) = args.next() {
        let arg = raw
            .into_string()
            .map_err(|a| format!("argument {} is not valid UTF-8", a.to_string_lossy()))?;
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        let mut value = || -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => args
                    .next()
                    .ok_or_else(|| format!("{flag} needs a value"))?
                    .into_string()
                    .map_err(|_| format!("the value of {flag} is not valid UTF-8")),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--listen" => {
                let v = value()?;
                listen = Some(
                    v.parse::<SocketAddr>()
                        .map_err(|_| format!("--listen: `{v}` is not an IP:PORT address"))?,
                );
            }
            "--id" => {
                let v = value()?;
                if v.is_empty() {
                    return Err("--id must not be empty".into());
                }
                id = Some(v);
            }
            "--load" => {
                let v = value()?;
                load_kind = match v.as_str() {
                    "system" => LoadSource::System,
                    "process" => LoadSource::Process,
                    _ => return Err(format!("--load: `{v}` is not `system` or `process`")),
                };
            }
            "--load-file" => load_file = Some(PathBuf::from(value()?)),
            "--max-requests" => {
                let v = value()?;
                match v.parse::<u64>() {
                    Ok(n) if n >= 1 => max_requests = Some(n),
                    _ => return Err(format!("--max-requests: `{v}` is not a whole number >= 1")),
                }
            }
            "--burn-ms" => {
                let v = value()?;
                let ms = v
                    .parse::<u64>()
                    .map_err(|_| format!("--burn-ms: `{v}` is not a whole number"))?;
                burn = Duration::from_millis(ms);
            }
            _ => return Err(format!("unknown argument `{flag}`")),
        }
    }

    let listen = listen.ok_or("--listen ADDR is required")?;
    Ok(Command::Run(Args {
        listen,
        id,
        load: load_file.map_or(load_kind, LoadSource::File),
        max_requests,
        burn,
    }))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args_os().skip(1)) {
        Ok(Command::Run(args)) => args,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("ballast-backend {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("ballast-backend: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ballast-backend: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ballast-backend: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    // Handlers go in before the readiness line (see `signal`).
    let shutdown = Shutdown::install()?;

    let listener = ballast::listener::bind(args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;

    let opts = DemoOptions {
        id: args
            .id
            .unwrap_or_else(|| format!("backend-{}", local.port())),
        name: std::env::var("NAME")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "world".to_string()),
        load: args.load,
        max_requests_per_connection: args.max_requests,
        burn: args.burn,
    };

    // The readiness signal for scripts and tests: exactly one line, flushed now because
    // stdout is block-buffered when it is a pipe.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {local}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write the readiness line: {e}"))?;
    drop(stdout);

    demo::serve(listener, opts, shutdown.requested())
        .await
        .map_err(|e| format!("serving failed: {e}"))?;
    log::info!("shut down");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        parse_args(args.iter().map(std::ffi::OsString::from))
    }

    fn run_args(args: &[&str]) -> Args {
        match parse(args) {
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
        assert_eq!(a.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(a.id.as_deref(), Some("VM4"));
        assert_eq!(a.load, LoadSource::Process);
        assert_eq!(a.max_requests, Some(1));
        assert_eq!(a.burn, Duration::from_millis(20));
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
        ] {
            match parse(args) {
                Err(e) => assert!(e.contains(needle), "{args:?}: {e}"),
                Ok(_) => panic!("{args:?} was accepted"),
            }
        }
    }

    #[test]
    fn help_and_version_stop_parsing() {
        // Arguments are checked in order, so a bad one before --help is still reported.
        assert!(parse(&["--listen", "x", "--help"]).is_err());
        assert!(matches!(
            parse(&["--help", "--listen", "x"]),
            Ok(Command::Help)
        ));
        assert!(matches!(parse(&["-V"]), Ok(Command::Version)));
    }
}
