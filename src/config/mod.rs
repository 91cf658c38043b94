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
use error::{describe_ron_error, locate_key, locate_value};
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
/// Default time a client of a service with routes has to send its whole TLS ClientHello.
pub const DEFAULT_CLIENT_HELLO: Duration = Duration::from_secs(5);
/// Default number of pipes splicing may hold at once (`relay.max_pipes`).
pub const DEFAULT_MAX_PIPES: usize = 1024;
/// Default path of the load endpoint polled in WorkloadSensitive mode.
pub const DEFAULT_LOAD_PATH: &str = "/load";

/// A validated configuration: the process-wide settings and the services it serves.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Accept loops, each on its own thread with its own runtime (default: one per CPU).
    pub workers: usize,
    /// The services, in configuration order (at least one; names unique, and no address
    /// listened on by two of them).
    pub services: Vec<ServiceConfig>,
    /// Pipes (two descriptors each) that splicing may use at once across every service;
    /// beyond it, directions copy.
    pub max_pipes: usize,
    /// How backends given by host name are resolved.
    pub dns: DnsConfig,
    /// Where the admin listener (status page, metrics, runtime API) binds; off when `None`.
    pub admin: Option<SocketAddr>,
    /// When set, admin requests must carry `Authorization: Bearer <token>`.
    pub admin_token: Option<String>,
}

/// One service: the addresses it listens on, the backends its clients are relayed to and
/// the routes that send them to other services by TLS server name, with its own timeouts,
/// limits, relay, health checks, load polls and access log (the file's top-level sections,
/// where the service sets none of its own).
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceConfig {
    /// Its name: unique, shown in logs, metrics and the status page. The single-service
    /// form of the file names its one service [`DEFAULT_SERVICE`].
    pub name: String,
    /// The addresses clients connect to; none for a service reached only through another
    /// service's routes.
    pub listen: Vec<SocketAddr>,
    /// How a backend is picked for each connection (`RoundRobin`, unused, for a service
    /// without backends).
    pub algorithm: Algorithm,
    /// The backends, in configuration order (names unique); none only for a service with
    /// routes, whose clients that match no route are then closed.
    pub backends: Vec<BackendConfig>,
    /// Where clients go by the server name of their TLS ClientHello, in configuration order;
    /// empty for a service that relays every client to its own backends. A route leads to
    /// another service of the file, one without routes of its own.
    pub routes: Vec<RouteConfig>,
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
    /// The level of the one-line-per-connection access log.
    pub access_log: AccessLog,
    /// Every client starts with a PROXY protocol header (v1 or v2): a balancer stands in
    /// front, and the header's address is the client's from then on.
    pub accept_proxy: bool,
    /// A backend that comes up while the service runs (added, or back from down) ramps
    /// its weight from a sixteenth to the whole over this time (HAProxy's `slowstart`,
    /// Envoy's slow start mode); `None`: at once.
    pub slow_start: Option<Duration>,
    /// Entries of the Maglev lookup table (a prime; `Maglev` only). More entries spread
    /// the clients more evenly over many backends and disrupt fewer on a change, at four
    /// bytes each; the paper asks for at least 100 per backend.
    pub maglev_table_size: usize,
}

/// One route of a service: clients whose TLS server name is one of `server_names` go to
/// the backends of `service`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    /// Lower-case DNS names (`api.example.com`) and wildcards (`*.example.com`: every name
    /// that ends in `.example.com`), unique within the service's routes.
    pub server_names: Vec<String>,
    /// The service they lead to.
    pub service: String,
}

/// The name of the one service of the single-service form (top-level `listen`,
/// `algorithm` and `backends`).
pub const DEFAULT_SERVICE: &str = "default";

/// Default time between two resolutions of a backend's host name.
pub const DEFAULT_DNS_INTERVAL: Duration = Duration::from_secs(5);

/// How host names of backends are resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// The servers queried; empty means the system's configuration (`/etc/resolv.conf` and
    /// `/etc/hosts`).
    pub servers: Vec<SocketAddr>,
    /// Time between two resolutions of each name.
    pub interval: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            interval: DEFAULT_DNS_INTERVAL,
        }
    }
}

/// Where a backend is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendAddr {
    /// One address.
    Ip(SocketAddr),
    /// A DNS host name (lower case, no trailing dot) and port: one backend per address the
    /// name resolves to (A and AAAA records), re-resolved every [`DnsConfig::interval`].
    Name {
        /// The host name.
        host: String,
        /// The port on every address it resolves to.
        port: u16,
    },
}

impl std::fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendAddr::Ip(addr) => write!(f, "{addr}"),
            BackendAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
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
    /// Bytes of pipe asked for per splicing direction (HAProxy's `tune.pipesize`): the most
    /// a direction parks in its pipe. The kernel rounds it up to a power of two pages.
    pub pipe_size: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            splice: Splice::Auto,
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
    pub addr: BackendAddr,
    /// 0 means drained: the backend takes no new connections.
    pub weight: u32,
    /// How the active health check probes this backend.
    pub check: Check,
    /// Where the load agent listens; `None`: the backend's own address (each resolved
    /// address, for a host name).
    pub load_addr: Option<SocketAddr>,
    /// The path polled for the load percentage.
    pub load_path: String,
    /// Concurrent connections this backend takes; a full backend is skipped.
    pub max_connections: Option<u64>,
    /// The PROXY protocol header sent to this backend before any client byte, if any.
    pub send_proxy: Option<crate::proxy_protocol::Version>,
    /// A standby: it gets connections only while no other backend of its service can take
    /// them (HAProxy's and nginx's `backup`).
    pub backup: bool,
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
    /// A client of a service with routes must send its whole TLS ClientHello within this
    /// long (after its PROXY header, if any), or it is closed.
    pub client_hello: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            idle: DEFAULT_IDLE,
            half_close: DEFAULT_HALF_CLOSE,
            grace: DEFAULT_GRACE,
            client_hello: DEFAULT_CLIENT_HELLO,
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
        let read = |known| {
            let scope = ParseScope::begin(known);
            let raw: Result<RawConfig, _> = ron_options.from_str(text);
            let learnt = scope.learnt();
            raw.map(|raw| (raw, learnt))
                .map_err(|e| ConfigError::Syntax {
                    path: path.to_path_buf(),
                    line: e.span.start.line,
                    col: e.span.start.col,
                    message: describe_ron_error(&e.code),
                })
        };
        // Rules that look ahead (routes to services written further down, services reached
        // only through routes) are checked by a second parse that knows every entry, so
        // that their errors too point at the value at fault.
        let (mut raw, learnt) = read(None)?;
        if raw.services.is_some() {
            raw = read(Some(learnt))?.0;
        }
        let invalid = |position, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            position,
            message,
        };
        let defaults = Defaults {
            timeouts: timeouts(raw.timeouts, Timeouts::default()),
            limits: limits(raw.limits, Limits::default()),
            relay: RelayConfig {
                splice: raw.relay.splice.unwrap_or_default(),
                pipe_size: raw
                    .relay
                    .pipe_size
                    .map_or(RelayConfig::default().pipe_size, |size| size.get() as usize),
            },
            health: health_config(raw.health, HealthConfig::default()),
            load_poll: load_poll(raw.load_poll, LoadPollConfig::default()),
            access_log: raw.access_log.unwrap_or_default(),
            slow_start: raw.slow_start.map(|d| d.0),
            maglev_table_size: raw
                .maglev_table_size
                .map_or(crate::selection::MAGLEV_TABLE_SIZE, |s| s.0),
        };
        let single = [
            ("listen", raw.listen.is_some()),
            ("algorithm", raw.algorithm.is_some()),
            ("backends", raw.backends.is_some()),
            ("accept_proxy", raw.accept_proxy.is_some()),
        ];
        let services = match raw.services {
            Some(services) => {
                if let Some((key, _)) = single.iter().find(|(_, set)| *set) {
                    return Err(invalid(
                        locate_key(text, key),
                        format!(
                            "top-level `{key}` beside `services`: write each service's `listen`, `algorithm`, `backends` and `accept_proxy` inside its entry of `services`"
                        ),
                    ));
                }
                services
                    .0
                    .into_iter()
                    .map(|service| service_config(service, &defaults))
                    .collect()
            }
            None => {
                let (Some(listen), Some(algorithm), Some(backends)) =
                    (raw.listen, raw.algorithm, raw.backends)
                else {
                    let missing = single
                        .iter()
                        .take(3)
                        .find(|(_, set)| !set)
                        .map_or("listen", |(key, _)| key);
                    let end = text.trim_end();
                    let line = end.matches('\n').count() + 1;
                    let col = end.rfind('\n').map_or(end.len(), |nl| end.len() - nl - 1);
                    return Err(invalid(
                        Some((line, col.max(1))),
                        format!(
                            "missing field `{missing}`: expected `listen`, `algorithm` and `backends` (one service), or `services: [...]`"
                        ),
                    ));
                };
                vec![service_config(
                    RawService {
                        name: ServiceName(DEFAULT_SERVICE.to_string()),
                        listen: Some(listen),
                        algorithm: Some(algorithm),
                        backends: Some(backends),
                        routes: None,
                        accept_proxy: raw.accept_proxy,
                        timeouts: None,
                        limits: None,
                        relay: None,
                        health: None,
                        load_poll: None,
                        access_log: None,
                        slow_start: None,
                        maglev_table_size: None,
                    },
                    &defaults,
                )]
            }
        };
        let admin = raw.admin.map(|a| a.0);
        let listened: Vec<&SocketAddr> = services
            .iter()
            .flat_map(|s: &ServiceConfig| &s.listen)
            .collect();
        if let Some(admin) = admin
            && let Some(taken) = listened.iter().find(|&&&l| raw::overlap(l, admin))
        {
            return Err(invalid(
                locate_value(text, "admin"),
                format!("admin must listen on another address than the services ({taken})"),
            ));
        }
        let dns_defaults = DnsConfig::default();
        let dns = raw.dns.unwrap_or_default();
        Ok(Config {
            workers: match raw.workers {
                Some(n) => n.get() as usize,
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
            services,
            max_pipes: raw.relay.max_pipes.unwrap_or(DEFAULT_MAX_PIPES),
            dns: DnsConfig {
                servers: dns.servers.map_or(dns_defaults.servers, |s| s.0),
                interval: dns.interval.map_or(dns_defaults.interval, |i| i.0),
            },
            admin,
            admin_token: raw.admin_token.map(|t| t.0),
        })
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// A one-screen human summary, printed by `ballast --check`: the process-wide settings,
    /// then each service.
    pub fn summary(&self) -> String {
        let mut out = format!("workers    {}\n", self.workers);
        let admin = self.admin.map_or("off".to_string(), |a| {
            let auth = if self.admin_token.is_some() {
                " (bearer token required)"
            } else {
                ""
            };
            format!("http://{a}/{auth}")
        });
        out.push_str(&format!("admin      {admin}\n"));
        out.push_str(&format!("pipes      up to {}\n", self.max_pipes));
        if self.dns != DnsConfig::default()
            || self.services.iter().any(ServiceConfig::resolves_names)
        {
            let servers = if self.dns.servers.is_empty() {
                "the system resolver (/etc/resolv.conf, /etc/hosts)".to_string()
            } else {
                let list: Vec<String> = self.dns.servers.iter().map(|s| s.to_string()).collect();
                list.join(", ")
            };
            out.push_str(&format!(
                "dns        {servers}, every {:?}\n",
                self.dns.interval
            ));
        }
        for service in &self.services {
            out.push('\n');
            let routed_from: Vec<&str> = self
                .services
                .iter()
                .filter(|s| s.routes.iter().any(|r| r.service == service.name))
                .map(|s| s.name.as_str())
                .collect();
            out.push_str(&service.summary(&routed_from));
        }
        out
    }
}

impl ServiceConfig {
    /// Whether any backend is given by host name.
    pub fn resolves_names(&self) -> bool {
        self.backends
            .iter()
            .any(|b| matches!(b.addr, BackendAddr::Name { .. }))
    }

    /// Its block of the `--check` summary; `routed_from` names the services whose routes
    /// lead to it.
    fn summary(&self, routed_from: &[&str]) -> String {
        let listen: Vec<String> = self.listen.iter().map(|a| a.to_string()).collect();
        let listen = if listen.is_empty() {
            "none".to_string()
        } else {
            listen.join(", ")
        };
        let mut out = format!("service    {}\n  listen     {listen}\n", self.name);
        if !routed_from.is_empty() {
            out.push_str(&format!("  routed     from {}\n", routed_from.join(", ")));
        }
        if !self.routes.is_empty() {
            out.push_str(&format!("  routes     {}\n", self.routes.len()));
            let names: Vec<String> = self
                .routes
                .iter()
                .map(|r| r.server_names.join(", "))
                .collect();
            let width = names.iter().map(String::len).max().unwrap_or(0);
            for (names, route) in names.iter().zip(&self.routes) {
                out.push_str(&format!("    {names:width$}  -> {}\n", route.service));
            }
        }
        if self.backends.is_empty() {
            out.push_str("  backends   none: clients no route takes are closed\n");
        } else {
            out.push_str(&format!(
                "  algorithm  {}\n  backends   {}\n",
                self.algorithm,
                self.backends.len()
            ));
        }
        let width = self
            .backends
            .iter()
            .map(|b| b.name.len())
            .max()
            .unwrap_or(0);
        for b in &self.backends {
            let note = if b.weight == 0 { "  (drained)" } else { "" };
            let backup = if b.backup { "  backup" } else { "" };
            let dns = match b.addr {
                BackendAddr::Name { .. } => "  (by DNS: one backend per address)",
                BackendAddr::Ip(_) => "",
            };
            let max = b
                .max_connections
                .map_or(String::new(), |m| format!("  max {m}"));
            let proxy = b
                .send_proxy
                .map_or(String::new(), |v| format!("  send_proxy {v:?}"));
            out.push_str(&format!(
                "    {:width$}  {}  weight {}{backup}{max}{proxy}{note}{dns}\n",
                b.name, b.addr, b.weight
            ));
        }
        let t = &self.timeouts;
        let hello = if self.routes.is_empty() {
            String::new()
        } else {
            format!(", client hello {:?}", t.client_hello)
        };
        out.push_str(&format!(
            "  timeouts   connect {:?}, idle {:?}, half-close {:?}, grace {:?}{hello}\n",
            t.connect, t.idle, t.half_close, t.grace
        ));
        out.push_str(&format!(
            "  relay      splice {:?}, pipes of {} bytes\n",
            self.relay.splice, self.relay.pipe_size
        ));
        let l = &self.limits;
        out.push_str(&format!(
            "  limits     {} connections, queue {} for up to {:?}\n",
            l.max_connections, l.queue, l.queue_timeout
        ));
        let h = &self.health;
        out.push_str(&format!(
            "  health     {:?} every {:?}, timeout {:?}, rise {}, fall {}\n",
            h.check, h.interval, h.timeout, h.rise, h.fall
        ));
        if self.algorithm == Algorithm::WorkloadSensitive {
            out.push_str(&format!(
                "  load poll  every {:?}, timeout {:?}\n",
                self.load_poll.interval, self.load_poll.timeout
            ));
        }
        out.push_str(&format!("  access log {:?}\n", self.access_log));
        if self.algorithm == Algorithm::Maglev {
            out.push_str(&format!(
                "  maglev     a table of {} entries\n",
                self.maglev_table_size
            ));
        }
        if let Some(slow_start) = self.slow_start {
            out.push_str(&format!("  slow start {slow_start:?}\n"));
        }
        if self.accept_proxy {
            out.push_str("  clients    start with a PROXY header (accept_proxy)\n");
        }
        out
    }
}

/// The top-level sections, which are every service's values unless it sets its own.
struct Defaults {
    timeouts: Timeouts,
    limits: Limits,
    relay: RelayConfig,
    health: HealthConfig,
    load_poll: LoadPollConfig,
    access_log: AccessLog,
    slow_start: Option<Duration>,
    maglev_table_size: usize,
}

/// A service's values: each field it sets, else the top level's.
fn service_config(raw: RawService, defaults: &Defaults) -> ServiceConfig {
    let health = raw.health.map_or_else(
        || defaults.health.clone(),
        |h| health_config(h, defaults.health.clone()),
    );
    let relay = raw.relay.map_or(defaults.relay, |r| RelayConfig {
        splice: r.splice.unwrap_or(defaults.relay.splice),
        pipe_size: r
            .pipe_size
            .map_or(defaults.relay.pipe_size, |size| size.get() as usize),
    });
    let backends = raw
        .backends
        .map_or_else(Vec::new, |b| b.0)
        .into_iter()
        .map(|b| BackendConfig {
            name: b.name.0,
            addr: b.addr.0,
            weight: b.weight.get() as u32,
            check: b.check.map_or_else(|| health.check.clone(), Check::from),
            load_addr: b.load_addr.map(|a| a.0),
            load_path: b
                .load_path
                .map_or_else(|| DEFAULT_LOAD_PATH.to_string(), |p| p.0),
            max_connections: b.max_connections.map(|m| m.get()),
            send_proxy: b.send_proxy,
            backup: b.backup,
        })
        .collect();
    let routes = raw.routes.map_or_else(Vec::new, |routes| {
        routes
            .0
            .into_iter()
            .map(|r| RouteConfig {
                server_names: r.server_names.0,
                service: r.service.0,
            })
            .collect()
    });
    ServiceConfig {
        name: raw.name.0,
        listen: raw.listen.map_or_else(Vec::new, |l| l.0),
        algorithm: raw.algorithm.unwrap_or(Algorithm::RoundRobin),
        backends,
        routes,
        timeouts: raw
            .timeouts
            .map_or(defaults.timeouts, |t| timeouts(t, defaults.timeouts)),
        limits: raw
            .limits
            .map_or(defaults.limits, |l| limits(l, defaults.limits)),
        relay,
        health,
        load_poll: raw
            .load_poll
            .map_or(defaults.load_poll, |p| load_poll(p, defaults.load_poll)),
        access_log: raw.access_log.unwrap_or(defaults.access_log),
        accept_proxy: raw.accept_proxy.unwrap_or(false),
        slow_start: raw.slow_start.map(|d| d.0).or(defaults.slow_start),
        maglev_table_size: raw
            .maglev_table_size
            .map_or(defaults.maglev_table_size, |s| s.0),
    }
}

fn timeouts(raw: RawTimeouts, base: Timeouts) -> Timeouts {
    Timeouts {
        connect: raw.connect.map_or(base.connect, |d| d.0),
        idle: raw.idle.map_or(base.idle, |d| d.0),
        half_close: raw.half_close.map_or(base.half_close, |d| d.0),
        grace: raw.grace.map_or(base.grace, |d| d.0),
        client_hello: raw.client_hello.map_or(base.client_hello, |d| d.0),
    }
}

fn limits(raw: RawLimits, base: Limits) -> Limits {
    Limits {
        max_connections: raw.max_connections.map_or(base.max_connections, |m| {
            usize::try_from(m.get()).unwrap_or(usize::MAX)
        }),
        queue: raw.queue.unwrap_or(base.queue),
        queue_timeout: raw.queue_timeout.map_or(base.queue_timeout, |d| d.0),
    }
}

fn load_poll(raw: RawLoadPoll, base: LoadPollConfig) -> LoadPollConfig {
    LoadPollConfig {
        interval: raw.interval.map_or(base.interval, |d| d.0),
        timeout: raw.timeout.map_or(base.timeout, |d| d.0),
    }
}

fn health_config(raw: RawHealth, base: HealthConfig) -> HealthConfig {
    let count = |c: Option<Checked<CheckCount>>, default: u32| {
        c.map_or(default, |c| u32::try_from(c.get()).unwrap_or(u32::MAX))
    };
    HealthConfig {
        check: raw.check.map_or(base.check, Check::from),
        interval: raw.interval.map_or(base.interval, |v| v.0),
        timeout: raw.timeout.map_or(base.timeout, |v| v.0),
        rise: count(raw.rise, base.rise),
        fall: count(raw.fall, base.fall),
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
        let [s] = c.services.as_slice() else {
            panic!("one service expected: {:?}", c.services)
        };
        assert_eq!(s.name, DEFAULT_SERVICE);
        assert_eq!(s.listen, vec!["127.0.0.1:8080".parse().expect("addr")]);
        assert_eq!(s.algorithm, Algorithm::WeightedRoundRobin);
        let weights: Vec<u32> = s.backends.iter().map(|b| b.weight).collect();
        assert_eq!(weights, vec![3, 5, 1]);
        assert_eq!(s.timeouts, Timeouts::default());
    }

    #[test]
    fn timeouts_section_is_optional_and_parsed() {
        let text = GOOD.replace(
            "backends:",
            "timeouts: (connect: \"250ms\", grace: \"1m\"),\n    backends:",
        );
        let c = parse(&text).expect("valid");
        assert_eq!(c.services[0].timeouts.connect, Duration::from_millis(250));
        assert_eq!(c.services[0].timeouts.grace, Duration::from_secs(60));
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
            "Maglev",
            "PowerOfTwoChoices",
        ] {
            assert!(msg.contains(name), "{msg}");
        }
    }

    #[test]
    fn every_algorithm_name_parses() {
        for name in [
            "RoundRobin",
            "WeightedRoundRobin",
            "LeastConnections",
            "WorkloadSensitive",
            "Maglev",
            "PowerOfTwoChoices",
        ] {
            let c = parse(&GOOD.replace("WeightedRoundRobin", name)).expect(name);
            assert_eq!(c.services[0].algorithm.to_string(), name);
        }
    }

    #[test]
    fn unknown_field_is_rejected() {
        let e = parse(&GOOD.replace("weight: 5", "wieght: 5")).expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "test.ron:6:47: unknown field `wieght`: expected one of name, addr, weight, check, load_addr, load_path, max_connections, send_proxy, backup"
        );
    }

    #[test]
    fn bad_address_is_rejected_with_position() {
        let e = parse(&GOOD.replace("127.0.0.1:8082", "127.0.0.1:99999")).expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "test.ron:6:30: invalid address \"127.0.0.1:99999\": expected IP:port or host:port such as \"127.0.0.1:8081\", \"[::1]:8081\" or \"web.internal:8080\""
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
            "test.ron:6:17: duplicate backend name \"vm4\": names must be unique within a service"
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
        assert_eq!(
            e.to_string(),
            "test.ron:9:1: missing field `listen`: expected `listen`, `algorithm` and `backends` (one service), or `services: [...]`"
        );
    }

    #[test]
    fn admin_must_not_share_the_listen_address() {
        let text = GOOD.replace("backends:", "admin: \"127.0.0.1:8080\",\n    backends:");
        let e = parse(&text).expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "test.ron:4:13: admin must listen on another address than the services (127.0.0.1:8080)"
        );
    }

    #[test]
    fn keys_are_found_outside_comments_and_strings() {
        let text = "(\n  // admin: 1\n  /* admin: 2 */ note: \"admin: 3\",\n  admin: 4, name: \"a\", name: \"b\",\n)";
        assert_eq!(locate_key(text, "admin"), Some((4, 3)));
        assert_eq!(locate_value(text, "admin"), Some((4, 10)));
        assert_eq!(locate_value("(\n  admin :  \"x\")", "admin"), Some((2, 13)));
        assert_eq!(locate_key(text, "name"), Some((4, 13)));
        // Inside a nested entry is not the top level.
        assert_eq!(
            locate_key("(a: (admin: 1), admin: 2)", "admin"),
            Some((1, 17))
        );
        assert_eq!(locate_key("(my_admin: 1)", "admin"), None);
    }

    /// The example of the README's "Many services" section.
    const SERVICES: &str = r#"(
    services: [
        (
            name: "web",
            listen: ["127.0.0.1:8080", "[::1]:8080"],
            algorithm: WeightedRoundRobin,
            backends: [
                (name: "vm4", addr: "127.0.0.1:8081", weight: 3),
                (name: "pods", addr: "Web.Internal.:8080"),
                (name: "legacy", addr: "127.0.0.1:8090", send_proxy: V2),
            ],
            accept_proxy: true,
            timeouts: (idle: "1h"),
        ),
        (name: "db", listen: "127.0.0.1:5432", algorithm: LeastConnections,
         backends: [(name: "vm4", addr: "127.0.0.1:5433")]),
    ],
    timeouts: (connect: "250ms"),
    admin: "127.0.0.1:9000",
    dns: (servers: ["127.0.0.1:5353", "::1"], interval: "2s"),
)"#;

    #[test]
    fn services_parse_with_their_own_sections_over_the_top_level() {
        let c = parse(SERVICES).expect("valid");
        let names: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "db"]);
        let web = &c.services[0];
        assert_eq!(
            web.listen,
            vec![
                "127.0.0.1:8080".parse::<SocketAddr>().expect("v4"),
                "[::1]:8080".parse().expect("v6")
            ]
        );
        assert_eq!(
            web.backends[1].addr,
            BackendAddr::Name {
                host: "web.internal".into(),
                port: 8080
            }
        );
        assert!(web.accept_proxy && !c.services[1].accept_proxy);
        // Field by field: the service's idle, the top level's connect, the default grace.
        assert_eq!(web.timeouts.idle, Duration::from_secs(3600));
        assert_eq!(web.timeouts.connect, Duration::from_millis(250));
        assert_eq!(web.timeouts.grace, DEFAULT_GRACE);
        assert_eq!(c.services[1].timeouts.idle, DEFAULT_IDLE);
        assert_eq!(c.services[1].timeouts.connect, Duration::from_millis(250));
        assert_eq!(
            c.dns,
            DnsConfig {
                servers: vec![
                    "127.0.0.1:5353".parse().expect("dns"),
                    "[::1]:53".parse().expect("dns")
                ],
                interval: Duration::from_secs(2),
            }
        );
        assert!(web.resolves_names() && !c.services[1].resolves_names());
    }

    #[test]
    fn the_two_forms_do_not_mix() {
        let text = SERVICES.replace("    admin:", "    algorithm: RoundRobin,\n    admin:");
        let e = parse(&text).expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "test.ron:19:5: top-level `algorithm` beside `services`: write each service's `listen`, `algorithm`, `backends` and `accept_proxy` inside its entry of `services`"
        );
    }

    #[test]
    fn service_names_are_unique() {
        let e = parse(&SERVICES.replace("name: \"db\"", "name: \"web\"")).expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "test.ron:15:17: duplicate service name \"web\": service names must be unique"
        );
    }

    #[test]
    fn an_address_belongs_to_one_service() {
        let e = parse(&SERVICES.replace("127.0.0.1:5432", "[::1]:8080")).expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "test.ron:15:31: [::1]:8080 is already listened on by service \"web\": each address belongs to one service"
        );
        // A wildcard address takes every address of its port.
        let e = parse(&SERVICES.replace("127.0.0.1:5432", "0.0.0.0:8080")).expect_err("invalid");
        assert!(
            e.to_string().contains(
                "0.0.0.0:8080 is already listened on by service \"web\" (as 127.0.0.1:8080)"
            ),
            "{e}"
        );
        // Twice in one list, too.
        let e =
            parse(&SERVICES.replace("\"[::1]:8080\"", "\"127.0.0.1:8080\"")).expect_err("invalid");
        assert!(
            e.to_string().starts_with(
                "test.ron:5:41: 127.0.0.1:8080 is listed twice: list each address once"
            ),
            "{e}"
        );
        // Port 0 asks for a free port each time: no clash between services.
        let free = SERVICES
            .replace("127.0.0.1:5432", "127.0.0.1:0")
            .replace("127.0.0.1:8080", "127.0.0.1:0");
        parse(&free).expect("port 0 twice");
        // But one service lists each address once, port 0 included: it knows its listeners
        // by the address as written.
        let e = parse(&free.replace("\"[::1]:8080\"", "\"127.0.0.1:0\"")).expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "test.ron:5:38: 127.0.0.1:0 is listed twice by service \"web\": list each address once"
        );
        let single = r#"(listen: ["127.0.0.1:0", "127.0.0.1:0"], algorithm: RoundRobin,
            backends: [(name: "a", addr: "127.0.0.1:2")])"#;
        let e = parse(single).expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "test.ron:1:27: 127.0.0.1:0 is listed twice: list each address once"
        );
    }

    #[test]
    fn a_service_entry_without_backends_says_so() {
        let text = SERVICES.replace(
            "\n         backends: [(name: \"vm4\", addr: \"127.0.0.1:5433\")]",
            "",
        );
        let e = parse(&text).expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "test.ron:15:17: service \"db\" has neither backends nor routes: give it `backends`, `routes` or both"
        );
    }

    /// An edge with routes and its own backends, one target without `listen` and one with.
    const ROUTES: &str = r#"(
    services: [
        (
            name: "edge",
            listen: "127.0.0.1:8443",
            routes: [
                (server_names: ["API.example.com", "*.api.example.com"], service: "api"),
                (server_names: ["www.example.com."], service: "www"),
            ],
            algorithm: RoundRobin,
            backends: [(name: "fallback", addr: "127.0.0.1:9000")],
            timeouts: (client_hello: "2s"),
        ),
        (name: "api", algorithm: LeastConnections,
         backends: [(name: "a1", addr: "127.0.0.1:9001")]),
        (name: "www", listen: "127.0.0.1:8080", algorithm: RoundRobin,
         backends: [(name: "w1", addr: "127.0.0.1:9002")]),
    ],
    timeouts: (connect: "1s"),
)"#;

    #[test]
    fn the_readme_routing_example_is_valid() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split_once("### Routing by TLS server name")
            .expect("the section")
            .1;
        let example = section
            .split_once("```ron\n")
            .and_then(|(_, rest)| rest.split_once("```"))
            .expect("its example")
            .0;
        let c = parse(example).expect("valid");
        let names: Vec<(&str, usize, usize)> = c
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.listen.len(), s.routes.len()))
            .collect();
        assert_eq!(names, [("edge", 1, 2), ("api", 0, 0), ("www", 0, 0)]);
    }

    #[test]
    fn routes_parse_lower_cased_with_their_targets() {
        let c = parse(ROUTES).expect("valid");
        let edge = &c.services[0];
        assert_eq!(
            edge.routes,
            vec![
                RouteConfig {
                    server_names: vec!["api.example.com".into(), "*.api.example.com".into()],
                    service: "api".into(),
                },
                RouteConfig {
                    server_names: vec!["www.example.com".into()],
                    service: "www".into(),
                },
            ]
        );
        assert_eq!(edge.timeouts.client_hello, Duration::from_secs(2));
        assert_eq!(edge.timeouts.connect, Duration::from_secs(1));
        let api = &c.services[1];
        assert!(api.listen.is_empty() && api.routes.is_empty());
        assert_eq!(api.algorithm, Algorithm::LeastConnections);
        assert_eq!(api.timeouts.client_hello, DEFAULT_CLIENT_HELLO);
        // A service with routes needs no backends (nor an algorithm) of its own.
        let bare = ROUTES.replace(
            "            algorithm: RoundRobin,\n            backends: [(name: \"fallback\", addr: \"127.0.0.1:9000\")],\n",
            "",
        );
        let c = parse(&bare).expect("valid without backends");
        assert!(c.services[0].backends.is_empty());
        // The top level's client_hello is every service's default.
        let top = ROUTES.replace("(connect: \"1s\")", "(client_hello: \"750ms\")");
        let c = parse(&top).expect("valid");
        assert_eq!(c.services[0].timeouts.client_hello, Duration::from_secs(2));
        assert_eq!(
            c.services[1].timeouts.client_hello,
            Duration::from_millis(750)
        );
    }

    #[test]
    fn route_targets_are_other_services_without_routes() {
        let cases = [
            (
                ROUTES.replace("service: \"www\"", "service: \"wwx\""),
                "test.ron:8:64: route to unknown service \"wwx\": expected the name of a service of this file",
            ),
            (
                ROUTES.replace("service: \"www\"", "service: \"edge\""),
                "test.ron:8:64: service \"edge\" routes to itself: a route leads to another service",
            ),
            (
                ROUTES.replace(
                    "listen: \"127.0.0.1:8080\",",
                    "listen: \"127.0.0.1:8080\", routes: [(server_names: [\"x.example\"], service: \"api\")],",
                ),
                "test.ron:8:64: route to service \"www\", which has routes of its own: a route leads to a service without routes",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(&text).expect_err(expected).to_string(), expected);
        }
    }

    #[test]
    fn a_service_needs_a_way_in_and_a_way_out() {
        let cases = [
            // No listen, and no route to it.
            (
                ROUTES.replace("service: \"api\"", "service: \"www\""),
                "test.ron:14:17: service \"api\" has no `listen` and no route leads to it: give it `listen`, or name it in another service's `routes`",
            ),
            // Reached through a route, but nowhere to send its clients.
            (
                ROUTES.replace(
                    "algorithm: LeastConnections,\n         backends: [(name: \"a1\", addr: \"127.0.0.1:9001\")]",
                    "",
                ),
                "test.ron:14:17: service \"api\" has neither backends nor routes: give it `backends`, `routes` or both",
            ),
            (
                ROUTES.replace("algorithm: LeastConnections,", ""),
                "test.ron:14:17: service \"api\" has backends but no `algorithm`: add one, such as `algorithm: RoundRobin`",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(&text).expect_err(expected).to_string(), expected);
        }
    }

    #[test]
    fn server_names_are_dns_names_unique_within_a_service() {
        for bad in [
            "a..b",
            "*",
            "*.*.example.com",
            "1.2.3.4",
            "api.*.com",
            "-a.com",
            "",
        ] {
            let text = ROUTES.replace("\"www.example.com.\"", &format!("{bad:?}"));
            assert_eq!(
                parse(&text).expect_err(bad).to_string(),
                format!(
                    "test.ron:8:34: invalid server name {bad:?}: expected a DNS name such as \"api.example.com\", or \"*.example.com\" for every name under example.com"
                )
            );
        }
        let text = ROUTES.replace("\"www.example.com.\"", "\"Api.Example.com\"");
        assert_eq!(
            parse(&text).expect_err("duplicate").to_string(),
            "test.ron:8:34: duplicate server name \"api.example.com\": a name routes to one service"
        );
        // Two services may each route the same name.
        let text = ROUTES.replace(
            "listen: \"127.0.0.1:8080\",",
            "listen: \"127.0.0.1:8080\", routes: [(server_names: [\"api.example.com\"], service: \"api\")],",
        );
        let text = text.replace("service: \"www\"", "service: \"api\"");
        parse(&text).expect("the same name in two services' routes");
    }

    #[test]
    fn route_lists_and_entries_are_checked() {
        let cases = [
            (
                ROUTES.replace("[\"www.example.com.\"]", "[]"),
                "test.ron:8:33: no server names: a route lists at least one, such as [\"api.example.com\"]",
            ),
            (
                ROUTES.replace("server_names: [\"www.example.com.\"], ", ""),
                "test.ron:8:32: missing field `server_names` in a route entry",
            ),
            (
                ROUTES.replace("service: \"www\"", "servce: \"www\""),
                "test.ron:8:54: unknown field `servce`: expected one of server_names, service",
            ),
            (
                ROUTES.replace(
                    "timeouts: (client_hello: \"2s\")",
                    "timeouts: (client_hello: \"0s\")",
                ),
                "test.ron:12:39: a zero duration: expected more than zero, such as \"1s\"",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(&text).expect_err(expected).to_string(), expected);
        }
        let empty = "routes: [\n                (server_names: [\"API.example.com\", \"*.api.example.com\"], service: \"api\"),\n                (server_names: [\"www.example.com.\"], service: \"www\"),\n            ]";
        assert!(ROUTES.contains(empty));
        let e = parse(&ROUTES.replace(empty, "routes: []")).expect_err("no routes");
        assert_eq!(
            e.to_string(),
            "test.ron:6:22: no routes: `routes` lists at least one (server_names: [\"...\"], service: \"...\"), or is left out"
        );
        // The single-service form has no routes.
        let single = GOOD.replace(
            "backends:",
            "routes: [(server_names: [\"a.example\"], service: \"x\")],\n    backends:",
        );
        assert!(
            parse(&single)
                .expect_err("single")
                .to_string()
                .contains("unknown field `routes`"),
        );
    }

    #[test]
    fn the_summary_shows_routes() {
        let summary = parse(ROUTES).expect("valid").summary();
        for part in [
            "service    edge\n  listen     127.0.0.1:8443\n  routes     2\n    api.example.com, *.api.example.com  -> api\n    www.example.com                     -> www\n  algorithm  RoundRobin\n  backends   1\n",
            "  timeouts   connect 1s, idle 600s, half-close 60s, grace 10s, client hello 2s\n",
            "service    api\n  listen     none\n  routed     from edge\n  algorithm  LeastConnections\n",
            "service    www\n  listen     127.0.0.1:8080\n  routed     from edge\n",
        ] {
            assert!(summary.contains(part), "{part}\nin\n{summary}");
        }
        // Only services with routes show the ClientHello's timeout.
        assert_eq!(summary.matches("client hello").count(), 1, "{summary}");
        let bare = ROUTES.replace(
            "            algorithm: RoundRobin,\n            backends: [(name: \"fallback\", addr: \"127.0.0.1:9000\")],\n",
            "",
        );
        let summary = parse(&bare).expect("valid").summary();
        assert!(
            summary.contains("  backends   none: clients no route takes are closed\n"),
            "{summary}"
        );
    }

    #[test]
    fn names_that_would_break_lines_or_collide_are_refused() {
        let e = parse(&GOOD.replace("\"vm5\"", "\"pods@127.0.0.2:80\"")).expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "test.ron:6:17: backend name \"pods@127.0.0.2:80\" has an `@`: it is kept for the addresses of a host name (`name@address`)"
        );
        let e = parse(&GOOD.replace("\"vm5\"", "\"a\\nb\"")).expect_err("invalid");
        assert!(e.to_string().contains("has a control character"), "{e}");
        let e = parse(&SERVICES.replace("name: \"db\"", "name: \"d\\tb\"")).expect_err("invalid");
        assert!(
            e.to_string()
                .starts_with("test.ron:15:20: service name \"d\\tb\" has a control"),
            "{e}"
        );
    }

    #[test]
    fn an_ipv4_mapped_address_is_its_ipv4_address() {
        let text = SERVICES.replace("127.0.0.1:5432", "[::ffff:127.0.0.1]:8080");
        let e = parse(&text).expect_err("invalid");
        assert!(
            e.to_string().contains(
                "[::ffff:127.0.0.1]:8080 is already listened on by service \"web\" (as 127.0.0.1:8080)"
            ),
            "{e}"
        );
        let twice = SERVICES.replace("\"[::1]:8080\"", "\"[::ffff:127.0.0.1]:8080\"");
        let e = parse(&twice).expect_err("invalid");
        assert!(
            e.to_string()
                .contains("is listed twice (as 127.0.0.1:8080): list each address once"),
            "{e}"
        );
    }

    #[test]
    fn the_maglev_table_size_is_a_prime() {
        let text = GOOD.replace("WeightedRoundRobin", "Maglev");
        assert_eq!(
            parse(&text).expect("valid").services[0].maglev_table_size,
            65537
        );
        let sized = text.replace("backends:", "maglev_table_size: 655373,\n    backends:");
        let c = parse(&sized).expect("valid");
        assert_eq!(c.services[0].maglev_table_size, 655373);
        assert!(
            c.summary()
                .contains("  maglev     a table of 655373 entries\n")
        );
        for bad in ["65536", "7", "16777259"] {
            let e = parse(&text.replace(
                "backends:",
                &format!("maglev_table_size: {bad},\n    backends:"),
            ))
            .expect_err(bad);
            assert_eq!(
                e.to_string(),
                format!(
                    "test.ron:4:24: maglev_table_size {bad}: expected a prime from 251 to 16777213, such as 65537 (the default) or 655373"
                )
            );
        }
    }

    #[test]
    fn pipes_are_counted_for_the_whole_process() {
        let text = SERVICES.replace("timeouts: (idle: \"1h\"),", "relay: (max_pipes: 4),");
        let e = parse(&text).expect_err("invalid");
        assert!(
            e.to_string()
                .contains("unknown field `max_pipes`: expected one of splice, pipe_size"),
            "{e}"
        );
    }

    #[test]
    fn host_names_follow_rfc_1123() {
        for good in ["localhost:80", "a-b.c_d.example:1", "x.:9"] {
            let text = GOOD.replace("127.0.0.1:8083", good);
            parse(&text).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "-a.example:80",
            "a..b:80",
            "host:99999",
            "host",
            "1.2.3.999:80",
            "a b:1",
            "host:0",
        ] {
            let text = GOOD.replace("127.0.0.1:8083", bad);
            let e = parse(&text).expect_err(bad);
            assert!(
                e.to_string().contains("expected IP:port or host:port"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn backend_ports_are_digits_alone() {
        // `u16::from_str` takes "+80": a port written with a sign, or with anything but
        // digits, is refused, after a host name as after an IP address.
        for bad in [
            "example.com:+80",
            "example.com:-80",
            "example.com: 80",
            "example.com:8 0",
            "example.com:",
            "example.com:0x50",
            "example.com:８０",
            "127.0.0.1:+80",
            "[::1]:+80",
            "127.0.0.1:-0",
        ] {
            let e = parse(&GOOD.replace("127.0.0.1:8083", bad)).expect_err(bad);
            assert_eq!(
                e.to_string(),
                format!(
                    "test.ron:7:30: invalid address {bad:?}: expected IP:port or host:port such as \"127.0.0.1:8081\", \"[::1]:8081\" or \"web.internal:8080\""
                ),
                "{bad}"
            );
        }
        // Leading zeros are digits still.
        let c = parse(&GOOD.replace("127.0.0.1:8083", "example.com:080")).expect("valid");
        assert_eq!(
            c.services[0].backends[2].addr,
            BackendAddr::Name {
                host: "example.com".into(),
                port: 80
            }
        );
    }

    /// `GOOD` with `dns: (DNS)`.
    fn with_dns(dns: &str) -> String {
        GOOD.replace("\n)", &format!("\n    dns: ({dns}),\n)"))
    }

    #[test]
    fn dns_servers_are_a_non_empty_list_of_usable_addresses() {
        let e = parse(&with_dns("servers: []")).expect_err("empty");
        assert_eq!(
            e.to_string(),
            "test.ron:9:21: an empty list: leave `servers` out to use the system's resolver"
        );
        let e =
            parse(&with_dns(r#"servers: ["127.0.0.1:53", "127.0.0.1:0"]"#)).expect_err("port 0");
        assert_eq!(
            e.to_string(),
            "test.ron:9:38: DNS server \"127.0.0.1:0\" has port 0: expected a port from 1 to 65535, or none for 53"
        );
        let e = parse(&with_dns(r#"servers: ["[::1]:0"]"#)).expect_err("port 0");
        assert!(e.to_string().contains("has port 0"), "{e}");
        for bad in [
            "127.0.0.1:+53",
            "+127.0.0.1",
            "[::1]:+53",
            "127.0.0.1:",
            "dns.test:53",
        ] {
            let e = parse(&with_dns(&format!("servers: [{bad:?}]"))).expect_err(bad);
            assert_eq!(
                e.to_string(),
                format!(
                    "test.ron:9:22: invalid DNS server {bad:?}: expected IP or IP:port such as \"127.0.0.1:5353\" or \"[::1]:53\""
                )
            );
        }
        let c = parse(&with_dns(
            r#"servers: ["127.0.0.1:1", "::1", "127.0.0.1:65535"]"#,
        ))
        .expect("valid");
        assert_eq!(
            c.dns.servers,
            [
                "127.0.0.1:1".parse::<SocketAddr>().expect("address"),
                "[::1]:53".parse().expect("address"),
                "127.0.0.1:65535".parse().expect("address"),
            ]
        );
    }

    #[test]
    fn the_dns_interval_is_at_least_100ms() {
        for (short, shown) in [("1ms", "1ms"), ("99ms", "99ms"), ("0s", "0ms")] {
            let e = parse(&with_dns(&format!("interval: {short:?}"))).expect_err(short);
            assert_eq!(
                e.to_string(),
                format!(
                    "test.ron:9:22: a DNS interval of {shown}: expected at least 100ms, as every interval queries each name again"
                )
            );
        }
        let c = parse(&with_dns(r#"interval: "100ms""#)).expect("valid");
        assert_eq!(c.dns.interval, Duration::from_millis(100));
        assert_eq!(parse(GOOD).expect("valid").dns, DnsConfig::default());
    }

    #[test]
    fn the_summary_shows_each_service() {
        let c = parse(SERVICES).expect("valid");
        let summary = c.summary();
        assert!(
            summary.contains("dns        127.0.0.1:5353, [::1]:53, every 2s\n"),
            "{summary}"
        );
        assert!(
            summary.contains("service    web\n  listen     127.0.0.1:8080, [::1]:8080\n  algorithm  WeightedRoundRobin\n  backends   3\n"),
            "{summary}"
        );
        assert!(
            summary.contains(
                "    pods    web.internal:8080  weight 1  (by DNS: one backend per address)\n"
            ),
            "{summary}"
        );
        assert!(
            summary.contains("service    db\n  listen     127.0.0.1:5432\n"),
            "{summary}"
        );
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
