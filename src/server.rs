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
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::backend::{Backend, ConnectionGuard};
use crate::config::{AccessLog, Config};
use crate::fault::{self, Fault};
use crate::listener::{self, AcceptBackoff};
use crate::monitor;
use crate::relay;
use crate::selection::{Candidate, Candidates, Selector};

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

/// Serves `listener` with `config` until `shutdown` completes; see [`run_with_reloads`].
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (_keep_open, reloads) = mpsc::channel(1);
    run_with_reloads(config, listener, shutdown, reloads).await
}

/// What woke the control loop.
enum Control {
    Shutdown,
    Reload(Option<Box<Config>>),
}

/// The listening socket that accept loops serve, numbered so that loops can report which one
/// they have switched to.
struct ListenSocket {
    generation: u64,
    socket: std::net::TcpListener,
}

/// What every accept loop shares, whichever thread it runs on.
struct Acceptors {
    balancer: Arc<Balancer>,
    /// The socket to accept on; `None` once the balancer stops accepting.
    listener: watch::Sender<Option<Arc<ListenSocket>>>,
    /// Loops that have switched to each generation of `listener`, for reloads to wait on.
    switched: Mutex<HashMap<u64, usize>>,
    switch_seen: Notify,
    /// One permit per open client connection.
    slots: Arc<Semaphore>,
    /// Every client connection, on every worker.
    connections: TaskTracker,
    /// Raised when the grace period is over: remaining connections are closed.
    cut_off: Arc<relay::StopSignal>,
    /// Cancelled once every connection is gone: worker threads may end.
    finished: CancellationToken,
}

impl Acceptors {
    fn switched_to(&self, generation: u64) {
        let mut switched = self.switched.lock().unwrap_or_else(PoisonError::into_inner);
        *switched.entry(generation).or_insert(0) += 1;
        self.switch_seen.notify_waiters();
    }

    /// Waits (bounded) until `loops` accept loops serve `generation`, so the previous socket
    /// is closed when a reload reports the new address.
    async fn wait_switched(&self, generation: u64, loops: usize) {
        let wait = async {
            loop {
                let seen = self.switch_seen.notified();
                tokio::pin!(seen);
                seen.as_mut().enable();
                let count = {
                    let switched = self.switched.lock().unwrap_or_else(PoisonError::into_inner);
                    switched.get(&generation).copied().unwrap_or(0)
                };
                if count >= loops {
                    return;
                }
                seen.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .is_err()
        {
            warn!("not every worker switched to the new listener within 5s");
        }
    }
}

/// Serves `listener` with `config`, switching to each configuration received on `reloads`
/// (for new connections; established ones continue), until `shutdown` completes. Then it
/// stops accepting and gives open connections up to the grace period before closing them.
///
/// Connections are served by `config.workers` accept loops: one on the caller's runtime and
/// the others on threads of their own, each with a single-threaded runtime and its own
/// `SO_REUSEPORT` socket. A connection lives on one thread from accept to close (nginx's
/// worker model), so no wake-up crosses threads.
pub async fn run_with_reloads(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    mut reloads: mpsc::Receiver<Config>,
) -> io::Result<()> {
    log_config("listening on", listener.local_addr()?, &config);
    // Clients accepted from the socket inherit it (see `bind`); a caller's own listener
    // may not have it yet.
    socket2::SockRef::from(&listener).set_tcp_nodelay(true)?;
    relay::limit_unsent(&listener);
    let workers = config.workers;
    relay::zero_copy::set_max_pipes(config.relay.max_pipes);
    let slots = Semaphore::new(config.limits.max_connections);
    let balancer = Arc::new(Balancer::new(config));
    let mut generation = 0;
    let first_socket = Arc::new(ListenSocket {
        generation,
        socket: listener.into_std()?,
    });
    let acceptors = Arc::new(Acceptors {
        balancer: Arc::clone(&balancer),
        listener: watch::Sender::new(Some(first_socket)),
        switched: Mutex::new(HashMap::new()),
        switch_seen: Notify::new(),
        slots: Arc::new(slots),
        connections: TaskTracker::new(),
        cut_off: Arc::default(),
        finished: CancellationToken::new(),
    });
    let accept_loops = TaskTracker::new();
    let mut threads = Vec::new();
    for worker in 1..workers {
        let (acceptors, loops) = (Arc::clone(&acceptors), accept_loops.clone());
        let thread = std::thread::Builder::new()
            .name(format!("ballast-worker-{worker}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(async {
                        loops
                            .track_future(accept_loop(Arc::clone(&acceptors), worker))
                            .await;
                        // Keep driving this thread's connections until all are gone.
                        acceptors.finished.cancelled().await;
                    }),
                    Err(e) => error!("worker {worker}: cannot start a runtime: {e}"),
                }
            })?;
        threads.push(thread);
    }
    accept_loops.spawn(accept_loop(Arc::clone(&acceptors), 0));
    acceptors.wait_switched(generation, workers).await;

    let background = TaskTracker::new();
    let mut stop_monitors = CancellationToken::new();
    let first = balancer.snapshot();
    monitor::spawn(&first.backends, &first.config, &background, &stop_monitors);
    let stop_admin = CancellationToken::new();
    let mut admin_stop = stop_admin.child_token();
    // Started with the first admin listener and kept across its restarts.
    let mut chart = None;
    if let Some(addr) = first.config.admin {
        let chart = chart_of(&mut chart, &balancer, &background, &stop_admin);
        admin_stop = start_admin(addr, &balancer, chart, &background, &stop_admin)?;
    }
    drop(first);
    let mut reloads_open = true;

    tokio::pin!(shutdown);
    loop {
        let event = tokio::select! {
            () = &mut shutdown => Control::Shutdown,
            config = reloads.recv(), if reloads_open => Control::Reload(config.map(Box::new)),
        };
        let config = match event {
            Control::Shutdown => break,
            Control::Reload(None) => {
                reloads_open = false;
                continue;
            }
            Control::Reload(Some(config)) => *config,
        };
        let current = balancer.snapshot();
        if config.workers != current.config.workers {
            warn!(
                "reload: workers stays at {} until a restart",
                current.config.workers
            );
        }
        let mut new_socket = None;
        if config.listen != current.config.listen {
            match listener::bind(config.listen).and_then(TcpListener::into_std) {
                Ok(socket) => new_socket = Some(socket),
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
                Some(addr) => match start_admin(
                    addr,
                    &balancer,
                    chart_of(&mut chart, &balancer, &background, &stop_admin),
                    &background,
                    &stop_admin,
                ) {
                    Ok(token) => token,
                    Err(e) => {
                        error!("reload rejected: {e}; keeping the running configuration");
                        continue;
                    }
                },
                None => stop_admin.child_token(),
            };
            admin_stop.cancel();
            admin_stop = next_admin;
        }
        if let Some(socket) = new_socket {
            generation += 1;
            acceptors
                .listener
                .send_replace(Some(Arc::new(ListenSocket { generation, socket })));
            acceptors.wait_switched(generation, workers).await;
        }
        resize_slots(
            &acceptors.slots,
            current.config.limits.max_connections,
            config.limits.max_connections,
            &background,
        );
        relay::zero_copy::set_max_pipes(config.relay.max_pipes);
        let next = balancer.reload(config);
        stop_monitors.cancel();
        stop_monitors = CancellationToken::new();
        monitor::spawn(&next.backends, &next.config, &background, &stop_monitors);
        let local = acceptors
            .listener
            .borrow()
            .as_ref()
            .map(|l| l.socket.local_addr())
            .transpose()?
            .unwrap_or(next.config.listen);
        log_config("reloaded: listening on", local, &next.config);
    }

    // Stop accepting everywhere before anything else, so new clients are refused at once.
    acceptors.listener.send_replace(None);
    accept_loops.close();
    accept_loops.wait().await;
    stop_monitors.cancel();
    stop_admin.cancel();
    background.close();
    let connections = &acceptors.connections;
    connections.close();
    let grace = balancer.snapshot().config.timeouts.grace;
    if !connections.is_empty() {
        info!(
            "shutting down: waiting up to {grace:?} for {} open connections",
            connections.len()
        );
    }
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        warn!(
            "grace period over: closing {} remaining connections",
            connections.len()
        );
        acceptors.cut_off.raise();
        connections.wait().await;
    }
    acceptors.finished.cancel();
    background.wait().await;
    let joined = tokio::task::spawn_blocking(move || {
        for thread in threads {
            let _ = thread.join();
        }
    });
    let _ = joined.await;
    info!("stopped");
    Ok(())
}

/// Grows or shrinks the connection limit in place, so connections already open keep
/// counting against it. Shrinking takes back free permits at once and the rest as open
/// connections end.
fn resize_slots(slots: &Arc<Semaphore>, from: usize, to: usize, background: &TaskTracker) {
    if to >= from {
        slots.add_permits(to - from);
        return;
    }
    let owed = (from - to) - slots.forget_permits(from - to);
    if owed == 0 {
        return;
    }
    let Ok(owed) = u32::try_from(owed) else {
        return;
    };
    let slots = Arc::clone(slots);
    background.spawn(async move {
        if let Ok(permits) = slots.acquire_many_owned(owed).await {
            permits.forget();
        }
    });
}

/// The socket accept loop `worker` accepts on. Worker 0 takes a duplicate of the shared
/// socket; the others bind a socket of their own to the same address with `SO_REUSEPORT`,
/// so the kernel spreads new connections evenly across workers instead of whichever thread
/// wakes first taking most of them. Where that bind fails (a caller's listener without
/// `SO_REUSEPORT`), a duplicate of the shared socket serves.
fn worker_socket(shared: &std::net::TcpListener, worker: usize) -> io::Result<TcpListener> {
    let own = if worker == 0 {
        None
    } else {
        shared.local_addr().and_then(listener::bind_worker).ok()
    };
    let socket = match own {
        Some(socket) => socket,
        None => shared.try_clone()?,
    };
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket)
}

/// Accepts client connections for one worker until the listener is withdrawn, following
/// the listener across reloads.
///
/// A worker takes a connection slot once it has accepted a client, not before: with a
/// backlog per worker, a worker that took the last free slot while its backlog was empty
/// would leave a client waiting in another's. At `max_connections` each worker holds at most
/// the one client it accepted until a slot frees, and stops accepting; the others wait in
/// the kernel's backlog.
async fn accept_loop(acceptors: Arc<Acceptors>, worker: usize) {
    let mut sockets = acceptors.listener.subscribe();
    let mut backoff = AcceptBackoff::new("accept");
    'sockets: loop {
        let current = sockets.borrow_and_update().clone();
        let Some(current) = current else { return };
        let listener = match worker_socket(&current.socket, worker) {
            Ok(listener) => listener,
            Err(e) => {
                error!("worker {worker}: cannot accept on the listener: {e}");
                acceptors.switched_to(current.generation);
                if sockets.changed().await.is_err() {
                    return;
                }
                continue;
            }
        };
        acceptors.switched_to(current.generation);
        drop(current);
        loop {
            let slots = &acceptors.slots;
            let next = async {
                let (client, peer) = listener.accept().await?;
                let permit = match Arc::clone(slots).try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => match Arc::clone(slots).acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => return Ok(None),
                    },
                };
                Ok::<_, io::Error>(Some((permit, client, peer)))
            };
            let accepted = tokio::select! {
                changed = sockets.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue 'sockets;
                }
                accepted = next => accepted,
            };
            let (permit, client, peer) = match accepted {
                Ok(Some(accepted)) => accepted,
                Ok(None) => continue,
                Err(e) => {
                    backoff.on_error(e).await;
                    continue;
                }
            };
            backoff.reset();
            let balancer = &acceptors.balancer;
            balancer.totals.accepted.fetch_add(1, Ordering::Relaxed);
            let balancer = Arc::clone(balancer);
            let cut_off = Arc::clone(&acceptors.cut_off);
            acceptors.connections.spawn(async move {
                serve_connection(client, peer, balancer, cut_off).await;
                drop(permit);
            });
        }
    }
}

/// The admin chart, started on first use.
fn chart_of(
    chart: &mut Option<admin::Chart>,
    balancer: &Arc<Balancer>,
    background: &TaskTracker,
    stop: &CancellationToken,
) -> admin::Chart {
    chart
        .get_or_insert_with(|| admin::Chart::start(balancer, background, stop.clone()))
        .clone()
}

/// Binds the admin listener and serves it until the returned token (a child of `parent`) is
/// cancelled.
fn start_admin(
    addr: SocketAddr,
    balancer: &Arc<Balancer>,
    chart: admin::Chart,
    background: &TaskTracker,
    parent: &CancellationToken,
) -> io::Result<CancellationToken> {
    let listener = listener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr} (admin): {e}")))?;
    let local = listener.local_addr()?;
    let stop = parent.child_token();
    let (balancer, token) = (Arc::clone(balancer), stop.clone());
    background.spawn(async move {
        if let Err(e) = admin::serve(listener, balancer, chart, token).await {
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
            Err(e) if fault::classify(&e) == Fault::Ours => {
                // Our own shortage says nothing about the backend: no health penalty. Still
                // try another: local ports run out per destination, so another backend may
                // well be reachable (and out of descriptors, the others fail as fast).
                tried.push(index);
                let backend = guard.backend();
                error!(
                    "{peer}: cannot open a connection to backend {} ({}): {e} (ballast's own shortage, not counted against the backend); trying another",
                    backend.name, backend.addr
                );
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

/// Serves one client: a backend, then the relay until both sides are done or `cut_off`
/// (the end of the shutdown grace period) closes it.
async fn serve_connection(
    client: TcpStream,
    peer: SocketAddr,
    balancer: Arc<Balancer>,
    cut_off: Arc<relay::StopSignal>,
) {
    let started = Instant::now();
    let snapshot = balancer.snapshot();
    let access_log = snapshot.config.access_log;
    // Boxed so that its larger state (the cut-off waiter included) is freed once connected,
    // instead of sizing every long-lived connection's task for it.
    let connecting = Box::pin(async {
        tokio::select! {
            connected = connect_backend(peer, &snapshot, &balancer) => Some(connected),
            () = cut_off.raised() => None,
        }
    });
    let Some(connected) = connecting.await else {
        access(
            access_log,
            format_args!(
                "{peer} -> -: 0 bytes up, 0 bytes down, {} ms, {}",
                started.elapsed().as_millis(),
                relay::End::Stopped
            ),
        );
        return;
    };
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
        pipe_size: snapshot.config.relay.pipe_size,
    };
    drop(snapshot);
    let stats = backend.stats();
    let totals = relay::Totals {
        to_backend: &stats.bytes_to_backend,
        to_client: &stats.bytes_to_client,
    };
    let (moved, end) = relay::relay(client, upstream, &limits, totals, &cut_off).await;
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
