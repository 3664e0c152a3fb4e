//! catnip: the libOS over DPDK with our own ARP/IPv4/UDP (crate `catnip`,
//! folder dpdk/). Datagram sockets only.
//!
//! The device crate knows nothing of queue tokens; this adapter keeps the
//! per-socket queues. A push hands the datagram to the stack at once and
//! completes when the port took it, or later when ARP answered (or did not:
//! EHOSTUNREACH). Buffers from `alloc` live in mbufs, so such pushes are not
//! copied; popped buffers are the received mbufs' payloads, freed when the
//! last reference to the buffer goes (their owners are reused slots of a
//! [`LendPool`], so a pop allocates nothing once warm). DPDK has no file
//! descriptor (`arm` returns None), so waiters poll, pausing between polls
//! once idle (`Config::poll_sleep`).

use crate::backend::{Backend, Completions, OpId, Outcome, SockId, SockType};
use crate::buffer::Buffer;
use crate::error::{fail, Error, Result};
use crate::pool::LendPool;
use catnip::{Config, Event, Mbuf, Payload, RxPayload, SendStatus, Stack};
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddrV4;
use std::os::fd::RawFd;
use std::ptr::NonNull;

/// Received datagrams kept per socket while nobody pops; more are dropped
/// (and counted) so one idle socket cannot drain the mbuf pool.
const RX_QUEUE_MAX: usize = 1024;

/// An mbuf lent to the application by `alloc`: pushing a buffer that starts
/// at its payload area sends it without a copy.
struct TxMbuf(Mbuf);

/// Owners of received payloads kept for reuse, at most (more are freed).
const RX_OWNERS_KEPT: usize = 1024;

struct Sock {
    /// Bound local port.
    port: Option<u16>,
    /// Default peer (connect).
    peer: Option<SocketAddrV4>,
    pops: VecDeque<OpId>,
    received: VecDeque<(Buffer, SocketAddrV4)>,
}

/// Room made up front in a socket's queues of pops and received
/// datagrams: a datagram that arrives before its pop (which happens now
/// and then even in lock step) is queued without an allocation. Longer
/// queues grow once and keep their room.
const QUEUE_ROOM: usize = 16;

impl Sock {
    fn new() -> Sock {
        Sock {
            port: None,
            peer: None,
            pops: VecDeque::with_capacity(QUEUE_ROOM),
            received: VecDeque::with_capacity(QUEUE_ROOM),
        }
    }
}

/// The catnip backend.
pub struct Catnip {
    stack: Stack,
    socks: Slab<Sock>,
    /// Pushes waiting for ARP or ring space, and their sockets.
    queued: HashMap<OpId, SockId>,
    events: Vec<Event>,
    /// Datagrams dropped because their socket's queue was full.
    drop_rx_queue_full: u64,
    /// Owners for received payloads: the mbuf a pop handed out, freed (the
    /// slot's value reset to None) when the last buffer over it goes.
    rx: LendPool<Option<Mbuf>>,
}

fn to_error(e: catnip::Error) -> Error {
    Error::with(e.errno, format!("catnip: {}", e.message))
}

impl Catnip {
    /// Starts DPDK and the stack with the settings of `cfg` (see dpdk/README.md).
    pub fn new(cfg: &Config) -> Result<Catnip> {
        let stack = Stack::new(cfg).map_err(to_error)?;
        Ok(Catnip {
            stack,
            socks: Slab::new(),
            queued: HashMap::new(),
            events: Vec::with_capacity(64),
            drop_rx_queue_full: 0,
            rx: LendPool::new(RX_OWNERS_KEPT, |mbuf| *mbuf = None),
        })
    }

    fn sock(&mut self, s: SockId) -> Result<&mut Sock> {
        match self.socks.get_mut(s) {
            Some(sock) => Ok(sock),
            None => fail(libc::EBADF, "catnip: no such socket"),
        }
    }

    /// The socket's port, binding an ephemeral one first if needed (as a
    /// kernel does on the first send of an unbound UDP socket).
    fn local_port(&mut self, s: SockId) -> Result<u16> {
        if let Some(p) = self.sock(s)?.port {
            return Ok(p);
        }
        let p = self.stack.bind(0, s as u32).map_err(|e| Error::new(e.errno(), "catnip: no ephemeral port left"))?;
        self.sock(s)?.port = Some(p);
        Ok(p)
    }

    fn deliver(&mut self, socket: u32, local_port: u16, from: SocketAddrV4, payload: RxPayload, out: &mut Completions) {
        let Some(sock) = self.socks.get_mut(socket as usize) else { return };
        if sock.port != Some(local_port) {
            return;
        }
        let len = payload.bytes().len();
        let ptr = NonNull::new(payload.bytes().as_ptr() as *mut u8).expect("mbuf data is never null");
        let mut owner = self.rx.take(|| None);
        *owner.value() = Some(payload.into_frame());
        // SAFETY: ptr..ptr+len lies in the mbuf's data, which stays valid and
        // unused by anyone else while the slot holds the mbuf: until the
        // last buffer goes (the reset frees it then; nothing else changes it).
        #[allow(unsafe_code)]
        let buf = unsafe { owner.lend(ptr, len) };
        if let Some(op) = sock.pops.pop_front() {
            out.complete(op, Outcome::Popped { buf, from: Some(from) });
        } else if sock.received.len() < RX_QUEUE_MAX {
            sock.received.push_back((buf, from));
        } else {
            self.drop_rx_queue_full += 1;
        }
    }
}

impl Drop for Catnip {
    fn drop(&mut self) {
        if self.drop_rx_queue_full > 0 {
            log::info!("catnip: {} datagrams dropped on full socket queues", self.drop_rx_queue_full);
        }
    }
}

impl Backend for Catnip {
    fn name(&self) -> &'static str {
        "catnip"
    }

    fn socket(&mut self, ty: SockType) -> Result<SockId> {
        if ty != SockType::Datagram {
            return fail(libc::EPROTONOSUPPORT, "catnip serves UDP (SOCK_DGRAM) only");
        }
        Ok(self.socks.insert(Sock::new()))
    }

    fn bind(&mut self, s: SockId, addr: SocketAddrV4) -> Result<SocketAddrV4> {
        let ip = self.stack.ipv4();
        if !addr.ip().is_unspecified() && *addr.ip() != ip {
            return Err(Error::with(libc::EADDRNOTAVAIL, format!("catnip: {} is not our address ({ip})", addr.ip())));
        }
        if self.sock(s)?.port.is_some() {
            return fail(libc::EINVAL, "catnip: socket is already bound");
        }
        let port = self.stack.bind(addr.port(), s as u32).map_err(|e| Error::new(e.errno(), "catnip: port in use"))?;
        self.sock(s)?.port = Some(port);
        Ok(SocketAddrV4::new(ip, port))
    }

    fn listen(&mut self, _s: SockId, _backlog: i32) -> Result<()> {
        fail(libc::EOPNOTSUPP, "catnip serves datagram sockets only")
    }

    fn accept(&mut self, _s: SockId, _op: OpId, _out: &mut Completions) -> Result<()> {
        fail(libc::EOPNOTSUPP, "catnip serves datagram sockets only")
    }

    fn connect(&mut self, s: SockId, to: SocketAddrV4, op: OpId, out: &mut Completions) -> Result<()> {
        self.local_port(s)?;
        self.sock(s)?.peer = Some(to);
        out.complete(op, Outcome::Connected);
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
        let Some(to) = to.or(self.sock(s)?.peer) else {
            return fail(libc::EDESTADDRREQ, "catnip: no destination");
        };
        let port = self.local_port(s)?;
        let payload = match buf.owner_any().downcast_ref::<TxMbuf>() {
            Some(TxMbuf(mbuf)) => Payload::Buffer { buf: mbuf, data: buf.as_slice() },
            None => Payload::Bytes(buf.as_slice()),
        };
        match self.stack.send(port, to, payload, op) {
            Ok(SendStatus::Sent) => out.complete(op, Outcome::Pushed),
            Ok(SendStatus::Queued) => {
                self.queued.insert(op, s);
            }
            // Like a kernel UDP socket, the operation fails (EMSGSIZE,
            // ENOBUFS...), not the call.
            Err(e) => out.complete(op, Outcome::Failed(e.errno())),
        }
        Ok(())
    }

    fn pop(&mut self, s: SockId, op: OpId, out: &mut Completions) -> Result<()> {
        let sock = self.sock(s)?;
        match sock.received.pop_front() {
            Some((buf, from)) => out.complete(op, Outcome::Popped { buf, from: Some(from) }),
            None => sock.pops.push_back(op),
        }
        Ok(())
    }

    fn close(&mut self, s: SockId, out: &mut Completions) -> Result<()> {
        let Some(sock) = self.socks.try_remove(s) else {
            return fail(libc::EBADF, "catnip: no such socket");
        };
        if let Some(p) = sock.port {
            self.stack.unbind(p);
        }
        for op in sock.pops {
            out.complete(op, Outcome::Failed(libc::ECANCELED));
        }
        // A queued frame may still leave later; its completion is ours no more.
        let cancelled: Vec<OpId> = self.queued.iter().filter(|(_, &qs)| qs == s).map(|(&op, _)| op).collect();
        for op in cancelled {
            self.queued.remove(&op);
            out.complete(op, Outcome::Failed(libc::ECANCELED));
        }
        Ok(())
    }

    fn alloc(&mut self, len: usize) -> Result<Buffer> {
        let Some(m) = self.stack.alloc_payload(len) else {
            // Larger than a frame (the push will say EMSGSIZE) or no mbuf left.
            return Ok(Buffer::heap(len));
        };
        let (start, _) = m.payload_area();
        let ptr = NonNull::new(start as *mut u8).expect("mbuf buffers are never null");
        // SAFETY: alloc_payload made ptr..ptr+len part of the mbuf's buffer;
        // the TxMbuf owner keeps the mbuf (one reference) alive, and the
        // stack only writes the headroom before ptr, never the payload.
        #[allow(unsafe_code)]
        let buf = unsafe { Buffer::from_owner(ptr, len, TxMbuf(m)) };
        Ok(buf)
    }

    fn setsockopt(&mut self, s: SockId, _level: i32, _name: i32, _val: &[u8]) -> Result<()> {
        self.sock(s)?;
        fail(libc::ENOPROTOOPT, "catnip has no socket options")
    }

    fn getsockopt(&mut self, s: SockId, _level: i32, _name: i32, _val: &mut [u8]) -> Result<usize> {
        self.sock(s)?;
        fail(libc::ENOPROTOOPT, "catnip has no socket options")
    }

    fn peer_addr(&mut self, s: SockId) -> Result<SocketAddrV4> {
        match self.sock(s)?.peer {
            Some(p) => Ok(p),
            None => fail(libc::ENOTCONN, "catnip: no default peer"),
        }
    }

    fn max_datagram(&mut self, _s: SockId) -> usize {
        self.stack.max_payload()
    }

    fn poll(&mut self, out: &mut Completions) {
        let mut events = std::mem::take(&mut self.events);
        self.stack.poll(&mut events);
        for ev in events.drain(..) {
            match ev {
                Event::Datagram { socket, local_port, from, payload } => {
                    self.deliver(socket, local_port, from, payload, out)
                }
                Event::Sent { tag, errno } => {
                    if self.queued.remove(&tag).is_some() {
                        out.complete(tag, errno.map_or(Outcome::Pushed, Outcome::Failed));
                    }
                }
            }
        }
        self.events = events;
    }

    fn arm(&mut self) -> Option<RawFd> {
        // DPDK queues have no descriptor to sleep on: waiters keep polling.
        None
    }
}
