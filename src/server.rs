//! The accept loop. Each accepted connection gets a backend from the selector (failing over
//! past backends that refuse or time out), then the relay. On shutdown the listener closes at
//! once and open connections get a bounded grace period to finish.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use log::{debug, error, info, warn};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{Backend, ConnectionGuard};
use crate::config::Config;
use crate::monitor;
use crate::relay::{self, RelayEnd};
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
    pub fn new(config: Config) -> Snapshot {
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|b| Arc::new(Backend::new(b, &config.health)))
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
}

impl Balancer {
    pub fn new(config: Config) -> Balancer {
        Balancer {
            snapshot: ArcSwap::from_pointee(Snapshot::new(config)),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
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

/// Serves `listener` with `config` until `shutdown` completes, then stops accepting and gives
/// open connections up to the configured grace period before closing them.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let grace = config.timeouts.grace;
    let local = listener.local_addr()?;
    info!(
        "listening on {local}, algorithm {}, {} backends",
        config.algorithm,
        config.backends.len()
    );
    for b in &config.backends {
        info!("backend {} at {} weight {}", b.name, b.addr, b.weight);
    }
    let balancer = Arc::new(Balancer::new(config));
    let background = TaskTracker::new();
    let stop_monitors = CancellationToken::new();
    {
        let snapshot = balancer.snapshot();
        monitor::spawn(
            &snapshot.backends,
            &snapshot.config,
            &background,
            &stop_monitors,
        );
    }
    let tracker = TaskTracker::new();
    let cut_off = CancellationToken::new();
    let mut accept_backoff = AcceptBackoff::default();

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    accept_backoff.reset();
                    let snapshot = balancer.snapshot();
                    let cut_off = cut_off.clone();
                    tracker.spawn(async move {
                        tokio::select! {
                            () = serve_connection(client, peer, snapshot) => {}
                            () = cut_off.cancelled() => debug!("{peer}: closed at end of grace period"),
                        }
                    });
                }
                Err(e) => accept_backoff.on_error(e).await,
            },
        }
    }
    drop(listener);
    stop_monitors.cancel();
    background.close();
    tracker.close();
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
        let exhausted = matches!(
            e.raw_os_error(),
            Some(
                libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM
            )
        );
        if !exhausted {
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

/// Linux errno values for resource exhaustion on accept.
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}

/// Connects `client` to a backend, trying each backend at most once, then relays.
async fn serve_connection(client: TcpStream, peer: SocketAddr, snapshot: Arc<Snapshot>) {
    let started = Instant::now();
    let _ = client.set_nodelay(true);
    let mut tried: Vec<usize> = Vec::new();
    let (guard, upstream) = loop {
        let Some((index, guard)) = snapshot.pick(&tried) else {
            warn!(
                "{peer}: no backend available ({} tried); closing the client connection",
                tried.len()
            );
            return;
        };
        tried.push(index);
        match connect(guard.backend(), snapshot.config.timeouts.connect).await {
            Ok(stream) => break (guard, stream),
            Err(e) => {
                let backend = guard.backend();
                backend
                    .stats
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(
                    "{peer}: backend {} ({}) connect failed: {e}; trying another",
                    backend.name, backend.addr
                );
            }
        }
    };
    let backend = Arc::clone(guard.backend());
    backend.stats.total.fetch_add(1, Ordering::Relaxed);
    let end = relay::relay(client, upstream).await;
    // Released before the log line, so whoever reads the log sees the count already down.
    drop(guard);
    let (moved, outcome) = match &end {
        RelayEnd::Closed(moved) => (*moved, "closed".to_string()),
        RelayEnd::Failed(moved, e) => (*moved, format!("error: {e}")),
    };
    let stats = &backend.stats;
    stats
        .bytes_to_backend
        .fetch_add(moved.client_to_backend, Ordering::Relaxed);
    stats
        .bytes_to_client
        .fetch_add(moved.backend_to_client, Ordering::Relaxed);
    debug!(
        "{peer} -> {} ({}): {} bytes up, {} bytes down, {:?}, {outcome}",
        backend.name,
        backend.addr,
        moved.client_to_backend,
        moved.backend_to_client,
        started.elapsed()
    );
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
