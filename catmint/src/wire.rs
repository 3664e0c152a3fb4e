//! What catmint puts on the wire besides application bytes.
//!
//! Every RC send starts with an 8-byte header (sent from a separate SGE, so the
//! payload is never copied): the message's total length, receive credits being
//! returned, and flags. Connection requests and replies carry our receive
//! depth and buffer size in the CM private data.

/// Header bytes in front of every RC segment.
pub const HDR_LEN: usize = 8;
const MAGIC: u8 = 0xc7;

/// Header flags.
pub mod flag {
    /// This segment ends its message.
    pub const LAST: u8 = 1;
    /// No payload: only returns credits (uses the peer's reserved receive).
    pub const CREDIT: u8 = 2;
    /// Acknowledges the peer's last CREDIT message, so it may send another.
    pub const ACK: u8 = 4;
    /// Orderly close: no more data follows (end of file for the peer).
    pub const FIN: u8 = 8;
}

/// A parsed segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Length of the whole message this segment belongs to.
    pub total: u32,
    /// Receive buffers the sender re-posted since its last report.
    pub credits: u16,
    pub flags: u8,
}

impl Header {
    pub fn emit(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.total.to_le_bytes());
        out[4..6].copy_from_slice(&self.credits.to_le_bytes());
        out[6] = self.flags;
        out[7] = MAGIC;
    }

    /// Parses a received segment; None if it is too short or not ours.
    pub fn parse(seg: &[u8]) -> Option<Header> {
        if seg.len() < HDR_LEN || seg[7] != MAGIC {
            return None;
        }
        Some(Header {
            total: u32::from_le_bytes(seg[0..4].try_into().ok()?),
            credits: u16::from_le_bytes(seg[4..6].try_into().ok()?),
            flags: seg[6],
        })
    }
}

/// CM private data of a connect request or accept reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Data credits granted to the peer (receives we keep posted for it).
    pub credits: u16,
    /// Size of each receive buffer, header included.
    pub buf_size: u32,
}

const HELLO_VERSION: u8 = 1;
pub const HELLO_LEN: usize = 8;

impl Hello {
    pub fn emit(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0] = MAGIC;
        b[1] = HELLO_VERSION;
        b[2..4].copy_from_slice(&self.credits.to_le_bytes());
        b[4..8].copy_from_slice(&self.buf_size.to_le_bytes());
        b
    }

    pub fn parse(b: &[u8]) -> Option<Hello> {
        if b.len() < HELLO_LEN || b[0] != MAGIC || b[1] != HELLO_VERSION {
            return None;
        }
        let h = Hello {
            credits: u16::from_le_bytes(b[2..4].try_into().ok()?),
            buf_size: u32::from_le_bytes(b[4..8].try_into().ok()?),
        };
        (h.credits > 0 && h.buf_size as usize > HDR_LEN).then_some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes() {
        let h = Header { total: 0x0102_0304, credits: 0x0506, flags: flag::LAST | flag::ACK };
        let mut b = [0u8; 8];
        h.emit(&mut b);
        assert_eq!(b, [0x04, 0x03, 0x02, 0x01, 0x06, 0x05, 0x05, 0xc7]);
        assert_eq!(Header::parse(&b), Some(h));
        assert_eq!(Header::parse(&b[..7]), None, "short");
        b[7] = 0;
        assert_eq!(Header::parse(&b), None, "bad magic");
    }

    #[test]
    fn hello_bytes() {
        let h = Hello { credits: 32, buf_size: 32768 };
        let b = h.emit();
        assert_eq!(b, [0xc7, 1, 32, 0, 0x00, 0x80, 0, 0]);
        assert_eq!(Hello::parse(&b), Some(h));
        assert_eq!(Hello::parse(&b[..5]), None);
        assert_eq!(Hello::parse(&Hello { credits: 0, buf_size: 100 }.emit()), None, "zero credits");
        assert_eq!(Hello::parse(&[0xc7, 2, 1, 0, 0, 1, 0, 0]), None, "unknown version");
    }
}
