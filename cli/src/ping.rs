//! `demi ping`: one message in flight; each round trip is timed from the
//! push to the moment the whole echo is back (and checked byte for byte).

use crate::net;
use crate::stats::{self, Plan, Progress, Summary};
use crate::{Fail, PingArgs, Proto, Res};
use demi::{Buffer, LibOs, QDesc, QToken, QValue};
use serde::Serialize;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

/// The `--json` record.
#[derive(Serialize)]
struct Record {
    tool: &'static str,
    libos: &'static str,
    proto: &'static str,
    to: String,
    bind: Option<String>,
    size: usize,
    warmup: u64,
    /// Threads, each with its own connection (`--threads`).
    threads: u16,
    /// Timed round trips that came back (all threads).
    count: u64,
    /// Pings that got no answer in time (udp only).
    lost: u64,
    /// Length of the timed part (the longest thread's).
    seconds: f64,
    /// Each thread's round trips over its own timed part, summed.
    round_trips_per_s: f64,
    rtt_us: Summary,
    /// `[µs, fraction of round trips at or below it]`.
    cdf: Vec<[f64; 2]>,
    unix_time: u64,
}

/// The connection and what a round trip needs.
struct Pinger<'a> {
    os: &'a LibOs,
    qd: QDesc,
    to: SocketAddrV4,
    proto: Proto,
    msg: Buffer,
    timeout: Duration,
    /// udp: a pop still waiting from a lost ping.
    pop: Option<QToken>,
    seq: u64,
    /// udp: a reply has come back at least once.
    answered: bool,
    misses: u32,
}

impl Pinger<'_> {
    /// One round trip; false if a udp ping got no answer in time.
    fn round(&mut self) -> Res<bool> {
        match self.proto {
            Proto::Tcp => self.tcp().map(|()| true),
            Proto::Udp => self.udp(),
        }
    }

    fn tcp(&mut self) -> Res<()> {
        let os = self.os;
        let end = Instant::now() + self.timeout;
        let mut push = Some(net::call(os.push(self.qd, &self.msg), "push")?);
        let mut pop = Some(net::call(os.pop(self.qd), "pop")?);
        let want = self.msg.as_slice();
        let mut got = 0;
        // Take the echo in while the push goes out: a message larger than
        // what the path and the server buffer would never finish otherwise.
        // The whole round trip has one deadline, however the echo trickles.
        while push.is_some() || pop.is_some() {
            // On the stack: this is inside the timed round trip.
            let (mut both, mut n) = ([0 as QToken; 2], 0);
            for &t in push.iter().chain(pop.iter()) {
                both[n] = t;
                n += 1;
            }
            let tokens = &both[..n];
            let left = end.saturating_duration_since(Instant::now());
            let (i, r) = match os.wait_any(tokens, Some(left)) {
                Ok(x) => x,
                Err(e) if e.errno() == libc::ETIMEDOUT => {
                    return Err(Fail::new(format!(
                        "waiting for the echo: {got} of {} B back within {:.1} s",
                        want.len(),
                        self.timeout.as_secs_f64()
                    )))
                }
                Err(e) => return Err(Fail::new(format!("waiting for the echo: {}", net::error_text(&e)))),
            };
            if push == Some(tokens[i]) {
                push = None;
                if let QValue::Failed(e) = r.value {
                    return Err(Fail::new(format!("push: {}", net::errno_text(e))));
                }
                continue;
            }
            pop = None;
            match r.value {
                QValue::Pop { buf, .. } if !buf.is_empty() => {
                    let part = buf.as_slice();
                    if got + part.len() > want.len() || part != &want[got..got + part.len()] {
                        return Err(Fail::new("the echo differs from what was sent"));
                    }
                    got += part.len();
                    if got < want.len() {
                        pop = Some(net::call(os.pop(self.qd), "pop")?);
                    }
                }
                QValue::Failed(e) => return Err(Fail::new(format!("waiting for the echo: {}", net::errno_text(e)))),
                _ => return Err(Fail::new("the server closed the connection")),
            }
        }
        Ok(())
    }

    fn udp(&mut self) -> Res<bool> {
        let os = self.os;
        self.seq += 1;
        match self.msg.as_mut_slice() {
            Some(b) => net::put_header(b, net::KIND_PING, self.seq),
            None => {
                // Still shared with a finished push somewhere: use a copy.
                let mut bytes = self.msg.as_slice().to_vec();
                net::put_header(&mut bytes, net::KIND_PING, self.seq);
                self.msg = net::call(os.buffer_from(&bytes), "cannot allocate a buffer")?;
            }
        }
        let push = net::call(os.pushto(self.qd, &self.msg, self.to), "push")?;
        net::wait(os, push, self.timeout, "push")?;
        let end = Instant::now() + self.timeout;
        loop {
            // Other datagrams do not extend the wait, however many come.
            if Instant::now() >= end {
                return self.missed();
            }
            let pop = match self.pop.take() {
                Some(p) => p,
                None => net::call(os.pop(self.qd), "pop")?,
            };
            let left = end.saturating_duration_since(Instant::now());
            match net::wait_opt(os, pop, left, "waiting for the echo")? {
                None => {
                    self.pop = Some(pop);
                    return self.missed();
                }
                Some(QValue::Pop { buf, .. }) => {
                    let b = buf.as_slice();
                    if b.len() < net::UDP_HEADER || b[0] != net::KIND_PING || net::header_number(b) != Some(self.seq) {
                        continue; // a late answer to a lost ping
                    }
                    if b != self.msg.as_slice() {
                        return Err(Fail::new("the echo differs from what was sent"));
                    }
                    self.answered = true;
                    self.misses = 0;
                    return Ok(true);
                }
                Some(_) => continue,
            }
        }
    }

    fn missed(&mut self) -> Res<bool> {
        self.misses += 1;
        let secs = self.timeout.as_secs_f64();
        if !self.answered {
            return Err(Fail::new(format!(
                "no reply from {} within {secs:.1} s (is `demi echo --proto udp --bind {}` running there?)",
                self.to, self.to
            )));
        }
        if self.misses >= 3 {
            return Err(Fail::new(format!("the last 3 pings to {} got no reply within {secs:.1} s each", self.to)));
        }
        Ok(false)
    }
}

/// What one thread's pinging came to.
struct Run {
    /// Round-trip times of the answered pings, in ns.
    ns: Vec<u64>,
    lost: u64,
    seconds: f64,
}

/// One thread's pings over its connection `qd` (thread `k`).
fn ping(os: &LibOs, qd: QDesc, k: u16, a: &PingArgs) -> Res<Run> {
    let c = &a.common;
    let timeout = Duration::from_secs_f64(a.timeout);
    let msg = net::message(os, a.size, 1)?;
    let to = net::nth(a.to, k)?;
    let mut p = Pinger { os, qd, to, proto: c.proto, msg, timeout, pop: None, seq: 0, answered: false, misses: 0 };
    let mut lost = 0u64;
    for _ in 0..a.warmup {
        p.round()?;
    }
    let plan = match (a.count, a.time) {
        (Some(n), _) => Plan::Count(n),
        (None, Some(t)) => Plan::Time(Duration::from_secs_f64(t)),
        (None, None) => Plan::Count(1000),
    };
    let mut ns: Vec<u64> = Vec::with_capacity(match plan {
        Plan::Count(n) => n.min(1 << 24) as usize,
        Plan::Time(_) => 1 << 16,
    });
    // One progress bar: the first thread's.
    let mut progress = Progress::new(plan, "round trips", a.json || k > 0);
    let start = Instant::now();
    let mut now = start;
    loop {
        let done = ns.len() as u64 + lost;
        match plan {
            Plan::Count(n) if done >= n => break,
            Plan::Time(t) if now.duration_since(start) >= t => break,
            _ => {}
        }
        let t0 = Instant::now();
        let answered = p.round()?;
        now = Instant::now();
        if answered {
            ns.push(now.duration_since(t0).as_nanos() as u64);
        } else {
            lost += 1;
        }
        progress.tick(ns.len() as u64, now);
    }
    progress.finish();
    let _ = os.close(qd);
    Ok(Run { ns, lost, seconds: now.duration_since(start).as_secs_f64() })
}

pub fn run(a: &PingArgs) -> Res<()> {
    let c = &a.common;
    let runs = net::clients(c, a.bind, a.to, a.size, net::MODE_PING, a.timeout, |os, qd, k| ping(os, qd, k, a))?;
    // Each thread's rate over its own timed span, summed.
    let rate: f64 = runs.iter().map(|r| r.ns.len() as f64 / r.seconds.max(1e-9)).sum();
    let seconds = runs.iter().map(|r| r.seconds).fold(0.0, f64::max);
    let lost: u64 = runs.iter().map(|r| r.lost).sum();
    let mut ns: Vec<u64> = runs.into_iter().flat_map(|r| r.ns).collect();
    let Some(summary) = stats::summarize(&mut ns) else {
        return Err(Fail::new("no round trip completed"));
    };
    if a.json {
        let r = Record {
            tool: "ping",
            libos: c.libos.name(),
            proto: c.proto.name(),
            to: a.to.to_string(),
            bind: a.bind.map(|b| b.to_string()),
            size: a.size,
            warmup: a.warmup,
            threads: c.threads,
            count: ns.len() as u64,
            lost,
            seconds,
            round_trips_per_s: rate,
            rtt_us: summary,
            cdf: stats::cdf(&ns),
            unix_time: stats::unix_time(),
        };
        println!("{}", serde_json::to_string(&r).map_err(|e| Fail::new(format!("json: {e}")))?);
    } else {
        let threads = match c.threads {
            1 => String::new(),
            n => format!(" on {n} threads (ports {}..{})", a.to.port(), net::nth(a.to, n - 1)?.port()),
        };
        println!(
            "demi ping: {} round trips of {} B over {} {} to {}{threads} in {seconds:.2} s{}, {rate:.0} round trips/s",
            ns.len(),
            a.size,
            c.libos.name(),
            c.proto.name(),
            a.to,
            if lost > 0 { format!(", {lost} lost") } else { String::new() }
        );
        stats::print_table(&summary);
    }
    Ok(())
}
