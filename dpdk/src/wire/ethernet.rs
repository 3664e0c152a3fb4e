//! Ethernet II frames (no VLAN tags: a tagged frame has EtherType 0x8100,
//! which is unknown here and dropped).

use super::{enum_with_unknown, read_u16, write_u16, Error, Result};
use std::fmt;
use std::str::FromStr;

enum_with_unknown! {
    /// The EtherType field.
    pub enum EtherType(u16) {
        /// IPv4.
        Ipv4 = 0x0800,
        /// ARP.
        Arp = 0x0806,
        /// IPv6 (not handled, named so counters can tell it apart).
        Ipv6 = 0x86dd,
    }
}

/// A MAC address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Address(pub [u8; 6]);

impl Address {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: Address = Address([0xff; 6]);

    /// True for the broadcast address.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// True for group addresses (lowest bit of the first octet), broadcast included.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// True for an address a station may own: not a group address, not zero.
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast() && self.0 != [0; 6]
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl FromStr for Address {
    type Err = Error;

    /// Parses six colon- or dash-separated hex octets.
    fn from_str(s: &str) -> Result<Address> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for o in out.iter_mut() {
            let p = parts.next().ok_or(Error)?;
            if p.is_empty() || p.len() > 2 {
                return Err(Error);
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| Error)?;
        }
        if parts.next().is_some() {
            return Err(Error);
        }
        Ok(Address(out))
    }
}

mod field {
    use std::ops::{Range, RangeFrom};
    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: usize = 12;
    pub const PAYLOAD: RangeFrom<usize> = 14..;
}

/// Length of the Ethernet II header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// A view of an Ethernet II frame.
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checks (egress only; see the module docs).
    pub fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wraps a buffer after checking that the header fits.
    pub fn new_checked(buffer: T) -> Result<Frame<T>> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    /// Fails if the buffer is shorter than the header.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error)
        } else {
            Ok(())
        }
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The destination MAC address.
    pub fn dst_addr(&self) -> Address {
        Address(self.buffer.as_ref()[field::DESTINATION].try_into().expect("6 bytes"))
    }

    /// The source MAC address.
    pub fn src_addr(&self) -> Address {
        Address(self.buffer.as_ref()[field::SOURCE].try_into().expect("6 bytes"))
    }

    /// What the payload is (IPv4, ARP, or another type this stack drops).
    pub fn ethertype(&self) -> EtherType {
        EtherType::from(read_u16(self.buffer.as_ref(), field::ETHERTYPE))
    }

    /// Everything after the header (padding included: upper layers trim).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Writes the destination MAC address.
    pub fn set_dst_addr(&mut self, a: Address) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&a.0);
    }

    /// Writes the source MAC address.
    pub fn set_src_addr(&mut self, a: Address) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&a.0);
    }

    /// Writes the EtherType.
    pub fn set_ethertype(&mut self, t: EtherType) {
        write_u16(self.buffer.as_mut(), field::ETHERTYPE, t.into());
    }

    /// The bytes after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// The header of an Ethernet II frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    /// The sending station.
    pub src_addr: Address,
    /// The receiving station, or broadcast.
    pub dst_addr: Address,
    /// What the payload is.
    pub ethertype: EtherType,
}

impl Repr {
    /// Parses a checked frame.
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Result<Repr> {
        frame.check_len()?;
        Ok(Repr { src_addr: frame.src_addr(), dst_addr: frame.dst_addr(), ethertype: frame.ethertype() })
    }

    /// Bytes the header takes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into `frame`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        frame.set_src_addr(self.src_addr);
        frame.set_dst_addr(self.dst_addr);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // An ARP broadcast from 52:54:00:12:34:56 (header and two payload bytes).
    static FRAME_BYTES: [u8; 16] =
        [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x06, 0x00, 0x01];

    #[test]
    fn deconstruct() {
        let f = Frame::new_checked(&FRAME_BYTES[..]).unwrap();
        assert!(f.dst_addr().is_broadcast());
        assert_eq!(f.src_addr(), Address([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]));
        assert_eq!(f.ethertype(), EtherType::Arp);
        assert_eq!(f.payload(), &[0x00, 0x01]);
    }

    #[test]
    fn construct() {
        let mut bytes = [0u8; 16];
        let repr = Repr {
            src_addr: Address([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
            dst_addr: Address::BROADCAST,
            ethertype: EtherType::Arp,
        };
        let mut f = Frame::new_unchecked(&mut bytes[..]);
        repr.emit(&mut f);
        f.payload_mut().copy_from_slice(&[0x00, 0x01]);
        assert_eq!(bytes, FRAME_BYTES);
    }

    #[test]
    fn truncated_header_is_malformed() {
        assert_eq!(Frame::new_checked(&FRAME_BYTES[..13]).unwrap_err(), Error);
        assert!(Frame::new_checked(&[][..]).is_err());
    }

    #[test]
    fn unknown_ethertype_is_kept_not_rejected() {
        let mut b = FRAME_BYTES;
        b[12..14].copy_from_slice(&[0x88, 0xb5]);
        let f = Frame::new_checked(&b[..]).unwrap();
        assert_eq!(f.ethertype(), EtherType::Unknown(0x88b5));
        assert_eq!(u16::from(f.ethertype()), 0x88b5);
    }

    #[test]
    fn address_parse_and_print() {
        let a: Address = "02:00:0a:4d:00:01".parse().unwrap();
        assert_eq!(a.0, [2, 0, 0x0a, 0x4d, 0, 1]);
        assert_eq!(a.to_string(), "02:00:0a:4d:00:01");
        assert!(a.is_unicast());
        for bad in ["", "02:00:0a:4d:00", "02:00:0a:4d:00:01:02", "02:00:0a:4d:00:zz", "020:00:0a:4d:00:01"] {
            assert!(bad.parse::<Address>().is_err(), "{bad:?}");
        }
        assert!(!Address::BROADCAST.is_unicast());
        assert!(!Address([0; 6]).is_unicast());
    }
}
