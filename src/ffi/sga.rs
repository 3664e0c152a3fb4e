//! `demi_sgaalloc`, `demi_sgafree`, and turning C scatter-gather arrays into
//! buffers and back.

use super::types::{demi_sgarray_t, demi_sgaseg_t};
use super::{boundary, input, libos, to_c_addr};
use crate::buffer::Buffer;
use crate::engine::handles::HandleTable;
use crate::engine::Engine;
use crate::error::{fail, Result};
use libc::c_int;

/// Allocates `size` bytes the libOS can push without copying. Returns a null
/// sga (all zero) for size 0, sizes above 4 GiB, before `demi_init`, or when
/// memory runs out.
#[no_mangle]
#[must_use]
pub extern "C" fn demi_sgaalloc(size: libc::size_t) -> demi_sgarray_t {
    let mut sga = demi_sgarray_t::null();
    let _ = boundary("demi_sgaalloc", || {
        if size == 0 || size > u32::MAX as usize {
            return fail(libc::EINVAL, "size must be between 1 and 4 GiB");
        }
        sga = libos()?.run_mine(|e| {
            let buf = e.alloc(size)?;
            lend(e, buf, None)
        })?;
        Ok(())
    });
    sga
}

/// Gives a buffer back. An sga whose `sga_buf` is not a live handle of this
/// library is refused with EINVAL; nothing it points to is touched.
///
/// # Safety
/// `sga` must be NULL or point to a readable `demi_sgarray_t`.
#[no_mangle]
pub unsafe extern "C" fn demi_sgafree(sga: *mut demi_sgarray_t) -> c_int {
    boundary("demi_sgafree", || {
        let os = libos()?;
        // SAFETY: forwarded from this function's contract.
        let sga = unsafe { input(sga.cast_const(), "sga is NULL") }?;
        let handle = sga.sga_buf as u64;
        let buf = os.run_for_handle(handle, |e| e.handles.remove(handle))?;
        // Dropped outside the lock: recycling device memory may take a moment.
        drop(buf);
        Ok(())
    })
}

/// Lends `buf` to C as an sga.
pub(super) fn lend(e: &mut Engine, buf: Buffer, from: Option<std::net::SocketAddrV4>) -> Result<demi_sgarray_t> {
    let len = u32::try_from(buf.len()).map_err(|_| crate::Error::new(libc::EMSGSIZE, "buffer above 4 GiB"))?;
    let ptr = buf.as_mut_ptr();
    let handle = e.handles.insert(buf)?;
    let mut sga = demi_sgarray_t::null();
    sga.sga_buf = handle as *mut libc::c_void;
    sga.sga_numsegs = 1;
    sga.sga_segs[0] = demi_sgaseg_t { sgaseg_buf: ptr.cast(), sgaseg_len: len };
    if let Some(a) = from {
        sga.sga_addr = to_c_addr(a);
    }
    Ok(sga)
}

/// For a push on `qd` of an sga that another thread's engine lent: the
/// buffer, checked by the engine that lent it (`None` when the sga is not
/// such: [`to_buffer`] handles it under `qd`'s engine). EBADF for a bad
/// `qd` comes first, as on the usual path.
///
/// # Safety
/// As [`to_buffer`].
pub(super) unsafe fn lent_elsewhere(os: &crate::LibOs, qd: c_int, sga: &demi_sgarray_t) -> Result<Option<Buffer>> {
    let handle = sga.sga_buf as u64;
    if !HandleTable::is_ours(handle) || HandleTable::shard_of(handle) == crate::engine::shard_of_qd(qd) {
        return Ok(None);
    }
    os.local_addr(qd)?;
    // SAFETY: forwarded from this function's contract.
    os.run_for_handle(handle, |e| unsafe { to_buffer(e, sga) }).map(Some)
}

/// The buffer to push for a C sga. Memory from `demi_sgaalloc` (or a pop) is
/// pushed in place, without a copy; other memory is copied into libOS memory.
/// A handle of another engine is refused (EINVAL): the caller asks that
/// engine first (`lent_elsewhere`).
///
/// # Safety
/// If `sga_buf` is not a handle of this library, the segment must be readable
/// for `sgaseg_len` bytes.
pub(super) unsafe fn to_buffer(e: &mut Engine, sga: &demi_sgarray_t) -> Result<Buffer> {
    let numsegs = sga.sga_numsegs;
    if numsegs == 0 {
        return fail(libc::EINVAL, "sga has no segments");
    }
    if numsegs as usize > super::types::DEMI_SGARRAY_MAXSIZE {
        return fail(libc::EINVAL, "sga has more segments than DEMI_SGARRAY_MAXSIZE");
    }
    let seg = sga.sga_segs[0];
    let (ptr, len) = (seg.sgaseg_buf as *const u8, seg.sgaseg_len as usize);
    if ptr.is_null() {
        return fail(libc::EINVAL, "segment buffer is NULL");
    }
    if len == 0 {
        return fail(libc::EINVAL, "segment length is zero");
    }
    let handle = sga.sga_buf as u64;
    if HandleTable::is_ours(handle) {
        // The segment may be any part of the lent buffer. A handle of
        // another engine is refused here: see `lent_elsewhere`.
        let buf = e.handles.get(handle)?;
        let off = (ptr as usize).wrapping_sub(buf.as_ptr() as usize);
        return match buf.advance(off).and_then(|b| b.prefix(len)) {
            Some(view) if off <= buf.len() => Ok(view),
            _ => fail(libc::EINVAL, "segment lies outside the buffer its sga_buf names"),
        };
    }
    let mut copy = e.alloc(len)?;
    // SAFETY: the caller vouches for len readable bytes at ptr (as with send(2)).
    let src = unsafe { std::slice::from_raw_parts(ptr, len) };
    copy.as_mut_slice().expect("fresh buffer is unshared").copy_from_slice(src);
    Ok(copy)
}
