//! The chart's history: a bounded ring of samples of every backend's active connections,
//! taken every [`SAMPLE_EVERY`](super::SAMPLE_EVERY).

use crate::balancer::{Balancer, Services};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;

/// A bounded ring of samples of every backend's active connections.
#[derive(Debug)]
pub(super) struct History {
    pub(super) capacity: usize,
    pub(super) samples: VecDeque<Sample>,
}

#[derive(Debug)]
pub(super) struct Sample {
    pub(super) at: Instant,
    /// Active connections by service and backend name, in configuration order.
    pub(super) active: Vec<((String, String), u64)>,
}

impl History {
    pub(super) fn new(capacity: usize) -> History {
        History {
            capacity,
            samples: VecDeque::with_capacity(capacity),
        }
    }

    pub(super) fn push(&mut self, sample: Sample) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The retained samples as columns: one series per backend of every service (`null`
    /// where a sample predates the backend), oldest first.
    pub(super) fn view(&self, services: &Services, now: Instant) -> HistoryStatus {
        let ages_seconds = self
            .samples
            .iter()
            .map(|s| seconds(now.saturating_duration_since(s.at)))
            .collect();
        let mut series = Vec::new();
        for service in &services.list {
            for b in &service.snapshot().backends {
                series.push(SeriesStatus {
                    service: service.name.clone(),
                    backend: b.name.clone(),
                    active: self
                        .samples
                        .iter()
                        .map(|s| {
                            s.active
                                .iter()
                                .find(|((in_service, name), _)| {
                                    *in_service == service.name && *name == b.name
                                })
                                .map(|&(_, n)| n)
                        })
                        .collect(),
                });
            }
        }
        HistoryStatus {
            interval_seconds: seconds(SAMPLE_EVERY),
            capacity: self.capacity,
            ages_seconds,
            series,
        }
    }
}

/// Samples every [`SAMPLE_EVERY`] (the first at once) until `stop` is cancelled.
pub(super) async fn sample_history(
    balancer: Arc<Balancer>,
    history: Arc<Mutex<History>>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let mut active = Vec::new();
        for service in &balancer.services().list {
            for b in &service.snapshot().backends {
                let key = (service.name.clone(), b.name.clone());
                active.push((key, b.stats().active.load(Ordering::Relaxed)));
            }
        }
        let sample = Sample {
            at: Instant::now(),
            active,
        };
        lock(&history).push(sample);
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
