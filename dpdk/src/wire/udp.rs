//! UDP (RFC 768) with the IPv4 pseudo-header checksum.

use super::{checksum, read_u16, write_u16, Error, Result};
use std::net::Ipv4Addr;

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

/// IP protocol number of UDP, for the pseudo-header.
const PROTO_UDP: u8 = 17;

/// A view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checks (egress only).
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after checking the lengths.
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// The header must fit, and the length field must cover the header and
    /// fit in the buffer.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error);
        }
        let field_len = usize::from(self.len());
        if field_len < HEADER_LEN || field_len > len {
            return Err(Error);
        }
        Ok(())
    }

    /// The sender's port.
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// The receiver's port.
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field (header plus payload).
    pub fn len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// True if the length field says there is no payload.
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) == HEADER_LEN
    }

    /// The checksum field as it is on the wire (0: none, allowed over IPv4).
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// True if the checksum is right, or absent (zero: allowed over IPv4).
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let len = self.len();
        let acc = checksum::pseudo_header(src, dst, PROTO_UDP, len);
        checksum::finish(checksum::sum(acc, &self.buffer.as_ref()[..usize::from(len)])) == 0
    }

    /// The payload, as long as the length field says.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }
}

/// The checksum of a datagram whose header (checksum field zero) and
/// payload are given apart, as zero-copy sends have them.
pub fn checksum_of(src: Ipv4Addr, dst: Ipv4Addr, header: &[u8], payload: &[u8]) -> u16 {
    let len = (header.len() + payload.len()) as u16;
    let acc = checksum::pseudo_header(src, dst, PROTO_UDP, len);
    // The header is 8 bytes (even), so the payload's words stay aligned.
    let c = checksum::finish(checksum::sum(checksum::sum(acc, header), payload));
    // A computed zero is sent as all ones (zero means "no checksum").
    if c == 0 {
        0xffff
    } else {
        c
    }
}

/// A parsed UDP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    /// The sender's port.
    pub src_port: u16,
    /// The receiver's port.
    pub dst_port: u16,
}

impl Repr {
    /// Parses a checked datagram, verifying the checksum against the
    /// addresses; destination port 0 is malformed.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Repr> {
        p.check_len()?;
        if p.dst_port() == 0 || !p.verify_checksum(src, dst) {
            return Err(Error);
        }
        Ok(Repr { src_port: p.src_port(), dst_port: p.dst_port() })
    }

    /// Bytes the header takes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the 8-byte header for a payload of `payload` (which the
    /// caller places after it), checksum included.
    pub fn emit(&self, header: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) {
        write_u16(header, field::SRC_PORT, self.src_port);
        write_u16(header, field::DST_PORT, self.dst_port);
        write_u16(header, field::LENGTH, (HEADER_LEN + payload.len()) as u16);
        write_u16(header, field::CHECKSUM, 0);
        let c = checksum_of(src, dst, &header[..HEADER_LEN], payload);
        write_u16(header, field::CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

    // 40000 -> 7, payload "ping", checksum over the 10.77.0.1 -> .2 pseudo-header.
    static DATAGRAM_BYTES: [u8; 12] = [0x9c, 0x40, 0x00, 0x07, 0x00, 0x0c, 0x70, 0x21, b'p', b'i', b'n', b'g'];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&DATAGRAM_BYTES[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.len()), (40000, 7, 12));
        assert!(p.verify_checksum(SRC, DST));
        assert_eq!(p.payload(), b"ping");
        assert_eq!(Repr::parse(&p, SRC, DST).unwrap(), Repr { src_port: 40000, dst_port: 7 });
    }

    #[test]
    fn construct() {
        let mut b = [0u8; 12];
        b[8..].copy_from_slice(b"ping");
        let (h, payload) = b.split_at_mut(8);
        Repr { src_port: 40000, dst_port: 7 }.emit(h, SRC, DST, payload);
        assert_eq!(b, DATAGRAM_BYTES);
    }

    #[test]
    fn wrong_addresses_fail_the_checksum() {
        let p = Packet::new_checked(&DATAGRAM_BYTES[..]).unwrap();
        assert!(Repr::parse(&p, SRC, Ipv4Addr::new(10, 77, 0, 3)).is_err());
    }

    #[test]
    fn zero_checksum_means_none() {
        let mut b = DATAGRAM_BYTES;
        b[6..8].fill(0);
        assert!(Repr::parse(&Packet::new_checked(&b[..]).unwrap(), SRC, Ipv4Addr::new(1, 2, 3, 4)).is_ok());
    }

    #[test]
    fn malformed_lengths_and_ports() {
        assert!(Packet::new_checked(&DATAGRAM_BYTES[..7]).is_err(), "truncated header");
        let mut b = DATAGRAM_BYTES;
        b[5] = 13;
        assert!(Packet::new_checked(&b[..]).is_err(), "length beyond buffer");
        b[5] = 7;
        assert!(Packet::new_checked(&b[..]).is_err(), "length below header");
        let mut b = DATAGRAM_BYTES;
        b[2..4].fill(0);
        assert!(Repr::parse(&Packet::new_checked(&b[..]).unwrap(), SRC, DST).is_err(), "port 0");
        let mut b = DATAGRAM_BYTES;
        b[9] ^= 0x20;
        assert!(Repr::parse(&Packet::new_checked(&b[..]).unwrap(), SRC, DST).is_err(), "bad checksum");
    }

    #[test]
    fn shorter_length_field_trims_payload() {
        let mut b = DATAGRAM_BYTES;
        b[5] = 10;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.payload(), b"pi");
    }
}
