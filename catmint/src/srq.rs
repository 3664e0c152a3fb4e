//! The shared receive queue (SRQ) of one device: every RC connection of a
//! [`Catmint`](crate::Catmint) on that device receives into it, so receive
//! memory follows traffic rather than the number of connections.
//!
//! # Flow control with a shared queue
//!
//! A peer may send a message only into a posted receive: otherwise the
//! device answers RNR and the sender retries (`rnr_retry` stays 7 so that a
//! bug shows up in the RNR counters rather than as a failed connection).
//! With an SRQ any connection's message takes any posted receive, so the
//! bookkeeping is per device:
//!
//! - `committed` = the sum over connections of the data credits granted to
//!   the peer and not yet used (`granted`, including those not yet reported
//!   to it) plus the receives reserved for its CREDIT and FIN messages
//!   (`reserve`: 2, then 1 after its FIN).
//! - `posted` = receives posted on the SRQ (completions not yet polled still
//!   count as posted; their credits still count as committed, so both sides
//!   are off by the same amount).
//!
//! **Invariant: `committed <= posted`.** A credit is granted only after
//! buffers were posted to cover it (`grant` posts new ones first), a
//! connection joins only once its minimum (`INITIAL` credit + `RESERVED`)
//! is posted, and a receive leaves `posted` only by a completion, which also
//! ends the commitment it used (a data credit, or a reserve that a CREDIT
//! message's re-post restores at once). Since every message a peer can send
//! is covered by a credit or a reserve, every message finds a receive: no
//! RNR, whatever the number of connections.
//!
//! How many credits each connection holds: each starts with `INITIAL` (1)
//! plus its reserve. Its window grows by one per message it receives while
//! the device's shared budget (`DEMI_RDMA_SRQ_DEPTH` receives beyond the
//! connections' minimums, counting buffers lent to the application) has
//! room, up to `DEMI_RDMA_RECV_DEPTH`; when the budget is used up, windows
//! shrink by one per message back towards `INITIAL`. A used credit is
//! replaced when its message arrives, except that a connection's credits
//! plus the buffers the application still holds from it never exceed its
//! window, so an application that keeps buffers stops its peer as before.
//! Credits already granted are never taken back: an idle connection keeps
//! what it had (at most its window), and only busy connections shrink.
//!
//! Memory: about `(3 x connections + DEMI_RDMA_SRQ_DEPTH + 16)` buffers of
//! `DEMI_RDMA_BUF_SIZE` per device, plus what the application holds. Buffers
//! above what is committed (16 kept for quick replacement) go back to the
//! pool when they come back; the SRQ itself is destroyed, and all its buffers
//! freed, when the device's last connection is gone. The SRQ limit event is
//! not used: credits alone keep the queue from running dry. A device whose
//! SRQ is full (`max_srq_wr`) refuses new connections with ENOBUFS.
//! UD sockets keep a receive ring of their own.

use crate::pool::Pool;
use crate::recv::Msg;
use crate::sys::lend::{Notify, Returned, RingShared};
use crate::sys::mem::Slot;
use crate::sys::qp::SrqQueue;
use crate::sys::verbs::{Completion, Context, Pd};
use crate::sys::{Error, Result};
use crate::ud::AddrHasher;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex};

/// Data credits a new connection grants its peer in its hello.
pub const INITIAL: u32 = 1;
/// Receives each connection keeps for a CREDIT and a FIN message.
pub const RESERVED: u32 = 2;
/// Receives kept posted beyond what is committed, so that a used credit
/// is replaced at once, without waiting for the application's buffer.
const HEADROOM: u32 = 16;
/// The most receives one SRQ holds (also bounded by the device).
const MAX_WR: u32 = 16384;

/// Socket keys have an index below this (see `SockTable::insert_with` in `table.rs`); the
/// SRQ's key uses it, so it never names a socket.
const NO_SOCKET: u64 = 0xff_ffff;

/// The key in the wr_ids and returned buffers of device `dev`'s SRQ.
pub fn key_of(dev: usize) -> u64 {
    (dev as u64 & 0xff) << 24 | NO_SOCKET
}

/// The device whose SRQ `key` names, if it names one.
pub fn device_of(key: u64) -> Option<usize> {
    (key & NO_SOCKET == NO_SOCKET).then_some((key >> 24 & 0xff) as usize)
}

/// An SRQ shared by the connections of one device.
pub type SrqCell = Mutex<Srq>;

/// Locks a device's SRQ (a panic while it was held leaves its bookkeeping
/// usable: every change to it is a whole step).
pub fn lock(srq: &SrqCell) -> std::sync::MutexGuard<'_, Srq> {
    srq.lock().unwrap_or_else(|e| e.into_inner())
}

/// A device's shared receive queue and its credit bookkeeping.
pub struct Srq {
    /// The verbs SRQ and the receives posted on it.
    queue: SrqQueue,
    dev: usize,
    buf_size: usize,
    max_wr: u32,
    pool: Pool,
    ring: Arc<RingShared>,
    /// The connection whose message is lent from each index.
    owner: Vec<u64>,
    /// Indices neither posted nor lent.
    free: Vec<u32>,
    committed: u32,
    lent: u32,
    /// The sum of the connections' minimums (INITIAL + RESERVED each).
    floors: u32,
    budget: u32,
    /// QP number to connection key, for receive completions.
    qps: HashMap<u32, u64, BuildHasherDefault<AddrHasher>>,
    /// Connections owed credits that could not be posted yet.
    hungry: Vec<u64>,
}

impl Srq {
    /// Creates the SRQ of device `dev` (context `ctx`) on `pd`.
    pub fn new(
        ctx: &Context,
        pd: &Arc<Pd>,
        dev: usize,
        pool: &Pool,
        notify: &Arc<Notify>,
        buf_size: usize,
        budget: u32,
    ) -> Result<Srq> {
        let limits = ctx.limits().unwrap_or_default();
        if limits.max_srq <= 0 || limits.max_srq_wr <= 0 {
            return Err(Error::new("ibv_create_srq: the device has no SRQ", libc::EOPNOTSUPP));
        }
        let want = MAX_WR.min(limits.max_srq_wr as u32);
        // Twice the depth: indices of lent buffers stay taken until they
        // come back, while others are posted in their place.
        let table = 2 * want;
        let key = key_of(dev);
        let (queue, max_wr) = SrqQueue::new(pd, dev, key, want, table)?;
        log::debug!("catmint: SRQ on device {dev}: {max_wr} receives of {buf_size} B");
        Ok(Srq {
            queue,
            dev,
            buf_size,
            max_wr,
            pool: pool.clone(),
            ring: RingShared::new(pool, notify, key, table),
            owner: vec![0; table as usize],
            free: (0..table).rev().collect(),
            committed: 0,
            lent: 0,
            floors: 0,
            budget,
            qps: HashMap::default(),
            hungry: Vec::new(),
        })
    }

    /// The verbs SRQ and its receives, for the QPs that receive from it.
    pub fn queue(&self) -> &SrqQueue {
        &self.queue
    }

    /// Commits the minimum of a new connection (QP `qpn`, key `key`):
    /// `INITIAL` credits and the reserve. ENOBUFS if the SRQ is full.
    pub fn join(&mut self, qpn: u32, key: u64) -> Result<()> {
        let need = INITIAL + RESERVED;
        if self.committed + need + HEADROOM > self.max_wr {
            return Err(Error::new("shared receive queue full", libc::ENOBUFS));
        }
        self.ensure(need)?;
        self.committed += need;
        self.floors += need;
        self.qps.insert(qpn, key);
        Ok(())
    }

    /// A connection is gone (its QP destroyed): `still` receives were
    /// committed to it.
    pub fn leave(&mut self, qpn: u32, still: u32) {
        self.committed = self.committed.saturating_sub(still);
        self.floors = self.floors.saturating_sub(INITIAL + RESERVED);
        self.qps.remove(&qpn);
    }

    /// The key of the connection on QP `qpn`.
    pub fn lookup(&self, qpn: u32) -> Option<u64> {
        self.qps.get(&qpn).copied()
    }

    /// Posts new buffers until `n` more receives than committed are posted.
    fn ensure(&mut self, n: u32) -> Result<()> {
        while self.queue.posted() < self.committed + n {
            let Some(index) = self.free.pop() else {
                return Err(Error::new("shared receive queue indices", libc::ENOBUFS));
            };
            let slot = match self.pool.slot(self.buf_size) {
                Ok(s) => s,
                Err(e) => {
                    self.free.push(index);
                    return Err(e);
                }
            };
            self.post(index, slot)?;
        }
        Ok(())
    }

    /// Posts `slot` at `index`; on failure both are given back.
    fn post(&mut self, index: u32, slot: Slot) -> Result<()> {
        if self.queue.posted() >= self.max_wr {
            self.free.push(index);
            self.pool.recycle(slot);
            return Err(Error::new("ibv_post_srq_recv", libc::ENOBUFS));
        }
        self.queue.post(index, slot).map_err(|(e, slot)| {
            self.free.push(index);
            self.pool.recycle(slot);
            e
        })
    }

    /// The slot and index a receive completion `c` filled (its index stays
    /// taken until it is re-posted, lent and returned, or freed).
    pub fn complete(&mut self, c: &Completion) -> Option<(u32, Slot)> {
        self.queue.complete(c)
    }

    /// Gives back a completed slot: posted again at `index` if fewer than
    /// `HEADROOM` receives beyond the committed ones are posted, else to
    /// the pool. Err only if posting failed where it was needed.
    pub fn repost(&mut self, index: u32, slot: Slot) -> Result<()> {
        if self.queue.posted() < self.committed + HEADROOM {
            self.post(index, slot)?;
        } else {
            self.free.push(index);
            self.pool.recycle(slot);
        }
        if self.queue.posted() < self.committed {
            return Err(Error::new("shared receive queue", libc::ENOBUFS));
        }
        Ok(())
    }

    /// Lends a completed slot to the application as its first `len` bytes,
    /// a message of connection `owner`; the slot back if it cannot be lent.
    pub fn lend(&mut self, index: u32, slot: Slot, len: usize, owner: u64) -> std::result::Result<Msg, Slot> {
        let lent = self.ring.lend(slot, index, 0, len)?;
        self.owner[index as usize] = owner;
        self.lent += 1;
        Ok(Msg::Lent(lent))
    }

    /// A lent buffer came back: posted again (or pooled). Returns the
    /// connection it was lent from; None if it is not this SRQ's.
    pub fn returned(&mut self, r: Returned) -> Option<u64> {
        let (index, slot) = self.ring.take_returned(r).ok()?;
        self.lent -= 1;
        if let Err(e) = self.repost(index, slot) {
            log::warn!("catmint: {e}");
        }
        Some(self.owner[index as usize])
    }

    /// Commits up to `n` more credits, posting buffers for them first;
    /// returns how many. A connection that got fewer waits in `hungry`.
    pub fn grant(&mut self, n: u32, key: u64) -> u32 {
        if self.ensure(n).is_err() {
            log::debug!("catmint: SRQ of device {}: no buffers for {n} credits", self.dev);
        }
        let k = n.min(self.queue.posted() - self.committed);
        self.committed += k;
        if k < n && !self.hungry.contains(&key) {
            self.hungry.push(key);
        }
        k
    }

    /// Ends `n` commitments (credits used, or a reserve a FIN used).
    pub fn release(&mut self, n: u32) {
        self.committed = self.committed.saturating_sub(n);
    }

    /// True while the shared budget has room for windows to grow.
    pub fn may_grow(&self) -> bool {
        self.committed + self.lent < self.floors + self.budget
    }

    /// Connections that wait for credits (cleared).
    pub fn take_hungry(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.hungry)
    }

    /// True if some connection waits for credits.
    pub fn has_hungry(&self) -> bool {
        !self.hungry.is_empty()
    }
}

impl Drop for Srq {
    fn drop(&mut self) {
        // Lent buffers go to the pool when the application drops them.
        self.ring.close();
        // Destroys the SRQ (every QP on it is gone: each connection holds
        // this bookkeeping), then its posted buffers go back.
        for slot in self.queue.close() {
            self.pool.recycle(slot);
        }
    }
}
