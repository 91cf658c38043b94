//! Command-line parsing for the `ballast` binary.

use std::path::PathBuf;

pub const DEFAULT_CONFIG: &str = "balancer.ron";

pub const USAGE: &str = "\
Usage: ballast [--config PATH] [--check]

A Layer-4 TCP load balancer.

Options:
  -c, --config PATH  configuration file (default: ./balancer.ron)
      --check        validate the configuration, print a summary and exit
                     (0 when valid, 1 otherwise)
  -h, --help         print this help
  -V, --version      print the version

The log level comes from RUST_LOG (default: info).";

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run { config: PathBuf },
    Check { config: PathBuf },
    Help,
    Version,
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut config = None;
    let mut check = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--check" => check = true,
            "-c" | "--config" => {
                let path = args
                    .next()
                    .ok_or_else(|| format!("{arg} needs a file path"))?;
                config = Some(PathBuf::from(path));
            }
            other => match other.strip_prefix("--config=") {
                Some(path) => config = Some(PathBuf::from(path)),
                None => return Err(format!("unknown argument `{other}`")),
            },
        }
    }
    let config = config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    Ok(if check {
        Command::Check { config }
    } else {
        Command::Run { config }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_to_running_balancer_ron() {
        assert_eq!(
            parse_str(&[]),
            Ok(Command::Run {
                config: "balancer.ron".into()
            })
        );
    }

    #[test]
    fn config_and_check_in_any_order() {
        let expected = Ok(Command::Check {
            config: "x.ron".into(),
        });
        assert_eq!(parse_str(&["--check", "-c", "x.ron"]), expected);
        assert_eq!(parse_str(&["--config", "x.ron", "--check"]), expected);
        assert_eq!(parse_str(&["--config=x.ron", "--check"]), expected);
    }

    #[test]
    fn errors_name_the_argument() {
        assert_eq!(
            parse_str(&["--config"]),
            Err("--config needs a file path".into())
        );
        assert_eq!(
            parse_str(&["--frobnicate"]),
            Err("unknown argument `--frobnicate`".into())
        );
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse_str(&["--check", "-h"]), Ok(Command::Help));
        assert_eq!(parse_str(&["-V"]), Ok(Command::Version));
    }
}
