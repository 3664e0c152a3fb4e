//! getsockopt and setsockopt on demi sockets.
//!
//! Options go to the libOS first (catnap hands them to its kernel socket).
//! The options servers commonly set and a libOS may not know (catmint has no
//! SO_REUSEADDR) are then kept here, so setting succeeds and getsockopt
//! returns what was set. SO_ERROR, SO_TYPE, SO_DOMAIN, SO_PROTOCOL,
//! SO_ACCEPTCONN and the timeouts are answered here.

use crate::ex_sock::bytes;
use crate::fdtab;
use crate::guard::{boundary, Ret};
use crate::real;
use crate::sock::Phase;
use crate::state::lock;
use libc::{c_int, c_void, socklen_t};
use std::time::Duration;

/// Options a server may set that a libOS need not understand.
fn tolerated(level: c_int, name: c_int) -> bool {
    match level {
        libc::SOL_SOCKET => matches!(
            name,
            libc::SO_REUSEADDR
                | libc::SO_REUSEPORT
                | libc::SO_KEEPALIVE
                | libc::SO_LINGER
                | libc::SO_RCVBUF
                | libc::SO_SNDBUF
                | libc::SO_RCVLOWAT
                | libc::SO_SNDLOWAT
                | libc::SO_BROADCAST
                | libc::SO_OOBINLINE
                | libc::SO_PRIORITY
        ),
        libc::IPPROTO_TCP => matches!(
            name,
            libc::TCP_NODELAY
                | libc::TCP_KEEPIDLE
                | libc::TCP_KEEPINTVL
                | libc::TCP_KEEPCNT
                | libc::TCP_CORK
                | libc::TCP_QUICKACK
                | libc::TCP_USER_TIMEOUT
                | libc::TCP_DEFER_ACCEPT
                | libc::TCP_FASTOPEN
        ),
        libc::IPPROTO_IP => matches!(name, libc::IP_TOS | libc::IP_TTL),
        _ => false,
    }
}

fn timeval(v: &[u8]) -> Ret<Option<Duration>> {
    if v.len() < std::mem::size_of::<libc::timeval>() {
        return Err(libc::EINVAL);
    }
    // SAFETY: v holds a whole timeval (checked); read unaligned.
    let tv = unsafe { std::ptr::read_unaligned(v.as_ptr().cast::<libc::timeval>()) };
    if tv.tv_usec < 0 || tv.tv_usec >= 1_000_000 || tv.tv_sec < 0 {
        return Err(libc::EDOM);
    }
    let d = Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64);
    Ok((!d.is_zero()).then_some(d))
}

#[no_mangle]
pub unsafe extern "C" fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::setsockopt(fd, level, name, val, len) };
    }
    boundary("setsockopt", || {
        if val.is_null() && len > 0 {
            return Err(libc::EFAULT);
        }
        // SAFETY: the program passes len readable bytes (setsockopt's contract).
        let v = unsafe { bytes(val, len as usize) }.to_vec();
        let mut st = lock();
        let (qd, os) = (st.qd(fd)?, st.libos()?);
        if level == libc::SOL_SOCKET && (name == libc::SO_RCVTIMEO || name == libc::SO_SNDTIMEO) {
            let t = timeval(&v)?;
            let s = st.sock(fd)?;
            if name == libc::SO_RCVTIMEO {
                s.rcv_timeout = t;
            } else {
                s.snd_timeout = t;
            }
            return Ok(0);
        }
        match os.setsockopt(qd, level, name, &v) {
            Ok(()) => Ok(0),
            Err(e) if tolerated(level, name) => {
                log::debug!("demi preload: fd {fd}: {} ignores option {level}/{name} ({e}); kept", os.name());
                st.sock(fd)?.opts.insert((level, name), v);
                Ok(0)
            }
            Err(e) => Err(e.errno()),
        }
    })
}

/// Copies `v` into the program's (val, len) pair, truncated as the kernel does.
///
/// # Safety
/// `val` has `*len` writable bytes; `len` is valid.
unsafe fn put(v: &[u8], val: *mut c_void, len: *mut socklen_t) -> Ret<c_int> {
    if len.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller's contract.
    let room = unsafe { *len } as usize;
    let n = room.min(v.len());
    if n > 0 && val.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: n bytes fit in the caller's buffer; v is live.
    unsafe {
        std::ptr::copy_nonoverlapping(v.as_ptr(), val.cast::<u8>(), n);
        *len = n as socklen_t;
    }
    Ok(0)
}

#[no_mangle]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::getsockopt(fd, level, name, val, len) };
    }
    boundary("getsockopt", || {
        let mut st = lock();
        let (qd, os) = (st.qd(fd)?, st.libos()?);
        let s = st.sock(fd)?;
        let int = |v: i32| v.to_ne_bytes().to_vec();
        let local: Option<Vec<u8>> = match (level, name) {
            (libc::SOL_SOCKET, libc::SO_ERROR) => Some(int(std::mem::take(&mut s.so_error))),
            (libc::SOL_SOCKET, libc::SO_TYPE) => {
                Some(int(if s.is_stream() { libc::SOCK_STREAM } else { libc::SOCK_DGRAM }))
            }
            (libc::SOL_SOCKET, libc::SO_DOMAIN) => Some(int(libc::AF_INET)),
            (libc::SOL_SOCKET, libc::SO_PROTOCOL) => {
                Some(int(if s.is_stream() { libc::IPPROTO_TCP } else { libc::IPPROTO_UDP }))
            }
            (libc::SOL_SOCKET, libc::SO_ACCEPTCONN) => Some(int((s.phase == Phase::Listening) as i32)),
            (libc::SOL_SOCKET, libc::SO_RCVTIMEO | libc::SO_SNDTIMEO) => {
                let t = if name == libc::SO_RCVTIMEO { s.rcv_timeout } else { s.snd_timeout }.unwrap_or_default();
                let tv = libc::timeval { tv_sec: t.as_secs() as _, tv_usec: t.subsec_micros() as _ };
                // SAFETY: a timeval is plain old data; view its bytes.
                Some(
                    unsafe { bytes((&tv as *const libc::timeval).cast(), std::mem::size_of::<libc::timeval>()) }
                        .to_vec(),
                )
            }
            _ => None,
        };
        if let Some(v) = local {
            // SAFETY: getsockopt's contract on (val, len).
            return unsafe { put(&v, val, len) };
        }
        let kept = s.opts.get(&(level, name)).cloned();
        if len.is_null() {
            return Err(libc::EFAULT);
        }
        // SAFETY: len is valid (getsockopt's contract).
        let room = unsafe { *len } as usize;
        let mut buf = vec![0u8; room.min(4096)];
        match os.getsockopt(qd, level, name, &mut buf) {
            // SAFETY: as above.
            Ok(n) => unsafe { put(&buf[..n.min(buf.len())], val, len) },
            // SAFETY: as above.
            Err(_) if kept.is_some() => unsafe { put(kept.as_deref().unwrap_or_default(), val, len) },
            Err(e) => Err(e.errno()),
        }
    })
}
