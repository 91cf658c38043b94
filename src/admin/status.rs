//! The status: the JSON document behind `/api/status` and the page rendered from it.

use crate::backend::Backend;
use crate::balancer::{Count, Service, Services, Snapshot, Totals};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;

/// `GET /api/status`, and the data behind the page.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    pub version: &'static str,
    pub uptime_seconds: f64,
    /// Every service together, removed ones included.
    pub totals: TotalsStatus,
    /// The services, in configuration order.
    pub services: Vec<ServiceStatus>,
    pub history: HistoryStatus,
}

/// One service: where it listens, how it picks, its totals and its backends.
#[derive(Debug, Serialize)]
pub(crate) struct ServiceStatus {
    pub name: String,
    /// The configured listen addresses.
    pub listen: Vec<String>,
    pub algorithm: String,
    pub accept_proxy: bool,
    pub totals: TotalsStatus,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Serialize)]
pub(crate) struct TotalsStatus {
    /// Client connections accepted since start.
    pub accepted: u64,
    /// Clients closed because no backend could take them.
    pub no_backend: u64,
    /// Clients closed for a missing, malformed, truncated or slow PROXY header.
    pub bad_proxy_header: u64,
    /// Connections open to backends now.
    pub active: u64,
}

impl TotalsStatus {
    fn new(totals: &Totals, active: u64) -> TotalsStatus {
        TotalsStatus {
            accepted: totals.get(Count::Accepted),
            no_backend: totals.get(Count::NoBackend),
            bad_proxy_header: totals.get(Count::BadProxyHeader),
            active,
        }
    }
}

/// How a backend stands for new connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    /// Healthy and taking connections.
    Up,
    /// Failed its health checks.
    Down,
    /// Weight 0: takes no new connections (established ones continue).
    Drained,
    /// Up but at its `max_connections`.
    Full,
}

#[derive(Debug, Serialize)]
pub(crate) struct BackendStatus {
    /// Unique within the service: the configured name, or `name@address` for each
    /// address a host name resolved to.
    pub name: String,
    pub addr: String,
    pub state: State,
    /// Whether the health checks consider it up (independent of draining).
    pub up: bool,
    /// The weight in use, including runtime changes.
    pub weight: u32,
    /// The weight in the configuration file.
    pub configured_weight: u32,
    /// The weight in effect now: `weight`, or less while a slow start ramps it up.
    pub effective_weight: f64,
    /// A standby, used only while no other backend of its service can take a connection.
    pub backup: bool,
    pub max_connections: Option<u64>,
    /// The last fresh `/load` reading in percent; `null` when unknown or stale.
    pub load_percent: Option<f32>,
    /// Seconds since the last good `/load` reading, if there ever was one.
    pub load_age_seconds: Option<f64>,
    pub active: u64,
    pub total: u64,
    /// Bytes sent to the backend (from its clients).
    pub bytes_sent: u64,
    /// Bytes received from the backend (for its clients).
    pub bytes_received: u64,
    pub connect_failures: u64,
    pub last_check: Option<CheckStatus>,
}

#[derive(Debug, Serialize)]
pub(crate) struct CheckStatus {
    pub ok: bool,
    /// Why it failed; empty when it passed.
    pub detail: String,
    pub age_seconds: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct HistoryStatus {
    pub interval_seconds: f64,
    /// How many samples are kept at most.
    pub capacity: usize,
    /// Age of each sample, oldest first.
    pub ages_seconds: Vec<f64>,
    /// Active connections per backend, one value per sample (`null` before it existed).
    pub series: Vec<SeriesStatus>,
}

#[derive(Debug, Serialize)]
pub(crate) struct SeriesStatus {
    pub service: String,
    pub backend: String,
    pub active: Vec<Option<u64>>,
}

pub(super) fn status(ctx: &Ctx, services: &Services) -> Status {
    let now = Instant::now();
    let services: Vec<ServiceStatus> = services
        .list
        .iter()
        .map(|service| service_status(service, now))
        .collect();
    let active = ctx.balancer.active();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: seconds(ctx.balancer.started.elapsed()),
        totals: TotalsStatus::new(&ctx.balancer.totals, active),
        history: lock(&ctx.history).view(&ctx.balancer.services(), now),
        services,
    }
}

fn service_status(service: &Service, now: Instant) -> ServiceStatus {
    let snapshot = service.snapshot();
    let backends: Vec<BackendStatus> = snapshot
        .backends
        .iter()
        .map(|b| backend_status(b, &snapshot, now))
        .collect();
    let active = service.active();
    ServiceStatus {
        name: service.name.clone(),
        listen: snapshot
            .config
            .listen
            .iter()
            .map(|a| a.to_string())
            .collect(),
        algorithm: snapshot.config.algorithm.to_string(),
        accept_proxy: snapshot.config.accept_proxy,
        totals: TotalsStatus::new(&service.totals, active),
        backends,
    }
}

pub(super) fn state(b: &Backend) -> State {
    if b.weight == 0 {
        State::Drained
    } else if !b.is_up() {
        State::Down
    } else if b.is_full() {
        State::Full
    } else {
        State::Up
    }
}

/// The weight in the configuration file (the backend's own copy carries runtime changes).
pub(super) fn configured_weight(b: &Backend, snapshot: &Snapshot) -> u32 {
    snapshot
        .config
        .backends
        .iter()
        .find(|c| c.name == b.config.name)
        .map_or(b.weight, |c| c.weight)
}

pub(super) fn backend_status(b: &Backend, snapshot: &Snapshot, now: Instant) -> BackendStatus {
    let stats = b.stats();
    BackendStatus {
        name: b.name.clone(),
        addr: b.addr.to_string(),
        state: state(b),
        up: b.is_up(),
        weight: b.weight,
        configured_weight: configured_weight(b, snapshot),
        // Two decimals are plenty for a ramp, and keep the JSON short.
        effective_weight: (b.effective_weight() * 100.0).round() / 100.0,
        backup: b.config.backup,
        max_connections: b.config.max_connections,
        load_percent: b.load(),
        load_age_seconds: b.load_age().map(seconds),
        active: stats.active.load(Ordering::Relaxed),
        total: stats.total.load(Ordering::Relaxed),
        bytes_sent: stats.bytes_to_backend.load(Ordering::Relaxed),
        bytes_received: stats.bytes_to_client.load(Ordering::Relaxed),
        connect_failures: stats.connect_failures.load(Ordering::Relaxed),
        last_check: b.last_check().map(|c| CheckStatus {
            ok: c.ok,
            detail: c.detail,
            age_seconds: seconds(now.saturating_duration_since(c.at)),
        }),
    }
}

/// Seconds with millisecond precision, so the JSON stays short.
pub(super) fn seconds(d: Duration) -> f64 {
    d.as_millis() as f64 / 1000.0
}

pub(super) fn render_page(status: &Status) -> Vec<u8> {
    // `<` escaped keeps a backend name like `</script>` from ending the data block early.
    let json = serde_json::to_string(status)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c");
    PAGE.replacen(PAGE_SLOT, &json, 1).into_bytes()
}
