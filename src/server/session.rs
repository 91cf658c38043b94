//! One client connection from accept to close: a backend, the relay, and its access line.

use super::connect::connect_backend;
use super::hello::{self, Routed};
use crate::backend::ConnectionGuard;
use crate::balancer::{Count, Service, Snapshot};
use crate::config::AccessLog;
use crate::proxy_protocol::{self, Header};
use crate::relay;
use log::warn;
use nix::sys::socket::{MsgFlags, recv};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Serves one client of `service`: a backend (of the service its TLS server name routes to,
/// for a service with routes), then the relay until both sides are done or the service's
/// cut-off (the end of a shutdown's or a removal's grace period) closes it.
pub(super) async fn serve_connection(
    client: TcpStream,
    mut peer: SocketAddr,
    service: Arc<Service>,
) {
    let started = Instant::now();
    // An IPv4 client of a dual-stack `[::]` listener is an IPv4 client: so it is logged and
    // passed on in PROXY headers (TCP4).
    peer = canonical(peer);
    let snapshot = service.snapshot();
    let cut_off = &service.cut_off;
    let access_log = snapshot.config.access_log;
    // Boxed so that its larger state (the cut-off waiter included) is freed once connected,
    // instead of sizing every long-lived connection's task for it.
    let connecting = Box::pin(async {
        tokio::select! {
            connected = set_up(&client, peer, &snapshot, &service) => Some(connected),
            () = cut_off.raised() => None,
        }
    });
    // One address for the client across the relay (the header's, where one was read): each
    // value kept across an await sizes every connection's task. So is how a client of a
    // service with routes was routed boxed: one pointer in every task, and only clients of
    // services with routes pay for more.
    let (guard, upstream, routed) = match connecting.await {
        None => {
            access(
                access_log,
                &service.name,
                format_args!(
                    "{peer} -> -: 0 bytes up, 0 bytes down, {} ms, {}",
                    started.elapsed().as_millis(),
                    relay::End::Stopped
                ),
            );
            return;
        }
        Some((from, routed, Err(why))) => {
            warn!("{from}: {why}; closing the client");
            access(
                access_log,
                &service.name,
                format_args!(
                    "{from} -> -{}: 0 bytes up, 0 bytes down, {} ms, {why}",
                    Label(routed.as_deref()),
                    started.elapsed().as_millis()
                ),
            );
            return;
        }
        Some((from, routed, Ok(None))) => {
            service.count(Count::NoBackend);
            access(
                access_log,
                &service.name,
                format_args!(
                    "{from} -> -{}: 0 bytes up, 0 bytes down, {} ms, no backend",
                    Label(routed.as_deref()),
                    started.elapsed().as_millis()
                ),
            );
            return;
        }
        Some((from, routed, Ok(Some((guard, upstream))))) => {
            peer = from;
            (guard, upstream, routed)
        }
    };
    let backend = Arc::clone(guard.backend());
    backend.stats().total.fetch_add(1, Ordering::Relaxed);
    // A routed client is relayed as its target's clients are.
    let limits = match routed.as_deref().and_then(Routed::target) {
        Some(target) => target.snapshot().relay_limits,
        None => snapshot.relay_limits,
    };
    drop(snapshot);
    let stats = backend.stats();
    let totals = relay::Totals {
        to_backend: &stats.bytes_to_backend,
        to_client: &stats.bytes_to_client,
    };
    let (moved, end) = relay::relay(client, upstream, &limits, totals, cut_off).await;
    let lasted = started.elapsed();
    stats.connection_duration.observe(lasted);
    // Released before the log line, so whoever reads the log sees the count already down.
    drop(guard);
    access(
        access_log,
        &service.name,
        format_args!(
            "{peer} -> {} ({}){}: {} bytes up, {} bytes down, {} ms, {end}",
            backend.name,
            backend.addr,
            Label(routed.as_deref()),
            moved.client_to_backend,
            moved.backend_to_client,
            lasted.as_millis()
        ),
    );
}

/// How a client of a service with routes was routed, on its access line: ` [sni NAME via
/// service TARGET]`, ` [sni NAME, no route]`, ` [no sni]` or ` [not TLS]`; nothing for a
/// service without routes.
struct Label<'a>(Option<&'a Routed>);

impl std::fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(routed) => write!(f, " [{routed}]"),
            None => Ok(()),
        }
    }
}

/// One access-log line per finished connection, like HAProxy's `tcplog`, headed by the
/// service the client connected to, under the log target `ballast::access` so it can be
/// filtered on its own.
fn access(level: AccessLog, service: &str, line: std::fmt::Arguments<'_>) {
    let level = match level {
        AccessLog::Off => return,
        AccessLog::Debug => log::Level::Debug,
        AccessLog::Info => log::Level::Info,
    };
    log::log!(target: "ballast::access", level, "{service}: {line}");
}

/// What came of setting up a connection: a backend connected (with its PROXY header sent if
/// it wants one), none available (`Ok(None)`), or the client turned away for what it sent.
type SetUp = Result<Option<(ConnectionGuard, TcpStream)>, String>;

/// Reads the client's PROXY header when the configuration expects one, and its TLS
/// ClientHello when the service has routes; then connects a backend (of the service the
/// ClientHello's server name routes to, or of the service itself) and sends it a PROXY
/// header when it asks for one. Returns the client's address (the header's, where one was
/// read) and how it was routed, with the outcome.
async fn set_up(
    client: &TcpStream,
    peer: SocketAddr,
    snapshot: &Snapshot,
    service: &Service,
) -> (SocketAddr, Option<Box<Routed>>, SetUp) {
    let mut source = peer;
    let mut destination = None;
    if snapshot.config.accept_proxy {
        match read_proxy_header(client, snapshot.config.timeouts.connect).await {
            Ok(Header::Proxied {
                source: from,
                destination: to,
            }) => {
                source = from;
                destination = Some(to);
            }
            Ok(Header::Local) => {}
            Err(why) => {
                service.count(Count::BadProxyHeader);
                return (peer, None, Err(why));
            }
        }
    }
    let mut routed = None;
    // The configuration first: a service without routes reads no more than that.
    if !snapshot.config.routes.is_empty() {
        let (how, verdict) = hello::route(
            client,
            source,
            service,
            !snapshot.config.backends.is_empty(),
            snapshot.config.timeouts.client_hello,
        )
        .await;
        routed = how.map(Box::new);
        if let Err(why) = verdict {
            return (source, routed, Err(why));
        }
    }
    let target = routed
        .as_deref()
        .and_then(Routed::target)
        .map(|target| (Arc::clone(target), target.snapshot()));
    let (snapshot, service) = match &target {
        Some((target, snapshot)) => (&**snapshot, &**target),
        None => (snapshot, service),
    };
    let Some((guard, mut upstream)) = connect_backend(source, snapshot, service).await else {
        return (source, routed, Ok(None));
    };
    if let Some(version) = guard.backend().config.send_proxy {
        let destination = match destination {
            Some(to) => to,
            None => match client.local_addr() {
                Ok(to) => canonical(to),
                Err(e) => {
                    return (
                        source,
                        routed,
                        Err(format!("cannot read the listening address: {e}")),
                    );
                }
            },
        };
        let header = proxy_protocol::encode(version, source, destination);
        if let Err(e) = upstream.write_all(&header).await {
            let backend = guard.backend();
            return (
                source,
                routed,
                Err(format!(
                    "cannot send the PROXY header to backend {} ({}): {e}",
                    backend.name, backend.addr
                )),
            );
        }
    }
    (source, routed, Ok(Some((guard, upstream))))
}

/// Reads one PROXY protocol header (v1 or v2) from `client` within `limit`, taking exactly
/// its bytes: what follows is the client's stream. The bytes are peeked until the header is
/// whole, so a header split across segments waits for the rest, and readiness is cleared
/// only when the socket has nothing more to show.
///
/// # Errors
/// A description for the log: a malformed or oversized header, one that did not arrive
/// within `limit`, or a client that closed or failed first.
async fn read_proxy_header(client: &TcpStream, limit: Duration) -> Result<Header, String> {
    let read = async {
        let mut buf = [0u8; proxy_protocol::MAX_HEADER];
        loop {
            let ready = client
                .ready(Interest::READABLE)
                .await
                .map_err(|e| format!("reading the PROXY header: {e}"))?;
            // After the client's FIN the socket stays readable: a partial header then is all
            // there will ever be (and waiting for more would spin).
            let closed = ready.is_read_closed();
            let peeked = client.try_io(Interest::READABLE, || {
                let n = recv(client.as_raw_fd(), &mut buf, MsgFlags::MSG_PEEK)
                    .map_err(io::Error::from)?;
                if n == 0 {
                    return Ok(Err("closed before its PROXY header ended".to_string()));
                }
                match proxy_protocol::parse(&buf[..n]) {
                    Ok(Some(found)) => Ok(Ok(found)),
                    Ok(None) if closed => Ok(Err("closed before its PROXY header ended".into())),
                    // All there is so far, and not yet a whole header: wait for more.
                    Ok(None) => Err(io::ErrorKind::WouldBlock.into()),
                    Err(e) => Ok(Err(e.to_string())),
                }
            });
            let (header, len) = match peeked {
                Ok(found) => found?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(format!("reading the PROXY header: {e}")),
            };
            // Take exactly the header; the bytes were there a moment ago and still are.
            let mut taken = 0;
            while taken < len {
                client
                    .readable()
                    .await
                    .map_err(|e| format!("reading the PROXY header: {e}"))?;
                match client.try_read(&mut buf[taken..len]) {
                    Ok(0) => return Err("closed before its PROXY header ended".to_string()),
                    Ok(n) => taken += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(format!("reading the PROXY header: {e}")),
                }
            }
            return Ok(header);
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| format!("no complete PROXY header within {limit:?}"))?
}

/// `addr` with an IPv4-mapped IPv6 address (`[::ffff:a.b.c.d]`, as a dual-stack socket
/// reports IPv4 peers) written as the IPv4 address it is.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
