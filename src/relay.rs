//! Moves bytes both ways between two sockets until both directions are finished.
//!
//! Half-close is preserved: when one side stops sending (EOF), the other side's write half is
//! shut down so it sees EOF too, while the opposite direction keeps flowing. An error in either
//! direction ends the relay; dropping both sockets then closes them.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Copy buffer per direction.
const BUFFER_SIZE: usize = 16 * 1024;

/// Bytes moved by a finished relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    pub client_to_backend: u64,
    pub backend_to_client: u64,
}

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both sides closed their sending direction.
    Closed(Transferred),
    /// A read or write failed (typically a reset); the byte counts so far are included.
    Failed(Transferred, io::Error),
}

/// Relays between `client` and `backend` until both directions have seen EOF, or until
/// either fails.
pub async fn relay(mut client: TcpStream, mut backend: TcpStream) -> RelayEnd {
    let (mut client_read, mut client_write) = client.split();
    let (mut backend_read, mut backend_write) = backend.split();
    let mut moved = Transferred::default();
    let upstream = copy_then_shutdown(&mut client_read, &mut backend_write);
    let downstream = copy_then_shutdown(&mut backend_read, &mut client_write);
    tokio::pin!(upstream, downstream);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            result = &mut upstream, if !up_done => {
                up_done = true;
                match result {
                    Ok(n) => moved.client_to_backend = n,
                    Err((n, e)) => {
                        moved.client_to_backend = n;
                        return RelayEnd::Failed(moved, e);
                    }
                }
            }
            result = &mut downstream, if !down_done => {
                down_done = true;
                match result {
                    Ok(n) => moved.backend_to_client = n,
                    Err((n, e)) => {
                        moved.backend_to_client = n;
                        return RelayEnd::Failed(moved, e);
                    }
                }
            }
        }
    }
    RelayEnd::Closed(moved)
}

/// Copies until EOF, then shuts down `to`'s write side so the peer sees the EOF. Returns the
/// bytes copied, also on error.
async fn copy_then_shutdown<R, W>(from: &mut R, to: &mut W) -> Result<u64, (u64, io::Error)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err((total, e)),
        };
        if let Err(e) = to.write_all(&buf[..n]).await {
            return Err((total, e));
        }
        total += n as u64;
    }
    match to.shutdown().await {
        // The peer may already be gone; the data we owed it was delivered or it would not
        // have closed, so this is not a failure of the relay.
        Ok(()) => Ok(total),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(total),
        Err(e) => Err((total, e)),
    }
}
