//! The seam between the qtoken engine and a libOS.
//!
//! A backend owns sockets and drives a device; it knows nothing of qtokens.
//! The engine hands it an opaque [`OpId`] with every asynchronous request and
//! the backend reports the outcome, now or from a later [`Backend::poll`],
//! through [`Completions`]. Arguments arrive already validated: the engine
//! checks descriptors, addresses, buffers and socket state (bound, listening,
//! connected...) once for every libOS, so backends only do device work.

use crate::buffer::Buffer;
use crate::error::Result;
use std::net::{Shutdown, SocketAddrV4};
use std::os::fd::RawFd;

/// A backend's name for one of its sockets.
pub type SockId = usize;

/// The engine's name for one pending operation; opaque to backends.
pub type OpId = u64;

/// Socket types every libOS understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockType {
    /// Connection-oriented (`SOCK_STREAM`): TCP on catnap, RC queue pairs on catmint.
    Stream,
    /// Datagrams (`SOCK_DGRAM`): UDP, or UD queue pairs on catmint.
    Datagram,
}

/// How an operation ended.
#[derive(Debug)]
pub enum Outcome {
    /// All bytes of a push were handed to the device.
    Pushed,
    /// Data arrived; `from` is the sender for datagram sockets. A zero-length
    /// buffer on a stream socket means the peer closed (end of file).
    Popped {
        /// The message (empty: end of file on a stream socket).
        buf: Buffer,
        /// The sender, on datagram sockets.
        from: Option<SocketAddrV4>,
    },
    /// A connection was accepted: the backend's id for the new socket.
    Accepted {
        /// The backend's id for the new socket.
        sock: SockId,
        /// Who connected.
        peer: SocketAddrV4,
    },
    /// The connection is established (or the default peer is set).
    Connected,
    /// The operation failed with this positive errno.
    Failed(i32),
}

/// Where backends report finished operations.
#[derive(Debug, Default)]
pub struct Completions(pub(crate) Vec<(OpId, Outcome)>);

impl Completions {
    /// Reports that `op` ended with `outcome`. Each OpId is reported once.
    #[inline]
    pub fn complete(&mut self, op: OpId, outcome: Outcome) {
        self.0.push((op, outcome));
    }
}

/// A libOS as the engine drives it. All methods are non-blocking.
pub trait Backend: Send {
    /// The libOS's name ("catnap", "catmint", "catnip").
    fn name(&self) -> &'static str;

    /// Creates a socket.
    fn socket(&mut self, ty: SockType) -> Result<SockId>;

    /// Binds a local address; returns the address really bound (port 0 picks one).
    fn bind(&mut self, s: SockId, addr: SocketAddrV4) -> Result<SocketAddrV4>;

    /// Starts accepting connections on a bound stream socket.
    fn listen(&mut self, s: SockId, backlog: i32) -> Result<()>;

    /// Starts accepting one connection; completes with [`Outcome::Accepted`].
    fn accept(&mut self, s: SockId, op: OpId, out: &mut Completions) -> Result<()>;

    /// Starts connecting (stream) or sets the default peer (datagram);
    /// completes with [`Outcome::Connected`] or a failure such as ECONNREFUSED.
    fn connect(&mut self, s: SockId, to: SocketAddrV4, op: OpId, out: &mut Completions) -> Result<()>;

    /// Starts sending `buf` (to `to` for datagrams without a default peer);
    /// completes with [`Outcome::Pushed`]. The backend keeps `buf` (and so the
    /// memory) until the device is done with it.
    fn push(&mut self, s: SockId, buf: Buffer, to: Option<SocketAddrV4>, op: OpId, out: &mut Completions)
        -> Result<()>;

    /// Starts receiving; completes with [`Outcome::Popped`].
    fn pop(&mut self, s: SockId, op: OpId, out: &mut Completions) -> Result<()>;

    /// Closes the socket. Every operation still pending on it must be
    /// completed (ECANCELED) into `out` before this returns; none may follow.
    fn close(&mut self, s: SockId, out: &mut Completions) -> Result<()>;

    /// Memory the device can send from without copying.
    fn alloc(&mut self, len: usize) -> Result<Buffer> {
        Ok(Buffer::heap(len))
    }

    /// Sets a socket option (`level`, `name` as in setsockopt(2)).
    fn setsockopt(&mut self, s: SockId, level: i32, name: i32, val: &[u8]) -> Result<()>;

    /// Reads a socket option into `val`; returns the length written.
    fn getsockopt(&mut self, s: SockId, level: i32, name: i32, val: &mut [u8]) -> Result<usize>;

    /// The connected peer's address.
    fn peer_addr(&mut self, s: SockId) -> Result<SocketAddrV4>;

    /// The socket's own address as the device knows it, port included, or
    /// `None` if it has none (yet). The engine asks once a stream connect
    /// completes and for each accepted connection, so a socket that never
    /// called bind still reports where it is. The default knows nothing.
    fn local_addr(&mut self, _s: SockId) -> Option<SocketAddrV4> {
        None
    }

    /// Shuts down one or both directions of a connected socket (the engine
    /// has checked it is connected and keeps the marks itself: later pushes
    /// after [`Shutdown::Write`] fail with EPIPE, later stream pops after
    /// [`Shutdown::Read`] end at once with end of file, without reaching the
    /// backend). A stream backend must, for `Write` or `Both`, send end of
    /// file once the pushes already queued are out, without tearing the
    /// connection down: the peer's pops then end with a zero-length buffer
    /// while this end can still receive. Pending pops may finish with end of
    /// file on `Read` (catnap's kernel does) or stay pending. The default
    /// does nothing, which suits a datagram-only backend: the engine's marks
    /// are all a datagram shutdown does.
    fn shutdown(&mut self, _s: SockId, _how: Shutdown, _out: &mut Completions) -> Result<()> {
        Ok(())
    }

    /// The largest payload one datagram on `s` may carry; larger pushes fail
    /// with EMSGSIZE. The default is UDP over IPv4's limit.
    fn max_datagram(&mut self, _s: SockId) -> usize {
        65507
    }

    /// Moves the device forward without blocking and reports what finished.
    fn poll(&mut self, out: &mut Completions);

    /// Arms wake-up notification and returns a descriptor that becomes
    /// readable when `poll` has work, or `None` if the device can only be
    /// busy-polled (DPDK). After arming, the engine polls once more before it
    /// sleeps, so work that raced with arming is not missed.
    fn arm(&mut self) -> Option<RawFd>;

    /// The earliest time `poll` has timed work to do (a connect, accept or
    /// close deadline), or `None`. A waiter sleeping on the armed descriptor
    /// wakes by then: nothing else would wake it for a timeout.
    fn next_deadline(&self) -> Option<std::time::Instant> {
        None
    }

    /// Told `true` before a waiter arms and sleeps, and `false` once no
    /// waiter sleeps any more. A device to which work can come outside its
    /// own calls (catmint: a receive buffer dropped by another thread) uses
    /// it to make the armed descriptor readable only while someone sleeps.
    fn set_sleeping(&mut self, _sleeping: bool) {}
}
