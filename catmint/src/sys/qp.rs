//! Queue pairs and the work requests posted on them.
//!
//! Posting is safe because a posted buffer belongs to its queue until the
//! device is done with it:
//!
//! - a send's payload (an `Arc<dyn Payload>`) is kept with the request in
//!   the QP's send list until a completion retires it ([`Qp::retire`]); an
//!   inline send is copied by the post itself and keeps nothing;
//! - a receive's [`Slot`] is moved into the queue's [`RecvSlots`] and handed
//!   back only for a [`Completion`] that names it ([`RecvSlots::complete`]);
//! - the address handles UD sends use belong to the QP.
//!
//! Destroying the QP (on drop, or [`Qp::close`]) comes before any of these
//! go, so the device never touches memory that was given back.
//!
//! Work request ids: the owner's key in the high 32 bits, [`WR_SEND`] for
//! sends, then a sequence number (sends); for a receive, the table's
//! incarnation (8 bits: a number each receive table takes from a counter
//! when it is made), the number of posts at its index so far (8 bits) and
//! the index (15 bits). So a receive completion names one post of one
//! table: one already handed back (its index since posted again), or one
//! left in the CQ by an earlier table under the same key (a device's shared
//! receive queue made again; a socket slot reused), hands back nothing
//! (the latter unless 256 tables were made in between). A QP's own
//! completions must also carry its QP number.

use super::cm::CmId;
use super::mem::Slot;
use super::verbs::{Ah, Completion, Cq, Pd, Srq};
use super::{ffi, Error, Result};
use crate::types::Payload;
use std::collections::VecDeque;
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// The send bit of a work request id.
pub const WR_SEND: u64 = 1 << 31;
const WR_LOW: u64 = WR_SEND - 1;

/// The key a work request id carries.
pub fn key_of(wr_id: u64) -> u64 {
    wr_id >> 32
}

/// True if a work request id is a send's.
pub fn is_send(wr_id: u64) -> bool {
    wr_id & WR_SEND != 0
}

/// Which queue a receive is posted on.
enum Target {
    Qp(NonNull<ffi::ibv_qp>),
    Srq(NonNull<ffi::ibv_srq>),
}

/// Receive indices fit in this many bits of a work request id.
const INDEX_BITS: u32 = 15;
/// Where the post count goes in a receive's work request id (8 bits), and
/// above it the table's incarnation (8 bits).
const POSTS_SHIFT: u32 = INDEX_BITS;
const INCARNATION_SHIFT: u32 = INDEX_BITS + 8;
/// The incarnation the next receive table takes.
static INCARNATIONS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
/// The most receive indices one queue has.
pub const MAX_RECV_INDICES: u32 = 1 << INDEX_BITS;

/// The receives posted on one queue (a QP's own, or a shared one), each
/// owned here from its post until its completion.
pub struct RecvSlots {
    slots: Vec<Option<Slot>>,
    /// Posts at each index so far (wrapping), in the work request id.
    posts: Vec<u8>,
    /// This table's number among the tables made (wrapping).
    incarnation: u8,
    key: u64,
    dev: usize,
    posted: u32,
}

impl RecvSlots {
    fn new(depth: u32, key: u64, dev: usize) -> Result<RecvSlots> {
        if depth > MAX_RECV_INDICES {
            return Err(Error::new("receive queue deeper than 32768", libc::EINVAL));
        }
        let slots = (0..depth).map(|_| None).collect();
        let incarnation = INCARNATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(RecvSlots { slots, posts: vec![0; depth as usize], incarnation, key, dev, posted: 0 })
    }

    /// The id of the current post at `index`.
    #[inline]
    fn wr_id(&self, index: u32) -> u64 {
        let posts = self.posts[index as usize] as u64;
        self.key << 32 | (self.incarnation as u64) << INCARNATION_SHIFT | posts << POSTS_SHIFT | index as u64
    }

    fn post(&mut self, target: &Target, index: u32, slot: Slot) -> std::result::Result<(), (Error, Slot)> {
        match self.slots.get(index as usize) {
            Some(None) => {}
            _ => return Err((Error::new("post_recv: index in use or out of range", libc::EINVAL), slot)),
        }
        self.posts[index as usize] = self.posts[index as usize].wrapping_add(1);
        let mut sge = slot.sge(self.dev);
        let mut wr =
            ffi::ibv_recv_wr { wr_id: self.wr_id(index), next: std::ptr::null_mut(), sg_list: &mut sge, num_sge: 1 };
        let mut bad = std::ptr::null_mut();
        let rc = match target {
            // SAFETY: the QP (SRQ) is live while its owner, which owns this
            // table, is; the SGE covers the slot's registered memory, which
            // stays owned by this table until its completion hands it back.
            Target::Qp(qp) => unsafe { ffi::ibv_post_recv(qp.as_ptr(), &mut wr, &mut bad) },
            // SAFETY: as above.
            Target::Srq(srq) => unsafe { ffi::ibv_post_srq_recv(srq.as_ptr(), &mut wr, &mut bad) },
        };
        if rc != 0 {
            let call = if matches!(target, Target::Qp(_)) { "ibv_post_recv" } else { "ibv_post_srq_recv" };
            return Err((Error::new(call, rc), slot));
        }
        self.slots[index as usize] = Some(slot);
        self.posted += 1;
        Ok(())
    }

    /// The slot and index of the receive `c` reports (successful or
    /// flushed); None if `c` is not a receive of this queue.
    pub fn complete(&mut self, c: &Completion) -> Option<(u32, Slot)> {
        let id = c.wr_id();
        let index = (id & (MAX_RECV_INDICES as u64 - 1)) as u32;
        if (index as usize) >= self.slots.len() || id != self.wr_id(index) {
            return None;
        }
        let slot = self.slots[index as usize].take()?;
        self.posted -= 1;
        Some((index, slot))
    }

    /// Receives posted and not completed.
    pub fn posted(&self) -> u32 {
        self.posted
    }

    /// Every slot, once the queue is destroyed (the caller makes sure).
    fn drain(&mut self) -> Vec<Slot> {
        self.posted = 0;
        self.slots.iter_mut().filter_map(Option::take).collect()
    }
}

/// A device's shared receive queue with the receives posted on it. The
/// QPs receiving from it hold its verbs object; if one still does when
/// this is dropped, the posted slots are leaked rather than reused.
pub struct SrqQueue {
    srq: Option<Arc<Srq>>,
    recvs: RecvSlots,
}

impl SrqQueue {
    /// An SRQ of up to `want` receives on `pd` (device `dev`), whose work
    /// requests carry `key`; its table has `table` indices.
    pub fn new(pd: &Arc<Pd>, dev: usize, key: u64, want: u32, table: u32) -> Result<(SrqQueue, u32)> {
        let recvs = RecvSlots::new(table, key, dev)?;
        let (srq, max_wr) = Srq::new(pd, want)?;
        Ok((SrqQueue { srq: Some(srq), recvs }, max_wr))
    }

    fn srq(&self) -> &Arc<Srq> {
        self.srq.as_ref().expect("an SRQ until closed")
    }

    /// Posts a receive into `slot` at `index`; the slot back on failure.
    pub fn post(&mut self, index: u32, slot: Slot) -> std::result::Result<(), (Error, Slot)> {
        let target = Target::Srq(NonNull::new(self.srq().raw()).expect("live SRQ"));
        self.recvs.post(&target, index, slot)
    }

    /// See [`RecvSlots::complete`].
    pub fn complete(&mut self, c: &Completion) -> Option<(u32, Slot)> {
        self.recvs.complete(c)
    }

    /// Receives posted and not completed.
    pub fn posted(&self) -> u32 {
        self.recvs.posted()
    }

    /// Destroys the SRQ and returns its posted slots, if no QP uses it any
    /// more; else nothing (they are leaked with it when dropped).
    pub fn close(&mut self) -> Vec<Slot> {
        match self.srq.take().map(Arc::try_unwrap) {
            Some(Ok(srq)) => {
                drop(srq);
                self.recvs.drain()
            }
            Some(Err(shared)) => {
                self.srq = Some(shared);
                Vec::new()
            }
            None => Vec::new(),
        }
    }
}

impl Drop for SrqQueue {
    fn drop(&mut self) {
        if self.srq.as_ref().is_some_and(|s| Arc::strong_count(s) > 1) {
            // A QP may still receive into these: never let them be reused.
            std::mem::forget(self.recvs.drain());
        }
    }
}

/// The kind of QP and its queue sizes.
pub enum QpKind<'a> {
    /// Reliable connected, receiving from a shared receive queue.
    Rc {
        /// The SRQ its receives come from.
        srq: &'a SrqQueue,
    },
    /// Unreliable datagram, with `depth` receives of its own; every send
    /// starts with a `prefix`-byte header the QP keeps in `prefixes`
    /// (registered memory of at least send-queue depth x `prefix` bytes).
    Ud {
        /// Receive depth.
        depth: u32,
        /// Header bytes per send.
        prefix: usize,
        /// Where the headers are written.
        prefixes: Slot,
    },
}

/// What one send carries.
pub enum SendData<'a> {
    /// Nothing (a control message: immediate data only).
    Empty,
    /// Bytes copied into the work request by the post (at most the QP's
    /// inline limit with any header).
    Inline(&'a [u8]),
    /// Bytes `range` of registered memory, kept by the QP until the send
    /// is retired.
    Kept {
        /// The payload.
        data: Arc<dyn Payload>,
        /// Which of its bytes.
        range: Range<usize>,
        /// `data.lkey(pool, dev)` of the QP's device.
        lkey: u32,
    },
}

/// A UD destination: an address handle of this QP ([`Qp::add_dest`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dest(u32);

/// One send request.
pub struct Send<'a> {
    /// Immediate data, if any.
    pub imm: Option<u32>,
    /// The payload.
    pub data: SendData<'a>,
    /// Ask for a completion (else it is retired by a later signaled one).
    pub signaled: bool,
    /// UD: the header written in front of the payload, and where to.
    pub ud: Option<(&'a [u8], Dest, u32, u32)>,
}

struct Posted<K> {
    seq: u64,
    _keep: Option<Arc<dyn Payload>>,
    item: K,
}

/// A queue pair on an rdma_cm id, owning what its posted requests use.
/// `K` is what the owner keeps per send (e.g. the push it finishes), handed
/// back when the send is retired.
pub struct Qp<K> {
    id: Option<CmId>,
    raw: NonNull<ffi::ibv_qp>,
    dev: usize,
    key: u64,
    qpn: u32,
    max_inline: u32,
    sq_depth: u32,
    seq: u64,
    sends: VecDeque<Posted<K>>,
    recvs: Option<RecvSlots>,
    ahs: Vec<Ah>,
    prefixes: Option<(Slot, usize)>,
}

// SAFETY: the QP is an rdma-core object usable from any thread; the rest
// is owned data (payloads and K are Send).
unsafe impl<K: std::marker::Send> std::marker::Send for Qp<K> {}

/// A CQ shared by the QPs of one device.
pub type CqCell = Mutex<Cq>;

impl<K> Qp<K> {
    /// Creates the QP of `id` on device `dev` (PD `pd`, both queues
    /// completing on `cq`), with `sq_depth` sends and up to `inline` bytes
    /// inline; its work requests carry `key`. On failure the id comes back.
    #[allow(clippy::too_many_arguments)] // the device's objects, one by one
    pub fn create(
        mut id: CmId,
        kind: QpKind<'_>,
        dev: usize,
        pd: &Arc<Pd>,
        cq: &Arc<CqCell>,
        sq_depth: u32,
        inline: u32,
        key: u64,
    ) -> std::result::Result<Qp<K>, (Error, CmId)> {
        // SAFETY: ibv_qp_init_attr is plain data; all-zero is a valid start.
        let mut attr: ffi::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        attr.cap.max_send_wr = sq_depth;
        attr.cap.max_inline_data = inline;
        let raw_cq = cq.lock().unwrap_or_else(|e| e.into_inner()).raw();
        attr.send_cq = raw_cq;
        attr.recv_cq = raw_cq;
        let (srq, recvs, prefixes) = match kind {
            QpKind::Rc { srq } => {
                attr.qp_type = ffi::ibv_qp_type::IBV_QPT_RC;
                attr.cap.max_send_sge = 1;
                attr.srq = srq.srq().raw();
                (Some(srq.srq().clone()), None, None)
            }
            QpKind::Ud { depth, prefix, prefixes } => {
                if prefixes.capacity() < sq_depth as usize * prefix {
                    return Err((Error::new("ud: header ring too small", libc::EINVAL), id));
                }
                attr.qp_type = ffi::ibv_qp_type::IBV_QPT_UD;
                attr.cap.max_recv_wr = depth;
                attr.cap.max_send_sge = 2;
                attr.cap.max_recv_sge = 1;
                let recvs = match RecvSlots::new(depth, key, dev) {
                    Ok(r) => r,
                    Err(e) => return Err((e, id)),
                };
                (None, Some(recvs), Some((prefixes, prefix)))
            }
        };
        let raw = match id.create_qp(pd, cq, srq, &mut attr) {
            Ok(raw) => raw,
            Err(e) => return Err((e, id)),
        };
        // SAFETY: the QP was just created and lives as long as the id.
        let qpn = unsafe { (*raw.as_ptr()).qp_num };
        Ok(Qp {
            id: Some(id),
            raw,
            dev,
            key,
            qpn,
            max_inline: attr.cap.max_inline_data,
            sq_depth,
            seq: 0,
            sends: VecDeque::new(),
            recvs,
            ahs: Vec::new(),
            prefixes,
        })
    }

    /// The rdma_cm id.
    #[inline]
    pub fn id(&self) -> &CmId {
        self.id.as_ref().expect("a QP has its id until closed")
    }

    /// The QP number.
    #[inline]
    pub fn qpn(&self) -> u32 {
        self.qpn
    }

    /// The most bytes a send may carry inline (header included).
    #[inline]
    pub fn max_inline(&self) -> u32 {
        self.max_inline
    }

    /// Sends posted and not retired.
    #[inline]
    pub fn in_flight(&self) -> usize {
        self.sends.len()
    }

    /// True if the send queue has room for one more request.
    #[inline]
    pub fn has_room(&self) -> bool {
        (self.sends.len() as u32) < self.sq_depth
    }

    /// True if the next send should be signaled for the send queue's sake:
    /// every 16th, and the one that fills the queue, so that unsignaled
    /// sends are retired and the queue drains.
    #[inline]
    pub fn signal_due(&self) -> bool {
        self.seq % 16 == 15 || self.sends.len() as u32 + 1 >= self.sq_depth
    }

    /// Posts one send; `item` is handed back when it is retired. On
    /// failure nothing was posted and the verbs error comes back.
    #[inline]
    pub fn post_send(&mut self, send: Send<'_>, item: K) -> Result<()> {
        // A UD request needs its destination, and an RC one must not have one.
        if send.ud.is_some() != self.prefixes.is_some() {
            return Err(Error::new("post_send: destination and QP type disagree", libc::EINVAL));
        }
        if !self.has_room() {
            return Err(Error::new("ibv_post_send: send queue full", libc::ENOBUFS));
        }
        let mut sges = [ffi::ibv_sge { addr: 0, length: 0, lkey: 0 }; 2];
        let mut n = 0;
        // SAFETY: ibv_send_wr is plain data; zero is a valid start.
        let mut wr: ffi::ibv_send_wr = unsafe { std::mem::zeroed() };
        if let Some((header, dest, qpn, qkey)) = send.ud {
            let (slot, prefix) = self.prefixes.as_ref().ok_or(Error::new("post_send: not a UD QP", libc::EINVAL))?;
            let ah = self.ahs.get(dest.0 as usize).ok_or(Error::new("post_send: unknown destination", libc::EINVAL))?;
            if header.len() != *prefix {
                return Err(Error::new("post_send: header size", libc::EINVAL));
            }
            // The header ring has a place per send-queue entry; the one at
            // this sequence number is free, since at most sq_depth sends
            // are in flight and they retire in order.
            let at = (self.seq % self.sq_depth as u64) as usize * *prefix;
            // SAFETY: `at..at + prefix` is inside the ring (checked against
            // its capacity at creation) and no request in flight reads it;
            // the device may read the other entries meanwhile, so no
            // reference to the whole ring is made.
            unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), slot.as_ptr().add(at), *prefix) };
            sges[0] = ffi::ibv_sge {
                addr: slot.as_ptr() as u64 + at as u64,
                length: *prefix as u32,
                lkey: slot.lkey(self.dev),
            };
            n = 1;
            wr.wr.ud = ffi::ud_t { ah: ah.raw(), remote_qpn: qpn, remote_qkey: qkey };
        }
        let mut keep = None;
        let mut flags = 0;
        match send.data {
            SendData::Empty => {}
            SendData::Inline(bytes) => {
                if bytes.len() + sges[0].length as usize > self.max_inline as usize {
                    return Err(Error::new("post_send: too long to go inline", libc::EMSGSIZE));
                }
                sges[n] = ffi::ibv_sge { addr: bytes.as_ptr() as u64, length: bytes.len() as u32, lkey: 0 };
                n += 1;
                flags |= ffi::ibv_send_flags::IBV_SEND_INLINE.0;
            }
            SendData::Kept { data, range, lkey } => {
                let bytes = data.bytes().get(range).ok_or(Error::new("post_send: range", libc::EINVAL))?;
                sges[n] = ffi::ibv_sge { addr: bytes.as_ptr() as u64, length: bytes.len() as u32, lkey };
                n += 1;
                keep = Some(data);
            }
        }
        if send.signaled {
            flags |= ffi::ibv_send_flags::IBV_SEND_SIGNALED.0;
        }
        let seq = self.seq;
        wr.wr_id = self.key << 32 | WR_SEND | (seq & WR_LOW);
        wr.sg_list = sges.as_mut_ptr();
        wr.num_sge = n as i32;
        wr.send_flags = flags;
        match send.imm {
            Some(imm) => {
                wr.opcode = ffi::ibv_wr_opcode::IBV_WR_SEND_WITH_IMM;
                wr.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
            }
            None => wr.opcode = ffi::ibv_wr_opcode::IBV_WR_SEND,
        }
        let mut bad = std::ptr::null_mut();
        // SAFETY: the QP is live (this value owns its id); inline bytes are
        // copied by the call; the other SGEs are registered memory kept
        // alive until the request is retired: the payload in `sends` (the
        // Payload contract covers its key and placement), the header ring
        // and the AH by this QP, which destroys itself before either goes.
        let rc = unsafe { ffi::ibv_post_send(self.raw.as_ptr(), &mut wr, &mut bad) };
        if rc != 0 {
            return Err(Error::new("ibv_post_send", rc));
        }
        self.seq += 1;
        self.sends.push_back(Posted { seq, _keep: keep, item });
        Ok(())
    }

    /// Retires the sends a (signaled) send completion `c` of this QP
    /// finishes: its own and the unsignaled ones before it, in order;
    /// `done` gets each one's item. False, retiring nothing, if `c` is not
    /// one of its sends in flight.
    pub fn retire(&mut self, c: &Completion, mut done: impl FnMut(K)) -> bool {
        let id = c.wr_id();
        if key_of(id) != self.key || !is_send(id) || c.qp_num() != self.qpn {
            return false;
        }
        // Sends are numbered in order, so the one `c` names is this far
        // from the oldest; a number outside the list (a completion of an
        // earlier QP under the same key) retires nothing.
        let Some(first) = self.sends.front() else { return false };
        let dist = (id & WR_LOW).wrapping_sub(first.seq & WR_LOW) & WR_LOW;
        if dist as usize >= self.sends.len() {
            return false;
        }
        for p in self.sends.drain(..=dist as usize) {
            done(p.item);
        }
        true
    }

    /// Adds an address handle to send to with (kept until the QP goes).
    pub fn add_dest(&mut self, ah: Ah) -> Dest {
        self.ahs.push(ah);
        Dest(self.ahs.len() as u32 - 1)
    }

    /// Posts a receive into `slot` at `index` of the QP's own receive queue
    /// (UD); the slot back on failure.
    pub fn post_recv(&mut self, index: u32, slot: Slot) -> std::result::Result<(), (Error, Slot)> {
        let target = Target::Qp(self.raw);
        match self.recvs.as_mut() {
            Some(r) => r.post(&target, index, slot),
            None => Err((Error::new("post_recv: the QP receives from an SRQ", libc::EINVAL), slot)),
        }
    }

    /// See [`RecvSlots::complete`].
    pub fn complete_recv(&mut self, c: &Completion) -> Option<(u32, Slot)> {
        if c.qp_num() != self.qpn {
            return None;
        }
        self.recvs.as_mut()?.complete(c)
    }

    /// Destroys the QP and returns its id and the slots it owned (posted
    /// receives, the header ring) for the caller to recycle.
    pub fn close(mut self) -> (CmId, Vec<Slot>) {
        let mut id = self.id.take().expect("a QP has its id until closed");
        id.destroy_qp();
        let mut slots = self.recvs.as_mut().map(RecvSlots::drain).unwrap_or_default();
        slots.extend(self.prefixes.take().map(|(s, _)| s));
        (id, slots)
    }
}

impl<T> Qp<Option<T>> {
    /// Takes the items of the sends not retired yet (to fail or cancel
    /// what they finish); the sends themselves stay until retired, keeping
    /// their memory.
    pub fn take_items(&mut self) -> impl Iterator<Item = T> + '_ {
        self.sends.iter_mut().filter_map(|p| p.item.take())
    }
}

impl<K> Drop for Qp<K> {
    fn drop(&mut self) {
        // The QP first: the device stops using what the fields below own.
        if let Some(id) = self.id.as_mut() {
            id.destroy_qp();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Pool;

    /// A table with `slot` as if posted at `index` (posting itself needs a
    /// device; what is checked here is which completion hands it back).
    fn posted_at(index: u32, pool: &Pool) -> RecvSlots {
        let mut r = RecvSlots::new(8, 7, 0).unwrap();
        r.posts[index as usize] = 2;
        r.slots[index as usize] = Some(pool.slot(256).unwrap());
        r.posted = 1;
        r
    }

    #[test]
    fn a_receive_comes_back_only_for_the_completion_of_that_post() {
        let pool = Pool::new(Vec::new());
        let mut r = posted_at(3, &pool);
        let id = r.wr_id(3);
        assert_eq!(key_of(id), 7);
        assert!(!is_send(id));
        // Another key, another index, a send, an earlier post at index 3,
        // the same post of another table under the same key.
        let other = RecvSlots::new(8, 7, 0).unwrap();
        let mut again = RecvSlots { posts: r.posts.clone(), ..other };
        again.posts[3] = 2;
        assert_ne!(again.wr_id(3), id, "tables made one after the other differ");
        for wrong in [id ^ 1 << 32, id ^ 1, id | WR_SEND, id - (1 << POSTS_SHIFT), again.wr_id(3)] {
            assert!(r.complete(&Completion::reported(wrong, true)).is_none(), "{wrong:#x}");
        }
        assert_eq!(r.posted(), 1);
        // A flushed completion hands it back too (the device is done).
        let (index, _slot) = r.complete(&Completion::reported(id, false)).expect("its own completion");
        assert_eq!(index, 3);
        assert_eq!(r.posted(), 0);
        assert!(r.complete(&Completion::reported(id, true)).is_none(), "handed back once");
    }

    #[test]
    fn a_queue_deeper_than_the_index_bits_is_refused() {
        assert!(RecvSlots::new(MAX_RECV_INDICES, 0, 0).is_ok());
        assert_eq!(RecvSlots::new(MAX_RECV_INDICES + 1, 0, 0).err().map(|e| e.errno), Some(libc::EINVAL));
    }
}
