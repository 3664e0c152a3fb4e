//! The C ABI's `sockaddr` argument (demi_bind, demi_connect, demi_pushto).
//! Input: a flags byte (bit 0: pass NULL), the claimed length `len` (u32,
//! little-endian), then the address bytes. The bytes sit in an allocation
//! that ends exactly where they do, so AddressSanitizer catches any read past
//! them. The conversion must give EINVAL for NULL, a length below
//! sizeof(sockaddr_in) or another family, and otherwise the address the
//! bytes hold; it reads one sockaddr_in at most, whatever `len` claims.
#![no_main]

use demi::ffi::fuzzing;
use demi_fuzz::take;
use libfuzzer_sys::fuzz_target;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4};

const SIN_LEN: usize = size_of::<libc::sockaddr_in>();

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let (Some(flags), Some(len)) = (take(&mut data, 1), take(&mut data, 4)) else { return };
    let len = u32::from_le_bytes(len.try_into().expect("4 bytes"));
    if flags[0] & 1 != 0 {
        let r = unsafe { fuzzing::sockaddr_in(std::ptr::null(), len) };
        assert_eq!(r.unwrap_err().errno(), libc::EINVAL);
        return;
    }
    // The C caller promises `len` readable bytes: never hand over fewer,
    // except that a buffer holding a whole sockaddr_in may be claimed longer
    // (callers pass sizeof(struct sockaddr_storage)), as the parser must not
    // look past the sockaddr_in.
    let given = data.len().min(len as usize);
    if given < len as usize && given < SIN_LEN {
        return;
    }
    // One spare byte in front makes the address unaligned, as in a packed
    // C struct; the allocation still ends right after the bytes.
    let mut mem = vec![0u8; 1 + given];
    mem[1..].copy_from_slice(&data[..given]);
    let addr = unsafe { mem.as_ptr().add(1) }.cast::<libc::sockaddr>();
    // SAFETY: addr is readable for `given` bytes, and `len` bytes when
    // given < len only in the case argued above.
    let r = unsafe { fuzzing::sockaddr_in(addr, len) };

    let b = &mem[1..];
    let family = b.get(..2).map(|f| i32::from(u16::from_ne_bytes([f[0], f[1]])));
    if (len as usize) < SIN_LEN || family != Some(libc::AF_INET) {
        assert_eq!(r.unwrap_err().errno(), libc::EINVAL);
        return;
    }
    let a = r.expect("an AF_INET sockaddr_in of full length parses");
    assert_eq!(*a.ip(), Ipv4Addr::new(b[4], b[5], b[6], b[7]));
    assert_eq!(a.port(), u16::from_be_bytes([b[2], b[3]]));

    // What the library writes back for an address (accept, pop, getpeername)
    // is a clean sockaddr_in that parses to the same address.
    let sin = fuzzing::to_c_addr(a);
    assert_eq!(i32::from(sin.sin_family), libc::AF_INET);
    assert_eq!(sin.sin_zero, [0; 8]);
    let back: SocketAddrV4 =
        unsafe { fuzzing::sockaddr_in((&sin as *const libc::sockaddr_in).cast(), SIN_LEN as libc::socklen_t) }
            .expect("to_c_addr output parses");
    assert_eq!(back, a);
});
