//! The network stack over one device: Ethernet, ARP, IPv4, ICMP echo, UDP.
//!
//! [`Stack`] is generic over a [`Device`]: a DPDK port in production
//! ([`crate::Stack`] names that one), the in-memory
//! [`Loopback`](crate::device::Loopback) in tests. Non-blocking throughout.
//! [`Stack::send`] builds a datagram and hands it to the device at once
//! when the destination MAC is known; otherwise the frame waits for ARP,
//! and the outcome comes later as [`Event::Sent`]. [`Stack::poll`]
//! receives one burst, answers ARP and ping, delivers UDP datagrams as
//! [`Event::Datagram`] (the payload stays in the buffer it arrived in),
//! runs the ARP timers and flushes the transmit backlog. Every dropped
//! frame is counted in [`Counters`] under its reason.

mod arp;
mod counters;
#[cfg(feature = "dpdk")]
mod dpdk;
mod rx;
mod tx;
mod udp;

#[cfg(test)]
mod tests;

pub use arp::MAX_WAITING_PER_ADDR;
pub use counters::Counters;
pub use udp::{BindError, EPHEMERAL};

use crate::config::Config;
use crate::device::{Device, RxToken, TxToken};
use crate::wire::ipv4::Checksum;
use crate::wire::{ArpOperation, EthernetAddress, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, UDP_HEADER_LEN};
use arp::{ArpCache, Parked};
use std::collections::VecDeque;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};
use udp::PortTable;

/// Frames taken from the device per poll.
const RX_BURST: usize = 32;
/// Frames that may wait for room in the device's transmit ring.
const TX_BACKLOG_MAX: usize = 1024;
/// TTL of the packets we send.
const DEFAULT_TTL: u8 = 64;
/// How often the link state is read.
const LINK_CHECK: Duration = Duration::from_millis(100);
/// Ethernet, IPv4 and UDP headers together.
pub const UDP_HEADERS_LEN: usize = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN;

/// The bytes of a datagram to send; `T` is the device's transmit token.
#[derive(Debug)]
pub enum Payload<'a, T> {
    /// Plain memory: copied into a fresh buffer.
    Bytes(&'a [u8]),
    /// `data` lives in `buf` (from [`Stack::alloc_payload`]): sent without
    /// copying when the device can (for DPDK: `data` starts at the mbuf's
    /// payload area and no earlier send still holds the mbuf); copied
    /// otherwise.
    Buffer {
        /// The buffer that holds `data`.
        buf: &'a T,
        /// The payload.
        data: &'a [u8],
    },
}

// Copyable whatever `T` is: it only holds references.
impl<T> Clone for Payload<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Payload<'_, T> {}

impl<T> Payload<'_, T> {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Bytes(b) => b,
            Payload::Buffer { data, .. } => data,
        }
    }
}

/// How a send went, when it did not fail at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendStatus {
    /// Handed to the device.
    Sent,
    /// Waiting for ARP or ring space: an [`Event::Sent`] with the tag follows.
    Queued,
}

/// Why a send failed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// Larger than the MTU allows (EMSGSIZE).
    TooLong,
    /// No buffer, or too many frames waiting (ENOBUFS).
    NoBuffers,
    /// Port 0 or address 0.0.0.0 (EINVAL).
    BadDestination,
}

impl SendError {
    /// The errno for this failure.
    pub fn errno(self) -> i32 {
        match self {
            SendError::TooLong => libc::EMSGSIZE,
            SendError::NoBuffers => libc::ENOBUFS,
            SendError::BadDestination => libc::EINVAL,
        }
    }
}

/// A received payload, still in the frame it arrived in (`R` is the
/// device's receive token: an mbuf for DPDK).
#[derive(Debug)]
pub struct RxPayload<R> {
    frame: R,
    offset: usize,
    len: usize,
}

impl<R: RxToken> RxPayload<R> {
    /// The payload bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.frame.frame()[self.offset..self.offset + self.len]
    }

    /// The frame that holds the payload (keep it to keep the bytes).
    pub fn into_frame(self) -> R {
        self.frame
    }
}

/// What a poll found (`R` is the device's receive token).
#[derive(Debug)]
pub enum Event<R> {
    /// A datagram for the socket bound as `socket` on `local_port`.
    Datagram {
        /// The socket token given to [`Stack::bind`].
        socket: u32,
        /// The local port it came to.
        local_port: u16,
        /// The sender.
        from: SocketAddrV4,
        /// The payload, in its frame.
        payload: RxPayload<R>,
    },
    /// A queued send finished: `errno` None if it went out, else why not
    /// (EHOSTUNREACH when nobody answered ARP).
    Sent {
        /// The tag given to [`Stack::send`].
        tag: u64,
        /// None if the frame went out.
        errno: Option<i32>,
    },
}

/// A frame waiting for ARP, and the tag of its send.
type Waiting<T> = (T, Option<u64>);

/// The stack (see the module docs).
pub struct Stack<D: Device> {
    device: D,
    ip: Ipv4Addr,
    mac: EthernetAddress,
    mtu: usize,
    arp: ArpCache<Waiting<D::TxToken>>,
    ports: PortTable,
    /// Frames the device has not taken yet, oldest first, and their tags.
    tx: Vec<D::TxToken>,
    tx_tags: VecDeque<Option<u64>>,
    /// Finished sends noticed outside poll, reported by the next poll.
    deferred: Vec<Event<D::RxToken>>,
    /// Frames to our own address, received by the next poll.
    loopback: Vec<D::RxToken>,
    rx: Vec<D::RxToken>,
    counters: Counters,
    ident: u16,
    ip_tx_cksum: Checksum,
    link_up: bool,
    next_link_check: Instant,
}

impl<D: Device> fmt::Debug for Stack<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stack").field("ip", &self.ip).field("mac", &self.mac).field("mtu", &self.mtu).finish()
    }
}

impl<D: Device> Stack<D> {
    /// The stack over `device`: its IPv4 address and ARP timers come from
    /// `cfg`, its MAC, MTU and checksum offloads from the device. Sends a
    /// gratuitous ARP if the link is up.
    pub fn with_device(device: D, cfg: &Config) -> Stack<D> {
        let caps = device.capabilities();
        let now = device.now();
        let mut s = Stack {
            ip: cfg.local_ipv4,
            mac: caps.mac,
            mtu: usize::from(caps.mtu),
            device,
            arp: ArpCache::new(cfg.arp_ttl, cfg.arp_retry, cfg.arp_retries),
            ports: PortTable::new(),
            tx: Vec::with_capacity(64),
            tx_tags: VecDeque::new(),
            deferred: Vec::new(),
            loopback: Vec::new(),
            rx: Vec::with_capacity(RX_BURST),
            counters: Counters::default(),
            ident: 1,
            ip_tx_cksum: if caps.tx_ipv4_checksum { Checksum::Offloaded } else { Checksum::Software },
            link_up: false,
            next_link_check: now,
        };
        s.check_link(now);
        s
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, for changing it (tests: link state, ring room).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Our IPv4 address.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ip
    }

    /// Our MAC address.
    pub fn mac(&self) -> EthernetAddress {
        self.mac
    }

    /// True if the link was up at the last check.
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// The largest UDP payload one frame carries.
    pub fn max_payload(&self) -> usize {
        self.mtu - IPV4_HEADER_LEN - UDP_HEADER_LEN
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Binds `port` (0 picks an ephemeral one) to socket token `socket`.
    pub fn bind(&mut self, port: u16, socket: u32) -> Result<u16, BindError> {
        self.ports.bind(port, socket)
    }

    /// Frees a bound port.
    pub fn unbind(&mut self, port: u16) {
        self.ports.unbind(port);
    }

    /// A buffer whose payload area holds `len` zeroed bytes, for zero-copy
    /// sends (see [`Payload::Buffer`]); None if `len` exceeds one frame, the
    /// device has no buffer free, or it cannot send without copying.
    pub fn alloc_payload(&mut self, len: usize) -> Option<D::TxToken> {
        if len > self.max_payload() {
            return None;
        }
        self.device.alloc_payload(len)
    }

    /// Sends one datagram from local port `src_port` to `dst`; see [`SendStatus`].
    pub fn send(
        &mut self,
        src_port: u16,
        dst: SocketAddrV4,
        payload: Payload<'_, D::TxToken>,
        tag: u64,
    ) -> Result<SendStatus, SendError> {
        if payload.bytes().len() > self.max_payload() {
            return Err(SendError::TooLong);
        }
        if dst.port() == 0 || dst.ip().is_unspecified() {
            return Err(SendError::BadDestination);
        }
        let now = self.device.now();
        let ip = *dst.ip();
        let dst_mac = if ip == self.ip {
            Some(self.mac)
        } else if ip.is_broadcast() {
            Some(EthernetAddress::BROADCAST)
        } else if ip.is_multicast() {
            let o = ip.octets();
            Some(EthernetAddress([0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]]))
        } else {
            self.arp.lookup(ip, now)
        };
        let src = SocketAddrV4::new(self.ip, src_port);
        self.counters.tx_datagrams += 1;
        match dst_mac {
            Some(mac) => {
                let frame = self.build_udp(src, dst, mac, payload)?;
                if ip == self.ip {
                    self.loopback.push(frame.into());
                    return Ok(SendStatus::Sent);
                }
                self.transmit(frame, Some(tag))
            }
            None => {
                // The destination MAC is written once ARP answers.
                let frame = self.build_udp(src, dst, EthernetAddress::default(), Payload::Bytes(payload.bytes()))?;
                match self.arp.park(ip, (frame, Some(tag)), now) {
                    Parked::NewResolution => {
                        self.send_arp(ArpOperation::Request, EthernetAddress::BROADCAST, ip);
                        Ok(SendStatus::Queued)
                    }
                    Parked::Joined => Ok(SendStatus::Queued),
                    Parked::Full(_) => Err(SendError::NoBuffers),
                }
            }
        }
    }

    /// Sends a whole Ethernet frame as it is (tools and tests: malformed
    /// frames, other protocols). It goes out behind earlier frames. Frames
    /// longer than the Ethernet header plus the MTU fail with `TooLong`.
    pub fn send_raw(&mut self, frame: &[u8]) -> Result<SendStatus, SendError> {
        if frame.len() > ETHERNET_HEADER_LEN + self.mtu {
            return Err(SendError::TooLong);
        }
        let Some(mut m) = self.device.alloc_tx(frame.len()) else {
            self.counters.drop_no_mbuf += 1;
            return Err(SendError::NoBuffers);
        };
        m.frame_mut().ok_or(SendError::NoBuffers)?.copy_from_slice(frame);
        self.transmit(m, None)
    }

    /// Receives a burst and moves every timer and queue forward.
    pub fn poll(&mut self, out: &mut Vec<Event<D::RxToken>>) {
        out.append(&mut self.deferred);
        let now = self.device.now();
        let mut rx = std::mem::take(&mut self.rx);
        if self.device.receive(&mut rx, RX_BURST) > 0 {
            for m in rx.drain(..) {
                self.receive(m, now, out);
            }
        }
        if !self.loopback.is_empty() {
            rx.append(&mut self.loopback);
            for m in rx.drain(..) {
                self.receive(m, now, out);
            }
        }
        self.rx = rx;
        if self.arp.resolving() {
            self.run_arp_timers(now, out);
        }
        if now >= self.next_link_check {
            self.check_link(now);
        }
        if !self.tx.is_empty() {
            self.flush_tx();
        }
        // Sends finished during this poll (say, released by an ARP reply).
        out.append(&mut self.deferred);
    }

    fn check_link(&mut self, now: Instant) {
        self.next_link_check = now + LINK_CHECK;
        let up = self.device.link_up();
        if up && !self.link_up {
            // Gratuitous ARP: announce our address (and refresh peers' caches).
            self.send_arp(ArpOperation::Request, EthernetAddress::BROADCAST, self.ip);
        }
        self.link_up = up;
    }

    fn run_arp_timers(&mut self, now: Instant, out: &mut Vec<Event<D::RxToken>>) {
        let (mut retry, mut failed) = (Vec::new(), Vec::new());
        self.arp.expire(now, &mut retry, &mut failed);
        for ip in retry {
            self.send_arp(ArpOperation::Request, EthernetAddress::BROADCAST, ip);
        }
        for r in failed {
            for (frame, tag) in r.frames {
                drop(frame);
                self.counters.drop_arp_unresolved += 1;
                if let Some(tag) = tag {
                    out.push(Event::Sent { tag, errno: Some(libc::EHOSTUNREACH) });
                }
            }
        }
    }
}

impl<D: Device> Drop for Stack<D> {
    fn drop(&mut self) {
        log::info!("catnip: counters at close: {:?}", self.counters);
    }
}
