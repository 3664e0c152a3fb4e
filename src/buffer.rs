//! Buffers: the memory behind a scatter-gather segment.
//!
//! A [`Buffer`] is a view (pointer, length) into memory kept alive by a shared
//! owner. Cloning it shares the owner, which is how free-protection works: a
//! push in flight holds a clone, so the application may free its own handle at
//! any time and the memory stays valid until the completion is reaped. Device
//! libOSes supply their own owners (registered memory, received buffers that
//! are re-posted on drop); catnap reuses heap memory from a pool
//! (`src/pool.rs`).
//!
//! The reference count lives in the owner ([`Lender`]), not in an `Arc`, so
//! that an owner can outlive its buffers and be lent again: a received RDMA
//! buffer's owner is made once per receive slot and told when the last
//! buffer over it goes, without an allocation per message. Owners made for
//! one buffer (the heap, [`Buffer::from_owner`]) are boxed and freed then.
#![allow(unsafe_code)]

use std::any::Any;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::Arc;

/// What [`Lender::released`] asks the last buffer's drop to do.
pub enum Released {
    /// Nothing: the owner lives on (it took its memory back).
    Kept,
    /// The owner is a box that nothing else refers to any more (one made
    /// by `Buffer::from_owner`, or a pool's slot the pool did not keep):
    /// free the box.
    Free,
    /// Drop this after the call (it may be what keeps the owner itself
    /// alive, which the owner cannot drop while it is borrowed).
    DropAfter(Arc<dyn Any + Send + Sync>),
}

/// The owner of the memory behind buffers: the count of buffers over it,
/// and what happens when the last goes.
///
/// # Safety
/// `refs` is the live count of [`Buffer`]s over this owner: set to 1 by
/// whoever makes the first buffer ([`Buffer::lend`]), changed only by
/// `Buffer` after that. The owner stays valid, and the memory of every
/// buffer over it readable and writable, until `released` has returned (and
/// whatever it asked for is done). `released` is called exactly once each
/// time the count falls to zero, after every access through the buffers.
pub unsafe trait Lender: Send + Sync + 'static {
    /// For backends that recognise their own memory (e.g. an RDMA lkey).
    fn as_any(&self) -> &dyn Any;
    /// The count of buffers over this owner.
    ///
    /// # Safety
    /// Only `Buffer` (and the maker of the first buffer) may change the
    /// count: the trait is public, so these two calls are unsafe to keep
    /// code that merely holds an owner from releasing it early.
    unsafe fn refs(&self) -> &AtomicUsize;
    /// The last buffer over this owner went away.
    ///
    /// # Safety
    /// Called once each time the count falls to zero (see the trait).
    unsafe fn released(&self) -> Released;
}

/// An owner boxed for the buffers over one value (freed with the last).
struct Boxed<T> {
    refs: AtomicUsize,
    value: T,
}

// SAFETY: the box is made with refs 1 for one buffer (Buffer::from_owner),
// and asks to be freed when the count falls to zero.
unsafe impl<T: Any + Send + Sync> Lender for Boxed<T> {
    fn as_any(&self) -> &dyn Any {
        &self.value
    }
    unsafe fn refs(&self) -> &AtomicUsize {
        &self.refs
    }
    unsafe fn released(&self) -> Released {
        Released::Free
    }
}

/// Memory from the global allocator.
struct HeapBlock {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: HeapBlock exclusively owns its allocation; the raw pointer is only an
// address, and all access goes through Buffer, whose rules are documented there.
unsafe impl Send for HeapBlock {}
// SAFETY: as above; HeapBlock itself has no interior mutability.
unsafe impl Sync for HeapBlock {}

impl Drop for HeapBlock {
    fn drop(&mut self) {
        // SAFETY: ptr/cap came from Box::<[u8]>::into_raw in Buffer::heap and
        // are turned back into that box exactly once, here.
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.cap)));
        }
    }
}

/// A view into shared, owned memory (see the module docs).
pub struct Buffer {
    ptr: NonNull<u8>,
    len: usize,
    owner: NonNull<dyn Lender>,
}

// SAFETY: the owner is Send + Sync and keeps the memory alive; Buffer hands out
// shared slices, and mutable ones only while it is the sole reference.
unsafe impl Send for Buffer {}
// SAFETY: as above.
unsafe impl Sync for Buffer {}

impl Buffer {
    /// A zeroed heap buffer of `len` bytes (`len` may be zero).
    pub fn heap(len: usize) -> Buffer {
        let boxed: Box<[u8]> = vec![0u8; len].into_boxed_slice();
        Self::from_box(boxed)
    }

    /// A heap buffer holding a copy of `data`.
    pub fn copy_from(data: &[u8]) -> Buffer {
        Self::from_box(data.to_vec().into_boxed_slice())
    }

    /// Takes ownership of a vector's bytes without copying (spare capacity is
    /// released first).
    pub fn from_vec(v: Vec<u8>) -> Buffer {
        Self::from_box(v.into_boxed_slice())
    }

    fn from_box(boxed: Box<[u8]>) -> Buffer {
        let len = boxed.len();
        let raw = Box::into_raw(boxed) as *mut u8;
        // SAFETY: Box::into_raw never returns null (a zero-length box is dangling, not null).
        let ptr = unsafe { NonNull::new_unchecked(raw) };
        // SAFETY: the block owns ptr..ptr+len and lives as long as the owner.
        unsafe { Self::from_owner(ptr, len, HeapBlock { ptr, cap: len }) }
    }

    /// A buffer over memory that `owner` keeps alive (boxed with it, and
    /// dropped with the last clone). `Buffer::owner_any` gives `owner` back.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be valid for reads and writes for as long as
    /// `owner` is alive, and not be freed by anyone else.
    pub unsafe fn from_owner<T: Any + Send + Sync>(ptr: NonNull<u8>, len: usize, owner: T) -> Buffer {
        let boxed: Box<dyn Lender> = Box::new(Boxed { refs: AtomicUsize::new(1), value: owner });
        // SAFETY: Box::into_raw never returns null.
        let owner = unsafe { NonNull::new_unchecked(Box::into_raw(boxed)) };
        Buffer { ptr, len, owner }
    }

    /// The first buffer over memory a long-lived owner lends (see [`Lender`]).
    ///
    /// # Safety
    /// `lender`'s count must be zero (nothing over it), and `lender` must
    /// honour the [`Lender`] contract for `ptr..ptr+len`: in particular stay
    /// valid until the last buffer made from this one is dropped.
    pub unsafe fn lend(ptr: NonNull<u8>, len: usize, lender: NonNull<dyn Lender>) -> Buffer {
        // SAFETY: the caller vouches that lender is valid and that this is
        // its first buffer, which sets the count (the Lender contract).
        unsafe { lender.as_ref().refs() }.store(1, Ordering::Relaxed);
        Buffer { ptr, len, owner: lender }
    }

    fn lender(&self) -> &dyn Lender {
        // SAFETY: the owner stays valid while any buffer over it lives (the
        // Lender contract), and this one does.
        unsafe { self.owner.as_ref() }
    }

    /// Length of the view in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length view.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start of the view.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Start of the view, for C callers that fill the buffer themselves.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The bytes of the view.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the owner keeps ptr..ptr+len valid while self lives. Writers
        // are either the unique holder (as_mut_slice) or C code that the API
        // forbids from writing while an operation uses the buffer.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Mutable bytes, only while this is the sole reference to the memory
    /// (not shared with an operation in flight or another clone).
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        // Acquire: a clone dropped on another thread is done with the bytes.
        if self.count().load(Ordering::Acquire) != 1 {
            return None;
        }
        // SAFETY: we hold the only reference to the owner, so nobody else
        // reads or writes this memory while the borrow lives.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) })
    }

    /// A shorter view of the same memory (shares the owner).
    pub fn prefix(&self, len: usize) -> Option<Buffer> {
        (len <= self.len).then(|| {
            let mut b = self.clone();
            b.len = len;
            b
        })
    }

    /// A view starting `off` bytes in (shares the owner).
    pub fn advance(&self, off: usize) -> Option<Buffer> {
        (off <= self.len).then(|| {
            let mut b = self.clone();
            // SAFETY: off <= len, so the result stays inside (or one past) the allocation.
            b.ptr = unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(off)) };
            b.len = self.len - off;
            b
        })
    }

    /// The owner's value, for backends that recognise their own memory:
    /// what `from_owner` was given, or what a [`Lender`] shows of itself.
    pub fn owner_any(&self) -> &dyn Any {
        self.lender().as_any()
    }

    /// Number of live references to the memory (the app's handle, in-flight
    /// operations, clones); for tests of free-protection.
    pub fn ref_count(&self) -> usize {
        self.count().load(Ordering::Relaxed)
    }

    /// The owner's count of buffers, which only Buffer changes.
    fn count(&self) -> &AtomicUsize {
        // SAFETY: Buffer is the one the Lender contract lets count.
        unsafe { self.lender().refs() }
    }
}

impl Clone for Buffer {
    fn clone(&self) -> Buffer {
        // Relaxed, as Arc does: a new reference is made from an existing one,
        // which keeps the owner alive meanwhile.
        let old = self.count().fetch_add(1, Ordering::Relaxed);
        if old > isize::MAX as usize {
            // As Arc: a count this high means leaked clones; do not wrap.
            std::process::abort();
        }
        Buffer { ptr: self.ptr, len: self.len, owner: self.owner }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // Release, then an Acquire fence before the owner takes the memory
        // back: every access through any clone happens before that (as Arc).
        if self.count().fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        fence(Ordering::Acquire);
        // SAFETY: the count fell to zero here, once, after every access
        // through the buffers (the fence above).
        match unsafe { self.lender().released() } {
            Released::Kept => {}
            // SAFETY: a `Free` owner is the box from_owner made; this was its
            // last buffer, and the borrow from `lender()` has ended.
            Released::Free => drop(unsafe { Box::from_raw(self.owner.as_ptr()) }),
            Released::DropAfter(keep) => drop(keep),
        }
    }
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer").field("ptr", &self.ptr).field("len", &self.len).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_buffer_is_zeroed_and_sized() {
        let b = Buffer::heap(100);
        assert_eq!(b.len(), 100);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        assert!(Buffer::heap(0).is_empty());
    }

    #[test]
    fn clones_share_memory_and_block_mutation() {
        let mut a = Buffer::copy_from(b"hello");
        a.as_mut_slice().unwrap()[0] = b'j';
        let b = a.clone();
        assert_eq!(b.as_slice(), b"jello");
        assert!(a.as_mut_slice().is_none(), "shared memory must not be mutable");
        assert_eq!(a.ref_count(), 2);
        drop(b);
        assert!(a.as_mut_slice().is_some());
    }

    #[test]
    fn prefix_and_advance_stay_in_bounds() {
        let a = Buffer::copy_from(b"abcdef");
        assert_eq!(a.prefix(3).unwrap().as_slice(), b"abc");
        assert_eq!(a.advance(4).unwrap().as_slice(), b"ef");
        assert!(a.prefix(7).is_none());
        assert!(a.advance(7).is_none());
        assert_eq!(a.advance(6).unwrap().len(), 0);
    }
}
