//! Waiting: blocking calls, and the sleep under poll/select/epoll.
//!
//! A waiter polls the libOS for the spin time (`DEMI_SPIN_US`), then sleeps
//! in the kernel's `poll` on three kinds of descriptor at once: the libOS's
//! wake-up descriptor (readable when the device has work), its own thread's
//! eventfd (written by whichever thread finishes work, so progress made by
//! another thread is not missed) and, for poll/select/epoll, the program's
//! kernel descriptors. An idle program therefore sleeps in the kernel.

use crate::guard::Ret;
use crate::real;
use crate::state::{lock, State};
use std::cell::RefCell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

/// The longest single sleep: a bound on the cost of any missed wake-up.
const MAX_NAP: Duration = Duration::from_secs(1);

/// Bumped in a forked child: eventfds made before the fork are shared with
/// the parent and must not be slept on.
static GENERATION: AtomicU64 = AtomicU64::new(0);

pub fn new_generation() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

struct Waker {
    generation: u64,
    fd: RawFd,
}

impl Drop for Waker {
    fn drop(&mut self) {
        if self.fd >= 0 {
            // SAFETY: closes this thread's own eventfd, once.
            unsafe { real::close(self.fd) };
        }
    }
}

thread_local! {
    static WAKER: RefCell<Waker> = const { RefCell::new(Waker { generation: u64::MAX, fd: -1 }) };
}

/// This thread's wake-up eventfd (made on first use, remade after a fork).
fn my_waker() -> Option<RawFd> {
    let generation = GENERATION.load(Ordering::Acquire);
    WAKER
        .try_with(|w| {
            let mut w = w.borrow_mut();
            if w.generation != generation || w.fd < 0 {
                if w.fd >= 0 {
                    // SAFETY: this process's copy of an eventfd made before a
                    // fork; the parent keeps its own.
                    unsafe { real::close(w.fd) };
                }
                // SAFETY: plain system call; the result is checked.
                let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
                *w = Waker { generation, fd };
            }
            (w.fd >= 0).then_some(w.fd)
        })
        .ok()
        .flatten()
}

fn drain(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64 from this thread's eventfd.
    unsafe { real::read(fd, (&mut v as *mut u64).cast(), 8) };
}

/// Milliseconds for poll(2): rounded up, -1 for none.
fn poll_ms(t: Option<Duration>) -> i32 {
    match t {
        None => -1,
        Some(t) => t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32,
    }
}

/// Sleeps once: until the libOS may have work, another thread made
/// progress, one of `kernel` is ready (its `revents` are filled in) or
/// `timeout` passes. Takes the locked state (after a check that found
/// nothing) and returns it locked, with the number of ready kernel
/// descriptors. EINTR if a signal arrived.
pub fn sleep(
    mut st: MutexGuard<'static, State>,
    kernel: &mut [libc::pollfd],
    timeout: Option<Duration>,
    mask: Option<*const libc::sigset_t>,
) -> Ret<(MutexGuard<'static, State>, usize)> {
    let me = my_waker();
    let armed = st.libos().ok().and_then(|os| os.arm());
    // Work that raced with arming is found here; then there is no sleep.
    if st.progress() > 0 {
        return Ok((st, 0));
    }
    let mut timeout = timeout;
    match &armed {
        Some(a) if a.deadline.is_some() => {
            let cap = a.deadline.map_or(Duration::ZERO, |d| d.saturating_duration_since(std::time::Instant::now()));
            timeout = Some(timeout.map_or(cap, |t| t.min(cap)));
        }
        Some(_) => {}
        // No descriptor to sleep on (DPDK): look at the kernel descriptors
        // and come back to poll the device.
        None if st.libos().is_ok() => timeout = Some(Duration::ZERO),
        None => {}
    }
    timeout = Some(timeout.map_or(MAX_NAP, |t| t.min(MAX_NAP)));
    let mut fds: Vec<libc::pollfd> = kernel.to_vec();
    for fd in armed.as_ref().map(|a| a.fd).into_iter().chain(me) {
        fds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
    }
    if let Some(me) = me {
        st.sleepers.push(me);
    }
    drop(st);
    let ms = poll_ms(timeout);
    // SAFETY: fds is a live vector of fds.len() pollfds; the mask, if any,
    // is the program's own live sigset (ppoll/epoll_pwait).
    let n = unsafe {
        match mask {
            Some(m) => {
                let ts = timeout.map(|t| libc::timespec { tv_sec: t.as_secs() as _, tv_nsec: t.subsec_nanos() as _ });
                let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
                real::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, tsp, m)
            }
            None => real::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms),
        }
    };
    let err = crate::guard::errno();
    // Awake: the libOS need not make its descriptor readable for us now.
    drop(armed);
    let mut st = lock();
    if let Some(me) = me {
        if let Some(i) = st.sleepers.iter().position(|&f| f == me) {
            st.sleepers.swap_remove(i);
        }
        if fds.last().is_some_and(|p| p.revents != 0) {
            drain(me);
        }
    }
    if n < 0 {
        if kernel.is_empty() && err == libc::EINTR {
            return Err(libc::EINTR);
        }
        return Err(err);
    }
    let mut ready = 0;
    for (k, f) in kernel.iter_mut().zip(&fds) {
        k.revents = f.revents;
        if f.revents != 0 {
            ready += 1;
        }
    }
    Ok((st, ready))
}

/// Spin rounds between clock reads (reading the clock can be a system call,
/// and a slow one: an emulated clock in VMs).
const CLOCK_EVERY: u32 = 8;

/// What [`Pacer::pace`] did.
pub enum Paced {
    /// The timeout has passed.
    Expired,
    /// Yielded the CPU within the spin time.
    Spun,
    /// Slept; `kernel_ready` if a kernel descriptor woke it.
    Slept { kernel_ready: bool },
}

/// What a waiter does after a check that found nothing.
pub enum Step {
    /// Poll again (within the spin time).
    Spin,
    /// Sleep, at most this long (None: no deadline).
    Sleep(Option<Duration>),
    /// The timeout has passed.
    Expired,
}

/// Paces a wait: spin for the spin time, then sleep, until the timeout;
/// reads the clock as little as it can: never when the first check succeeds
/// or the timeout is zero, then once every few spin rounds. The timeout runs
/// from the first check that found nothing.
pub struct Pacer {
    timeout: Option<Duration>,
    spin: Duration,
    deadline: Option<Instant>,
    spin_until: Option<Instant>,
    spun: bool,
    rounds: u32,
}

impl Pacer {
    pub fn new(timeout: Option<Duration>, spin: Duration) -> Pacer {
        Pacer { timeout, spin, deadline: None, spin_until: None, spun: false, rounds: 0 }
    }

    /// What a waiting loop does after a check that found nothing: yield
    /// (within the spin time), sleep on the kernel descriptors and the
    /// libOS (see `sleep`), or report that the timeout passed. Gives the
    /// state lock back, and what happened.
    pub fn pace(
        &mut self,
        st: MutexGuard<'static, State>,
        kernel: &mut [libc::pollfd],
        mask: Option<*const libc::sigset_t>,
    ) -> Ret<(MutexGuard<'static, State>, Paced)> {
        match self.step() {
            Step::Expired => Ok((st, Paced::Expired)),
            Step::Spin => {
                drop(st);
                std::thread::yield_now();
                Ok((lock(), Paced::Spun))
            }
            Step::Sleep(left) => {
                let (st, ready) = sleep(st, kernel, left, mask)?;
                Ok((st, Paced::Slept { kernel_ready: ready > 0 }))
            }
        }
    }

    pub fn step(&mut self) -> Step {
        if self.timeout == Some(Duration::ZERO) {
            return Step::Expired;
        }
        self.rounds = self.rounds.wrapping_add(1);
        if self.spin_until.is_some() && !self.spun && self.rounds % CLOCK_EVERY != 0 {
            return Step::Spin;
        }
        let now = Instant::now();
        let until = *self.spin_until.get_or_insert_with(|| {
            self.deadline = self.timeout.map(|t| now + t);
            now + self.spin
        });
        if self.deadline.is_some_and(|d| now >= d) {
            return Step::Expired;
        }
        if now < until {
            return Step::Spin;
        }
        self.spun = true;
        Step::Sleep(self.deadline.map(|d| d.saturating_duration_since(now)))
    }
}

/// Blocks until `check` (run with the state locked, after polling the
/// libOS) gives an answer, or until `timeout` passes (then `Ok(None)`).
pub fn block<R>(timeout: Option<Duration>, mut check: impl FnMut(&mut State) -> Option<Ret<R>>) -> Ret<Option<R>> {
    let mut st = lock();
    let mut pacer = Pacer::new(timeout, st.cfg.spin);
    loop {
        st.progress();
        if let Some(r) = check(&mut st) {
            return r.map(Some);
        }
        match pacer.step() {
            Step::Expired => return Ok(None),
            Step::Spin => {
                drop(st);
                std::thread::yield_now();
                st = lock();
            }
            Step::Sleep(left) => st = sleep(st, &mut [], left, None)?.0,
        }
    }
}
