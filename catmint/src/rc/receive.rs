//! The receive side of an RC endpoint: completions from the device's shared
//! receive queue, framing, reassembly of segmented messages, and the credits
//! granted back to the peer (see `srq` for the rules).

use super::Rc;
use crate::recv::Msg;
use crate::srq::{lock, INITIAL};
use crate::sys::mem::Slot;
use crate::sys::verbs::Completion;
use crate::sys::Result;
use crate::types::Sink;
use crate::wire::{flag, Imm};

impl Rc {
    /// Gives a completed receive back to the SRQ (posted again or pooled).
    fn post_recv(&mut self, index: u32, slot: Slot) -> Result<()> {
        lock(&self.srq).repost(index, slot)
    }

    fn pool_back(&self, index: u32, slot: Slot) {
        let _ = lock(&self.srq).repost(index, slot);
    }

    /// Grants the peer what our window allows beyond its credits and the
    /// buffers the application holds. `used`: a credit was just used, so
    /// the window grows (shared budget permitting) or shrinks.
    fn refill(&mut self, used: bool) {
        let mut srq = lock(&self.srq);
        if used {
            if srq.may_grow() {
                self.window = (self.window + 1).min(self.cfg.credits.max(INITIAL));
            } else if self.window > INITIAL {
                self.window -= 1;
            }
        }
        let want = self.window.saturating_sub(self.granted + self.held);
        if want > 0 {
            let k = srq.grant(want, self.key);
            self.granted += k;
            self.to_return += k;
        }
    }

    /// A data credit was used by a segment that arrived.
    fn used_credit(&mut self, lent: bool) {
        self.granted = self.granted.saturating_sub(1);
        lock(&self.srq).release(1);
        self.held += lent as u32;
        self.refill(true);
    }

    /// A buffer lent from this connection came back (the SRQ re-posted it):
    /// grant what that frees, or what the SRQ could not post before.
    pub fn buffer_back(&mut self) {
        self.held = self.held.saturating_sub(1);
        self.refill(false);
    }

    /// The SRQ has buffers again for credits it could not grant before.
    pub fn buffer_back_none(&mut self) {
        self.refill(false);
    }

    /// Handles a receive completion from the SRQ for this endpoint: `slot`
    /// was posted at `index`.
    pub fn on_srq_recv(&mut self, index: u32, slot: Slot, c: &Completion, out: &mut dyn Sink) {
        if c.ok() {
            self.on_recv(index, slot, c.byte_len(), c.imm(), out);
        } else {
            self.pool_back(index, slot);
            self.fail(libc::ECONNRESET, out);
        }
        self.progress_sends(out);
        self.deliver(out);
    }

    fn on_recv(&mut self, index: u32, slot: Slot, len: usize, imm: Option<u32>, out: &mut dyn Sink) {
        let Some(imm) = imm.and_then(Imm::decode).filter(|_| len <= slot.capacity()) else {
            return self.protocol_error(
                index,
                slot,
                format_args!("a receive of {len} bytes with immediate {imm:x?}"),
                out,
            );
        };
        let (credits, flags) = match imm {
            Imm::First { total, ack } => {
                // A first segment is shorter than its message, and comes first.
                if self.partial.is_some() || len == 0 || len >= total as usize {
                    return self.protocol_error(
                        index,
                        slot,
                        format_args!("first segment of {len} of {total} bytes"),
                        out,
                    );
                }
                match self.pool.alloc(total as usize) {
                    Ok(b) => self.partial = Some((b, 0)),
                    Err(e) => {
                        self.pool_back(index, slot);
                        return self.fail(e.errno, out);
                    }
                }
                (0, if ack { flag::ACK } else { 0 })
            }
            Imm::Ctl { credits, flags } => (credits, flags),
        };
        self.credits += credits as u32;
        log::trace!(
            "catmint: ep {:#x} got {} B, {:?} (credits now {}); to_return {}",
            self.key,
            len,
            imm,
            self.credits,
            self.to_return
        );
        if flags & flag::ACK != 0 {
            self.credit_msg_out = false;
        }
        if flags & (flag::CREDIT | flag::FIN) != 0 {
            // Reserved receive: re-post at once, owe the peer nothing but an
            // ACK. A FIN's reserve is not needed again.
            if flags & flag::FIN != 0 {
                self.eof = true;
                self.reserve = self.reserve.saturating_sub(1);
                lock(&self.srq).release(1);
            } else {
                self.owe_ack = true;
            }
            if let Err(e) = self.post_recv(index, slot) {
                self.fail(e.errno, out);
            }
            self.maybe_credit_message();
            return;
        }
        let Some((block, filled)) = self.partial.as_mut() else {
            // The common case, a whole message in one receive: hand the
            // receive buffer itself to the application.
            if flags & flag::LAST == 0 || len == 0 {
                return self.protocol_error(
                    index,
                    slot,
                    format_args!("lone segment of {len} bytes, flags {flags:#x}"),
                    out,
                );
            }
            let lent = lock(&self.srq).lend(index, slot, len, self.key);
            match lent {
                Ok(msg) => self.ready.push_back(msg),
                Err(slot) => {
                    log::error!("catmint: ep {:#x}: receive {index} could not be lent", self.key);
                    self.pool_back(index, slot);
                    return self.fail(libc::EIO, out);
                }
            }
            return self.used_credit(true);
        };
        // A segment of a larger message: copy it out and re-post at once.
        if *filled + len > block.len() || (flags & flag::LAST != 0 && *filled + len != block.len()) {
            let msg = format!("segment of {len} bytes at {} of {}", *filled, block.len());
            return self.protocol_error(index, slot, format_args!("{msg}"), out);
        }
        // The device wrote `len` bytes into this slot, ours again.
        block.as_mut_slice()[*filled..*filled + len].copy_from_slice(&slot.bytes()[..len]);
        *filled += len;
        if let Err(e) = self.post_recv(index, slot) {
            return self.fail(e.errno, out);
        }
        self.used_credit(false);
        if flags & flag::LAST != 0 {
            let (block, _) = self.partial.take().expect("matched above");
            self.ready.push_back(Msg::Block(block));
        }
    }

    /// The peer sent something catmint would never send: close the connection.
    fn protocol_error(&mut self, index: u32, slot: Slot, what: std::fmt::Arguments<'_>, out: &mut dyn Sink) {
        log::error!("catmint: ep {:#x}: malformed receive ({what}); closing the connection", self.key);
        self.pool_back(index, slot);
        self.fail(libc::EPROTO, out);
    }
}
