//! The network stack over one port: Ethernet, ARP, IPv4, ICMP echo, UDP.
//!
//! Non-blocking throughout. [`Stack::send`] builds a datagram and hands it
//! to the port at once when the destination MAC is known; otherwise the
//! frame waits for ARP, and the outcome comes later as [`Event::Sent`].
//! [`Stack::poll`] receives one burst, answers ARP and ping, delivers UDP
//! datagrams as [`Event::Datagram`] (the payload stays in its mbuf), runs
//! the ARP timers and flushes the transmit backlog. Every dropped frame is
//! counted in [`Counters`] under its reason.

mod arp;
mod counters;
mod rx;
mod udp;

pub use arp::MAX_WAITING_PER_ADDR;
pub use counters::Counters;
pub use udp::{BindError, EPHEMERAL};

use crate::config::Config;
use crate::port::Port;
use crate::sys::{default_headroom, Mbuf};
use crate::wire::ipv4::Checksum;
use crate::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetAddress, EthernetFrame, EthernetRepr, IcmpPacket, IcmpRepr,
    IpProtocol, Ipv4Packet, Ipv4Repr, UdpRepr, ARP_PACKET_LEN, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, UDP_HEADER_LEN,
};
use crate::Error;
use arp::{ArpCache, Parked};
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};
use udp::PortTable;

/// Frames taken from the port per poll.
const RX_BURST: usize = 32;
/// Frames that may wait for room in the port's transmit ring.
const TX_BACKLOG_MAX: usize = 1024;
/// TTL of the packets we send.
const DEFAULT_TTL: u8 = 64;
/// How often the link state is read.
const LINK_CHECK: Duration = Duration::from_millis(100);
/// Ethernet, IPv4 and UDP headers together.
pub const UDP_HEADERS_LEN: usize = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN;

/// The bytes of a datagram to send.
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    /// Plain memory: copied into a fresh mbuf.
    Bytes(&'a [u8]),
    /// `data` lives in `mbuf` (from [`Stack::alloc_payload`]): sent without
    /// copying when it starts at the mbuf's payload area and no earlier
    /// send still holds the mbuf; copied otherwise.
    Mbuf { mbuf: &'a Mbuf, data: &'a [u8] },
}

impl Payload<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Bytes(b) => b,
            Payload::Mbuf { data, .. } => data,
        }
    }
}

/// How a send went, when it did not fail at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendStatus {
    /// Handed to the port.
    Sent,
    /// Waiting for ARP or ring space: an [`Event::Sent`] with the tag follows.
    Queued,
}

/// Why a send failed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// Larger than the MTU allows (EMSGSIZE).
    TooLong,
    /// No mbuf, or too many frames waiting (ENOBUFS).
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

/// A received payload, still in its mbuf.
#[derive(Debug)]
pub struct RxPayload {
    mbuf: Mbuf,
    offset: usize,
    len: usize,
}

impl RxPayload {
    /// The payload bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.mbuf.data()[self.offset..self.offset + self.len]
    }

    /// The mbuf that holds the payload (keep it to keep the bytes).
    pub fn into_mbuf(self) -> Mbuf {
        self.mbuf
    }
}

/// What a poll found.
#[derive(Debug)]
pub enum Event {
    /// A datagram for the socket bound as `socket` on `local_port`.
    Datagram { socket: u32, local_port: u16, from: SocketAddrV4, payload: RxPayload },
    /// A queued send finished: `errno` None if it went out, else why not
    /// (EHOSTUNREACH when nobody answered ARP).
    Sent { tag: u64, errno: Option<i32> },
}

/// A frame waiting for ARP, and the tag of its send.
type Waiting = (Mbuf, Option<u64>);

/// Header fields of an outgoing UDP datagram.
struct UdpHeaders {
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    ident: u16,
    ip_cksum: Checksum,
}

impl UdpHeaders {
    /// Writes the 42 header bytes in front of `payload`.
    fn emit(&self, h: &mut [u8], payload: &[u8]) {
        let (eth, rest) = h.split_at_mut(ETHERNET_HEADER_LEN);
        let (ip, udp) = rest.split_at_mut(IPV4_HEADER_LEN);
        EthernetRepr { src_addr: self.src_mac, dst_addr: self.dst_mac, ethertype: EtherType::Ipv4 }
            .emit(&mut EthernetFrame::new_unchecked(eth));
        let ip_repr = Ipv4Repr {
            src_addr: *self.src.ip(),
            dst_addr: *self.dst.ip(),
            protocol: IpProtocol::Udp,
            payload_len: UDP_HEADER_LEN + payload.len(),
            ttl: DEFAULT_TTL,
        };
        ip_repr.emit(&mut Ipv4Packet::new_unchecked(ip), self.ident, self.ip_cksum);
        UdpRepr { src_port: self.src.port(), dst_port: self.dst.port() }.emit(
            udp,
            *self.src.ip(),
            *self.dst.ip(),
            payload,
        );
    }
}

/// The stack (see the module docs).
pub struct Stack {
    port: Port,
    ip: Ipv4Addr,
    mac: EthernetAddress,
    mtu: usize,
    arp: ArpCache<Waiting>,
    ports: PortTable,
    /// Frames the port has not taken yet, oldest first, and their tags.
    tx: Vec<Mbuf>,
    tx_tags: VecDeque<Option<u64>>,
    /// Finished sends noticed outside poll, reported by the next poll.
    deferred: Vec<Event>,
    /// Frames to our own address, received by the next poll.
    loopback: Vec<Mbuf>,
    rx: Vec<Mbuf>,
    counters: Counters,
    ident: u16,
    ip_tx_cksum: Checksum,
    link_up: bool,
    next_link_check: Instant,
}

impl Stack {
    /// Starts the port and the stack (sends a gratuitous ARP once the link is up).
    pub fn new(cfg: &Config) -> Result<Stack, Error> {
        let port = Port::open(cfg)?;
        let ip_tx_cksum = if port.tx_ipv4_cksum_offload() { Checksum::Offloaded } else { Checksum::Software };
        let mut s = Stack {
            ip: cfg.local_ipv4,
            mac: port.mac(),
            mtu: usize::from(cfg.mtu),
            port,
            arp: ArpCache::new(cfg.arp_ttl, cfg.arp_retry, cfg.arp_retries),
            ports: PortTable::new(),
            tx: Vec::with_capacity(64),
            tx_tags: VecDeque::new(),
            deferred: Vec::new(),
            loopback: Vec::new(),
            rx: Vec::with_capacity(RX_BURST),
            counters: Counters::default(),
            ident: 1,
            ip_tx_cksum,
            link_up: false,
            next_link_check: Instant::now(),
        };
        s.check_link(Instant::now());
        log::info!(
            "catnip: {} up={} mac {} ip {} mtu {} ipv4 checksum offload rx={} tx={}",
            s.port.driver(),
            s.link_up,
            s.mac,
            s.ip,
            s.mtu,
            s.port.rx_ipv4_cksum_offload(),
            s.port.tx_ipv4_cksum_offload()
        );
        Ok(s)
    }

    /// Our IPv4 address.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ip
    }

    /// Our MAC address.
    pub fn mac(&self) -> EthernetAddress {
        self.mac
    }

    /// The port's driver name.
    pub fn driver(&self) -> &str {
        self.port.driver()
    }

    /// True if the link was up at the last check.
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// Waits up to `limit` for the link (for start-up and tests).
    pub fn wait_link(&mut self, limit: Duration) -> bool {
        let up = self.port.wait_link(limit);
        self.check_link(Instant::now());
        up
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

    /// An mbuf whose payload area (see [`Mbuf::payload_area`]) holds `len`
    /// bytes, zeroed, for zero-copy sends; None if `len` exceeds one frame
    /// or the pool is empty.
    pub fn alloc_payload(&mut self, len: usize) -> Option<Mbuf> {
        if len > self.max_payload() {
            return None;
        }
        let mut m = self.port.alloc()?;
        m.frame_mut(default_headroom(), len)?.fill(0);
        Some(m)
    }

    /// Sends one datagram from local port `src_port` to `dst`; see [`SendStatus`].
    pub fn send(
        &mut self,
        src_port: u16,
        dst: SocketAddrV4,
        payload: Payload<'_>,
        tag: u64,
    ) -> Result<SendStatus, SendError> {
        if payload.bytes().len() > self.max_payload() {
            return Err(SendError::TooLong);
        }
        if dst.port() == 0 || dst.ip().is_unspecified() {
            return Err(SendError::BadDestination);
        }
        let now = Instant::now();
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
                    self.loopback.push(frame);
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
    /// frames, other protocols). It goes out behind earlier frames.
    pub fn send_raw(&mut self, frame: &[u8]) -> Result<SendStatus, SendError> {
        let Some(mut m) = self.port.alloc() else {
            self.counters.drop_no_mbuf += 1;
            return Err(SendError::NoBuffers);
        };
        m.frame_mut(default_headroom(), frame.len()).ok_or(SendError::TooLong)?.copy_from_slice(frame);
        self.transmit(m, None)
    }

    /// Receives a burst and moves every timer and queue forward.
    pub fn poll(&mut self, out: &mut Vec<Event>) {
        out.append(&mut self.deferred);
        let now = Instant::now();
        let mut rx = std::mem::take(&mut self.rx);
        if self.port.rx_burst(&mut rx, RX_BURST) > 0 {
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
            out.append(&mut self.deferred);
        }
    }

    fn check_link(&mut self, now: Instant) {
        self.next_link_check = now + LINK_CHECK;
        let up = self.port.link_up();
        if up && !self.link_up {
            // Gratuitous ARP: announce our address (and refresh peers' caches).
            self.send_arp(ArpOperation::Request, EthernetAddress::BROADCAST, self.ip);
        }
        self.link_up = up;
    }

    fn run_arp_timers(&mut self, now: Instant, out: &mut Vec<Event>) {
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

    /// Builds a UDP frame, without copying when the payload allows.
    fn build_udp(
        &mut self,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        dst_mac: EthernetAddress,
        payload: Payload<'_>,
    ) -> Result<Mbuf, SendError> {
        self.ident = self.ident.wrapping_add(1);
        let h = UdpHeaders { src_mac: self.mac, dst_mac, src, dst, ident: self.ident, ip_cksum: self.ip_tx_cksum };
        let offload = self.ip_tx_cksum == Checksum::Offloaded;
        if let Payload::Mbuf { mbuf, data } = payload {
            if data.as_ptr() == mbuf.payload_area().0 {
                if let Some(mut m) = mbuf.claim_for_tx(data.len(), UDP_HEADERS_LEN, |hdr, p| h.emit(hdr, p)) {
                    if offload {
                        m.offload_ipv4_cksum(ETHERNET_HEADER_LEN as u8, IPV4_HEADER_LEN as u8);
                    }
                    return Ok(m);
                }
            }
        }
        let data = payload.bytes();
        let Some(mut m) = self.port.alloc() else {
            self.counters.drop_no_mbuf += 1;
            return Err(SendError::NoBuffers);
        };
        let frame = m
            .frame_mut(default_headroom() - UDP_HEADERS_LEN, UDP_HEADERS_LEN + data.len())
            .ok_or(SendError::TooLong)?;
        let (hdr, body) = frame.split_at_mut(UDP_HEADERS_LEN);
        body.copy_from_slice(data);
        h.emit(hdr, body);
        if offload {
            m.offload_ipv4_cksum(ETHERNET_HEADER_LEN as u8, IPV4_HEADER_LEN as u8);
        }
        Ok(m)
    }

    /// Hands a frame to the port, or queues it behind earlier ones.
    fn transmit(&mut self, frame: Mbuf, tag: Option<u64>) -> Result<SendStatus, SendError> {
        if self.tx.is_empty() {
            self.tx.push(frame);
            if self.port.tx_burst(&mut self.tx) == 1 {
                self.counters.tx_frames += 1;
                return Ok(SendStatus::Sent);
            }
            self.tx_tags.push_back(tag);
            return Ok(SendStatus::Queued);
        }
        if self.tx.len() >= TX_BACKLOG_MAX {
            self.counters.drop_tx_backlog_full += 1;
            return Err(SendError::NoBuffers);
        }
        self.tx.push(frame);
        self.tx_tags.push_back(tag);
        self.flush_tx();
        Ok(SendStatus::Queued)
    }

    /// Sends what the ring takes from the backlog; finished tags go to `deferred`.
    fn flush_tx(&mut self) {
        let n = self.port.tx_burst(&mut self.tx);
        self.counters.tx_frames += n as u64;
        for tag in self.tx_tags.drain(..n).flatten() {
            self.deferred.push(Event::Sent { tag, errno: None });
        }
    }

    /// Sends a frame of our own (ARP, ICMP); dropped and counted if no room.
    fn transmit_internal(&mut self, frame: Mbuf) {
        // Internal frames have no tag, so only a full backlog can fail.
        let _ = self.transmit(frame, None);
    }

    /// Builds a frame of `len` bytes after the Ethernet header and lets
    /// `fill` write that part.
    fn internal_frame(
        &mut self,
        dst_mac: EthernetAddress,
        ethertype: EtherType,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) {
        let Some(mut m) = self.port.alloc() else {
            self.counters.drop_no_mbuf += 1;
            return;
        };
        let Some(frame) = m.frame_mut(default_headroom(), ETHERNET_HEADER_LEN + len) else {
            return;
        };
        let mut f = EthernetFrame::new_unchecked(frame);
        EthernetRepr { src_addr: self.mac, dst_addr: dst_mac, ethertype }.emit(&mut f);
        fill(f.payload_mut());
        self.transmit_internal(m);
    }

    fn send_arp(&mut self, op: ArpOperation, dst_mac: EthernetAddress, target_ip: Ipv4Addr) {
        let repr = ArpRepr {
            operation: op,
            source_hardware_addr: self.mac,
            source_protocol_addr: self.ip,
            target_hardware_addr: if op == ArpOperation::Reply { dst_mac } else { EthernetAddress::default() },
            target_protocol_addr: target_ip,
        };
        match op {
            ArpOperation::Reply => self.counters.arp_replies_sent += 1,
            _ => self.counters.arp_requests_sent += 1,
        }
        self.internal_frame(dst_mac, EtherType::Arp, ARP_PACKET_LEN, |b| repr.emit(&mut ArpPacket::new_unchecked(b)));
    }

    fn send_ipv4(&mut self, dst_mac: EthernetAddress, dst: Ipv4Addr, protocol: IpProtocol, icmp: IcmpRepr<'_>) {
        self.ident = self.ident.wrapping_add(1);
        let (ident, len) = (self.ident, icmp.buffer_len());
        let repr = Ipv4Repr { src_addr: self.ip, dst_addr: dst, protocol, payload_len: len, ttl: DEFAULT_TTL };
        self.internal_frame(dst_mac, EtherType::Ipv4, IPV4_HEADER_LEN + len, |b| {
            let (ip, rest) = b.split_at_mut(IPV4_HEADER_LEN);
            repr.emit(&mut Ipv4Packet::new_unchecked(ip), ident, Checksum::Software);
            icmp.emit(&mut IcmpPacket::new_unchecked(rest));
        });
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        log::info!("catnip: counters at close: {:?}", self.counters);
    }
}
