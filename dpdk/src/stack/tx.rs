//! The transmit path: UDP frames (copied, or built around a payload the
//! device lent), our own ARP and ICMP frames, and the backlog of frames
//! the device's ring had no room for.

use super::{Event, Payload, SendError, SendStatus, Stack, DEFAULT_TTL, TX_BACKLOG_MAX, UDP_HEADERS_LEN};
use crate::device::{Device, TxToken};
use crate::wire::ipv4::Checksum;
use crate::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetAddress, EthernetFrame, EthernetRepr, IcmpPacket, IcmpRepr,
    IpProtocol, Ipv4Packet, Ipv4Repr, UdpRepr, ARP_PACKET_LEN, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, UDP_HEADER_LEN,
};
use std::net::{Ipv4Addr, SocketAddrV4};

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

impl<D: Device> Stack<D> {
    /// Builds a UDP frame, without copying when the payload and the device allow.
    pub(super) fn build_udp(
        &mut self,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        dst_mac: EthernetAddress,
        payload: Payload<'_, D::TxToken>,
    ) -> Result<D::TxToken, SendError> {
        self.ident = self.ident.wrapping_add(1);
        let h = UdpHeaders { src_mac: self.mac, dst_mac, src, dst, ident: self.ident, ip_cksum: self.ip_tx_cksum };
        let offload = self.ip_tx_cksum == Checksum::Offloaded;
        if let Payload::Buffer { buf, data } = payload {
            if let Some(mut m) = buf.share_for_tx(data, UDP_HEADERS_LEN, |hdr, p| h.emit(hdr, p)) {
                if offload {
                    m.offload_ipv4_checksum(ETHERNET_HEADER_LEN as u8, IPV4_HEADER_LEN as u8);
                }
                return Ok(m);
            }
        }
        let data = payload.bytes();
        let Some(mut m) = self.device.alloc_tx(UDP_HEADERS_LEN + data.len()) else {
            self.counters.drop_no_mbuf += 1;
            return Err(SendError::NoBuffers);
        };
        // A fresh buffer is never shared.
        let frame = m.frame_mut().ok_or(SendError::NoBuffers)?;
        let (hdr, body) = frame.split_at_mut(UDP_HEADERS_LEN);
        body.copy_from_slice(data);
        h.emit(hdr, body);
        if offload {
            m.offload_ipv4_checksum(ETHERNET_HEADER_LEN as u8, IPV4_HEADER_LEN as u8);
        }
        Ok(m)
    }

    /// Hands a frame to the device, or queues it behind earlier ones.
    pub(super) fn transmit(&mut self, frame: D::TxToken, tag: Option<u64>) -> Result<SendStatus, SendError> {
        if self.tx.is_empty() {
            self.tx.push(frame);
            if self.device.transmit(&mut self.tx) == 1 {
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
    pub(super) fn flush_tx(&mut self) {
        let n = self.device.transmit(&mut self.tx);
        self.counters.tx_frames += n as u64;
        for tag in self.tx_tags.drain(..n).flatten() {
            self.deferred.push(Event::Sent { tag, errno: None });
        }
    }

    /// Builds a frame of `len` bytes after the Ethernet header, lets `fill`
    /// write that part and sends it; dropped and counted if there is no
    /// buffer or no room.
    fn internal_frame(
        &mut self,
        dst_mac: EthernetAddress,
        ethertype: EtherType,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) {
        let Some(mut m) = self.device.alloc_tx(ETHERNET_HEADER_LEN + len) else {
            self.counters.drop_no_mbuf += 1;
            return;
        };
        let Some(frame) = m.frame_mut() else {
            return;
        };
        let mut f = EthernetFrame::new_unchecked(frame);
        EthernetRepr { src_addr: self.mac, dst_addr: dst_mac, ethertype }.emit(&mut f);
        fill(f.payload_mut());
        // Internal frames have no tag, so only a full backlog can fail (and is counted).
        let _ = self.transmit(m, None);
    }

    pub(super) fn send_arp(&mut self, op: ArpOperation, dst_mac: EthernetAddress, target_ip: Ipv4Addr) {
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

    pub(super) fn send_ipv4(
        &mut self,
        dst_mac: EthernetAddress,
        dst: Ipv4Addr,
        protocol: IpProtocol,
        icmp: IcmpRepr<'_>,
    ) {
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
