//! fcntl, ioctl, dup/dup2/dup3 and fork.

use crate::fdtab;
use crate::guard::{boundary, inside, Inside, Ret};
use crate::real;
use crate::state::{lock, Entry, State};
use libc::{c_int, c_ulong};
use std::os::fd::RawFd;

/// Names `new` like `old` (a socket, or a parent's inherited socket).
fn alias(st: &mut State, old: RawFd, new: RawFd) -> Ret<()> {
    match st.fds.get(&old).copied() {
        Some(Entry::Sock(qd)) => {
            st.name_fd(new, qd);
            st.sock(new)?.refs += 1;
        }
        Some(Entry::Inherited) => {
            st.fds.insert(new, Entry::Inherited);
            fdtab::mark(new, fdtab::SOCK);
        }
        None => return Err(libc::EBADF),
    }
    Ok(())
}

/// A new number for socket `fd`, at least `min` (close-on-exec, like every
/// demi number).
fn dup_from(fd: RawFd, min: c_int) -> Ret<c_int> {
    let mut st = lock();
    if !st.fds.contains_key(&fd) {
        return Err(libc::EBADF);
    }
    // SAFETY: duplicates our reservation under fd; the result is checked.
    let new = unsafe { real::fcntl(fd, libc::F_DUPFD_CLOEXEC, min.max(0) as usize) };
    if new < 0 {
        return Err(crate::guard::errno());
    }
    alias(&mut st, fd, new)?;
    Ok(new)
}

fn fcntl_sock(fd: c_int, cmd: c_int, arg: usize) -> Ret<c_int> {
    match cmd {
        libc::F_GETFL => {
            let nb = lock().sock(fd)?.nonblock;
            Ok(libc::O_RDWR | if nb { libc::O_NONBLOCK } else { 0 })
        }
        libc::F_SETFL => {
            lock().sock(fd)?.nonblock = arg as c_int & libc::O_NONBLOCK != 0;
            Ok(0)
        }
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => dup_from(fd, arg as c_int),
        _ => {
            // SAFETY: other commands act on our reservation (F_GETFD,
            // F_SETFD, F_SETOWN...); arg is the program's, passed on.
            let r = unsafe { real::fcntl(fd, cmd, arg) };
            if r < 0 {
                Err(crate::guard::errno())
            } else {
                Ok(r)
            }
        }
    }
}

// fcntl is variadic in C. Its one optional argument is an int or a pointer,
// which the x86-64 and AArch64 calling conventions pass in the same
// register as a fixed third argument, so it is declared as one here.
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::fcntl(fd, cmd, arg) };
    }
    boundary("fcntl", || fcntl_sock(fd, cmd, arg))
}

#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::fcntl64(fd, cmd, arg) };
    }
    boundary("fcntl64", || fcntl_sock(fd, cmd, arg))
}

// ioctl is variadic too; see fcntl.
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, req: c_ulong, arg: usize) -> c_int {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::ioctl(fd, req, arg) };
    }
    boundary("ioctl", || {
        let p = arg as *mut c_int;
        match req {
            libc::FIONBIO | libc::FIONREAD if p.is_null() => Err(libc::EFAULT),
            libc::FIONBIO => {
                // SAFETY: FIONBIO's argument is a pointer to an int (checked non-null).
                let on = unsafe { *p } != 0;
                lock().sock(fd)?.nonblock = on;
                Ok(0)
            }
            libc::FIONREAD => {
                let mut st = lock();
                let s = st.sock(fd)?;
                let n = if s.is_stream() { s.rx_bytes } else { s.dgrams.front().map_or(0, |d| d.0.len()) };
                // SAFETY: FIONREAD's argument is a pointer to an int (checked non-null).
                unsafe { *p = n.min(c_int::MAX as usize) as c_int };
                Ok(0)
            }
            _ => {
                // SAFETY: other requests act on our reservation (interface
                // queries work on any socket); arg is the program's.
                let r = unsafe { real::ioctl(fd, req, arg) };
                if r < 0 {
                    Err(crate::guard::errno())
                } else {
                    Ok(r)
                }
            }
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    if !fdtab::is_sock(fd) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::dup(fd) };
    }
    boundary("dup", || dup_from(fd, 0))
}

fn dup_onto(old: c_int, new: c_int, flags: Option<c_int>) -> Ret<c_int> {
    let mut st = lock();
    let old_demi = fdtab::is_sock(old);
    if old_demi && !st.fds.contains_key(&old) {
        return Err(libc::EBADF);
    }
    if old == new {
        if flags.is_some() {
            return Err(libc::EINVAL);
        }
        return Ok(new);
    }
    let flags = if old_demi { libc::O_CLOEXEC } else { flags.unwrap_or(0) };
    // SAFETY: the kernel makes `new` a copy of `old` (our reservation, or
    // the program's own descriptor), closing what `new` was.
    let r = unsafe { real::dup3(old, new, flags) };
    if r < 0 {
        return Err(crate::guard::errno());
    }
    if fdtab::is_sock(new) {
        st.drop_fd(new);
    }
    if old_demi {
        alias(&mut st, old, new)?;
    }
    Ok(new)
}

#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    if !fdtab::is_sock(old) && !fdtab::is_sock(new) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::dup2(old, new) };
    }
    boundary("dup2", || dup_onto(old, new, None))
}

#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    if !fdtab::is_sock(old) && !fdtab::is_sock(new) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::dup3(old, new, flags) };
    }
    boundary("dup3", || dup_onto(old, new, Some(flags)))
}

/// fork: the state is locked across the fork so the child's copy is
/// consistent; the child then gives up the parent's libOS and sockets (see
/// `State::forked_child`).
#[no_mangle]
pub unsafe extern "C" fn fork() -> libc::pid_t {
    if inside() || !crate::state::started() {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::fork() };
    }
    let _in = Inside::enter();
    let mut st = lock();
    // SAFETY: plain fork; the lock held keeps every libOS call out of the
    // way (they are all made under it).
    let pid = unsafe { real::fork() };
    if pid == 0 {
        st.forked_child();
    }
    pid
}
