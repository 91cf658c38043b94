//! The live state of one backend: its address and the counters the data path updates. A
//! [`ConnectionGuard`] owns one unit of `active`, so the count comes back down however a
//! connection ends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::Notify;

use log::{info, warn};

use crate::config::{BackendConfig, HealthConfig};
use crate::health::Health;
use crate::histogram::{CONNECT_BOUNDS, CONNECTION_BOUNDS, Histogram};
use crate::selection::Candidate;

#[derive(Debug)]
pub(crate) struct Backend {
    /// Unique within its service: the configured name, or for a host name resolved to
    /// several addresses, `name@address` (one backend per address).
    pub name: String,
    /// The address connections go to (the configured one, or one the name resolved to).
    pub addr: SocketAddr,
    /// The name of its service, for the log.
    pub service: Arc<str>,
    /// The weight a selector sees: `weight`, or while some backend of the service ramps up
    /// (`slow_start`), every weight scaled by [`RAMP_SCALE`] and this one's by its ramp.
    pub pick_weight: u32,
    /// How far its slow start has come, from 1/[`RAMP_SCALE`] to 1 (1: not ramping).
    pub ramp: f64,
    pub weight: u32,
    pub config: BackendConfig,
    /// State that outlives a configuration reload when name and address stay the same.
    live: Arc<Live>,
}

/// Counters shared by every connection to one backend.
#[derive(Debug)]
pub(crate) struct Stats {
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub connect_failures: AtomicU64,
    pub bytes_to_backend: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// Time from starting a connect to the handshake completing, for successful connects.
    pub connect_duration: Histogram,
    /// Time from accept to close, for connections relayed to this backend.
    pub connection_duration: Histogram,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            bytes_to_backend: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            connect_duration: Histogram::new(CONNECT_BOUNDS),
            connection_duration: Histogram::new(CONNECTION_BOUNDS),
        }
    }
}

#[derive(Debug)]
struct Live {
    stats: Stats,
    /// Mirrors `health.is_up()` so the pick path reads one atomic instead of a lock.
    up: AtomicBool,
    /// Written by checks and by the relay's failed connects, never on the pick path.
    health: Mutex<HealthState>,
    /// The last fresh load reading as f32 bits; NaN when unknown or stale.
    load_bits: AtomicU32,
    /// When the last good load reading arrived (for the status page).
    load_at: Mutex<Option<Instant>>,
    /// Connections sent here since the last load reading.
    recent: AtomicU64,
    /// When it last came up (added while its service ran, or back from down), for its
    /// slow start; `None` for one there from the start.
    came_up: Mutex<Option<Instant>>,
    signals: Arc<Signals>,
}

/// How many steps a slow start's ramp has: while some backend of a service ramps, every
/// weight a selector sees is multiplied by this, so even a backend of weight 1 ramps
/// (HAProxy's `BE_WEIGHT_SCALE` does the same).
pub(crate) const RAMP_SCALE: u32 = 16;

/// Wake-ups shared by the backends of one service.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    /// Woken when a connection to a backend with a connection limit ends, for clients
    /// queued because every backend was at its `max_connections`.
    pub released: Notify,
    /// Woken when a backend comes back up, so its slow start begins at once.
    pub came_up: Notify,
}

#[derive(Debug)]
struct HealthState {
    machine: Health,
    last_check: Option<LastCheck>,
}

/// The most recent check result, for people and monitoring.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LastCheck {
    pub at: Instant,
    pub ok: bool,
    /// Why it failed; empty when it passed.
    pub detail: String,
}

impl Backend {
    /// A backend `name` at `addr` with fresh state; `released` is the service-wide wake-up
    /// for queued clients.
    /// `arriving`: it joins a service that is already running, so a slow start ramps it.
    pub(crate) fn new(
        service: Arc<str>,
        name: String,
        addr: SocketAddr,
        config: &BackendConfig,
        health: &HealthConfig,
        signals: Arc<Signals>,
        arriving: bool,
    ) -> Backend {
        let live = Live {
            stats: Stats::default(),
            up: AtomicBool::new(true),
            health: Mutex::new(HealthState {
                machine: Health::new(health.rise, health.fall),
                last_check: None,
            }),
            load_bits: AtomicU32::new(f32::NAN.to_bits()),
            load_at: Mutex::new(None),
            recent: AtomicU64::new(0),
            came_up: Mutex::new(arriving.then(Instant::now)),
            signals,
        };
        Backend::with_live(service, name, addr, config, Arc::new(live))
    }

    /// The same backend under a new configuration: counters, health and load carry over.
    /// New rise/fall thresholds apply from the next flip.
    pub(crate) fn reconfigured(&self, config: &BackendConfig, health: &HealthConfig) -> Backend {
        {
            let mut state = self
                .live
                .health
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut renewed = Health::new(health.rise, health.fall);
            if !state.machine.is_up() {
                renewed.observe_down();
            }
            state.machine = renewed;
        }
        Backend::with_live(
            Arc::clone(&self.service),
            self.name.clone(),
            self.addr,
            config,
            Arc::clone(&self.live),
        )
    }

    fn with_live(
        service: Arc<str>,
        name: String,
        addr: SocketAddr,
        config: &BackendConfig,
        live: Arc<Live>,
    ) -> Backend {
        Backend {
            name,
            addr,
            service,
            pick_weight: config.weight,
            ramp: 1.0,
            weight: config.weight,
            config: config.clone(),
            live,
        }
    }

    /// Whether `other` is this backend (the same live state), perhaps under another
    /// configuration.
    pub(crate) fn same_as(&self, other: &Backend) -> bool {
        Arc::ptr_eq(&self.live, &other.live)
    }

    /// Starts its slow start afresh: it has just joined its service again.
    pub(crate) fn came_up_now(&self) {
        *self
            .live
            .came_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// How far a slow start of `slow_start` has brought it at `now`: 1 without one, for a
    /// backend there from the start, or once `slow_start` has passed since it came up;
    /// before that the time passed as a share of it, but at least 1/[`RAMP_SCALE`].
    pub(crate) fn ramp_at(&self, slow_start: Option<std::time::Duration>, now: Instant) -> f64 {
        let Some(slow_start) = slow_start else {
            return 1.0;
        };
        let came_up = *self
            .live
            .came_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(came_up) = came_up else { return 1.0 };
        let share = now.saturating_duration_since(came_up).as_secs_f64() / slow_start.as_secs_f64();
        // Whole sixteenths: ramped weights stay multiples of the others' divisors, so the
        // weighted round robin schedule keeps its common-divisor reduction (and its size).
        let steps = (share * f64::from(RAMP_SCALE)).floor();
        (steps / f64::from(RAMP_SCALE)).clamp(1.0 / f64::from(RAMP_SCALE), 1.0)
    }

    /// The weight in effect now: `weight` times its ramp (fractional during a slow start),
    /// and 0 while it is down.
    pub(crate) fn effective_weight(&self) -> f64 {
        if self.is_up() {
            f64::from(self.weight) * self.ramp
        } else {
            0.0
        }
    }

    /// Where its load agent listens: the configured `load_addr`, else its own address.
    pub(crate) fn load_addr(&self) -> SocketAddr {
        self.config.load_addr.unwrap_or(self.addr)
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.live.stats
    }

    /// What a selector may see of this backend right now.
    pub(crate) fn candidate(&self) -> Candidate {
        let live = &self.live;
        let active = live.stats.active.load(Ordering::Relaxed);
        let mut candidate = Candidate::new(self.pick_weight, active)
            .with_load(self.load(), live.recent.load(Ordering::Relaxed));
        candidate.available &= self.is_up() && !self.is_full_at(active);
        candidate
    }

    pub(crate) fn is_up(&self) -> bool {
        self.live.up.load(Ordering::Relaxed)
    }

    /// Up and in rotation, but at its `max_connections`.
    pub(crate) fn is_full(&self) -> bool {
        self.weight > 0
            && self.is_up()
            && self.is_full_at(self.live.stats.active.load(Ordering::Relaxed))
    }

    fn is_full_at(&self, active: u64) -> bool {
        self.config.max_connections.is_some_and(|max| active >= max)
    }

    /// Feeds one check result (active probe, load poll or relay connect) to the health state
    /// machine; logs and publishes a flip. `reason` explains a failure.
    pub(crate) fn record_check(&self, ok: bool, reason: &str) {
        let mut health = self
            .live
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        health.last_check = Some(LastCheck {
            at: Instant::now(),
            ok,
            detail: reason.to_string(),
        });
        if !health.machine.observe(ok) {
            return;
        }
        let up = health.machine.is_up();
        self.live.up.store(up, Ordering::Relaxed);
        if up {
            *self
                .live
                .came_up
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            self.live.signals.came_up.notify_one();
            info!(
                "service {}: backend {} ({}) is up",
                self.service, self.name, self.addr
            );
        } else {
            warn!(
                "service {}: backend {} ({}) is down: {reason}",
                self.service, self.name, self.addr
            );
        }
    }

    /// The last fresh load reading, in percent.
    pub(crate) fn load(&self) -> Option<f32> {
        let load = f32::from_bits(self.live.load_bits.load(Ordering::Relaxed));
        (!load.is_nan()).then_some(load)
    }

    /// Publishes a new reading (or forgets a stale one) and restarts the count of connections
    /// sent since the last poll.
    pub(crate) fn set_load(&self, load: Option<f32>) {
        self.live
            .load_bits
            .store(load.unwrap_or(f32::NAN).to_bits(), Ordering::Relaxed);
        self.restart_recent();
        if load.is_some() {
            *self
                .live
                .load_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        }
    }

    /// Restarts the count of connections sent since the last poll. Every poll does this,
    /// failed or not, so a backend that never reports is compared by the connections of one
    /// poll period like the others, instead of by everything it received since start-up.
    pub(crate) fn restart_recent(&self) {
        self.live.recent.store(0, Ordering::Relaxed);
    }

    /// How old the last good load reading is, if there ever was one.
    pub(crate) fn load_age(&self) -> Option<std::time::Duration> {
        let at = *self
            .live
            .load_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        at.map(|t| t.elapsed())
    }

    /// The most recent check result (active probe, load poll or failed relay connect).
    pub(crate) fn last_check(&self) -> Option<LastCheck> {
        let state = self
            .live
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.last_check.clone()
    }

    /// Counts a new connection as active until the guard is dropped.
    pub(crate) fn connect_guard(self: &Arc<Self>) -> ConnectionGuard {
        self.live.stats.active.fetch_add(1, Ordering::Relaxed);
        self.live.recent.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            backend: Arc::clone(self),
        }
    }
}

/// One active connection to `backend`; dropping it decrements the active count and wakes
/// clients queued for a backend with room.
#[derive(Debug)]
pub(crate) struct ConnectionGuard {
    backend: Arc<Backend>,
}

impl ConnectionGuard {
    pub(crate) fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let live = &self.backend.live;
        live.stats.active.fetch_sub(1, Ordering::Relaxed);
        if self.backend.config.max_connections.is_some() {
            live.signals.released.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Backend {
        let addr = "127.0.0.1:1".parse().expect("addr");
        let config = BackendConfig {
            name: "a".into(),
            addr: crate::config::BackendAddr::Ip(addr),
            weight: 1,
            check: crate::config::Check::Tcp,
            load_addr: None,
            load_path: "/load".into(),
            max_connections: Some(2),
            send_proxy: None,
            backup: false,
        };
        let health = HealthConfig {
            rise: 2,
            fall: 2,
            ..HealthConfig::default()
        };
        Backend::new(
            "s".into(),
            "a".into(),
            addr,
            &config,
            &health,
            Arc::default(),
            false,
        )
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
    fn a_full_backend_is_not_available_until_a_connection_ends() {
        let b = Arc::new(backend());
        let first = b.connect_guard();
        assert!(b.candidate().available && !b.is_full());
        let _second = b.connect_guard();
        assert!(!b.candidate().available && b.is_full());
        drop(first);
        assert!(b.candidate().available);
    }

    #[test]
    fn reconfiguring_keeps_counters_and_down_state() {
        let b = Arc::new(backend());
        let _open = b.connect_guard();
        b.record_check(false, "test");
        b.record_check(false, "test");
        assert!(!b.is_up());
        let health = HealthConfig {
            rise: 1,
            ..HealthConfig::default()
        };
        let renewed = b.reconfigured(&b.config, &health);
        assert_eq!(renewed.stats().active.load(Ordering::Relaxed), 1);
        assert!(!renewed.is_up());
        renewed.record_check(true, "");
        assert!(renewed.is_up() && b.is_up());
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
