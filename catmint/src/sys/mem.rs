//! Registered memory: chunks allocated here and registered with every
//! device's PD, the slots they are cut into, and the [`Payload`] contract.
//!
//! The unsafe fact behind this module: the device reads and writes this
//! memory without the compiler knowing. Soundness rests on ownership: a
//! [`Slot`] is the one handle on its bytes. While a receive is posted into
//! it, the slot is owned by its queue (`qp`), which gives it back only for a
//! completion the device reported; while it is lent to the application, it
//! sits in a lend cell (`lend`) and is only read. So whoever holds a `Slot`
//! by value may read and write its bytes as plain memory.

use super::verbs::{Mr, Pd};
use super::{ffi, Error, Result};
use crate::pool::{Block, Pool};
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// Memory registered with every PD of a pool.
pub struct Chunk {
    base: NonNull<u8>,
    layout: Layout,
    mrs: Vec<Mr>,
}

// SAFETY: the chunk owns its memory; its bytes are reached only through
// the slots cut from it, each the one handle on its piece.
unsafe impl Send for Chunk {}
// SAFETY: as above; the chunk itself is only read (its MRs' keys).
unsafe impl Sync for Chunk {}

impl Chunk {
    /// `len` zeroed bytes, page-aligned, registered with each PD in `pds`.
    pub fn new(len: usize, pds: &[Arc<Pd>]) -> Result<Arc<Chunk>> {
        let layout = Layout::from_size_align(len.max(1), 4096).map_err(|_| Error::new("layout", libc::ENOMEM))?;
        // SAFETY: layout has a non-zero size.
        let base =
            NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).ok_or(Error::new("alloc", libc::ENOMEM))?;
        let mut chunk = Chunk { base, layout, mrs: Vec::with_capacity(pds.len()) };
        for pd in pds {
            // SAFETY: the memory lives until the chunk drops, after its MRs.
            chunk.mrs.push(unsafe { Mr::register(pd, base.as_ptr(), layout.size()) }?);
        }
        Ok(Arc::new(chunk))
    }

    /// The whole chunk as one slot of `len` bytes (a dedicated chunk).
    pub fn whole(self: Arc<Self>, len: usize, class: u8) -> Slot {
        assert!(len <= self.layout.size());
        Slot { ptr: self.base, cap: len, class, chunk: self }
    }

    /// The chunk cut into slots of `size` bytes.
    pub fn carve(self: &Arc<Self>, size: usize, class: u8) -> impl Iterator<Item = Slot> + '_ {
        assert!(size > 0);
        (0..self.layout.size() / size).map(move |i| Slot {
            // SAFETY: (i + 1) * size <= the allocation's size, so the offset
            // is inside it and not null.
            ptr: unsafe { NonNull::new_unchecked(self.base.as_ptr().add(i * size)) },
            cap: size,
            class,
            chunk: self.clone(),
        })
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.mrs.clear();
        // SAFETY: allocated in Chunk::new with this layout; the MRs are gone
        // and no slot is left (each holds the chunk).
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) };
    }
}

/// A piece of a chunk: the one handle on its bytes (see the module docs).
pub struct Slot {
    ptr: NonNull<u8>,
    cap: usize,
    class: u8,
    chunk: Arc<Chunk>,
}

// SAFETY: a Slot is the only handle to its piece of memory.
unsafe impl Send for Slot {}
// SAFETY: as above; shared references only read.
unsafe impl Sync for Slot {}

impl Slot {
    /// The first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Size in bytes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The pool's size class it belongs to.
    pub fn class(&self) -> u8 {
        self.class
    }

    /// The key of this memory for device `dev`.
    pub fn lkey(&self, dev: usize) -> u32 {
        self.chunk.mrs[dev].lkey()
    }

    /// The chunk it was cut from, as an identity (the pool's trim groups
    /// free slots by chunk).
    pub fn chunk_id(&self) -> *const Chunk {
        Arc::as_ptr(&self.chunk)
    }

    /// True if `ptr..ptr+len` lies inside this slot.
    pub fn contains(&self, ptr: *const u8, len: usize) -> bool {
        within(self.ptr.as_ptr(), self.cap, ptr, len)
    }

    /// The slot's bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the slot is the one handle on these initialised (zeroed,
        // then written) bytes, and no receive is posted into a slot held by
        // value (see the module docs).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.cap) }
    }

    /// The slot's bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `bytes`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// The scatter entry of the whole slot on device `dev`.
    pub(super) fn sge(&self, dev: usize) -> ffi::ibv_sge {
        ffi::ibv_sge { addr: self.ptr.as_ptr() as u64, length: self.cap as u32, lkey: self.lkey(dev) }
    }
}

/// True if `ptr..ptr+len` lies inside `start..start+size`.
pub fn within(start: *const u8, size: usize, ptr: *const u8, len: usize) -> bool {
    let (start, p) = (start as usize, ptr as usize);
    p >= start && p.checked_add(len).is_some_and(|end| end <= start + size)
}

/// Where a pool's free slots wait, per size class; shared by everything
/// that gives slots back (blocks, rings, lent buffers).
pub struct FreeLists {
    pub(crate) pds: Vec<Arc<Pd>>,
    pub(crate) free: Vec<Mutex<Vec<Slot>>>,
}

impl FreeLists {
    /// Gives a slot back to its class's list; a dedicated slot (class
    /// `DEDICATED`) is freed with its chunk instead.
    pub fn give_back(&self, slot: Slot) {
        if let Some(list) = self.free.get(slot.class as usize) {
            list.lock().unwrap_or_else(|e| e.into_inner()).push(slot);
        }
    }
}

/// Bytes to send.
///
/// # Safety
/// The device reads these bytes after the call that posts them returns,
/// until the send's completion; catmint keeps the value alive until then.
/// An implementation promises that `bytes()` returns the same memory each
/// time, that this memory does not move when the value moves and stays
/// valid and unwritten while the value lives, and that a key from `lkey` is
/// a key of `pool`'s registration on device `dev` covering all of `bytes()`.
/// Memory of another pool (another `Catmint`: another thread's, with its
/// own protection domains) must answer `None`: its key means nothing here.
pub unsafe trait Payload: Send + Sync {
    /// The bytes to send.
    fn bytes(&self) -> &[u8];
    /// The memory key on device `dev` if the bytes are registered memory of
    /// `pool` (else they are copied into its memory once).
    fn lkey(&self, pool: &Pool, dev: usize) -> Option<u32>;
}

// SAFETY: forwards to a payload that keeps the contract; the Arc keeps it
// in place.
unsafe impl Payload for Arc<dyn Payload> {
    fn bytes(&self) -> &[u8] {
        (**self).bytes()
    }
    fn lkey(&self, pool: &Pool, dev: usize) -> Option<u32> {
        (**self).lkey(pool, dev)
    }
}

// SAFETY: a block owns its slot (memory that stays put while the block
// lives) and answers a key only for its own pool's registration, which
// covers its whole slot.
unsafe impl Payload for Block {
    fn bytes(&self) -> &[u8] {
        self.as_slice()
    }
    fn lkey(&self, pool: &Pool, dev: usize) -> Option<u32> {
        self.is_from(pool).then(|| Block::lkey(self, dev))
    }
}
