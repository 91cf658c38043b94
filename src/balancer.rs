//! The live state every connection and the admin listener read: the snapshot of services,
//! backends and configuration swapped whole on reload, the candidate view a selector picks
//! from, and the balancer-wide totals. The data path takes no lock to read it.

use crate::backend::{Backend, ConnectionGuard};
use crate::config::Config;
use crate::relay;
use crate::selection::{Candidate, Candidates, Selector};
use arc_swap::ArcSwap;
use log::info;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio::sync::Notify;

/// Everything a connection needs to pick and reach a backend, immutable once built. A new
/// configuration builds a new snapshot and swaps it in whole.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub config: Config,
    pub backends: Vec<Arc<Backend>>,
    pub selector: Selector,
    /// The relay's limits, built once here rather than for every connection.
    pub relay_limits: relay::Limits,
}

impl Snapshot {
    /// Builds the snapshot for `config`. Backends of `previous` with the same name and
    /// address keep their counters, health and load.
    fn new(
        config: Config,
        previous: Option<&Snapshot>,
        released: &Arc<Notify>,
        weights: &HashMap<String, u32>,
    ) -> Snapshot {
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|b| {
                let mut b = b.clone();
                if let Some(&weight) = weights.get(&b.name) {
                    b.weight = weight;
                }
                let b = &b;
                let same = previous.and_then(|p| {
                    p.backends
                        .iter()
                        .find(|old| old.name == b.name && old.addr == b.addr)
                });
                Arc::new(match same {
                    Some(old) => old.reconfigured(b, &config.health),
                    None => Backend::new(b, &config.health, Arc::clone(released)),
                })
            })
            .collect();
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        let selector = Selector::new(config.algorithm, &weights);
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

    /// Picks a backend not in `tried` and counts the connection as active on it.
    pub(crate) fn pick(&self, tried: &[usize]) -> Option<(usize, ConnectionGuard)> {
        let view = LiveView {
            backends: &self.backends,
            tried,
        };
        let index = self.selector.select(&view)?;
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

/// Shared state of a running balancer.
#[derive(Debug)]
pub(crate) struct Balancer {
    snapshot: ArcSwap<Snapshot>,
    /// The configuration as read from the file, before runtime weight changes.
    file_config: Mutex<Config>,
    /// Runtime weight changes by backend name (0 = drained); cleared by a reload.
    weights: Mutex<HashMap<String, u32>>,
    /// Woken whenever a connection to a backend with a connection limit ends.
    pub(crate) released: Arc<Notify>,
    /// Clients waiting for a backend with room.
    pub(crate) queued: AtomicUsize,
    pub started: Instant,
    pub totals: Totals,
}

/// The name of the one service a configuration describes today (a listener and its
/// backends); the `service` label of the metrics.
pub(crate) const DEFAULT_SERVICE: &str = "default";

/// Balancer-wide counters; with one service, also that service's.
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

/// A runtime change named a backend the configuration does not have.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct UnknownBackend(pub String);

impl Balancer {
    pub(crate) fn new(config: Config) -> Balancer {
        let released = Arc::new(Notify::new());
        let snapshot = Snapshot::new(config.clone(), None, &released, &HashMap::new());
        Balancer {
            snapshot: ArcSwap::from_pointee(snapshot),
            file_config: Mutex::new(config),
            weights: Mutex::new(HashMap::new()),
            released,
            queued: AtomicUsize::new(0),
            started: Instant::now(),
            totals: Totals::default(),
        }
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps in `config` (read from the file) for new connections, dropping runtime weight
    /// changes; returns the new snapshot.
    pub(crate) fn reload(&self, config: Config) -> Arc<Snapshot> {
        let mut weights = self.weights.lock().unwrap_or_else(PoisonError::into_inner);
        weights.clear();
        *self
            .file_config
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = config.clone();
        self.swap(config, &weights)
    }

    /// Sets a backend's weight at runtime (0 drains it), or with `None` returns it to its
    /// configured weight. Effective for new connections at once.
    pub(crate) fn set_weight(&self, name: &str, weight: Option<u32>) -> Result<(), UnknownBackend> {
        let mut weights = self.weights.lock().unwrap_or_else(PoisonError::into_inner);
        let config = self
            .file_config
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if !config.backends.iter().any(|b| b.name == name) {
            return Err(UnknownBackend(name.to_string()));
        }
        match weight {
            Some(w) => weights.insert(name.to_string(), w),
            None => weights.remove(name),
        };
        self.swap(config, &weights);
        info!(
            "backend {name}: weight set to {} at runtime",
            weight.map_or("its configured value".to_string(), |w| w.to_string())
        );
        Ok(())
    }

    fn swap(&self, config: Config, weights: &HashMap<String, u32>) -> Arc<Snapshot> {
        let current = self.snapshot();
        let next = Arc::new(Snapshot::new(
            config,
            Some(&current),
            &self.released,
            weights,
        ));
        self.snapshot.store(Arc::clone(&next));
        next
    }
}
