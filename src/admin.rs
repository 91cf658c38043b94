//! The admin listener: status page, Prometheus metrics, JSON status and runtime API.
//!
//! Served by the crate's own minimal HTTP/1.1 code ([`crate::http`], as the demo backend),
//! with the same bounds: an 8 KiB request head, a 64 KiB (discarded) body and 10 s per
//! request; keep-alive is honoured. At most [`MAX_CONNECTIONS`] admin connections are served
//! at once; further ones wait in the kernel's backlog.
//!
//! | Method       | Path                                 | Answer                                  |
//! |--------------|--------------------------------------|-----------------------------------------|
//! | `GET`/`HEAD` | `/`                                  | status page (HTML, refreshes itself)    |
//! | `GET`/`HEAD` | `/metrics`                           | Prometheus text format 0.0.4            |
//! | `GET`/`HEAD` | `/api/status`                        | the page's data as JSON                 |
//! | `POST`       | `/api/backends/{name}/drain`         | weight 0 at runtime                     |
//! | `POST`       | `/api/backends/{name}/enable`        | back to the configured weight           |
//! | `POST`       | `/api/backends/{name}/weight/{n}`    | weight `n` (0..=256) at runtime         |
//!
//! `{name}` is percent-decoded (`web%201` names `web 1`). Runtime changes go through
//! [`Balancer::set_weight`], so they apply to new connections at once, leave established ones
//! alone, and are dropped by the next configuration reload.
//!
//! When `admin_token` is configured every request needs `Authorization: Bearer <token>`
//! (compared in constant time), else 401 with `WWW-Authenticate: Bearer`. So that the page
//! works in a browser, `GET`/`HEAD` requests may instead carry the token as `?token=...`; the
//! page then sends it as a bearer header on its own requests. `POST` requests only accept the
//! header, and a `POST` whose `Origin` does not match its `Host` is refused with 403, so
//! another web site open in the same browser cannot drive the API.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::Backend;
use crate::balancer::{Balancer, Snapshot, UnknownBackend};
use crate::config::MAX_WEIGHT;
use crate::http::{self, Limits, Reply, Request};
use crate::listener::AcceptBackoff;

/// How often the chart's history takes a sample of every backend's active connections.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept: ten minutes at one sample every two seconds.
pub const HISTORY_LEN: usize = 300;
/// Admin connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";
const METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";
const READ_ONLY: &[(&str, &str)] = &[("Allow", "GET, HEAD")];
const POST_ONLY: &[(&str, &str)] = &[("Allow", "POST")];
const CHALLENGE: &[(&str, &str)] = &[("WWW-Authenticate", "Bearer realm=\"ballast admin\"")];
/// Everything the page shows changes every two seconds; no cache may keep an old copy.
const NO_STORE: &[(&str, &str)] = &[("Cache-Control", "no-store")];

/// The status page; `__STATUS__` is replaced by the status JSON so the first paint needs no
/// round trip.
const PAGE: &str = include_str!("admin/status.html");
const PAGE_SLOT: &str = "__STATUS__";

/// The status page's chart: a history of every backend's active connections, sampled by its
/// own task so that it outlives the admin listener (a reload that moves the listener keeps
/// the last ten minutes).
#[derive(Clone, Debug)]
pub struct Chart(Arc<Mutex<History>>);

impl Chart {
    /// Starts sampling `balancer` on `tasks` until `stop` is cancelled.
    pub fn start(balancer: &Arc<Balancer>, tasks: &TaskTracker, stop: CancellationToken) -> Chart {
        let history = Arc::new(Mutex::new(History::new(HISTORY_LEN)));
        tasks.spawn(sample_history(
            Arc::clone(balancer),
            Arc::clone(&history),
            stop,
        ));
        Chart(history)
    }
}

/// Serves the admin endpoints on `listener`, with `chart`'s history, until `stop` is
/// cancelled.
pub async fn serve(
    listener: TcpListener,
    balancer: Arc<Balancer>,
    chart: Chart,
    stop: CancellationToken,
) -> io::Result<()> {
    if let Ok(local) = listener.local_addr()
        && !local.ip().is_loopback()
        && balancer.snapshot().config.admin_token.is_none()
    {
        warn!(
            "admin listener on {local} is not on loopback and has no admin_token: \
             anyone who can reach it can drain backends"
        );
    }
    let tasks = TaskTracker::new();
    let ctx = Arc::new(Ctx {
        balancer,
        history: chart.0,
        limits: Limits::default(),
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = AcceptBackoff::new("admin accept");
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.reset();
                let (ctx, stop) = (Arc::clone(&ctx), stop.clone());
                tasks.spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        result = serve_connection(stream, &ctx) => if let Err(e) = result {
                            debug!("admin connection from {peer}: {e}");
                        },
                    }
                    drop(permit);
                });
            }
            Err(e) => backoff.on_error(e).await,
        }
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
    info!("admin listener stopped");
    Ok(())
}

struct Ctx {
    balancer: Arc<Balancer>,
    history: Arc<Mutex<History>>,
    limits: Limits,
}

// --- history ---------------------------------------------------------------------------------

/// A bounded ring of samples of every backend's active connections.
#[derive(Debug)]
struct History {
    capacity: usize,
    samples: VecDeque<Sample>,
}

#[derive(Debug)]
struct Sample {
    at: Instant,
    /// Active connections by backend name, in configuration order.
    active: Vec<(String, u64)>,
}

impl History {
    fn new(capacity: usize) -> History {
        History {
            capacity,
            samples: VecDeque::with_capacity(capacity),
        }
    }

    fn push(&mut self, sample: Sample) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The retained samples as columns: one series per backend of `snapshot` (`null` where a
    /// sample predates the backend), oldest first.
    fn view(&self, snapshot: &Snapshot, now: Instant) -> HistoryStatus {
        let ages_seconds = self
            .samples
            .iter()
            .map(|s| seconds(now.saturating_duration_since(s.at)))
            .collect();
        let series = snapshot
            .backends
            .iter()
            .map(|b| SeriesStatus {
                backend: b.name.clone(),
                active: self
                    .samples
                    .iter()
                    .map(|s| {
                        s.active
                            .iter()
                            .find(|(name, _)| *name == b.name)
                            .map(|&(_, n)| n)
                    })
                    .collect(),
            })
            .collect();
        HistoryStatus {
            interval_seconds: seconds(SAMPLE_EVERY),
            capacity: self.capacity,
            ages_seconds,
            series,
        }
    }
}

/// Samples every [`SAMPLE_EVERY`] (the first at once) until `stop` is cancelled.
async fn sample_history(
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
        let snapshot = balancer.snapshot();
        let sample = Sample {
            at: Instant::now(),
            active: snapshot
                .backends
                .iter()
                .map(|b| (b.name.clone(), b.stats().active.load(Ordering::Relaxed)))
                .collect(),
        };
        lock(&history).push(sample);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// --- connections and routing -----------------------------------------------------------------

async fn serve_connection(stream: TcpStream, ctx: &Ctx) -> io::Result<()> {
    http::serve_requests(
        stream,
        &ctx.limits,
        None,
        error_reply,
        |request| async move {
            let reply = respond(&request, ctx);
            debug!(
                "admin: {} {} -> {}",
                request.method,
                request.path(),
                reply.status
            );
            reply
        },
    )
    .await
}

/// A reply no cache keeps: every admin answer is live state.
fn fresh(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
    Reply::new(status, content_type, body).with_headers(NO_STORE)
}

fn json_reply(status: u16, value: &impl Serialize) -> Reply {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            body.push(b'\n');
            fresh(status, JSON, body)
        }
        Err(e) => error_reply(500, &format!("cannot encode the answer: {e}")),
    }
}

/// `{"error": message}` with `status`.
fn error_reply(status: u16, message: &str) -> Reply {
    let body = serde_json::json!({ "error": message });
    let mut body = body.to_string().into_bytes();
    body.push(b'\n');
    fresh(status, JSON, body)
}

fn respond(request: &Request, ctx: &Ctx) -> Reply {
    let snapshot = ctx.balancer.snapshot();
    let method = request.method.as_str();
    if let Some(token) = &snapshot.config.admin_token
        && !authorized(request, token)
    {
        return error_reply(
            401,
            "this admin listener needs `Authorization: Bearer <token>` (or ?token=<token> on a GET)",
        )
        .with_headers(CHALLENGE);
    }
    let readable = matches!(method, "GET" | "HEAD");
    let path = request.path();
    match path {
        "/" if readable => fresh(200, HTML, render_page(&status(ctx, &snapshot))),
        "/metrics" if readable => fresh(200, METRICS, metrics(&ctx.balancer, &snapshot)),
        "/api/status" if readable => json_reply(200, &status(ctx, &snapshot)),
        "/" | "/metrics" | "/api/status" => {
            error_reply(405, "method not allowed").with_headers(READ_ONLY)
        }
        _ => match path.strip_prefix("/api/backends/") {
            Some(rest) => backend_action(request, rest, ctx),
            None => error_reply(404, "not found"),
        },
    }
}

/// `POST /api/backends/{name}/(drain|enable|weight/{n})`, `rest` being what follows
/// `/api/backends/`.
fn backend_action(request: &Request, rest: &str, ctx: &Ctx) -> Reply {
    let segments: Vec<&str> = rest.split('/').collect();
    let (name, weight) = match segments.as_slice() {
        [name, "drain"] => (name, Ok(Some(0))),
        [name, "enable"] => (name, Ok(None)),
        [name, "weight", n] => (
            name,
            parse_weight(n).map(Some).ok_or_else(|| {
                format!("invalid weight {n:?}: expected a whole number from 0 to {MAX_WEIGHT}")
            }),
        ),
        [name, "weight"] => (
            name,
            Err("missing weight: POST /api/backends/{name}/weight/{n}".to_string()),
        ),
        _ => return error_reply(404, "not found"),
    };
    if request.method != "POST" {
        return error_reply(405, "method not allowed: use POST").with_headers(POST_ONLY);
    }
    if !same_origin(request) {
        return error_reply(403, "cross-origin request refused");
    }
    let weight = match weight {
        Ok(weight) => weight,
        Err(message) => return error_reply(400, &message),
    };
    let Some(name) = percent_decode(name) else {
        return error_reply(400, "invalid percent-encoding in the backend name");
    };
    match ctx.balancer.set_weight(&name, weight) {
        Ok(()) => {
            let snapshot = ctx.balancer.snapshot();
            match snapshot.backends.iter().find(|b| b.name == name) {
                Some(b) => json_reply(200, &backend_status(b, &snapshot, Instant::now())),
                // Only a reload racing with this request removes it.
                None => error_reply(404, &format!("unknown backend {name:?}")),
            }
        }
        Err(UnknownBackend(name)) => error_reply(404, &format!("unknown backend {name:?}")),
    }
}

fn parse_weight(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&w| w <= MAX_WEIGHT)
}

/// A browser sends `Origin` on a cross-site `POST`; refuse it unless it names this host.
/// Requests without `Origin` (curl, scripts) pass.
fn same_origin(request: &Request) -> bool {
    let Some(origin) = request.header("origin") else {
        return true;
    };
    let host = request.header("host").unwrap_or_default();
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    !host.is_empty() && origin_host.is_some_and(|h| h.eq_ignore_ascii_case(host))
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// --- authentication --------------------------------------------------------------------------

/// Whether `request` carries `token`: as `Authorization: Bearer <token>`, or for reads as the
/// `token` query parameter.
fn authorized(request: &Request, token: &str) -> bool {
    let from_header = request.header("authorization").and_then(|value| {
        let (scheme, credentials) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| credentials.trim_start_matches(' '))
    });
    if let Some(given) = from_header {
        return constant_time_eq(given.as_bytes(), token.as_bytes());
    }
    if matches!(request.method.as_str(), "GET" | "HEAD")
        && let Some(given) = query_param(&request.target, "token")
        && let Some(given) = percent_decode(given)
    {
        return constant_time_eq(given.as_bytes(), token.as_bytes());
    }
    false
}

/// The raw value of parameter `name` in the query of `target`.
fn query_param<'t>(target: &'t str, name: &str) -> Option<&'t str> {
    let (_, query) = target.split_once('?')?;
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was
/// right (only, unavoidably, whether its length was).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

// --- status ----------------------------------------------------------------------------------

/// `GET /api/status`, and the data behind the page.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub uptime_seconds: f64,
    /// The configured listen address.
    pub listen: String,
    pub algorithm: String,
    pub totals: TotalsStatus,
    pub backends: Vec<BackendStatus>,
    pub history: HistoryStatus,
}

#[derive(Debug, Serialize)]
pub struct TotalsStatus {
    /// Client connections accepted since start.
    pub accepted: u64,
    /// Clients closed because no backend could take them.
    pub no_backend: u64,
    /// Connections open to all backends now.
    pub active: u64,
}

/// How a backend stands for new connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
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
pub struct BackendStatus {
    pub name: String,
    pub addr: String,
    pub state: State,
    /// Whether the health checks consider it up (independent of draining).
    pub up: bool,
    /// The weight in use, including runtime changes.
    pub weight: u32,
    /// The weight in the configuration file.
    pub configured_weight: u32,
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
pub struct CheckStatus {
    pub ok: bool,
    /// Why it failed; empty when it passed.
    pub detail: String,
    pub age_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct HistoryStatus {
    pub interval_seconds: f64,
    /// How many samples are kept at most.
    pub capacity: usize,
    /// Age of each sample, oldest first.
    pub ages_seconds: Vec<f64>,
    /// Active connections per backend, one value per sample (`null` before it existed).
    pub series: Vec<SeriesStatus>,
}

#[derive(Debug, Serialize)]
pub struct SeriesStatus {
    pub backend: String,
    pub active: Vec<Option<u64>>,
}

fn status(ctx: &Ctx, snapshot: &Snapshot) -> Status {
    let now = Instant::now();
    let backends: Vec<BackendStatus> = snapshot
        .backends
        .iter()
        .map(|b| backend_status(b, snapshot, now))
        .collect();
    let totals = &ctx.balancer.totals;
    Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: seconds(ctx.balancer.started.elapsed()),
        listen: snapshot.config.listen.to_string(),
        algorithm: snapshot.config.algorithm.to_string(),
        totals: TotalsStatus {
            accepted: totals.accepted.load(Ordering::Relaxed),
            no_backend: totals.no_backend.load(Ordering::Relaxed),
            active: backends.iter().map(|b| b.active).sum(),
        },
        backends,
        history: lock(&ctx.history).view(snapshot, now),
    }
}

fn state(b: &Backend) -> State {
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
fn configured_weight(b: &Backend, snapshot: &Snapshot) -> u32 {
    snapshot
        .config
        .backends
        .iter()
        .find(|c| c.name == b.name)
        .map_or(b.weight, |c| c.weight)
}

fn backend_status(b: &Backend, snapshot: &Snapshot, now: Instant) -> BackendStatus {
    let stats = b.stats();
    BackendStatus {
        name: b.name.clone(),
        addr: b.addr.to_string(),
        state: state(b),
        up: b.is_up(),
        weight: b.weight,
        configured_weight: configured_weight(b, snapshot),
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
fn seconds(d: Duration) -> f64 {
    d.as_millis() as f64 / 1000.0
}

fn render_page(status: &Status) -> Vec<u8> {
    // `<` escaped keeps a backend name like `</script>` from ending the data block early.
    let json = serde_json::to_string(status)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c");
    PAGE.replacen(PAGE_SLOT, &json, 1).into_bytes()
}

// --- metrics ---------------------------------------------------------------------------------

/// The Prometheus text exposition format 0.0.4.
fn metrics(balancer: &Balancer, snapshot: &Snapshot) -> String {
    let mut out = String::with_capacity(4096);
    let totals = &balancer.totals;
    family(
        &mut out,
        "ballast_build_info",
        "gauge",
        "Build information; the value is always 1.",
    );
    let _ = writeln!(
        out,
        "ballast_build_info{{version=\"{}\"}} 1",
        escape_label(env!("CARGO_PKG_VERSION"))
    );
    family(
        &mut out,
        "ballast_uptime_seconds",
        "gauge",
        "Seconds since the balancer started.",
    );
    let _ = writeln!(
        out,
        "ballast_uptime_seconds {}",
        balancer.started.elapsed().as_secs_f64()
    );
    family(
        &mut out,
        "ballast_connections_accepted_total",
        "counter",
        "Client connections accepted.",
    );
    let _ = writeln!(
        out,
        "ballast_connections_accepted_total {}",
        totals.accepted.load(Ordering::Relaxed)
    );
    family(
        &mut out,
        "ballast_connections_no_backend_total",
        "counter",
        "Client connections closed because no backend could take them.",
    );
    let _ = writeln!(
        out,
        "ballast_connections_no_backend_total {}",
        totals.no_backend.load(Ordering::Relaxed)
    );

    type Value = fn(&Backend, &Snapshot) -> Option<String>;
    let per_backend: [(&str, &str, &str, Value); 9] = [
        (
            "ballast_backend_connections_active",
            "gauge",
            "Connections open to the backend now.",
            |b, _| Some(b.stats().active.load(Ordering::Relaxed).to_string()),
        ),
        (
            "ballast_backend_connections_total",
            "counter",
            "Client connections relayed to the backend.",
            |b, _| Some(b.stats().total.load(Ordering::Relaxed).to_string()),
        ),
        (
            "ballast_backend_sent_bytes_total",
            "counter",
            "Bytes sent to the backend, counted as they move.",
            |b, _| {
                Some(
                    b.stats()
                        .bytes_to_backend
                        .load(Ordering::Relaxed)
                        .to_string(),
                )
            },
        ),
        (
            "ballast_backend_received_bytes_total",
            "counter",
            "Bytes received from the backend, counted as they move.",
            |b, _| {
                Some(
                    b.stats()
                        .bytes_to_client
                        .load(Ordering::Relaxed)
                        .to_string(),
                )
            },
        ),
        (
            "ballast_backend_connect_failures_total",
            "counter",
            "Failed connection attempts to the backend.",
            |b, _| {
                Some(
                    b.stats()
                        .connect_failures
                        .load(Ordering::Relaxed)
                        .to_string(),
                )
            },
        ),
        (
            "ballast_backend_up",
            "gauge",
            "Whether the health checks consider the backend up (1) or down (0).",
            |b, _| Some(u8::from(b.is_up()).to_string()),
        ),
        (
            "ballast_backend_load_ratio",
            "gauge",
            "Last fresh /load reading as a ratio (0 to 1); absent when unknown or stale.",
            |b, _| b.load().map(|l| (f64::from(l) / 100.0).to_string()),
        ),
        (
            "ballast_backend_weight",
            "gauge",
            "Weight in effect, including runtime changes (0 = drained).",
            |b, _| Some(b.weight.to_string()),
        ),
        (
            "ballast_backend_configured_weight",
            "gauge",
            "Weight in the configuration file.",
            |b, s| Some(configured_weight(b, s).to_string()),
        ),
    ];
    for (name, kind, help, value) in per_backend {
        family(&mut out, name, kind, help);
        for b in &snapshot.backends {
            if let Some(v) = value(b, snapshot) {
                let _ = writeln!(out, "{name}{{backend=\"{}\"}} {v}", escape_label(&b.name));
            }
        }
    }
    out
}

/// The `# HELP` and `# TYPE` lines of one metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value as the text format requires: backslash, double quote, line feed.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("plain"), "plain");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("web%201").as_deref(), Some("web 1"));
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
    }

    #[test]
    fn weights_are_whole_numbers_up_to_the_maximum() {
        assert_eq!(parse_weight("0"), Some(0));
        assert_eq!(parse_weight("256"), Some(256));
        assert_eq!(parse_weight("257"), None);
        assert_eq!(parse_weight("-1"), None);
        assert_eq!(parse_weight("+1"), None);
        assert_eq!(parse_weight("1.5"), None);
        assert_eq!(parse_weight(""), None);
        assert_eq!(parse_weight("99999999999"), None);
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn query_parameters() {
        assert_eq!(query_param("/?token=abc", "token"), Some("abc"));
        assert_eq!(query_param("/?a=1&token=x%26y#f", "token"), Some("x%26y"));
        assert_eq!(query_param("/?tokens=abc", "token"), None);
        assert_eq!(query_param("/", "token"), None);
    }

    fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.into(),
            target: target.into(),
            version: http::Version::Http11,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn bearer_header_or_query_token_on_reads_only() {
        let ok = |r: &Request| authorized(r, "s3cret");
        assert!(ok(&request(
            "GET",
            "/",
            &[("Authorization", "Bearer s3cret")]
        )));
        assert!(ok(&request(
            "POST",
            "/",
            &[("authorization", "bearer  s3cret")]
        )));
        assert!(!ok(&request(
            "GET",
            "/",
            &[("Authorization", "Bearer nope")]
        )));
        assert!(!ok(&request(
            "GET",
            "/",
            &[("Authorization", "Basic s3cret")]
        )));
        assert!(!ok(&request("GET", "/", &[])));
        assert!(ok(&request("GET", "/?token=s3cret", &[])));
        assert!(ok(&request("HEAD", "/metrics?token=s3cre%74", &[])));
        assert!(!ok(&request(
            "POST",
            "/api/backends/a/drain?token=s3cret",
            &[]
        )));
        // A wrong header is not rescued by a right query parameter.
        assert!(!ok(&request(
            "GET",
            "/?token=s3cret",
            &[("Authorization", "Bearer nope")]
        )));
    }

    #[test]
    fn cross_origin_posts_are_recognised() {
        let r = |headers: &[(&str, &str)]| same_origin(&request("POST", "/", headers));
        assert!(r(&[]));
        assert!(r(&[
            ("Host", "127.0.0.1:9000"),
            ("Origin", "http://127.0.0.1:9000")
        ]));
        assert!(!r(&[
            ("Host", "127.0.0.1:9000"),
            ("Origin", "https://evil.example")
        ]));
        assert!(!r(&[("Origin", "http://127.0.0.1:9000")]));
        assert!(!r(&[("Host", "127.0.0.1:9000"), ("Origin", "null")]));
    }

    #[test]
    fn history_is_bounded_and_keeps_the_newest() {
        let mut h = History::new(3);
        let start = Instant::now();
        for i in 0..5u64 {
            h.push(Sample {
                at: start + Duration::from_secs(i),
                active: vec![("a".into(), i)],
            });
        }
        assert_eq!(h.samples.len(), 3);
        let values: Vec<u64> = h.samples.iter().map(|s| s.active[0].1).collect();
        assert_eq!(values, [2, 3, 4]);
    }

    #[test]
    fn page_embeds_escaped_json() {
        assert_eq!(PAGE.matches(PAGE_SLOT).count(), 1);
        assert!(PAGE.contains(r#"<link rel="icon" href="data:,">"#));
    }
}
