//! epoll over demi sockets and kernel descriptors mixed.
//!
//! The epoll instance is the kernel's, and kernel descriptors are registered
//! in it as usual. Demi sockets cannot be (their numbers are placeholders),
//! so their registrations are kept here, per instance, and `epoll_wait`
//! reports them first, then asks the kernel for the rest without waiting.
//! With nothing ready it sleeps on the instance itself (readable when a
//! kernel descriptor in it is ready) plus the libOS's wake-up descriptor.
//!
//! An instance without demi sockets is left to the kernel entirely, so the
//! epoll instances of libraries' own threads (DPDK's interrupt thread, say)
//! never run the libOS. When the first demi socket is added, the instance
//! gets a doorbell: an eventfd registered in the kernel's set under a random
//! 64-bit tag, rung at once, so a thread already asleep in the kernel's
//! epoll_wait on it wakes up and comes to wait here. Events with the tag
//! are never shown to the program.

use crate::fdtab;
use crate::guard::{boundary, inside, Ret};
use crate::real;
use crate::state::{lock, Entry, Reg};
use crate::wait::{Paced, Pacer};
use libc::{c_int, epoll_event};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
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
        // A thread may be asleep in epoll_wait on this instance: in the
        // library (woken here), or in the kernel (the doorbell wakes it).
        st.wake_all();
        if op == libc::EPOLL_CTL_ADD && !fdtab::has_doorbell(ep) {
            ring_doorbell(&mut st, ep)?;
        }
        Ok(0)
    })
}

/// The tag of doorbell events: random per process.
fn tag() -> u64 {
    static TAG: OnceLock<u64> = OnceLock::new();
    *TAG.get_or_init(|| {
        let mut v: u64 = 0;
        // SAFETY: fills a live u64 with random bytes; the result is checked.
        let n = unsafe { libc::getrandom((&mut v as *mut u64).cast(), 8, 0) };
        if n != 8 {
            v = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
                ^ ((std::process::id() as u64) << 32);
        }
        v | 1
    })
}

/// Gives instance `ep` its doorbell (once) and rings it.
fn ring_doorbell(st: &mut crate::state::State, ep: c_int) -> Ret<()> {
    let bell = match st.doorbells.get(&ep) {
        Some(&b) => b,
        None => {
            // SAFETY: plain system call; checked.
            let b = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if b < 0 {
                return Err(crate::guard::errno());
            }
            let mut ev = epoll_event { events: libc::EPOLLIN as u32, u64: tag() };
            // SAFETY: registers our eventfd in the program's epoll instance.
            if unsafe { real::epoll_ctl(ep, libc::EPOLL_CTL_ADD, b, &mut ev) } < 0 {
                let e = crate::guard::errno();
                // SAFETY: closes the eventfd just made.
                unsafe { real::close(b) };
                return Err(e);
            }
            st.doorbells.insert(ep, b);
            fdtab::mark(ep, fdtab::EPOLL | fdtab::DOORBELL);
            b
        }
    };
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to our eventfd.
    unsafe { real::write(bell, (&one as *const u64).cast(), 8) };
    Ok(())
}

/// Removes doorbell events from the first `n` of `evs` (silencing the bell);
/// returns how many events are left.
fn strip(ep: c_int, evs: *mut epoll_event, n: usize) -> usize {
    let (t, mut kept, mut rung) = (tag(), 0, false);
    for i in 0..n {
        // SAFETY: i < n, within what the kernel wrote to the program's array.
        let e = unsafe { std::ptr::read_unaligned(evs.add(i)) };
        if e.u64 == t {
            rung = true;
            continue;
        }
        // SAFETY: kept <= i: compacting within the same array.
        unsafe { std::ptr::write_unaligned(evs.add(kept), e) };
        kept += 1;
    }
    if rung {
        if let Some(&bell) = lock().doorbells.get(&ep) {
            let mut v: u64 = 0;
            // SAFETY: reads 8 bytes into a live u64 from our eventfd.
            unsafe { real::read(bell, (&mut v as *mut u64).cast(), 8) };
        }
    }
    kept
}

/// The kernel's epoll_wait for an instance without demi sockets; if a
/// doorbell interrupted it (a demi socket was added meanwhile), the wait
/// goes on in the library for the time left.
fn kernel_wait(
    ep: c_int,
    evs: *mut epoll_event,
    max: c_int,
    timeout: c_int,
    mask: Option<*const libc::sigset_t>,
) -> c_int {
    let start = Instant::now();
    // SAFETY: the program's own call, passed on.
    let n = unsafe {
        match mask {
            Some(m) => real::epoll_pwait(ep, evs, max, timeout, m),
            None => real::epoll_wait(ep, evs, max, timeout),
        }
    };
    if n <= 0 || !fdtab::has_doorbell(ep) {
        return n;
    }
    let _in = crate::guard::Inside::enter();
    let kept = strip(ep, evs, n as usize);
    if kept > 0 {
        return kept as c_int;
    }
    let left = if timeout < 0 { -1 } else { (timeout as u128).saturating_sub(start.elapsed().as_millis()) as c_int };
    drop(_in);
    boundary("epoll_wait", || wait_core(ep, evs, max, left, mask))
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
    let always = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
    let mut kernel = [libc::pollfd { fd: ep, events: libc::POLLIN, revents: 0 }];
    let mut kernel_hint = false;
    let mut st = lock();
    let mut pacer = Pacer::new((timeout >= 0).then(|| Duration::from_millis(timeout as u64)), st.cfg.spin);
    let mut expired = false;
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
                let got = unsafe { real::epoll_wait(ep, evs.add(n), (max - n) as c_int, 0) };
                if got < 0 && n == 0 {
                    return Err(crate::guard::errno());
                }
                k = strip(ep, evs_at(evs, n), got.max(0) as usize);
            }
            if n + k == 0 && !expired {
                // Only the doorbell: keep waiting.
                kernel_hint = false;
                st = lock();
                continue;
            }
            return Ok((n + k) as c_int);
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

fn evs_at(evs: *mut epoll_event, i: usize) -> *mut epoll_event {
    evs.wrapping_add(i)
}

#[no_mangle]
pub unsafe extern "C" fn epoll_wait(ep: c_int, evs: *mut epoll_event, max: c_int, timeout: c_int) -> c_int {
    if inside() || !fdtab::is_epoll(ep) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::epoll_wait(ep, evs, max, timeout) };
    }
    if !fdtab::has_doorbell(ep) {
        return kernel_wait(ep, evs, max, timeout, None);
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
    if inside() || !fdtab::is_epoll(ep) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::epoll_pwait(ep, evs, max, timeout, mask) };
    }
    let mask = (!mask.is_null()).then_some(mask);
    if !fdtab::has_doorbell(ep) {
        return kernel_wait(ep, evs, max, timeout, mask);
    }
    boundary("epoll_pwait", || wait_core(ep, evs, max, timeout, mask))
}
