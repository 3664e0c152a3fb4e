//! Benchmarks of the core (run with `make bench` or `cargo bench --bench engine`):
//!
//! 1. the engine's own cost per operation (issue + complete + wait), measured
//!    over the in-memory loopback device (`demi::loopback`), so what is left
//!    is descriptor checks, token allocation, the lock, the wait loop and the
//!    loopback's few queue moves;
//! 2. catnap 64-byte TCP ping-pong round trips next to a plain blocking-socket
//!    echo over the same loopback, in the same run, as a ratio.
//!
//! Figures go to stdout as a Markdown table; docs/BENCHMARKS.md records them.

use demi::engine::Engine;
use demi::loopback::Loopback;
use demi::SockType;
use demi::{LibOs, QValue};
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Pushes (then pops) per timed batch: the datagrams of one batch wait in
/// the socket's inbox, which holds a few thousand.
const BATCH: u32 = 1024;

/// The engine's cost per push and per pop through `LibOs`, over the
/// in-memory loopback device (`demi::loopback`): a datagram socket connected
/// to itself pushes a batch of 64-byte datagrams, then pops them back, each
/// operation waited for on its own. Best of 5 runs of `ops` of each.
fn engine_cost(ops: u32) -> (f64, f64) {
    // An engine per thread, as `LibOs::new` gives by default.
    let os = LibOs::with_engines(
        |i| Ok(Engine::with_shard(Box::new(Loopback::new()), i)),
        Duration::ZERO,
        demi::config::DEFAULT_POLL_SLEEP,
    )
    .unwrap();
    let qd = os.socket(SockType::Datagram).unwrap();
    let me: SocketAddrV4 = "10.0.0.1:9".parse().unwrap();
    os.bind(qd, me).unwrap();
    os.connect(qd, me).and_then(|qt| os.wait(qt, None)).unwrap();
    let msg = os.buffer_from(&[7u8; 64]).unwrap();
    let mut best_push = f64::MAX;
    let mut best_pop = f64::MAX;
    for _ in 0..5 {
        let (mut push_time, mut pop_time) = (Duration::ZERO, Duration::ZERO);
        let mut left = ops;
        while left > 0 {
            let n = left.min(BATCH);
            left -= n;
            let t0 = Instant::now();
            for _ in 0..n {
                let qt = os.push(qd, &msg).unwrap();
                let r = os.wait(qt, None).unwrap();
                debug_assert!(matches!(r.value, QValue::Push));
            }
            let t1 = Instant::now();
            for _ in 0..n {
                let qt = os.pop(qd).unwrap();
                let r = os.wait(qt, None).unwrap();
                debug_assert!(matches!(r.value, QValue::Pop { .. }));
            }
            push_time += t1 - t0;
            pop_time += t1.elapsed();
        }
        best_push = best_push.min(push_time.as_nanos() as f64 / ops as f64);
        best_pop = best_pop.min(pop_time.as_nanos() as f64 / ops as f64);
    }
    (best_push, best_pop)
}

struct Stats {
    p50: f64,
    p99: f64,
    mean: f64,
}

fn stats(mut ns: Vec<u64>) -> Stats {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    Stats { p50: at(0.5), p99: at(0.99), mean: ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1000.0 }
}

/// Plain blocking sockets: echo thread plus a client timing round trips.
fn blocking_rtt(rounds: usize, size: usize) -> Stats {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = vec![0u8; size];
        while s.read_exact(&mut b).is_ok() {
            s.write_all(&b).unwrap();
        }
    });
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    let msg = vec![1u8; size];
    let mut back = vec![0u8; size];
    let mut ns = Vec::with_capacity(rounds);
    for i in 0..rounds + rounds / 10 {
        let t0 = Instant::now();
        c.write_all(&msg).unwrap();
        c.read_exact(&mut back).unwrap();
        if i >= rounds / 10 {
            ns.push(t0.elapsed().as_nanos() as u64);
        }
    }
    drop(c);
    server.join().unwrap();
    stats(ns)
}

/// catnap on both ends: an echo thread with its own libOS and a client.
fn catnap_rtt(rounds: usize, size: usize) -> Stats {
    let server_os = LibOs::new("catnap").unwrap();
    let lqd = server_os.socket(SockType::Stream).unwrap();
    server_os.bind(lqd, "127.0.0.1:0".parse().unwrap()).unwrap();
    server_os.listen(lqd, 4).unwrap();
    let addr = server_os.local_addr(lqd).unwrap().unwrap();
    let nodelay = 1i32.to_ne_bytes();
    let server = std::thread::spawn(move || {
        let os = server_os;
        let QValue::Accept { qd, .. } = os.wait(os.accept(lqd).unwrap(), None).unwrap().value else { panic!() };
        os.setsockopt(qd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &nodelay).unwrap();
        loop {
            let r = os.wait(os.pop(qd).unwrap(), None).unwrap();
            let QValue::Pop { buf, .. } = r.value else {
                break;
            };
            if buf.is_empty() {
                break;
            }
            // Echo the received buffer itself: no copy.
            os.wait(os.push(qd, &buf).unwrap(), None).unwrap();
        }
    });
    let os = LibOs::new("catnap").unwrap();
    let c = os.socket(SockType::Stream).unwrap();
    os.wait(os.connect(c, addr).unwrap(), None).unwrap();
    os.setsockopt(c, libc::IPPROTO_TCP, libc::TCP_NODELAY, &nodelay).unwrap();
    let msg = os.buffer_from(&vec![1u8; size]).unwrap();
    let mut ns = Vec::with_capacity(rounds);
    for i in 0..rounds + rounds / 10 {
        let t0 = Instant::now();
        os.wait(os.push(c, &msg).unwrap(), None).unwrap();
        let mut got = 0;
        while got < size {
            let QValue::Pop { buf, .. } = os.wait(os.pop(c).unwrap(), None).unwrap().value else { panic!() };
            got += buf.len();
        }
        if i >= rounds / 10 {
            ns.push(t0.elapsed().as_nanos() as u64);
        }
    }
    os.close(c).unwrap();
    server.join().unwrap();
    stats(ns)
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is not supported.
    let rounds: usize = std::env::var("DEMI_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let ops = std::env::var("DEMI_BENCH_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let (push, pop) = engine_cost(ops);
    println!("| engine cost (issue + complete + wait) | ns/op |");
    println!("|---|---|");
    println!("| push, 64 B, loopback device | {push:.1} |");
    println!("| pop, 64 B, loopback device | {pop:.1} |");
    println!();
    if std::env::var_os("DEMI_BENCH_ENGINE_ONLY").is_some() {
        return;
    }
    // Alternate the two paths so drift on a noisy machine hits both.
    let mut base = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..3 {
        base.push(blocking_rtt(rounds, 64));
        ours.push(catnap_rtt(rounds, 64));
    }
    let med = |v: &Vec<Stats>, f: fn(&Stats) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(|a, b| a.partial_cmp(b).unwrap());
        x[x.len() / 2]
    };
    let (b50, b99, bm) = (med(&base, |s| s.p50), med(&base, |s| s.p99), med(&base, |s| s.mean));
    let (c50, c99, cm) = (med(&ours, |s| s.p50), med(&ours, |s| s.p99), med(&ours, |s| s.mean));
    println!(
        "| 64 B TCP ping-pong over loopback ({rounds} round trips x 3 runs, median run) | p50 µs | p99 µs | mean µs |"
    );
    println!("|---|---|---|---|");
    println!("| plain blocking sockets (baseline) | {b50:.1} | {b99:.1} | {bm:.1} |");
    println!("| catnap | {c50:.1} | {c99:.1} | {cm:.1} |");
    println!("| ratio catnap / baseline | {:.2} | {:.2} | {:.2} |", c50 / b50, c99 / b99, cm / bm);
}
