//! The registered-memory allocator: chunks (`sys::mem`) registered with
//! every device's PD, carved into power-of-two size classes. A [`Block`] is
//! one allocation; dropping it gives the memory back to the pool.

use crate::sys::mem::{Chunk, FreeLists, Slot};
use crate::sys::verbs::Pd;
use crate::sys::Result;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Size classes (powers of two, so a slot wastes less than half of itself);
/// larger allocations get a chunk of their own.
const CLASSES: [usize; 13] = {
    let mut c = [0; 13];
    let mut i = 0;
    while i < c.len() {
        c[i] = 256 << i;
        i += 1;
    }
    c
};
const DEDICATED: u8 = u8::MAX;

/// Bytes registered at a time for a size class: at least 8 slots (fewer
/// registrations) and 256 KiB, at most 4 MiB.
fn chunk_len(class_size: usize) -> usize {
    (class_size * 8).clamp(256 << 10, 4 << 20)
}

/// The registered-memory allocator.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<FreeLists>,
}

impl Pool {
    /// A pool whose slots are registered on each protection domain in `pds` (one per device).
    pub fn new(pds: Vec<Arc<Pd>>) -> Pool {
        let free = CLASSES.iter().map(|_| Mutex::new(Vec::new())).collect();
        Pool { shared: Arc::new(FreeLists { pds, free }) }
    }

    /// A slot of at least `len` bytes.
    pub fn slot(&self, len: usize) -> Result<Slot> {
        let Some(class) = CLASSES.iter().position(|&c| c >= len) else {
            return Ok(Chunk::new(len, &self.shared.pds)?.whole(len, DEDICATED));
        };
        let mut free = self.shared.free[class].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = free.pop() {
            return Ok(s);
        }
        // Carve a new chunk into slots of this class.
        let size = CLASSES[class];
        let chunk = Chunk::new(chunk_len(size), &self.shared.pds)?;
        free.extend(chunk.carve(size, class as u8));
        Ok(free.pop().expect("a chunk holds at least one slot"))
    }

    /// A block of `len` bytes that returns to the pool when dropped.
    pub fn alloc(&self, len: usize) -> Result<Block> {
        let slot = self.slot(len)?;
        Ok(Block { slot: Some(slot), off: 0, len, pool: self.shared.clone() })
    }

    /// Gives a slot back to the free list.
    pub fn recycle(&self, slot: Slot) {
        self.shared.give_back(slot);
    }

    /// Frees (and deregisters) every chunk none of whose slots is in use;
    /// returns how many. Called when sockets go away, so that closing
    /// everything gives the memory and its MRs back.
    pub fn trim(&self) -> usize {
        let mut freed = 0;
        for (class, free) in self.shared.free.iter().enumerate() {
            let mut free = free.lock().unwrap_or_else(|e| e.into_inner());
            let per_chunk = chunk_len(CLASSES[class]) / CLASSES[class];
            if free.len() < per_chunk {
                continue;
            }
            // Each slot is in exactly one place, so a chunk with all its
            // slots on the free list is unused.
            let mut counts: HashMap<*const Chunk, usize> = HashMap::new();
            for s in free.iter() {
                *counts.entry(s.chunk_id()).or_default() += 1;
            }
            counts.retain(|_, n| *n == per_chunk);
            if !counts.is_empty() {
                freed += counts.len();
                // Dropping the last slots drops the chunk (MRs first).
                free.retain(|s| !counts.contains_key(&s.chunk_id()));
            }
        }
        freed
    }

    /// Where its slots go back.
    pub(crate) fn free_lists(&self) -> &Arc<FreeLists> {
        &self.shared
    }
}

/// One allocation of registered memory: bytes `off..off+len` of its slot.
pub struct Block {
    slot: Option<Slot>,
    off: usize,
    len: usize,
    pool: Arc<FreeLists>,
}

impl Block {
    fn slot(&self) -> &Slot {
        self.slot.as_ref().expect("a live block has its slot")
    }

    /// The first byte of the block.
    pub fn as_ptr(&self) -> *mut u8 {
        self.slot().as_ptr().wrapping_add(self.off)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the block holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The block's bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.slot().bytes()[self.off..self.off + self.len]
    }

    /// The block's bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let (off, len) = (self.off, self.len);
        &mut self.slot.as_mut().expect("a live block has its slot").bytes_mut()[off..off + len]
    }

    /// The memory key for device `dev`.
    pub fn lkey(&self, dev: usize) -> u32 {
        self.slot().lkey(dev)
    }

    /// True if the block is memory of `pool`.
    pub fn is_from(&self, pool: &Pool) -> bool {
        Arc::ptr_eq(&self.pool, &pool.shared)
    }

    /// True if `ptr..ptr+len` lies inside this block.
    pub fn contains(&self, ptr: *const u8, len: usize) -> bool {
        crate::sys::mem::within(self.as_ptr(), self.len, ptr, len)
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.pool.give_back(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool with no devices registers nothing, so its bookkeeping can be
    /// checked without RDMA.
    fn pool() -> Pool {
        Pool::new(Vec::new())
    }

    #[test]
    fn size_classes_are_powers_of_two_from_256_bytes_to_1_mib() {
        assert_eq!(CLASSES[0], 256);
        assert_eq!(CLASSES[CLASSES.len() - 1], 1 << 20);
        assert!(CLASSES.windows(2).all(|w| w[1] == 2 * w[0]));
        let p = pool();
        assert_eq!(p.slot(32 << 10).unwrap().capacity(), 32 << 10, "a 32 KiB receive buffer wastes nothing");
        assert_eq!(p.slot(257).unwrap().capacity(), 512);
        assert_eq!(p.slot(3 << 20).unwrap().capacity(), 3 << 20, "dedicated chunk");
    }

    #[test]
    fn trim_frees_exactly_the_chunks_with_no_slot_in_use() {
        let p = pool();
        let per_chunk = chunk_len(32 << 10) / (32 << 10);
        assert_eq!(per_chunk, 8);
        // One chunk and one slot of a second.
        let mut blocks: Vec<Block> = (0..=per_chunk).map(|_| p.alloc(32 << 10).unwrap()).collect();
        let last = blocks.pop().unwrap();
        let second = last.slot().chunk_id();
        assert!(blocks.iter().all(|b| b.slot().chunk_id() != second));
        assert_eq!(p.trim(), 0, "every chunk has a slot in use");
        drop(blocks);
        assert_eq!(p.trim(), 1, "the first chunk is unused now");
        assert_eq!(p.trim(), 0);
        // The free list holds the second chunk's other slots only.
        let again = p.alloc(32 << 10).unwrap();
        assert_eq!(again.slot().chunk_id(), second);
        drop(again);
        drop(last);
        assert_eq!(p.trim(), 1);
        assert!(p.shared.free.iter().all(|f| f.lock().unwrap().is_empty()));
        // And the pool still allocates afterwards.
        assert_eq!(p.alloc(100).unwrap().len(), 100);
    }
}
