//! Copy buffers shared by all relays on a thread: a connection holds one only while bytes
//! are in flight, so idle connections cost no buffer memory at all.

use std::cell::RefCell;

/// Bytes per buffer: large enough that bulk transfers take few system calls.
pub(super) const BUFFER_SIZE: usize = 16 * 1024;
/// Buffers kept for reuse per thread; beyond this they are freed.
const KEPT: usize = 16;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn take() -> Box<[u8]> {
    FREE.with(|free| free.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice())
}

/// Keeps `buf` for reuse if it is a pool buffer (not one sized for a pipe's contents).
pub(super) fn give(buf: Box<[u8]>) {
    FREE.with(|free| {
        let mut free = free.borrow_mut();
        if free.len() < KEPT && buf.len() == BUFFER_SIZE {
            free.push(buf);
        }
    });
}
