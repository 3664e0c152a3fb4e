//! The `demi` command under abuse, over catnap on loopback: `demi echo`
//! against clients that send empty datagrams, exhaust its descriptors, send
//! without reading or half-close; `demi ping` and `demi stream` against fake
//! servers (std sockets in this process) that answer wrongly, slowly, or
//! reset. Every case is bounded in time; servers are killed by pid and
//! reaped when their guard drops.

mod common;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const DEMI: &str = env!("CARGO_BIN_EXE_demi");
const SECOND: Duration = Duration::from_secs(1);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `demi ARGS` on catnap, with the open-files limit at `nofile` if given.
fn demi(args: &[&str], nofile: Option<u64>) -> (Output, Duration) {
    let mut cmd = Command::new(DEMI);
    cmd.args(args).env_remove("LIBOS").env_remove("RUST_LOG").stdin(Stdio::null());
    if let Some(n) = nofile {
        limit_files(&mut cmd, n);
    }
    let t = Instant::now();
    let o = cmd.output().expect("run demi");
    (o, t.elapsed())
}

/// Lowers RLIMIT_NOFILE in the child, and closes what it inherited beyond
/// stdio so the limit means the same thing wherever the test runs.
fn limit_files(cmd: &mut Command, n: u64) {
    // SAFETY: between fork and exec the closure calls only close_range and
    // setrlimit, both async-signal-safe, on a stack value; it allocates
    // nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// One error line, status 1, mentioning `want`, no panic, within `bound`.
fn assert_one_line_failure(o: &Output, took: Duration, want: &str, bound: Duration) {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(err.starts_with("demi: error: "), "{err:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected: {err:?}");
    assert!(err.contains(want), "stderr {err:?} should mention {want:?}");
    assert!(!err.contains("panicked") && !err.contains("internal error"), "a panic: {err}");
    assert!(took < bound, "took {took:?} (bound {bound:?}): {err}");
}

// ---- a `demi echo` child --------------------------------------------------------

/// A `demi echo` child with its stderr collected; killed by pid and reaped
/// on drop.
struct Echo {
    child: Child,
    addr: SocketAddrV4,
    /// stderr lines (the first 2000 kept) and how many there were.
    log: Arc<Mutex<(Vec<String>, usize)>>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Echo {
    fn start(args: &[&str], env: &[(&str, &str)], nofile: Option<u64>) -> Echo {
        let mut cmd = Command::new(DEMI);
        cmd.arg("echo").args(args).env_remove("LIBOS").env_remove("RUST_LOG");
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(n) = nofile {
            limit_files(&mut cmd, n);
        }
        let mut child = cmd.spawn().expect("spawn demi echo");
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new((Vec::new(), 0usize)));
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut l = sink.lock().unwrap();
                if l.0.len() < 2000 {
                    l.0.push(line);
                }
                l.1 += 1;
            }
        });
        let line = common::first_line(out);
        let mut echo = Echo { child, addr: "0.0.0.0:0".parse().unwrap(), log };
        match line.strip_prefix("demi echo: listening on ").and_then(|l| l.split_whitespace().next()) {
            Some(a) => echo.addr = a.parse().unwrap(),
            None => panic!("demi echo did not start (first line {line:?}, stderr {:?})", echo.lines()),
        }
        echo
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().0.clone()
    }

    fn line_count(&self) -> usize {
        self.log.lock().unwrap().1
    }

    fn assert_running(&mut self) {
        let status = self.child.try_wait().unwrap();
        assert!(status.is_none(), "demi echo exited ({status:?}); stderr: {:?}", self.lines());
    }

    /// Bytes of resident memory (VmRSS).
    fn rss(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib = s.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS");
        kib.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).unwrap().count()
    }

    /// CPU time used so far (user + system).
    fn cpu(&self) -> Duration {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf only reads a constant of the running system.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// The fd count once it has held still for a while (bounded).
    fn settled_fds(&self) -> usize {
        let mut last = self.fds();
        let mut same = 0;
        for _ in 0..100 {
            thread::sleep(Duration::from_millis(50));
            let n = self.fds();
            same = if n == last { same + 1 } else { 0 };
            last = n;
            if same >= 4 {
                break;
            }
        }
        last
    }
}

/// The 16-byte hello of a ping (`P`) or stream (`S`) client.
fn hello(mode: u8, size: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(b"DEMI");
    h[4] = mode;
    h[8..12].copy_from_slice(&size.to_le_bytes());
    h
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| seed.wrapping_add((i % 251) as u8)).collect()
}

/// A raw tcp ping client round trip: `data` must come back unchanged.
fn tcp_round_trip(to: SocketAddrV4, data: &[u8]) {
    let mut c = TcpStream::connect_timeout(&to.into(), 5 * SECOND).expect("connect");
    c.set_read_timeout(Some(5 * SECOND)).unwrap();
    c.write_all(&hello(b'P', data.len() as u32)).unwrap();
    c.write_all(data).unwrap();
    let mut back = vec![0u8; data.len()];
    c.read_exact(&mut back).expect("the echo comes back");
    assert!(back == data, "the echo differs");
}

// ---- demi echo ----------------------------------------------------------------

#[test]
fn udp_echo_drops_an_empty_datagram_and_keeps_serving() {
    let mut echo = Echo::start(&["--proto", "udp", "--bind", "127.0.0.1:0"], &[("RUST_LOG", "debug")], None);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(5 * SECOND)).unwrap();
    s.send_to(b"", echo.addr).unwrap();
    s.send_to(b"", echo.addr).unwrap();
    s.send_to(b"after two empty ones", echo.addr).unwrap();
    let mut b = [0u8; 64];
    let (n, from) = s.recv_from(&mut b).expect("an echo after the empty datagrams");
    assert_eq!((&b[..n], from), (&b"after two empty ones"[..], SocketAddr::V4(echo.addr)));
    echo.assert_running();
    // A real ping is answered too.
    let (o, _) = demi(&["ping", "--proto", "udp", "--to", &echo.addr.to_string(), "--count", "20"], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    echo.assert_running();
    // Skipped, counted, and said at debug level only.
    let lines = echo.lines();
    let empty: Vec<&String> = lines.iter().filter(|l| l.contains("empty datagram")).collect();
    assert_eq!(empty.len(), 2, "{lines:?}");
    assert!(empty.iter().all(|l| l.contains("DEBUG")), "{empty:?}");
    assert!(empty[1].contains("2 dropped"), "{empty:?}");
}

#[test]
fn tcp_echo_backs_off_when_out_of_descriptors() {
    let mut echo = Echo::start(&["--bind", "127.0.0.1:0"], &[], Some(64));
    tcp_round_trip(echo.addr, b"warm up");
    let baseline = echo.settled_fds();
    // More clients than descriptors: accepts fail with EMFILE until some
    // close.
    let clients: Vec<TcpStream> =
        (0..100).map(|_| TcpStream::connect_timeout(&echo.addr.into(), 5 * SECOND).expect("connect")).collect();
    thread::sleep(Duration::from_millis(300));
    let (cpu0, t0, lines0) = (echo.cpu(), Instant::now(), echo.line_count());
    thread::sleep(Duration::from_millis(1500));
    let (cpu, wall, lines) = (echo.cpu() - cpu0, t0.elapsed(), echo.line_count() - lines0);
    echo.assert_running();
    eprintln!("out of descriptors: {cpu:?} of CPU and {lines} stderr lines in {wall:?}; {baseline} fds at rest");
    assert!(cpu < wall / 4, "out of descriptors, the server used {cpu:?} of CPU in {wall:?}");
    assert!(lines <= 4, "{lines} stderr lines in {wall:?}: {:?}", &echo.lines()[..20.min(echo.lines().len())]);
    drop(clients);
    // Every descriptor comes back (bounded wait).
    let deadline = Instant::now() + 10 * SECOND;
    while echo.fds() > baseline && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(echo.fds() <= baseline, "{} descriptors open after the clients left, {baseline} before", echo.fds());
    tcp_round_trip(echo.addr, &pattern(1000, 7));
    echo.assert_running();
    let all = echo.lines();
    let emfile = all.iter().filter(|l| l.contains("EMFILE")).count();
    assert!(emfile >= 1, "running out of descriptors is reported: {all:?}");
    assert!(echo.line_count() < 400, "{} stderr lines", echo.line_count());
}

#[test]
fn tcp_echo_bounds_what_a_client_that_does_not_read_queues() {
    let mut echo = Echo::start(&["--bind", "127.0.0.1:0", "--quiet"], &[], None);
    tcp_round_trip(echo.addr, b"warm up");
    let before = echo.rss();
    let mut c = TcpStream::connect(echo.addr).unwrap();
    c.write_all(&hello(b'P', 64)).unwrap();
    // Send until the server stops taking (a write stalls), 4 s or 192 MiB
    // at most; never read.
    c.set_write_timeout(Some(Duration::from_millis(300))).unwrap();
    let chunk = pattern(1 << 20, 3);
    let (mut sent, start) = (0usize, Instant::now());
    while sent < 192 << 20 && start.elapsed() < 4 * SECOND {
        match c.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("write: {e}"),
        }
    }
    thread::sleep(Duration::from_millis(200));
    let grew = echo.rss().saturating_sub(before);
    echo.assert_running();
    eprintln!("a client sent {} KiB without reading; the server grew by {} KiB", sent >> 10, grew >> 10);
    assert!(grew < 24 << 20, "the server grew by {} MiB while a client sent {} MiB", grew >> 20, sent >> 20);
    assert!(sent < 96 << 20, "the server kept taking: {} MiB sent", sent >> 20);
    // Other clients are still served meanwhile.
    tcp_round_trip(echo.addr, &pattern(5000, 9));
}

#[test]
fn tcp_echo_bounds_the_reports_a_client_that_does_not_read_asks_for() {
    // Stream mode with 1-byte messages: every `E` byte asks for a 40-byte
    // report. A client that sends them without reading must not pile up
    // pushes (memory, and time for everyone else).
    let mut echo = Echo::start(&["--bind", "127.0.0.1:0", "--quiet"], &[], None);
    tcp_round_trip(echo.addr, b"warm up");
    let before = echo.rss();
    let mut c = TcpStream::connect(echo.addr).unwrap();
    c.write_all(&hello(b'S', 1)).unwrap();
    c.set_write_timeout(Some(Duration::from_millis(300))).unwrap();
    let ends = [b'E'; 1 << 16];
    for _ in 0..64 {
        if c.write(&ends).is_err() {
            break;
        }
    }
    thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    tcp_round_trip(echo.addr, b"still there?");
    let took = t.elapsed();
    let grew = echo.rss().saturating_sub(before);
    echo.assert_running();
    eprintln!("report flood: another client served in {took:?}; the server grew by {} KiB", grew >> 10);
    assert!(took < Duration::from_millis(500), "another client waited {took:?}");
    assert!(grew < 24 << 20, "the server grew by {} MiB", grew >> 20);
}

#[test]
fn the_bound_is_an_option_documented_in_help_and_readme() {
    let (o, _) = demi(&["echo", "--help"], None);
    let out = text(&o.stdout);
    assert!(o.status.success());
    assert!(out.contains("--max-unsent <BYTES>") && out.contains("[default: 8m]"), "{out}");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    assert!(readme.contains("--max-unsent"), "README.md does not mention --max-unsent");
    for bad in ["0", "2048m", "lots"] {
        let (o, _) = demi(&["echo", "--bind", "127.0.0.1:0", "--max-unsent", bad], None);
        assert_eq!(o.status.code(), Some(2), "--max-unsent {bad}: {}", text(&o.stderr));
    }
}

#[test]
fn ping_with_messages_far_larger_than_the_bound() {
    // 32 MiB messages (more than the kernel buffers on the way hold)
    // through a server that holds 64 KiB of echo per connection: ping must
    // read the echo while its push is still going.
    let echo = Echo::start(&["--bind", "127.0.0.1:0", "--quiet", "--max-unsent", "64k"], &[], None);
    let to = echo.addr.to_string();
    let (o, _) = demi(
        &["ping", "--to", &to, "--size", "32m", "--count", "3", "--warmup", "1", "--json", "--timeout", "3"],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("\"count\":3"), "{}", text(&o.stdout));
}

#[test]
fn tcp_echo_drains_a_half_closed_connection_before_closing() {
    const LEN: usize = 16 << 20;
    let echo = Echo::start(&["--bind", "127.0.0.1:0", "--quiet"], &[], None);
    let mut c = TcpStream::connect(echo.addr).unwrap();
    c.set_read_timeout(Some(10 * SECOND)).unwrap();
    c.set_write_timeout(Some(10 * SECOND)).unwrap();
    let data = pattern(LEN, 11);
    let mut w = c.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    let sent = data.clone();
    thread::spawn(move || {
        let r =
            w.write_all(&hello(b'P', 64)).and_then(|()| w.write_all(&sent)).and_then(|()| w.shutdown(Shutdown::Write));
        let _ = tx.send(r);
    });
    // Read a second later.
    thread::sleep(SECOND);
    let mut back = Vec::with_capacity(LEN);
    let deadline = Instant::now() + 20 * SECOND;
    let mut buf = vec![0u8; 1 << 16];
    while Instant::now() < deadline {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => back.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read after {} bytes: {e}", back.len()),
        }
    }
    rx.recv_timeout(5 * SECOND).expect("the writer finished").expect("the writer wrote everything");
    assert_eq!(back.len(), LEN, "bytes echoed after a half-close");
    assert!(back == data, "the echo differs");
}

// ---- demi ping and demi stream against bad servers ------------------------------

/// A fake tcp server for one client: `serve` runs on the accepted stream
/// (accept bounded to 10 s).
fn fake_tcp(serve: impl FnOnce(TcpStream) + Send + 'static) -> SocketAddrV4 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let SocketAddr::V4(addr) = l.local_addr().unwrap() else { unreachable!() };
    l.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        let deadline = Instant::now() + 10 * SECOND;
        while Instant::now() < deadline {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(5 * SECOND)).unwrap();
                    s.set_write_timeout(Some(5 * SECOND)).unwrap();
                    return serve(s);
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    addr
}

/// Closes with a reset (SO_LINGER 0) instead of a FIN.
fn reset(s: TcpStream) {
    let lin = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: s is a live socket; lin is a live linger of the size given.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lin as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Reads the hello and one 64-byte ping; returns the ping.
fn read_ping(s: &mut TcpStream) -> Vec<u8> {
    let mut b = vec![0u8; 16 + 64];
    s.read_exact(&mut b).expect("hello and ping");
    b.split_off(16)
}

/// Holds the connection until the client closes it (bounded by the read
/// timeout).
fn linger(mut s: TcpStream) {
    let _ = std::io::copy(&mut s, &mut std::io::sink());
}

fn ping(to: SocketAddrV4) -> (Output, Duration) {
    demi(&["ping", "--to", &to.to_string(), "--count", "1", "--warmup", "0", "--timeout", "1"], None)
}

#[test]
fn ping_fails_cleanly_on_bad_tcp_replies() {
    let bound = 4 * SECOND;
    // Garbled echo.
    let to = fake_tcp(|mut s| {
        read_ping(&mut s);
        let _ = s.write_all(&[0xee; 64]);
        linger(s);
    });
    let (o, t) = ping(to);
    assert_one_line_failure(&o, t, "the echo differs from what was sent", bound);
    // Part of the echo, then the connection closes.
    let to = fake_tcp(|mut s| {
        let p = read_ping(&mut s);
        let _ = s.write_all(&p[..10]);
    });
    let (o, t) = ping(to);
    assert_one_line_failure(&o, t, "the server closed the connection", bound);
    // A reset instead of the echo.
    let to = fake_tcp(|mut s| {
        read_ping(&mut s);
        reset(s);
    });
    let (o, t) = ping(to);
    assert_one_line_failure(&o, t, "ECONNRESET", bound);
    // The right bytes, one every 100 ms: the whole echo takes 6.4 s, far
    // past --timeout 1.
    let to = fake_tcp(|mut s| {
        for b in read_ping(&mut s) {
            if s.write_all(&[b]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        linger(s);
    });
    let (o, t) = ping(to);
    assert_one_line_failure(&o, t, "within 1.0 s", Duration::from_millis(3000));
}

/// A guard on ping's deadline check rather than a proven failure: the old
/// loop (one wait per datagram, none on the clock) ran as long as the
/// socket never drained, but this flood was not fast enough to show it
/// here, so this passed on the old code too.
#[test]
fn ping_gives_up_on_a_flood_of_wrong_udp_replies() {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let SocketAddr::V4(to) = s.local_addr().unwrap() else { unreachable!() };
    s.set_read_timeout(Some(10 * SECOND)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = stop.clone();
    thread::spawn(move || {
        let mut b = [0u8; 2048];
        let Ok((_, client)) = s.recv_from(&mut b) else { return };
        // Answers that are never the one awaited (empty, short, another
        // kind) until the client is done, 8 s at most: the client must not
        // wait for them to stop.
        let junk: [&[u8]; 3] = [b"", b"short", &[b'Q'; 64]];
        let end = Instant::now() + 8 * SECOND;
        let mut i = 0usize;
        while Instant::now() < end && !flooding.load(Ordering::Relaxed) {
            let _ = s.send_to(junk[i % 3], client);
            i += 1;
        }
    });
    let (o, t) = demi(
        &["ping", "--proto", "udp", "--to", &to.to_string(), "--count", "1", "--warmup", "0", "--timeout", "1"],
        None,
    );
    stop.store(true, Ordering::Relaxed);
    assert_one_line_failure(&o, t, "no reply from", Duration::from_millis(4000));
}

/// Reads a stream client's hello and 64-byte messages up to its end
/// message.
fn read_stream(s: &mut TcpStream) -> bool {
    let mut h = [0u8; 16];
    if s.read_exact(&mut h).is_err() {
        return false;
    }
    let mut m = [0u8; 64];
    while s.read_exact(&mut m).is_ok() {
        if m[0] == b'E' {
            return true;
        }
    }
    false
}

fn report(messages: u64) -> [u8; 40] {
    let mut r = [0u8; 40];
    r[0] = b'R';
    r[16..24].copy_from_slice(&messages.to_le_bytes());
    r[24..32].copy_from_slice(&(messages * 64).to_le_bytes());
    r[32..40].copy_from_slice(&1_000_000u64.to_le_bytes());
    r
}

fn stream(to: SocketAddrV4) -> (Output, Duration) {
    demi(&["stream", "--to", &to.to_string(), "--time", "0.2", "--timeout", "1"], None)
}

#[test]
fn stream_fails_cleanly_on_bad_tcp_reports() {
    let bound = 4 * SECOND;
    let to = fake_tcp(|mut s| {
        if read_stream(&mut s) {
            let _ = s.write_all(&[b'X'; 40]);
            linger(s);
        }
    });
    let (o, t) = stream(to);
    assert_one_line_failure(&o, t, "the server's report is malformed", bound);
    let to = fake_tcp(|mut s| {
        if read_stream(&mut s) {
            let _ = s.write_all(&report(5)[..20]);
        }
    });
    let (o, t) = stream(to);
    assert_one_line_failure(&o, t, "closed the connection before its report", bound);
    // A reset while the client is sending.
    let to = fake_tcp(|mut s| {
        let mut b = [0u8; 1000];
        let _ = s.read_exact(&mut b);
        reset(s);
    });
    let (o, t) = stream(to);
    assert_one_line_failure(&o, t, "ECONNRESET", bound);
    // A server that never reads: the pushes stall.
    let to = fake_tcp(|s| {
        thread::sleep(5 * SECOND);
        drop(s);
    });
    let (o, t) = stream(to);
    assert_one_line_failure(&o, t, "within 1.0 s", bound);
    // A valid report, one byte every 100 ms: 4 s, past --timeout 1.
    let to = fake_tcp(|mut s| {
        if read_stream(&mut s) {
            for b in report(5) {
                if s.write_all(&[b]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
            linger(s);
        }
    });
    let (o, t) = stream(to);
    assert_one_line_failure(&o, t, "within 1.0 s", Duration::from_millis(3000));
}

#[test]
fn clients_out_of_descriptors_fail_in_one_line() {
    let echo = Echo::start(&["--bind", "127.0.0.1:0", "--quiet"], &[], None);
    let to = echo.addr.to_string();
    // 4: stdio and the libOS's epoll fit, the socket does not.
    let (o, t) = demi(&["ping", "--to", &to, "--count", "1"], Some(4));
    assert_one_line_failure(&o, t, "EMFILE", 5 * SECOND);
    let (o, t) = demi(&["stream", "--to", &to, "--time", "0.2"], Some(4));
    assert_one_line_failure(&o, t, "EMFILE", 5 * SECOND);
}
