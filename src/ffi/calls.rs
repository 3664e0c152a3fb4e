//! `demi_init` and the socket calls of `include/demi/libos.h`.
#![allow(clippy::missing_safety_doc)]

use super::types::{demi_args, demi_qtoken_t, demi_sgarray_t};
use super::{boundary, input, libos, output, put, sockaddr_in, to_c_addr, INIT, LIBOS};
use crate::config::Config;
use crate::error::fail;
use crate::LibOs;
use libc::{c_int, c_void, sockaddr, socklen_t};

/// Largest option value passed through get/setsockopt.
const MAX_OPTLEN: usize = 256;

/// Starts the libOS named by `LIBOS` (default catnap), configured from the
/// environment once (`demi::Config::from_env`). `args` may be NULL; its
/// fields are accepted and not used. See demi_init(3).
#[no_mangle]
pub extern "C" fn demi_init(args: *const demi_args) -> c_int {
    let _ = args;
    boundary("demi_init", || {
        crate::init_logging();
        let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
        if LIBOS.get().is_some() {
            return fail(libc::EEXIST, "demi_init was already called");
        }
        let cfg = Config::from_env().inspect_err(|e| log::error!("demi_init: {e}"))?;
        let os = LibOs::with_config(&cfg).inspect_err(|e| log::error!("demi_init: LIBOS={}: {e}", cfg.libos))?;
        log::info!("demi_init: libOS {} is up", cfg.libos);
        let _ = LIBOS.set(os);
        Ok(())
    })
}

/// Creates a socket queue (AF_INET; SOCK_STREAM or SOCK_DGRAM) and writes its
/// descriptor to `*sockqd_out`. See demi_socket(3).
/// cbindgen:prefix=ATTR_NONNULL(1)
#[no_mangle]
pub extern "C" fn demi_socket(sockqd_out: *mut c_int, domain: c_int, r#type: c_int, protocol: c_int) -> c_int {
    boundary("demi_socket", || {
        let os = libos()?;
        let out = output(sockqd_out, "sockqd_out is NULL")?;
        let qd = os.socket_raw(domain, r#type, protocol)?;
        // SAFETY: out was checked non-null; the caller provides storage for an int.
        unsafe { put(out, qd) };
        Ok(())
    })
}

/// Binds a socket queue to a local IPv4 address. See demi_bind(3).
///
/// # Safety
/// `addr` must be NULL or readable for `size` bytes.
/// cbindgen:prefix=ATTR_NONNULL(2)
#[no_mangle]
pub unsafe extern "C" fn demi_bind(qd: c_int, addr: *const sockaddr, size: socklen_t) -> c_int {
    boundary("demi_bind", || {
        let os = libos()?;
        os.local_addr(qd)?; // EBADF before looking at the address, as connect does
                            // SAFETY: forwarded from this function's contract.
        let a = unsafe { sockaddr_in(addr, size) }?;
        os.bind(qd, a)
    })
}

/// Makes a stream socket queue accept connections. See demi_listen(3).
#[no_mangle]
pub extern "C" fn demi_listen(qd: c_int, backlog: c_int) -> c_int {
    boundary("demi_listen", || libos()?.listen(qd, backlog))
}

/// Starts accepting one connection; the result (`DEMI_OPC_ACCEPT`) carries the
/// new queue and the peer. See demi_accept(3).
/// cbindgen:prefix=ATTR_NONNULL(1)
#[no_mangle]
pub extern "C" fn demi_accept(qt_out: *mut demi_qtoken_t, qd: c_int) -> c_int {
    boundary("demi_accept", || {
        let os = libos()?;
        let out = output(qt_out, "qt_out is NULL")?;
        let qt = os.accept(qd)?;
        // SAFETY: out was checked non-null.
        unsafe { put(out, qt) };
        Ok(())
    })
}

/// Starts connecting to `addr` (a datagram socket only sets its default peer).
/// See demi_connect(3).
///
/// # Safety
/// `addr` must be NULL or readable for `size` bytes.
/// cbindgen:prefix=ATTR_NONNULL(1, 3)
#[no_mangle]
pub unsafe extern "C" fn demi_connect(
    qt_out: *mut demi_qtoken_t,
    qd: c_int,
    addr: *const sockaddr,
    size: socklen_t,
) -> c_int {
    boundary("demi_connect", || {
        let os = libos()?;
        let out = output(qt_out, "qt_out is NULL")?;
        // SAFETY: forwarded from this function's contract.
        let a = unsafe { sockaddr_in(addr, size) };
        // An unknown descriptor is EBADF whatever the address says.
        let a = match a {
            Err(e) => {
                os.local_addr(qd)?;
                return Err(e);
            }
            Ok(a) => a,
        };
        let qt = os.connect(qd, a)?;
        // SAFETY: out was checked non-null.
        unsafe { put(out, qt) };
        Ok(())
    })
}

/// Closes a queue; its pending operations complete with ECANCELED. See
/// demi_close(3).
#[no_mangle]
pub extern "C" fn demi_close(qd: c_int) -> c_int {
    boundary("demi_close", || libos()?.close(qd))
}

/// Starts sending `sga` on a connected queue. See demi_push(3).
///
/// # Safety
/// `sga` must be NULL or point to a readable `demi_sgarray_t` whose segment
/// is readable for `sgaseg_len` bytes until the push completes.
/// cbindgen:prefix=ATTR_NONNULL(1, 3)
#[no_mangle]
pub unsafe extern "C" fn demi_push(qt_out: *mut demi_qtoken_t, qd: c_int, sga: *const demi_sgarray_t) -> c_int {
    boundary("demi_push", || {
        let os = libos()?;
        let out = output(qt_out, "qt_out is NULL")?;
        // SAFETY: forwarded from this function's contract.
        let sga = unsafe { input(sga, "sga is NULL") }?;
        // SAFETY: forwarded from this function's contract.
        let lent = unsafe { super::sga::lent_elsewhere(os, qd, sga) }?;
        let qt = os.run_for(qd, |e| {
            e.local_addr(qd)?; // EBADF before looking at the sga
            let buf = match lent {
                Some(b) => b,
                // SAFETY: forwarded from this function's contract.
                None => unsafe { super::sga::to_buffer(e, sga) }?,
            };
            e.push(qd, buf, None)
        })?;
        // SAFETY: out was checked non-null.
        unsafe { put(out, qt) };
        Ok(())
    })
}

/// Starts sending `sga` to `dest_addr` on a datagram queue. See demi_pushto(3).
///
/// # Safety
/// As `demi_push`, and `dest_addr` must be NULL or readable for `size` bytes.
/// cbindgen:prefix=ATTR_NONNULL(1, 3, 4)
#[no_mangle]
pub unsafe extern "C" fn demi_pushto(
    qt_out: *mut demi_qtoken_t,
    qd: c_int,
    sga: *const demi_sgarray_t,
    dest_addr: *const sockaddr,
    size: socklen_t,
) -> c_int {
    boundary("demi_pushto", || {
        let os = libos()?;
        let out = output(qt_out, "qt_out is NULL")?;
        // SAFETY: forwarded from this function's contract (NULL is checked below).
        let lent = match unsafe { sga.as_ref() } {
            // SAFETY: forwarded from this function's contract.
            Some(s) => unsafe { super::sga::lent_elsewhere(os, qd, s) }?,
            None => None,
        };
        let qt = os.run_for(qd, |e| {
            e.local_addr(qd)?; // EBADF first
                               // SAFETY: forwarded from this function's contract.
            let to = unsafe { sockaddr_in(dest_addr, size) }?;
            // SAFETY: forwarded from this function's contract.
            let sga = unsafe { input(sga, "sga is NULL") }?;
            let buf = match lent {
                Some(b) => b,
                // SAFETY: forwarded from this function's contract.
                None => unsafe { super::sga::to_buffer(e, sga) }?,
            };
            e.push(qd, buf, Some(to))
        })?;
        // SAFETY: out was checked non-null.
        unsafe { put(out, qt) };
        Ok(())
    })
}

/// Starts receiving; the result (`DEMI_OPC_POP`) carries an sga to free with
/// demi_sgafree(). See demi_pop(3).
/// cbindgen:prefix=ATTR_NONNULL(1)
#[no_mangle]
pub extern "C" fn demi_pop(qt_out: *mut demi_qtoken_t, qd: c_int) -> c_int {
    boundary("demi_pop", || {
        let os = libos()?;
        let out = output(qt_out, "qt_out is NULL")?;
        let qt = os.pop(qd)?;
        // SAFETY: out was checked non-null.
        unsafe { put(out, qt) };
        Ok(())
    })
}

/// Sets a socket option. See demi_setsockopt(3).
///
/// # Safety
/// `optval` must be NULL or readable for `optlen` bytes.
/// cbindgen:prefix=ATTR_NONNULL(4)
#[no_mangle]
pub unsafe extern "C" fn demi_setsockopt(
    qd: c_int,
    level: c_int,
    optname: c_int,
    optval: *const c_void,
    optlen: socklen_t,
) -> c_int {
    boundary("demi_setsockopt", || {
        let os = libos()?;
        if optval.is_null() {
            return fail(libc::EINVAL, "optval is NULL");
        }
        if optlen as usize > MAX_OPTLEN {
            return fail(libc::EINVAL, "optlen is too large");
        }
        // SAFETY: optval is non-null and the caller vouches for optlen bytes.
        let val = unsafe { std::slice::from_raw_parts(optval.cast::<u8>(), optlen as usize) };
        os.setsockopt(qd, level, optname, val)
    })
}

/// Reads a socket option. See demi_getsockopt(3).
///
/// # Safety
/// `optval` must be NULL or writable for `*optlen` bytes; `optlen` NULL or valid.
/// cbindgen:prefix=ATTR_NONNULL(4)
#[no_mangle]
pub unsafe extern "C" fn demi_getsockopt(
    qd: c_int,
    level: c_int,
    optname: c_int,
    optval: *mut c_void,
    optlen: *mut socklen_t,
) -> c_int {
    boundary("demi_getsockopt", || {
        let os = libos()?;
        let optval = output(optval, "optval is NULL")?;
        let optlen = output(optlen, "optlen is NULL")?;
        // SAFETY: optlen was checked non-null.
        let room = unsafe { optlen.read_unaligned() } as usize;
        let mut tmp = [0u8; MAX_OPTLEN];
        let n = os.getsockopt(qd, level, optname, &mut tmp[..room.min(MAX_OPTLEN)])?;
        // SAFETY: optval is non-null and writable for room >= n bytes.
        unsafe { std::ptr::copy_nonoverlapping(tmp.as_ptr(), optval.cast::<u8>(), n) };
        // SAFETY: optlen was checked non-null.
        unsafe { put(optlen, n as socklen_t) };
        Ok(())
    })
}

/// Writes the address of the connected peer. See demi_getpeername(3).
///
/// # Safety
/// `addr` must be NULL or writable for `*addrlen` bytes; `addrlen` NULL or valid.
/// cbindgen:prefix=ATTR_NONNULL(2)
#[no_mangle]
pub unsafe extern "C" fn demi_getpeername(qd: c_int, addr: *mut sockaddr, addrlen: *mut socklen_t) -> c_int {
    boundary("demi_getpeername", || {
        let os = libos()?;
        let addr = output(addr, "addr is NULL")?;
        let addrlen = output(addrlen, "addrlen is NULL")?;
        let peer = os.peer_addr(qd)?;
        let sin = to_c_addr(peer);
        let full = std::mem::size_of::<libc::sockaddr_in>();
        // SAFETY: addrlen was checked non-null.
        let room = unsafe { addrlen.read_unaligned() } as usize;
        // As getpeername(2): truncate to the room given, report the full size.
        // SAFETY: addr is non-null and writable for room bytes; we copy at most that.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&sin as *const libc::sockaddr_in).cast::<u8>(),
                addr.cast::<u8>(),
                room.min(full),
            );
            put(addrlen, full as socklen_t);
        }
        Ok(())
    })
}
