//! [`LibOs`]: the safe, thread-safe handle applications and the C ABI use.
//!
//! Threading model: one engine per `LibOs`, behind a mutex. Any thread may
//! call any method; calls are serialised. A waiter busy-polls for the spin
//! time with the lock taken only briefly per round, then releases the lock and
//! sleeps on the backend's descriptor plus a per-thread eventfd, so other
//! threads keep issuing and polling while it sleeps. Whoever completes an
//! operation wakes the sleepers.

use crate::backend::SockType;
use crate::buffer::Buffer;
use crate::config::Config;
use crate::engine::{Engine, QDesc, QResult, QToken};
use crate::error::{fail, Result};
use crate::sys::{self, EventFd};
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

struct Shared {
    engine: Mutex<State>,
    spin: Duration,
    /// The longest pause between polls of a device that cannot be slept on.
    poll_sleep: Duration,
}

struct State {
    engine: Engine,
    /// Eventfds of threads sleeping in a wait.
    sleepers: Vec<RawFd>,
    /// Sleeps arranged by `arm` whose `Armed` is not dropped yet.
    armed: usize,
}

impl State {
    /// Tells the device whether some thread still sleeps on it (in a wait,
    /// or armed), after one stopped sleeping or did not go to sleep.
    fn update_sleeping(&mut self) {
        let any = self.armed > 0 || !self.sleepers.is_empty();
        self.engine.set_sleeping(any);
    }
}

/// A sleep on the libOS's descriptor, from [`LibOs::arm`].
pub struct Armed {
    os: LibOs,
    /// The descriptor to sleep on (readable when the libOS may have work).
    pub fd: RawFd,
    /// The device's next deadline: wake by then, or its timeouts stall.
    pub deadline: Option<Instant>,
}

impl Drop for Armed {
    fn drop(&mut self) {
        let mut st = self.os.lock();
        st.armed -= 1;
        st.update_sleeping();
    }
}

/// The backend `cfg.libos` names, built from its section of `cfg`.
fn backend_for(cfg: &Config) -> Result<Box<dyn crate::backend::Backend>> {
    match cfg.libos.as_str() {
        "catnap" => Ok(Box::new(crate::catnap::Catnap::new()?)),
        #[cfg(feature = "catmint")]
        "catmint" => Ok(Box::new(crate::catmint::Catmint::new(&cfg.catmint)?)),
        #[cfg(feature = "catnip")]
        "catnip" => match &cfg.catnip {
            Some(section) => Ok(Box::new(crate::catnip::Catnip::new(section)?)),
            None => fail(libc::EINVAL, "catnip: no settings (Config::catnip is None; DEMI_LOCAL_IPV4 gives them)"),
        },
        name => Err(crate::config::unknown_libos(name)),
    }
}

thread_local! {
    static WAKER: Option<EventFd> = EventFd::new().ok();
}

/// A running libOS (see the module docs for the threading model).
#[derive(Clone)]
pub struct LibOs {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LibOs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibOs").finish_non_exhaustive()
    }
}

impl LibOs {
    /// Starts the libOS named `name` ("catnap", "catmint", "catnip") with the
    /// environment's settings for it ([`Config::from_env_for`]).
    pub fn new(name: &str) -> Result<LibOs> {
        Self::with_config(&Config::from_env_for(name)?)
    }

    /// Starts the libOS named by the `LIBOS` environment variable, with the
    /// environment's settings ([`Config::from_env`]).
    pub fn from_env() -> Result<LibOs> {
        Self::with_config(&Config::from_env()?)
    }

    /// Starts the libOS `cfg.libos` names; its backend gets its section of
    /// `cfg`. EINVAL for a name this build does not have.
    pub fn with_config(cfg: &Config) -> Result<LibOs> {
        Ok(Self::from_parts(Engine::new(backend_for(cfg)?), cfg.spin, cfg.poll_sleep))
    }

    /// Wraps an engine (custom backends, tests), with the default
    /// [`Config::poll_sleep`].
    pub fn with_engine(engine: Engine, spin: Duration) -> LibOs {
        Self::from_parts(engine, spin, crate::config::DEFAULT_POLL_SLEEP)
    }

    fn from_parts(engine: Engine, spin: Duration, poll_sleep: Duration) -> LibOs {
        let state = State { engine, sleepers: Vec::new(), armed: 0 };
        LibOs { shared: Arc::new(Shared { engine: Mutex::new(state), spin, poll_sleep }) }
    }

    /// Sets [`Config::poll_sleep`] on a handle made by [`LibOs::with_engine`]
    /// and not cloned yet. Settings are shared by all clones and fixed once
    /// there are several: a cloned handle is returned unchanged.
    pub fn with_poll_sleep(self, poll_sleep: Duration) -> LibOs {
        match Arc::try_unwrap(self.shared) {
            Ok(mut shared) => {
                shared.poll_sleep = poll_sleep;
                LibOs { shared: Arc::new(shared) }
            }
            Err(shared) => LibOs { shared },
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock was caught at the C boundary; the
        // engine's invariants hold between calls, so carry on.
        self.shared.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the engine and wakes sleeping waiters if it finished work.
    pub(crate) fn run<R>(&self, f: impl FnOnce(&mut Engine) -> R) -> R {
        let mut st = self.lock();
        let r = f(&mut st.engine);
        if st.engine.take_fresh() > 0 {
            wake(&st.sleepers);
        }
        r
    }

    /// The libOS's name.
    pub fn name(&self) -> &'static str {
        self.run(|e| e.libos_name())
    }

    /// Creates a socket (`AF_INET`, stream or datagram).
    pub fn socket(&self, ty: SockType) -> Result<QDesc> {
        self.run(|e| e.open(ty))
    }

    /// Creates a socket from socket(2)-style numbers.
    pub fn socket_raw(&self, domain: i32, ty: i32, protocol: i32) -> Result<QDesc> {
        self.run(|e| e.socket(domain, ty, protocol))
    }

    /// Binds a descriptor to a local address (port 0: the libOS picks one).
    pub fn bind(&self, qd: QDesc, addr: SocketAddrV4) -> Result<()> {
        self.run(|e| e.bind(qd, addr))
    }

    /// The socket's local address: where bind put it, or, for a stream
    /// that connected without bind and for an accepted connection, the
    /// address and port the libOS picked (`None` if it has none yet).
    pub fn local_addr(&self, qd: QDesc) -> Result<Option<SocketAddrV4>> {
        self.run(|e| e.local_addr(qd))
    }

    /// Makes a bound stream socket listen for connections.
    pub fn listen(&self, qd: QDesc, backlog: i32) -> Result<()> {
        self.run(|e| e.listen(qd, backlog))
    }

    /// Starts accepting one connection; the token's result carries the new descriptor.
    pub fn accept(&self, qd: QDesc) -> Result<QToken> {
        self.run(|e| e.accept(qd))
    }

    /// Starts connecting a stream socket (or sets a datagram socket's default peer).
    pub fn connect(&self, qd: QDesc, to: SocketAddrV4) -> Result<QToken> {
        self.run(|e| e.connect(qd, to))
    }

    /// Pushes the whole of `buf` (shared, not copied: the memory stays alive
    /// until the push completes, whatever the caller does with its clone).
    pub fn push(&self, qd: QDesc, buf: &Buffer) -> Result<QToken> {
        self.run(|e| e.push(qd, buf.clone(), None))
    }

    /// Pushes a datagram to `to`.
    pub fn pushto(&self, qd: QDesc, buf: &Buffer, to: SocketAddrV4) -> Result<QToken> {
        self.run(|e| e.push(qd, buf.clone(), Some(to)))
    }

    /// Starts receiving one message; the token's result carries the bytes.
    pub fn pop(&self, qd: QDesc) -> Result<QToken> {
        self.run(|e| e.pop(qd))
    }

    /// Closes a descriptor; its pending tokens finish with ECANCELED.
    pub fn close(&self, qd: QDesc) -> Result<()> {
        self.run(|e| e.close(qd))
    }

    /// Shuts down one or both directions of a connected socket, as
    /// shutdown(2): after `Write` the peer's pops end with end of file once
    /// what was pushed is out, pushes here fail with EPIPE, and pops here
    /// still receive. See [`Engine::shutdown`] for the rest.
    pub fn shutdown(&self, qd: QDesc, how: std::net::Shutdown) -> Result<()> {
        self.run(|e| e.shutdown(qd, how))
    }

    /// Sets a socket option (the value's raw bytes, as setsockopt(2) takes them).
    pub fn setsockopt(&self, qd: QDesc, level: i32, name: i32, val: &[u8]) -> Result<()> {
        self.run(|e| e.setsockopt(qd, level, name, val))
    }

    /// Reads a socket option into `val`; returns the bytes written.
    pub fn getsockopt(&self, qd: QDesc, level: i32, name: i32, val: &mut [u8]) -> Result<usize> {
        self.run(|e| e.getsockopt(qd, level, name, val))
    }

    /// The peer of a connected socket (ENOTCONN otherwise).
    pub fn peer_addr(&self, qd: QDesc) -> Result<SocketAddrV4> {
        self.run(|e| e.peer_addr(qd))
    }

    /// The largest datagram the socket can push (it depends on the libOS and
    /// the device: 65507 on catnap, the path MTU less 8 on catmint).
    pub fn max_datagram(&self, qd: QDesc) -> Result<usize> {
        self.run(|e| e.max_datagram(qd))
    }

    /// Allocates `len` bytes the libOS can push without copying.
    pub fn sgaalloc(&self, len: usize) -> Result<Buffer> {
        if len == 0 {
            return fail(libc::EINVAL, "cannot allocate zero bytes");
        }
        self.run(|e| e.alloc(len))
    }

    /// A pushable buffer holding a copy of `data`.
    pub fn buffer_from(&self, data: &[u8]) -> Result<Buffer> {
        let mut b = self.sgaalloc(data.len())?;
        b.as_mut_slice().expect("fresh buffer is unshared").copy_from_slice(data);
        Ok(b)
    }

    /// Waits for `qt`. `None` waits forever; a zero timeout polls once.
    /// ETIMEDOUT leaves the operation pending; EINVAL means `qt` is not live.
    pub fn wait(&self, qt: QToken, timeout: Option<Duration>) -> Result<QResult> {
        self.wait_until(timeout, |e| e.take_ready(qt))
    }

    /// Waits for the first of `qts` to finish; returns its index and result.
    pub fn wait_any(&self, qts: &[QToken], timeout: Option<Duration>) -> Result<(usize, QResult)> {
        if qts.is_empty() {
            return fail(libc::EINVAL, "no tokens to wait for");
        }
        self.wait_until(timeout, |e| {
            for (i, &qt) in qts.iter().enumerate() {
                match e.take(qt) {
                    Ok(Some(r)) => return Some(Ok((i, r))),
                    Ok(None) => {}
                    Err(err) => return Some(Err(err)),
                }
            }
            None
        })
    }

    /// Waits until at least one operation finished, then takes up to `max`
    /// finished operations in completion order.
    pub fn wait_next_n(&self, max: usize, timeout: Option<Duration>) -> Result<Vec<QResult>> {
        if max == 0 {
            return fail(libc::EINVAL, "max must be positive");
        }
        self.wait_until(timeout, |e| {
            if !e.any_done() {
                return None;
            }
            Some(Ok(std::iter::from_fn(|| e.take_next()).take(max).collect()))
        })
    }

    /// For programs that sleep on the libOS together with descriptors of
    /// their own (an event loop; the LD_PRELOAD library's `poll`/`epoll_wait`):
    /// arms the device's wake-up and returns the descriptor that becomes
    /// readable when the libOS may have work, and the device's next deadline
    /// (sleep no longer). `None`: the libOS has no such descriptor (DPDK);
    /// poll instead of sleeping.
    ///
    /// Poll once more after arming (a `wait*` with a zero timeout) and sleep
    /// only if that finds nothing: work that arrived before arming need not
    /// make the descriptor readable. Drop the [`Armed`] once awake: while it
    /// lives, work that appears outside a poll (see
    /// [`crate::backend::Backend::set_sleeping`]) also makes the descriptor
    /// readable, at the price of a system call.
    pub fn arm(&self) -> Option<Armed> {
        let mut st = self.lock();
        st.engine.set_sleeping(true);
        let Some(fd) = st.engine.arm() else {
            st.update_sleeping();
            return None;
        };
        st.armed += 1;
        let deadline = st.engine.next_deadline();
        Some(Armed { os: self.clone(), fd, deadline })
    }

    /// The wait loop shared by every `wait*`: `ready` returns `Some` once the
    /// wait is over. Spins for the spin time, then sleeps on the backend's
    /// descriptor and this thread's eventfd, without holding the lock.
    pub(crate) fn wait_until<R>(
        &self,
        timeout: Option<Duration>,
        mut ready: impl FnMut(&mut Engine) -> Option<Result<R>>,
    ) -> Result<R> {
        // First round without reading the clock: the common case is done.
        {
            let mut st = self.lock();
            let r = round(&mut st, &mut ready);
            if let Some(r) = r {
                return r;
            }
        }
        if timeout == Some(Duration::ZERO) {
            return fail(libc::ETIMEDOUT, "operation still pending");
        }
        let mut rounds: u32 = 0;
        // The pause between polls of a device that cannot be slept on.
        let mut pause = Duration::ZERO;
        // Set at the first clock read (see below), a few rounds in.
        let mut times: Option<(Option<Instant>, Instant)> = None;
        loop {
            let mut st = self.lock();
            if let Some(r) = round(&mut st, &mut ready) {
                return r;
            }
            rounds = rounds.wrapping_add(1);
            // No spin time, or spun out: straight to the clock check, which
            // goes to sleep.
            if rounds % CLOCK_EVERY != 0 && !self.shared.spin.is_zero() && pause.is_zero() {
                drop(st);
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
                drop(st);
                // Yield now and then rather than spin hard: on a busy machine
                // the peer we wait for may need this very CPU (seen on 2-core
                // VMs: RTT = 2 x spin).
                std::thread::yield_now();
                continue;
            }
            // Before arming: from here on, work that appears outside a poll
            // (see Backend::set_sleeping) must make the descriptor readable.
            st.engine.set_sleeping(true);
            let Some(dev_fd) = st.engine.arm() else {
                // The device has no descriptor (DPDK). A waiter that has
                // seen nothing for `poll_sleep` beyond the spin time is idle:
                // it polls with pauses that grow to `poll_sleep`, so it does
                // not keep a core busy, and never sleeps past the caller's
                // deadline. Until then it keeps polling: a reply that is
                // merely late (a loaded machine) must not meet a sleeper.
                st.update_sleeping();
                drop(st);
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
                continue;
            };
            // Work that raced with arming is found by this last round.
            if let Some(r) = round(&mut st, &mut ready) {
                st.update_sleeping();
                return r;
            }
            let Some(me) = WAKER.with(|w| w.as_ref().map(|w| w.as_raw_fd())) else {
                st.update_sleeping();
                drop(st);
                std::thread::sleep(Duration::from_micros(100));
                continue;
            };
            st.sleepers.push(me);
            // The device's own next deadline (a connect timing out, say):
            // nothing else wakes a sleeper for it.
            let device_deadline = st.engine.next_deadline();
            drop(st);
            // `now` is a few rounds old at most: a clock read is dear (see
            // CLOCK_EVERY), and the sleep overshoots by no more than that.
            let left = match (deadline, device_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
            .map(|d| d.saturating_duration_since(now));
            let slept = sys::wait_readable(&[dev_fd, me], left);
            let mut st = self.lock();
            if let Some(i) = st.sleepers.iter().position(|&fd| fd == me) {
                st.sleepers.swap_remove(i);
            }
            st.update_sleeping();
            // Reading the eventfd is a system call: only when it fired.
            if slept? & 2 != 0 {
                WAKER.with(|w| w.as_ref().map(EventFd::drain));
            }
        }
    }
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

/// One poll round: poll, then check; wakes sleepers if work finished.
///
/// The device is polled even when the wanted result is already there: a
/// program whose every wait finds a finished token (a push that completes
/// at once, say) must still see its receives arrive. A poll is bounded work.
fn round<R>(st: &mut State, ready: &mut impl FnMut(&mut Engine) -> Option<Result<R>>) -> Option<Result<R>> {
    st.engine.poll();
    let r = ready(&mut st.engine);
    if st.engine.take_fresh() > 0 && !st.sleepers.is_empty() {
        wake(&st.sleepers);
    }
    r
}

fn wake(sleepers: &[RawFd]) {
    for &fd in sleepers {
        let one: u64 = 1;
        // SAFETY: fd is the live eventfd of a thread that is sleeping in
        // wait_until (it removes itself under the lock before it can exit);
        // we write 8 bytes from a live u64.
        #[allow(unsafe_code)]
        let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}
