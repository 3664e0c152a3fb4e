//! The few Linux calls the engine itself needs (eventfd, ppoll), each behind
//! one small safe function. Socket calls of catnap live in `catnap::sys`.
#![allow(unsafe_code)]

use crate::error::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Calls a libc function and turns a `-1` return into `Err(Error::last_os)`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: the caller passes arguments that satisfy the libc contract
        // of this call; each use site states why.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err($crate::error::Error::last_os(stringify!($fn)))
        } else {
            Ok(res)
        }
    }};
}
pub(crate) use syscall;

/// A non-blocking eventfd used to wake threads sleeping in `wait`.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> Result<Self> {
        let fd = syscall!(eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))?;
        // SAFETY: eventfd just returned this descriptor and nothing else owns it.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Resets the counter so the fd is no longer readable.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our own non-blocking eventfd.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Sleeps until one of `fds` is readable or `timeout` passes (None: forever);
/// returns a bit mask of the readable ones among the first 32. Signals
/// interrupt the sleep; the caller re-checks its condition anyway. Up to
/// four descriptors cost no allocation.
pub fn wait_readable(fds: &[RawFd], timeout: Option<Duration>) -> Result<u32> {
    let mut inline = [libc::pollfd { fd: -1, events: 0, revents: 0 }; 4];
    let mut heap = Vec::new();
    let pfds: &mut [libc::pollfd] = if fds.len() <= inline.len() {
        &mut inline[..fds.len()]
    } else {
        heap.resize(fds.len(), libc::pollfd { fd: -1, events: 0, revents: 0 });
        &mut heap
    };
    for (p, fd) in pfds.iter_mut().zip(fds) {
        p.fd = *fd;
        p.events = libc::POLLIN;
    }
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: pfds holds pfds.len() initialised entries; tsp is null or
    // points to a live timespec.
    let rc = unsafe { libc::ppoll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, tsp, std::ptr::null()) };
    if rc < 0 {
        let e = Error::last_os("ppoll");
        if e.errno() != libc::EINTR {
            return Err(e);
        }
        return Ok(0);
    }
    Ok(pfds.iter().take(32).enumerate().filter(|(_, p)| p.revents != 0).fold(0, |m, (i, _)| m | 1 << i))
}
