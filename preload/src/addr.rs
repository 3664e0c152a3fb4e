//! `struct sockaddr_in` <-> `SocketAddrV4`.

use crate::guard::Ret;
use libc::{sockaddr, sockaddr_in, socklen_t};
use std::net::{Ipv4Addr, SocketAddrV4};

const SIN_LEN: usize = std::mem::size_of::<sockaddr_in>();

/// Reads an IPv4 address the program passed: EINVAL if it is short or null,
/// EAFNOSUPPORT if it is another family.
///
/// # Safety
/// `addr` is null or points to `len` readable bytes.
pub unsafe fn read(addr: *const sockaddr, len: socklen_t) -> Ret<SocketAddrV4> {
    if addr.is_null() || (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        return Err(libc::EINVAL);
    }
    // SAFETY: at least the family field is readable (checked above).
    let family = unsafe { std::ptr::read_unaligned(addr.cast::<libc::sa_family_t>()) };
    if family as i32 != libc::AF_INET {
        return Err(libc::EAFNOSUPPORT);
    }
    if (len as usize) < SIN_LEN {
        return Err(libc::EINVAL);
    }
    // SAFETY: len covers a whole sockaddr_in (checked above).
    let sin = unsafe { std::ptr::read_unaligned(addr.cast::<sockaddr_in>()) };
    Ok(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)), u16::from_be(sin.sin_port)))
}

/// The address family a program passed, if it passed one.
///
/// # Safety
/// As for [`read`].
pub unsafe fn family(addr: *const sockaddr, len: socklen_t) -> Option<i32> {
    if addr.is_null() || (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: the family field is readable (checked above).
    Some(unsafe { std::ptr::read_unaligned(addr.cast::<libc::sa_family_t>()) } as i32)
}

/// Writes `a` to a program's (addr, len) pair the way the kernel does:
/// truncated to `*len`, with `*len` set to the full size. Null `addr` is
/// allowed (nothing is written); EFAULT if `addr` is set and `len` is null.
///
/// # Safety
/// `addr` is null or points to `*len` writable bytes; `len` is null or valid.
pub unsafe fn write(a: SocketAddrV4, addr: *mut sockaddr, len: *mut socklen_t) -> Ret<()> {
    if addr.is_null() {
        return Ok(());
    }
    if len.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: len is non-null and valid (caller's contract).
    let room = unsafe { *len } as usize;
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut sin: sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_port = a.port().to_be();
    sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    // SAFETY: copies at most `room` bytes into the caller's buffer of `room`
    // bytes from a live local of SIN_LEN bytes.
    unsafe {
        std::ptr::copy_nonoverlapping((&sin as *const sockaddr_in).cast::<u8>(), addr.cast::<u8>(), room.min(SIN_LEN));
        *len = SIN_LEN as socklen_t;
    }
    Ok(())
}

/// The source address the kernel's routing picks to reach `dst` (what a
/// connected socket's local address is), found with a throwaway UDP socket
/// whose connect sends nothing.
pub fn route_source(dst: Ipv4Addr) -> Option<Ipv4Addr> {
    // SAFETY: plain system calls through the C library on a socket made and
    // closed here; the addresses are live locals of the right sizes.
    unsafe {
        let fd = crate::real::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let mut sin: sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = 9u16.to_be();
        sin.sin_addr.s_addr = u32::from(dst).to_be();
        let mut len = SIN_LEN as socklen_t;
        let ok = crate::real::connect(fd, (&sin as *const sockaddr_in).cast(), len) == 0
            && crate::real::getsockname(fd, (&mut sin as *mut sockaddr_in).cast(), &mut len) == 0;
        crate::real::close(fd);
        ok.then(|| Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
    }
}
