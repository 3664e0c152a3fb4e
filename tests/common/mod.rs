//! Helpers shared by the integration tests.
#![allow(dead_code)]

use demi::{Buffer, LibOs, QDesc, QResult, QToken, QValue, SockType};
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::Duration;

/// Generous bound for any single wait in a test.
pub const LONG: Duration = Duration::from_secs(10);

/// The libOS under test: `LIBOS`, or catnap.
pub fn libos() -> LibOs {
    demi::init_logging();
    LibOs::from_env().expect("libOS starts")
}

pub fn wait(os: &LibOs, qt: QToken) -> QResult {
    os.wait(qt, Some(LONG)).expect("operation finishes in time")
}

pub fn wait_ok(os: &LibOs, qt: QToken) -> QResult {
    let r = wait(os, qt);
    assert_eq!(r.errno(), 0, "operation failed: {:?}", r.value);
    r
}

/// Pops once and returns the bytes.
pub fn pop_bytes(os: &LibOs, qd: QDesc) -> (Vec<u8>, Option<SocketAddrV4>) {
    let qt = os.pop(qd).unwrap();
    match wait_ok(os, qt).value {
        QValue::Pop { buf, from } => (buf.as_slice().to_vec(), from),
        v => panic!("expected a pop, got {v:?}"),
    }
}

/// Pops until `n` bytes arrived (stream sockets may split messages).
pub fn pop_exact(os: &LibOs, qd: QDesc, n: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let (b, _) = pop_bytes(os, qd);
        assert!(!b.is_empty(), "unexpected end of file after {} of {n} bytes", got.len());
        got.extend_from_slice(&b);
    }
    assert_eq!(got.len(), n, "peer sent more than expected");
    got
}

pub fn push_all(os: &LibOs, qd: QDesc, data: &[u8]) {
    let buf = os.buffer_from(data).unwrap();
    let qt = os.push(qd, &buf).unwrap();
    assert!(matches!(wait_ok(os, qt).value, QValue::Push));
}

/// The local address tests bind to: `DEMI_TEST_IP`, or 127.0.0.1. (RDMA
/// runs set it to an address of a soft-RoCE device.)
pub fn test_ip() -> std::net::Ipv4Addr {
    std::env::var("DEMI_TEST_IP").ok().and_then(|s| s.parse().ok()).unwrap_or(std::net::Ipv4Addr::LOCALHOST)
}

/// `test_ip()` with a kernel-chosen port.
pub fn any_port() -> SocketAddrV4 {
    SocketAddrV4::new(test_ip(), 0)
}

/// A listening stream socket on `test_ip()` with a kernel-chosen port.
pub fn listener(os: &LibOs) -> (QDesc, SocketAddrV4) {
    let qd = os.socket(SockType::Stream).unwrap();
    os.bind(qd, any_port()).unwrap();
    os.listen(qd, 16).unwrap();
    (qd, os.local_addr(qd).unwrap().unwrap())
}

/// A connected pair of stream sockets (client, server side).
pub fn stream_pair(os: &LibOs) -> (QDesc, QDesc, QDesc) {
    let (lqd, addr) = listener(os);
    let c = os.socket(SockType::Stream).unwrap();
    let aqt = os.accept(lqd).unwrap();
    let cqt = os.connect(c, addr).unwrap();
    let (i, first) = os.wait_any(&[aqt, cqt], Some(LONG)).unwrap();
    let second = wait_ok(os, if i == 0 { cqt } else { aqt });
    let accepted = if i == 0 { first } else { second };
    let QValue::Accept { qd: s, .. } = accepted.value else { panic!("expected accept, got {:?}", accepted.value) };
    (c, s, lqd)
}

/// Deterministic test data with a position-dependent pattern.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8)).collect()
}

pub fn buf(os: &LibOs, data: &[u8]) -> Buffer {
    os.buffer_from(data).unwrap()
}

/// The profile directory holding libdemi.so and libdemi.a of the profile
/// this test was built with (`cargo test --release` -> target/release): the
/// first ancestor of the test binary that has them, skipping deps/ (cargo's
/// intermediate copies).
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    exe.ancestors()
        .skip(1)
        .filter(|d| !d.ends_with("deps"))
        .take_while(|d| !d.ends_with("target"))
        .find(|d| d.join("libdemi.so").is_file() && d.join("libdemi.a").is_file())
        .unwrap_or_else(|| {
            panic!(
                "libdemi.so and libdemi.a not found above {}: build the library first with \
                 `cargo build --release` (`make test` does)",
                exe.display()
            )
        })
        .to_path_buf()
}
