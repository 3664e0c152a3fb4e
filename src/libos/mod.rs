//! [`LibOs`]: the safe, thread-safe handle applications and the C ABI use.
//!
//! Threading model ([`Threading::PerThread`], the default): each thread
//! that creates sockets gets an engine of its own — its own backend (an
//! epoll set on catnap, CQs and an event channel on catmint), tables and
//! lock — so threads that keep to their own sockets share no lock and no
//! written cache line on the per-message path. Descriptors and tokens name
//! their engine (see [`shards`]): any thread may use any of them, through
//! the owner's lock. `wait_next_n` and [`LibOs::arm`] look at the calling
//! thread's engine and those whose descriptors it used. With
//! [`Threading::Shared`] (and always on catnip) one engine serves all.
//!
//! Within one engine, a waiter busy-polls for the spin time with the lock
//! taken only briefly per round, then releases it and sleeps on the
//! backend's descriptor plus a per-thread eventfd, so other threads keep
//! issuing and polling while it sleeps; whoever completes an operation
//! wakes the sleepers.

mod shards;
mod wait;

use crate::backend::SockType;
use crate::buffer::Buffer;
use crate::config::{Config, Threading};
use crate::engine::{self, Engine, QDesc, QResult, QToken};
use crate::error::{fail, Result};
use shards::{Set, Shard, Shards};
use std::net::SocketAddrV4;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Shared {
    shards: Arc<Shards>,
    spin: Duration,
    /// The longest pause between polls of a device that cannot be slept on.
    poll_sleep: Duration,
}

/// A sleep on the libOS's descriptor, from [`LibOs::arm`].
pub struct Armed {
    os: LibOs,
    /// The shards armed (the calling thread's, see the module docs).
    set: Set,
    /// The descriptor to sleep on (readable when the libOS may have work).
    pub fd: RawFd,
    /// Descriptors of further engines the thread uses (rare: it used
    /// another thread's sockets); sleep on these too.
    pub more_fds: Vec<RawFd>,
    /// The device's next deadline: wake by then, or its timeouts stall.
    pub deadline: Option<Instant>,
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.os.disarm(self.set.iter());
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
        // DPDK is started once per process: catnip has one engine.
        let threading = if cfg.libos == "catnip" { Threading::Shared } else { cfg.threading };
        let times = (cfg.spin, cfg.poll_sleep);
        let cfg = cfg.clone();
        let make = move |shard| Ok(Engine::with_shard(backend_for(&cfg)?, shard));
        Self::with_maker(threading, times, Box::new(make))
    }

    /// Wraps one engine (custom backends, tests) that all threads share,
    /// with the default [`Config::poll_sleep`].
    pub fn with_engine(engine: Engine, spin: Duration) -> LibOs {
        let engine = std::sync::Mutex::new(Some(engine));
        let make = move |_| match engine.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(e) => Ok(e),
            None => fail(libc::EINVAL, "with_engine has one engine"),
        };
        let spin = (spin, crate::config::DEFAULT_POLL_SLEEP);
        Self::with_maker(Threading::Shared, spin, Box::new(make)).expect("the engine is there")
    }

    /// A libOS with an engine per thread, each made by `make` from its
    /// shard number (pass it to [`Engine::with_shard`]): custom backends
    /// and tests of the per-thread model. The first is made now, for the
    /// calling thread.
    pub fn with_engines(
        make: impl Fn(usize) -> Result<Engine> + Send + Sync + 'static,
        spin: Duration,
        poll_sleep: Duration,
    ) -> Result<LibOs> {
        Self::with_maker(Threading::PerThread, (spin, poll_sleep), Box::new(make))
    }

    fn with_maker(
        threading: Threading,
        (spin, poll_sleep): (Duration, Duration),
        make: shards::MakeEngine,
    ) -> Result<LibOs> {
        let shards = Shards::new(threading, make)?;
        Ok(LibOs { shared: Arc::new(Shared { shards, spin, poll_sleep }) })
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

    /// How many engines this libOS has made: one per thread that needed
    /// one at the same time (a thread that exits leaves its engine, with
    /// its sockets, to the next thread that needs one); always 1 with
    /// [`Threading::Shared`].
    pub fn engines(&self) -> usize {
        self.shards().created()
    }

    fn shards(&self) -> &Shards {
        &self.shared.shards
    }

    /// The shard of descriptor `qd` (EBADF if there is none).
    #[inline]
    fn shard_of(&self, qd: QDesc) -> Result<&Shard> {
        self.shards().route(engine::shard_of_qd(qd), (libc::EBADF, "not an open queue descriptor"))
    }

    /// Runs `f` on shard `shard`'s engine and wakes sleeping waiters if it
    /// finished work.
    #[inline]
    fn run_on<R>(shard: &Shard, f: impl FnOnce(&mut Engine) -> R) -> R {
        let mut st = shard.lock();
        let r = f(&mut st.engine);
        if st.engine.take_fresh() > 0 {
            wake(&st.sleepers);
        }
        r
    }

    /// Runs `f` on the engine of descriptor `qd` (EBADF if `qd` names none).
    #[inline]
    pub(crate) fn run_for<R>(&self, qd: QDesc, f: impl FnOnce(&mut Engine) -> Result<R>) -> Result<R> {
        Self::run_on(self.shard_of(qd)?, f)
    }

    /// Runs `f` on the engine that lent handle `handle` (EINVAL if none did).
    pub(crate) fn run_for_handle<R>(&self, handle: u64, f: impl FnOnce(&mut Engine) -> Result<R>) -> Result<R> {
        // Freeing a buffer is not a use of its engine's sockets: no route().
        match self.shards().get(engine::handles::HandleTable::shard_of(handle)) {
            Some(shard) => Self::run_on(shard, f),
            None => fail(libc::EINVAL, "not a live scatter-gather array handle"),
        }
    }

    /// Runs `f` on the calling thread's own engine.
    pub(crate) fn run_mine<R>(&self, f: impl FnOnce(&mut Engine) -> Result<R>) -> Result<R> {
        Self::run_on(self.shards().at(self.shards().mine()?), f)
    }

    /// The libOS's name.
    pub fn name(&self) -> &'static str {
        Self::run_on(self.shards().at(0), |e| e.libos_name())
    }

    /// Creates a socket (`AF_INET`, stream or datagram).
    pub fn socket(&self, ty: SockType) -> Result<QDesc> {
        self.run_mine(|e| e.open(ty))
    }

    /// Creates a socket from socket(2)-style numbers.
    pub fn socket_raw(&self, domain: i32, ty: i32, protocol: i32) -> Result<QDesc> {
        self.run_mine(|e| e.socket(domain, ty, protocol))
    }

    /// Binds a descriptor to a local address (port 0: the libOS picks one).
    pub fn bind(&self, qd: QDesc, addr: SocketAddrV4) -> Result<()> {
        self.run_for(qd, |e| e.bind(qd, addr))
    }

    /// The socket's local address: where bind put it, or, for a stream
    /// that connected without bind and for an accepted connection, the
    /// address and port the libOS picked (`None` if it has none yet).
    pub fn local_addr(&self, qd: QDesc) -> Result<Option<SocketAddrV4>> {
        self.run_for(qd, |e| e.local_addr(qd))
    }

    /// Makes a bound stream socket listen for connections.
    pub fn listen(&self, qd: QDesc, backlog: i32) -> Result<()> {
        self.run_for(qd, |e| e.listen(qd, backlog))
    }

    /// Starts accepting one connection; the token's result carries the new descriptor.
    pub fn accept(&self, qd: QDesc) -> Result<QToken> {
        self.run_for(qd, |e| e.accept(qd))
    }

    /// Starts connecting a stream socket (or sets a datagram socket's default peer).
    pub fn connect(&self, qd: QDesc, to: SocketAddrV4) -> Result<QToken> {
        self.run_for(qd, |e| e.connect(qd, to))
    }

    /// Pushes the whole of `buf` (shared, not copied: the memory stays alive
    /// until the push completes, whatever the caller does with its clone).
    pub fn push(&self, qd: QDesc, buf: &Buffer) -> Result<QToken> {
        self.run_for(qd, |e| e.push(qd, buf.clone(), None))
    }

    /// Pushes a datagram to `to`.
    pub fn pushto(&self, qd: QDesc, buf: &Buffer, to: SocketAddrV4) -> Result<QToken> {
        self.run_for(qd, |e| e.push(qd, buf.clone(), Some(to)))
    }

    /// Starts receiving one message; the token's result carries the bytes.
    pub fn pop(&self, qd: QDesc) -> Result<QToken> {
        self.run_for(qd, |e| e.pop(qd))
    }

    /// Closes a descriptor; its pending tokens finish with ECANCELED.
    pub fn close(&self, qd: QDesc) -> Result<()> {
        self.run_for(qd, |e| e.close(qd))
    }

    /// Shuts down one or both directions of a connected socket, as
    /// shutdown(2): after `Write` the peer's pops end with end of file once
    /// what was pushed is out, pushes here fail with EPIPE, and pops here
    /// still receive. See [`Engine::shutdown`] for the rest.
    pub fn shutdown(&self, qd: QDesc, how: std::net::Shutdown) -> Result<()> {
        self.run_for(qd, |e| e.shutdown(qd, how))
    }

    /// Sets a socket option (the value's raw bytes, as setsockopt(2) takes them).
    pub fn setsockopt(&self, qd: QDesc, level: i32, name: i32, val: &[u8]) -> Result<()> {
        self.run_for(qd, |e| e.setsockopt(qd, level, name, val))
    }

    /// Reads a socket option into `val`; returns the bytes written.
    pub fn getsockopt(&self, qd: QDesc, level: i32, name: i32, val: &mut [u8]) -> Result<usize> {
        self.run_for(qd, |e| e.getsockopt(qd, level, name, val))
    }

    /// The peer of a connected socket (ENOTCONN otherwise).
    pub fn peer_addr(&self, qd: QDesc) -> Result<SocketAddrV4> {
        self.run_for(qd, |e| e.peer_addr(qd))
    }

    /// The largest datagram the socket can push (it depends on the libOS and
    /// the device: 65507 on catnap, the path MTU less 8 on catmint).
    pub fn max_datagram(&self, qd: QDesc) -> Result<usize> {
        self.run_for(qd, |e| e.max_datagram(qd))
    }

    /// Allocates `len` bytes the libOS can push without copying.
    pub fn sgaalloc(&self, len: usize) -> Result<Buffer> {
        if len == 0 {
            return fail(libc::EINVAL, "cannot allocate zero bytes");
        }
        self.run_mine(|e| e.alloc(len))
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
        self.wait_until(self.token_shard(qt)?, timeout, |e| e.take_ready(qt))
    }

    /// Waits for the first of `qts` to finish; returns its index and result.
    pub fn wait_any(&self, qts: &[QToken], timeout: Option<Duration>) -> Result<(usize, QResult)> {
        self.wait_any_with(qts, timeout, |_, r| r)
    }

    /// [`LibOs::wait_any`], turning the result into `R` with `map` while
    /// its engine is at hand (the C ABI lends the popped buffer there).
    pub(crate) fn wait_any_with<R>(
        &self,
        qts: &[QToken],
        timeout: Option<Duration>,
        mut map: impl FnMut(&mut Engine, QResult) -> R,
    ) -> Result<(usize, R)> {
        let set = self.token_set(qts)?;
        self.wait_until(set, timeout, |e| {
            for (i, &qt) in qts.iter().enumerate() {
                match self.token_is_here(e, qt) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(err) => return Some(Err(err)),
                }
                match e.take(qt) {
                    Ok(Some(r)) => return Some(Ok((i, map(e, r)))),
                    Ok(None) => {}
                    Err(err) => return Some(Err(err)),
                }
            }
            None
        })
    }

    /// Waits until at least one operation finished, then takes up to `max`
    /// finished operations in completion order. With an engine per thread,
    /// these are operations on the calling thread's descriptors and on
    /// those of other threads it used (see the module docs).
    pub fn wait_next_n(&self, max: usize, timeout: Option<Duration>) -> Result<Vec<QResult>> {
        if max == 0 {
            return fail(libc::EINVAL, "max must be positive");
        }
        self.wait_until(self.next_set()?, timeout, |e| {
            if !e.any_done() {
                return None;
            }
            Some(Ok(std::iter::from_fn(|| e.take_next()).take(max).collect()))
        })
    }

    /// The engine that issued `qt` (EINVAL if no engine could have). No
    /// use is recorded: whoever issued the operation did that.
    #[inline]
    pub(crate) fn token_shard(&self, qt: QToken) -> Result<Set> {
        let i = engine::shard_of_token(qt);
        match self.shards().get(i) {
            Some(_) => Ok(Set::One(i)),
            None => fail(libc::EINVAL, "not a live queue token (no engine issued it)"),
        }
    }

    /// The engines that issued `qts` (EINVAL if there is no token, or if
    /// no engine could have issued any of them). A token no engine could
    /// have issued is refused when a wait reaches it in order (see
    /// [`LibOs::token_is_here`]).
    pub(crate) fn token_set(&self, qts: &[QToken]) -> Result<Set> {
        let mut mask = 0u128;
        for &qt in qts {
            // Waiting is not a use of the engine's sockets: no route().
            let i = engine::shard_of_token(qt);
            if self.shards().get(i).is_some() {
                mask |= 1 << i;
            }
        }
        if mask == 0 {
            return match qts.is_empty() {
                true => fail(libc::EINVAL, "no tokens to wait for"),
                false => fail(libc::EINVAL, "not a live queue token (no engine issued it)"),
            };
        }
        Ok(Set::from_mask(mask))
    }

    /// Whether `qt` is a token of engine `e` (true), of another engine
    /// (false, to be checked there), or of none (EINVAL).
    #[inline]
    pub(crate) fn token_is_here(&self, e: &Engine, qt: QToken) -> Result<bool> {
        let i = engine::shard_of_token(qt);
        if i == e.shard() {
            Ok(true)
        } else if self.shards().get(i).is_some() {
            Ok(false)
        } else {
            fail(libc::EINVAL, "not a live queue token (stale, consumed or forged)")
        }
    }

    /// The shards `wait_next_n` looks at for the calling thread.
    pub(crate) fn next_set(&self) -> Result<Set> {
        self.shards().mine_and_touched()
    }

    /// For programs that sleep on the libOS together with descriptors of
    /// their own (an event loop; the LD_PRELOAD library's `poll`/`epoll_wait`):
    /// arms the device's wake-up and returns the descriptor that becomes
    /// readable when the libOS may have work, and the device's next deadline
    /// (sleep no longer). `None`: the libOS has no such descriptor (DPDK);
    /// poll instead of sleeping. With an engine per thread, this arms the
    /// engines `wait_next_n` looks at (one, unless the thread used another
    /// thread's descriptors: then [`Armed::more_fds`] lists the others).
    ///
    /// Poll once more after arming (a `wait*` with a zero timeout) and sleep
    /// only if that finds nothing: work that arrived before arming need not
    /// make the descriptor readable. Drop the [`Armed`] once awake: while it
    /// lives, work that appears outside a poll (see
    /// [`crate::backend::Backend::set_sleeping`]) also makes the descriptor
    /// readable, at the price of a system call.
    pub fn arm(&self) -> Option<Armed> {
        let set = self.next_set().ok()?;
        // The first engine's descriptor, then (rarely, so no allocation in
        // the usual case) the others'.
        let (mut first, mut more_fds) = (None, Vec::new());
        let mut deadline: Option<Instant> = None;
        for (n, i) in set.iter().enumerate() {
            let mut st = self.shards().at(i).lock();
            st.engine.set_sleeping(true);
            let Some(fd) = st.engine.arm() else {
                st.update_sleeping();
                drop(st);
                self.disarm(set.iter().take(n));
                return None;
            };
            st.armed += 1;
            match first {
                None => first = Some(fd),
                Some(_) => more_fds.push(fd),
            }
            deadline = wait::earliest(deadline, st.engine.next_deadline());
        }
        let fd = first.expect("a set has at least one engine");
        Some(Armed { os: self.clone(), set, fd, more_fds, deadline })
    }

    /// Undoes `arm` on the engines `shards`.
    fn disarm(&self, shards: impl Iterator<Item = usize>) {
        for i in shards {
            let mut st = self.shards().at(i).lock();
            st.armed -= 1;
            st.update_sleeping();
        }
    }
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
