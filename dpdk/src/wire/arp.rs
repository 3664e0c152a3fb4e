//! ARP (RFC 826), for Ethernet hardware and IPv4 protocol addresses only.

use super::ethernet::{Address as EthernetAddress, EtherType};
use super::{enum_with_unknown, read_ipv4, read_u16, write_u16, Error, Result};
use std::net::Ipv4Addr;

enum_with_unknown! {
    /// The ARP operation.
    pub enum Operation(u16) {
        /// Who has this protocol address?
        Request = 1,
        /// This hardware address has it.
        Reply = 2,
    }
}

/// Hardware type for Ethernet.
const HTYPE_ETHERNET: u16 = 1;

mod field {
    use std::ops::Range;
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: usize = 14;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: usize = 24;
    pub const END: usize = 28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = field::END;

/// A view of an ARP packet (Ethernet/IPv4 layout).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checks (egress only).
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after checking its length.
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Fails if the buffer cannot hold an Ethernet/IPv4 ARP packet.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < PACKET_LEN {
            Err(Error)
        } else {
            Ok(())
        }
    }

    /// The hardware type field (1 for Ethernet).
    pub fn hardware_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HTYPE)
    }

    /// The protocol type field (IPv4's EtherType for the packets this stack answers).
    pub fn protocol_type(&self) -> EtherType {
        EtherType::from(read_u16(self.buffer.as_ref(), field::PTYPE))
    }

    /// Length of a hardware address in bytes (6 for Ethernet).
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    /// Length of a protocol address in bytes (4 for IPv4).
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    /// Request or reply.
    pub fn operation(&self) -> Operation {
        Operation::from(read_u16(self.buffer.as_ref(), field::OPER))
    }

    /// The sender's MAC address.
    pub fn source_hardware_addr(&self) -> EthernetAddress {
        EthernetAddress(self.buffer.as_ref()[field::SHA].try_into().expect("6 bytes"))
    }

    /// The sender's IPv4 address.
    pub fn source_protocol_addr(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::SPA)
    }

    /// The target's MAC address (zero in a request).
    pub fn target_hardware_addr(&self) -> EthernetAddress {
        EthernetAddress(self.buffer.as_ref()[field::THA].try_into().expect("6 bytes"))
    }

    /// The IPv4 address being asked about or answered for.
    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::TPA)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_header(&mut self, op: Operation) {
        let b = self.buffer.as_mut();
        write_u16(b, field::HTYPE, HTYPE_ETHERNET);
        write_u16(b, field::PTYPE, EtherType::Ipv4.into());
        b[field::HLEN] = 6;
        b[field::PLEN] = 4;
        write_u16(b, field::OPER, op.into());
    }

    fn set_addrs(&mut self, sha: EthernetAddress, spa: Ipv4Addr, tha: EthernetAddress, tpa: Ipv4Addr) {
        let b = self.buffer.as_mut();
        b[field::SHA].copy_from_slice(&sha.0);
        b[field::SPA..field::SPA + 4].copy_from_slice(&spa.octets());
        b[field::THA].copy_from_slice(&tha.0);
        b[field::TPA..field::TPA + 4].copy_from_slice(&tpa.octets());
    }
}

/// A parsed Ethernet/IPv4 ARP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    /// Request or reply.
    pub operation: Operation,
    /// The sender's MAC address.
    pub source_hardware_addr: EthernetAddress,
    /// The sender's IPv4 address.
    pub source_protocol_addr: Ipv4Addr,
    /// The target's MAC address (zero in a request).
    pub target_hardware_addr: EthernetAddress,
    /// The IPv4 address being asked about or answered for.
    pub target_protocol_addr: Ipv4Addr,
}

impl Repr {
    /// Parses a packet; anything but Ethernet hardware with IPv4 addresses
    /// is malformed for this stack.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        p.check_len()?;
        if p.hardware_type() != HTYPE_ETHERNET
            || p.protocol_type() != EtherType::Ipv4
            || p.hardware_len() != 6
            || p.protocol_len() != 4
        {
            return Err(Error);
        }
        Ok(Repr {
            operation: p.operation(),
            source_hardware_addr: p.source_hardware_addr(),
            source_protocol_addr: p.source_protocol_addr(),
            target_hardware_addr: p.target_hardware_addr(),
            target_protocol_addr: p.target_protocol_addr(),
        })
    }

    /// Bytes the packet takes.
    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the packet.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_header(self.operation);
        p.set_addrs(
            self.source_hardware_addr,
            self.source_protocol_addr,
            self.target_hardware_addr,
            self.target_protocol_addr,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Who has 10.77.0.2? Tell 10.77.0.1 (02:00:0a:4d:00:01).
    static REQUEST_BYTES: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x00, 0x0a, 0x4d, 0x00, 0x01, 10, 77, 0, 1, 0, 0, 0, 0,
        0, 0, 10, 77, 0, 2,
    ];

    fn request() -> Repr {
        Repr {
            operation: Operation::Request,
            source_hardware_addr: EthernetAddress([0x02, 0x00, 0x0a, 0x4d, 0x00, 0x01]),
            source_protocol_addr: Ipv4Addr::new(10, 77, 0, 1),
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: Ipv4Addr::new(10, 77, 0, 2),
        }
    }

    #[test]
    fn parse() {
        let p = Packet::new_checked(&REQUEST_BYTES[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap(), request());
    }

    #[test]
    fn emit() {
        let mut b = [0xaau8; 28];
        request().emit(&mut Packet::new_unchecked(&mut b[..]));
        assert_eq!(b, REQUEST_BYTES);
    }

    #[test]
    fn truncated_is_malformed() {
        assert!(Packet::new_checked(&REQUEST_BYTES[..27]).is_err());
    }

    #[test]
    fn other_hardware_or_protocol_is_malformed() {
        for (at, v) in [(1, 6u8), (2, 0x86), (4, 8), (5, 16)] {
            let mut b = REQUEST_BYTES;
            b[at] = v;
            assert!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).is_err(), "byte {at}");
        }
    }

    #[test]
    fn unknown_operation_parses() {
        let mut b = REQUEST_BYTES;
        b[7] = 9;
        assert_eq!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap().operation, Operation::Unknown(9));
    }
}
