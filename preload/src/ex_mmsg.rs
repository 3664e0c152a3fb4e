//! sendmmsg and recvmmsg on demi sockets: one sendmsg/recvmsg per entry.
//! The first entry follows the socket's blocking mode; the rest are taken
//! only if ready (as the kernel does without MSG_WAITFORONE's wait, which
//! is only for the first). An error after the first entry ends the batch
//! and the count so far is returned, as the kernel does.

use crate::ex_io::{recvmsg, sendmsg};
use crate::fdtab;
use crate::guard::errno;
use crate::real;
use libc::{c_int, c_uint, mmsghdr, timespec};

#[no_mangle]
pub unsafe extern "C" fn sendmmsg(fd: c_int, v: *mut mmsghdr, n: c_uint, flags: c_int) -> c_int {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::sendmmsg(fd, v, n, flags) };
    }
    if v.is_null() && n > 0 {
        crate::guard::set_errno(libc::EFAULT);
        return -1;
    }
    let n = n.min(libc::UIO_MAXIOV as c_uint);
    let mut done = 0;
    while done < n {
        let f = if done == 0 { flags } else { flags | libc::MSG_DONTWAIT };
        // SAFETY: done < n entries of the program's array.
        let m = unsafe { &mut *v.add(done as usize) };
        // SAFETY: sendmsg's contract, entry by entry.
        let r = unsafe { sendmsg(fd, &m.msg_hdr, f) };
        if r < 0 {
            return if done > 0 { done as c_int } else { -1 };
        }
        m.msg_len = r as c_uint;
        done += 1;
    }
    done as c_int
}

#[no_mangle]
pub unsafe extern "C" fn recvmmsg(fd: c_int, v: *mut mmsghdr, n: c_uint, flags: c_int, t: *mut timespec) -> c_int {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::recvmmsg(fd, v, n, flags, t) };
    }
    if v.is_null() && n > 0 {
        crate::guard::set_errno(libc::EFAULT);
        return -1;
    }
    let n = n.min(libc::UIO_MAXIOV as c_uint);
    let mut done = 0;
    while done < n {
        let f = if done == 0 { flags & !libc::MSG_WAITFORONE } else { flags | libc::MSG_DONTWAIT };
        // SAFETY: done < n entries of the program's array.
        let m = unsafe { &mut *v.add(done as usize) };
        // SAFETY: recvmsg's contract, entry by entry.
        let r = unsafe { recvmsg(fd, &mut m.msg_hdr, f) };
        if r < 0 {
            if done > 0 && errno() == libc::EAGAIN {
                break;
            }
            return if done > 0 { done as c_int } else { -1 };
        }
        m.msg_len = r as c_uint;
        done += 1;
    }
    done as c_int
}
