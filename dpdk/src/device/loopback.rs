//! An in-memory device: frames are plain byte vectors in queues. Tests
//! inject frames for the stack to receive and read the frames it sent, or
//! join two stacks with [`Loopback::pair`]; the clock only moves when told.

use super::{Capabilities, Device, RxToken, TxToken};
use crate::wire::EthernetAddress;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// One frame of a [`Loopback`] device: its bytes, and what a network card
/// could have said about it on receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    bytes: Vec<u8>,
    whole: bool,
    ipv4_checksum_ok: Option<bool>,
}

impl Frame {
    /// A complete frame with no hardware checksum verdict.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Frame {
        Frame { bytes: bytes.into(), whole: true, ipv4_checksum_ok: None }
    }

    /// The same bytes as the first part of a frame chained over several
    /// buffers (as a card does with frames larger than one buffer).
    pub fn chained(self) -> Frame {
        Frame { whole: false, ..self }
    }

    /// The same frame with a hardware verdict on its IPv4 header checksum.
    pub fn with_ipv4_checksum_verdict(self, ok: bool) -> Frame {
        Frame { ipv4_checksum_ok: Some(ok), ..self }
    }

    /// The frame's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The frame's bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

impl RxToken for Frame {
    fn frame(&self) -> &[u8] {
        &self.bytes
    }

    fn whole(&self) -> bool {
        self.whole
    }

    fn ipv4_checksum_ok(&self) -> Option<bool> {
        self.ipv4_checksum_ok
    }
}

impl TxToken for Frame {
    fn frame_mut(&mut self) -> Option<&mut [u8]> {
        Some(&mut self.bytes)
    }
}

type Queue = Rc<RefCell<VecDeque<Frame>>>;

/// The in-memory device (see the module docs). It announces no checksum
/// offloads, so the stack computes and checks every checksum itself.
#[derive(Debug)]
pub struct Loopback {
    caps: Capabilities,
    /// Frames for the stack to receive.
    inbox: Queue,
    /// Frames the stack transmitted (a peer's inbox, for a pair).
    outbox: Queue,
    clock: Rc<Cell<Instant>>,
    /// Frames `transmit` still takes; None: any number.
    tx_room: Option<usize>,
    out_of_buffers: bool,
    link_up: bool,
}

impl Loopback {
    /// A device with address `mac` and IP MTU `mtu` whose transmitted frames
    /// wait in [`take_sent`](Loopback::take_sent) and whose received ones
    /// come from [`inject`](Loopback::inject).
    pub fn new(mac: EthernetAddress, mtu: u16) -> Loopback {
        Loopback::with_queues(mac, mtu, Queue::default(), Queue::default(), Rc::new(Cell::new(Instant::now())))
    }

    /// Two devices joined by a cable: what one transmits, the other
    /// receives. They share one clock.
    pub fn pair(a: EthernetAddress, b: EthernetAddress, mtu: u16) -> (Loopback, Loopback) {
        let (a_to_b, b_to_a) = (Queue::default(), Queue::default());
        let clock = Rc::new(Cell::new(Instant::now()));
        (
            Loopback::with_queues(a, mtu, b_to_a.clone(), a_to_b.clone(), clock.clone()),
            Loopback::with_queues(b, mtu, a_to_b, b_to_a, clock),
        )
    }

    fn with_queues(mac: EthernetAddress, mtu: u16, inbox: Queue, outbox: Queue, clock: Rc<Cell<Instant>>) -> Loopback {
        let caps = Capabilities { mac, mtu, rx_ipv4_checksum: false, tx_ipv4_checksum: false };
        Loopback { caps, inbox, outbox, clock, tx_room: None, out_of_buffers: false, link_up: true }
    }

    /// Queues `frame` for the stack's next receive.
    pub fn inject(&self, frame: Frame) {
        self.inbox.borrow_mut().push_back(frame);
    }

    /// The frames transmitted since the last call, oldest first. On one
    /// device of a pair, these are the frames the peer has not received yet.
    pub fn take_sent(&self) -> Vec<Frame> {
        self.outbox.borrow_mut().drain(..).collect()
    }

    /// Moves the clock (shared by both devices of a pair) forward.
    pub fn advance(&self, by: Duration) {
        self.clock.set(self.clock.get() + by);
    }

    /// Limits how many more frames `transmit` takes (None: no limit), as a
    /// full transmit ring would.
    pub fn set_tx_room(&mut self, room: Option<usize>) {
        self.tx_room = room;
    }

    /// Makes every buffer allocation fail (true) or succeed again.
    pub fn set_out_of_buffers(&mut self, out: bool) {
        self.out_of_buffers = out;
    }

    /// Sets the link state the stack sees.
    pub fn set_link_up(&mut self, up: bool) {
        self.link_up = up;
    }

    /// The largest frame a buffer holds: Ethernet header plus MTU.
    fn max_frame(&self) -> usize {
        crate::wire::ETHERNET_HEADER_LEN + usize::from(self.caps.mtu)
    }
}

impl Device for Loopback {
    type RxToken = Frame;
    type TxToken = Frame;

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn receive(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        let mut inbox = self.inbox.borrow_mut();
        let n = max.min(inbox.len());
        out.extend(inbox.drain(..n));
        n
    }

    fn alloc_tx(&mut self, len: usize) -> Option<Frame> {
        if self.out_of_buffers || len > self.max_frame() {
            return None;
        }
        Some(Frame::new(vec![0; len]))
    }

    fn transmit(&mut self, frames: &mut Vec<Frame>) -> usize {
        let n = self.tx_room.map_or(frames.len(), |room| room.min(frames.len()));
        if let Some(room) = self.tx_room.as_mut() {
            *room -= n;
        }
        self.outbox.borrow_mut().extend(frames.drain(..n));
        n
    }

    fn link_up(&self) -> bool {
        self.link_up
    }

    fn now(&self) -> Instant {
        self.clock.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
    const B: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);

    #[test]
    fn a_pair_carries_frames_both_ways_in_order() {
        let (mut a, mut b) = Loopback::pair(A, B, 1500);
        let mut f = vec![a.alloc_tx(3).unwrap(), a.alloc_tx(1).unwrap()];
        f[0].frame_mut().unwrap().copy_from_slice(b"one");
        f[1].frame_mut().unwrap().copy_from_slice(b"2");
        assert_eq!(a.transmit(&mut f), 2);
        assert!(f.is_empty());
        let mut got = Vec::new();
        assert_eq!(b.receive(&mut got, 1), 1, "at most max frames");
        assert_eq!(b.receive(&mut got, 8), 1);
        assert_eq!(got.iter().map(|f| f.frame()).collect::<Vec<_>>(), [&b"one"[..], b"2"]);
        assert_eq!(a.receive(&mut got, 8), 0, "nothing came back");
        a.advance(Duration::from_secs(3));
        assert_eq!(b.now() - a.now(), Duration::ZERO, "one clock");
    }

    #[test]
    fn tx_room_and_buffers_can_run_out() {
        let mut d = Loopback::new(A, 576);
        assert!(d.alloc_tx(14 + 576).is_some());
        assert!(d.alloc_tx(14 + 577).is_none(), "larger than a frame");
        d.set_out_of_buffers(true);
        assert!(d.alloc_tx(1).is_none());
        d.set_out_of_buffers(false);
        d.set_tx_room(Some(1));
        let mut f = vec![Frame::new(*b"x"), Frame::new(*b"y")];
        assert_eq!(d.transmit(&mut f), 1);
        assert_eq!(d.transmit(&mut f), 0);
        assert_eq!(f, [Frame::new(*b"y")], "the rest stays");
        assert_eq!(d.take_sent(), [Frame::new(*b"x")]);
        assert!(d.take_sent().is_empty());
    }
}
