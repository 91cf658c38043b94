//! A client of a service with routes: its TLS ClientHello, peeked and left in the socket
//! (the backend gets every byte unchanged), and where its server name leads.

use crate::balancer::Service;
use crate::routes::Routes;
use crate::tls_hello::{self, Parsed};
use log::debug;
use nix::sys::socket::{MsgFlags, recv};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// How a client of a service with routes was routed, as its access line tells it.
pub(super) enum Routed {
    /// Its server name matched a route: to the backends of `target`.
    Matched { sni: String, target: Arc<Service> },
    /// Its server name matched no route: to the service's own backends.
    Unmatched { sni: String },
    /// Its ClientHello names no server: to the service's own backends.
    NoSni,
    /// Its first bytes are not a TLS ClientHello ballast can read: to the service's own
    /// backends.
    NotTls,
}

impl Routed {
    /// The service whose backends the client goes to, when not the listening service's own.
    pub(super) fn target(&self) -> Option<&Arc<Service>> {
        match self {
            Routed::Matched { target, .. } => Some(target),
            _ => None,
        }
    }
}

impl fmt::Display for Routed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Routed::Matched { sni, target } => write!(f, "sni {sni} via service {}", target.name),
            Routed::Unmatched { sni } => write!(f, "sni {sni}, no route"),
            Routed::NoSni => f.write_str("no sni"),
            Routed::NotTls => f.write_str("not TLS"),
        }
    }
}

/// Reads the ClientHello of client `peer` of `service` within `limit`, and routes it by
/// the service's route table as it stands once the ClientHello is whole (a reload while the
/// client was still sending has its say): to the target of the route its server name
/// matches, or else to the service's own backends (`own_backends`: it has some). Returns
/// how it was routed, once that is known, with the verdict.
///
/// # Errors
/// For the log, with how far it got: the ClientHello did not arrive whole within `limit`,
/// the client closed or failed first, or it matched no route and the service has no
/// backends of its own.
pub(super) async fn route(
    client: &TcpStream,
    peer: SocketAddr,
    service: &Service,
    own_backends: bool,
    limit: Duration,
) -> (Option<Routed>, Result<(), String>) {
    let (routed, why) = match read_client_hello(client, limit).await {
        Err(why) => return (None, Err(why)),
        Ok(Parsed::Hello { sni: Some(sni), .. }) => match service
            .routes
            .load_full()
            .and_then(|routes: Arc<Routes<Arc<Service>>>| routes.find(&sni).map(Arc::clone))
        {
            Some(target) => return (Some(Routed::Matched { sni, target }), Ok(())),
            None => {
                let why = format!("no route for server name {sni:?}");
                (Routed::Unmatched { sni }, why)
            }
        },
        Ok(Parsed::Hello { sni: None, .. }) => {
            (Routed::NoSni, "a ClientHello without a server name".into())
        }
        Ok(Parsed::NotTls(not)) => (Routed::NotTls, format!("not a TLS ClientHello ({not})")),
        // Not returned by `read_client_hello`.
        Ok(Parsed::NeedMore) => (Routed::NotTls, "an unfinished ClientHello".into()),
    };
    if own_backends {
        debug!("{peer}: {why}: to service {}'s own backends", service.name);
        (Some(routed), Ok(()))
    } else {
        let why = format!(
            "{why}, and service {} has no backends of its own",
            service.name
        );
        (Some(routed), Err(why))
    }
}

/// Peeks at the client's first bytes until they are a whole ClientHello or plainly not one,
/// within `limit`, leaving every byte in the socket. A ClientHello split across segments
/// waits for the rest; readiness is cleared only when the socket has nothing more to show.
///
/// # Errors
/// A description for the log: no verdict within `limit`, or a client that closed (before
/// a verdict) or failed first.
async fn read_client_hello(client: &TcpStream, limit: Duration) -> Result<Parsed, String> {
    const CLOSED: &str = "closed before its TLS ClientHello ended";
    let read = async {
        let mut buf = vec![0u8; tls_hello::MAX_HELLO];
        loop {
            let ready = client
                .ready(Interest::READABLE)
                .await
                .map_err(|e| format!("reading the TLS ClientHello: {e}"))?;
            // After the client's FIN the socket stays readable: a partial ClientHello then is
            // all there will ever be (and waiting for more would spin).
            let closed = ready.is_read_closed();
            let peeked = client.try_io(Interest::READABLE, || {
                let n = recv(client.as_raw_fd(), &mut buf, MsgFlags::MSG_PEEK)
                    .map_err(io::Error::from)?;
                if n == 0 {
                    return Ok(Err(CLOSED.to_string()));
                }
                match tls_hello::parse(&buf[..n]) {
                    Parsed::NeedMore if closed => Ok(Err(CLOSED.to_string())),
                    // All there is so far, and not yet a verdict: wait for more.
                    Parsed::NeedMore => Err(io::ErrorKind::WouldBlock.into()),
                    verdict => Ok(Ok(verdict)),
                }
            });
            match peeked {
                Ok(verdict) => return verdict,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("reading the TLS ClientHello: {e}")),
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| format!("no complete TLS ClientHello within {limit:?}"))?
}
