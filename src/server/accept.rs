//! The accept loop of one worker: its listening socket, and accepting clients within the
//! connection limit.

use super::session::serve_connection;
use super::workers::Listening;
use crate::balancer::{Count, Service};
use crate::listener::{self, AcceptBackoff};
use log::error;
use std::io;
use std::sync::Arc;
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

/// Accepts clients of one listening address on one worker until the address stops being
/// listened on.
///
/// A worker takes a connection slot of the service once it has accepted a client, not
/// before: with a backlog per worker, a worker that took the last free slot while its
/// backlog was empty would leave a client waiting in another's. At `max_connections` each
/// worker holds at most the one client it accepted until a slot frees, and stops accepting;
/// the others wait in the kernel's backlog.
pub(super) async fn accept_loop(listening: Arc<Listening>, worker: usize) {
    let listener = worker_socket(&listening.socket, worker);
    listening.started();
    let listener = match listener {
        Ok(listener) => listener,
        Err(e) => {
            error!(
                "worker {worker}: cannot accept on {}: {e}",
                listening.configured
            );
            return;
        }
    };
    let service = &listening.service;
    let mut backoff = AcceptBackoff::new("accept");
    loop {
        let slots = &service.slots;
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
            () = listening.stop.cancelled() => return,
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
        service.count(Count::Accepted);
        service
            .connections
            .spawn(connection_task(client, peer, Arc::clone(service), permit));
    }
}

/// The task of one client connection: served, then its connection slot given back.
///
/// Its size is every connection's memory while idle: mimalloc serves the task from a size
/// class, and a future that grows past 1 KiB moves idle connections from 1.5 to 2 KiB each
/// (the test below guards it).
// Not an `async fn`: that keeps its arguments in the task beside the ones it hands to
// `serve_connection`, 16 bytes more per connection.
#[allow(clippy::manual_async_fn)]
fn connection_task(
    client: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    service: Arc<Service>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send {
    async move {
        serve_connection(client, peer, service).await;
        drop(permit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest task measured with idle connections at 1.5 KiB each (scripts/bench.sh):
    /// 1008 bytes in a release build. Unoptimised builds lay the same task out larger
    /// (1064 bytes for those 1008), so the tests, which CI runs unoptimised, hold that
    /// build to its own figure: any growth fails here first.
    const LARGEST_KNOWN_GOOD: usize = if cfg!(debug_assertions) { 1064 } else { 1008 };

    #[tokio::test]
    async fn a_connection_task_stays_within_its_size_class() {
        let text = r#"(listen: "127.0.0.1:0", algorithm: RoundRobin,
            backends: [(name: "b", addr: "127.0.0.1:9")])"#;
        let config =
            crate::config::Config::parse(text, std::path::Path::new("t.ron")).expect("config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client_side = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (client, peer) = listener.accept().await.expect("accept");
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let permit = slots.try_acquire_owned().expect("permit");
        let service = Service::new(config.services[0].clone(), Arc::default(), Arc::default());
        let task = connection_task(client, peer, Arc::new(service), permit);
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= LARGEST_KNOWN_GOOD,
            "a connection's task is {size} bytes, over {LARGEST_KNOWN_GOOD}: idle memory per connection would grow"
        );
    }
}
