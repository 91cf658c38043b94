//! One direction of a relay: read from one socket, write to the other, splice when bulk.

use std::io;
use std::task::{Context, Poll, ready};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::{End, Side, Splice, Tally, limit_unsent, pool, zero_copy};

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
pub(super) struct Direction {
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
    /// Bytes read but not yet written: `buf[start..end]`. Offsets and counts are 32 bits (a
    /// buffer or pipe holds far less than 4 GiB): they live in every connection's task, and
    /// idle memory per connection is set by that task's size class.
    buf: Option<Box<[u8]>>,
    start: u32,
    end: u32,
    /// A pipe holding `in_pipe` spliced bytes not yet written.
    pipe: Option<zero_copy::Pipe>,
    in_pipe: u32,
    pub(super) finished: bool,
    /// Bytes moved since the relay last looked at its clock.
    progressed: bool,
}

impl Direction {
    pub(super) fn new(sides: [Side; 2], splice: Splice) -> Direction {
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

    /// Whether bytes read from the source wait in the buffer or the pipe for the destination.
    pub(super) fn holds_bytes(&self) -> bool {
        self.start < self.end || self.in_pipe > 0
    }

    pub(super) fn take_progress(&mut self) -> bool {
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
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        ends: (&TcpStream, &TcpStream),
        moved: &Tally<'_>,
        pipe_size: usize,
    ) -> Poll<Result<(), End>> {
        let result = self.poll_inner(cx, ends, moved, pipe_size);
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
                        to.try_write(&buf[self.start as usize..self.end as usize])
                    }
                    (_, Some(pipe)) => to.try_io(Interest::WRITABLE, || {
                        pipe.drain_to(to, self.in_pipe as usize)
                    }),
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
                            self.start += n as u32;
                        } else {
                            self.in_pipe -= n as u32;
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
                    // The relay passes the EOF on (see `relay`).
                    self.release();
                    return Poll::Ready(Ok(()));
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
        self.end = n as u32;
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
                self.in_pipe = n as u32;
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
                self.end = n as u32;
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
        self.end = n as u32;
        Ok(n)
    }

    /// Moves the bytes parked in the pipe into a buffer of their own and stops splicing, for
    /// a destination that `splice(2)` refuses.
    fn unload_pipe(&mut self) -> io::Result<()> {
        if let Some(pipe) = self.pipe.take() {
            let bytes = pipe.unload(self.in_pipe as usize)?;
            pipe.give_back();
            self.start = 0;
            self.end = self.in_pipe;
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
