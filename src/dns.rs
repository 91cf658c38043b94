//! Backends given by host name (`addr: "web.internal:8080"`): their names resolved to
//! addresses, and re-resolved every interval by a background watcher.
//!
//! A lookup asks for both the IPv4 (`A`, RFC 1035 section 3.4.1) and the IPv6 (`AAAA`,
//! RFC 3596) addresses of a name, through [`hickory-resolver`](hickory_resolver), a
//! well-kept asynchronous resolver, rather than a DNS client of our own.
//!
//! The watcher keeps the I/O apart from the logic: [`Names`] is the state of every name
//! (its last good addresses, whether it is failing) and turns one round of lookup results
//! into [`Event`]s, the transitions that are logged. A name that keeps failing is logged
//! once when it starts failing and once when it recovers, not once per lookup; a failed
//! lookup never takes away a name's last good addresses.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
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
    /// The name does not exist (`NXDOMAIN`, RFC 1035 section 4.1.1).
    NotFound {
        /// The name looked up.
        host: String,
    },
    /// The name exists but has no `A` and no `AAAA` record (an empty `NOERROR` answer).
    NoAddresses {
        /// The name looked up.
        host: String,
    },
    /// Any other failure: no answer in time, a server failure (`SERVFAIL`), a refusal, a
    /// malformed name.
    Lookup {
        /// The name looked up.
        host: String,
        /// What went wrong, from the resolver.
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

/// An asynchronous stub resolver: asks recursive DNS servers for the addresses of names.
pub(crate) struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// A resolver for a watcher that re-resolves every `interval`.
    ///
    /// With no `servers`, the system's configuration: the servers, search domains and
    /// options of `/etc/resolv.conf`, and `/etc/hosts` consulted first. Otherwise queries go
    /// to `servers` only (UDP, and TCP for an answer too long for UDP), without search
    /// domains or hosts file.
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
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.timeout = (interval / 2).clamp(MIN_TIMEOUT, MAX_TIMEOUT);
        options.attempts = RETRIES;
        options.positive_max_ttl = Some(interval / 2);
        options.negative_max_ttl = Some(interval / 2);
        options.use_hosts_file = if servers.is_empty() {
            ResolveHosts::Always
        } else {
            ResolveHosts::Never
        };
        let inner = builder.build().map_err(|e| DnsError::Config {
            message: e.to_string(),
        })?;
        Ok(Resolver { inner })
    }

    /// The `A` and `AAAA` addresses of `host`, sorted (IPv4 first) and without duplicates;
    /// never empty. An IP address given as `host` is its own answer, without a query.
    ///
    /// When one of the two queries fails and the other answers, the answer is the other's
    /// addresses alone (hickory's rule), so a name whose `AAAA` query times out resolves to
    /// its IPv4 addresses.
    ///
    /// # Errors
    ///
    /// [`DnsError::NotFound`] for a name that does not exist, [`DnsError::NoAddresses`] for
    /// a name without addresses, [`DnsError::Lookup`] for every other failure (no answer in
    /// time, `SERVFAIL`, a malformed name).
    pub(crate) async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let answer = self
            .inner
            .lookup_ip(host)
            .await
            .map_err(|e| lookup_error(host, &e))?;
        let mut addrs: Vec<IpAddr> = answer.iter().collect();
        addrs.sort_unstable();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(DnsError::NoAddresses {
                host: host.to_owned(),
            });
        }
        Ok(addrs)
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

fn lookup_error(host: &str, e: &NetError) -> DnsError {
    let host = host.to_owned();
    if e.is_nx_domain() {
        DnsError::NotFound { host }
    } else if e.is_no_records_found() {
        DnsError::NoAddresses { host }
    } else if matches!(e, NetError::Timeout) {
        DnsError::Lookup {
            host,
            message: "no answer in time".to_owned(),
        }
    } else {
        DnsError::Lookup {
            host,
            message: e.to_string(),
        }
    }
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
    /// The name resolves again after failing. Logged at info.
    Recovered {
        /// The name.
        host: String,
        /// How many lookups in a row had failed.
        failures: u64,
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
            Event::Recovered { host, failures } => {
                let s = if *failures == 1 { "" } else { "s" };
                write!(
                    f,
                    "dns: {host} resolves again, after {failures} failed lookup{s}"
                )
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
/// [`Resolver`].
#[cfg(test)]
#[path = "../tests/common/dns.rs"]
mod test_server;

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
                    failures: 1
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
