//! One client connection from accept to close: a backend, the relay, and its access line.

use super::connect::connect_backend;
use crate::balancer::Balancer;
use crate::config::AccessLog;
use crate::relay;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::net::TcpStream;

/// Serves one client: a backend, then the relay until both sides are done or `cut_off`
/// (the end of the shutdown grace period) closes it.
pub(super) async fn serve_connection(
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
    let limits = snapshot.relay_limits;
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
