//! catnap against kernel-socket peers that misbehave: the rules of
//! README.md's "Rules of the C ABI" for a connection that is reset.
//! (catmint's side of the same rule is tests/rdma.rs, whose peer is killed.)

mod common;
use common::*;
use demi::{LibOs, QDesc, QToken, QValue};
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

fn catnap() -> LibOs {
    demi::init_logging();
    LibOs::new("catnap").expect("catnap starts")
}

/// A demi stream connected to a kernel socket that we can reset at will.
fn connected_to_kernel(os: &LibOs) -> (QDesc, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let qd = os.socket(demi::SockType::Stream).unwrap();
    let qt = os
        .connect(
            qd,
            match l.local_addr().unwrap() {
                std::net::SocketAddr::V4(a) => a,
                a => panic!("{a}"),
            },
        )
        .unwrap();
    let (peer, _) = l.accept().unwrap();
    wait_ok(os, qt);
    (qd, peer)
}

/// Closes `s` with SO_LINGER {on, 0}: the kernel sends RST, not FIN.
fn reset(s: TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a live socket and a live linger struct of the size given.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    drop(s);
}

fn errno_of(os: &LibOs, qt: QToken) -> i32 {
    match wait(os, qt).value {
        QValue::Failed(e) => e,
        v => panic!("expected a failure, got {v:?}"),
    }
}

/// A push that cannot finish (the peer reads nothing) and a pop are both
/// pending when the peer resets: both fail with ECONNRESET, neither reports
/// end of file, and so does every later push and pop.
#[test]
fn a_reset_fails_pending_push_and_pop_with_econnreset() {
    let os = catnap();
    let (qd, mut peer) = connected_to_kernel(&os);
    // Fill the peer's receive buffer and ours: 16 MiB is far more than both.
    let big = buf(&os, &pattern(16 << 20, 5));
    let push = os.push(qd, &big).unwrap();
    let pop = os.pop(qd).unwrap();
    assert_eq!(os.wait(push, Some(Duration::from_millis(200))).unwrap_err().errno(), libc::ETIMEDOUT);
    // The peer reads a little (so the reset also races real traffic), then resets.
    let mut some = [0u8; 4096];
    peer.read_exact(&mut some).unwrap();
    reset(peer);
    assert_eq!(errno_of(&os, pop), libc::ECONNRESET, "the pending pop");
    assert_eq!(errno_of(&os, push), libc::ECONNRESET, "the pending push");
    for _ in 0..3 {
        assert_eq!(errno_of(&os, os.push(qd, &buf(&os, b"later")).unwrap()), libc::ECONNRESET, "a later push");
        assert_eq!(errno_of(&os, os.pop(qd).unwrap()), libc::ECONNRESET, "a later pop");
    }
    os.close(qd).unwrap();
}

/// The same with only a pop pending, and with nothing pending at all when
/// the reset arrives (the first later call meets the kernel's error).
#[test]
fn a_reset_is_reported_to_every_later_operation() {
    let os = catnap();
    let (qd, peer) = connected_to_kernel(&os);
    let pop = os.pop(qd).unwrap();
    reset(peer);
    assert_eq!(errno_of(&os, pop), libc::ECONNRESET);
    assert_eq!(errno_of(&os, os.push(qd, &buf(&os, b"x")).unwrap()), libc::ECONNRESET);

    let (qd2, peer) = connected_to_kernel(&os);
    reset(peer);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(errno_of(&os, os.push(qd2, &buf(&os, b"x")).unwrap()), libc::ECONNRESET);
    assert_eq!(errno_of(&os, os.pop(qd2).unwrap()), libc::ECONNRESET);
    assert_eq!(errno_of(&os, os.push(qd2, &buf(&os, b"x")).unwrap()), libc::ECONNRESET, "not EPIPE");
    // Other connections are untouched.
    let (qd3, mut peer3) = connected_to_kernel(&os);
    push_all(&os, qd3, b"still fine");
    let mut got = [0u8; 10];
    peer3.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still fine");
}

/// An orderly close is end of file for pops, never a reset.
#[test]
fn an_orderly_close_is_end_of_file() {
    let os = catnap();
    let (qd, peer) = connected_to_kernel(&os);
    let pop = os.pop(qd).unwrap();
    drop(peer);
    match wait_ok(&os, pop).value {
        QValue::Pop { buf, .. } => assert!(buf.is_empty(), "EOF is a zero-length pop"),
        v => panic!("{v:?}"),
    }
}

/// A peer that accepts and resets at once, before catnap has seen the
/// handshake finish: the connect completes with a documented outcome
/// (ECONNRESET, or success with every later operation ECONNRESET).
#[test]
fn a_reset_racing_the_connect_is_a_documented_outcome() {
    let os = catnap();
    for _ in 0..20 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(to) = l.local_addr().unwrap() else { panic!() };
        let qd = os.socket(demi::SockType::Stream).unwrap();
        let qt = os.connect(qd, to).unwrap();
        let (peer, _) = l.accept().unwrap();
        reset(peer);
        std::thread::sleep(Duration::from_millis(5));
        match wait(&os, qt).value {
            QValue::Connect => {
                assert_eq!(errno_of(&os, os.pop(qd).unwrap()), libc::ECONNRESET);
            }
            QValue::Failed(e) => assert_eq!(e, libc::ECONNRESET, "{}", demi::errno_name(e)),
            v => panic!("{v:?}"),
        }
        os.close(qd).unwrap();
    }
}

/// A connected UDP socket whose peer port is closed: the ICMP refusal comes
/// back once, as ECONNREFUSED (documented for push and pop); the socket
/// stays usable.
#[test]
fn a_refused_datagram_is_econnrefused_once() {
    let os = catnap();
    let gone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let std::net::SocketAddr::V4(to) = gone.local_addr().unwrap() else { panic!() };
    drop(gone);
    let u = os.socket(demi::SockType::Datagram).unwrap();
    wait_ok(&os, os.connect(u, to).unwrap());
    wait_ok(&os, os.push(u, &buf(&os, b"one")).unwrap());
    // The ICMP error arrives on loopback at once; the next push meets it.
    let mut refused = 0;
    for _ in 0..4 {
        match wait(&os, os.push(u, &buf(&os, b"two")).unwrap()).value {
            QValue::Push => {}
            QValue::Failed(libc::ECONNREFUSED) => refused += 1,
            v => panic!("{v:?}"),
        }
    }
    assert!(refused >= 1, "no push saw the refusal");
    assert!(refused < 4, "the refusal is reported once per ICMP error, not forever");
}

/// Kernel errnos of setsockopt(2) pass through unchanged on catnap, and a
/// refused option leaves the socket working.
#[test]
fn setsockopt_passes_kernel_errors_through() {
    let os = catnap();
    let (qd, mut peer) = connected_to_kernel(&os);
    let e = os.setsockopt(qd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, b"no-such-dev0\0").unwrap_err();
    // SO_BINDTODEVICE needs CAP_NET_RAW; without it the kernel says EPERM first.
    // SAFETY: geteuid has no preconditions.
    let want = if unsafe { libc::geteuid() } == 0 { libc::ENODEV } else { libc::EPERM };
    assert_eq!(e.errno(), want, "{e}");
    push_all(&os, qd, b"ok");
    let mut got = [0u8; 2];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ok");
}
