//! The stack's protocol rules over the in-memory [`Loopback`] device: no
//! DPDK, and time moves only when a test says so. Frames are built and read
//! back with the [`wire`](crate::wire) module; every test compares whole
//! [`Counters`] values, so a count that moves where it should not fails too.

mod arp;
mod drops;
mod icmp;
mod udp;

use super::{Counters, Event, Stack};
use crate::config::Config;
use crate::device::{Frame, Loopback};
use crate::wire::ipv4::Checksum;
use crate::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetAddress, EthernetFrame, EthernetRepr, IpProtocol, Ipv4Packet,
    Ipv4Repr, UdpPacket, UdpRepr, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, UDP_HEADER_LEN,
};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

const OUR_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const OUR_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PEER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
const MTU: u16 = 1500;
const ARP_RETRY: Duration = Duration::from_millis(100);
const ARP_RETRIES: u32 = 3;
const ARP_TTL: Duration = Duration::from_secs(60);

type TestStack = Stack<Loopback>;

fn config(ip: Ipv4Addr) -> Config {
    Config { arp_retry: ARP_RETRY, arp_retries: ARP_RETRIES, arp_ttl: ARP_TTL, ..Config::new(ip) }
}

/// The counters of a stack that has just started (one gratuitous ARP sent),
/// changed by `f`.
fn counted(f: impl FnOnce(&mut Counters)) -> Counters {
    let mut c = Counters { arp_requests_sent: 1, tx_frames: 1, ..Counters::default() };
    f(&mut c);
    c
}

/// A stack at [`OUR_IP`] over a lone loopback device, with the gratuitous
/// ARP it sent on start-up checked and taken off the device.
fn stack() -> TestStack {
    let s = Stack::with_device(Loopback::new(OUR_MAC, MTU), &config(OUR_IP));
    let sent = s.device().take_sent();
    assert_eq!(sent.len(), 1, "one gratuitous ARP");
    let (eth, arp) = arp_of(&sent[0]);
    assert_eq!((eth.dst_addr, eth.src_addr), (EthernetAddress::BROADCAST, OUR_MAC));
    assert_eq!(
        (arp.operation, arp.source_protocol_addr, arp.target_protocol_addr),
        (ArpOperation::Request, OUR_IP, OUR_IP)
    );
    assert_eq!(*s.counters(), counted(|_| {}));
    s
}

/// One poll; the events it produced.
fn poll(s: &mut TestStack) -> Vec<Event<Frame>> {
    let mut out = Vec::new();
    s.poll(&mut out);
    out
}

/// Injects `frame`, polls once and returns the events.
fn receive(s: &mut TestStack, frame: Frame) -> Vec<Event<Frame>> {
    s.device().inject(frame);
    poll(s)
}

/// An Ethernet frame around `payload`.
fn eth(dst: EthernetAddress, src: EthernetAddress, ethertype: EtherType, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0; ETHERNET_HEADER_LEN + payload.len()];
    let mut frame = EthernetFrame::new_unchecked(&mut f[..]);
    EthernetRepr { src_addr: src, dst_addr: dst, ethertype }.emit(&mut frame);
    frame.payload_mut().copy_from_slice(payload);
    f
}

/// An ARP packet from `sender` (MAC, IP) asking for or telling `target`.
fn arp_frame(
    op: ArpOperation,
    dst_mac: EthernetAddress,
    sender: (EthernetAddress, Ipv4Addr),
    target: (EthernetAddress, Ipv4Addr),
) -> Vec<u8> {
    let repr = ArpRepr {
        operation: op,
        source_hardware_addr: sender.0,
        source_protocol_addr: sender.1,
        target_hardware_addr: target.0,
        target_protocol_addr: target.1,
    };
    let mut body = vec![0; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut body[..]));
    eth(dst_mac, sender.0, EtherType::Arp, &body)
}

/// The peer's ARP reply to us.
fn peer_arp_reply() -> Frame {
    Frame::new(arp_frame(ArpOperation::Reply, OUR_MAC, (PEER_MAC, PEER_IP), (OUR_MAC, OUR_IP)))
}

/// An IPv4 packet from the peer to `dst` in a frame to our MAC.
fn ipv4_frame(dst: Ipv4Addr, protocol: IpProtocol, payload: &[u8]) -> Vec<u8> {
    let repr = Ipv4Repr { src_addr: PEER_IP, dst_addr: dst, protocol, payload_len: payload.len(), ttl: 64 };
    let mut ip = vec![0; IPV4_HEADER_LEN + payload.len()];
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut ip[..]), 9, Checksum::Software);
    ip[IPV4_HEADER_LEN..].copy_from_slice(payload);
    eth(OUR_MAC, PEER_MAC, EtherType::Ipv4, &ip)
}

/// A UDP datagram from the peer's `src_port` to our `dst_port`.
fn udp_frame(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = vec![0; UDP_HEADER_LEN + payload.len()];
    let (hdr, body) = udp.split_at_mut(UDP_HEADER_LEN);
    body.copy_from_slice(payload);
    UdpRepr { src_port, dst_port }.emit(hdr, PEER_IP, OUR_IP, body);
    ipv4_frame(OUR_IP, IpProtocol::Udp, &udp)
}

/// The Ethernet and ARP parts of a sent ARP frame.
fn arp_of(f: &Frame) -> (EthernetRepr, ArpRepr) {
    let frame = EthernetFrame::new_checked(f.bytes()).expect("an Ethernet frame");
    let eth = EthernetRepr::parse(&frame).expect("an Ethernet header");
    assert_eq!(eth.ethertype, EtherType::Arp);
    let arp = ArpRepr::parse(&ArpPacket::new_checked(frame.payload()).expect("ARP")).expect("an ARP packet");
    (eth, arp)
}

/// A sent UDP frame, parsed and checked down to its checksums.
#[derive(Debug)]
struct SentUdp {
    dst_mac: EthernetAddress,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: Vec<u8>,
}

fn udp_of(f: &Frame) -> SentUdp {
    let frame = EthernetFrame::new_checked(f.bytes()).expect("an Ethernet frame");
    assert_eq!((frame.src_addr(), frame.ethertype()), (OUR_MAC, EtherType::Ipv4));
    let ip = Ipv4Packet::new_checked(frame.payload()).expect("an IPv4 packet");
    let ip_repr = Ipv4Repr::parse(&ip, Checksum::Software).expect("a good IPv4 header checksum");
    assert_eq!((ip_repr.protocol, ip_repr.ttl), (IpProtocol::Udp, 64));
    let udp = UdpPacket::new_checked(ip.payload()).expect("a UDP packet");
    let u = UdpRepr::parse(&udp, ip_repr.src_addr, ip_repr.dst_addr).expect("a good UDP checksum");
    SentUdp {
        dst_mac: frame.dst_addr(),
        src: SocketAddrV4::new(ip_repr.src_addr, u.src_port),
        dst: SocketAddrV4::new(ip_repr.dst_addr, u.dst_port),
        payload: udp.payload().to_vec(),
    }
}

/// The tags and errnos of the `Sent` events in `events`.
fn sent_events(events: &[Event<Frame>]) -> Vec<(u64, Option<i32>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Sent { tag, errno } => Some((*tag, *errno)),
            Event::Datagram { .. } => None,
        })
        .collect()
}

/// The datagrams in `events`: socket, local port, sender, bytes.
fn datagrams(events: Vec<Event<Frame>>) -> Vec<(u32, u16, SocketAddrV4, Vec<u8>)> {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Datagram { socket, local_port, from, payload } => {
                Some((socket, local_port, from, payload.bytes().to_vec()))
            }
            Event::Sent { .. } => None,
        })
        .collect()
}
