//! Configuration: `balancer.ron` parsed into raw serde types (unknown fields rejected), then
//! validated into domain types. Every error names the file and, where the text is at fault,
//! the line and column.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

mod error;
mod raw;

pub use error::ConfigError;
use error::{describe_ron_error, locate_key};
use raw::*;
pub use raw::{HumanDuration, parse_duration};

use crate::relay::Splice;
use crate::selection::Algorithm;

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

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The address clients connect to.
    pub listen: SocketAddr,
    /// How a backend is picked for each connection.
    pub algorithm: Algorithm,
    /// Accept loops, each on its own thread with its own runtime (default: one per CPU).
    pub workers: usize,
    /// The backends, in configuration order (at least one, names unique).
    pub backends: Vec<BackendConfig>,
    /// Connect, idle, half-close and shutdown-grace limits.
    pub timeouts: Timeouts,
    /// Connection limits and the queue for full backends.
    pub limits: Limits,
    /// How bytes are moved: copying or splicing.
    pub relay: RelayConfig,
    /// Active health checks (defaults for every backend).
    pub health: HealthConfig,
    /// The `/load` poller of `WorkloadSensitive` mode.
    pub load_poll: LoadPollConfig,
    /// Where the admin listener (status page, metrics, runtime API) binds; off when `None`.
    pub admin: Option<SocketAddr>,
    /// When set, admin requests must carry `Authorization: Bearer <token>`.
    pub admin_token: Option<String>,
    /// The level of the one-line-per-connection access log.
    pub access_log: AccessLog,
    /// Every client starts with a PROXY protocol header (v1 or v2): a balancer stands in
    /// front, and the header's address is the client's from then on.
    pub accept_proxy: bool,
}

/// Level of the access log; `Off` silences it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum AccessLog {
    /// No access lines.
    Off,
    /// Access lines at debug level (shown with `RUST_LOG=debug`).
    Debug,
    /// Access lines at info level, shown by default.
    #[default]
    Info,
}

/// How bytes are moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// When a direction splices instead of copying.
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

/// How many clients ballast serves at once, and how it queues them.
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

/// One configured backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// Its name: unique, shown in logs, metrics and the status page.
    pub name: String,
    /// Where its clients' connections go.
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
    /// The PROXY protocol header sent to this backend before any client byte, if any.
    pub send_proxy: Option<crate::proxy_protocol::Version>,
}

/// An active health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// The backend passes when a TCP connection to it succeeds.
    Tcp,
    /// The backend passes when `GET path` answers 2xx.
    Http(String),
}

/// Active health checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// The check, unless a backend sets its own.
    pub check: Check,
    /// Time between two checks of one backend (jittered down to three quarters of it).
    pub interval: Duration,
    /// How long one check may take.
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

/// The `/load` poller of `WorkloadSensitive` mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadPollConfig {
    /// Time between two polls of one backend (jittered down to three quarters of it).
    pub interval: Duration,
    /// How long one poll may take.
    pub timeout: Duration,
}

impl LoadPollConfig {
    /// A reading older than this many intervals is stale and no longer used.
    pub const STALE_AFTER_INTERVALS: u32 = 3;

    /// The age at which a reading is no longer used: [`Self::STALE_AFTER_INTERVALS`]
    /// intervals.
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

/// Time limits (see the README's Timeouts section).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Each attempt to reach a backend; past it the client fails over.
    pub connect: Duration,
    /// A connection on which nothing moves either way for this long is closed.
    pub idle: Duration,
    /// Once one side has finished sending, the other may go this long without a byte.
    pub half_close: Duration,
    /// At shutdown, open connections get this long to finish before they are reset.
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

impl Config {
    /// Reads and validates the configuration file at `path`.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read, [`ConfigError::Syntax`] when it is
    /// not RON of the expected shape (with line and column), [`ConfigError::Invalid`] when a
    /// value breaks a rule (with line and column where it can be located).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration `text`; `path` is used in error messages only.
    ///
    /// # Errors
    /// As [`Config::load`], except that nothing is read.
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
                send_proxy: b.send_proxy,
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
            accept_proxy: raw.accept_proxy,
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
            let proxy = b
                .send_proxy
                .map_or(String::new(), |v| format!("  send_proxy {v:?}"));
            out.push_str(&format!(
                "  {:width$}  {}  weight {}{max}{proxy}{note}\n",
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
        if self.accept_proxy {
            out.push_str("clients    start with a PROXY header (accept_proxy)\n");
        }
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
            "test.ron:6:47: unknown field `wieght`: expected one of name, addr, weight, check, load_addr, load_path, max_connections, send_proxy"
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
