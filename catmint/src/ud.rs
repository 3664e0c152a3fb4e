//! A datagram socket over a UD queue pair (rdma_cm's UDP port space).
//!
//! Destinations are resolved through rdma_cm (a short-lived id per
//! destination does address and route resolution and a SIDR exchange with the
//! peer's socket, which answers with its QP number); the resulting address
//! handle is cached per destination. Each datagram carries an 8-byte header
//! with the sender's IPv4 address and port, since UD itself carries neither.

use crate::pool::Pool;
use crate::recv::{registered, Msg};
use crate::sys::cm::CmId;
use crate::sys::lend::{Notify, Returned, RingShared};
use crate::sys::mem::Slot;
use crate::sys::qp::{is_send, CqCell, Dest, Qp, QpKind, Send, SendData};
use crate::sys::verbs::{Ah, Completion, Context, Pd};
use crate::sys::{ffi, Error, Result};
use crate::types::{Done, Payload, Sink, Tag};
use crate::wire::UdHeader;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddrV4;
use std::sync::Arc;

/// The Global Routing Header the device writes in front of every UD receive.
const GRH_LEN: usize = 40;
pub use crate::wire::UD_HDR_LEN;

/// A destination as far as we know it.
pub enum Peer {
    /// Being resolved by the resolver socket `resolver`; sends wait here.
    Resolving { resolver: usize, queue: VecDeque<(Tag, Arc<dyn Payload>)> },
    /// Resolved: its address handle (kept by the QP), QP number and Q_Key.
    Ready { dest: Dest, qpn: u32, qkey: u32 },
}

/// Hashes destination addresses for the peer table, which every send
/// looks up: SipHash cost more than the rest of a send's bookkeeping. The
/// keys are destinations this program chose, not input from the network,
/// so a hash without flooding resistance does no harm here.
#[derive(Default)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }

    fn write_u64(&mut self, v: u64) {
        // A multiply-rotate step (odd constant from the golden ratio).
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }

    fn write_u16(&mut self, v: u16) {
        self.write_u64(v as u64);
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One UD socket with its QP.
pub struct Ud {
    /// The QP; per posted send, the push it finishes (None once cancelled,
    /// or for inline sends, done when posted). An Option only so that drop
    /// can close it.
    qp: Option<Qp<Option<Tag>>>,
    pub dev: usize,
    pd: Arc<Pd>,
    pool: Pool,
    pub local: SocketAddrV4,
    /// Largest payload a datagram may carry (path MTU less our header).
    pub max_payload: usize,
    /// Lends received datagrams to the application.
    ring: Arc<RingShared>,
    ready: VecDeque<(Msg, SocketAddrV4)>,
    pops: VecDeque<Tag>,
    pub peers: HashMap<SocketAddrV4, Peer, BuildHasherDefault<AddrHasher>>,
    /// Our header, the same on every datagram (the bound address).
    header: [u8; UD_HDR_LEN],
    /// Datagrams dropped because they were malformed.
    pub dropped: u64,
}

#[allow(clippy::too_many_arguments)]
impl Ud {
    /// Creates the QP on a bound id and posts receives.
    pub fn new(
        id: CmId,
        dev: usize,
        ctx: &Context,
        pd: &Arc<Pd>,
        cq: &Arc<CqCell>,
        pool: &Pool,
        depth: u32,
        sq_depth: u32,
        inline: u32,
        key: u64,
        notify: &Arc<Notify>,
    ) -> Result<Ud> {
        let local = id.local_addr().ok_or(Error::new("ud: unbound id", libc::EINVAL))?;
        let mtu = ctx.port_mtu(id.port_num());
        let prefixes = pool.slot(sq_depth as usize * UD_HDR_LEN)?;
        let kind = QpKind::Ud { depth, prefix: UD_HDR_LEN, prefixes };
        let qp = Qp::create(id, kind, dev, pd, cq, sq_depth, inline, key).map_err(|(e, _)| e)?;
        let mut ud = Ud {
            qp: Some(qp),
            dev,
            pd: pd.clone(),
            pool: pool.clone(),
            local,
            max_payload: mtu - UD_HDR_LEN,
            ring: RingShared::new(pool, notify, key, depth),
            ready: VecDeque::new(),
            pops: VecDeque::new(),
            peers: HashMap::default(),
            header: UdHeader { from: local }.emit(),
            dropped: 0,
        };
        for index in 0..depth {
            let slot = ud.pool.slot(GRH_LEN + mtu)?;
            ud.post_recv(index, slot)?;
        }
        Ok(ud)
    }

    #[inline]
    fn qp(&mut self) -> &mut Qp<Option<Tag>> {
        self.qp.as_mut().expect("socket has its QP until dropped")
    }

    /// Our QP number, for SIDR replies.
    pub fn qpn(&self) -> u32 {
        self.qp.as_ref().expect("socket has its QP until dropped").qpn()
    }

    /// Posts a receive into `slot` at `index`; on failure the slot goes back to the pool.
    fn post_recv(&mut self, index: u32, slot: Slot) -> Result<()> {
        self.qp().post_recv(index, slot).map_err(|(e, slot)| {
            self.pool.recycle(slot);
            e
        })
    }

    /// Sends (or queues until `to` is resolved). Returns true if the caller
    /// must start resolving `to`.
    pub fn send<P: Payload + 'static>(&mut self, tag: Tag, data: P, to: SocketAddrV4, out: &mut dyn Sink) -> bool {
        let len = data.bytes().len();
        if len > self.max_payload {
            out.push((tag, Done::Failed(libc::EMSGSIZE)));
            return false;
        }
        if (UD_HDR_LEN + len) as u32 <= self.qp().max_inline() {
            if let Some(&Peer::Ready { dest, qpn, qkey }) = self.peers.get(&to) {
                // Inline: copied by the post, so neither registered nor kept.
                self.post(tag, SendData::Inline(data.bytes()), (dest, qpn, qkey), out);
                return false;
            }
        }
        let data = match registered(&self.pool, Arc::new(data), self.dev) {
            Ok(d) => d,
            Err(e) => {
                out.push((tag, Done::Failed(e.errno)));
                return false;
            }
        };
        match self.peers.get_mut(&to) {
            Some(Peer::Ready { .. }) => {
                self.post_kept(tag, data, to, out);
                false
            }
            Some(Peer::Resolving { queue, .. }) => {
                queue.push_back((tag, data));
                false
            }
            None => {
                let mut queue = VecDeque::new();
                queue.push_back((tag, data));
                self.peers.insert(to, Peer::Resolving { resolver: usize::MAX, queue });
                true
            }
        }
    }

    /// Posts a registered payload and keeps it until the device is done with it.
    fn post_kept(&mut self, tag: Tag, data: Arc<dyn Payload>, to: SocketAddrV4, out: &mut dyn Sink) {
        let Some(&Peer::Ready { dest, qpn, qkey }) = self.peers.get(&to) else { return };
        let lkey = data.lkey(&self.pool, self.dev).unwrap_or(0);
        let range = 0..data.bytes().len();
        self.post(tag, SendData::Kept { data, range, lkey }, (dest, qpn, qkey), out);
    }

    /// Posts one datagram to a resolved destination (its address handle,
    /// QP number and Q_Key), behind our header. Kept data completes with
    /// its send; inline data is copied by the post and done at once.
    fn post(&mut self, tag: Tag, data: SendData<'_>, (dest, qpn, qkey): (Dest, u32, u32), out: &mut dyn Sink) {
        let header = self.header;
        let qp = self.qp();
        let inline = matches!(data, SendData::Inline(_));
        // Signal kept sends (their push completes with them), and what the
        // send queue needs to drain.
        let signaled = !inline || qp.signal_due();
        let send = Send { imm: None, data, signaled, ud: Some((&header[..], dest, qpn, qkey)) };
        // A full send queue fails the push with ENOBUFS: UD may drop, so do
        // we, loudly.
        match qp.post_send(send, (!inline).then_some(tag)) {
            Err(e) => out.push((tag, Done::Failed(e.errno))),
            Ok(()) if inline => out.push((tag, Done::Sent)),
            Ok(()) => {}
        }
    }

    /// A destination resolved: create its address handle and send what waited.
    pub fn resolved(&mut self, to: SocketAddrV4, mut param: ffi::rdma_ud_param, out: &mut dyn Sink) {
        let Some(Peer::Resolving { queue, .. }) = self.peers.remove(&to) else { return };
        match Ah::new(&self.pd, &mut param.ah_attr) {
            Ok(ah) => {
                let dest = self.qp().add_dest(ah);
                self.peers.insert(to, Peer::Ready { dest, qpn: param.qp_num, qkey: param.qkey });
                for (tag, data) in queue {
                    self.post_kept(tag, data, to, out);
                }
            }
            Err(e) => {
                for (tag, _) in queue {
                    out.push((tag, Done::Failed(e.errno)));
                }
            }
        }
    }

    /// Resolving `to` failed: fail what waited; a later send tries again.
    pub fn unresolved(&mut self, to: SocketAddrV4, errno: i32, out: &mut dyn Sink) {
        if let Some(Peer::Resolving { queue, .. }) = self.peers.remove(&to) {
            for (tag, _) in queue {
                out.push((tag, Done::Failed(errno)));
            }
        }
    }

    pub fn recv(&mut self, tag: Tag, out: &mut dyn Sink) {
        self.pops.push_back(tag);
        self.deliver(out);
    }

    fn deliver(&mut self, out: &mut dyn Sink) {
        while !self.pops.is_empty() && !self.ready.is_empty() {
            let tag = self.pops.pop_front().expect("checked");
            let (msg, from) = self.ready.pop_front().expect("checked");
            out.push((tag, Done::Received { msg: Some(msg), from: Some(from) }));
        }
    }

    pub fn on_completion(&mut self, c: &Completion, out: &mut dyn Sink) {
        let ok = c.ok();
        let qp = self.qp.as_mut().expect("socket has its QP until dropped");
        if is_send(c.wr_id()) {
            // A signaled completion also retires the unsignaled sends before it.
            qp.retire(c, |tag| {
                if let Some(tag) = tag {
                    out.push((tag, if ok { Done::Sent } else { Done::Failed(libc::EIO) }));
                }
            });
            return;
        }
        let Some((index, slot)) = qp.complete_recv(c) else { return };
        let len = c.byte_len();
        if !ok || len < GRH_LEN + UD_HDR_LEN || len > slot.capacity() {
            if ok {
                self.dropped += 1;
            }
            let _ = self.post_recv(index, slot);
            return;
        }
        // The device wrote len bytes into this slot, ours again.
        let Some(UdHeader { from }) = UdHeader::parse(&slot.bytes()[GRH_LEN..len]) else {
            self.dropped += 1;
            let _ = self.post_recv(index, slot);
            return;
        };
        let off = GRH_LEN + UD_HDR_LEN;
        match self.ring.lend(slot, index, off, len - off) {
            Ok(lent) => self.ready.push_back((Msg::Lent(lent), from)),
            Err(slot) => {
                log::error!("catmint: ud: receive {index} could not be lent");
                let _ = self.post_recv(index, slot);
            }
        }
        self.deliver(out);
    }

    /// Re-posts a buffer the application gave back, if it is this
    /// socket's (else it is dropped: its slot goes with its ring).
    pub fn returned(&mut self, r: Returned) {
        if let Ok((index, slot)) = self.ring.take_returned(r) {
            let _ = self.post_recv(index, slot);
        }
    }

    /// Cancels what the application waits for (close).
    pub fn cancel(&mut self, out: &mut dyn Sink) {
        for tag in self.pops.drain(..) {
            out.push((tag, Done::Failed(libc::ECANCELED)));
        }
        // Posted sends keep their memory until the QP is destroyed.
        for tag in self.qp().take_items() {
            out.push((tag, Done::Failed(libc::ECANCELED)));
        }
        for (_, peer) in self.peers.drain() {
            if let Peer::Resolving { queue, .. } = peer {
                for (tag, _) in queue {
                    out.push((tag, Done::Failed(libc::ECANCELED)));
                }
            }
        }
    }
}

impl Drop for Ud {
    fn drop(&mut self) {
        // Buffers still lent go to the pool with the ring's last reference.
        self.ring.close();
        if let Some(qp) = self.qp.take() {
            // The QP is destroyed before its posted buffers come back.
            let (_id, slots) = qp.close();
            for slot in slots {
                self.pool.recycle(slot);
            }
        }
    }
}
