//! The data calls: read/recv*/readv and write/send*/writev on demi sockets.
//!
//! Reads take from what the pop posted ahead brought (a stream pop larger
//! than the program's buffer is kept for the next read); writes copy into
//! libOS memory and push, up to the socket's bound on unsent bytes.

use crate::addr;
use crate::fdtab;
use crate::guard::{boundary, Ret};
use crate::real;
use crate::sock::Phase;
use crate::state::{lock, Op, State};
use crate::wait::block;
use libc::{c_int, c_void, iovec, msghdr, size_t, sockaddr, socklen_t, ssize_t};
use std::net::SocketAddrV4;
use std::os::fd::RawFd;

/// Largest single push of stream bytes.
const CHUNK: usize = 256 << 10;

/// What one receive produced: bytes copied, the sender (datagrams), and the
/// datagram's full length (longer than copied: truncated).
struct Got {
    n: usize,
    from: Option<SocketAddrV4>,
    full: usize,
}

/// The program's buffers from an iovec array.
///
/// # Safety
/// `iov` points to `cnt` iovecs, each naming writable memory.
unsafe fn iov_mut<'a>(iov: *const iovec, cnt: c_int) -> Ret<Vec<&'a mut [u8]>> {
    if !(0..=libc::UIO_MAXIOV).contains(&cnt) {
        return Err(libc::EINVAL);
    }
    if cnt > 0 && iov.is_null() {
        return Err(libc::EFAULT);
    }
    let mut v = Vec::with_capacity(cnt as usize);
    for i in 0..cnt as usize {
        // SAFETY: i < cnt, within the caller's array.
        let e = unsafe { *iov.add(i) };
        if e.iov_len > 0 {
            if e.iov_base.is_null() {
                return Err(libc::EFAULT);
            }
            // SAFETY: the caller names iov_len writable bytes at iov_base.
            v.push(unsafe { std::slice::from_raw_parts_mut(e.iov_base.cast::<u8>(), e.iov_len) });
        }
    }
    Ok(v)
}

/// As [`iov_mut`], read-only.
///
/// # Safety
/// As for [`iov_mut`], readable memory.
unsafe fn iov_ref<'a>(iov: *const iovec, cnt: c_int) -> Ret<Vec<&'a [u8]>> {
    // SAFETY: the same contract, used read-only.
    Ok(unsafe { iov_mut(iov, cnt) }?.into_iter().map(|s| &*s).collect())
}

/// Skips the first `skip` bytes of `parts`.
fn skip<'b>(parts: &'b mut [&mut [u8]], mut skip: usize) -> Vec<&'b mut [u8]> {
    let mut out = Vec::new();
    for p in parts.iter_mut() {
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        out.push(&mut p[skip..]);
        skip = 0;
    }
    out
}

fn recv_core(fd: RawFd, parts: &mut [&mut [u8]], flags: c_int) -> Ret<Got> {
    if flags & libc::MSG_OOB != 0 {
        return Err(libc::EINVAL);
    }
    let (peek, dontwait, waitall) =
        (flags & libc::MSG_PEEK != 0, flags & libc::MSG_DONTWAIT != 0, flags & libc::MSG_WAITALL != 0);
    let want: usize = parts.iter().map(|p| p.len()).sum();
    let timeout = lock().sock(fd)?.rcv_timeout;
    let mut got = 0;
    let r = block(timeout, |st: &mut State| {
        let rcvbuf = st.cfg.rcvbuf;
        let os = match st.libos() {
            Ok(os) => os,
            Err(e) => return Some(Err(e)),
        };
        let s = match st.sock(fd) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let (qd, nonblock) = (s.qd, s.nonblock || dontwait);
        if !s.is_stream() {
            let Some((buf, from)) = s.dgrams.front() else {
                return if nonblock { Some(Err(libc::EAGAIN)) } else { None };
            };
            let (mut n, full, from) = (0, buf.len(), *from);
            for p in parts.iter_mut() {
                let k = p.len().min(full - n);
                p[..k].copy_from_slice(&buf.as_slice()[n..n + k]);
                n += k;
            }
            if !peek {
                s.dgrams.pop_front();
                s.rx_bytes -= full;
                st.feed(&os, qd, rcvbuf);
            }
            return Some(Ok(Got { n, from, full }));
        }
        match s.phase {
            Phase::Connected => {}
            Phase::Connecting if nonblock => return Some(Err(libc::EAGAIN)),
            Phase::Connecting => return None,
            _ => return Some(Err(libc::ENOTCONN)),
        }
        if s.rx_bytes > 0 && want > got {
            let n = s.take_stream(&mut skip(parts, got), peek);
            if !peek {
                got += n;
            }
            st.feed(&os, qd, rcvbuf);
            let s = st.sock(fd).ok()?;
            let more = waitall && !peek && !nonblock && got < want && !s.eof && s.err.is_none() && !s.shut_rd;
            return if more { None } else { Some(Ok(Got { n: if peek { n } else { got }, from: None, full: 0 })) };
        }
        if got > 0 || want == 0 {
            return Some(Ok(Got { n: got, from: None, full: 0 }));
        }
        if let Some(e) = s.err {
            if !s.err_reported {
                s.err_reported = true;
                return Some(Err(e));
            }
            return Some(Ok(Got { n: 0, from: None, full: 0 }));
        }
        if s.eof || s.shut_rd {
            return Some(Ok(Got { n: 0, from: None, full: 0 }));
        }
        if nonblock {
            Some(Err(libc::EAGAIN))
        } else {
            None
        }
    })?;
    let mut g = r.ok_or(libc::EAGAIN)?;
    if g.full == 0 {
        g.full = g.n;
    }
    Ok(g)
}

/// The signal a broken stream's EPIPE comes with, unless MSG_NOSIGNAL (as
/// the kernel). Raised after the state's lock is released: the program's
/// handler may call into the library.
fn sigpipe(r: &Ret<usize>, flags: c_int) {
    if matches!(r, Err(libc::EPIPE)) && flags & libc::MSG_NOSIGNAL == 0 {
        // SAFETY: plain system call: the signal the kernel would send.
        unsafe { libc::raise(libc::SIGPIPE) };
    }
}

fn send_core(fd: RawFd, parts: &[&[u8]], flags: c_int, to: Option<SocketAddrV4>) -> Ret<usize> {
    let dontwait = flags & libc::MSG_DONTWAIT != 0;
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let timeout = lock().sock(fd)?.snd_timeout;
    let mut sent = 0;
    let r = block(timeout, |st: &mut State| {
        let (sndbuf, rcvbuf) = (st.cfg.sndbuf, st.cfg.rcvbuf);
        let os = match st.libos() {
            Ok(os) => os,
            Err(e) => return Some(Err(e)),
        };
        let s = match st.sock(fd) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let (qd, nonblock, stream) = (s.qd, s.nonblock || dontwait, s.is_stream());
        if stream {
            if let Some(e) = s.err {
                if sent > 0 {
                    return Some(Ok(sent));
                }
                if !s.err_reported {
                    s.err_reported = true;
                    return Some(Err(e));
                }
                return Some(Err(libc::EPIPE));
            }
            match s.phase {
                Phase::Connected if s.shut_wr => return Some(Err(libc::EPIPE)),
                Phase::Connected => {}
                Phase::Connecting if nonblock => return Some(Err(libc::EAGAIN)),
                Phase::Connecting => return None,
                _ => return Some(Err(libc::EPIPE)),
            }
            if total == 0 {
                return Some(Ok(0));
            }
        }
        if !stream && !s.addressed {
            if let Some(ip) = st.cfg.source {
                // DEMI_PRELOAD_SOURCE: send from that address.
                if let Err(e) = os.bind(qd, SocketAddrV4::new(ip, 0)) {
                    return Some(Err(e.errno()));
                }
                let local = os.local_addr(qd).ok().flatten();
                let s = st.sock(fd).ok()?;
                s.local = local;
                s.addressed = true;
                st.feed(&os, qd, rcvbuf);
            }
        }
        let s = st.sock(fd).ok()?;
        let target = if stream { None } else { to.or(s.peer) };
        if !stream {
            if target.is_none() {
                return Some(Err(libc::EDESTADDRREQ));
            }
            if total > os.max_datagram(qd).unwrap_or(65507) {
                return Some(Err(libc::EMSGSIZE));
            }
            if total == 0 {
                return Some(Ok(0));
            }
        }
        loop {
            let s = st.sock(fd).ok()?;
            let space = sndbuf.saturating_sub(s.unsent);
            // A datagram goes whole or not at all (an empty socket takes any).
            let fits = if stream { space > 0 } else { s.unsent == 0 || space >= total };
            if !fits {
                return match (nonblock, sent) {
                    (true, 0) => Some(Err(libc::EAGAIN)),
                    (true, n) => Some(Ok(n)),
                    (false, _) => None,
                };
            }
            let n = if stream { (total - sent).min(space).min(CHUNK) } else { total };
            let mut buf = match os.sgaalloc(n) {
                Ok(b) => b,
                Err(e) => return Some(if sent > 0 { Ok(sent) } else { Err(e.errno()) }),
            };
            fill(buf.as_mut_slice().expect("a fresh buffer is unshared"), parts, sent);
            let pushed = match target {
                Some(t) => os.pushto(qd, &buf, t),
                None => os.push(qd, &buf),
            };
            let qt = match pushed {
                Ok(qt) => qt,
                Err(e) => return Some(if sent > 0 { Ok(sent) } else { Err(e.errno()) }),
            };
            st.tokens.insert(qt, (qd, Op::Push(n)));
            st.stats.bytes_out += n as u64;
            let s = st.sock(fd).ok()?;
            s.unsent += n;
            sent += n;
            if !stream && !s.addressed {
                s.addressed = true;
                s.local = os.local_addr(qd).ok().flatten();
                st.feed(&os, qd, rcvbuf);
            }
            if sent == total {
                return Some(Ok(sent));
            }
        }
    });
    let r = match r {
        Err(e) => Err(e),
        Ok(Some(n)) => Ok(n),
        Ok(None) if sent > 0 => Ok(sent),
        Ok(None) => Err(libc::EAGAIN),
    };
    sigpipe(&r, flags);
    r
}

fn is_stream(fd: RawFd) -> Ret<bool> {
    Ok(lock().sock(fd)?.is_stream())
}

/// Copies `dst.len()` bytes of the concatenation of `parts`, from `from`.
fn fill(dst: &mut [u8], parts: &[&[u8]], mut from: usize) {
    let mut at = 0;
    for p in parts {
        if at == dst.len() {
            break;
        }
        if from >= p.len() {
            from -= p.len();
            continue;
        }
        let k = (p.len() - from).min(dst.len() - at);
        dst[at..at + k].copy_from_slice(&p[from..from + k]);
        at += k;
        from = 0;
    }
}

/// One buffer of the program's, as a slice (empty for length 0).
///
/// # Safety
/// `buf` names `n` writable bytes, or `n` is 0.
unsafe fn one_mut<'a>(buf: *mut c_void, n: size_t) -> Ret<Vec<&'a mut [u8]>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if buf.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller's contract.
    Ok(vec![unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), n) }])
}

/// # Safety
/// `buf` names `n` readable bytes, or `n` is 0.
unsafe fn one<'a>(buf: *const c_void, n: size_t) -> Ret<Vec<&'a [u8]>> {
    // SAFETY: the same contract, used read-only.
    Ok(unsafe { one_mut(buf.cast_mut(), n) }?.into_iter().map(|s| &*s).collect())
}

/// recvfrom's body (read, recv and their _chk forms use it too).
///
/// # Safety
/// The arguments follow recvfrom(2)'s contract.
unsafe fn do_recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    a: *mut sockaddr,
    l: *mut socklen_t,
) -> ssize_t {
    boundary("recvfrom", || {
        // SAFETY: the caller's contract.
        let mut parts = unsafe { one_mut(buf, n) }?;
        let g = recv_core(fd, &mut parts, flags)?;
        if let Some(from) = g.from {
            // SAFETY: the caller's contract on (a, l).
            unsafe { addr::write(from, a, l) }?;
        }
        let r = if flags & libc::MSG_TRUNC != 0 { g.full } else { g.n };
        Ok(r as ssize_t)
    })
}

/// # Safety
/// The arguments follow sendto(2)'s contract.
unsafe fn do_sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    a: *const sockaddr,
    l: socklen_t,
) -> ssize_t {
    boundary("sendto", || {
        // SAFETY: the caller's contract.
        let parts = unsafe { one(buf, n) }?;
        // A stream socket ignores the address, whatever it holds (as TCP does).
        // SAFETY: the caller's contract on (a, l).
        let to = if a.is_null() || is_stream(fd)? { None } else { Some(unsafe { addr::read(a, l) }?) };
        Ok(send_core(fd, &parts, flags, to)? as ssize_t)
    })
}

#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::read(fd, buf, n) };
    }
    // SAFETY: read's contract is recvfrom's with no flags and no address.
    unsafe { do_recvfrom(fd, buf, n, 0, std::ptr::null_mut(), std::ptr::null_mut()) }
}

#[no_mangle]
pub unsafe extern "C" fn __read_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> ssize_t {
    if !fdtab::is_sock(fd) || n > buflen {
        // SAFETY: passed on unchanged (the C library reports the overflow).
        return unsafe { real::__read_chk(fd, buf, n, buflen) };
    }
    // SAFETY: as in read.
    unsafe { do_recvfrom(fd, buf, n, 0, std::ptr::null_mut(), std::ptr::null_mut()) }
}

#[no_mangle]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::recv(fd, buf, n, flags) };
    }
    // SAFETY: recv's contract is recvfrom's with no address.
    unsafe { do_recvfrom(fd, buf, n, flags, std::ptr::null_mut(), std::ptr::null_mut()) }
}

#[no_mangle]
pub unsafe extern "C" fn __recv_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t, flags: c_int) -> ssize_t {
    if !fdtab::is_sock(fd) || n > buflen {
        // SAFETY: passed on unchanged (the C library reports the overflow).
        return unsafe { real::__recv_chk(fd, buf, n, buflen, flags) };
    }
    // SAFETY: as in recv.
    unsafe { do_recvfrom(fd, buf, n, flags, std::ptr::null_mut(), std::ptr::null_mut()) }
}

#[no_mangle]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    a: *mut sockaddr,
    l: *mut socklen_t,
) -> ssize_t {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::recvfrom(fd, buf, n, flags, a, l) };
    }
    // SAFETY: the program's arguments, recvfrom's contract.
    unsafe { do_recvfrom(fd, buf, n, flags, a, l) }
}

#[no_mangle]
pub unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
    a: *mut sockaddr,
    l: *mut socklen_t,
) -> ssize_t {
    if !fdtab::is_sock(fd) || n > buflen {
        // SAFETY: passed on unchanged (the C library reports the overflow).
        return unsafe { real::__recvfrom_chk(fd, buf, n, buflen, flags, a, l) };
    }
    // SAFETY: as in recvfrom.
    unsafe { do_recvfrom(fd, buf, n, flags, a, l) }
}

#[no_mangle]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::readv(fd, iov, cnt) };
    }
    boundary("readv", || {
        // SAFETY: readv's contract on (iov, cnt).
        let mut parts = unsafe { iov_mut(iov, cnt) }?;
        Ok(recv_core(fd, &mut parts, 0)?.n as ssize_t)
    })
}

#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::recvmsg(fd, msg, flags) };
    }
    boundary("recvmsg", || {
        if msg.is_null() {
            return Err(libc::EFAULT);
        }
        // SAFETY: msg is non-null and the program's live msghdr.
        let m = unsafe { &mut *msg };
        // SAFETY: recvmsg's contract on the iovec array.
        let mut parts = unsafe { iov_mut(m.msg_iov, m.msg_iovlen as c_int) }?;
        let g = recv_core(fd, &mut parts, flags)?;
        m.msg_flags = if g.full > g.n { libc::MSG_TRUNC } else { 0 };
        m.msg_controllen = 0;
        match g.from {
            Some(from) if !m.msg_name.is_null() => {
                // SAFETY: msg_name has msg_namelen writable bytes.
                unsafe { addr::write(from, m.msg_name.cast(), &mut m.msg_namelen) }?
            }
            _ => m.msg_namelen = 0,
        }
        Ok(if flags & libc::MSG_TRUNC != 0 { g.full } else { g.n } as ssize_t)
    })
}

#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::write(fd, buf, n) };
    }
    // SAFETY: write's contract is sendto's with no flags and no address.
    unsafe { do_sendto(fd, buf, n, 0, std::ptr::null(), 0) }
}

#[no_mangle]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::send(fd, buf, n, flags) };
    }
    // SAFETY: send's contract is sendto's with no address.
    unsafe { do_sendto(fd, buf, n, flags, std::ptr::null(), 0) }
}

#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    a: *const sockaddr,
    l: socklen_t,
) -> ssize_t {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::sendto(fd, buf, n, flags, a, l) };
    }
    // SAFETY: the program's arguments, sendto's contract.
    unsafe { do_sendto(fd, buf, n, flags, a, l) }
}

#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::writev(fd, iov, cnt) };
    }
    boundary("writev", || {
        // SAFETY: writev's contract on (iov, cnt).
        let parts = unsafe { iov_ref(iov, cnt) }?;
        Ok(send_core(fd, &parts, 0, None)? as ssize_t)
    })
}

#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::sendmsg(fd, msg, flags) };
    }
    boundary("sendmsg", || {
        if msg.is_null() {
            return Err(libc::EFAULT);
        }
        // SAFETY: msg is non-null and the program's live msghdr.
        let m = unsafe { &*msg };
        // SAFETY: sendmsg's contract on the iovec array.
        let parts = unsafe { iov_ref(m.msg_iov, m.msg_iovlen as c_int) }?;
        let to = if m.msg_name.is_null() || m.msg_namelen == 0 || is_stream(fd)? {
            None
        } else {
            // SAFETY: msg_name has msg_namelen readable bytes.
            Some(unsafe { addr::read(m.msg_name.cast(), m.msg_namelen) }?)
        };
        Ok(send_core(fd, &parts, flags, to)? as ssize_t)
    })
}
