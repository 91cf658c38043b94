//! The accept loop. Each accepted connection gets a backend from the selector (failing over
//! past backends that refuse or time out, queueing briefly when every backend is at its
//! connection limit), then the relay. A new configuration is swapped in whole for new
//! connections while established ones continue. On shutdown the listener closes at once and
//! open connections get a bounded grace period to finish.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use log::{debug, error, info, warn};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::backend::{Backend, ConnectionGuard};
use crate::config::{AccessLog, Config};
use crate::monitor;
use crate::relay;
use crate::selection::{Candidate, Candidates, Selector};

/// Pending connections the kernel may queue before we accept them.
const LISTEN_BACKLOG: i32 = 4096;

/// Everything a connection needs to pick and reach a backend, immutable once built. A new
/// configuration builds a new snapshot and swaps it in whole.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub backends: Vec<Arc<Backend>>,
    pub selector: Selector,
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
        Snapshot {
            config,
            backends,
            selector,
        }
    }

    /// Picks a backend not in `tried` and counts the connection as active on it.
    fn pick(&self, tried: &[usize]) -> Option<(usize, ConnectionGuard)> {
        let view = LiveView {
            backends: &self.backends,
            tried,
        };
        let index = self.selector.select(&view)?;
        Some((index, self.backends[index].connect_guard()))
    }

    /// Whether a backend not yet tried could take the connection once it has room.
    fn any_full(&self, tried: &[usize]) -> bool {
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
pub struct Balancer {
    snapshot: ArcSwap<Snapshot>,
    /// The configuration as read from the file, before runtime weight changes.
    file_config: Mutex<Config>,
    /// Runtime weight changes by backend name (0 = drained); cleared by a reload.
    weights: Mutex<HashMap<String, u32>>,
    /// Woken whenever a connection to a backend with a connection limit ends.
    released: Arc<Notify>,
    /// Clients waiting for a backend with room.
    queued: AtomicUsize,
    pub started: Instant,
    pub totals: Totals,
}

/// Balancer-wide counters.
#[derive(Debug, Default)]
pub struct Totals {
    /// Client connections accepted.
    pub accepted: AtomicU64,
    /// Clients closed because no backend could take them.
    pub no_backend: AtomicU64,
}

/// A runtime change named a backend the configuration does not have.
#[derive(Debug, PartialEq, Eq)]
pub struct UnknownBackend(pub String);

impl Balancer {
    pub fn new(config: Config) -> Balancer {
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

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps in `config` (read from the file) for new connections, dropping runtime weight
    /// changes; returns the new snapshot.
    pub fn reload(&self, config: Config) -> Arc<Snapshot> {
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
    pub fn set_weight(&self, name: &str, weight: Option<u32>) -> Result<(), UnknownBackend> {
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

/// Binds a listening socket with a deep backlog, so bursts of connections wait in the kernel
/// rather than being refused.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Serves `listener` with `config` until `shutdown` completes; see [`run_with_reloads`].
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (_keep_open, reloads) = mpsc::channel(1);
    run_with_reloads(config, listener, shutdown, reloads).await
}

/// What woke the accept loop.
enum Event {
    Shutdown,
    Reload(Option<Box<Config>>),
    Accepted(OwnedSemaphorePermit, io::Result<(TcpStream, SocketAddr)>),
}

/// Serves `listener` with `config`, switching to each configuration received on `reloads`
/// (for new connections; established ones continue), until `shutdown` completes. Then it
/// stops accepting and gives open connections up to the grace period before closing them.
pub async fn run_with_reloads(
    config: Config,
    mut listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    mut reloads: mpsc::Receiver<Config>,
) -> io::Result<()> {
    log_config("listening on", listener.local_addr()?, &config);
    let mut slots = Arc::new(Semaphore::new(config.limits.max_connections));
    relay::zero_copy::set_max_pipes(config.relay.max_pipes);
    let balancer = Arc::new(Balancer::new(config));
    let background = TaskTracker::new();
    let mut stop_monitors = CancellationToken::new();
    let first = balancer.snapshot();
    monitor::spawn(&first.backends, &first.config, &background, &stop_monitors);
    let stop_admin = CancellationToken::new();
    let mut admin_stop = stop_admin.child_token();
    if let Some(addr) = first.config.admin {
        admin_stop = start_admin(addr, &balancer, &background, &stop_admin)?;
    }
    drop(first);
    let tracker = TaskTracker::new();
    let cut_off = CancellationToken::new();
    let mut accept_backoff = AcceptBackoff::default();
    let mut reloads_open = true;

    tokio::pin!(shutdown);
    loop {
        // A permit per connection: at the limit we stop accepting and new clients wait in
        // the kernel's backlog instead of being refused.
        let next_connection = async {
            let permit = Arc::clone(&slots).acquire_owned().await;
            let permit = permit.map_err(|_| io::Error::other("connection limit closed"));
            match permit {
                Ok(permit) => Event::Accepted(permit, listener.accept().await),
                Err(_) => Event::Shutdown,
            }
        };
        let event = tokio::select! {
            () = &mut shutdown => Event::Shutdown,
            config = reloads.recv(), if reloads_open => Event::Reload(config.map(Box::new)),
            event = next_connection => event,
        };
        match event {
            Event::Shutdown => break,
            Event::Reload(None) => reloads_open = false,
            Event::Reload(Some(config)) => {
                let config = *config;
                let current = balancer.snapshot();
                if config.listen != current.config.listen {
                    match bind(config.listen) {
                        Ok(new_listener) => listener = new_listener,
                        Err(e) => {
                            error!(
                                "reload rejected: cannot listen on {}: {e}; keeping the running configuration",
                                config.listen
                            );
                            continue;
                        }
                    }
                }
                if config.admin != current.config.admin {
                    let next_admin = match config.admin {
                        Some(addr) => {
                            match start_admin(addr, &balancer, &background, &stop_admin) {
                                Ok(token) => token,
                                Err(e) => {
                                    error!(
                                        "reload rejected: {e}; keeping the running configuration"
                                    );
                                    continue;
                                }
                            }
                        }
                        None => stop_admin.child_token(),
                    };
                    admin_stop.cancel();
                    admin_stop = next_admin;
                }
                if config.limits.max_connections != current.config.limits.max_connections {
                    slots = Arc::new(Semaphore::new(config.limits.max_connections));
                }
                relay::zero_copy::set_max_pipes(config.relay.max_pipes);
                let next = balancer.reload(config);
                stop_monitors.cancel();
                stop_monitors = CancellationToken::new();
                monitor::spawn(&next.backends, &next.config, &background, &stop_monitors);
                log_config(
                    "reloaded: listening on",
                    listener.local_addr()?,
                    &next.config,
                );
            }
            Event::Accepted(permit, Ok((client, peer))) => {
                accept_backoff.reset();
                balancer.totals.accepted.fetch_add(1, Ordering::Relaxed);
                let balancer = Arc::clone(&balancer);
                let cut_off = cut_off.clone();
                tracker.spawn(async move {
                    tokio::select! {
                        () = serve_connection(client, peer, balancer) => {}
                        () = cut_off.cancelled() => debug!("{peer}: closed at end of grace period"),
                    }
                    drop(permit);
                });
            }
            Event::Accepted(_, Err(e)) => accept_backoff.on_error(e).await,
        }
    }
    drop(listener);
    stop_monitors.cancel();
    stop_admin.cancel();
    background.close();
    tracker.close();
    let grace = balancer.snapshot().config.timeouts.grace;
    if !tracker.is_empty() {
        info!(
            "shutting down: waiting up to {grace:?} for {} open connections",
            tracker.len()
        );
    }
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            "grace period over: closing {} remaining connections",
            tracker.len()
        );
        cut_off.cancel();
        tracker.wait().await;
    }
    background.wait().await;
    info!("stopped");
    Ok(())
}

/// Binds the admin listener and serves it until the returned token (a child of `parent`) is
/// cancelled.
fn start_admin(
    addr: SocketAddr,
    balancer: &Arc<Balancer>,
    background: &TaskTracker,
    parent: &CancellationToken,
) -> io::Result<CancellationToken> {
    let listener = bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr} (admin): {e}")))?;
    let local = listener.local_addr()?;
    let stop = parent.child_token();
    let (balancer, token) = (Arc::clone(balancer), stop.clone());
    background.spawn(async move {
        if let Err(e) = admin::serve(listener, balancer, token).await {
            error!("admin listener on {local} stopped: {e}");
        }
    });
    info!("admin listening on http://{local}/");
    Ok(stop)
}

fn log_config(what: &str, local: SocketAddr, config: &Config) {
    info!(
        "{what} {local}, algorithm {}, {} backends",
        config.algorithm,
        config.backends.len()
    );
    for b in &config.backends {
        info!("backend {} at {} weight {}", b.name, b.addr, b.weight);
    }
}

/// Accept errors are either per-connection (the client gave up before we accepted it) or
/// resource exhaustion (out of file descriptors or memory), where retrying at once would
/// spin a core: back off, doubling up to a second.
#[derive(Default)]
struct AcceptBackoff {
    delay: Option<Duration>,
}

impl AcceptBackoff {
    fn reset(&mut self) {
        self.delay = None;
    }

    async fn on_error(&mut self, e: io::Error) {
        if !is_local_exhaustion(&e) {
            debug!("accept failed: {e}");
            return;
        }
        let delay = self.delay.map_or(Duration::from_millis(10), |d| {
            (d * 2).min(Duration::from_secs(1))
        });
        self.delay = Some(delay);
        error!("accept failed: {e}; retrying in {delay:?}");
        tokio::time::sleep(delay).await;
    }
}

/// Out of file descriptors, socket buffers or memory on this machine: no peer's fault.
fn is_local_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

/// Linux errno values for resource exhaustion.
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}

/// Counts one queued client for as long as it lives.
struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks and connects a backend for one client: tries each backend at most once, and waits
/// in the bounded queue while the only backends left are at their connection limit.
async fn connect_backend(
    peer: SocketAddr,
    snapshot: &Snapshot,
    balancer: &Balancer,
) -> Option<(ConnectionGuard, TcpStream)> {
    let mut tried: Vec<usize> = Vec::new();
    let mut queued: Option<(QueueSlot<'_>, tokio::time::Instant)> = None;
    loop {
        // Registered before the pick, so a release between the pick and the wait is not lost.
        let released = balancer.released.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        let Some((index, guard)) = snapshot.pick(&tried) else {
            if !snapshot.any_full(&tried) {
                warn!(
                    "{peer}: no backend available ({} tried); closing the client connection",
                    tried.len()
                );
                return None;
            }
            let limits = &snapshot.config.limits;
            let deadline = match &queued {
                Some((_, deadline)) => *deadline,
                None => {
                    if balancer.queued.fetch_add(1, Ordering::Relaxed) >= limits.queue {
                        balancer.queued.fetch_sub(1, Ordering::Relaxed);
                        warn!("{peer}: every backend is full and the queue is full; closing");
                        return None;
                    }
                    let deadline = tokio::time::Instant::now() + limits.queue_timeout;
                    queued = Some((QueueSlot(&balancer.queued), deadline));
                    debug!("{peer}: every backend is full; queued");
                    deadline
                }
            };
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                warn!(
                    "{peer}: every backend stayed full for {:?}; closing",
                    limits.queue_timeout
                );
                return None;
            }
            continue;
        };
        match connect(guard.backend(), snapshot.config.timeouts.connect).await {
            Ok(stream) => return Some((guard, stream)),
            Err(e) if is_local_exhaustion(&e) => {
                // Our own shortage says nothing about the backend: no failover, no health
                // penalty, just this client turned away.
                error!("{peer}: cannot open a backend connection: {e}; closing the client");
                return None;
            }
            Err(e) => {
                tried.push(index);
                let backend = guard.backend();
                backend
                    .stats()
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(
                    "{peer}: backend {} ({}) connect failed: {e}; trying another",
                    backend.name, backend.addr
                );
                backend.record_check(false, &format!("connect failed: {e}"));
            }
        }
    }
}

/// Serves one client: a backend, then the relay until both sides are done.
async fn serve_connection(client: TcpStream, peer: SocketAddr, balancer: Arc<Balancer>) {
    let started = Instant::now();
    let _ = client.set_nodelay(true);
    let snapshot = balancer.snapshot();
    let access_log = snapshot.config.access_log;
    // Boxed so that its larger state is freed once connected, instead of sizing every
    // long-lived connection's task for it.
    let connected = Box::pin(connect_backend(peer, &snapshot, &balancer)).await;
    let Some((guard, upstream)) = connected else {
        balancer.totals.no_backend.fetch_add(1, Ordering::Relaxed);
        access(
            access_log,
            format_args!(
                "{peer} -> -: 0 bytes up, 0 bytes down, {} ms, no backend",
                started.elapsed().as_millis()
            ),
        );
        return;
    };
    let backend = Arc::clone(guard.backend());
    backend.stats().total.fetch_add(1, Ordering::Relaxed);
    let timeouts = &snapshot.config.timeouts;
    let limits = relay::Limits {
        idle: timeouts.idle,
        half_close: timeouts.half_close,
        splice: snapshot.config.relay.splice,
    };
    drop(snapshot);
    let stats = backend.stats();
    let totals = relay::Totals {
        to_backend: &stats.bytes_to_backend,
        to_client: &stats.bytes_to_client,
    };
    let (moved, end) = relay::relay(client, upstream, limits, totals).await;
    // Released before the log line, so whoever reads the log sees the count already down.
    drop(guard);
    access(
        access_log,
        format_args!(
            "{peer} -> {} ({}): {} bytes up, {} bytes down, {} ms, {end}",
            backend.name,
            backend.addr,
            moved.client_to_backend,
            moved.backend_to_client,
            started.elapsed().as_millis()
        ),
    );
}

/// One access-log line per finished connection, like HAProxy's `tcplog`, under the log
/// target `ballast::access` so it can be filtered on its own.
fn access(level: AccessLog, line: std::fmt::Arguments<'_>) {
    let level = match level {
        AccessLog::Off => return,
        AccessLog::Debug => log::Level::Debug,
        AccessLog::Info => log::Level::Info,
    };
    log::log!(target: "ballast::access", level, "{line}");
}

async fn connect(backend: &Backend, limit: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(limit, TcpStream::connect(backend.addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {limit:?}"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
