//! ICMP: any bytes either fail to parse or give a Repr; the message
//! checksum agrees with a plain RFC 1071 sum; emitting a parsed Repr gives
//! a message whose checksum verifies and which parses to the same Repr; an
//! echo request or reply (every byte a field) comes back byte for byte.
#![no_main]

use catnip::wire::{IcmpMessage, IcmpPacket, IcmpRepr, ICMP_HEADER_LEN};
use demi_fuzz::reference_checksum;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let packet = match IcmpPacket::new_checked(data) {
        Ok(p) => p,
        Err(_) => {
            assert!(data.len() < ICMP_HEADER_LEN, "a full header was refused");
            return;
        }
    };
    let _ = (packet.msg_type(), packet.msg_code(), packet.checksum(), packet.echo_ident(), packet.echo_seq_no());
    assert_eq!(packet.data(), &data[ICMP_HEADER_LEN..]);
    let verifies = reference_checksum(&[data]) == 0;
    assert_eq!(packet.verify_checksum(), verifies);

    let repr = match IcmpRepr::parse(&packet) {
        Ok(r) => r,
        Err(_) => {
            assert!(!verifies, "a message with a good checksum was refused");
            return;
        }
    };
    assert!(verifies, "a message with a bad checksum was accepted");
    match repr {
        IcmpRepr::EchoRequest { data: d, .. } | IcmpRepr::EchoReply { data: d, .. } => {
            assert_eq!(d, &data[ICMP_HEADER_LEN..])
        }
        IcmpRepr::DstUnreachable { code, data: d } => {
            assert_eq!((data[0], code), (3, data[1]));
            assert_eq!(d, &data[ICMP_HEADER_LEN..]);
        }
        IcmpRepr::Other { msg_type, code } => {
            assert_eq!((u8::from(msg_type), code), (data[0], data[1]));
            assert_eq!(IcmpMessage::from(data[0]), msg_type);
        }
    }

    let mut out = vec![0u8; repr.buffer_len()];
    repr.emit(&mut IcmpPacket::new_unchecked(&mut out[..]));
    assert_eq!(reference_checksum(&[&out]), 0, "emitted checksum does not verify");
    let again = IcmpPacket::new_checked(&out[..]).expect("emitted message fits");
    assert_eq!(IcmpRepr::parse(&again), Ok(repr), "parse(emit(repr)) differs");
    if matches!(repr, IcmpRepr::EchoRequest { .. } | IcmpRepr::EchoReply { .. }) {
        // Bytes 2-3 are the checksum: zero and 0xffff are both a valid
        // encoding of the same sum, so only the rest must match.
        assert_eq!(out[..2], data[..2]);
        assert_eq!(out[4..], data[4..]);
    }
});
