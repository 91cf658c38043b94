//! The live state of one backend: its address and the counters the data path updates. A
//! [`ConnectionGuard`] owns one unit of `active`, so the count comes back down however a
//! connection ends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use log::{info, warn};

use crate::config::{BackendConfig, HealthConfig};
use crate::health::Health;
use crate::selection::Candidate;

#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub config: BackendConfig,
    pub stats: Stats,
    /// Mirrors `health.is_up()` so the pick path reads one atomic instead of a lock.
    up: AtomicBool,
    /// Written by checks and by the relay's failed connects, never on the pick path.
    health: Mutex<Health>,
    /// The last fresh load reading as f32 bits; NaN when unknown or stale.
    load_bits: AtomicU32,
    /// Connections sent here since the last load reading.
    recent: AtomicU64,
}

/// Counters shared by every connection to one backend.
#[derive(Debug, Default)]
pub struct Stats {
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub connect_failures: AtomicU64,
    pub bytes_to_backend: AtomicU64,
    pub bytes_to_client: AtomicU64,
}

impl Backend {
    pub fn new(config: &BackendConfig, health: &HealthConfig) -> Backend {
        Backend {
            name: config.name.clone(),
            addr: config.addr,
            weight: config.weight,
            config: config.clone(),
            stats: Stats::default(),
            up: AtomicBool::new(true),
            health: Mutex::new(Health::new(health.rise, health.fall)),
            load_bits: AtomicU32::new(f32::NAN.to_bits()),
            recent: AtomicU64::new(0),
        }
    }

    /// What a selector may see of this backend right now.
    pub fn candidate(&self) -> Candidate {
        let mut candidate = Candidate::new(self.weight, self.stats.active.load(Ordering::Relaxed))
            .with_load(self.load(), self.recent.load(Ordering::Relaxed));
        candidate.available &= self.is_up();
        candidate
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Feeds one check result (active probe, load poll or relay connect) to the health state
    /// machine; logs and publishes a flip. `reason` explains a failure.
    pub fn record_check(&self, ok: bool, reason: &str) {
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        if !health.observe(ok) {
            return;
        }
        let up = health.is_up();
        self.up.store(up, Ordering::Relaxed);
        if up {
            info!("backend {} ({}) is up", self.name, self.addr);
        } else {
            warn!("backend {} ({}) is down: {reason}", self.name, self.addr);
        }
    }

    /// The last fresh load reading, in percent.
    pub fn load(&self) -> Option<f32> {
        let load = f32::from_bits(self.load_bits.load(Ordering::Relaxed));
        (!load.is_nan()).then_some(load)
    }

    /// Publishes a new reading (or forgets a stale one) and restarts the count of connections
    /// sent since the last reading.
    pub fn set_load(&self, load: Option<f32>) {
        self.load_bits
            .store(load.unwrap_or(f32::NAN).to_bits(), Ordering::Relaxed);
        if load.is_some() {
            self.recent.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a new connection as active until the guard is dropped.
    pub fn connect_guard(self: &Arc<Self>) -> ConnectionGuard {
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        self.recent.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            backend: Arc::clone(self),
        }
    }
}

/// One active connection to `backend`; dropping it decrements the active count.
#[derive(Debug)]
pub struct ConnectionGuard {
    backend: Arc<Backend>,
}

impl ConnectionGuard {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.backend.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Backend {
        let addr = "127.0.0.1:1".parse().expect("addr");
        let config = BackendConfig {
            name: "a".into(),
            addr,
            weight: 1,
            check: crate::config::Check::Tcp,
            load_addr: addr,
            load_path: "/load".into(),
        };
        let health = HealthConfig {
            rise: 2,
            fall: 2,
            ..HealthConfig::default()
        };
        Backend::new(&config, &health)
    }

    #[test]
    fn health_flips_hide_the_backend_from_selection() {
        let b = backend();
        assert!(b.candidate().available);
        b.record_check(false, "test");
        assert!(b.candidate().available);
        b.record_check(false, "test");
        assert!(!b.is_up());
        assert!(!b.candidate().available);
        b.record_check(true, "");
        assert!(!b.candidate().available);
        b.record_check(true, "");
        assert!(b.candidate().available);
    }

    #[test]
    fn a_reading_resets_the_recent_count() {
        let b = Arc::new(backend());
        assert_eq!(b.candidate().load, None);
        drop((b.connect_guard(), b.connect_guard()));
        assert_eq!(b.candidate().recent, 2);
        b.set_load(Some(12.5));
        assert_eq!((b.candidate().load, b.candidate().recent), (Some(12.5), 0));
        b.set_load(None);
        assert_eq!(b.candidate().load, None);
    }

    #[test]
    fn guard_counts_active_connections() {
        let b = Arc::new(backend());
        let g1 = b.connect_guard();
        let g2 = b.connect_guard();
        assert_eq!(b.candidate().active, 2);
        drop(g1);
        assert_eq!(b.candidate().active, 1);
        drop(g2);
        assert_eq!(b.candidate().active, 0);
    }
}
