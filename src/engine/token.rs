//! The token table: one slot per pending or finished-but-unclaimed operation.
//!
//! A token is `generation << 32 | shard tag | slot index` (the tag says
//! which thread's engine issued it: see [`super::shard_of_token`]; the
//! index has 24 bits). A slot's generation changes
//! each time it is freed, so a consumed, stale or forged token never matches a
//! live slot and is refused instead of answering for another operation.
//! Generations start at 1, so token 0 is never valid.

use crate::backend::OpId;
use std::collections::VecDeque;

/// What kind of operation a token stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// A push or pushto.
    Push,
    /// A pop.
    Pop,
    /// An accept.
    Accept,
    /// A connect.
    Connect,
}

enum State<T> {
    Free { next_free: u32 },
    Pending,
    Done(T),
}

struct Slot<T> {
    generation: u32,
    qd: i32,
    kind: OpKind,
    state: State<T>,
}

/// A finished operation, taken out of the table.
#[derive(Debug)]
pub struct Finished<T> {
    /// The token it was issued under.
    pub token: OpId,
    /// The descriptor it was issued on.
    pub qd: i32,
    /// What it was.
    pub kind: OpKind,
    /// How it ended.
    pub outcome: T,
}

const NONE: u32 = u32::MAX;

/// Slab of operation slots (holding outcomes of type `T`) plus the order in which they finished.
pub struct TokenTable<T> {
    slots: Vec<Slot<T>>,
    free_head: u32,
    /// Tokens in completion order, for `wait_next_n`. May hold tokens that a
    /// targeted wait already took; those are skipped.
    finished: VecDeque<OpId>,
    pending: usize,
    /// Slots in the Done state.
    done: usize,
    /// The shard tag, in the bits above the slot index.
    tag: u32,
}

/// Slots a table can hold: the index has the bits below the shard tag.
const MAX_SLOTS: usize = 1 << super::SHARD_SHIFT;

impl<T> Default for TokenTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> TokenTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        TokenTable { slots: Vec::new(), free_head: NONE, finished: VecDeque::new(), pending: 0, done: 0, tag: 0 }
    }

    /// An empty table whose tokens carry the tag of shard `shard`.
    pub fn with_shard(shard: usize) -> Self {
        TokenTable { tag: super::shard_tag(shard), ..Self::new() }
    }

    /// Slot index and generation of a token; a token of another shard gets
    /// an index past any slot.
    #[inline]
    fn split(&self, token: OpId) -> (usize, u32) {
        (((token as u32) ^ self.tag) as usize, (token >> 32) as u32)
    }

    /// Allocates a token for a new pending operation.
    #[inline]
    pub fn issue(&mut self, qd: i32, kind: OpKind) -> OpId {
        self.pending += 1;
        let idx = if self.free_head != NONE {
            let idx = self.free_head as usize;
            let slot = &mut self.slots[idx];
            if let State::Free { next_free } = slot.state {
                self.free_head = next_free;
            }
            slot.qd = qd;
            slot.kind = kind;
            slot.state = State::Pending;
            idx
        } else {
            assert!(self.slots.len() < MAX_SLOTS, "token table full: 16M operations pending");
            self.slots.push(Slot { generation: 1, qd, kind, state: State::Pending });
            self.slots.len() - 1
        };
        ((self.slots[idx].generation as u64) << 32) | (self.tag | idx as u32) as u64
    }

    #[inline]
    fn slot(&self, token: OpId) -> Option<&Slot<T>> {
        let (idx, generation) = self.split(token);
        self.slots.get(idx).filter(|s| s.generation == generation && !matches!(s.state, State::Free { .. }))
    }

    /// True if `token` names a pending or finished operation.
    #[inline]
    pub fn is_live(&self, token: OpId) -> bool {
        self.slot(token).is_some()
    }

    /// True if `token` names a finished operation that nobody has taken yet.
    pub fn is_done(&self, token: OpId) -> bool {
        matches!(self.slot(token), Some(Slot { state: State::Done(_), .. }))
    }

    /// The descriptor and kind of a live operation.
    pub fn describe(&self, token: OpId) -> Option<(i32, OpKind)> {
        self.slot(token).map(|s| (s.qd, s.kind))
    }

    /// Records the outcome of a pending operation. Returns false (and drops
    /// the outcome) if the token is not pending, which would be a backend bug.
    pub fn complete(&mut self, token: OpId, outcome: T) -> bool {
        let (idx, generation) = self.split(token);
        match self.slots.get_mut(idx) {
            Some(s) if s.generation == generation && matches!(s.state, State::Pending) => {
                s.state = State::Done(outcome);
                self.pending -= 1;
                self.done += 1;
                self.finished.push_back(token);
                true
            }
            _ => false,
        }
    }

    /// Completes a pending operation with the outcome `f` makes from its
    /// descriptor and kind, in one lookup. Returns false (and does not
    /// call `f`) if the token is not pending, which would be a backend bug.
    #[inline]
    pub fn complete_with(&mut self, token: OpId, f: impl FnOnce(i32, OpKind) -> T) -> bool {
        let (idx, generation) = self.split(token);
        match self.slots.get_mut(idx) {
            Some(s) if s.generation == generation && matches!(s.state, State::Pending) => {
                s.state = State::Done(f(s.qd, s.kind));
                self.pending -= 1;
                self.done += 1;
                self.finished.push_back(token);
                true
            }
            _ => false,
        }
    }

    /// Takes a finished operation out of the table, freeing its token.
    #[inline]
    pub fn take(&mut self, token: OpId) -> Option<Finished<T>> {
        let (idx, generation) = self.split(token);
        let slot = self.slots.get_mut(idx)?;
        if slot.generation != generation || !matches!(slot.state, State::Done(_)) {
            return None;
        }
        let state = std::mem::replace(&mut slot.state, State::Free { next_free: self.free_head });
        let (qd, kind) = (slot.qd, slot.kind);
        // Skip 0 on wrap-around so that no token is ever 0.
        slot.generation = slot.generation.wrapping_add(1).max(1);
        self.free_head = idx as u32;
        self.done -= 1;
        // Tokens taken by targeted waits linger in `finished`; drop them from
        // the front at once and compact now and then, so it stays bounded.
        if self.finished.front() == Some(&token) {
            self.finished.pop_front();
        } else if self.finished.len() > 64 && self.finished.len() > 2 * self.done {
            self.compact_finished();
        }
        let State::Done(outcome) = state else { unreachable!("checked above") };
        Some(Finished { token, qd, kind, outcome })
    }

    /// Drops the tokens that targeted waits took from `finished`.
    #[cold]
    fn compact_finished(&mut self) {
        let (slots, tag) = (&self.slots, self.tag);
        self.finished.retain(|&t| {
            let (i, g) = (((t as u32) ^ tag) as usize, (t >> 32) as u32);
            slots[i].generation == g && matches!(slots[i].state, State::Done(_))
        });
    }

    /// Takes the oldest finished operation that has not been taken yet.
    pub fn take_next(&mut self) -> Option<Finished<T>> {
        while let Some(token) = self.finished.pop_front() {
            if let Some(f) = self.take(token) {
                return Some(f);
            }
        }
        None
    }

    /// True if some finished operation waits to be taken.
    pub fn any_done(&mut self) -> bool {
        while let Some(&token) = self.finished.front() {
            if self.is_done(token) {
                return true;
            }
            self.finished.pop_front();
        }
        false
    }

    /// Length of the completion-order queue (for tests: it must stay bounded).
    pub fn finished_backlog(&self) -> usize {
        self.finished.len()
    }

    /// Operations still pending.
    pub fn pending(&self) -> usize {
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_consumed_once() {
        let mut t = TokenTable::<()>::new();
        let a = t.issue(3, OpKind::Push);
        assert_ne!(a, 0);
        assert!(t.take(a).is_none(), "pending tokens cannot be taken");
        assert!(t.complete(a, ()));
        assert!(!t.complete(a, ()), "double completion is refused");
        let f = t.take(a).unwrap();
        assert_eq!((f.qd, f.kind), (3, OpKind::Push));
        assert!(t.take(a).is_none());
        assert!(!t.is_live(a));
    }

    #[test]
    fn reused_slot_does_not_answer_for_old_token() {
        let mut t = TokenTable::<()>::new();
        let a = t.issue(1, OpKind::Pop);
        t.complete(a, ());
        t.take(a).unwrap();
        let b = t.issue(2, OpKind::Pop);
        assert_eq!(a & 0xffff_ffff, b & 0xffff_ffff, "slot is reused");
        assert_ne!(a, b);
        t.complete(b, ());
        assert!(t.take(a).is_none());
        assert!(t.take(b).is_some());
    }

    #[test]
    fn targeted_waits_do_not_grow_the_completion_queue() {
        let mut t = TokenTable::<()>::new();
        let keep = t.issue(0, OpKind::Pop);
        t.complete(keep, ());
        for _ in 0..10_000 {
            let a = t.issue(1, OpKind::Push);
            let b = t.issue(1, OpKind::Push);
            t.complete(a, ());
            t.complete(b, ());
            t.take(b).unwrap();
            t.take(a).unwrap();
        }
        assert!(t.finished_backlog() <= 66, "backlog {}", t.finished_backlog());
        assert_eq!(t.take_next().unwrap().token, keep);
    }

    #[test]
    fn forged_tokens_are_not_live() {
        let mut t = TokenTable::<()>::new();
        let a = t.issue(1, OpKind::Pop);
        for forged in [0, a + 1, a ^ (1 << 40), u64::MAX, a & 0xffff_ffff] {
            assert!(!t.is_live(forged), "{forged:#x}");
        }
    }

    #[test]
    fn take_next_follows_completion_order_and_skips_taken() {
        let mut t = TokenTable::<()>::new();
        let a = t.issue(1, OpKind::Pop);
        let b = t.issue(1, OpKind::Pop);
        let c = t.issue(1, OpKind::Pop);
        t.complete(c, ());
        t.complete(a, ());
        t.complete(b, ());
        t.take(a).unwrap();
        assert_eq!(t.take_next().unwrap().token, c);
        assert_eq!(t.take_next().unwrap().token, b);
        assert!(t.take_next().is_none());
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn another_shards_tokens_are_not_live() {
        let (mut a, mut b) = (TokenTable::<u8>::with_shard(1), TokenTable::<u8>::with_shard(2));
        let ta = a.issue(5, OpKind::Pop);
        let tb = b.issue(5, OpKind::Pop);
        assert_eq!((super::super::shard_of_token(ta), super::super::shard_of_token(tb)), (1, 2));
        assert!(!b.is_live(ta) && !a.is_live(tb));
        assert!(!b.complete(ta, 1), "a token of another shard completes nothing here");
        assert!(b.take(ta).is_none());
        assert!(a.complete(ta, 1) && a.take(ta).is_some());
    }
}
