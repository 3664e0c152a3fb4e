//! The kernel baselines: plain blocking `std::net` sockets, server in a
//! process of its own (this program run as `role kernel-tcp|kernel-udp`),
//! client in the suite, so they compare with `demi echo` + `demi ping`
//! (two processes) on equal terms.
//!
//! TCP: the first byte says what follows: `P` (echo every byte back) or `S`
//! (count bytes until the client shuts down its side, then answer with the
//! byte count and the nanoseconds from the first read to the last).
//! UDP: the datagram format of `demi echo` (16-byte header: `D` counted,
//! `E` answered with a 40-byte report, anything else echoed).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// Serves forever (the suite kills it by pid); prints "ready ADDR" first.
pub fn role(kind: &str) {
    match kind {
        "kernel-tcp" => tcp_server(),
        "kernel-udp" => udp_server(),
        other => panic!("unknown role {other}"),
    }
}

fn ready(addr: SocketAddr) {
    println!("ready {addr}");
    let _ = std::io::stdout().flush();
}

fn tcp_server() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    ready(l.local_addr().unwrap());
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        let _ = s.set_nodelay(true);
        let mut mode = [0u8; 1];
        if s.read_exact(&mut mode).is_err() {
            continue;
        }
        let mut buf = vec![0u8; 1 << 16];
        if mode[0] == b'P' {
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        } else {
            let (mut bytes, mut first, mut last) = (0u64, None, Instant::now());
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                bytes += n as u64;
            }
            let nanos = first.map(|f| last.duration_since(f).as_nanos() as u64).unwrap_or(0);
            let mut r = [0u8; 16];
            r[..8].copy_from_slice(&bytes.to_le_bytes());
            r[8..].copy_from_slice(&nanos.to_le_bytes());
            let _ = s.write_all(&r);
        }
    }
}

fn udp_server() {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    ready(s.local_addr().unwrap());
    let mut buf = vec![0u8; 1 << 16];
    let (mut session, mut messages, mut bytes) = (u64::MAX, 0u64, 0u64);
    let (mut first, mut last) = (None::<Instant>, Instant::now());
    loop {
        let Ok((n, from)) = s.recv_from(&mut buf) else { continue };
        let d = &buf[..n];
        let kind = if n >= 16 { d[0] } else { 0 };
        if kind != b'D' && kind != b'E' {
            let _ = s.send_to(d, from);
            continue;
        }
        let id = u64::from_le_bytes(d[8..16].try_into().unwrap());
        if id != session {
            (session, messages, bytes, first) = (id, 0, 0, None);
        }
        if kind == b'D' {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            messages += 1;
            bytes += n as u64;
            continue;
        }
        let nanos = first.map(|f| last.duration_since(f).as_nanos() as u64).unwrap_or(0);
        let mut r = [0u8; 40];
        r[0] = b'R';
        for (i, v) in [session, messages, bytes, nanos].into_iter().enumerate() {
            r[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        let _ = s.send_to(&r, from);
    }
}

/// Round-trip times (µs) of `count` timed pings after `count / 10` warm-ups.
pub fn tcp_ping(addr: SocketAddr, size: usize, count: usize) -> std::io::Result<Vec<f64>> {
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.write_all(b"P")?;
    let msg = vec![7u8; size];
    let mut back = vec![0u8; size];
    let mut us = Vec::with_capacity(count);
    for i in 0..count + count / 10 {
        let t0 = Instant::now();
        c.write_all(&msg)?;
        c.read_exact(&mut back)?;
        if i >= count / 10 {
            us.push(t0.elapsed().as_nanos() as f64 / 1000.0);
        }
    }
    Ok(us)
}

pub fn udp_ping(addr: SocketAddr, size: usize, count: usize) -> std::io::Result<Vec<f64>> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut msg = vec![7u8; size.max(16)];
    msg[0] = b'P';
    let mut back = vec![0u8; 1 << 16];
    let mut us = Vec::with_capacity(count);
    for i in 0..(count + count / 10) as u64 {
        msg[8..16].copy_from_slice(&i.to_le_bytes());
        let t0 = Instant::now();
        s.send_to(&msg, addr)?;
        loop {
            let (n, _) = s.recv_from(&mut back)?;
            if n == msg.len() && back[8..16] == msg[8..16] {
                break;
            }
        }
        if i >= (count / 10) as u64 {
            us.push(t0.elapsed().as_nanos() as f64 / 1000.0);
        }
    }
    Ok(us)
}

/// One-way TCP throughput in Gbit/s as the server counted it.
pub fn tcp_stream(addr: SocketAddr, size: usize, secs: f64) -> std::io::Result<f64> {
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    c.write_all(b"S")?;
    let msg = vec![7u8; size];
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        c.write_all(&msg)?;
    }
    c.shutdown(Shutdown::Write)?;
    let mut r = [0u8; 16];
    c.read_exact(&mut r)?;
    let bytes = u64::from_le_bytes(r[..8].try_into().unwrap()) as f64;
    let nanos = u64::from_le_bytes(r[8..].try_into().unwrap()) as f64;
    Ok(if nanos > 0.0 { bytes * 8.0 / nanos } else { 0.0 })
}

/// One-way UDP throughput (Gbit/s of what arrived) as the server counted it.
pub fn udp_stream(addr: SocketAddr, size: usize, secs: f64) -> std::io::Result<f64> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64);
    let session = (u64::from(std::process::id()) << 32) ^ clock.unwrap_or(1);
    let mut msg = vec![7u8; size.max(16)];
    msg[0] = b'D';
    msg[8..16].copy_from_slice(&session.to_le_bytes());
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        s.send_to(&msg, addr)?;
    }
    let mut e = [0u8; 16];
    e[0] = b'E';
    e[8..16].copy_from_slice(&session.to_le_bytes());
    s.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut back = [0u8; 64];
    for _ in 0..10 {
        s.send_to(&e, addr)?;
        while let Ok((n, _)) = s.recv_from(&mut back) {
            if n == 40 && back[0] == b'R' && back[8..16] == session.to_le_bytes() {
                let bytes = u64::from_le_bytes(back[24..32].try_into().unwrap()) as f64;
                let nanos = u64::from_le_bytes(back[32..40].try_into().unwrap()) as f64;
                return Ok(if nanos > 0.0 { bytes * 8.0 / nanos } else { 0.0 });
            }
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no report from the kernel UDP server"))
}
