//! Re-entrancy and the panic boundary.
//!
//! While a thread is inside one of this library's functions, every socket,
//! poll or epoll call it makes (the libOS's own: catnap opens kernel sockets
//! and sleeps in epoll) must reach the C library, not this library again. A
//! thread-local flag says "inside"; the interposed functions that could be
//! reached that way check it and pass straight through.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// True while this thread runs this library's code (or while its
/// thread-local storage is being torn down: then pass everything through).
pub fn inside() -> bool {
    INSIDE.try_with(|c| c.get()).unwrap_or(true)
}

/// Marks this thread as inside until dropped.
pub struct Inside(bool);

impl Inside {
    pub fn enter() -> Inside {
        Inside(INSIDE.try_with(|c| c.replace(true)).unwrap_or(true))
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let was = self.0;
        let _ = INSIDE.try_with(|c| c.set(was));
    }
}

/// Sets the calling thread's `errno`.
pub fn set_errno(e: i32) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

/// Reads the calling thread's `errno`.
pub fn errno() -> i32 {
    // SAFETY: as in set_errno.
    unsafe { *libc::__errno_location() }
}

/// Result of an interposed call: a value, or a positive errno.
pub type Ret<T> = Result<T, i32>;

/// Runs the body of an interposed function: marks the thread inside, turns
/// `Err(errno)` into `-1` with `errno` set, and catches panics (they become
/// `EIO`, with one line on stderr) so none unwinds into C.
pub fn boundary<T: From<i8>>(name: &str, f: impl FnOnce() -> Ret<T>) -> T {
    let _in = Inside::enter();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_errno(e);
            T::from(-1)
        }
        Err(_) => {
            eprintln!("demi preload: internal error in {name} (a panic, caught); the call fails with EIO");
            set_errno(libc::EIO);
            T::from(-1)
        }
    }
}
