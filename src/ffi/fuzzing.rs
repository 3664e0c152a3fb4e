//! The C-ABI argument conversions, reachable from fuzz/ (cargo-fuzz).
//!
//! The conversions themselves are private to `ffi` and only run inside an
//! exported call on the process-wide libOS. These wrappers call the very same
//! functions, without `demi_init`, so a fuzzer can feed them arbitrary bytes
//! as C structs. Not API: hidden from the docs and free to change.

use super::types::demi_sgarray_t;
use crate::buffer::Buffer;
use crate::engine::handles::HandleTable;
use crate::engine::Engine;
use crate::error::Result;
use std::net::SocketAddrV4;

/// `sockaddr_in` parsing as `demi_bind`, `demi_connect` and `demi_pushto` do it.
///
/// # Safety
/// A non-null `addr` must be readable for `len` bytes (the C caller's
/// promise); the function must read no more than that.
pub unsafe fn sockaddr_in(addr: *const libc::sockaddr, len: libc::socklen_t) -> Result<SocketAddrV4> {
    // SAFETY: forwarded from this function's contract.
    unsafe { super::sockaddr_in(addr, len) }
}

/// The `sockaddr_in` the library writes for an address (accept results,
/// popped datagrams' senders, `demi_getpeername`).
pub fn to_c_addr(a: SocketAddrV4) -> libc::sockaddr_in {
    super::to_c_addr(a)
}

/// True if `sga_buf` carries the library's handle tag (live or stale). For
/// any other value, `to_buffer` trusts the segment pointer, as send(2) does.
pub fn is_handle(sga_buf: u64) -> bool {
    HandleTable::is_ours(sga_buf)
}

/// An engine over catnap (no sockets are opened), to lend buffers to "C" and
/// turn sgas back into buffers as `demi_push` and `demi_pushto` do.
pub struct Sgas {
    engine: Engine,
}

impl Sgas {
    pub fn new() -> Result<Sgas> {
        Ok(Sgas { engine: Engine::new(Box::new(crate::catnap::Catnap::new()?)) })
    }

    /// `demi_sgaalloc(len)`: a buffer lent to C, named by the sga's handle.
    pub fn alloc(&mut self, len: usize) -> Result<demi_sgarray_t> {
        let e = &mut self.engine;
        let buf = e.alloc(len)?;
        super::sga::lend(e, buf, None)
    }

    /// `demi_sgafree` of the sga whose `sga_buf` is `handle`.
    pub fn free(&mut self, handle: u64) -> Result<()> {
        self.engine.handles.remove(handle).map(drop)
    }

    /// The buffer `demi_push` would send for `sga`.
    ///
    /// # Safety
    /// As `demi_push`: if `sga.sga_buf` is not a handle (see [`is_handle`]),
    /// the segment must be readable for `sgaseg_len` bytes.
    pub unsafe fn to_buffer(&mut self, sga: &demi_sgarray_t) -> Result<Buffer> {
        // SAFETY: forwarded from this function's contract.
        unsafe { super::sga::to_buffer(&mut self.engine, sga) }
    }
}
