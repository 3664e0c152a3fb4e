//! The seam under the stack: what a network device must offer so that
//! [`Stack`](crate::stack::Stack) can run over it.
//!
//! The shape follows smoltcp's `phy::Device`: the device hands out receive
//! tokens (frames that arrived) and transmit tokens (buffers to fill), and
//! the stack never touches driver memory in any other way. Two departures
//! serve the DPDK path:
//!
//! - **Tokens are owned frames, not closures.** A receive token lends its
//!   bytes through `&self` ([`RxToken::frame`]); the stack keeps the token
//!   when it delivers a UDP datagram, so the payload reaches the application
//!   in the buffer it arrived in. A transmit token is filled in place and
//!   may wait (for ARP, for ring space) before [`Device::transmit`] sends it.
//! - **Bursts.** [`Device::receive`] and [`Device::transmit`] move many
//!   frames per call, as `rte_eth_rx_burst`/`rte_eth_tx_burst` do.
//!
//! The stack is generic over the device (static dispatch: no trait object,
//! no per-packet indirection). Implementations: the DPDK port
//! ([`crate::port::Port`], tokens are [`crate::sys::Mbuf`]s, feature
//! `dpdk`) and [`Loopback`], an in-memory device for tests that needs no
//! DPDK.

mod loopback;

pub use loopback::{Frame, Loopback};

use crate::wire::EthernetAddress;
use std::time::Instant;

/// What a device is and can do; read once when the stack starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// The device's MAC address: frames to it (or to broadcast) are ours.
    pub mac: EthernetAddress,
    /// IP MTU in bytes: the largest IPv4 packet one frame carries.
    pub mtu: u16,
    /// Receive tokens may carry the hardware's IPv4 header checksum verdict
    /// ([`RxToken::ipv4_checksum_ok`]).
    pub rx_ipv4_checksum: bool,
    /// The device computes IPv4 header checksums of frames marked with
    /// [`TxToken::offload_ipv4_checksum`]; the stack then leaves them zero.
    pub tx_ipv4_checksum: bool,
}

/// A received frame. Dropping it gives the buffer back to the device.
pub trait RxToken {
    /// The frame's bytes, from the Ethernet header on.
    fn frame(&self) -> &[u8];

    /// False if [`frame`](RxToken::frame) is only the first part of a frame
    /// that continues in further buffers (the stack drops such frames).
    fn whole(&self) -> bool {
        true
    }

    /// The hardware's verdict on the IPv4 header checksum: `Some(true)`
    /// good, `Some(false)` bad, `None` not checked (the stack checks).
    fn ipv4_checksum_ok(&self) -> Option<bool> {
        None
    }
}

/// A frame being built for transmission, owned by the stack until
/// [`Device::transmit`] takes it.
pub trait TxToken: Sized {
    /// The frame's bytes for writing; `None` if the buffer is shared (a
    /// zero-copy frame whose payload the application still holds).
    fn frame_mut(&mut self) -> Option<&mut [u8]>;

    /// Asks the device to fill in the IPv4 header checksum of this frame
    /// (headers of `l2_len` and `l3_len` bytes). Only called when the
    /// device announced [`Capabilities::tx_ipv4_checksum`].
    fn offload_ipv4_checksum(&mut self, l2_len: u8, l3_len: u8) {
        let _ = (l2_len, l3_len);
    }

    /// Zero copy: when `payload` lies where [`Device::alloc_payload`] put
    /// this buffer's payload, returns a second handle on the buffer framed
    /// as `hdr_len` header bytes followed by the payload, after `fill` wrote
    /// the headers (it sees the payload too, for checksums). `None` means
    /// the stack copies instead; that is the default.
    fn share_for_tx(&self, payload: &[u8], hdr_len: usize, fill: impl FnOnce(&mut [u8], &[u8])) -> Option<Self> {
        let _ = (payload, hdr_len, fill);
        None
    }
}

/// A network device the stack runs over (see the module docs).
///
/// A transmit token must turn into a receive token (`Into`): a datagram to
/// our own address goes back up the stack without reaching the device.
pub trait Device {
    /// A received frame.
    type RxToken: RxToken;
    /// A frame to transmit.
    type TxToken: TxToken + Into<Self::RxToken>;

    /// The device's address, MTU and offloads.
    fn capabilities(&self) -> Capabilities;

    /// Appends up to `max` received frames to `out`; returns how many.
    fn receive(&mut self, out: &mut Vec<Self::RxToken>, max: usize) -> usize;

    /// A buffer for a frame of exactly `len` bytes (contents unspecified);
    /// `None` when the device has no buffer free or `len` does not fit one.
    fn alloc_tx(&mut self, len: usize) -> Option<Self::TxToken>;

    /// Transmits frames from the front of `frames`, removing those the
    /// device took; returns how many. The rest stay, in order, for later.
    fn transmit(&mut self, frames: &mut Vec<Self::TxToken>) -> usize;

    /// A buffer whose payload area holds `len` zeroed bytes, for the
    /// application to fill and send without a copy (see
    /// [`TxToken::share_for_tx`]). `None` (the default) when the device
    /// cannot do that; the caller then uses plain memory.
    fn alloc_payload(&mut self, len: usize) -> Option<Self::TxToken> {
        let _ = len;
        None
    }

    /// True if the link is up. The stack reads it every 100 ms and sends a
    /// gratuitous ARP when it comes up.
    fn link_up(&self) -> bool {
        true
    }

    /// The time the stack's timers (ARP retries and expiry) run on. Real
    /// devices use the clock; a test device may move time by hand.
    fn now(&self) -> Instant {
        Instant::now()
    }
}
