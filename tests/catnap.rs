//! catnap over loopback: TCP and UDP data paths, options, and the engine's
//! waiting rules, through the safe Rust API.

mod common;
use common::*;
use demi::{QValue, SockType};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

#[test]
fn tcp_ping_pong_carries_bytes_both_ways() {
    let os = libos();
    let (c, s, _) = stream_pair(&os);
    for round in 0..50u8 {
        let msg = pattern(64 + round as usize, round);
        push_all(&os, c, &msg);
        let got = pop_exact(&os, s, msg.len());
        assert_eq!(got, msg);
        push_all(&os, s, &got);
        assert_eq!(pop_exact(&os, c, msg.len()), msg);
    }
}

#[test]
fn tcp_one_mebibyte_message_arrives_intact() {
    let os = libos();
    let (c, s, _) = stream_pair(&os);
    let msg = pattern(1 << 20, 7);
    let b = buf(&os, &msg);
    let push = os.push(c, &b).unwrap();
    drop(b); // free-protection: the push keeps the memory alive
             // Pop concurrently with the push in flight (the kernel buffers less than 1 MiB).
    let got = pop_exact(&os, s, msg.len());
    assert!(matches!(wait_ok(&os, push).value, QValue::Push));
    assert!(got == msg, "1 MiB payload corrupted");
}

#[test]
fn pushes_on_one_socket_stay_in_order() {
    let os = libos();
    let (c, s, _) = stream_pair(&os);
    let msgs: Vec<Vec<u8>> = (0..20).map(|i| pattern(100_000, i)).collect();
    let qts: Vec<_> = msgs.iter().map(|m| os.push(c, &buf(&os, m)).unwrap()).collect();
    let all: Vec<u8> = msgs.concat();
    assert!(pop_exact(&os, s, all.len()) == all, "stream reordered or corrupted");
    for qt in qts {
        wait_ok(&os, qt);
    }
}

#[test]
fn peer_close_gives_end_of_file() {
    let os = libos();
    let (c, s, _) = stream_pair(&os);
    let pending = os.pop(s).unwrap();
    os.close(c).unwrap();
    match wait_ok(&os, pending).value {
        QValue::Pop { buf, .. } => assert!(buf.is_empty(), "EOF is a zero-length pop"),
        v => panic!("{v:?}"),
    }
    // And every later pop is EOF too.
    let (again, _) = pop_bytes(&os, s);
    assert!(again.is_empty());
}

#[test]
fn close_cancels_pending_operations() {
    let os = libos();
    let (c, _s, l) = stream_pair(&os);
    let pop = os.pop(c).unwrap();
    let acc = os.accept(l).unwrap();
    os.close(c).unwrap();
    os.close(l).unwrap();
    assert_eq!(wait(&os, pop).errno(), libc::ECANCELED);
    assert_eq!(wait(&os, acc).errno(), libc::ECANCELED);
    assert_eq!(os.close(c).unwrap_err().errno(), libc::EBADF);
}

#[test]
fn connect_without_listener_fails_with_econnrefused() {
    let os = libos();
    // Find a free port: bind, read it, close.
    let (l, addr) = listener(&os);
    os.close(l).unwrap();
    let c = os.socket(SockType::Stream).unwrap();
    let r = wait(&os, os.connect(c, addr).unwrap());
    assert_eq!(r.errno(), libc::ECONNREFUSED, "{:?}", r.value);
    // The failed socket is not connected.
    assert_eq!(os.push(c, &buf(&os, b"x")).unwrap_err().errno(), libc::ENOTCONN);
}

#[test]
fn connect_state_errors() {
    let os = libos();
    let (c, _s, l) = stream_pair(&os);
    let (_, addr) = listener(&os);
    assert_eq!(os.connect(c, addr).unwrap_err().errno(), libc::EISCONN);
    assert_eq!(os.connect(l, addr).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(os.connect(9999, addr).unwrap_err().errno(), libc::EBADF);
}

#[test]
fn connect_in_progress_gives_ealready() {
    let os = libos();
    // A listener that never accepts and has a full backlog leaves new
    // connects in SYN_SENT, which keeps ours in progress.
    let (l, addr) = listener(&os);
    os.listen(l, 1).unwrap();
    let mut fillers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = os.socket(SockType::Stream).unwrap();
        let qt = os.connect(c, addr).unwrap();
        match os.wait(qt, Some(Duration::from_millis(100))) {
            Ok(_) => fillers.push(c),
            Err(e) => {
                assert_eq!(e.errno(), libc::ETIMEDOUT);
                assert_eq!(os.connect(c, addr).unwrap_err().errno(), libc::EALREADY);
                os.close(c).unwrap();
                assert_eq!(wait(&os, qt).errno(), libc::ECANCELED);
                break;
            }
        }
        assert!(Instant::now() < deadline, "backlog never filled");
    }
}

/// A datagram socket bound to a free port, and its address.
fn bound_udp(os: &demi::LibOs) -> (demi::QDesc, SocketAddrV4) {
    let qd = os.socket(SockType::Datagram).unwrap();
    os.bind(qd, any_port()).unwrap();
    (qd, os.local_addr(qd).unwrap().unwrap())
}

#[test]
fn udp_pushto_and_pop_report_the_sender() {
    let os = libos();
    let ((a, aa), (b, ba)) = (bound_udp(&os), bound_udp(&os));
    let msg = pattern(1000, 3);
    wait_ok(&os, os.pushto(a, &buf(&os, &msg), ba).unwrap());
    let (got, from) = pop_bytes(&os, b);
    assert_eq!(got, msg);
    assert_eq!(from, Some(aa));
    // Push without a default peer is refused; connect sets one.
    assert_eq!(os.push(b, &buf(&os, b"x")).unwrap_err().errno(), libc::EDESTADDRREQ);
    wait_ok(&os, os.connect(b, aa).unwrap());
    wait_ok(&os, os.push(b, &buf(&os, b"reply")).unwrap());
    let (got, from) = pop_bytes(&os, a);
    assert_eq!((got.as_slice(), from), (&b"reply"[..], Some(ba)));
}

#[test]
fn udp_largest_datagram_and_emsgsize() {
    let os = libos();
    let a = os.socket(SockType::Datagram).unwrap();
    os.bind(a, any_port()).unwrap();
    let to = os.local_addr(a).unwrap().unwrap();
    // The limit depends on the libOS (65507 on catnap, the path MTU on RDMA).
    let max = os.max_datagram(a).unwrap();
    assert!(max >= 1000, "max datagram {max}");
    let big = pattern(max, 9);
    wait_ok(&os, os.pushto(a, &buf(&os, &big), to).unwrap());
    assert_eq!(pop_bytes(&os, a).0, big);
    let r = wait(&os, os.pushto(a, &buf(&os, &pattern(max + 1, 1)), to).unwrap());
    assert_eq!(r.errno(), libc::EMSGSIZE);
    let t = os.socket(SockType::Stream).unwrap();
    assert_eq!(os.max_datagram(t).unwrap_err().errno(), libc::EINVAL);
}

#[test]
fn bind_errors() {
    let os = libos();
    let (l, addr) = listener(&os);
    assert_eq!(os.bind(l, any_port()).unwrap_err().errno(), libc::EINVAL);
    let other = os.socket(SockType::Stream).unwrap();
    assert_eq!(os.bind(other, addr).unwrap_err().errno(), libc::EADDRINUSE);
}

#[test]
fn socket_options_round_trip() {
    let os = libos();
    let (c, _s, _) = stream_pair(&os);
    let one = 1i32.to_ne_bytes();
    os.setsockopt(c, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one).unwrap();
    let mut v = [0u8; 4];
    assert_eq!(os.getsockopt(c, libc::IPPROTO_TCP, libc::TCP_NODELAY, &mut v).unwrap(), 4);
    assert_ne!(i32::from_ne_bytes(v), 0);
    os.setsockopt(c, libc::SOL_SOCKET, libc::SO_SNDBUF, &(1i32 << 16).to_ne_bytes()).unwrap();
    os.getsockopt(c, libc::SOL_SOCKET, libc::SO_SNDBUF, &mut v).unwrap();
    assert!(i32::from_ne_bytes(v) >= 1 << 16, "kernel doubles SO_SNDBUF");
    let linger = [1i32.to_ne_bytes(), 0i32.to_ne_bytes()].concat();
    os.setsockopt(c, libc::SOL_SOCKET, libc::SO_LINGER, &linger).unwrap();
    let mut l = [0u8; 8];
    assert_eq!(os.getsockopt(c, libc::SOL_SOCKET, libc::SO_LINGER, &mut l).unwrap(), 8);
    assert_eq!(&l[..4], &1i32.to_ne_bytes());
    let u = os.socket(SockType::Datagram).unwrap();
    os.setsockopt(u, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one).unwrap();
    os.getsockopt(u, libc::SOL_SOCKET, libc::SO_REUSEADDR, &mut v).unwrap();
    assert_eq!(i32::from_ne_bytes(v), 1);
    assert_eq!(os.setsockopt(u, 12345, 1, &one).unwrap_err().errno(), libc::ENOPROTOOPT);
}

#[test]
fn peer_address_of_connected_sockets() {
    let os = libos();
    let (c, s, l) = stream_pair(&os);
    let server_addr = os.local_addr(l).unwrap().unwrap();
    assert_eq!(os.peer_addr(c).unwrap(), server_addr);
    let client_peer = os.peer_addr(s).unwrap();
    assert_eq!(*client_peer.ip(), test_ip());
    assert_eq!(os.peer_addr(l).unwrap_err().errno(), libc::ENOTCONN);
}

#[test]
fn timed_out_wait_leaves_the_operation_pending() {
    let os = libos();
    let (c, s, _) = stream_pair(&os);
    let pop = os.pop(s).unwrap();
    assert_eq!(os.wait(pop, Some(Duration::ZERO)).unwrap_err().errno(), libc::ETIMEDOUT);
    let t0 = Instant::now();
    assert_eq!(os.wait(pop, Some(Duration::from_millis(50))).unwrap_err().errno(), libc::ETIMEDOUT);
    assert!(t0.elapsed() >= Duration::from_millis(50), "timeout honoured");
    push_all(&os, c, b"late");
    let r = wait_ok(&os, pop);
    assert!(matches!(r.value, QValue::Pop { ref buf, .. } if buf.as_slice() == b"late"));
    assert_eq!(r.qd, s);
    assert_eq!(r.qt, pop);
}

#[test]
fn consumed_and_forged_tokens_are_refused() {
    let os = libos();
    let (c, s, _) = stream_pair(&os);
    let qt = os.push(c, &buf(&os, b"x")).unwrap();
    wait_ok(&os, qt);
    assert_eq!(os.wait(qt, Some(LONG)).unwrap_err().errno(), libc::EINVAL, "consumed token");
    // A new operation reusing the slot must not answer for the old token.
    let qt2 = os.pop(s).unwrap();
    assert_ne!(qt, qt2);
    assert_eq!(os.wait(qt, Some(Duration::ZERO)).unwrap_err().errno(), libc::EINVAL);
    for forged in [0u64, u64::MAX, qt2 ^ (1 << 40), qt2 + 1] {
        assert_eq!(os.wait(forged, None).unwrap_err().errno(), libc::EINVAL, "{forged:#x}");
    }
    wait_ok(&os, qt2);
}

#[test]
fn wait_any_and_wait_next_n() {
    let os = libos();
    let (c, s, _) = stream_pair(&os);
    let idle = os.pop(c).unwrap();
    let busy = os.pop(s).unwrap();
    push_all(&os, c, b"ping");
    let (i, r) = os.wait_any(&[idle, busy], Some(LONG)).unwrap();
    assert_eq!((i, r.qt), (1, busy));
    assert_eq!(os.wait_any(&[], None).unwrap_err().errno(), libc::EINVAL);
    // wait_next_n returns finished operations in completion order.
    let p1 = os.push(s, &buf(&os, b"a")).unwrap();
    let p2 = os.push(s, &buf(&os, b"b")).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        for r in os.wait_next_n(8, Some(LONG)).unwrap() {
            seen.push(r.qt);
        }
    }
    assert_eq!(seen.len(), 3);
    assert!(seen.contains(&p1) && seen.contains(&p2) && seen.contains(&idle));
    assert!(seen.iter().position(|&q| q == p1) < seen.iter().position(|&q| q == p2));
    assert_eq!(os.wait_next_n(1, Some(Duration::ZERO)).unwrap_err().errno(), libc::ETIMEDOUT);
}

#[test]
fn idle_waiter_sleeps_instead_of_spinning() {
    let os = libos();
    let (_c, s, _) = stream_pair(&os);
    let pop = os.pop(s).unwrap();
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    assert_eq!(os.wait(pop, Some(Duration::from_millis(300))).unwrap_err().errno(), libc::ETIMEDOUT);
    let wall = t0.elapsed();
    let cpu = cpu_time() - cpu0;
    assert!(cpu < wall / 4, "waiter burned {cpu:?} of CPU in {wall:?}");
}

fn cpu_time() -> Duration {
    // SAFETY: rusage is plain integers, so all-zero is valid, and the kernel fills it.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[test]
fn a_waiter_in_another_thread_is_woken() {
    let os = libos();
    let (c, s, _) = stream_pair(&os);
    let pop = os.pop(s).unwrap();
    let os2 = os.clone();
    let waiter = std::thread::spawn(move || {
        let r = os2.wait(pop, Some(LONG)).unwrap();
        match r.value {
            QValue::Pop { buf, .. } => buf.as_slice().to_vec(),
            v => panic!("{v:?}"),
        }
    });
    // Let the waiter fall asleep, then complete its pop from this thread.
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    push_all(&os, c, b"wake up");
    assert_eq!(waiter.join().unwrap(), b"wake up");
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn many_threads_share_one_libos() {
    let os = libos();
    let (lqd, addr) = listener(&os);
    let server = {
        let os = os.clone();
        std::thread::spawn(move || {
            for _ in 0..4 {
                let QValue::Accept { qd, .. } = wait_ok(&os, os.accept(lqd).unwrap()).value else { panic!() };
                let os = os.clone();
                std::thread::spawn(move || loop {
                    let (b, _) = pop_bytes(&os, qd);
                    if b.is_empty() {
                        break;
                    }
                    push_all(&os, qd, &b);
                });
            }
        })
    };
    let clients: Vec<_> = (0..4u8)
        .map(|i| {
            let os = os.clone();
            std::thread::spawn(move || {
                let c = os.socket(SockType::Stream).unwrap();
                wait_ok(&os, os.connect(c, addr).unwrap());
                for j in 0..100u8 {
                    let m = pattern(32, i ^ j);
                    push_all(&os, c, &m);
                    assert_eq!(pop_exact(&os, c, 32), m);
                }
                os.close(c).unwrap();
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    server.join().unwrap();
}

#[test]
fn bad_arguments_are_refused() {
    let os = libos();
    let u = os.socket(SockType::Datagram).unwrap();
    assert_eq!(os.socket_raw(libc::AF_INET6, libc::SOCK_STREAM, 0).unwrap_err().errno(), libc::EAFNOSUPPORT);
    assert_eq!(os.socket_raw(libc::AF_INET, libc::SOCK_RAW, 0).unwrap_err().errno(), libc::EPROTONOSUPPORT);
    assert_eq!(
        os.socket_raw(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_UDP).unwrap_err().errno(),
        libc::EPROTONOSUPPORT
    );
    assert_eq!(os.sgaalloc(0).unwrap_err().errno(), libc::EINVAL);
    let to: SocketAddrV4 = "127.0.0.1:9".parse().unwrap();
    let empty = demi::Buffer::heap(0);
    assert_eq!(os.pushto(u, &empty, to).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(os.pushto(777, &buf(&os, b"x"), to).unwrap_err().errno(), libc::EBADF);
    let zero_port = SocketAddrV4::new(test_ip(), 0);
    assert_eq!(os.pushto(u, &buf(&os, b"x"), zero_port).unwrap_err().errno(), libc::EINVAL);
    let zero_ip: SocketAddrV4 = "0.0.0.0:9".parse().unwrap();
    assert_eq!(os.pushto(u, &buf(&os, b"x"), zero_ip).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(os.listen(u, 1).unwrap_err().errno(), libc::EOPNOTSUPP);
    assert_eq!(os.accept(u).unwrap_err().errno(), libc::EOPNOTSUPP);
    let t = os.socket(SockType::Stream).unwrap();
    assert_eq!(os.pop(t).unwrap_err().errno(), libc::ENOTCONN);
    assert_eq!(os.listen(t, 1).unwrap_err().errno(), libc::EDESTADDRREQ);
    assert_eq!(os.connect(t, "0.0.0.0:80".parse().unwrap()).unwrap_err().errno(), libc::EINVAL);
}

#[test]
fn unknown_libos_is_refused_with_the_names() {
    let e = demi::LibOs::new("catfish").unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(e.why().contains("catnap"), "message lists the built libOSes: {e}");
}

/// A wait that finds its token finished must still move the device: a loop
/// whose every wait has a finished push (catnap completes UDP pushes at once)
/// still sees its pending pop complete.
#[test]
fn a_wait_with_a_finished_token_still_moves_the_device() {
    let os = libos();
    let ((a, aa), (b, ba)) = (bound_udp(&os), bound_udp(&os));
    // The pop finds nothing now; the datagram arrives after it was issued.
    let pop = os.pop(a).unwrap();
    let sent = os.pushto(b, &buf(&os, b"for a"), aa).unwrap();
    wait_ok(&os, sent);
    // Rounds are quick; the bound is time (an RDMA datagram takes a while).
    let end = Instant::now() + Duration::from_secs(5);
    let mut round = 0;
    while Instant::now() < end {
        round += 1;
        let push = os.pushto(a, &buf(&os, b"noise"), ba).unwrap();
        // Alternate the two waits that take whatever finished first.
        let done: Vec<_> = if round % 2 == 0 {
            let (_, r) = os.wait_any(&[pop, push], Some(Duration::from_millis(10))).unwrap();
            vec![r]
        } else {
            os.wait_next_n(4, Some(Duration::from_millis(10))).unwrap()
        };
        let mut push_taken = false;
        for r in done {
            if r.qt == pop {
                let QValue::Pop { buf, from } = r.value else { panic!("{:?}", r.value) };
                assert_eq!((buf.as_slice(), from), (&b"for a"[..], Some(ba)));
                return;
            }
            assert_eq!(r.qt, push, "nothing else is pending");
            push_taken = true;
        }
        // The push itself may still be pending (catmint): take it here.
        if !push_taken {
            wait_ok(&os, push);
        }
    }
    panic!("the pop stayed pending through {round} waits that each found a finished push");
}
