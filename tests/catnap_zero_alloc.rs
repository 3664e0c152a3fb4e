//! Zero heap allocations per message on catnap (issue 11): 64 B round trips
//! over real kernel loopback sockets (UDP with pushto and with push on
//! connected sockets, TCP through listen/accept/connect), counted by a
//! global allocator that counts this thread's calls once warm.
//!
//! Its own test binary because it replaces the global allocator. The count
//! is per thread, so the tests may run side by side.

mod common;
#[path = "common/counting.rs"]
mod counting;

use common::{wait_ok, LONG};
use counting::allocations_in;
use demi::{Buffer, LibOs, QDesc, QValue, SockType};
use std::net::SocketAddrV4;

const WARM_UP: usize = 1_000;
const MEASURED: usize = 10_000;

fn catnap() -> LibOs {
    demi::init_logging();
    LibOs::new("catnap").expect("catnap starts")
}

fn bound_udp(os: &LibOs) -> (QDesc, SocketAddrV4) {
    let qd = os.socket(SockType::Datagram).unwrap();
    os.bind(qd, "127.0.0.1:0".parse().unwrap()).unwrap();
    (qd, os.local_addr(qd).unwrap().expect("bound"))
}

/// Pops from `qd` until `n` bytes came (a stream may split them); returns
/// the last buffer, which for one message in flight is the whole message.
fn pop_message(os: &LibOs, qd: QDesc, n: usize) -> Buffer {
    let mut got = 0;
    loop {
        let QValue::Pop { buf, .. } = wait_ok(os, os.pop(qd).unwrap()).value else { panic!("expected a pop") };
        assert!(!buf.is_empty(), "unexpected end of file");
        got += buf.len();
        if got >= n {
            assert_eq!(got, n, "more bytes than one message");
            return buf;
        }
    }
}

/// `rounds` round trips of `msg`: `c` sends to `s` (at `to.0` when given),
/// `s` pushes the very buffer it popped back (to `to.1`), `c` checks it.
/// The pops are posted before the pushes, as a server's would be.
fn round_trips(os: &LibOs, c: QDesc, s: QDesc, msg: &Buffer, to: Option<(SocketAddrV4, SocketAddrV4)>, rounds: usize) {
    for _ in 0..rounds {
        let pop = os.pop(s).unwrap();
        let push = match to {
            Some((s_addr, _)) => os.pushto(c, msg, s_addr).unwrap(),
            None => os.push(c, msg).unwrap(),
        };
        assert!(matches!(wait_ok(os, push).value, QValue::Push));
        let QValue::Pop { buf, from } = os.wait(pop, Some(LONG)).unwrap().value else { panic!("s's pop failed") };
        if let Some((_, c_addr)) = to {
            assert_eq!(from, Some(c_addr), "datagrams carry their sender");
        }
        let buf = if buf.len() < msg.len() {
            // A stream split the message: take the rest (rare on loopback).
            let rest = pop_message(os, s, msg.len() - buf.len());
            let mut whole = buf.as_slice().to_vec();
            whole.extend_from_slice(rest.as_slice());
            os.buffer_from(&whole).unwrap()
        } else {
            buf
        };
        let echo = match to {
            Some((_, c_addr)) => os.pushto(s, &buf, c_addr).unwrap(),
            None => os.push(s, &buf).unwrap(),
        };
        drop(buf);
        assert!(matches!(wait_ok(os, echo).value, QValue::Push));
        let back = pop_message(os, c, msg.len());
        assert_eq!(back.as_slice(), msg.as_slice(), "the echo differs");
    }
}

fn count(os: &LibOs, c: QDesc, s: QDesc, msg: &Buffer, to: Option<(SocketAddrV4, SocketAddrV4)>) -> u64 {
    round_trips(os, c, s, msg, to, WARM_UP);
    allocations_in(|| round_trips(os, c, s, msg, to, MEASURED))
}

#[test]
fn udp_round_trips_allocate_nothing() {
    let os = catnap();
    let msg = os.buffer_from(&[0x5a; 64]).unwrap();
    let ((c, c_addr), (s, s_addr)) = (bound_udp(&os), bound_udp(&os));
    let pushto = count(&os, c, s, &msg, Some((s_addr, c_addr)));
    // Connected datagram sockets, pushing without an address.
    wait_ok(&os, os.connect(c, s_addr).unwrap());
    wait_ok(&os, os.connect(s, c_addr).unwrap());
    let push = count(&os, c, s, &msg, None);
    // The counter itself works: a heap buffer is one allocation or more.
    let control = allocations_in(|| drop(os.buffer_from(&[1; 64]).unwrap()));
    assert!(control >= 1, "the counting allocator counted nothing for an allocation");
    eprintln!("catnap UDP: allocations in {MEASURED} round trips of 64 B: pushto {pushto}, push {push}");
    assert_eq!((pushto, push), (0, 0), "heap allocations on catnap's UDP path (pushto, push)");
}

#[test]
fn tcp_round_trips_allocate_nothing() {
    let os = catnap();
    let msg = os.buffer_from(&[0xa5; 64]).unwrap();
    let l = os.socket(SockType::Stream).unwrap();
    os.bind(l, "127.0.0.1:0".parse().unwrap()).unwrap();
    os.listen(l, 4).unwrap();
    let server = os.local_addr(l).unwrap().expect("bound");
    let accept = os.accept(l).unwrap();
    let c = os.socket(SockType::Stream).unwrap();
    wait_ok(&os, os.connect(c, server).unwrap());
    let QValue::Accept { qd: s, .. } = wait_ok(&os, accept).value else { panic!("accept failed") };
    // TCP_NODELAY: each 64 B push leaves at once (as a latency benchmark sets it).
    for qd in [c, s] {
        os.setsockopt(qd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &1i32.to_ne_bytes()).unwrap();
    }
    let stream = count(&os, c, s, &msg, None);
    eprintln!("catnap TCP: allocations in {MEASURED} round trips of 64 B: {stream}");
    assert_eq!(stream, 0, "heap allocations on catnap's TCP path");
}
