//! Moving a [`Catmint`] forward: polling its CQs and its rdma_cm channel,
//! re-posting receive buffers the application gave back, checking deadlines,
//! and arming the one descriptor a waiter sleeps on.

use crate::srq::{self, lock, SrqCell};
use crate::sys::qp;
use crate::sys::verbs::Completion;
use crate::table::SockTable;
use crate::types::{Sink, SockId};
use crate::{Catmint, Device, Sock, CM_BATCH, CM_EVERY};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

impl Catmint {
    /// Moves everything forward without blocking; appends what finished.
    pub fn poll(&mut self, out: &mut dyn Sink) {
        // Read the CM channel after a sleep, and every CM_EVERY busy polls;
        // at the next poll again while it has more events than one poll
        // handles.
        if self.armed || self.cm_countdown == 0 {
            self.armed = false;
            self.cm_countdown = if self.poll_cm(out) { 0 } else { CM_EVERY };
        } else {
            self.cm_countdown -= 1;
        }
        // Sends progress where credits arrive (a completion) and credits
        // are returned where buffers come back (`repost_returns`): no sweep
        // over every connection.
        self.poll_cqs(out);
        self.notify.take(&mut self.returns);
        if !self.returns.is_empty() {
            self.repost_returns(out);
        }
        if self.timed > 0 {
            self.check_timers(out);
        } else if !self.timed_ids.is_empty() {
            // Nothing is timed: the ids left from timers that ended go.
            self.timed_ids.clear();
        }
        self.bury();
        self.trim_due |= self.socks.reclaim();
        if std::mem::take(&mut self.trim_due) {
            // Sockets went away: a shared receive queue no QP uses goes
            // (its buffers with it), then registered memory nobody uses.
            // The CQs are polled first, so that no completion of the old
            // queue waits there for a new one made under the same key.
            if self.devices.iter().any(Device::srq_unused) {
                self.poll_cqs(out);
            }
            for d in &mut self.devices {
                if d.srq_unused() {
                    d.srq = None;
                }
            }
            let n = self.pool.trim();
            if n > 0 {
                log::debug!("catmint: freed {n} registered chunks");
            }
        }
    }

    /// Re-posts the receive buffers the application gave back on the rings
    /// they came from; buffers of rings that are gone go to the pool.
    fn repost_returns(&mut self, out: &mut dyn Sink) {
        let mut returns = std::mem::take(&mut self.returns);
        let mut last: Option<SockId> = None;
        for r in returns.drain(..) {
            if let Some(dev) = srq::device_of(r.key()) {
                // A buffer of a shared receive queue: posted again there, and
                // the connection it came from may grant the peer more.
                let owner = self.devices.get(dev).and_then(|d| d.srq.as_ref()).and_then(|q| lock(q).returned(r));
                let s = owner.and_then(|k| self.socks.lookup(k));
                if last.is_some() && last != s {
                    self.progress(last, out);
                }
                last = None;
                if let Some(Sock::Connected(ep)) = s.and_then(|s| self.socks.get_mut(s)) {
                    ep.buffer_back();
                    last = s;
                }
                continue;
            }
            match self.socks.by_key_mut(r.key()) {
                Some(Sock::Dgram(ud)) => ud.returned(r),
                // Its ring is gone or closing: the slot goes to the pool with
                // the ring's last reference (RingShared's drop).
                _ => drop(r),
            }
        }
        self.progress(last, out);
        self.returns = returns;
        self.feed_hungry(out);
    }

    /// Grants credits to connections that the SRQ could not serve before.
    fn feed_hungry(&mut self, out: &mut dyn Sink) {
        for dev in 0..self.devices.len() {
            let hungry = match &self.devices[dev].srq {
                Some(q) if lock(q).has_hungry() => lock(q).take_hungry(),
                _ => continue,
            };
            for key in hungry {
                if let Some(Sock::Connected(ep)) = self.socks.by_key_mut(key) {
                    ep.buffer_back_none();
                    ep.progress_sends(out);
                }
            }
        }
    }

    /// Lets a connection whose buffers came back return its credits (in
    /// data or a CREDIT message) and post what they allow.
    fn progress(&mut self, s: Option<SockId>, out: &mut dyn Sink) {
        if let Some(Sock::Connected(ep)) = s.and_then(|s| self.socks.get_mut(s)) {
            ep.progress_sends(out);
        }
    }

    /// Drops what waited in the graveyard (its events are acknowledged).
    fn bury(&mut self) {
        if !self.graveyard.is_empty() {
            self.graveyard.clear();
            self.trim_due = true;
        }
    }

    /// Arms CQ notification; returns the descriptor to sleep on.
    pub fn arm(&mut self) -> RawFd {
        for d in &self.devices {
            let mut cq = d.cq.lock().unwrap_or_else(|e| e.into_inner());
            // QPs are created only by calls on this transport, and a thread
            // arms again before each sleep: one that sleeps now waits for
            // nothing on a QP created later.
            if d.has_qps() {
                cq.arm();
            } else {
                cq.quiesce();
            }
        }
        self.armed = true;
        self.epoll.fd()
    }

    /// Whether a waiter sleeps on the descriptor from [`Catmint::arm`]: set
    /// before arming, cleared when the last sleeper wakes. While it is set,
    /// work that appears outside `poll` (a receive buffer given back by
    /// another thread, a QP created on a device whose CQ was not armed) also
    /// makes the descriptor readable.
    pub fn set_sleeping(&mut self, sleeping: bool) {
        self.notify.set_sleeping(sleeping);
    }

    /// The earliest connect, accept or close deadline, if any: a sleeper must
    /// poll by then, since nothing else wakes it for a timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.timed == 0 {
            return None;
        }
        self.timed_ids.iter().filter_map(|&s| self.socks.get(s)?.deadline()).min()
    }

    /// A QP was created on device `dev`: if a waiter sleeps and the device's
    /// CQ was not armed (it had no QP when the waiter armed), arm it now so
    /// the new QP's completions wake the sleeper.
    pub(crate) fn arm_new_qp(&self, dev: usize) {
        if self.notify.is_sleeping() {
            self.devices[dev].cq.lock().unwrap_or_else(|e| e.into_inner()).arm_if_quiet();
        }
    }

    fn poll_cqs(&mut self, out: &mut dyn Sink) {
        // Disjoint fields, so that a CQ stays locked while its completions
        // go to the sockets (no clone of the CQ's Arc per poll).
        let Catmint { devices, wcs, socks, .. } = self;
        for dev in devices.iter_mut() {
            // A device without QPs has nothing to report once its CQ is
            // empty: skip it (a client uses one device of several).
            let unused = !dev.has_qps();
            if unused && dev.idle {
                continue;
            }
            dev.idle = unused;
            let mut cq = dev.cq.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                let done = cq.poll(wcs);
                for wc in done {
                    let key = qp::key_of(wc.wr_id());
                    if srq::device_of(key).is_some() {
                        Self::srq_completion(dev.srq.as_ref(), socks, wc, out);
                        continue;
                    }
                    let Some(s) = socks.lookup(key) else { continue };
                    match socks.get_mut(s) {
                        Some(Sock::Connected(ep) | Sock::Connecting { ep, .. } | Sock::Incoming { ep, .. }) => {
                            ep.on_completion(wc, out)
                        }
                        Some(Sock::Dgram(ud)) => ud.on_completion(wc, out),
                        // Whatever a closing endpoint reports was already cancelled.
                        Some(Sock::Closing { ep, .. }) => ep.on_completion(wc, &mut Vec::new()),
                        _ => {}
                    }
                }
                if done.len() < wcs.capacity() {
                    break;
                }
            }
        }
    }

    /// A receive completion of a device's SRQ: to the connection whose QP
    /// took it, or, if that one is gone, back to the SRQ.
    fn srq_completion(srq: Option<&Arc<SrqCell>>, socks: &mut SockTable<Sock>, wc: &Completion, out: &mut dyn Sink) {
        let Some(srq) = srq else { return };
        let (done, key) = {
            let mut q = lock(srq);
            (q.complete(wc), q.lookup(wc.qp_num()))
        };
        let Some((index, slot)) = done else { return };
        match key.and_then(|k| socks.by_key_mut(k)) {
            Some(Sock::Connected(ep) | Sock::Connecting { ep, .. } | Sock::Incoming { ep, .. }) => {
                ep.on_srq_recv(index, slot, wc, out)
            }
            Some(Sock::Closing { ep, .. }) => ep.on_srq_recv(index, slot, wc, &mut Vec::new()),
            _ => {
                let _ = lock(srq).repost(index, slot);
            }
        }
    }

    /// Handles up to CM_BATCH events of the CM channel; true if it stopped
    /// at the bound (more may wait). One event can cost milliseconds (a
    /// route resolved or a connection request creates a QP and registers
    /// and posts its receives): handling a whole connect storm's events in
    /// one poll kept the CQs unpolled meanwhile, so established connections
    /// stalled while others connected (a probe ping-pong saw 270 ms under
    /// TCG with 64 connects in flight; scripts/bench-conns).
    fn poll_cm(&mut self, out: &mut dyn Sink) -> bool {
        for _ in 0..CM_BATCH {
            let ev = match self.channel.next() {
                Ok(Some(ev)) => ev,
                Ok(None) => return false,
                Err(e) => {
                    log::error!("catmint: {e}");
                    return false;
                }
            };
            self.on_cm_event(&ev, out);
            drop(ev);
            // Only now may ids the event named be destroyed.
            self.bury();
        }
        true
    }
}
