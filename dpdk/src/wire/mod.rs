//! Wire formats: Ethernet II, ARP, IPv4, ICMP and UDP. No DPDK here.
//!
//! Each protocol has a `Packet<T: AsRef<[u8]>>`, a zero-copy view over a
//! byte buffer whose field offsets live in a private `field` module, and a
//! `Repr`, the parsed and validated form with `parse` and `emit`.
//!
//! The panic contract: `Packet::new_unchecked` does no checking, and its
//! accessors may panic on a buffer that is too short. `Packet::new_checked`
//! (= `new_unchecked` + `check_len`) guarantees that no accessor panics
//! afterwards. Use `new_checked` on everything that came from the wire, and
//! `new_unchecked` only on buffers we sized ourselves for emitting.
//!
//! Protocol numbers (EtherType, IP protocol, ARP operation, ICMP type) are
//! enums with an `Unknown(n)` variant: an unknown value parses fine and the
//! stack counts and drops it; only malformed bytes are an [`Error`].
#![deny(unsafe_code)]

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod udp;

use std::fmt;

pub use arp::{Operation as ArpOperation, Packet as ArpPacket, Repr as ArpRepr, PACKET_LEN as ARP_PACKET_LEN};
pub use ethernet::{
    Address as EthernetAddress, EtherType, Frame as EthernetFrame, Repr as EthernetRepr,
    HEADER_LEN as ETHERNET_HEADER_LEN,
};
pub use icmp::{Message as IcmpMessage, Packet as IcmpPacket, Repr as IcmpRepr, HEADER_LEN as ICMP_HEADER_LEN};
pub use ipv4::{Packet as Ipv4Packet, Protocol as IpProtocol, Repr as Ipv4Repr, HEADER_LEN as IPV4_HEADER_LEN};
pub use udp::{Packet as UdpPacket, Repr as UdpRepr, HEADER_LEN as UDP_HEADER_LEN};

/// The bytes are not a well-formed packet (too short, inconsistent lengths,
/// bad checksum, unsupported version...). Deliberately opaque: the stack
/// counts which layer failed, not why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("malformed packet")
    }
}

impl std::error::Error for Error {}

/// Result of parsing wire bytes.
pub type Result<T> = std::result::Result<T, Error>;

/// Defines a protocol-number enum whose unknown values are kept, not rejected.
macro_rules! enum_with_unknown {
    (
        $(#[$meta:meta])* pub enum $name:ident($ty:ty) {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A value this stack does not handle.
            Unknown($ty),
        }

        impl From<$ty> for $name {
            fn from(v: $ty) -> Self {
                match v {
                    $( x if x == $value => $name::$variant, )+
                    other => $name::Unknown(other),
                }
            }
        }

        impl From<$name> for $ty {
            fn from(v: $name) -> Self {
                match v {
                    $( $name::$variant => $value, )+
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}
pub(crate) use enum_with_unknown;

/// Reads a big-endian u16 at `at` (callers have checked the length).
pub(crate) fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Writes a big-endian u16 at `at`.
pub(crate) fn write_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Reads four bytes as an IPv4 address.
pub(crate) fn read_ipv4(b: &[u8], at: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use std::net::Ipv4Addr;

    /// Every parser, fed random bytes (a fixed-seed xorshift, so failures
    /// replay), either rejects them or parses them; none panics.
    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let any = Ipv4Addr::new(10, 77, 0, 1);
        for round in 0..20_000 {
            let len = (next() % 128) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Half the IPv4 inputs get a plausible first byte so the length
            // checks behind the version check run too.
            if round % 2 == 0 && !b.is_empty() {
                b[0] = 0x45;
            }
            if let Ok(f) = EthernetFrame::new_checked(&b[..]) {
                let _ = (EthernetRepr::parse(&f), f.payload().len());
            }
            if let Ok(p) = ArpPacket::new_checked(&b[..]) {
                let _ = ArpRepr::parse(&p);
            }
            if let Ok(p) = Ipv4Packet::new_checked(&b[..]) {
                let _ = (Ipv4Repr::parse(&p, ipv4::Checksum::Software), p.payload().len(), p.is_fragment());
            }
            if let Ok(p) = IcmpPacket::new_checked(&b[..]) {
                let _ = IcmpRepr::parse(&p);
            }
            if let Ok(p) = UdpPacket::new_checked(&b[..]) {
                let _ = (UdpRepr::parse(&p, any, any), p.payload().len());
            }
        }
    }
}
