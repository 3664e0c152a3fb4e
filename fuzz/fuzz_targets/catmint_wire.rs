//! catmint's wire: the first 4 bytes (big-endian) are a received immediate
//! value, the whole input the start of CM private data and of a UD
//! datagram. Each decoder refuses or decodes without panicking; whatever
//! decodes encodes back to the same bits (so no two values decode alike),
//! and a value built from the input's bytes survives encode then decode.
#![no_main]

use catmint::wire::{flag, Hello, Imm, UdHeader, HELLO_LEN, MAX_MESSAGE, MIN_BUF_SIZE, UD_HDR_LEN};
use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, SocketAddrV4};

const ALL_FLAGS: u8 = flag::LAST | flag::CREDIT | flag::ACK | flag::FIN;

fuzz_target!(|data: &[u8]| {
    if let Some(b) = data.get(..4) {
        let v = u32::from_be_bytes(b.try_into().expect("4 bytes"));
        match Imm::decode(v) {
            Some(imm) => {
                assert_eq!(imm.encode(), v, "{imm:?} does not encode to {v:#010x}");
                match imm {
                    Imm::First { total, .. } => assert!(total > 0 && total as usize <= MAX_MESSAGE),
                    Imm::Ctl { flags, .. } => assert_eq!(flags & !ALL_FLAGS, 0),
                }
            }
            // What decode refuses: an empty first segment, or a control
            // value with the wrong pattern or an unknown flag.
            None => assert!(
                v == 1 << 31 || v == 3 << 30 || (v >> 31 == 0 && (v >> 24 != 0x47 || v as u8 & !ALL_FLAGS != 0))
            ),
        }
        // Values we would send: any length 1..=MAX_MESSAGE, any credits,
        // any combination of known flags.
        let first = Imm::First { total: v % MAX_MESSAGE as u32 + 1, ack: v & 1 != 0 };
        let ctl = Imm::Ctl { credits: (v >> 8) as u16, flags: v as u8 & ALL_FLAGS };
        for imm in [first, ctl] {
            assert_eq!(Imm::decode(imm.encode()), Some(imm));
        }
    }

    match Hello::parse(data) {
        Some(h) => {
            assert!(h.credits > 0 && h.buf_size >= MIN_BUF_SIZE);
            assert_eq!(h.emit(), data[..HELLO_LEN], "{h:?} does not emit the bytes it came from");
        }
        None => {
            if let Some(b) = data.get(..HELLO_LEN) {
                let (credits, buf) = (u16::from_le_bytes([b[2], b[3]]), u32::from_le_bytes([b[4], b[5], b[6], b[7]]));
                assert!(b[..2] != [0xc7, 2] || credits == 0 || buf < MIN_BUF_SIZE, "sound hello refused");
            }
        }
    }
    if data.len() >= 6 {
        let credits = u16::from_le_bytes([data[0], data[1]]);
        let buf_size = u32::from_le_bytes([data[2], data[3], data[4], data[5]]);
        let h = Hello { credits, buf_size };
        let ok = credits > 0 && buf_size >= MIN_BUF_SIZE;
        assert_eq!(Hello::parse(&h.emit()), ok.then_some(h));
    }

    match UdHeader::parse(data) {
        Some(h) => assert_eq!(h.emit(), data[..UD_HDR_LEN], "{h:?} does not emit the bytes it came from"),
        None => assert!(data.len() < UD_HDR_LEN || data[..2] != [0xc8, 1], "sound UD header refused"),
    }
    if let Some(b) = data.get(..6) {
        let from = SocketAddrV4::new(Ipv4Addr::new(b[0], b[1], b[2], b[3]), u16::from_be_bytes([b[4], b[5]]));
        let h = UdHeader { from };
        assert_eq!(UdHeader::parse(&h.emit()), Some(h));
    }
});
