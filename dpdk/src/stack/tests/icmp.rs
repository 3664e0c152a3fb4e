//! ICMP: echo replies, port unreachable, and what is ignored.

use super::*;
use crate::wire::{icmp, IcmpPacket, IcmpRepr};

/// An ICMP message from the peer to us.
fn icmp_frame(repr: IcmpRepr<'_>) -> Vec<u8> {
    let mut body = vec![0; repr.buffer_len()];
    repr.emit(&mut IcmpPacket::new_unchecked(&mut body[..]));
    ipv4_frame(OUR_IP, IpProtocol::Icmp, &body)
}

/// The one frame the stack sent: its destination MAC, its IPv4 header
/// (checksum verified) and its ICMP bytes (checksum verified).
fn sent_icmp(s: &TestStack) -> (EthernetAddress, Ipv4Repr, Vec<u8>) {
    let sent = s.device().take_sent();
    assert_eq!(sent.len(), 1, "one ICMP message");
    let frame = EthernetFrame::new_checked(sent[0].bytes()).unwrap();
    assert_eq!((frame.src_addr(), frame.ethertype()), (OUR_MAC, EtherType::Ipv4));
    let ip = Ipv4Packet::new_checked(frame.payload()).unwrap();
    let repr = Ipv4Repr::parse(&ip, Checksum::Software).expect("a good IPv4 header checksum");
    let p = IcmpPacket::new_checked(ip.payload()).unwrap();
    assert!(p.verify_checksum(), "a good ICMP checksum");
    (frame.dst_addr(), repr, ip.payload().to_vec())
}

#[test]
fn an_echo_request_gets_a_reply_with_correct_checksums() {
    let mut s = stack();
    let data: Vec<u8> = (0..=255).collect();
    let request = icmp_frame(IcmpRepr::EchoRequest { ident: 0x1234, seq_no: 7, data: &data });
    assert!(receive(&mut s, Frame::new(request)).is_empty());
    let (dst_mac, ip, body) = sent_icmp(&s);
    assert_eq!(dst_mac, PEER_MAC);
    assert_eq!((ip.src_addr, ip.dst_addr, ip.protocol, ip.ttl), (OUR_IP, PEER_IP, IpProtocol::Icmp, 64));
    assert_eq!(ip.payload_len, body.len());
    let reply = IcmpRepr::parse(&IcmpPacket::new_checked(&body[..]).unwrap()).unwrap();
    assert_eq!(reply, IcmpRepr::EchoReply { ident: 0x1234, seq_no: 7, data: &data });
    assert_eq!(
        *s.counters(),
        counted(|c| {
            c.rx_frames = 1;
            c.icmp_echo_replies_sent = 1;
            c.tx_frames += 1;
        })
    );
}

#[test]
fn replies_and_other_messages_are_not_answered() {
    let mut s = stack();
    receive(&mut s, Frame::new(icmp_frame(IcmpRepr::EchoReply { ident: 1, seq_no: 1, data: b"pong" })));
    receive(&mut s, Frame::new(icmp_frame(IcmpRepr::Other { msg_type: icmp::Message::from(13), code: 0 })));
    assert!(s.device().take_sent().is_empty());
    assert_eq!(
        *s.counters(),
        counted(|c| {
            c.rx_frames = 2;
            c.drop_icmp_ignored = 2;
        })
    );
}

#[test]
fn a_datagram_to_an_unbound_port_gets_port_unreachable() {
    let mut s = stack();
    let datagram = udp_frame(4000, 4444, b"anyone?");
    assert!(receive(&mut s, Frame::new(datagram.clone())).is_empty());
    let (dst_mac, ip, body) = sent_icmp(&s);
    assert_eq!((dst_mac, ip.dst_addr), (PEER_MAC, PEER_IP));
    let quoted = &datagram[ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN];
    let repr = IcmpRepr::parse(&IcmpPacket::new_checked(&body[..]).unwrap()).unwrap();
    assert_eq!(repr, IcmpRepr::DstUnreachable { code: icmp::CODE_PORT_UNREACHABLE, data: quoted });

    // Not for a broadcast: nobody answers those.
    let mut b = udp_frame(4000, 4444, b"anyone?");
    b[..6].copy_from_slice(&EthernetAddress::BROADCAST.0);
    receive(&mut s, Frame::new(b));
    assert!(s.device().take_sent().is_empty());
    assert_eq!(
        *s.counters(),
        counted(|c| {
            c.rx_frames = 2;
            c.drop_udp_no_socket = 2;
            c.icmp_unreachable_sent = 1;
            c.tx_frames += 1;
        })
    );
}
