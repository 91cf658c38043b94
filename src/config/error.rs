//! Configuration errors, and where in the text each one is: path:line:column.

use std::fmt;
use std::path::PathBuf;

/// Why a configuration was refused. Displayed for humans as
/// `PATH:LINE:COL: what was expected` (or `PATH: ...` where no position applies); the
/// binaries exit 1 on it.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The file asked for.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// The text is not a valid configuration at `line:col`.
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the fault.
        line: usize,
        /// 1-based column of the fault.
        col: usize,
        /// What was expected there.
        message: String,
    },
    /// The text parsed but describes an unusable balancer.
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where the offending value starts, when it can be located.
        position: Option<(usize, usize)>,
        /// What is wrong and what was expected.
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "{}: cannot read configuration: {source}", path.display())
            }
            ConfigError::Syntax {
                path,
                line,
                col,
                message,
            } => write!(f, "{}:{line}:{col}: {message}", path.display()),
            ConfigError::Invalid {
                path,
                position: Some((line, col)),
                message,
            } => write!(f, "{}:{line}:{col}: {message}", path.display()),
            ConfigError::Invalid {
                path,
                position: None,
                message,
            } => write!(f, "{}: {message}", path.display()),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Rewrites ron's messages where they speak of Rust types rather than the file.
pub(super) fn describe_ron_error(code: &ron::Error) -> String {
    match code {
        ron::Error::NoSuchEnumVariant {
            expected,
            found,
            outer,
        } => {
            let what = match outer.as_deref() {
                Some("Algorithm") => "algorithm",
                Some("Check") => "health check",
                Some("AccessLog") => "access_log level",
                Some("Splice") => "splice mode",
                _ => "variant",
            };
            format!(
                "unknown {what} `{found}`: expected one of {}",
                expected.join(", ")
            )
        }
        ron::Error::MissingStructField { field, outer } => {
            let place = match outer.as_deref() {
                Some("RawBackend") => " in a backend entry",
                Some("RawService") => " in a service entry",
                Some("RawRoute") => " in a route entry",
                Some("RawConfig") => "",
                _ => " in this section",
            };
            format!("missing field `{field}`{place}")
        }
        ron::Error::NoSuchStructField {
            expected, found, ..
        } => format!(
            "unknown field `{found}`: expected one of {}",
            expected.join(", ")
        ),
        other => other.to_string(),
    }
}

/// Finds where the top-level `key:` (inside the file's outer parentheses, not within a
/// nested entry) is written, as a 1-based (line, column). Comments and string contents are
/// skipped, so a mention there is not taken for it.
pub(super) fn locate_key(text: &str, key: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = text[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |end| i + 2 + end + 2);
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                i += 1;
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b if is_ident(b) => {
                let start = i;
                while i < bytes.len() && is_ident(bytes[i]) {
                    i += 1;
                }
                if depth == 1 && &text[start..i] == key && text[i..].trim_start().starts_with(':') {
                    let before = &text[..start];
                    let line = before.matches('\n').count() + 1;
                    let col = before.rfind('\n').map_or(start, |nl| start - nl - 1) + 1;
                    return Some((line, col));
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Where the value of the top-level `key` starts (inside it, if quoted), as ron reports
/// positions of values; see [`locate_key`].
pub(super) fn locate_value(text: &str, key: &str) -> Option<(usize, usize)> {
    let (line, col) = locate_key(text, key)?;
    let line_text = text.lines().nth(line - 1)?;
    let after_key = &line_text[col - 1 + key.len()..];
    let rest = after_key.trim_start().strip_prefix(':')?.trim_start();
    let skipped = line_text.len() - rest.len() + usize::from(rest.starts_with('"'));
    Some((line, skipped + 1))
}
