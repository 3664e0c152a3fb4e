//! rdma-bench: catmint's ping-pong latency and streaming bandwidth, measured
//! the way perftest measures raw verbs (scripts/bench-rdma runs both side by
//! side on soft-RoCE).
//!
//!     rdma-bench server ADDR:PORT [--conns N]
//!     rdma-bench lat ADDR:PORT [--bind ADDR] [--size B] [--count N] [--warmup N]
//!     rdma-bench bw  ADDR:PORT [--bind ADDR] [--size B] [--count N] [--window N]
//!     rdma-bench conns-server ADDR:PORT --count N [--window N]
//!     rdma-bench conns ADDR:PORT [--bind ADDR] --count N [--window N] [--warmup N] [--probe-us G]
//!
//! `lat`: one message in flight; each round trip is push, pop of the echo,
//! timed from before the push to the echo's arrival (the full round trip;
//! perftest's ib_send_lat prints half of it). `bw`: `--window` pushes of
//! `--size` bytes in flight, `--count` in all, refilled after each
//! `wait_next_n` (which takes every push finished so far); timed from the
//! first push to the server's acknowledgement that it popped the last byte,
//! so only data that arrived counts. The server answers either, one connection at a time.
//! `conns`: connection setup and teardown rates at scale, with a probe
//! connection's round trips during the connect storm (see
//! rdma-bench-conns.rs; scripts/bench-conns runs it beside ucmatose).
//! Every client prints one `RESULT` line (key=value) for scripts. The libOS
//! is `--libos NAME`, else `LIBOS` (catmint for RDMA); `DEMI_SPIN_US` sets
//! how long a waiter busy-polls before it sleeps.

#[path = "rdma-bench-conns.rs"]
mod conns;

use demi::{LibOs, QDesc, QToken, QValue, SockType};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Bound on any one wait: a lost peer ends the run instead of hanging it.
const BOUND: Duration = Duration::from_secs(30);

const MODE_LAT: u8 = 1;
const MODE_BW: u8 = 2;

type Res<T> = Result<T, String>;

fn ok<T>(r: demi::Result<T>, what: &str) -> Res<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Waits for `qt`; a failed operation is an error.
fn wait(os: &LibOs, qt: QToken, what: &str) -> Res<QValue> {
    let r = ok(os.wait(qt, Some(BOUND)), what)?;
    match r.value {
        QValue::Failed(e) => Err(format!("{what}: {}", demi::errno_name(e))),
        v => Ok(v),
    }
}

fn pop(os: &LibOs, qd: QDesc, what: &str) -> Res<demi::Buffer> {
    match wait(os, ok(os.pop(qd), what)?, what)? {
        QValue::Pop { buf, .. } => Ok(buf),
        v => Err(format!("{what}: unexpected {v:?}")),
    }
}

/// The 16-byte request a client sends first: mode, size, count.
fn hello(mode: u8, size: usize, count: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0] = mode;
    h[4..8].copy_from_slice(&(size as u32).to_le_bytes());
    h[8..16].copy_from_slice(&count.to_le_bytes());
    h
}

fn server(os: &LibOs, addr: SocketAddrV4, conns: Option<u64>) -> Res<()> {
    let l = ok(os.socket(SockType::Stream), "socket")?;
    ok(os.bind(l, addr), "bind")?;
    ok(os.listen(l, 16), "listen")?;
    println!("rdma-bench: listening on {addr} ({})", os.name());
    let mut served = 0;
    while conns.map_or(true, |n| served < n) {
        let qt = ok(os.accept(l), "accept")?;
        let QValue::Accept { qd, .. } = ok(os.wait(qt, None), "accept")?.value else {
            return Err("accept failed".into());
        };
        if let Err(e) = serve(os, qd) {
            eprintln!("rdma-bench: connection: {e}");
        }
        let _ = os.close(qd);
        served += 1;
    }
    Ok(())
}

fn serve(os: &LibOs, qd: QDesc) -> Res<()> {
    let h = pop(os, qd, "hello")?;
    let h = h.as_slice();
    if h.len() != 16 {
        return Err(format!("hello of {} bytes", h.len()));
    }
    let size = u32::from_le_bytes(h[4..8].try_into().unwrap()) as u64;
    let count = u64::from_le_bytes(h[8..16].try_into().unwrap());
    match h[0] {
        MODE_LAT => loop {
            // Echo the received buffer itself (no copy) until end of file.
            let m = pop(os, qd, "pop")?;
            if m.is_empty() {
                return Ok(());
            }
            wait(os, ok(os.push(qd, &m), "push")?, "push")?;
        },
        MODE_BW => {
            // Keep POPS pops posted so the next messages find them waiting,
            // and take whatever arrived in one wait_next_n.
            const POPS: usize = 32;
            let want = size * count;
            let mut got = 0;
            let mut posted = 0;
            while got < want {
                while posted < POPS {
                    ok(os.pop(qd), "pop")?;
                    posted += 1;
                }
                for r in ok(os.wait_next_n(POPS, Some(BOUND)), "pop")? {
                    posted -= 1;
                    match r.value {
                        QValue::Pop { buf, .. } if !buf.is_empty() => got += buf.len() as u64,
                        QValue::Pop { .. } => return Err(format!("end of file after {got} of {want} bytes")),
                        QValue::Failed(e) => return Err(format!("pop: {}", demi::errno_name(e))),
                        v => return Err(format!("pop: unexpected {v:?}")),
                    }
                }
            }
            let ack = ok(os.buffer_from(&got.to_le_bytes()), "alloc")?;
            wait(os, ok(os.push(qd, &ack), "push")?, "push")?;
            // Drain to end of file (the pops still posted finish with it).
            while posted > 0 {
                let Ok(rs) = os.wait_next_n(posted, Some(BOUND)) else { break };
                posted -= rs.len();
            }
            Ok(())
        }
        m => Err(format!("unknown mode {m}")),
    }
}

fn connect(os: &LibOs, to: SocketAddrV4, bind: Option<Ipv4Addr>) -> Res<QDesc> {
    let qd = ok(os.socket(SockType::Stream), "socket")?;
    if let Some(ip) = bind {
        ok(os.bind(qd, SocketAddrV4::new(ip, 0)), "bind")?;
    }
    wait(os, ok(os.connect(qd, to), "connect")?, "connect")?;
    Ok(qd)
}

/// Round trips are timed with the CPU's cycle counter, as perftest does:
/// reading the system clock is a system call where the kernel cannot use the
/// TSC (an emulated HPET in a qemu/TCG guest costs microseconds), and that
/// cost would land inside every round trip measured here but not in
/// perftest's. The counter's rate is measured against the system clock over
/// the whole run.
struct TickClock {
    wall: Instant,
    ticks: u64,
}

impl TickClock {
    fn start() -> TickClock {
        TickClock { wall: Instant::now(), ticks: ticks_now() }
    }

    fn us_per_tick(&self) -> f64 {
        let ticks = ticks_now().wrapping_sub(self.ticks).max(1);
        self.wall.elapsed().as_secs_f64() * 1e6 / ticks as f64
    }
}

#[cfg(target_arch = "x86_64")]
fn ticks_now() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86_64.
    unsafe { std::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn ticks_now() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn lat(os: &LibOs, qd: QDesc, size: usize, count: u64, warmup: u64) -> Res<()> {
    wait(os, ok(os.push(qd, &ok(os.buffer_from(&hello(MODE_LAT, size, count)), "alloc")?), "push")?, "hello")?;
    let msg = ok(os.buffer_from(&vec![0x5a; size]), "alloc")?;
    let mut ticks = Vec::with_capacity(count as usize);
    let clock = TickClock::start();
    for i in 0..warmup + count {
        let t0 = ticks_now();
        let push = ok(os.push(qd, &msg), "push")?;
        let echo = pop(os, qd, "echo")?;
        let dt = ticks_now().wrapping_sub(t0);
        wait(os, push, "push")?;
        if echo.len() != size {
            return Err(format!("echo of {} bytes, sent {size}", echo.len()));
        }
        if i >= warmup {
            ticks.push(dt);
        }
    }
    let us_per_tick = clock.us_per_tick();
    let mut rtt: Vec<f64> = ticks.iter().map(|&t| t as f64 * us_per_tick).collect();
    rtt.sort_by(f64::total_cmp);
    let mean = rtt.iter().sum::<f64>() / rtt.len() as f64;
    println!(
        "RESULT lat size={size} count={count} min_us={:.1} p50_us={:.1} p99_us={:.1} max_us={:.1} mean_us={mean:.1}",
        rtt[0],
        percentile(&rtt, 0.50),
        percentile(&rtt, 0.99),
        rtt[rtt.len() - 1]
    );
    Ok(())
}

fn bw(os: &LibOs, qd: QDesc, size: usize, count: u64, window: usize) -> Res<()> {
    wait(os, ok(os.push(qd, &ok(os.buffer_from(&hello(MODE_BW, size, count)), "alloc")?), "push")?, "hello")?;
    // One registered buffer, pushed over and over (the device only reads it).
    let msg = ok(os.buffer_from(&vec![0xa5; size]), "alloc")?;
    let ack = ok(os.pop(qd), "pop")?;
    let t0 = Instant::now();
    // The window refills after each batch wait: wait_next_n takes every push
    // that finished since the last one (in completion order), not one token
    // at a time. The server's acknowledgement may finish in such a batch too.
    let (mut posted, mut done) = (0u64, 0u64);
    let mut acked = None;
    while done < count {
        while posted < count && posted - done < window as u64 {
            ok(os.push(qd, &msg), "push")?;
            posted += 1;
        }
        for r in ok(os.wait_next_n(window + 1, Some(BOUND)), "push")? {
            if let QValue::Failed(e) = r.value {
                return Err(format!("push: {}", demi::errno_name(e)));
            }
            if r.qt == ack {
                acked = Some(r.value);
            } else {
                done += 1;
            }
        }
    }
    let ackv = match acked {
        Some(v) => v,
        None => wait(os, ack, "ack")?,
    };
    let QValue::Pop { buf, .. } = ackv else { return Err("bad ack".into()) };
    let secs = t0.elapsed().as_secs_f64();
    let bytes = size as u64 * count;
    if buf.as_slice() != bytes.to_le_bytes() {
        return Err("the server counted a different number of bytes".into());
    }
    println!(
        "RESULT bw size={size} count={count} window={window} seconds={secs:.3} MBps={:.2} msgps={:.0}",
        bytes as f64 / secs / 1e6,
        count as f64 / secs
    );
    Ok(())
}

struct Opts {
    bind: Option<Ipv4Addr>,
    size: usize,
    count: u64,
    warmup: u64,
    window: usize,
    conns: Option<u64>,
    libos: Option<String>,
    probe_us: u64,
}

fn parse(args: &[String]) -> Res<Opts> {
    let mut o =
        Opts { bind: None, size: 64, count: 1000, warmup: 100, window: 16, conns: None, libos: None, probe_us: 1000 };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = || v.parse::<u64>().map_err(|_| format!("{flag} {v}: not a number"));
        match flag.as_str() {
            "--bind" => o.bind = Some(v.parse().map_err(|_| format!("--bind {v}: not an IPv4 address"))?),
            "--size" => o.size = num()?.max(1) as usize,
            "--count" => o.count = num()?.max(1),
            "--warmup" => o.warmup = num()?,
            "--window" => o.window = num()?.max(1) as usize,
            "--conns" => o.conns = Some(num()?),
            "--libos" => o.libos = Some(v.clone()),
            "--probe-us" => o.probe_us = num()?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(o)
}

fn run(args: &[String]) -> Res<()> {
    let usage = "usage: rdma-bench server|lat|bw|conns|conns-server ADDR:PORT [--libos NAME] [--bind ADDR] \
                 [--size B] [--count N] [--warmup N] [--window N] [--conns N] [--probe-us G]";
    let (Some(mode), Some(addr)) = (args.get(1), args.get(2)) else { return Err(usage.into()) };
    let addr: SocketAddrV4 = addr.parse().map_err(|_| format!("{addr}: not ADDR:PORT\n{usage}"))?;
    let o = parse(&args[3..])?;
    if let Some(libos) = &o.libos {
        // Still one thread: nothing else reads the environment meanwhile.
        std::env::set_var("LIBOS", libos);
    }
    let os = ok(LibOs::from_env(), "libOS")?;
    match mode.as_str() {
        "server" => server(&os, addr, o.conns),
        "conns-server" => conns::server(&os, addr, o.count, o.window),
        "conns" => {
            let gap = (o.probe_us > 0).then(|| Duration::from_micros(o.probe_us));
            conns::client(&os, addr, o.bind, o.count, o.window, o.warmup, gap)
        }
        "lat" | "bw" => {
            let qd = connect(&os, addr, o.bind)?;
            if mode == "lat" {
                lat(&os, qd, o.size, o.count, o.warmup)?;
            } else {
                bw(&os, qd, o.size, o.count, o.window)?;
            }
            ok(os.close(qd), "close")
        }
        _ => Err(usage.into()),
    }
}

fn main() -> ExitCode {
    demi::init_logging();
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdma-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
