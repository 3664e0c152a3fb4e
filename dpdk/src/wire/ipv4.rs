//! IPv4 headers (RFC 791). Options are skipped on ingress and never emitted.

use super::{checksum, enum_with_unknown, read_ipv4, read_u16, write_u16, Error, Result};
use std::net::Ipv4Addr;

enum_with_unknown! {
    /// The IP protocol field.
    pub enum Protocol(u8) {
        /// ICMP.
        Icmp = 1,
        /// TCP (not handled, named for counters).
        Tcp = 6,
        /// UDP.
        Udp = 17,
    }
}

mod field {
    use std::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: usize = 12;
    pub const DST_ADDR: usize = 16;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;

/// "Don't fragment" flag in the flags/offset field.
const FLAG_DF: u16 = 0x4000;
/// "More fragments" flag.
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checks (egress only).
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after checking version and lengths.
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the header fits, that it is version 4 with a sane header
    /// length, and that the total length covers the header and fits in the
    /// buffer (the buffer may be longer: Ethernet pads short frames).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || self.version() != 4 {
            return Err(Error);
        }
        let hl = self.header_len();
        let total = usize::from(self.total_len());
        if hl < HEADER_LEN || hl > total || total > len {
            return Err(Error);
        }
        Ok(())
    }

    /// The version field (4 for every packet this stack accepts).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL * 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// Header plus payload, in bytes.
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The identification field (used to reassemble fragments).
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    /// True if the sender forbade fragmentation.
    pub fn dont_frag(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DF != 0
    }

    /// True if this is a fragment (more to come, or not the first).
    pub fn is_fragment(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & (FLAG_MF | OFFSET_MASK) != 0
    }

    /// Hops left; a packet arriving with 0 is dropped.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// What the payload is (UDP, ICMP or another protocol).
    pub fn protocol(&self) -> Protocol {
        Protocol::from(self.buffer.as_ref()[field::PROTOCOL])
    }

    /// The header checksum field as it is on the wire.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// The sender's address.
    pub fn src_addr(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::SRC_ADDR)
    }

    /// The receiver's address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::DST_ADDR)
    }

    /// True if the header checksum is right.
    pub fn verify_checksum(&self) -> bool {
        checksum::of(&self.buffer.as_ref()[..self.header_len()]) == 0
    }

    /// The bytes after the header, up to the total length (padding cut off).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Computes and stores the header checksum.
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len();
        let b = self.buffer.as_mut();
        b[field::CHECKSUM].fill(0);
        let c = checksum::of(&b[..hl]);
        write_u16(b, field::CHECKSUM.start, c);
    }

    /// The payload, for writing.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (hl, total) = (self.header_len(), usize::from(self.total_len()));
        &mut self.buffer.as_mut()[hl..total]
    }
}

/// How to treat the header checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// Verify on parse, compute on emit (software).
    Software,
    /// The port did it (or will): skip on parse, leave zero on emit.
    Offloaded,
}

/// The parts of an IPv4 header this stack uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    /// The sender's address.
    pub src_addr: Ipv4Addr,
    /// The receiver's address.
    pub dst_addr: Ipv4Addr,
    /// What the payload is.
    pub protocol: Protocol,
    /// Length of the payload (after the header) in bytes.
    pub payload_len: usize,
    /// Hops the packet may make.
    pub ttl: u8,
}

impl Repr {
    /// Parses a checked packet. A bad checksum is malformed; fragments are
    /// not (the stack counts them separately via [`Packet::is_fragment`]).
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>, cksum: Checksum) -> Result<Repr> {
        p.check_len()?;
        if cksum == Checksum::Software && !p.verify_checksum() {
            return Err(Error);
        }
        Ok(Repr {
            src_addr: p.src_addr(),
            dst_addr: p.dst_addr(),
            protocol: p.protocol(),
            payload_len: usize::from(p.total_len()) - p.header_len(),
            ttl: p.ttl(),
        })
    }

    /// Bytes the header takes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header with DF set and identification `ident`. The
    /// buffer must hold at least the header; the payload follows it.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>, ident: u16, cksum: Checksum) {
        let b = p.buffer.as_mut();
        b[field::VER_IHL] = 0x45;
        b[field::DSCP_ECN] = 0;
        write_u16(b, field::LENGTH, (HEADER_LEN + self.payload_len) as u16);
        write_u16(b, field::IDENT, ident);
        write_u16(b, field::FLG_OFF, FLAG_DF);
        b[field::TTL] = self.ttl;
        b[field::PROTOCOL] = self.protocol.into();
        b[field::SRC_ADDR..field::SRC_ADDR + 4].copy_from_slice(&self.src_addr.octets());
        b[field::DST_ADDR..field::DST_ADDR + 4].copy_from_slice(&self.dst_addr.octets());
        b[field::CHECKSUM].fill(0);
        if cksum == Checksum::Software {
            p.fill_checksum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 10.77.0.1 -> 10.77.0.2, UDP, 4 payload bytes, TTL 64, DF, ident 0x1234.
    static PACKET_BYTES: [u8; 24] = [
        0x45, 0x00, 0x00, 0x18, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x14, 0x05, 10, 77, 0, 1, 10, 77, 0, 2, 0xaa, 0xbb,
        0xcc, 0xdd,
    ];

    fn repr() -> Repr {
        Repr {
            src_addr: Ipv4Addr::new(10, 77, 0, 1),
            dst_addr: Ipv4Addr::new(10, 77, 0, 2),
            protocol: Protocol::Udp,
            payload_len: 4,
            ttl: 64,
        }
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 24);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag() && !p.is_fragment());
        assert!(p.verify_checksum());
        assert_eq!(p.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(Repr::parse(&p, Checksum::Software).unwrap(), repr());
    }

    #[test]
    fn construct() {
        let mut b = [0u8; 24];
        let mut p = Packet::new_unchecked(&mut b[..]);
        repr().emit(&mut p, 0x1234, Checksum::Software);
        p.payload_mut().copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(b, PACKET_BYTES);
    }

    #[test]
    fn offloaded_checksum_is_left_zero_and_not_checked() {
        let mut b = [0u8; 24];
        repr().emit(&mut Packet::new_unchecked(&mut b[..]), 0x1234, Checksum::Offloaded);
        assert_eq!(&b[10..12], &[0, 0]);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(Repr::parse(&p, Checksum::Software).is_err());
        assert!(Repr::parse(&p, Checksum::Offloaded).is_ok());
    }

    #[test]
    fn padding_is_cut_off() {
        let mut b = PACKET_BYTES.to_vec();
        b.extend_from_slice(&[0; 22]);
        assert_eq!(Packet::new_checked(&b[..]).unwrap().payload().len(), 4);
    }

    #[test]
    fn malformed_headers_are_rejected() {
        type Mangle = fn(&mut Vec<u8>);
        let cases: [(&str, Mangle); 7] = [
            ("truncated header", |b| b.truncate(19)),
            ("version 6", |b| b[0] = 0x65),
            ("ihl below 5", |b| b[0] = 0x44),
            ("ihl beyond total length", |b| b[0] = 0x47),
            ("total length beyond buffer", |b| b[3] = 0x19),
            ("total length below header", |b| b[3] = 0x10),
            ("truncated payload", |b| b.truncate(23)),
        ];
        for (what, f) in cases {
            let mut b = PACKET_BYTES.to_vec();
            f(&mut b);
            assert!(Packet::new_checked(&b[..]).is_err(), "{what}");
        }
    }

    #[test]
    fn bad_checksum_is_rejected() {
        let mut b = PACKET_BYTES;
        b[11] ^= 1;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(!p.verify_checksum());
        assert!(Repr::parse(&p, Checksum::Software).is_err());
    }

    #[test]
    fn fragments_and_unknown_protocols_parse() {
        let mut b = PACKET_BYTES;
        b[6] = 0x20; // more fragments
        b[9] = 132; // SCTP
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.fill_checksum();
        assert!(p.is_fragment());
        assert_eq!(Repr::parse(&p, Checksum::Software).unwrap().protocol, Protocol::Unknown(132));
    }
}
