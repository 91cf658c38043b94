//! Configuration: `balancer.ron` parsed into raw serde types (unknown fields rejected), then
//! validated into domain types. Every error names the file and, where the text is at fault,
//! the line and column.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::relay::Splice;

/// The highest weight a backend may have. It bounds the smooth weighted round robin schedule
/// (sum of weights entries) and matches HAProxy's range.
pub const MAX_WEIGHT: u32 = 256;

/// The most accept loops (worker threads) a configuration may ask for.
pub const MAX_WORKERS: usize = 256;

/// Default time allowed for a TCP connect to a backend.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time open connections get to finish after a shutdown request.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// Default time a connection may pass with no byte in either direction (nginx's
/// `proxy_timeout` default).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(600);
/// Default time one direction may stay open after the other has finished.
pub const DEFAULT_HALF_CLOSE: Duration = Duration::from_secs(60);
/// Default path of the load endpoint polled in WorkloadSensitive mode.
pub const DEFAULT_LOAD_PATH: &str = "/load";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Algorithm {
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    WorkloadSensitive,
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub algorithm: Algorithm,
    /// Accept loops, each on its own thread with its own runtime (default: one per CPU).
    pub workers: usize,
    pub backends: Vec<BackendConfig>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub relay: RelayConfig,
    pub health: HealthConfig,
    pub load_poll: LoadPollConfig,
    /// Where the admin listener (status page, metrics, runtime API) binds; off when `None`.
    pub admin: Option<SocketAddr>,
    /// When set, admin requests must carry `Authorization: Bearer <token>`.
    pub admin_token: Option<String>,
    /// The level of the one-line-per-connection access log.
    pub access_log: AccessLog,
}

/// Level of the access log; `Off` silences it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum AccessLog {
    Off,
    Debug,
    #[default]
    Info,
}

/// How bytes are moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    pub splice: Splice,
    /// Pipes (two descriptors each) that splicing may use at once; beyond it, copy.
    pub max_pipes: usize,
    /// Bytes of pipe asked for per splicing direction (HAProxy's `tune.pipesize`): the most
    /// a direction parks in its pipe. The kernel rounds it up to a power of two pages.
    pub pipe_size: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            splice: Splice::Auto,
            max_pipes: 1024,
            pipe_size: crate::relay::zero_copy::DEFAULT_PIPE_SIZE,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent client connections; at the limit ballast stops accepting and new clients
    /// wait in the kernel's listen backlog.
    pub max_connections: usize,
    /// Clients that may wait for a backend below its `max_connections`.
    pub queue: usize,
    /// How long a queued client waits before it is closed.
    pub queue_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            queue: 256,
            queue_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub name: String,
    pub addr: SocketAddr,
    /// 0 means drained: the backend takes no new connections.
    pub weight: u32,
    /// How the active health check probes this backend.
    pub check: Check,
    /// Where the load agent listens (the backend's own address unless configured).
    pub load_addr: SocketAddr,
    /// The path polled for the load percentage.
    pub load_path: String,
    /// Concurrent connections this backend takes; a full backend is skipped.
    pub max_connections: Option<u64>,
}

/// An active health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// The backend passes when a TCP connection to it succeeds.
    Tcp,
    /// The backend passes when `GET path` answers 2xx.
    Http(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passed checks that bring a down backend back.
    pub rise: u32,
    /// Consecutive failed checks that take an up backend out.
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        // HAProxy's defaults: inter 2s, rise 2, fall 3.
        HealthConfig {
            check: Check::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadPollConfig {
    pub interval: Duration,
    pub timeout: Duration,
}

impl LoadPollConfig {
    /// A reading older than this many intervals is stale and no longer used.
    pub const STALE_AFTER_INTERVALS: u32 = 3;

    pub fn stale_after(&self) -> Duration {
        self.interval * Self::STALE_AFTER_INTERVALS
    }
}

impl Default for LoadPollConfig {
    fn default() -> Self {
        LoadPollConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub idle: Duration,
    pub half_close: Duration,
    pub grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            idle: DEFAULT_IDLE,
            half_close: DEFAULT_HALF_CLOSE,
            grace: DEFAULT_GRACE,
        }
    }
}

#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The text is not a valid configuration at `line:col`.
    Syntax {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
    /// The text parsed but describes an unusable balancer.
    Invalid {
        path: PathBuf,
        /// Where the offending value starts, when it can be located.
        position: Option<(usize, usize)>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Addr,
    algorithm: Algorithm,
    workers: Option<Checked<Workers>>,
    backends: Backends,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    relay: RawRelay,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    load_poll: RawLoadPoll,
    admin: Option<Addr>,
    admin_token: Option<Token>,
    #[serde(default)]
    access_log: AccessLog,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    splice: Option<Splice>,
    max_pipes: Option<usize>,
    pipe_size: Option<Checked<PipeSize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<Checked<ClientLimit>>,
    queue: Option<usize>,
    queue_timeout: Option<HumanDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    check: Option<RawCheck>,
    interval: Option<Positive>,
    timeout: Option<Positive>,
    rise: Option<Checked<CheckCount>>,
    fall: Option<Checked<CheckCount>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLoadPoll {
    interval: Option<Positive>,
    timeout: Option<Positive>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: Name,
    addr: Addr,
    #[serde(default = "default_weight")]
    weight: Checked<Weight>,
    check: Option<RawCheck>,
    load_addr: Option<Addr>,
    load_path: Option<RequestPath>,
    max_connections: Option<Checked<BackendMax>>,
}

fn default_weight() -> Checked<Weight> {
    Checked::new(1)
}

/// The list of backends, checked as a whole while it is parsed, so that an unusable list is
/// reported at its end.
struct Backends(Vec<RawBackend>);

impl<'de> Deserialize<'de> for Backends {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = Backends;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of backends")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Backends, A::Error> {
                let mut backends: Vec<RawBackend> = Vec::new();
                while let Some(backend) = seq.next_element::<RawBackend>()? {
                    backends.push(backend);
                }
                if backends.is_empty() {
                    return Err(serde::de::Error::custom(
                        "no backends: `backends` must list at least one (name: \"...\", addr: \"host:port\")",
                    ));
                }
                if backends.iter().all(|b| b.weight.get() == 0) {
                    return Err(serde::de::Error::custom(
                        "every backend has weight 0 (drained): no backend can receive traffic",
                    ));
                }
                Ok(Backends(backends))
            }
        }
        d.deserialize_seq(Entries)
    }
}

/// A rule for an integer setting, checked while parsing so that a value out of range is
/// reported at its line and column.
trait Rule {
    const MIN: u64;
    const MAX: u64;
    fn complaint(value: u64) -> String;
}

/// An integer that obeys `R`.
struct Checked<R>(u64, std::marker::PhantomData<R>);

impl<R> Checked<R> {
    fn new(value: u64) -> Checked<R> {
        Checked(value, std::marker::PhantomData)
    }

    fn get(&self) -> u64 {
        self.0
    }
}

impl<'de, R: Rule> Deserialize<'de> for Checked<R> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        held_to(d, |&value: &u64| {
            if (R::MIN..=R::MAX).contains(&value) {
                Ok(())
            } else {
                Err(R::complaint(value))
            }
        })
        .map(Checked::new)
    }
}

/// Declares a `Rule`: its name, inclusive range and complaint about a value outside it.
macro_rules! rule {
    ($(#[$doc:meta])* $name:ident: $min:expr, $max:expr, |$value:ident| $complaint:expr) => {
        $(#[$doc])*
        struct $name;
        impl Rule for $name {
            const MIN: u64 = $min;
            const MAX: u64 = $max;
            fn complaint($value: u64) -> String {
                $complaint
            }
        }
    };
}

rule!(
    /// `relay.pipe_size`: from the kernel's smallest pipe (one page) to 64 MiB.
    PipeSize: 4096, 64 << 20, |value| format!(
        "pipe_size {value}: expected 4096 to {} bytes", 64 << 20
    )
);
rule!(Weight: 0, MAX_WEIGHT as u64, |value| format!(
    "weight {value}: expected 0 (drained) to {MAX_WEIGHT}"
));
rule!(
    /// A backend's own `max_connections`.
    BackendMax: 1, u64::MAX, |value| format!(
        "max_connections {value}: expected at least 1 (use weight: 0 to drain)"
    )
);
rule!(
    /// `limits.max_connections`.
    ClientLimit: 1, u64::MAX, |value| format!("max_connections {value}: expected at least 1")
);
rule!(
    /// `health.rise` and `health.fall`: how many checks in a row flip a backend.
    CheckCount: 1, u32::MAX as u64, |value| format!(
        "{value} checks in a row: expected 1 or more"
    )
);
rule!(Workers: 1, MAX_WORKERS as u64, |value| format!(
    "workers is {value}: expected 1 to {MAX_WORKERS}"
));

/// A duration that must be greater than zero.
struct Positive(Duration);

/// Deserializes a `T` and holds it to `rule`, whose `Err` is the complaint, reported at the
/// value's line and column.
fn held_to<'de, D, T>(d: D, rule: impl FnOnce(&T) -> Result<(), String>) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let value = T::deserialize(d)?;
    rule(&value).map_err(serde::de::Error::custom)?;
    Ok(value)
}

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let HumanDuration(duration) = held_to(d, |HumanDuration(d): &HumanDuration| {
            if d.is_zero() {
                Err("a zero duration: expected more than zero, such as \"1s\"".into())
            } else {
                Ok(())
            }
        })?;
        Ok(Positive(duration))
    }
}

/// A backend name: not blank.
struct Name(String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        held_to(d, |name: &String| {
            if name.trim().is_empty() {
                Err("a blank backend name: expected a name such as \"vm4\"".into())
            } else {
                Ok(())
            }
        })
        .map(Name)
    }
}

/// A request path we can put on a request line verbatim.
struct RequestPath(String);

impl<'de> Deserialize<'de> for RequestPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        held_to(d, |path: &String| {
            let printable = path.bytes().all(|b| b.is_ascii_graphic());
            if path.starts_with('/') && printable && path.len() <= 1024 {
                Ok(())
            } else {
                Err(format!(
                    "path {path:?} is not usable: expected an absolute path such as \"/load\", without spaces or control characters"
                ))
            }
        })
        .map(RequestPath)
    }
}

/// `Check` as written in the file, with its path checked.
#[derive(Deserialize)]
#[serde(rename = "Check")]
enum RawCheck {
    Tcp,
    Http(RequestPath),
}

impl From<RawCheck> for Check {
    fn from(raw: RawCheck) -> Check {
        match raw {
            RawCheck::Tcp => Check::Tcp,
            RawCheck::Http(path) => Check::Http(path.0),
        }
    }
}

/// The admin bearer token: printable ASCII without spaces, so it fits a header verbatim.
struct Token(String);

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        held_to(d, |token: &String| {
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                Err("admin_token must be non-empty printable ASCII without spaces".into())
            } else {
                Ok(())
            }
        })
        .map(Token)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect: Option<Positive>,
    idle: Option<Positive>,
    half_close: Option<Positive>,
    grace: Option<HumanDuration>,
}

/// A socket address, with an error message that shows the expected form.
struct Addr(SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.trim().parse().map(Addr).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid address {text:?}: expected IP:port such as \"127.0.0.1:8081\" or \"[::1]:8081\""
            ))
        })
    }
}

/// A duration written for humans: `"250ms"`, `"2s"`, `"5m"`, `"1h"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(HumanDuration).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?}: expected a whole number followed by ms, s, m or h, such as \"500ms\" or \"2s\""
            ))
        })
    }
}

/// Parses `"250ms"`, `"2s"`, `"5m"` or `"1h"`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let millis_per_unit = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(millis_per_unit).map(Duration::from_millis)
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration `text`; `path` is used in error messages only.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let ron_options = ron::Options::default()
            .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME);
        let raw: RawConfig = ron_options
            .from_str(text)
            .map_err(|e| ConfigError::Syntax {
                path: path.to_path_buf(),
                line: e.span.start.line,
                col: e.span.start.col,
                message: describe_ron_error(&e.code),
            })?;
        for (i, b) in raw.backends.0.iter().enumerate() {
            if raw.backends.0[..i]
                .iter()
                .any(|earlier| earlier.name.0 == b.name.0)
            {
                let quoted = format!("{:?}", b.name.0);
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    position: locate_key(text, "name", Some(&quoted), 1),
                    message: format!("duplicate backend name {quoted}: names must be unique"),
                });
            }
        }
        let health = health_config(raw.health);
        let poll_defaults = LoadPollConfig::default();
        let load_poll = LoadPollConfig {
            interval: raw
                .load_poll
                .interval
                .map_or(poll_defaults.interval, |d| d.0),
            timeout: raw.load_poll.timeout.map_or(poll_defaults.timeout, |d| d.0),
        };
        let backends = raw
            .backends
            .0
            .into_iter()
            .map(|b| BackendConfig {
                name: b.name.0,
                addr: b.addr.0,
                weight: b.weight.get() as u32,
                check: b.check.map_or_else(|| health.check.clone(), Check::from),
                load_addr: b.load_addr.map_or(b.addr.0, |a| a.0),
                load_path: b
                    .load_path
                    .map_or_else(|| DEFAULT_LOAD_PATH.to_string(), |p| p.0),
                max_connections: b.max_connections.map(|m| m.get()),
            })
            .collect();

        let defaults = Timeouts::default();
        let timeouts = Timeouts {
            connect: raw.timeouts.connect.map_or(defaults.connect, |d| d.0),
            idle: raw.timeouts.idle.map_or(defaults.idle, |d| d.0),
            half_close: raw.timeouts.half_close.map_or(defaults.half_close, |d| d.0),
            grace: raw.timeouts.grace.map_or(defaults.grace, |d| d.0),
        };
        let default_limits = Limits::default();
        let default_relay = RelayConfig::default();
        let limits = Limits {
            max_connections: raw
                .limits
                .max_connections
                .map_or(default_limits.max_connections, |m| {
                    usize::try_from(m.get()).unwrap_or(usize::MAX)
                }),
            queue: raw.limits.queue.unwrap_or(default_limits.queue),
            queue_timeout: raw
                .limits
                .queue_timeout
                .map_or(default_limits.queue_timeout, |d| d.0),
        };
        let workers = match raw.workers {
            Some(n) => n.get() as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        // Port 0 asks the system for a free port each, so only fixed ports can collide.
        if raw
            .admin
            .as_ref()
            .is_some_and(|a| a.0 == raw.listen.0 && a.0.port() != 0)
        {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                position: locate_key(text, "admin", None, 0),
                message: "admin must listen on another address than listen".into(),
            });
        }
        Ok(Config {
            listen: raw.listen.0,
            algorithm: raw.algorithm,
            workers,
            backends,
            timeouts,
            limits,
            relay: RelayConfig {
                splice: raw.relay.splice.unwrap_or_default(),
                max_pipes: raw.relay.max_pipes.unwrap_or(default_relay.max_pipes),
                pipe_size: raw
                    .relay
                    .pipe_size
                    .map_or(default_relay.pipe_size, |size| size.get() as usize),
            },
            health,
            load_poll,
            admin: raw.admin.map(|a| a.0),
            admin_token: raw.admin_token.map(|t| t.0),
            access_log: raw.access_log,
        })
    }

    /// A one-screen human summary, printed by `ballast --check`.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "listen     {}\nalgorithm  {}\nworkers    {}\nbackends   {}\n",
            self.listen,
            self.algorithm,
            self.workers,
            self.backends.len()
        );
        let width = self
            .backends
            .iter()
            .map(|b| b.name.len())
            .max()
            .unwrap_or(0);
        for b in &self.backends {
            let note = if b.weight == 0 { "  (drained)" } else { "" };
            let max = b
                .max_connections
                .map_or(String::new(), |m| format!("  max {m}"));
            out.push_str(&format!(
                "  {:width$}  {}  weight {}{max}{note}\n",
                b.name, b.addr, b.weight
            ));
        }
        let t = &self.timeouts;
        out.push_str(&format!(
            "timeouts   connect {:?}, idle {:?}, half-close {:?}, grace {:?}\n",
            t.connect, t.idle, t.half_close, t.grace
        ));
        out.push_str(&format!(
            "relay      splice {:?}, up to {} pipes of {} bytes\n",
            self.relay.splice, self.relay.max_pipes, self.relay.pipe_size
        ));
        let l = &self.limits;
        out.push_str(&format!(
            "limits     {} connections, queue {} for up to {:?}\n",
            l.max_connections, l.queue, l.queue_timeout
        ));
        let h = &self.health;
        out.push_str(&format!(
            "health     {:?} every {:?}, timeout {:?}, rise {}, fall {}\n",
            h.check, h.interval, h.timeout, h.rise, h.fall
        ));
        if self.algorithm == Algorithm::WorkloadSensitive {
            out.push_str(&format!(
                "load poll  every {:?}, timeout {:?}\n",
                self.load_poll.interval, self.load_poll.timeout
            ));
        }
        let admin = self.admin.map_or("off".to_string(), |a| {
            let auth = if self.admin_token.is_some() {
                " (bearer token required)"
            } else {
                ""
            };
            format!("http://{a}/{auth}")
        });
        out.push_str(&format!(
            "admin      {admin}\naccess log {:?}\n",
            self.access_log
        ));
        out
    }
}

fn health_config(raw: RawHealth) -> HealthConfig {
    let d = HealthConfig::default();
    let count = |c: Option<Checked<CheckCount>>, default: u32| {
        c.map_or(default, |c| u32::try_from(c.get()).unwrap_or(u32::MAX))
    };
    HealthConfig {
        check: raw.check.map_or(d.check, Check::from),
        interval: raw.interval.map_or(d.interval, |v| v.0),
        timeout: raw.timeout.map_or(d.timeout, |v| v.0),
        rise: count(raw.rise, d.rise),
        fall: count(raw.fall, d.fall),
    }
}

/// Rewrites ron's messages where they speak of Rust types rather than the file.
fn describe_ron_error(code: &ron::Error) -> String {
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

/// Finds the `nth` (0-based) place where `key:` is written, followed by `value` when given,
/// as a 1-based (line, column) of that value (inside it, if quoted), or of the key when no
/// value is given. Comments and string contents are skipped, so a mention there is not
/// taken for it.
fn locate_key(text: &str, key: &str, value: Option<&str>, nth: usize) -> Option<(usize, usize)> {
    let mut seen = 0;
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
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
            b if is_ident(b) => {
                let start = i;
                while i < bytes.len() && is_ident(bytes[i]) {
                    i += 1;
                }
                let rest = text[i..].trim_start();
                let wanted = rest
                    .strip_prefix(':')
                    .is_some_and(|after| value.is_none_or(|v| after.trim_start().starts_with(v)));
                if &text[start..i] == key && wanted {
                    if seen < nth {
                        seen += 1;
                        continue;
                    }
                    // Inside a quoted value, like ron's own positions.
                    let at = match value {
                        Some(v) => {
                            text.len() - rest[1..].trim_start().len()
                                + usize::from(v.starts_with('"'))
                        }
                        None => start,
                    };
                    let before = &text[..at];
                    let line = before.matches('\n').count() + 1;
                    let col = before.rfind('\n').map_or(at, |nl| at - nl - 1) + 1;
                    return Some((line, col));
                }
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.ron"))
    }

    const GOOD: &str = r#"(
    listen: "127.0.0.1:8080",
    algorithm: WeightedRoundRobin,
    backends: [
        (name: "vm4", addr: "127.0.0.1:8081", weight: 3),
        (name: "vm5", addr: "127.0.0.1:8082", weight: 5),
        (name: "vm6", addr: "127.0.0.1:8083"),
    ],
)"#;

    #[test]
    fn parses_the_documented_format_with_default_weight() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.listen, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(c.algorithm, Algorithm::WeightedRoundRobin);
        let weights: Vec<u32> = c.backends.iter().map(|b| b.weight).collect();
        assert_eq!(weights, vec![3, 5, 1]);
        assert_eq!(c.timeouts, Timeouts::default());
    }

    #[test]
    fn timeouts_section_is_optional_and_parsed() {
        let text = GOOD.replace(
            "backends:",
            "timeouts: (connect: \"250ms\", grace: \"1m\"),\n    backends:",
        );
        let c = parse(&text).expect("valid");
        assert_eq!(c.timeouts.connect, Duration::from_millis(250));
        assert_eq!(c.timeouts.grace, Duration::from_secs(60));
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let text = GOOD.replace("weight: 3)", "weight: 3");
        let e = parse(&text).expect_err("invalid");
        let ConfigError::Syntax { line, .. } = e else {
            panic!("expected a syntax error, got {e:?}")
        };
        assert_eq!(line, 6);
        assert!(e.to_string().starts_with("test.ron:6:"), "{e}");
    }

    #[test]
    fn unknown_algorithm_lists_valid_names() {
        let e = parse(&GOOD.replace("WeightedRoundRobin", "Random")).expect_err("invalid");
        let msg = e.to_string();
        assert!(msg.starts_with("test.ron:3:"), "{msg}");
        for name in [
            "RoundRobin",
            "WeightedRoundRobin",
            "LeastConnections",
            "WorkloadSensitive",
        ] {
            assert!(msg.contains(name), "{msg}");
        }
    }

    #[test]
    fn unknown_field_is_rejected() {
        let e = parse(&GOOD.replace("weight: 5", "wieght: 5")).expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "test.ron:6:47: unknown field `wieght`: expected one of name, addr, weight, check, load_addr, load_path, max_connections"
        );
    }

    #[test]
    fn bad_address_is_rejected_with_position() {
        let e = parse(&GOOD.replace("127.0.0.1:8082", "127.0.0.1:99999")).expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "test.ron:6:30: invalid address \"127.0.0.1:99999\": expected IP:port such as \"127.0.0.1:8081\" or \"[::1]:8081\""
        );
    }

    #[test]
    fn no_backends_is_rejected() {
        let text = r#"(listen: "127.0.0.1:1", algorithm: RoundRobin, backends: [])"#;
        let e = parse(text).expect_err("invalid");
        assert!(e.to_string().contains("no backends"), "{e}");
    }

    #[test]
    fn duplicate_names_point_at_the_second() {
        let e = parse(&GOOD.replace("\"vm5\"", "\"vm4\"")).expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "test.ron:6:17: duplicate backend name \"vm4\": names must be unique"
        );
    }

    #[test]
    fn all_drained_is_rejected() {
        let text = r#"(listen: "127.0.0.1:1", algorithm: RoundRobin,
            backends: [(name: "a", addr: "127.0.0.1:2", weight: 0)])"#;
        let e = parse(text).expect_err("invalid");
        assert!(
            e.to_string().contains("no backend can receive traffic"),
            "{e}"
        );
    }

    #[test]
    fn weight_above_max_is_rejected() {
        let e = parse(&GOOD.replace("weight: 5", "weight: 257")).expect_err("invalid");
        assert!(e.to_string().contains("expected 0 (drained) to 256"), "{e}");
    }

    #[test]
    fn bad_duration_is_explained() {
        let text = GOOD.replace("backends:", "timeouts: (connect: \"soon\"),\n    backends:");
        let e = parse(&text).expect_err("invalid");
        assert!(e.to_string().contains("invalid duration \"soon\""), "{e}");
    }

    #[test]
    fn unknown_check_and_missing_field_speak_of_the_file() {
        let text = GOOD.replace("weight: 5)", "weight: 5, check: Https(\"/\"))");
        let e = parse(&text).expect_err("invalid");
        assert!(
            e.to_string()
                .contains("unknown health check `Https`: expected one of Tcp, Http"),
            "{e}"
        );
        let e = parse(&GOOD.replace("addr: \"127.0.0.1:8082\", ", "")).expect_err("invalid");
        assert!(
            e.to_string()
                .ends_with("missing field `addr` in a backend entry"),
            "{e}"
        );
        let e = parse(&GOOD.replace("listen: \"127.0.0.1:8080\",", "")).expect_err("invalid");
        assert!(e.to_string().ends_with("missing field `listen`"), "{e}");
    }

    #[test]
    fn admin_must_not_share_the_listen_address() {
        let text = GOOD.replace("backends:", "admin: \"127.0.0.1:8080\",\n    backends:");
        let e = parse(&text).expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "test.ron:4:5: admin must listen on another address than listen"
        );
    }

    #[test]
    fn keys_are_found_outside_comments_and_strings() {
        let text = "(\n  // admin: 1\n  /* admin: 2 */ note: \"admin: 3\",\n  admin: 4, name: \"a\", name: \"b\",\n)";
        assert_eq!(locate_key(text, "admin", None, 0), Some((4, 3)));
        assert_eq!(locate_key(text, "admin", None, 1), None);
        assert_eq!(locate_key(text, "name", Some("\"b\""), 0), Some((4, 31)));
        assert_eq!(locate_key(text, "name", Some("\"c\""), 0), None);
        // A key that merely ends with the one sought does not count.
        assert_eq!(locate_key("(my_admin: 1)", "admin", None, 0), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("99999999999999999999s"), None);
    }
}
