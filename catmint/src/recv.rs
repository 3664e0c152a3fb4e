//! Receive buffers posted on a QP, shared by RC and UD endpoints: which
//! slot sits at which index, the ring where the application gives popped
//! buffers back, and re-posting them.

use crate::pool::{Block, Notify, Pool, Returned, RingReturn, Slot};
use crate::sys::{ffi, Error, Result};
use crate::Payload;
use std::sync::Arc;

/// Posted receive buffers of one QP.
pub struct RecvRing {
    posted: Vec<Option<Slot>>,
    ring: Arc<RingReturn>,
    pool: Pool,
    dev: usize,
    key: u64,
}

impl RecvRing {
    /// A ring of `depth` receives; `key` goes in the high half of wr_ids.
    pub fn new(pool: &Pool, notify: &Arc<Notify>, dev: usize, key: u64, depth: u32) -> RecvRing {
        RecvRing {
            posted: (0..depth).map(|_| None).collect(),
            ring: RingReturn::new(pool, notify, key),
            pool: pool.clone(),
            dev,
            key,
        }
    }

    /// Posts a fresh slot of `len` bytes at every index.
    pub fn fill(&mut self, qp: *mut ffi::ibv_qp, len: usize) -> Result<()> {
        for i in 0..self.posted.len() as u32 {
            let slot = self.pool.slot(len)?;
            self.post(qp, i, slot)?;
        }
        Ok(())
    }

    /// Posts `slot` at `index`; on failure the slot goes back to the pool.
    pub fn post(&mut self, qp: *mut ffi::ibv_qp, index: u32, slot: Slot) -> Result<()> {
        let mut sge =
            ffi::ibv_sge { addr: slot.ptr() as u64, length: slot.capacity() as u32, lkey: slot.lkey(self.dev) };
        let mut wr = ffi::ibv_recv_wr {
            wr_id: self.key << 32 | index as u64,
            next: std::ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
        };
        let mut bad = std::ptr::null_mut();
        // SAFETY: the caller's QP is live; the SGE is registered memory that
        // stays owned by `posted` until its completion hands it back.
        let rc = unsafe { ffi::ibv_post_recv(qp, &mut wr, &mut bad) };
        if rc != 0 {
            self.pool.recycle(slot);
            return Err(Error::new("ibv_post_recv", rc));
        }
        self.posted[index as usize] = Some(slot);
        Ok(())
    }

    /// The slot a receive completion at `index` filled.
    pub fn complete(&mut self, index: u32) -> Option<Slot> {
        self.posted.get_mut(index as usize).and_then(Option::take)
    }

    /// Lends the slot at `index` to the application as `off..off+len`; it
    /// comes back through the ring when dropped.
    pub fn lend(&self, slot: Slot, index: u32, off: usize, len: usize) -> Block {
        Block::received(slot, off, len, &self.ring, index)
    }

    /// True if `r` came from this ring.
    pub fn owns(&self, r: &Returned) -> bool {
        Arc::ptr_eq(&self.ring, &r.ring)
    }

    /// Re-posts a buffer the application gave back (or recycles it when
    /// `post` is false); returns true if it was re-posted.
    pub fn repost(&mut self, qp: *mut ffi::ibv_qp, r: Returned, post: bool) -> bool {
        debug_assert!(self.owns(&r));
        if !post {
            self.pool.recycle(r.slot);
            return false;
        }
        self.post(qp, r.index, r.slot).is_ok()
    }

    /// Gives a slot back to the pool.
    pub fn recycle(&self, slot: Slot) {
        self.pool.recycle(slot);
    }

    /// Tears down once the QP is destroyed: recycle posted slots; buffers the
    /// application still holds go to the pool when dropped.
    pub fn close(&mut self) {
        self.ring.close();
        for slot in self.posted.drain(..).flatten() {
            self.pool.recycle(slot);
        }
    }
}

/// Makes `data` sendable on device `dev`: registered memory as is, anything
/// else copied once into a pool block.
pub fn registered(pool: &Pool, data: Arc<dyn Payload>, dev: usize) -> Result<Arc<dyn Payload>> {
    if data.lkey(dev).is_some() {
        return Ok(data);
    }
    let mut b = pool.alloc(data.bytes().len())?;
    b.as_mut_slice().copy_from_slice(data.bytes());
    Ok(Arc::new(b))
}
