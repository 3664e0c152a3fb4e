//! `demi echo --proto udp`: one pop at a time on the socket; every datagram
//! is echoed (ping) or counted per sender and session (stream, see net.rs).
//! A datagram that cannot be echoed (an empty one; a push that cannot
//! start) is dropped and counted, said at debug level only; while
//! `--max-unsent` bytes of echo are unsent the socket is not read.

use crate::echo::{describe, fatal, Counter, Op, Pending, Throttled, ACCEPT_BACKOFF, MAX_PUSHES, RETRIES};
use crate::net;
use crate::{Fail, Res};
use demi::{Buffer, LibOs, QDesc, QValue};
use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::Instant;

pub fn run(os: &LibOs, qd: QDesc, at: SocketAddrV4, quiet: bool, max_unsent: usize) -> Res<()> {
    Udp {
        os,
        qd,
        at,
        quiet,
        max_unsent,
        pending: Pending::default(),
        sessions: HashMap::new(),
        unsent: 0,
        pushes: 0,
        popping: false,
        dropped: 0,
        failures: 0,
        trouble: Throttled::default(),
    }
    .run()
}

/// One stream-mode session of a udp sender.
struct Session {
    id: u64,
    counter: Counter,
}

struct Udp<'a> {
    os: &'a LibOs,
    qd: QDesc,
    at: SocketAddrV4,
    quiet: bool,
    max_unsent: usize,
    pending: Pending,
    sessions: HashMap<SocketAddrV4, Session>,
    /// Bytes pushed and not yet sent.
    unsent: usize,
    /// Pushes not yet finished.
    pushes: usize,
    /// A pop is pending.
    popping: bool,
    /// Datagrams not echoed (empty ones, echoes that failed).
    dropped: u64,
    /// Failed pops in a row.
    failures: u32,
    trouble: Throttled,
}

impl Udp<'_> {
    fn run(mut self) -> Res<()> {
        self.pop()?;
        loop {
            if crate::echo::stopping() {
                return Ok(());
            }
            let Some((op, value)) = self.pending.wait(self.os, None)? else { continue };
            match op {
                Op::Push(_, len) => {
                    self.unsent -= len;
                    self.pushes -= 1;
                    if let QValue::Failed(e) = value {
                        self.dropped += 1;
                        if !self.quiet {
                            self.trouble.say(|| format!("a push failed: {}", net::errno_text(e)));
                        }
                    }
                }
                Op::Pop(_) => {
                    self.popping = false;
                    self.datagram(value)?;
                }
                Op::Accept => {}
            }
            self.pop()?;
        }
    }

    /// Starts the next pop unless one is pending or too much is unsent (in
    /// bytes or pushes); failing to is the socket's end.
    fn pop(&mut self) -> Res<()> {
        if self.popping || self.unsent >= self.max_unsent || self.pushes >= MAX_PUSHES {
            return Ok(());
        }
        let qt = net::call(self.os.pop(self.qd), &format!("cannot receive on {}", self.at))?;
        self.popping = true;
        self.pending.add(qt, Op::Pop(0));
        Ok(())
    }

    fn datagram(&mut self, value: QValue) -> Res<()> {
        let (buf, from) = match value {
            QValue::Pop { buf, from: Some(from) } => (buf, from),
            QValue::Failed(e) if fatal(e) => {
                return Err(Fail::new(format!("cannot receive on {}: {}", self.at, net::errno_text(e))))
            }
            QValue::Failed(e) => {
                self.failures += 1;
                if !self.quiet {
                    self.trouble.say(|| format!("a pop failed: {}", net::errno_text(e)));
                }
                if self.failures >= RETRIES {
                    // Whatever keeps failing, not in a hot loop.
                    std::thread::sleep(ACCEPT_BACKOFF / 10);
                }
                return Ok(());
            }
            other => {
                log::debug!("a pop gave {other:?}; ignored");
                return Ok(());
            }
        };
        self.failures = 0;
        if buf.is_empty() {
            // Nothing to echo (a push needs a byte): skip it.
            self.dropped += 1;
            log::debug!("{from}: empty datagram dropped ({} dropped so far)", self.dropped);
            return Ok(());
        }
        let data = buf.as_slice();
        let kind = if data.len() >= net::UDP_HEADER { data[0] } else { 0 };
        if !matches!(kind, net::KIND_DATA | net::KIND_END) {
            self.push(&buf, from);
            return Ok(());
        }
        let id = net::header_number(data).unwrap_or(0);
        if self.sessions.len() > 4096 {
            self.sessions.clear();
        }
        let s = self.sessions.entry(from).or_insert(Session { id, counter: Counter::default() });
        if s.id != id {
            *s = Session { id, counter: Counter::default() };
        }
        if kind == net::KIND_DATA {
            s.counter.add(data.len(), Instant::now());
            return Ok(());
        }
        let r = s.counter.report(id);
        if !self.quiet {
            eprintln!("demi echo: {from}: {}", describe(&r));
        }
        match self.os.buffer_from(&r.encode()) {
            Ok(out) => self.push(&out, from),
            Err(e) => self.drop_one(from, &e),
        }
        Ok(())
    }

    fn push(&mut self, buf: &Buffer, to: SocketAddrV4) {
        match self.os.pushto(self.qd, buf, to) {
            Ok(qt) => {
                self.unsent += buf.len();
                self.pushes += 1;
                self.pending.add(qt, Op::Push(0, buf.len()));
            }
            Err(e) => self.drop_one(to, &e),
        }
    }

    fn drop_one(&mut self, to: SocketAddrV4, e: &demi::Error) {
        self.dropped += 1;
        log::debug!("{to}: no echo: {} ({} dropped so far)", net::error_text(e), self.dropped);
    }
}
