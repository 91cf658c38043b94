//! The server's supervisor: the services' listening addresses, worker threads, reloads,
//! shutdown.
//!
//! Each accepted connection gets a backend from its service's selector (failing over past
//! backends that refuse or time out, queueing briefly when every backend is at its
//! connection limit), then the relay. A service with routes first peeks at the client's TLS
//! ClientHello and takes the backend from the service its server name routes to. A new configuration is swapped in for new
//! connections while established ones continue: services it adds start listening, services
//! it removes stop accepting at once and their connections get the service's grace period,
//! services it keeps are reloaded in place. On shutdown every listener closes at once and
//! open connections get a bounded grace period to finish.
//!
//! - `workers`: the worker threads and the listening addresses they accept on.
//! - `accept`: one worker's accept loop for one address.
//! - `connect`: pick, connect, failover and the queue.
//! - `hello`: a client's TLS ClientHello, peeked, and where its server name routes it.
//! - `session`: one connection from accept to close, and its access line.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use log::{error, info, warn};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::balancer::{Balancer, Service};
use crate::config::{Config, ServiceConfig};
use crate::dns::Resolved;
use crate::listener;
use crate::monitor;
use crate::relay;
use crate::reload;
use crate::systemd;

mod accept;
mod connect;
mod hello;
mod names;
mod session;
mod workers;

use names::HostNames;
pub use names::unresolved;
use workers::{Listening, Workers};

/// A service's address, bound and not yet served.
#[derive(Debug)]
struct Bound {
    service: String,
    configured: SocketAddr,
    socket: std::net::TcpListener,
}

/// A balancer whose listening addresses are bound; [`Server::run`] serves them.
#[derive(Debug)]
pub struct Server {
    config: Config,
    bound: Vec<Bound>,
}

impl Server {
    /// Binds every listening address of every service in `config` (IPv4 and IPv6 alike),
    /// so that a port taken or not ours is reported before anything runs. Must be called
    /// inside a tokio runtime.
    ///
    /// # Errors
    /// The first address that cannot be bound, with the service that asked for it.
    pub fn bind(config: Config) -> io::Result<Server> {
        let mut bound = Vec::new();
        for service in &config.services {
            for &addr in &service.listen {
                bound.push(Bound {
                    service: service.name.clone(),
                    configured: addr,
                    socket: bind_service(addr, &service.name, &[])?,
                });
            }
        }
        Ok(Server { config, bound })
    }

    /// Each bound address with the service it belongs to, in configuration order: the
    /// actual port where the configuration asked for port 0.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.bound
            .iter()
            .map(|b| {
                let addr = b.socket.local_addr().unwrap_or(b.configured);
                (b.service.clone(), addr)
            })
            .collect()
    }

    /// Serves until `shutdown` completes; see [`Server::run_with_reloads`].
    ///
    /// # Errors
    /// As [`Server::run_with_reloads`].
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let (_keep_open, reloads) = mpsc::channel(1);
        self.run_with_reloads(shutdown, reloads).await
    }

    /// Serves every service, switching to each configuration received on `reloads` (for
    /// new connections; established ones continue), until `shutdown` completes. Then it
    /// stops accepting and gives each service's open connections up to its grace period
    /// before closing them.
    ///
    /// Connections are served by `config.workers` workers: one on the caller's runtime and
    /// the others on threads of their own, each with a single-threaded runtime and its own
    /// `SO_REUSEPORT` socket per address. A connection lives on one thread from accept to
    /// close (nginx's worker model), so no wake-up crosses threads.
    ///
    /// # Errors
    /// Only at start: a worker thread cannot be started, or the admin listener cannot bind
    /// its address. Failures after that (accept errors, backends, addresses a reload cannot
    /// bind) are logged and served around, never returned.
    pub async fn run_with_reloads(
        self,
        shutdown: impl Future<Output = ()>,
        mut reloads: mpsc::Receiver<Config>,
    ) -> io::Result<()> {
        let Server { config, bound } = self;
        relay::zero_copy::set_max_pipes(config.max_pipes);
        let background = TaskTracker::new();
        let mut host_names = HostNames::new();
        tokio::pin!(shutdown);
        let resolved = tokio::select! {
            () = &mut shutdown => {
                host_names.stop();
                systemd::stopping("stopped before serving");
                info!("stopped before serving");
                return Ok(());
            }
            resolved = host_names.follow(&config, &background) => resolved,
        };
        if !names::can_serve(&config, &resolved) {
            // Backends may well appear (a Kubernetes headless Service whose pods are not
            // ready yet): serve, and stay not ready (`/readyz`) until they do.
            warn!("{NO_SERVICE_CAN_SERVE} yet; serving, and not ready until a name resolves");
        }
        let balancer = Arc::new(Balancer::new(config, &resolved));
        let services = balancer.services();
        let finished = CancellationToken::new();
        let workers = Workers::start(services.config.workers, &finished)?;
        let mut supervisor = Supervisor {
            balancer: Arc::clone(&balancer),
            workers,
            listening: HashMap::new(),
            monitors: HashMap::new(),
            background,
            retiring: TaskTracker::new(),
        };
        for b in bound {
            let Some(service) = services.get(&b.service) else {
                continue;
            };
            supervisor
                .listen(Arc::new(Listening::new(
                    Arc::clone(service),
                    b.configured,
                    b.socket,
                )))
                .await;
        }
        for service in &services.list {
            log_service("listening on", &supervisor.addrs_of(&service.name), service);
            supervisor.start_monitors(service);
        }
        let stop_admin = CancellationToken::new();
        let mut admin_stop = stop_admin.child_token();
        // Started with the first admin listener and kept across its restarts.
        let mut chart = None;
        if let Some(addr) = services.config.admin {
            let chart = chart_of(&mut chart, &balancer, &supervisor.background, &stop_admin);
            admin_stop = start_admin(addr, &balancer, chart, &supervisor.background, &stop_admin)?;
        }
        drop(services);
        // Every listener is bound and served, and so is the admin listener.
        systemd::ready(&supervisor.summary());
        let mut reloads_open = true;

        loop {
            let event = tokio::select! {
                () = &mut shutdown => Control::Shutdown,
                config = reloads.recv(), if reloads_open => Control::Reload(config.map(Box::new)),
                resolved = host_names.changed() => Control::Resolved(resolved),
            };
            let config = match event {
                Control::Shutdown => break,
                Control::Reload(None) => {
                    reloads_open = false;
                    continue;
                }
                Control::Resolved(resolved) => {
                    supervisor.resolved(&resolved);
                    continue;
                }
                Control::Reload(Some(config)) => *config,
            };
            // A moved admin listener is bound now and served only once the services are in
            // force too, so that a reload refused for one of their addresses leaves it
            // where it was: `Some(None)` turns it off, `None` leaves it as it is.
            let next_admin = if config.admin == balancer.services().config.admin {
                None
            } else {
                match config.admin.map(bind_admin).transpose() {
                    Ok(listener) => Some(listener),
                    Err(e) => {
                        reload::rejected(e);
                        continue;
                    }
                }
            };
            // Resolving new names can take seconds: a shutdown meanwhile wins.
            let resolved = tokio::select! {
                () = &mut shutdown => break,
                resolved = host_names.follow(&config, &supervisor.background) => resolved,
            };
            if !names::can_serve(&config, &resolved) {
                warn!("reload: {NO_SERVICE_CAN_SERVE} yet; not ready until a name resolves");
            }
            let verdict = supervisor.reload(config, &resolved).await;
            if let Err(e) = verdict {
                reload::rejected(e);
                let running = balancer.services();
                let resolved = tokio::select! {
                    () = &mut shutdown => break,
                    resolved = host_names.follow(&running.config, &supervisor.background) => resolved,
                };
                supervisor.resolved(&resolved);
                continue;
            }
            if let Some(next) = next_admin {
                admin_stop.cancel();
                admin_stop = match next {
                    Some(bound) => serve_admin(
                        bound,
                        &balancer,
                        chart_of(&mut chart, &balancer, &supervisor.background, &stop_admin),
                        &supervisor.background,
                        &stop_admin,
                    ),
                    None => stop_admin.child_token(),
                };
            }
            if let Ok(reloaded) = verdict {
                systemd::ready(&reloaded);
            }
        }

        // From now on `/readyz` says `draining`: the admin listener keeps answering until the
        // drain is over, so probes and health checks take this instance out meanwhile.
        balancer.start_draining();
        // Reloads asked for from now on are not started (nor announced to systemd).
        reloads.close();
        let open: usize = balancer
            .services()
            .list
            .iter()
            .map(|s| s.connections.len())
            .sum();
        systemd::stopping(&format!(
            "shutting down: draining {}",
            counted(open, "open connection")
        ));
        // Stop accepting everywhere before anything else, so new clients are refused at once.
        let listening: Vec<Arc<Listening>> = supervisor.listening.drain().map(|(_, l)| l).collect();
        for l in &listening {
            Workers::unlisten(l).await;
        }
        drop(listening);
        let threads = supervisor.workers.finish();
        host_names.stop();
        for (_, stop) in supervisor.monitors.drain() {
            stop.cancel();
        }
        supervisor.background.close();
        // Each service's grace period runs from now, side by side with the others'.
        for service in &balancer.services().list {
            supervisor
                .retiring
                .spawn(drain(Arc::clone(service), "shutting down"));
        }
        supervisor.retiring.close();
        supervisor.retiring.wait().await;
        // The drain is over (each service's is bounded by its grace period): the admin
        // listener goes last.
        stop_admin.cancel();
        finished.cancel();
        supervisor.background.wait().await;
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        });
        let _ = joined.await;
        info!("stopped");
        Ok(())
    }
}

/// Binds `addr` for `service`. An address that a running listener already holds (moving
/// from one service to another on reload) is shared with it rather than bound anew, which
/// the plain-bind probe of [`listener::bind`] would refuse.
fn bind_service(
    addr: SocketAddr,
    service: &str,
    held: &[&Listening],
) -> io::Result<std::net::TcpListener> {
    if addr.port() != 0
        && let Some(holder) = held.iter().find(|l| l.configured == addr)
    {
        return holder.socket.try_clone();
    }
    listener::bind(addr)
        .and_then(tokio::net::TcpListener::into_std)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("service {service}: cannot listen on {addr}: {e}"),
            )
        })
}

/// A valid configuration that cannot serve a client yet.
const NO_SERVICE_CAN_SERVE: &str =
    "no service can serve: every backend is a host name that resolves to nothing";

/// What woke the control loop.
enum Control {
    Shutdown,
    Reload(Option<Box<Config>>),
    /// Backends' host names resolve to new addresses.
    Resolved(Arc<Resolved>),
}

/// The supervisor's own state: what listens, what monitors, what drains.
struct Supervisor {
    balancer: Arc<Balancer>,
    workers: Workers,
    /// Every listening address, by service name and configured address.
    listening: HashMap<(String, SocketAddr), Arc<Listening>>,
    /// The stop token of each service's health checks and load pollers.
    monitors: HashMap<String, CancellationToken>,
    background: TaskTracker,
    /// Removed services whose connections are finishing.
    retiring: TaskTracker,
}

impl Supervisor {
    async fn listen(&mut self, listening: Arc<Listening>) {
        self.workers.listen(&listening).await;
        let key = (listening.service.name.clone(), listening.configured);
        self.listening.insert(key, listening);
    }

    /// The addresses `service` listens on, in configuration order.
    fn addrs_of(&self, service: &str) -> Vec<SocketAddr> {
        let services = self.balancer.services();
        let Some(config) = services.config.service(service) else {
            return Vec::new();
        };
        config
            .listen
            .iter()
            .filter_map(|&a| self.listening.get(&(service.to_string(), a)))
            .map(|l| l.local_addr())
            .collect()
    }

    /// (Re)starts the health checks and load pollers of `service`'s current backends, and
    /// the steps of its slow starts.
    fn start_monitors(&mut self, service: &Arc<Service>) {
        let stop = CancellationToken::new();
        let snapshot = service.snapshot();
        monitor::spawn(
            &snapshot.backends,
            &snapshot.config,
            &self.background,
            &stop,
        );
        monitor::spawn_ramp(service, &self.background, &stop);
        if let Some(previous) = self.monitors.insert(service.name.clone(), stop) {
            previous.cancel();
        }
    }

    /// Rebuilds the services whose host names now resolve differently.
    fn resolved(&mut self, resolved: &Arc<Resolved>) {
        for service in &self.balancer.services().list {
            if let Some(snapshot) = service.resolve(resolved) {
                info!(
                    "service {}: {} after a DNS change",
                    service.name,
                    counted(snapshot.backends.len(), "backend")
                );
                self.start_monitors(service);
            }
        }
    }

    /// Puts `config` in force. Every new address is bound before anything changes, so a
    /// reload that cannot be served whole is refused whole. Returns what it logged:
    /// `reloaded: listening on ...; N services (...)`.
    ///
    /// # Errors
    /// An address that cannot be bound.
    async fn reload(&mut self, config: Config, resolved: &Arc<Resolved>) -> io::Result<String> {
        let current = self.balancer.services();
        if config.workers != current.config.workers {
            warn!(
                "reload: workers stays at {} until a restart",
                current.config.workers
            );
        }
        let wanted: HashSet<(String, SocketAddr)> = config
            .services
            .iter()
            .flat_map(|s| s.listen.iter().map(|&a| (s.name.clone(), a)))
            .collect();
        let mut fresh = Vec::new();
        {
            let held: Vec<&Listening> = self.listening.values().map(|l| l.as_ref()).collect();
            for service in &config.services {
                for &addr in &service.listen {
                    if self.listening.contains_key(&(service.name.clone(), addr)) {
                        continue;
                    }
                    fresh.push((
                        service.name.clone(),
                        addr,
                        bind_service(addr, &service.name, &held)?,
                    ));
                }
            }
        }
        relay::zero_copy::set_max_pipes(config.max_pipes);
        let snapshots: HashMap<String, Arc<crate::balancer::Snapshot>> = current
            .list
            .iter()
            .map(|s| (s.name.clone(), s.snapshot()))
            .collect();
        let (before, after) = self.balancer.reload(config, resolved);
        let mut report = Vec::new();
        for service in &after.list {
            let old = before.config.service(&service.name);
            let new = after.config.service(&service.name);
            match (old, new) {
                (None, _) => report.push(format!("{} added", service.name)),
                (Some(old), Some(new)) if old != new => {
                    resize_slots(
                        &service.slots,
                        old.limits.max_connections,
                        new.limits.max_connections,
                        &self.background,
                    );
                    report.push(format!("{} changed", service.name));
                }
                _ => {}
            }
            let rebuilt = snapshots
                .get(&service.name)
                .is_none_or(|snapshot| !Arc::ptr_eq(snapshot, &service.snapshot()));
            if rebuilt {
                self.start_monitors(service);
                if old.is_some() && old == new {
                    // Its entry is the same, but its backends are not (a host name resolves
                    // elsewhere now, or runtime weights were cleared).
                    report.push(format!("{} backends renewed", service.name));
                }
            }
        }
        // New addresses first, then the old ones go: an address moving between services is
        // never left unserved.
        for (name, addr, socket) in fresh {
            if let Some(service) = after.get(&name) {
                self.listen(Arc::new(Listening::new(Arc::clone(service), addr, socket)))
                    .await;
            }
        }
        let gone: Vec<(String, SocketAddr)> = self
            .listening
            .keys()
            .filter(|key| !wanted.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            if let Some(listening) = self.listening.remove(&key) {
                Workers::unlisten(&listening).await;
            }
        }
        for service in &before.list {
            if after.get(&service.name).is_some() {
                continue;
            }
            if let Some(stop) = self.monitors.remove(&service.name) {
                stop.cancel();
            }
            report.push(format!("{} removed", service.name));
            self.retiring
                .spawn(drain(Arc::clone(service), "service removed"));
        }
        for service in &after.list {
            log_service("serving", &self.addrs_of(&service.name), service);
        }
        let changes = if report.is_empty() {
            "no service changed".to_string()
        } else {
            report.join(", ")
        };
        let reloaded = format!("reloaded: {} ({changes})", self.summary());
        info!("{reloaded}");
        Ok(reloaded)
    }

    /// `listening on A, B; N services`: every address served, in configuration order.
    fn summary(&self) -> String {
        let services = self.balancer.services();
        let addrs: Vec<String> = services
            .list
            .iter()
            .flat_map(|s| self.addrs_of(&s.name))
            .map(|a| a.to_string())
            .collect();
        format!(
            "listening on {}; {}",
            addrs.join(", "),
            counted(services.list.len(), "service")
        )
    }
}

/// Stops `service`'s connections taking longer than its grace period: waits for them,
/// and past the grace period closes the rest.
async fn drain(service: Arc<Service>, why: &str) {
    let connections = &service.connections;
    connections.close();
    let grace = service.snapshot().config.timeouts.grace;
    if !connections.is_empty() {
        info!(
            "service {}: {why}: waiting up to {grace:?} for {} open connections",
            service.name,
            connections.len()
        );
    }
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        warn!(
            "service {}: grace period over: closing {} remaining connections",
            service.name,
            connections.len()
        );
        service.cut_off.raise();
        connections.wait().await;
    }
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
    let bound = bind_admin(addr)?;
    Ok(serve_admin(bound, balancer, chart, background, parent))
}

/// The admin listener, bound and not yet served, with its address.
type AdminListener = (tokio::net::TcpListener, SocketAddr);

/// Binds the admin listener's address.
fn bind_admin(addr: SocketAddr) -> io::Result<AdminListener> {
    let listener = listener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr} (admin): {e}")))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves the bound admin listener until the returned token (a child of `parent`) is
/// cancelled.
fn serve_admin(
    (listener, local): AdminListener,
    balancer: &Arc<Balancer>,
    chart: admin::Chart,
    background: &TaskTracker,
    parent: &CancellationToken,
) -> CancellationToken {
    let stop = parent.child_token();
    let (balancer, token) = (Arc::clone(balancer), stop.clone());
    background.spawn(async move {
        if let Err(e) = admin::serve(listener, balancer, chart, token).await {
            error!("admin listener on {local} stopped: {e}");
        }
    });
    info!("admin listening on http://{local}/");
    stop
}

fn log_service(what: &str, local: &[SocketAddr], service: &Service) {
    let snapshot = service.snapshot();
    let config: &ServiceConfig = &snapshot.config;
    let addrs: Vec<String> = local.iter().map(|a| a.to_string()).collect();
    if addrs.is_empty() {
        // A service without `listen`: its clients come through other services' routes.
        info!(
            "service {}: reached through routes only, algorithm {}, {}",
            service.name,
            config.algorithm,
            counted(snapshot.backends.len(), "backend")
        );
    } else {
        info!(
            "{what} {}, service {}, algorithm {}, {}",
            addrs.join(", "),
            service.name,
            config.algorithm,
            counted(snapshot.backends.len(), "backend")
        );
    }
    for route in &config.routes {
        info!(
            "service {}: server names {} routed to service {}",
            service.name,
            route.server_names.join(", "),
            route.service
        );
    }
    for b in &snapshot.backends {
        info!(
            "service {}: backend {} at {} weight {}",
            service.name, b.name, b.addr, b.weight
        );
    }
}

/// `1 backend`, `2 backends`.
fn counted(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}
