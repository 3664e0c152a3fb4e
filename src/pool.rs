//! Reusable owners for lent buffers, so that a pop allocates nothing once
//! warm.
//!
//! A popped [`Buffer`] needs an owner that counts the buffers over its
//! memory ([`Lender`]). [`Buffer::from_owner`] boxes a fresh one each time;
//! a [`LendPool`] instead keeps slots (a count and a value: catnap's copy
//! of the received bytes, catnip's received mbuf) and takes them back when
//! their last buffer goes, wherever that happens: buffers are `Send`, so
//! the free list is behind a mutex, taken once to lend a slot and once to
//! give it back. The list never grows past its capacity, made when the pool
//! is, so giving back allocates nothing either.
//!
//! At most `keep` slots wait in the pool; one given back beyond that is
//! freed, which bounds what an application that once held many buffers
//! leaves behind. Slots given back after the pool is dropped free
//! themselves: buffers may outlive their libOS.
#![allow(unsafe_code)]

use crate::buffer::{Buffer, Lender, Released};
use std::any::Any;
use std::cell::UnsafeCell;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};

/// A pool of slots carrying values of type `T`.
pub(crate) struct LendPool<T: Send + Sync + 'static> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    free: Mutex<Free<T>>,
    /// The most slots kept waiting (the free list's capacity).
    keep: usize,
    /// Applied to a slot's value when its last buffer goes (catnip: frees
    /// the mbuf now rather than when the slot is next used).
    reset: fn(&mut T),
}

struct Free<T> {
    /// False once the pool is dropped: slots given back then free themselves.
    open: bool,
    slots: Vec<SlotPtr<T>>,
}

struct SlotPtr<T>(NonNull<Slot<T>>);

// SAFETY: a slot in the free list belongs to nobody but the list; whoever
// pops it owns it, on whatever thread (Slot<T> is Send, below).
unsafe impl<T: Send + Sync> Send for SlotPtr<T> {}

/// One owner: the count of buffers over it, its value, and its pool.
pub(crate) struct Slot<T> {
    refs: AtomicUsize,
    /// Written only by whoever owns the slot exclusively: the holder of its
    /// [`Lease`], or the last buffer's drop (in `released`); read through
    /// shared references only while buffers over it live.
    value: UnsafeCell<T>,
    shared: Arc<Shared<T>>,
    /// The slot's own address as `take` made it (Box::into_raw), kept so
    /// that `released`, which sees only `&self`, hands the pool a pointer
    /// that may free the slot later.
    this: NonNull<Slot<T>>,
}

// SAFETY: the value is mutated only under exclusive ownership (see `value`)
// and otherwise only read, so sharing a slot between threads is as safe as
// sharing a T (Sync) and handing it over is as safe as sending a T (Send).
unsafe impl<T: Send + Sync> Send for Slot<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for Slot<T> {}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Free<T>> {
        // Nothing in the critical sections can panic half-way; carry on.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `slot` (owned by the caller, its count zero) back on the free
    /// list; false if the list is full or the pool is gone, and the caller
    /// must free it.
    fn keep(&self, slot: NonNull<Slot<T>>) -> bool {
        let mut free = self.lock();
        if !free.open || free.slots.len() >= self.keep {
            return false;
        }
        // Within the capacity made by LendPool::new: no allocation.
        free.slots.push(SlotPtr(slot));
        true
    }
}

impl<T: Send + Sync + 'static> LendPool<T> {
    /// A pool that keeps up to `keep` free slots; `reset` is applied to a
    /// slot's value when its last buffer goes.
    pub fn new(keep: usize, reset: fn(&mut T)) -> LendPool<T> {
        let free = Free { open: true, slots: Vec::with_capacity(keep) };
        LendPool { shared: Arc::new(Shared { free: Mutex::new(free), keep, reset }) }
    }

    /// A slot of the pool, made with `make()` if none is free.
    pub fn take(&self, make: impl FnOnce() -> T) -> Lease<T> {
        let reused = self.shared.lock().slots.pop();
        let slot = match reused {
            Some(SlotPtr(slot)) => slot,
            None => {
                let raw = Box::into_raw(Box::new(Slot {
                    refs: AtomicUsize::new(0),
                    value: UnsafeCell::new(make()),
                    shared: Arc::clone(&self.shared),
                    this: NonNull::dangling(),
                }));
                // SAFETY: raw is the fresh, live box, not shared yet.
                unsafe {
                    (*raw).this = NonNull::new_unchecked(raw);
                    (*raw).this
                }
            }
        };
        Lease { slot }
    }

    /// Free slots waiting in the pool (for tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.shared.lock().slots.len()
    }
}

impl<T: Send + Sync + 'static> Drop for LendPool<T> {
    fn drop(&mut self) {
        let slots = {
            let mut free = self.shared.lock();
            free.open = false;
            std::mem::take(&mut free.slots)
        };
        for SlotPtr(slot) in slots {
            // SAFETY: slots on the free list were made by Box::into_raw in
            // `take` and are owned by the list alone; each is freed once.
            drop(unsafe { Box::from_raw(slot.as_ptr()) });
        }
    }
}

/// A slot taken from the pool and not lent yet: its value may be changed
/// (filled) until [`Lease::lend`] makes buffers over it. Dropped unlent, it
/// goes back to the pool.
pub(crate) struct Lease<T: Send + Sync + 'static> {
    slot: NonNull<Slot<T>>,
}

impl<T: Send + Sync + 'static> Lease<T> {
    /// The slot's value, to fill before lending.
    pub fn value(&mut self) -> &mut T {
        // SAFETY: a lease owns its slot exclusively (no buffer over it yet,
        // not on the free list), and `&mut self` borrows the lease.
        unsafe { &mut *self.slot.as_ref().value.get() }
    }

    /// The first buffer over the slot: `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be valid for reads and writes while the slot's
    /// value is neither changed nor reset: memory the value owns or keeps
    /// alive (a boxed slice, an mbuf), not moved by lending the slot.
    pub unsafe fn lend(self, ptr: NonNull<u8>, len: usize) -> Buffer {
        let slot = ManuallyDrop::new(self).slot;
        let lender: NonNull<dyn Lender> = slot;
        // SAFETY: the slot's count is zero (fresh, or given back when its
        // last buffer went), and Slot honours the Lender contract (below)
        // for memory its value keeps valid, which the caller vouches for.
        unsafe { Buffer::lend(ptr, len, lender) }
    }
}

impl<T: Send + Sync + 'static> Drop for Lease<T> {
    fn drop(&mut self) {
        // SAFETY: the lease owns the slot exclusively (see `value`).
        let slot = unsafe { self.slot.as_ref() };
        // Given back as a lent slot is: reset (a filled value is let go).
        // SAFETY: as above, nobody else reads or writes the value.
        (slot.shared.reset)(unsafe { &mut *slot.value.get() });
        if !slot.shared.keep(self.slot) {
            // SAFETY: made by Box::into_raw in `take`, owned by this lease alone
            // and not kept by the pool: freed once, here.
            drop(unsafe { Box::from_raw(self.slot.as_ptr()) });
        }
    }
}

// SAFETY: `refs` is touched only by Buffer (Buffer::lend sets it to 1, and
// the clones and drops count), and `released` runs once each time it falls
// to zero. The slot is not freed while buffers live: it is either kept by
// the pool (which frees only slots on its free list, with no buffers over
// them) or freed by the last buffer's drop, as `Released::Free` asks, the
// slot being a Box made by `take` that nothing else refers to then.
unsafe impl<T: Send + Sync + 'static> Lender for Slot<T> {
    fn as_any(&self) -> &dyn Any {
        self
    }

    unsafe fn refs(&self) -> &AtomicUsize {
        &self.refs
    }

    unsafe fn released(&self) -> Released {
        // SAFETY: the last buffer over the slot is going, after every access
        // through the buffers (the Lender contract): this call owns it.
        (self.shared.reset)(unsafe { &mut *self.value.get() });
        match self.shared.keep(self.this) {
            // Another thread may take and fill the slot from here on: this
            // call touches it no more.
            true => Released::Kept,
            false => Released::Free,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(pool: &LendPool<Box<[u8]>>, data: &[u8]) -> Buffer {
        let mut lease = pool.take(|| vec![0u8; 16].into_boxed_slice());
        lease.value()[..data.len()].copy_from_slice(data);
        let ptr = NonNull::new(lease.value().as_mut_ptr()).unwrap();
        // SAFETY: the boxed slice is the slot's value; it is never changed
        // or moved while buffers over it live (reset is a no-op).
        unsafe { lease.lend(ptr, data.len()) }
    }

    #[test]
    fn a_slot_given_back_is_lent_again() {
        let pool = LendPool::new(2, |_| {});
        let a = filled(&pool, b"one");
        let first = a.as_ptr();
        let b = a.clone();
        drop(a);
        assert_eq!(pool.waiting(), 0, "a clone still holds the slot");
        assert_eq!(b.as_slice(), b"one");
        drop(b);
        assert_eq!(pool.waiting(), 1);
        let c = filled(&pool, b"two");
        assert_eq!((c.as_ptr(), c.as_slice()), (first, &b"two"[..]), "the same memory again");
        assert_eq!(pool.waiting(), 0);
    }

    #[test]
    fn at_most_keep_slots_wait_and_buffers_outlive_the_pool() {
        let pool = LendPool::new(2, |_| {});
        let bufs: Vec<Buffer> = (0..5u8).map(|i| filled(&pool, &[i; 4])).collect();
        let mut bufs = bufs.into_iter();
        drop(bufs.next());
        drop(bufs.next());
        drop(bufs.next());
        assert_eq!(pool.waiting(), 2, "the third slot given back is freed");
        let unlent = pool.take(|| unreachable!("a free slot is reused"));
        drop(unlent);
        assert_eq!(pool.waiting(), 2, "a lease dropped unlent goes back");
        drop(pool);
        // Given back after the pool: freed (Miri or ASan would see a leak or
        // a use after free here); the data is intact until then.
        for (i, b) in bufs.enumerate() {
            assert_eq!(b.as_slice(), [3 + i as u8; 4]);
        }
    }

    #[test]
    fn slots_come_back_from_other_threads() {
        let pool = LendPool::new(8, |_| {});
        for round in 0..50u8 {
            let bufs: Vec<Buffer> = (0..8).map(|i| filled(&pool, &[round ^ i; 16])).collect();
            let ptrs: Vec<*const u8> = bufs.iter().map(Buffer::as_ptr).collect();
            std::thread::spawn(move || drop(bufs)).join().unwrap();
            assert_eq!(pool.waiting(), 8);
            // The next round lends the same memory again.
            let again: Vec<Buffer> = (0..8).map(|_| filled(&pool, b"x")).collect();
            assert!(again.iter().all(|b| ptrs.contains(&b.as_ptr())));
        }
    }

    #[test]
    fn reset_runs_when_the_last_buffer_goes() {
        let pool: LendPool<Box<[u8]>> = LendPool::new(1, |v| v.fill(0xee));
        let a = filled(&pool, b"abcd");
        let b = a.prefix(2).unwrap();
        drop(a);
        assert_eq!(b.as_slice(), b"ab", "not reset while a buffer lives");
        drop(b);
        let mut again = pool.take(|| unreachable!());
        assert_eq!(&again.value()[..4], [0xee; 4]);
        // A lease dropped unlent is reset too.
        again.value()[0] = 1;
        drop(again);
        assert_eq!(pool.take(|| unreachable!()).value()[0], 0xee);
    }
}
