//! The socket table of a [`Catmint`](crate::Catmint): slots named by a
//! [`SockId`] (the slot's index), each with a generation, so that a socket's
//! *key* names it and no later socket in the same slot.
//!
//! Keys travel where a stale one can come back after its socket is gone:
//! in work-request ids (a completion polled after close), in rdma_cm ids'
//! contexts (an event queued before close), in an SRQ's owner records and
//! in resolvers' owners. A key is `(generation & 0xff) << 24 | index`
//! ([`SockTable::key_of`]); [`SockTable::lookup`] refuses a key whose
//! generation is not the slot's current one.
//!
//! Only 8 bits of the generation go in a key, so a slot reused 256 times
//! accepts its first key again. A stale key does harm only while its
//! completion or event is still pending, so that one would have to outlive
//! 256 sockets in the same slot: unlikely, but not impossible, since the
//! most recently freed slot is reused first (a churn of short-lived sockets
//! cycles through one slot). The width is the keys' contract with the rest
//! of the crate (a wr_id carries the key in its upper 32 bits; the SRQs'
//! keys are `srq::key_of`), not a choice of this table.
//!
//! The last index, 0xff_ffff, is never a socket's: it is the SRQs' (see
//! `srq::key_of` and `srq::device_of`, which tell an SRQ's key by it), so the
//! table refuses a socket with EMFILE before reaching it.
//!
//! Sockets are worked on outside the table: [`SockTable::take`] moves one out
//! and [`SockTable::put_back`] returns it under the same id. A taken slot is
//! not reused until [`SockTable::reclaim`] finds it still empty, so a socket
//! being worked on never loses its id to one created meanwhile.
//!
//! Why not the `slab` crate, as the demi crate's backends use: a slab forgets
//! a vacant slot's generation, and cannot hold a slot reserved while its
//! socket is out (see README.md, "Dependencies").

use crate::sys::{Error, Result};
use crate::types::SockId;

/// Bits of a key that hold the index; the generation sits above them.
const IDX_BITS: u32 = 24;
/// The index bits of a key, and the index reserved for the SRQs' keys.
const IDX_MASK: u64 = (1 << IDX_BITS) - 1;

/// Slots with a generation each, a free list, and the delayed reclaim of
/// taken slots (see the module docs).
pub struct SockTable<T> {
    slots: Vec<Slot<T>>,
    /// Empty slots to reuse, the most recently freed last (popped first).
    free: Vec<SockId>,
    /// Slots emptied by `take`, for `reclaim` to look at.
    vacated: Vec<SockId>,
    /// The first index refused (EMFILE): the SRQs' index, or less in tests.
    limit: usize,
}

struct Slot<T> {
    /// Bumped on each insert; a key holds it (it wraps, see the module docs).
    generation: u8,
    entry: Option<T>,
}

impl<T> SockTable<T> {
    /// An empty table that refuses the SRQs' index and beyond.
    pub fn new() -> SockTable<T> {
        SockTable { slots: Vec::new(), free: Vec::new(), vacated: Vec::new(), limit: IDX_MASK as usize }
    }

    /// An empty table that hands out indices below `limit` only (a test of
    /// the EMFILE path without 16 million sockets).
    #[cfg(test)]
    fn with_limit(limit: usize) -> SockTable<T> {
        assert!(limit as u64 <= IDX_MASK, "index {IDX_MASK:#x} is the SRQs'");
        SockTable { limit, ..SockTable::new() }
    }

    /// Inserts what `make` returns, given the key of the slot it gets (so it
    /// can put the key in an rdma_cm id or a QP's work requests). EMFILE when
    /// every index is taken; an error of `make` is returned and leaves the
    /// slot free.
    pub fn insert_with(&mut self, make: impl FnOnce(u64) -> Result<T>) -> Result<SockId> {
        let s = match self.free.pop() {
            Some(s) => s,
            None if self.slots.len() < self.limit => {
                self.slots.push(Slot { generation: 0, entry: None });
                self.slots.len() - 1
            }
            None => return Err(Error::new("socket table", libc::EMFILE)),
        };
        let slot = &mut self.slots[s];
        slot.generation = slot.generation.wrapping_add(1);
        match make(self.key_of(s)) {
            Ok(entry) => {
                self.slots[s].entry = Some(entry);
                Ok(s)
            }
            Err(e) => {
                self.free.push(s);
                Err(e)
            }
        }
    }

    /// The key of slot `s` as its current socket's: index and generation.
    /// Panics if `s` was never handed out.
    pub fn key_of(&self, s: SockId) -> u64 {
        ((self.slots[s].generation as u64) << IDX_BITS) | s as u64
    }

    /// The socket a key names, if it is still the one the key was made for
    /// (in the table, not taken out, same generation).
    pub fn lookup(&self, key: u64) -> Option<SockId> {
        let s = (key & IDX_MASK) as usize;
        let slot = self.slots.get(s)?;
        (slot.entry.is_some() && slot.generation as u64 == (key >> IDX_BITS) & 0xff).then_some(s)
    }

    /// The socket with id `s`, unless it is absent or taken out.
    pub fn get(&self, s: SockId) -> Option<&T> {
        self.slots.get(s)?.entry.as_ref()
    }

    /// The socket with id `s`, unless it is absent or taken out.
    pub fn get_mut(&mut self, s: SockId) -> Option<&mut T> {
        self.slots.get_mut(s)?.entry.as_mut()
    }

    /// The socket a key names (see [`SockTable::lookup`]).
    pub fn by_key_mut(&mut self, key: u64) -> Option<&mut T> {
        let s = self.lookup(key)?;
        self.get_mut(s)
    }

    /// Takes a socket out of its slot. The slot is not reused until
    /// `reclaim` finds it still empty, so a socket being worked on (taken,
    /// then put back) never loses its id to one created meanwhile.
    pub fn take(&mut self, s: SockId) -> Option<T> {
        let entry = self.slots.get_mut(s)?.entry.take();
        if entry.is_some() {
            self.vacated.push(s);
        }
        entry
    }

    /// Re-inserts a socket taken with `take` under the same id (and key).
    /// Panics if `s` was never handed out.
    pub fn put_back(&mut self, s: SockId, entry: T) {
        self.slots[s].entry = Some(entry);
    }

    /// Frees the slots of sockets that were taken and not put back; true if
    /// it freed any. Called at the end of public calls, when no socket is
    /// being worked on.
    pub fn reclaim(&mut self) -> bool {
        let mut freed = false;
        for s in self.vacated.drain(..) {
            // A slot taken twice is listed twice.
            if self.slots[s].entry.is_none() && !self.free.contains(&s) {
                self.free.push(s);
                freed = true;
            }
        }
        freed
    }

    /// Every id handed out so far, with a socket or not (the tests' view
    /// of how many slots exist).
    #[cfg(test)]
    pub fn ids(&self) -> std::ops::Range<SockId> {
        0..self.slots.len()
    }

    /// The sockets in the table (not those taken out), in id order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (SockId, &T)> {
        self.slots.iter().enumerate().filter_map(|(s, slot)| Some((s, slot.entry.as_ref()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<T>(v: T) -> impl FnOnce(u64) -> Result<T> {
        move |_| Ok(v)
    }

    /// Takes `s` out and frees its slot: the next insert reuses it.
    fn vacate(t: &mut SockTable<u32>, s: SockId) {
        assert!(t.take(s).is_some());
        assert!(t.reclaim());
    }

    #[test]
    fn a_key_names_its_socket_and_make_sees_it() {
        let mut t = SockTable::new();
        let mut seen = 0;
        let s = t
            .insert_with(|key| {
                seen = key;
                Ok(7u32)
            })
            .unwrap();
        assert_eq!(seen, t.key_of(s));
        assert_eq!(t.lookup(seen), Some(s));
        assert_eq!(t.by_key_mut(seen), Some(&mut 7));
        // Upper bits (a wr_id's key is shifted down from it) are ignored.
        assert_eq!(t.lookup(seen | (0xab << 32)), Some(s));
    }

    #[test]
    fn stale_key_after_reuse_is_refused() {
        let mut t = SockTable::new();
        let a = t.insert_with(ok(1u32)).unwrap();
        let old = t.key_of(a);
        vacate(&mut t, a);
        assert_eq!(t.lookup(old), None, "freed slot");
        let b = t.insert_with(ok(2)).unwrap();
        assert_eq!(b, a, "the freed slot is reused");
        assert_eq!(t.lookup(old), None, "the old key must not reach the new socket");
        assert_eq!(t.by_key_mut(old), None);
        assert_eq!(t.lookup(t.key_of(b)), Some(b));
    }

    #[test]
    fn taken_socket_keeps_its_id_while_inserts_go_elsewhere() {
        let mut t = SockTable::new();
        let a = t.insert_with(ok(1u32)).unwrap();
        let key = t.key_of(a);
        assert_eq!(t.take(a), Some(1));
        // Out of its slot: not found by id or key, and its slot is not free.
        assert_eq!(t.get(a), None);
        assert_eq!(t.lookup(key), None);
        let b = t.insert_with(ok(2)).unwrap();
        assert_ne!(b, a);
        t.put_back(a, 3);
        assert_eq!(t.lookup(key), Some(a), "same id, same key");
        assert_eq!(t.get(a), Some(&3));
        assert!(!t.reclaim(), "nothing to free: the socket came back");
        let c = t.insert_with(ok(4)).unwrap();
        assert!(c != a && c != b);
    }

    #[test]
    fn reclaim_frees_only_slots_still_empty() {
        let mut t = SockTable::new();
        let a = t.insert_with(ok(1u32)).unwrap();
        let b = t.insert_with(ok(2)).unwrap();
        assert!(!t.reclaim(), "nothing taken");
        t.take(a);
        let back = t.take(b).unwrap();
        t.put_back(b, back);
        // b was taken twice: listed twice, freed at most once.
        t.take(a);
        assert!(t.reclaim());
        assert_eq!(t.get(b), Some(&2));
        assert_eq!(t.insert_with(ok(3)).unwrap(), a);
        let next = t.insert_with(ok(4)).unwrap();
        assert!(next != a && next != b, "a was freed once, b not at all");
        assert!(!t.reclaim());
    }

    #[test]
    fn a_slot_taken_twice_is_freed_once() {
        let mut t = SockTable::new();
        let a = t.insert_with(ok(1u32)).unwrap();
        let v = t.take(a).unwrap();
        t.put_back(a, v);
        t.take(a);
        assert!(t.reclaim());
        assert_eq!(t.insert_with(ok(2)).unwrap(), a);
        assert_ne!(t.insert_with(ok(3)).unwrap(), a, "one slot, two sockets");
    }

    #[test]
    fn failed_make_leaves_the_slot_free() {
        let mut t = SockTable::<u32>::new();
        let mut key = 0;
        let e = t
            .insert_with(|k| {
                key = k;
                Err(Error::new("make", libc::ENOMEM))
            })
            .unwrap_err();
        assert_eq!(e.errno, libc::ENOMEM);
        assert_eq!(t.lookup(key), None);
        assert_eq!(t.iter().count(), 0);
        let s = t.insert_with(ok(1)).unwrap();
        assert_eq!(s, (key & IDX_MASK) as usize, "same slot");
        assert_eq!(t.lookup(key), None, "a new generation");
    }

    #[test]
    fn emfile_at_the_index_limit() {
        let mut t = SockTable::with_limit(2);
        let a = t.insert_with(ok(1u32)).unwrap();
        t.insert_with(ok(2)).unwrap();
        let mut called = false;
        let e = t
            .insert_with(|_| {
                called = true;
                Ok(3)
            })
            .unwrap_err();
        assert_eq!(e.errno, libc::EMFILE);
        assert!(!called, "nothing is made without a slot");
        assert_eq!(t.ids(), 0..2, "a refused insert takes no slot");
        // A taken slot is still in use until reclaimed.
        t.take(a);
        assert_eq!(t.insert_with(ok(3)).unwrap_err().errno, libc::EMFILE);
        t.reclaim();
        assert_eq!(t.insert_with(ok(3)).unwrap(), a);
    }

    #[test]
    fn srq_keys_sit_at_the_first_refused_index() {
        let t = SockTable::<u32>::new();
        for dev in [0, 1, 255] {
            assert_eq!((crate::srq::key_of(dev) & IDX_MASK) as usize, t.limit);
        }
        // The highest socket key of any generation is not an SRQ's.
        assert_eq!(crate::srq::device_of((0xff << IDX_BITS) | (t.limit as u64 - 1)), None);
    }

    #[test]
    fn generation_wraps_after_256_reuses() {
        let mut t = SockTable::new();
        let s = t.insert_with(ok(0u32)).unwrap();
        let first = t.key_of(s);
        let mut keys = vec![first];
        for n in 1..256u32 {
            vacate(&mut t, s);
            assert_eq!(t.insert_with(ok(n)).unwrap(), s);
            let key = t.key_of(s);
            assert!(!keys.contains(&key), "reuse {n} repeats a key");
            for &old in &keys {
                assert_eq!(t.lookup(old), None, "reuse {n}: key {old:#x} is stale");
            }
            keys.push(key);
        }
        // The 256th reuse wraps to the first key's generation: an 8-bit key
        // that old names the new socket (the documented limit).
        vacate(&mut t, s);
        t.insert_with(ok(256)).unwrap();
        assert_eq!(t.key_of(s), first);
        assert_eq!(t.lookup(first), Some(s));
    }

    #[test]
    fn iter_and_ids_skip_nothing_but_empty_slots() {
        let mut t = SockTable::new();
        let a = t.insert_with(ok(1u32)).unwrap();
        let b = t.insert_with(ok(2)).unwrap();
        let c = t.insert_with(ok(3)).unwrap();
        t.take(b);
        assert_eq!(t.iter().collect::<Vec<_>>(), [(a, &1), (c, &3)]);
        assert_eq!(t.ids(), 0..3);
    }
}
