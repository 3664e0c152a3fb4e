//! A datagram socket over a UD queue pair (rdma_cm's UDP port space).
//!
//! Destinations are resolved through rdma_cm (a short-lived id per
//! destination does address and route resolution and a SIDR exchange with the
//! peer's socket, which answers with its QP number); the resulting address
//! handle is cached per destination. Each datagram carries an 8-byte header
//! with the sender's IPv4 address and port, since UD itself carries neither.

use crate::cm::{CmId, CqCell};
use crate::pool::{Block, Notify, Pool, Slot};
use crate::recv::{registered, Msg, RecvRing};
use crate::sys::{ffi, Error, Result};
use crate::types::{Done, Payload, Sink, Tag};
use crate::verbs::{Ah, Pd};
use crate::wire::UdHeader;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddrV4;
use std::sync::Arc;

/// The Global Routing Header the device writes in front of every UD receive.
const GRH_LEN: usize = 40;
pub use crate::wire::UD_HDR_LEN;

pub const WR_SEND: u64 = 1 << 31;
const WR_LOW: u64 = WR_SEND - 1;

/// A destination as far as we know it.
pub enum Peer {
    /// Being resolved by the resolver socket `resolver`; sends wait here.
    Resolving {
        resolver: usize,
        queue: VecDeque<(Tag, Arc<dyn Payload>)>,
    },
    Ready {
        ah: Ah,
        qpn: u32,
        qkey: u32,
    },
}

struct Inflight {
    seq: u64,
    /// None once cancelled (or for inline sends, done when posted); the
    /// entry stays to keep the memory alive and to count queue room.
    tag: Option<Tag>,
    _keep: Option<Arc<dyn Payload>>,
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
    id: Option<CmId>,
    pub dev: usize,
    key: u64,
    pd: Arc<Pd>,
    pool: Pool,
    pub local: SocketAddrV4,
    /// Largest payload a datagram may carry (path MTU less our header).
    pub max_payload: usize,
    recv: RecvRing,
    ready: VecDeque<(Msg, SocketAddrV4)>,
    pops: VecDeque<Tag>,
    pub peers: HashMap<SocketAddrV4, Peer, BuildHasherDefault<AddrHasher>>,
    inflight: VecDeque<Inflight>,
    sq_depth: u32,
    seq: u64,
    hdrs: Block,
    max_inline: u32,
    /// Datagrams dropped because they were malformed.
    pub dropped: u64,
}

#[allow(clippy::too_many_arguments)]
impl Ud {
    /// Creates the QP on a bound id and posts receives.
    pub fn new(
        mut id: CmId,
        dev: usize,
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
        let mtu = port_mtu(id.verbs(), port_num(&id));
        // SAFETY: plain data; zero is a valid start.
        let mut attr: ffi::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        attr.qp_type = ffi::ibv_qp_type::IBV_QPT_UD;
        attr.cap.max_send_wr = sq_depth;
        attr.cap.max_recv_wr = depth;
        attr.cap.max_send_sge = 2;
        attr.cap.max_recv_sge = 1;
        attr.cap.max_inline_data = inline;
        id.create_qp(pd, cq, None, &mut attr)?;
        let mut ud = Ud {
            id: Some(id),
            dev,
            key,
            pd: pd.clone(),
            pool: pool.clone(),
            local,
            max_payload: mtu - UD_HDR_LEN,
            recv: RecvRing::new(pool, notify, dev, key, depth),
            ready: VecDeque::new(),
            pops: VecDeque::new(),
            peers: HashMap::default(),
            inflight: VecDeque::new(),
            sq_depth,
            seq: 0,
            hdrs: pool.alloc(sq_depth as usize * UD_HDR_LEN)?,
            max_inline: attr.cap.max_inline_data,
            dropped: 0,
        };
        let qp = ud.id().qp();
        ud.recv.fill(qp, GRH_LEN + mtu)?;
        Ok(ud)
    }

    pub fn id(&self) -> &CmId {
        self.id.as_ref().expect("socket has its id until dropped")
    }

    /// Our QP number, for SIDR replies.
    pub fn qpn(&self) -> u32 {
        // SAFETY: the QP is live while the id is.
        unsafe { (*self.id().qp()).qp_num }
    }

    fn post_recv(&mut self, index: u32, slot: Slot) -> Result<()> {
        let qp = self.id().qp();
        self.recv.post(qp, index, slot)
    }

    /// Sends (or queues until `to` is resolved). Returns true if the caller
    /// must start resolving `to`.
    pub fn send<P: Payload + 'static>(&mut self, tag: Tag, data: P, to: SocketAddrV4, out: &mut dyn Sink) -> bool {
        let len = data.bytes().len();
        if len > self.max_payload {
            out.push((tag, Done::Failed(libc::EMSGSIZE)));
            return false;
        }
        if (UD_HDR_LEN + len) as u32 <= self.max_inline {
            if let Some(Peer::Ready { ah, qpn, qkey }) = self.peers.get(&to) {
                // Inline: copied by the post, so neither registered nor kept.
                let dest = (ah.raw(), *qpn, *qkey);
                self.post(tag, data.bytes(), 0, None, dest, out);
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

    /// Posts a registered payload (or an inline one) and keeps it until
    /// the device is done with it.
    fn post_kept(&mut self, tag: Tag, data: Arc<dyn Payload>, to: SocketAddrV4, out: &mut dyn Sink) {
        let Some(Peer::Ready { ah, qpn, qkey }) = self.peers.get(&to) else { return };
        let dest = (ah.raw(), *qpn, *qkey);
        let lkey = data.lkey(&self.pool, self.dev).unwrap_or(0);
        // The bytes live in `data`'s own memory, which moving the Arc into
        // `post` does not move.
        let bytes = data.bytes() as *const [u8];
        // SAFETY: `bytes` points into memory `data` owns (the Payload
        // contract: it does not move with the value and lives as long as
        // it); `data` itself is moved into `post` and kept there.
        self.post(tag, unsafe { &*bytes }, lkey, Some(data), dest, out);
    }

    /// Posts one datagram of `bytes` to a resolved destination (its address
    /// handle, QP number and Q_Key). `keep`
    /// holds the memory until the send completes; without it the bytes go
    /// inline and the push is done once posted.
    fn post(
        &mut self,
        tag: Tag,
        bytes: &[u8],
        lkey: u32,
        keep: Option<Arc<dyn Payload>>,
        (ah, qpn, qkey): (*mut ffi::ibv_ah, u32, u32),
        out: &mut dyn Sink,
    ) {
        if self.inflight.len() as u32 >= self.sq_depth {
            // The send queue is full: UD may drop, so do we, loudly.
            out.push((tag, Done::Failed(libc::ENOBUFS)));
            return;
        }
        let slot = (self.seq % self.sq_depth as u64) as usize * UD_HDR_LEN;
        self.hdrs.as_mut_slice()[slot..slot + UD_HDR_LEN].copy_from_slice(&UdHeader { from: self.local }.emit());
        let mut sges = [
            ffi::ibv_sge {
                addr: self.hdrs.as_ptr() as u64 + slot as u64,
                length: UD_HDR_LEN as u32,
                lkey: self.hdrs.lkey(self.dev),
            },
            ffi::ibv_sge { addr: bytes.as_ptr() as u64, length: bytes.len() as u32, lkey },
        ];
        let inline = keep.is_none();
        // Signal kept sends (their push completes with them), and every
        // 16th send or the one that fills the queue, so the queue drains.
        let signaled = !inline || self.seq % 16 == 15 || self.inflight.len() as u32 + 1 >= self.sq_depth;
        let mut flags = 0;
        if signaled {
            flags |= ffi::ibv_send_flags::IBV_SEND_SIGNALED.0;
        }
        if inline {
            flags |= ffi::ibv_send_flags::IBV_SEND_INLINE.0;
        }
        // SAFETY: plain data; zero is a valid start.
        let mut wr: ffi::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = self.key << 32 | WR_SEND | (self.seq & WR_LOW);
        wr.sg_list = sges.as_mut_ptr();
        wr.num_sge = 2;
        wr.opcode = ffi::ibv_wr_opcode::IBV_WR_SEND;
        wr.send_flags = flags;
        wr.wr.ud = ffi::ud_t { ah, remote_qpn: qpn, remote_qkey: qkey };
        let mut bad = std::ptr::null_mut();
        // SAFETY: live QP and AH; inline bytes are copied by the call, the
        // others are registered memory kept alive by `hdrs` and by `keep`
        // (held in `inflight`) until completion.
        let rc = unsafe { ffi::ibv_post_send(self.id().qp(), &mut wr, &mut bad) };
        if rc != 0 {
            out.push((tag, Done::Failed(rc)));
            return;
        }
        let seq = self.seq;
        self.seq += 1;
        if inline {
            out.push((tag, Done::Sent));
            self.inflight.push_back(Inflight { seq, tag: None, _keep: None });
        } else {
            self.inflight.push_back(Inflight { seq, tag: Some(tag), _keep: keep });
        }
    }

    /// A destination resolved: create its address handle and send what waited.
    pub fn resolved(&mut self, to: SocketAddrV4, mut param: ffi::rdma_ud_param, out: &mut dyn Sink) {
        let Some(Peer::Resolving { queue, .. }) = self.peers.remove(&to) else { return };
        match Ah::new(&self.pd, &mut param.ah_attr) {
            Ok(ah) => {
                self.peers.insert(to, Peer::Ready { ah, qpn: param.qp_num, qkey: param.qkey });
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

    pub fn on_completion(&mut self, wc: &ffi::ibv_wc, out: &mut dyn Sink) {
        let ok = wc.status == ffi::ibv_wc_status::IBV_WC_SUCCESS;
        if wc.wr_id & WR_SEND != 0 {
            // A signaled completion also retires the unsignaled sends before it.
            let low = wc.wr_id & WR_LOW;
            while let Some(w) = self.inflight.pop_front() {
                if let Some(tag) = w.tag {
                    out.push((tag, if ok { Done::Sent } else { Done::Failed(libc::EIO) }));
                }
                if w.seq & WR_LOW == low {
                    break;
                }
            }
            return;
        }
        let index = (wc.wr_id & WR_LOW) as u32;
        let Some(slot) = self.recv.complete(index) else { return };
        let len = wc.byte_len as usize;
        if !ok || len < GRH_LEN + UD_HDR_LEN || len > slot.capacity() {
            if ok {
                self.dropped += 1;
            }
            let _ = self.post_recv(index, slot);
            return;
        }
        // SAFETY: the device wrote len bytes into this slot, ours again.
        let bytes = unsafe { std::slice::from_raw_parts(slot.ptr(), len) };
        let Some(UdHeader { from }) = UdHeader::parse(&bytes[GRH_LEN..]) else {
            self.dropped += 1;
            let _ = self.post_recv(index, slot);
            return;
        };
        let off = GRH_LEN + UD_HDR_LEN;
        self.ready.push_back((self.recv.lend(slot, index, off, len - off), from));
        self.deliver(out);
    }

    /// True if the returned buffer `r` came from this socket's ring.
    pub fn owns(&self, r: &crate::pool::Returned) -> bool {
        self.recv.owns(r)
    }

    /// Re-posts a buffer the application gave back.
    pub fn returned(&mut self, r: crate::pool::Returned) {
        let qp = self.id().qp();
        self.recv.repost(qp, r, true);
    }

    /// Cancels what the application waits for (close).
    pub fn cancel(&mut self, out: &mut dyn Sink) {
        for tag in self.pops.drain(..) {
            out.push((tag, Done::Failed(libc::ECANCELED)));
        }
        // Posted sends keep their memory until the QP is destroyed.
        for w in self.inflight.iter_mut() {
            if let Some(tag) = w.tag.take() {
                out.push((tag, Done::Failed(libc::ECANCELED)));
            }
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
        drop(self.id.take());
        self.recv.close();
    }
}

fn port_num(id: &CmId) -> u8 {
    // SAFETY: the id is live.
    unsafe { (*id.raw()).port_num }
}

/// The port's active MTU in bytes (1024 on a 1500-byte veth under rxe).
pub(crate) fn port_mtu(ctx: *mut ffi::ibv_context, port: u8) -> usize {
    // SAFETY: plain data; zero is valid, and the query fills it.
    let mut attr: ffi::ibv_port_attr = unsafe { std::mem::zeroed() };
    // SAFETY: ctx is a live context; attr is a live out-parameter.
    let rc = unsafe { ffi::___ibv_query_port(ctx, port, &mut attr) };
    if rc != 0 || attr.active_mtu == 0 {
        return 256;
    }
    128usize << attr.active_mtu.min(5)
}
