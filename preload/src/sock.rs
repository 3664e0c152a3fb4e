//! One demi socket as the program sees it: what has arrived and not been
//! read, what was written and not yet sent, and the readiness both give.

use demi::{Buffer, QDesc, QToken, SockType};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

/// Where a socket is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Created (maybe bound), neither connected nor listening.
    Idle,
    Listening,
    Connecting,
    Connected,
}

pub struct Sock {
    pub qd: QDesc,
    pub ty: SockType,
    /// Descriptor numbers naming this socket (dup); 0 for a connection
    /// accepted by the libOS and not yet taken by `accept`.
    pub refs: u32,
    /// O_NONBLOCK (shared by dup'd numbers, as on an open file description).
    pub nonblock: bool,
    pub phase: Phase,
    pub local: Option<SocketAddrV4>,
    pub peer: Option<SocketAddrV4>,
    /// Stream: bytes arrived and not read, oldest first, with the offset of
    /// the first unread byte of the front buffer.
    pub rx: VecDeque<Buffer>,
    pub rx_off: usize,
    /// Datagram: arrived datagrams with their senders.
    pub dgrams: VecDeque<(Buffer, Option<SocketAddrV4>)>,
    /// Unread bytes (stream) or unread datagram bytes.
    pub rx_bytes: usize,
    /// The pop posted ahead.
    pub pop: Option<QToken>,
    /// The peer closed its side (a stream pop returned no bytes).
    pub eof: bool,
    /// The connection died with this errno: the next read or write reports
    /// it once, then reads see end of file and writes EPIPE.
    pub err: Option<i32>,
    /// The error already reported: later calls see EOF / EPIPE.
    pub err_reported: bool,
    /// Pending error for SO_ERROR (a failed non-blocking connect).
    pub so_error: i32,
    pub shut_rd: bool,
    pub shut_wr: bool,
    /// Bytes pushed and not yet completed.
    pub unsent: usize,
    /// Listening: the accept posted ahead, connections taken by the libOS and
    /// not yet by the program, and an accept error to report once.
    pub accept: Option<QToken>,
    pub backlog: VecDeque<QDesc>,
    pub backlog_max: usize,
    pub accept_err: Option<i32>,
    pub connect: Option<QToken>,
    /// Options the libOS did not take, kept so getsockopt returns them.
    pub opts: HashMap<(i32, i32), Vec<u8>>,
    pub rcv_timeout: Option<Duration>,
    pub snd_timeout: Option<Duration>,
    /// Bumped on every event on this socket (EPOLLET edges).
    pub seq: u64,
    /// Closed by the program while pushes were in flight: closed for good
    /// when they finish or at this deadline (the kernel's lingering close).
    pub linger_until: Option<Instant>,
    /// A datagram socket has been given a local address (bind, connect or a
    /// first send): its pops may be posted.
    pub addressed: bool,
}

/// Whether a stream with `unsent` bytes queued against `sndbuf` polls as
/// writable: as Linux's TCP (`sk_stream_is_writeable`), once the free space
/// is at least half of what is queued, so a full socket does not flip to
/// writable and back with every small drain. Writes still go in as soon as
/// there is any space.
fn stream_writable(unsent: usize, sndbuf: usize) -> bool {
    sndbuf.saturating_sub(unsent) >= unsent / 2 && unsent < sndbuf
}

impl Sock {
    pub fn new(qd: QDesc, ty: SockType) -> Sock {
        Sock {
            qd,
            ty,
            refs: 1,
            nonblock: false,
            phase: Phase::Idle,
            local: None,
            peer: None,
            rx: VecDeque::new(),
            rx_off: 0,
            dgrams: VecDeque::new(),
            rx_bytes: 0,
            pop: None,
            eof: false,
            err: None,
            err_reported: false,
            so_error: 0,
            shut_rd: false,
            shut_wr: false,
            unsent: 0,
            accept: None,
            backlog: VecDeque::new(),
            backlog_max: 128,
            accept_err: None,
            connect: None,
            opts: HashMap::new(),
            rcv_timeout: None,
            snd_timeout: None,
            seq: 0,
            linger_until: None,
            addressed: false,
        }
    }

    pub fn is_stream(&self) -> bool {
        self.ty == SockType::Stream
    }

    /// poll(2) bits this socket is ready for (POLLIN, POLLOUT, POLLERR,
    /// POLLHUP, POLLRDHUP: the epoll bits have the same values), following
    /// what Linux reports for TCP and UDP sockets.
    pub fn ready(&self, sndbuf: usize) -> u32 {
        let (pin, pout, perr, phup, prdhup) = (
            libc::POLLIN as u32,
            libc::POLLOUT as u32,
            libc::POLLERR as u32,
            libc::POLLHUP as u32,
            libc::POLLRDHUP as u32,
        );
        let mut m = 0;
        if self.so_error != 0 || (self.err.is_some() && !self.err_reported) {
            m |= perr;
        }
        if !self.is_stream() {
            if !self.dgrams.is_empty() {
                m |= pin;
            }
            if self.unsent < sndbuf {
                m |= pout;
            }
            return m;
        }
        match self.phase {
            Phase::Listening => {
                if !self.backlog.is_empty() || self.accept_err.is_some() {
                    m |= pin;
                }
            }
            Phase::Connecting => {}
            // An unconnected stream socket polls as writable and hung up.
            Phase::Idle => m |= pout | phup,
            Phase::Connected => {
                if self.rx_bytes > 0 || self.eof || self.shut_rd || self.err.is_some() {
                    m |= pin;
                }
                if self.eof || self.err.is_some() {
                    m |= prdhup;
                }
                if stream_writable(self.unsent, sndbuf) || self.shut_wr || self.err.is_some() {
                    m |= pout;
                }
                if (self.eof && self.shut_wr) || self.err.is_some() {
                    m |= phup;
                }
            }
        }
        m
    }

    /// Copies up to `out` bytes of the stream's unread data into `dst`
    /// (consuming them unless `peek`); returns how many.
    pub fn take_stream(&mut self, dst: &mut [&mut [u8]], peek: bool) -> usize {
        let mut done = 0;
        let (mut i, mut off) = (0, self.rx_off);
        for part in dst.iter_mut() {
            let mut at = 0;
            while at < part.len() {
                let Some(buf) = self.rx.get(i) else { break };
                let src = &buf.as_slice()[off..];
                let n = src.len().min(part.len() - at);
                part[at..at + n].copy_from_slice(&src[..n]);
                at += n;
                off += n;
                done += n;
                if off == buf.len() {
                    i += 1;
                    off = 0;
                }
            }
        }
        if !peek {
            self.rx.drain(..i);
            self.rx_off = off;
            self.rx_bytes -= done;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::stream_writable;

    #[test]
    fn a_full_stream_polls_writable_only_once_a_third_is_free_again() {
        let sndbuf = 3 << 20;
        assert!(stream_writable(0, sndbuf));
        assert!(!stream_writable(sndbuf, sndbuf), "full");
        // One small drain from full is not enough (Linux: free >= queued / 2).
        assert!(!stream_writable(sndbuf - (64 << 10), sndbuf));
        assert!(!stream_writable((2 << 20) + 1, sndbuf));
        assert!(stream_writable(2 << 20, sndbuf), "a third free");
        assert!(!stream_writable(0, 0));
    }
}
