//! A TCP echo with demi's Rust API, server and client in one program.
//!
//!     cargo run --release --example echo -- server 127.0.0.1:7000
//!     cargo run --release --example echo -- client 127.0.0.1:7000 [ROUNDS]
//!
//! Pick the libOS with LIBOS (catnap by default). Every call returns at once
//! with a queue token; `wait` blocks until that operation is done.

use demi::{LibOs, QDesc, QValue, SockType};
use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn server(os: &LibOs, addr: SocketAddrV4) -> demi::Result<()> {
    let listener = os.socket(SockType::Stream)?;
    os.bind(listener, addr)?;
    os.listen(listener, 16)?;
    println!("echo: listening on {addr} ({})", os.name());
    loop {
        // accept() starts the operation; wait() finishes it.
        let done = os.wait(os.accept(listener)?, None)?;
        let QValue::Accept { qd, peer } = done.value else {
            eprintln!("echo: accept failed: {}", demi::errno_name(done.errno()));
            continue;
        };
        println!("echo: connection from {peer}");
        serve(os, qd)?;
        os.close(qd)?;
    }
}

/// Echoes until the peer closes (a zero-length pop) or the connection fails.
fn serve(os: &LibOs, qd: QDesc) -> demi::Result<()> {
    loop {
        let popped = os.wait(os.pop(qd)?, None)?;
        let QValue::Pop { buf, .. } = popped.value else {
            return Ok(());
        };
        if buf.is_empty() {
            return Ok(());
        }
        // Push the received buffer itself back: no copy.
        os.wait(os.push(qd, &buf)?, None)?;
    }
}

fn client(os: &LibOs, addr: SocketAddrV4, rounds: usize) -> demi::Result<()> {
    let qd = os.socket(SockType::Stream)?;
    let connected = os.wait(os.connect(qd, addr)?, Some(Duration::from_secs(10)))?;
    if connected.errno() != 0 {
        return Err(demi::Error::new(connected.errno(), "connect failed"));
    }
    let msg = os.buffer_from(&[0x5a; 64])?;
    let mut rtts = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t0 = Instant::now();
        os.wait(os.push(qd, &msg)?, None)?;
        let mut got = 0;
        // A stream may split the echo over several pops.
        while got < msg.len() {
            match os.wait(os.pop(qd)?, None)?.value {
                QValue::Pop { buf, .. } if !buf.is_empty() => got += buf.len(),
                _ => return Err(demi::Error::new(libc::ECONNRESET, "server went away")),
            }
        }
        rtts.push(t0.elapsed());
    }
    os.close(qd)?;
    rtts.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "echo: {rounds} round trips of 64 B: p50 {:.1} µs, p99 {:.1} µs",
        us(rtts[rtts.len() / 2]),
        us(rtts[rtts.len() * 99 / 100])
    );
    Ok(())
}

fn main() -> ExitCode {
    demi::init_logging();
    let args: Vec<String> = std::env::args().collect();
    let (Some(role), Some(addr)) = (args.get(1), args.get(2).and_then(|a| a.parse().ok())) else {
        eprintln!("usage: echo server|client IPV4:PORT [ROUNDS]");
        return ExitCode::from(2);
    };
    let rounds = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(1000);
    let result = LibOs::from_env().and_then(|os| match role.as_str() {
        "server" => server(&os, addr),
        _ => client(&os, addr, rounds),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}
