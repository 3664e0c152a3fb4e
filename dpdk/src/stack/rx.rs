//! The receive path: every frame is checked layer by layer, answered (ARP,
//! ping), delivered (UDP) or dropped under a counted reason.

use super::{Event, RxPayload, SendStatus, Stack};
use crate::device::{Device, RxToken, TxToken};
use crate::wire::ipv4::Checksum;
use crate::wire::{
    icmp, ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetAddress, EthernetFrame, IcmpPacket, IcmpRepr,
    IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr, ETHERNET_HEADER_LEN, ICMP_HEADER_LEN, IPV4_HEADER_LEN,
    UDP_HEADER_LEN,
};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

impl<D: Device> Stack<D> {
    pub(super) fn receive(&mut self, m: D::RxToken, now: Instant, out: &mut Vec<Event<D::RxToken>>) {
        self.counters.rx_frames += 1;
        if !m.whole() {
            self.counters.drop_multi_segment += 1;
            return;
        }
        let Ok(frame) = EthernetFrame::new_checked(m.frame()) else {
            self.counters.drop_eth_truncated += 1;
            return;
        };
        let dst = frame.dst_addr();
        if dst != self.mac && !dst.is_broadcast() {
            self.counters.drop_eth_not_for_us += 1;
            return;
        }
        let src_mac = frame.src_addr();
        match frame.ethertype() {
            EtherType::Arp => {
                let body = frame.payload();
                self.receive_arp(body, now);
            }
            EtherType::Ipv4 => self.receive_ipv4(m, src_mac, dst.is_broadcast(), out),
            _ => self.counters.drop_eth_unknown_type += 1,
        }
    }

    fn receive_arp(&mut self, body: &[u8], now: Instant) {
        let Ok(repr) = ArpPacket::new_checked(body).and_then(|p| ArpRepr::parse(&p)) else {
            self.counters.drop_arp_malformed += 1;
            return;
        };
        let (sender_ip, sender_mac) = (repr.source_protocol_addr, repr.source_hardware_addr);
        if sender_ip == self.ip && sender_mac != self.mac {
            log::warn!("catnip: {sender_mac} also claims our address {sender_ip}");
        }
        let usable = !sender_ip.is_unspecified() && sender_ip != self.ip && sender_mac.is_unicast();
        let for_us = repr.target_protocol_addr == self.ip;
        let released = match (repr.operation, for_us && usable) {
            (ArpOperation::Request, true) => {
                let r = self.arp.learn(sender_ip, sender_mac, now);
                self.send_arp(ArpOperation::Reply, sender_mac, sender_ip);
                r
            }
            (ArpOperation::Reply, true) => self.arp.learn(sender_ip, sender_mac, now),
            _ => {
                self.counters.drop_arp_not_for_us += 1;
                if usable {
                    self.arp.refresh(sender_ip, sender_mac, now)
                } else {
                    None
                }
            }
        };
        for (mut frame, tag) in released.map(|r| r.frames).unwrap_or_default() {
            if let Some(b) = frame.frame_mut() {
                EthernetFrame::new_unchecked(b).set_dst_addr(sender_mac);
            }
            match self.transmit(frame, tag) {
                Ok(SendStatus::Sent) => self.deferred.extend(tag.map(|tag| Event::Sent { tag, errno: None })),
                Ok(SendStatus::Queued) => {}
                Err(e) => self.deferred.extend(tag.map(|tag| Event::Sent { tag, errno: Some(e.errno()) })),
            }
        }
    }

    fn receive_ipv4(
        &mut self,
        m: D::RxToken,
        src_mac: EthernetAddress,
        l2_broadcast: bool,
        out: &mut Vec<Event<D::RxToken>>,
    ) {
        let frame = &m.frame()[ETHERNET_HEADER_LEN..];
        let Ok(ip) = Ipv4Packet::new_checked(frame) else {
            self.counters.drop_ipv4_malformed += 1;
            return;
        };
        let cksum_ok = m.ipv4_checksum_ok().unwrap_or_else(|| ip.verify_checksum());
        if !cksum_ok {
            self.counters.drop_ipv4_bad_checksum += 1;
            return;
        }
        let Ok(repr) = Ipv4Repr::parse(&ip, Checksum::Offloaded) else {
            self.counters.drop_ipv4_malformed += 1;
            return;
        };
        let to_us = repr.dst_addr == self.ip;
        let udp_broadcast = repr.dst_addr.is_broadcast() && repr.protocol == IpProtocol::Udp;
        if !to_us && !udp_broadcast {
            self.counters.drop_ipv4_not_for_us += 1;
            return;
        }
        if ip.is_fragment() {
            self.counters.drop_ipv4_fragment += 1;
            return;
        }
        if repr.ttl == 0 {
            self.counters.drop_ipv4_ttl_zero += 1;
            return;
        }
        let hl = ip.header_len();
        match repr.protocol {
            IpProtocol::Icmp => self.receive_icmp(ip.payload(), src_mac, repr.src_addr),
            IpProtocol::Udp => {
                let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
                    self.counters.drop_udp_malformed += 1;
                    return;
                };
                if !udp.verify_checksum(repr.src_addr, repr.dst_addr) {
                    self.counters.drop_udp_bad_checksum += 1;
                    return;
                }
                let Ok(u) = UdpRepr::parse(&udp, repr.src_addr, repr.dst_addr) else {
                    self.counters.drop_udp_malformed += 1;
                    return;
                };
                let from = SocketAddrV4::new(repr.src_addr, u.src_port);
                let len = udp.payload().len();
                let Some(socket) = self.ports.lookup(u.dst_port) else {
                    self.counters.drop_udp_no_socket += 1;
                    if to_us && !l2_broadcast {
                        // RFC 1122: the original header and 8 bytes of its payload.
                        let quote = ip.header_len() + UDP_HEADER_LEN;
                        let quoted = frame[..quote].to_vec();
                        let icmp = IcmpRepr::DstUnreachable { code: icmp::CODE_PORT_UNREACHABLE, data: &quoted };
                        self.counters.icmp_unreachable_sent += 1;
                        self.send_ipv4(src_mac, repr.src_addr, IpProtocol::Icmp, icmp);
                    }
                    return;
                };
                self.counters.rx_datagrams += 1;
                let offset = ETHERNET_HEADER_LEN + hl + UDP_HEADER_LEN;
                out.push(Event::Datagram {
                    socket,
                    local_port: u.dst_port,
                    from,
                    payload: RxPayload { frame: m, offset, len },
                });
            }
            _ => self.counters.drop_ipv4_unknown_protocol += 1,
        }
    }

    fn receive_icmp(&mut self, body: &[u8], src_mac: EthernetAddress, src: Ipv4Addr) {
        let Ok(p) = IcmpPacket::new_checked(body) else {
            self.counters.drop_icmp_malformed += 1;
            return;
        };
        match IcmpRepr::parse(&p) {
            Err(_) => self.counters.drop_icmp_malformed += 1,
            Ok(IcmpRepr::EchoRequest { ident, seq_no, data }) => {
                if ICMP_HEADER_LEN + data.len() + IPV4_HEADER_LEN > self.mtu {
                    self.counters.drop_icmp_ignored += 1;
                    return;
                }
                self.counters.icmp_echo_replies_sent += 1;
                self.send_ipv4(src_mac, src, IpProtocol::Icmp, IcmpRepr::EchoReply { ident, seq_no, data });
            }
            Ok(_) => self.counters.drop_icmp_ignored += 1,
        }
    }
}
