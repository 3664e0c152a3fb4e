//! ICMPv4 (RFC 792): echo request/reply, and destination unreachable.

use super::{checksum, enum_with_unknown, read_u16, write_u16, Error, Result};

enum_with_unknown! {
    /// The ICMP message type.
    pub enum Message(u8) {
        /// Echo reply (ping answer).
        EchoReply = 0,
        /// Destination unreachable.
        DstUnreachable = 3,
        /// Echo request (ping).
        EchoRequest = 8,
    }
}

/// Destination-unreachable code for "port unreachable".
pub const CODE_PORT_UNREACHABLE: u8 = 3;

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const ECHO_IDENT: usize = 4;
    pub const ECHO_SEQNO: usize = 6;
    pub const DATA: usize = 8;
}

/// Length of the ICMP header (type, code, checksum and four more bytes).
pub const HEADER_LEN: usize = field::DATA;

/// A view of an ICMP message.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checks (egress only).
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after checking that the header fits.
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Fails if the header does not fit.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error)
        } else {
            Ok(())
        }
    }

    /// The message type (echo request, echo reply, ...).
    pub fn msg_type(&self) -> Message {
        Message::from(self.buffer.as_ref()[field::TYPE])
    }

    /// The code, which refines the type (for destination unreachable, why).
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// The checksum field as it is on the wire.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// An echo message's identifier (meaningful for echo types only).
    pub fn echo_ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    /// An echo message's sequence number (meaningful for echo types only).
    pub fn echo_seq_no(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_SEQNO)
    }

    /// The bytes after the header.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA..]
    }

    /// True if the checksum over the whole message is right.
    pub fn verify_checksum(&self) -> bool {
        checksum::of(self.buffer.as_ref()) == 0
    }
}

/// The ICMP messages this stack reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repr<'a> {
    /// A ping: the reply echoes identifier, sequence number and data.
    EchoRequest {
        /// Chosen by the sender to match replies to its pings.
        ident: u16,
        /// Counts the sender's pings.
        seq_no: u16,
        /// Bytes the reply must carry back unchanged.
        data: &'a [u8],
    },
    /// The answer to an [`Repr::EchoRequest`], with its fields copied.
    EchoReply {
        /// Copied from the request.
        ident: u16,
        /// Copied from the request.
        seq_no: u16,
        /// Copied from the request.
        data: &'a [u8],
    },
    /// `data` is the offending datagram's IP header and first 8 payload bytes.
    DstUnreachable {
        /// Why the datagram could not be delivered (3: port unreachable).
        code: u8,
        /// The offending datagram's IP header and first 8 payload bytes.
        data: &'a [u8],
    },
    /// Any other type or code, kept for counting.
    Other {
        /// The message type.
        msg_type: Message,
        /// The message code.
        code: u8,
    },
}

impl<'a> Repr<'a> {
    /// Parses a checked message (checksum verified).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(p: &Packet<&'a T>) -> Result<Repr<'a>> {
        p.check_len()?;
        if !p.verify_checksum() {
            return Err(Error);
        }
        let whole: &'a T = p.buffer;
        let data = &AsRef::<[u8]>::as_ref(whole)[field::DATA..];
        Ok(match (p.msg_type(), p.msg_code()) {
            (Message::EchoRequest, 0) => Repr::EchoRequest { ident: p.echo_ident(), seq_no: p.echo_seq_no(), data },
            (Message::EchoReply, 0) => Repr::EchoReply { ident: p.echo_ident(), seq_no: p.echo_seq_no(), data },
            (Message::DstUnreachable, code) => Repr::DstUnreachable { code, data },
            (msg_type, code) => Repr::Other { msg_type, code },
        })
    }

    /// Bytes the message takes.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Repr::EchoRequest { data, .. } | Repr::EchoReply { data, .. } | Repr::DstUnreachable { data, .. } => {
                    data.len()
                }
                Repr::Other { .. } => 0,
            }
    }

    /// Writes the message into a buffer of exactly `buffer_len()` bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        let b = p.buffer.as_mut();
        b[..HEADER_LEN].fill(0);
        let data = match *self {
            Repr::EchoRequest { ident, seq_no, data } | Repr::EchoReply { ident, seq_no, data } => {
                let t =
                    if matches!(self, Repr::EchoRequest { .. }) { Message::EchoRequest } else { Message::EchoReply };
                b[field::TYPE] = t.into();
                write_u16(b, field::ECHO_IDENT, ident);
                write_u16(b, field::ECHO_SEQNO, seq_no);
                data
            }
            Repr::DstUnreachable { code, data } => {
                b[field::TYPE] = Message::DstUnreachable.into();
                b[field::CODE] = code;
                data
            }
            Repr::Other { msg_type, code } => {
                b[field::TYPE] = msg_type.into();
                b[field::CODE] = code;
                &[]
            }
        };
        b[field::DATA..field::DATA + data.len()].copy_from_slice(data);
        let c = checksum::of(&b[..field::DATA + data.len()]);
        write_u16(b, field::CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Echo request, ident 0x1234, seq 1, data "abcd".
    static ECHO_BYTES: [u8; 12] = [0x08, 0x00, 0x00, 0x00, 0x12, 0x34, 0x00, 0x01, b'a', b'b', b'c', b'd'];

    fn with_checksum(mut b: [u8; 12]) -> [u8; 12] {
        let c = checksum::of(&b);
        b[2..4].copy_from_slice(&c.to_be_bytes());
        b
    }

    #[test]
    fn parse_echo_request() {
        let b = with_checksum(ECHO_BYTES);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap(), Repr::EchoRequest { ident: 0x1234, seq_no: 1, data: b"abcd" });
    }

    #[test]
    fn emit_echo_request_round_trips() {
        let mut b = [0u8; 12];
        let r = Repr::EchoRequest { ident: 0x1234, seq_no: 1, data: b"abcd" };
        assert_eq!(r.buffer_len(), 12);
        r.emit(&mut Packet::new_unchecked(&mut b[..]));
        assert_eq!(b, with_checksum(ECHO_BYTES));
    }

    #[test]
    fn reply_differs_only_in_type_and_checksum() {
        let mut b = [0u8; 12];
        Repr::EchoReply { ident: 0x1234, seq_no: 1, data: b"abcd" }.emit(&mut Packet::new_unchecked(&mut b[..]));
        assert_eq!(b[0], 0);
        assert_eq!(&b[4..], &ECHO_BYTES[4..]);
        assert!(Packet::new_unchecked(&b[..]).verify_checksum());
    }

    #[test]
    fn malformed_messages() {
        assert!(Packet::new_checked(&ECHO_BYTES[..7]).is_err(), "truncated");
        let p = Packet::new_checked(&ECHO_BYTES[..]).unwrap();
        assert!(Repr::parse(&p).is_err(), "zero checksum over nonzero data is wrong");
    }

    #[test]
    fn unknown_type_is_other() {
        let mut b = ECHO_BYTES;
        b[0] = 13; // timestamp request
        let b = with_checksum(b);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap(), Repr::Other { msg_type: Message::Unknown(13), code: 0 });
    }
}
