//! catmint: demi's RDMA transport over rdma-core (librdmacm + libibverbs).
//!
//! It knows nothing of queue tokens. A [`Catmint`] owns an rdma_cm event
//! channel, one PD/CQ/completion channel per RDMA device, a registered-memory
//! [`Pool`], and sockets: RC streams set up by rdma_cm. The RC streams of a
//! device receive from one shared receive queue (see `srq`: receive memory
//! follows traffic, not the number of connections). Requests carry an
//! opaque [`Tag`]; [`Catmint::poll`] reports what finished as `(Tag, Done)`.
//! Nothing blocks: rdma_cm is driven from `poll` (rping's order: resources
//! and pre-posted receives before connect/accept), and [`Catmint::arm`]
//! returns one descriptor to sleep on.
//!
//! Resource cleanup follows ownership (see `verbs` and `cm`): dropping a
//! socket destroys its QP and id, then gives back what it had committed of
//! the shared receive queue, which goes with the device's last QP.
//!
//! All unsafe code is in the `sys` module (the crate denies it elsewhere):
//! the owners of rdma-core objects, registered memory, and posting, which
//! is safe because a posted buffer belongs to its queue until the device
//! reports it done.
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

mod dgram;
mod poll;
mod pool;
mod rc;
mod recv;
mod srq;
mod stream;
#[allow(unsafe_code)]
mod sys;
mod table;
mod types;
mod ud;
pub mod wire;

pub use pool::{Block, Pool};
pub use recv::Msg;
pub use sys::lend::{Lent, LentSlot};
pub use sys::{Error, Result};
pub use types::{Config, Done, Payload, Sink, SockId, Tag};

use rc::{Rc, RcConfig};
use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sys::cm::{CmId, EventChannel};
use sys::lend::Notify;
use sys::qp::CqCell;
use sys::verbs::{CompChannel, Completions, Context, Cq, DeviceList, Pd};
use sys::{ffi, Epoll};
use table::SockTable;
use ud::Ud;
use wire::Hello;

struct Device {
    ctx: Context,
    pd: Arc<Pd>,
    /// Every QP on the device holds a clone (see `CmId::create_qp`).
    cq: Arc<CqCell>,
    /// The RC connections' shared receive queue, made by the first one;
    /// each QP on it holds a clone, and it goes when they are all gone.
    srq: Option<Arc<srq::SrqCell>>,
    /// The CQ was polled empty after its last QP went.
    idle: bool,
}

impl Device {
    /// True while some QP uses the device's CQ (each holds a clone of it).
    fn has_qps(&self) -> bool {
        Arc::strong_count(&self.cq) > 1
    }

    /// True if the device has a shared receive queue no connection uses
    /// (each holds a clone of it).
    fn srq_unused(&self) -> bool {
        self.srq.as_ref().is_some_and(|q| Arc::strong_count(q) == 1)
    }
}

enum Sock {
    Idle {
        id: CmId,
        bound: Option<SocketAddrV4>,
    },
    Resolving {
        id: CmId,
        bound: Option<SocketAddrV4>,
        to: SocketAddrV4,
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
        sends: Vec<(Tag, Arc<dyn Payload>, SocketAddrV4)>,
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

impl Sock {
    /// The deadline of the states that have one (those counted in `timed`).
    fn deadline(&self) -> Option<Instant> {
        match self {
            Sock::Resolving { deadline, .. }
            | Sock::Connecting { deadline, .. }
            | Sock::Incoming { deadline, .. }
            | Sock::Closing { deadline, .. }
            | Sock::Resolver { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }
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

/// Longest single address resolution. The kernel finishes one early when
/// the neighbour (ARP) entry turns valid, but not always (seen on soft-RoCE:
/// the first resolution towards a new neighbour waits for its full timeout
/// although ARP answered), so resolutions are short and retried until the
/// connect's own deadline.
pub(crate) const RESOLVE_ATTEMPT: Duration = Duration::from_millis(1000);

/// The timeout of the next resolution attempt, or None past the deadline.
pub(crate) fn attempt_ms(deadline: Instant) -> Option<i32> {
    let left = deadline.checked_duration_since(Instant::now())?;
    Some(left.min(RESOLVE_ATTEMPT).as_millis().clamp(1, i32::MAX as u128) as i32)
}

/// Busy polls between reads of the CM channel (a read is a system call;
/// connection events can wait a few hundred polls, and a sleeping waiter
/// reads the channel as soon as it wakes).
const CM_EVERY: u32 = 256;
/// CM events handled per poll, at most: completions of established
/// connections are polled between them (see `poll_cm`).
const CM_BATCH: usize = 1;

/// The RDMA transport (see the crate docs).
pub struct Catmint {
    // Sockets first: dropping them destroys QPs before CQs and PDs go.
    socks: SockTable<Sock>,
    /// Ids and endpoints to drop once the event about them is acknowledged
    /// (rdma_destroy_id waits for its events' acks).
    graveyard: Vec<Sock>,
    devices: Vec<Device>,
    pool: Pool,
    notify: Arc<Notify>,
    channel: Arc<EventChannel>,
    epoll: Epoll,
    cfg: Config,
    wcs: Completions,
    /// Received buffers given back, taken from `notify` (kept for its capacity).
    returns: Vec<sys::lend::Returned>,
    timed: usize,
    /// The sockets that may be timed (each timed one is here; others are
    /// dropped at the next timer check), so that checking deadlines costs
    /// the number of connects and closes in progress, not of sockets.
    timed_ids: Vec<SockId>,
    /// `arm` was called: read the CM channel on the next poll.
    armed: bool,
    /// Polls left until the CM channel is read again (each read is a system
    /// call, too dear for every round of a busy wait).
    cm_countdown: u32,
    /// A socket went away since the last pool trim.
    trim_due: bool,
    _devices: Arc<DeviceList>,
}

impl Catmint {
    /// Opens every RDMA device. ENODEV when there is none.
    pub fn new(cfg: Config) -> Result<Catmint> {
        let list = DeviceList::open()?;
        let channel = EventChannel::new()?;
        let epoll = Epoll::new()?;
        epoll.add(channel.fd())?;
        let mut devices = Vec::new();
        for ctx in list.contexts() {
            let pd = Pd::new(&ctx)?;
            let comp = CompChannel::new(&ctx)?;
            epoll.add(comp.fd())?;
            let cq = Cq::new(&ctx, comp, cq_depth(&ctx))?;
            log::info!("catmint: device {}", ctx.name());
            devices.push(Device { ctx, pd, cq: Arc::new(Mutex::new(cq)), srq: None, idle: false });
        }
        let pool = Pool::new(devices.iter().map(|d| d.pd.clone()).collect());
        let notify = Arc::new(Notify::new()?);
        epoll.add(notify.fd())?;
        let wcs = Completions::new(32);
        Ok(Catmint {
            socks: SockTable::new(),
            graveyard: Vec::new(),
            devices,
            pool,
            notify,
            channel,
            epoll,
            cfg,
            wcs,
            returns: Vec::new(),
            timed: 0,
            timed_ids: Vec::new(),
            armed: false,
            cm_countdown: 0,
            trim_due: false,
            _devices: list,
        })
    }

    /// Names of the devices in use.
    pub fn device_names(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.ctx.name()).collect()
    }

    /// Registered memory for sends without a copy.
    pub fn alloc(&self, len: usize) -> Result<Block> {
        self.pool.alloc(len)
    }

    /// The socket `s`, or EBADF.
    fn sock_mut(&mut self, s: SockId) -> Result<&mut Sock> {
        self.socks.get_mut(s).ok_or(Error::new("catmint socket", libc::EBADF))
    }

    /// Binds a socket to a local address; port 0 picks one. Returns the address bound.
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

    /// Sends a message on a connected stream, or a datagram to `to`.
    pub fn send<P: Payload + 'static>(
        &mut self,
        s: SockId,
        data: P,
        to: Option<SocketAddrV4>,
        tag: Tag,
        out: &mut dyn Sink,
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

    /// Asks for the next message on a socket; it is reported to `out` under `tag` when it arrives.
    pub fn recv(&mut self, s: SockId, tag: Tag, out: &mut dyn Sink) -> Result<()> {
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

    /// The address of a connected socket's peer (ENOTCONN otherwise).
    pub fn peer_addr(&mut self, s: SockId) -> Result<SocketAddrV4> {
        match self.sock_mut(s)? {
            Sock::Connected(ep) => ep.id().peer_addr().ok_or(Error::new("peer_addr", libc::ENOTCONN)),
            _ => Err(Error::new("peer_addr", libc::ENOTCONN)),
        }
    }

    /// The socket's own address, port included: the bound address, or for
    /// a connection the one its route picked (also on an accepted one).
    /// None when it has none yet.
    pub fn local_addr(&mut self, s: SockId) -> Option<SocketAddrV4> {
        match self.sock_mut(s).ok()? {
            Sock::Connected(ep) => ep.id().local_addr().filter(|a| a.port() != 0),
            Sock::Idle { id, bound } => bound.or_else(|| id.local_addr().filter(|a| a.port() != 0)),
            _ => None,
        }
    }

    /// Shuts down one or both directions of a connected stream, as
    /// shutdown(2). Write: a FIN (end of file for the peer's receives) goes
    /// once the sends already queued are out; the connection stays up and
    /// this end still receives; later sends fail with EPIPE. Read: receives,
    /// pending or later, get what has arrived, then end of file. On a
    /// datagram socket nothing happens here (the caller keeps the marks).
    /// ENOTCONN on a stream that is not connected.
    pub fn shutdown(&mut self, s: SockId, how: std::net::Shutdown, out: &mut dyn Sink) -> Result<()> {
        use std::net::Shutdown;
        match self.sock_mut(s)? {
            Sock::Connected(ep) => {
                if how != Shutdown::Write {
                    ep.shutdown_read(out);
                }
                if how != Shutdown::Read {
                    ep.shutdown_write(out);
                }
                Ok(())
            }
            Sock::Dgram(_) | Sock::DgramUnbound { .. } => Ok(()),
            _ => Err(Error::new("shutdown", libc::ENOTCONN)),
        }
    }

    /// Closes a socket: its pending requests finish with ECANCELED. A healthy
    /// connection sends FIN (end of file for the peer) before disconnecting.
    pub fn close(&mut self, s: SockId, out: &mut dyn Sink) -> Result<()> {
        let sock = self.socks.take(s).ok_or(Error::new("close", libc::EBADF))?;
        match sock {
            Sock::Idle { .. } | Sock::Broken | Sock::Resolver { .. } => {}
            sock @ (Sock::Dgram(_) | Sock::DgramUnbound { .. }) => self.close_dgram(sock, out),
            Sock::Resolving { tag, .. } | Sock::Connecting { tag, .. } => {
                self.timed -= 1;
                out.push((tag, Done::Failed(libc::ECANCELED)));
            }
            Sock::Incoming { .. } => self.timed -= 1,
            Sock::Closing { ep, deadline } => self.socks.put_back(s, Sock::Closing { ep, deadline }),
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
                // A FIN sent by an earlier shutdown may still be on its way:
                // wait for it as for our own.
                if ep.send_fin() || (ep.fin_sent() && !ep.sends_drained()) {
                    self.start_timer(s);
                    self.socks.put_back(s, Sock::Closing { ep, deadline: Instant::now() + Duration::from_secs(1) });
                } else {
                    ep.id().disconnect();
                }
            }
        }
        self.trim_due |= self.socks.reclaim();
        Ok(())
    }

    /// The device an id resolved or bound to.
    fn device_of(&self, id: &CmId) -> Option<usize> {
        self.devices.iter().position(|d| id.is_on(&d.ctx))
    }

    fn rc_config(&self) -> RcConfig {
        RcConfig {
            credits: self.cfg.credits,
            buf_size: self.cfg.buf_size,
            sq_depth: self.cfg.sq_depth,
            inline: self.cfg.inline,
        }
    }

    fn new_endpoint(&mut self, id: CmId, key: u64) -> std::result::Result<Rc, (Error, Option<CmId>)> {
        let Some(dev) = self.device_of(&id) else {
            return Err((Error::new("rdma_cm id on an unknown device", libc::ENODEV), Some(id)));
        };
        let cfg = self.rc_config();
        let d = &mut self.devices[dev];
        let srq = match &d.srq {
            Some(srq) => srq.clone(),
            None => {
                let made =
                    srq::Srq::new(&d.ctx, &d.pd, dev, &self.pool, &self.notify, cfg.buf_size, self.cfg.srq_depth);
                match made {
                    Ok(srq) => d.srq.insert(Arc::new(Mutex::new(srq))).clone(),
                    Err(e) => return Err((e, Some(id))),
                }
            }
        };
        let ep = Rc::new(id, dev, &d.pd, &d.cq, &srq, &self.pool, cfg, key).map_err(|(e, id)| (e, Some(id)))?;
        self.arm_new_qp(dev);
        Ok(ep)
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

/// Entries of a device's CQ, shared by all its QPs: room for the completions
/// of the shared receive queue (up to 16,384 receives) and of many
/// connections' send queues, within what the device allows.
fn cq_depth(ctx: &Context) -> i32 {
    const WANT: i32 = 16384;
    match ctx.limits() {
        Some(l) if l.max_cqe > 0 => WANT.min(l.max_cqe),
        _ => 4096,
    }
}
