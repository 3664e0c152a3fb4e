//! The `demi` command: argument handling, error paths (one line, a non-zero
//! status, no panic), the JSON records, and real runs of `demi ping` and
//! `demi stream` against `demi echo` in another process: catnap TCP and UDP
//! over loopback, and catnip over a memif link between two DPDK processes.
//! catmint runs in the RDMA suite (scripts/rdma-suite.sh, inside rxe-run).
//!
//! Servers are killed by pid and reaped when their guard drops; memif
//! socket folders are removed by a guard too.

mod common;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const DEMI: &str = env!("CARGO_BIN_EXE_demi");

fn demi(args: &[&str]) -> Output {
    Command::new(DEMI)
        .args(args)
        .env_remove("LIBOS")
        .env_remove("DEMI_DPDK_EAL")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .expect("run demi")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A failure as the command promises: status `code`, one line on stderr
/// that contains `want`, nothing on stdout, no panic.
fn assert_fails(o: &Output, code: i32, want: &str) {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(want), "stderr {err:?} should mention {want:?}");
    assert!(!err.contains("panicked") && !err.contains("internal error"), "a panic: {err}");
    assert!(o.stdout.is_empty(), "stdout should be empty: {}", text(&o.stdout));
    if code == 1 {
        assert_eq!(err.trim_end().lines().count(), 1, "one line expected: {err:?}");
        assert!(err.starts_with("demi: error: "), "{err:?}");
    }
}

/// A port nobody listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `demi echo` child, killed by pid and reaped on drop.
struct Server {
    child: Child,
    addr: SocketAddrV4,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `demi echo ARGS` and waits (bounded) for its "listening on"
    /// line, which names the address it got.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(DEMI);
        cmd.arg("echo").args(args).env_remove("LIBOS").stdin(Stdio::null()).stdout(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn demi echo");
        let out = child.stdout.take().unwrap();
        let line = common::first_line(out);
        let mut server = Server { child, addr: "0.0.0.0:0".parse().unwrap() };
        let addr = line
            .strip_prefix("demi echo: listening on ")
            .and_then(|l| l.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        match addr {
            Some(a) => server.addr = a,
            None => {
                let status = server.child.try_wait().ok().flatten();
                panic!("demi echo did not start (first line {line:?}, status {status:?})");
            }
        }
        server
    }
}

fn json(o: &Output) -> Value {
    assert!(o.status.success(), "status {:?}, stderr: {}", o.status, text(&o.stderr));
    let out = text(&o.stdout);
    assert_eq!(out.trim_end().lines().count(), 1, "--json prints one line: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

/// The shape and sanity of a ping record.
fn check_ping_record(v: &Value, libos: &str, proto: &str, size: u64, count: u64) {
    assert_eq!(v["tool"], "ping");
    assert_eq!(v["libos"], libos);
    assert_eq!(v["proto"], proto);
    assert_eq!(v["size"].as_u64(), Some(size));
    assert_eq!(v["count"].as_u64().unwrap() + v["lost"].as_u64().unwrap(), count);
    assert!(v["count"].as_u64().unwrap() > 0);
    let r = &v["rtt_us"];
    let q: Vec<f64> = ["min", "p50", "p90", "p99", "p99_9", "max"].iter().map(|k| num(r, k)).collect();
    assert!(q[0] > 0.0, "{r}");
    assert!(q.windows(2).all(|w| w[0] <= w[1]), "percentiles out of order: {r}");
    assert!(num(r, "mean") >= q[0] && num(r, "mean") <= q[5]);
    let cdf = v["cdf"].as_array().expect("cdf");
    assert!(cdf.len() > 100);
    let pts: Vec<(f64, f64)> = cdf.iter().map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap())).collect();
    assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1), "cdf not monotone");
    assert_eq!(pts.last().unwrap(), &(q[5], 1.0));
    assert_eq!(pts[0].0, q[0]);
    assert!(num(v, "seconds") > 0.0);
    assert!(num(v, "unix_time") > 1.6e9);
}

// ---- arguments and help ----------------------------------------------------

#[test]
fn help_lists_the_commands_and_the_tunables() {
    let o = demi(&["--help"]);
    assert!(o.status.success());
    let out = text(&o.stdout);
    for cmd in ["devices", "echo", "ping", "stream", "Examples"] {
        assert!(out.contains(cmd), "--help lacks {cmd}: {out}");
    }
    let o = demi(&["ping", "--help"]);
    let out = text(&o.stdout);
    for opt in
        ["--libos", "--proto", "--to", "--bind", "--size", "--count", "--time", "--json", "--spin-us", "--threads"]
    {
        assert!(out.contains(opt), "ping --help lacks {opt}");
    }
    for (opt, var) in [
        ("--recv-depth", "DEMI_RDMA_RECV_DEPTH"),
        ("--srq-depth", "DEMI_RDMA_SRQ_DEPTH"),
        ("--inline", "DEMI_RDMA_INLINE"),
        ("--eal", "DEMI_DPDK_EAL"),
    ] {
        assert!(out.contains(opt) && out.contains(var), "ping --help lacks {opt} ({var})");
    }
    assert!(text(&demi(&["stream", "--help"]).stdout).contains("--window"));
}

#[test]
fn bad_arguments_are_usage_errors() {
    let to = "--to=127.0.0.1:9";
    assert_fails(&demi(&["ping", "--libos", "catfish", to]), 2, "invalid value 'catfish'");
    assert_fails(&demi(&["ping", "--libos", "catfish", to]), 2, "catnap");
    assert_fails(&demi(&["ping", "--proto", "sctp", to]), 2, "invalid value 'sctp'");
    assert_fails(&demi(&["ping"]), 2, "--to");
    assert_fails(&demi(&["ping", "--to", "localhost"]), 2, "invalid value 'localhost'");
    assert_fails(&demi(&["ping", to, "--size", "0"]), 2, "at least 1 byte");
    assert_fails(&demi(&["ping", to, "--size", "12x"]), 2, "unknown unit");
    assert_fails(&demi(&["ping", to, "--size", "65m"]), 2, "64 MiB");
    assert_fails(&demi(&["ping", to, "--count", "0"]), 2, "--count");
    assert_fails(&demi(&["ping", to, "--count", "5", "--time", "1"]), 2, "cannot be used with");
    assert_fails(&demi(&["ping", to, "--time", "0"]), 2, "seconds");
    assert_fails(&demi(&["stream", to, "--window", "0"]), 2, "--window");
    assert_fails(&demi(&["echo"]), 2, "--bind");
    assert_fails(&demi(&["frobnicate"]), 2, "unrecognized subcommand");
    // The environment's LIBOS is the default, and checked the same way.
    let o = Command::new(DEMI).args(["ping", to]).env("LIBOS", "catfish").output().unwrap();
    assert_fails(&o, 2, "invalid value 'catfish'");
}

#[test]
fn sizes_are_checked_against_the_socket() {
    // 64k = 65536 B: more than a UDP datagram can carry.
    let o = demi(&["ping", "--proto", "udp", "--to", "127.0.0.1:9", "--size", "64k", "--timeout", "0.5"]);
    assert_fails(&o, 1, "larger than the largest datagram catnap udp can send here (65507 B)");
    let o = demi(&["ping", "--proto", "udp", "--to", "127.0.0.1:9", "--size", "8"]);
    assert_fails(&o, 1, "--size 8 is too small for udp");
}

// ---- error paths at run time ---------------------------------------------------

#[test]
fn unreachable_servers_fail_in_one_line() {
    let port = free_port();
    let to = format!("127.0.0.1:{port}");
    let o = demi(&["ping", "--to", &to, "--count", "3"]);
    assert_fails(&o, 1, &format!("cannot connect to {to} over catnap tcp: ECONNREFUSED"));
    let o = demi(&["stream", "--to", &to, "--time", "1"]);
    assert_fails(&o, 1, "ECONNREFUSED");
    let o = demi(&["ping", "--proto", "udp", "--to", &to, "--count", "3", "--timeout", "0.5"]);
    assert_fails(&o, 1, &format!("no reply from {to}"));
    let o = demi(&["stream", "--proto", "udp", "--to", &to, "--time", "0.2", "--timeout", "1"]);
    assert_fails(&o, 1, &format!("no report from {to}"));
}

#[test]
fn echo_refuses_an_address_it_cannot_bind() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_fails(&demi(&["echo", "--bind", &addr]), 1, &format!("cannot bind {addr}: EADDRINUSE"));
}

#[test]
fn libos_set_up_errors_name_what_is_missing() {
    let to = "127.0.0.1:9";
    assert_fails(&demi(&["ping", "--libos", "catnip", "--to", to]), 1, "catnip has datagram sockets only");
    assert_fails(&demi(&["ping", "--libos", "catnip", "--proto", "udp", "--to", to]), 1, "--bind ADDR");
    let o = demi(&["ping", "--libos", "catnip", "--proto", "udp", "--to", to, "--bind", "10.77.9.2"]);
    assert_fails(&o, 1, "--memif PATH");
    let o = demi(&["ping", "--libos", "catmint", "--to", to, "--count", "1", "--timeout", "1"]);
    if PathBuf::from("/sys/class/infiniband").exists() {
        assert_eq!(o.status.code(), Some(1), "no catmint server at {to}: {}", text(&o.stderr));
    } else {
        assert_fails(&o, 1, "cannot start catmint: ENODEV");
        assert!(text(&o.stderr).contains("rxe-run"), "the hint to use rxe-run is missing");
    }
}

/// The options and the `DEMI_*` variables make one configuration: a
/// malformed variable stops the start with its name, and an option given
/// for it is used instead.
#[test]
fn variables_are_checked_and_options_win_over_them() {
    let run = |args: &[&str], var: &str, value: &str| {
        let mut cmd = Command::new(DEMI);
        cmd.args(args).env_remove("LIBOS").env_remove("DEMI_DPDK_EAL").env(var, value).stdin(Stdio::null());
        cmd.output().expect("run demi")
    };
    let to = format!("127.0.0.1:{}", free_port());
    let ping = ["ping", "--to", &to, "--count", "1", "--timeout", "1"];
    let o = run(&ping, "DEMI_SPIN_US", "abc");
    assert_fails(&o, 1, "cannot start catnap: EINVAL (22): DEMI_SPIN_US=\"abc\" is not a non-negative integer");
    let o = run(&[&ping[..], &["--spin-us", "0"]].concat(), "DEMI_SPIN_US", "abc");
    assert_fails(&o, 1, &format!("cannot connect to {to} over catnap tcp: ECONNREFUSED"));
    // catmint reads its tunables before it looks for a device.
    let o = run(&[&ping[..], &["--libos", "catmint"]].concat(), "DEMI_RDMA_BUF_SIZE", "x");
    assert_fails(&o, 1, "cannot start catmint: EINVAL (22): DEMI_RDMA_BUF_SIZE=\"x\" is not a non-negative integer");
    // An option is checked as its variable is, before DPDK starts.
    let catnip = ["ping", "--libos", "catnip", "--proto", "udp", "--to", &to, "--bind", "10.77.9.2", "--eal", "-l 0"];
    let o = run(&[&catnip[..], &["--mtu", "100"]].concat(), "DEMI_MTU", "1500");
    assert_fails(&o, 1, "cannot start catnip: EINVAL (22): catnip: DEMI_MTU=100 is outside 576..=9000");
    let o = run(&catnip, "DEMI_MTU", "100");
    assert_fails(&o, 1, "catnip: DEMI_MTU=100 is outside 576..=9000");
}

#[test]
fn devices_says_what_there_is_and_why_not() {
    let o = demi(&["devices"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    if PathBuf::from("/sys/class/infiniband").exists() {
        assert!(out.contains("RDMA devices") || out.contains("no RDMA devices"), "{out}");
    } else {
        assert!(out.contains("no RDMA devices: this kernel has no RDMA"), "{out}");
        assert!(out.contains("rxe-setup/rxe-run"), "{out}");
    }
    assert!(out.contains("DEMI_DPDK_EAL is not set"), "{out}");
}

#[test]
fn devices_lists_the_dpdk_ports_of_the_eal_arguments() {
    let dir = TempDir::new("devices");
    let sock = dir.0.join("m.sock");
    let eal = format!(
        "-l 0 --no-huge --no-pci --no-shconf --no-telemetry -m 128 --log-level=lib.eal:error \
         --file-prefix=demicli{}d --vdev=net_memif0,role=server,socket={},socket-abstract=no",
        std::process::id(),
        sock.display()
    );
    let o = demi(&["devices", "--eal", &eal]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}\n{out}", text(&o.stderr));
    assert!(out.contains("DPDK ports (1)") && out.contains("port 0: net_memif"), "{out}");
    assert!(out.contains("MAC "), "{out}");
    // Arguments the EAL refuses: one error line, after the RDMA part.
    let o = demi(&["devices", "--eal", "--no-such-eal-option"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("demi: error: DPDK's EAL did not start"), "{}", text(&o.stderr));
}

// ---- real runs over catnap ---------------------------------------------------

#[test]
fn catnap_tcp_ping_and_stream_against_echo() {
    let server = Server::start(&["--bind", "127.0.0.1:0"], &[]);
    let to = server.addr.to_string();
    let o = demi(&["ping", "--to", &to, "--size", "100", "--count", "300", "--warmup", "10", "--json"]);
    check_ping_record(&json(&o), "catnap", "tcp", 100, 300);
    // A message far larger than one pop: the echo comes back in pieces.
    let o = demi(&["ping", "--to", &to, "--size", "1m", "--count", "5", "--warmup", "1", "--json"]);
    check_ping_record(&json(&o), "catnap", "tcp", 1 << 20, 5);
    // The table form.
    let o = demi(&["ping", "--to", &to, "--count", "50"]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(out.contains("50 round trips of 64 B over catnap tcp"), "{out}");
    assert!(out.contains("p99.9") && out.contains("(µs)"), "{out}");

    let v = json(&demi(&["stream", "--to", &to, "--size", "1000", "--time", "0.5", "--json"]));
    assert_eq!(v["tool"], "stream");
    let (sent, got) = (v["sent"].as_u64().unwrap(), v["received"].as_u64().unwrap());
    assert!(sent > 0);
    assert_eq!(got, sent, "a stream socket loses nothing: {v}");
    assert_eq!(v["received_bytes"].as_u64(), Some(got * 1000));
    assert_eq!(v["lost"].as_u64(), Some(0));
    assert!(num(&v, "messages_per_s") > 0.0 && num(&v, "gbit_per_s") > 0.0);
    let expect = num(&v, "received_bytes") * 8.0 / num(&v, "receive_seconds") / 1e9;
    assert!((num(&v, "gbit_per_s") - expect).abs() < 1e-9 * expect.max(1.0));
}

/// A port P with P and P + 1 free for TCP and UDP (bound, then released).
fn two_free_ports() -> u16 {
    for _ in 0..100 {
        let p = free_port();
        let free =
            |q: u16| TcpListener::bind(("127.0.0.1", q)).is_ok() && std::net::UdpSocket::bind(("127.0.0.1", q)).is_ok();
        if p < u16::MAX && free(p) && free(p + 1) {
            return p;
        }
    }
    panic!("no two free ports in a row");
}

#[test]
fn threads_each_serve_and_ping_their_own_port() {
    for proto in ["tcp", "udp"] {
        let port = two_free_ports();
        let bind = format!("127.0.0.1:{port}");
        let server = Server::start(&["--proto", proto, "--bind", &bind, "--threads", "2", "--quiet"], &[]);
        // Either thread may say it listens first.
        assert!([port, port + 1].contains(&server.addr.port()), "{}", server.addr);
        let o = demi(&["ping", "--proto", proto, "--to", &bind, "--threads", "2", "--count", "200", "--json"]);
        let v = json(&o);
        check_ping_record(&v, "catnap", proto, 64, 400);
        assert_eq!(v["threads"].as_u64(), Some(2));
        assert!(num(&v, "round_trips_per_s") > 0.0);
        // The second thread's server is really there: one thread alone, on port + 1.
        let o =
            demi(&["ping", "--proto", proto, "--to", &format!("127.0.0.1:{}", port + 1), "--count", "20", "--json"]);
        check_ping_record(&json(&o), "catnap", proto, 64, 20);
        let v = json(&demi(&["stream", "--proto", proto, "--to", &bind, "--threads", "2", "--time", "0.3", "--json"]));
        assert_eq!(v["threads"].as_u64(), Some(2));
        let (sent, got) = (v["sent"].as_u64().unwrap(), v["received"].as_u64().unwrap());
        assert!(got > 0 && got <= sent, "{v}");
        if proto == "tcp" {
            assert_eq!(got, sent, "a stream socket loses nothing: {v}");
        }
        drop(server);
    }
    let o = demi(&["ping", "--libos", "catnip", "--proto", "udp", "--to", "10.0.0.1:7", "--threads", "2"]);
    assert_fails(&o, 1, "catnip has one engine per process");
}

#[test]
fn catnap_udp_ping_and_stream_against_echo() {
    let server = Server::start(&["--proto", "udp", "--bind", "127.0.0.1:0"], &[]);
    let to = server.addr.to_string();
    let o = demi(&["ping", "--proto", "udp", "--to", &to, "--size", "1400", "--count", "300", "--json"]);
    check_ping_record(&json(&o), "catnap", "udp", 1400, 300);
    let o = demi(&["ping", "--proto", "udp", "--to", &to, "--size", "64", "--time", "0.3", "--json"]);
    let v = json(&o);
    assert!(num(&v, "seconds") >= 0.3 && v["count"].as_u64().unwrap() > 10, "{v}");
    let v = json(&demi(&["stream", "--proto", "udp", "--to", &to, "--time", "0.5", "--json", "--window", "4"]));
    let (sent, got) = (v["sent"].as_u64().unwrap(), v["received"].as_u64().unwrap());
    assert!(got > 0 && got <= sent, "{v}");
    assert_eq!(v["lost"].as_u64(), Some(sent - got));
    assert_eq!(v["received_bytes"].as_u64(), Some(got * 64));
}

#[test]
fn echo_serves_plain_clients_and_drops_strangers() {
    let udp = Server::start(&["--proto", "udp", "--bind", "127.0.0.1:0"], &[]);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(b"hello, echo", udp.addr).unwrap();
    let mut b = [0u8; 64];
    let (n, from) = s.recv_from(&mut b).unwrap();
    assert_eq!((&b[..n], from), (&b"hello, echo"[..], std::net::SocketAddr::V4(udp.addr)));

    let tcp = Server::start(&["--bind", "127.0.0.1:0", "--quiet"], &[]);
    let mut c = TcpStream::connect(tcp.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    // Not a demi client: the server closes the connection, sending nothing.
    assert_eq!(c.read_to_end(&mut rest).unwrap(), 0);
    // It still serves the next client.
    let o = demi(&["ping", "--to", &tcp.addr.to_string(), "--count", "10", "--json"]);
    check_ping_record(&json(&o), "catnap", "tcp", 64, 10);
}

/// SIGTERM and SIGINT stop `demi echo` cleanly: exit 0, also with a client
/// connected and when the signal comes twice (timeout(1) sends it to the
/// child and again to its process group). The RDMA suite's memcheck stage
/// relies on it: valgrind's leak search must see a real exit.
#[test]
fn echo_stops_cleanly_on_sigterm_and_sigint() {
    for (proto, sig, times) in
        [("tcp", libc::SIGTERM, 2), ("tcp", libc::SIGINT, 1), ("udp", libc::SIGTERM, 2), ("udp", libc::SIGINT, 1)]
    {
        let mut server = Server::start(&["--proto", proto, "--bind", "127.0.0.1:0", "--quiet"], &[]);
        // A tcp client that stays connected: the stop closes it too.
        let client = (proto == "tcp").then(|| TcpStream::connect(server.addr).expect("connect"));
        let pid = server.child.id() as libc::pid_t;
        for _ in 0..times {
            // SAFETY: kill(2) on our own child, which is not reaped yet.
            assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(st) = server.child.try_wait().expect("try_wait") {
                break st;
            }
            assert!(std::time::Instant::now() < deadline, "{proto}: demi echo still running 10 s after signal {sig}");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(0), "{proto}, signal {sig} x{times}: {status:?}");
        if let Some(mut c) = client {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut rest = Vec::new();
            assert_eq!(c.read_to_end(&mut rest).unwrap_or(0), 0, "the stopped server sent data");
        }
    }
}

#[test]
fn no_progress_bar_without_a_terminal() {
    let server = Server::start(&["--bind", "127.0.0.1:0"], &[]);
    let o = demi(&["ping", "--to", &server.addr.to_string(), "--time", "1.5"]);
    assert!(o.status.success());
    for s in [&o.stdout, &o.stderr] {
        assert!(!s.contains(&0x1b) && !s.contains(&b'\r'), "terminal codes in {:?}", text(s));
    }
}

// ---- catnip over memif ----------------------------------------------------------

/// A folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("demi-cli-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn catnip_ping_and_stream_over_memif() {
    let dir = TempDir::new("memif");
    let sock = dir.0.join("memif.sock").display().to_string();
    let server = Server::start(
        &["--libos", "catnip", "--proto", "udp", "--memif", &sock, "--bind", "10.77.9.1:7000"],
        &[("DEMI_DPDK_LINK_WAIT_MS", "10000")],
    );
    assert_eq!(server.addr.to_string(), "10.77.9.1:7000");
    let common =
        ["--libos", "catnip", "--proto", "udp", "--memif", &sock, "--bind", "10.77.9.2", "--to", "10.77.9.1:7000"];
    let mut args = vec!["ping"];
    args.extend(common);
    args.extend(["--size", "256", "--count", "500", "--timeout", "10", "--json"]);
    check_ping_record(&json(&demi(&args)), "catnip", "udp", 256, 500);
    // Larger than catnip's largest datagram at MTU 1500 (1472 B).
    let mut args = vec!["ping"];
    args.extend(common);
    args.extend(["--size", "1473", "--count", "1"]);
    assert_fails(&demi(&args), 1, "largest datagram catnip udp can send here (1472 B)");
    let mut args = vec!["stream"];
    args.extend(common);
    args.extend(["--size", "64", "--time", "0.5", "--timeout", "10", "--json"]);
    let v = json(&demi(&args));
    assert_eq!(v["libos"], "catnip");
    assert!(v["received"].as_u64().unwrap() > 0, "{v}");
    drop(server);
}
