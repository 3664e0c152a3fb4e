//! `demi echo`: one event loop over every pending operation (accept, a pop
//! per connection, pushes), driven by `wait_any`. Ping traffic goes back
//! as it came (the popped buffer itself is pushed: no copy); stream traffic
//! is counted and answered with a report (see net.rs for the protocol; udp
//! is in echo_udp.rs).
//!
//! Nothing one client does stops the server: a connection that fails or
//! misbehaves is closed, a datagram that cannot be echoed is dropped and
//! counted; only the listening socket failing for good ends the run.
//! Running out of descriptors (or memory) pauses accepts for a short
//! backoff or until a connection closes, and is reported at most once a
//! second. A connection with `--max-unsent` bytes of echo not yet sent is
//! not read until that drains, so a client that never reads costs a bounded
//! amount of memory; one whose peer has finished sending is closed once its
//! echo has gone out. SIGINT and SIGTERM stop it cleanly: queues closed,
//! libOS torn down, exit 0.

use crate::echo_udp;
use crate::net::{self, Report, Role};
use crate::{EchoArgs, Fail, Proto, Res};
use demi::{Buffer, LibOs, QDesc, QToken, QValue, SockType};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// How long accepts pause after running out of descriptors or memory (a
/// connection closing resumes them sooner).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Other failures in a row (accepts; udp receives) before the server pauses
/// too: no error, whatever it is, makes a hot loop.
pub const RETRIES: u32 = 16;

/// Pushes in flight per connection (udp: for the socket) before it is read
/// no more: the bound on bytes alone would let a client that sends a byte
/// at a time pile up millions of small pushes.
pub const MAX_PUSHES: usize = 256;

/// Shortest time between two reports of the same trouble.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// What a pending token was for.
#[derive(Clone, Copy)]
pub enum Op {
    Accept,
    Pop(u64),
    /// A push of this many bytes.
    Push(u64, usize),
}

/// Counts stream-mode messages (tcp: cut from the byte stream; udp: one
/// per datagram).
#[derive(Default)]
pub struct Counter {
    messages: u64,
    bytes: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Counter {
    pub fn add(&mut self, bytes: usize, now: Instant) {
        self.messages += 1;
        self.bytes += bytes as u64;
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    pub fn report(&self, session: u64) -> Report {
        let nanos = match (self.first, self.last) {
            (Some(a), Some(b)) => b.duration_since(a).as_nanos() as u64,
            _ => 0,
        };
        Report { session, messages: self.messages, bytes: self.bytes, nanos }
    }
}

enum Mode {
    /// Collecting the 16-byte hello.
    Hello(Vec<u8>),
    Ping,
    Stream {
        size: usize,
        pos: usize,
        kind: u8,
        counter: Counter,
    },
}

struct Conn {
    qd: QDesc,
    peer: SocketAddrV4,
    mode: Mode,
    /// Bytes pushed and not yet sent.
    unsent: usize,
    /// Pushes not yet finished.
    pushes: usize,
    /// A pop is pending.
    popping: bool,
    /// The peer has finished sending: close once the pushes finish.
    eof: bool,
}

/// Pending operations and their purposes, in two parallel vectors so the
/// tokens can go to `wait_any` as they are.
#[derive(Default)]
pub struct Pending {
    tokens: Vec<QToken>,
    ops: Vec<Op>,
}

impl Pending {
    pub fn add(&mut self, qt: QToken, op: Op) {
        self.tokens.push(qt);
        self.ops.push(op);
    }

    /// The next finished operation; None if `timeout` passed first, or
    /// `STOP_CHECK` did (to look at [`stopping`]).
    pub fn wait(&mut self, os: &LibOs, timeout: Option<Duration>) -> Res<Option<(Op, QValue)>> {
        let timeout = timeout.map_or(STOP_CHECK, |t| t.min(STOP_CHECK));
        if self.tokens.is_empty() {
            // Nothing in flight (accepts paused, no connection): sleep out
            // the pause.
            std::thread::sleep(timeout.min(ACCEPT_BACKOFF));
            return Ok(None);
        }
        match os.wait_any(&self.tokens, Some(timeout)) {
            Ok((i, r)) => {
                self.tokens.swap_remove(i);
                Ok(Some((self.ops.swap_remove(i), r.value)))
            }
            Err(e) if e.errno() == libc::ETIMEDOUT => Ok(None),
            Err(e) => Err(Fail::new(format!("wait failed: {}", net::error_text(&e)))),
        }
    }
}

/// One kind of trouble, printed at most once per `REPORT_EVERY` with how
/// often it happened in between (a flood of failures must not become a
/// flood of lines).
#[derive(Default)]
pub struct Throttled {
    last: Option<Instant>,
    held: u64,
}

impl Throttled {
    pub fn say(&mut self, msg: impl FnOnce() -> String) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < REPORT_EVERY) {
            self.held += 1;
            return;
        }
        let held = std::mem::take(&mut self.held);
        let more = if held > 0 { format!(" (and {held} more like it since the last report)") } else { String::new() };
        eprintln!("demi echo: {}{more}", msg());
        self.last = Some(now);
    }
}

/// Errors that mean the server's own socket is gone or unusable.
pub fn fatal(errno: i32) -> bool {
    matches!(errno, libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP | libc::ECANCELED)
}

/// The signal that asked the server to stop (0: none yet).
static STOP: AtomicI32 = AtomicI32::new(0);

/// How often a waiting server looks at STOP: a signal only interrupts the
/// libOS's sleep, which then goes on waiting.
const STOP_CHECK: Duration = Duration::from_secs(1);

extern "C" fn on_stop_signal(sig: libc::c_int) {
    STOP.store(sig, Ordering::Relaxed);
}

/// True once SIGINT or SIGTERM asked the server to stop.
pub fn stopping() -> bool {
    STOP.load(Ordering::Relaxed) != 0
}

/// Makes SIGINT and SIGTERM end the loops, so that the server closes its
/// queues and drops the libOS as on any other exit. Killed in the middle of
/// a call instead, the libOS's teardown never runs, and valgrind's leak
/// search (scripts/rdma-suite.sh) blames blocks that were held only in a
/// register at that moment. The handler stays installed: timeout(1) sends
/// its signal twice (to the child and to its process group), and a second
/// signal must not turn the clean stop into a kill. SIGKILL or SIGQUIT
/// still end a server whose clean stop hangs.
fn stop_on_signals() -> Res<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid (empty mask, no flags); the
        // handler only stores to an atomic, which is async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(Fail::new(format!("sigaction: {}", std::io::Error::last_os_error())));
        }
    }
    Ok(())
}

pub fn run(a: &EchoArgs) -> Res<()> {
    stop_on_signals()?;
    net::check_threads(&a.common)?;
    let os = net::start(&a.common, Role::Server, Some(*a.bind.ip()))?;
    if a.common.threads == 1 {
        serve(&os, a, 0)?;
    } else {
        // Thread K serves port + K on its own engine; the first failure ends the run.
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..a.common.threads)
                .map(|k| {
                    s.spawn({
                        let os = &os;
                        move || serve(os, a, k)
                    })
                })
                .collect();
            handles.into_iter().enumerate().try_for_each(|(k, h)| match h.join() {
                Ok(r) => r.map_err(|e| Fail::new(format!("thread {k}: {}", e.0))),
                Err(_) => Err(Fail::new(format!("thread {k} failed"))),
            })
        })?;
    }
    // The loops return only when asked to stop; the libOS goes with `os`.
    eprintln!("demi echo: stopped by signal {}", STOP.load(Ordering::Relaxed));
    Ok(())
}

/// Thread `k`'s server: listens on the bind address's port + `k` until a
/// signal stops it.
fn serve(os: &LibOs, a: &EchoArgs, k: u16) -> Res<()> {
    let c = &a.common;
    let bind = net::nth(a.bind, k)?;
    let ty = if c.proto == Proto::Tcp { SockType::Stream } else { SockType::Datagram };
    let qd = net::call(os.socket(ty), "cannot make a socket")?;
    net::call(os.bind(qd, bind), &format!("cannot bind {bind}"))?;
    if c.proto == Proto::Tcp {
        net::call(os.listen(qd, 64), &format!("cannot listen on {bind}"))?;
    }
    // With port 0 the libOS picks one: print what it is.
    let at = os.local_addr(qd).ok().flatten().unwrap_or(bind);
    println!("demi echo: listening on {at} ({} {})", c.libos.name(), c.proto.name());
    let _ = std::io::stdout().flush();
    let served = match c.proto {
        Proto::Tcp => Tcp {
            os,
            lqd: qd,
            at,
            quiet: a.quiet,
            max_unsent: a.max_unsent,
            pending: Pending::default(),
            conns: HashMap::new(),
            next_id: 0,
            paused: None,
            freed: false,
            failures: 0,
            trouble: Throttled::default(),
        }
        .run(),
        Proto::Udp => echo_udp::run(os, qd, at, a.quiet, a.max_unsent),
    };
    served?;
    let _ = os.close(qd);
    Ok(())
}

struct Tcp<'a> {
    os: &'a LibOs,
    lqd: QDesc,
    at: SocketAddrV4,
    quiet: bool,
    max_unsent: usize,
    pending: Pending,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    /// Accepts are paused until then (none is pending meanwhile).
    paused: Option<Instant>,
    /// A connection closed since accepts paused: a descriptor is free.
    freed: bool,
    /// Accept failures in a row.
    failures: u32,
    trouble: Throttled,
}

impl Tcp<'_> {
    fn say(&self, msg: String) {
        if !self.quiet {
            eprintln!("demi echo: {msg}");
        }
    }

    fn run(mut self) -> Res<()> {
        self.accept()?;
        loop {
            if stopping() {
                for c in self.conns.values() {
                    let _ = self.os.close(c.qd);
                }
                return Ok(());
            }
            let timeout = self.paused.map(|t| t.saturating_duration_since(Instant::now()));
            if let Some((op, value)) = self.pending.wait(self.os, timeout)? {
                match op {
                    Op::Accept => self.accepted(value)?,
                    Op::Pop(id) => self.popped(id, value),
                    Op::Push(id, len) => self.pushed(id, len, value),
                }
            }
            if self.paused.is_some_and(|t| self.freed || Instant::now() >= t) {
                self.accept()?;
            }
        }
    }

    /// Starts the next accept; failing to is the listener's end.
    fn accept(&mut self) -> Res<()> {
        (self.paused, self.freed) = (None, false);
        let qt = net::call(self.os.accept(self.lqd), &format!("cannot accept on {}", self.at))?;
        self.pending.add(qt, Op::Accept);
        Ok(())
    }

    fn pause(&mut self) {
        (self.paused, self.freed) = (Some(Instant::now() + ACCEPT_BACKOFF), false);
    }

    fn accepted(&mut self, value: QValue) -> Res<()> {
        let e = match value {
            QValue::Accept { qd, peer } => {
                self.failures = 0;
                net::nodelay(self.os, qd);
                self.next_id += 1;
                let mode = Mode::Hello(Vec::new());
                let conn = Conn { qd, peer, mode, unsent: 0, pushes: 0, popping: false, eof: false };
                self.conns.insert(self.next_id, conn);
                self.pop(self.next_id);
                return self.accept();
            }
            QValue::Failed(e) => e,
            _ => return self.accept(),
        };
        if fatal(e) {
            return Err(Fail::new(format!("cannot accept on {}: {}", self.at, net::errno_text(e))));
        }
        let open = self.conns.len();
        if matches!(e, libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) {
            // Retrying at once would fail the same way, in a hot loop: wait
            // for a descriptor to come free.
            self.pause();
            self.trouble
                .say(|| format!("cannot accept: {}; pausing accepts ({open} connections open)", net::errno_text(e)));
            return Ok(());
        }
        // One client's trouble: go on, unless it keeps happening.
        self.failures += 1;
        if !self.quiet {
            self.trouble.say(|| format!("cannot accept: {}", net::errno_text(e)));
        }
        if self.failures >= RETRIES {
            self.pause();
            return Ok(());
        }
        self.accept()
    }

    fn popped(&mut self, id: u64, value: QValue) {
        // A closed connection's cancelled pop finds no connection.
        let Some(conn) = self.conns.get_mut(&id) else { return };
        conn.popping = false;
        match value {
            QValue::Pop { buf, .. } if !buf.is_empty() => {
                match handle(self.os, conn, buf, Instant::now(), self.quiet) {
                    Ok(pushes) => {
                        for (qt, len) in pushes {
                            conn.unsent += len;
                            conn.pushes += 1;
                            self.pending.add(qt, Op::Push(id, len));
                        }
                        self.pop(id);
                    }
                    Err(why) => self.close(id, &format!("{why}; closing")),
                }
            }
            QValue::Pop { .. } => {
                // End of file: what is still being echoed goes out first.
                conn.eof = true;
                if conn.pushes == 0 {
                    self.close(id, "closed");
                } else {
                    log::debug!("{}: closed its side; {} B of echo to send first", conn.peer, conn.unsent);
                }
            }
            QValue::Failed(e) => self.close(id, &net::errno_text(e)),
            other => self.close(id, &format!("unexpected {other:?}; closing")),
        }
    }

    fn pushed(&mut self, id: u64, len: usize, value: QValue) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        conn.pushes -= 1;
        conn.unsent -= len;
        if let QValue::Failed(e) = value {
            self.close(id, &format!("push failed: {}", net::errno_text(e)));
        } else if conn.eof && conn.pushes == 0 {
            self.close(id, "closed");
        } else {
            self.pop(id);
        }
    }

    /// Starts the connection's next pop, unless one is pending, the peer
    /// has finished, or too much of its echo is unsent (then the push that
    /// brings it below the bounds calls this again).
    fn pop(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.popping || conn.eof || conn.unsent >= self.max_unsent || conn.pushes >= MAX_PUSHES {
            return;
        }
        match self.os.pop(conn.qd) {
            Ok(qt) => {
                conn.popping = true;
                self.pending.add(qt, Op::Pop(id));
            }
            Err(e) => self.close(id, &format!("cannot pop: {}; closing", net::error_text(&e))),
        }
    }

    fn close(&mut self, id: u64, why: &str) {
        let Some(conn) = self.conns.remove(&id) else { return };
        self.say(format!("{}: {why}", conn.peer));
        // Its pending operations finish as cancelled and find no connection.
        if let Err(e) = self.os.close(conn.qd) {
            log::debug!("{}: close: {e}", conn.peer);
        }
        self.freed = true;
    }
}

/// Handles bytes from a connection; returns the pushes it started and
/// their lengths, or why the connection must be closed.
fn handle(
    os: &LibOs,
    conn: &mut Conn,
    mut buf: Buffer,
    now: Instant,
    quiet: bool,
) -> Result<Vec<(QToken, usize)>, String> {
    let say = |msg: String| {
        if !quiet {
            eprintln!("demi echo: {msg}");
        }
    };
    let push = |b: &Buffer| {
        os.push(conn.qd, b).map(|qt| (qt, b.len())).map_err(|e| format!("cannot push: {}", net::error_text(&e)))
    };
    let mut pushes = Vec::new();
    if let Mode::Hello(h) = &mut conn.mode {
        let take = (net::HELLO_LEN - h.len()).min(buf.len());
        h.extend_from_slice(&buf.as_slice()[..take]);
        buf = buf.advance(take).expect("take <= len");
        if h.len() < net::HELLO_LEN {
            return Ok(pushes);
        }
        conn.mode = match net::parse_hello(h) {
            Some((net::MODE_PING, size)) => {
                say(format!("{}: ping, {size} B messages", conn.peer));
                Mode::Ping
            }
            Some((_, size)) => {
                say(format!("{}: stream, {size} B messages", conn.peer));
                Mode::Stream { size, pos: 0, kind: 0, counter: Counter::default() }
            }
            None => return Err("not a demi ping or stream client".into()),
        };
    }
    if buf.is_empty() {
        return Ok(pushes);
    }
    match &mut conn.mode {
        Mode::Hello(_) => unreachable!("handled above"),
        Mode::Ping => pushes.push(push(&buf)?),
        Mode::Stream { size, pos, kind, counter } => {
            // The reports this buffer asks for go out as one push, however
            // many end messages it holds.
            let mut reports = Vec::new();
            let data = buf.as_slice();
            let mut i = 0;
            while i < data.len() {
                if *pos == 0 {
                    *kind = data[i];
                }
                let take = (*size - *pos).min(data.len() - i);
                i += take;
                *pos += take;
                if *pos < *size {
                    continue;
                }
                *pos = 0;
                if *kind != net::KIND_END {
                    counter.add(*size, now);
                    continue;
                }
                let r = counter.report(0);
                say(format!("{}: {}", conn.peer, describe(&r)));
                reports.extend_from_slice(&r.encode());
                *counter = Counter::default();
            }
            if !reports.is_empty() {
                let out = os.buffer_from(&reports).map_err(|e| format!("cannot allocate: {}", net::error_text(&e)))?;
                pushes.push(push(&out)?);
            }
        }
    }
    Ok(pushes)
}

pub fn describe(r: &Report) -> String {
    let secs = r.nanos as f64 / 1e9;
    if secs > 0.0 {
        format!(
            "counted {} messages ({} B) in {secs:.2} s: {:.0} messages/s, {:.3} Gbit/s",
            r.messages,
            r.bytes,
            r.messages as f64 / secs,
            r.bytes as f64 * 8.0 / secs / 1e9
        )
    } else {
        format!("counted {} messages ({} B)", r.messages, r.bytes)
    }
}
