//! Registered memory: chunks registered with every device's PD, carved into
//! power-of-four size classes. A [`Block`] is one allocation; dropping it gives
//! the memory back to its home: the pool, or the receive ring of the endpoint
//! it came from (which re-posts it).

use crate::sys::{ffi, Result};
use crate::verbs::{Mr, Pd};
use std::alloc::Layout;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Memory registered with every PD.
pub struct Chunk {
    base: NonNull<u8>,
    layout: Layout,
    mrs: Vec<Mr>,
}

// SAFETY: the chunk owns its memory; access is coordinated by Slot ownership.
unsafe impl Send for Chunk {}
// SAFETY: as above.
unsafe impl Sync for Chunk {}

impl Chunk {
    fn new(len: usize, pds: &[Arc<Pd>]) -> Result<Arc<Chunk>> {
        let layout =
            Layout::from_size_align(len.max(1), 4096).map_err(|_| crate::Error::new("layout", libc::ENOMEM))?;
        // SAFETY: layout has a non-zero size.
        let base = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
            .ok_or(crate::Error::new("alloc", libc::ENOMEM))?;
        let mut chunk = Chunk { base, layout, mrs: Vec::with_capacity(pds.len()) };
        for pd in pds {
            // SAFETY: the memory lives until the chunk drops, after its MRs.
            chunk.mrs.push(unsafe { Mr::register(pd, base.as_ptr(), layout.size()) }?);
        }
        Ok(Arc::new(chunk))
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.mrs.clear();
        // SAFETY: allocated in Chunk::new with this layout; MRs are gone.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) };
    }
}

/// A piece of a chunk: raw registered memory with no home of its own.
pub struct Slot {
    ptr: NonNull<u8>,
    cap: usize,
    class: u8,
    chunk: Arc<Chunk>,
}

// SAFETY: a Slot is the only handle to its piece of memory.
unsafe impl Send for Slot {}
// SAFETY: as above.
unsafe impl Sync for Slot {}

impl Slot {
    /// Posts one receive into the whole of this slot as work request
    /// `wr_id`, through `post` (`ibv_post_recv` on a QP or
    /// `ibv_post_srq_recv` on a shared receive queue, given the request
    /// and the bad-request out-pointer); returns its verbs code. The
    /// caller keeps the slot until the receive's completion.
    pub(crate) fn post_recv(
        &self,
        dev: usize,
        wr_id: u64,
        post: impl FnOnce(&mut ffi::ibv_recv_wr, &mut *mut ffi::ibv_recv_wr) -> i32,
    ) -> i32 {
        let mut sge = ffi::ibv_sge { addr: self.ptr() as u64, length: self.capacity() as u32, lkey: self.lkey(dev) };
        let mut wr = ffi::ibv_recv_wr { wr_id, next: std::ptr::null_mut(), sg_list: &mut sge, num_sge: 1 };
        let mut bad = std::ptr::null_mut();
        post(&mut wr, &mut bad)
    }

    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The key of this memory for device `dev`.
    pub fn lkey(&self, dev: usize) -> u32 {
        self.chunk.mrs[dev].lkey()
    }
}

pub struct PoolShared {
    pds: Vec<Arc<Pd>>,
    free: Vec<Mutex<Vec<Slot>>>,
}

impl PoolShared {
    pub(crate) fn give_back(&self, slot: Slot) {
        if slot.class != DEDICATED {
            self.free[slot.class as usize].lock().unwrap_or_else(|e| e.into_inner()).push(slot);
        }
        // A dedicated chunk is freed with its last slot.
    }
}

/// The registered-memory allocator.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<PoolShared>,
}

impl Pool {
    /// A pool whose slots are registered on each protection domain in `pds` (one per device).
    pub fn new(pds: Vec<Arc<Pd>>) -> Pool {
        let free = CLASSES.iter().map(|_| Mutex::new(Vec::new())).collect();
        Pool { shared: Arc::new(PoolShared { pds, free }) }
    }

    /// A slot of at least `len` bytes.
    pub fn slot(&self, len: usize) -> Result<Slot> {
        let Some(class) = CLASSES.iter().position(|&c| c >= len) else {
            let chunk = Chunk::new(len, &self.shared.pds)?;
            return Ok(Slot { ptr: chunk.base, cap: len, class: DEDICATED, chunk });
        };
        let mut free = self.shared.free[class].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = free.pop() {
            return Ok(s);
        }
        // Carve a new chunk into slots of this class.
        let size = CLASSES[class];
        let chunk_len = chunk_len(size);
        let chunk = Chunk::new(chunk_len, &self.shared.pds)?;
        for i in 1..chunk_len / size {
            // SAFETY: i * size < chunk_len, inside the allocation.
            let ptr = unsafe { NonNull::new_unchecked(chunk.base.as_ptr().add(i * size)) };
            free.push(Slot { ptr, cap: size, class: class as u8, chunk: chunk.clone() });
        }
        Ok(Slot { ptr: chunk.base, cap: size, class: class as u8, chunk })
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
                *counts.entry(Arc::as_ptr(&s.chunk)).or_default() += 1;
            }
            counts.retain(|_, n| *n == per_chunk);
            if !counts.is_empty() {
                freed += counts.len();
                // Dropping the last slots drops the chunk (MRs first).
                free.retain(|s| !counts.contains_key(&Arc::as_ptr(&s.chunk)));
            }
        }
        freed
    }

    pub(crate) fn shared(&self) -> &Arc<PoolShared> {
        &self.shared
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
    efd: OwnedFd,
}

impl Notify {
    pub fn new() -> Result<Notify> {
        // SAFETY: eventfd has no pointer arguments.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(crate::Error::last("eventfd"));
        }
        Ok(Notify {
            pending: AtomicBool::new(false),
            returned: Mutex::new(Vec::new()),
            sleeping: AtomicBool::new(false),
            kicked: AtomicBool::new(false),
            // SAFETY: fd was just returned to us and is owned by nobody else.
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The descriptor that turns readable when a return must wake a sleeper.
    pub fn fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    pub(crate) fn push(&self, r: Returned) {
        self.returned.lock().unwrap_or_else(|e| e.into_inner()).push(r);
        // SeqCst pairs with `set_sleeping` then `take` on the waiter's side:
        // either the waiter's last poll sees `pending`, or we see `sleeping`.
        self.pending.store(true, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) && !self.kicked.swap(true, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: efd is our open eventfd; 8 bytes from a live u64.
            unsafe { libc::write(self.efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
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
            let mut buf = 0u64;
            // SAFETY: efd is our open, non-blocking eventfd; 8 bytes into a live u64.
            unsafe { libc::read(self.efd.as_raw_fd(), (&mut buf as *mut u64).cast(), 8) };
        }
        // A plain load first: the swap is a locked instruction, and most
        // polls find nothing.
        if self.pending.load(Ordering::SeqCst) && self.pending.swap(false, Ordering::SeqCst) {
            into.append(&mut self.returned.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

/// A receive buffer the application gave back, to be re-posted on the
/// ring it came from (if that ring is still open).
pub struct Returned {
    pub(crate) ring: Arc<crate::recv::RingShared>,
    pub(crate) index: u32,
}

/// One allocation of registered memory: bytes `off..off+len` of its slot.
pub struct Block {
    slot: Option<Slot>,
    off: usize,
    len: usize,
    pool: Arc<PoolShared>,
}

impl Block {
    fn slot(&self) -> &Slot {
        self.slot.as_ref().expect("a live block has its slot")
    }

    /// The first byte of the block.
    pub fn as_ptr(&self) -> *mut u8 {
        // SAFETY: off <= capacity by construction.
        unsafe { self.slot().ptr().add(self.off) }
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
        // SAFETY: off+len is inside the slot, which this block owns.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }

    /// The block's bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.len) }
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
        let start = self.as_ptr() as usize;
        let p = ptr as usize;
        p >= start && p.checked_add(len).is_some_and(|end| end <= start + self.len)
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
        let second = Arc::as_ptr(&last.slot().chunk);
        assert!(blocks.iter().all(|b| Arc::as_ptr(&b.slot().chunk) != second));
        assert_eq!(p.trim(), 0, "every chunk has a slot in use");
        drop(blocks);
        assert_eq!(p.trim(), 1, "the first chunk is unused now");
        assert_eq!(p.trim(), 0);
        // The free list holds the second chunk's other slots only.
        let again = p.alloc(32 << 10).unwrap();
        assert_eq!(Arc::as_ptr(&again.slot().chunk), second);
        drop(again);
        drop(last);
        assert_eq!(p.trim(), 1);
        assert!(p.shared.free.iter().all(|f| f.lock().unwrap().is_empty()));
        // And the pool still allocates afterwards.
        assert_eq!(p.alloc(100).unwrap().len(), 100);
    }
}
