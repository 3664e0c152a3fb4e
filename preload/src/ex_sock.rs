//! socket, bind, listen, accept, connect, shutdown, close, the names and
//! the options.

use crate::addr;
use crate::fdtab;
use crate::guard::{boundary, inside, Ret};
use crate::real;
use crate::sock::{Phase, Sock};
use crate::state::{lock, State};
use crate::wait::block;
use demi::SockType;
use libc::{c_int, c_void, sockaddr, socklen_t};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

/// Reserves a descriptor number with the kernel for a demi socket: an
/// unbound AF_UNIX datagram socket (fstat says "socket", as programs
/// expect), close-on-exec since a demi socket cannot survive exec.
pub fn reserve() -> Ret<RawFd> {
    // SAFETY: plain system call through the C library; checked.
    let fd = unsafe { real::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(crate::guard::errno());
    }
    if !fdtab::fits(fd) {
        // SAFETY: closes the number just made.
        unsafe { real::close(fd) };
        return Err(libc::EMFILE);
    }
    Ok(fd)
}

#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, proto: c_int) -> c_int {
    let base = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    if inside() || domain != libc::AF_INET || (base != libc::SOCK_STREAM && base != libc::SOCK_DGRAM) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::socket(domain, ty, proto) };
    }
    boundary("socket", || {
        let mut st = lock();
        let os = st.os()?;
        let qd = match os.socket_raw(domain, ty, proto) {
            Ok(qd) => qd,
            Err(e) if matches!(e.errno(), libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT | libc::EOPNOTSUPP) => {
                log::info!(
                    "demi preload: {} does not serve socket({domain}, {ty}, {proto}) ({e}): the kernel does",
                    os.name()
                );
                // SAFETY: the program's own call, passed on unchanged.
                return Ok(unsafe { real::socket(domain, ty, proto) });
            }
            Err(e) => return Err(e.errno()),
        };
        let fd = match reserve() {
            Ok(fd) => fd,
            Err(e) => {
                let _ = os.close(qd);
                return Err(e);
            }
        };
        let kind = if base == libc::SOCK_STREAM { SockType::Stream } else { SockType::Datagram };
        let mut s = Sock::new(qd, kind);
        s.nonblock = ty & libc::SOCK_NONBLOCK != 0;
        st.socks.insert(qd, s);
        st.name_fd(fd, qd);
        st.stats.sockets += 1;
        log::debug!("demi preload: fd {fd} = {} qd {qd} ({kind:?})", os.name());
        Ok(fd)
    })
}

#[no_mangle]
pub unsafe extern "C" fn bind(fd: c_int, a: *const sockaddr, len: socklen_t) -> c_int {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::bind(fd, a, len) };
    }
    boundary("bind", || {
        // SAFETY: the program passes len readable bytes (bind's contract).
        let at = unsafe { addr::read(a, len) }?;
        let mut st = lock();
        let (qd, os) = (st.qd(fd)?, st.libos()?);
        os.bind(qd, at).map_err(|e| e.errno())?;
        let local = os.local_addr(qd).ok().flatten().unwrap_or(at);
        let rcvbuf = st.cfg.rcvbuf;
        let s = st.sock(fd)?;
        s.local = Some(local);
        s.addressed = true;
        st.feed(&os, qd, rcvbuf);
        log::debug!("demi preload: fd {fd} bound to {local}");
        Ok(0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::listen(fd, backlog) };
    }
    boundary("listen", || {
        let mut st = lock();
        let (qd, os) = (st.qd(fd)?, st.libos()?);
        os.listen(qd, backlog).map_err(|e| e.errno())?;
        let rcvbuf = st.cfg.rcvbuf;
        let s = st.sock(fd)?;
        s.phase = Phase::Listening;
        s.backlog_max = if backlog <= 0 { libc::SOMAXCONN as usize } else { (backlog as usize).min(4096) };
        let at = s.local.map(|a| a.to_string()).unwrap_or_default();
        log::info!("demi preload: fd {fd} listening on {at} ({})", os.name());
        st.stats.listening.push(at);
        st.feed(&os, qd, rcvbuf);
        Ok(0)
    })
}

fn accept_common(fd: RawFd, a: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> Ret<c_int> {
    if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
        return Err(libc::EINVAL);
    }
    let timeout = lock().sock(fd)?.rcv_timeout;
    let got = block(timeout, |st: &mut State| {
        let rcvbuf = st.cfg.rcvbuf;
        let os = match st.libos() {
            Ok(os) => os,
            Err(e) => return Some(Err(e)),
        };
        let s = match st.sock(fd) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        if s.phase != Phase::Listening {
            return Some(Err(libc::EINVAL));
        }
        let lqd = s.qd;
        if let Some(e) = s.accept_err.take() {
            st.feed(&os, lqd, rcvbuf);
            return Some(Err(e));
        }
        let Some(qd) = s.backlog.pop_front() else {
            return if s.nonblock { Some(Err(libc::EAGAIN)) } else { None };
        };
        let new = match reserve() {
            Ok(n) => n,
            Err(e) => {
                s.backlog.push_front(qd);
                return Some(Err(e));
            }
        };
        st.feed(&os, lqd, rcvbuf);
        st.name_fd(new, qd);
        let c = st.socks.get_mut(&qd).expect("an accepted connection has its socket");
        c.refs = 1;
        c.nonblock = flags & libc::SOCK_NONBLOCK != 0;
        Some(Ok((new, c.peer)))
    })?;
    let Some((new, peer)) = got else { return Err(libc::EAGAIN) };
    log::debug!("demi preload: fd {fd} accepted fd {new} from {peer:?}");
    // SAFETY: the program passes an (addr, len) pair, or nulls (accept's contract).
    unsafe { addr::write(peer.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)), a, len) }?;
    Ok(new)
}

#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, a: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::accept(fd, a, len) };
    }
    boundary("accept", || accept_common(fd, a, len, 0))
}

#[no_mangle]
pub unsafe extern "C" fn accept4(fd: c_int, a: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::accept4(fd, a, len, flags) };
    }
    boundary("accept4", || accept_common(fd, a, len, flags))
}

/// What a connect started or finished gives: 0, or the error it met.
fn connect_outcome(st: &mut State, fd: RawFd) -> Option<Ret<c_int>> {
    let s = match st.sock(fd) {
        Ok(s) => s,
        Err(e) => return Some(Err(e)),
    };
    if s.connect.is_some() {
        return None;
    }
    if s.so_error != 0 {
        return Some(Err(std::mem::take(&mut s.so_error)));
    }
    Some(Ok(0))
}

#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, a: *const sockaddr, len: socklen_t) -> c_int {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::connect(fd, a, len) };
    }
    boundary("connect", || {
        // SAFETY: the program passes len readable bytes (connect's contract).
        if unsafe { addr::family(a, len) } == Some(libc::AF_UNSPEC) {
            log::info!("demi preload: connect(AF_UNSPEC) on fd {fd}: dissolving an association is not supported");
            return Err(libc::EAFNOSUPPORT);
        }
        // SAFETY: as above.
        let to = unsafe { addr::read(a, len) }?;
        let mut st = lock();
        let (qd, os) = (st.qd(fd)?, st.libos()?);
        let s = st.sock(fd)?;
        match s.phase {
            Phase::Connecting => return Err(libc::EALREADY),
            Phase::Connected if s.is_stream() => return Err(libc::EISCONN),
            _ => {}
        }
        let (nonblock, timeout, stream, unbound) = (s.nonblock, s.snd_timeout, s.is_stream(), s.local.is_none());
        s.so_error = 0;
        let source = st.cfg.source;
        if unbound && (stream || source.is_some()) {
            // The engine reports a local address only after bind. Bind first
            // where that is what the kernel does anyway (catnap: its connect
            // binds), to the address its routing would pick, so getsockname
            // tells the truth; elsewhere the address without the port. With
            // DEMI_PRELOAD_SOURCE, bind to that address on every libOS (on
            // catmint it picks the RDMA device).
            let src = source.or_else(|| addr::route_source(*to.ip())).unwrap_or(Ipv4Addr::UNSPECIFIED);
            let local = if source.is_some() || os.name() == "catnap" {
                os.bind(qd, SocketAddrV4::new(src, 0)).map_err(|e| e.errno())?;
                os.local_addr(qd).ok().flatten()
            } else {
                Some(SocketAddrV4::new(src, 0))
            };
            st.sock(fd)?.local = local;
        }
        let qt = os.connect(qd, to).map_err(|e| e.errno())?;
        let s = st.sock(fd)?;
        s.connect = Some(qt);
        s.peer = Some(to);
        if stream {
            s.phase = Phase::Connecting;
        }
        st.tokens.insert(qt, (qd, crate::state::Op::Connect));
        st.progress();
        if let Some(r) = connect_outcome(&mut st, fd) {
            return r;
        }
        if nonblock && stream {
            return Err(libc::EINPROGRESS);
        }
        drop(st);
        block(timeout, |st| connect_outcome(st, fd))?.ok_or(libc::EINPROGRESS)
    })
}

#[no_mangle]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::shutdown(fd, how) };
    }
    boundary("shutdown", || {
        let (rd, wr, how) = match how {
            libc::SHUT_RD => (true, false, std::net::Shutdown::Read),
            libc::SHUT_WR => (false, true, std::net::Shutdown::Write),
            libc::SHUT_RDWR => (true, true, std::net::Shutdown::Both),
            _ => return Err(libc::EINVAL),
        };
        let mut st = lock();
        let (qd, os) = (st.qd(fd)?, st.libos()?);
        let s = st.sock(fd)?;
        if s.is_stream() && s.phase != Phase::Connected {
            return Err(libc::ENOTCONN);
        }
        // The libOS sends the FIN (after what was sent before) and keeps
        // the connection up for the other direction.
        os.shutdown(qd, how).map_err(|e| e.errno())?;
        let s = st.sock(fd)?;
        s.shut_rd |= rd;
        s.shut_wr |= wr;
        s.seq += 1;
        st.wake_all();
        Ok(0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if fdtab::is_epoll(fd) && !inside() {
        let _in = crate::guard::Inside::enter();
        let mut st = lock();
        st.epolls.remove(&fd);
        if let Some(bell) = st.doorbells.remove(&fd) {
            // SAFETY: closes the doorbell eventfd this library made.
            unsafe { real::close(bell) };
        }
        fdtab::clear(fd);
    } else if fdtab::is_sock(fd) {
        let r = boundary("close", || {
            lock().drop_fd(fd);
            Ok(0)
        });
        if r < 0 {
            return r;
        }
    }
    // SAFETY: closes the program's number (or our reservation under it).
    unsafe { real::close(fd) }
}

#[no_mangle]
pub unsafe extern "C" fn getsockname(fd: c_int, a: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::getsockname(fd, a, len) };
    }
    boundary("getsockname", || {
        let local = lock().sock(fd)?.local.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        // SAFETY: the program passes an (addr, len) pair (getsockname's contract).
        unsafe { addr::write(local, a, len) }.map(|_| 0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn getpeername(fd: c_int, a: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::getpeername(fd, a, len) };
    }
    boundary("getpeername", || {
        let mut st = lock();
        let s = st.sock(fd)?;
        let peer = match (s.phase, s.peer) {
            (Phase::Connected, Some(p)) => p,
            (_, Some(p)) if !s.is_stream() => p,
            _ => return Err(libc::ENOTCONN),
        };
        // SAFETY: as in getsockname.
        unsafe { addr::write(peer, a, len) }.map(|_| 0)
    })
}

/// For the option and ioctl code: a `c_void` pointer as bytes.
///
/// # Safety
/// `p` points to `len` readable bytes, or `len` is 0.
pub unsafe fn bytes<'a>(p: *const c_void, len: usize) -> &'a [u8] {
    if len == 0 || p.is_null() {
        return &[];
    }
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }
}
