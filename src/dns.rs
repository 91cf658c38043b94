//! Backends given by host name (`addr: "web.internal:8080"`): their names resolved to
//! addresses, and re-resolved every interval by a background watcher.
//!
//! A lookup asks for both the IPv4 (`A`, RFC 1035 section 3.4.1) and the IPv6 (`AAAA`,
//! RFC 3596) addresses of a name, the two queries at once, through
//! [`hickory-resolver`](hickory_resolver), a well-kept asynchronous resolver, rather than a
//! DNS client of our own. Either query failing fails the lookup. With the system's
//! configuration, a name in the hosts file is answered from the file alone, as glibc's
//! `hosts: files dns` would.
//!
//! The watcher keeps the I/O apart from the logic: [`Names`] is the state of every name
//! (its last good addresses, whether it is failing) and turns one round of lookup results
//! into [`Event`]s, the transitions that are logged. A name that keeps failing is logged
//! once when it starts failing and once when it recovers, not once per lookup; a failed
//! lookup never takes away a name's last good addresses.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as ResponseError, NetError};
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::{Name as DnsName, RecordType};
use hickory_resolver::{Hosts, TokioResolver};
use log::{debug, info, warn};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Host name → its current addresses, sorted and without duplicates. A name that has never
/// resolved maps to an empty list; one that has resolved once never maps to an empty list
/// again (a failed lookup keeps its last good addresses).
pub(crate) type Resolved = BTreeMap<String, Vec<IpAddr>>;

/// The longest one query waits for a server's answer, whatever the interval.
const MAX_TIMEOUT: Duration = Duration::from_secs(2);
/// The shortest one query waits for a server's answer, whatever the interval.
const MIN_TIMEOUT: Duration = Duration::from_millis(200);
/// How many times a failed query is tried again (hickory's `attempts`): once, so twice in all.
const RETRIES: usize = 1;

/// Why a name could not be resolved, or the resolver not be set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DnsError {
    /// The resolver's configuration is unusable: the system's (`/etc/resolv.conf`) could not
    /// be read or names no server.
    Config {
        /// What was wrong, from the resolver.
        message: String,
    },
    /// The name does not exist (`NXDOMAIN`, RFC 1035 section 4.1.1, to both queries).
    NotFound {
        /// The name looked up.
        host: String,
    },
    /// The name exists but has no `A` and no `AAAA` record (an empty `NOERROR` answer).
    NoAddresses {
        /// The name looked up.
        host: String,
    },
    /// Any other failure, of either query (the other may have answered): no answer in
    /// time, a server failure (`SERVFAIL`), a refusal, a malformed name.
    Lookup {
        /// The name looked up.
        host: String,
        /// What went wrong, from the resolver; prefixed with `A query: ` or `AAAA query: `
        /// when one query failed alone, or the two failed differently.
        message: String,
    },
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::Config { message } => {
                write!(f, "cannot set up the DNS resolver: {message}")
            }
            DnsError::NotFound { host } => write!(f, "cannot resolve {host}: no such name"),
            DnsError::NoAddresses { host } => {
                write!(f, "cannot resolve {host}: it has no A or AAAA records")
            }
            DnsError::Lookup { host, message } => write!(f, "cannot resolve {host}: {message}"),
        }
    }
}

impl std::error::Error for DnsError {}

/// The system's hosts file, read at each lookup when `dns.servers` is left out.
const SYSTEM_HOSTS: &str = "/etc/hosts";

/// An asynchronous stub resolver: asks recursive DNS servers for the addresses of names,
/// after a hosts file when it has one.
pub(crate) struct Resolver {
    inner: TokioResolver,
    /// The hosts file consulted before DNS, read afresh at each lookup; `None` when the
    /// queries go to `dns.servers` only.
    hosts_file: Option<PathBuf>,
}

impl Resolver {
    /// A resolver for a watcher that re-resolves every `interval`.
    ///
    /// With no `servers`, the system's configuration, as the system's own resolver (glibc's
    /// `hosts: files dns`) would use it: a name that `/etc/hosts` lists is answered from the
    /// file alone, and any other name by the servers, search domains and options of
    /// `/etc/resolv.conf`. Otherwise queries go to `servers` only (UDP, and TCP for an
    /// answer too long for UDP), without search domains or hosts file.
    ///
    /// Answers are cached for at most half of `interval` (whatever their TTL), so each
    /// round of the watcher asks the servers again and a change there is seen within one
    /// interval. A query waits half of `interval` for an answer, but at least 200 ms and at
    /// most 2 s, and is tried twice, so a dead server holds a lookup for about one interval
    /// (at least 400 ms, at most 4 s).
    ///
    /// # Errors
    ///
    /// [`DnsError::Config`] when the system's configuration cannot be read.
    pub(crate) fn new(servers: &[SocketAddr], interval: Duration) -> Result<Resolver, DnsError> {
        let hosts_file = servers.is_empty().then(|| PathBuf::from(SYSTEM_HOSTS));
        Resolver::with_hosts_file(servers, interval, hosts_file)
    }

    /// As [`Resolver::new`], with `hosts_file` (if any) consulted before DNS instead of
    /// the system's: the tests give one of their own beside their loopback server.
    fn with_hosts_file(
        servers: &[SocketAddr],
        interval: Duration,
        hosts_file: Option<PathBuf>,
    ) -> Result<Resolver, DnsError> {
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| DnsError::Config {
                message: format!("the system's configuration (/etc/resolv.conf): {e}"),
            })?
        } else {
            let config = ResolverConfig::from_name_servers(
                servers.iter().map(|addr| name_server(*addr)).collect(),
            );
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.timeout = (interval / 2).clamp(MIN_TIMEOUT, MAX_TIMEOUT);
        options.attempts = RETRIES;
        options.positive_max_ttl = Some(interval / 2);
        options.negative_max_ttl = Some(interval / 2);
        // Hickory reads the hosts file once, when built, and answers from it family by
        // family (adding DNS's AAAA answers to a name the file gives an IPv4 address):
        // `lookup` reads it instead.
        options.use_hosts_file = ResolveHosts::Never;
        let inner = builder.build().map_err(|e| DnsError::Config {
            message: e.to_string(),
        })?;
        Ok(Resolver { inner, hosts_file })
    }

    /// The addresses of `host`, sorted (IPv4 first) and without duplicates; never empty.
    /// An IP address given as `host` is its own answer, without a query.
    ///
    /// A name the hosts file lists (system configuration only) takes the file's addresses,
    /// of both families as the file gives them, and no query is sent. Any other name is
    /// asked for its `A` and its `AAAA` records at the same time, and the two answers must
    /// both arrive: one that fails (no answer in time, `SERVFAIL`) fails the lookup, even
    /// though the other family answered, so that the watcher keeps the name's last good
    /// addresses rather than dropping a family silently. A family without records (an
    /// empty `NOERROR` answer) is no failure.
    ///
    /// # Errors
    ///
    /// [`DnsError::NotFound`] when both queries say the name does not exist,
    /// [`DnsError::NoAddresses`] for a name without any address, [`DnsError::Lookup`] when
    /// either query fails (no answer in time, `SERVFAIL`, a malformed name).
    pub(crate) async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if let Some(path) = &self.hosts_file
            && let Some(addrs) = hosts_file_entry(path, host).await
        {
            return sorted(host, addrs);
        }
        let (v4, v6) = tokio::join!(
            self.query(host, RecordType::A),
            self.query(host, RecordType::AAAA)
        );
        combine(host, v4, v6)
    }

    /// The answer to one query for `host`'s records of `record_type` (`A` or `AAAA`).
    async fn query(&self, host: &str, record_type: RecordType) -> Answer {
        match self.inner.lookup(host, record_type).await {
            Ok(lookup) => Answer::Addrs(
                lookup
                    .answers()
                    .iter()
                    .filter(|record| record.record_type() == record_type)
                    .filter_map(|record| record.data.ip_addr())
                    .collect(),
            ),
            Err(e) if e.is_nx_domain() => Answer::NoSuchName,
            Err(e) if e.is_no_records_found() => Answer::Addrs(Vec::new()),
            Err(NetError::Timeout) => Answer::Failed("no answer in time".to_owned()),
            Err(NetError::Dns(ResponseError::ResponseCode(code))) => {
                Answer::Failed(format!("the server answered {code}"))
            }
            Err(e) => Answer::Failed(e.to_string()),
        }
    }
}

/// One server, at `addr`, over UDP and TCP.
fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
    for connection in &mut server.connections {
        connection.port = addr.port();
    }
    server
}

/// The answer to one query: the addresses of one family.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    /// The family's addresses; none when the name has no record of its type (`NOERROR`
    /// with an empty answer, "NODATA").
    Addrs(Vec<IpAddr>),
    /// The name does not exist (`NXDOMAIN`).
    NoSuchName,
    /// No usable answer: none in time, `SERVFAIL`, a refusal, a malformed name.
    Failed(String),
}

/// The lookup of `host` from the answers to its `A` and its `AAAA` query: a failed query
/// fails it, two `NXDOMAIN` make [`DnsError::NotFound`], and otherwise the addresses of both
/// families, which must not be none.
fn combine(host: &str, a: Answer, aaaa: Answer) -> Result<Vec<IpAddr>, DnsError> {
    let failed = |message: String| {
        Err(DnsError::Lookup {
            host: host.to_owned(),
            message,
        })
    };
    match (a, aaaa) {
        (Answer::Failed(a), Answer::Failed(aaaa)) if a == aaaa => failed(a),
        (Answer::Failed(a), Answer::Failed(aaaa)) => {
            failed(format!("A query: {a}; AAAA query: {aaaa}"))
        }
        (Answer::Failed(a), _) => failed(format!("A query: {a}")),
        (_, Answer::Failed(aaaa)) => failed(format!("AAAA query: {aaaa}")),
        (Answer::NoSuchName, Answer::NoSuchName) => Err(DnsError::NotFound {
            host: host.to_owned(),
        }),
        (a, aaaa) => {
            let addrs = [a, aaaa]
                .into_iter()
                .flat_map(|answer| match answer {
                    Answer::Addrs(addrs) => addrs,
                    Answer::NoSuchName | Answer::Failed(_) => Vec::new(),
                })
                .collect();
            sorted(host, addrs)
        }
    }
}

/// `addrs` sorted (IPv4 first) and without duplicates, or [`DnsError::NoAddresses`] when
/// there are none.
fn sorted(host: &str, mut addrs: Vec<IpAddr>) -> Result<Vec<IpAddr>, DnsError> {
    addrs.sort_unstable();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(DnsError::NoAddresses {
            host: host.to_owned(),
        });
    }
    Ok(addrs)
}

/// The addresses the hosts file at `path` gives `host`, read now; `None` when it lists no
/// address for `host`, or cannot be read (glibc's `files` then leaves the name to `dns`
/// too).
async fn hosts_file_entry(path: &Path, host: &str) -> Option<Vec<IpAddr>> {
    match tokio::fs::read(path).await {
        Ok(text) => hosts_entry(&String::from_utf8_lossy(&text), host),
        Err(e) => {
            debug!("dns: cannot read {}: {e}", path.display());
            None
        }
    }
}

/// The addresses the hosts file `text` gives `host` (both families, as many lines as list
/// it), read with hickory's own parser; `None` when it lists none.
fn hosts_entry(text: &str, host: &str) -> Option<Vec<IpAddr>> {
    let name = DnsName::from_str(host).ok()?;
    let mut hosts = Hosts::default();
    hosts.read_hosts_conf(text.as_bytes()).ok()?;
    let mut listed = None;
    for record_type in [RecordType::A, RecordType::AAAA] {
        if let Some(lookup) = hosts.lookup_static_host(&Query::query(name.clone(), record_type)) {
            listed
                .get_or_insert_with(Vec::new)
                .extend(lookup.answers().iter().filter_map(|r| r.data.ip_addr()));
        }
    }
    listed
}

/// Resolves a host name to its addresses: [`Resolver`], or a fake in tests.
pub(crate) trait Lookup: Send + Sync {
    /// The addresses of `host`, sorted and without duplicates. An empty list is taken as a
    /// failure ([`DnsError::NoAddresses`]).
    fn lookup(&self, host: &str) -> impl Future<Output = Result<Vec<IpAddr>, DnsError>> + Send;
}

impl Lookup for Resolver {
    fn lookup(&self, host: &str) -> impl Future<Output = Result<Vec<IpAddr>, DnsError>> + Send {
        Resolver::lookup(self, host)
    }
}

/// What one name's state did in one refresh: the transitions that are logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// The name's lookup failed after it had succeeded (or had never run). Logged at warn.
    Failing {
        /// Why.
        error: DnsError,
        /// How many addresses the name keeps from its last good lookup; 0 if none.
        kept: usize,
    },
    /// The name resolves after failing. Logged at info.
    Recovered {
        /// The name.
        host: String,
        /// How many lookups in a row had failed.
        failures: u64,
        /// Whether it had addresses before (it resolves *again*), or resolves for the
        /// first time.
        again: bool,
    },
    /// The name's addresses are not the ones it had (the first good lookup included).
    /// Logged at info.
    Changed {
        /// The name.
        host: String,
        /// Its addresses now.
        addrs: Vec<IpAddr>,
        /// Addresses it has now and did not have.
        joined: Vec<IpAddr>,
        /// Addresses it had and has no more.
        left: Vec<IpAddr>,
    },
}

impl Event {
    /// Logs the event at its level.
    fn log(&self) {
        match self {
            Event::Failing { .. } => warn!("{self}"),
            Event::Recovered { .. } | Event::Changed { .. } => info!("{self}"),
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Failing { error, kept: 0 } => write!(f, "dns: {error}; it has no addresses yet"),
            Event::Failing { error, kept: 1 } => {
                write!(f, "dns: {error}; keeping its last address")
            }
            Event::Failing { error, kept } => {
                write!(f, "dns: {error}; keeping its last {kept} addresses")
            }
            Event::Recovered {
                host,
                failures,
                again,
            } => {
                let s = if *failures == 1 { "" } else { "s" };
                if *again {
                    write!(
                        f,
                        "dns: {host} resolves again, after {failures} failed lookup{s}"
                    )
                } else {
                    write!(
                        f,
                        "dns: {host} resolves (after {failures} failed lookup{s})"
                    )
                }
            }
            Event::Changed {
                host,
                addrs,
                joined,
                left,
            } => {
                write!(f, "dns: {host} resolves to {}", List(addrs))?;
                if joined.len() == addrs.len() && left.is_empty() {
                    // Its first addresses: all of them joined.
                    return Ok(());
                }
                match (joined.is_empty(), left.is_empty()) {
                    (false, false) => {
                        write!(f, " (joined: {}; left: {})", List(joined), List(left))
                    }
                    (false, true) => write!(f, " (joined: {})", List(joined)),
                    (true, false) => write!(f, " (left: {})", List(left)),
                    (true, true) => Ok(()),
                }
            }
        }
    }
}

/// Addresses written `a, b, c`.
struct List<'a>(&'a [IpAddr]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, addr) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{addr}")?;
        }
        Ok(())
    }
}

/// One name's state.
#[derive(Debug, Default)]
struct Name {
    /// The last good lookup's addresses, sorted and without duplicates; empty until one.
    addrs: Vec<IpAddr>,
    /// Lookups failed in a row; 0 when the last one succeeded (or none ran yet).
    failures: u64,
}

impl Name {
    /// Takes one lookup's `result` for `host`; returns the events, in the order logged.
    fn update(&mut self, host: &str, result: Result<Vec<IpAddr>, DnsError>) -> Vec<Event> {
        let result = result.and_then(|mut addrs| {
            addrs.sort_unstable();
            addrs.dedup();
            if addrs.is_empty() {
                Err(DnsError::NoAddresses {
                    host: host.to_owned(),
                })
            } else {
                Ok(addrs)
            }
        });
        let mut events = Vec::new();
        match result {
            Err(error) => {
                debug!("dns: {error}");
                self.failures += 1;
                if self.failures == 1 {
                    events.push(Event::Failing {
                        error,
                        kept: self.addrs.len(),
                    });
                }
            }
            Ok(addrs) => {
                if self.failures > 0 {
                    events.push(Event::Recovered {
                        host: host.to_owned(),
                        failures: self.failures,
                        again: !self.addrs.is_empty(),
                    });
                    self.failures = 0;
                }
                if addrs != self.addrs {
                    events.push(Event::Changed {
                        host: host.to_owned(),
                        joined: difference(&addrs, &self.addrs),
                        left: difference(&self.addrs, &addrs),
                        addrs: addrs.clone(),
                    });
                    self.addrs = addrs;
                }
            }
        }
        events
    }
}

/// The addresses of `a` that are not in `b` (both sorted).
fn difference(a: &[IpAddr], b: &[IpAddr]) -> Vec<IpAddr> {
    a.iter()
        .filter(|addr| b.binary_search(addr).is_err())
        .copied()
        .collect()
}

/// The host names to resolve, each with its state: last good addresses, failing or not.
#[derive(Debug, Default)]
pub(crate) struct Names {
    names: BTreeMap<String, Name>,
}

impl Names {
    /// `hosts` (duplicates count once), none resolved yet.
    pub(crate) fn new<S: Into<String>>(hosts: impl IntoIterator<Item = S>) -> Names {
        Names {
            names: hosts
                .into_iter()
                .map(|host| (host.into(), Name::default()))
                .collect(),
        }
    }

    /// `hosts`, each starting from the addresses `known` gives it (a reload keeps what the
    /// names it shares with the previous configuration resolved to).
    pub(crate) fn seeded<S: Into<String>>(
        hosts: impl IntoIterator<Item = S>,
        known: &Resolved,
    ) -> Names {
        let mut names = Names::new(hosts);
        for (host, name) in &mut names.names {
            if let Some(addrs) = known.get(host) {
                name.addrs.clone_from(addrs);
            }
        }
        names
    }

    /// Every name with its current addresses (empty for a name never resolved).
    pub(crate) fn resolved(&self) -> Resolved {
        self.names
            .iter()
            .map(|(host, name)| (host.clone(), name.addrs.clone()))
            .collect()
    }

    /// Looks every name up once, all at the same time, and takes the results: a name that
    /// resolves takes its new addresses, one that fails keeps its last good ones. Logs the
    /// transitions and returns them, in name order; any [`Event::Changed`] among them means
    /// [`Names::resolved`] changed.
    pub(crate) async fn refresh(&mut self, lookup: &impl Lookup) -> Vec<Event> {
        let results =
            futures_util::future::join_all(self.names.keys().map(|host| lookup.lookup(host))).await;
        let mut events = Vec::new();
        for ((host, name), result) in self.names.iter_mut().zip(results) {
            events.extend(name.update(host, result));
        }
        for event in &events {
            event.log();
        }
        events
    }
}

/// Starts a task on `tracker` that refreshes `names` with `lookup` every `interval` (the
/// first refresh one interval from now) until `stop` is cancelled or every receiver is
/// dropped. The receiver holds `names`' current state at once and a new map after each
/// refresh that changed an address. A refresh slower than `interval` delays the next one
/// rather than bunching them; an `interval` below 1 ms counts as 1 ms.
pub(crate) fn spawn_watcher<L: Lookup + 'static>(
    lookup: Arc<L>,
    mut names: Names,
    interval: Duration,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> watch::Receiver<Arc<Resolved>> {
    let interval = interval.max(Duration::from_millis(1));
    let (sender, receiver) = watch::channel(Arc::new(names.resolved()));
    tracker.spawn(async move {
        let start = tokio::time::Instant::now() + interval;
        let mut ticks = tokio::time::interval_at(start, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = sender.closed() => return,
                _ = ticks.tick() => {}
            }
            let events = tokio::select! {
                () = stop.cancelled() => return,
                events = names.refresh(&*lookup) => events,
            };
            if events.iter().any(|e| matches!(e, Event::Changed { .. })) {
                sender.send_replace(Arc::new(names.resolved()));
            }
        }
    });
    receiver
}

/// The integration tests' DNS server (authoritative, on loopback), for the unit tests of
/// [`Resolver`] and of what resolves through it.
#[cfg(test)]
#[path = "../tests/common/dns.rs"]
pub(crate) mod test_server;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::test_server as server;
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| ip(s)).collect()
    }

    fn failed(host: &str) -> DnsError {
        DnsError::Lookup {
            host: host.to_owned(),
            message: "no answer in time".to_owned(),
        }
    }

    /// Answers each name from a table the test changes between refreshes; a name not in it
    /// fails. Counts its calls.
    #[derive(Default)]
    struct Fake {
        answers: Mutex<HashMap<String, Result<Vec<IpAddr>, DnsError>>>,
        calls: watch::Sender<usize>,
    }

    impl Fake {
        fn set(&self, host: &str, answer: Result<Vec<IpAddr>, DnsError>) {
            self.answers
                .lock()
                .expect("fake lock")
                .insert(host.to_owned(), answer);
        }

        /// Waits until the fake has been called `count` times in all.
        async fn wait_calls(&self, count: usize) {
            let mut calls = self.calls.subscribe();
            tokio::time::timeout(WAIT, calls.wait_for(|n| *n >= count))
                .await
                .expect("lookups in time")
                .expect("fake alive");
        }
    }

    impl Lookup for Fake {
        async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
            self.calls.send_modify(|n| *n += 1);
            let answers = self.answers.lock().expect("fake lock");
            answers
                .get(host)
                .cloned()
                .unwrap_or_else(|| Err(failed(host)))
        }
    }

    fn changed(host: &str, addrs: &[&str], joined: &[&str], left: &[&str]) -> Event {
        Event::Changed {
            host: host.to_owned(),
            addrs: ips(addrs),
            joined: ips(joined),
            left: ips(left),
        }
    }

    #[tokio::test]
    async fn two_addresses_then_one() {
        let fake = Fake::default();
        let mut names = Names::new(["web"]);
        fake.set("web", Ok(ips(&["10.0.0.2", "10.0.0.1"])));
        assert_eq!(
            names.refresh(&fake).await,
            [changed(
                "web",
                &["10.0.0.1", "10.0.0.2"],
                &["10.0.0.1", "10.0.0.2"],
                &[]
            )]
        );
        fake.set("web", Ok(ips(&["10.0.0.2"])));
        assert_eq!(
            names.refresh(&fake).await,
            [changed("web", &["10.0.0.2"], &[], &["10.0.0.1"])]
        );
        assert_eq!(names.resolved()["web"], ips(&["10.0.0.2"]));
        // The same set again: nothing to report.
        assert_eq!(names.refresh(&fake).await, []);
    }

    #[tokio::test]
    async fn a_failure_keeps_the_last_good_addresses_and_is_reported_once() {
        let fake = Fake::default();
        let mut names = Names::new(["web"]);
        fake.set("web", Ok(ips(&["10.0.0.1", "10.0.0.2"])));
        names.refresh(&fake).await;

        fake.set("web", Err(failed("web")));
        let events = names.refresh(&fake).await;
        assert_eq!(
            events,
            [Event::Failing {
                error: failed("web"),
                kept: 2,
            }]
        );
        assert_eq!(
            events[0].to_string(),
            "dns: cannot resolve web: no answer in time; keeping its last 2 addresses"
        );
        // Failing again and again: one event in all.
        for _ in 0..3 {
            assert_eq!(names.refresh(&fake).await, []);
        }
        assert_eq!(names.resolved()["web"], ips(&["10.0.0.1", "10.0.0.2"]));

        // It recovers with the same addresses: recovered, not changed.
        fake.set("web", Ok(ips(&["10.0.0.2", "10.0.0.1"])));
        let events = names.refresh(&fake).await;
        assert_eq!(
            events,
            [Event::Recovered {
                host: "web".to_owned(),
                failures: 4,
                again: true,
            }]
        );
        assert_eq!(
            events[0].to_string(),
            "dns: web resolves again, after 4 failed lookups"
        );
        assert_eq!(names.refresh(&fake).await, []);
    }

    #[tokio::test]
    async fn recovering_with_other_addresses_reports_both() {
        let fake = Fake::default();
        let mut names = Names::new(["web"]);
        fake.set("web", Ok(ips(&["10.0.0.1"])));
        names.refresh(&fake).await;
        fake.set("web", Err(failed("web")));
        names.refresh(&fake).await;
        fake.set("web", Ok(ips(&["10.0.0.3"])));
        assert_eq!(
            names.refresh(&fake).await,
            [
                Event::Recovered {
                    host: "web".to_owned(),
                    failures: 1,
                    again: true,
                },
                changed("web", &["10.0.0.3"], &["10.0.0.3"], &["10.0.0.1"]),
            ]
        );
    }

    #[tokio::test]
    async fn a_name_never_resolved_is_empty() {
        let fake = Fake::default();
        let mut names = Names::new(["web", "db", "web"]);
        assert_eq!(names.resolved().len(), 2, "duplicates count once");
        assert!(names.resolved()["db"].is_empty());

        fake.set("web", Ok(ips(&["10.0.0.1"])));
        let events = names.refresh(&fake).await;
        let failing = Event::Failing {
            error: failed("db"),
            kept: 0,
        };
        assert_eq!(
            events,
            [
                failing.clone(),
                changed("web", &["10.0.0.1"], &["10.0.0.1"], &[])
            ],
            "in name order"
        );
        assert_eq!(
            failing.to_string(),
            "dns: cannot resolve db: no answer in time; it has no addresses yet"
        );
        assert!(names.resolved()["db"].is_empty());
        assert_eq!(names.resolved()["web"], ips(&["10.0.0.1"]));

        // It resolves at last, after two failures: it resolves, not "again".
        assert_eq!(names.refresh(&fake).await, []);
        fake.set("db", Ok(ips(&["10.0.0.9"])));
        let events = names.refresh(&fake).await;
        assert_eq!(
            events,
            [
                Event::Recovered {
                    host: "db".to_owned(),
                    failures: 2,
                    again: false,
                },
                changed("db", &["10.0.0.9"], &["10.0.0.9"], &[]),
            ]
        );
        let lines: Vec<String> = events.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "dns: db resolves (after 2 failed lookups)",
                "dns: db resolves to 10.0.0.9"
            ]
        );
    }

    #[tokio::test]
    async fn a_name_kept_from_a_reload_resolves_again() {
        let fake = Fake::default();
        let known = Resolved::from([("web".to_owned(), ips(&["10.0.0.1"]))]);
        let mut names = Names::seeded(["web"], &known);
        let events = names.refresh(&fake).await;
        assert_eq!(
            events[0].to_string(),
            "dns: cannot resolve web: no answer in time; keeping its last address"
        );
        fake.set("web", Ok(ips(&["10.0.0.1"])));
        let events = names.refresh(&fake).await;
        assert_eq!(
            events[0].to_string(),
            "dns: web resolves again, after 1 failed lookup"
        );
        assert_eq!(events.len(), 1, "the same address: no change");
    }

    #[tokio::test]
    async fn answers_are_sorted_and_deduplicated_and_an_empty_one_fails() {
        let fake = Fake::default();
        let mut names = Names::new(["web"]);
        fake.set(
            "web",
            Ok(ips(&["::1", "10.0.0.2", "10.0.0.1", "10.0.0.2", "::1"])),
        );
        names.refresh(&fake).await;
        assert_eq!(
            names.resolved()["web"],
            ips(&["10.0.0.1", "10.0.0.2", "::1"])
        );

        // The same set in another order is no change.
        fake.set("web", Ok(ips(&["::1", "10.0.0.1", "10.0.0.2"])));
        assert_eq!(names.refresh(&fake).await, []);

        // An empty answer is a failure and keeps the addresses.
        fake.set("web", Ok(Vec::new()));
        assert_eq!(
            names.refresh(&fake).await,
            [Event::Failing {
                error: DnsError::NoAddresses {
                    host: "web".to_owned()
                },
                kept: 3
            }]
        );
        assert_eq!(names.resolved()["web"].len(), 3);
    }

    #[test]
    fn changes_read_as_joined_and_left() {
        assert_eq!(
            changed(
                "web",
                &["10.0.0.2", "10.0.0.3"],
                &["10.0.0.3"],
                &["10.0.0.1"]
            )
            .to_string(),
            "dns: web resolves to 10.0.0.2, 10.0.0.3 (joined: 10.0.0.3; left: 10.0.0.1)"
        );
        assert_eq!(
            changed("web", &["10.0.0.1", "10.0.0.2"], &["10.0.0.2"], &[]).to_string(),
            "dns: web resolves to 10.0.0.1, 10.0.0.2 (joined: 10.0.0.2)"
        );
        assert_eq!(
            changed("web", &["10.0.0.1"], &[], &["10.0.0.2"]).to_string(),
            "dns: web resolves to 10.0.0.1 (left: 10.0.0.2)"
        );
        assert_eq!(
            changed("web", &["10.0.0.1", "::1"], &["10.0.0.1", "::1"], &[]).to_string(),
            "dns: web resolves to 10.0.0.1, ::1",
            "the first addresses"
        );
    }

    #[tokio::test]
    async fn the_watcher_publishes_changes_only_and_stops_when_told() {
        let fake = Arc::new(Fake::default());
        fake.set("web", Ok(ips(&["10.0.0.1"])));
        let mut names = Names::new(["web"]);
        names.refresh(&*fake).await;

        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let mut resolved = spawn_watcher(
            Arc::clone(&fake),
            names,
            Duration::from_millis(5),
            &tracker,
            stop.clone(),
        );
        assert_eq!(resolved.borrow_and_update()["web"], ips(&["10.0.0.1"]));

        // Several refreshes with the same answer publish nothing.
        fake.wait_calls(4).await;
        assert!(!resolved.has_changed().expect("watcher alive"));

        fake.set("web", Ok(ips(&["10.0.0.1", "10.0.0.2"])));
        tokio::time::timeout(WAIT, resolved.changed())
            .await
            .expect("a change in time")
            .expect("watcher alive");
        assert_eq!(
            resolved.borrow_and_update()["web"],
            ips(&["10.0.0.1", "10.0.0.2"])
        );

        stop.cancel();
        tracker.close();
        tokio::time::timeout(WAIT, tracker.wait())
            .await
            .expect("the watcher stops");
    }

    #[tokio::test]
    async fn the_watcher_stops_when_no_one_listens() {
        let tracker = TaskTracker::new();
        let resolved = spawn_watcher(
            Arc::new(Fake::default()),
            Names::new(["web"]),
            Duration::from_millis(5),
            &tracker,
            CancellationToken::new(),
        );
        drop(resolved);
        tracker.close();
        tokio::time::timeout(WAIT, tracker.wait())
            .await
            .expect("the watcher stops");
    }

    /// A resolver that asks only the loopback test server.
    async fn resolver_and_server() -> (Resolver, server::DnsServer) {
        let server = server::DnsServer::start().await;
        let resolver =
            Resolver::new(&[server.addr()], Duration::from_millis(400)).expect("resolver");
        (resolver, server)
    }

    #[tokio::test]
    async fn the_resolver_asks_for_both_families_and_sorts() {
        let (resolver, server) = resolver_and_server().await;
        server.set("web.test", &ips(&["::1", "127.0.0.3", "127.0.0.2", "::1"]));
        assert_eq!(
            resolver.lookup("web.test").await,
            Ok(ips(&["127.0.0.2", "127.0.0.3", "::1"]))
        );
        // Only IPv4: the AAAA query's empty answer is no failure.
        server.set("v4.test", &ips(&["127.0.0.2"]));
        assert_eq!(resolver.lookup("v4.test").await, Ok(ips(&["127.0.0.2"])));
        // An address is its own answer.
        let before = server.queries();
        assert_eq!(resolver.lookup("127.0.0.9").await, Ok(ips(&["127.0.0.9"])));
        assert_eq!(server.queries(), before, "no query for an address");
    }

    #[test]
    fn a_failed_query_fails_the_lookup_whatever_the_other_answered() {
        use Answer::{Addrs, Failed, NoSuchName};
        let timeout = || Failed("no answer in time".to_owned());
        let lookup = |message: &str| {
            Err(DnsError::Lookup {
                host: "web".to_owned(),
                message: message.to_owned(),
            })
        };
        let v4 = || Addrs(ips(&["10.0.0.2", "10.0.0.1"]));
        let v6 = || Addrs(ips(&["::1"]));
        assert_eq!(
            combine("web", v4(), v6()),
            Ok(ips(&["10.0.0.1", "10.0.0.2", "::1"]))
        );
        // One family without records (NODATA) is no failure.
        assert_eq!(
            combine("web", v4(), Addrs(Vec::new())),
            Ok(ips(&["10.0.0.1", "10.0.0.2"]))
        );
        assert_eq!(combine("web", Addrs(Vec::new()), v6()), Ok(ips(&["::1"])));
        // One query failing fails the whole lookup, so the last good addresses stay.
        assert_eq!(
            combine("web", v4(), timeout()),
            lookup("AAAA query: no answer in time")
        );
        assert_eq!(
            combine("web", Failed("SERVFAIL".to_owned()), v6()),
            lookup("A query: SERVFAIL")
        );
        assert_eq!(
            combine("web", NoSuchName, timeout()),
            lookup("AAAA query: no answer in time")
        );
        assert_eq!(
            combine("web", timeout(), timeout()),
            lookup("no answer in time")
        );
        assert_eq!(
            combine("web", timeout(), Failed("SERVFAIL".to_owned())),
            lookup("A query: no answer in time; AAAA query: SERVFAIL")
        );
        // No such name, or no address at all.
        assert_eq!(
            combine("web", NoSuchName, NoSuchName),
            Err(DnsError::NotFound {
                host: "web".to_owned()
            })
        );
        let none = Err(DnsError::NoAddresses {
            host: "web".to_owned(),
        });
        assert_eq!(combine("web", Addrs(Vec::new()), Addrs(Vec::new())), none);
        assert_eq!(combine("web", NoSuchName, Addrs(Vec::new())), none);
        // A server that says both: the addresses it gave.
        assert_eq!(combine("web", NoSuchName, v6()), Ok(ips(&["::1"])));
    }

    #[tokio::test]
    async fn one_family_failing_fails_the_resolvers_lookup() {
        let (resolver, server) = resolver_and_server().await;
        // Nothing cached between the lookups.
        server.set_ttl(0);
        server.set("web.test", &ips(&["127.0.0.2", "::2"]));
        assert_eq!(
            resolver.lookup("web.test").await,
            Ok(ips(&["127.0.0.2", "::2"]))
        );
        for mode in [server::Mode::ServFail, server::Mode::Silent] {
            server.set_mode_for(RecordType::AAAA, mode);
            let error = resolver.lookup("web.test").await.expect_err("AAAA fails");
            assert!(
                matches!(&error, DnsError::Lookup { host, message }
                    if host == "web.test" && message.starts_with("AAAA query: ")),
                "{mode:?}: {error:?}"
            );
            server.set_mode(server::Mode::Answer);
            server.set_mode_for(RecordType::A, mode);
            let error = resolver.lookup("web.test").await.expect_err("A fails");
            assert!(
                matches!(&error, DnsError::Lookup { message, .. } if message.starts_with("A query: ")),
                "{mode:?}: {error:?}"
            );
            server.set_mode(server::Mode::Answer);
        }
        assert_eq!(
            resolver.lookup("web.test").await,
            Ok(ips(&["127.0.0.2", "::2"]))
        );
        // A name with IPv4 addresses only: its AAAA query failing fails it too (the
        // watcher cannot tell a failed query from a family it would have lost).
        server.set("v4.test", &ips(&["127.0.0.2"]));
        server.set_mode_for(RecordType::AAAA, server::Mode::Silent);
        assert_eq!(
            resolver.lookup("v4.test").await,
            Err(DnsError::Lookup {
                host: "v4.test".to_owned(),
                message: "AAAA query: no answer in time".to_owned()
            })
        );
    }

    #[tokio::test]
    async fn a_family_failing_keeps_the_addresses_and_is_reported_once() {
        let (resolver, server) = resolver_and_server().await;
        server.set_ttl(0);
        server.set("web.test", &ips(&["127.0.0.2", "127.0.0.3", "::2"]));
        let mut names = Names::new(["web.test"]);
        let all = ips(&["127.0.0.2", "127.0.0.3", "::2"]);
        assert_eq!(
            names.refresh(&resolver).await,
            [changed(
                "web.test",
                &["127.0.0.2", "127.0.0.3", "::2"],
                &["127.0.0.2", "127.0.0.3", "::2"],
                &[]
            )]
        );
        for (mode, message) in [
            (server::Mode::Silent, "AAAA query: no answer in time"),
            (
                server::Mode::ServFail,
                "AAAA query: the server answered Server Failure",
            ),
        ] {
            server.set_mode_for(RecordType::AAAA, mode);
            let events = names.refresh(&resolver).await;
            assert!(
                matches!(&events[..], [Event::Failing {
                    error: DnsError::Lookup { message: m, .. },
                    kept: 3
                }] if m == message),
                "{mode:?}: {events:?}"
            );
            assert!(
                events[0]
                    .to_string()
                    .ends_with("; keeping its last 3 addresses"),
                "{}",
                events[0]
            );
            assert_eq!(names.refresh(&resolver).await, [], "{mode:?}: said once");
            assert_eq!(names.resolved()["web.test"], all, "{mode:?}");

            server.set_mode(server::Mode::Answer);
            assert_eq!(
                names.refresh(&resolver).await,
                [Event::Recovered {
                    host: "web.test".to_owned(),
                    failures: 2,
                    again: true,
                }],
                "{mode:?}"
            );
            assert_eq!(names.resolved()["web.test"], all, "{mode:?}");
        }
    }

    /// A file of its own in the temporary directory, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(text: &str) -> TempFile {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let file = TempFile(
                std::env::temp_dir()
                    .join(format!("ballast-dns-test-{}-{n}.hosts", std::process::id())),
            );
            file.write(text);
            file
        }

        fn write(&self, text: &str) {
            std::fs::write(&self.0, text).expect("write the test hosts file");
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn the_hosts_file_gives_both_families_as_it_lists_them() {
        let text = "\u{feff}# a comment\n\
                    127.0.0.1\tlocalhost\n\
                    127.0.0.5 web.test www.test # the front\n\
                    ::5 v6.test www.test\n\
                    not-an-address bad.test\n\
                    127.0.0.6 Upper.Test\n\
                    127.0.0.7\n\
                    127.0.0.8 www.test\n";
        assert_eq!(hosts_entry(text, "localhost"), Some(ips(&["127.0.0.1"])));
        assert_eq!(hosts_entry(text, "web.test"), Some(ips(&["127.0.0.5"])));
        assert_eq!(hosts_entry(text, "v6.test"), Some(ips(&["::5"])));
        let mut www = hosts_entry(text, "www.test").expect("listed");
        www.sort_unstable();
        assert_eq!(www, ips(&["127.0.0.5", "127.0.0.8", "::5"]));
        assert_eq!(hosts_entry(text, "upper.test"), Some(ips(&["127.0.0.6"])));
        assert_eq!(hosts_entry(text, "bad.test"), None);
        assert_eq!(hosts_entry(text, "front"), None);
        assert_eq!(hosts_entry(text, "other.test"), None);
        assert_eq!(hosts_entry("", "web.test"), None);
    }

    #[tokio::test]
    async fn a_name_in_the_hosts_file_is_answered_from_it_alone_read_at_each_lookup() {
        let server = server::DnsServer::start().await;
        server.set_ttl(0);
        let hosts = TempFile::new("127.0.0.1 localhost\n127.0.0.5 web.test\n");
        let resolver = Resolver::with_hosts_file(
            &[server.addr()],
            Duration::from_millis(400),
            Some(hosts.0.clone()),
        )
        .expect("resolver");
        // DNS would add an AAAA address: the hosts file alone answers, IPv4 only, and
        // no query is sent for either family.
        server.set("web.test", &ips(&["127.0.0.9", "::9"]));
        assert_eq!(resolver.lookup("web.test").await, Ok(ips(&["127.0.0.5"])));
        assert_eq!(resolver.lookup("localhost").await, Ok(ips(&["127.0.0.1"])));
        assert_eq!(server.queries(), 0, "no query for a name in the hosts file");

        // A name the file does not list: DNS, both families.
        server.set("api.test", &ips(&["127.0.0.7", "::7"]));
        assert_eq!(
            resolver.lookup("api.test").await,
            Ok(ips(&["127.0.0.7", "::7"]))
        );
        assert_eq!(server.queries(), 2);

        // The file is edited: the next lookup reads it.
        hosts.write("127.0.0.6 web.test\n::6 web.test\n127.0.0.8 api.test\n");
        assert_eq!(
            resolver.lookup("web.test").await,
            Ok(ips(&["127.0.0.6", "::6"]))
        );
        assert_eq!(resolver.lookup("api.test").await, Ok(ips(&["127.0.0.8"])));
        assert_eq!(server.queries(), 2);

        // A name that leaves the file is asked of DNS again; so is every name once the
        // file is gone.
        hosts.write("127.0.0.8 api.test\n");
        assert_eq!(
            resolver.lookup("web.test").await,
            Ok(ips(&["127.0.0.9", "::9"]))
        );
        assert_eq!(server.queries(), 4);
        drop(hosts);
        assert_eq!(
            resolver.lookup("api.test").await,
            Ok(ips(&["127.0.0.7", "::7"]))
        );
        assert_eq!(server.queries(), 6);
    }

    #[tokio::test]
    async fn with_servers_the_hosts_file_is_not_read() {
        // `Resolver::new` with servers: no hosts file, whatever /etc/hosts lists.
        let server = server::DnsServer::start().await;
        let resolver =
            Resolver::new(&[server.addr()], Duration::from_millis(400)).expect("resolver");
        assert!(resolver.hosts_file.is_none());
    }

    #[tokio::test]
    async fn the_resolver_types_its_errors() {
        let (resolver, server) = resolver_and_server().await;
        assert_eq!(
            resolver.lookup("nowhere.test").await,
            Err(DnsError::NotFound {
                host: "nowhere.test".to_owned()
            })
        );
        server.set("empty.test", &[]);
        assert_eq!(
            resolver.lookup("empty.test").await,
            Err(DnsError::NoAddresses {
                host: "empty.test".to_owned()
            })
        );
        server.set_mode(server::Mode::ServFail);
        let error = resolver.lookup("web.test").await.expect_err("SERVFAIL");
        assert!(
            matches!(&error, DnsError::Lookup { host, .. } if host == "web.test"),
            "{error:?}"
        );
        server.set_mode(server::Mode::Silent);
        assert_eq!(
            resolver.lookup("web.test").await,
            Err(DnsError::Lookup {
                host: "web.test".to_owned(),
                message: "no answer in time".to_owned()
            })
        );
    }

    #[tokio::test]
    async fn the_resolver_caches_for_half_an_interval_at_most() {
        let (resolver, server) = resolver_and_server().await;
        server.set_ttl(3600);
        server.set("web.test", &ips(&["127.0.0.2", "127.0.0.3"]));
        assert_eq!(resolver.lookup("web.test").await.map(|a| a.len()), Ok(2));
        // An hour's TTL, capped at 200 ms: the change shows after that.
        server.set("web.test", &ips(&["127.0.0.3"]));
        let deadline = tokio::time::Instant::now() + WAIT;
        while resolver.lookup("web.test").await != Ok(ips(&["127.0.0.3"])) {
            assert!(tokio::time::Instant::now() < deadline, "no change seen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A name that did not exist is not remembered as missing for longer either.
        assert!(resolver.lookup("new.test").await.is_err());
        server.set("new.test", &ips(&["127.0.0.4"]));
        while resolver.lookup("new.test").await != Ok(ips(&["127.0.0.4"])) {
            assert!(tokio::time::Instant::now() < deadline, "new name not seen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn the_watcher_follows_the_server() {
        let (resolver, server) = resolver_and_server().await;
        server.set("web.test", &ips(&["127.0.0.2", "127.0.0.3"]));
        let resolver = Arc::new(resolver);
        let mut names = Names::new(["web.test"]);
        names.refresh(&*resolver).await;

        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let mut resolved = spawn_watcher(
            resolver,
            names,
            Duration::from_millis(50),
            &tracker,
            stop.clone(),
        );
        assert_eq!(
            resolved.borrow_and_update()["web.test"],
            ips(&["127.0.0.2", "127.0.0.3"])
        );

        server.set("web.test", &ips(&["127.0.0.3"]));
        tokio::time::timeout(WAIT, resolved.changed())
            .await
            .expect("a change in time")
            .expect("watcher alive");
        assert_eq!(
            resolved.borrow_and_update()["web.test"],
            ips(&["127.0.0.3"])
        );

        // The server goes silent: the addresses stay. A lookup sends at most 4 queries (A
        // and AAAA, each tried twice), so a 5th means a whole failed refresh has passed.
        server.set_mode(server::Mode::Silent);
        let seen = server.queries();
        server.wait_queries(seen + 5).await;
        assert!(!resolved.has_changed().expect("watcher alive"));

        stop.cancel();
        tracker.close();
        tokio::time::timeout(WAIT, tracker.wait())
            .await
            .expect("the watcher stops");
    }
}
