//! The process-wide state: the libOS (started on the first socket call),
//! the sockets, which descriptor number names which socket, the operations
//! in flight, and the epoll registrations of demi sockets.
//!
//! One mutex guards it all; the libOS is only called with it held. Sleeping
//! happens with it released (see `wait.rs`).

use crate::fdtab;
use crate::guard::Ret;
use crate::sock::{Phase, Sock};
use demi::{LibOs, QDesc, QResult, QToken, QValue, SockType};
use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::os::fd::RawFd;
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Connections a listener takes from the libOS before the program asks.
const ACCEPT_AHEAD: usize = 1;

/// What a token in flight is for.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Pop,
    Push(usize),
    Accept,
    Connect,
}

/// What a demi descriptor number names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    Sock(QDesc),
    /// A socket of the parent process, inherited across fork: the child may
    /// only close it (see the man page).
    Inherited,
}

/// One demi socket in one epoll set.
#[derive(Clone, Copy, Debug)]
pub struct Reg {
    pub events: u32,
    pub data: u64,
    /// `seq` of the socket when last reported (EPOLLET).
    pub seen: u64,
    /// EPOLLONESHOT fired: silent until EPOLL_CTL_MOD.
    pub off: bool,
}

/// Counters for DEMI_PRELOAD_STATS (proof that demi, not the kernel, served
/// the program's sockets).
#[derive(Default, Debug)]
pub struct Stats {
    pub sockets: u64,
    pub accepted: u64,
    pub connected: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub listening: Vec<String>,
}

/// Tunables read from the environment when the libOS starts.
#[derive(Clone, Copy, Debug)]
pub struct Cfg {
    pub sndbuf: usize,
    pub rcvbuf: usize,
    pub spin: Duration,
    pub linger: Duration,
    /// DEMI_PRELOAD_SOURCE: the address unbound sockets are bound to before
    /// they connect or send (the RDMA device a client uses, on catmint).
    pub source: Option<std::net::Ipv4Addr>,
}

pub struct State {
    os: Option<LibOs>,
    init_err: Option<i32>,
    pub cfg: Cfg,
    pub socks: HashMap<QDesc, Sock>,
    pub fds: HashMap<RawFd, Entry>,
    pub tokens: HashMap<QToken, (QDesc, Op)>,
    pub epolls: HashMap<RawFd, HashMap<RawFd, Reg>>,
    /// Each epoll instance's doorbell eventfd (ex_epoll.rs).
    pub doorbells: HashMap<RawFd, RawFd>,
    /// Eventfds of threads sleeping in this library (woken on any event).
    pub sleepers: Vec<RawFd>,
    /// Sockets closed by the program whose unsent bytes are still going out.
    lingering: Vec<QDesc>,
    pub stats: Stats,
    /// What a forked child inherited from its parent and must not touch:
    /// kept (reachable, never dropped) rather than leaked.
    abandoned: Vec<(Option<LibOs>, HashMap<QDesc, Sock>)>,
}

static STATE: LazyLock<Mutex<State>> = LazyLock::new(|| {
    Mutex::new(State {
        os: None,
        init_err: None,
        cfg: Cfg {
            sndbuf: 1 << 20,
            rcvbuf: 1 << 20,
            spin: Duration::from_micros(50),
            linger: Duration::from_secs(10),
            source: None,
        },
        socks: HashMap::new(),
        fds: HashMap::new(),
        tokens: HashMap::new(),
        epolls: HashMap::new(),
        doorbells: HashMap::new(),
        sleepers: Vec::new(),
        lingering: Vec::new(),
        stats: Stats::default(),
        abandoned: Vec::new(),
    })
});

/// The state, locked. A panic while it was held was caught at the C
/// boundary; the maps stay consistent between statements, so carry on.
pub fn lock() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The state, if it can be locked within `limit` (at exit: never wait on a
/// lock held by a thread that will not give it back).
pub fn lock_within(limit: Duration) -> Option<MutexGuard<'static, State>> {
    let start = Instant::now();
    loop {
        match STATE.try_lock() {
            Ok(g) => return Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => return Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if start.elapsed() < limit => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        }
    }
}

/// True once the libOS has been started in this process (poll and epoll
/// then take the demi path).
pub fn started() -> bool {
    STARTED.load(std::sync::atomic::Ordering::Acquire)
}

static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn env_size(var: &str, default: usize) -> usize {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("demi preload: {var}={v:?} is not a number of bytes; using {default}");
            default
        }),
        _ => default,
    }
}

impl State {
    /// The libOS, started on first use. A libOS that cannot start fails this
    /// and every later call with its errno; the reason goes to stderr once.
    pub fn os(&mut self) -> Ret<LibOs> {
        if let Some(os) = &self.os {
            return Ok(os.clone());
        }
        if let Some(e) = self.init_err {
            return Err(e);
        }
        crate::init_logging();
        // The library's configuration, read once from the environment.
        // One engine for the process: this library keeps one table of
        // sockets behind one lock, and its `progress` must see every
        // socket's completions whichever thread made it.
        let cfg = demi::Config::from_env().map(|c| demi::Config { threading: demi::config::Threading::Shared, ..c });
        let name = cfg.as_ref().map_or_else(|_| demi::Config::libos_from_env(), |c| c.libos.clone());
        match cfg.and_then(|c| LibOs::with_config(&c).map(|os| (os, c.spin))) {
            Ok((os, spin)) => {
                self.cfg.sndbuf = env_size("DEMI_PRELOAD_SNDBUF", 1 << 20).max(1);
                self.cfg.rcvbuf = env_size("DEMI_PRELOAD_RCVBUF", 1 << 20).max(1);
                self.cfg.spin = spin;
                self.cfg.source = match std::env::var("DEMI_PRELOAD_SOURCE") {
                    Ok(v) if !v.trim().is_empty() => v.trim().parse().ok().or_else(|| {
                        eprintln!("demi preload: DEMI_PRELOAD_SOURCE={v:?} is not an IPv4 address; ignored");
                        None
                    }),
                    _ => None,
                };
                log::info!(
                    "demi preload: AF_INET stream and datagram sockets go to {name} (pid {})",
                    std::process::id()
                );
                crate::stats::at_exit();
                self.os = Some(os.clone());
                STARTED.store(true, std::sync::atomic::Ordering::Release);
                Ok(os)
            }
            Err(e) => {
                eprintln!(
                    "demi preload: cannot start the {name} libOS: {e}; this program's AF_INET sockets fail \
                     with {} (set DEMI_PRELOAD_LOG=debug for more)",
                    demi::errno_name(e.errno())
                );
                self.init_err = Some(e.errno());
                Err(e.errno())
            }
        }
    }

    /// The running libOS (every socket implies one).
    pub fn libos(&self) -> Ret<LibOs> {
        self.os.clone().ok_or(libc::EBADF)
    }

    /// The socket `fd` names.
    pub fn sock(&mut self, fd: RawFd) -> Ret<&mut Sock> {
        match self.fds.get(&fd) {
            Some(Entry::Sock(qd)) => self.socks.get_mut(qd).ok_or(libc::EBADF),
            _ => Err(libc::EBADF),
        }
    }

    /// The queue descriptor `fd` names.
    pub fn qd(&self, fd: RawFd) -> Ret<QDesc> {
        match self.fds.get(&fd) {
            Some(Entry::Sock(qd)) if self.socks.contains_key(qd) => Ok(*qd),
            _ => Err(libc::EBADF),
        }
    }

    /// Polls the libOS once and applies what finished. Returns how many
    /// operations finished; wakes sleeping threads if any did.
    pub fn progress(&mut self) -> usize {
        let Some(os) = self.os.clone() else { return 0 };
        let mut n = 0;
        for _ in 0..8 {
            match os.wait_next_n(256, Some(Duration::ZERO)) {
                Ok(done) if !done.is_empty() => {
                    n += done.len();
                    for r in done {
                        self.apply(&os, r);
                    }
                }
                _ => break,
            }
        }
        self.reap_lingering(&os);
        if n > 0 {
            self.wake_all();
        }
        n
    }

    /// Wakes every thread sleeping in this library.
    pub fn wake_all(&self) {
        for &fd in &self.sleepers {
            let one: u64 = 1;
            // SAFETY: fd is a live eventfd of a sleeping thread (it removes
            // itself under the lock before closing it); writes 8 bytes from a
            // live u64. write reaches the kernel: fd is not a demi number.
            let _ = unsafe { crate::real::write(fd, (&one as *const u64).cast(), 8) };
        }
    }

    fn apply(&mut self, os: &LibOs, r: QResult) {
        let Some((qd, op)) = self.tokens.remove(&r.qt) else { return };
        let rcvbuf = self.cfg.rcvbuf;
        if let (Op::Accept, QValue::Accept { qd: new, .. }) = (op, &r.value) {
            if !self.socks.contains_key(&qd) {
                let _ = os.close(*new);
                return;
            }
        }
        let Some(s) = self.socks.get_mut(&qd) else { return };
        s.seq += 1;
        let mut accepted = None;
        match (op, r.value) {
            (Op::Pop, QValue::Pop { buf, from }) => {
                s.pop = None;
                self.stats.bytes_in += buf.len() as u64;
                if s.is_stream() {
                    if buf.is_empty() {
                        s.eof = true;
                    } else {
                        s.rx_bytes += buf.len();
                        s.rx.push_back(buf);
                    }
                } else {
                    s.rx_bytes += buf.len();
                    s.dgrams.push_back((buf, from));
                }
            }
            (Op::Pop, QValue::Failed(e)) => {
                s.pop = None;
                if e != libc::ECANCELED && s.is_stream() {
                    s.err.get_or_insert(e);
                }
            }
            (Op::Push(len), v) => {
                s.unsent = s.unsent.saturating_sub(len);
                if let QValue::Failed(e) = v {
                    if e != libc::ECANCELED && s.is_stream() {
                        s.err.get_or_insert(e);
                    }
                }
            }
            (Op::Accept, QValue::Accept { qd: new, peer }) => {
                s.accept = None;
                s.backlog.push_back(new);
                accepted = Some((new, peer));
            }
            (Op::Accept, QValue::Failed(e)) => {
                s.accept = None;
                if e != libc::ECANCELED {
                    s.accept_err = Some(e);
                }
            }
            (Op::Connect, QValue::Connect) => {
                s.connect = None;
                s.addressed = true;
                s.phase = Phase::Connected;
                s.local = os.local_addr(qd).ok().flatten().or(s.local);
                self.stats.connected += 1;
            }
            (Op::Connect, QValue::Failed(e)) => {
                s.connect = None;
                if s.is_stream() {
                    s.phase = Phase::Idle;
                }
                s.so_error = e;
            }
            (op, v) => log::warn!("demi preload: qd {qd}: unexpected completion {v:?} for {op:?}"),
        }
        if let Some((new, peer)) = accepted {
            let mut c = Sock::new(new, SockType::Stream);
            c.refs = 0;
            c.phase = Phase::Connected;
            c.peer = Some(peer);
            // The engine knows no local address for accepted connections: the
            // listener's, with the address routing picks towards the peer if
            // the listener's is the wildcard.
            c.local = os.local_addr(new).ok().flatten().or_else(|| {
                let l = self.socks.get(&qd)?.local?;
                let ip = if l.ip().is_unspecified() { crate::addr::route_source(*peer.ip())? } else { *l.ip() };
                Some(SocketAddrV4::new(ip, l.port()))
            });
            self.socks.insert(new, c);
            self.stats.accepted += 1;
            self.feed(os, new, rcvbuf);
        }
        self.feed(os, qd, rcvbuf);
    }

    /// Keeps the read side fed: posts a pop (or, listening, an accept) if
    /// none is in flight and less than the receive bound is buffered.
    pub fn feed(&mut self, os: &LibOs, qd: QDesc, rcvbuf: usize) {
        let Some(s) = self.socks.get_mut(&qd) else { return };
        if s.linger_until.is_some() {
            return;
        }
        if s.phase == Phase::Listening {
            // One connection taken ahead at most: the rest wait in the
            // libOS's queue, as in the kernel's, costing no descriptor (with
            // catnap each taken connection holds one: taking many ahead
            // starves a program near its descriptor limit).
            if s.accept.is_none() && s.accept_err.is_none() && s.backlog.len() < ACCEPT_AHEAD.min(s.backlog_max) {
                match os.accept(qd) {
                    Ok(qt) => {
                        s.accept = Some(qt);
                        self.tokens.insert(qt, (qd, Op::Accept));
                    }
                    Err(e) => log::debug!("demi preload: accept on qd {qd}: {e}"),
                }
            }
            return;
        }
        let wanted = match s.ty {
            SockType::Stream => s.phase == Phase::Connected && !s.eof && s.err.is_none() && !s.shut_rd,
            SockType::Datagram => s.addressed,
        };
        if !wanted || s.pop.is_some() || s.rx_bytes >= rcvbuf {
            return;
        }
        match os.pop(qd) {
            Ok(qt) => {
                s.pop = Some(qt);
                self.tokens.insert(qt, (qd, Op::Pop));
            }
            Err(e) => log::debug!("demi preload: pop on qd {qd}: {e}"),
        }
    }

    /// Registers a new descriptor number for socket `qd`.
    pub fn name_fd(&mut self, fd: RawFd, qd: QDesc) {
        self.fds.insert(fd, Entry::Sock(qd));
        fdtab::mark(fd, fdtab::SOCK);
    }

    /// Forgets descriptor number `fd` (the caller closes the kernel's
    /// reservation); closes the socket when no number names it any more.
    pub fn drop_fd(&mut self, fd: RawFd) {
        fdtab::clear(fd);
        for set in self.epolls.values_mut() {
            set.remove(&fd);
        }
        let Some(Entry::Sock(qd)) = self.fds.remove(&fd) else { return };
        let Some(s) = self.socks.get_mut(&qd) else { return };
        s.refs = s.refs.saturating_sub(1);
        if s.refs == 0 {
            self.release(qd);
        }
        self.wake_all();
    }

    /// The program no longer names `qd`: close it, after its unsent bytes
    /// went out (bounded by the linger time).
    pub fn release(&mut self, qd: QDesc) {
        let Ok(os) = self.libos() else { return };
        let linger = self.cfg.linger;
        let Some(s) = self.socks.get_mut(&qd) else { return };
        let backlog: Vec<QDesc> = s.backlog.drain(..).collect();
        if s.is_stream() && s.unsent > 0 && s.err.is_none() {
            s.linger_until = Some(Instant::now() + linger);
            self.lingering.push(qd);
        } else {
            self.socks.remove(&qd);
            if let Err(e) = os.close(qd) {
                log::debug!("demi preload: close qd {qd}: {e}");
            }
        }
        for c in backlog {
            self.release(c);
        }
    }

    fn reap_lingering(&mut self, os: &LibOs) {
        if self.lingering.is_empty() {
            return;
        }
        let now = Instant::now();
        let socks = &mut self.socks;
        self.lingering.retain(|qd| {
            let done = match socks.get(qd) {
                Some(s) => s.unsent == 0 || s.err.is_some() || s.linger_until.is_some_and(|t| now >= t),
                None => true,
            };
            if done && socks.remove(qd).is_some() {
                let _ = os.close(*qd);
            }
            !done
        });
    }

    /// In the child of a fork: the parent's libOS and connections are not
    /// this process's to drive. Keep the parent's descriptor numbers as
    /// inherited (closable, nothing else) and start afresh on the next
    /// socket call. The libOS is set aside, never dropped: dropping would
    /// tear down what the parent still uses.
    pub fn forked_child(&mut self) {
        let os = self.os.take();
        let socks = std::mem::take(&mut self.socks);
        self.abandoned.push((os, socks));
        self.tokens.clear();
        self.sleepers.clear();
        self.lingering.clear();
        for set in self.epolls.values_mut() {
            set.clear();
        }
        for e in self.fds.values_mut() {
            *e = Entry::Inherited;
        }
        self.init_err = None;
        self.stats = Stats::default();
        STARTED.store(false, std::sync::atomic::Ordering::Release);
        crate::wait::new_generation();
    }
}
