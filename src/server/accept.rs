//! The accept loop of one worker: its listening socket, and accepting clients within the
//! connection limit.

use super::Acceptors;
use super::session::serve_connection;
use crate::listener::{self, AcceptBackoff};
use log::error;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;

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
pub(super) async fn accept_loop(acceptors: Arc<Acceptors>, worker: usize) {
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
