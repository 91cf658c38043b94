//! Command-line parsing for both binaries: [`ballast`] for the balancer, [`backend`] for the
//! demo backend `ballast-backend`. Both read their arguments with [`lexopt`] and follow the
//! same conventions, kept here once:
//!
//! - Every argument must be UTF-8; one that is not is an error that shows it escaped.
//! - An option takes its value as `--flag VALUE` or `--flag=VALUE`, and a short option as
//!   `-f VALUE` or `-fVALUE`. An option that takes no value rejects `--flag=VALUE`.
//! - `-h`/`--help` and `-V`/`--version` end parsing at once: arguments after them are not
//!   read, while a bad one before them is still an error.
//! - Errors name the argument: ``unknown argument `--x` ``, `--flag needs a value`.
//! - [`Program`] reports the outcome the same way for both: the usage on stdout and exit 0
//!   for help, `NAME VERSION` on stdout and exit 0 for the version, and `NAME: MESSAGE`, a
//!   blank line and the usage on stderr with exit [`USAGE_ERROR`] for a bad command line.

pub mod backend;
pub mod ballast;

use std::ffi::OsString;
use std::fmt::Display;
use std::process::ExitCode;

/// The exit status for a bad command line.
pub const USAGE_ERROR: u8 = 2;

/// The exit status for a failure once the command line is good: a configuration that cannot
/// be read or is invalid, an address that cannot be listened on, a runtime failure.
pub const FAILURE: u8 = 1;

/// What a command line asks a binary to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<T> {
    /// Run with these options.
    Run(T),
    /// Print the usage and exit 0.
    Help,
    /// Print the name and version and exit 0.
    Version,
}

/// A binary as its messages present it: the name they start with, and its usage text.
#[derive(Debug)]
pub struct Program {
    /// The binary's name: `ballast` or `ballast-backend`.
    pub name: &'static str,
    /// The `--help` text, also printed after a command-line error.
    pub usage: &'static str,
}

impl Program {
    /// The options to run with; or, when the command line asks for help or the version or
    /// is bad, prints what it asks for (or the error and the usage) and returns the exit code.
    pub fn options<T>(&self, parsed: Result<Command<T>, String>) -> Result<T, ExitCode> {
        match parsed {
            Ok(Command::Run(options)) => Ok(options),
            Ok(Command::Help) => {
                println!("{}", self.usage);
                Err(ExitCode::SUCCESS)
            }
            Ok(Command::Version) => {
                println!("{} {}", self.name, env!("CARGO_PKG_VERSION"));
                Err(ExitCode::SUCCESS)
            }
            Err(message) => {
                eprintln!("{}: {message}\n\n{}", self.name, self.usage);
                Err(ExitCode::from(USAGE_ERROR))
            }
        }
    }

    /// Reports a failure after parsing as `NAME: MESSAGE` on stderr; returns [`FAILURE`].
    pub fn fail(&self, message: impl Display) -> ExitCode {
        eprintln!("{}: {message}", self.name);
        ExitCode::from(FAILURE)
    }
}

/// One argument, as the parsers match on it.
#[derive(Debug, PartialEq, Eq)]
enum Arg {
    /// An option as written, without any `=VALUE`: `-c`, `--config`.
    Flag(String),
    /// Anything that is not an option (both binaries reject these).
    Positional(String),
}

impl Arg {
    /// The error for an argument the binary does not take.
    fn unknown(self) -> String {
        let (Arg::Flag(arg) | Arg::Positional(arg)) = self;
        format!("unknown argument `{arg}`")
    }
}

/// The arguments after the program name, read one at a time.
struct Args {
    parser: lexopt::Parser,
    /// The complaint about the first argument that is not UTF-8, raised once the arguments
    /// before it are read: `--help` and `--version` before it still stop at once.
    not_utf8: Option<String>,
}

impl Args {
    /// Takes the arguments up to the first that is not UTF-8, so the parsers and their
    /// messages deal in `str` only; that argument is reported when the parser reaches it.
    fn new(args: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
        let mut text = Vec::new();
        let mut not_utf8 = None;
        for arg in args {
            match arg.into_string() {
                Ok(arg) => text.push(arg),
                Err(arg) => {
                    not_utf8 = Some(format!("argument {arg:?} is not valid UTF-8"));
                    break;
                }
            }
        }
        Ok(Args {
            parser: lexopt::Parser::from_args(text),
            not_utf8,
        })
    }

    /// The next argument, or `None` after the last one.
    fn next(&mut self) -> Result<Option<Arg>, String> {
        match self.parser.next() {
            Ok(None) => match self.not_utf8.take() {
                Some(complaint) => Err(complaint),
                None => Ok(None),
            },
            Ok(Some(lexopt::Arg::Short(c))) => Ok(Some(Arg::Flag(format!("-{c}")))),
            Ok(Some(lexopt::Arg::Long(name))) => Ok(Some(Arg::Flag(format!("--{name}")))),
            Ok(Some(lexopt::Arg::Value(value))) => Ok(Some(Arg::Positional(text(value)))),
            Err(lexopt::Error::UnexpectedValue { option, value }) => Err(format!(
                "{option} takes no value, but was given `{}`",
                text(value)
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The value of `flag`, the option just read; `what` names it in the error when the
    /// command line ends first (`--config needs a file path`).
    fn value(&mut self, flag: &str, what: &str) -> Result<String, String> {
        match self.parser.value() {
            Ok(value) => Ok(text(value)),
            // The value is the argument that is not UTF-8.
            Err(_) => Err(self
                .not_utf8
                .take()
                .unwrap_or_else(|| format!("{flag} needs {what}"))),
        }
    }
}

/// An argument or part of one, known to be UTF-8 since [`Args::new`] kept only those.
fn text(value: OsString) -> String {
    value
        .into_string()
        .unwrap_or_else(|value| value.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn args(list: &[&str]) -> Args {
        Args::new(list.iter().map(OsString::from)).expect("UTF-8 arguments")
    }

    fn all(mut args: Args) -> Vec<Arg> {
        let mut out = Vec::new();
        while let Some(arg) = args.next().expect("an argument") {
            out.push(arg);
        }
        out
    }

    #[test]
    fn values_come_separate_or_after_an_equals_sign() {
        for list in [
            &["--config", "a=b.ron"][..],
            &["--config=a=b.ron"],
            &["-c", "a=b.ron"],
            &["-ca=b.ron"],
        ] {
            let mut a = args(list);
            let flag = match a.next() {
                Ok(Some(Arg::Flag(flag))) => flag,
                other => panic!("{list:?}: {other:?}"),
            };
            assert_eq!(a.value(&flag, "a file path"), Ok("a=b.ron".into()));
            assert_eq!(a.next(), Ok(None), "{list:?}");
        }
    }

    #[test]
    fn a_value_may_look_like_an_option() {
        let mut a = args(&["--id", "--check"]);
        assert_eq!(a.next(), Ok(Some(Arg::Flag("--id".into()))));
        assert_eq!(a.value("--id", "a value"), Ok("--check".into()));
    }

    #[test]
    fn short_flags_combine_and_positionals_stay_whole() {
        assert_eq!(
            all(args(&["-hV", "x", "--", "--help"])),
            [
                Arg::Flag("-h".into()),
                Arg::Flag("-V".into()),
                Arg::Positional("x".into()),
                Arg::Positional("--help".into()),
            ]
        );
    }

    #[test]
    fn errors_name_the_argument() {
        let mut a = args(&["--listen"]);
        a.next().unwrap();
        assert_eq!(
            a.value("--listen", "a value"),
            Err("--listen needs a value".into())
        );

        let mut a = args(&["--check=yes"]);
        assert_eq!(a.next(), Ok(Some(Arg::Flag("--check".into()))));
        assert_eq!(
            a.next(),
            Err("--check takes no value, but was given `yes`".into())
        );

        assert_eq!(
            Arg::Positional("x.ron".into()).unknown(),
            "unknown argument `x.ron`"
        );
    }

    #[test]
    fn an_argument_that_is_not_utf8_is_an_error_showing_it() {
        let bad = OsString::from_vec(b"--config=b\xffd.ron".to_vec());
        let mut args = Args::new([OsString::from("--check"), bad]).expect("args");
        assert!(matches!(args.next(), Ok(Some(Arg::Flag(f))) if f == "--check"));
        assert_eq!(
            args.next().err().as_deref(),
            Some(r#"argument "--config=b\xFFd.ron" is not valid UTF-8"#)
        );
        // As the value of a flag, too.
        let bad = OsString::from_vec(b"b\xffd.ron".to_vec());
        let mut args = Args::new([OsString::from("--config"), bad]).expect("args");
        assert!(matches!(args.next(), Ok(Some(Arg::Flag(f))) if f == "--config"));
        assert_eq!(
            args.value("--config", "a file path").err().as_deref(),
            Some(r#"argument "b\xFFd.ron" is not valid UTF-8"#)
        );
    }
}
