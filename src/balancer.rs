//! The live state every connection and the admin listener read: per service, the snapshot
//! of backends and configuration swapped whole on reload (or when a backend's host name
//! resolves differently), the candidate view a selector picks from, and the totals; for the
//! whole process, the list of services and the process-wide settings. The data path takes
//! no lock to read it.

use crate::backend::{Backend, ConnectionGuard, RAMP_SCALE, Signals};
use crate::config::{BackendAddr, Config, ServiceConfig};
use crate::dns::Resolved;
use crate::relay;
use crate::routes::Routes;
use crate::selection::{Algorithm, Candidate, Candidates, Selector};
use arc_swap::{ArcSwap, ArcSwapOption};
use log::info;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// Everything a connection of one service needs to pick and reach a backend, immutable
/// once built. A new configuration, a runtime weight change, a new DNS answer or a step of
/// a slow start builds a new snapshot and swaps it in whole.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub config: ServiceConfig,
    /// One per configured address, and one per address a configured host name resolved to
    /// (none while it resolves to nothing).
    pub backends: Vec<Arc<Backend>>,
    /// The backends that take connections first, then the backups: each tier with its own
    /// selector, and a tier is asked only when the one before it has no backend that can
    /// take the connection. Tiers without backends are left out.
    tiers: Vec<Tier>,
    /// Some backend is still ramping up (`slow_start`): the snapshot is rebuilt as it goes.
    pub ramping: bool,
    /// The relay's limits, built once here rather than for every connection.
    pub relay_limits: relay::Limits,
}

/// The backends of one tier (indices into `Snapshot::backends`) and their selector.
#[derive(Debug)]
struct Tier {
    members: Vec<usize>,
    selector: Selector,
}

/// What a snapshot is built from besides the service's configuration.
struct Inputs<'a> {
    previous: Option<&'a Snapshot>,
    /// Backends that left with connections still open: one that comes back takes up its
    /// state again (its open connections still count against it).
    departed: &'a [Arc<Backend>],
    signals: &'a Arc<Signals>,
    /// Runtime weight changes, by backend name (a host name's configured name covers every
    /// address it resolved to).
    weights: &'a HashMap<String, u32>,
    resolved: &'a Resolved,
}

impl Snapshot {
    /// Builds the snapshot for `config`, with host names expanded by `resolved`. Backends of
    /// `previous` with the same name and address keep their counters, health and load; new
    /// ones joining a running service (a previous snapshot exists) start a slow start.
    fn new(config: ServiceConfig, inputs: &Inputs<'_>) -> Snapshot {
        let mut backends = Vec::new();
        // The weight each has in the file: Maglev's table is built from these, so that a
        // runtime drain skips a backend in the table's order, as a down one is.
        let mut file_weights = Vec::new();
        let service: Arc<str> = Arc::from(config.name.as_str());
        for configured in &config.backends {
            let addrs: Vec<(String, SocketAddr)> = match &configured.addr {
                BackendAddr::Ip(addr) => vec![(configured.name.clone(), *addr)],
                BackendAddr::Name { host, port } => inputs
                    .resolved
                    .get(host)
                    .map(|ips| {
                        ips.iter()
                            .map(|&ip| {
                                let addr = SocketAddr::new(ip, *port);
                                (format!("{}@{addr}", configured.name), addr)
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            for (name, addr) in addrs {
                let mut b = configured.clone();
                let weights = inputs.weights;
                if let Some(&weight) = weights.get(&name).or(weights.get(&configured.name)) {
                    b.weight = weight;
                }
                let known = |old: &&Arc<Backend>| old.name == name && old.addr == addr;
                file_weights.push(configured.weight);
                let kept = inputs.previous.and_then(|p| p.backends.iter().find(known));
                backends.push(if let Some(old) = kept {
                    old.reconfigured(&b, &config.health)
                } else if let Some(old) = inputs.departed.iter().find(known) {
                    let renewed = old.reconfigured(&b, &config.health);
                    // Back after it left (its old connections still open): it joins again,
                    // so a slow start ramps it again.
                    renewed.came_up_now();
                    renewed
                } else {
                    Backend::new(
                        Arc::clone(&service),
                        name,
                        addr,
                        &b,
                        &config.health,
                        Arc::clone(inputs.signals),
                        inputs.previous.is_some(),
                    )
                });
            }
        }
        let now = Instant::now();
        let ramps: Vec<f64> = backends
            .iter()
            .map(|b| b.ramp_at(config.slow_start, now))
            .collect();
        let ramping = backends
            .iter()
            .zip(&ramps)
            .any(|(b, &ramp)| ramp < 1.0 && b.weight > 0);
        // At least 1: a ramping backend is in rotation from its first step.
        let ramped = |weight: u32, ramp: f64| {
            if !ramping || weight == 0 {
                weight
            } else {
                ((f64::from(weight * RAMP_SCALE) * ramp).ceil() as u32).max(1)
            }
        };
        let mut table_weights = Vec::with_capacity(backends.len());
        for ((b, ramp), file_weight) in backends.iter_mut().zip(ramps).zip(file_weights) {
            b.ramp = ramp;
            b.pick_weight = ramped(b.weight, ramp);
            table_weights.push(ramped(file_weight, ramp));
        }
        let backends: Vec<Arc<Backend>> = backends.into_iter().map(Arc::new).collect();
        let tiers = [false, true]
            .into_iter()
            .filter_map(|backup| {
                let members: Vec<usize> = (0..backends.len())
                    .filter(|&i| backends[i].config.backup == backup)
                    .collect();
                if members.is_empty() {
                    return None;
                }
                // Names as well as weights: Maglev builds its table from them.
                let weight = |i: usize| match config.algorithm {
                    Algorithm::Maglev => table_weights[i],
                    _ => backends[i].pick_weight,
                };
                let named: Vec<(&str, u32)> = members
                    .iter()
                    .map(|&i| (backends[i].name.as_str(), weight(i)))
                    .collect();
                let selector = match config.algorithm {
                    Algorithm::Maglev => Selector::maglev(&named, config.maglev_table_size),
                    algorithm => Selector::new(algorithm, &named),
                };
                Some(Tier { members, selector })
            })
            .collect();
        let relay_limits = relay::Limits {
            idle: config.timeouts.idle,
            half_close: config.timeouts.half_close,
            splice: config.relay.splice,
            pipe_size: config.relay.pipe_size,
        };
        Snapshot {
            config,
            backends,
            tiers,
            ramping,
            relay_limits,
        }
    }

    /// Picks a backend not in `tried` for a connection from `client` (the address Maglev
    /// hashes) and counts the connection as active on it: from the first tier with a
    /// backend that can take it, so a backup only when no other backend can.
    pub(crate) fn pick(&self, tried: &[usize], client: IpAddr) -> Option<(usize, ConnectionGuard)> {
        for tier in &self.tiers {
            let view = LiveView {
                backends: &self.backends,
                members: &tier.members,
                tried,
            };
            if let Some(i) = tier.selector.select(&view, client) {
                let index = tier.members[i];
                return Some((index, self.backends[index].connect_guard()));
            }
        }
        None
    }

    /// Whether a backend not yet tried could take the connection once it has room.
    pub(crate) fn any_full(&self, tried: &[usize]) -> bool {
        self.backends
            .iter()
            .enumerate()
            .any(|(i, b)| !tried.contains(&i) && b.is_full())
    }
}

/// One tier's live backends as its selector sees them, minus those this connection already
/// tried.
struct LiveView<'a> {
    backends: &'a [Arc<Backend>],
    /// Indices into `backends`, in the order the selector was built with.
    members: &'a [usize],
    tried: &'a [usize],
}

impl Candidates for LiveView<'_> {
    fn len(&self) -> usize {
        self.members.len()
    }
    fn get(&self, index: usize) -> Candidate {
        let backend = self.members[index];
        let mut candidate = self.backends[backend].candidate();
        if self.tried.contains(&backend) {
            candidate.available = false;
        }
        candidate
    }
}

/// Connection counters of a service, or of the whole process.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    /// Client connections accepted.
    pub accepted: AtomicU64,
    /// Clients closed because no backend could take them.
    pub no_backend: AtomicU64,
    /// Clients closed for their PROXY header (`accept_proxy`): missing, malformed,
    /// truncated or slow.
    pub bad_proxy_header: AtomicU64,
}

/// One of a service's [`Totals`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Count {
    Accepted,
    NoBackend,
    BadProxyHeader,
}

impl Totals {
    fn counter(&self, which: Count) -> &AtomicU64 {
        match which {
            Count::Accepted => &self.accepted,
            Count::NoBackend => &self.no_backend,
            Count::BadProxyHeader => &self.bad_proxy_header,
        }
    }

    pub(crate) fn get(&self, which: Count) -> u64 {
        self.counter(which).load(Ordering::Relaxed)
    }
}

/// A runtime change named a backend the service does not have.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct UnknownBackend(pub String);

/// A running service: what lives as long as its name stays in the configuration. Its
/// snapshot changes; its counters, connection slots, open connections and cut-off signal
/// carry over.
#[derive(Debug)]
pub(crate) struct Service {
    pub name: String,
    snapshot: ArcSwap<Snapshot>,
    /// The service as read from the file, before runtime weight changes.
    file_config: Mutex<ServiceConfig>,
    /// Runtime weight changes by backend name (0 = drained); cleared by a reload.
    weights: Mutex<HashMap<String, u32>>,
    /// The addresses host names resolved to when the snapshot was last built.
    resolved: Mutex<Arc<Resolved>>,
    /// Backends no longer in the snapshot (a reload or a DNS answer took them out) whose
    /// connections are still open.
    departed: Mutex<Vec<Arc<Backend>>>,
    /// Wake-ups for queued clients and for slow starts.
    pub(crate) signals: Arc<Signals>,
    /// Clients waiting for a backend with room.
    pub(crate) queued: AtomicUsize,
    pub totals: Totals,
    /// The whole process's totals, counted with this service's.
    process_totals: Arc<Totals>,
    /// One permit per open client connection (`limits.max_connections`).
    pub slots: Arc<Semaphore>,
    /// Every client connection of the service, on every worker.
    pub connections: TaskTracker,
    /// Raised when the grace period is over: remaining connections are closed.
    pub cut_off: Arc<relay::StopSignal>,
    /// Where its clients go by TLS server name, each route's target the running service;
    /// `None` for a service without routes. Set by [`route_all`] whenever the list of
    /// services is built. No cycle of `Arc`s: a target has no routes of its own.
    pub routes: ArcSwapOption<Routes<Arc<Service>>>,
}

impl Service {
    pub(crate) fn new(
        config: ServiceConfig,
        resolved: Arc<Resolved>,
        process_totals: Arc<Totals>,
    ) -> Service {
        let signals = Arc::default();
        let inputs = Inputs {
            previous: None,
            departed: &[],
            signals: &signals,
            weights: &HashMap::new(),
            resolved: &resolved,
        };
        let snapshot = Snapshot::new(config.clone(), &inputs);
        Service {
            name: config.name.clone(),
            snapshot: ArcSwap::from_pointee(snapshot),
            slots: Arc::new(Semaphore::new(config.limits.max_connections)),
            file_config: Mutex::new(config),
            weights: Mutex::new(HashMap::new()),
            resolved: Mutex::new(resolved),
            departed: Mutex::new(Vec::new()),
            signals,
            queued: AtomicUsize::new(0),
            totals: Totals::default(),
            process_totals,
            connections: TaskTracker::new(),
            cut_off: Arc::default(),
            routes: ArcSwapOption::empty(),
        }
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Counts one event in the service's totals and the process's.
    pub(crate) fn count(&self, which: Count) {
        self.totals.counter(which).fetch_add(1, Ordering::Relaxed);
        self.process_totals
            .counter(which)
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The service as read from the file.
    pub(crate) fn file_config(&self) -> ServiceConfig {
        lock(&self.file_config).clone()
    }

    /// Swaps in `config` (read from the file) for new connections, dropping runtime weight
    /// changes; returns the new snapshot.
    pub(crate) fn reload(&self, config: ServiceConfig, resolved: &Arc<Resolved>) -> Arc<Snapshot> {
        let mut weights = lock(&self.weights);
        weights.clear();
        *lock(&self.file_config) = config.clone();
        *lock(&self.resolved) = Arc::clone(resolved);
        self.swap(config, &weights, resolved)
    }

    /// Rebuilds the snapshot with host names resolved as in `resolved`; returns the new
    /// snapshot, or `None` when none of the service's names changed.
    pub(crate) fn resolve(&self, resolved: &Arc<Resolved>) -> Option<Arc<Snapshot>> {
        let weights = lock(&self.weights);
        let config = lock(&self.file_config).clone();
        let mut current = lock(&self.resolved);
        let changed = config.backends.iter().any(|b| match &b.addr {
            BackendAddr::Name { host, .. } => current.get(host) != resolved.get(host),
            BackendAddr::Ip(_) => false,
        });
        *current = Arc::clone(resolved);
        drop(current);
        changed.then(|| self.swap(config, &weights, resolved))
    }

    /// Rebuilds the snapshot as it stands, for the next step of a slow start; returns it.
    pub(crate) fn refresh(&self) -> Arc<Snapshot> {
        let weights = lock(&self.weights);
        let config = lock(&self.file_config).clone();
        let resolved = Arc::clone(&lock(&self.resolved));
        self.swap(config, &weights, &resolved)
    }

    /// Sets a backend's weight at runtime (0 drains it), or with `None` returns it to its
    /// configured weight. `name` is a backend's name as the status shows it, or the
    /// configured name of a host name (every address it resolved to). Effective for new
    /// connections at once.
    ///
    /// # Errors
    /// [`UnknownBackend`] when the service has no backend of that name.
    pub(crate) fn set_weight(&self, name: &str, weight: Option<u32>) -> Result<(), UnknownBackend> {
        let mut weights = lock(&self.weights);
        let config = lock(&self.file_config).clone();
        let known = config.backends.iter().any(|b| b.name == name)
            || self.snapshot().backends.iter().any(|b| b.name == name);
        if !known {
            return Err(UnknownBackend(name.to_string()));
        }
        // A host name's configured name speaks for every address it resolves to: what was
        // set for one of them before gives way.
        let prefix = format!("{name}@");
        weights.retain(|key, _| !key.starts_with(&prefix));
        match weight {
            Some(w) => weights.insert(name.to_string(), w),
            None => {
                weights.remove(name);
                // One address of a host name whose configured name has a runtime weight:
                // its configured weight must be set on it, or the name's would apply.
                let snapshot = self.snapshot();
                let address_of = snapshot
                    .backends
                    .iter()
                    .find(|b| b.name == name && b.config.name != name)
                    .map(|b| b.config.name.clone());
                if let Some(configured) = address_of
                    && weights.contains_key(&configured)
                    && let Some(c) = config.backends.iter().find(|c| c.name == configured)
                {
                    weights.insert(name.to_string(), c.weight);
                }
                None
            }
        };
        let resolved = Arc::clone(&lock(&self.resolved));
        self.swap(config, &weights, &resolved);
        info!(
            "service {}: backend {name}: weight set to {} at runtime",
            self.name,
            weight.map_or("its configured value".to_string(), |w| w.to_string())
        );
        Ok(())
    }

    fn swap(
        &self,
        config: ServiceConfig,
        weights: &HashMap<String, u32>,
        resolved: &Resolved,
    ) -> Arc<Snapshot> {
        let current = self.snapshot();
        let mut departed = lock(&self.departed);
        let inputs = Inputs {
            previous: Some(&current),
            departed: &departed,
            signals: &self.signals,
            weights,
            resolved,
        };
        let next = Arc::new(Snapshot::new(config, &inputs));
        self.snapshot.store(Arc::clone(&next));
        let stays = |b: &Arc<Backend>| next.backends.iter().any(|n| n.same_as(b));
        departed.extend(current.backends.iter().filter(|b| !stays(b)).cloned());
        departed.retain(|b| !stays(b) && b.stats().active.load(Ordering::Relaxed) > 0);
        next
    }

    /// Connections open now to the service's backends, those that left it included.
    pub(crate) fn active(&self) -> u64 {
        let count = |b: &Arc<Backend>| b.stats().active.load(Ordering::Relaxed);
        let departed: u64 = lock(&self.departed).iter().map(count).sum();
        self.snapshot().backends.iter().map(count).sum::<u64>() + departed
    }
}

/// The services and process-wide settings in force, swapped whole on reload.
#[derive(Debug)]
pub(crate) struct Services {
    /// The configuration as read from the file (each service's own state is in `list`).
    pub config: Config,
    /// The running services, in configuration order.
    pub list: Vec<Arc<Service>>,
}

impl Services {
    /// The running service named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Service>> {
        self.list.iter().find(|s| s.name == name)
    }
}

/// Shared state of a running balancer.
#[derive(Debug)]
pub(crate) struct Balancer {
    services: ArcSwap<Services>,
    /// Services a reload removed, while their connections finish.
    removed: Mutex<Vec<Arc<Service>>>,
    pub started: Instant,
    /// Every service's totals together, those of removed services included.
    pub totals: Arc<Totals>,
    /// Shutdown has begun: listeners are closed and open connections are finishing.
    draining: AtomicBool,
}

impl Balancer {
    /// A balancer serving `config`, with host names expanded by `resolved`.
    pub(crate) fn new(config: Config, resolved: &Arc<Resolved>) -> Balancer {
        let totals = Arc::new(Totals::default());
        let list = config
            .services
            .iter()
            .map(|s| {
                Arc::new(Service::new(
                    s.clone(),
                    Arc::clone(resolved),
                    Arc::clone(&totals),
                ))
            })
            .collect();
        let services = Services { config, list };
        route_all(&services);
        Balancer {
            services: ArcSwap::from_pointee(services),
            removed: Mutex::new(Vec::new()),
            started: Instant::now(),
            totals,
            draining: AtomicBool::new(false),
        }
    }

    /// Marks the start of the shutdown: from now on the balancer is not ready
    /// ([`Balancer::not_ready`]) until it exits.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Why new clients should not be sent here now, for `/readyz`: `draining` once the
    /// shutdown has begun, else for each service with backends of its own none of which a
    /// health check has found up (whatever its weight): `service NAME: no backend up`, or
    /// `service NAME: no health check has passed yet` while its backends are up only
    /// because every backend starts up. Empty when ready. Every listening address is bound and served by the time
    /// anything can ask (a reload binds new ones before it swaps), so they need no check.
    pub(crate) fn not_ready(&self) -> Vec<String> {
        if self.draining.load(Ordering::Relaxed) {
            return vec!["draining".to_string()];
        }
        self.services()
            .list
            .iter()
            .filter_map(|service| {
                let snapshot = service.snapshot();
                // A service reached through its routes alone has no backends to wait for.
                if snapshot.config.backends.is_empty() {
                    return None;
                }
                let up = || snapshot.backends.iter().filter(|b| b.is_up());
                if up().any(|b| b.last_check().is_some_and(|c| c.ok)) {
                    None
                } else if up().next().is_some() {
                    Some(format!(
                        "service {}: no health check has passed yet",
                        service.name
                    ))
                } else {
                    Some(format!("service {}: no backend up", service.name))
                }
            })
            .collect()
    }

    pub(crate) fn services(&self) -> Arc<Services> {
        self.services.load_full()
    }

    /// Puts `config` in force: services it keeps are reloaded in place (their open
    /// connections untouched), new ones created, the others left out of the list. Returns
    /// the services as before and as now.
    pub(crate) fn reload(
        &self,
        config: Config,
        resolved: &Arc<Resolved>,
    ) -> (Arc<Services>, Arc<Services>) {
        let before = self.services();
        let list = config
            .services
            .iter()
            .map(|s| match before.get(&s.name) {
                Some(kept) => {
                    if kept.file_config() != *s || !kept.weights_are_default() {
                        kept.reload(s.clone(), resolved);
                    } else {
                        kept.resolve(resolved);
                    }
                    Arc::clone(kept)
                }
                None => Arc::new(Service::new(
                    s.clone(),
                    Arc::clone(resolved),
                    Arc::clone(&self.totals),
                )),
            })
            .collect();
        let after = Services { config, list };
        route_all(&after);
        let after = Arc::new(after);
        self.services.store(Arc::clone(&after));
        let mut removed = lock(&self.removed);
        removed.retain(|s| {
            !s.connections.is_empty() && after.get(&s.name).is_none_or(|a| !Arc::ptr_eq(a, s))
        });
        removed.extend(
            before
                .list
                .iter()
                .filter(|s| after.get(&s.name).is_none())
                .cloned(),
        );
        (before, after)
    }

    /// Connections open now to backends of every service, those of removed services still
    /// finishing included.
    pub(crate) fn active(&self) -> u64 {
        let current: u64 = self.services().list.iter().map(|s| s.active()).sum();
        let removed: u64 = lock(&self.removed).iter().map(|s| s.active()).sum();
        current + removed
    }
}

impl Service {
    fn weights_are_default(&self) -> bool {
        lock(&self.weights).is_empty()
    }
}

/// Builds every service's route table anew, each target resolved to its running service
/// (a target kept by a reload is the same service, one added is the new one), so the data
/// path finds it without a lock.
fn route_all(services: &Services) {
    for service in &services.list {
        let routes = services
            .config
            .service(&service.name)
            .filter(|c| !c.routes.is_empty())
            .map(|c| Arc::new(Routes::new(&c.routes, |to| services.get(to).cloned())));
        service.routes.store(routes);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    fn service(text: &str) -> Service {
        let config = Config::parse(text, Path::new("t.ron")).expect("config");
        Service::new(config.services[0].clone(), Arc::default(), Arc::default())
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn picks(snapshot: &Snapshot, tried: &[usize], n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let (i, _guard) = snapshot.pick(tried, CLIENT).expect("a pick");
                snapshot.backends[i].name.clone()
            })
            .collect()
    }

    #[test]
    fn backups_take_connections_only_while_no_other_backend_can() {
        let s = service(
            r#"(listen: "127.0.0.1:0", algorithm: RoundRobin, backends: [
                (name: "a", addr: "127.0.0.1:1"), (name: "spare", addr: "127.0.0.1:2", backup: true),
                (name: "b", addr: "127.0.0.1:3")])"#,
        );
        let snapshot = s.snapshot();
        assert_eq!(picks(&snapshot, &[], 4), ["a", "b", "a", "b"]);
        // Both others tried (refused): the backup.
        assert_eq!(picks(&snapshot, &[0, 2], 2), ["spare", "spare"]);
        // One other still can: never the backup.
        assert_eq!(picks(&snapshot, &[0], 2), ["b", "b"]);
        // Every other one down: the backup, until one is back.
        for b in [&snapshot.backends[0], &snapshot.backends[2]] {
            for _ in 0..3 {
                b.record_check(false, "test");
            }
        }
        assert_eq!(picks(&snapshot, &[], 2), ["spare", "spare"]);
        for _ in 0..2 {
            snapshot.backends[2].record_check(true, "");
        }
        assert_eq!(picks(&snapshot, &[], 2), ["b", "b"]);
        // And none left at all: no pick.
        assert!(snapshot.pick(&[0, 1, 2], CLIENT).is_none());
    }

    #[test]
    fn a_backend_joining_a_running_service_ramps_up_from_a_sixteenth() {
        let text = r#"(listen: "127.0.0.1:0", algorithm: WeightedRoundRobin, slow_start: "10s",
            backends: [(name: "old", addr: "127.0.0.1:1", weight: 2)])"#;
        let s = service(text);
        // There from the start: no ramp, plain weights.
        let first = s.snapshot();
        assert!(!first.ramping);
        assert_eq!(
            (first.backends[0].pick_weight, first.backends[0].ramp),
            (2, 1.0)
        );
        let grown = Config::parse(
            &text.replace(
                "weight: 2)]",
                "weight: 2), (name: \"new\", addr: \"127.0.0.1:2\", weight: 4)]",
            ),
            Path::new("t.ron"),
        )
        .expect("config");
        let next = s.reload(grown.services[0].clone(), &Arc::default());
        assert!(next.ramping);
        let [old, new] = next.backends.as_slice() else {
            panic!("two backends")
        };
        // Every weight scaled by 16; the newcomer's by a sixteenth of its ramp too.
        assert_eq!(old.pick_weight, 32);
        assert_eq!(new.pick_weight, 4);
        assert_eq!(new.ramp, 1.0 / 16.0);
        assert_eq!(new.effective_weight(), 0.25);
        // Half way through, half its weight; past the end, all of it.
        let slow_start = Some(Duration::from_secs(10));
        let later = |secs| Instant::now() + Duration::from_secs(secs);
        assert!((new.ramp_at(slow_start, later(5)) - 0.5).abs() < 0.01);
        assert_eq!(new.ramp_at(slow_start, later(11)), 1.0);
        assert_eq!(old.ramp_at(slow_start, later(0)), 1.0);
    }

    #[test]
    fn an_address_of_a_drained_host_name_can_be_enabled_alone() {
        let config = Config::parse(
            r#"(listen: "127.0.0.1:0", algorithm: RoundRobin, backends: [
                (name: "pods", addr: "pods.test:80", weight: 3), (name: "b", addr: "127.0.0.1:2")])"#,
            Path::new("t.ron"),
        )
        .expect("config");
        let mut resolved = Resolved::new();
        resolved.insert(
            "pods.test".into(),
            vec![
                "10.0.0.1".parse().expect("ip"),
                "10.0.0.2".parse().expect("ip"),
            ],
        );
        let s = Service::new(
            config.services[0].clone(),
            Arc::new(resolved),
            Arc::default(),
        );
        let weights = |s: &Service| -> Vec<(String, u32)> {
            s.snapshot()
                .backends
                .iter()
                .map(|b| (b.name.clone(), b.weight))
                .collect()
        };
        s.set_weight("pods", Some(0)).expect("known");
        s.set_weight("pods@10.0.0.2:80", None).expect("known");
        assert_eq!(
            weights(&s),
            [
                ("pods@10.0.0.1:80".into(), 0),
                ("pods@10.0.0.2:80".into(), 3),
                ("b".into(), 1)
            ]
        );
        // The name again: every address follows it.
        s.set_weight("pods", None).expect("known");
        assert_eq!(
            weights(&s),
            [
                ("pods@10.0.0.1:80".into(), 3),
                ("pods@10.0.0.2:80".into(), 3),
                ("b".into(), 1)
            ]
        );
        s.set_weight("pods@10.0.0.1:80", Some(7)).expect("known");
        s.set_weight("pods", Some(2)).expect("known");
        assert_eq!(
            weights(&s),
            [
                ("pods@10.0.0.1:80".into(), 2),
                ("pods@10.0.0.2:80".into(), 2),
                ("b".into(), 1)
            ]
        );
    }

    #[test]
    fn ready_while_every_service_with_backends_has_one_up_and_until_draining() {
        let config = Config::parse(
            r#"(services: [
                (name: "web", listen: "127.0.0.1:0", algorithm: RoundRobin,
                 routes: [(server_names: ["db.example.com"], service: "db")],
                 backends: [(name: "w1", addr: "127.0.0.1:1"), (name: "w2", addr: "127.0.0.1:2")]),
                (name: "db", algorithm: RoundRobin, health: (fall: 1),
                 backends: [(name: "d1", addr: "127.0.0.1:3")]),
                (name: "edge", listen: "127.0.0.1:0",
                 routes: [(server_names: ["x.example.com"], service: "db")]),
            ])"#,
            Path::new("t.ron"),
        )
        .expect("config");
        let balancer = Balancer::new(config, &Arc::default());
        // Every backend starts up, but none has passed a check yet.
        assert_eq!(
            balancer.not_ready(),
            [
                "service web: no health check has passed yet",
                "service db: no health check has passed yet"
            ]
        );
        let services = balancer.services();
        for name in ["web", "db"] {
            for b in &services.get(name).expect("service").snapshot().backends {
                b.record_check(true, "");
            }
        }
        assert!(balancer.not_ready().is_empty());
        let down = |name: &str, backend: usize| {
            let snapshot = services.get(name).expect("service").snapshot();
            for _ in 0..3 {
                snapshot.backends[backend].record_check(false, "test");
            }
        };
        down("web", 0);
        assert!(balancer.not_ready().is_empty(), "w2 is still up");
        down("db", 0);
        assert_eq!(balancer.not_ready(), ["service db: no backend up"]);
        down("web", 1);
        assert_eq!(
            balancer.not_ready(),
            ["service web: no backend up", "service db: no backend up"]
        );
        balancer.start_draining();
        assert_eq!(balancer.not_ready(), ["draining"]);
    }

    #[test]
    fn maglev_skips_a_drained_backend_as_it_skips_a_down_one() {
        let text = r#"(listen: "127.0.0.1:0", algorithm: Maglev, health: (fall: 1), backends: [
            (name: "a", addr: "127.0.0.1:1"), (name: "b", addr: "127.0.0.1:2", weight: 2),
            (name: "c", addr: "127.0.0.1:3")])"#;
        let clients: Vec<IpAddr> = (0..2000u32)
            .map(|i| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        let picks = |s: &Service| -> Vec<String> {
            let snapshot = s.snapshot();
            clients
                .iter()
                .map(|&c| {
                    let (i, _guard) = snapshot.pick(&[], c).expect("a pick");
                    snapshot.backends[i].name.clone()
                })
                .collect()
        };
        let down = service(text);
        let before = picks(&down);
        down.snapshot().backends[1].record_check(false, "test");
        let drained = service(text);
        drained.set_weight("b", Some(0)).expect("known");
        let (when_down, when_drained) = (picks(&down), picks(&drained));
        assert!(!when_down.contains(&"b".to_string()));
        assert_eq!(when_down, when_drained);
        // Only b's clients moved.
        let moved = before
            .iter()
            .zip(&when_down)
            .filter(|(was, now)| was != now)
            .count();
        assert_eq!(moved, before.iter().filter(|n| *n == "b").count());
    }

    #[test]
    fn a_backend_that_left_with_connections_open_ramps_again_when_it_returns() {
        let text = r#"(listen: "127.0.0.1:0", algorithm: LeastConnections, slow_start: "1m",
            backends: [(name: "a", addr: "127.0.0.1:1"), (name: "b", addr: "127.0.0.1:2")])"#;
        let s = service(text);
        let held = s.snapshot().backends[1].connect_guard();
        let without = Config::parse(
            &text.replace(r#", (name: "b", addr: "127.0.0.1:2")"#, ""),
            Path::new("t.ron"),
        )
        .expect("config");
        s.reload(without.services[0].clone(), &Arc::default());
        let with = Config::parse(text, Path::new("t.ron")).expect("config");
        let back = s.reload(with.services[0].clone(), &Arc::default());
        let b = &back.backends[1];
        // Its open connection still counts against it, and it ramps from the start.
        assert_eq!(b.stats().active.load(Ordering::Relaxed), 1);
        assert_eq!(b.ramp, 1.0 / 16.0);
        drop(held);
        // Down: no weight in effect, whatever its ramp.
        b.record_check(false, "test");
        b.record_check(false, "test");
        b.record_check(false, "test");
        assert_eq!(b.effective_weight(), 0.0);
    }

    #[test]
    fn a_backend_back_from_down_ramps_up_again() {
        let s = service(
            r#"(listen: "127.0.0.1:0", algorithm: LeastConnections, slow_start: "1m",
                health: (rise: 1, fall: 1), backends: [
                (name: "a", addr: "127.0.0.1:1", weight: 3), (name: "b", addr: "127.0.0.1:2")])"#,
        );
        let b = &s.snapshot().backends[1];
        b.record_check(false, "test");
        b.record_check(true, "");
        let next = s.refresh();
        assert!(next.ramping);
        assert_eq!(
            next.backends
                .iter()
                .map(|b| (b.pick_weight, b.candidate().weight))
                .collect::<Vec<_>>(),
            [(48, 48), (1, 1)]
        );
    }
}
