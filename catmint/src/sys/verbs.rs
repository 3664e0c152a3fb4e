//! Owners of verbs objects. Each keeps its parent alive (an `Arc`) and
//! destroys its object on drop, so teardown order follows from ownership:
//! QPs (in `qp::Qp`) before CQs and SRQs, MRs before PDs, everything before
//! the device list that holds the contexts open. Completions are read
//! through [`Completion`], never as the raw `ibv_wc` union.

use super::{check, ffi, nonnull, set_nonblocking, Error, Result};
use std::ffi::CStr;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;

/// The device contexts librdmacm opened (`rdma_get_devices`). rdma_cm ids
/// bound to an address use these same contexts (`cm_id->verbs`).
pub struct DeviceList {
    list: NonNull<*mut ffi::ibv_context>,
    len: usize,
}

// SAFETY: the list and its contexts are thread-safe rdma-core objects; we only
// read the array and free it once on drop.
unsafe impl Send for DeviceList {}
// SAFETY: as above.
unsafe impl Sync for DeviceList {}

impl DeviceList {
    /// Opens every RDMA device; ENODEV if there are none.
    pub fn open() -> Result<Arc<DeviceList>> {
        let mut n = 0;
        // SAFETY: n is a live out-parameter.
        let list = nonnull!(rdma_get_devices(&mut n)).map_err(|e| {
            // With no rdma devices (or no kernel support) rdma-core returns NULL.
            if e.errno == libc::ENOSYS || e.errno == libc::ENOENT {
                Error::new(e.call, libc::ENODEV)
            } else {
                e
            }
        })?;
        let dl = DeviceList { list, len: n.max(0) as usize };
        if dl.len == 0 {
            return Err(Error::new("rdma_get_devices: no RDMA devices", libc::ENODEV));
        }
        Ok(Arc::new(dl))
    }

    /// The contexts, each keeping the list (and so itself) open.
    pub fn contexts(self: &Arc<Self>) -> Vec<Context> {
        (0..self.len)
            // SAFETY: rdma_get_devices returned an array of `len` contexts.
            .filter_map(|i| NonNull::new(unsafe { *self.list.as_ptr().add(i) }))
            .map(|raw| Context { raw, _devices: self.clone() })
            .collect()
    }
}

/// An open device context (from the device list, which stays open while
/// any context of it lives).
#[derive(Clone)]
pub struct Context {
    raw: NonNull<ffi::ibv_context>,
    _devices: Arc<DeviceList>,
}

// SAFETY: device contexts are thread-safe rdma-core objects; we only read them.
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}

/// What a device allows, as far as catmint asks.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceLimits {
    /// Entries of one CQ.
    pub max_cqe: i32,
    /// Shared receive queues (0: none).
    pub max_srq: i32,
    /// Receives of one shared receive queue.
    pub max_srq_wr: i32,
}

impl Context {
    pub(super) fn raw(&self) -> *mut ffi::ibv_context {
        self.raw.as_ptr()
    }

    /// True if `raw` is this context (rdma_cm ids name theirs by pointer).
    pub(super) fn is(&self, raw: *mut ffi::ibv_context) -> bool {
        self.raw.as_ptr() == raw
    }

    /// The device's name ("rxe0").
    pub fn name(&self) -> String {
        // SAFETY: the context is live; its device and the returned name
        // live as long as it.
        unsafe {
            let name = ffi::ibv_get_device_name((*self.raw.as_ptr()).device);
            if name.is_null() {
                return "?".into();
            }
            CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    }

    /// The device's limits; None if the query failed.
    pub fn limits(&self) -> Option<DeviceLimits> {
        // SAFETY: ibv_device_attr is plain data; all-zero is a valid start.
        let mut attr: ffi::ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is live and attr a writable attribute struct.
        if unsafe { ffi::ibv_query_device(self.raw(), &mut attr) } != 0 {
            return None;
        }
        Some(DeviceLimits { max_cqe: attr.max_cqe, max_srq: attr.max_srq, max_srq_wr: attr.max_srq_wr })
    }

    /// The active MTU of port `port` in bytes (1024 on a 1500-byte veth
    /// under rxe); 256 if the query fails.
    pub fn port_mtu(&self, port: u8) -> usize {
        // SAFETY: plain data; zero is valid, and the query fills it.
        let mut attr: ffi::ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is live; attr is a live out-parameter.
        let rc = unsafe { ffi::___ibv_query_port(self.raw(), port, &mut attr) };
        if rc != 0 || attr.active_mtu == 0 {
            return 256;
        }
        128usize << attr.active_mtu.min(5)
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: the list came from rdma_get_devices and is freed exactly once.
        unsafe { ffi::rdma_free_devices(self.list.as_ptr()) };
    }
}

/// A protection domain.
pub struct Pd {
    raw: NonNull<ffi::ibv_pd>,
    _devices: Arc<DeviceList>,
}

// SAFETY: verbs objects may be used from any thread.
unsafe impl Send for Pd {}
// SAFETY: as above.
unsafe impl Sync for Pd {}

impl Pd {
    /// A protection domain on `ctx`.
    pub fn new(ctx: &Context) -> Result<Arc<Pd>> {
        // SAFETY: the context is live (it holds the device list open).
        let raw = nonnull!(ibv_alloc_pd(ctx.raw()))?;
        Ok(Arc::new(Pd { raw, _devices: ctx._devices.clone() }))
    }

    pub(super) fn raw(&self) -> *mut ffi::ibv_pd {
        self.raw.as_ptr()
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: every MR, QP, SRQ and AH on this PD holds an Arc to it,
        // so none is left; freed once.
        if let Err(e) = check!(ibv_dealloc_pd(self.raw.as_ptr())) {
            log::error!("catmint: {e}");
        }
    }
}

/// A memory region registered for local access (and remote write, unused).
pub struct Mr {
    raw: NonNull<ffi::ibv_mr>,
    _pd: Arc<Pd>,
}

// SAFETY: as for Pd.
unsafe impl Send for Mr {}
// SAFETY: as for Pd.
unsafe impl Sync for Mr {}

impl Mr {
    /// Registers `len` bytes at `addr`.
    ///
    /// # Safety
    /// The memory must stay allocated until the `Mr` is dropped.
    pub(super) unsafe fn register(pd: &Arc<Pd>, addr: *mut u8, len: usize) -> Result<Mr> {
        let access = ffi::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0 as i32;
        // SAFETY: the PD is live; the memory outlives the MR (the caller's contract).
        let raw = nonnull!(ibv_reg_mr(pd.raw(), addr.cast(), len, access))?;
        Ok(Mr { raw, _pd: pd.clone() })
    }

    pub fn lkey(&self) -> u32 {
        // SAFETY: raw is a live MR.
        unsafe { self.raw.as_ref().lkey }
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: a live MR, deregistered once; nothing posted uses it any
        // more (its memory's owner drops it before freeing the memory).
        if let Err(e) = check!(ibv_dereg_mr(self.raw.as_ptr())) {
            log::error!("catmint: {e}");
        }
    }
}

/// A completion channel with a non-blocking descriptor.
pub struct CompChannel {
    raw: NonNull<ffi::ibv_comp_channel>,
    _devices: Arc<DeviceList>,
}

// SAFETY: as for Pd.
unsafe impl Send for CompChannel {}
// SAFETY: as for Pd.
unsafe impl Sync for CompChannel {}

impl CompChannel {
    /// A channel on `ctx`, its descriptor non-blocking.
    pub fn new(ctx: &Context) -> Result<Arc<CompChannel>> {
        // SAFETY: the context is live.
        let raw = nonnull!(ibv_create_comp_channel(ctx.raw()))?;
        let ch = CompChannel { raw, _devices: ctx._devices.clone() };
        set_nonblocking(ch.fd())?;
        Ok(Arc::new(ch))
    }

    pub fn fd(&self) -> RawFd {
        // SAFETY: raw is a live channel.
        unsafe { self.raw.as_ref().fd }
    }
}

impl Drop for CompChannel {
    fn drop(&mut self) {
        // SAFETY: every CQ on this channel holds an Arc to it; destroyed once.
        if let Err(e) = check!(ibv_destroy_comp_channel(self.raw.as_ptr())) {
            log::error!("catmint: {e}");
        }
    }
}

/// A completion queue tied to a completion channel.
pub struct Cq {
    raw: NonNull<ffi::ibv_cq>,
    channel: Arc<CompChannel>,
    /// Channel events read but not yet acknowledged (acked in batches).
    unacked: u32,
    /// A notification was requested and its event (if raised) not read yet.
    requested: bool,
}

// SAFETY: as for Pd.
unsafe impl Send for Cq {}

impl Cq {
    /// A CQ of `depth` entries on `ctx`, notifying through `channel`.
    pub fn new(ctx: &Context, channel: Arc<CompChannel>, depth: i32) -> Result<Cq> {
        // SAFETY: the context and the channel are live.
        let raw = nonnull!(ibv_create_cq(ctx.raw(), depth, std::ptr::null_mut(), channel.raw.as_ptr(), 0))?;
        Ok(Cq { raw, channel, unacked: 0, requested: false })
    }

    pub(super) fn raw(&self) -> *mut ffi::ibv_cq {
        self.raw.as_ptr()
    }

    /// Takes up to `buf`'s capacity of completions; returns them.
    pub fn poll<'a>(&mut self, buf: &'a mut Completions) -> &'a [Completion] {
        let wcs = &mut buf.0;
        // SAFETY: raw is live and wcs has room for wcs.len() entries.
        let n = unsafe { ffi::ibv_poll_cq(self.raw.as_ptr(), wcs.len() as i32, wcs.as_mut_ptr().cast()) };
        if n < 0 {
            log::error!("catmint: ibv_poll_cq failed ({n})");
            return &[];
        }
        &wcs[..n as usize]
    }

    /// Reads the event the last request may have raised, so the descriptor
    /// is quiet again. A request raises at most one event, and `arm` reads
    /// before it requests again: one read (none without a request) empties
    /// the channel.
    fn take_event(&mut self) {
        if !std::mem::take(&mut self.requested) {
            return;
        }
        let mut cq = std::ptr::null_mut();
        let mut ctx = std::ptr::null_mut();
        // SAFETY: the channel is live and non-blocking; out-pointers are locals.
        if unsafe { ffi::ibv_get_cq_event(self.channel.raw.as_ptr(), &mut cq, &mut ctx) } == 0 {
            self.unacked += 1;
        }
        if self.unacked >= 64 {
            // SAFETY: we acknowledge exactly the events we read.
            unsafe { ffi::ibv_ack_cq_events(self.raw.as_ptr(), self.unacked) };
            self.unacked = 0;
        }
    }

    /// Prepares to sleep on the channel: consumes the old event, then asks
    /// for one on the next completion. The caller polls the CQ once more
    /// after this (a completion that came before the request raises no event).
    ///
    /// Events are read here only, not by busy polls: a poll that read the
    /// channel would cost a system call per round (on every device, even
    /// those without traffic), and an event it left unread at worst ends
    /// the next sleep early, since this reads it first.
    pub fn arm(&mut self) {
        self.take_event();
        self.request_notify();
        self.requested = true;
    }

    /// Asks for an event on the next completion unless one is already
    /// asked for. Unlike `arm` it never reads an event, so one raised for a
    /// sleeping waiter stays readable for it.
    pub fn arm_if_quiet(&mut self) {
        if !self.requested {
            self.request_notify();
            self.requested = true;
        }
    }

    /// For a CQ no QP uses (none can add completions to it): reads what the
    /// last `arm` may have raised and asks for nothing, so sleeping costs no
    /// system call on a device without connections.
    pub fn quiesce(&mut self) {
        self.take_event();
    }

    fn request_notify(&mut self) {
        // SAFETY: raw is a live CQ.
        let rc = unsafe { ffi::ibv_req_notify_cq(self.raw.as_ptr(), 0) };
        if rc != 0 {
            log::error!("catmint: ibv_req_notify_cq failed ({rc})");
        }
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        self.take_event();
        if self.unacked > 0 {
            // SAFETY: acknowledges the events read from this CQ's channel.
            unsafe { ffi::ibv_ack_cq_events(self.raw.as_ptr(), self.unacked) };
        }
        // SAFETY: a live CQ, destroyed once; every event read was
        // acknowledged above. Each QP on it holds the CQ's Arc, so normally
        // none is left; were one left, the call fails (EBUSY, logged) and
        // the CQ leaks, which is safe.
        if let Err(e) = check!(ibv_destroy_cq(self.raw.as_ptr())) {
            log::error!("catmint: {e}");
        }
    }
}

/// An address handle for UD sends.
pub struct Ah {
    raw: NonNull<ffi::ibv_ah>,
    _pd: Arc<Pd>,
}

// SAFETY: as for Pd.
unsafe impl Send for Ah {}

impl Ah {
    /// An address handle on `pd` for the path `attr` describes (from a
    /// resolved rdma_cm UD route).
    pub fn new(pd: &Arc<Pd>, attr: &mut ffi::ibv_ah_attr) -> Result<Ah> {
        // SAFETY: the PD is live; attr is a live attribute struct the call reads.
        let raw = nonnull!(ibv_create_ah(pd.raw(), attr))?;
        Ok(Ah { raw, _pd: pd.clone() })
    }

    pub(super) fn raw(&self) -> *mut ffi::ibv_ah {
        self.raw.as_ptr()
    }
}

impl Drop for Ah {
    fn drop(&mut self) {
        // SAFETY: the QP that sends with this AH owns it and destroys its
        // QP first (see `qp::Qp`); destroyed once.
        if let Err(e) = check!(ibv_destroy_ah(self.raw.as_ptr())) {
            log::error!("catmint: {e}");
        }
    }
}

/// A shared receive queue: the verbs object only. Each QP that receives
/// from it holds an `Arc`, so it is destroyed after its last QP; the
/// receives posted on it are owned by `qp::SrqQueue`.
pub struct Srq {
    raw: NonNull<ffi::ibv_srq>,
    _pd: Arc<Pd>,
}

// SAFETY: as for Pd.
unsafe impl Send for Srq {}
// SAFETY: as for Pd.
unsafe impl Sync for Srq {}

impl Srq {
    /// An SRQ of up to `want` receives (one SGE each) on `pd`; also returns
    /// the depth the device gave (never more than asked).
    pub(super) fn new(pd: &Arc<Pd>, want: u32) -> Result<(Arc<Srq>, u32)> {
        // SAFETY: ibv_srq_init_attr is plain data; all-zero is a valid start.
        let mut attr: ffi::ibv_srq_init_attr = unsafe { std::mem::zeroed() };
        attr.attr.max_wr = want;
        attr.attr.max_sge = 1;
        // SAFETY: the PD is live; attr is a live attribute struct.
        let raw = nonnull!(ibv_create_srq(pd.raw(), &mut attr))?;
        // The device may round the depth up; never use more than asked.
        let max_wr = want.min(attr.attr.max_wr.max(1));
        Ok((Arc::new(Srq { raw, _pd: pd.clone() }), max_wr))
    }

    pub(super) fn raw(&self) -> *mut ffi::ibv_srq {
        self.raw.as_ptr()
    }
}

impl Drop for Srq {
    fn drop(&mut self) {
        // SAFETY: every QP using the SRQ is gone (each holds an Arc to it).
        let rc = unsafe { ffi::ibv_destroy_srq(self.raw.as_ptr()) };
        if rc != 0 {
            log::error!("catmint: ibv_destroy_srq failed ({rc})");
        }
    }
}

/// One work completion, read through accessors (the raw `ibv_wc` holds a
/// union whose member depends on its flags). Completions exist only as
/// polled from a CQ ([`Cq::poll`]): one is the device's word that the work
/// request it names is finished, which is what lets a queue hand back the
/// buffer that request owned (`qp::Qp::complete_recv`).
#[repr(transparent)]
pub struct Completion(ffi::ibv_wc);

impl Completion {
    /// The work request's id.
    pub fn wr_id(&self) -> u64 {
        self.0.wr_id
    }

    /// True if the request succeeded.
    pub fn ok(&self) -> bool {
        self.0.status == ffi::ibv_wc_status::IBV_WC_SUCCESS
    }

    /// Bytes received.
    pub fn byte_len(&self) -> usize {
        self.0.byte_len as usize
    }

    /// The number of the local QP the request was posted on (for a receive
    /// from an SRQ: the QP the message arrived on). With the status and the
    /// id, the only fields valid in a failed completion.
    pub fn qp_num(&self) -> u32 {
        self.0.qp_num
    }

    /// The immediate data of a receive that carried some (host order).
    pub fn imm(&self) -> Option<u32> {
        (self.ok() && self.0.wc_flags & ffi::ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0)
            // SAFETY: the flag says the union holds immediate data (plain data).
            .then(|| u32::from_be(unsafe { self.0.imm_data_invalidated_rkey_union.imm_data }))
    }
}

#[cfg(test)]
impl Completion {
    /// A completion as a device would report it (tests of the queues'
    /// bookkeeping, which need no device).
    pub(super) fn reported(wr_id: u64, ok: bool) -> Completion {
        // SAFETY: ibv_wc is plain data; all-zero is a valid value.
        let mut wc: ffi::ibv_wc = unsafe { std::mem::zeroed() };
        wc.wr_id = wr_id;
        wc.status = if ok { ffi::ibv_wc_status::IBV_WC_SUCCESS } else { ffi::ibv_wc_status::IBV_WC_WR_FLUSH_ERR };
        Completion(wc)
    }
}

/// Room for the completions of one poll.
pub struct Completions(Vec<Completion>);

impl Completions {
    /// Room for `n` completions.
    pub fn new(n: usize) -> Completions {
        // SAFETY: ibv_wc is plain data; all-zero is a valid value, and these
        // entries are only read after a poll has written them.
        Completions((0..n).map(|_| Completion(unsafe { std::mem::zeroed() })).collect())
    }

    /// How many completions one poll takes at most.
    pub fn capacity(&self) -> usize {
        self.0.len()
    }
}
