//! rdma-bench's connection modes (issue 14): how fast demi sets up and
//! tears down many connections, next to rdma-core's ucmatose. Two
//! processes, as ucmatose runs:
//!
//!     rdma-bench conns-server ADDR:PORT --count N [--window W]
//!     rdma-bench conns ADDR:PORT [--bind IP] --count N [--window W] [--warmup R] [--probe-us G]
//!
//! The client first connects one probe connection and times `--warmup`
//! ping-pongs on it. Then the storm: `--count` connections, `--window`
//! connects in flight (a new one starts as each finishes), timed from the
//! first connect to the last one established, while the probe pings every
//! `--probe-us` µs (default 1000; the next ping waits for the last echo;
//! 0: no pings during the storm): its round trips during the storm show
//! whether an established connection stalls while others connect. Then every storm
//! connection echoes one checksummed message, all at once. Teardown: each
//! storm connection shuts its write side, the server closes on end of file,
//! the client closes on the server's end of file; timed from the first
//! shutdown to the last close. The server echoes whatever it receives,
//! keeps `--window` accepts posted, closes each connection at end of file,
//! and exits once all `--count` + 1 have closed.

use super::{ok, Res, BOUND};
use demi::{errno_name, Buffer, LibOs, QDesc, QToken, QValue, SockType};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

/// Each storm connection's message: index, filler, checksum.
const MSG: usize = 32;
/// Completions taken per wait.
const BATCH: usize = 256;
/// The server's listen backlog (catnap's kernel caps it at somaxconn).
const BACKLOG: i32 = 1024;

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

fn message(i: usize) -> [u8; MSG] {
    let mut m = [0u8; MSG];
    m[..8].copy_from_slice(&(i as u64).to_le_bytes());
    for (k, b) in m[8..MSG - 8].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(k as u8);
    }
    let sum = fnv1a(&m[..MSG - 8]);
    m[MSG - 8..].copy_from_slice(&sum.to_le_bytes());
    m
}

fn next(os: &LibOs, what: &str) -> Res<Vec<demi::QResult>> {
    ok(os.wait_next_n(BATCH, Some(BOUND)), what)
}

fn failed(qd: QDesc, v: QValue, what: &str) -> String {
    match v {
        QValue::Failed(e) => format!("{what}: an operation on {qd} failed: {}", errno_name(e)),
        v => format!("{what}: unexpected {v:?} on {qd}"),
    }
}

/// The server: accepts `count` + 1 connections (the probe and the storm),
/// echoes everything, closes each at end of file.
pub fn server(os: &LibOs, addr: SocketAddrV4, count: u64, window: usize) -> Res<()> {
    let total = count + 1;
    let l = ok(os.socket(SockType::Stream), "socket")?;
    ok(os.bind(l, addr), "bind")?;
    ok(os.listen(l, BACKLOG), "listen")?;
    println!("rdma-bench: conns server on {addr} ({}), {total} connections", os.name());
    let (mut posted, mut accepted, mut closed) = (0u64, 0u64, 0u64);
    while posted < total.min(window as u64) {
        ok(os.accept(l), "accept")?;
        posted += 1;
    }
    while closed < total {
        for r in next(os, "server")? {
            match r.value {
                QValue::Accept { qd, .. } => {
                    accepted += 1;
                    ok(os.pop(qd), "pop")?;
                    if posted < total {
                        ok(os.accept(l), "accept")?;
                        posted += 1;
                    }
                }
                QValue::Pop { buf, .. } if buf.is_empty() => {
                    ok(os.close(r.qd), "close")?;
                    closed += 1;
                }
                QValue::Pop { buf, .. } => {
                    ok(os.push(r.qd, &buf), "echo")?;
                    ok(os.pop(r.qd), "pop")?;
                }
                QValue::Push | QValue::Failed(libc::ECANCELED) => {}
                v => return Err(failed(r.qd, v, "server")),
            }
        }
    }
    ok(os.close(l), "close")?;
    println!("RESULT conns-server accepted={accepted} closed={closed}");
    Ok(())
}

/// Round trips of the probe connection, µs.
#[derive(Default)]
struct Rtts(Vec<f64>);

impl Rtts {
    fn add(&mut self, since: Instant) {
        self.0.push(since.elapsed().as_secs_f64() * 1e6);
    }

    /// (count, p50, max)
    fn summary(&mut self) -> (usize, f64, f64) {
        self.0.sort_by(f64::total_cmp);
        let n = self.0.len();
        if n == 0 {
            return (0, 0.0, 0.0);
        }
        (n, self.0[(n - 1) / 2], self.0[n - 1])
    }
}

/// The probe connection and its one ping in flight.
struct Probe {
    qd: QDesc,
    ping: Buffer,
    /// The pending pop of the echo, and when its ping left.
    pending: Option<(QToken, Instant)>,
    got: usize,
}

impl Probe {
    fn send(&mut self, os: &LibOs) -> Res<()> {
        let t = Instant::now();
        ok(os.push(self.qd, &self.ping), "probe push")?;
        self.pending = Some((ok(os.pop(self.qd), "probe pop")?, t));
        self.got = 0;
        Ok(())
    }

    /// An echo (or part of one) arrived; true once the whole ping is back.
    fn on_pop(&mut self, os: &LibOs, buf: &Buffer, rtts: &mut Rtts) -> Res<bool> {
        if buf.is_empty() {
            return Err("probe: end of file".into());
        }
        self.got += buf.len();
        let (_, since) = self.pending.take().ok_or("probe: an echo nobody waited for")?;
        if self.got < self.ping.len() {
            self.pending = Some((ok(os.pop(self.qd), "probe pop")?, since));
            return Ok(false);
        }
        rtts.add(since);
        Ok(true)
    }

    /// Waits for the ping in flight, if any.
    fn finish(&mut self, os: &LibOs, rtts: &mut Rtts) -> Res<()> {
        while let Some((qt, _)) = self.pending {
            match super::wait(os, qt, "probe echo")? {
                QValue::Pop { buf, .. } => {
                    self.on_pop(os, &buf, rtts)?;
                }
                v => return Err(failed(self.qd, v, "probe")),
            }
        }
        Ok(())
    }
}

/// The client: probe, storm, echo, teardown; prints one RESULT line.
pub fn client(
    os: &LibOs,
    to: SocketAddrV4,
    bind: Option<Ipv4Addr>,
    count: u64,
    window: usize,
    warmup: u64,
    probe_gap: Option<Duration>,
) -> Res<()> {
    let n = count as usize;
    let ping = ok(os.buffer_from(&[0x70; MSG]), "alloc")?;
    let mut probe = Probe { qd: super::connect(os, to, bind)?, ping, pending: None, got: 0 };
    let (mut before, mut during) = (Rtts::default(), Rtts::default());
    for _ in 0..warmup.max(1) {
        probe.send(os)?;
        probe.finish(os, &mut before)?;
    }

    // The storm, with the probe pinging throughout.
    let mut socks: Vec<QDesc> = Vec::with_capacity(n);
    let start_connect = |socks: &mut Vec<QDesc>| -> Res<()> {
        let qd = ok(os.socket(SockType::Stream), "socket")?;
        if let Some(ip) = bind {
            ok(os.bind(qd, SocketAddrV4::new(ip, 0)), "bind")?;
        }
        ok(os.connect(qd, to), "connect")?;
        socks.push(qd);
        Ok(())
    };
    let t0 = Instant::now();
    let mut ping_due = t0;
    while socks.len() < n.min(window) {
        start_connect(&mut socks)?;
    }
    let mut established = 0;
    while established < n {
        // The probe's next ping, once the last is back and the gap is over.
        let mut wait_for = BOUND;
        if let (Some(gap), None) = (probe_gap, &probe.pending) {
            let now = Instant::now();
            if now >= ping_due {
                probe.send(os)?;
                ping_due = now + gap;
            } else {
                wait_for = ping_due - now;
            }
        }
        let done = match os.wait_next_n(BATCH, Some(wait_for)) {
            Ok(done) => done,
            Err(e) if e.errno() == libc::ETIMEDOUT && wait_for < BOUND => continue,
            Err(e) => return Err(format!("storm ({established} of {n} established): {e}")),
        };
        for r in done {
            match r.value {
                QValue::Connect => {
                    established += 1;
                    if socks.len() < n {
                        start_connect(&mut socks)?;
                    }
                }
                QValue::Pop { buf, .. } if r.qd == probe.qd => {
                    probe.on_pop(os, &buf, &mut during)?;
                }
                QValue::Push => {}
                v => return Err(failed(r.qd, v, &format!("storm ({established} of {n} established)"))),
            }
        }
    }
    let setup = t0.elapsed();
    probe.finish(os, &mut during)?;

    let echo = echo_all(os, &socks)?;

    // Teardown: FIN from here, the server closes on it, close on its FIN.
    let t2 = Instant::now();
    for &qd in &socks {
        ok(os.shutdown(qd, std::net::Shutdown::Write), "shutdown")?;
        ok(os.pop(qd), "pop")?;
    }
    let mut closed = 0;
    while closed < n {
        for r in next(os, "teardown")? {
            match r.value {
                QValue::Pop { buf, .. } if buf.is_empty() => {
                    ok(os.close(r.qd), "close")?;
                    closed += 1;
                }
                QValue::Push => {}
                v => return Err(failed(r.qd, v, "teardown")),
            }
        }
    }
    let teardown = t2.elapsed();
    ok(os.close(probe.qd), "close")?;

    let ((nb, b50, bmax), (nd, d50, dmax)) = (before.summary(), during.summary());
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "RESULT conns libos={} count={n} window={window} setup_s={:.3} setup_cps={:.0} echo_s={:.3} \
         teardown_s={:.3} teardown_cps={:.0} probe_before_n={nb} probe_before_p50_us={b50:.0} \
         probe_before_max_us={bmax:.0} probe_storm_n={nd} probe_storm_p50_us={d50:.0} probe_storm_max_us={dmax:.0}",
        os.name(),
        setup.as_secs_f64(),
        rate(setup),
        echo.as_secs_f64(),
        teardown.as_secs_f64(),
        rate(teardown),
    );
    Ok(())
}

/// Every storm connection pushes its message and checks the echo, all at
/// once.
fn echo_all(os: &LibOs, socks: &[QDesc]) -> Res<Duration> {
    let t = Instant::now();
    let mut got: HashMap<QDesc, (usize, Vec<u8>)> = HashMap::with_capacity(socks.len());
    for (i, &qd) in socks.iter().enumerate() {
        ok(os.push(qd, &ok(os.buffer_from(&message(i)), "alloc")?), "push")?;
        ok(os.pop(qd), "pop")?;
        got.insert(qd, (i, Vec::with_capacity(MSG)));
    }
    let mut echoed = 0;
    while echoed < socks.len() {
        for r in next(os, "echo")? {
            let buf = match r.value {
                QValue::Push => continue,
                QValue::Pop { buf, .. } if !buf.is_empty() => buf,
                v => return Err(failed(r.qd, v, &format!("echo ({echoed} of {} back)", socks.len()))),
            };
            let (i, acc) = got.get_mut(&r.qd).ok_or("echo: a pop on an unknown socket")?;
            acc.extend_from_slice(buf.as_slice());
            if acc.len() < MSG {
                ok(os.pop(r.qd), "pop")?;
                continue;
            }
            if acc[..] != message(*i)[..] {
                return Err(format!("connection {i}: the echo differs from the message (checksum or index)"));
            }
            echoed += 1;
        }
    }
    Ok(t.elapsed())
}
