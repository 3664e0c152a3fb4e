//! The types every part of catmint shares: how a caller names requests and
//! sockets, what it sends, how a request ends and where that is reported,
//! and the tunables. A leaf: it depends on nothing else of the crate but the
//! memory it names.

use crate::recv::Msg;
use std::net::SocketAddrV4;
use std::time::Duration;

pub use crate::sys::mem::Payload;

/// The caller's name for one request.
pub type Tag = u64;

/// A socket of a [`Catmint`](crate::Catmint).
pub type SockId = usize;

/// How a request ended.
pub enum Done {
    /// A connection was accepted.
    Accepted {
        /// The new connected socket.
        sock: SockId,
        /// Who connected.
        peer: SocketAddrV4,
    },
    /// A connect finished: the socket is connected.
    Connected,
    /// A send finished: its bytes may be reused.
    Sent,
    /// A message; `None` is end of file (the peer closed in order).
    Received {
        /// The message.
        msg: Option<Msg>,
        /// The sender (datagram sockets only).
        from: Option<SocketAddrV4>,
    },
    /// The request failed with this errno.
    Failed(i32),
}

/// Where finished requests go: the caller's completion table, or a Vec.
/// A trait rather than a Vec, so that the caller (demi's adapter) turns
/// each `(Tag, Done)` into its own completion type where it is reported,
/// with no staging list between the two.
pub trait Sink {
    /// Reports that the request `tag` finished.
    fn push(&mut self, done: (Tag, Done));
}

impl Sink for Vec<(Tag, Done)> {
    fn push(&mut self, done: (Tag, Done)) {
        Vec::push(self, done);
    }
}

/// Tunables.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The most data credits one RC peer may hold (its window's cap; the
    /// shared receive queue decides how much of it a peer gets), and a UD
    /// socket's receive depth.
    pub credits: u32,
    /// Size of each receive buffer; larger messages are segmented.
    pub buf_size: usize,
    /// Send queue depth.
    pub sq_depth: u32,
    /// Receives a device's shared receive queue may post beyond every RC
    /// connection's minimum (1 credit and 2 reserved receives): the budget
    /// the connections' windows grow into.
    pub srq_depth: u32,
    /// Largest send (header included) posted inline.
    pub inline: u32,
    /// Bound on address/route resolution and connection setup.
    pub timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            credits: 128,
            buf_size: 4 << 10,
            sq_depth: 128,
            srq_depth: 1024,
            inline: 128,
            timeout: Duration::from_secs(3),
        }
    }
}
