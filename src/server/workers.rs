//! The worker threads, and the listening addresses they accept on.
//!
//! Each worker is one thread with a single-threaded runtime (worker 0 is the supervisor's
//! own); every listening address of every service has one accept loop on every worker, each
//! with its own `SO_REUSEPORT` socket, and a connection lives on the worker that accepted
//! it (nginx's worker model). Workers are told about addresses as services come and go.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use log::{error, warn};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::accept::accept_loop;
use crate::balancer::Service;

/// How long starting or stopping a listening address may wait for every worker.
const SWITCH_LIMIT: Duration = Duration::from_secs(5);

/// One listening address of one service, served by an accept loop on every worker.
#[derive(Debug)]
pub(super) struct Listening {
    pub service: Arc<Service>,
    /// The address as configured (port 0 asks for a free one).
    pub configured: SocketAddr,
    /// The bound socket; workers other than 0 bind their own beside it.
    pub socket: std::net::TcpListener,
    /// Cancelled to stop accepting: the accept loops end and close their sockets.
    pub stop: CancellationToken,
    /// One permit per worker whose accept loop has started (or failed to).
    started: Semaphore,
    loops: TaskTracker,
}

impl Listening {
    pub(super) fn new(
        service: Arc<Service>,
        configured: SocketAddr,
        socket: std::net::TcpListener,
    ) -> Listening {
        Listening {
            service,
            configured,
            socket,
            stop: CancellationToken::new(),
            started: Semaphore::new(0),
            loops: TaskTracker::new(),
        }
    }

    /// The address clients reach, or the configured one if the socket cannot tell.
    pub(super) fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap_or(self.configured)
    }

    /// Reports that one worker's accept loop has started, or could not.
    pub(super) fn started(&self) {
        self.started.add_permits(1);
    }
}

/// The workers: a command channel to each, and their threads.
pub(super) struct Workers {
    commands: Vec<mpsc::UnboundedSender<Arc<Listening>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers: worker 0 as a task on the caller's runtime, the others on
    /// threads of their own that keep running until `finished` is cancelled (so their
    /// connections are driven to the end).
    ///
    /// # Errors
    /// A thread cannot be started.
    pub(super) fn start(count: usize, finished: &CancellationToken) -> std::io::Result<Workers> {
        let mut commands = Vec::with_capacity(count);
        let mut threads = Vec::new();
        for worker in 0..count {
            let (send, receive) = mpsc::unbounded_channel();
            commands.push(send);
            if worker == 0 {
                tokio::spawn(serve_commands(receive, 0));
                continue;
            }
            let finished = finished.clone();
            let thread = std::thread::Builder::new()
                .name(format!("ballast-worker-{worker}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match runtime {
                        Ok(runtime) => runtime.block_on(async {
                            serve_commands(receive, worker).await;
                            finished.cancelled().await;
                        }),
                        Err(e) => error!("worker {worker}: cannot start a runtime: {e}"),
                    }
                })?;
            threads.push(thread);
        }
        Ok(Workers { commands, threads })
    }

    /// Starts accepting on `listening` on every worker, and waits (bounded) until each has
    /// started, so the address is served everywhere when this returns.
    pub(super) async fn listen(&self, listening: &Arc<Listening>) {
        for (worker, commands) in self.commands.iter().enumerate() {
            if commands.send(Arc::clone(listening)).is_err() {
                error!(
                    "worker {worker} is gone: it cannot accept on {}",
                    listening.configured
                );
                listening.started();
            }
        }
        let all = u32::try_from(self.commands.len()).unwrap_or(u32::MAX);
        let started = tokio::time::timeout(SWITCH_LIMIT, listening.started.acquire_many(all));
        if started.await.is_err() {
            warn!(
                "not every worker accepts on {} within {SWITCH_LIMIT:?}",
                listening.local_addr()
            );
        }
    }

    /// Stops accepting on `listening` everywhere, and waits (bounded) until every accept
    /// loop has closed its socket.
    pub(super) async fn unlisten(listening: &Listening) {
        listening.stop.cancel();
        listening.loops.close();
        if tokio::time::timeout(SWITCH_LIMIT, listening.loops.wait())
            .await
            .is_err()
        {
            warn!(
                "not every worker stopped accepting on {} within {SWITCH_LIMIT:?}",
                listening.local_addr()
            );
        }
    }

    /// Tells the workers no more addresses come; returns their threads to join once every
    /// connection is gone.
    pub(super) fn finish(self) -> Vec<std::thread::JoinHandle<()>> {
        drop(self.commands);
        self.threads
    }
}

/// Runs an accept loop for every listening address sent to this worker, until the sender
/// is dropped.
async fn serve_commands(mut commands: mpsc::UnboundedReceiver<Arc<Listening>>, worker: usize) {
    while let Some(listening) = commands.recv().await {
        let loops = listening.loops.clone();
        loops.spawn(accept_loop(listening, worker));
    }
}
