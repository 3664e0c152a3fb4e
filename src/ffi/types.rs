//! The C structures of `include/demi/types.h`, byte for byte (all packed).
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_void};

/// `demi_qtoken_t`.
pub type demi_qtoken_t = u64;

/// `DEMI_SGARRAY_MAXSIZE`.
pub const DEMI_SGARRAY_MAXSIZE: usize = 1;

/// `demi_sgaseg_t`: one segment (12 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct demi_sgaseg_t {
    pub sgaseg_buf: *mut c_void,
    pub sgaseg_len: u32,
}

/// `demi_sgarray_t`: a scatter-gather array (40 bytes). `sga_buf` is the
/// library's handle to the buffer, not a pointer.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct demi_sgarray_t {
    pub sga_buf: *mut c_void,
    pub sga_numsegs: u32,
    pub sga_segs: [demi_sgaseg_t; DEMI_SGARRAY_MAXSIZE],
    pub sga_addr: libc::sockaddr_in,
}

impl demi_sgarray_t {
    /// The null sga `demi_sgaalloc` returns on failure.
    pub fn null() -> Self {
        // SAFETY: every field is an integer, a raw pointer or a plain C struct: all-zero is valid.
        #[allow(unsafe_code)]
        unsafe {
            std::mem::zeroed()
        }
    }
}

/// `demi_opcode_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)]
pub enum demi_opcode_t {
    DEMI_OPC_INVALID = 0,
    DEMI_OPC_PUSH = 1,
    DEMI_OPC_POP = 2,
    DEMI_OPC_ACCEPT = 3,
    DEMI_OPC_CONNECT = 4,
    DEMI_OPC_CLOSE = 5,
    DEMI_OPC_FAILED = 6,
}

/// `demi_accept_result_t` (20 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct demi_accept_result_t {
    pub qd: i32,
    pub addr: libc::sockaddr_in,
}

/// The `qr_value` union (40 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub union demi_qr_value_t {
    pub sga: demi_sgarray_t,
    pub ares: demi_accept_result_t,
}

/// `demi_qresult_t` (64 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct demi_qresult_t {
    pub qr_opcode: demi_opcode_t,
    pub qr_qd: i32,
    pub qr_qt: demi_qtoken_t,
    pub qr_ret: i64,
    pub qr_value: demi_qr_value_t,
}

/// `demi_callback_t`.
pub type demi_callback_t = Option<unsafe extern "C" fn(*const c_char, u32, u64)>;

/// `struct demi_args` (20 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct demi_args {
    pub argc: i32,
    pub argv: *const *const c_char,
    pub callback: demi_callback_t,
}

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
