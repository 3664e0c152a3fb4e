//! Buffers: the memory behind a scatter-gather segment.
//!
//! A [`Buffer`] is a view (pointer, length) into memory kept alive by a shared
//! owner. Cloning it shares the owner, which is how free-protection works: a
//! push in flight holds a clone, so the application may free its own handle at
//! any time and the memory stays valid until the completion is reaped. Device
//! libOSes supply their own owners (registered memory, received buffers that
//! are re-posted on drop); catnap uses the heap.
#![allow(unsafe_code)]

use std::any::Any;
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

/// Whatever keeps a buffer's memory alive; dropping the last reference
/// releases (or recycles) the memory.
pub trait BufferOwner: Send + Sync + 'static {
    /// For backends that need to recognise their own memory (e.g. an RDMA
    /// lkey); heap buffers answer with themselves.
    fn as_any(&self) -> &dyn Any;
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

impl BufferOwner for HeapBlock {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

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
#[derive(Clone)]
pub struct Buffer {
    ptr: NonNull<u8>,
    len: usize,
    owner: Arc<dyn BufferOwner>,
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
        Buffer { ptr, len, owner: Arc::new(HeapBlock { ptr, cap: len }) }
    }

    /// A buffer over memory owned by `owner`.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be valid for reads and writes for as long as
    /// `owner` (or any clone of it) is alive, and not be freed by anyone else.
    pub unsafe fn from_owner(ptr: NonNull<u8>, len: usize, owner: Arc<dyn BufferOwner>) -> Buffer {
        Buffer { ptr, len, owner }
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
        if Arc::strong_count(&self.owner) != 1 {
            return None;
        }
        // SAFETY: we hold the only reference to the owner, so nobody else
        // reads or writes this memory while the borrow lives.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) })
    }

    /// A shorter view of the same memory (shares the owner).
    pub fn prefix(&self, len: usize) -> Option<Buffer> {
        (len <= self.len).then(|| Buffer { ptr: self.ptr, len, owner: self.owner.clone() })
    }

    /// A view starting `off` bytes in (shares the owner).
    pub fn advance(&self, off: usize) -> Option<Buffer> {
        (off <= self.len).then(|| Buffer {
            // SAFETY: off <= len, so the result stays inside (or one past) the allocation.
            ptr: unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(off)) },
            len: self.len - off,
            owner: self.owner.clone(),
        })
    }

    /// The owner, for backends that recognise their own memory.
    pub fn owner(&self) -> &dyn BufferOwner {
        &*self.owner
    }

    /// Number of live references to the memory (the app's handle, in-flight
    /// operations, clones); for tests of free-protection.
    pub fn ref_count(&self) -> usize {
        Arc::strong_count(&self.owner)
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
