//! epoll over demi sockets and kernel descriptors mixed.
//!
//! The epoll instance is the kernel's, and kernel descriptors are registered
//! in it as usual. Demi sockets cannot be (their numbers are placeholders),
//! so their registrations are kept here, per instance, and `epoll_wait`
//! reports them first, then asks the kernel for the rest without waiting.
//! With nothing ready it sleeps on the instance itself (readable when a
//! kernel descriptor in it is ready) plus the libOS's wake-up descriptor.

use crate::fdtab;
use crate::guard::{boundary, inside, Ret};
use crate::real;
use crate::state::{lock, started, Entry, Reg};
use crate::wait::sleep;
use libc::{c_int, epoll_event};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn created(fd: c_int) -> c_int {
    if fd >= 0 && !inside() {
        let _in = crate::guard::Inside::enter();
        let mut st = lock();
        st.epolls.remove(&fd);
        fdtab::mark(fd, fdtab::EPOLL);
    }
    fd
}

#[no_mangle]
pub unsafe extern "C" fn epoll_create(size: c_int) -> c_int {
    // SAFETY: the program's own call, passed on unchanged.
    created(unsafe { real::epoll_create(size) })
}

#[no_mangle]
pub unsafe extern "C" fn epoll_create1(flags: c_int) -> c_int {
    // SAFETY: the program's own call, passed on unchanged.
    created(unsafe { real::epoll_create1(flags) })
}

#[no_mangle]
pub unsafe extern "C" fn epoll_ctl(ep: c_int, op: c_int, fd: c_int, ev: *mut epoll_event) -> c_int {
    if inside() || !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::epoll_ctl(ep, op, fd, ev) };
    }
    boundary("epoll_ctl", || {
        if ep == fd {
            return Err(libc::EINVAL);
        }
        if !fdtab::is_epoll(ep) {
            // SAFETY: F_GETFD only asks whether ep is open.
            let open = unsafe { real::fcntl(ep, libc::F_GETFD, 0) } >= 0;
            return Err(if open { libc::EINVAL } else { libc::EBADF });
        }
        let mut st = lock();
        if !matches!(st.fds.get(&fd), Some(Entry::Sock(_))) {
            return Err(libc::EBADF);
        }
        let wanted = if op == libc::EPOLL_CTL_DEL {
            None
        } else if ev.is_null() {
            return Err(libc::EFAULT);
        } else {
            // SAFETY: non-null, the program's epoll_event (read unaligned: it is packed).
            Some(unsafe { std::ptr::read_unaligned(ev) })
        };
        let set = st.epolls.entry(ep).or_default();
        match (op, wanted) {
            (libc::EPOLL_CTL_ADD, Some(e)) => {
                if set.contains_key(&fd) {
                    return Err(libc::EEXIST);
                }
                set.insert(fd, Reg { events: e.events, data: e.u64, seen: u64::MAX, off: false });
            }
            (libc::EPOLL_CTL_MOD, Some(e)) => {
                let r = set.get_mut(&fd).ok_or(libc::ENOENT)?;
                *r = Reg { events: e.events, data: e.u64, seen: u64::MAX, off: false };
            }
            (libc::EPOLL_CTL_DEL, _) => {
                set.remove(&fd).ok_or(libc::ENOENT)?;
            }
            _ => return Err(libc::EINVAL),
        }
        // A thread may be asleep in epoll_wait on this instance.
        st.wake_all();
        Ok(0)
    })
}

/// Spreads reports when more demi sockets are ready than fit.
static ROTATE: AtomicUsize = AtomicUsize::new(0);

fn wait_core(
    ep: c_int,
    evs: *mut epoll_event,
    max: c_int,
    timeout: c_int,
    mask: Option<*const libc::sigset_t>,
) -> Ret<c_int> {
    if max <= 0 {
        return Err(libc::EINVAL);
    }
    if evs.is_null() {
        return Err(libc::EFAULT);
    }
    let max = max as usize;
    let deadline = (timeout >= 0).then(|| Instant::now() + Duration::from_millis(timeout as u64));
    let always = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
    let mut kernel = [libc::pollfd { fd: ep, events: libc::POLLIN, revents: 0 }];
    let mut kernel_hint = false;
    let mut spin_until = None;
    let mut st = lock();
    loop {
        st.progress();
        let sndbuf = st.cfg.sndbuf;
        let mut ready: Vec<epoll_event> = Vec::new();
        let state = &mut *st;
        if let Some(set) = state.epolls.get_mut(&ep) {
            for (fd, reg) in set.iter_mut() {
                if reg.off {
                    continue;
                }
                let Some(Entry::Sock(qd)) = state.fds.get(fd) else { continue };
                let Some(s) = state.socks.get(qd) else { continue };
                let bits = s.ready(sndbuf) & (reg.events | always);
                if bits == 0 || (reg.events & libc::EPOLLET as u32 != 0 && reg.seen == s.seq) {
                    continue;
                }
                reg.seen = s.seq;
                if reg.events & libc::EPOLLONESHOT as u32 != 0 {
                    reg.off = true;
                }
                ready.push(epoll_event { events: bits, u64: reg.data });
            }
        }
        if ready.len() > max {
            let k = ROTATE.fetch_add(1, Ordering::Relaxed) % ready.len();
            ready.rotate_left(k);
            // Those not reported are reported next time (level-triggered);
            // edge-triggered ones lose nothing either: their `seen` was set,
            // but so is the readiness, which the program drains anyway.
            ready.truncate(max);
        }
        let now = Instant::now();
        let expired = deadline.is_some_and(|d| now >= d);
        if !ready.is_empty() || kernel_hint || expired {
            drop(st);
            let n = ready.len();
            for (i, e) in ready.into_iter().enumerate() {
                // SAFETY: i < max, within the program's array of max events.
                unsafe { std::ptr::write_unaligned(evs.add(i), e) };
            }
            let mut k = 0;
            if n < max {
                // SAFETY: the rest of the program's array; zero timeout.
                k = unsafe { real::epoll_wait(ep, evs.add(n), (max - n) as c_int, 0) };
                if k < 0 {
                    if n > 0 {
                        k = 0;
                    } else {
                        return Err(crate::guard::errno());
                    }
                }
            }
            return Ok(n as c_int + k);
        }
        let until = *spin_until.get_or_insert(now + st.cfg.spin);
        if now < until {
            drop(st);
            std::thread::yield_now();
            st = lock();
            continue;
        }
        let left = deadline.map(|d| d.saturating_duration_since(now));
        let (g, k) = sleep(st, &mut kernel, left, mask)?;
        st = g;
        kernel_hint = k > 0;
    }
}

#[no_mangle]
pub unsafe extern "C" fn epoll_wait(ep: c_int, evs: *mut epoll_event, max: c_int, timeout: c_int) -> c_int {
    if inside() || !started() || !fdtab::is_epoll(ep) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::epoll_wait(ep, evs, max, timeout) };
    }
    boundary("epoll_wait", || wait_core(ep, evs, max, timeout, None))
}

#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    ep: c_int,
    evs: *mut epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    if inside() || !started() || !fdtab::is_epoll(ep) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::epoll_pwait(ep, evs, max, timeout, mask) };
    }
    let mask = (!mask.is_null()).then_some(mask);
    boundary("epoll_pwait", || wait_core(ep, evs, max, timeout, mask))
}
