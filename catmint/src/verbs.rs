//! Owners of verbs objects. Each keeps its parent alive (an `Arc`) and
//! destroys its object on drop, so teardown order follows from ownership:
//! QPs (in `cm::CmId`) before CQs, MRs before PDs, everything before the
//! device list that holds the contexts open.

use crate::sys::{check, ffi, nonnull, Error, Result};
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

    /// The contexts.
    pub fn contexts(&self) -> Vec<*mut ffi::ibv_context> {
        // SAFETY: rdma_get_devices returned an array of `len` valid contexts.
        (0..self.len).map(|i| unsafe { *self.list.as_ptr().add(i) }).collect()
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
    pub fn new(ctx: *mut ffi::ibv_context, devices: Arc<DeviceList>) -> Result<Arc<Pd>> {
        let raw = nonnull!(ibv_alloc_pd(ctx))?;
        Ok(Arc::new(Pd { raw, _devices: devices }))
    }

    pub fn raw(&self) -> *mut ffi::ibv_pd {
        self.raw.as_ptr()
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
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
    pub unsafe fn register(pd: &Arc<Pd>, addr: *mut u8, len: usize) -> Result<Mr> {
        let access = ffi::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0 as i32;
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
    pub fn new(ctx: *mut ffi::ibv_context, devices: Arc<DeviceList>) -> Result<Arc<CompChannel>> {
        let raw = nonnull!(ibv_create_comp_channel(ctx))?;
        let ch = CompChannel { raw, _devices: devices };
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
    pub fn new(ctx: *mut ffi::ibv_context, channel: Arc<CompChannel>, depth: i32) -> Result<Cq> {
        let raw = nonnull!(ibv_create_cq(ctx, depth, std::ptr::null_mut(), channel.raw.as_ptr(), 0))?;
        Ok(Cq { raw, channel, unacked: 0, requested: false })
    }

    pub fn raw(&self) -> *mut ffi::ibv_cq {
        self.raw.as_ptr()
    }

    /// Takes up to `wcs.len()` completions.
    pub fn poll(&mut self, wcs: &mut [ffi::ibv_wc]) -> usize {
        // SAFETY: raw is live and wcs has room for wcs.len() entries.
        let n = unsafe { ffi::ibv_poll_cq(self.raw.as_ptr(), wcs.len() as i32, wcs.as_mut_ptr()) };
        if n < 0 {
            log::error!("catmint: ibv_poll_cq failed ({n})");
            return 0;
        }
        n as usize
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
    pub fn new(pd: &Arc<Pd>, attr: &mut ffi::ibv_ah_attr) -> Result<Ah> {
        let raw = nonnull!(ibv_create_ah(pd.raw(), attr))?;
        Ok(Ah { raw, _pd: pd.clone() })
    }

    pub fn raw(&self) -> *mut ffi::ibv_ah {
        self.raw.as_ptr()
    }
}

impl Drop for Ah {
    fn drop(&mut self) {
        if let Err(e) = check!(ibv_destroy_ah(self.raw.as_ptr())) {
            log::error!("catmint: {e}");
        }
    }
}

/// Name of the device behind a context ("rxe0").
pub fn device_name(ctx: *mut ffi::ibv_context) -> String {
    // SAFETY: ctx is a live context from rdma_get_devices; its device and the
    // returned name live as long as the context.
    unsafe {
        let name = ffi::ibv_get_device_name((*ctx).device);
        if name.is_null() {
            return "?".into();
        }
        CStr::from_ptr(name).to_string_lossy().into_owned()
    }
}

pub(crate) fn set_nonblocking(fd: RawFd) -> Result<()> {
    // SAFETY: fcntl on a descriptor we own; no pointers involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(Error::last("fcntl(O_NONBLOCK)"));
    }
    Ok(())
}
