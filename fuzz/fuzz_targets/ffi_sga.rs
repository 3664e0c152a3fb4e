//! The C ABI's scatter-gather argument (demi_push, demi_pushto): a
//! `demi_sgarray_t` turned into the buffer to send.
//!
//! Input: 40 bytes taken as the struct, byte for byte; a byte giving the
//! size (1-256) of a buffer lent to "C" as demi_sgaalloc does; a mode byte;
//! the rest is the application's own memory. Raw pointers from the input
//! would point nowhere, so the mode byte may rebase them: `sga_buf` is the
//! raw value, the live handle of the lent buffer, the stale handle of one
//! freed before it (same slot, older generation), or the live handle with
//! bits flipped by the raw value; the segment pointer is the raw value, or
//! an offset from the lent buffer or from the application's memory.
//!
//! An sga naming a handle must come back as a view of that very buffer when
//! the segment lies inside it, and be refused with EINVAL otherwise (stale,
//! foreign or out of bounds), without a read outside the buffer (the lent
//! and application buffers end exactly where their bytes do, for
//! AddressSanitizer). Without a handle the segment is plain C memory that
//! the caller vouches for (as with send(2)), so only segments inside the
//! application's memory are passed, and they must be copied as they are.
#![no_main]

use demi::ffi::fuzzing::{self, Sgas};
use demi::ffi::types::demi_sgarray_t;
use demi_fuzz::take;
use libfuzzer_sys::fuzz_target;
use std::mem::size_of;

/// The bytes of the lent buffer: not all zero, so a view of the wrong
/// offset shows.
fn pattern(i: usize) -> u8 {
    (i as u8).wrapping_mul(7).wrapping_add(1)
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let (Some(raw), Some(size), Some(mode)) =
        (take(&mut data, size_of::<demi_sgarray_t>()), take(&mut data, 1), take(&mut data, 1))
    else {
        return;
    };
    // SAFETY: every bit pattern is a valid demi_sgarray_t (integers, raw
    // pointers, a plain C struct); read_unaligned copies it out.
    let mut sga: demi_sgarray_t = unsafe { raw.as_ptr().cast::<demi_sgarray_t>().read_unaligned() };
    let app: Box<[u8]> = data.into();

    let mut sgas = Sgas::new().expect("catnap engine");
    let stale = sgas.alloc(16).expect("alloc").sga_buf as u64;
    sgas.free(stale).expect("free a live handle");
    let lent_len = 1 + usize::from(size[0]);
    let lent = sgas.alloc(lent_len).expect("alloc");
    let live = lent.sga_buf as u64;
    assert_ne!(live, stale, "a reused slot needs a new generation");
    let base = lent.sga_segs[0].sgaseg_buf.cast::<u8>();
    assert_eq!(lent.sga_segs[0].sgaseg_len as usize, lent_len);
    for i in 0..lent_len {
        // SAFETY: the lent buffer is lent_len bytes, C may write them.
        unsafe { base.add(i).write(pattern(i)) };
    }

    let raw_handle = sga.sga_buf as u64;
    sga.sga_buf = match mode[0] & 3 {
        0 => raw_handle,
        1 => live,
        2 => stale,
        _ => live ^ raw_handle,
    } as *mut libc::c_void;
    let raw_ptr = sga.sga_segs[0].sgaseg_buf as usize;
    let raw_ptr = match (mode[0] >> 2) & 3 {
        0 => raw_ptr as *mut u8,
        1 => base.wrapping_add(raw_ptr),
        2 => app.as_ptr().cast_mut().wrapping_add(raw_ptr),
        _ => base.wrapping_add(raw_ptr % (lent_len + 2)),
    };
    sga.sga_segs[0].sgaseg_buf = raw_ptr.cast();

    let numsegs = sga.sga_numsegs;
    let (ptr, len) = (raw_ptr as usize, sga.sga_segs[0].sgaseg_len as usize);
    let malformed = numsegs != 1 || ptr == 0 || len == 0;
    let within =
        |start: usize, size: usize| ptr >= start && ptr.checked_add(len).is_some_and(|end| end <= start + size);
    let handle = sga.sga_buf as u64;

    if !fuzzing::is_handle(handle) {
        let in_app = within(app.as_ptr() as usize, app.len());
        if !malformed && !in_app {
            // The caller broke demi_push's contract; nothing to check.
            return;
        }
        // SAFETY: a well-formed segment lies inside `app`.
        let r = unsafe { sgas.to_buffer(&sga) };
        if malformed {
            assert_eq!(r.unwrap_err().errno(), libc::EINVAL);
        } else {
            let buf = r.expect("a readable foreign segment is copied");
            let off = ptr - app.as_ptr() as usize;
            assert_eq!(buf.as_slice(), &app[off..off + len]);
            assert_ne!(buf.as_ptr() as usize, ptr, "foreign memory must be copied, not borrowed");
        }
        return;
    }

    // SAFETY: sga_buf is a handle, so the segment is only read if the
    // library finds it inside the buffer that handle names.
    let r = unsafe { sgas.to_buffer(&sga) };
    if !malformed && handle == live && within(base as usize, lent_len) {
        let view = r.expect("a segment inside its live buffer is pushed in place");
        assert_eq!((view.as_ptr() as usize, view.len()), (ptr, len), "not the segment asked for");
        let off = ptr - base as usize;
        assert!(view.as_slice().iter().enumerate().all(|(i, &b)| b == pattern(off + i)));
    } else {
        assert_eq!(r.unwrap_err().errno(), libc::EINVAL, "handle {handle:#x} ptr {ptr:#x} len {len}");
    }

    // The sga demi_sgaalloc gave is the whole buffer; once freed, its handle
    // (and a second free) are refused.
    let whole = unsafe { sgas.to_buffer(&lent) }.expect("the lent sga itself");
    assert_eq!((whole.as_ptr(), whole.len()), (base.cast_const(), lent_len));
    assert_eq!(sgas.free(stale).unwrap_err().errno(), libc::EINVAL);
    sgas.free(live).expect("free the lent buffer");
    assert_eq!(unsafe { sgas.to_buffer(&lent) }.unwrap_err().errno(), libc::EINVAL);
    assert_eq!(sgas.free(live).unwrap_err().errno(), libc::EINVAL);
});
