//! The `ballast` command line.

use std::ffi::OsString;
use std::path::PathBuf;

use super::{Arg, Args, Command, Program};

/// The configuration file read when `--config` is not given, relative to the working
/// directory.
pub const DEFAULT_CONFIG: &str = "balancer.ron";

/// The `--help` text.
pub const USAGE: &str = "\
Usage: ballast [--config PATH] [--check] [--watch]

A Layer-4 TCP load balancer.

Options:
  -c, --config PATH  configuration file (default: ./balancer.ron)
      --check        validate the configuration, print a summary and exit
                     (0 when valid, 1 otherwise)
      --watch        reload when the configuration file changes
  -h, --help         print this help
  -V, --version      print the version

The log level comes from RUST_LOG (default: info).";

/// The balancer binary, for its messages.
pub const PROGRAM: Program = Program {
    name: "ballast",
    usage: USAGE,
};

/// What `ballast` runs with.
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    /// The configuration file.
    pub config: PathBuf,
    /// `--check`: validate the configuration, print its summary and exit.
    pub check: bool,
    /// `--watch`: reload whenever the configuration file's content changes.
    pub watch: bool,
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command<Options>, String> {
    let mut args = Args::new(args)?;
    let mut config = None;
    let mut check = false;
    let mut watch = false;
    while let Some(arg) = args.next()? {
        let Arg::Flag(flag) = arg else {
            return Err(arg.unknown());
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--check" => check = true,
            "--watch" => watch = true,
            "-c" | "--config" => config = Some(PathBuf::from(args.value(&flag, "a file path")?)),
            _ => return Err(Arg::Flag(flag).unknown()),
        }
    }
    Ok(Command::Run(Options {
        config: config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG)),
        check,
        watch,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Command<Options>, String> {
        parse(args.iter().map(OsString::from))
    }

    fn run(config: &str, check: bool) -> Result<Command<Options>, String> {
        Ok(Command::Run(Options {
            config: config.into(),
            check,
            watch: false,
        }))
    }

    #[test]
    fn defaults_to_running_balancer_ron() {
        assert_eq!(parse_str(&[]), run("balancer.ron", false));
    }

    #[test]
    fn config_and_check_in_any_order() {
        let expected = run("x.ron", true);
        assert_eq!(parse_str(&["--check", "-c", "x.ron"]), expected);
        assert_eq!(parse_str(&["--config", "x.ron", "--check"]), expected);
        assert_eq!(parse_str(&["--config=x.ron", "--check"]), expected);
        assert_eq!(parse_str(&["--check", "-cx.ron"]), expected);
    }

    #[test]
    fn watch_is_a_flag() {
        let expected = Ok(Command::Run(Options {
            config: "x.ron".into(),
            check: false,
            watch: true,
        }));
        assert_eq!(parse_str(&["--watch", "-c", "x.ron"]), expected);
        assert_eq!(parse_str(&["-c", "x.ron", "--watch"]), expected);
        assert_eq!(
            parse_str(&["--watch=yes"]),
            Err("--watch takes no value, but was given `yes`".into())
        );
    }

    #[test]
    fn errors_name_the_argument() {
        assert_eq!(
            parse_str(&["--config"]),
            Err("--config needs a file path".into())
        );
        assert_eq!(parse_str(&["-c"]), Err("-c needs a file path".into()));
        assert_eq!(
            parse_str(&["--frobnicate"]),
            Err("unknown argument `--frobnicate`".into())
        );
        assert_eq!(
            parse_str(&["x.ron"]),
            Err("unknown argument `x.ron`".into())
        );
        assert_eq!(
            parse_str(&["--check=no"]),
            Err("--check takes no value, but was given `no`".into())
        );
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse_str(&["--check", "-h"]), Ok(Command::Help));
        assert_eq!(parse_str(&["-V"]), Ok(Command::Version));
        // Parsing stops there: what follows is not read.
        assert_eq!(parse_str(&["--help", "--bogus"]), Ok(Command::Help));
    }
}
