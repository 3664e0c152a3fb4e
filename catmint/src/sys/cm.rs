//! rdma_cm: a non-blocking event channel, ids that destroy themselves (and
//! their QP) on drop, and events that acknowledge themselves on drop.

use super::qp::CqCell;
use super::verbs::{Context, Pd, Srq};
use super::{check, ffi, nonnull, set_nonblocking, Error, Result};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;

/// The channel every id of a `Catmint` reports on, polled from our loop
/// (rping's order, without its CM thread).
pub struct EventChannel {
    raw: NonNull<ffi::rdma_event_channel>,
}

// SAFETY: rdma_cm channels may be used from any thread.
unsafe impl Send for EventChannel {}
// SAFETY: as above.
unsafe impl Sync for EventChannel {}

impl EventChannel {
    /// A channel with a non-blocking descriptor.
    pub fn new() -> Result<Arc<EventChannel>> {
        // SAFETY: no arguments.
        let raw = nonnull!(rdma_create_event_channel())?;
        let ch = EventChannel { raw };
        set_nonblocking(ch.fd())?;
        Ok(Arc::new(ch))
    }

    /// The channel's descriptor (readable when an event waits).
    pub fn fd(&self) -> RawFd {
        // SAFETY: raw is a live channel.
        unsafe { self.raw.as_ref().fd }
    }

    /// The next event, or None when none is pending.
    pub fn next(&self) -> Result<Option<CmEvent>> {
        let mut ev = std::ptr::null_mut();
        // SAFETY: the channel is live and non-blocking; ev is a local out-pointer.
        match check!(rdma_get_cm_event(self.raw.as_ptr(), &mut ev)) {
            Ok(()) => Ok(NonNull::new(ev).map(|raw| CmEvent { raw, child_taken: std::cell::Cell::new(false) })),
            Err(e) if e.errno == libc::EAGAIN => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        // SAFETY: every id on this channel holds an Arc to it, so none is left.
        unsafe { ffi::rdma_destroy_event_channel(self.raw.as_ptr()) };
    }
}

/// One rdma_cm event; acknowledged when dropped.
pub struct CmEvent {
    raw: NonNull<ffi::rdma_cm_event>,
    /// The CONNECT_REQUEST's new id was taken (`take_child`).
    child_taken: std::cell::Cell<bool>,
}

impl CmEvent {
    fn ev(&self) -> &ffi::rdma_cm_event {
        // SAFETY: raw is a live event until we ack it in drop.
        unsafe { self.raw.as_ref() }
    }

    pub fn kind(&self) -> ffi::rdma_cm_event_type::Type {
        self.ev().event
    }

    /// The event's status: 0, a negative errno, or a CM reject reason.
    pub fn status(&self) -> i32 {
        self.ev().status
    }

    /// The `context` stored in the event's id (our key).
    /// Read it before `take_child`: after, it is 0 (the child is no longer
    /// the event's to read, and may be gone).
    pub fn key(&self) -> u64 {
        let id = self.ev().id;
        if id.is_null() || self.child_taken.get() {
            0
        } else {
            // SAFETY: the event's id is live while the event is not acked,
            // and a CONNECT_REQUEST's child was not handed out yet.
            unsafe { (*id).context as u64 }
        }
    }

    /// Takes ownership of the new id a CONNECT_REQUEST hands over (its
    /// events go to `channel`, the listener's); EINVAL for another event.
    /// Call at most once per event: a second call would own the id twice.
    pub fn take_child(&self, channel: &Arc<EventChannel>) -> Result<CmId> {
        if self.kind() != ffi::rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_REQUEST || self.child_taken.get() {
            return Err(Error::new("take_child: no connection request", libc::EINVAL));
        }
        let raw = NonNull::new(self.ev().id).ok_or(Error::new("take_child", libc::EINVAL))?;
        self.child_taken.set(true);
        // SAFETY: the child id is live and owned by nobody (librdmacm hands
        // it to the application with the event); we become its one owner.
        unsafe { (*raw.as_ptr()).context = std::ptr::null_mut() };
        Ok(CmId { raw, has_qp: false, _channel: channel.clone(), _cq: None, _srq: None, _pd: None })
    }

    /// The private data of a connection event (copied).
    pub fn private_data(&self) -> Vec<u8> {
        // SAFETY: `param.conn` and `param.ud` both begin with the private
        // data pointer and length, so either member reads them; the pointer
        // is NULL or points to that many bytes while the event is unacked.
        unsafe {
            let conn = &self.ev().param.conn;
            if conn.private_data.is_null() {
                return Vec::new();
            }
            std::slice::from_raw_parts(conn.private_data.cast::<u8>(), conn.private_data_len as usize).to_vec()
        }
    }

    /// The UD parameters of an ESTABLISHED event on a UDP-port-space id.
    pub fn ud_param(&self) -> ffi::rdma_ud_param {
        // SAFETY: for UD ids `param.ud` is the active member; it is plain data.
        unsafe { self.ev().param.ud }
    }

    /// The event's name ("RDMA_CM_EVENT_ESTABLISHED").
    pub fn name(&self) -> String {
        // SAFETY: rdma_event_str returns a static string.
        unsafe { std::ffi::CStr::from_ptr(ffi::rdma_event_str(self.kind())).to_string_lossy().into_owned() }
    }
}

impl Drop for CmEvent {
    fn drop(&mut self) {
        // SAFETY: a live event, acknowledged once.
        if let Err(e) = check!(rdma_ack_cm_event(self.raw.as_ptr())) {
            log::error!("catmint: {e}");
        }
    }
}

/// Port spaces we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortSpace {
    Tcp,
    Udp,
}

/// An rdma_cm id. Destroys its QP (if any) and itself on drop; keeps the CQ
/// and PD its QP uses alive until then.
pub struct CmId {
    raw: NonNull<ffi::rdma_cm_id>,
    has_qp: bool,
    _channel: Arc<EventChannel>,
    _cq: Option<Arc<CqCell>>,
    /// The SRQ its QP receives from: destroyed after the QP.
    _srq: Option<Arc<Srq>>,
    _pd: Option<Arc<Pd>>,
}

// SAFETY: rdma_cm ids may be used from any thread; we never share &mut.
unsafe impl Send for CmId {}

impl CmId {
    /// A new id in port space `ps` whose events carry `key`.
    pub fn new(channel: &Arc<EventChannel>, ps: PortSpace, key: u64) -> Result<CmId> {
        let mut raw = std::ptr::null_mut();
        let ps = match ps {
            PortSpace::Tcp => ffi::rdma_port_space::RDMA_PS_TCP,
            PortSpace::Udp => ffi::rdma_port_space::RDMA_PS_UDP,
        };
        // SAFETY: the channel is live; raw is a local out-pointer; the
        // context is an opaque word.
        check!(rdma_create_id(channel.raw.as_ptr(), &mut raw, key as *mut libc::c_void, ps))?;
        let raw = NonNull::new(raw).ok_or(Error::new("rdma_create_id", libc::EIO))?;
        Ok(CmId { raw, has_qp: false, _channel: channel.clone(), _cq: None, _srq: None, _pd: None })
    }

    fn raw(&self) -> *mut ffi::rdma_cm_id {
        self.raw.as_ptr()
    }

    /// Sets the key events about this id carry.
    pub fn set_key(&self, key: u64) {
        // SAFETY: raw is live; context is an opaque word for our use.
        unsafe { (*self.raw.as_ptr()).context = key as *mut libc::c_void };
    }

    /// True if the id resolved or bound to the device of `ctx`.
    pub fn is_on(&self, ctx: &Context) -> bool {
        // SAFETY: raw is live; verbs is a plain pointer field.
        ctx.is(unsafe { self.raw.as_ref().verbs })
    }

    /// The port of its device the id resolved or bound to.
    pub fn port_num(&self) -> u8 {
        // SAFETY: raw is live; port_num is plain data.
        unsafe { self.raw.as_ref().port_num }
    }

    /// Sets the QP's local ACK timeout (4.096 µs x 2^exp) before connect or
    /// accept. rdma_cm's default for RoCE is about two seconds, so each lost
    /// packet stalls an RC stream that long; perftest uses 14 (67 ms).
    pub fn set_ack_timeout(&self, exp: u8) -> Result<()> {
        let mut v = exp;
        // Option levels and names from rdma_cma.h (RDMA_OPTION_ID, ..._ACK_TIMEOUT).
        const RDMA_OPTION_ID: i32 = 0;
        const RDMA_OPTION_ID_ACK_TIMEOUT: i32 = 3;
        // SAFETY: the id is live; the option value is a live u8 of the size given.
        check!(rdma_set_option(
            self.raw(),
            RDMA_OPTION_ID,
            RDMA_OPTION_ID_ACK_TIMEOUT,
            (&mut v as *mut u8).cast(),
            std::mem::size_of::<u8>()
        ))
    }

    /// Binds to a local address (port 0: any).
    pub fn bind(&self, addr: SocketAddrV4) -> Result<()> {
        let mut sa = to_sockaddr(addr);
        // SAFETY: the id is live; sa is a live sockaddr_in the call reads.
        check!(rdma_bind_addr(self.raw(), (&mut sa as *mut libc::sockaddr_in).cast()))
    }

    /// Listens (connection requests, or SIDR requests on a UDP id).
    pub fn listen(&self, backlog: i32) -> Result<()> {
        // SAFETY: the id is live.
        check!(rdma_listen(self.raw(), backlog))
    }

    /// Starts resolving `dst` (from `src`, if given): an ADDR_RESOLVED or
    /// ADDR_ERROR event follows.
    pub fn resolve_addr(&self, src: Option<SocketAddrV4>, dst: SocketAddrV4, timeout_ms: i32) -> Result<()> {
        let mut s = src.map(to_sockaddr);
        let mut d = to_sockaddr(dst);
        let sp = s.as_mut().map_or(std::ptr::null_mut(), |s| (s as *mut libc::sockaddr_in).cast());
        // SAFETY: the id is live; sp is NULL or a live sockaddr_in, d a live one.
        check!(rdma_resolve_addr(self.raw(), sp, (&mut d as *mut libc::sockaddr_in).cast(), timeout_ms))
    }

    /// Starts resolving the route: ROUTE_RESOLVED or ROUTE_ERROR follows.
    pub fn resolve_route(&self, timeout_ms: i32) -> Result<()> {
        // SAFETY: the id is live.
        check!(rdma_resolve_route(self.raw(), timeout_ms))
    }

    /// Creates the id's QP on `pd`, both queues completing on `cq`,
    /// receiving from `srq` if given; keeps them alive until the QP goes.
    pub(super) fn create_qp(
        &mut self,
        pd: &Arc<Pd>,
        cq: &Arc<CqCell>,
        srq: Option<Arc<Srq>>,
        attr: &mut ffi::ibv_qp_init_attr,
    ) -> Result<NonNull<ffi::ibv_qp>> {
        if self.has_qp {
            return Err(Error::new("rdma_create_qp: the id has a QP", libc::EEXIST));
        }
        // SAFETY: the id, PD, CQ (in attr) and SRQ (in attr, if any) are
        // live, and this id keeps them alive until its QP is destroyed.
        check!(rdma_create_qp(self.raw(), pd.raw(), attr))?;
        // SAFETY: raw is live; rdma_create_qp set its qp.
        let qp = NonNull::new(unsafe { self.raw.as_ref().qp }).ok_or(Error::new("rdma_create_qp", libc::EIO))?;
        self.has_qp = true;
        self._cq = Some(cq.clone());
        self._srq = srq;
        self._pd = Some(pd.clone());
        Ok(qp)
    }

    /// Connects (RC), or sends a SIDR request (UD), with `private` data
    /// (at most 255 bytes; rdma_cm may allow fewer).
    pub fn connect(&self, private: &[u8]) -> Result<()> {
        let mut param = conn_param(private, 0)?;
        // SAFETY: the id is live; param and the private data it points to
        // are live for the call, which copies them.
        check!(rdma_connect(self.raw(), &mut param))
    }

    /// Accepts a connection request (RC) with `private` data, or answers a
    /// SIDR request (UD) with our QP number `qp_num`.
    pub fn accept(&self, private: &[u8], qp_num: u32) -> Result<()> {
        let mut param = conn_param(private, qp_num)?;
        // SAFETY: as for `connect`.
        check!(rdma_accept(self.raw(), &mut param))
    }

    /// Rejects a connection request.
    pub fn reject(&self) {
        // SAFETY: the id is live; no private data.
        let _ = check!(rdma_reject(self.raw(), std::ptr::null(), 0));
    }

    /// Starts disconnecting (a DISCONNECTED event follows).
    pub fn disconnect(&self) {
        // SAFETY: the id is live.
        let _ = check!(rdma_disconnect(self.raw()));
    }

    /// The local address (None before it has one).
    pub fn local_addr(&self) -> Option<SocketAddrV4> {
        // SAFETY: raw is live; route.addr is plain data.
        unsafe { from_sin(&self.raw.as_ref().route.addr.src_addr_union.src_sin) }
    }

    /// The peer's address (None before it has one).
    pub fn peer_addr(&self) -> Option<SocketAddrV4> {
        // SAFETY: raw is live; route.addr is plain data.
        unsafe { from_sin(&self.raw.as_ref().route.addr.dst_addr_union.dst_sin) }
    }
}

impl CmId {
    /// Destroys the QP (if any) and keeps the id, for an endpoint that
    /// failed half-way: its id may still have an unacknowledged event, so it
    /// must go to the graveyard rather than be destroyed at once.
    pub(super) fn destroy_qp(&mut self) {
        if std::mem::take(&mut self.has_qp) {
            // SAFETY: we created the QP and nothing posts to it any more.
            unsafe { ffi::rdma_destroy_qp(self.raw()) };
            self._cq = None;
            self._srq = None;
            self._pd = None;
        }
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        self.destroy_qp();
        // SAFETY: a live id we own, destroyed once, its QP already gone.
        if let Err(e) = check!(rdma_destroy_id(self.raw())) {
            log::error!("catmint: {e}");
        }
    }
}

/// The connection parameters catmint uses, with `private` data.
fn conn_param(private: &[u8], qp_num: u32) -> Result<ffi::rdma_conn_param> {
    let len = u8::try_from(private.len()).map_err(|_| Error::new("rdma_cm private data", libc::EINVAL))?;
    Ok(ffi::rdma_conn_param {
        private_data: private.as_ptr().cast(),
        private_data_len: len,
        responder_resources: 1,
        initiator_depth: 1,
        flow_control: 0,
        // Transport retries hide packet loss; RNR retries are a safety net our
        // credits should never need.
        retry_count: 7,
        rnr_retry_count: 7,
        srq: 0,
        qp_num,
    })
}

fn to_sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

fn from_sin(sin: &libc::sockaddr_in) -> Option<SocketAddrV4> {
    (i32::from(sin.sin_family) == libc::AF_INET)
        .then(|| SocketAddrV4::new(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)), u16::from_be(sin.sin_port)))
}
