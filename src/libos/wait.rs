//! The wait loop shared by every `wait*`: spin on the engines a wait
//! covers, then sleep on their devices' descriptors and this thread's
//! eventfd, without holding any lock.

use super::shards::{Set, State};
use super::{wake, LibOs};
use crate::engine::Engine;
use crate::error::{fail, Result};
use crate::sys::{self, EventFd};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

thread_local! {
    static WAKER: Option<EventFd> = EventFd::new().ok();
    /// Where this thread's next round over several engines starts, so that
    /// a busy engine does not starve the others of a `wait_next_n`.
    static FIRST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The first pause between polls of a device that cannot be slept on; the
/// pauses double from here to `Config::poll_sleep`.
const POLL_SLEEP_FIRST: Duration = Duration::from_micros(10);

/// While spinning, rounds between clock reads. Reading the clock can be a
/// system call, and a slow one (an emulated HPET in VMs: a tenth of the time
/// of a soft-RoCE round trip went there), so deadlines and the spin time are
/// checked every few rounds and overrun by that many.
const CLOCK_EVERY: u32 = 32;

/// While spinning, rounds between yields: often enough that a peer (or the
/// kernel thread) this thread's CPU is needed for gets it within microseconds,
/// rarely enough that the system call does not slow the spin.
const YIELD_EVERY: u32 = 8;

/// The earlier of two optional deadlines.
pub(super) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What one attempt to sleep came to.
enum Slept<R> {
    /// The wait is over.
    Done(Result<R>),
    /// Slept (or was woken); poll again.
    Again,
    /// A device has no descriptor to sleep on: poll with pauses.
    NoDescriptor,
}

impl LibOs {
    /// The wait loop shared by every `wait*`: `ready` returns `Some` once the
    /// wait is over; it is called on each engine of `set` in turn. Spins for
    /// the spin time, then sleeps on the engines' descriptors and this
    /// thread's eventfd, without holding a lock.
    pub(crate) fn wait_until<R>(
        &self,
        set: Set,
        timeout: Option<Duration>,
        mut ready: impl FnMut(&mut Engine) -> Option<Result<R>>,
    ) -> Result<R> {
        // First round without reading the clock: the common case is done.
        let first = match set {
            Set::One(i) => round(&mut self.shards().at(i).lock(), &mut ready),
            Set::Many(_) => self.round_set(set, &mut ready),
        };
        if let Some(r) = first {
            return r;
        }
        self.wait_more(set, timeout, ready)
    }

    /// The rest of [`LibOs::wait_until`], once the first round found nothing.
    #[inline(never)]
    fn wait_more<R>(
        &self,
        set: Set,
        timeout: Option<Duration>,
        mut ready: impl FnMut(&mut Engine) -> Option<Result<R>>,
    ) -> Result<R> {
        if timeout == Some(Duration::ZERO) {
            return fail(libc::ETIMEDOUT, "operation still pending");
        }
        let mut rounds: u32 = 0;
        // The pause between polls of a device that cannot be slept on.
        let mut pause = Duration::ZERO;
        // Set at the first clock read (see below), a few rounds in.
        let mut times: Option<(Option<Instant>, Instant)> = None;
        loop {
            if let Some(r) = self.round_set(set, &mut ready) {
                return r;
            }
            rounds = rounds.wrapping_add(1);
            // No spin time, or spun out: straight to the clock check, which
            // goes to sleep.
            if rounds % CLOCK_EVERY != 0 && !self.shared.spin.is_zero() && pause.is_zero() {
                if rounds % YIELD_EVERY == 0 {
                    std::thread::yield_now();
                }
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            let (deadline, spin_until) =
                *times.get_or_insert_with(|| (timeout.and_then(|t| now.checked_add(t)), now + self.shared.spin));
            if deadline.is_some_and(|d| now >= d) {
                return fail(libc::ETIMEDOUT, "operation still pending");
            }
            if now < spin_until {
                // Yield now and then rather than spin hard: on a busy machine
                // the peer we wait for may need this very CPU (seen on 2-core
                // VMs: RTT = 2 x spin).
                std::thread::yield_now();
                continue;
            }
            match self.sleep(set, deadline, now, &mut ready)? {
                Slept::Done(r) => return r,
                Slept::Again => {}
                Slept::NoDescriptor => {
                    // The device has no descriptor (DPDK). A waiter that has
                    // seen nothing for `poll_sleep` beyond the spin time is
                    // idle: it polls with pauses that grow to `poll_sleep`,
                    // so it does not keep a core busy, and never sleeps past
                    // the caller's deadline. Until then it keeps polling: a
                    // reply that is merely late (a loaded machine) must not
                    // meet a sleeper.
                    let idle = now >= spin_until + self.shared.poll_sleep;
                    if idle {
                        pause = (pause * 2).max(POLL_SLEEP_FIRST).min(self.shared.poll_sleep);
                    }
                    if pause.is_zero() {
                        std::thread::yield_now();
                    } else {
                        let left = deadline.map_or(pause, |d| d.saturating_duration_since(now));
                        std::thread::sleep(pause.min(left));
                    }
                }
            }
        }
    }

    /// One poll round on each engine of `set`.
    #[inline]
    fn round_set<R>(&self, set: Set, ready: &mut impl FnMut(&mut Engine) -> Option<Result<R>>) -> Option<Result<R>> {
        match set {
            Set::One(i) => round(&mut self.shards().at(i).lock(), ready),
            Set::Many(_) => {
                let (n, first) = (set.len(), FIRST.get());
                FIRST.set(first.wrapping_add(1));
                set.iter().cycle().skip(first % n).take(n).find_map(|i| round(&mut self.shards().at(i).lock(), ready))
            }
        }
    }

    /// Arms every engine of `set` and sleeps until one of them may have
    /// work, another thread finished some, or the deadline (the caller's or
    /// a device's) passes. `now` is a few rounds old at most: a clock read
    /// is dear (see CLOCK_EVERY), and the sleep overshoots by no more.
    fn sleep<R>(
        &self,
        set: Set,
        deadline: Option<Instant>,
        now: Instant,
        ready: &mut impl FnMut(&mut Engine) -> Option<Result<R>>,
    ) -> Result<Slept<R>> {
        let Some(me) = WAKER.with(|w| w.as_ref().map(|w| w.as_raw_fd())) else {
            std::thread::sleep(Duration::from_micros(100));
            return Ok(Slept::Again);
        };
        // This thread's eventfd first, then one descriptor per engine.
        let mut inline: [RawFd; 4] = [me, -1, -1, -1];
        let mut heap = Vec::new();
        let fds: &mut [RawFd] = if set.len() < inline.len() {
            &mut inline[..=set.len()]
        } else {
            heap.resize(set.len() + 1, me);
            &mut heap
        };
        let mut device_deadline = None;
        // Undoes the registrations below however this ends (a panic in a
        // poll included: a stale eventfd in a sleepers list would be
        // written to after the thread is gone).
        let mut registered = Registered { os: self, set, n: 0, me };
        for (n, i) in set.iter().enumerate() {
            let mut st = self.shards().at(i).lock();
            // Before arming: from here on, work that appears outside a poll
            // (see Backend::set_sleeping) must make the descriptor readable.
            st.engine.set_sleeping(true);
            let Some(fd) = st.engine.arm() else {
                st.update_sleeping();
                return Ok(Slept::NoDescriptor);
            };
            // Work that raced with arming is found by this last round.
            if let Some(r) = round(&mut st, ready) {
                st.update_sleeping();
                return Ok(Slept::Done(r));
            }
            st.sleepers.push(me);
            registered.n = n + 1;
            fds[n + 1] = fd;
            // The device's own next deadline (a connect timing out, say):
            // nothing else wakes a sleeper for it.
            device_deadline = earliest(device_deadline, st.engine.next_deadline());
        }
        let left = earliest(deadline, device_deadline).map(|d| d.saturating_duration_since(now));
        let slept = sys::wait_readable(fds, left);
        drop(registered);
        // Reading the eventfd is a system call: only when it fired.
        if slept? & 1 != 0 {
            WAKER.with(|w| w.as_ref().map(EventFd::drain));
        }
        Ok(Slept::Again)
    }

    /// Takes this thread (eventfd `me`) off the sleepers of the first `n`
    /// engines of `set`.
    fn unsleep(&self, set: Set, n: usize, me: RawFd) {
        for i in set.iter().take(n) {
            let mut st = self.shards().at(i).lock();
            if let Some(k) = st.sleepers.iter().position(|&fd| fd == me) {
                st.sleepers.swap_remove(k);
            }
            st.update_sleeping();
        }
    }
}

/// This thread's registration as a sleeper on the first `n` engines of
/// `set`, undone on drop.
struct Registered<'a> {
    os: &'a LibOs,
    set: Set,
    n: usize,
    me: RawFd,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.os.unsleep(self.set, self.n, self.me);
    }
}

/// One poll round: poll, then check; wakes sleepers if work finished.
///
/// The device is polled even when the wanted result is already there: a
/// program whose every wait finds a finished token (a push that completes
/// at once, say) must still see its receives arrive. A poll is bounded work.
#[inline]
fn round<R>(st: &mut State, ready: &mut impl FnMut(&mut Engine) -> Option<Result<R>>) -> Option<Result<R>> {
    st.engine.poll();
    let r = ready(&mut st.engine);
    if st.engine.take_fresh() > 0 && !st.sleepers.is_empty() {
        wake(&st.sleepers);
    }
    r
}
