//! The C ABI: a thin layer over [`crate::LibOs`].
//!
//! Rules every exported function follows (as in rustls-ffi):
//! - the body runs inside `boundary`, so a panic becomes ENOTRECOVERABLE
//!   instead of unwinding into C;
//! - every pointer is checked before use (NULL gives EINVAL);
//! - out-parameters are written only on success;
//! - the return value is 0 or a positive errno.
#![allow(unsafe_code)]

mod calls;
#[doc(hidden)]
pub mod fuzzing;
mod sga;
pub mod types;
mod wait;

use crate::error::{fail, Error, Result};
use crate::LibOs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, OnceLock};

/// The process-wide libOS the C ABI drives, set once by `demi_init`.
static LIBOS: OnceLock<LibOs> = OnceLock::new();
/// Serialises `demi_init` so two racing calls cannot both start a libOS.
static INIT: Mutex<()> = Mutex::new(());

/// The initialised libOS, or EPERM before `demi_init` succeeded.
fn libos() -> Result<&'static LibOs> {
    LIBOS.get().ok_or_else(|| Error::new(libc::EPERM, "demi_init has not succeeded yet"))
}

/// Runs `f`, turning its error into a positive errno (logged at debug) and a
/// panic into ENOTRECOVERABLE.
fn boundary(call: &'static str, f: impl FnOnce() -> Result<()>) -> libc::c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            log::debug!("{call}: {e}");
            e.errno()
        }
        Err(_) => {
            log::error!("{call}: internal panic caught at the C boundary");
            libc::ENOTRECOVERABLE
        }
    }
}

/// Borrows a C input pointer, refusing NULL.
///
/// # Safety
/// A non-null `p` must point to a live, readable `T` for the returned lifetime.
unsafe fn input<'a, T>(p: *const T, what: &'static str) -> Result<&'a T> {
    // SAFETY: the caller guarantees p is null or valid.
    match unsafe { p.as_ref() } {
        Some(r) => Ok(r),
        None => Err(Error::new(libc::EINVAL, what)),
    }
}

/// Checks a C output pointer is not NULL.
fn output<T>(p: *mut T, what: &'static str) -> Result<*mut T> {
    if p.is_null() {
        fail(libc::EINVAL, what)
    } else {
        Ok(p)
    }
}

/// Writes an out-parameter (possibly unaligned, as in packed structs).
///
/// # Safety
/// `p` must be non-null and valid for writes of a `T`.
unsafe fn put<T>(p: *mut T, v: T) {
    // SAFETY: the caller checked p with `output` and C owns valid storage there.
    unsafe { p.write_unaligned(v) }
}

/// Parses a C socket address: NULL, a short size or a family other than
/// AF_INET give EINVAL.
///
/// # Safety
/// A non-null `addr` must be readable for `len` bytes.
unsafe fn sockaddr_in(addr: *const libc::sockaddr, len: libc::socklen_t) -> Result<SocketAddrV4> {
    if addr.is_null() {
        return fail(libc::EINVAL, "address is NULL");
    }
    if (len as usize) < std::mem::size_of::<libc::sockaddr_in>() {
        return fail(libc::EINVAL, "address size is too small for sockaddr_in");
    }
    // SAFETY: addr is non-null and readable for len >= sizeof(sockaddr_in) bytes.
    let sin = unsafe { addr.cast::<libc::sockaddr_in>().read_unaligned() };
    if i32::from(sin.sin_family) != libc::AF_INET {
        return fail(libc::EINVAL, "address family is not AF_INET");
    }
    Ok(from_c_addr(&sin))
}

fn from_c_addr(sin: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)), u16::from_be(sin.sin_port))
}

fn to_c_addr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    }
}
