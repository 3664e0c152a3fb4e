//! The catmint libOS: demi's engine over the `catmint` RDMA transport.
//!
//! Buffers from `alloc` are registered memory (pushed without a copy); a pop
//! hands out the receive buffer itself, which is re-posted when freed.
//! Socket options are kept per socket and read back, but RDMA has no use for
//! them: catmint always sends at once (as with TCP_NODELAY) and sizes its
//! buffers from its section of the configuration (`DEMI_RDMA_*`).
#![allow(unsafe_code)]

use crate::backend::{Backend, Completions, OpId, Outcome, SockId, SockType};
use crate::buffer::{Buffer, Lender, Released};
use crate::error::{fail, Error, Result};
use catmint::{Block, Catmint as Transport, Done, LentSlot, Msg, Payload, Pool};
use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

// SAFETY: catmint counts nothing in `refs` itself: a lent slot's count is
// ours (Buffer::lend sets it to 1 for the first buffer, Buffer counts the
// rest), and `release` is called once per lend when it falls to zero. The
// slot, its memory and its ring stay alive until then (the lend holds a
// reference to the ring), and what `release` returns when the ring is
// closed is dropped only after the call, as `Released::DropAfter` asks.
unsafe impl Lender for LentSlot {
    fn as_any(&self) -> &dyn Any {
        // Safe to show: what could misuse the slot (its count, its
        // release) is unsafe to call, here and on the Lender trait.
        self
    }

    unsafe fn refs(&self) -> &AtomicUsize {
        // SAFETY: Buffer is the one that counts with it (see above).
        unsafe { LentSlot::refs(self) }
    }

    unsafe fn released(&self) -> Released {
        // SAFETY: Buffer calls this once per lend, when its count falls to
        // zero (the Lender contract above).
        match unsafe { self.release() } {
            None => Released::Kept,
            Some(keep) => Released::DropAfter(keep),
        }
    }
}

/// A received message as a demi buffer: a lent receive slot without an
/// allocation, or an assembled block (boxed with its buffer).
fn to_buffer(msg: Msg) -> Buffer {
    match msg {
        Msg::Lent(lent) => {
            let (ptr, len, slot) = lent.into_raw();
            // SAFETY: the slot was just lent (count zero), and LentSlot keeps
            // the Lender contract (above) for ptr..ptr+len.
            unsafe { Buffer::lend(ptr, len, slot) }
        }
        Msg::Block(block) => {
            let len = block.len();
            let ptr = NonNull::new(block.as_ptr()).expect("blocks are never null");
            // SAFETY: the block owns ptr..ptr+len and lives as long as the owner.
            unsafe { Buffer::from_owner(ptr, len, block) }
        }
    }
}

/// A demi buffer as catmint payload: registered if it views catmint memory
/// (a block from `alloc`, or a received buffer pushed back).
struct BufferPayload(Buffer);

// SAFETY: the buffer's owner keeps its bytes at one address while this
// handle lives (moving the handle moves no bytes); Rust writes them only
// through a sole reference (`as_mut_slice`), which this held handle rules
// out, and the C API forbids writing a buffer an operation uses. A key is
// answered only for bytes checked to lie inside a block or a lent receive
// slot of `pool`, whose registration covers them.
unsafe impl Payload for BufferPayload {
    fn bytes(&self) -> &[u8] {
        self.0.as_slice()
    }

    fn lkey(&self, pool: &Pool, dev: usize) -> Option<u32> {
        let (ptr, len) = (self.0.as_ptr(), self.0.len());
        let owner = self.0.owner_any();
        if let Some(block) = owner.downcast_ref::<Block>() {
            return (block.contains(ptr, len) && block.is_from(pool)).then(|| block.lkey(dev));
        }
        let slot = owner.downcast_ref::<LentSlot>()?;
        if slot.contains(ptr, len) {
            slot.lkey(pool, dev)
        } else {
            None
        }
    }
}

fn err(e: catmint::Error) -> Error {
    Error::with(e.errno, e.to_string())
}

/// The catmint backend.
pub struct Catmint {
    t: Transport,
    options: HashMap<(SockId, i32, i32), Vec<u8>>,
}

impl Catmint {
    /// Opens the RDMA devices with the tunables of `cfg`, clamped to what
    /// the device layer accepts; ENODEV when the machine has none.
    pub fn new(cfg: &catmint::Config) -> Result<Catmint> {
        let cfg = catmint::Config {
            credits: cfg.credits.clamp(1, 4096),
            buf_size: cfg.buf_size.clamp(64, 1 << 24),
            sq_depth: cfg.sq_depth.clamp(4, 16384),
            srq_depth: cfg.srq_depth.min(1 << 20),
            inline: cfg.inline.min(1024),
            timeout: cfg.timeout.max(Duration::from_millis(1)),
        };
        let t = Transport::new(cfg).map_err(|e| {
            if e.errno == libc::ENODEV {
                Error::new(
                    libc::ENODEV,
                    "catmint: no RDMA device (this kernel has no RDMA, or no device is set up); \
                     run the program under rxe-setup/rxe-run for soft-RoCE",
                )
            } else {
                err(e)
            }
        })?;
        log::info!("catmint: devices {:?}, {cfg:?}", t.device_names());
        Ok(Catmint { t, options: HashMap::new() })
    }
}

/// Reports catmint's finished requests straight into the engine's
/// completions, converting each where it is reported.
struct Report<'a>(&'a mut Completions);

impl catmint::Sink for Report<'_> {
    fn push(&mut self, (op, done): (u64, Done)) {
        let outcome = match done {
            Done::Accepted { sock, peer } => Outcome::Accepted { sock, peer },
            Done::Connected => Outcome::Connected,
            Done::Sent => Outcome::Pushed,
            Done::Received { msg: Some(msg), from } => Outcome::Popped { buf: to_buffer(msg), from },
            Done::Received { msg: None, from } => Outcome::Popped { buf: Buffer::heap(0), from },
            Done::Failed(errno) => Outcome::Failed(errno),
        };
        self.0.complete(op, outcome);
    }
}

impl Backend for Catmint {
    fn name(&self) -> &'static str {
        "catmint"
    }

    fn socket(&mut self, ty: SockType) -> Result<SockId> {
        match ty {
            SockType::Stream => self.t.stream_socket().map_err(err),
            SockType::Datagram => self.t.dgram_socket().map_err(err),
        }
    }

    fn bind(&mut self, s: SockId, addr: SocketAddrV4) -> Result<SocketAddrV4> {
        self.t.bind(s, addr).map_err(err)
    }

    fn listen(&mut self, s: SockId, backlog: i32) -> Result<()> {
        self.t.listen(s, backlog).map_err(err)
    }

    fn accept(&mut self, s: SockId, op: OpId, out: &mut Completions) -> Result<()> {
        self.t.accept(s, op, &mut Report(out)).map_err(err)?;
        Ok(())
    }

    fn connect(&mut self, s: SockId, to: SocketAddrV4, op: OpId, out: &mut Completions) -> Result<()> {
        // A datagram socket only records its default peer (the engine does).
        if self.t.is_datagram(s) {
            out.complete(op, Outcome::Connected);
            return Ok(());
        }
        // Address errors (no route, no device for the source) surface as a
        // failed connect, as in catnap.
        if let Err(e) = self.t.connect(s, to, op) {
            out.complete(op, Outcome::Failed(e.errno));
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
        self.t.send(s, BufferPayload(buf), to, op, &mut Report(out)).map_err(err)?;
        Ok(())
    }

    fn pop(&mut self, s: SockId, op: OpId, out: &mut Completions) -> Result<()> {
        self.t.recv(s, op, &mut Report(out)).map_err(err)?;
        Ok(())
    }

    fn close(&mut self, s: SockId, out: &mut Completions) -> Result<()> {
        self.options.retain(|k, _| k.0 != s);
        let r = self.t.close(s, &mut Report(out)).map_err(err);
        r
    }

    fn alloc(&mut self, len: usize) -> Result<Buffer> {
        Ok(to_buffer(Msg::Block(self.t.alloc(len).map_err(err)?)))
    }

    fn setsockopt(&mut self, s: SockId, level: i32, name: i32, val: &[u8]) -> Result<()> {
        check_option(level, name)?;
        self.options.insert((s, level, name), val.to_vec());
        Ok(())
    }

    fn getsockopt(&mut self, s: SockId, level: i32, name: i32, val: &mut [u8]) -> Result<usize> {
        check_option(level, name)?;
        let stored = self.options.get(&(s, level, name)).cloned().unwrap_or_else(|| default_option(level, name));
        let n = stored.len().min(val.len());
        val[..n].copy_from_slice(&stored[..n]);
        Ok(n)
    }

    fn peer_addr(&mut self, s: SockId) -> Result<SocketAddrV4> {
        self.t.peer_addr(s).map_err(err)
    }

    fn local_addr(&mut self, s: SockId) -> Option<SocketAddrV4> {
        self.t.local_addr(s)
    }

    fn shutdown(&mut self, s: SockId, how: std::net::Shutdown, out: &mut Completions) -> Result<()> {
        self.t.shutdown(s, how, &mut Report(out)).map_err(err)
    }

    fn max_datagram(&mut self, s: SockId) -> usize {
        self.t.max_datagram(s)
    }

    fn poll(&mut self, out: &mut Completions) {
        self.t.poll(&mut Report(out));
    }

    fn arm(&mut self) -> Option<RawFd> {
        Some(self.t.arm())
    }

    fn next_deadline(&self) -> Option<std::time::Instant> {
        self.t.next_deadline()
    }

    fn set_sleeping(&mut self, sleeping: bool) {
        self.t.set_sleeping(sleeping)
    }
}

/// The options catmint accepts (kept, without effect on RDMA).
fn check_option(level: i32, name: i32) -> Result<()> {
    match (level, name) {
        (
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR | libc::SO_LINGER | libc::SO_RCVBUF | libc::SO_SNDBUF | libc::SO_KEEPALIVE,
        )
        | (libc::IPPROTO_TCP, libc::TCP_NODELAY) => Ok(()),
        _ => fail(libc::ENOPROTOOPT, "catmint: option not supported"),
    }
}

fn default_option(level: i32, name: i32) -> Vec<u8> {
    match (level, name) {
        // RDMA sends at once: the effect of TCP_NODELAY.
        (libc::IPPROTO_TCP, libc::TCP_NODELAY) => 1i32.to_ne_bytes().to_vec(),
        (libc::SOL_SOCKET, libc::SO_LINGER) => vec![0; 8],
        _ => 0i32.to_ne_bytes().to_vec(),
    }
}
