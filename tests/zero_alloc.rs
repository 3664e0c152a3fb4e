//! Zero heap allocations per message (issue 11): round trips through
//! `LibOs`, the engine and the in-memory loopback device, counted by a global
//! allocator that counts the calls this thread makes.
//!
//! This file is its own test binary because it replaces the global
//! allocator; it holds one test so that no other test's thread runs while
//! the count is taken (the count is per thread anyway).

use demi::engine::Engine;
use demi::loopback::Loopback;
use demi::{LibOs, QDesc, QValue, SockType};
use std::net::SocketAddrV4;
use std::time::Duration;

#[path = "common/counting.rs"]
mod counting;
use counting::allocations_in;

/// One round trip: `a` pushes `msg` to `b`, `b` pops it and pushes the very
/// buffer back, `a` pops it. `to` is `b`'s address for unconnected datagram
/// sockets, `None` on connected ones.
fn round_trip(os: &LibOs, a: QDesc, b: QDesc, msg: &demi::Buffer, to: Option<(SocketAddrV4, SocketAddrV4)>) {
    let push = |qd, buf: &demi::Buffer, dest: Option<SocketAddrV4>| match dest {
        Some(d) => os.pushto(qd, buf, d).unwrap(),
        None => os.push(qd, buf).unwrap(),
    };
    let pop = os.pop(b).unwrap();
    let sent = push(a, msg, to.map(|t| t.1));
    assert!(matches!(os.wait(sent, None).unwrap().value, QValue::Push));
    let QValue::Pop { buf, .. } = os.wait(pop, None).unwrap().value else { panic!("b's pop failed") };
    assert_eq!(buf.len(), msg.len());
    let back = os.pop(a).unwrap();
    let echoed = push(b, &buf, to.map(|t| t.0));
    drop(buf);
    assert!(matches!(os.wait(echoed, None).unwrap().value, QValue::Push));
    let QValue::Pop { buf, .. } = os.wait(back, None).unwrap().value else { panic!("a's pop failed") };
    assert_eq!(buf.as_ptr(), msg.as_ptr(), "the loopback hands the pushed memory itself back");
}

const WARM_UP: usize = 1_000;
const MEASURED: usize = 10_000;

#[test]
fn steady_state_round_trips_allocate_nothing() {
    let os = LibOs::with_engine(Engine::new(Box::new(Loopback::new())), Duration::ZERO);
    let msg = os.buffer_from(&[0x5a; 64]).unwrap();

    // A datagram pair, pushing with explicit addresses (pushto).
    let (a, b) = (os.socket(SockType::Datagram).unwrap(), os.socket(SockType::Datagram).unwrap());
    let (aa, ba): (SocketAddrV4, SocketAddrV4) = ("10.0.0.1:7".parse().unwrap(), "10.0.0.2:7".parse().unwrap());
    os.bind(a, aa).unwrap();
    os.bind(b, ba).unwrap();
    let dgram = Some((aa, ba));

    // A stream pair.
    let l = os.socket(SockType::Stream).unwrap();
    os.bind(l, "10.0.0.3:80".parse().unwrap()).unwrap();
    os.listen(l, 4).unwrap();
    let c = os.socket(SockType::Stream).unwrap();
    let acc = os.accept(l).unwrap();
    os.wait(os.connect(c, "10.0.0.3:80".parse().unwrap()).unwrap(), None).unwrap();
    let QValue::Accept { qd: s, .. } = os.wait(acc, None).unwrap().value else { panic!("accept failed") };

    for _ in 0..WARM_UP {
        round_trip(&os, a, b, &msg, dgram);
        round_trip(&os, c, s, &msg, None);
    }
    let datagram = allocations_in(|| {
        for _ in 0..MEASURED {
            round_trip(&os, a, b, &msg, dgram);
        }
    });
    let stream = allocations_in(|| {
        for _ in 0..MEASURED {
            round_trip(&os, c, s, &msg, None);
        }
    });
    // wait_any takes its tokens as a slice: no allocation either. It takes
    // tokens out of completion order, which the token table's completion
    // queue keeps for a while (bounded, see engine/token.rs): warm that up too.
    let pop_by_wait_any = |rounds: usize| {
        for _ in 0..rounds {
            let pop = os.pop(b).unwrap();
            let sent = os.pushto(a, &msg, ba).unwrap();
            let (i, _) = os.wait_any(&[pop, sent], None).unwrap();
            let (_, r) = os.wait_any(&[[pop, sent][1 - i]], None).unwrap();
            assert_eq!(r.errno(), 0);
        }
    };
    pop_by_wait_any(WARM_UP);
    let any = allocations_in(|| pop_by_wait_any(MEASURED));
    // The counter itself works: a heap buffer is one allocation or more.
    let control = allocations_in(|| drop(os.sgaalloc(64).unwrap()));
    assert!(control >= 1, "the counting allocator counted nothing for an allocation");
    assert_eq!(datagram, 0, "heap allocations over {MEASURED} datagram round trips");
    assert_eq!(stream, 0, "heap allocations over {MEASURED} stream round trips");
    assert_eq!(any, 0, "heap allocations over {MEASURED} datagram pushes and pops taken by wait_any");
}
