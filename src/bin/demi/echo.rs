//! `demi echo`: one event loop over every pending operation (accept, a pop
//! per connection, pushes), driven by `wait_any`. Ping traffic goes back
//! as it came (the popped buffer itself is pushed: no copy); stream traffic
//! is counted and answered with a report (see net.rs for the protocol).
//! SIGINT and SIGTERM stop it cleanly: queues closed, libOS torn down, exit 0.

use crate::net::{self, Report, Role};
use crate::{EchoArgs, Fail, Proto, Res};
use demi::{Buffer, LibOs, QDesc, QToken, QValue, SockType};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// The signal that asked the server to stop (0: none yet).
static STOP: AtomicI32 = AtomicI32::new(0);

/// How often a waiting server looks at STOP: a signal only interrupts the
/// libOS's sleep, which then goes on waiting.
const STOP_CHECK: Duration = Duration::from_millis(100);

extern "C" fn on_stop_signal(sig: libc::c_int) {
    STOP.store(sig, Ordering::Relaxed);
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

/// What a pending token was for.
#[derive(Clone, Copy)]
enum Op {
    Accept,
    Pop(u64),
    Push(u64),
}

/// Counts stream-mode messages (tcp: cut from the byte stream; udp: one
/// per datagram).
#[derive(Default)]
struct Counter {
    messages: u64,
    bytes: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Counter {
    fn add(&mut self, bytes: usize, now: Instant) {
        self.messages += 1;
        self.bytes += bytes as u64;
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    fn report(&self, session: u64) -> Report {
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
}

/// Pending operations and their purposes, in two parallel vectors so the
/// tokens can go to `wait_any` as they are.
#[derive(Default)]
struct Pending {
    tokens: Vec<QToken>,
    ops: Vec<Op>,
}

impl Pending {
    fn add(&mut self, qt: QToken, op: Op) {
        self.tokens.push(qt);
        self.ops.push(op);
    }

    /// The next finished operation, or None once a signal asked to stop.
    fn wait(&mut self, os: &LibOs) -> Res<Option<(Op, QValue)>> {
        loop {
            if STOP.load(Ordering::Relaxed) != 0 {
                return Ok(None);
            }
            match os.wait_any(&self.tokens, Some(STOP_CHECK)) {
                Ok((i, r)) => {
                    self.tokens.swap_remove(i);
                    return Ok(Some((self.ops.swap_remove(i), r.value)));
                }
                Err(e) if e.errno() == libc::ETIMEDOUT => {}
                Err(e) => return Err(Fail::new(format!("wait failed: {e}"))),
            }
        }
    }
}

pub fn run(a: &EchoArgs) -> Res<()> {
    stop_on_signals()?;
    let os = net::start(&a.common, Role::Server, Some(*a.bind.ip()))?;
    let c = &a.common;
    let ty = if c.proto == Proto::Tcp { SockType::Stream } else { SockType::Datagram };
    let qd = net::call(os.socket(ty), "cannot make a socket")?;
    net::call(os.bind(qd, a.bind), &format!("cannot bind {}", a.bind))?;
    if c.proto == Proto::Tcp {
        net::call(os.listen(qd, 64), &format!("cannot listen on {}", a.bind))?;
    }
    // With port 0 the libOS picks one: print what it is.
    let at = os.local_addr(qd).ok().flatten().unwrap_or(a.bind);
    println!("demi echo: listening on {at} ({} {})", c.libos.name(), c.proto.name());
    let _ = std::io::stdout().flush();
    match c.proto {
        Proto::Tcp => tcp(&os, qd, a.quiet)?,
        Proto::Udp => udp(&os, qd, a.quiet)?,
    }
    // The loops return only when asked to stop; the libOS goes with `os`.
    let _ = os.close(qd);
    eprintln!("demi echo: stopped by signal {}", STOP.load(Ordering::Relaxed));
    Ok(())
}

fn tcp(os: &LibOs, lqd: QDesc, quiet: bool) -> Res<()> {
    let say = |msg: String| {
        if !quiet {
            eprintln!("demi echo: {msg}");
        }
    };
    let mut pending = Pending::default();
    pending.add(net::call(os.accept(lqd), "accept")?, Op::Accept);
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    let mut next_id = 0u64;
    loop {
        let Some((op, value)) = pending.wait(os)? else {
            for c in conns.values() {
                let _ = os.close(c.qd);
            }
            return Ok(());
        };
        let now = Instant::now();
        match op {
            Op::Accept => {
                pending.add(net::call(os.accept(lqd), "accept")?, Op::Accept);
                match value {
                    QValue::Accept { qd, peer } => {
                        net::nodelay(os, qd);
                        next_id += 1;
                        conns.insert(next_id, Conn { qd, peer, mode: Mode::Hello(Vec::new()) });
                        pending.add(net::call(os.pop(qd), "pop")?, Op::Pop(next_id));
                    }
                    QValue::Failed(e) => say(format!("accept failed: {}", net::errno_text(e))),
                    _ => {}
                }
            }
            Op::Push(id) => {
                if let QValue::Failed(e) = value {
                    if let Some(c) = conns.remove(&id) {
                        say(format!("{}: push failed: {}", c.peer, net::errno_text(e)));
                        let _ = os.close(c.qd);
                    }
                }
            }
            Op::Pop(id) => {
                let Some(conn) = conns.get_mut(&id) else { continue };
                let buf = match value {
                    QValue::Pop { buf, .. } if !buf.is_empty() => buf,
                    other => {
                        let why = match other {
                            QValue::Failed(e) => net::errno_text(e),
                            _ => "closed".into(),
                        };
                        let conn = conns.remove(&id).expect("present");
                        say(format!("{}: {why}", conn.peer));
                        let _ = os.close(conn.qd);
                        continue;
                    }
                };
                let result = handle(os, conn, buf, now, &say)?;
                let (qd, peer) = (conn.qd, conn.peer);
                match result {
                    Ok(pushes) => {
                        for qt in pushes {
                            pending.add(qt, Op::Push(id));
                        }
                        pending.add(net::call(os.pop(qd), "pop")?, Op::Pop(id));
                    }
                    Err(why) => {
                        say(format!("{peer}: {why}; closing"));
                        let _ = os.close(qd);
                        conns.remove(&id);
                    }
                }
            }
        }
    }
}

/// Handles bytes from a connection; returns the pushes it started, or (in
/// the inner error) why the connection must be closed.
fn handle(
    os: &LibOs,
    conn: &mut Conn,
    mut buf: Buffer,
    now: Instant,
    say: &impl Fn(String),
) -> Res<Result<Vec<QToken>, String>> {
    let mut pushes = Vec::new();
    if let Mode::Hello(h) = &mut conn.mode {
        let take = (net::HELLO_LEN - h.len()).min(buf.len());
        h.extend_from_slice(&buf.as_slice()[..take]);
        buf = buf.advance(take).expect("take <= len");
        if h.len() < net::HELLO_LEN {
            return Ok(Ok(pushes));
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
            None => return Ok(Err("not a demi ping or stream client".into())),
        };
    }
    if buf.is_empty() {
        return Ok(Ok(pushes));
    }
    match &mut conn.mode {
        Mode::Hello(_) => unreachable!("handled above"),
        Mode::Ping => pushes.push(net::call(os.push(conn.qd, &buf), "push")?),
        Mode::Stream { size, pos, kind, counter } => {
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
                let out = net::call(os.buffer_from(&r.encode()), "cannot allocate a buffer")?;
                pushes.push(net::call(os.push(conn.qd, &out), "push")?);
                *counter = Counter::default();
            }
        }
    }
    Ok(Ok(pushes))
}

fn describe(r: &Report) -> String {
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

/// One stream-mode session of a udp sender.
struct Session {
    id: u64,
    counter: Counter,
}

fn udp(os: &LibOs, qd: QDesc, quiet: bool) -> Res<()> {
    let mut pending = Pending::default();
    pending.add(net::call(os.pop(qd), "pop")?, Op::Pop(0));
    let mut sessions: HashMap<SocketAddrV4, Session> = HashMap::new();
    loop {
        let Some((op, value)) = pending.wait(os)? else { return Ok(()) };
        if let Op::Push(_) = op {
            if let (QValue::Failed(e), false) = (value, quiet) {
                eprintln!("demi echo: a push failed: {}", net::errno_text(e));
            }
            continue;
        }
        pending.add(net::call(os.pop(qd), "pop")?, Op::Pop(0));
        let (buf, from) = match value {
            QValue::Pop { buf, from: Some(from) } => (buf, from),
            QValue::Failed(e) => {
                if !quiet {
                    eprintln!("demi echo: a pop failed: {}", net::errno_text(e));
                }
                continue;
            }
            _ => continue,
        };
        let data = buf.as_slice();
        let kind = if data.len() >= net::UDP_HEADER { data[0] } else { 0 };
        match kind {
            net::KIND_DATA | net::KIND_END => {
                let id = net::header_number(data).unwrap_or(0);
                if sessions.len() > 4096 {
                    sessions.clear();
                }
                let s = sessions.entry(from).or_insert(Session { id, counter: Counter::default() });
                if s.id != id {
                    *s = Session { id, counter: Counter::default() };
                }
                if kind == net::KIND_DATA {
                    s.counter.add(data.len(), Instant::now());
                    continue;
                }
                let r = s.counter.report(id);
                if !quiet {
                    eprintln!("demi echo: {from}: {}", describe(&r));
                }
                let out = net::call(os.buffer_from(&r.encode()), "cannot allocate a buffer")?;
                pending.add(net::call(os.pushto(qd, &out, from), "push")?, Op::Push(0));
            }
            _ => pending.add(net::call(os.pushto(qd, &buf, from), "push")?, Op::Push(0)),
        }
    }
}
