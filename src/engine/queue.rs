//! The descriptor table and the socket state rules every libOS shares.
//!
//! The engine, not the backends, decides EBADF, EINVAL, EISCONN, EALREADY,
//! ENOTCONN and friends, so each libOS answers bad calls the same way.

use crate::backend::{SockId, SockType};
use crate::error::{fail, Result};
use libc::{EALREADY, EBADF, EDESTADDRREQ, EINVAL, EISCONN, ENOTCONN, EOPNOTSUPP};
use std::collections::VecDeque;
use std::net::SocketAddrV4;

/// Where a socket is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Created (and maybe bound), not listening or connecting.
    Idle,
    /// Listening for connections.
    Listening,
    /// A stream connect is under way.
    Connecting,
    /// Connected (stream), or a default peer is set (datagram).
    Connected,
}

/// One open descriptor.
#[derive(Debug)]
pub struct Queue {
    /// The backend's id for the socket.
    pub sock: SockId,
    /// Stream or datagram.
    pub ty: SockType,
    /// The bound local address, once bound.
    pub local: Option<SocketAddrV4>,
    /// The connected peer (stream) or default peer (datagram).
    pub peer: Option<SocketAddrV4>,
    /// Where the descriptor is in its life.
    pub phase: Phase,
    /// Shut for reading (shutdown `Read` or `Both`): stream pops end at once
    /// with end of file.
    pub shut_rd: bool,
    /// Shut for writing (shutdown `Write` or `Both`): pushes fail with EPIPE.
    pub shut_wr: bool,
}

impl Queue {
    /// A fresh, unbound descriptor's state.
    pub fn new(sock: SockId, ty: SockType) -> Self {
        Queue { sock, ty, local: None, peer: None, phase: Phase::Idle, shut_rd: false, shut_wr: false }
    }

    /// Bind is allowed once, before connect or listen (EINVAL otherwise).
    pub fn check_bind(&self) -> Result<()> {
        if self.local.is_some() {
            return fail(EINVAL, "socket is already bound");
        }
        if self.phase != Phase::Idle {
            return fail(EINVAL, "socket is already connected or listening");
        }
        Ok(())
    }

    /// Listen needs a bound, idle stream socket (EOPNOTSUPP, EDESTADDRREQ, EINVAL).
    pub fn check_listen(&self) -> Result<()> {
        match (self.ty, self.phase) {
            (SockType::Datagram, _) => fail(EOPNOTSUPP, "listen needs a stream socket"),
            (_, Phase::Idle) if self.local.is_none() => fail(EDESTADDRREQ, "listen needs a bound socket"),
            (_, Phase::Idle | Phase::Listening) => Ok(()),
            _ => fail(EINVAL, "socket is connected or connecting"),
        }
    }

    /// Accept needs a listening stream socket (EOPNOTSUPP, EINVAL).
    pub fn check_accept(&self) -> Result<()> {
        match (self.ty, self.phase) {
            (SockType::Datagram, _) => fail(EOPNOTSUPP, "accept needs a stream socket"),
            (_, Phase::Listening) => Ok(()),
            _ => fail(EINVAL, "socket is not listening"),
        }
    }

    /// Connect is refused on a listening or connected socket.
    pub fn check_connect(&self) -> Result<()> {
        match (self.ty, self.phase) {
            (_, Phase::Listening) => fail(EINVAL, "socket is listening"),
            (SockType::Datagram, _) => Ok(()),
            (_, Phase::Connecting) => fail(EALREADY, "a connect is already in progress"),
            (_, Phase::Connected) => fail(EISCONN, "socket is already connected"),
            (_, Phase::Idle) => Ok(()),
        }
    }

    /// Checks a push and picks its destination (`None` on a stream).
    pub fn push_target(&self, to: Option<SocketAddrV4>) -> Result<Option<SocketAddrV4>> {
        match self.ty {
            // sendto(2) on a connected stream ignores the address; so do we.
            SockType::Stream if self.phase == Phase::Connected => Ok(None),
            SockType::Stream if self.phase == Phase::Listening => fail(EINVAL, "cannot push to a listening socket"),
            SockType::Stream => fail(ENOTCONN, "stream socket is not connected"),
            SockType::Datagram => match to.or(self.peer) {
                Some(a) => Ok(Some(a)),
                None => fail(EDESTADDRREQ, "datagram socket has no default peer; use pushto"),
            },
        }
    }

    /// Checks a shutdown: the socket must be connected (stream), or have a
    /// default peer (datagram), as in Linux.
    pub fn check_shutdown(&self) -> Result<()> {
        match (self.ty, self.phase) {
            (_, Phase::Connected) => Ok(()),
            (SockType::Stream, _) => fail(ENOTCONN, "stream socket is not connected"),
            (SockType::Datagram, _) => fail(ENOTCONN, "datagram socket has no default peer"),
        }
    }

    /// Pop needs a connected stream socket, or any datagram socket.
    pub fn check_pop(&self) -> Result<()> {
        match (self.ty, self.phase) {
            (SockType::Stream, Phase::Connected) => Ok(()),
            (SockType::Stream, Phase::Listening) => fail(EINVAL, "cannot pop from a listening socket; use accept"),
            (SockType::Stream, _) => fail(ENOTCONN, "stream socket is not connected"),
            (SockType::Datagram, _) => Ok(()),
        }
    }
}

/// Descriptor slab. Descriptor 0 is never handed out (a zeroed `int qd` is a
/// common bug), and freed numbers are reused oldest-first so a stale
/// descriptor rarely names a new socket at once.
pub struct QueueTable {
    slots: Vec<Option<Queue>>,
    free: VecDeque<usize>,
    /// The shard tag, in the bits above the slot index.
    tag: u32,
}

impl Default for QueueTable {
    fn default() -> Self {
        Self::new()
    }
}

impl QueueTable {
    /// An empty table; descriptor 0 is never handed out.
    pub fn new() -> Self {
        QueueTable { slots: vec![None], free: VecDeque::new(), tag: 0 }
    }

    /// An empty table whose descriptors carry the tag of shard `shard`.
    pub fn with_shard(shard: usize) -> Self {
        QueueTable { tag: super::shard_tag(shard), ..Self::new() }
    }

    /// The slot of a descriptor; one of another shard (or negative) gets an
    /// index past any slot.
    #[inline]
    fn index(&self, qd: i32) -> usize {
        ((qd as u32) ^ self.tag) as usize
    }

    /// Stores a queue and returns its descriptor (reusing freed ones).
    pub fn insert(&mut self, q: Queue) -> Result<i32> {
        let idx = match self.free.pop_front() {
            Some(i) => i,
            None if self.slots.len() < 1 << super::SHARD_SHIFT => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => return fail(libc::EMFILE, "too many open descriptors"),
        };
        self.slots[idx] = Some(q);
        Ok((self.tag | idx as u32) as i32)
    }

    /// The queue behind a descriptor (EBADF if there is none).
    pub fn get(&self, qd: i32) -> Result<&Queue> {
        match self.slots.get(self.index(qd)) {
            Some(Some(q)) => Ok(q),
            _ => fail(EBADF, "not an open queue descriptor"),
        }
    }

    /// The queue behind a descriptor, writable (EBADF if there is none).
    pub fn get_mut(&mut self, qd: i32) -> Result<&mut Queue> {
        let i = self.index(qd);
        match self.slots.get_mut(i) {
            Some(Some(q)) => Ok(q),
            _ => fail(EBADF, "not an open queue descriptor"),
        }
    }

    /// Takes a descriptor's queue out of the table; the number may be reused.
    pub fn remove(&mut self, qd: i32) -> Result<Queue> {
        let i = self.index(qd);
        match self.slots.get_mut(i).and_then(Option::take) {
            Some(q) => {
                self.free.push_back(i);
                Ok(q)
            }
            None => fail(EBADF, "not an open queue descriptor"),
        }
    }

    /// Open descriptors.
    pub fn open(&self) -> impl Iterator<Item = i32> + '_ {
        let tag = self.tag;
        self.slots.iter().enumerate().filter(|(_, q)| q.is_some()).map(move |(i, _)| (tag | i as u32) as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno<T: std::fmt::Debug>(r: Result<T>) -> i32 {
        r.unwrap_err().errno()
    }

    #[test]
    fn stream_state_rules() {
        let mut q = Queue::new(0, SockType::Stream);
        assert_eq!(errno(q.push_target(None)), ENOTCONN);
        assert_eq!(errno(q.check_pop()), ENOTCONN);
        assert_eq!(errno(q.check_accept()), EINVAL);
        assert_eq!(errno(q.check_listen()), EDESTADDRREQ);
        q.phase = Phase::Connecting;
        assert_eq!(errno(q.check_connect()), EALREADY);
        q.phase = Phase::Connected;
        assert_eq!(errno(q.check_connect()), EISCONN);
        assert!(q.push_target(None).unwrap().is_none());
        q.phase = Phase::Listening;
        assert_eq!(errno(q.check_connect()), EINVAL);
        q.local = Some("127.0.0.1:1".parse().unwrap());
        assert_eq!(errno(q.check_bind()), EINVAL);
    }

    #[test]
    fn datagram_needs_a_destination() {
        let mut q = Queue::new(0, SockType::Datagram);
        assert_eq!(errno(q.push_target(None)), EDESTADDRREQ);
        assert_eq!(errno(q.check_listen()), EOPNOTSUPP);
        let a: SocketAddrV4 = "10.0.0.1:9".parse().unwrap();
        assert_eq!(q.push_target(Some(a)).unwrap(), Some(a));
        q.peer = Some(a);
        assert_eq!(q.push_target(None).unwrap(), Some(a));
        assert!(q.check_connect().is_ok(), "datagram sockets may reconnect");
    }

    #[test]
    fn descriptors_skip_zero_and_reuse_oldest_first() {
        let mut t = QueueTable::new();
        let a = t.insert(Queue::new(0, SockType::Stream)).unwrap();
        let b = t.insert(Queue::new(1, SockType::Stream)).unwrap();
        assert_eq!((a, b), (1, 2));
        assert_eq!(errno(t.get(0)), EBADF);
        assert_eq!(errno(t.get(-1)), EBADF);
        t.remove(a).unwrap();
        t.remove(b).unwrap();
        assert_eq!(errno(t.remove(b)), EBADF);
        assert_eq!(t.insert(Queue::new(2, SockType::Stream)).unwrap(), a);
    }

    #[test]
    fn another_shards_descriptors_are_refused() {
        let (mut a, mut b) = (QueueTable::with_shard(1), QueueTable::with_shard(2));
        let qa = a.insert(Queue::new(0, SockType::Datagram)).unwrap();
        let qb = b.insert(Queue::new(0, SockType::Datagram)).unwrap();
        assert_eq!((super::super::shard_of_qd(qa), super::super::shard_of_qd(qb)), (1, 2));
        assert_eq!(qa & 0xff_ffff, qb & 0xff_ffff, "same slot in each table");
        assert_eq!(errno(b.get(qa)), EBADF);
        assert_eq!(errno(b.remove(qa)), EBADF);
        assert_eq!(errno(b.get(-qb)), EBADF);
        assert!(a.remove(qa).is_ok() && b.get(qb).is_ok());
    }
}
