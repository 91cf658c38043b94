//! Whose fault a failed socket operation is: the peer's, or ballast's own.
//!
//! One rule for everything that judges a backend: the relay's connects, the health checks
//! and the load poller (and the accept loop, for its back-off). A failure that comes from the
//! other end or the path to it (refused, reset, timed out, unreachable) is a verdict on that
//! peer: a relay connect fails over and counts as a failed check, and a probe counts toward
//! `fall`. A failure because this machine ran short of something every connection needs
//! (descriptors, memory, socket buffers, local ports) says nothing about the peer. Blaming
//! the backend for it would take healthy backends out exactly when ballast is busiest, and
//! keep them out for `rise` checks after the shortage has passed.
//!
//! Only *transient, machine-wide* shortages are ours. A local condition that is permanent and
//! specific to one backend (a firewall rule answering `EPERM`, a route missing for its
//! network, IPv6 switched off for an IPv6 backend) stays the peer's: that backend really is
//! unreachable from here, and failing over and marking it down is what serves clients.

use std::io;

use nix::errno::Errno;

/// Who an error counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The peer's, or its network's: it counts against the peer.
    Peer,
    /// Ballast's own: this machine is short of a resource. Not held against any peer.
    Ours,
}

/// Classifies `e`, an error from opening, connecting, reading or writing a socket (or
/// accepting one).
///
/// Ours, by `errno`:
/// - `EMFILE`: this process is at its open-files limit (`ulimit -n`). `socket()` and
///   `accept()` fail this way.
/// - `ENFILE`: the system-wide file table is full; the same calls fail.
/// - `ENOBUFS`: the kernel has no memory left for socket buffers.
/// - `ENOMEM`: out of memory, in the kernel or (as [`io::ErrorKind::OutOfMemory`]) here.
/// - `EADDRNOTAVAIL`: `connect()` found no free local (ephemeral) port: too many
///   connections, or too many in TIME_WAIT, from this machine.
/// - `EAGAIN`: on a TCP `connect()`, Linux's answer when it cannot pick a local port or route
///   entry. tokio retries a socket that is merely not ready yet by itself, so an `EAGAIN`
///   that reaches us is this shortage, never a busy peer.
///
/// Everything else, and every error without an OS code (such as a timeout), is the peer's.
pub(crate) fn classify(e: &io::Error) -> Fault {
    if e.kind() == io::ErrorKind::OutOfMemory {
        return Fault::Ours;
    }
    let Some(code) = e.raw_os_error() else {
        return Fault::Peer;
    };
    match Errno::from_raw(code) {
        Errno::EMFILE
        | Errno::ENFILE
        | Errno::ENOBUFS
        | Errno::ENOMEM
        | Errno::EADDRNOTAVAIL
        | Errno::EAGAIN => Fault::Ours,
        _ => Fault::Peer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: Errno) -> io::Error {
        io::Error::from_raw_os_error(errno as i32)
    }

    #[test]
    fn shortages_of_this_machine_are_ours() {
        for errno in [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOBUFS,
            Errno::ENOMEM,
            Errno::EADDRNOTAVAIL,
            Errno::EAGAIN,
        ] {
            assert_eq!(classify(&os(errno)), Fault::Ours, "{errno}");
        }
        assert_eq!(
            classify(&io::Error::from(io::ErrorKind::OutOfMemory)),
            Fault::Ours
        );
    }

    #[test]
    fn what_the_peer_or_its_network_did_is_the_peers() {
        for errno in [
            Errno::ECONNREFUSED,
            Errno::ECONNRESET,
            Errno::ECONNABORTED,
            Errno::ETIMEDOUT,
            Errno::EHOSTUNREACH,
            Errno::ENETUNREACH,
            Errno::EPIPE,
            // A local firewall rule or a backend address that cannot be reached from here
            // is specific to that backend and lasting: failing over is right.
            Errno::EPERM,
            Errno::EACCES,
            Errno::EAFNOSUPPORT,
        ] {
            assert_eq!(classify(&os(errno)), Fault::Peer, "{errno}");
        }
        // Our own timeouts carry no OS code: the peer did not answer in time.
        let timeout = io::Error::new(io::ErrorKind::TimedOut, "timed out after 1s");
        assert_eq!(classify(&timeout), Fault::Peer);
    }

    #[test]
    fn emfile_as_the_logs_show_it_is_ours() {
        // What `socket()` returns at the limit, as the standard library wraps and prints it.
        let e = io::Error::from(Errno::EMFILE);
        assert_eq!(e.raw_os_error(), Some(24));
        assert_eq!(e.to_string(), "Too many open files (os error 24)");
        assert_eq!(classify(&e), Fault::Ours);
    }
}
