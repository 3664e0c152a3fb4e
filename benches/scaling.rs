//! Scaling with threads (run with `cargo bench --bench scaling`): the
//! aggregate message rate of 1 and 2 threads, each driving its own sockets,
//! with an engine per thread (the default) and with one shared engine
//! (`DEMI_THREADING=shared`, the model before per-thread engines), in
//! interleaved rounds; medians.
//!
//! 1. the engine alone, over the in-memory loopback device: push + pop of a
//!    64-byte datagram on a socket connected to itself;
//! 2. catnap UDP: 64-byte ping-pong between two sockets of the thread;
//! 3. catnap TCP: 64-byte ping-pong over a connection of the thread;
//!
//! next to the same UDP and TCP ping-pongs over blocking kernel sockets
//! (std::net), which say how far the machine itself scales.
//!
//! Arguments: `--rounds N` (default 5), `--secs S` per run (default 1),
//! `--only NAME` (the workloads whose name contains NAME: engine, udp, tcp).

use demi::config::{Config, Threading};
use demi::engine::Engine;
use demi::loopback::Loopback;
use demi::{LibOs, QDesc, QValue, SockType};
use std::net::SocketAddrV4;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Work {
    Engine,
    Udp,
    Tcp,
    /// The baseline: the same TCP ping-pong over blocking kernel sockets.
    KernelTcp,
    /// The baseline: the same UDP ping-pong over blocking kernel sockets.
    KernelUdp,
}

/// Round trips of the kernel baseline on thread `k` until `until`.
fn kernel(work: Work, until: Instant, start: &Barrier) -> u64 {
    use std::io::{Read, Write};
    let mut buf = [7u8; 64];
    let mut n = 0u64;
    let mut go = |round: &mut dyn FnMut(&mut [u8; 64])| {
        start.wait();
        while n % 256 != 0 || Instant::now() < until {
            round(&mut buf);
            n += 1;
        }
    };
    if work == Work::KernelTcp {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.set_nodelay(true).unwrap();
        s.set_nodelay(true).unwrap();
        go(&mut |b| {
            c.write_all(b).unwrap();
            s.read_exact(b).unwrap();
            s.write_all(b).unwrap();
            c.read_exact(b).unwrap();
        });
    } else {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b2 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b2.local_addr().unwrap()).unwrap();
        b2.connect(a.local_addr().unwrap()).unwrap();
        go(&mut |b| {
            a.send(b).unwrap();
            b2.recv(b).unwrap();
            b2.send(b).unwrap();
            a.recv(b).unwrap();
        });
    }
    n
}

fn libos(work: Work, threading: Threading) -> LibOs {
    match work {
        Work::Engine if threading == Threading::PerThread => LibOs::with_engines(
            |i| Ok(Engine::with_shard(Box::new(Loopback::new()), i)),
            Duration::ZERO,
            demi::config::DEFAULT_POLL_SLEEP,
        )
        .expect("loopback engines"),
        Work::Engine => LibOs::with_engine(Engine::new(Box::new(Loopback::new())), Duration::ZERO),
        Work::Udp | Work::Tcp => {
            LibOs::with_config(&Config { threading, ..Config::new("catnap") }).expect("catnap starts")
        }
        Work::KernelTcp | Work::KernelUdp => unreachable!("the kernel baseline has no libOS"),
    }
}

fn wait_ok(os: &LibOs, qt: u64) -> QValue {
    let r = os.wait(qt, Some(Duration::from_secs(10))).expect("operation finishes");
    assert_eq!(r.errno(), 0, "operation failed: {:?}", r.value);
    r.value
}

fn pop_one(os: &LibOs, qd: QDesc) {
    match wait_ok(os, os.pop(qd).unwrap()) {
        QValue::Pop { buf, .. } => assert_eq!(buf.len(), 64),
        v => panic!("pop gave {v:?}"),
    }
}

/// Sets up thread `k`'s sockets: (pusher, popper) for one direction and
/// the reverse pair (None for the engine's self-connected socket).
fn sockets(os: &LibOs, work: Work, k: u16, base: u16) -> (QDesc, QDesc) {
    let at = |p: u16| SocketAddrV4::new([127, 0, 0, 1].into(), p);
    match work {
        Work::Engine => {
            let qd = os.socket(SockType::Datagram).unwrap();
            let me: SocketAddrV4 = format!("10.0.0.1:{}", 9 + k).parse().unwrap();
            os.bind(qd, me).unwrap();
            wait_ok(os, os.connect(qd, me).unwrap());
            (qd, qd)
        }
        Work::Udp => {
            let (a, b) = (os.socket(SockType::Datagram).unwrap(), os.socket(SockType::Datagram).unwrap());
            os.bind(a, at(base + 2 * k)).unwrap();
            os.bind(b, at(base + 2 * k + 1)).unwrap();
            wait_ok(os, os.connect(a, at(base + 2 * k + 1)).unwrap());
            wait_ok(os, os.connect(b, at(base + 2 * k)).unwrap());
            (a, b)
        }
        Work::KernelTcp | Work::KernelUdp => unreachable!("the kernel baseline has no libOS"),
        Work::Tcp => {
            let l = os.socket(SockType::Stream).unwrap();
            os.bind(l, at(base + k)).unwrap();
            os.listen(l, 4).unwrap();
            let c = os.socket(SockType::Stream).unwrap();
            let acc = os.accept(l).unwrap();
            let con = os.connect(c, at(base + k)).unwrap();
            let s = match wait_ok(os, acc) {
                QValue::Accept { qd, .. } => qd,
                v => panic!("accept gave {v:?}"),
            };
            wait_ok(os, con);
            (c, s)
        }
    }
}

/// One thread's loop: round trips (engine: push + pop pairs) until `until`.
fn drive(os: &LibOs, work: Work, (a, b): (QDesc, QDesc), until: Instant) -> u64 {
    let msg = os.buffer_from(&[7u8; 64]).unwrap();
    let mut n = 0u64;
    while n % 256 != 0 || Instant::now() < until {
        wait_ok(os, os.push(a, &msg).unwrap());
        pop_one(os, b);
        if work != Work::Engine {
            wait_ok(os, os.push(b, &msg).unwrap());
            pop_one(os, a);
        }
        n += 1;
    }
    n
}

/// Aggregate round trips (engine: push + pop pairs) per second of `threads`
/// threads for `secs`.
fn run(work: Work, threading: Threading, threads: u16, secs: f64, base: u16) -> f64 {
    if matches!(work, Work::KernelTcp | Work::KernelUdp) {
        let start = Arc::new(Barrier::new(threads as usize));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let start = start.clone();
                std::thread::spawn(move || {
                    let t0 = Instant::now();
                    let n = kernel(work, t0 + Duration::from_secs_f64(secs), &start);
                    n as f64 / t0.elapsed().as_secs_f64()
                })
            })
            .collect();
        return handles.into_iter().map(|h| h.join().expect("bench thread")).sum();
    }
    let os = libos(work, threading);
    let start = Arc::new(Barrier::new(threads as usize));
    let handles: Vec<_> = (0..threads)
        .map(|k| {
            let (os, start) = (os.clone(), start.clone());
            std::thread::spawn(move || {
                let socks = sockets(&os, work, k, base);
                start.wait();
                let t0 = Instant::now();
                let n = drive(&os, work, socks, t0 + Duration::from_secs_f64(secs));
                n as f64 / t0.elapsed().as_secs_f64()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("bench thread")).sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: f64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let rounds = flag("--rounds", 5.0) as usize;
    let secs = flag("--secs", 1.0);
    // `--only tcp` runs the workloads whose name contains it.
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).map(|s| s.to_lowercase());
    println!("| workload | engines | 1 thread (ops/s) | 2 threads (ops/s) | 2 / 1 |");
    println!("|---|---|---:|---:|---:|");
    let mut base = 20000u16;
    for work in [Work::Engine, Work::Udp, Work::KernelUdp, Work::Tcp, Work::KernelTcp] {
        if only.as_ref().is_some_and(|o| !format!("{work:?}").to_lowercase().contains(o.as_str())) {
            continue;
        }
        let models: &[Threading] = match work {
            Work::KernelTcp | Work::KernelUdp => &[Threading::PerThread],
            _ => &[Threading::PerThread, Threading::Shared],
        };
        for &threading in models {
            let (mut one, mut two) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                base = base.wrapping_add(16).max(20000);
                one.push(run(work, threading, 1, secs, base));
                base = base.wrapping_add(16).max(20000);
                two.push(run(work, threading, 2, secs, base));
            }
            let (m1, m2) = (median(one), median(two));
            let name = match (work, threading) {
                (Work::KernelTcp | Work::KernelUdp, _) => "(kernel, blocking)",
                (_, Threading::PerThread) => "per thread",
                (_, Threading::Shared) => "shared",
            };
            println!("| {work:?} | {name} | {m1:.0} | {m2:.0} | {:.2}x |", m2 / m1);
        }
    }
}
