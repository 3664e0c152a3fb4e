//! Ethernet II: any bytes either fail the length check or parse; a parsed
//! header emits back to the very bytes it came from (every header byte is
//! a field of the Repr), and the emitted frame parses to the same Repr.
#![no_main]

use catnip::wire::{EtherType, EthernetFrame, EthernetRepr, ETHERNET_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let frame = match EthernetFrame::new_checked(data) {
        Ok(f) => f,
        Err(_) => {
            assert!(data.len() < ETHERNET_HEADER_LEN, "a full header was refused");
            return;
        }
    };
    let repr = EthernetRepr::parse(&frame).expect("a checked frame parses");
    // The address predicates and the EtherType's round trip through u16.
    let _ = (repr.dst_addr.is_broadcast(), repr.dst_addr.is_multicast(), repr.src_addr.is_unicast());
    assert_eq!(EtherType::from(u16::from(repr.ethertype)), repr.ethertype);
    let payload = frame.payload();
    assert_eq!(payload.len(), data.len() - ETHERNET_HEADER_LEN);

    let mut out = vec![0u8; repr.buffer_len() + payload.len()];
    let mut f = EthernetFrame::new_unchecked(&mut out[..]);
    repr.emit(&mut f);
    f.payload_mut().copy_from_slice(payload);
    assert_eq!(out, data, "emit(parse(frame)) differs from the frame");
    let again = EthernetRepr::parse(&EthernetFrame::new_checked(&out[..]).expect("emitted frame fits")).unwrap();
    assert_eq!(again, repr);

    // The textual form of an address parses back to it.
    let text = repr.src_addr.to_string();
    assert_eq!(text.parse::<catnip::wire::EthernetAddress>(), Ok(repr.src_addr));
});
