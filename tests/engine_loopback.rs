//! The engine's rules through `LibOs`, over the in-memory loopback device:
//! no kernel networking, no device, and completions held back at will, so
//! each rule is checked deterministically (tokens, waiting, cancellation,
//! descriptors), plus the loopback's own datagram and stream behaviour that
//! those checks rest on.

use demi::engine::Engine;
use demi::loopback::{Loopback, LoopbackControl};
use demi::{LibOs, QDesc, QResult, QToken, QValue, SockType};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

/// A libOS over a fresh loopback, and the handle that holds it back.
fn loopback() -> (LibOs, LoopbackControl) {
    let device = Loopback::new();
    let control = device.control();
    (LibOs::with_engine(Engine::new(Box::new(device)), Duration::ZERO), control)
}

fn addr(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

/// A datagram socket bound to `at`.
fn bound(os: &LibOs, at: &str) -> (QDesc, SocketAddrV4) {
    let qd = os.socket(SockType::Datagram).unwrap();
    os.bind(qd, addr(at)).unwrap();
    (qd, addr(at))
}

/// A listener on 10.0.0.9:80 and a connected pair: (client, server end, listener).
fn stream_pair(os: &LibOs) -> (QDesc, QDesc, QDesc) {
    let l = os.socket(SockType::Stream).unwrap();
    os.bind(l, addr("10.0.0.9:80")).unwrap();
    os.listen(l, 4).unwrap();
    let c = os.socket(SockType::Stream).unwrap();
    let acc = os.accept(l).unwrap();
    assert!(matches!(done(os, os.connect(c, addr("10.0.0.9:80")).unwrap()).value, QValue::Connect));
    let QValue::Accept { qd, .. } = done(os, acc).value else { panic!("accept failed") };
    (c, qd, l)
}

/// Waits for `qt` (which must finish at once) and returns its result.
fn done(os: &LibOs, qt: QToken) -> QResult {
    os.wait(qt, Some(Duration::from_secs(5))).expect("the operation finishes")
}

/// The bytes and sender of a finished pop.
fn popped(r: QResult) -> (Vec<u8>, Option<SocketAddrV4>) {
    match r.value {
        QValue::Pop { buf, from } => (buf.as_slice().to_vec(), from),
        v => panic!("expected a pop, got {v:?}"),
    }
}

fn errno<T: std::fmt::Debug>(r: demi::Result<T>) -> i32 {
    r.unwrap_err().errno()
}

#[test]
fn zero_consumed_stale_and_forged_tokens_are_einval() {
    let (os, _) = loopback();
    let ((a, _), (b, ba)) = (bound(&os, "10.0.0.1:1"), bound(&os, "10.0.0.2:2"));
    assert_eq!(errno(os.wait(0, None)), libc::EINVAL, "token 0 (no operation ever has it)");
    let msg = os.buffer_from(b"x").unwrap();
    // To nobody: b's pop below must find nothing waiting.
    let sent = os.pushto(a, &msg, addr("10.9.9.9:9")).unwrap();
    assert_ne!(sent, 0);
    done(&os, sent);
    assert_eq!(errno(os.wait(sent, None)), libc::EINVAL, "a consumed token");
    // The next operation takes the freed slot: the old token must not answer
    // for it, pending or finished.
    let pop = os.pop(b).unwrap();
    assert_eq!(pop & 0xffff_ffff, sent & 0xffff_ffff, "the slot is reused, so staleness is what is tested");
    assert_eq!(errno(os.wait(sent, Some(Duration::ZERO))), libc::EINVAL, "a stale token, slot pending");
    for forged in [pop + 1, pop ^ (1 << 40), pop & 0xffff_ffff, u64::MAX] {
        assert_eq!(errno(os.wait(forged, None)), libc::EINVAL, "forged {forged:#x}");
    }
    // One bad token spoils a wait_any, and leaves the good one pending.
    assert_eq!(errno(os.wait_any(&[pop, pop + 1], None)), libc::EINVAL);
    assert_eq!(errno(os.wait(pop, Some(Duration::ZERO))), libc::ETIMEDOUT);
    done(&os, os.pushto(a, &msg, ba).unwrap());
    assert_eq!(popped(done(&os, pop)).0, b"x");
    assert_eq!(errno(os.wait(sent, Some(Duration::ZERO))), libc::EINVAL, "a stale token, slot finished");
}

/// A wait whose token is already finished must still move the device, or a
/// program whose every wait finds its push done never sees a receive.
#[test]
fn a_wait_on_a_finished_token_still_polls_the_device() {
    let (os, control) = loopback();
    let ((a, _), (b, ba)) = (bound(&os, "10.0.0.1:1"), bound(&os, "10.0.0.2:2"));
    let msg = os.buffer_from(b"for b").unwrap();
    for round in 0..3 {
        let pop = os.pop(b).unwrap();
        // The loopback finishes a push inside the call; delivering the
        // datagram to the pop takes a poll.
        let sent = os.pushto(a, &msg, ba).unwrap();
        let polls = control.polls();
        match round {
            0 => drop(done(&os, sent)),
            1 => assert_eq!(os.wait_any(&[sent], None).unwrap().0, 0),
            _ => assert_eq!(os.wait_next_n(1, None).unwrap()[0].qt, sent),
        }
        assert!(control.polls() > polls, "round {round}: the wait did not poll");
        // From here on polls deliver nothing: the pop is done only if the
        // wait above delivered it.
        control.hold();
        let got = os.wait(pop, Some(Duration::ZERO));
        assert!(got.is_ok(), "round {round}: the pop stayed pending: {got:?}");
        assert_eq!(popped(got.unwrap()).0, b"for b");
        control.release();
    }
}

#[test]
fn close_cancels_pending_operations_once_and_nothing_follows() {
    let (os, control) = loopback();
    let (c, s, l) = stream_pair(&os);
    let pop = os.pop(c).unwrap();
    let acc = os.accept(l).unwrap();
    let d = os.socket(SockType::Stream).unwrap();
    control.hold();
    let conn = os.connect(d, addr("10.0.0.9:80")).unwrap();
    assert_eq!(errno(os.connect(d, addr("10.0.0.9:80"))), libc::EALREADY, "the held connect is in progress");
    os.close(c).unwrap();
    os.close(l).unwrap();
    os.close(d).unwrap();
    // Still held: the cancellations came from the closes, not a later poll.
    let results = os.wait_next_n(8, Some(Duration::ZERO)).unwrap();
    let got: Vec<(QToken, i32)> = results.iter().map(|r| (r.qt, r.errno())).collect();
    assert_eq!(got, [(pop, libc::ECANCELED), (acc, libc::ECANCELED), (conn, libc::ECANCELED)]);
    assert_eq!((results[0].qd, results[1].qd, results[2].qd), (c, l, d), "each result names its descriptor");
    control.release();
    assert_eq!(errno(os.wait_next_n(8, Some(Duration::from_millis(5)))), libc::ETIMEDOUT, "nothing follows");
    for qt in [pop, acc, conn] {
        assert_eq!(errno(os.wait(qt, Some(Duration::ZERO))), libc::EINVAL, "a cancelled token is consumed");
    }
    // The closed client's peer sees end of file.
    assert_eq!(popped(done(&os, os.pop(s).unwrap())).0, b"");
}

#[test]
fn wait_next_n_takes_at_most_n_in_completion_order() {
    let (os, _) = loopback();
    let (a, _) = bound(&os, "10.0.0.1:1");
    let ((b, ba), (c, ca)) = (bound(&os, "10.0.0.2:2"), bound(&os, "10.0.0.3:3"));
    assert_eq!(errno(os.wait_next_n(0, None)), libc::EINVAL, "max 0");
    let pb = os.pop(b).unwrap();
    let pc = os.pop(c).unwrap();
    // Poll once with both pops pending and nothing to deliver.
    assert_eq!(errno(os.wait(pb, Some(Duration::ZERO))), libc::ETIMEDOUT);
    // c's datagram goes first, so c's pop finishes before b's although it
    // was issued after it.
    let msg = os.buffer_from(b"m").unwrap();
    let to_c = os.pushto(a, &msg, ca).unwrap();
    let to_b = os.pushto(a, &msg, ba).unwrap();
    let first: Vec<QToken> = os.wait_next_n(3, None).unwrap().iter().map(|r| r.qt).collect();
    assert_eq!(first, [to_c, to_b, pc]);
    let rest: Vec<QToken> = os.wait_next_n(8, None).unwrap().iter().map(|r| r.qt).collect();
    assert_eq!(rest, [pb]);
    assert_eq!(errno(os.wait_next_n(1, Some(Duration::ZERO))), libc::ETIMEDOUT);
    // A token a targeted wait took is not returned again.
    let p1 = os.pushto(a, &msg, ca).unwrap();
    let p2 = os.pushto(a, &msg, ca).unwrap();
    done(&os, p1);
    let next: Vec<QToken> = os.wait_next_n(8, None).unwrap().iter().map(|r| r.qt).collect();
    assert_eq!(next, [p2]);
}

#[test]
fn wait_any_returns_the_index_of_the_token_it_took() {
    let (os, control) = loopback();
    let (a, _) = bound(&os, "10.0.0.1:1");
    let ((x, _), (y, ya), (z, za)) = (bound(&os, "10.0.0.2:2"), bound(&os, "10.0.0.3:3"), bound(&os, "10.0.0.4:4"));
    assert_eq!(errno(os.wait_any(&[], None)), libc::EINVAL, "no tokens");
    let tokens = [os.pop(x).unwrap(), os.pop(y).unwrap(), os.pop(z).unwrap()];
    assert_eq!(errno(os.wait_any(&tokens, Some(Duration::from_millis(5)))), libc::ETIMEDOUT);
    let msg = os.buffer_from(b"m").unwrap();
    done(&os, os.pushto(a, &msg, za).unwrap());
    let (i, r) = os.wait_any(&tokens, None).unwrap();
    assert_eq!((i, r.qt, r.qd), (2, tokens[2], z));
    // Held back, the push stays pending: wait_any finds the pop instead.
    done(&os, os.pushto(a, &msg, ya).unwrap());
    control.hold();
    let held = os.pushto(a, &msg, za).unwrap();
    let (i, r) = os.wait_any(&[held, tokens[1]], None).unwrap();
    assert_eq!((i, r.qt), (1, tokens[1]));
    control.release();
    assert_eq!(os.wait_any(&[tokens[0], held], None).unwrap().0, 1);
    assert_eq!(errno(os.wait(tokens[0], Some(Duration::ZERO))), libc::ETIMEDOUT, "x's pop is still pending");
}

#[test]
fn a_timed_out_wait_leaves_the_operation_pending() {
    let (os, control) = loopback();
    let ((a, _), (b, ba)) = (bound(&os, "10.0.0.1:1"), bound(&os, "10.0.0.2:2"));
    let pop = os.pop(b).unwrap();
    assert_eq!(errno(os.wait(pop, Some(Duration::ZERO))), libc::ETIMEDOUT);
    let t0 = Instant::now();
    assert_eq!(errno(os.wait(pop, Some(Duration::from_millis(20)))), libc::ETIMEDOUT);
    assert!(t0.elapsed() >= Duration::from_millis(20), "the timeout is honoured");
    // A held push times out too, and finishes once released.
    control.hold();
    let msg = os.buffer_from(b"late").unwrap();
    let sent = os.pushto(a, &msg, ba).unwrap();
    assert_eq!(errno(os.wait(sent, Some(Duration::from_millis(5)))), libc::ETIMEDOUT);
    assert_eq!(errno(os.wait_next_n(4, Some(Duration::from_millis(5)))), libc::ETIMEDOUT);
    control.release();
    assert!(matches!(done(&os, sent).value, QValue::Push));
    let r = done(&os, pop);
    assert_eq!((r.qt, r.qd), (pop, b));
    assert_eq!(popped(r).0, b"late");
}

#[test]
fn descriptors_are_checked_and_reused_oldest_first() {
    let (os, _) = loopback();
    let msg = os.buffer_from(b"x").unwrap();
    let (a, _) = bound(&os, "10.0.0.1:1");
    let b = os.socket(SockType::Stream).unwrap();
    assert_eq!((a, b), (1, 2), "descriptor 0 is never handed out");
    os.close(a).unwrap();
    for qd in [0, -1, a, 999] {
        assert_eq!(errno(os.bind(qd, addr("10.0.0.5:5"))), libc::EBADF, "bind {qd}");
        assert_eq!(errno(os.listen(qd, 1)), libc::EBADF, "listen {qd}");
        assert_eq!(errno(os.accept(qd)), libc::EBADF, "accept {qd}");
        assert_eq!(errno(os.connect(qd, addr("10.0.0.5:5"))), libc::EBADF, "connect {qd}");
        assert_eq!(errno(os.pushto(qd, &msg, addr("10.0.0.5:5"))), libc::EBADF, "pushto {qd}");
        assert_eq!(errno(os.pop(qd)), libc::EBADF, "pop {qd}");
        assert_eq!(errno(os.peer_addr(qd)), libc::EBADF, "peer_addr {qd}");
        assert_eq!(errno(os.close(qd)), libc::EBADF, "close {qd}");
    }
    // A refused call leaves no token behind.
    assert_eq!(errno(os.wait_next_n(1, Some(Duration::ZERO))), libc::ETIMEDOUT);
    os.close(b).unwrap();
    assert_eq!(os.socket(SockType::Datagram).unwrap(), a, "the oldest freed number comes back first");
    // The closed socket's address is free again.
    assert_eq!(bound(&os, "10.0.0.1:1").0, b);
}

#[test]
fn a_connected_datagram_socket_pushes_to_its_default_peer() {
    let (os, _) = loopback();
    let ((a, aa), (b, ba), (c, ca)) = (bound(&os, "10.0.0.1:1"), bound(&os, "10.0.0.2:2"), bound(&os, "10.0.0.3:3"));
    let msg = os.buffer_from(b"hi").unwrap();
    assert_eq!(errno(os.push(a, &msg)), libc::EDESTADDRREQ, "no default peer yet");
    assert_eq!(errno(os.peer_addr(a)), libc::ENOTCONN);
    assert!(matches!(done(&os, os.connect(a, ba).unwrap()).value, QValue::Connect));
    assert_eq!(os.peer_addr(a).unwrap(), ba);
    done(&os, os.push(a, &msg).unwrap());
    assert_eq!(popped(done(&os, os.pop(b).unwrap())), (b"hi".to_vec(), Some(aa)));
    // pushto still names its own destination.
    done(&os, os.pushto(a, &msg, ca).unwrap());
    assert_eq!(popped(done(&os, os.pop(c).unwrap())), (b"hi".to_vec(), Some(aa)));
    // Connecting again moves the default peer.
    done(&os, os.connect(a, ca).unwrap());
    done(&os, os.push(a, &msg).unwrap());
    assert_eq!(popped(done(&os, os.pop(c).unwrap())).1, Some(aa));
    assert_eq!(errno(os.wait(os.pop(b).unwrap(), Some(Duration::ZERO))), libc::ETIMEDOUT, "b got nothing more");
}

#[test]
fn a_datagram_to_nobody_is_pushed_and_dropped() {
    let (os, control) = loopback();
    let a = os.socket(SockType::Datagram).unwrap();
    let (b, ba) = bound(&os, "10.0.0.2:2");
    let msg = os.buffer_from(b"lost").unwrap();
    assert!(matches!(done(&os, os.pushto(a, &msg, addr("10.9.9.9:9")).unwrap()).value, QValue::Push));
    assert_eq!(control.dropped(), 1);
    // The unbound sender got an ephemeral address, which its receiver sees.
    done(&os, os.pushto(a, &msg, ba).unwrap());
    let (_, from) = popped(done(&os, os.pop(b).unwrap()));
    let from = from.expect("a datagram names its sender");
    assert_eq!((*from.ip(), from.port() >= 49152), (std::net::Ipv4Addr::LOCALHOST, true));
    assert_eq!(control.dropped(), 1);
    // And can be answered there.
    done(&os, os.pushto(b, &msg, from).unwrap());
    assert_eq!(popped(done(&os, os.pop(a).unwrap())), (b"lost".to_vec(), Some(ba)));
}

#[test]
fn a_stream_carries_each_push_as_one_pop_then_end_of_file() {
    let (os, _) = loopback();
    let (c, s, _l) = stream_pair(&os);
    let client = os.peer_addr(s).unwrap();
    assert_eq!(os.peer_addr(c).unwrap(), addr("10.0.0.9:80"));
    let (one, two) = (os.buffer_from(b"one").unwrap(), os.buffer_from(b"two").unwrap());
    done(&os, os.push(c, &one).unwrap());
    done(&os, os.push(c, &two).unwrap());
    assert_eq!(popped(done(&os, os.pop(s).unwrap())), (b"one".to_vec(), None));
    assert_eq!(popped(done(&os, os.pop(s).unwrap())).0, b"two");
    done(&os, os.push(s, &one).unwrap());
    assert_eq!(popped(done(&os, os.pop(c).unwrap())).0, b"one");
    // A pop pending when the peer closes ends with end of file; so does
    // every later one, and pushes to the closed peer fail.
    let pending = os.pop(s).unwrap();
    os.close(c).unwrap();
    assert_eq!(popped(done(&os, pending)).0, b"");
    assert_eq!(popped(done(&os, os.pop(s).unwrap())).0, b"");
    assert_eq!(done(&os, os.push(s, &one).unwrap()).errno(), libc::EPIPE);
    assert_eq!(os.peer_addr(s).unwrap(), client, "the peer's address outlives the peer");
}

#[test]
fn a_refused_connect_leaves_the_socket_unconnected() {
    let (os, _) = loopback();
    let c = os.socket(SockType::Stream).unwrap();
    assert_eq!(done(&os, os.connect(c, addr("10.0.0.9:80")).unwrap()).errno(), libc::ECONNREFUSED);
    let msg = os.buffer_from(b"x").unwrap();
    assert_eq!(errno(os.push(c, &msg)), libc::ENOTCONN);
    // A listener with a full backlog refuses too; accepting makes room.
    let l = os.socket(SockType::Stream).unwrap();
    os.bind(l, addr("10.0.0.9:80")).unwrap();
    os.listen(l, 1).unwrap();
    assert!(matches!(done(&os, os.connect(c, addr("10.0.0.9:80")).unwrap()).value, QValue::Connect));
    let d = os.socket(SockType::Stream).unwrap();
    assert_eq!(done(&os, os.connect(d, addr("10.0.0.9:80")).unwrap()).errno(), libc::ECONNREFUSED);
    assert!(matches!(done(&os, os.accept(l).unwrap()).value, QValue::Accept { .. }));
    assert!(matches!(done(&os, os.connect(d, addr("10.0.0.9:80")).unwrap()).value, QValue::Connect));
}

/// After the spin time, a waiter on a device with no descriptor to sleep on
/// (the loopback here, DPDK's ports in catnip) pauses between polls, the
/// pauses growing to `Config::poll_sleep`, instead of polling flat out; it
/// still honours its timeout. `poll_sleep` zero polls flat out.
#[test]
fn an_idle_waiter_on_a_device_without_a_descriptor_pauses_between_polls() {
    let polls_in = |os: &LibOs, control: &LoopbackControl, at: &str| {
        let (qd, _) = bound(os, at);
        let pop = os.pop(qd).unwrap();
        let (before, t0) = (control.polls(), Instant::now());
        assert_eq!(errno(os.wait(pop, Some(Duration::from_millis(300)))), libc::ETIMEDOUT);
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "took {took:?}");
        control.polls() - before
    };
    let (os, control) = loopback();
    let paused = polls_in(&os, &control, "10.0.0.1:1");
    let device = Loopback::new();
    let control = device.control();
    let os = LibOs::with_engine(Engine::new(Box::new(device)), Duration::ZERO).with_poll_sleep(Duration::ZERO);
    let flat = polls_in(&os, &control, "10.0.0.1:1");
    // With pauses: flat out for the first 1 ms only, then 10 µs doubling to
    // 1 ms, a few hundred polls; flat out: 300 ms of polling.
    eprintln!("{flat} polls in 300 ms flat out, {paused} with pauses");
    assert!(flat > 10 * paused, "{flat} polls in 300 ms flat out, {paused} with pauses");
}

#[test]
fn shutdown_marks_are_the_engines_and_the_peer_sees_end_of_file() {
    let (os, _) = loopback();
    let (c, s, l) = stream_pair(&os);
    assert_eq!(errno(os.shutdown(l, std::net::Shutdown::Write)), libc::ENOTCONN, "a listener is not connected");
    let pending = os.pop(s).unwrap();
    os.shutdown(c, std::net::Shutdown::Write).unwrap();
    // The peer's pending pop ends with end of file; the client cannot push.
    assert_eq!(popped(done(&os, pending)).0, b"");
    assert_eq!(errno(os.push(c, &os.buffer_from(b"x").unwrap())), libc::EPIPE);
    // The server still pushes to the client.
    done(&os, os.push(s, &os.buffer_from(b"back").unwrap()).unwrap());
    assert_eq!(popped(done(&os, os.pop(c).unwrap())).0, b"back");
    // SHUT_RD: the engine answers pops itself, at once, with end of file.
    os.shutdown(c, std::net::Shutdown::Read).unwrap();
    let qt = os.pop(c).unwrap();
    assert!(os
        .wait(qt, Some(Duration::ZERO))
        .is_ok_and(|r| matches!(&r.value, QValue::Pop { buf, .. } if buf.is_empty())));
    // A datagram socket needs a default peer.
    let (u, _) = bound(&os, "10.0.0.1:5");
    assert_eq!(errno(os.shutdown(u, std::net::Shutdown::Both)), libc::ENOTCONN);
    done(&os, os.connect(u, addr("10.0.0.2:6")).unwrap());
    os.shutdown(u, std::net::Shutdown::Both).unwrap();
    assert_eq!(errno(os.pushto(u, &os.buffer_from(b"x").unwrap(), addr("10.0.0.2:6"))), libc::EPIPE);
}

#[test]
fn a_connect_without_bind_learns_its_local_address() {
    let (os, _) = loopback();
    let (c, s, _) = stream_pair(&os);
    let local = os.local_addr(c).unwrap().expect("the connect bound the client");
    assert_ne!(local.port(), 0);
    assert_eq!(os.peer_addr(s).unwrap(), local);
    assert_eq!(os.local_addr(s).unwrap(), Some(addr("10.0.0.9:80")));
}
