//! poll, ppoll, select and pselect over demi sockets and kernel
//! descriptors mixed.

use crate::fdtab;
use crate::guard::{boundary, inside, Ret};
use crate::real;
use crate::state::{lock, started};
use crate::wait::{Paced, Pacer};
use libc::{c_int, nfds_t, pollfd};
use std::time::Duration;

fn any_demi(fds: &[pollfd]) -> bool {
    fds.iter().any(|p| fdtab::is_sock(p.fd))
}

/// The heart of poll: fills `revents` of every entry and returns how many
/// are ready, waiting up to `timeout` (None: forever).
pub fn poll_core(fds: &mut [pollfd], timeout: Option<Duration>, mask: Option<*const libc::sigset_t>) -> Ret<c_int> {
    let demi: Vec<usize> = (0..fds.len()).filter(|&i| fdtab::is_sock(fds[i].fd)).collect();
    let kidx: Vec<usize> = (0..fds.len()).filter(|&i| !fdtab::is_sock(fds[i].fd)).collect();
    let mut kernel: Vec<pollfd> = kidx.iter().map(|&i| pollfd { revents: 0, ..fds[i] }).collect();
    let always = (libc::POLLERR | libc::POLLHUP) as u32;
    let mut kernel_hint = false;
    let mut st = lock();
    let mut pacer = Pacer::new(timeout, st.cfg.spin);
    let mut expired = false;
    loop {
        st.progress();
        let sndbuf = st.cfg.sndbuf;
        let mut n = 0;
        for &i in &demi {
            let p = &mut fds[i];
            p.revents = match st.sock(p.fd) {
                Ok(s) => (s.ready(sndbuf) & (p.events as u16 as u32 | always)) as i16,
                Err(_) => libc::POLLNVAL,
            };
            if p.revents != 0 {
                n += 1;
            }
        }
        if n > 0 || kernel_hint || expired {
            drop(st);
            if !kernel.is_empty() {
                // SAFETY: kernel is a live vector of pollfds; zero timeout.
                let k = unsafe { real::poll(kernel.as_mut_ptr(), kernel.len() as nfds_t, 0) };
                if k < 0 {
                    return Err(crate::guard::errno());
                }
                for (j, &i) in kidx.iter().enumerate() {
                    fds[i].revents = kernel[j].revents;
                    if kernel[j].revents != 0 {
                        n += 1;
                    }
                }
            }
            return Ok(n);
        }
        let (g, paced) = pacer.pace(st, &mut kernel, mask)?;
        st = g;
        match paced {
            Paced::Expired => expired = true,
            Paced::Spun => {}
            Paced::Slept { kernel_ready } => kernel_hint = kernel_ready,
        }
    }
}

fn ms(timeout: c_int) -> Option<Duration> {
    (timeout >= 0).then(|| Duration::from_millis(timeout as u64))
}

/// # Safety
/// `ts` is null or a valid timespec.
unsafe fn ts_dur(ts: *const libc::timespec) -> Ret<Option<Duration>> {
    if ts.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null, the caller's contract.
    let t = unsafe { *ts };
    if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) {
        return Err(libc::EINVAL);
    }
    Ok(Some(Duration::new(t.tv_sec as u64, t.tv_nsec as u32)))
}

/// # Safety
/// `fds` names `n` pollfds (or `n` is 0).
unsafe fn slice<'a>(fds: *mut pollfd, n: nfds_t) -> Ret<&'a mut [pollfd]> {
    if n == 0 {
        return Ok(&mut []);
    }
    if fds.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(fds, n as usize) })
}

/// True if this call must go to the kernel untouched.
///
/// # Safety
/// As for [`slice`].
unsafe fn pass(fds: *mut pollfd, n: nfds_t) -> bool {
    // SAFETY: the caller's contract.
    inside() || !started() || fds.is_null() || !any_demi(unsafe { slice(fds, n) }.unwrap_or(&mut []))
}

#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int {
    // SAFETY: poll's contract on (fds, n).
    if unsafe { pass(fds, n) } {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::poll(fds, n, timeout) };
    }
    // SAFETY: as above.
    boundary("poll", || poll_core(unsafe { slice(fds, n) }?, ms(timeout), None))
}

#[no_mangle]
pub unsafe extern "C" fn __poll_chk(fds: *mut pollfd, n: nfds_t, timeout: c_int, fdslen: usize) -> c_int {
    // SAFETY: as in poll.
    if unsafe { pass(fds, n) } || fdslen / std::mem::size_of::<pollfd>() < n as usize {
        // SAFETY: passed on unchanged (the C library reports an overflow).
        return unsafe { real::__poll_chk(fds, n, timeout, fdslen) };
    }
    // SAFETY: as in poll.
    boundary("poll", || poll_core(unsafe { slice(fds, n) }?, ms(timeout), None))
}

#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds: *mut pollfd,
    n: nfds_t,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: as in poll.
    if unsafe { pass(fds, n) } {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::ppoll(fds, n, ts, mask) };
    }
    boundary("ppoll", || {
        let mask = (!mask.is_null()).then_some(mask);
        // SAFETY: ppoll's contract on ts and (fds, n).
        poll_core(unsafe { slice(fds, n) }?, unsafe { ts_dur(ts) }?, mask)
    })
}

#[no_mangle]
pub unsafe extern "C" fn __ppoll_chk(
    fds: *mut pollfd,
    n: nfds_t,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
    fdslen: usize,
) -> c_int {
    // SAFETY: as in poll.
    if unsafe { pass(fds, n) } || fdslen / std::mem::size_of::<pollfd>() < n as usize {
        // SAFETY: passed on unchanged (the C library reports an overflow).
        return unsafe { real::__ppoll_chk(fds, n, ts, mask, fdslen) };
    }
    // SAFETY: ppoll's contract.
    unsafe { ppoll(fds, n, ts, mask) }
}

/// select's sets as pollfds, or None if no demi socket is in them.
///
/// # Safety
/// Each set is null or a valid fd_set; `n` <= FD_SETSIZE.
unsafe fn to_poll(n: c_int, sets: [*mut libc::fd_set; 3]) -> Option<Vec<pollfd>> {
    let bits = [libc::POLLIN, libc::POLLOUT, libc::POLLPRI];
    let mut out = Vec::new();
    let mut demi = false;
    for fd in 0..n {
        let mut events = 0;
        for (set, bit) in sets.iter().zip(bits) {
            // SAFETY: fd < n <= FD_SETSIZE; the set is valid (caller).
            if !set.is_null() && unsafe { libc::FD_ISSET(fd, *set) } {
                events |= bit;
            }
        }
        if events != 0 {
            demi |= fdtab::is_sock(fd);
            out.push(pollfd { fd, events, revents: 0 });
        }
    }
    demi.then_some(out)
}

/// Runs select over `fds` and writes the sets back; the count of bits set.
///
/// # Safety
/// As for [`to_poll`].
unsafe fn select_core(
    mut fds: Vec<pollfd>,
    sets: [*mut libc::fd_set; 3],
    timeout: Option<Duration>,
    mask: Option<*const libc::sigset_t>,
) -> Ret<c_int> {
    poll_core(&mut fds, timeout, mask)?;
    if fds.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
        return Err(libc::EBADF);
    }
    let want = [libc::POLLIN | libc::POLLHUP | libc::POLLERR, libc::POLLOUT | libc::POLLERR, libc::POLLPRI];
    for set in sets.iter().filter(|s| !s.is_null()) {
        // SAFETY: a valid fd_set (caller).
        unsafe { libc::FD_ZERO(*set) };
    }
    let mut count = 0;
    for p in &fds {
        for ((set, w), asked) in sets.iter().zip(want).zip([libc::POLLIN, libc::POLLOUT, libc::POLLPRI]) {
            if !set.is_null() && p.events & asked != 0 && p.revents & w != 0 {
                // SAFETY: p.fd < FD_SETSIZE (it came from these sets).
                unsafe { libc::FD_SET(p.fd, *set) };
                count += 1;
            }
        }
    }
    Ok(count)
}

#[no_mangle]
pub unsafe extern "C" fn select(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    tv: *mut libc::timeval,
) -> c_int {
    let pass = inside() || !started() || !(0..=libc::FD_SETSIZE as c_int).contains(&n);
    // SAFETY: select's contract on the sets; n checked against FD_SETSIZE.
    let fds = if pass { None } else { unsafe { to_poll(n, [r, w, e]) } };
    let Some(fds) = fds else {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::select(n, r, w, e, tv) };
    };
    boundary("select", || {
        let timeout = if tv.is_null() {
            None
        } else {
            // SAFETY: non-null, the program's timeval.
            let t = unsafe { *tv };
            if t.tv_sec < 0 || t.tv_usec < 0 {
                return Err(libc::EINVAL);
            }
            Some(Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64))
        };
        // SAFETY: as above.
        unsafe { select_core(fds, [r, w, e], timeout, None) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn pselect(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    let pass = inside() || !started() || !(0..=libc::FD_SETSIZE as c_int).contains(&n);
    // SAFETY: as in select.
    let fds = if pass { None } else { unsafe { to_poll(n, [r, w, e]) } };
    let Some(fds) = fds else {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::pselect(n, r, w, e, ts, mask) };
    };
    boundary("pselect", || {
        let mask = (!mask.is_null()).then_some(mask);
        // SAFETY: pselect's contract on ts and the sets.
        unsafe { select_core(fds, [r, w, e], ts_dur(ts)?, mask) }
    })
}
