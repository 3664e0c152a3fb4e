//! Receive buffers posted on a QP, shared by RC and UD endpoints: which
//! slot sits at which index, lending a filled slot to the application
//! without an allocation, and re-posting it when the application is done.
//!
//! A ring's slots are lent through [`LentSlot`]s made once per index in a
//! [`RingShared`]. A lent slot holds one strong reference to its ring's
//! `RingShared`, so the memory outlives the endpoint if the application
//! keeps the buffer. When the last buffer over a lent slot goes (its count,
//! kept by the buffer type of the caller, falls to zero) [`LentSlot::release`]
//! puts `(ring, index)` on the transport's return list; the poll loop
//! re-posts it on the ring it came from, if that ring is still open.
//!
//! Who touches a slot's `Slot` (the `UnsafeCell`): the endpoint, under the
//! transport's `&mut`, while the slot is not lent (posting, lending,
//! re-posting a returned one), and reads of its key while it is lent; never
//! the thread that releases it; and `RingShared`'s drop, which has it alone.

use crate::pool::{Block, Notify, Pool, PoolShared, Returned, Slot};
use crate::sys::{ffi, Error, Result};
use crate::types::Payload;
use std::any::Any;
use std::cell::UnsafeCell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

/// What one ring's lent buffers share: the ring's identity and its lendable slots.
pub struct RingShared {
    /// The endpoint's key (where the poll loop finds it).
    pub(crate) key: u64,
    open: AtomicBool,
    /// Weak: the return list holds rings (through their returned slots),
    /// so a strong reference back would be a cycle that outlives the
    /// transport.
    notify: Weak<Notify>,
    pool: Arc<PoolShared>,
    slots: Box<[LentSlot]>,
}

/// One index of a ring, lendable to the application.
pub struct LentSlot {
    /// Buffers over this slot, counted by the caller's buffer type (0 while
    /// posted or idle).
    refs: AtomicUsize,
    slot: UnsafeCell<Option<Slot>>,
    ring: *const RingShared,
    index: u32,
}

// SAFETY: `slot` is accessed as the module docs say (one side at a time,
// handed over through the count and the return list's lock); `ring` is the
// address of the RingShared that contains this LentSlot, immutable.
unsafe impl Send for LentSlot {}
// SAFETY: as above.
unsafe impl Sync for LentSlot {}

impl LentSlot {
    /// The count of buffers over this slot (see the module docs).
    pub fn refs(&self) -> &AtomicUsize {
        &self.refs
    }

    /// The last buffer over this slot went away: give it back to its ring
    /// (re-posted by the poll loop), or, if the ring is closed, return the
    /// reference to drop once the caller no longer borrows this slot.
    pub fn release(&self) -> Option<Arc<dyn Any + Send + Sync>> {
        // SAFETY: lending took one strong reference to the ring for this
        // slot (Lent::new); it is taken back here, once per lend.
        let ring = unsafe { Arc::from_raw(self.ring) };
        if !ring.open.load(Ordering::Acquire) {
            // The slot stays in the RingShared, whose drop recycles it.
            return Some(ring);
        }
        match ring.notify.upgrade() {
            Some(notify) => {
                notify.push(Returned { ring, index: self.index });
                None
            }
            // The transport is gone.
            None => Some(ring),
        }
    }

    /// True if `ptr..ptr+len` lies in this slot's memory.
    pub fn contains(&self, ptr: *const u8, len: usize) -> bool {
        self.with_slot(|s| {
            let start = s.ptr() as usize;
            let p = ptr as usize;
            p >= start && p.checked_add(len).is_some_and(|end| end <= start + s.capacity())
        })
        .unwrap_or(false)
    }

    /// The memory key of this slot on device `dev`, if the slot is memory
    /// of `pool` (see [`Payload::lkey`]).
    pub fn lkey(&self, pool: &Pool, dev: usize) -> Option<u32> {
        // SAFETY: `ring` is the address of the RingShared that holds this
        // slot, alive as long as the slot is (see the type's fields).
        let ring = unsafe { &*self.ring };
        if !Arc::ptr_eq(&ring.pool, pool.shared()) {
            return None;
        }
        self.with_slot(|s| s.lkey(dev))
    }

    fn with_slot<R>(&self, f: impl FnOnce(&Slot) -> R) -> Option<R> {
        // SAFETY: a shared read while lent (the slot is not moved while any
        // buffer over it lives; see the module docs).
        unsafe { (*self.slot.get()).as_ref() }.map(f)
    }
}

impl RingShared {
    pub(crate) fn new(pool: &Pool, notify: &Arc<Notify>, key: u64, depth: u32) -> Arc<RingShared> {
        Arc::new_cyclic(|me| RingShared {
            key,
            open: AtomicBool::new(true),
            notify: Arc::downgrade(notify),
            pool: pool.shared().clone(),
            slots: (0..depth)
                .map(|index| LentSlot {
                    refs: AtomicUsize::new(0),
                    slot: UnsafeCell::new(None),
                    ring: me.as_ptr(),
                    index,
                })
                .collect(),
        })
    }

    /// Lends `slot`, filled at `index`, to the application as
    /// `off..off+len`; it comes back through the return list when released.
    pub(crate) fn lend(&self, slot: Slot, index: u32, off: usize, len: usize) -> Msg {
        let lent = &self.slots[index as usize];
        debug_assert!(off + len <= slot.capacity());
        // SAFETY: off + len <= capacity, inside the slot.
        let ptr = unsafe { NonNull::new_unchecked(slot.ptr().add(off)) };
        // SAFETY: the slot at `index` is not lent (it was posted until its
        // completion just now), so nothing else touches its cell.
        unsafe { *lent.slot.get() = Some(slot) };
        // The lend's reference to the ring, given back by `release`.
        // SAFETY: `lent.ring` is this live RingShared (the caller holds an Arc to it).
        unsafe { Arc::increment_strong_count(lent.ring) };
        Msg::Lent(Lent { slot: NonNull::from(lent), ptr, len })
    }

    /// The slot of a returned buffer at `index`, ours again.
    ///
    /// # Safety
    /// The buffer at `index` was released (count zero, handed over through
    /// the return list's lock) and the caller has the ring's owner's `&mut`.
    pub(crate) unsafe fn take_returned(&self, index: u32) -> Option<Slot> {
        // SAFETY: per the contract, nothing else touches this cell now.
        unsafe { (*self.slots[index as usize].slot.get()).take() }
    }

    /// Marks the ring closed: buffers released from now on go to the pool
    /// with the ring's last reference instead of coming back.
    pub(crate) fn close(&self) {
        self.open.store(false, Ordering::Release);
    }
}

impl Drop for RingShared {
    fn drop(&mut self) {
        for s in self.slots.iter_mut() {
            if let Some(slot) = s.slot.get_mut().take() {
                self.pool.give_back(slot);
            }
        }
    }
}

/// A received message lent from a ring: bytes `off..off+len` of the slot at
/// `index`. Holds the lend's reference to the ring; dropped unused, it
/// gives the slot back as a released buffer would.
pub struct Lent {
    slot: NonNull<LentSlot>,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Lent is the one handle on its lend (see LentSlot).
unsafe impl Send for Lent {}
// SAFETY: as above; it only reads.
unsafe impl Sync for Lent {}

impl Lent {
    /// The message's bytes, in the receive slot where they arrived.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the slot's memory stays valid and unwritten by the device
        // while it is lent.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Gives up the handle for a buffer of the caller's own: the bytes, and
    /// the slot whose count that buffer keeps (it must call
    /// [`LentSlot::release`] when the count it set to one falls to zero).
    pub fn into_raw(self) -> (NonNull<u8>, usize, NonNull<LentSlot>) {
        let parts = (self.ptr, self.len, self.slot);
        std::mem::forget(self);
        parts
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        // SAFETY: the lend keeps the ring, and so the LentSlot, alive; this
        // handle was never turned into a buffer, so nothing else counts it.
        let keep = unsafe { self.slot.as_ref() }.release();
        drop(keep);
    }
}

/// A received message: lent from a receive ring (the common case: a
/// message that fit in one receive), or assembled in pool memory.
pub enum Msg {
    /// It fit in one receive: the receive slot itself, lent until dropped.
    Lent(Lent),
    /// It spanned several receives: assembled in a pool block.
    Block(Block),
}

impl Msg {
    /// The message's bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Msg::Lent(l) => l.as_slice(),
            Msg::Block(b) => b.as_slice(),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// True if the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Posted receive buffers of one QP.
pub struct RecvRing {
    posted: Vec<Option<Slot>>,
    shared: Arc<RingShared>,
    pool: Pool,
    dev: usize,
    key: u64,
}

impl RecvRing {
    /// A ring of `depth` receives; `key` goes in the high half of wr_ids.
    pub fn new(pool: &Pool, notify: &Arc<Notify>, dev: usize, key: u64, depth: u32) -> RecvRing {
        RecvRing {
            posted: (0..depth).map(|_| None).collect(),
            shared: RingShared::new(pool, notify, key, depth),
            pool: pool.clone(),
            dev,
            key,
        }
    }

    /// Posts a fresh slot of `len` bytes at every index.
    pub fn fill(&mut self, qp: *mut ffi::ibv_qp, len: usize) -> Result<()> {
        for i in 0..self.posted.len() as u32 {
            let slot = self.pool.slot(len)?;
            self.post(qp, i, slot)?;
        }
        Ok(())
    }

    /// Posts `slot` at `index`; on failure the slot goes back to the pool.
    pub fn post(&mut self, qp: *mut ffi::ibv_qp, index: u32, slot: Slot) -> Result<()> {
        // SAFETY: the caller's QP is live; the SGE is registered memory that
        // stays owned by `posted` until its completion hands it back.
        let rc = slot
            .post_recv(self.dev, self.key << 32 | index as u64, |wr, bad| unsafe { ffi::ibv_post_recv(qp, wr, bad) });
        if rc != 0 {
            self.pool.recycle(slot);
            return Err(Error::new("ibv_post_recv", rc));
        }
        self.posted[index as usize] = Some(slot);
        Ok(())
    }

    /// The slot a receive completion at `index` filled.
    pub fn complete(&mut self, index: u32) -> Option<Slot> {
        self.posted.get_mut(index as usize).and_then(Option::take)
    }

    /// Lends the slot at `index` to the application as `off..off+len`; it
    /// comes back through the transport's return list when released.
    pub fn lend(&self, slot: Slot, index: u32, off: usize, len: usize) -> Msg {
        self.shared.lend(slot, index, off, len)
    }

    /// True if `r` came from this ring.
    pub fn owns(&self, r: &Returned) -> bool {
        Arc::ptr_eq(&self.shared, &r.ring)
    }

    /// Re-posts a buffer the application gave back (or recycles it when
    /// `post` is false); returns true if it was re-posted.
    pub fn repost(&mut self, qp: *mut ffi::ibv_qp, r: Returned, post: bool) -> bool {
        debug_assert!(self.owns(&r));
        // SAFETY: released (count zero, handed over through the return
        // list's lock), so the slot is ours again; we hold `&mut self`.
        let Some(slot) = (unsafe { self.shared.take_returned(r.index) }) else {
            return false;
        };
        if !post {
            self.pool.recycle(slot);
            return false;
        }
        self.post(qp, r.index, slot).is_ok()
    }

    /// Tears down once the QP is destroyed: recycle posted slots; lent ones
    /// go to the pool when the ring's last reference does.
    pub fn close(&mut self) {
        self.shared.close();
        for slot in self.posted.drain(..).flatten() {
            self.pool.recycle(slot);
        }
    }
}

/// Makes `data` sendable on device `dev`: registered memory as is, anything
/// else copied once into a pool block.
pub fn registered(pool: &Pool, data: Arc<dyn Payload>, dev: usize) -> Result<Arc<dyn Payload>> {
    if data.lkey(pool, dev).is_some() {
        return Ok(data);
    }
    let mut b = pool.alloc(data.bytes().len())?;
    b.as_mut_slice().copy_from_slice(data.bytes());
    Ok(Arc::new(b))
}
