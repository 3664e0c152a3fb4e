//! `demi stream`: pushes messages as fast as a window of pushes in flight
//! allows for the given time, then asks `demi echo` what it counted. The
//! figures are the echo side's: messages that arrived, over the time from
//! the first arrival to the last.

use crate::net::{self, Report};
use crate::stats::{Plan, Progress};
use crate::{Fail, Proto, Res, StreamArgs};
use demi::{Buffer, LibOs, QDesc, QValue};
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
    window: u32,
    /// Threads, each with its own socket (`--threads`); figures are totals.
    threads: u16,
    /// How long the sender sent (the longest thread).
    seconds: f64,
    sent: u64,
    sent_per_s: f64,
    /// What the echo side counted.
    received: u64,
    received_bytes: u64,
    /// First to last arrival at the echo side.
    receive_seconds: f64,
    messages_per_s: f64,
    gbit_per_s: f64,
    /// Sent but not counted (datagrams may be dropped).
    lost: u64,
    unix_time: u64,
}

/// What one thread's stream came to.
struct Run {
    sent: u64,
    /// How long it sent.
    seconds: f64,
    report: Report,
}

/// One thread's stream over its socket `qd` (thread `k`).
fn stream(os: &LibOs, qd: QDesc, k: u16, a: &StreamArgs) -> Res<Run> {
    let c = &a.common;
    let timeout = Duration::from_secs_f64(a.timeout);
    let session = (u64::from(std::process::id()) << 32) ^ clock_seed() ^ u64::from(k);
    let mut data = net::message(os, a.size, 3)?;
    let mut end = net::message(os, if c.proto == Proto::Udp { net::UDP_HEADER } else { a.size }, 5)?;
    {
        let d = data.as_mut_slice().expect("fresh");
        let e = end.as_mut_slice().expect("fresh");
        if c.proto == Proto::Udp {
            net::put_header(d, net::KIND_DATA, session);
            net::put_header(e, net::KIND_END, session);
        } else {
            d[0] = net::KIND_DATA;
            e[0] = net::KIND_END;
        }
    }
    let dest = net::nth(a.to, k)?;
    let to = (c.proto == Proto::Udp).then_some(dest);
    let push = |b: &Buffer| match to {
        Some(t) => os.pushto(qd, b, t),
        None => os.push(qd, b),
    };

    let span = Duration::from_secs_f64(a.time);
    // One progress bar: the first thread's.
    let mut progress = Progress::new(Plan::Time(span), "messages sent", a.json || k > 0);
    // Pushes in flight: the window refills after each wait_next_n, which
    // takes every push finished so far in one call (only pushes are
    // outstanding here).
    let window = a.window as usize;
    let mut inflight = 0usize;
    let mut sent = 0u64;
    let start = Instant::now();
    let mut now = start;
    while now.duration_since(start) < span {
        while inflight < window {
            net::call(push(&data), "push")?;
            inflight += 1;
        }
        let n = take_pushes(os, window, timeout)?;
        inflight -= n;
        sent += n as u64;
        now = Instant::now();
        progress.tick(sent, now);
    }
    // The last pushes drain within one timeout, not one each.
    let drained = Instant::now() + timeout;
    while inflight > 0 {
        let n = take_pushes(os, inflight, drained.saturating_duration_since(Instant::now()))?;
        inflight -= n;
        sent += n as u64;
    }
    let seconds = start.elapsed().as_secs_f64();
    progress.finish();

    let report = match c.proto {
        Proto::Tcp => tcp_report(os, qd, &end, timeout)?,
        Proto::Udp => udp_report(os, qd, &end, dest, session, timeout)?,
    };
    let _ = os.close(qd);
    if report.messages == 0 {
        return Err(Fail::new(format!("{dest} counted none of the {sent} messages sent")));
    }
    Ok(Run { sent, seconds, report })
}

pub fn run(a: &StreamArgs) -> Res<()> {
    let c = &a.common;
    let runs = net::clients(c, a.bind, a.to, a.size, net::MODE_STREAM, a.timeout, |os, qd, k| stream(os, qd, k, a))?;
    // Totals: each thread's rate over its own span, summed.
    let sent: u64 = runs.iter().map(|r| r.sent).sum();
    let seconds = runs.iter().map(|r| r.seconds).fold(0.0, f64::max);
    let sent_per_s: f64 = runs.iter().map(|r| r.sent as f64 / r.seconds.max(1e-9)).sum();
    let received: u64 = runs.iter().map(|r| r.report.messages).sum();
    let received_bytes: u64 = runs.iter().map(|r| r.report.bytes).sum();
    let mut rate = 0.0;
    let mut bytes_per_s = 0.0;
    let mut rsecs: f64 = 0.0;
    for r in &runs {
        let secs = if r.report.messages > 1 && r.report.nanos > 0 { r.report.nanos as f64 / 1e9 } else { r.seconds };
        rate += r.report.messages as f64 / secs;
        bytes_per_s += r.report.bytes as f64 / secs;
        rsecs = rsecs.max(secs);
    }
    let gbit = bytes_per_s * 8.0 / 1e9;
    if a.json {
        let r = Record {
            tool: "stream",
            libos: c.libos.name(),
            proto: c.proto.name(),
            to: a.to.to_string(),
            bind: a.bind.map(|b| b.to_string()),
            size: a.size,
            window: a.window,
            threads: c.threads,
            seconds,
            sent,
            sent_per_s,
            received,
            received_bytes,
            receive_seconds: rsecs,
            messages_per_s: rate,
            gbit_per_s: gbit,
            lost: sent.saturating_sub(received),
            unix_time: crate::stats::unix_time(),
        };
        println!("{}", serde_json::to_string(&r).map_err(|e| Fail::new(format!("json: {e}")))?);
    } else {
        let threads = match c.threads {
            1 => String::new(),
            n => format!(", {n} threads (ports {}..{})", a.to.port(), net::nth(a.to, n - 1)?.port()),
        };
        println!(
            "demi stream: {} B messages over {} {} to {} for {seconds:.2} s ({} in flight{threads})",
            a.size,
            c.libos.name(),
            c.proto.name(),
            a.to,
            a.window
        );
        println!("  sent      {sent:>12} messages  {sent_per_s:>12.0} messages/s");
        println!("  received  {received:>12} messages  {rate:>12.0} messages/s  {gbit:.3} Gbit/s");
        if sent > received {
            println!("  lost      {:>12} messages", sent - received);
        }
    }
    Ok(())
}

/// Waits for finished pushes and takes up to `max` of them; a failed push or
/// none within `timeout` is an error.
fn take_pushes(os: &LibOs, max: usize, timeout: Duration) -> Res<usize> {
    let rs = os.wait_next_n(max, Some(timeout)).map_err(|e| {
        if e.errno() == libc::ETIMEDOUT {
            Fail::new(format!("push: nothing happened within {:.1} s", timeout.as_secs_f64()))
        } else {
            Fail::new(format!("push: {}", net::error_text(&e)))
        }
    })?;
    for r in &rs {
        if let QValue::Failed(e) = r.value {
            return Err(Fail::new(format!("push: {}", net::errno_text(e))));
        }
    }
    Ok(rs.len())
}

/// A little per-run variety for the session number.
fn clock_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Sends the end message and reads the 40-byte report off the stream.
fn tcp_report(os: &LibOs, qd: QDesc, end: &Buffer, timeout: Duration) -> Res<Report> {
    let qt = net::call(os.push(qd, end), "push")?;
    net::wait(os, qt, timeout, "sending the end of the stream")?;
    let mut got = Vec::with_capacity(net::REPORT_LEN);
    // One deadline for the whole report, however it trickles in.
    let end = Instant::now() + timeout;
    while got.len() < net::REPORT_LEN {
        let qt = net::call(os.pop(qd), "pop")?;
        let left = end.saturating_duration_since(Instant::now());
        let v = net::wait_opt(os, qt, left, "waiting for the report")?.ok_or_else(|| {
            Fail::new(format!(
                "waiting for the report: {} of {} B within {:.1} s",
                got.len(),
                net::REPORT_LEN,
                timeout.as_secs_f64()
            ))
        })?;
        match v {
            QValue::Pop { buf, .. } if !buf.is_empty() => got.extend_from_slice(buf.as_slice()),
            _ => return Err(Fail::new("the server closed the connection before its report")),
        }
    }
    Report::decode(&got).ok_or_else(|| Fail::new("the server's report is malformed (is it `demi echo`?)"))
}

/// Asks for the session's report, a few times (datagrams get lost).
fn udp_report(os: &LibOs, qd: QDesc, end: &Buffer, to: SocketAddrV4, session: u64, timeout: Duration) -> Res<Report> {
    const TRIES: u32 = 5;
    let each = (timeout / TRIES).max(Duration::from_millis(200));
    let mut pop = None;
    for _ in 0..TRIES {
        let qt = net::call(os.pushto(qd, end, to), "push")?;
        net::wait(os, qt, timeout, "sending the end of the stream")?;
        let until = Instant::now() + each;
        // Other datagrams do not extend the wait, however many come.
        while Instant::now() < until {
            let p = match pop.take() {
                Some(p) => p,
                None => net::call(os.pop(qd), "pop")?,
            };
            let left = until.saturating_duration_since(Instant::now());
            match net::wait_opt(os, p, left, "waiting for the report")? {
                None => {
                    pop = Some(p);
                    break;
                }
                Some(QValue::Pop { buf, .. }) => {
                    if let Some(r) = Report::decode(buf.as_slice()).filter(|r| r.session == session) {
                        return Ok(r);
                    }
                }
                Some(_) => {}
            }
        }
    }
    Err(Fail::new(format!(
        "no report from {to} within {:.1} s (is `demi echo --proto udp --bind {to}` running there?)",
        timeout.as_secs_f64()
    )))
}
