//! Where catmint's unsafe code lives, and only here (the crate root denies
//! `unsafe_code`; this module alone is allowed it). Each submodule owns one
//! kind of C object or raw memory and offers a safe interface whose
//! soundness it argues at each `unsafe` site:
//!
//! - `verbs`: device contexts, PDs, MRs, completion channels, CQs and the
//!   completions read from them, address handles, shared receive queues;
//! - `cm`: rdma_cm event channels, events (acknowledged on drop), ids;
//! - `qp`: queue pairs and the work requests posted on them: a posted
//!   buffer is owned by its queue until the device reports it done;
//! - `mem`: registered memory (chunks, slots) and the [`Payload`] contract;
//! - `lend`: received buffers lent to the application and their way back.
//!
//! This file holds the raw rdma-core API, the error type, the two macros
//! that turn its C conventions into `Result` (`-1`/errno returns: `check!`;
//! NULL-on-failure pointers: `nonnull!`), and the few system calls catmint
//! makes beside rdma-core (epoll, eventfd, fcntl).
//!
//! [`Payload`]: mem::Payload

pub use rdma_sys as ffi;

pub mod cm;
pub mod lend;
pub mod mem;
pub mod qp;
pub mod verbs;

use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An rdma-core (or libc) call that failed, with its errno.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Error {
    /// The C function that failed.
    pub call: &'static str,
    /// Positive errno.
    pub errno: i32,
}

impl Error {
    /// The calling thread's errno after `call` failed.
    pub fn last(call: &'static str) -> Error {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
        // Some verbs fail without setting errno; never report "success".
        Error { call, errno: if errno == 0 { libc::EIO } else { errno } }
    }

    /// An error this crate decides itself.
    pub const fn new(call: &'static str, errno: i32) -> Error {
        Error { call, errno }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.call, std::io::Error::from_raw_os_error(self.errno))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Error {}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Calls an rdma-core function returning `int` (0 or -1 with errno). The
/// call is unsafe: every use carries a `// SAFETY:` line of its own saying
/// why the arguments are valid (`make lint` checks that it does).
macro_rules! check {
    ($f:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: the call site's own SAFETY line (required there) argues
        // that the arguments satisfy the function's contract.
        let rc = unsafe { $crate::sys::ffi::$f($($arg),*) };
        if rc != 0 {
            // Verbs return a positive errno; rdma_cm returns -1 and sets errno.
            if rc > 0 { Err($crate::sys::Error::new(stringify!($f), rc)) } else { Err($crate::sys::Error::last(stringify!($f))) }
        } else {
            Ok(())
        }
    }};
}
pub(crate) use check;

/// Calls an rdma-core function returning a pointer (NULL with errno on
/// failure); as for `check!`, each use has a `// SAFETY:` line.
macro_rules! nonnull {
    ($f:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: as for `check!`: argued at the call site.
        let p = unsafe { $crate::sys::ffi::$f($($arg),*) };
        match std::ptr::NonNull::new(p) {
            Some(p) => Ok(p),
            None => Err($crate::sys::Error::last(stringify!($f))),
        }
    }};
}
pub(crate) use nonnull;

/// Makes a descriptor non-blocking.
pub(crate) fn set_nonblocking(fd: RawFd) -> Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns; no pointers involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(Error::last("fcntl(O_NONBLOCK)"));
    }
    Ok(())
}

/// An epoll set: the one descriptor a waiter sleeps on, readable when any
/// descriptor added to it is.
pub struct Epoll(OwnedFd);

impl Epoll {
    /// An empty set.
    pub fn new() -> Result<Epoll> {
        // SAFETY: epoll_create1 has no pointer arguments.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(Error::last("epoll_create1"));
        }
        // SAFETY: fd was just returned to us and is owned by nobody else.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds `fd` (readable events).
    pub fn add(&self, fd: RawFd) -> Result<()> {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: fd as u64 };
        // SAFETY: both descriptors are open; ev is a live epoll_event.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(Error::last("epoll_ctl"));
        }
        Ok(())
    }

    /// The set's descriptor.
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A non-blocking eventfd used as a doorbell.
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A quiet doorbell.
    pub fn new() -> Result<EventFd> {
        // SAFETY: eventfd has no pointer arguments.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::last("eventfd"));
        }
        // SAFETY: fd was just returned to us and is owned by nobody else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the descriptor readable.
    pub fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: our open eventfd; 8 bytes from a live u64.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Makes the descriptor quiet again.
    pub fn clear(&self) {
        let mut buf = 0u64;
        // SAFETY: our open, non-blocking eventfd; 8 bytes into a live u64.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut buf as *mut u64).cast(), 8) };
    }

    /// The descriptor.
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
