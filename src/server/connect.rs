//! Reaching a backend for one client: pick, connect, fail over past backends that refuse
//! or time out, and wait in the bounded queue while every backend is full.

use crate::backend::{Backend, ConnectionGuard};
use crate::balancer::{Service, Snapshot};
use crate::fault::{self, Fault};
use log::{debug, error, warn};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Counts one queued client for as long as it lives.
struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks and connects a backend for one client: tries each backend at most once, and waits
/// in the bounded queue while the only backends left are at their connection limit. `peer`
/// is the client's address (the PROXY header's source under `accept_proxy`): Maglev hashes
/// its IP, so a client whose backend refuses falls back to the same next one every time.
pub(super) async fn connect_backend(
    peer: SocketAddr,
    snapshot: &Snapshot,
    balancer: &Service,
) -> Option<(ConnectionGuard, TcpStream)> {
    let mut tried: Vec<usize> = Vec::new();
    let mut queued: Option<(QueueSlot<'_>, tokio::time::Instant)> = None;
    loop {
        // Registered before the pick, so a release between the pick and the wait is not lost.
        let released = balancer.signals.released.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        let Some((index, guard)) = snapshot.pick(&tried, peer.ip()) else {
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
        let connecting = Instant::now();
        match connect(guard.backend(), snapshot.config.timeouts.connect).await {
            Ok(stream) => {
                let stats = guard.backend().stats();
                stats.connect_duration.observe(connecting.elapsed());
                return Some((guard, stream));
            }
            Err(e) if fault::classify(&e) == Fault::Ours => {
                // Our own shortage says nothing about the backend: no health penalty. Still
                // try another: local ports run out per destination, so another backend may
                // well be reachable (and out of descriptors, the others fail as fast).
                tried.push(index);
                let backend = guard.backend();
                error!(
                    "{peer}: cannot open a connection to backend {} ({}) of service {}: {e} (ballast's own shortage, not counted against the backend)",
                    backend.name, backend.addr, backend.service
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
                    "{peer}: backend {} ({}) of service {} connect failed: {e}; trying another",
                    backend.name, backend.addr, backend.service
                );
                backend.record_check(false, &format!("connect failed: {e}"));
            }
        }
    }
}

/// Opens a TCP connection to `backend` within `limit`, with `TCP_NODELAY` set.
///
/// System calls are counted here, one set per client: `socket` (non-blocking from the
/// start), `setsockopt`, `connect`, and the registration. Whether the handshake worked is
/// read from the readiness epoll reports (writable, or error and hang-up), not from a
/// `getsockopt(SO_ERROR)` after every connect.
///
/// # Errors
/// The socket's own errors, the handshake's (refused, unreachable, reset), or `TimedOut`.
async fn connect(backend: &Backend, limit: Duration) -> io::Result<TcpStream> {
    let addr = backend.addr;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking(),
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => return TcpStream::from_std(socket.into()),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINPROGRESS as i32) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(socket.into())?;
    let ready = tokio::time::timeout(limit, stream.ready(Interest::WRITABLE | Interest::ERROR))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {limit:?}"),
            )
        })??;
    // A handshake that completed reports writable and nothing else: only a failed one needs
    // the kernel asked why (tokio's own connect asks every time, one getsockopt per
    // connection).
    if ready.is_error() || ready.is_write_closed() {
        return Err(stream
            .take_error()?
            .unwrap_or_else(|| io::ErrorKind::ConnectionRefused.into()));
    }
    Ok(stream)
}
