//! ARP: any bytes either fail to parse or give a Repr that emits back to
//! the packet's 28 bytes (Ethernet/IPv4 ARP has no field outside the Repr
//! once its fixed header is checked), and the emitted packet parses to the
//! same Repr.
#![no_main]

use catnip::wire::{ArpPacket, ArpRepr, ARP_PACKET_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let packet = match ArpPacket::new_checked(data) {
        Ok(p) => p,
        Err(_) => {
            assert!(data.len() < ARP_PACKET_LEN, "a long enough packet was refused");
            return;
        }
    };
    // Every accessor is safe on a checked packet, whatever it holds.
    let _ = (packet.hardware_type(), packet.protocol_type(), packet.hardware_len(), packet.protocol_len());
    let Ok(repr) = ArpRepr::parse(&packet) else {
        // Only a fixed-header field the stack does not speak is refused.
        assert!(data[..6] != [0, 1, 8, 0, 6, 4], "Ethernet/IPv4 ARP refused");
        return;
    };
    let mut out = vec![0u8; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
    assert_eq!(out, data[..ARP_PACKET_LEN], "emit(parse(packet)) differs from the packet");
    let again = ArpRepr::parse(&ArpPacket::new_checked(&out[..]).expect("emitted packet fits")).unwrap();
    assert_eq!(again, repr);
});
