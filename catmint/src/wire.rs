//! What catmint puts on the wire besides application bytes.
//!
//! Every RC send is a SEND with immediate data, and the 32 bits of immediate
//! data are all the framing there is: the payload goes out as the
//! application's bytes alone (one SGE, nothing copied, and a 4 KiB message
//! is 4 packets at a 1 KiB MTU, not 5). The immediate data of the first
//! segment of a message longer than one receive buffer holds the message's
//! length (so the receiver can allocate it) and the ACK flag (a sender that
//! owes an ACK may have no other send to carry it); every other send carries
//! receive credits being returned and flags. Connection requests and replies
//! carry our receive depth and buffer size in the CM private data. UD
//! datagrams start with an 8-byte header naming the sender, which UD itself
//! does not carry.
//!
//! Every decoder here reads bytes or values a peer chose, so each returns
//! None for anything it does not recognise and never panics (fuzz/ checks
//! this, and that decoding what we encode gives it back).

use std::net::{Ipv4Addr, SocketAddrV4};

/// Checks the immediate data and the CM private data are ours.
const MAGIC: u8 = 0xc7;

/// Bit 31 of the immediate data: a first segment, with the ACK flag in bit
/// 30 and the total length in bits 0-29.
const FIRST: u32 = 1 << 31;
const FIRST_ACK: u32 = 1 << 30;
/// Bits 24-30 of every other immediate: this pattern.
const CTL_MAGIC: u32 = 0x47;

/// The longest message (its length must fit in 30 bits).
pub const MAX_MESSAGE: usize = (FIRST_ACK - 1) as usize;

/// Flags of a control immediate.
pub mod flag {
    /// This segment ends its message.
    pub const LAST: u8 = 1;
    /// No payload: only returns credits (uses the peer's reserved receive).
    pub const CREDIT: u8 = 2;
    /// Acknowledges the peer's last CREDIT message, so it may send another.
    pub const ACK: u8 = 4;
    /// Orderly close: no more data follows (end of file for the peer).
    pub const FIN: u8 = 8;
    pub(super) const ALL: u8 = LAST | CREDIT | ACK | FIN;
}

/// The immediate data of one RC send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Imm {
    /// The first segment of a message of `total` bytes that takes more than
    /// one receive buffer; `ack` as the ACK flag.
    First {
        /// The whole message's length in bytes.
        total: u32,
        /// The ACK flag.
        ack: bool,
    },
    /// Any other send: credits returned (receive buffers re-posted since the
    /// last report) and flags.
    Ctl {
        /// Receive buffers re-posted since the last report.
        credits: u16,
        /// The [`flag`] bits.
        flags: u8,
    },
}

impl Imm {
    /// The value to put in the work request (host order; the caller
    /// converts to network order, as verbs wants).
    pub fn encode(self) -> u32 {
        match self {
            Imm::First { total, ack } => {
                debug_assert!(total as usize <= MAX_MESSAGE);
                FIRST | if ack { FIRST_ACK } else { 0 } | total
            }
            Imm::Ctl { credits, flags } => CTL_MAGIC << 24 | (credits as u32) << 8 | flags as u32,
        }
    }

    /// Parses received immediate data (host order); None if it is not ours.
    pub fn decode(v: u32) -> Option<Imm> {
        if v & FIRST != 0 {
            let total = v & MAX_MESSAGE as u32;
            return (total > 0).then_some(Imm::First { total, ack: v & FIRST_ACK != 0 });
        }
        let flags = v as u8;
        if v >> 24 != CTL_MAGIC || flags & !flag::ALL != 0 {
            return None;
        }
        Some(Imm::Ctl { credits: (v >> 8) as u16, flags })
    }
}

/// CM private data of a connect request or accept reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Data credits granted to the peer (receives we keep posted for it).
    pub credits: u16,
    /// Size of each receive buffer: the most one send may carry.
    pub buf_size: u32,
}

/// The smallest receive buffer a peer may announce.
pub const MIN_BUF_SIZE: u32 = 64;

/// Version 2: immediate-data framing (version 1 had an 8-byte header).
const HELLO_VERSION: u8 = 2;
/// Bytes of a [`Hello`] on the wire.
pub const HELLO_LEN: usize = 8;

impl Hello {
    /// The wire form: magic, version, credits and buffer size (little-endian).
    pub fn emit(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0] = MAGIC;
        b[1] = HELLO_VERSION;
        b[2..4].copy_from_slice(&self.credits.to_le_bytes());
        b[4..8].copy_from_slice(&self.buf_size.to_le_bytes());
        b
    }

    /// Reads a hello; None if it is short, of another version, or asks for nothing.
    pub fn parse(b: &[u8]) -> Option<Hello> {
        if b.len() < HELLO_LEN || b[0] != MAGIC || b[1] != HELLO_VERSION {
            return None;
        }
        let h = Hello {
            credits: u16::from_le_bytes(b[2..4].try_into().ok()?),
            buf_size: u32::from_le_bytes(b[4..8].try_into().ok()?),
        };
        (h.credits > 0 && h.buf_size >= MIN_BUF_SIZE).then_some(h)
    }
}

/// The header of a UD datagram: the sender's address (the receiving QP
/// sees only the sender's GID and QP number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdHeader {
    /// The sending socket's IPv4 address and port.
    pub from: SocketAddrV4,
}

/// Its own magic, so a datagram is never mistaken for CM private data.
const UD_MAGIC: u8 = 0xc8;
const UD_VERSION: u8 = 1;
/// Magic, version, source port (big-endian), source IPv4 address.
pub const UD_HDR_LEN: usize = 8;

impl UdHeader {
    /// The wire form: magic, version, source port and IPv4 address.
    pub fn emit(&self) -> [u8; UD_HDR_LEN] {
        let mut b = [0u8; UD_HDR_LEN];
        b[0] = UD_MAGIC;
        b[1] = UD_VERSION;
        b[2..4].copy_from_slice(&self.from.port().to_be_bytes());
        b[4..8].copy_from_slice(&self.from.ip().octets());
        b
    }

    /// Parses the start of a received datagram (the payload follows).
    pub fn parse(b: &[u8]) -> Option<UdHeader> {
        if b.len() < UD_HDR_LEN || b[0] != UD_MAGIC || b[1] != UD_VERSION {
            return None;
        }
        let port = u16::from_be_bytes([b[2], b[3]]);
        Some(UdHeader { from: SocketAddrV4::new(Ipv4Addr::new(b[4], b[5], b[6], b[7]), port) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immediate_data_values() {
        let ctl = Imm::Ctl { credits: 0x0506, flags: flag::LAST | flag::ACK };
        assert_eq!(ctl.encode(), 0x4705_0605);
        assert_eq!(Imm::decode(0x4705_0605), Some(ctl));
        let first = Imm::First { total: 0x0102_0304, ack: false };
        assert_eq!(first.encode(), 0x8102_0304);
        assert_eq!(Imm::decode(0x8102_0304), Some(first));
        let first_ack = Imm::First { total: 0x0102_0304, ack: true };
        assert_eq!(first_ack.encode(), 0xc102_0304);
        assert_eq!(Imm::decode(0xc102_0304), Some(first_ack));
        assert_eq!(Imm::decode(0x8000_0000), None, "empty message");
        assert_eq!(Imm::decode(0xc000_0000), None, "empty message");
        assert_eq!(Imm::decode(0x4600_0001), None, "bad magic");
        assert_eq!(Imm::decode(0x4700_0010), None, "unknown flag");
        assert_eq!(Imm::decode(0), None);
        assert_eq!(MAX_MESSAGE, (1 << 30) - 1);
        let most = Imm::First { total: MAX_MESSAGE as u32, ack: true };
        assert_eq!(Imm::decode(most.encode()), Some(most));
    }

    #[test]
    fn hello_bytes() {
        let h = Hello { credits: 32, buf_size: 32768 };
        let b = h.emit();
        assert_eq!(b, [0xc7, 2, 32, 0, 0x00, 0x80, 0, 0]);
        assert_eq!(Hello::parse(&b), Some(h));
        assert_eq!(Hello::parse(&b[..5]), None);
        assert_eq!(Hello::parse(&Hello { credits: 0, buf_size: 100 }.emit()), None, "zero credits");
        assert_eq!(Hello::parse(&[0xc7, 1, 1, 0, 0, 1, 0, 0]), None, "version 1 (header framing)");
        assert_eq!(Hello::parse(&Hello { credits: 1, buf_size: 63 }.emit()), None, "buffers too small");
    }

    #[test]
    fn ud_header_bytes() {
        let h = UdHeader { from: "10.77.0.1:40000".parse().unwrap() };
        let b = h.emit();
        assert_eq!(b, [0xc8, 1, 0x9c, 0x40, 10, 77, 0, 1]);
        assert_eq!(UdHeader::parse(&b), Some(h));
        let mut datagram = b.to_vec();
        datagram.extend_from_slice(b"payload");
        assert_eq!(UdHeader::parse(&datagram), Some(h), "the payload follows the header");
        assert_eq!(UdHeader::parse(&b[..7]), None, "truncated");
        assert_eq!(UdHeader::parse(&[0xc7, 1, 0, 0, 0, 0, 0, 0]), None, "CM private data magic");
        assert_eq!(UdHeader::parse(&[0xc8, 2, 0, 0, 0, 0, 0, 0]), None, "unknown version");
    }
}
