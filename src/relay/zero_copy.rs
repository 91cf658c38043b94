//! Pipes for `splice(2)`, pooled per thread and bounded in number across the process, like
//! HAProxy's `maxpipes`: each costs two descriptors and kernel memory.
//!
//! The kernel may grant a smaller pipe than asked (`F_SETPIPE_SZ` fails once an
//! unprivileged user has used up `fs.pipe-user-pages-soft`, leaving new pipes at two pages):
//! the size obtained is read back (`F_GETPIPE_SZ`) and bounds every splice into the pipe.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use log::warn;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};

/// The pipe size asked for by default, in bytes.
pub(crate) const DEFAULT_PIPE_SIZE: usize = 1024 * 1024;
/// Bytes asked of a direction's first splice; each splice that is filled whole doubles
/// the next, up to the pipe's size. Receive-buffer autotuning sizes a socket's window
/// from how much the reader takes at once: a first 1 MiB splice from a fresh socket let
/// it open the window to `tcp_rmem`'s maximum (32 MiB here), and a reader that then
/// stalled left that much parked in the kernel.
pub(crate) const FIRST_SPLICE: usize = 64 * 1024;
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
pub(crate) fn set_max_pipes(max: usize) {
    MAX_PIPES.store(max, Ordering::Relaxed);
}

/// Whether `e` says `splice(2)` cannot work on these descriptors at all (rather than
/// that a socket failed): the caller copies instead.
pub(crate) fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::ESPIPE | Errno::EBADF)
    )
}

/// Why [`Pipe::take`] gave no pipe.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoPipe {
    /// `max_pipes` are in use, or the system is out of descriptors for now: copy this
    /// time, try again later.
    AtLimit,
    /// The kernel grants only pipes smaller than asked and smaller than a copy buffer,
    /// where splicing would cost more system calls than it saves: copy from now on.
    Unusable,
}

/// A pipe and the byte count it can hold.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes, as granted; 32 bits keep a pipe, and so every relay's state, small.
    capacity: u32,
}

impl Pipe {
    /// An empty pipe of `size` bytes (as granted by the kernel), from the pool or new
    /// while under the limit.
    ///
    /// # Errors
    /// [`NoPipe::AtLimit`] at `max_pipes` or when `pipe2` fails; [`NoPipe::Unusable`]
    /// when the kernel grants less than both `size` and a copy buffer.
    pub(crate) fn take(size: usize) -> Result<Pipe, NoPipe> {
        let pooled = FREE.with(|free| free.borrow_mut().pop());
        let mut pipe = match pooled {
            Some(pipe) => pipe,
            None => Pipe::create()?,
        };
        if pipe.capacity() != size {
            pipe.capacity = pipe.resize(size);
        }
        if pipe.capacity() < size && pipe.capacity() < super::pool::BUFFER_SIZE {
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
    fn resize(&self, size: usize) -> u32 {
        let asked = i32::try_from(size).unwrap_or(i32::MAX);
        let _ = fcntl(&self.write, FcntlArg::F_SETPIPE_SZ(asked));
        fcntl(&self.write, FcntlArg::F_GETPIPE_SZ)
            .ok()
            .and_then(|granted| u32::try_from(granted).ok())
            .unwrap_or(0)
    }

    /// Returns an empty pipe to the pool.
    pub(crate) fn give_back(self) {
        FREE.with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < KEPT {
                free.push(self);
            }
        });
    }

    /// Splices from `socket` into the (empty) pipe, at most its capacity.
    pub(crate) fn fill_from(&self, socket: impl AsFd, len: usize) -> io::Result<usize> {
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        splice(
            socket,
            None,
            &self.write,
            None,
            len.min(self.capacity()),
            flags,
        )
        .map_err(io::Error::from)
    }

    /// Bytes the pipe can hold, as granted by the kernel.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Splices up to `len` bytes from the pipe into `socket`.
    pub(crate) fn drain_to(&self, socket: impl AsFd, len: usize) -> io::Result<usize> {
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        splice(&self.read, None, socket, None, len, flags).map_err(io::Error::from)
    }

    /// Reads the `len` bytes the pipe holds into a buffer of their own.
    ///
    /// # Errors
    /// The pipe's read error, or `UnexpectedEof` if it holds fewer than `len` bytes.
    pub(crate) fn unload(&self, len: usize) -> io::Result<Box<[u8]>> {
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
