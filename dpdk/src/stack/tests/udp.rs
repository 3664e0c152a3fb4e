//! UDP: two stacks over a pair of loopback devices, sending to ourselves,
//! and the ways a send can fail or wait.

use super::*;
use crate::stack::{Payload, SendError, SendStatus};

/// Two stacks joined by a loopback pair: ours at OUR_IP, the peer at PEER_IP.
fn pair() -> (TestStack, TestStack) {
    let (a, b) = Loopback::pair(OUR_MAC, PEER_MAC, MTU);
    (Stack::with_device(a, &config(OUR_IP)), Stack::with_device(b, &config(PEER_IP)))
}

/// Polls both stacks until neither has anything left to say; returns
/// what each one's polls produced.
fn settle(a: &mut TestStack, b: &mut TestStack) -> (Vec<Event<Frame>>, Vec<Event<Frame>>) {
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    for _ in 0..8 {
        a.poll(&mut ea);
        b.poll(&mut eb);
    }
    (ea, eb)
}

#[test]
fn datagrams_cross_a_pair_of_stacks_both_ways_intact() {
    let (mut a, mut b) = pair();
    assert_eq!(a.bind(7000, 5), Ok(7000));
    let eph = b.bind(0, 9).unwrap();
    assert!(crate::stack::EPHEMERAL.contains(&eph));
    let msg: Vec<u8> = (0..b.max_payload()).map(|i| (i * 7) as u8).collect();
    let server = SocketAddrV4::new(OUR_IP, 7000);
    assert_eq!(b.send(eph, server, Payload::Bytes(&msg), 41), Ok(SendStatus::Queued), "ARP first");
    let (ea, eb) = settle(&mut a, &mut b);
    assert_eq!(sent_events(&eb), [(41, None)]);
    let client = SocketAddrV4::new(PEER_IP, eph);
    assert_eq!(datagrams(ea), [(5, 7000, client, msg.clone())]);

    // The server learned the client from its ARP request: the answer goes at once.
    assert_eq!(a.send(7000, client, Payload::Bytes(b"back"), 42), Ok(SendStatus::Sent));
    let (ea, eb) = settle(&mut a, &mut b);
    assert!(ea.is_empty());
    assert_eq!(datagrams(eb), [(9, eph, server, b"back".to_vec())]);

    // Each side received the other's gratuitous ARP (not for it), an ARP
    // request or reply, and one datagram; and sent as many frames.
    let expect = |asked: u64| Counters {
        rx_frames: 3,
        tx_frames: 3,
        rx_datagrams: 1,
        tx_datagrams: 1,
        arp_requests_sent: 1 + asked,
        arp_replies_sent: 1 - asked,
        drop_arp_not_for_us: 1,
        ..Counters::default()
    };
    assert_eq!(*a.counters(), expect(0), "the server answered the request");
    assert_eq!(*b.counters(), expect(1), "the client asked");
}

#[test]
fn a_datagram_to_our_own_address_comes_back_without_the_device() {
    let mut s = stack();
    s.bind(53, 3).unwrap();
    let me = SocketAddrV4::new(OUR_IP, 53);
    assert_eq!(s.send(53, me, Payload::Bytes(b"self"), 1), Ok(SendStatus::Sent));
    assert_eq!(datagrams(poll(&mut s)), [(3, 53, me, b"self".to_vec())]);
    assert!(s.device().take_sent().is_empty());
    assert_eq!(
        *s.counters(),
        counted(|c| {
            c.tx_datagrams = 1;
            c.rx_frames = 1;
            c.rx_datagrams = 1;
        })
    );
}

#[test]
fn sends_that_cannot_go_fail_at_once() {
    let mut s = stack();
    let peer = SocketAddrV4::new(PEER_IP, 9);
    let too_long = vec![0; s.max_payload() + 1];
    assert_eq!(s.max_payload(), usize::from(MTU) - 28);
    assert_eq!(s.send(5, peer, Payload::Bytes(&too_long), 1), Err(SendError::TooLong));
    assert_eq!(s.send(5, SocketAddrV4::new(PEER_IP, 0), Payload::Bytes(b"x"), 1), Err(SendError::BadDestination));
    assert_eq!(
        s.send(5, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9), Payload::Bytes(b"x"), 1),
        Err(SendError::BadDestination)
    );
    s.device_mut().set_out_of_buffers(true);
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 9);
    assert_eq!(s.send(5, bcast, Payload::Bytes(b"x"), 1), Err(SendError::NoBuffers));
    assert_eq!(s.send_raw(&[0; 60]), Err(SendError::NoBuffers));
    assert!(s.device().take_sent().is_empty());
    assert_eq!(
        *s.counters(),
        counted(|c| {
            c.tx_datagrams = 1;
            c.drop_no_mbuf = 2;
        })
    );
}

#[test]
fn a_full_ring_queues_frames_in_order_and_reports_them_sent_later() {
    let mut s = stack();
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 9);
    s.device_mut().set_tx_room(Some(0));
    assert_eq!(s.send(5, bcast, Payload::Bytes(b"one"), 1), Ok(SendStatus::Queued));
    assert_eq!(s.send(5, bcast, Payload::Bytes(b"two"), 2), Ok(SendStatus::Queued));
    assert!(poll(&mut s).is_empty());
    s.device_mut().set_tx_room(Some(1));
    assert_eq!(sent_events(&poll(&mut s)), [(1, None)]);
    s.device_mut().set_tx_room(None);
    assert_eq!(sent_events(&poll(&mut s)), [(2, None)]);
    let sent: Vec<Vec<u8>> = s.device().take_sent().iter().map(|f| udp_of(f).payload).collect();
    assert_eq!(sent, [b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(
        *s.counters(),
        counted(|c| {
            c.tx_datagrams = 2;
            c.tx_frames += 2;
        })
    );
}

#[test]
fn a_lent_buffer_is_copied_when_the_device_cannot_share_it() {
    let mut s = stack();
    assert!(s.alloc_payload(16).is_none(), "the loopback device lends no payload buffers");
    let buf = Frame::new(*b"....payload");
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 9);
    let payload = Payload::Buffer { buf: &buf, data: &buf.bytes()[4..] };
    assert_eq!(s.send(5, bcast, payload, 1), Ok(SendStatus::Sent));
    let u = udp_of(&s.device().take_sent()[0]);
    assert_eq!((u.dst_mac, u.dst, u.payload.as_slice()), (EthernetAddress::BROADCAST, bcast, &b"payload"[..]));
}

#[test]
fn broadcast_and_multicast_need_no_arp() {
    let mut s = stack();
    let group = SocketAddrV4::new(Ipv4Addr::new(239, 129, 0, 251), 5353);
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    assert_eq!(s.send(5, group, Payload::Bytes(b"m"), 1), Ok(SendStatus::Sent));
    assert_eq!(s.send(5, bcast, Payload::Bytes(b"b"), 2), Ok(SendStatus::Sent));
    let sent: Vec<SentUdp> = s.device().take_sent().iter().map(udp_of).collect();
    // RFC 1112: 01:00:5e and the group's low 23 bits.
    assert_eq!(sent[0].dst_mac, EthernetAddress([0x01, 0x00, 0x5e, 0x01, 0x00, 0xfb]));
    assert_eq!((sent[0].dst, sent[1].dst, sent[1].dst_mac), (group, bcast, EthernetAddress::BROADCAST));
    assert_eq!(
        *s.counters(),
        counted(|c| {
            c.tx_datagrams = 2;
            c.tx_frames += 2;
        })
    );
}
