//! The raw serde types of `balancer.ron` (unknown fields rejected) and the value rules
//! checked while parsing, so that a bad value is reported at its line and column.

use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::*;

/// The file's top level: one service written at the top (`listen`, `algorithm`,
/// `backends`, `accept_proxy`), or `services: [...]`; the sections are defaults for every
/// service.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: Option<Listen>,
    pub(super) algorithm: Option<Algorithm>,
    pub(super) backends: Option<Backends>,
    pub(super) accept_proxy: Option<bool>,
    pub(super) services: Option<Services>,
    pub(super) workers: Option<Checked<Workers>>,
    #[serde(default)]
    pub(super) timeouts: RawTimeouts,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) relay: RawRelay,
    #[serde(default)]
    pub(super) health: RawHealth,
    #[serde(default)]
    pub(super) load_poll: RawLoadPoll,
    pub(super) access_log: Option<AccessLog>,
    pub(super) slow_start: Option<Positive>,
    pub(super) maglev_table_size: Option<TableSize>,
    pub(super) admin: Option<Addr>,
    pub(super) admin_token: Option<Token>,
    pub(super) dns: Option<RawDns>,
}

/// One entry of `services`: its own listeners, backends and routes, and its own values for
/// any of the top-level sections. Which of `listen`, `algorithm`, `backends` and `routes`
/// it needs depends on the others and on the rest of the file (see [`entry_rules`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: ServiceName,
    pub(super) listen: Option<Listen>,
    pub(super) algorithm: Option<Algorithm>,
    pub(super) backends: Option<Backends>,
    pub(super) routes: Option<Routes>,
    pub(super) accept_proxy: Option<bool>,
    pub(super) timeouts: Option<RawTimeouts>,
    pub(super) limits: Option<RawLimits>,
    pub(super) relay: Option<RawServiceRelay>,
    pub(super) health: Option<RawHealth>,
    pub(super) load_poll: Option<RawLoadPoll>,
    pub(super) access_log: Option<AccessLog>,
    pub(super) slow_start: Option<Positive>,
    pub(super) maglev_table_size: Option<TableSize>,
}

/// A service's own `relay` section: `max_pipes` is a budget of the whole process
/// (HAProxy's `maxpipes` is global too), so only the top level sets it.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServiceRelay {
    pub(super) splice: Option<Splice>,
    pub(super) pipe_size: Option<Checked<PipeSize>>,
}

/// `dns: (servers: [...], interval: "5s")`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    pub(super) servers: Option<DnsServers>,
    pub(super) interval: Option<DnsInterval>,
}

/// `dns.servers`: at least one (an empty list would leave no server to ask; the system's
/// resolver is had by leaving the key out).
pub(super) struct DnsServers(pub(super) Vec<SocketAddr>);

impl<'de> Deserialize<'de> for DnsServers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let servers: Vec<DnsServer> = held_to(d, |servers: &Vec<DnsServer>| {
            if servers.is_empty() {
                Err("an empty list: leave `servers` out to use the system's resolver".into())
            } else {
                Ok(())
            }
        })?;
        Ok(DnsServers(servers.into_iter().map(|s| s.0).collect()))
    }
}

/// A DNS server: `IP:port` with a port from 1 to 65535, or a bare IP for port 53.
pub(super) struct DnsServer(pub(super) SocketAddr);

impl<'de> Deserialize<'de> for DnsServer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let text = text.trim();
        // std's parsers take digits alone for the port (no sign), like `Target`'s.
        let addr = text
            .parse::<SocketAddr>()
            .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid DNS server {text:?}: expected IP or IP:port such as \"127.0.0.1:5353\" or \"[::1]:53\""
                ))
            })?;
        if addr.port() == 0 {
            return Err(serde::de::Error::custom(format!(
                "DNS server {text:?} has port 0: expected a port from 1 to 65535, or none for 53"
            )));
        }
        Ok(DnsServer(addr))
    }
}

/// The shortest `dns.interval`: each interval sends two queries (`A` and `AAAA`) per name,
/// and a shorter one would hammer the servers (1 ms was 2,000 queries a second).
pub(super) const MIN_DNS_INTERVAL: Duration = Duration::from_millis(100);

/// `dns.interval`: at least [`MIN_DNS_INTERVAL`].
pub(super) struct DnsInterval(pub(super) Duration);

impl<'de> Deserialize<'de> for DnsInterval {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let HumanDuration(interval) = held_to(d, |HumanDuration(interval): &HumanDuration| {
            if *interval < MIN_DNS_INTERVAL {
                Err(format!(
                    "a DNS interval of {}ms: expected at least {}ms, as every interval queries each name again",
                    interval.as_millis(),
                    MIN_DNS_INTERVAL.as_millis()
                ))
            } else {
                Ok(())
            }
        })?;
        Ok(DnsInterval(interval))
    }
}

/// What one parse has seen so far, for the rules that span entries (unique service names,
/// unique backend names within a service, unique server names within a service's routes,
/// no address listened on twice). Checked as each value is read, so that ron reports the
/// offending value's own line and column; serde derives offer no other way to hand context
/// down. Reset by [`ParseScope`].
///
/// Rules that look ahead (a route's target may be written after the route; a service
/// without `listen` needs a route to it from anywhere in the file) are checked by a second
/// parse of the same text that knows what the first one learnt of every entry, so that
/// they too point at the value at fault.
#[derive(Default)]
struct Seen {
    services: Vec<String>,
    /// The service whose entry is being read, once its name is known.
    service: Option<String>,
    listen: Vec<(SocketAddr, Option<String>)>,
    /// Backend names of the list being read.
    backends: Option<Vec<String>>,
    /// Server names of the routes being read (one service's).
    server_names: Option<Vec<String>>,
    /// Which entry of `services` is being read (from 0).
    entry: Option<usize>,
    /// What the first parse learnt of every entry; `None` during the first parse.
    known: Option<Vec<Entry>>,
    /// What this parse has learnt so far, entry by entry.
    learnt: Vec<Entry>,
}

/// What the rules that look ahead need to know of one entry of `services`.
#[derive(Clone, Debug, Default)]
pub(super) struct Entry {
    name: String,
    listen: bool,
    algorithm: bool,
    backends: bool,
    /// The services its routes lead to.
    targets: Vec<String>,
}

impl Entry {
    fn of(service: &RawService) -> Entry {
        Entry {
            name: service.name.0.clone(),
            listen: service.listen.is_some(),
            algorithm: service.algorithm.is_some(),
            backends: service.backends.is_some(),
            targets: service.routes.as_ref().map_or_else(Vec::new, |routes| {
                routes.0.iter().map(|r| r.service.0.clone()).collect()
            }),
        }
    }
}

thread_local! {
    static SEEN: std::cell::RefCell<Seen> = std::cell::RefCell::default();
}

fn seen<T>(f: impl FnOnce(&mut Seen) -> T) -> T {
    SEEN.with(|s| f(&mut s.borrow_mut()))
}

/// Starts the cross-entry rules afresh for one parse and clears them when dropped.
pub(super) struct ParseScope(());

impl ParseScope {
    /// A first parse (`known` is `None`), or a second one that knows every entry.
    pub(super) fn begin(known: Option<Vec<Entry>>) -> ParseScope {
        seen(|s| {
            *s = Seen {
                known,
                ..Seen::default()
            }
        });
        ParseScope(())
    }

    /// What this parse learnt of the entries of `services`, in order.
    pub(super) fn learnt(&self) -> Vec<Entry> {
        seen(|s| s.learnt.clone())
    }
}

impl Drop for ParseScope {
    fn drop(&mut self) {
        seen(|s| *s = Seen::default());
    }
}

/// Whether listening on `a` and on `b` would take the same connections: the same port
/// (other than 0, which asks for a free one) on the same address, or on a wildcard address
/// of the same family (`[::]` also takes IPv4 where the system is dual-stack).
pub(super) fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    // `[::ffff:127.0.0.1]` is 127.0.0.1 to the kernel.
    let (a, b) = (a.ip().to_canonical(), b.ip().to_canonical());
    let covers = |wide: IpAddr, other: IpAddr| match wide {
        IpAddr::V4(w) => w.is_unspecified() && other.is_ipv4(),
        IpAddr::V6(w) => w.is_unspecified(),
    };
    a == b || covers(a, b) || covers(b, a)
}

/// `maglev_table_size`: a prime (the Maglev paper's permutations need one), from 251 to
/// 16,777,213 (the largest prime below 2^24: four bytes per entry, 64 MiB at most).
pub(super) struct TableSize(pub(super) usize);

impl<'de> Deserialize<'de> for TableSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        held_to(d, |&size: &u64| {
            let prime = size >= 2 && (2..).take_while(|d| d * d <= size).all(|d| size % d != 0);
            if (251..=16_777_213).contains(&size) && prime {
                Ok(())
            } else {
                Err(format!(
                    "maglev_table_size {size}: expected a prime from 251 to 16777213, such as 65537 (the default) or 655373"
                ))
            }
        })
        .map(|size| TableSize(usize::try_from(size).unwrap_or(usize::MAX)))
    }
}

/// A service name: not blank, unique in the file.
pub(super) struct ServiceName(pub(super) String);

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        held_to(d, |name: &String| {
            if name.trim().is_empty() {
                return Err("a blank service name: expected a name such as \"web\"".into());
            }
            if name.chars().any(char::is_control) {
                return Err(format!(
                    "service name {name:?} has a control character: names go into log lines and URLs"
                ));
            }
            seen(|s| {
                if s.services.contains(name) {
                    return Err(format!(
                        "duplicate service name {name:?}: service names must be unique"
                    ));
                }
                s.services.push(name.clone());
                s.service = Some(name.clone());
                entry_rules(s, name)
            })
        })
        .map(ServiceName)
    }
}

/// The rules about a whole entry of `services`, checked in the second parse at its name:
/// backends or routes or both; an algorithm with backends; `listen`, or a route to it.
fn entry_rules(s: &Seen, name: &str) -> Result<(), String> {
    let (Some(known), Some(index)) = (&s.known, s.entry) else {
        return Ok(());
    };
    let Some(entry) = known.get(index) else {
        return Ok(());
    };
    if !entry.backends && entry.targets.is_empty() {
        return Err(format!(
            "service {name:?} has neither backends nor routes: give it `backends`, `routes` or both"
        ));
    }
    if entry.backends && !entry.algorithm {
        return Err(format!(
            "service {name:?} has backends but no `algorithm`: add one, such as `algorithm: RoundRobin`"
        ));
    }
    if !entry.listen && !known.iter().any(|e| e.targets.iter().any(|t| t == name)) {
        return Err(format!(
            "service {name:?} has no `listen` and no route leads to it: give it `listen`, or name it in another service's `routes`"
        ));
    }
    Ok(())
}

/// The list of services: at least one.
pub(super) struct Services(pub(super) Vec<RawService>);

impl<'de> Deserialize<'de> for Services {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = Services;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of services")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Services, A::Error> {
                let mut services = Vec::new();
                loop {
                    seen(|s| {
                        s.service = None;
                        s.entry = Some(services.len());
                    });
                    let Some(service) = seq.next_element::<RawService>()? else {
                        break;
                    };
                    seen(|s| s.learnt.push(Entry::of(&service)));
                    services.push(service);
                }
                seen(|s| s.entry = None);
                if services.is_empty() {
                    return Err(serde::de::Error::custom(
                        "no services: `services` must list at least one (name: \"...\", listen: \"IP:port\", algorithm: ..., backends: [...])",
                    ));
                }
                Ok(Services(services))
            }
        }
        d.deserialize_seq(Entries)
    }
}

/// The addresses a service listens on: one address, or a list of them.
pub(super) struct Listen(pub(super) Vec<SocketAddr>);

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OneOrMany;
        impl<'de> serde::de::Visitor<'de> for OneOrMany {
            type Value = Listen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address such as \"127.0.0.1:8080\", or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Listen, E> {
                let addr = parse_addr(text).map_err(E::custom)?;
                claim(addr).map_err(E::custom)?;
                Ok(Listen(vec![addr]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Listen, A::Error> {
                let mut addrs = Vec::new();
                while let Some(ListenAddr(addr)) = seq.next_element()? {
                    addrs.push(addr);
                }
                if addrs.is_empty() {
                    return Err(serde::de::Error::custom(
                        "no listen address: expected at least one, such as \"127.0.0.1:8080\"",
                    ));
                }
                Ok(Listen(addrs))
            }
        }
        d.deserialize_any(OneOrMany)
    }
}

/// One address of a `listen` list, claimed for its service.
struct ListenAddr(SocketAddr);

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Addr(addr) = Addr::deserialize(d)?;
        claim(addr).map_err(serde::de::Error::custom)?;
        Ok(ListenAddr(addr))
    }
}

/// Records that the service being read listens on `addr`, unless another listener of the
/// file already takes its connections, or the service already lists `addr` with port 0: a
/// service knows each of its listeners by the address as written (a reload keeps
/// `127.0.0.1:0` on the port it got), so the same one twice could not be told apart.
fn claim(addr: SocketAddr) -> Result<(), String> {
    seen(|s| {
        if addr.port() == 0
            && s.listen
                .iter()
                .any(|(other, owner)| *other == addr && *owner == s.service)
        {
            let by = match &s.service {
                Some(name) => format!(" by service {name:?}"),
                None => String::new(),
            };
            return Err(format!(
                "{addr} is listed twice{by}: list each address once"
            ));
        }
        if let Some((other, owner)) = s.listen.iter().find(|(other, _)| overlap(*other, addr)) {
            if owner.is_some() && *owner == s.service {
                let as_other = if *other == addr {
                    String::new()
                } else {
                    format!(" (as {other})")
                };
                return Err(format!(
                    "{addr} is listed twice{as_other}: list each address once"
                ));
            }
            let owner = match owner {
                Some(name) => format!("service {name:?}"),
                None => "another listener".to_string(),
            };
            let same = if *other == addr {
                String::new()
            } else {
                format!(" (as {other})")
            };
            return Err(format!(
                "{addr} is already listened on by {owner}{same}: each address belongs to one service"
            ));
        }
        s.listen.push((addr, s.service.clone()));
        Ok(())
    })
}

/// Where a backend is: `IP:port`, or `host:port` with a DNS name resolved at run time.
pub(super) struct Target(pub(super) BackendAddr);

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let trimmed = text.trim();
        if let Ok(addr) = trimmed.parse::<SocketAddr>() {
            return Ok(Target(BackendAddr::Ip(addr)));
        }
        let named = trimmed.rsplit_once(':').and_then(|(host, port)| {
            // Digits alone: `u16::from_str` would also take a sign (`+80`).
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Port 0 picks a free port where ballast-backend serves an IP backend; at a
            // host name's addresses it can only be a mistake.
            let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
            is_host_name(host).then(|| BackendAddr::Name {
                host: host.trim_end_matches('.').to_ascii_lowercase(),
                port,
            })
        });
        named.map(Target).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid address {text:?}: expected IP:port or host:port such as \"127.0.0.1:8081\", \"[::1]:8081\" or \"web.internal:8080\""
            ))
        })
    }
}

/// A DNS host name (RFC 1123 section 2.1): dot-separated labels of letters, digits and
/// hyphens (underscores allowed, as service records use them), 1 to 63 characters each,
/// not starting or ending with a hyphen, 253 characters in all, not all digits (that would
/// be a mistyped IP address).
fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(label_ok)
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// A service's `routes`: at least one.
pub(super) struct Routes(pub(super) Vec<RawRoute>);

impl<'de> Deserialize<'de> for Routes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = Routes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of routes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Routes, A::Error> {
                let mut routes = Vec::new();
                seen(|s| s.server_names = Some(Vec::new()));
                while let Some(route) = seq.next_element::<RawRoute>()? {
                    routes.push(route);
                }
                seen(|s| s.server_names = None);
                if routes.is_empty() {
                    return Err(serde::de::Error::custom(
                        "no routes: `routes` lists at least one (server_names: [\"...\"], service: \"...\"), or is left out",
                    ));
                }
                Ok(Routes(routes))
            }
        }
        d.deserialize_seq(Entries)
    }
}

/// One route: the server names it takes and the service they lead to.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) server_names: ServerNames,
    pub(super) service: RouteTarget,
}

/// A route's server names: at least one.
pub(super) struct ServerNames(pub(super) Vec<String>);

impl<'de> Deserialize<'de> for ServerNames {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names: Vec<ServerName> = held_to(d, |names: &Vec<ServerName>| {
            if names.is_empty() {
                Err(
                    "no server names: a route lists at least one, such as [\"api.example.com\"]"
                        .into(),
                )
            } else {
                Ok(())
            }
        })?;
        Ok(ServerNames(names.into_iter().map(|n| n.0).collect()))
    }
}

/// A server name a route takes: a DNS name (`"api.example.com"`) or a wildcard
/// (`"*.example.com"`, every name that ends in `.example.com`), lower-cased, without a
/// trailing dot, unique within its service's routes.
pub(super) struct ServerName(pub(super) String);

impl<'de> Deserialize<'de> for ServerName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let trimmed = text.trim();
        let host = trimmed.strip_prefix("*.").unwrap_or(trimmed);
        if !is_host_name(host) {
            return Err(serde::de::Error::custom(format!(
                "invalid server name {text:?}: expected a DNS name such as \"api.example.com\", or \"*.example.com\" for every name under example.com"
            )));
        }
        let name = trimmed.trim_end_matches('.').to_ascii_lowercase();
        seen(|s| match &mut s.server_names {
            Some(names) if names.contains(&name) => Err(format!(
                "duplicate server name {name:?}: a name routes to one service"
            )),
            Some(names) => {
                names.push(name.clone());
                Ok(())
            }
            None => Ok(()),
        })
        .map_err(serde::de::Error::custom)?;
        Ok(ServerName(name))
    }
}

/// The service a route leads to: another service of the file, without routes of its own.
/// Checked in the second parse, which knows every entry.
pub(super) struct RouteTarget(pub(super) String);

impl<'de> Deserialize<'de> for RouteTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        held_to(d, |target: &String| {
            seen(|s| {
                let (Some(known), Some(index)) = (&s.known, s.entry) else {
                    return Ok(());
                };
                if known.get(index).is_some_and(|me| me.name == *target) {
                    return Err(format!(
                        "service {target:?} routes to itself: a route leads to another service"
                    ));
                }
                match known.iter().find(|e| e.name == *target) {
                    None => Err(format!(
                        "route to unknown service {target:?}: expected the name of a service of this file"
                    )),
                    Some(e) if !e.targets.is_empty() => Err(format!(
                        "route to service {target:?}, which has routes of its own: a route leads to a service without routes"
                    )),
                    Some(_) => Ok(()),
                }
            })
        })
        .map(RouteTarget)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    pub(super) splice: Option<Splice>,
    pub(super) max_pipes: Option<usize>,
    pub(super) pipe_size: Option<Checked<PipeSize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_connections: Option<Checked<ClientLimit>>,
    pub(super) queue: Option<usize>,
    pub(super) queue_timeout: Option<HumanDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) check: Option<RawCheck>,
    pub(super) interval: Option<Positive>,
    pub(super) timeout: Option<Positive>,
    pub(super) rise: Option<Checked<CheckCount>>,
    pub(super) fall: Option<Checked<CheckCount>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLoadPoll {
    pub(super) interval: Option<Positive>,
    pub(super) timeout: Option<Positive>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) name: Name,
    pub(super) addr: Target,
    #[serde(default = "default_weight")]
    pub(super) weight: Checked<Weight>,
    pub(super) check: Option<RawCheck>,
    pub(super) load_addr: Option<Addr>,
    pub(super) load_path: Option<RequestPath>,
    pub(super) max_connections: Option<Checked<BackendMax>>,
    pub(super) send_proxy: Option<crate::proxy_protocol::Version>,
    #[serde(default)]
    pub(super) backup: bool,
}

pub(super) fn default_weight() -> Checked<Weight> {
    Checked::new(1)
}

/// The list of backends, checked as a whole while it is parsed, so that an unusable list is
/// reported at its end.
pub(super) struct Backends(pub(super) Vec<RawBackend>);

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
                seen(|s| s.backends = Some(Vec::new()));
                while let Some(backend) = seq.next_element::<RawBackend>()? {
                    backends.push(backend);
                }
                seen(|s| s.backends = None);
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
pub(super) trait Rule {
    const MIN: u64;
    const MAX: u64;
    fn complaint(value: u64) -> String;
}

/// An integer that obeys `R`.
pub(super) struct Checked<R>(pub(super) u64, std::marker::PhantomData<R>);

impl<R> Checked<R> {
    fn new(value: u64) -> Checked<R> {
        Checked(value, std::marker::PhantomData)
    }

    pub(super) fn get(&self) -> u64 {
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
        pub(super) struct $name;
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
pub(super) struct Positive(pub(super) Duration);

/// Deserializes a `T` and holds it to `rule`, whose `Err` is the complaint, reported at the
/// value's line and column.
pub(super) fn held_to<'de, D, T>(
    d: D,
    rule: impl FnOnce(&T) -> Result<(), String>,
) -> Result<T, D::Error>
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
pub(super) struct Name(pub(super) String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        held_to(d, |name: &String| {
            if name.trim().is_empty() {
                return Err("a blank backend name: expected a name such as \"vm4\"".into());
            }
            if name.chars().any(char::is_control) {
                return Err(format!(
                    "backend name {name:?} has a control character: names go into log lines and URLs"
                ));
            }
            if name.contains('@') {
                return Err(format!(
                    "backend name {name:?} has an `@`: it is kept for the addresses of a host name (`name@address`)"
                ));
            }
            seen(|s| match &mut s.backends {
                Some(names) if names.contains(name) => Err(format!(
                    "duplicate backend name {name:?}: names must be unique within a service"
                )),
                Some(names) => {
                    names.push(name.clone());
                    Ok(())
                }
                None => Ok(()),
            })
        })
        .map(Name)
    }
}

/// A request path we can put on a request line verbatim.
pub(super) struct RequestPath(pub(super) String);

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
pub(super) enum RawCheck {
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
pub(super) struct Token(pub(super) String);

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
pub(super) struct RawTimeouts {
    pub(super) connect: Option<Positive>,
    pub(super) idle: Option<Positive>,
    pub(super) half_close: Option<Positive>,
    pub(super) grace: Option<HumanDuration>,
    pub(super) client_hello: Option<Positive>,
}

/// A socket address, with an error message that shows the expected form.
pub(super) struct Addr(pub(super) SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_addr(&text)
            .map(Addr)
            .map_err(serde::de::Error::custom)
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "invalid address {text:?}: expected IP:port such as \"127.0.0.1:8081\" or \"[::1]:8081\""
        )
    })
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
