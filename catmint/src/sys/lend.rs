//! Received buffers lent to the application, and their way back.
//!
//! A ring (a UD socket's receive queue, or a device's shared receive
//! queue) lends a filled slot to the application without an allocation,
//! through a [`LentSlot`] made once per index in the ring's [`RingShared`].
//! A lend holds one strong reference to the `RingShared`, so the memory
//! outlives the ring's owner if the application keeps the buffer. When the
//! last buffer over a lent slot goes (its count, kept by the caller's
//! buffer type, falls to zero), [`LentSlot::release`] puts a [`Returned`]
//! on the transport's return list ([`Notify`]); the poll loop takes the
//! slot back with [`RingShared::take_returned`] and re-posts it, if its
//! ring is still open.
//!
//! Each index's cell goes Empty -> lent (`lend`, by the ring's owner) ->
//! released (`release`, by whichever thread dropped the last buffer) ->
//! Empty (`take_returned`, by the owner, given the `Returned` that only
//! `release` makes). While lent the cell's slot is only read (by buffers
//! over it, from any thread); `lend` refuses an index that is not Empty, so
//! no write ever meets a reader.

use super::mem::{FreeLists, Slot};
use super::EventFd;
use crate::pool::Pool;
use crate::Result;
use std::any::Any;
use std::cell::UnsafeCell;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// What one ring's lent buffers share: the ring's identity and its lendable slots.
pub struct RingShared {
    key: u64,
    open: AtomicBool,
    /// Weak: the return list holds rings (through their returned slots),
    /// so a strong reference back would be a cycle that outlives the
    /// transport.
    notify: Weak<Notify>,
    pool: Arc<FreeLists>,
    slots: Box<[LentSlot]>,
}

/// One index of a ring, lendable to the application.
pub struct LentSlot {
    /// Buffers over this slot, counted by the caller's buffer type (0 while
    /// posted or idle).
    refs: AtomicUsize,
    /// The cell is not Empty (lent, or released and not taken back yet).
    lent: AtomicBool,
    slot: UnsafeCell<Option<Slot>>,
    ring: *const RingShared,
    index: u32,
}

// SAFETY: `slot` is accessed as the module docs say (written only by the
// owner while no buffer exists, read while lent), handed over through the
// `lent` flag and the return list's lock; `ring` is the address of the
// RingShared that contains this LentSlot, immutable.
unsafe impl Send for LentSlot {}
// SAFETY: as above.
unsafe impl Sync for LentSlot {}

impl LentSlot {
    /// The count of buffers over this slot (see the module docs).
    ///
    /// # Safety
    /// Only the caller's buffer type counts with it (as the count
    /// `release`'s contract speaks of): any other change would release a
    /// slot still read, or never release it.
    pub unsafe fn refs(&self) -> &AtomicUsize {
        &self.refs
    }

    /// The last buffer over this slot went away: give it back to its ring
    /// (re-posted by the poll loop), or, if the ring is closed, return the
    /// reference to drop once the caller no longer borrows this slot.
    ///
    /// # Safety
    /// Called once per lend, when the count the caller keeps falls to zero
    /// (so no buffer over the slot is left): a second call would drop the
    /// ring's reference twice, and an early one would hand the slot back
    /// while it is read.
    pub unsafe fn release(&self) -> Option<Arc<dyn Any + Send + Sync>> {
        // SAFETY: lending took one strong reference to the ring for this
        // slot (`RingShared::lend`); it is taken back here, once per lend.
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
        self.with_slot(|s| s.contains(ptr, len)).unwrap_or(false)
    }

    /// The memory key of this slot on device `dev`, if the slot is memory
    /// of `pool` (see [`Payload::lkey`](super::mem::Payload::lkey)).
    pub fn lkey(&self, pool: &Pool, dev: usize) -> Option<u32> {
        if !Arc::ptr_eq(&self.ring().pool, pool.free_lists()) {
            return None;
        }
        self.with_slot(|s| s.lkey(dev))
    }

    fn ring(&self) -> &RingShared {
        // SAFETY: `ring` is the address of the RingShared that holds this
        // slot, alive as long as the slot is (see the type's fields).
        unsafe { &*self.ring }
    }

    fn with_slot<R>(&self, f: impl FnOnce(&Slot) -> R) -> Option<R> {
        if !self.lent.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: a shared read while lent: the cell is written only while
        // no buffer over it exists (the caller holds one).
        unsafe { (*self.slot.get()).as_ref() }.map(f)
    }
}

impl RingShared {
    /// A ring of `depth` lendable indices, under `key` (where the poll loop
    /// finds its owner), returning slots to `pool` and buffers to `notify`.
    pub fn new(pool: &Pool, notify: &Arc<Notify>, key: u64, depth: u32) -> Arc<RingShared> {
        // Each LentSlot keeps the address of its RingShared, taken from the
        // Weak that new_cyclic gives: the address of the Arc's value, the
        // same address Arc::into_raw would give (checked below), which is
        // what Arc::from_raw and increment_strong_count are given. std
        // documents the equality of the two pointers (Weak::as_ptr points
        // to the value), not that from_raw accepts one from a Weak; this
        // relies on both naming the value inside the same allocation.
        let ring = Arc::new_cyclic(|me| RingShared {
            key,
            open: AtomicBool::new(true),
            notify: Arc::downgrade(notify),
            pool: pool.free_lists().clone(),
            slots: (0..depth)
                .map(|index| LentSlot {
                    refs: AtomicUsize::new(0),
                    lent: AtomicBool::new(false),
                    slot: UnsafeCell::new(None),
                    ring: me.as_ptr(),
                    index,
                })
                .collect(),
        });
        debug_assert!(ring.slots.iter().all(|s| std::ptr::eq(s.ring, Arc::as_ptr(&ring))));
        ring
    }

    /// Lends `slot`, filled, to the application as `off..off+len` at
    /// `index`; it comes back through the return list when released. The
    /// slot comes back as the error if `index` is out of range, still lent,
    /// or `off..off+len` is not inside the slot.
    pub fn lend(&self, slot: Slot, index: u32, off: usize, len: usize) -> std::result::Result<Lent, Slot> {
        let Some(lent) = self.slots.get(index as usize) else { return Err(slot) };
        let inside = matches!(off.checked_add(len), Some(end) if end <= slot.capacity());
        if !inside || lent.lent.swap(true, Ordering::Acquire) {
            return Err(slot);
        }
        let ptr = NonNull::from(&slot.bytes()[off..off + len]).cast::<u8>();
        // SAFETY: the cell was Empty (the flag was clear), so no buffer over
        // it exists and nothing else touches it.
        unsafe { *lent.slot.get() = Some(slot) };
        // The lend's reference to the ring, given back by `release`.
        // SAFETY: `lent.ring` is this live RingShared (the caller holds an Arc to it).
        unsafe { Arc::increment_strong_count(lent.ring) };
        Ok(Lent { slot: NonNull::from(lent), ptr, len })
    }

    /// The slot of a returned buffer and its index, ours again; the
    /// `Returned` back if it is another ring's.
    pub fn take_returned(&self, r: Returned) -> std::result::Result<(u32, Slot), Returned> {
        if !std::ptr::eq(Arc::as_ptr(&r.ring), self) {
            return Err(r);
        }
        let cell = &self.slots[r.index as usize];
        // SAFETY: `r` exists only because the last buffer over this cell was
        // released (`LentSlot::release`), so no buffer reads it; and only
        // one `Returned` exists per lend, consumed here.
        let slot = unsafe { (*cell.slot.get()).take() };
        cell.lent.store(false, Ordering::Release);
        slot.map(|s| (r.index, s)).ok_or(r)
    }

    /// Marks the ring closed: buffers released from now on go to the pool
    /// with the ring's last reference instead of coming back.
    pub fn close(&self) {
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
/// an index. Holds the lend's reference to the ring; dropped unused, it
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
        // SAFETY: the slot's memory stays valid and unwritten while it is
        // lent, and ptr..ptr+len was checked inside it by `lend`.
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
        // handle was never turned into a buffer, so nothing else counts it
        // and this is the lend's one release.
        let keep = unsafe { self.slot.as_ref().release() };
        drop(keep);
    }
}

/// A receive buffer the application gave back, to be re-posted on the
/// ring it came from (if that ring is still open). Only
/// [`LentSlot::release`] makes one.
pub struct Returned {
    ring: Arc<RingShared>,
    index: u32,
}

impl Returned {
    /// The key of the ring it belongs to.
    pub fn key(&self) -> u64 {
        self.ring.key
    }
}

/// Where received buffers come back when the application drops them: one
/// list for the whole transport, taken by the poll loop (one lock each way),
/// so the poll need not look at every endpoint.
///
/// The application may drop a received buffer from any thread, while
/// another sleeps on the transport's descriptor. The re-post it makes
/// possible can be what the sleeper waits for (the peer is out of credits
/// until then), so while a waiter sleeps a return also writes an eventfd
/// that is part of the descriptor the waiter sleeps on. While nobody
/// sleeps (the common case: the waiter polls) a return costs no system call.
pub struct Notify {
    pending: AtomicBool,
    returned: Mutex<Vec<Returned>>,
    /// A waiter sleeps (or is about to) on the transport's descriptor.
    sleeping: AtomicBool,
    /// The eventfd was written and not read since.
    kicked: AtomicBool,
    efd: EventFd,
}

impl Notify {
    /// An empty return list.
    pub fn new() -> Result<Notify> {
        Ok(Notify {
            pending: AtomicBool::new(false),
            returned: Mutex::new(Vec::new()),
            sleeping: AtomicBool::new(false),
            kicked: AtomicBool::new(false),
            efd: EventFd::new()?,
        })
    }

    /// The descriptor that turns readable when a return must wake a sleeper.
    pub fn fd(&self) -> RawFd {
        self.efd.fd()
    }

    fn push(&self, r: Returned) {
        self.returned.lock().unwrap_or_else(|e| e.into_inner()).push(r);
        // SeqCst pairs with `set_sleeping` then `take` on the waiter's side:
        // either the waiter's last poll sees `pending`, or we see `sleeping`.
        self.pending.store(true, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) && !self.kicked.swap(true, Ordering::SeqCst) {
            self.efd.ring();
        }
    }

    /// Whether a waiter sleeps on the transport (set before it arms and
    /// polls a last time, cleared once no waiter sleeps).
    pub fn set_sleeping(&self, sleeping: bool) {
        self.sleeping.store(sleeping, Ordering::SeqCst);
    }

    /// True while a waiter sleeps.
    pub fn is_sleeping(&self) -> bool {
        self.sleeping.load(Ordering::Relaxed)
    }

    /// Buffers given back since the last call (cheap when none).
    pub fn take(&self, into: &mut Vec<Returned>) {
        if self.kicked.load(Ordering::Relaxed) && self.kicked.swap(false, Ordering::SeqCst) {
            self.efd.clear();
        }
        // A plain load first: the swap is a locked instruction, and most
        // polls find nothing.
        if self.pending.load(Ordering::SeqCst) && self.pending.swap(false, Ordering::SeqCst) {
            into.append(&mut self.returned.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(depth: u32) -> (Pool, Arc<Notify>, Arc<RingShared>) {
        let pool = Pool::new(Vec::new());
        let notify = Arc::new(Notify::new().unwrap());
        let ring = RingShared::new(&pool, &notify, 5, depth);
        (pool, notify, ring)
    }

    fn returns(notify: &Notify) -> Vec<Returned> {
        let mut v = Vec::new();
        notify.take(&mut v);
        v
    }

    #[test]
    fn a_lent_index_is_not_lent_again_until_its_buffer_came_back() {
        let (pool, notify, ring) = ring(4);
        let mut slot = pool.slot(256).unwrap();
        slot.bytes_mut()[10..15].copy_from_slice(b"hello");
        let lent = ring.lend(slot, 2, 10, 5).ok().expect("an empty index");
        assert_eq!(lent.as_slice(), b"hello");
        // The index is taken: a second lend gives its slot back untouched.
        let other = pool.slot(256).unwrap();
        let other = ring.lend(other, 2, 0, 1).err().expect("index 2 is lent");
        // Out of range, or beyond the slot: refused as well.
        let other = ring.lend(other, 4, 0, 1).err().expect("no index 4");
        let other = ring.lend(other, 1, 200, 57).err().expect("past the slot's end");
        assert!(returns(&notify).is_empty());
        // Dropping the message releases it: the index comes back once.
        drop(lent);
        let mut back = returns(&notify);
        assert_eq!(back.len(), 1);
        let (index, slot) = ring.take_returned(back.pop().unwrap()).ok().expect("ours");
        assert_eq!((index, &slot.bytes()[10..15]), (2, &b"hello"[..]));
        // Now index 2 lends again.
        assert!(ring.lend(slot, 2, 0, 1).is_ok());
        drop(other);
    }

    #[test]
    fn another_rings_buffer_is_refused() {
        let (pool, notify, a) = ring(2);
        let b = RingShared::new(&pool, &notify, 6, 2);
        drop(a.lend(pool.slot(256).unwrap(), 0, 0, 1).ok().unwrap());
        let r = returns(&notify).pop().unwrap();
        assert_eq!(r.key(), 5);
        let r = b.take_returned(r).err().expect("not b's");
        assert!(a.take_returned(r).is_ok());
    }

    #[test]
    fn a_buffer_released_after_its_ring_closed_goes_with_the_ring() {
        let (pool, notify, ring) = ring(2);
        let lent = ring.lend(pool.slot(256).unwrap(), 1, 0, 3).ok().unwrap();
        let free = || pool.free_lists().free[0].lock().unwrap().len();
        let before = free();
        ring.close();
        let weak = Arc::downgrade(&ring);
        drop(ring);
        assert!(weak.upgrade().is_some(), "the lend keeps the ring");
        drop(lent);
        assert!(returns(&notify).is_empty(), "not re-posted on a closed ring");
        assert!(weak.upgrade().is_none(), "its last reference went with the buffer");
        // The slot went back to the pool's free list.
        assert_eq!(free(), before + 1);
    }
}
