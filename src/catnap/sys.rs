//! The Linux socket and epoll calls catnap makes, one safe function each.
#![allow(unsafe_code)]

use crate::error::{Error, Result};
use crate::sys::syscall;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub fn to_sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

pub fn from_sockaddr(s: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)), u16::from_be(s.sin_port))
}

const SIN_LEN: libc::socklen_t = size_of::<libc::sockaddr_in>() as libc::socklen_t;

fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: called only with descriptors the kernel just returned to us.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub fn socket(ty: i32) -> Result<OwnedFd> {
    let fd = syscall!(socket(libc::AF_INET, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0))?;
    Ok(own(fd))
}

pub fn bind(fd: &OwnedFd, a: SocketAddrV4) -> Result<()> {
    let sa = to_sockaddr(a);
    // SAFETY: sa is a live sockaddr_in of SIN_LEN bytes.
    syscall!(bind(fd.as_raw_fd(), (&sa as *const libc::sockaddr_in).cast(), SIN_LEN)).map(drop)
}

pub fn listen(fd: &OwnedFd, backlog: i32) -> Result<()> {
    syscall!(listen(fd.as_raw_fd(), backlog)).map(drop)
}

pub fn shutdown(fd: &OwnedFd, how: std::net::Shutdown) -> Result<()> {
    let how = match how {
        std::net::Shutdown::Read => libc::SHUT_RD,
        std::net::Shutdown::Write => libc::SHUT_WR,
        std::net::Shutdown::Both => libc::SHUT_RDWR,
    };
    syscall!(shutdown(fd.as_raw_fd(), how)).map(drop)
}

pub fn local_addr(fd: &OwnedFd) -> Result<SocketAddrV4> {
    let mut sa = MaybeUninit::<libc::sockaddr_in>::zeroed();
    let mut len = SIN_LEN;
    // SAFETY: sa has room for SIN_LEN bytes and len says so.
    syscall!(getsockname(fd.as_raw_fd(), sa.as_mut_ptr().cast(), &mut len))?;
    // SAFETY: zeroed above and filled by the kernel.
    Ok(from_sockaddr(unsafe { sa.assume_init_ref() }))
}

pub fn peer_addr(fd: &OwnedFd) -> Result<SocketAddrV4> {
    let mut sa = MaybeUninit::<libc::sockaddr_in>::zeroed();
    let mut len = SIN_LEN;
    // SAFETY: sa has room for SIN_LEN bytes and len says so.
    syscall!(getpeername(fd.as_raw_fd(), sa.as_mut_ptr().cast(), &mut len))?;
    // SAFETY: zeroed above and filled by the kernel.
    Ok(from_sockaddr(unsafe { sa.assume_init_ref() }))
}

pub fn accept(fd: &OwnedFd) -> Result<(OwnedFd, SocketAddrV4)> {
    let mut sa = MaybeUninit::<libc::sockaddr_in>::zeroed();
    let mut len = SIN_LEN;
    // SAFETY: sa has room for SIN_LEN bytes and len says so.
    let nfd =
        syscall!(accept4(fd.as_raw_fd(), sa.as_mut_ptr().cast(), &mut len, libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC))?;
    // SAFETY: zeroed above and filled by the kernel.
    Ok((own(nfd), from_sockaddr(unsafe { sa.assume_init_ref() })))
}

pub fn connect(fd: &OwnedFd, a: SocketAddrV4) -> Result<()> {
    let sa = to_sockaddr(a);
    // SAFETY: sa is a live sockaddr_in of SIN_LEN bytes.
    syscall!(connect(fd.as_raw_fd(), (&sa as *const libc::sockaddr_in).cast(), SIN_LEN)).map(drop)
}

pub fn send(fd: &OwnedFd, data: &[u8], to: Option<SocketAddrV4>) -> Result<usize> {
    let sa = to.map(to_sockaddr);
    let (sap, salen) = match &sa {
        Some(s) => ((s as *const libc::sockaddr_in).cast::<libc::sockaddr>(), SIN_LEN),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: data is a live slice; sap is null or a live sockaddr_in.
    let n = syscall!(sendto(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL, sap, salen))?;
    Ok(n as usize)
}

pub fn recv(fd: &OwnedFd, buf: &mut [u8]) -> Result<(usize, Option<SocketAddrV4>)> {
    let mut sa = MaybeUninit::<libc::sockaddr_in>::zeroed();
    let mut len = SIN_LEN;
    // SAFETY: buf is a live mutable slice; sa has room for len bytes.
    let n =
        syscall!(recvfrom(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0, sa.as_mut_ptr().cast(), &mut len))?;
    // SAFETY: zeroed above; the kernel filled it if it had an address.
    let sa = unsafe { sa.assume_init_ref() };
    let from = (sa.sin_family == libc::AF_INET as libc::sa_family_t).then(|| from_sockaddr(sa));
    Ok((n as usize, from))
}

pub fn take_error(fd: &OwnedFd) -> Result<i32> {
    let mut v = [0u8; 4];
    getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, &mut v)?;
    Ok(i32::from_ne_bytes(v))
}

pub fn setsockopt(fd: &OwnedFd, level: i32, name: i32, val: &[u8]) -> Result<()> {
    // SAFETY: val is a live slice of the given length.
    syscall!(setsockopt(fd.as_raw_fd(), level, name, val.as_ptr().cast(), val.len() as libc::socklen_t)).map(drop)
}

pub fn getsockopt(fd: &OwnedFd, level: i32, name: i32, val: &mut [u8]) -> Result<usize> {
    let mut len = val.len() as libc::socklen_t;
    // SAFETY: val is a live mutable slice; len says how much room it has.
    syscall!(getsockopt(fd.as_raw_fd(), level, name, val.as_mut_ptr().cast(), &mut len))?;
    Ok(len as usize)
}

/// An epoll instance, edge-triggered.
pub struct Epoll(OwnedFd);

impl Epoll {
    pub fn new() -> Result<Epoll> {
        Ok(Epoll(own(syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?)))
    }

    pub fn add(&self, fd: &OwnedFd, key: u64) -> Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: key,
        };
        // SAFETY: ev is a live epoll_event; both descriptors are open.
        syscall!(epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev)).map(drop)
    }

    /// Collects ready keys without blocking.
    pub fn poll(&self, events: &mut [libc::epoll_event]) -> Result<usize> {
        // SAFETY: events is a live buffer of events.len() entries.
        let n = syscall!(epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, 0))?;
        Ok(n as usize)
    }

    pub fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

pub fn is_would_block(e: &Error) -> bool {
    e.errno() == libc::EAGAIN || e.errno() == libc::EWOULDBLOCK
}
