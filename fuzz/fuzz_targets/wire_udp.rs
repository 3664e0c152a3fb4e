//! UDP: the first 8 bytes are the IPv4 source and destination the checksum
//! covers, the rest a datagram. Any datagram either fails to parse or gives
//! a Repr; the checksum agrees with a plain RFC 1071 sum over the
//! pseudo-header; emitting the Repr with the same payload gives a header
//! with a checksum that verifies (never "none"), the same ports and length,
//! and a datagram that parses to the same Repr.
#![no_main]

use catnip::wire::{udp, UdpPacket, UdpRepr, UDP_HEADER_LEN};
use demi_fuzz::{reference_checksum, take, udp_pseudo_header};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let Some(addrs) = take(&mut data, 8) else { return };
    let src = Ipv4Addr::new(addrs[0], addrs[1], addrs[2], addrs[3]);
    let dst = Ipv4Addr::new(addrs[4], addrs[5], addrs[6], addrs[7]);

    let packet = match UdpPacket::new_checked(data) {
        Ok(p) => p,
        Err(_) => {
            if data.len() >= UDP_HEADER_LEN {
                let len = usize::from(u16::from_be_bytes([data[4], data[5]]));
                assert!(len < UDP_HEADER_LEN || len > data.len(), "consistent length {len} refused");
            }
            return;
        }
    };
    let len = usize::from(packet.len());
    assert_eq!(packet.payload(), &data[UDP_HEADER_LEN..len]);
    assert_eq!(packet.is_empty(), len == UDP_HEADER_LEN);
    let pseudo = udp_pseudo_header(src, dst, packet.len());
    let verifies = packet.checksum() == 0 || reference_checksum(&[&pseudo, &data[..len]]) == 0;
    assert_eq!(packet.verify_checksum(src, dst), verifies);

    let repr = match UdpRepr::parse(&packet, src, dst) {
        Ok(r) => r,
        Err(_) => {
            assert!(packet.dst_port() == 0 || !verifies, "a sound datagram was refused");
            return;
        }
    };
    assert!(verifies && repr.dst_port != 0);
    assert_eq!((repr.src_port, repr.dst_port), (packet.src_port(), packet.dst_port()));

    let payload = packet.payload();
    let mut out = vec![0u8; repr.buffer_len() + payload.len()];
    let (header, body) = out.split_at_mut(UDP_HEADER_LEN);
    body.copy_from_slice(payload);
    repr.emit(header, src, dst, body);
    assert_eq!(out[..6], data[..6], "ports or length changed");
    let again = UdpPacket::new_checked(&out[..]).expect("emitted datagram passes the length checks");
    let emitted = again.checksum();
    assert_ne!(emitted, 0, "emit wrote \"no checksum\"");
    assert_eq!(reference_checksum(&[&pseudo, &out]), 0, "emitted checksum does not verify");
    assert_eq!(UdpRepr::parse(&again, src, dst), Ok(repr), "parse(emit(repr)) differs");
    assert_eq!(again.payload(), payload);

    // The zero-copy form (header and payload apart) agrees with the emit.
    let (header, body) = out.split_at_mut(UDP_HEADER_LEN);
    header[6..8].fill(0);
    assert_eq!(udp::checksum_of(src, dst, header, body), emitted);
});
