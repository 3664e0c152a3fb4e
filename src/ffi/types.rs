//! The C structures of `include/demi/types.h`, byte for byte (all packed).
//!
//! `include/demi/types.h` is generated from this file by cbindgen
//! (`make header`, config `include/cbindgen/types.toml`). Each struct carries
//! Demikernel's tag name (`struct demi_sgarray`) and a `_t` alias for its
//! typedef (`demi_sgarray_t`), so C sees the same names Demikernel declares.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void};

/// An I/O queue token: names one asynchronous operation; wait on it with
/// `demi_wait*()`.
pub type demi_qtoken_t = u64;

/// Segments per scatter-gather array.
pub const DEMI_SGARRAY_MAXSIZE: usize = 1;

/// One segment: `sgaseg_len` bytes at `sgaseg_buf` (12 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct demi_sgaseg {
    /// The bytes.
    pub sgaseg_buf: *mut c_void,
    /// How many.
    pub sgaseg_len: u32,
}

/// `demi_sgaseg_t`.
pub type demi_sgaseg_t = demi_sgaseg;

/// A scatter-gather array (40 bytes). `sga_buf` is the library's handle to
/// the memory (not a pointer: never dereference it); `sga_addr` is the
/// sender of a popped datagram.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct demi_sgarray {
    /// The library's handle to the buffer.
    pub sga_buf: *mut c_void,
    /// Segments in use (0 for the null sga).
    pub sga_numsegs: u32,
    /// The segments.
    pub sga_segs: [demi_sgaseg_t; DEMI_SGARRAY_MAXSIZE],
    /// Sender of a popped datagram.
    pub sga_addr: libc::sockaddr_in,
}

/// `demi_sgarray_t`.
pub type demi_sgarray_t = demi_sgarray;

impl demi_sgarray {
    /// The null sga `demi_sgaalloc` returns on failure.
    pub fn null() -> Self {
        // SAFETY: every field is an integer, a raw pointer or a plain C struct: all-zero is valid.
        #[allow(unsafe_code)]
        unsafe {
            std::mem::zeroed()
        }
    }
}

/// What a finished operation was.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)]
pub enum demi_opcode {
    /// Not an operation.
    DEMI_OPC_INVALID = 0,
    /// A push.
    DEMI_OPC_PUSH = 1,
    /// A pop.
    DEMI_OPC_POP = 2,
    /// An accept.
    DEMI_OPC_ACCEPT = 3,
    /// A connect.
    DEMI_OPC_CONNECT = 4,
    /// A close.
    DEMI_OPC_CLOSE = 5,
    /// A failed operation; `qr_ret` is its errno.
    DEMI_OPC_FAILED = 6,
}

/// `demi_opcode_t`.
pub type demi_opcode_t = demi_opcode;

/// A new connection: its descriptor and the peer's address (20 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct demi_accept_result {
    /// The new connection's queue descriptor.
    pub qd: i32,
    /// The peer.
    pub addr: libc::sockaddr_in,
}

/// `demi_accept_result_t`.
pub type demi_accept_result_t = demi_accept_result;

/// The `qr_value` of a result (40 bytes): Demikernel declares it as an
/// unnamed union inside `demi_qresult`; C cannot tell the two apart.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub union demi_qr_value {
    /// A pushed or popped scatter-gather array.
    pub sga: demi_sgarray_t,
    /// An accepted connection.
    pub ares: demi_accept_result_t,
}

/// The Rust name the library's code uses for [`demi_qr_value`].
pub type demi_qr_value_t = demi_qr_value;

/// A finished operation (64 bytes). `qr_ret` is 0, or a positive errno when
/// `qr_opcode` is `DEMI_OPC_FAILED`.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct demi_qresult {
    /// What it was.
    pub qr_opcode: demi_opcode_t,
    /// Its queue descriptor.
    pub qr_qd: i32,
    /// Its token.
    pub qr_qt: demi_qtoken_t,
    /// 0, or the errno of a failed operation.
    pub qr_ret: i64,
    /// What it gave.
    pub qr_value: demi_qr_value,
}

/// `demi_qresult_t`.
pub type demi_qresult_t = demi_qresult;

/// Accepted by `demi_init` for compatibility; never called.
pub type demi_callback_t = Option<unsafe extern "C" fn(*const c_char, u32, u64)>;

/// Arguments of `demi_init` (20 bytes); accepted and not used.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct demi_args {
    /// Number of command-line arguments.
    pub argc: c_int,
    /// The command-line arguments.
    pub argv: *const *mut c_char,
    /// A log callback.
    pub callback: demi_callback_t,
}

/// `demi_args_t`.
pub type demi_args_t = demi_args;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_the_c_headers() {
        assert_eq!(size_of::<demi_sgaseg_t>(), 12);
        assert_eq!(size_of::<demi_sgarray_t>(), 40);
        assert_eq!(offset_of!(demi_sgarray_t, sga_numsegs), 8);
        assert_eq!(offset_of!(demi_sgarray_t, sga_segs), 12);
        assert_eq!(offset_of!(demi_sgarray_t, sga_addr), 24);
        assert_eq!(size_of::<demi_accept_result_t>(), 20);
        assert_eq!(offset_of!(demi_accept_result_t, addr), 4);
        assert_eq!(size_of::<demi_qr_value_t>(), 40);
        assert_eq!(size_of::<demi_qresult_t>(), 64);
        assert_eq!(offset_of!(demi_qresult_t, qr_qd), 4);
        assert_eq!(offset_of!(demi_qresult_t, qr_qt), 8);
        assert_eq!(offset_of!(demi_qresult_t, qr_ret), 16);
        assert_eq!(offset_of!(demi_qresult_t, qr_value), 24);
        assert_eq!(size_of::<demi_args>(), 20);
        assert_eq!(offset_of!(demi_args, argv), 4);
        assert_eq!(offset_of!(demi_args, callback), 12);
        assert_eq!(size_of::<demi_opcode_t>(), 4);
    }
}
