//! Malformed and unwanted frames: each is dropped, answered with nothing,
//! delivered to nobody, and counted under exactly one reason.

use super::*;

const PORT: u16 = 7777;
/// Where the IPv4 and UDP headers start in a frame.
const L3: usize = ETHERNET_HEADER_LEN;
const L4: usize = L3 + IPV4_HEADER_LEN;

/// A well-formed datagram from the peer to our bound PORT.
fn good() -> Vec<u8> {
    udp_frame(4000, PORT, b"malformed?")
}

/// `good()` changed by `f`.
fn mangled(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = good();
    f(&mut v);
    v
}

/// Rewrites the IPv4 header checksum after a change.
fn fix_ip(f: &mut [u8]) {
    Ipv4Packet::new_unchecked(&mut f[L3..L4]).fill_checksum();
}

/// A stack with PORT bound.
fn bound_stack() -> TestStack {
    let mut s = stack();
    s.bind(PORT, 1).unwrap();
    s
}

/// Feeds `frame` to a fresh stack: nothing is delivered or sent, and the
/// counters are the start-up ones plus one received frame plus `reason`.
fn dropped(what: &str, frame: Frame, reason: fn(&mut Counters)) {
    let mut s = bound_stack();
    let events = receive(&mut s, frame);
    assert!(events.is_empty(), "{what}: {events:?}");
    assert!(s.device().take_sent().is_empty(), "{what}: nothing is sent");
    let want = counted(|c| {
        c.rx_frames = 1;
        reason(c);
    });
    assert_eq!(*s.counters(), want, "{what}");
}

#[test]
fn the_well_formed_datagram_the_others_are_made_from_is_delivered() {
    let mut s = bound_stack();
    let from = SocketAddrV4::new(PEER_IP, 4000);
    assert_eq!(datagrams(receive(&mut s, Frame::new(good()))), [(1, PORT, from, b"malformed?".to_vec())]);
    assert_eq!(
        *s.counters(),
        counted(|c| {
            c.rx_frames = 1;
            c.rx_datagrams = 1;
        })
    );
}

#[test]
fn ethernet_and_arp_drops() {
    dropped("truncated Ethernet header", Frame::new(&good()[..ETHERNET_HEADER_LEN - 1]), |c| c.drop_eth_truncated = 1);
    dropped("chained frame", Frame::new(good()).chained(), |c| c.drop_multi_segment = 1);
    let other_station = mangled(|v| v[..6].copy_from_slice(&[2, 0xaa, 0, 0, 0, 1]));
    dropped("another station's MAC", Frame::new(other_station), |c| c.drop_eth_not_for_us = 1);
    let multicast = mangled(|v| v[..6].copy_from_slice(&[0x01, 0x00, 0x5e, 0, 0, 1]));
    dropped("a multicast MAC", Frame::new(multicast), |c| c.drop_eth_not_for_us = 1);
    let ipv6 = mangled(|v| v[12..14].copy_from_slice(&[0x86, 0xdd]));
    dropped("IPv6", Frame::new(ipv6), |c| c.drop_eth_unknown_type = 1);
    let short_arp = mangled(|v| {
        v[12..14].copy_from_slice(&[0x08, 0x06]);
        v.truncate(L3 + 10);
    });
    dropped("truncated ARP", Frame::new(short_arp), |c| c.drop_arp_malformed = 1);
    let mut arp = arp_frame(ArpOperation::Request, OUR_MAC, (PEER_MAC, PEER_IP), (EthernetAddress::default(), OUR_IP));
    arp[L3 + 1] = 6; // hardware type 6 (IEEE 802), not Ethernet
    dropped("ARP for another hardware type", Frame::new(arp), |c| c.drop_arp_malformed = 1);
}

#[test]
fn ipv4_drops() {
    dropped("truncated IPv4 header", Frame::new(&good()[..L3 + 12]), |c| c.drop_ipv4_malformed = 1);
    let long = mangled(|v| {
        v[L3 + 3] = v[L3 + 3].wrapping_add(40); // total length beyond the frame
        fix_ip(v);
    });
    dropped("IPv4 length beyond the frame", Frame::new(long), |c| c.drop_ipv4_malformed = 1);
    let v6 = mangled(|v| {
        v[L3] = 0x65;
        fix_ip(v);
    });
    dropped("IP version 6 in an IPv4 frame", Frame::new(v6), |c| c.drop_ipv4_malformed = 1);
    let bad_sum = mangled(|v| v[L3 + 10] ^= 0xff);
    dropped("bad IPv4 checksum", Frame::new(bad_sum), |c| c.drop_ipv4_bad_checksum = 1);
    let hw_bad = Frame::new(good()).with_ipv4_checksum_verdict(false);
    dropped("bad IPv4 checksum by the card's verdict", hw_bad, |c| c.drop_ipv4_bad_checksum = 1);
    let not_us = mangled(|v| {
        v[L3 + 19] = 99;
        fix_ip(v);
    });
    dropped("another IPv4 address", Frame::new(not_us), |c| c.drop_ipv4_not_for_us = 1);
    let first_fragment = mangled(|v| {
        v[L3 + 6] = 0x20; // more fragments
        fix_ip(v);
    });
    dropped("a first fragment", Frame::new(first_fragment), |c| c.drop_ipv4_fragment = 1);
    let later_fragment = mangled(|v| {
        v[L3 + 6..L3 + 8].copy_from_slice(&[0x00, 0x10]); // offset 128, last fragment
        fix_ip(v);
    });
    dropped("a later fragment", Frame::new(later_fragment), |c| c.drop_ipv4_fragment = 1);
    let ttl0 = mangled(|v| {
        v[L3 + 8] = 0;
        fix_ip(v);
    });
    dropped("TTL 0", Frame::new(ttl0), |c| c.drop_ipv4_ttl_zero = 1);
    let tcp = mangled(|v| {
        v[L3 + 9] = 6;
        fix_ip(v);
    });
    dropped("TCP", Frame::new(tcp), |c| c.drop_ipv4_unknown_protocol = 1);
}

#[test]
fn the_cards_checksum_verdict_is_trusted_when_given() {
    let mut s = bound_stack();
    let bad_sum = mangled(|v| v[L3 + 10] ^= 0xff);
    let events = receive(&mut s, Frame::new(bad_sum).with_ipv4_checksum_verdict(true));
    assert_eq!(datagrams(events).len(), 1, "the card checked the header, so the stack does not");
}

#[test]
fn icmp_and_udp_drops() {
    let bad_icmp = mangled(|v| {
        v[L3 + 9] = 1; // the UDP bytes as ICMP: wrong checksum
        fix_ip(v);
    });
    dropped("ICMP with a bad checksum", Frame::new(bad_icmp), |c| c.drop_icmp_malformed = 1);
    let short_icmp = ipv4_frame(OUR_IP, IpProtocol::Icmp, &[8, 0, 0]);
    dropped("truncated ICMP", Frame::new(short_icmp), |c| c.drop_icmp_malformed = 1);
    let bad_udp_sum = mangled(|v| v[L4 + 6] ^= 0x55);
    dropped("bad UDP checksum", Frame::new(bad_udp_sum), |c| c.drop_udp_bad_checksum = 1);
    let long_udp = mangled(|v| v[L4 + 5] = 200);
    dropped("UDP length beyond the packet", Frame::new(long_udp), |c| c.drop_udp_malformed = 1);
    let short_udp = ipv4_frame(OUR_IP, IpProtocol::Udp, &[0x0f, 0xa0, 0x1e]);
    dropped("truncated UDP header", Frame::new(short_udp), |c| c.drop_udp_malformed = 1);
    let mut port0 = vec![0; UDP_HEADER_LEN + 1];
    let (hdr, body) = port0.split_at_mut(UDP_HEADER_LEN);
    UdpRepr { src_port: 4000, dst_port: 0 }.emit(hdr, PEER_IP, OUR_IP, body);
    dropped("UDP to port 0", Frame::new(ipv4_frame(OUR_IP, IpProtocol::Udp, &port0)), |c| c.drop_udp_malformed = 1);
}

/// Sums every drop reason of the receive path.
fn rx_drops(c: &Counters) -> u64 {
    [
        c.drop_multi_segment,
        c.drop_eth_truncated,
        c.drop_eth_not_for_us,
        c.drop_eth_unknown_type,
        c.drop_arp_malformed,
        c.drop_arp_not_for_us,
        c.drop_ipv4_malformed,
        c.drop_ipv4_bad_checksum,
        c.drop_ipv4_not_for_us,
        c.drop_ipv4_fragment,
        c.drop_ipv4_ttl_zero,
        c.drop_ipv4_unknown_protocol,
        c.drop_icmp_malformed,
        c.drop_icmp_ignored,
        c.drop_udp_malformed,
        c.drop_udp_bad_checksum,
        c.drop_udp_no_socket,
    ]
    .iter()
    .sum()
}

/// Random frames (a fixed-seed xorshift, so a failure replays), broadcast
/// and with an IPv4 or ARP EtherType most of the time so the deeper parsers
/// see garbage too: none panics, none is delivered, each is counted once.
#[test]
fn random_frames_are_each_dropped_under_one_reason() {
    let mut s = bound_stack();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const N: u64 = 5000;
    for _ in 0..N {
        let len = (next() % 120) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if len >= ETHERNET_HEADER_LEN {
            f[..6].copy_from_slice(&[0xff; 6]);
            match next() % 4 {
                0 => f[12..14].copy_from_slice(&[0x08, 0x06]),
                1 => f[12..14].copy_from_slice(&[0x08, 0x00]),
                2 if len >= L4 => {
                    // A plausible IPv4 header to us with a random rest.
                    f[12..14].copy_from_slice(&[0x08, 0x00]);
                    f[L3] = 0x45;
                    f[L3 + 2..L3 + 4].copy_from_slice(&((len - L3) as u16).to_be_bytes());
                    f[L3 + 6] &= 0x40;
                    f[L3 + 7] = 0;
                    f[L3 + 16..L4].copy_from_slice(&OUR_IP.octets());
                    fix_ip(&mut f);
                }
                _ => {}
            }
        }
        let events = receive(&mut s, Frame::new(f));
        assert!(datagrams(events).is_empty());
    }
    let c = s.counters();
    assert_eq!(c.rx_frames, N);
    assert_eq!(rx_drops(c), N, "{c:?}");
    assert!(c.drop_ipv4_unknown_protocol > 0 && c.drop_arp_malformed > 0 && c.drop_eth_truncated > 0, "{c:?}");
}
