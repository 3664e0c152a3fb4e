//! What a receive hands the caller, and making a payload sendable.
//!
//! A message that fit in one receive is the receive slot itself, lent
//! without a copy or an allocation (`sys::lend`); one that spanned several
//! receives is assembled in a pool block.

use crate::pool::{Block, Pool};
use crate::sys::lend::Lent;
use crate::sys::Result;
use crate::types::Payload;
use std::sync::Arc;

/// A received message: lent from a receive ring (the common case: a
/// message that fit in one receive), or assembled in pool memory.
pub enum Msg {
    /// It fit in one receive: the receive slot itself, lent until dropped.
    Lent(Lent),
    /// It spanned several receives: assembled in a pool block.
    Block(Block),
}

impl Msg {
    /// The message's bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Msg::Lent(l) => l.as_slice(),
            Msg::Block(b) => b.as_slice(),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// True if the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Makes `data` sendable on device `dev`: registered memory as is, anything
/// else copied once into a pool block.
pub fn registered(pool: &Pool, data: Arc<dyn Payload>, dev: usize) -> Result<Arc<dyn Payload>> {
    if data.lkey(pool, dev).is_some() {
        return Ok(data);
    }
    let mut b = pool.alloc(data.bytes().len())?;
    b.as_mut_slice().copy_from_slice(data.bytes());
    Ok(Arc::new(b))
}
