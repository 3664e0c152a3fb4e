//! Buffers lent to C code, named by opaque handles in `sga_buf`.
//!
//! A handle is not a pointer: its top 16 bits carry a tag (which makes it a
//! non-canonical address on x86-64, so no real pointer looks like one), then
//! the 7-bit shard of the engine that lent it, a 21-bit generation and a
//! 20-bit slot index. A slot's generation changes each time its buffer comes
//! back, so a stale handle matches again only after 2M loans of that very
//! slot. `demi_sgafree` on anything that is not a live handle is refused with
//! EINVAL without touching memory.
//!
//! A table of its own rather than a slab: a slab forgets a vacant slot's
//! generation.

use crate::buffer::Buffer;
use crate::error::{fail, Result};

const TAG: u64 = 0xde31 << 48;
const TAG_MASK: u64 = 0xffff << 48;
const IDX_BITS: u32 = 20;
const IDX_MASK: u64 = (1 << IDX_BITS) - 1;
const GEN_MASK: u64 = (1 << 21) - 1;
const SHARD_SHIFT: u32 = 41;

struct Slot {
    generation: u64,
    buf: Option<Buffer>,
}

/// The buffers lent out, with a generation per slot.
pub struct HandleTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
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
        HandleTable { slots: Vec::new(), free: Vec::new(), tag: TAG | (shard as u64) << SHARD_SHIFT }
    }

    /// The shard a handle of this library names (it may still be stale).
    pub fn shard_of(h: u64) -> usize {
        ((h >> SHARD_SHIFT) as usize) & (super::MAX_SHARDS - 1)
    }

    /// True if `h` carries the library's tag (it may still be stale).
    pub fn is_ours(h: u64) -> bool {
        h & TAG_MASK == TAG
    }

    /// Lends `buf` to C; returns its handle (ENOMEM with 1M buffers out).
    pub fn insert(&mut self, buf: Buffer) -> Result<u64> {
        let idx = match self.free.pop() {
            Some(i) => i as usize,
            None if (self.slots.len() as u64) <= IDX_MASK => {
                self.slots.push(Slot { generation: 1, buf: None });
                self.slots.len() - 1
            }
            None => return fail(libc::ENOMEM, "too many buffers held by the application"),
        };
        let slot = &mut self.slots[idx];
        slot.buf = Some(buf);
        Ok(self.tag | (slot.generation << IDX_BITS) | idx as u64)
    }

    /// The slot of a live handle of this table.
    fn index(&self, h: u64) -> Option<usize> {
        if h & (TAG_MASK | (super::MAX_SHARDS as u64 - 1) << SHARD_SHIFT) != self.tag {
            return None;
        }
        let idx = (h & IDX_MASK) as usize;
        let generation = (h >> IDX_BITS) & GEN_MASK;
        let slot = self.slots.get(idx)?;
        (slot.generation == generation && slot.buf.is_some()).then_some(idx)
    }

    /// The buffer behind a live handle.
    pub fn get(&self, h: u64) -> Result<&Buffer> {
        match self.index(h) {
            Some(i) => Ok(self.slots[i].buf.as_ref().expect("checked by index")),
            None => fail(libc::EINVAL, "not a live scatter-gather array handle"),
        }
    }

    /// Takes a buffer back from C (demi_sgafree).
    pub fn remove(&mut self, h: u64) -> Result<Buffer> {
        let Some(i) = self.index(h) else {
            return fail(libc::EINVAL, "not a scatter-gather array this library handed out (or already freed)");
        };
        let slot = &mut self.slots[i];
        slot.generation = (slot.generation + 1) & GEN_MASK;
        if slot.generation == 0 {
            slot.generation = 1;
        }
        self.free.push(i as u32);
        Ok(slot.buf.take().expect("checked by index"))
    }

    /// Buffers currently lent out.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
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
    fn another_engines_handles_are_refused() {
        let (mut a, mut b) = (HandleTable::with_shard(1), HandleTable::with_shard(2));
        let ha = a.insert(Buffer::heap(8)).unwrap();
        let hb = b.insert(Buffer::heap(8)).unwrap();
        assert_eq!((HandleTable::shard_of(ha), HandleTable::shard_of(hb)), (1, 2));
        assert_eq!(b.get(ha).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(b.remove(ha).unwrap_err().errno(), libc::EINVAL);
        assert!(a.remove(ha).is_ok() && b.remove(hb).is_ok());
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
