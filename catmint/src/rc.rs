//! A connected RC endpoint: message-preserving sends and receives with
//! credit-based flow control.
//!
//! Framing is the immediate data of each send (see `wire`).
//!
//! Flow control: the peer may send one data segment per credit we granted
//! it; receives come from the device's shared receive queue, which grants
//! credits only for receives it has posted (see `srq` for the invariant and
//! how windows grow and shrink). Credits granted are reported in the
//! immediate data of our next segment, or, if we have nothing to send (or
//! are starved ourselves), in an empty CREDIT message that uses one of the
//! two receives reserved for the connection. At most one CREDIT message is
//! outstanding: the peer acknowledges it (ACK flag) after re-posting the
//! receive it used. The other reserved receive takes the FIN of an orderly
//! close. So a sender never sends into a peer without a posted receive.

mod receive;

use crate::pool::{Block, Pool};
use crate::recv::{registered, Msg};
use crate::srq::{lock, SrqCell, INITIAL, RESERVED};
use crate::sys::cm::CmId;
use crate::sys::qp::{is_send, CqCell, Qp, QpKind, Send, SendData};
use crate::sys::verbs::{Completion, Pd};
use crate::sys::{Error, Result};
use crate::types::{Done, Payload, Sink, Tag};
use crate::wire::{flag, Hello, Imm, MAX_MESSAGE};
use std::collections::VecDeque;
use std::sync::Arc;

/// Local ACK timeout exponent: 4.096 µs x 2^14 = 67 ms before a lost packet
/// is retransmitted (rdma_cm's RoCE default waits about 2 s).
const ACK_TIMEOUT: u8 = 14;

/// Tunables of an endpoint.
#[derive(Clone, Copy, Debug)]
pub struct RcConfig {
    pub credits: u32,
    pub buf_size: usize,
    pub sq_depth: u32,
    pub inline: u32,
}

struct Pending {
    tag: Tag,
    /// Shared with the inflight entries of the segments already posted, so a
    /// cancelled message stays alive until the device is done with it.
    data: Arc<dyn Payload>,
    off: usize,
}

/// One connected (or connecting) RC queue pair.
pub struct Rc {
    /// The QP; per posted send, the push it finishes (its last segment),
    /// if any. An Option only so that drop can destroy it first.
    qp: Option<Qp<Option<Tag>>>,
    pub dev: usize,
    key: u64,
    cfg: RcConfig,
    pool: Pool,
    // Receive side.
    srq: Arc<SrqCell>,
    /// Data credits the peer may use (those in `to_return` included).
    granted: u32,
    /// Buffers lent to the application from this connection, not back yet.
    held: u32,
    /// The most of `granted + held` (grows and shrinks, see `srq`).
    window: u32,
    /// Receives still reserved for the peer's CREDIT and FIN messages.
    reserve: u32,
    /// Credits granted and not reported to the peer yet.
    to_return: u32,
    owe_ack: bool,
    partial: Option<(Block, usize)>,
    ready: VecDeque<Msg>,
    pops: VecDeque<Tag>,
    eof: bool,
    /// Shut for reading: pops end with end of file once `ready` is empty.
    rd_shut: bool,
    error: Option<i32>,
    // Send side.
    credits: u32,
    credit_msg_out: bool,
    fin_sent: bool,
    /// Shut for writing: a FIN goes once the queued sends are out; new sends fail.
    wr_shut: bool,
    peer_seg: usize,
    sends: VecDeque<Pending>,
}

impl Rc {
    /// Creates the QP on the id's device and pre-posts receives (before
    /// connect or accept, as rping does). On failure the id comes back
    /// without a QP: the caller must not destroy it before the event being
    /// handled is acknowledged (rdma_destroy_id would wait for that forever).
    #[allow(clippy::too_many_arguments)] // the device's objects, one by one
    pub fn new(
        id: CmId,
        dev: usize,
        pd: &Arc<Pd>,
        cq: &Arc<CqCell>,
        srq: &Arc<SrqCell>,
        pool: &Pool,
        cfg: RcConfig,
        key: u64,
    ) -> std::result::Result<Rc, (Error, CmId)> {
        let qp = {
            let q = lock(srq);
            Qp::create(id, QpKind::Rc { srq: q.queue() }, dev, pd, cq, cfg.sq_depth, cfg.inline, key)?
        };
        if let Err(e) = qp.id().set_ack_timeout(ACK_TIMEOUT) {
            log::warn!("catmint: {e}; keeping rdma_cm's ACK timeout");
        }
        if let Err(e) = lock(srq).join(qp.qpn(), key) {
            // The QP goes first; nothing was posted for it.
            let (id, _) = qp.close();
            return Err((e, id));
        }
        Ok(Rc {
            qp: Some(qp),
            dev,
            key,
            cfg,
            pool: pool.clone(),
            srq: srq.clone(),
            granted: INITIAL,
            held: 0,
            window: INITIAL,
            reserve: RESERVED,
            to_return: 0,
            owe_ack: false,
            partial: None,
            ready: VecDeque::new(),
            pops: VecDeque::new(),
            eof: false,
            rd_shut: false,
            error: None,
            credits: 0,
            credit_msg_out: false,
            fin_sent: false,
            wr_shut: false,
            peer_seg: 0,
            sends: VecDeque::new(),
        })
    }

    #[inline]
    fn qp(&self) -> &Qp<Option<Tag>> {
        self.qp.as_ref().expect("endpoint has its QP until dropped")
    }

    pub fn id(&self) -> &CmId {
        self.qp().id()
    }

    /// What we tell the peer in the CM private data.
    pub fn hello(&self) -> Hello {
        Hello { credits: INITIAL as u16, buf_size: self.cfg.buf_size as u32 }
    }

    /// Applies the peer's hello: initial credits and its segment size.
    pub fn established(&mut self, peer: Hello) {
        self.credits = peer.credits as u32;
        self.peer_seg = peer.buf_size as usize;
    }

    pub fn is_broken(&self) -> bool {
        self.error.is_some()
    }

    /// Sends a message: at once, inline, when it is small and nothing waits
    /// before it (the common case of a request or a reply); else queued.
    pub fn send<P: Payload + 'static>(&mut self, tag: Tag, data: P, out: &mut dyn Sink) {
        if let Some(e) = self.error {
            out.push((tag, Done::Failed(e)));
            return;
        }
        if self.fin_sent || self.wr_shut {
            out.push((tag, Done::Failed(libc::EPIPE)));
            return;
        }
        let len = data.bytes().len();
        if len > MAX_MESSAGE {
            out.push((tag, Done::Failed(libc::EMSGSIZE)));
            return;
        }
        if self.sends.is_empty() && self.can_post() && len as u32 <= self.qp().max_inline() && len <= self.peer_seg {
            // Inline: the post copies the bytes, so they need not be
            // registered or kept, and the push is done once posted.
            if let Err(e) = self.post_segment(SendData::Inline(data.bytes()), len, 0, len, None) {
                return self.fail_with(tag, e.errno, out);
            }
            out.push((tag, Done::Sent));
            self.maybe_credit_message();
            return;
        }
        // Memory the device cannot read is copied into registered memory once.
        let data = match registered(&self.pool, Arc::new(data), self.dev) {
            Ok(d) => d,
            Err(e) => {
                out.push((tag, Done::Failed(e.errno)));
                return;
            }
        };
        self.sends.push_back(Pending { tag, data, off: 0 });
        self.progress_sends(out);
    }

    /// Fails the connection with `errno`, and the push `tag` that found it.
    fn fail_with(&mut self, tag: Tag, errno: i32, out: &mut dyn Sink) {
        out.push((tag, Done::Failed(errno)));
        self.fail(errno, out);
    }

    /// Queues a pop.
    pub fn recv(&mut self, tag: Tag, out: &mut dyn Sink) {
        self.pops.push_back(tag);
        self.deliver(out);
    }

    /// True if a data segment may be posted now: a credit, send-queue room,
    /// and a healthy connection.
    fn can_post(&self) -> bool {
        self.error.is_none() && self.credits > 0 && self.sq_room()
    }

    /// Posts as many queued segments as credits and send-queue room allow.
    pub fn progress_sends(&mut self, out: &mut dyn Sink) {
        if !self.sends.is_empty() {
            log::trace!(
                "catmint: ep {:#x} sends: {} queued, {} credits, {} inflight, owe_ack {}",
                self.key,
                self.sends.len(),
                self.credits,
                self.qp().in_flight(),
                self.owe_ack
            );
        }
        while self.can_post() {
            let Some(p) = self.sends.front_mut() else { break };
            let total = p.data.bytes().len();
            let seg = (total - p.off).min(self.peer_seg);
            let last = p.off + seg == total;
            let (tag, off) = (p.tag, p.off);
            p.off += seg;
            // The last segment takes the message off the queue; the others
            // share its payload with the queue.
            let data = if last { self.sends.pop_front().expect("the front").data } else { p.data.clone() };
            // A whole message small enough to go inline is copied into the
            // work request by the post itself: its push is done then, it
            // needs no completion of its own, and the payload need not be
            // kept. Others complete when the device reports their last
            // segment sent; they were copied to registered memory when
            // queued, so they have a key.
            let inline = seg as u32 <= self.qp().max_inline() && off == 0 && last;
            let posted = if inline {
                self.post_segment(SendData::Inline(data.bytes()), seg, off, total, None)
            } else {
                let lkey = data.lkey(&self.pool, self.dev).unwrap_or(0);
                let kept = SendData::Kept { data, range: off..off + seg, lkey };
                self.post_segment(kept, seg, off, total, last.then_some(tag))
            };
            if let Err(e) = posted {
                if last {
                    // Off the queue already: `fail` would not see it.
                    out.push((tag, Done::Failed(e.errno)));
                }
                self.fail(e.errno, out);
                return;
            }
            if inline {
                out.push((tag, Done::Sent));
            }
        }
        if self.wr_shut && !self.fin_sent && self.sends.is_empty() {
            self.send_fin();
        }
        self.maybe_credit_message();
    }

    /// Posts the segment at `off` (`seg` bytes) of a `total`-byte message
    /// and spends a credit. A kept segment (registered memory) is signaled
    /// if it is the last, and then finishes the push `tag`; an inline one
    /// is completed by the caller.
    fn post_segment(
        &mut self,
        data: SendData<'_>,
        seg: usize,
        off: usize,
        total: usize,
        tag: Option<Tag>,
    ) -> Result<()> {
        let first_of_many = off == 0 && total > self.peer_seg;
        let last = off + seg == total;
        // An ACK we owe goes out now whatever the segment: the peer may
        // wait for it before it returns the credits we need for the next.
        let ack = std::mem::take(&mut self.owe_ack);
        let imm = if first_of_many {
            Imm::First { total: total as u32, ack }
        } else {
            let flags = if last { flag::LAST } else { 0 } | if ack { flag::ACK } else { 0 };
            Imm::Ctl { credits: self.take_returns(), flags }
        };
        let kept = matches!(data, SendData::Kept { .. });
        self.post_send(imm, data, kept && last, if kept { tag } else { None })?;
        self.credits -= 1;
        Ok(())
    }

    fn take_returns(&mut self) -> u16 {
        let n = self.to_return.min(u16::MAX as u32);
        self.to_return -= n;
        n as u16
    }

    fn sq_room(&self) -> bool {
        self.qp().has_room()
    }

    /// Posts one send: immediate data plus the payload, if any; `tag` is
    /// the push it finishes.
    fn post_send(&mut self, imm: Imm, data: SendData<'_>, signal_end: bool, tag: Option<Tag>) -> Result<()> {
        let qp = self.qp.as_mut().expect("endpoint has its QP until dropped");
        // Signal message ends, and what the send queue needs to drain.
        let signaled = signal_end || qp.signal_due();
        qp.post_send(Send { imm: Some(imm.encode()), data, signaled, ud: None }, tag)
    }

    /// Returns credits in an empty CREDIT message when they pile up and no data
    /// will carry them soon.
    fn maybe_credit_message(&mut self) {
        // A quarter of the window, or anything at all once the peer knows of
        // no more credits than we would return (it may be waiting for them).
        let known = self.granted.saturating_sub(self.to_return);
        let threshold = if known <= self.to_return { 1 } else { (self.window / 4).max(1) };
        let idle_or_starved = self.sends.is_empty() || self.credits == 0;
        // After our FIN only a half-closed endpoint still receives (the
        // peer keeps sending), so credits still go back.
        if self.error.is_some() || (self.fin_sent && !self.wr_shut) || self.credit_msg_out || self.peer_seg == 0 {
            return;
        }
        if self.to_return >= threshold && idle_or_starved && self.sq_room() {
            let mut flags = flag::CREDIT;
            if self.owe_ack {
                flags |= flag::ACK;
            }
            let credits = self.to_return.min(u16::MAX as u32) as u16;
            // Signaled after our FIN: nothing else would retire it, and a
            // close waits for every send to complete (`sends_drained`).
            match self.post_send(Imm::Ctl { credits, flags }, SendData::Empty, self.fin_sent, None) {
                Ok(()) => {
                    log::trace!("catmint: ep {:#x} returns {credits} credits in a CREDIT message", self.key);
                    self.to_return -= credits as u32;
                    self.owe_ack = false;
                    self.credit_msg_out = true;
                }
                Err(e) => log::warn!("catmint: ep {:#x}: CREDIT message: {e}", self.key),
            }
        }
    }

    /// Handles a send completion for this endpoint.
    pub fn on_completion(&mut self, c: &Completion, out: &mut dyn Sink) {
        if is_send(c.wr_id()) {
            let ok = c.ok();
            // A signaled completion also retires the unsignaled WRs before it.
            let qp = self.qp.as_mut().expect("endpoint has its QP until dropped");
            let ours = qp.retire(c, |tag| {
                if let Some(tag) = tag {
                    out.push((tag, if ok { Done::Sent } else { Done::Failed(libc::ECONNRESET) }));
                }
            });
            // A failed send of this connection ends it; a stale completion
            // of an earlier one under the same key does not.
            if ours && !ok {
                self.fail(libc::ECONNRESET, out);
            }
        }
        self.progress_sends(out);
        self.deliver(out);
    }

    /// Matches received messages with waiting pops.
    pub fn deliver(&mut self, out: &mut dyn Sink) {
        while let Some(&tag) = self.pops.front() {
            if let Some(msg) = self.ready.pop_front() {
                out.push((tag, Done::Received { msg: Some(msg), from: None }));
            } else if self.eof || self.rd_shut {
                out.push((tag, Done::Received { msg: None, from: None }));
            } else if let Some(e) = self.error {
                out.push((tag, Done::Failed(e)));
            } else {
                return;
            }
            self.pops.pop_front();
        }
    }

    /// The connection is gone (disconnect, fatal completion): fail what waits.
    pub fn fail(&mut self, errno: i32, out: &mut dyn Sink) {
        if self.error.is_none() {
            self.error = Some(errno);
        }
        for p in self.sends.drain(..) {
            out.push((p.tag, Done::Failed(errno)));
        }
        self.deliver(out);
    }

    /// The peer disconnected. Without a FIN first, that is a reset.
    pub fn disconnected(&mut self, out: &mut dyn Sink) {
        let errno = if self.eof { libc::EPIPE } else { libc::ECONNRESET };
        self.fail(errno, out);
        // Sends already posted will flush; fail them now rather than wait
        // (their memory stays held until the QP is gone).
        for tag in self.qp.iter_mut().flat_map(Qp::take_items) {
            out.push((tag, Done::Failed(libc::ECONNRESET)));
        }
    }

    /// Cancels everything the application still waits for (close).
    pub fn cancel(&mut self, out: &mut dyn Sink) {
        for p in self.sends.drain(..) {
            out.push((p.tag, Done::Failed(libc::ECANCELED)));
        }
        for tag in self.qp.iter_mut().flat_map(Qp::take_items) {
            out.push((tag, Done::Failed(libc::ECANCELED)));
        }
        for tag in self.pops.drain(..) {
            out.push((tag, Done::Failed(libc::ECANCELED)));
        }
    }

    /// Starts an orderly close: sends FIN if the connection is healthy.
    /// Returns true if a FIN is in flight (wait for it before disconnecting).
    pub fn send_fin(&mut self) -> bool {
        if self.error.is_some() || self.fin_sent || self.peer_seg == 0 || !self.sq_room() {
            return false;
        }
        let credits = self.take_returns();
        let flags = flag::FIN | if self.owe_ack { flag::ACK } else { 0 };
        self.fin_sent = self.post_send(Imm::Ctl { credits, flags }, SendData::Empty, true, None).is_ok();
        self.fin_sent
    }

    /// Shuts the write side (shutdown SHUT_WR): the FIN goes once the
    /// queued sends are out, the connection stays up, and this end still
    /// receives. Sends from now on fail with EPIPE.
    pub fn shutdown_write(&mut self, out: &mut dyn Sink) {
        self.wr_shut = true;
        self.progress_sends(out);
    }

    /// Shuts the read side (shutdown SHUT_RD): pops, pending or new, get
    /// what has arrived, then end of file.
    pub fn shutdown_read(&mut self, out: &mut dyn Sink) {
        self.rd_shut = true;
        self.deliver(out);
    }

    /// True if our FIN went out (a close or a shutdown of the write side).
    pub fn fin_sent(&self) -> bool {
        self.fin_sent
    }

    /// True once every posted send has completed.
    pub fn sends_drained(&self) -> bool {
        self.qp().in_flight() == 0
    }
}

impl Drop for Rc {
    fn drop(&mut self) {
        // Destroy the QP first so that no message of this connection takes
        // a shared receive any more, then give back what it had committed.
        let Some(qp) = self.qp.take() else { return };
        let qpn = qp.qpn();
        drop(qp);
        lock(&self.srq).leave(qpn, self.granted + self.reserve);
    }
}
