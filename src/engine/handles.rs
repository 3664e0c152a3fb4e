//! Buffers lent to C code, named by opaque handles in `sga_buf`.
//!
//! A handle is not a pointer: its top 16 bits carry a tag (which makes it a
//! non-canonical address on x86-64, so no real pointer looks like one), then
//! the 7-bit shard of the engine that lent it, a 17-bit generation and a
//! 24-bit slot index. `demi_sgafree` on anything that is
//! not a live handle is refused with EINVAL without touching memory.

use crate::buffer::Buffer;
use crate::error::{fail, Result};
use slab::Slab;

const TAG: u64 = 0xde31 << 48;
const TAG_MASK: u64 = 0xffff << 48;
const IDX_BITS: u32 = 24;
const IDX_MASK: u64 = (1 << IDX_BITS) - 1;
const GEN_MASK: u64 = (1 << 17) - 1;
const SHARD_SHIFT: u32 = 41;

/// Slab of lent buffers, each with the generation it was lent under.
pub struct HandleTable {
    lent: Slab<(u64, Buffer)>,
    /// The generation of the next buffer lent (never 0): a stale handle's
    /// slot holds a later one.
    next_generation: u64,
    /// `TAG` plus this engine's shard.
    tag: u64,
}

impl Default for HandleTable {
    /// The table of shard 0.
    fn default() -> Self {
        Self::with_shard(0)
    }
}

impl HandleTable {
    /// An empty table whose handles name shard `shard`.
    pub fn with_shard(shard: usize) -> Self {
        HandleTable { lent: Slab::new(), next_generation: 1, tag: TAG | (shard as u64) << SHARD_SHIFT }
    }

    /// The shard a handle of this library names (it may still be stale).
    pub fn shard_of(h: u64) -> usize {
        ((h >> SHARD_SHIFT) as usize) & (super::MAX_SHARDS - 1)
    }

    /// True if `h` carries the library's tag (it may still be stale).
    pub fn is_ours(h: u64) -> bool {
        h & TAG_MASK == TAG
    }

    /// Lends `buf` to C; returns its handle.
    pub fn insert(&mut self, buf: Buffer) -> Result<u64> {
        let slot = self.lent.vacant_entry();
        let idx = slot.key() as u64;
        if idx > IDX_MASK {
            return fail(libc::ENOMEM, "too many buffers held by the application");
        }
        let generation = self.next_generation;
        self.next_generation = (generation + 1) & GEN_MASK;
        if self.next_generation == 0 {
            self.next_generation = 1;
        }
        slot.insert((generation, buf));
        Ok(self.tag | (generation << IDX_BITS) | idx)
    }

    /// The slot of a live handle of this table.
    fn index(&self, h: u64) -> Option<usize> {
        if h & (TAG_MASK | (super::MAX_SHARDS as u64 - 1) << SHARD_SHIFT) != self.tag {
            return None;
        }
        let idx = (h & IDX_MASK) as usize;
        let generation = (h >> IDX_BITS) & GEN_MASK;
        matches!(self.lent.get(idx), Some((g, _)) if *g == generation).then_some(idx)
    }

    /// The buffer behind a live handle.
    pub fn get(&self, h: u64) -> Result<&Buffer> {
        match self.index(h) {
            Some(i) => Ok(&self.lent[i].1),
            None => fail(libc::EINVAL, "not a live scatter-gather array handle"),
        }
    }

    /// Takes a buffer back from C (demi_sgafree).
    pub fn remove(&mut self, h: u64) -> Result<Buffer> {
        match self.index(h) {
            Some(i) => Ok(self.lent.remove(i).1),
            None => fail(libc::EINVAL, "not a scatter-gather array this library handed out (or already freed)"),
        }
    }

    /// Buffers currently lent out.
    pub fn len(&self) -> usize {
        self.lent.len()
    }

    /// True when no buffer is lent out.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_tagged_and_single_use() {
        let mut t = HandleTable::default();
        let h = t.insert(Buffer::heap(8)).unwrap();
        assert!(HandleTable::is_ours(h));
        assert!(h >= 1 << 63, "handle must not look like a user-space pointer");
        assert_eq!(t.get(h).unwrap().len(), 8);
        t.remove(h).unwrap();
        assert_eq!(t.remove(h).unwrap_err().errno(), libc::EINVAL, "double free refused");
        let h2 = t.insert(Buffer::heap(4)).unwrap();
        assert_ne!(h, h2, "a reused slot gets a new generation");
        assert!(t.get(h).is_err());
    }

    #[test]
    fn foreign_values_are_refused() {
        let mut t = HandleTable::default();
        let local = 5u8;
        for h in [0u64, &local as *const u8 as u64, TAG, TAG | 12345, u64::MAX] {
            assert!(t.remove(h).is_err(), "{h:#x}");
        }
    }
}
