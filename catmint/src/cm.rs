//! rdma_cm: a non-blocking event channel, ids that destroy themselves (and
//! their QP) on drop, and events that acknowledge themselves on drop.

use crate::srq::SrqCell;
use crate::sys::{check, ffi, nonnull, Error, Result};
use crate::verbs::{set_nonblocking, Cq, Pd};
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
    pub fn new() -> Result<Arc<EventChannel>> {
        let raw = nonnull!(rdma_create_event_channel())?;
        let ch = EventChannel { raw };
        set_nonblocking(ch.fd())?;
        Ok(Arc::new(ch))
    }

    pub fn fd(&self) -> RawFd {
        // SAFETY: raw is a live channel.
        unsafe { self.raw.as_ref().fd }
    }

    /// The next event, or None when none is pending.
    pub fn next(&self) -> Result<Option<CmEvent>> {
        let mut ev = std::ptr::null_mut();
        match check!(rdma_get_cm_event(self.raw.as_ptr(), &mut ev)) {
            Ok(()) => Ok(NonNull::new(ev).map(|raw| CmEvent { raw })),
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

    /// The id the event is about (for CONNECT_REQUEST: the new child id).
    pub fn id(&self) -> *mut ffi::rdma_cm_id {
        self.ev().id
    }

    /// The `context` stored in the event's id (our key).
    pub fn key(&self) -> u64 {
        let id = self.id();
        // SAFETY: id is live while the event is not acked.
        if id.is_null() {
            0
        } else {
            unsafe { (*id).context as u64 }
        }
    }

    /// The private data of a connection event (copied).
    pub fn private_data(&self) -> Vec<u8> {
        // SAFETY: for connection events `param.conn` is the active member, and
        // private_data points to private_data_len bytes while unacked.
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

    pub fn name(&self) -> String {
        // SAFETY: rdma_event_str returns a static string.
        unsafe { std::ffi::CStr::from_ptr(ffi::rdma_event_str(self.kind())).to_string_lossy().into_owned() }
    }
}

impl Drop for CmEvent {
    fn drop(&mut self) {
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
    _srq: Option<Arc<SrqCell>>,
    _pd: Option<Arc<Pd>>,
}

/// A CQ shared by the QPs of one device.
pub type CqCell = std::sync::Mutex<Cq>;

// SAFETY: rdma_cm ids may be used from any thread; we never share &mut.
unsafe impl Send for CmId {}

impl CmId {
    pub fn new(channel: &Arc<EventChannel>, ps: PortSpace, key: u64) -> Result<CmId> {
        let mut raw = std::ptr::null_mut();
        let ps = match ps {
            PortSpace::Tcp => ffi::rdma_port_space::RDMA_PS_TCP,
            PortSpace::Udp => ffi::rdma_port_space::RDMA_PS_UDP,
        };
        check!(rdma_create_id(channel.raw.as_ptr(), &mut raw, key as *mut libc::c_void, ps))?;
        let raw = NonNull::new(raw).ok_or(Error::new("rdma_create_id", libc::EIO))?;
        Ok(CmId { raw, has_qp: false, _channel: channel.clone(), _cq: None, _srq: None, _pd: None })
    }

    /// Takes ownership of a child id handed over by a CONNECT_REQUEST.
    ///
    /// # Safety
    /// `raw` must be the event's child id, not owned by anyone else.
    pub unsafe fn adopt(raw: *mut ffi::rdma_cm_id, channel: &Arc<EventChannel>, key: u64) -> Result<CmId> {
        let raw = NonNull::new(raw).ok_or(Error::new("adopt", libc::EINVAL))?;
        // SAFETY: the child id is live; we become its only owner.
        unsafe { (*raw.as_ptr()).context = key as *mut libc::c_void };
        Ok(CmId { raw, has_qp: false, _channel: channel.clone(), _cq: None, _srq: None, _pd: None })
    }

    pub fn raw(&self) -> *mut ffi::rdma_cm_id {
        self.raw.as_ptr()
    }

    /// Sets the key events about this id carry.
    pub fn set_key(&self, key: u64) {
        // SAFETY: raw is live; context is an opaque word for our use.
        unsafe { (*self.raw.as_ptr()).context = key as *mut libc::c_void };
    }

    /// The device context this id resolved or bound to (NULL before).
    pub fn verbs(&self) -> *mut ffi::ibv_context {
        // SAFETY: raw is live.
        unsafe { self.raw.as_ref().verbs }
    }

    pub fn qp(&self) -> *mut ffi::ibv_qp {
        // SAFETY: raw is live.
        unsafe { self.raw.as_ref().qp }
    }

    /// Sets the QP's local ACK timeout (4.096 µs x 2^exp) before connect or
    /// accept. rdma_cm's default for RoCE is about two seconds, so each lost
    /// packet stalls an RC stream that long; perftest uses 14 (67 ms).
    pub fn set_ack_timeout(&self, exp: u8) -> Result<()> {
        let mut v = exp;
        // Option levels and names from rdma_cma.h (RDMA_OPTION_ID, ..._ACK_TIMEOUT).
        const RDMA_OPTION_ID: i32 = 0;
        const RDMA_OPTION_ID_ACK_TIMEOUT: i32 = 3;
        check!(rdma_set_option(
            self.raw(),
            RDMA_OPTION_ID,
            RDMA_OPTION_ID_ACK_TIMEOUT,
            (&mut v as *mut u8).cast(),
            std::mem::size_of::<u8>()
        ))
    }

    pub fn bind(&self, addr: SocketAddrV4) -> Result<()> {
        let mut sa = to_sockaddr(addr);
        check!(rdma_bind_addr(self.raw(), (&mut sa as *mut libc::sockaddr_in).cast()))
    }

    pub fn listen(&self, backlog: i32) -> Result<()> {
        check!(rdma_listen(self.raw(), backlog))
    }

    pub fn resolve_addr(&self, src: Option<SocketAddrV4>, dst: SocketAddrV4, timeout_ms: i32) -> Result<()> {
        let mut s = src.map(to_sockaddr);
        let mut d = to_sockaddr(dst);
        let sp = s.as_mut().map_or(std::ptr::null_mut(), |s| (s as *mut libc::sockaddr_in).cast());
        check!(rdma_resolve_addr(self.raw(), sp, (&mut d as *mut libc::sockaddr_in).cast(), timeout_ms))
    }

    pub fn resolve_route(&self, timeout_ms: i32) -> Result<()> {
        check!(rdma_resolve_route(self.raw(), timeout_ms))
    }

    /// Creates the id's QP on `pd`, both queues completing on `cq`,
    /// receiving from `srq` if given.
    pub fn create_qp(
        &mut self,
        pd: &Arc<Pd>,
        cq: &Arc<CqCell>,
        srq: Option<&Arc<SrqCell>>,
        attr: &mut ffi::ibv_qp_init_attr,
    ) -> Result<()> {
        let raw_cq = cq.lock().unwrap_or_else(|e| e.into_inner()).raw();
        attr.send_cq = raw_cq;
        attr.recv_cq = raw_cq;
        if let Some(srq) = srq {
            attr.srq = srq.lock().unwrap_or_else(|e| e.into_inner()).raw();
        }
        check!(rdma_create_qp(self.raw(), pd.raw(), attr))?;
        self.has_qp = true;
        self._cq = Some(cq.clone());
        self._srq = srq.cloned();
        self._pd = Some(pd.clone());
        Ok(())
    }

    pub fn connect(&self, param: &mut ffi::rdma_conn_param) -> Result<()> {
        check!(rdma_connect(self.raw(), param))
    }

    pub fn accept(&self, param: &mut ffi::rdma_conn_param) -> Result<()> {
        check!(rdma_accept(self.raw(), param))
    }

    pub fn reject(&self) {
        let _ = check!(rdma_reject(self.raw(), std::ptr::null(), 0));
    }

    pub fn disconnect(&self) {
        let _ = check!(rdma_disconnect(self.raw()));
    }

    pub fn local_addr(&self) -> Option<SocketAddrV4> {
        // SAFETY: raw is live; route.addr is plain data.
        unsafe { from_sin(&self.raw.as_ref().route.addr.src_addr_union.src_sin) }
    }

    pub fn peer_addr(&self) -> Option<SocketAddrV4> {
        // SAFETY: raw is live; route.addr is plain data.
        unsafe { from_sin(&self.raw.as_ref().route.addr.dst_addr_union.dst_sin) }
    }
}

impl CmId {
    /// Destroys the QP (if any) and keeps the id, for an endpoint that
    /// failed half-way: its id may still have an unacknowledged event, so it
    /// must go to the graveyard rather than be destroyed at once.
    pub fn destroy_qp(&mut self) {
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
        if let Err(e) = check!(rdma_destroy_id(self.raw())) {
            log::error!("catmint: {e}");
        }
    }
}

pub fn to_sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
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
