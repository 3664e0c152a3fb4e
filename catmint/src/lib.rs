//! catmint: demi's RDMA transport over rdma-core (librdmacm + libibverbs).
//!
//! It knows nothing of queue tokens. A [`Catmint`] owns an rdma_cm event
//! channel, one PD/CQ/completion channel per RDMA device, a registered-memory
//! [`Pool`], and sockets: RC streams set up by rdma_cm. Requests carry an
//! opaque [`Tag`]; [`Catmint::poll`] reports what finished as `(Tag, Done)`.
//! Nothing blocks: rdma_cm is driven from `poll` (rping's order: resources
//! and pre-posted receives before connect/accept), and [`Catmint::arm`]
//! returns one descriptor to sleep on.
//!
//! Resource cleanup follows ownership (see `verbs` and `cm`): dropping a
//! socket destroys its QP and id, then recycles its buffers.

mod cm;
mod dgram;
mod pool;
mod rc;
mod sys;
mod ud;
mod verbs;
pub mod wire;

pub use pool::{Block, Pool};
pub use sys::{Error, Result};

use cm::{CmEvent, CmId, CqCell, EventChannel, PortSpace};
use pool::Notify;
use rc::{Rc, RcConfig};
use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sys::ffi;
use ud::Ud;
use verbs::{CompChannel, Cq, DeviceList, Pd};
use wire::Hello;

/// The caller's name for one request.
pub type Tag = u64;

/// A socket of a [`Catmint`].
pub type SockId = usize;

/// Bytes to send. `bytes()` must not move when the value moves (it points to
/// memory owned elsewhere), and must stay valid while the value lives.
pub trait Payload: Send + Sync {
    fn bytes(&self) -> &[u8];
    /// The memory key on device `dev` if the bytes are registered memory of
    /// this transport (else they are copied into registered memory once).
    fn lkey(&self, dev: usize) -> Option<u32>;
}

impl Payload for Block {
    fn bytes(&self) -> &[u8] {
        self.as_slice()
    }
    fn lkey(&self, dev: usize) -> Option<u32> {
        Some(Block::lkey(self, dev))
    }
}

/// How a request ended.
pub enum Done {
    Accepted {
        sock: SockId,
        peer: SocketAddrV4,
    },
    Connected,
    Sent,
    /// A message; `None` is end of file (the peer closed in order).
    Received {
        msg: Option<Block>,
        from: Option<SocketAddrV4>,
    },
    Failed(i32),
}

/// Tunables.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Receives granted to each peer (receive depth).
    pub credits: u32,
    /// Size of each receive buffer; larger messages are segmented.
    pub buf_size: usize,
    /// Send queue depth.
    pub sq_depth: u32,
    /// Largest send (header included) posted inline.
    pub inline: u32,
    /// Bound on address/route resolution and connection setup.
    pub timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config { credits: 32, buf_size: 32 << 10, sq_depth: 128, inline: 128, timeout: Duration::from_secs(3) }
    }
}

struct Device {
    ctx: *mut ffi::ibv_context,
    pd: Arc<Pd>,
    cq: Arc<CqCell>,
}

enum Sock {
    Idle {
        id: CmId,
        bound: Option<SocketAddrV4>,
    },
    Resolving {
        id: CmId,
        bound: Option<SocketAddrV4>,
        tag: Tag,
        deadline: Instant,
    },
    Connecting {
        ep: Rc,
        bound: Option<SocketAddrV4>,
        tag: Tag,
        deadline: Instant,
    },
    Connected(Rc),
    Listening(Listener),
    /// Accepted by us, waiting for ESTABLISHED; not visible to the caller yet.
    Incoming {
        ep: Rc,
        listener: SockId,
        peer: SocketAddrV4,
        deadline: Instant,
    },
    /// Closed by the caller; waits for its FIN to go out.
    Closing {
        ep: Rc,
        deadline: Instant,
    },
    /// A datagram socket not bound yet: sends wait for an implicit bind to
    /// the source address of the first destination's route.
    DgramUnbound {
        id: CmId,
        sends: Vec<(Tag, Box<dyn Payload>, SocketAddrV4)>,
        pops: Vec<Tag>,
        binding: bool,
    },
    Dgram(Ud),
    /// Resolves `dst` for the datagram socket with key `owner` (SIDR).
    Resolver {
        id: CmId,
        owner: u64,
        dst: SocketAddrV4,
        deadline: Instant,
    },
    /// Lost its id after a failed connect and could not get a new one.
    Broken,
}

struct Listener {
    /// Kept for its lifetime: dropping it stops listening.
    _id: CmId,
    backlog: usize,
    ready: VecDeque<(SockId, SocketAddrV4)>,
    accepts: VecDeque<Tag>,
    handshaking: usize,
    /// Requests beyond the backlog, neither accepted nor refused yet.
    waiting: VecDeque<(CmId, Hello)>,
}

struct Entry {
    generation: u32,
    sock: Option<Sock>,
}

const IDX_BITS: u32 = 24;
/// Busy polls between reads of the CM channel.
const CM_EVERY: u32 = 32;
const IDX_MASK: u64 = (1 << IDX_BITS) - 1;

/// The RDMA transport (see the crate docs).
pub struct Catmint {
    // Sockets first: dropping them destroys QPs before CQs and PDs go.
    socks: Vec<Entry>,
    free: Vec<usize>,
    vacated: Vec<usize>,
    /// Ids and endpoints to drop once the event about them is acknowledged
    /// (rdma_destroy_id waits for its events' acks).
    graveyard: Vec<Sock>,
    devices: Vec<Device>,
    pool: Pool,
    notify: Arc<Notify>,
    channel: Arc<EventChannel>,
    epoll: OwnedFd,
    cfg: Config,
    wcs: Vec<ffi::ibv_wc>,
    keys: Vec<u64>,
    timed: usize,
    /// `arm` was called: read the CM channel on the next poll.
    armed: bool,
    /// Polls left until the CM channel is read again (each read is a system
    /// call, too dear for every round of a busy wait).
    cm_countdown: u32,
    _devices: Arc<DeviceList>,
}

// SAFETY: the raw context pointers are rdma-core objects usable from any
// thread; Catmint is used by one thread at a time (&mut self).
unsafe impl Send for Catmint {}

impl Catmint {
    /// Opens every RDMA device. ENODEV when there is none.
    pub fn new(cfg: Config) -> Result<Catmint> {
        let list = DeviceList::open()?;
        let channel = EventChannel::new()?;
        // SAFETY: epoll_create1 has no pointer arguments.
        let efd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if efd < 0 {
            return Err(Error::last("epoll_create1"));
        }
        // SAFETY: efd was just returned to us.
        let epoll = unsafe { OwnedFd::from_raw_fd(efd) };
        epoll_add(&epoll, channel.fd())?;
        let mut devices = Vec::new();
        for ctx in list.contexts() {
            let pd = Pd::new(ctx, list.clone())?;
            let comp = CompChannel::new(ctx, list.clone())?;
            epoll_add(&epoll, comp.fd())?;
            let cq = Cq::new(ctx, comp, 4096)?;
            log::info!("catmint: device {}", verbs::device_name(ctx));
            devices.push(Device { ctx, pd, cq: Arc::new(Mutex::new(cq)) });
        }
        let pool = Pool::new(devices.iter().map(|d| d.pd.clone()).collect());
        // SAFETY: ibv_wc is plain data.
        let wcs = (0..32).map(|_| unsafe { std::mem::zeroed() }).collect();
        Ok(Catmint {
            socks: Vec::new(),
            free: Vec::new(),
            vacated: Vec::new(),
            graveyard: Vec::new(),
            devices,
            pool,
            notify: Arc::new(Notify::default()),
            channel,
            epoll,
            cfg,
            wcs,
            keys: Vec::new(),
            timed: 0,
            armed: false,
            cm_countdown: 0,
            _devices: list,
        })
    }

    /// Names of the devices in use.
    pub fn device_names(&self) -> Vec<String> {
        self.devices.iter().map(|d| verbs::device_name(d.ctx)).collect()
    }

    /// Registered memory for sends without a copy.
    pub fn alloc(&self, len: usize) -> Result<Block> {
        self.pool.alloc(len)
    }

    fn key_of(&self, s: SockId) -> u64 {
        ((self.socks[s].generation as u64 & 0xff) << IDX_BITS) | s as u64
    }

    fn lookup(&self, key: u64) -> Option<SockId> {
        let s = (key & IDX_MASK) as usize;
        let e = self.socks.get(s)?;
        (e.sock.is_some() && (e.generation as u64 & 0xff) == (key >> IDX_BITS) & 0xff).then_some(s)
    }

    fn insert_with(&mut self, make: impl FnOnce(u64) -> Result<Sock>) -> Result<SockId> {
        let s = self.free.pop().unwrap_or_else(|| {
            self.socks.push(Entry { generation: 0, sock: None });
            self.socks.len() - 1
        });
        if s as u64 > IDX_MASK {
            return Err(Error::new("socket table", libc::EMFILE));
        }
        self.socks[s].generation = self.socks[s].generation.wrapping_add(1);
        let key = self.key_of(s);
        match make(key) {
            Ok(sock) => {
                self.socks[s].sock = Some(sock);
                Ok(s)
            }
            Err(e) => {
                self.free.push(s);
                Err(e)
            }
        }
    }

    /// Takes a socket out of its slot. The slot is not reused until
    /// `reclaim` finds it still empty, so a socket being worked on (taken,
    /// then put back) never loses its id to one created meanwhile.
    fn take(&mut self, s: SockId) -> Option<Sock> {
        let sock = self.socks.get_mut(s)?.sock.take();
        if sock.is_some() {
            self.vacated.push(s);
        }
        sock
    }

    /// Frees the slots of sockets that were taken and not put back. Called
    /// at the end of public calls, when no socket is being worked on.
    fn reclaim(&mut self) {
        for s in self.vacated.drain(..) {
            if self.socks[s].sock.is_none() && !self.free.contains(&s) {
                self.free.push(s);
            }
        }
    }

    fn sock_mut(&mut self, s: SockId) -> Result<&mut Sock> {
        self.socks.get_mut(s).and_then(|e| e.sock.as_mut()).ok_or(Error::new("catmint socket", libc::EBADF))
    }

    /// A new stream (RC) socket.
    pub fn stream_socket(&mut self) -> Result<SockId> {
        let channel = self.channel.clone();
        self.insert_with(|key| Ok(Sock::Idle { id: CmId::new(&channel, PortSpace::Tcp, key)?, bound: None }))
    }

    pub fn bind(&mut self, s: SockId, addr: SocketAddrV4) -> Result<SocketAddrV4> {
        if self.is_datagram(s) {
            return self.bind_dgram(s, addr);
        }
        match self.sock_mut(s)? {
            Sock::Idle { id, bound } => {
                id.bind(addr).map_err(|e| match e.errno {
                    // No RDMA device has this address.
                    libc::ENODEV => Error::new(e.call, libc::EADDRNOTAVAIL),
                    _ => e,
                })?;
                let local = id.local_addr().unwrap_or(addr);
                *bound = Some(local);
                Ok(local)
            }
            _ => Err(Error::new("bind", libc::EINVAL)),
        }
    }

    pub fn listen(&mut self, s: SockId, backlog: i32) -> Result<()> {
        let sock = self.take(s).ok_or(Error::new("listen", libc::EBADF))?;
        let (result, sock) = match sock {
            Sock::Idle { id, bound } => match id.listen(backlog) {
                Ok(()) => (
                    Ok(()),
                    Sock::Listening(Listener {
                        _id: id,
                        backlog: backlog.max(1) as usize,
                        ready: VecDeque::new(),
                        accepts: VecDeque::new(),
                        handshaking: 0,
                        waiting: VecDeque::new(),
                    }),
                ),
                Err(e) => (Err(e), Sock::Idle { id, bound }),
            },
            Sock::Listening(mut l) => {
                l.backlog = backlog.max(1) as usize;
                (Ok(()), Sock::Listening(l))
            }
            other => (Err(Error::new("listen", libc::EINVAL)), other),
        };
        self.put_back(s, sock);
        result
    }

    /// Re-inserts a socket taken with `take` under the same id.
    fn put_back(&mut self, s: SockId, sock: Sock) {
        self.socks[s].sock = Some(sock);
    }

    pub fn accept(&mut self, s: SockId, tag: Tag, out: &mut Vec<(Tag, Done)>) -> Result<()> {
        let Sock::Listening(l) = self.sock_mut(s)? else { return Err(Error::new("accept", libc::EINVAL)) };
        l.accepts.push_back(tag);
        Self::match_accepts(l, out);
        self.promote(s);
        self.reclaim();
        Ok(())
    }

    fn match_accepts(l: &mut Listener, out: &mut Vec<(Tag, Done)>) {
        while !l.accepts.is_empty() && !l.ready.is_empty() {
            let tag = l.accepts.pop_front().expect("checked");
            let (sock, peer) = l.ready.pop_front().expect("checked");
            out.push((tag, Done::Accepted { sock, peer }));
        }
    }

    pub fn connect(&mut self, s: SockId, to: SocketAddrV4, tag: Tag) -> Result<()> {
        let timeout_ms = self.cfg.timeout.as_millis().min(i32::MAX as u128) as i32;
        let deadline = Instant::now() + self.cfg.timeout;
        let sock = self.take(s).ok_or(Error::new("connect", libc::EBADF))?;
        let (result, sock) = match sock {
            // A bound id resolves from its own address.
            Sock::Idle { id, bound } => match id.resolve_addr(None, to, timeout_ms) {
                Ok(()) => {
                    self.timed += 1;
                    (Ok(()), Sock::Resolving { id, bound, tag, deadline })
                }
                Err(e) => (Err(e), Sock::Idle { id, bound }),
            },
            other => (Err(Error::new("connect", libc::EINVAL)), other),
        };
        self.put_back(s, sock);
        result
    }

    /// Sends a message on a connected stream, or a datagram to `to`.
    pub fn send(
        &mut self,
        s: SockId,
        data: Box<dyn Payload>,
        to: Option<SocketAddrV4>,
        tag: Tag,
        out: &mut Vec<(Tag, Done)>,
    ) -> Result<()> {
        if self.is_datagram(s) {
            let to = to.ok_or(Error::new("send", libc::EDESTADDRREQ))?;
            return self.send_dgram(s, data, to, tag, out);
        }
        match self.sock_mut(s)? {
            Sock::Connected(ep) => {
                ep.send(tag, data, out);
                Ok(())
            }
            _ => Err(Error::new("send", libc::ENOTCONN)),
        }
    }

    pub fn recv(&mut self, s: SockId, tag: Tag, out: &mut Vec<(Tag, Done)>) -> Result<()> {
        match self.sock_mut(s)? {
            Sock::Connected(ep) => {
                ep.recv(tag, out);
                Ok(())
            }
            Sock::Dgram(ud) => {
                ud.recv(tag, out);
                Ok(())
            }
            Sock::DgramUnbound { pops, .. } => {
                pops.push(tag);
                Ok(())
            }
            _ => Err(Error::new("recv", libc::ENOTCONN)),
        }
    }

    pub fn peer_addr(&mut self, s: SockId) -> Result<SocketAddrV4> {
        match self.sock_mut(s)? {
            Sock::Connected(ep) => ep.id().peer_addr().ok_or(Error::new("peer_addr", libc::ENOTCONN)),
            _ => Err(Error::new("peer_addr", libc::ENOTCONN)),
        }
    }

    /// Closes a socket: its pending requests finish with ECANCELED. A healthy
    /// connection sends FIN (end of file for the peer) before disconnecting.
    pub fn close(&mut self, s: SockId, out: &mut Vec<(Tag, Done)>) -> Result<()> {
        let sock = self.take(s).ok_or(Error::new("close", libc::EBADF))?;
        match sock {
            Sock::Idle { .. } | Sock::Broken | Sock::Resolver { .. } => {}
            sock @ (Sock::Dgram(_) | Sock::DgramUnbound { .. }) => self.close_dgram(sock, out),
            Sock::Resolving { tag, .. } | Sock::Connecting { tag, .. } => {
                self.timed -= 1;
                out.push((tag, Done::Failed(libc::ECANCELED)));
            }
            Sock::Incoming { .. } => self.timed -= 1,
            Sock::Closing { ep, deadline } => self.put_back(s, Sock::Closing { ep, deadline }),
            Sock::Listening(l) => {
                for tag in l.accepts {
                    out.push((tag, Done::Failed(libc::ECANCELED)));
                }
                for (child, _) in l.ready {
                    let _ = self.close(child, out);
                }
                for (child, _) in l.waiting {
                    child.reject();
                }
            }
            Sock::Connected(mut ep) => {
                ep.cancel(out);
                if ep.send_fin() {
                    self.timed += 1;
                    self.put_back(s, Sock::Closing { ep, deadline: Instant::now() + Duration::from_secs(1) });
                } else {
                    ep.id().disconnect();
                }
            }
        }
        self.reclaim();
        Ok(())
    }

    /// Moves everything forward without blocking; appends what finished.
    pub fn poll(&mut self, out: &mut Vec<(Tag, Done)>) {
        // Read the CM channel after a sleep, and every CM_EVERY busy polls.
        if self.armed || self.cm_countdown == 0 {
            self.cm_countdown = CM_EVERY;
            self.armed = false;
            self.poll_cm(out);
        } else {
            self.cm_countdown -= 1;
        }
        self.poll_cqs(out);
        let mut keys = std::mem::take(&mut self.keys);
        self.notify.take(&mut keys);
        for key in keys.drain(..) {
            if let Some(s) = self.lookup(key) {
                match &mut self.socks[s].sock {
                    Some(Sock::Connected(ep)) => {
                        // Re-posted receives may unblock a credit message.
                        let _ = ep.repost_returns();
                        ep.progress_sends(out);
                    }
                    Some(Sock::Dgram(ud)) => ud.repost_returns(),
                    _ => {}
                }
            }
        }
        self.keys = keys;
        if self.timed > 0 {
            self.check_timers(out);
        }
        self.graveyard.clear();
        self.reclaim();
    }

    /// Arms CQ notification; returns the descriptor to sleep on.
    pub fn arm(&mut self) -> RawFd {
        for d in &self.devices {
            d.cq.lock().unwrap_or_else(|e| e.into_inner()).arm();
        }
        self.armed = true;
        self.epoll.as_raw_fd()
    }

    fn poll_cqs(&mut self, out: &mut Vec<(Tag, Done)>) {
        for d in 0..self.devices.len() {
            let cq = self.devices[d].cq.clone();
            let mut cq = cq.lock().unwrap_or_else(|e| e.into_inner());
            // Channel events exist only after arming, and reading is a system
            // call: read until the notification we asked for is consumed.
            if cq.armed {
                cq.armed = !cq.drain_channel();
            }
            loop {
                let n = cq.poll(&mut self.wcs);
                for i in 0..n {
                    let wc = &self.wcs[i];
                    let Some(s) = self.lookup(wc.wr_id >> 32) else { continue };
                    match &mut self.socks[s].sock {
                        Some(Sock::Connected(ep) | Sock::Connecting { ep, .. } | Sock::Incoming { ep, .. }) => {
                            ep.on_completion(wc, out)
                        }
                        Some(Sock::Dgram(ud)) => ud.on_completion(wc, out),
                        // Whatever a closing endpoint reports was already cancelled.
                        Some(Sock::Closing { ep, .. }) => ep.on_completion(wc, &mut Vec::new()),
                        _ => {}
                    }
                }
                if n < self.wcs.len() {
                    break;
                }
            }
        }
    }

    fn poll_cm(&mut self, out: &mut Vec<(Tag, Done)>) {
        loop {
            let ev = match self.channel.next() {
                Ok(Some(ev)) => ev,
                Ok(None) => return,
                Err(e) => {
                    log::error!("catmint: {e}");
                    return;
                }
            };
            self.on_cm_event(&ev, out);
            drop(ev);
            // Only now may ids the event named be destroyed.
            self.graveyard.clear();
        }
    }

    fn device_of(&self, ctx: *mut ffi::ibv_context) -> Option<usize> {
        self.devices.iter().position(|d| d.ctx == ctx)
    }

    fn rc_config(&self) -> RcConfig {
        RcConfig {
            credits: self.cfg.credits,
            buf_size: self.cfg.buf_size,
            sq_depth: self.cfg.sq_depth,
            inline: self.cfg.inline,
        }
    }

    fn new_endpoint(&self, id: CmId, key: u64) -> std::result::Result<Rc, (Error, Option<CmId>)> {
        let Some(dev) = self.device_of(id.verbs()) else {
            return Err((Error::new("rdma_cm id on an unknown device", libc::ENODEV), Some(id)));
        };
        let d = &self.devices[dev];
        Rc::new(id, dev, &d.pd, &d.cq, &self.pool, self.rc_config(), key, &self.notify).map_err(|e| (e, None))
    }

    fn on_cm_event(&mut self, ev: &CmEvent, out: &mut Vec<(Tag, Done)>) {
        use ffi::rdma_cm_event_type::*;
        let kind = ev.kind();
        log::debug!("catmint: cm event {} status {}", ev.name(), ev.status());
        if kind == RDMA_CM_EVENT_CONNECT_REQUEST {
            return self.on_connect_request(ev);
        }
        let Some(s) = self.lookup(ev.key()) else { return };
        let Some(sock) = self.take(s) else { return };
        if let Sock::Resolver { .. } = sock {
            return self.on_resolver_event(s, sock, ev, out);
        }
        let sock = match (kind, sock) {
            (RDMA_CM_EVENT_ADDR_RESOLVED, Sock::Resolving { id, bound, tag, deadline }) => {
                let ms = self.cfg.timeout.as_millis().min(i32::MAX as u128) as i32;
                match id.resolve_route(ms) {
                    Ok(()) => Sock::Resolving { id, bound, tag, deadline },
                    Err(e) => self.connect_failed(s, id, bound, tag, e.errno, out),
                }
            }
            (RDMA_CM_EVENT_ROUTE_RESOLVED, Sock::Resolving { id, bound, tag, deadline }) => {
                let key = self.key_of(s);
                match self.new_endpoint(id, key) {
                    Ok(ep) => {
                        let hello = ep.hello().emit();
                        match ep.id().connect(&mut conn_param(&hello)) {
                            Ok(()) => Sock::Connecting { ep, bound, tag, deadline },
                            Err(e) => self.connect_failed_ep(s, ep, bound, tag, e.errno, out),
                        }
                    }
                    Err((e, Some(id))) => self.connect_failed(s, id, bound, tag, e.errno, out),
                    Err((e, None)) => self.connect_failed_fresh(s, bound, tag, e.errno, out),
                }
            }
            (RDMA_CM_EVENT_ESTABLISHED, Sock::Connecting { mut ep, bound, tag, .. }) => {
                match Hello::parse(&ev.private_data()) {
                    Some(h) => {
                        self.timed -= 1;
                        ep.established(h);
                        out.push((tag, Done::Connected));
                        Sock::Connected(ep)
                    }
                    None => {
                        ep.id().disconnect();
                        self.connect_failed_ep(s, ep, bound, tag, libc::EPROTO, out)
                    }
                }
            }
            (RDMA_CM_EVENT_ESTABLISHED, Sock::Incoming { ep, listener, peer, .. }) => {
                self.timed -= 1;
                match self.socks.get_mut(listener).and_then(|e| e.sock.as_mut()) {
                    Some(Sock::Listening(l)) => {
                        l.handshaking -= 1;
                        l.ready.push_back((s, peer));
                        Self::match_accepts(l, out);
                        Sock::Connected(ep)
                    }
                    // The listener closed meanwhile.
                    _ => {
                        ep.id().disconnect();
                        self.graveyard.push(Sock::Connected(ep));
                        return;
                    }
                }
            }
            (
                RDMA_CM_EVENT_REJECTED
                | RDMA_CM_EVENT_ADDR_ERROR
                | RDMA_CM_EVENT_ROUTE_ERROR
                | RDMA_CM_EVENT_UNREACHABLE
                | RDMA_CM_EVENT_CONNECT_ERROR,
                sock,
            ) => {
                let errno = connect_errno(kind, ev.status());
                match sock {
                    Sock::Resolving { id, bound, tag, .. } => self.connect_failed(s, id, bound, tag, errno, out),
                    Sock::Connecting { ep, bound, tag, .. } => self.connect_failed_ep(s, ep, bound, tag, errno, out),
                    Sock::Incoming { ep, listener, .. } => {
                        self.timed -= 1;
                        if let Some(Sock::Listening(l)) = self.socks.get_mut(listener).and_then(|e| e.sock.as_mut()) {
                            l.handshaking -= 1;
                        }
                        self.graveyard.push(Sock::Connected(ep));
                        return;
                    }
                    Sock::Connected(mut ep) => {
                        ep.disconnected(out);
                        Sock::Connected(ep)
                    }
                    other => other,
                }
            }
            (RDMA_CM_EVENT_DISCONNECTED, Sock::Connected(mut ep)) => {
                ep.disconnected(out);
                ep.id().disconnect();
                Sock::Connected(ep)
            }
            (RDMA_CM_EVENT_DISCONNECTED, Sock::Closing { ep, .. }) => {
                self.timed -= 1;
                self.graveyard.push(Sock::Closing { ep, deadline: Instant::now() });
                return;
            }
            (_, sock) => sock,
        };
        self.put_back(s, sock);
    }

    fn on_connect_request(&mut self, ev: &CmEvent) {
        let lkey = ev.key();
        if let Some(l) = self.lookup(lkey).filter(|&l| matches!(self.socks[l].sock, Some(Sock::Dgram(_)))) {
            return self.on_sidr_request(l, ev);
        }
        // SAFETY: the child id of a CONNECT_REQUEST is ours to own.
        let Ok(child) = (unsafe { CmId::adopt(ev.id(), &self.channel, 0) }) else { return };
        let listener = self.lookup(lkey).filter(|&l| matches!(self.socks[l].sock, Some(Sock::Listening(_))));
        let (Some(l), Some(hello)) = (listener, Hello::parse(&ev.private_data())) else {
            // No listener, or not a catmint peer: refuse; the id is destroyed
            // once the event is acknowledged.
            child.reject();
            self.graveyard.push(Sock::Idle { id: child, bound: None });
            return;
        };
        let Some(Sock::Listening(li)) = self.socks[l].sock.as_mut() else { unreachable!("checked above") };
        if li.ready.len() + li.handshaking < li.backlog {
            self.admit(l, child, hello);
        } else if li.waiting.len() < li.backlog.max(16) {
            // A full backlog leaves the connect in progress, as TCP does;
            // accept() admits it when room frees up (or the peer times out).
            li.waiting.push_back((child, hello));
        } else {
            child.reject();
            self.graveyard.push(Sock::Idle { id: child, bound: None });
        }
    }

    /// Creates the endpoint of an incoming connection and accepts it.
    fn admit(&mut self, listener: SockId, child: CmId, peer_hello: Hello) {
        let peer = child.peer_addr().unwrap_or(SocketAddrV4::new(0.into(), 0));
        let Ok(s) = self.insert_with(|key| {
            child.set_key(key);
            Ok(Sock::Idle { id: child, bound: Some(peer) })
        }) else {
            return;
        };
        let Some(Sock::Idle { id, .. }) = self.take(s) else { unreachable!("just inserted") };
        let key = self.key_of(s);
        match self.new_endpoint(id, key) {
            Ok(mut ep) => {
                ep.established(peer_hello);
                let hello = ep.hello().emit();
                if let Err(e) = ep.id().accept(&mut conn_param(&hello)) {
                    log::warn!("catmint: accept from {peer}: {e}");
                    ep.id().reject();
                    self.graveyard.push(Sock::Connected(ep));
                    return;
                }
                if let Some(Sock::Listening(l)) = self.socks[listener].sock.as_mut() {
                    l.handshaking += 1;
                }
                self.timed += 1;
                let deadline = Instant::now() + self.cfg.timeout;
                self.put_back(s, Sock::Incoming { ep, listener, peer, deadline });
            }
            Err((e, id)) => {
                log::warn!("catmint: connection from {peer}: {e}");
                if let Some(id) = id {
                    id.reject();
                    self.graveyard.push(Sock::Idle { id, bound: None });
                }
            }
        }
    }

    /// Admits waiting connection requests while the backlog has room.
    fn promote(&mut self, l: SockId) {
        loop {
            let Some(Sock::Listening(li)) = self.socks[l].sock.as_mut() else { return };
            if li.ready.len() + li.handshaking >= li.backlog {
                return;
            }
            let Some((child, hello)) = li.waiting.pop_front() else { return };
            self.admit(l, child, hello);
        }
    }

    /// A connect failed on an id that never got a QP: report, and leave the
    /// socket idle with a fresh id so it may connect again.
    fn connect_failed(
        &mut self,
        s: SockId,
        id: CmId,
        bound: Option<SocketAddrV4>,
        tag: Tag,
        errno: i32,
        out: &mut Vec<(Tag, Done)>,
    ) -> Sock {
        self.graveyard.push(Sock::Idle { id, bound: None });
        self.connect_failed_fresh(s, bound, tag, errno, out)
    }

    fn connect_failed_ep(
        &mut self,
        s: SockId,
        ep: Rc,
        bound: Option<SocketAddrV4>,
        tag: Tag,
        errno: i32,
        out: &mut Vec<(Tag, Done)>,
    ) -> Sock {
        self.graveyard.push(Sock::Connected(ep));
        self.connect_failed_fresh(s, bound, tag, errno, out)
    }

    fn connect_failed_fresh(
        &mut self,
        s: SockId,
        bound: Option<SocketAddrV4>,
        tag: Tag,
        errno: i32,
        out: &mut Vec<(Tag, Done)>,
    ) -> Sock {
        self.timed -= 1;
        out.push((tag, Done::Failed(errno)));
        let key = self.key_of(s);
        match CmId::new(&self.channel, PortSpace::Tcp, key) {
            Ok(id) => {
                // Re-bind to the address the old id had (its port is free again
                // once the old id is destroyed, so bind the address only).
                if let Some(b) = bound {
                    let _ = id.bind(SocketAddrV4::new(*b.ip(), 0));
                }
                Sock::Idle { id, bound }
            }
            Err(e) => {
                log::error!("catmint: {e}");
                Sock::Broken
            }
        }
    }

    fn check_timers(&mut self, out: &mut Vec<(Tag, Done)>) {
        let now = Instant::now();
        for s in 0..self.socks.len() {
            let expired = match &self.socks[s].sock {
                Some(
                    Sock::Resolving { deadline, .. }
                    | Sock::Connecting { deadline, .. }
                    | Sock::Incoming { deadline, .. },
                ) => now >= *deadline,
                Some(Sock::Closing { ep, deadline }) => now >= *deadline || ep.sends_drained() || ep.is_broken(),
                Some(Sock::Resolver { deadline, .. }) => now >= *deadline,
                _ => false,
            };
            if !expired {
                continue;
            }
            match self.take(s) {
                Some(Sock::Resolving { id, bound, tag, .. }) => {
                    let sock = self.connect_failed(s, id, bound, tag, libc::ETIMEDOUT, out);
                    self.put_back(s, sock);
                }
                Some(Sock::Connecting { ep, bound, tag, .. }) => {
                    let sock = self.connect_failed_ep(s, ep, bound, tag, libc::ETIMEDOUT, out);
                    self.put_back(s, sock);
                }
                Some(Sock::Incoming { ep, listener, .. }) => {
                    self.timed -= 1;
                    if let Some(Sock::Listening(l)) = self.socks.get_mut(listener).and_then(|e| e.sock.as_mut()) {
                        l.handshaking -= 1;
                    }
                    ep.id().disconnect();
                    self.graveyard.push(Sock::Connected(ep));
                }
                Some(Sock::Closing { ep, .. }) => {
                    self.timed -= 1;
                    ep.id().disconnect();
                    self.graveyard.push(Sock::Connected(ep));
                }
                Some(Sock::Resolver { id, owner, dst, deadline }) => {
                    self.timed -= 1;
                    self.graveyard.push(Sock::Resolver { id, owner, dst, deadline });
                    if let Some(o) = self.lookup(owner) {
                        self.resolve_failed(o, dst, libc::ETIMEDOUT, out);
                    }
                }
                Some(other) => self.put_back(s, other),
                None => {}
            }
        }
    }
}

fn conn_param(hello: &[u8]) -> ffi::rdma_conn_param {
    ffi::rdma_conn_param {
        private_data: hello.as_ptr().cast(),
        private_data_len: hello.len() as u8,
        responder_resources: 1,
        initiator_depth: 1,
        flow_control: 0,
        // Transport retries hide packet loss; RNR retries are a safety net our
        // credits should never need.
        retry_count: 7,
        rnr_retry_count: 7,
        srq: 0,
        qp_num: 0,
    }
}

/// The errno of a failed connection event.
fn connect_errno(kind: ffi::rdma_cm_event_type::Type, status: i32) -> i32 {
    use ffi::rdma_cm_event_type::*;
    match kind {
        RDMA_CM_EVENT_REJECTED => libc::ECONNREFUSED,
        _ if status == -libc::ETIMEDOUT => libc::ETIMEDOUT,
        _ if status == -libc::ENETUNREACH => libc::ENETUNREACH,
        RDMA_CM_EVENT_CONNECT_ERROR => libc::ECONNREFUSED,
        _ => libc::EHOSTUNREACH,
    }
}

fn epoll_add(epoll: &OwnedFd, fd: RawFd) -> Result<()> {
    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: fd as u64 };
    // SAFETY: both descriptors are open; ev is a live epoll_event.
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(Error::last("epoll_ctl"));
    }
    Ok(())
}
