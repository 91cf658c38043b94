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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use std::task::{Context, Poll};

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod direction;
mod pool;
pub(crate) mod zero_copy;

use direction::Direction;

/// Time limits and copy strategy of one relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub idle: Duration,
    pub half_close: Duration,
    pub splice: Splice,
    /// Bytes of pipe to ask the kernel for when splicing (it may grant less).
    pub pipe_size: usize,
}

/// When a direction moves its bytes with `splice(2)` through a pipe instead of copying them
/// through user space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub enum Splice {
    /// Never: always copy.
    Off,
    /// Once a direction shows bulk traffic (a read fills a whole buffer), like HAProxy's
    /// `splice-auto`. Small request/response traffic keeps the cheaper plain copy.
    #[default]
    Auto,
    /// From the first byte.
    Always,
}

/// Bytes moved by a relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Transferred {
    pub client_to_backend: u64,
    pub backend_to_client: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
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
pub(crate) enum End {
    /// Both directions finished; `first` is the side that closed first.
    Closed { first: Side },
    /// No byte moved either way for the idle limit.
    Idle,
    /// One side closed and the other did not within the half-close limit.
    HalfCloseTimeout { closed: Side },
    /// Reading from or writing to `side` failed (typically a reset).
    Error { side: Side, error: io::Error },
    /// The caller raised `stop` (the shutdown grace period is over).
    Stopped,
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
            End::Stopped => f.write_str("closed at end of grace period"),
        }
    }
}

/// A one-way signal that ends every relay at once (the end of the shutdown grace period).
///
/// A relay registers with the token once and after that reads only the flag on each
/// wake-up: polling a token's future takes two locks shared by every connection on every
/// worker, while the flag is a cache line that changes once and so stays in every core's
/// cache.
#[derive(Debug, Default)]
pub(crate) struct StopSignal {
    raised: AtomicBool,
    token: CancellationToken,
}

impl StopSignal {
    pub(crate) fn raise(&self) {
        // The flag first: a relay woken by the token must find it set.
        self.raised.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub(crate) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Completes once the signal is raised.
    pub(crate) async fn raised(&self) {
        self.token.cancelled().await;
    }
}

/// Relays between `client` and `backend` until both directions have seen EOF, a limit
/// expires, either side fails or `stop` is raised. Returns what was moved and how it ended.
pub(crate) async fn relay(
    client: TcpStream,
    backend: TcpStream,
    limits: &Limits,
    totals: Totals<'_>,
    stop: &StopSignal,
) -> (Transferred, End) {
    // Made here rather than passed in, so an idle connection's task holds one waiter, not a
    // moved-in copy beside a pinned one.
    let mut waiter = std::pin::pin!(stop.token.cancelled());
    let mut flows = Flows {
        upstream: Direction::new([Side::Client, Side::Backend], limits.splice),
        downstream: Direction::new([Side::Backend, Side::Client], limits.splice),
        up_bytes: Tally::new(totals.to_backend),
        down_bytes: Tally::new(totals.to_client),
        clock: Activity::new(),
        registered: false,
        fin_owed: None,
        pipe_size: u32::try_from(limits.pipe_size).unwrap_or(u32::MAX),
    };
    let mut first_closed: Option<(Side, Instant)> = None;
    let timer = tokio::time::sleep(limits.idle);
    tokio::pin!(timer);
    let end = loop {
        // One hand-written poll for both directions and the clock: the readiness wakers live
        // in the sockets' own slots, so a connection waiting for bytes costs only this small
        // frame, not a waiter node per pending operation.
        let event = std::future::poll_fn(|cx| {
            if let Some(event) = flows.poll(cx, &client, &backend) {
                return Poll::Ready(event);
            }
            if stop.is_raised() {
                return Poll::Ready(Event::Stop);
            }
            if !flows.registered {
                // The waiter keeps this task's waker from now on; the flag does the rest.
                if waiter.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Stop);
                }
                flows.registered = true;
            }
            timer.as_mut().poll(cx).map(|()| Event::Timer)
        })
        .await;
        let clock = &flows.clock;
        match event {
            Event::Stop => break End::Stopped,
            Event::Finished(_, Err(end)) => break end,
            Event::Finished(side, Ok(())) => match first_closed {
                Some(_) => {
                    break End::Closed {
                        first: side.other(),
                    };
                }
                None => {
                    first_closed = Some((side, Instant::now()));
                    // The EOF is owed to the other side. Passed on after one turn of the
                    // event loop, it is often not needed: a peer that closes once it has
                    // its answer (HTTP with `Connection: close`) closes meanwhile, and then
                    // closing both sockets passes it on, one `shutdown` fewer per connection.
                    flows.fin_owed = Some(side.other());
                    tokio::task::yield_now().await;
                }
            },
            Event::Timer => {
                let now = Instant::now();
                match first_closed {
                    Some((closed, at)) => {
                        if half_close_deadline(at, clock, limits) <= now {
                            break End::HalfCloseTimeout { closed };
                        }
                    }
                    None => {
                        if clock.last() + limits.idle <= now {
                            break End::Idle;
                        }
                    }
                }
            }
        }
        let deadline = match first_closed {
            Some((_, at)) => half_close_deadline(at, clock, limits),
            None => clock.last() + limits.idle,
        };
        if deadline != timer.deadline() {
            timer.as_mut().reset(deadline);
        }
    };
    let cut_short = match end {
        End::Error { .. } | End::Stopped => true,
        // A timeout that strands bytes ballast has taken in but not delivered.
        End::Idle | End::HalfCloseTimeout { .. } => {
            flows.upstream.holds_bytes() || flows.downstream.holds_bytes()
        }
        End::Closed { .. } => false,
    };
    if cut_short {
        // Pass a failure or a cut-off on as a reset rather than a clean close, so the other
        // side cannot mistake a truncated stream for a complete one.
        for socket in [&client, &backend] {
            let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
        }
    }
    let moved = Transferred {
        client_to_backend: flows.up_bytes.get(),
        backend_to_client: flows.down_bytes.get(),
    };
    (moved, end)
}

/// The relay's own state, reached by its poll closure through one reference: the closure is
/// part of every idle connection's task, and each captured reference costs eight bytes there.
struct Flows<'a> {
    upstream: Direction,
    downstream: Direction,
    up_bytes: Tally<'a>,
    down_bytes: Tally<'a>,
    clock: Activity,
    /// Whether the stop waiter holds this task's waker yet.
    registered: bool,
    /// The side whose socket is still to be shut down for writing: the other side sent EOF.
    fin_owed: Option<Side>,
    /// `Limits::pipe_size`, kept here so the poll closure captures one reference fewer.
    pipe_size: u32,
}

impl Flows<'_> {
    /// Moves what both directions can move now; returns a direction's end, if one came.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        client: &TcpStream,
        backend: &TcpStream,
    ) -> Option<Event> {
        let pipe_size = self.pipe_size as usize;
        let (up, down) = (&mut self.upstream, &mut self.downstream);
        let mut event = None;
        if !up.finished
            && let Poll::Ready(result) = up.poll(cx, (client, backend), &self.up_bytes, pipe_size)
        {
            event = Some(Event::Finished(Side::Client, result));
        } else if !down.finished
            && let Poll::Ready(result) =
                down.poll(cx, (backend, client), &self.down_bytes, pipe_size)
        {
            event = Some(Event::Finished(Side::Backend, result));
        }
        // One clock reading per wake-up, however many reads and writes it made.
        if up.take_progress() | down.take_progress() {
            self.clock.touch();
        }
        if event.is_none()
            && let Some(to) = self.fin_owed.take()
        {
            let socket = match to {
                Side::Client => client,
                Side::Backend => backend,
            };
            if let Err(error) = shutdown_write(socket) {
                event = Some(Event::Finished(
                    to.other(),
                    Err(End::Error { side: to, error }),
                ));
            }
        }
        event
    }
}

/// Once one direction has finished, the other may stay open while it keeps moving bytes, but
/// no longer than `half_close` without moving any (HAProxy's `client-fin`/`server-fin`): a
/// long download after the client half-closed is not cut short, and a peer that never closes
/// cannot hold its socket forever.
fn half_close_deadline(closed_at: Instant, clock: &Activity, limits: &Limits) -> Instant {
    closed_at.max(clock.last()) + limits.half_close
}

/// Running byte counts that outlive one connection (a backend's), fed as bytes move so that
/// long-lived connections show up in the statistics before they end.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Totals<'a> {
    pub to_backend: &'a AtomicU64,
    pub to_client: &'a AtomicU64,
}

/// One direction's byte count, added to the running total as it grows.
struct Tally<'a> {
    here: AtomicU64,
    total: &'a AtomicU64,
}

impl<'a> Tally<'a> {
    fn new(total: &'a AtomicU64) -> Tally<'a> {
        Tally {
            here: AtomicU64::new(0),
            total,
        }
    }

    fn add(&self, n: usize) {
        self.here.fetch_add(n as u64, Ordering::Relaxed);
        self.total.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.here.load(Ordering::Relaxed)
    }
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

enum Event {
    /// The direction whose source is this side finished (EOF passed on) or failed.
    Finished(Side, Result<(), End>),
    Timer,
    Stop,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }
}

/// The most bytes a relay leaves unsent in a destination socket's send queue
/// (`TCP_NOTSENT_LOWAT`, in bytes).
///
/// The kernel grows a socket's send buffer to `tcp_wmem`'s maximum (4 MiB by default) when
/// the bytes keep coming, so a reader that stops reading would otherwise park that much in
/// ballast's socket on top of what the sender and the reader hold. With the limit a relay
/// takes more from the source only as the destination really accepts bytes, and the bytes
/// in flight are still bounded by the peer's window alone, so throughput is unchanged
/// (measured with iperf3 both ways, 1 MiB pipes: within noise).
pub(crate) const UNSENT_LIMIT: u32 = 128 * 1024;

/// Applies [`UNSENT_LIMIT`] to `socket`. Listening sockets get it too: accepted sockets
/// inherit it, which saves a system call per client. Best effort: a kernel without
/// `TCP_NOTSENT_LOWAT` relays as before.
pub(crate) fn limit_unsent(socket: impl std::os::fd::AsFd) {
    let _ = socket2::SockRef::from(&socket).set_tcp_notsent_lowat(UNSENT_LIMIT);
}

/// Shuts down the write side of `to`. The peer may already be gone; what we owed it was
/// delivered, so that is not an error.
fn shutdown_write(to: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}
