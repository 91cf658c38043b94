//! The server's supervisor: worker threads and their accept loops, reloads, shutdown.
//!
//! Each accepted connection gets a backend from the selector (failing over past backends
//! that refuse or time out, queueing briefly when every backend is at its connection
//! limit), then the relay. A new configuration is swapped in whole for new connections
//! while established ones continue. On shutdown the listener closes at once and open
//! connections get a bounded grace period to finish.
//!
//! - `accept`: one worker's accept loop.
//! - `connect`: pick, connect, failover and the queue.
//! - `session`: one connection from accept to close, and its access line.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use log::{error, info, warn};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::config::Config;
use crate::listener;
use crate::monitor;
use crate::relay;

mod accept;
mod connect;
mod session;

use crate::balancer::Balancer;
use accept::accept_loop;

/// Serves `listener` with `config` until `shutdown` completes; see [`run_with_reloads`].
///
/// # Errors
/// As [`run_with_reloads`].
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
///
/// # Errors
/// Only at start: the listener's address cannot be read or its options set, a worker
/// thread cannot be started, or the admin listener cannot bind its address. Failures after
/// that (accept errors, backends, an admin address a reload cannot bind) are logged and
/// served around, never returned.
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
