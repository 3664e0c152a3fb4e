//! Helpers shared by the fuzz targets in fuzz_targets/.

use std::net::Ipv4Addr;

/// The Internet checksum (RFC 1071) of the concatenated `parts`, computed
/// the plain way (every 16-bit word added into a u64, folded once at the
/// end) to check catnip's version, which folds early to stay in 32 bits.
/// Each part but the last must have an even length, as in every use here.
pub fn reference_checksum(parts: &[&[u8]]) -> u16 {
    let mut acc: u64 = 0;
    for part in parts {
        for word in part.chunks(2) {
            let hi = u64::from(word[0]) << 8;
            let lo = word.get(1).map_or(0, |&b| u64::from(b));
            acc += hi | lo;
        }
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The IPv4 pseudo-header UDP's checksum covers (RFC 768).
pub fn udp_pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, udp_len: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0..4].copy_from_slice(&src.octets());
    h[4..8].copy_from_slice(&dst.octets());
    h[9] = 17;
    h[10..12].copy_from_slice(&udp_len.to_be_bytes());
    h
}

/// Splits `n` bytes off the front of `data`, or None if it is shorter.
pub fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Some(head)
}
