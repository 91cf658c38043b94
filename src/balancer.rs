//! The live state every connection and the admin listener read: per service, the snapshot
//! of backends and configuration swapped whole on reload (or when a backend's host name
//! resolves differently), the candidate view a selector picks from, and the totals; for the
//! whole process, the list of services and the process-wide settings. The data path takes
//! no lock to read it.

use crate::backend::{Backend, ConnectionGuard};
use crate::config::{BackendAddr, Config, ServiceConfig};
use crate::dns::Resolved;
use crate::relay;
use crate::routes::Routes;
use crate::selection::{Candidate, Candidates, Selector};
use arc_swap::{ArcSwap, ArcSwapOption};
use log::info;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio::sync::{Notify, Semaphore};
use tokio_util::task::TaskTracker;

/// Everything a connection of one service needs to pick and reach a backend, immutable
/// once built. A new configuration, a runtime weight change or a new DNS answer builds a
/// new snapshot and swaps it in whole.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub config: ServiceConfig,
    /// One per configured address, and one per address a configured host name resolved to
    /// (none while it resolves to nothing).
    pub backends: Vec<Arc<Backend>>,
    pub selector: Selector,
    /// The relay's limits, built once here rather than for every connection.
    pub relay_limits: relay::Limits,
}

impl Snapshot {
    /// Builds the snapshot for `config`, with host names expanded by `resolved`. Backends of
    /// `previous` with the same name and address keep their counters, health and load.
    /// `weights` are runtime changes, by backend name (a host name's configured name
    /// covers every address it resolved to).
    fn new(
        config: ServiceConfig,
        previous: Option<&Snapshot>,
        released: &Arc<Notify>,
        weights: &HashMap<String, u32>,
        resolved: &Resolved,
    ) -> Snapshot {
        let mut backends = Vec::new();
        let service: Arc<str> = Arc::from(config.name.as_str());
        for configured in &config.backends {
            let addrs: Vec<(String, SocketAddr)> = match &configured.addr {
                BackendAddr::Ip(addr) => vec![(configured.name.clone(), *addr)],
                BackendAddr::Name { host, port } => resolved
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
                if let Some(&weight) = weights.get(&name).or(weights.get(&configured.name)) {
                    b.weight = weight;
                }
                let same = previous.and_then(|p| {
                    p.backends
                        .iter()
                        .find(|old| old.name == name && old.addr == addr)
                });
                backends.push(Arc::new(match same {
                    Some(old) => old.reconfigured(&b, &config.health),
                    None => Backend::new(
                        Arc::clone(&service),
                        name,
                        addr,
                        &b,
                        &config.health,
                        Arc::clone(released),
                    ),
                }));
            }
        }
        // Names as well as weights: Maglev builds its table from them.
        let members: Vec<(&str, u32)> = backends
            .iter()
            .map(|b| (b.name.as_str(), b.weight))
            .collect();
        let selector = Selector::new(config.algorithm, &members);
        let relay_limits = relay::Limits {
            idle: config.timeouts.idle,
            half_close: config.timeouts.half_close,
            splice: config.relay.splice,
            pipe_size: config.relay.pipe_size,
        };
        Snapshot {
            config,
            backends,
            selector,
            relay_limits,
        }
    }

    /// Picks a backend not in `tried` for a connection from `client` (the address Maglev
    /// hashes) and counts the connection as active on it.
    pub(crate) fn pick(&self, tried: &[usize], client: IpAddr) -> Option<(usize, ConnectionGuard)> {
        let view = LiveView {
            backends: &self.backends,
            tried,
        };
        let index = self.selector.select(&view, client)?;
        Some((index, self.backends[index].connect_guard()))
    }

    /// Whether a backend not yet tried could take the connection once it has room.
    pub(crate) fn any_full(&self, tried: &[usize]) -> bool {
        self.backends
            .iter()
            .enumerate()
            .any(|(i, b)| !tried.contains(&i) && b.is_full())
    }
}

/// The live backends as a selector sees them, minus those this connection already tried.
struct LiveView<'a> {
    backends: &'a [Arc<Backend>],
    tried: &'a [usize],
}

impl Candidates for LiveView<'_> {
    fn len(&self) -> usize {
        self.backends.len()
    }
    fn get(&self, index: usize) -> Candidate {
        let mut candidate = self.backends[index].candidate();
        if self.tried.contains(&index) {
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
    /// Woken whenever a connection to a backend with a connection limit ends.
    pub(crate) released: Arc<Notify>,
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
        let released = Arc::new(Notify::new());
        let snapshot = Snapshot::new(config.clone(), None, &released, &HashMap::new(), &resolved);
        Service {
            name: config.name.clone(),
            snapshot: ArcSwap::from_pointee(snapshot),
            slots: Arc::new(Semaphore::new(config.limits.max_connections)),
            file_config: Mutex::new(config),
            weights: Mutex::new(HashMap::new()),
            resolved: Mutex::new(resolved),
            released,
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
        match weight {
            Some(w) => weights.insert(name.to_string(), w),
            None => weights.remove(name),
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
        let next = Arc::new(Snapshot::new(
            config,
            Some(&current),
            &self.released,
            weights,
            resolved,
        ));
        self.snapshot.store(Arc::clone(&next));
        next
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
    pub started: Instant,
    /// Every service's totals together, those of removed services included.
    pub totals: Arc<Totals>,
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
            started: Instant::now(),
            totals,
        }
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
        (before, after)
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
