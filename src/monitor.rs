//! Background tasks that watch the backends: an active health check per backend, and in
//! WorkloadSensitive mode a `/load` poller per backend. They write into the backends' live
//! state and stop when their token is cancelled (shutdown, or a new configuration).
//!
//! A probe that cannot run because ballast itself is short of descriptors, memory or local
//! ports ([`ProbeError::Local`]) is no verdict on the backend: it feeds nothing to the health
//! state, and it is logged as ballast's own error once per shortage, not once per probe.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{Backend, RAMP_SCALE};
use crate::balancer::Service;
use crate::config::{Check, HealthConfig, LoadPollConfig, ServiceConfig};
use crate::probe::{self, ProbeError};
use crate::selection::Algorithm;

/// Starts the health checks, and the load pollers when `config` asks for workload-sensitive
/// balancing, for `backends`; they run on `tracker` until `stop` is cancelled.
pub(crate) fn spawn(
    backends: &[Arc<Backend>],
    config: &ServiceConfig,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) {
    for backend in backends {
        tracker.spawn(until_cancelled(
            stop.clone(),
            check_loop(Arc::clone(backend), config.health.clone()),
        ));
        if config.algorithm == Algorithm::WorkloadSensitive {
            tracker.spawn(until_cancelled(
                stop.clone(),
                poll_loop(Arc::clone(backend), config.load_poll),
            ));
        }
    }
}

/// Steps the slow starts of `service` (`slow_start` set): rebuilds its snapshot, with each
/// ramping backend's weight a step higher, every [`ramp_step`] while a backend ramps, and
/// at once when one comes back up; waits without work otherwise. Runs until `stop` is
/// cancelled.
pub(crate) fn spawn_ramp(service: &Arc<Service>, tracker: &TaskTracker, stop: &CancellationToken) {
    let Some(slow_start) = service.snapshot().config.slow_start else {
        return;
    };
    let step = ramp_step(slow_start);
    let service = Arc::clone(service);
    tracker.spawn(until_cancelled(stop.clone(), async move {
        loop {
            let came_up = service.signals.came_up.notified();
            tokio::pin!(came_up);
            came_up.as_mut().enable();
            if service.snapshot().ramping {
                tokio::select! {
                    () = tokio::time::sleep(step) => {}
                    () = &mut came_up => {}
                }
            } else {
                came_up.await;
            }
            // A large weighted schedule takes a while to lay out: off the event loop.
            let stepping = Arc::clone(&service);
            if tokio::task::spawn_blocking(move || stepping.refresh())
                .await
                .is_err()
            {
                return;
            }
        }
    }));
}

/// How often a slow start's weights are raised: once per sixteenth of `slow_start`, the
/// steps a ramp moves in (`Backend::ramp_at`; rebuilding more often lays out the same
/// weights again), but no more than ten a second and at least one a second.
pub(crate) fn ramp_step(slow_start: Duration) -> Duration {
    (slow_start / RAMP_SCALE).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

async fn until_cancelled(stop: CancellationToken, task: impl Future<Output = ()>) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = task => {}
    }
}

/// Probes the backend every `interval` (jittered) and feeds the verdicts to its health. A
/// probe that could not run for ballast's own lack of resources is no verdict.
async fn check_loop(backend: Arc<Backend>, health: HealthConfig) {
    let mut jitter = Jitter::new();
    let what = format!(
        "health check of backend {} ({}) of service {}",
        backend.name, backend.addr, backend.service
    );
    let mut shortage = Shortage::new(format!("cannot run the {what}"), what);
    loop {
        tokio::time::sleep(jitter.spread(health.interval)).await;
        let result = match &backend.config.check {
            Check::Tcp => probe::tcp_connect(backend.addr, health.timeout).await,
            Check::Http(path) => probe::http_check(backend.addr, path, health.timeout).await,
        };
        match result {
            Err(ProbeError::Local(e)) => shortage.skipped(&e),
            Ok(()) => {
                shortage.over();
                backend.record_check(true, "");
            }
            Err(e) => {
                shortage.over();
                backend.record_check(false, &format!("health check failed: {e}"));
            }
        }
    }
}

/// A run of probes that could not run because ballast was short of its own resources.
/// Logged at error level once when it starts and at info once it is over, with each skipped
/// probe at debug: a shortage lasting an hour is two lines at the default level, not one per
/// probe.
struct Shortage {
    /// The first line's start, such as `cannot run the health check of backend a (ADDR)`.
    cannot: String,
    /// The probe, for the other lines: `health check of backend a (ADDR)`.
    what: String,
    /// Probes skipped in the current shortage; 0 when there is none.
    skipped: u64,
}

impl Shortage {
    fn new(cannot: String, what: String) -> Shortage {
        Shortage {
            cannot,
            what,
            skipped: 0,
        }
    }

    fn skipped(&mut self, e: &std::io::Error) {
        if self.skipped == 0 {
            error!(
                "{}: {e}; ballast's own resources, not counted against the backend",
                self.cannot
            );
        }
        debug!("{} not run: {e}", self.what);
        self.skipped += 1;
    }

    /// A probe ran (whatever its verdict).
    fn over(&mut self) {
        if self.skipped > 0 {
            info!("{} runs again after {} skipped", self.what, self.skipped);
            self.skipped = 0;
        }
    }
}

/// Polls the backend's load endpoint, publishing each good reading and forgetting the last
/// one once it is stale. Logs when readings go bad and when they recover, not every poll.
///
/// A poll that could not run for ballast's own lack of resources is not a bad reading: it
/// is logged as ballast's error (once per shortage) and leaves the readings' good or failing
/// state alone. It brings no new reading either, so the last one ages as after a failed
/// poll, and is dropped once stale: an old load is not believed, whoever is to blame.
async fn poll_loop(backend: Arc<Backend>, poll: LoadPollConfig) {
    let mut jitter = Jitter::new();
    let mut healthy_readings: Option<bool> = None;
    let mut last_good: Option<Instant> = None;
    let (addr, path) = (backend.load_addr(), backend.config.load_path.clone());
    let mut shortage = Shortage::new(
        format!(
            "cannot poll the load of backend {} of service {} at http://{addr}{path}",
            backend.name, backend.service
        ),
        format!(
            "load poll of backend {} of service {} at http://{addr}{path}",
            backend.name, backend.service
        ),
    );
    // A good reading proves what a TCP check of the same address would, and no more: it
    // must not mask a failing HTTP check, nor a dead data port behind a live load agent.
    let poll_proves_health = backend.config.check == Check::Tcp && addr == backend.addr;
    // Without a reading now, the last good one stands until it is stale.
    let age_out = |last_good: Option<Instant>| {
        if last_good.is_none_or(|t| t.elapsed() >= poll.stale_after()) {
            backend.set_load(None);
        } else {
            backend.restart_recent();
        }
    };
    loop {
        let reading = match probe::http_get(addr, &path, poll.timeout).await {
            Ok(body) => probe::parse_load(&body),
            Err(e) => Err(e),
        };
        if let Err(ProbeError::Local(e)) = &reading {
            shortage.skipped(e);
        } else {
            shortage.over();
        }
        match reading {
            Err(ProbeError::Local(_)) => age_out(last_good),
            Ok(load) => {
                backend.set_load(Some(load));
                last_good = Some(Instant::now());
                if poll_proves_health {
                    backend.record_check(true, "");
                }
                if healthy_readings != Some(true) {
                    info!(
                        "service {}: backend {}: load readings from http://{addr}{path} are good ({load:.1}%)",
                        backend.service, backend.name
                    );
                }
                healthy_readings = Some(true);
            }
            Err(e) => {
                if healthy_readings != Some(false) {
                    warn!(
                        "service {}: backend {}: load readings from http://{addr}{path} failing: {e}; its load counts as unknown once stale",
                        backend.service, backend.name
                    );
                }
                healthy_readings = Some(false);
                age_out(last_good);
            }
        }
        tokio::time::sleep(jitter.spread(poll.interval)).await;
    }
}

/// Spreads periodic work so that probes of many backends (and of many balancers) do not
/// fire in step. A tiny xorshift generator seeded per task is plenty for that.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let seed = RandomState::new().build_hasher().finish();
        Jitter(seed | 1)
    }

    /// A duration between 75% and 100% of `interval`: never longer, so "every interval" holds.
    fn spread(&mut self, interval: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let fraction = 0.75 + 0.25 * (self.0 >> 11) as f64 / (1u64 << 53) as f64;
        interval.mul_f64(fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_three_quarters_and_the_interval() {
        let mut j = Jitter::new();
        let interval = Duration::from_secs(1);
        let spread: Vec<Duration> = (0..1000).map(|_| j.spread(interval)).collect();
        assert!(
            spread
                .iter()
                .all(|d| *d >= interval.mul_f64(0.75) && *d <= interval)
        );
        let distinct: std::collections::HashSet<_> = spread.iter().collect();
        assert!(distinct.len() > 900, "jitter should vary");
    }
}
