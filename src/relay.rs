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

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Time limits and copy strategy of one relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub idle: Duration,
    pub half_close: Duration,
    pub splice: Splice,
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
    client: TcpStream,
    backend: TcpStream,
    limits: Limits,
    totals: Totals<'_>,
) -> (Transferred, End) {
    let clock = Activity::new();
    let up_bytes = Tally::new(totals.to_backend);
    let down_bytes = Tally::new(totals.to_client);
    let upstream = pump(
        &client,
        &backend,
        [Side::Client, Side::Backend],
        &up_bytes,
        &clock,
        limits.splice,
    );
    let downstream = pump(
        &backend,
        &client,
        [Side::Backend, Side::Client],
        &down_bytes,
        &clock,
        limits.splice,
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
                match first_closed {
                    Some((closed, at)) => {
                        if half_close_deadline(at, &clock, limits) <= now {
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
            Some((_, at)) => half_close_deadline(at, &clock, limits),
            None => clock.last() + limits.idle,
        };
        if deadline != timer.deadline() {
            timer.as_mut().reset(deadline);
        }
    };
    if let End::Error { .. } = end {
        // Pass the failure on as a reset rather than a clean close, so the other side cannot
        // mistake a truncated stream for a complete one.
        for socket in [&client, &backend] {
            let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
        }
    }
    let moved = Transferred {
        client_to_backend: up_bytes.get(),
        backend_to_client: down_bytes.get(),
    };
    (moved, end)
}

/// Once one direction has finished, the other may stay open while it keeps moving bytes, but
/// no longer than `half_close` without moving any (HAProxy's `client-fin`/`server-fin`): a
/// long download after the client half-closed is not cut short, and a peer that never closes
/// cannot hold its socket forever.
fn half_close_deadline(closed_at: Instant, clock: &Activity, limits: Limits) -> Instant {
    closed_at.max(clock.last()) + limits.half_close
}

/// Running byte counts that outlive one connection (a backend's), fed as bytes move so that
/// long-lived connections show up in the statistics before they end.
#[derive(Clone, Copy, Debug)]
pub struct Totals<'a> {
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

/// Moves bytes from `from` to `to` until EOF, then shuts down `to`'s write side so its peer
/// sees the EOF. `sides` names the owners of `from` and `to`, so an error says whose socket
/// failed.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    sides: [Side; 2],
    moved: &Tally<'_>,
    clock: &Activity,
    splice: Splice,
) -> Result<(), End> {
    let [from_side, to_side] = sides;
    let read_error = |error| End::Error {
        side: from_side,
        error,
    };
    let write_error = |error| End::Error {
        side: to_side,
        error,
    };
    let mut bulk = splice == Splice::Always;
    loop {
        let step = if bulk && splice != Splice::Off {
            match zero_copy::Pipe::take() {
                Some(pipe) => splice_step(from, to, pipe, moved, clock).await,
                // No pipe to be had (limit reached, or out of descriptors): copy instead.
                None => copy_step(from, to, moved, clock).await,
            }
        } else {
            copy_step(from, to, moved, clock).await
        };
        match step {
            Ok(Step::Eof) => break,
            Ok(Step::Moved { filled_buffer }) => bulk |= filled_buffer,
            Err(StepError::Read(e)) => return Err(read_error(e)),
            Err(StepError::Write(e)) => return Err(write_error(e)),
        }
    }
    match socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write) {
        // The peer may already be gone; what we owed it was delivered.
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        Err(e) => Err(write_error(e)),
    }
}

enum Step {
    Eof,
    /// Bytes were moved; `filled_buffer` says the source had more than one buffer's worth.
    Moved {
        filled_buffer: bool,
    },
}

enum StepError {
    Read(io::Error),
    Write(io::Error),
}

/// Waits for `from` to be readable, then copies what is there through a pooled buffer.
/// No buffer is held while the source is idle; one is kept only while the destination
/// cannot take the data yet.
async fn copy_step(
    from: &TcpStream,
    to: &TcpStream,
    moved: &Tally<'_>,
    clock: &Activity,
) -> Result<Step, StepError> {
    from.readable().await.map_err(StepError::Read)?;
    let mut buf = pool::take();
    let n = match from.try_read(&mut buf) {
        Ok(0) => {
            pool::give(buf);
            return Ok(Step::Eof);
        }
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            pool::give(buf);
            return Ok(Step::Moved {
                filled_buffer: false,
            });
        }
        Err(e) => return Err(StepError::Read(e)),
    };
    clock.touch();
    let mut sent = 0;
    while sent < n {
        match to.try_write(&buf[sent..n]) {
            Ok(k) => {
                sent += k;
                // A slow reader that keeps taking bytes is not idle.
                clock.touch();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                to.writable().await.map_err(StepError::Write)?;
            }
            Err(e) => return Err(StepError::Write(e)),
        }
    }
    let filled_buffer = n == buf.len();
    pool::give(buf);
    moved.add(n);
    clock.touch();
    Ok(Step::Moved { filled_buffer })
}

/// Waits for `from` to be readable, then splices what is there into `pipe` and from the
/// pipe to `to`, without the bytes passing through user space. The pipe goes back to the
/// pool only when empty.
async fn splice_step(
    from: &TcpStream,
    to: &TcpStream,
    pipe: zero_copy::Pipe,
    moved: &Tally<'_>,
    clock: &Activity,
) -> Result<Step, StepError> {
    from.readable().await.map_err(StepError::Read)?;
    // The pipe is empty here, so EAGAIN can only mean the socket has nothing to read (a full
    // pipe would also answer EAGAIN, which is why we never splice into a non-empty one).
    let n = match from.try_io(Interest::READABLE, || pipe.fill_from(from)) {
        Ok(0) => {
            pipe.give_back();
            return Ok(Step::Eof);
        }
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            pipe.give_back();
            return Ok(Step::Moved {
                filled_buffer: true,
            });
        }
        Err(e) => return Err(StepError::Read(e)),
    };
    clock.touch();
    let mut left = n;
    while left > 0 {
        match to.try_io(Interest::WRITABLE, || pipe.drain_to(to, left)) {
            Ok(k) => {
                left -= k;
                clock.touch();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                to.writable().await.map_err(StepError::Write)?;
            }
            Err(e) => return Err(StepError::Write(e)),
        }
    }
    pipe.give_back();
    moved.add(n);
    clock.touch();
    Ok(Step::Moved {
        filled_buffer: true,
    })
}

/// Pipes for `splice(2)`, pooled per thread and bounded in number across the process, like
/// HAProxy's `maxpipes`: each costs two descriptors and kernel memory.
pub mod zero_copy {
    use std::cell::RefCell;
    use std::io;
    use std::os::fd::{AsFd, OwnedFd};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use nix::fcntl::{OFlag, SpliceFFlags, splice};

    /// Bytes moved per splice call: the default pipe capacity.
    const CHUNK: usize = 64 * 1024;
    /// Empty pipes kept per thread for reuse.
    const KEPT: usize = 32;

    /// Pipes in existence (in use or pooled).
    static PIPES: AtomicUsize = AtomicUsize::new(0);
    /// The most pipes that may exist at once; 0 disables splicing.
    static MAX_PIPES: AtomicUsize = AtomicUsize::new(1024);

    thread_local! {
        static FREE: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    }

    /// Sets the process-wide limit on pipes.
    pub fn set_max_pipes(max: usize) {
        MAX_PIPES.store(max, Ordering::Relaxed);
    }

    /// Pipes that exist now, pooled or in use.
    pub fn pipes() -> usize {
        PIPES.load(Ordering::Relaxed)
    }

    pub struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
    }

    impl Pipe {
        /// An empty pipe from the pool, or a new one while under the limit.
        pub fn take() -> Option<Pipe> {
            if let Some(pipe) = FREE.with(|free| free.borrow_mut().pop()) {
                return Some(pipe);
            }
            let max = MAX_PIPES.load(Ordering::Relaxed);
            if PIPES.fetch_add(1, Ordering::Relaxed) >= max {
                PIPES.fetch_sub(1, Ordering::Relaxed);
                return None;
            }
            match nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC) {
                Ok((read, write)) => Some(Pipe { read, write }),
                Err(_) => {
                    PIPES.fetch_sub(1, Ordering::Relaxed);
                    None
                }
            }
        }

        /// Returns an empty pipe to the pool.
        pub fn give_back(self) {
            FREE.with(|free| {
                let mut free = free.borrow_mut();
                if free.len() < KEPT {
                    free.push(self);
                }
            });
        }

        /// Splices up to one chunk from `socket` into the pipe.
        pub fn fill_from(&self, socket: impl AsFd) -> io::Result<usize> {
            let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
            splice(socket, None, &self.write, None, CHUNK, flags).map_err(io::Error::from)
        }

        /// Splices up to `len` bytes from the pipe into `socket`.
        pub fn drain_to(&self, socket: impl AsFd, len: usize) -> io::Result<usize> {
            let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
            splice(&self.read, None, socket, None, len, flags).map_err(io::Error::from)
        }
    }

    impl Drop for Pipe {
        fn drop(&mut self) {
            PIPES.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Copy buffers shared by all relays on a thread: a connection holds one only while bytes
/// are in flight, so idle connections cost no buffer memory at all.
mod pool {
    use std::cell::RefCell;

    /// Bytes per buffer: large enough that bulk transfers take few system calls.
    pub const BUFFER_SIZE: usize = 32 * 1024;
    /// Buffers kept for reuse per thread; beyond this they are freed.
    const KEPT: usize = 64;

    thread_local! {
        static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    }

    pub fn take() -> Box<[u8]> {
        FREE.with(|free| free.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice())
    }

    pub fn give(buf: Box<[u8]>) {
        FREE.with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < KEPT {
                free.push(buf);
            }
        });
    }
}
