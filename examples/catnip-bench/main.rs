//! catnip benchmark: UDP 64-byte echo round-trip time (p50, p99) and
//! one-core datagram throughput, side by side for
//!
//! 1. catnip <-> catnip over net_memif (two DPDK processes),
//! 2. catnip <-> catnip over net_af_packet on a veth pair (two namespaces),
//! 3. kernel UDP socket <-> kernel UDP socket over a veth pair.
//!
//!     sudo cargo run --release --example catnip-bench [-- --rounds N --seconds S --markdown FILE]
//!
//! Needs root and iproute2 (it makes two network namespaces and a veth
//! pair, removed on every exit path). Each endpoint is this program run
//! again in a role; the two endpoints of a run are pinned to different
//! cores. Throughput is what the receiver counted per second while the
//! sender sent 64-byte datagrams as fast as it could for S seconds.

#[cfg(feature = "catnip")]
mod bench;

#[cfg(feature = "catnip")]
fn main() -> std::process::ExitCode {
    bench::main()
}

#[cfg(not(feature = "catnip"))]
fn main() {
    eprintln!("catnip-bench needs the `catnip` feature (on by default)");
    std::process::exit(2);
}
