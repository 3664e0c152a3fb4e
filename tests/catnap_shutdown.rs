//! Half-close (shutdown) and the local address of connected sockets, over
//! catnap on loopback (kernel TCP and UDP sockets under the engine).

mod common;
use common::*;
use demi::{QValue, SockType};
use std::net::{Shutdown, SocketAddrV4};

/// Pops until end of file; returns every byte before it.
fn pop_to_eof(os: &demi::LibOs, qd: demi::QDesc) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        let (b, _) = pop_bytes(os, qd);
        if b.is_empty() {
            return got;
        }
        got.extend_from_slice(&b);
    }
}

#[test]
fn shutdown_write_gives_the_peer_eof_and_keeps_the_other_direction() {
    let os = libos();
    let (c, s, _) = stream_pair(&os);
    // A request larger than the kernel's buffers, so part of it is still
    // queued in catnap when the shutdown comes: the FIN must wait for it.
    let request = pattern(4 << 20, 3);
    let push = os.push(c, &buf(&os, &request)).unwrap();
    os.shutdown(c, Shutdown::Write).unwrap();
    // Writing after the shutdown fails at once, as send(2) does.
    assert_eq!(os.push(c, &buf(&os, b"late")).unwrap_err().errno(), libc::EPIPE);
    let got = pop_to_eof(&os, s);
    assert!(got == request, "server read {} of {} bytes before end of file", got.len(), request.len());
    wait_ok(&os, push);
    // End of file stays end of file.
    assert!(pop_bytes(&os, s).0.is_empty());
    // The other direction still works: the server answers, the client reads.
    let reply = pattern(100_000, 9);
    push_all(&os, s, &reply);
    assert_eq!(pop_exact(&os, c, reply.len()), reply);
    // The server's own close then ends the client's reads.
    os.close(s).unwrap();
    assert!(pop_to_eof(&os, c).is_empty());
    // Shutting down again is harmless.
    os.shutdown(c, Shutdown::Write).unwrap();
}

#[test]
fn shutdown_read_ends_pops_and_both_ends_everything() {
    let os = libos();
    let (c, s, _) = stream_pair(&os);
    os.shutdown(s, Shutdown::Read).unwrap();
    // A pop after SHUT_RD ends at once with end of file.
    let (b, _) = pop_bytes(&os, s);
    assert!(b.is_empty(), "pop after SHUT_RD read {} bytes", b.len());
    // The server can still write.
    push_all(&os, s, b"still here");
    assert_eq!(pop_exact(&os, c, 10), b"still here");
    // Both directions: the peer sees end of file, pushes fail, pops end.
    os.shutdown(c, Shutdown::Both).unwrap();
    assert_eq!(os.push(c, &buf(&os, b"x")).unwrap_err().errno(), libc::EPIPE);
    assert!(pop_bytes(&os, c).0.is_empty());
}

#[test]
fn shutdown_needs_a_connected_socket() {
    let os = libos();
    let idle = os.socket(SockType::Stream).unwrap();
    assert_eq!(os.shutdown(idle, Shutdown::Write).unwrap_err().errno(), libc::ENOTCONN);
    let (l, _) = listener(&os);
    assert_eq!(os.shutdown(l, Shutdown::Both).unwrap_err().errno(), libc::ENOTCONN);
    assert_eq!(os.shutdown(9999, Shutdown::Write).unwrap_err().errno(), libc::EBADF);
    // A datagram socket needs a default peer (Linux: ENOTCONN too).
    let u = os.socket(SockType::Datagram).unwrap();
    assert_eq!(os.shutdown(u, Shutdown::Write).unwrap_err().errno(), libc::ENOTCONN);
    let v = os.socket(SockType::Datagram).unwrap();
    os.bind(v, any_port()).unwrap();
    let to = os.local_addr(v).unwrap().unwrap();
    wait_ok(&os, os.connect(u, to).unwrap());
    os.shutdown(u, Shutdown::Write).unwrap();
    // Then it only marks it: sends fail with EPIPE (as Linux's UDP).
    assert_eq!(os.push(u, &buf(&os, b"x")).unwrap_err().errno(), libc::EPIPE);
    assert_eq!(os.pushto(u, &buf(&os, b"x"), to).unwrap_err().errno(), libc::EPIPE);
}

#[test]
fn connected_and_accepted_sockets_know_their_local_address() {
    let os = libos();
    let (l, addr) = listener(&os);
    let c = os.socket(SockType::Stream).unwrap();
    assert_eq!(os.local_addr(c).unwrap(), None, "an unbound socket has no address yet");
    let aqt = os.accept(l).unwrap();
    wait_ok(&os, os.connect(c, addr).unwrap());
    let QValue::Accept { qd: s, peer } = wait_ok(&os, aqt).value else { panic!("expected an accept") };
    // The client never called bind: connect picked an address and a port,
    // and they are the ones the server sees it from.
    let local: SocketAddrV4 = os.local_addr(c).unwrap().expect("a connected socket has a local address");
    assert_ne!(local.port(), 0);
    assert_eq!(local, peer);
    assert_eq!(os.peer_addr(s).unwrap(), local);
    // The accepted end is at the listener's address.
    assert_eq!(os.local_addr(s).unwrap(), Some(addr));
    assert_eq!(os.peer_addr(c).unwrap(), addr);
}
