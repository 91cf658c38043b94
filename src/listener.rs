//! Listening sockets, for both binaries: bind with `SO_REUSEADDR` (and `SO_REUSEPORT` for
//! the worker model), a deep backlog, and the back-off after a failed `accept`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use log::{debug, error};
use tokio::net::TcpListener;

use crate::fault::{self, Fault};

/// Pending connections the kernel may queue before we accept them. tokio's default (1024)
/// overflows under a burst of proxied connects, and a dropped SYN stalls its client for a
/// whole second before the retry.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds a listening socket with a deep backlog, so bursts of connections wait in the kernel
/// rather than being refused.
///
/// # Errors
/// The socket's: `AddrInUse` when something else listens on `addr` (even with
/// `SO_REUSEPORT`, which a plain bind probe rules out first), `AddrNotAvailable` for an
/// address that is not this machine's, `PermissionDenied` for a privileged port.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    // SO_REUSEPORT would let a second balancer (or a stray copy of this one) share the port
    // silently and take half its connections: a plain bind first makes that an error.
    if addr.port() != 0 {
        reusable_socket(addr)?.bind(&addr.into())?;
    }
    TcpListener::from_std(bind_worker(addr)?)
}

/// A TCP socket for `addr` with `SO_REUSEADDR`, so a restart binds despite TIME_WAIT.
fn reusable_socket(addr: SocketAddr) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    Ok(socket)
}

/// A non-blocking listening socket with `SO_REUSEPORT`, so that every worker can bind one of
/// its own to the same address.
pub(crate) fn bind_worker(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = reusable_socket(addr)?;
    socket.set_nonblocking(true)?;
    // Accepted sockets inherit TCP_NODELAY on Linux: one system call per client saved.
    socket.set_tcp_nodelay(true)?;
    crate::relay::limit_unsent(&socket);
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Accept errors are either per-connection (the client gave up before we accepted it) or
/// ballast's own shortage (`Fault::Ours`: out of file descriptors or memory), where
/// retrying at once would spin a core: back off, doubling up to a second.
pub(crate) struct AcceptBackoff {
    /// What failed, for the log: `accept`, `admin accept`, `demo accept`.
    what: &'static str,
    delay: Option<Duration>,
}

impl AcceptBackoff {
    /// A back-off that names `what` in its log lines.
    pub(crate) fn new(what: &'static str) -> AcceptBackoff {
        AcceptBackoff { what, delay: None }
    }

    /// Forgets the back-off after a successful accept.
    pub(crate) fn reset(&mut self) {
        self.delay = None;
    }

    /// Logs `e` and, when it is ballast's own shortage, sleeps before the next accept.
    pub(crate) async fn on_error(&mut self, e: io::Error) {
        if fault::classify(&e) == Fault::Peer {
            debug!("{} failed: {e}", self.what);
            return;
        }
        let delay = self.delay.map_or(Duration::from_millis(10), |d| {
            (d * 2).min(Duration::from_secs(1))
        });
        self.delay = Some(delay);
        error!("{} failed: {e}; retrying in {delay:?}", self.what);
        tokio::time::sleep(delay).await;
    }
}
