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

use std::task::{Context, Poll, ready};

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Time limits and copy strategy of one relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
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
pub struct StopSignal {
    raised: AtomicBool,
    token: CancellationToken,
}

impl StopSignal {
    pub fn raise(&self) {
        // The flag first: a relay woken by the token must find it set.
        self.raised.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Completes once the signal is raised.
    pub async fn raised(&self) {
        self.token.cancelled().await;
    }
}

/// Relays between `client` and `backend` until both directions have seen EOF, a limit
/// expires, either side fails or `stop` is raised. Returns what was moved and how it ended.
pub async fn relay(
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
    };
    let mut first_closed: Option<(Side, Instant)> = None;
    let timer = tokio::time::sleep(limits.idle);
    tokio::pin!(timer);
    let end = loop {
        // One hand-written poll for both directions and the clock: the readiness wakers live
        // in the sockets' own slots, so a connection waiting for bytes costs only this small
        // frame, not a waiter node per pending operation.
        let event = std::future::poll_fn(|cx| {
            if let Some(event) = flows.poll(cx, &client, &backend, limits.pipe_size) {
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
                None => first_closed = Some((side, Instant::now())),
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
    if let End::Error { .. } | End::Stopped = end {
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
}

impl Flows<'_> {
    /// Moves what both directions can move now; returns a direction's end, if one came.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        client: &TcpStream,
        backend: &TcpStream,
        pipe_size: usize,
    ) -> Option<Event> {
        let (up, down) = (&mut self.upstream, &mut self.downstream);
        let mut event = None;
        if !up.finished
            && let Poll::Ready(result) = up.poll(
                cx,
                (client, backend),
                &self.up_bytes,
                down.finished,
                pipe_size,
            )
        {
            event = Some(Event::Finished(Side::Client, result));
        } else if !down.finished
            && let Poll::Ready(result) = down.poll(
                cx,
                (backend, client),
                &self.down_bytes,
                up.finished,
                pipe_size,
            )
        {
            event = Some(Event::Finished(Side::Backend, result));
        }
        // One clock reading per wake-up, however many reads and writes it made.
        if up.take_progress() | down.take_progress() {
            self.clock.touch();
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

/// One direction of a relay: bytes from `from` to `to` until EOF, then a shutdown of `to`'s
/// write side so its peer sees the EOF.
///
/// No buffer is held while the source is idle: a buffer is borrowed from the pool when the
/// source is readable and given back once its bytes are written; it is kept only while the
/// destination cannot take them yet. Once a read fills a whole buffer (bulk traffic) the
/// direction splices through a pooled pipe instead, when one may be had.
///
/// Readiness is only ever cleared on proof that a socket is empty (or full): an `EAGAIN`.
/// A short transfer proves nothing: a `splice` may have been limited by the pipe, and both
/// `recv` and `splice` stop at TCP urgent data with more bytes queued behind it.
struct Direction {
    /// Owners of the source and destination sockets, so an error names the right side.
    sides: [Side; 2],
    /// `Off` from the start, or from the moment splicing proved impossible for this
    /// direction (pipes too small, or a socket that `splice(2)` refuses).
    splice: Splice,
    bulk: bool,
    /// Doublings of [`zero_copy::FIRST_SPLICE`] earned by full splices.
    ramp: u8,
    /// Whether the destination's unsent bytes are bounded yet (see [`limit_unsent`]).
    unsent_limited: bool,
    /// Bytes read but not yet written: `buf[start..end]`.
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    /// A pipe holding `in_pipe` spliced bytes not yet written.
    pipe: Option<zero_copy::Pipe>,
    in_pipe: usize,
    finished: bool,
    /// Bytes moved since the relay last looked at its clock.
    progressed: bool,
}

impl Direction {
    fn new(sides: [Side; 2], splice: Splice) -> Direction {
        Direction {
            sides,
            splice,
            bulk: splice == Splice::Always,
            ramp: 0,
            unsent_limited: false,
            buf: None,
            start: 0,
            end: 0,
            pipe: None,
            in_pipe: 0,
            finished: false,
            progressed: false,
        }
    }

    fn take_progress(&mut self) -> bool {
        std::mem::take(&mut self.progressed)
    }

    fn read_error(&self, error: io::Error) -> End {
        End::Error {
            side: self.sides[0],
            error,
        }
    }

    fn write_error(&self, error: io::Error) -> End {
        End::Error {
            side: self.sides[1],
            error,
        }
    }

    /// Moves what can be moved now. Ready(Ok) once EOF has been passed on; Pending with the
    /// waker registered on whichever socket we wait for.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        ends: (&TcpStream, &TcpStream),
        moved: &Tally<'_>,
        other_finished: bool,
        pipe_size: usize,
    ) -> Poll<Result<(), End>> {
        let result = self.poll_inner(cx, ends, moved, other_finished, pipe_size);
        if result.is_ready() {
            self.finished = true;
            self.release();
        }
        result
    }

    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
        (from, to): (&TcpStream, &TcpStream),
        moved: &Tally<'_>,
        other_finished: bool,
        pipe_size: usize,
    ) -> Poll<Result<(), End>> {
        loop {
            // Deliver what we hold before reading more.
            if self.start < self.end || self.in_pipe > 0 {
                if let Err(e) = ready!(to.poll_write_ready(cx)) {
                    return Poll::Ready(Err(self.write_error(e)));
                }
                let written = match (&self.buf, &self.pipe) {
                    (Some(buf), _) if self.start < self.end => {
                        to.try_write(&buf[self.start..self.end])
                    }
                    (_, Some(pipe)) => {
                        to.try_io(Interest::WRITABLE, || pipe.drain_to(to, self.in_pipe))
                    }
                    _ => Ok(0),
                };
                match written {
                    // A socket that takes nothing yet reports no EAGAIN would spin us.
                    Ok(0) => {
                        return Poll::Ready(Err(self.write_error(io::ErrorKind::WriteZero.into())));
                    }
                    Ok(n) => {
                        moved.add(n);
                        self.progressed = true;
                        if self.start < self.end {
                            self.start += n;
                        } else {
                            self.in_pipe -= n;
                        }
                        if self.start == self.end && self.in_pipe == 0 {
                            self.release();
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if self.in_pipe > 0 && zero_copy::unsupported(&e) => {
                        // The bytes are in the pipe already: take them out through user
                        // space and copy from here on.
                        if let Err(e) = self.unload_pipe() {
                            return Poll::Ready(Err(self.write_error(e)));
                        }
                    }
                    Err(e) => return Poll::Ready(Err(self.write_error(e))),
                }
                continue;
            }
            if self.bulk && !self.unsent_limited {
                self.unsent_limited = true;
                // Client sockets inherit the limit from the listener (see `limit_unsent`).
                if self.sides[1] == Side::Backend {
                    limit_unsent(to);
                }
            }
            let read = if self.bulk && self.splice != Splice::Off {
                self.poll_splice_in(cx, from, pipe_size)
            } else {
                self.poll_copy_in(cx, from)
            };
            match read {
                Poll::Pending => {
                    self.release();
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => {
                    self.release();
                    // With the other direction already done, the relay ends now and closing
                    // the sockets sends the FIN: no separate shutdown needed.
                    if other_finished {
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Ready(shutdown_write(to).map_err(|e| self.write_error(e)));
                }
                Poll::Ready(Ok(_)) => self.progressed = true,
                // `EAGAIN` cleared the readiness; polling it again registers our waker.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => self.release(),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(self.read_error(e))),
            }
        }
    }

    /// Reads into a pooled buffer. `WouldBlock` only on `EAGAIN`: a short read is no proof
    /// that the socket is empty, because a read stops at TCP urgent data with more queued
    /// behind it, and with edge-triggered readiness nothing would wake us for those bytes
    /// (tokio's own `poll_read` takes a short read for a drained socket, so the relay does
    /// not use it). The extra `recv` that answers `EAGAIN` cost nothing measurable in
    /// keep-alive or churn request rates. A read that fills the buffer marks the direction
    /// as bulk.
    fn poll_copy_in(&mut self, cx: &mut Context<'_>, from: &TcpStream) -> Poll<io::Result<usize>> {
        ready!(from.poll_read_ready(cx))?;
        let buf = self.buf.get_or_insert_with(pool::take);
        let n = from.try_read(buf)?;
        if n == buf.len() {
            self.bulk = true;
        }
        self.start = 0;
        self.end = n;
        Poll::Ready(Ok(n))
    }

    /// Splices from `from` into an empty pipe. `WouldBlock` only on `EAGAIN`, which with the
    /// pipe empty can only mean the socket is; copies instead whenever no usable pipe may be
    /// had or the socket refuses `splice(2)`.
    fn poll_splice_in(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        pipe_size: usize,
    ) -> Poll<io::Result<usize>> {
        ready!(from.poll_read_ready(cx))?;
        let pipe = match self.pipe.take() {
            Some(pipe) => pipe,
            None => match zero_copy::Pipe::take(pipe_size) {
                Ok(pipe) => pipe,
                Err(zero_copy::NoPipe::AtLimit) => return Poll::Ready(self.try_copy_in(from)),
                Err(zero_copy::NoPipe::Unusable) => {
                    self.splice = Splice::Off;
                    return Poll::Ready(self.try_copy_in(from));
                }
            },
        };
        let len = (zero_copy::FIRST_SPLICE << self.ramp).min(pipe.capacity());
        let buf = self.buf.get_or_insert_with(pool::take);
        let filled = from.try_io(Interest::READABLE, || {
            match pipe.fill_from(from, len) {
                Ok(n) if n > 0 => Ok(Filled::Pipe(n)),
                // splice(2) never moves past TCP urgent data: at the urgent mark it answers 0
                // (as at EOF) or EAGAIN (as for an empty socket) however much follows. One
                // copy read tells them apart, and skips the urgent byte as a direct reader
                // does; its EAGAIN is the proof that the socket is empty.
                Ok(_) => read_once(from, buf).map(Filled::Buffer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    read_once(from, buf).map(Filled::Buffer)
                }
                Err(e) => Err(e),
            }
        });
        self.pipe = Some(pipe);
        Poll::Ready(match filled {
            Ok(Filled::Pipe(n)) => {
                self.in_pipe = n;
                if let Some(buf) = self.buf.take() {
                    pool::give(buf);
                }
                if n == len && (zero_copy::FIRST_SPLICE << self.ramp) < pipe_size {
                    self.ramp += 1;
                }
                Ok(n)
            }
            Ok(Filled::Buffer(n)) => {
                self.start = 0;
                self.end = n;
                Ok(n)
            }
            Err(e) if zero_copy::unsupported(&e) => {
                self.splice = Splice::Off;
                self.release();
                self.try_copy_in(from)
            }
            Err(e) => Err(e),
        })
    }

    /// One copy read for a bulk direction that cannot splice right now. `WouldBlock` only
    /// once the socket answered `EAGAIN`, which cleared its readiness.
    fn try_copy_in(&mut self, from: &TcpStream) -> io::Result<usize> {
        let buf = self.buf.get_or_insert_with(pool::take);
        let n = from.try_read(buf)?;
        self.start = 0;
        self.end = n;
        Ok(n)
    }

    /// Moves the bytes parked in the pipe into a buffer of their own and stops splicing, for
    /// a destination that `splice(2)` refuses.
    fn unload_pipe(&mut self) -> io::Result<()> {
        if let Some(pipe) = self.pipe.take() {
            let bytes = pipe.unload(self.in_pipe)?;
            pipe.give_back();
            self.start = 0;
            self.end = bytes.len();
            self.buf = Some(bytes);
            self.in_pipe = 0;
        }
        self.splice = Splice::Off;
        Ok(())
    }

    /// Gives the buffer and pipe back to their pools once they hold nothing.
    fn release(&mut self) {
        if self.start == self.end
            && let Some(buf) = self.buf.take()
        {
            pool::give(buf);
        }
        if self.in_pipe == 0
            && let Some(pipe) = self.pipe.take()
        {
            pipe.give_back();
        }
    }
}

/// Where a splicing read put its bytes.
enum Filled {
    Pipe(usize),
    Buffer(usize),
}

/// One `recv` into `buf`, with no readiness bookkeeping: for use inside `try_io`.
fn read_once(socket: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read;
    (&*socket2::SockRef::from(socket)).read(buf)
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
pub const UNSENT_LIMIT: u32 = 128 * 1024;

/// Applies [`UNSENT_LIMIT`] to `socket`. Listening sockets get it too: accepted sockets
/// inherit it, which saves a system call per client. Best effort: a kernel without
/// `TCP_NOTSENT_LOWAT` relays as before.
pub fn limit_unsent(socket: impl std::os::fd::AsFd) {
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

/// Pipes for `splice(2)`, pooled per thread and bounded in number across the process, like
/// HAProxy's `maxpipes`: each costs two descriptors and kernel memory.
///
/// The kernel may grant a smaller pipe than asked (`F_SETPIPE_SZ` fails once an
/// unprivileged user has used up `fs.pipe-user-pages-soft`, leaving new pipes at two pages):
/// the size obtained is read back (`F_GETPIPE_SZ`) and bounds every splice into the pipe.
pub mod zero_copy {
    use std::cell::RefCell;
    use std::io;
    use std::os::fd::{AsFd, OwnedFd};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use log::warn;
    use nix::errno::Errno;
    use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};

    /// The pipe size asked for by default, in bytes.
    pub const DEFAULT_PIPE_SIZE: usize = 1024 * 1024;
    /// Bytes asked of a direction's first splice; each splice that is filled whole doubles
    /// the next, up to the pipe's size. Receive-buffer autotuning sizes a socket's window
    /// from how much the reader takes at once: a first 1 MiB splice from a fresh socket let
    /// it open the window to `tcp_rmem`'s maximum (32 MiB here), and a reader that then
    /// stalled left that much parked in the kernel.
    pub const FIRST_SPLICE: usize = 64 * 1024;
    /// Empty pipes kept per thread for reuse.
    const KEPT: usize = 32;

    /// Pipes in existence (in use or pooled).
    static PIPES: AtomicUsize = AtomicUsize::new(0);
    /// The most pipes that may exist at once; 0 disables splicing.
    static MAX_PIPES: AtomicUsize = AtomicUsize::new(1024);
    /// Whether the kernel's refusal of a full-size pipe has been logged (once per process).
    static SHRUNK_LOGGED: AtomicBool = AtomicBool::new(false);

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

    /// Whether `e` says `splice(2)` cannot work on these descriptors at all (rather than
    /// that a socket failed): the caller copies instead.
    pub fn unsupported(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error().map(Errno::from_raw),
            Some(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::ESPIPE | Errno::EBADF)
        )
    }

    /// Why [`Pipe::take`] gave no pipe.
    #[derive(Debug, PartialEq, Eq)]
    pub enum NoPipe {
        /// `max_pipes` are in use, or the system is out of descriptors for now: copy this
        /// time, try again later.
        AtLimit,
        /// The kernel grants only pipes smaller than asked and smaller than a copy buffer,
        /// where splicing would cost more system calls than it saves: copy from now on.
        Unusable,
    }

    /// A pipe and the byte count it can hold.
    pub struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        capacity: usize,
    }

    impl Pipe {
        /// An empty pipe of `size` bytes (as granted by the kernel), from the pool or new
        /// while under the limit.
        ///
        /// # Errors
        /// [`NoPipe::AtLimit`] at `max_pipes` or when `pipe2` fails; [`NoPipe::Unusable`]
        /// when the kernel grants less than both `size` and a copy buffer.
        pub fn take(size: usize) -> Result<Pipe, NoPipe> {
            let pooled = FREE.with(|free| free.borrow_mut().pop());
            let mut pipe = match pooled {
                Some(pipe) => pipe,
                None => Pipe::create()?,
            };
            if pipe.capacity != size {
                pipe.capacity = pipe.resize(size);
            }
            if pipe.capacity < size && pipe.capacity < super::pool::BUFFER_SIZE {
                if !SHRUNK_LOGGED.swap(true, Ordering::Relaxed) {
                    warn!(
                        "the kernel grants pipes of {} bytes, not {size} (fs.pipe-user-pages-soft \
                         used up?): copying instead of splicing where that happens",
                        pipe.capacity
                    );
                }
                return Err(NoPipe::Unusable);
            }
            Ok(pipe)
        }

        fn create() -> Result<Pipe, NoPipe> {
            let max = MAX_PIPES.load(Ordering::Relaxed);
            if PIPES.fetch_add(1, Ordering::Relaxed) >= max {
                PIPES.fetch_sub(1, Ordering::Relaxed);
                return Err(NoPipe::AtLimit);
            }
            match nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC) {
                Ok((read, write)) => Ok(Pipe {
                    read,
                    write,
                    capacity: 0,
                }),
                Err(_) => {
                    PIPES.fetch_sub(1, Ordering::Relaxed);
                    Err(NoPipe::AtLimit)
                }
            }
        }

        /// Asks for `size` bytes and returns what the pipe holds now. Kernel pages are only
        /// taken as bytes pass through.
        fn resize(&self, size: usize) -> usize {
            let asked = i32::try_from(size).unwrap_or(i32::MAX);
            let _ = fcntl(&self.write, FcntlArg::F_SETPIPE_SZ(asked));
            fcntl(&self.write, FcntlArg::F_GETPIPE_SZ)
                .ok()
                .and_then(|granted| usize::try_from(granted).ok())
                .unwrap_or(0)
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

        /// Splices from `socket` into the (empty) pipe, at most its capacity.
        pub fn fill_from(&self, socket: impl AsFd, len: usize) -> io::Result<usize> {
            let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
            splice(
                socket,
                None,
                &self.write,
                None,
                len.min(self.capacity),
                flags,
            )
            .map_err(io::Error::from)
        }

        /// Bytes the pipe can hold, as granted by the kernel.
        pub fn capacity(&self) -> usize {
            self.capacity
        }

        /// Splices up to `len` bytes from the pipe into `socket`.
        pub fn drain_to(&self, socket: impl AsFd, len: usize) -> io::Result<usize> {
            let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
            splice(&self.read, None, socket, None, len, flags).map_err(io::Error::from)
        }

        /// Reads the `len` bytes the pipe holds into a buffer of their own.
        ///
        /// # Errors
        /// The pipe's read error, or `UnexpectedEof` if it holds fewer than `len` bytes.
        pub fn unload(&self, len: usize) -> io::Result<Box<[u8]>> {
            let mut bytes = vec![0u8; len].into_boxed_slice();
            let mut filled = 0;
            while filled < len {
                match nix::unistd::read(&self.read, &mut bytes[filled..]) {
                    Ok(0) | Err(Errno::EAGAIN) => {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    Ok(n) => filled += n,
                    Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(bytes)
        }
    }

    impl Drop for Pipe {
        fn drop(&mut self) {
            PIPES.fetch_sub(1, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_pipe_reports_the_size_granted_and_splices_no_more() {
            let pipe = Pipe::take(4096).expect("a pipe");
            assert_eq!(pipe.capacity, 4096);
            let (mut a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
            std::io::Write::write_all(&mut a, &[7u8; 10_000]).expect("write");
            // A one-page pipe takes at most a page, however much the socket holds; it may
            // take less (one slot per socket buffer), which is why a short splice proves
            // nothing about the socket.
            let n = pipe.fill_from(&b, 1 << 20).expect("splice");
            assert!(n > 0 && n <= 4096, "{n}");
            let held = pipe.unload(n).expect("unload");
            assert_eq!(&held[..], &vec![7u8; n][..]);
            assert_eq!(
                pipe.unload(1).err().map(|e| e.kind()),
                Some(io::ErrorKind::UnexpectedEof)
            );
        }

        #[test]
        fn unsupported_means_splice_cannot_work_here() {
            assert!(unsupported(&io::Error::from_raw_os_error(
                Errno::EINVAL as i32
            )));
            assert!(!unsupported(&io::Error::from_raw_os_error(
                Errno::ECONNRESET as i32
            )));
            assert!(!unsupported(&io::ErrorKind::WouldBlock.into()));
        }
    }
}

/// Copy buffers shared by all relays on a thread: a connection holds one only while bytes
/// are in flight, so idle connections cost no buffer memory at all.
mod pool {
    use std::cell::RefCell;

    /// Bytes per buffer: large enough that bulk transfers take few system calls.
    pub const BUFFER_SIZE: usize = 16 * 1024;
    /// Buffers kept for reuse per thread; beyond this they are freed.
    const KEPT: usize = 16;

    thread_local! {
        static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    }

    pub fn take() -> Box<[u8]> {
        FREE.with(|free| free.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice())
    }

    /// Keeps `buf` for reuse if it is a pool buffer (not one sized for a pipe's contents).
    pub fn give(buf: Box<[u8]>) {
        FREE.with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < KEPT && buf.len() == BUFFER_SIZE {
                free.push(buf);
            }
        });
    }
}
