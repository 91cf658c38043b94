//! Moves bytes both ways between client and backend until both directions are finished.
//!
//! Half-close is preserved: when one side stops sending (EOF), the other side's write half is
//! shut down so it sees EOF too, while the opposite direction keeps flowing. Two clocks bound
//! a relay: `idle` (no byte in either direction) and `half_close` (how long the second
//! direction may stay open once the first has finished), so a peer that never closes cannot
//! keep sockets in CLOSE_WAIT forever. An error in either direction ends the relay; dropping
//! both sockets then closes them.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Copy buffer per direction.
const BUFFER_SIZE: usize = 16 * 1024;

/// Time limits of one relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub idle: Duration,
    pub half_close: Duration,
}

/// Bytes moved by a relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    pub client_to_backend: u64,
    pub backend_to_client: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Backend => "backend",
        })
    }
}

/// How a relay ended.
#[derive(Debug)]
pub enum End {
    /// Both directions finished; `first` is the side that closed first.
    Closed { first: Side },
    /// No byte moved either way for the idle limit.
    Idle,
    /// One side closed and the other did not within the half-close limit.
    HalfCloseTimeout { closed: Side },
    /// Reading from or writing to `side` failed (typically a reset).
    Error { side: Side, error: io::Error },
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Closed { first } => write!(f, "{first} closed"),
            End::Idle => f.write_str("idle timeout"),
            End::HalfCloseTimeout { closed } => {
                write!(
                    f,
                    "half-close timeout ({closed} closed, the other side did not)"
                )
            }
            End::Error { side, error } => write!(f, "{side} error: {error}"),
        }
    }
}

/// Relays between `client` and `backend` until both directions have seen EOF, a limit
/// expires, or either side fails. Returns what was moved and how it ended.
pub async fn relay(
    mut client: TcpStream,
    mut backend: TcpStream,
    limits: Limits,
) -> (Transferred, End) {
    let (mut client_read, mut client_write) = client.split();
    let (mut backend_read, mut backend_write) = backend.split();
    let clock = Activity::new();
    let up_bytes = AtomicU64::new(0);
    let down_bytes = AtomicU64::new(0);
    let upstream = copy_then_shutdown(
        &mut client_read,
        &mut backend_write,
        [Side::Client, Side::Backend],
        &up_bytes,
        &clock,
    );
    let downstream = copy_then_shutdown(
        &mut backend_read,
        &mut client_write,
        [Side::Backend, Side::Client],
        &down_bytes,
        &clock,
    );
    tokio::pin!(upstream, downstream);
    let mut first_closed: Option<(Side, Instant)> = None;
    let timer = tokio::time::sleep(limits.idle);
    tokio::pin!(timer);
    let end = loop {
        tokio::select! {
            result = &mut upstream, if !matches!(first_closed, Some((Side::Client, _))) => {
                if let Err(end) = result {
                    break end;
                }
                match first_closed {
                    Some(_) => break End::Closed { first: Side::Backend },
                    None => first_closed = Some((Side::Client, Instant::now())),
                }
            }
            result = &mut downstream, if !matches!(first_closed, Some((Side::Backend, _))) => {
                if let Err(end) = result {
                    break end;
                }
                match first_closed {
                    Some(_) => break End::Closed { first: Side::Client },
                    None => first_closed = Some((Side::Backend, Instant::now())),
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                let idle_deadline = clock.last() + limits.idle;
                let half_close_deadline = first_closed.map(|(_, at)| at + limits.half_close);
                if let Some((closed, _)) = first_closed.filter(|_| half_close_deadline.is_some_and(|d| d <= now)) {
                    break End::HalfCloseTimeout { closed };
                }
                if idle_deadline <= now {
                    break End::Idle;
                }
                let next = half_close_deadline.map_or(idle_deadline, |d| d.min(idle_deadline));
                timer.as_mut().reset(next);
            }
        }
        // A direction just finished: the half-close clock may now fire before the idle one.
        if let Some((_, at)) = first_closed {
            let deadline = (at + limits.half_close).min(clock.last() + limits.idle);
            if deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
            }
        }
    };
    let moved = Transferred {
        client_to_backend: up_bytes.load(Ordering::Relaxed),
        backend_to_client: down_bytes.load(Ordering::Relaxed),
    };
    (moved, end)
}

/// When a byte last moved in either direction. Atomics rather than cells only so the relay
/// future stays `Send`; both directions run in the same task.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Copies until EOF, then shuts down `to`'s write side so its peer sees the EOF. `sides`
/// names the peers of `from` and `to`, so an error says whose socket failed.
async fn copy_then_shutdown<R, W>(
    from: &mut R,
    to: &mut W,
    sides: [Side; 2],
    moved: &AtomicU64,
    clock: &Activity,
) -> Result<(), End>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let [from_side, to_side] = sides;
    let mut buf = vec![0u8; BUFFER_SIZE];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) => {
                return Err(End::Error {
                    side: from_side,
                    error,
                });
            }
        };
        clock.touch();
        if let Err(error) = to.write_all(&buf[..n]).await {
            return Err(End::Error {
                side: to_side,
                error,
            });
        }
        moved.fetch_add(n as u64, Ordering::Relaxed);
        clock.touch();
    }
    match to.shutdown().await {
        // The peer may already be gone; what we owed it was delivered.
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        Err(error) => Err(End::Error {
            side: to_side,
            error,
        }),
    }
}
