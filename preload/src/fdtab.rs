//! Which descriptor numbers are demi sockets, readable without a lock.
//!
//! One byte per descriptor number below [`FD_LIMIT`]: the pass-through path
//! of `read`, `write`, `close`... on an ordinary file costs one atomic load.

use std::sync::atomic::{AtomicU8, Ordering};

/// Descriptor numbers this library can serve (the kernel's own default
/// ceiling for RLIMIT_NOFILE). A demi socket whose reserved number would be
/// higher fails with EMFILE.
pub const FD_LIMIT: usize = 1 << 20;

/// The number names a demi socket.
pub const SOCK: u8 = 1;
/// The number names an epoll instance created while this library was loaded.
pub const EPOLL: u8 = 2;
/// The epoll instance has demi sockets registered (and a doorbell, see
/// ex_epoll.rs): its waits take the library's path.
pub const DOORBELL: u8 = 4;

static FLAGS: [AtomicU8; FD_LIMIT] = [const { AtomicU8::new(0) }; FD_LIMIT];

fn slot(fd: i32) -> Option<&'static AtomicU8> {
    usize::try_from(fd).ok().and_then(|i| FLAGS.get(i))
}

/// True if `fd` is a demi socket.
#[inline]
pub fn is_sock(fd: i32) -> bool {
    slot(fd).is_some_and(|s| s.load(Ordering::Acquire) & SOCK != 0)
}

/// True if `fd` is an epoll instance this library has seen created.
pub fn is_epoll(fd: i32) -> bool {
    slot(fd).is_some_and(|s| s.load(Ordering::Acquire) & EPOLL != 0)
}

/// True if `fd` is an epoll instance with demi sockets in it.
pub fn has_doorbell(fd: i32) -> bool {
    slot(fd).is_some_and(|s| s.load(Ordering::Acquire) & DOORBELL != 0)
}

/// Marks `fd` as `what` (replacing any earlier mark).
pub fn mark(fd: i32, what: u8) {
    if let Some(s) = slot(fd) {
        s.store(what, Ordering::Release);
    }
}

/// Forgets `fd`.
pub fn clear(fd: i32) {
    mark(fd, 0);
}

/// True if `fd` can be marked at all.
pub fn fits(fd: i32) -> bool {
    slot(fd).is_some()
}
