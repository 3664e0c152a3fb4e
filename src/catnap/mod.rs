//! catnap: the libOS over Linux sockets and epoll. Runs on any Linux host.
//!
//! Every socket is non-blocking and registered edge-triggered with one epoll
//! instance. A request is queued on its socket and tried at once; whatever
//! would block waits for the socket's next epoll edge. Stream pops return
//! whatever bytes have arrived (up to 64 KiB) as one buffer; datagram pops
//! return one datagram with its sender.
//!
//! A read goes to one scratch area and is copied into a buffer from
//! [`RxPools`]: memory reused once its last buffer is freed, so a pop
//! allocates nothing once warm.

mod sys;

use crate::backend::{Backend, Completions, OpId, Outcome, SockId, SockType};
use crate::buffer::Buffer;
use crate::error::{fail, Result};
use crate::pool::LendPool;
use slab::Slab;
use std::collections::VecDeque;
use std::net::{Shutdown, SocketAddrV4};
use std::os::fd::{OwnedFd, RawFd};
use std::ptr::NonNull;
use sys::{is_would_block, Epoll};

/// Largest single read: the largest UDP datagram fits.
const SCRATCH_LEN: usize = 1 << CLASS_MAX_SHIFT;

/// Popped buffers come in sizes 2^8 (256 B) to 2^16 (64 KiB, the scratch
/// area), doubling: a pop takes the smallest that holds what it read.
const CLASS_MIN_SHIFT: u32 = 8;
const CLASS_MAX_SHIFT: u32 = 16;
const CLASSES: usize = (CLASS_MAX_SHIFT - CLASS_MIN_SHIFT + 1) as usize;
/// Freed memory each size keeps for reuse, at most (the rest goes back to
/// the allocator): 1024 buffers of 256 B, ..., 4 of 64 KiB.
const CLASS_KEEP_BYTES: usize = 256 << 10;

/// The memory popped buffers are copied into, by size, reused.
struct RxPools([LendPool<Box<[u8]>>; CLASSES]);

impl RxPools {
    fn new() -> RxPools {
        RxPools(std::array::from_fn(|c| LendPool::new(CLASS_KEEP_BYTES >> (CLASS_MIN_SHIFT + c as u32), |_| {})))
    }

    /// A buffer holding a copy of `data` (at most 64 KiB).
    fn copy(&self, data: &[u8]) -> Buffer {
        let shift = data.len().next_power_of_two().trailing_zeros().max(CLASS_MIN_SHIFT);
        assert!(shift <= CLASS_MAX_SHIFT, "catnap reads at most {SCRATCH_LEN} bytes at once");
        let mut lease = self.0[(shift - CLASS_MIN_SHIFT) as usize].take(|| vec![0u8; 1 << shift].into_boxed_slice());
        let mem = lease.value();
        mem[..data.len()].copy_from_slice(data);
        let ptr = NonNull::new(mem.as_mut_ptr()).expect("a boxed slice of 256 bytes or more is never null");
        // SAFETY: the boxed slice is the slot's own memory: it does not move
        // when the slot is lent, and is neither changed by catnap nor reset
        // (the reset does nothing) while buffers over it live.
        #[allow(unsafe_code)]
        unsafe {
            lease.lend(ptr, data.len())
        }
    }
}

struct PendingPush {
    op: OpId,
    buf: Buffer,
    sent: usize,
    to: Option<SocketAddrV4>,
}

struct Sock {
    fd: OwnedFd,
    ty: SockType,
    accepts: VecDeque<OpId>,
    connect: Option<OpId>,
    pushes: VecDeque<PendingPush>,
    pops: VecDeque<OpId>,
    /// The peer closed its side: every later stream pop is end of file.
    eof: bool,
    /// The connection died (reset, timed out): every pending and later push
    /// and pop fails with this errno. The kernel reports such an error once,
    /// to whichever call comes first, so catnap remembers it for the rest.
    dead: Option<i32>,
    /// Shut for writing while pushes were queued: shut the kernel's write
    /// side once they are out.
    fin_after_pushes: bool,
    /// False after a read found nothing, until epoll reports input again:
    /// a pop then waits for the edge instead of spending a system call.
    readable: bool,
}

impl Sock {
    fn new(fd: OwnedFd, ty: SockType) -> Sock {
        Sock {
            fd,
            ty,
            accepts: VecDeque::new(),
            connect: None,
            pushes: VecDeque::new(),
            pops: VecDeque::new(),
            eof: false,
            dead: None,
            fin_after_pushes: false,
            readable: true,
        }
    }

    /// Records a fatal stream error (see [`Sock::dead`]) and fails every
    /// queued push and pop with it. Returns false for errors that end only
    /// the operation that met them.
    fn die(&mut self, errno: i32, out: &mut Completions) -> bool {
        if self.ty != SockType::Stream || !is_fatal(errno) {
            return false;
        }
        let errno = *self.dead.get_or_insert(errno);
        for op in self.pushes.drain(..).map(|p| p.op).chain(self.pops.drain(..)) {
            out.complete(op, Outcome::Failed(errno));
        }
        true
    }
}

/// Stream errors after which the connection carries nothing more. EPIPE is
/// not one: it follows an orderly shutdown, or a reset already reported.
fn is_fatal(errno: i32) -> bool {
    matches!(errno, libc::ECONNRESET | libc::ETIMEDOUT | libc::ECONNABORTED | libc::EHOSTUNREACH | libc::ENETUNREACH)
}

/// The catnap backend.
pub struct Catnap {
    epoll: Epoll,
    socks: Slab<Sock>,
    events: Vec<libc::epoll_event>,
    scratch: Box<[u8]>,
    rx: RxPools,
}

impl Catnap {
    pub fn new() -> Result<Catnap> {
        Ok(Catnap {
            epoll: Epoll::new()?,
            socks: Slab::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 64],
            scratch: vec![0u8; SCRATCH_LEN].into_boxed_slice(),
            rx: RxPools::new(),
        })
    }

    fn sock(&mut self, s: SockId) -> Result<&mut Sock> {
        match self.socks.get_mut(s) {
            Some(sock) => Ok(sock),
            None => fail(libc::EBADF, "catnap: no such socket"),
        }
    }

    fn insert(&mut self, sock: Sock) -> Result<SockId> {
        let slot = self.socks.vacant_entry();
        let id = slot.key();
        self.epoll.add(&sock.fd, id as u64)?;
        slot.insert(sock);
        Ok(id)
    }

    /// Moves every queue of socket `s` as far as it goes without blocking.
    fn progress(&mut self, s: SockId, out: &mut Completions) {
        self.progress_connect(s, out);
        self.progress_accepts(s, out);
        self.progress_pushes(s, out);
        self.progress_pops(s, out);
    }

    fn progress_connect(&mut self, s: SockId, out: &mut Completions) {
        let Ok(sock) = self.sock(s) else { return };
        let Some(op) = sock.connect else { return };
        // Connected once the kernel knows the peer; otherwise SO_ERROR tells
        // a failure from a connect that is still under way.
        if sys::peer_addr(&sock.fd).is_ok() {
            sock.connect = None;
            out.complete(op, Outcome::Connected);
            return;
        }
        match sys::take_error(&sock.fd) {
            Ok(0) => {}
            // The handshake finished and the peer then tore the connection
            // down before this poll: one documented code for that race.
            Ok(libc::EPIPE) => {
                sock.connect = None;
                out.complete(op, Outcome::Failed(libc::ECONNRESET));
            }
            Ok(errno) => {
                sock.connect = None;
                out.complete(op, Outcome::Failed(errno));
            }
            Err(e) => {
                sock.connect = None;
                out.complete(op, Outcome::Failed(e.errno()));
            }
        }
    }

    fn progress_accepts(&mut self, s: SockId, out: &mut Completions) {
        loop {
            let Ok(sock) = self.sock(s) else { return };
            let Some(&op) = sock.accepts.front() else {
                return;
            };
            match sys::accept(&sock.fd) {
                Ok((fd, peer)) => {
                    sock.accepts.pop_front();
                    match self.insert(Sock::new(fd, SockType::Stream)) {
                        Ok(id) => out.complete(op, Outcome::Accepted { sock: id, peer }),
                        Err(e) => out.complete(op, Outcome::Failed(e.errno())),
                    }
                }
                Err(e) if is_would_block(&e) => return,
                // The connection died before we took it; take the next one.
                Err(e) if e.errno() == libc::ECONNABORTED || e.errno() == libc::EINTR => {}
                Err(e) => {
                    sock.accepts.pop_front();
                    out.complete(op, Outcome::Failed(e.errno()));
                }
            }
        }
    }

    fn progress_pushes(&mut self, s: SockId, out: &mut Completions) {
        let Ok(sock) = self.sock(s) else { return };
        if let Some(errno) = sock.dead {
            sock.die(errno, out);
            return;
        }
        while let Some(p) = sock.pushes.front_mut() {
            match sys::send(&sock.fd, &p.buf.as_slice()[p.sent..], p.to) {
                Ok(n) => {
                    p.sent += n;
                    if p.sent < p.buf.len() {
                        continue;
                    }
                    let op = p.op;
                    sock.pushes.pop_front();
                    out.complete(op, Outcome::Pushed);
                }
                Err(e) if is_would_block(&e) => return,
                Err(e) if e.errno() == libc::EINTR => {}
                Err(e) => {
                    let op = p.op;
                    if sock.die(e.errno(), out) {
                        return;
                    }
                    sock.pushes.pop_front();
                    out.complete(op, Outcome::Failed(e.errno()));
                }
            }
        }
        if std::mem::take(&mut sock.fin_after_pushes) {
            if let Err(e) = sys::shutdown(&sock.fd, Shutdown::Write) {
                log::warn!("catnap: shutdown after the queued pushes: {e}");
            }
        }
    }

    fn progress_pops(&mut self, s: SockId, out: &mut Completions) {
        let Some(sock) = self.socks.get_mut(s) else {
            return;
        };
        if let Some(errno) = sock.dead {
            sock.die(errno, out);
            return;
        }
        while let Some(&op) = sock.pops.front() {
            if !sock.eof && !sock.readable {
                return;
            }
            if sock.eof {
                sock.pops.pop_front();
                out.complete(op, Outcome::Popped { buf: self.rx.copy(&[]), from: None });
                continue;
            }
            match sys::recv(&sock.fd, &mut self.scratch) {
                Ok((n, from)) => {
                    sock.pops.pop_front();
                    if n == 0 && sock.ty == SockType::Stream {
                        sock.eof = true;
                    }
                    let from = if sock.ty == SockType::Datagram { from } else { None };
                    let buf = self.rx.copy(&self.scratch[..n]);
                    out.complete(op, Outcome::Popped { buf, from });
                }
                Err(e) if is_would_block(&e) => {
                    sock.readable = false;
                    return;
                }
                Err(e) if e.errno() == libc::EINTR => {}
                Err(e) if sock.die(e.errno(), out) => return,
                Err(e) => {
                    sock.pops.pop_front();
                    out.complete(op, Outcome::Failed(e.errno()));
                }
            }
        }
    }
}

fn cancel(sock: Sock, out: &mut Completions) {
    let ops =
        sock.accepts.into_iter().chain(sock.connect).chain(sock.pushes.into_iter().map(|p| p.op)).chain(sock.pops);
    for op in ops {
        out.complete(op, Outcome::Failed(libc::ECANCELED));
    }
    // Dropping the fd closes it, which also removes it from the epoll set.
}

impl Backend for Catnap {
    fn name(&self) -> &'static str {
        "catnap"
    }

    fn socket(&mut self, ty: SockType) -> Result<SockId> {
        let raw = match ty {
            SockType::Stream => libc::SOCK_STREAM,
            SockType::Datagram => libc::SOCK_DGRAM,
        };
        let fd = sys::socket(raw)?;
        self.insert(Sock::new(fd, ty))
    }

    fn bind(&mut self, s: SockId, addr: SocketAddrV4) -> Result<SocketAddrV4> {
        let sock = self.sock(s)?;
        sys::bind(&sock.fd, addr)?;
        sys::local_addr(&sock.fd)
    }

    fn listen(&mut self, s: SockId, backlog: i32) -> Result<()> {
        sys::listen(&self.sock(s)?.fd, backlog)
    }

    fn accept(&mut self, s: SockId, op: OpId, out: &mut Completions) -> Result<()> {
        self.sock(s)?.accepts.push_back(op);
        self.progress_accepts(s, out);
        Ok(())
    }

    fn connect(&mut self, s: SockId, to: SocketAddrV4, op: OpId, out: &mut Completions) -> Result<()> {
        let sock = self.sock(s)?;
        match sys::connect(&sock.fd, to) {
            Ok(()) => out.complete(op, Outcome::Connected),
            Err(e) if e.errno() == libc::EINPROGRESS => sock.connect = Some(op),
            // Refused, unreachable...: the operation fails, the call does not.
            Err(e) => out.complete(op, Outcome::Failed(e.errno())),
        }
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
        // A stream socket sends to its peer; an address there is ignored.
        let to = if sock.ty == SockType::Datagram { to } else { None };
        sock.pushes.push_back(PendingPush { op, buf, sent: 0, to });
        self.progress_pushes(s, out);
        Ok(())
    }

    fn pop(&mut self, s: SockId, op: OpId, out: &mut Completions) -> Result<()> {
        self.sock(s)?.pops.push_back(op);
        self.progress_pops(s, out);
        Ok(())
    }

    fn close(&mut self, s: SockId, out: &mut Completions) -> Result<()> {
        match self.socks.try_remove(s) {
            Some(sock) => {
                cancel(sock, out);
                Ok(())
            }
            None => fail(libc::EBADF, "catnap: no such socket"),
        }
    }

    fn setsockopt(&mut self, s: SockId, level: i32, name: i32, val: &[u8]) -> Result<()> {
        check_level(level)?;
        sys::setsockopt(&self.sock(s)?.fd, level, name, val)
    }

    fn getsockopt(&mut self, s: SockId, level: i32, name: i32, val: &mut [u8]) -> Result<usize> {
        check_level(level)?;
        sys::getsockopt(&self.sock(s)?.fd, level, name, val)
    }

    fn peer_addr(&mut self, s: SockId) -> Result<SocketAddrV4> {
        sys::peer_addr(&self.sock(s)?.fd)
    }

    fn local_addr(&mut self, s: SockId) -> Option<SocketAddrV4> {
        sys::local_addr(&self.sock(s).ok()?.fd).ok()
    }

    /// The kernel's shutdown(2). For the write side, pushes still queued
    /// here (the kernel's buffer was full) go first: the kernel would refuse
    /// them after its FIN, so the FIN waits until they are out (see
    /// `progress_pushes`). `Read` makes pending pops read end of file.
    fn shutdown(&mut self, s: SockId, how: Shutdown, out: &mut Completions) -> Result<()> {
        let sock = self.sock(s)?;
        let (rd, wr) = (how != Shutdown::Write, how != Shutdown::Read);
        if rd {
            sys::shutdown(&sock.fd, Shutdown::Read)?;
            sock.readable = true;
        }
        if wr {
            if sock.pushes.is_empty() {
                sys::shutdown(&sock.fd, Shutdown::Write)?;
            } else {
                sock.fin_after_pushes = true;
            }
        }
        self.progress(s, out);
        Ok(())
    }

    fn poll(&mut self, out: &mut Completions) {
        let mut events = std::mem::take(&mut self.events);
        let n = match self.epoll.poll(&mut events) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("catnap: epoll_wait: {e}");
                0
            }
        };
        for ev in &events[..n] {
            let s = ev.u64 as SockId;
            if ev.events & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                if let Some(sock) = self.socks.get_mut(s) {
                    sock.readable = true;
                }
            }
            self.progress(s, out);
        }
        self.events = events;
    }

    fn arm(&mut self) -> Option<RawFd> {
        Some(self.epoll.raw_fd())
    }
}

/// Options are passed to the kernel for these levels only.
fn check_level(level: i32) -> Result<()> {
    match level {
        libc::SOL_SOCKET | libc::IPPROTO_TCP | libc::IPPROTO_IP => Ok(()),
        _ => fail(libc::ENOPROTOOPT, "catnap passes SOL_SOCKET, IPPROTO_TCP and IPPROTO_IP options only"),
    }
}
