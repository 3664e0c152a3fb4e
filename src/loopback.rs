//! [`Loopback`]: an in-memory [`Backend`], the engine's test seam.
//!
//! A whole libOS with no kernel networking and no device, for unit tests of
//! the engine and of [`crate::LibOs`] on any machine:
//!
//! ```
//! use demi::engine::Engine;
//! use demi::loopback::Loopback;
//! use demi::{LibOs, QValue, SockType};
//! use std::time::Duration;
//!
//! let os = LibOs::with_engine(Engine::new(Box::new(Loopback::new())), Duration::ZERO);
//! let (a, b) = (os.socket(SockType::Datagram)?, os.socket(SockType::Datagram)?);
//! os.bind(a, "10.0.0.1:1".parse().unwrap())?;
//! os.bind(b, "10.0.0.2:2".parse().unwrap())?;
//! let sent = os.pushto(a, &os.buffer_from(b"hi")?, "10.0.0.2:2".parse().unwrap())?;
//! os.wait(sent, None)?;
//! let got = os.wait(os.pop(b)?, None)?;
//! let QValue::Pop { buf, from } = got.value else { panic!() };
//! assert_eq!((buf.as_slice(), from), (&b"hi"[..], Some("10.0.0.1:1".parse().unwrap())));
//! # Ok::<(), demi::Error>(())
//! ```
//!
//! # What it models
//!
//! Every address belongs to the one `Loopback`: a socket bound to any IPv4
//! address receives what is sent there; a socket bound to 0.0.0.0 receives
//! for its port on every address. Sockets that send or connect unbound get
//! an ephemeral port (49152 and up) on 127.0.0.1, as the kernel would.
//!
//! - **Datagrams**: a push goes into the inbox of the socket bound at the
//!   destination. With no such socket (or a full inbox, [`DATAGRAM_QUEUE`]
//!   datagrams) it is dropped, as UDP drops it: the push still succeeds and
//!   [`LoopbackControl::dropped`] counts it. Connect only sets the default
//!   peer (the engine keeps it); a connected socket still receives from anyone.
//! - **Streams**: connect reaches a listener in the same `Loopback` (none, or
//!   its backlog full: ECONNREFUSED); accept hands out the server's end. Each
//!   push arrives whole as one pop on the other end (message boundaries are
//!   kept, which TCP does not promise; there is no flow control). Closing one
//!   end gives the other end's pops end of file (a zero-length buffer), and
//!   its pushes EPIPE.
//! - **Buffers are never copied**: a pop hands out the pushed [`Buffer`]
//!   itself, sharing the sender's memory (a reference count, not an
//!   allocation). Nothing on the per-message path allocates once the queues
//!   have grown to their working size.
//!
//! # When things complete
//!
//! A push completes inside the call that starts it (as catnap's UDP pushes
//! do). Everything else — delivering data to pops, connects, accepts — happens
//! in [`Backend::poll`], so an engine that forgets to poll sees nothing
//! arrive. [`LoopbackControl::hold`] stalls the device: until
//! [`LoopbackControl::release`], polls deliver nothing and pushes complete
//! into a held queue, so tests can keep any token pending as long as they
//! like. Closing a socket reports its held push completions (those pushes
//! did leave) and cancels its pops, accepts and connect with ECANCELED.
//!
//! The device has no wake-up descriptor ([`Backend::arm`] is `None`), so
//! waiters busy-poll it, as they do a DPDK port.

use crate::backend::{Backend, Completions, OpId, Outcome, SockId, SockType};
use crate::buffer::Buffer;
use crate::error::{fail, Result};
use slab::Slab;
use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Datagrams a socket's inbox holds before further ones are dropped.
pub const DATAGRAM_QUEUE: usize = 4096;

/// Largest datagram payload, as for UDP over IPv4.
const MAX_DATAGRAM: usize = 65507;

/// First and last ephemeral port (Linux's default range starts lower; any
/// fixed range will do for one process).
const EPHEMERAL: (u16, u16) = (49152, 65535);

/// A test's handle on a [`Loopback`] it has handed to an engine.
#[derive(Clone, Debug, Default)]
pub struct LoopbackControl {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    held: AtomicBool,
    polls: AtomicU64,
    dropped: AtomicU64,
}

impl LoopbackControl {
    /// Stalls the device: from now on polls deliver nothing and pushes
    /// complete into a held queue, so every operation stays pending.
    pub fn hold(&self) {
        self.shared.held.store(true, Relaxed);
    }

    /// Lets the device run again; the next poll reports what was held.
    pub fn release(&self) {
        self.shared.held.store(false, Relaxed);
    }

    /// How many times the engine has polled the device.
    pub fn polls(&self) -> u64 {
        self.shared.polls.load(Relaxed)
    }

    /// Datagrams dropped: no socket at the destination, or its inbox full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Relaxed)
    }
}

/// One socket of the loopback.
#[derive(Default)]
struct Sock {
    stream: bool,
    /// The local address, once bound (explicitly, or on first use).
    local: Option<SocketAddrV4>,
    /// True if `local` is a key of [`Loopback::bound`]; a socket made by
    /// accept shares its listener's address and is not.
    registered: bool,
    /// Stream: the address of the other end, once connected.
    peer_addr: Option<SocketAddrV4>,
    /// Stream: the other end while it is open.
    peer: Option<SockId>,
    /// Stream: the other end closed; pops get end of file.
    eof: bool,
    /// Listening: the most connections waiting for accept.
    backlog_limit: Option<usize>,
    /// Listening: connections waiting for accept (server end, client address).
    backlog: VecDeque<(SockId, SocketAddrV4)>,
    accepts: VecDeque<OpId>,
    connect: Option<(OpId, SocketAddrV4)>,
    /// Arrived data not yet popped, with the sender for datagrams.
    inbox: VecDeque<(Buffer, Option<SocketAddrV4>)>,
    pops: VecDeque<OpId>,
    /// True while the socket is in [`Loopback::busy`].
    busy: bool,
}

/// The in-memory device (see the module docs).
pub struct Loopback {
    socks: Slab<Sock>,
    /// Bound addresses and their sockets.
    bound: BTreeMap<SocketAddrV4, SockId>,
    /// Sockets with work for the next poll (they may be closed by then).
    busy: Vec<SockId>,
    /// Completions withheld while the device is held: (socket, op, outcome).
    held: VecDeque<(SockId, OpId, Outcome)>,
    control: LoopbackControl,
    next_port: u16,
    /// The zero-length buffer of end of file, made once.
    eof: Buffer,
}

impl Default for Loopback {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Loopback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loopback").field("sockets", &self.socks.len()).finish_non_exhaustive()
    }
}

impl Loopback {
    /// An empty loopback: no sockets, nothing held.
    pub fn new() -> Loopback {
        Loopback {
            socks: Slab::new(),
            bound: BTreeMap::new(),
            busy: Vec::new(),
            held: VecDeque::new(),
            control: LoopbackControl::default(),
            next_port: EPHEMERAL.0,
            eof: Buffer::heap(0),
        }
    }

    /// A handle to hold, release and observe the device after it has been
    /// moved into an engine.
    pub fn control(&self) -> LoopbackControl {
        self.control.clone()
    }

    fn sock(&mut self, s: SockId) -> Result<&mut Sock> {
        match self.socks.get_mut(s) {
            Some(sock) => Ok(sock),
            None => fail(libc::EBADF, "loopback: no such socket"),
        }
    }

    fn insert(&mut self, sock: Sock) -> SockId {
        self.socks.insert(sock)
    }

    /// Queues `s` for the next poll.
    fn wake(&mut self, s: SockId) {
        if let Some(sock) = self.socks.get_mut(s) {
            if !sock.busy {
                sock.busy = true;
                self.busy.push(s);
            }
        }
    }

    /// Reports an outcome now, or keeps it while the device is held.
    fn report(&mut self, s: SockId, op: OpId, outcome: Outcome, out: &mut Completions) {
        if self.control.shared.held.load(Relaxed) {
            self.held.push_back((s, op, outcome));
        } else {
            out.complete(op, outcome);
        }
    }

    /// True if binding `ip:port` would clash with a bound address (the same
    /// port on the same address, or either address the wildcard).
    fn in_use(&self, ip: Ipv4Addr, port: u16) -> bool {
        self.bound.keys().any(|a| a.port() == port && (*a.ip() == ip || a.ip().is_unspecified() || ip.is_unspecified()))
    }

    /// Binds `s` to `addr` (port 0: an ephemeral one) and registers it.
    fn bind_to(&mut self, s: SockId, addr: SocketAddrV4) -> Result<SocketAddrV4> {
        let addr = if addr.port() == 0 {
            let span = EPHEMERAL.1 - EPHEMERAL.0 + 1;
            let port = (0..span)
                .map(|i| EPHEMERAL.0 + (self.next_port - EPHEMERAL.0 + i) % span)
                .find(|&p| !self.in_use(*addr.ip(), p));
            let Some(port) = port else {
                return fail(libc::EADDRNOTAVAIL, "loopback: every ephemeral port is in use");
            };
            self.next_port = if port == EPHEMERAL.1 { EPHEMERAL.0 } else { port + 1 };
            SocketAddrV4::new(*addr.ip(), port)
        } else if self.in_use(*addr.ip(), addr.port()) {
            return fail(libc::EADDRINUSE, "loopback: address already in use");
        } else {
            addr
        };
        self.bound.insert(addr, s);
        let sock = self.sock(s)?;
        sock.local = Some(addr);
        sock.registered = true;
        Ok(addr)
    }

    /// The socket's address, binding an ephemeral one on 127.0.0.1 first if
    /// it has none.
    fn local_or_bind(&mut self, s: SockId) -> Result<SocketAddrV4> {
        match self.sock(s)?.local {
            Some(a) => Ok(a),
            None => self.bind_to(s, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
        }
    }

    /// The socket bound at `to` (or at the wildcard address on its port).
    fn lookup(&self, to: SocketAddrV4) -> Option<SockId> {
        let wildcard = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, to.port());
        self.bound.get(&to).or_else(|| self.bound.get(&wildcard)).copied()
    }

    /// Delivers a datagram, or drops it (no receiver, or its inbox full).
    fn deliver_datagram(&mut self, buf: Buffer, from: SocketAddrV4, to: SocketAddrV4) {
        let receiver = self.lookup(to);
        if let Some(r) = receiver {
            if let Some(sock) = self.socks.get_mut(r) {
                if !sock.stream && sock.inbox.len() < DATAGRAM_QUEUE {
                    sock.inbox.push_back((buf, Some(from)));
                    // Data is work for the next poll only if a pop waits
                    // for it; a later pop wakes the socket itself.
                    if !sock.pops.is_empty() {
                        self.wake(r);
                    }
                    return;
                }
            }
        }
        self.control.shared.dropped.fetch_add(1, Relaxed);
    }

    /// Moves socket `s` as far as it goes: its connect, accepts and pops.
    fn progress(&mut self, s: SockId, out: &mut Completions) {
        let Ok(sock) = self.sock(s) else { return };
        sock.busy = false;
        if let Some((op, to)) = sock.connect.take() {
            let outcome = if sock.stream { self.reach_listener(s, to) } else { Outcome::Connected };
            out.complete(op, outcome);
        }
        let Some(sock) = self.socks.get_mut(s) else { return };
        while let (Some(&op), Some(&(server_end, peer))) = (sock.accepts.front(), sock.backlog.front()) {
            sock.accepts.pop_front();
            sock.backlog.pop_front();
            out.complete(op, Outcome::Accepted { sock: server_end, peer });
        }
        while let Some(&op) = sock.pops.front() {
            let (buf, from) = match sock.inbox.pop_front() {
                Some(got) => got,
                None if sock.eof => (self.eof.clone(), None),
                None => break,
            };
            sock.pops.pop_front();
            out.complete(op, Outcome::Popped { buf, from });
        }
    }

    /// A stream connect from `s` reaching `to`: queues a new server end in
    /// the listener's backlog, or refuses.
    fn reach_listener(&mut self, s: SockId, to: SocketAddrV4) -> Outcome {
        let listener = self.lookup(to).filter(|&l| {
            matches!(self.socks.get(l), Some(sock)
                if sock.stream && sock.backlog_limit.is_some_and(|limit| sock.backlog.len() < limit))
        });
        let (Some(l), Ok(client)) = (listener, self.local_or_bind(s)) else {
            return Outcome::Failed(libc::ECONNREFUSED);
        };
        // A listener on the wildcard answers from the address dialled.
        let server_addr = self.socks.get(l).and_then(|sock| sock.local).filter(|a| !a.ip().is_unspecified());
        let server_end = self.insert(Sock {
            stream: true,
            local: Some(server_addr.unwrap_or(to)),
            peer_addr: Some(client),
            peer: Some(s),
            ..Sock::default()
        });
        if let Some(sock) = self.socks.get_mut(s) {
            (sock.peer, sock.peer_addr) = (Some(server_end), Some(to));
        }
        if let Some(sock) = self.socks.get_mut(l) {
            sock.backlog.push_back((server_end, client));
        }
        self.wake(l);
        Outcome::Connected
    }
}

impl Backend for Loopback {
    fn name(&self) -> &'static str {
        "loopback"
    }

    fn socket(&mut self, ty: SockType) -> Result<SockId> {
        Ok(self.insert(Sock { stream: ty == SockType::Stream, ..Sock::default() }))
    }

    fn bind(&mut self, s: SockId, addr: SocketAddrV4) -> Result<SocketAddrV4> {
        self.sock(s)?;
        self.bind_to(s, addr)
    }

    fn listen(&mut self, s: SockId, backlog: i32) -> Result<()> {
        self.sock(s)?.backlog_limit = Some(backlog.max(1) as usize);
        Ok(())
    }

    fn accept(&mut self, s: SockId, op: OpId, _out: &mut Completions) -> Result<()> {
        self.sock(s)?.accepts.push_back(op);
        self.wake(s);
        Ok(())
    }

    fn connect(&mut self, s: SockId, to: SocketAddrV4, op: OpId, _out: &mut Completions) -> Result<()> {
        self.local_or_bind(s)?;
        self.sock(s)?.connect = Some((op, to));
        self.wake(s);
        Ok(())
    }

    fn push(
        &mut self,
        s: SockId,
        buf: Buffer,
        to: Option<SocketAddrV4>,
        op: OpId,
        out: &mut Completions,
    ) -> Result<()> {
        let sock = self.sock(s)?;
        let outcome = if sock.stream {
            match sock.peer {
                Some(p) => {
                    if let Some(peer) = self.socks.get_mut(p) {
                        peer.inbox.push_back((buf, None));
                        // As for datagrams: work only for a waiting pop.
                        if !peer.pops.is_empty() {
                            self.wake(p);
                        }
                    }
                    Outcome::Pushed
                }
                None => Outcome::Failed(libc::EPIPE),
            }
        } else {
            let Some(to) = to else {
                return fail(libc::EDESTADDRREQ, "loopback: datagram without a destination");
            };
            if buf.len() > MAX_DATAGRAM {
                return fail(libc::EMSGSIZE, "loopback: datagram longer than 65507 bytes");
            }
            let from = self.local_or_bind(s)?;
            self.deliver_datagram(buf, from, to);
            Outcome::Pushed
        };
        self.report(s, op, outcome, out);
        Ok(())
    }

    fn pop(&mut self, s: SockId, op: OpId, _out: &mut Completions) -> Result<()> {
        self.sock(s)?.pops.push_back(op);
        self.wake(s);
        Ok(())
    }

    fn close(&mut self, s: SockId, out: &mut Completions) -> Result<()> {
        let Some(sock) = self.socks.try_remove(s) else {
            return fail(libc::EBADF, "loopback: no such socket");
        };
        if sock.registered {
            if let Some(local) = sock.local {
                self.bound.remove(&local);
            }
        }
        // Held pushes of this socket did leave: report them as they are.
        for _ in 0..self.held.len() {
            match self.held.pop_front() {
                Some((owner, op, outcome)) if owner == s => out.complete(op, outcome),
                Some(other) => self.held.push_back(other),
                None => break,
            }
        }
        let pending = sock.pops.iter().chain(&sock.accepts).chain(sock.connect.as_ref().map(|(op, _)| op));
        for &op in pending {
            out.complete(op, Outcome::Failed(libc::ECANCELED));
        }
        if let Some(p) = sock.peer {
            if let Some(peer) = self.socks.get_mut(p) {
                (peer.peer, peer.eof) = (None, true);
            }
            self.wake(p);
        }
        // Connections nobody accepted end with the listener.
        for (server_end, _) in sock.backlog {
            let _ = self.close(server_end, out);
        }
        Ok(())
    }

    fn setsockopt(&mut self, s: SockId, _level: i32, _name: i32, _val: &[u8]) -> Result<()> {
        self.sock(s)?;
        fail(libc::ENOPROTOOPT, "loopback: sockets have no options")
    }

    fn getsockopt(&mut self, s: SockId, _level: i32, _name: i32, _val: &mut [u8]) -> Result<usize> {
        self.sock(s)?;
        fail(libc::ENOPROTOOPT, "loopback: sockets have no options")
    }

    fn peer_addr(&mut self, s: SockId) -> Result<SocketAddrV4> {
        match self.sock(s)?.peer_addr {
            Some(a) => Ok(a),
            None => fail(libc::ENOTCONN, "loopback: socket is not connected"),
        }
    }

    fn local_addr(&mut self, s: SockId) -> Option<SocketAddrV4> {
        self.sock(s).ok()?.local
    }

    /// Write: the other end's pops get end of file after what is in its
    /// inbox, and it can still push to this end. Read: nothing here (the
    /// engine answers later pops).
    fn shutdown(&mut self, s: SockId, how: std::net::Shutdown, _out: &mut Completions) -> Result<()> {
        let sock = self.sock(s)?;
        if how == std::net::Shutdown::Read || !sock.stream {
            return Ok(());
        }
        if let Some(p) = sock.peer {
            if let Some(peer) = self.socks.get_mut(p) {
                peer.eof = true;
            }
            self.wake(p);
        }
        Ok(())
    }

    fn max_datagram(&mut self, _s: SockId) -> usize {
        MAX_DATAGRAM
    }

    fn poll(&mut self, out: &mut Completions) {
        // Only this device (`&mut self`) writes the count: a load and a
        // store, not a locked read-modify-write.
        let polls = &self.control.shared.polls;
        polls.store(polls.load(Relaxed).wrapping_add(1), Relaxed);
        if !(self.busy.is_empty() && self.held.is_empty()) {
            self.poll_work(out);
        }
    }

    fn arm(&mut self) -> Option<RawFd> {
        None
    }
}

impl Loopback {
    /// The part of a poll that has work to do (kept out of line: most polls
    /// find none).
    #[inline(never)]
    fn poll_work(&mut self, out: &mut Completions) {
        if self.control.shared.held.load(Relaxed) {
            return;
        }
        while let Some((_, op, outcome)) = self.held.pop_front() {
            out.complete(op, outcome);
        }
        // Progress may queue more sockets (a connect reaching a listener):
        // they are handled in this same poll.
        let mut i = 0;
        while let Some(&s) = self.busy.get(i) {
            self.progress(s, out);
            i += 1;
        }
        self.busy.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ops and errnos (0 for success) reported so far, emptying `out`.
    fn reported(out: &mut Completions) -> Vec<(OpId, i32)> {
        out.0.drain(..).map(|(op, o)| (op, if let Outcome::Failed(e) = o { e } else { 0 })).collect()
    }

    /// The Backend contract at its source, where the engine cannot hide a
    /// mistake (it drops completions of unknown operations): close reports
    /// every pending operation of the socket at once and exactly once.
    #[test]
    fn close_reports_each_pending_operation_once_and_at_once() {
        let (mut lb, mut out) = (Loopback::new(), Completions::default());
        let at: SocketAddrV4 = "10.0.0.1:80".parse().unwrap();
        let l = lb.socket(SockType::Stream).unwrap();
        lb.bind(l, at).unwrap();
        lb.listen(l, 4).unwrap();
        let c = lb.socket(SockType::Stream).unwrap();
        lb.connect(c, at, 1, &mut out).unwrap();
        lb.accept(l, 2, &mut out).unwrap();
        assert_eq!(reported(&mut out), [], "connect and accept finish in a poll, not in the call");
        lb.poll(&mut out);
        let server_end = match out.0.last() {
            Some((2, Outcome::Accepted { sock, .. })) => *sock,
            other => panic!("{other:?}"),
        };
        assert_eq!(reported(&mut out), [(1, 0), (2, 0)]);
        lb.pop(c, 3, &mut out).unwrap();
        lb.accept(l, 4, &mut out).unwrap();
        lb.control().hold();
        lb.push(c, Buffer::copy_from(b"x"), None, 5, &mut out).unwrap();
        assert_eq!(reported(&mut out), [], "held");
        lb.close(c, &mut out).unwrap();
        assert_eq!(reported(&mut out), [(5, 0), (3, libc::ECANCELED)], "the held push left; the pop is cancelled");
        lb.close(l, &mut out).unwrap();
        assert_eq!(reported(&mut out), [(4, libc::ECANCELED)]);
        lb.control().release();
        lb.poll(&mut out);
        assert_eq!(reported(&mut out), [], "nothing follows a close");
        // The server end still gets what was pushed, then end of file.
        lb.pop(server_end, 6, &mut out).unwrap();
        lb.pop(server_end, 7, &mut out).unwrap();
        lb.poll(&mut out);
        let lens: Vec<_> = out
            .0
            .iter()
            .map(|(op, o)| {
                (
                    *op,
                    matches!(o, Outcome::Popped { buf, .. } if buf.len() == 1),
                    matches!(o, Outcome::Popped { buf, .. } if buf.is_empty()),
                )
            })
            .collect();
        assert_eq!(lens, [(6, true, false), (7, false, true)]);
    }
}
