//! catnap at C10k (issue 14): 10,000 TCP connections over loopback, all open
//! at once in one process through the Rust API. The server side accepts all
//! of them with many accepts and connects in flight, every connection then
//! echoes one checksummed message at the same time, and closing them all
//! gives every descriptor back. Prints the user-space memory per idle socket
//! (RSS growth over 20,000 sockets, both ends).
//!
//! Needs about 20,100 descriptors: the test raises RLIMIT_NOFILE itself (the
//! hard limit too, if it is lower and the process may) and fails, saying
//! why, when it cannot.

use demi::{LibOs, QDesc, QValue, SockType};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddrV4;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Connections, each with a client and a server socket.
const N: usize = 10_000;
/// Connects and accepts kept in flight during setup.
const WINDOW: usize = 512;
/// The listening socket's backlog (the kernel caps it at somaxconn).
const BACKLOG: i32 = 4096;
/// RLIMIT_NOFILE the test asks for: 2 N sockets plus the process's own.
const FD_LIMIT: libc::rlim_t = 25_000;
/// What each process needs when the two ends are in two processes.
const HALF_FDS: libc::rlim_t = N as libc::rlim_t + 1_000;
const MSG_LEN: usize = 64;
/// Bound on the user-space memory an idle socket costs (about 190 B in
/// December 2026: catnap's socket record and the engine's queue entry).
const MAX_IDLE_SOCKET_BYTES: f64 = 1024.0;
/// The whole test's bound (it takes a few seconds in release mode).
const DEADLINE: Duration = Duration::from_secs(50);
/// The longest any wait for the next completion may take.
const STALL: Duration = Duration::from_secs(10);

/// Writes a line to the test's stderr even when cargo captures the output
/// (the capture hooks the print macros only): the figures are the point.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Raises RLIMIT_NOFILE to `FD_LIMIT` (the hard limit too, if the process
/// may). True if one process can then hold both ends of all `N`
/// connections. If the hard limit is below that and may not be raised
/// (no CAP_SYS_RESOURCE), says so loudly and returns false: the client ends
/// then go to a second process, each process holding `N` sockets. Fails if
/// even that does not fit.
fn raise_fd_limit() -> bool {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: lim is a live rlimit for the kernel to fill.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(rc, 0, "getrlimit(RLIMIT_NOFILE): {}", std::io::Error::last_os_error());
    let want = libc::rlimit { rlim_cur: FD_LIMIT, rlim_max: lim.rlim_max.max(FD_LIMIT) };
    // SAFETY: want is a live, initialised rlimit.
    if lim.rlim_cur >= FD_LIMIT || unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
        return true;
    }
    let why = std::io::Error::last_os_error();
    let soft = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
    // SAFETY: soft is a live, initialised rlimit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) };
    assert!(
        rc == 0 && lim.rlim_max >= HALF_FDS,
        "catnap C10k needs {FD_LIMIT} descriptors in one process (or {HALF_FDS} in each of two), but \
         RLIMIT_NOFILE is soft {} / hard {} and raising it failed: {why} (a hard limit above {} needs \
         CAP_SYS_RESOURCE: run as root or raise `ulimit -Hn` first)",
        lim.rlim_cur,
        lim.rlim_max,
        lim.rlim_max
    );
    report(&format!(
        "catnap C10k: RLIMIT_NOFILE's hard limit is {} and raising it to {FD_LIMIT} failed ({why}): \
         both ends of {N} connections do not fit in one process here, so the client ends run in a \
         second process (each process holds {N} sockets)",
        lim.rlim_max
    ));
    false
}

/// A catnap libOS, and the process's open descriptors once it has slept
/// once: a thread's first sleep opens the thread's wake-up eventfd, which
/// then lives as long as the thread, so it belongs to the baseline.
fn catnap_and_baseline() -> (LibOs, usize) {
    let os = LibOs::new("catnap").expect("catnap starts");
    let slept = os.wait_next_n(1, Some(Duration::from_millis(20)));
    assert!(slept.is_err(), "nothing was pending, yet a wait returned {slept:?}");
    (os, open_fds())
}

/// The process's open descriptors.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd is readable").count()
}

/// The process's resident memory, KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status is readable");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/self/status");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS is a number of kB")
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// Client `i`'s message: its index, bytes derived from it, a checksum.
fn message(i: u32) -> [u8; MSG_LEN] {
    let mut m = [0u8; MSG_LEN];
    m[..4].copy_from_slice(&i.to_le_bytes());
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in &mut m[4..MSG_LEN - 8] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let sum = fnv1a(&m[..MSG_LEN - 8]);
    m[MSG_LEN - 8..].copy_from_slice(&sum.to_le_bytes());
    m
}

/// The index a whole message carries, if its checksum holds.
fn check(m: &[u8]) -> Option<u32> {
    let sum = u64::from_le_bytes(m[MSG_LEN - 8..].try_into().unwrap());
    (m.len() == MSG_LEN && fnv1a(&m[..MSG_LEN - 8]) == sum).then(|| u32::from_le_bytes(m[..4].try_into().unwrap()))
}

enum Role {
    /// The client socket of connection `i`.
    Client(usize),
    Server,
}

/// One end's bytes of the message in flight (a stream may split it).
struct End {
    role: Role,
    got: Vec<u8>,
}

/// Sets up `n` connections with `WINDOW` connects and accepts in flight:
/// accepts on `listener` if given, connects to `to` if given (both in the
/// one-process run). Returns the client sockets by index and the accepted
/// server sockets.
fn establish(os: &LibOs, listener: Option<QDesc>, to: Option<SocketAddrV4>, t0: Instant) -> (Vec<QDesc>, Vec<QDesc>) {
    let (want_servers, want_clients) = (if listener.is_some() { N } else { 0 }, if to.is_some() { N } else { 0 });
    let mut clients = Vec::with_capacity(want_clients);
    let mut servers = Vec::with_capacity(want_servers);
    let (mut accepts_posted, mut connected) = (0, 0);
    let accept_next = |posted: &mut usize| {
        if let Some(l) = listener.filter(|_| *posted < want_servers) {
            os.accept(l).expect("accept starts");
            *posted += 1;
        }
    };
    let connect_next = |clients: &mut Vec<QDesc>| {
        if let Some(to) = to.filter(|_| clients.len() < want_clients) {
            let c = os.socket(SockType::Stream).expect("a client socket");
            os.connect(c, to).expect("connect starts");
            clients.push(c);
        }
    };
    for _ in 0..WINDOW {
        accept_next(&mut accepts_posted);
        connect_next(&mut clients);
    }
    while servers.len() < want_servers || connected < want_clients {
        assert!(
            t0.elapsed() < DEADLINE,
            "setup too slow: {connected} connected, {} accepted after {:?}",
            servers.len(),
            t0.elapsed()
        );
        let done = os.wait_next_n(1024, Some(STALL)).unwrap_or_else(|e| {
            panic!(
                "setup stalled: nothing finished in {STALL:?} ({connected} connected, {} accepted): {e}",
                servers.len()
            )
        });
        for r in done {
            match r.value {
                QValue::Accept { qd, .. } => {
                    servers.push(qd);
                    accept_next(&mut accepts_posted);
                }
                QValue::Connect => {
                    connected += 1;
                    connect_next(&mut clients);
                }
                v => panic!("setup: an operation on {} ended with {v:?} ({connected} connected so far)", r.qd),
            }
        }
    }
    (clients, servers)
}

/// Every client pushes its message, every server socket echoes what it
/// gets, every client checks its echo, all at once. Either side may be
/// empty (the other is then in another process).
fn echo_all(os: &LibOs, clients: &[QDesc], servers: &[QDesc], t0: Instant) {
    let mut ends: HashMap<QDesc, End> = HashMap::with_capacity(clients.len() + servers.len());
    for (i, &c) in clients.iter().enumerate() {
        ends.insert(c, End { role: Role::Client(i), got: Vec::with_capacity(MSG_LEN) });
    }
    for &s in servers {
        assert!(ends.insert(s, End { role: Role::Server, got: Vec::with_capacity(MSG_LEN) }).is_none());
        os.pop(s).expect("server pop starts");
    }
    for (i, &c) in clients.iter().enumerate() {
        // The push keeps the buffer's memory alive until it is out.
        os.push(c, &os.buffer_from(&message(i as u32)).unwrap()).expect("client push starts");
        os.pop(c).expect("client pop starts");
    }
    let mut seen = vec![false; N];
    let (mut pushed, mut echoed, mut served) = (0, 0, 0);
    while pushed < clients.len() + servers.len() || echoed < clients.len() {
        assert!(t0.elapsed() < DEADLINE, "echo too slow: {served} served, {echoed} echoed after {:?}", t0.elapsed());
        let done = os.wait_next_n(1024, Some(STALL)).unwrap_or_else(|e| {
            panic!("echo stalled: nothing finished in {STALL:?} ({served} served, {echoed} echoed): {e}")
        });
        for r in done {
            let buf = match r.value {
                QValue::Push => {
                    pushed += 1;
                    continue;
                }
                QValue::Pop { buf, .. } => buf,
                v => panic!("echo: an operation on {} ended with {v:?}", r.qd),
            };
            let end = ends.get_mut(&r.qd).expect("a pop on a socket of this test");
            assert!(!buf.is_empty(), "unexpected end of file on {} after {} bytes", r.qd, end.got.len());
            end.got.extend_from_slice(buf.as_slice());
            drop(buf);
            if end.got.len() < MSG_LEN {
                os.pop(r.qd).expect("pop starts");
                continue;
            }
            assert_eq!(end.got.len(), MSG_LEN, "more than one message on {}", r.qd);
            let idx = check(&end.got).unwrap_or_else(|| panic!("corrupt message on {}: {:02x?}", r.qd, end.got));
            match end.role {
                Role::Server => {
                    let idx = idx as usize;
                    assert!(idx < N && !seen[idx], "message {idx} came twice or is out of range");
                    seen[idx] = true;
                    served += 1;
                    os.push(r.qd, &os.buffer_from(&end.got).unwrap()).expect("echo push starts");
                }
                Role::Client(i) => {
                    assert_eq!(idx as usize, i, "client {i} got another client's echo");
                    assert_eq!(end.got[..], message(i as u32)[..], "client {i}'s echo differs");
                    echoed += 1;
                }
            }
        }
    }
    assert_eq!(served, servers.len(), "the server saw every message once");
    assert!(servers.is_empty() || seen.iter().all(|&s| s), "a message never reached the server");
}

fn close_all(os: &LibOs, qds: &[QDesc]) -> Duration {
    let t = Instant::now();
    for &qd in qds {
        os.close(qd).expect("close");
    }
    t.elapsed()
}

/// The environment variable that makes the test binary the client half of
/// a two-process run: the server's address.
const CLIENT_ENV: &str = "DEMI_C10K_CLIENT_OF";
const TEST_NAME: &str = "ten_thousand_connections_echo_at_once";

/// The client half in its own process: connects `N`, echoes, closes.
fn client_process(server: SocketAddrV4) {
    let (os, fd_base) = catnap_and_baseline();
    let t0 = Instant::now();
    let (clients, _) = establish(&os, None, Some(server), t0);
    echo_all(&os, &clients, &[], t0);
    close_all(&os, &clients);
    assert_eq!(open_fds(), fd_base, "client process: descriptors leaked");
}

/// Kills the client process unless it has exited.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn spawn_client_process(server: SocketAddrV4) -> Reap {
    let exe = std::env::current_exe().expect("the test binary's path");
    let child = Command::new(exe)
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CLIENT_ENV, server.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("the client process starts");
    Reap(child)
}

fn wait_client_process(mut child: Reap, t0: Instant) {
    loop {
        match child.0.try_wait().expect("waitpid on the client process") {
            Some(status) => {
                assert!(status.success(), "the client process failed: {status}");
                return;
            }
            None if t0.elapsed() > DEADLINE => panic!("the client process still runs after {DEADLINE:?}"),
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[test]
fn ten_thousand_connections_echo_at_once() {
    demi::init_logging();
    if let Ok(server) = std::env::var(CLIENT_ENV) {
        client_process(server.parse().expect("the server address"));
        return;
    }
    let one_process = raise_fd_limit();
    let (os, fd_base) = catnap_and_baseline();
    let rss_base = rss_kib();
    let t0 = Instant::now();

    let l = os.socket(SockType::Stream).unwrap();
    os.bind(l, "127.0.0.1:0".parse().unwrap()).unwrap();
    os.listen(l, BACKLOG).unwrap();
    let server = os.local_addr(l).unwrap().expect("bound");
    let child = (!one_process).then(|| spawn_client_process(server));
    let fd_ready = open_fds(); // the listener and the child's handle are in
    let (clients, servers) = establish(&os, Some(l), one_process.then_some(server), t0);
    let setup = t0.elapsed();
    let rss_up = rss_kib();
    let sockets = clients.len() + servers.len();
    assert_eq!(open_fds(), fd_ready + sockets, "one descriptor per socket while all are open");

    let t1 = Instant::now();
    echo_all(&os, &clients, &servers, t0);
    let echo = t1.elapsed();
    if let Some(child) = child {
        wait_client_process(child, t0);
    }
    let teardown = close_all(&os, &[&clients[..], &servers[..], &[l]].concat());
    let fds_after = open_fds();

    let per_socket = (rss_up.saturating_sub(rss_base) as f64 * 1024.0) / sockets as f64;
    let mode = if one_process { "one process" } else { "server here, clients in a second process" };
    report(&format!(
        "catnap C10k ({mode}): {N} connections established in {:.3} s ({:.0} connections/s, window {WINDOW}), \
         echoed in {:.3} s, this process's {sockets} sockets closed in {:.3} s; RSS {rss_base} KiB -> \
         {rss_up} KiB = {per_socket:.0} B per idle socket over {sockets} sockets (user space only: the \
         kernel's socket memory is not in RSS)",
        setup.as_secs_f64(),
        N as f64 / setup.as_secs_f64(),
        echo.as_secs_f64(),
        teardown.as_secs_f64(),
    ));
    assert!(
        per_socket < MAX_IDLE_SOCKET_BYTES,
        "{per_socket:.0} B of user-space memory per idle socket (the bound is {MAX_IDLE_SOCKET_BYTES} B)"
    );
    assert_eq!(fds_after, fd_base, "descriptors leaked: {fds_after} open after closing all, {fd_base} before");
    assert!(t0.elapsed() < DEADLINE, "C10k took {:?}", t0.elapsed());
}
