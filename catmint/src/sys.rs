//! The raw rdma-core API and the two macros that turn its C conventions into
//! `Result`: `-1`/errno returns (`check!`) and NULL-on-failure pointers
//! (`nonnull!`). Every other module calls rdma-core only through these.

pub use rdma_sys as ffi;

use std::fmt;

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

/// Calls an rdma-core function returning `int` (0 or -1 with errno).
macro_rules! check {
    ($f:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: each call site passes arguments that satisfy the function's
        // contract (live objects this crate owns); see the comment there.
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

/// Calls an rdma-core function returning a pointer (NULL with errno on failure).
macro_rules! nonnull {
    ($f:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: as for `check!`: the call site's arguments are live and valid.
        let p = unsafe { $crate::sys::ffi::$f($($arg),*) };
        match std::ptr::NonNull::new(p) {
            Some(p) => Ok(p),
            None => Err($crate::sys::Error::last(stringify!($f))),
        }
    }};
}
pub(crate) use nonnull;
