//! IPv4: any bytes either fail the checks or parse with every accessor in
//! bounds; the header checksum agrees with a plain RFC 1071 sum; a parsed
//! header emits (with the same identification) into a packet that parses
//! to the same Repr with a checksum that verifies, and a header our emit
//! could have written (no options, DF only, DSCP/ECN zero) comes back byte
//! for byte.
#![no_main]

use catnip::wire::ipv4::Checksum;
use catnip::wire::{IpProtocol, Ipv4Packet, Ipv4Repr, IPV4_HEADER_LEN};
use demi_fuzz::reference_checksum;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let packet = match Ipv4Packet::new_checked(data) {
        Ok(p) => p,
        Err(_) => {
            // Refused: it must break one of RFC 791's length rules.
            if data.len() >= IPV4_HEADER_LEN {
                let hl = usize::from(data[0] & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([data[2], data[3]]));
                assert!(data[0] >> 4 != 4 || hl < IPV4_HEADER_LEN || hl > total || total > data.len());
            }
            return;
        }
    };
    let hl = packet.header_len();
    let total = usize::from(packet.total_len());
    assert!(IPV4_HEADER_LEN <= hl && hl <= total && total <= data.len());
    let _ = (packet.ident(), packet.dont_frag(), packet.is_fragment(), packet.checksum());
    assert_eq!(packet.payload(), &data[hl..total]);
    assert_eq!(packet.verify_checksum(), reference_checksum(&[&data[..hl]]) == 0);

    // The checksum is the only thing that can fail a checked packet's parse.
    let repr = Ipv4Repr::parse(&packet, Checksum::Offloaded).expect("checked packet parses without checksum");
    assert_eq!(Ipv4Repr::parse(&packet, Checksum::Software).is_ok(), packet.verify_checksum());
    assert_eq!(repr.payload_len, total - hl);
    assert_eq!(IpProtocol::from(u8::from(repr.protocol)), repr.protocol);

    for mode in [Checksum::Software, Checksum::Offloaded] {
        let mut out = vec![0u8; repr.buffer_len() + repr.payload_len];
        let mut p = Ipv4Packet::new_unchecked(&mut out[..]);
        repr.emit(&mut p, packet.ident(), mode);
        p.payload_mut().copy_from_slice(packet.payload());
        let p = Ipv4Packet::new_checked(&out[..]).expect("emitted packet passes the length checks");
        assert_eq!(Ipv4Repr::parse(&p, mode), Ok(repr), "parse(emit(repr)) differs ({mode:?})");
        assert_eq!(p.payload(), packet.payload());
        assert_eq!((p.ident(), p.dont_frag(), p.is_fragment()), (packet.ident(), true, false));
        match mode {
            Checksum::Software => assert_eq!(reference_checksum(&[&out[..IPV4_HEADER_LEN]]), 0),
            Checksum::Offloaded => assert_eq!(p.checksum(), 0, "offloaded checksum left for the port"),
        }
        let plain = hl == IPV4_HEADER_LEN && data[1] == 0 && data[6..8] == [0x40, 0];
        if plain {
            // Bytes 10-11 are the checksum, compared on their own below.
            assert_eq!(out[..10], data[..10]);
            assert_eq!(out[12..], data[12..total]);
            if mode == Checksum::Software && packet.verify_checksum() {
                // Zero and 0xffff are the same number in ones' complement.
                let (a, b) = (p.checksum(), packet.checksum());
                assert!(a == b || (a, b) == (0, 0xffff) || (a, b) == (0xffff, 0), "{a:#06x} vs {b:#06x}");
            }
        }
    }
});
