//! ARP: announcing, resolving, retrying, expiring, answering.

use super::*;
use crate::stack::{Payload, SendError, SendStatus, MAX_WAITING_PER_ADDR};

const PEER: SocketAddrV4 = SocketAddrV4::new(PEER_IP, 9000);

#[test]
fn gratuitous_arp_goes_out_when_the_link_comes_up() {
    let mut dev = Loopback::new(OUR_MAC, MTU);
    dev.set_link_up(false);
    let mut s = Stack::with_device(dev, &config(OUR_IP));
    assert!(s.device().take_sent().is_empty(), "no announcement while the link is down");
    assert!(!s.link_up());
    s.device_mut().set_link_up(true);
    poll(&mut s);
    assert!(s.device().take_sent().is_empty(), "the link is read every 100 ms, not on every poll");
    s.device().advance(Duration::from_millis(100));
    poll(&mut s);
    assert!(s.link_up());
    let sent = s.device().take_sent();
    assert_eq!(sent.len(), 1);
    let (eth, arp) = arp_of(&sent[0]);
    assert_eq!(eth.dst_addr, EthernetAddress::BROADCAST);
    assert_eq!(
        (arp.source_hardware_addr, arp.source_protocol_addr, arp.target_protocol_addr),
        (OUR_MAC, OUR_IP, OUR_IP)
    );
    assert_eq!(*s.counters(), counted(|_| {}));
}

#[test]
fn resolution_asks_learns_and_releases_the_waiting_datagrams() {
    let mut s = stack();
    let port = s.bind(5000, 0).unwrap();
    assert_eq!(s.send(port, PEER, Payload::Bytes(b"first"), 1), Ok(SendStatus::Queued));
    assert_eq!(s.send(port, PEER, Payload::Bytes(b"second"), 2), Ok(SendStatus::Queued));
    let sent = s.device().take_sent();
    assert_eq!(sent.len(), 1, "one request for both datagrams");
    let (eth, arp) = arp_of(&sent[0]);
    assert_eq!(eth.dst_addr, EthernetAddress::BROADCAST);
    assert_eq!(arp.operation, ArpOperation::Request);
    assert_eq!((arp.source_hardware_addr, arp.source_protocol_addr), (OUR_MAC, OUR_IP));
    assert_eq!(arp.target_protocol_addr, PEER_IP);

    let events = receive(&mut s, peer_arp_reply());
    assert_eq!(sent_events(&events), [(1, None), (2, None)]);
    let sent: Vec<SentUdp> = s.device().take_sent().iter().map(udp_of).collect();
    assert_eq!(sent.len(), 2);
    for (u, body) in sent.iter().zip([&b"first"[..], b"second"]) {
        assert_eq!(u.dst_mac, PEER_MAC, "the learned address is filled in");
        assert_eq!((u.src, u.dst), (SocketAddrV4::new(OUR_IP, port), PEER));
        assert_eq!(u.payload, body);
    }

    // Known now: the next datagram goes at once, without asking again.
    assert_eq!(s.send(port, PEER, Payload::Bytes(b"third"), 3), Ok(SendStatus::Sent));
    assert_eq!(udp_of(&s.device().take_sent()[0]).payload, b"third");
    assert_eq!(
        *s.counters(),
        counted(|c| {
            c.arp_requests_sent += 1;
            c.rx_frames = 1;
            c.tx_datagrams = 3;
            c.tx_frames += 4;
        })
    );
}

#[test]
fn an_unanswered_resolution_retries_then_fails_with_ehostunreach() {
    let mut s = stack();
    assert_eq!(s.send(5000, PEER, Payload::Bytes(b"lost"), 7), Ok(SendStatus::Queued));
    assert_eq!(s.device().take_sent().len(), 1, "the first request");
    s.device().advance(ARP_RETRY / 2);
    assert!(poll(&mut s).is_empty());
    assert!(s.device().take_sent().is_empty(), "not due yet");
    for _ in 1..ARP_RETRIES {
        s.device().advance(ARP_RETRY);
        assert!(poll(&mut s).is_empty());
        let sent = s.device().take_sent();
        assert_eq!(sent.len(), 1, "one retry per interval");
        assert_eq!(arp_of(&sent[0]).1.target_protocol_addr, PEER_IP);
    }
    s.device().advance(ARP_RETRY);
    assert_eq!(sent_events(&poll(&mut s)), [(7, Some(libc::EHOSTUNREACH))]);
    assert!(s.device().take_sent().is_empty(), "the datagram never leaves");
    s.device().advance(ARP_RETRY * 10);
    assert!(poll(&mut s).is_empty());
    assert!(s.device().take_sent().is_empty(), "and nobody asks again");
    assert_eq!(
        *s.counters(),
        counted(|c| {
            c.arp_requests_sent += u64::from(ARP_RETRIES);
            c.tx_frames += u64::from(ARP_RETRIES);
            c.tx_datagrams = 1;
            c.drop_arp_unresolved = 1;
        })
    );
}

#[test]
fn learned_addresses_expire_after_their_ttl() {
    let mut s = stack();
    s.device().inject(peer_arp_reply());
    poll(&mut s);
    s.device().advance(ARP_TTL - Duration::from_millis(1));
    assert_eq!(s.send(5000, PEER, Payload::Bytes(b"in time"), 1), Ok(SendStatus::Sent));
    assert_eq!(udp_of(&s.device().take_sent()[0]).dst_mac, PEER_MAC);
    s.device().advance(Duration::from_millis(1));
    assert_eq!(s.send(5000, PEER, Payload::Bytes(b"too late"), 2), Ok(SendStatus::Queued));
    let sent = s.device().take_sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(arp_of(&sent[0]).1.target_protocol_addr, PEER_IP, "asks again");
    assert_eq!(
        *s.counters(),
        counted(|c| {
            c.rx_frames = 1;
            c.tx_datagrams = 2;
            c.tx_frames += 2;
            c.arp_requests_sent += 1;
        })
    );
}

#[test]
fn requests_for_our_address_are_answered_and_teach_us_the_asker() {
    let mut s = stack();
    let request = arp_frame(
        ArpOperation::Request,
        EthernetAddress::BROADCAST,
        (PEER_MAC, PEER_IP),
        (EthernetAddress::default(), OUR_IP),
    );
    assert!(receive(&mut s, Frame::new(request)).is_empty());
    let sent = s.device().take_sent();
    assert_eq!(sent.len(), 1);
    let (eth, arp) = arp_of(&sent[0]);
    assert_eq!((eth.dst_addr, eth.src_addr), (PEER_MAC, OUR_MAC));
    assert_eq!(
        arp,
        ArpRepr {
            operation: ArpOperation::Reply,
            source_hardware_addr: OUR_MAC,
            source_protocol_addr: OUR_IP,
            target_hardware_addr: PEER_MAC,
            target_protocol_addr: PEER_IP,
        }
    );
    assert_eq!(s.send(5000, PEER, Payload::Bytes(b"x"), 1), Ok(SendStatus::Sent), "the asker is known now");
    assert_eq!(
        *s.counters(),
        counted(|c| {
            c.rx_frames = 1;
            c.arp_replies_sent = 1;
            c.tx_datagrams = 1;
            c.tx_frames += 2;
        })
    );
}

#[test]
fn requests_for_other_addresses_are_neither_answered_nor_learned() {
    let mut s = stack();
    let other = Ipv4Addr::new(10, 77, 0, 9);
    let request = arp_frame(
        ArpOperation::Request,
        EthernetAddress::BROADCAST,
        (PEER_MAC, PEER_IP),
        (EthernetAddress::default(), other),
    );
    receive(&mut s, Frame::new(request));
    assert!(s.device().take_sent().is_empty());
    assert_eq!(s.send(5000, PEER, Payload::Bytes(b"x"), 1), Ok(SendStatus::Queued), "still unknown");
    assert_eq!(
        *s.counters(),
        counted(|c| {
            c.rx_frames = 1;
            c.drop_arp_not_for_us = 1;
            c.tx_datagrams = 1;
            c.arp_requests_sent += 1;
            c.tx_frames += 1;
        })
    );
}

#[test]
fn waiting_datagrams_per_address_are_bounded() {
    let mut s = stack();
    for tag in 0..MAX_WAITING_PER_ADDR as u64 {
        assert_eq!(s.send(5000, PEER, Payload::Bytes(b"w"), tag), Ok(SendStatus::Queued));
    }
    assert_eq!(s.send(5000, PEER, Payload::Bytes(b"w"), 999), Err(SendError::NoBuffers));
    let events = receive(&mut s, peer_arp_reply());
    assert_eq!(sent_events(&events).len(), MAX_WAITING_PER_ADDR);
    assert!(sent_events(&events).iter().all(|&(tag, errno)| tag != 999 && errno.is_none()));
}
