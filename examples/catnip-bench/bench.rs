//! The orchestrator and the four roles (catnip or kernel, server or client).

use demi::{LibOs, QValue, SockType};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const PORT: u16 = 7000;
const SIZE: usize = 64;
/// First byte of a datagram: what the server does with it.
const ECHO: u8 = b'E';
const COUNT: u8 = b'T';
const STOP: u8 = b'S';
const REPORT: u8 = b'R';

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sh(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr).trim());
}

#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    p50_us: f64,
    p99_us: f64,
    pps: f64,
}

struct Opts {
    rounds: usize,
    seconds: u64,
    markdown: Option<String>,
}

fn opts() -> Opts {
    let mut o = Opts { rounds: 20_000, seconds: 3, markdown: None };
    let mut a = std::env::args().skip(1);
    while let Some(k) = a.next() {
        let v = a.next().unwrap_or_default();
        match k.as_str() {
            "--rounds" => o.rounds = v.parse().expect("--rounds N"),
            "--seconds" => o.seconds = v.parse().expect("--seconds S"),
            "--markdown" => o.markdown = Some(v),
            "role" => return o,
            other => panic!("unknown option {other}"),
        }
    }
    o
}

pub fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("role") {
        role(&std::env::args().nth(2).expect("role name"));
        return ExitCode::SUCCESS;
    }
    let o = opts();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("catnip-bench: needs root (network namespaces and veth pairs)");
        return ExitCode::FAILURE;
    }
    type Run = fn(&Opts) -> Figures;
    let runs: [(&str, Run); 3] =
        [("catnip over memif", memif), ("catnip over af_packet/veth", af_packet), ("kernel UDP over veth", kernel)];
    let mut results = Vec::new();
    for (name, f) in runs {
        eprintln!("catnip-bench: {name} ...");
        let r = f(&o);
        eprintln!("catnip-bench: {name}: p50 {:.1} us, p99 {:.1} us, {:.0} datagrams/s", r.p50_us, r.p99_us, r.pps);
        results.push((name, r));
    }
    let kernel = results[2].1;
    let mut table = String::from(
        "| path | RTT p50 (µs) | RTT p99 (µs) | throughput (datagrams/s) | RTT p50: kernel ÷ this | throughput: this ÷ kernel |\n|---|---|---|---|---|---|\n",
    );
    for (name, r) in &results {
        table += &format!(
            "| {name} | {:.1} | {:.1} | {:.0} | {:.2}x | {:.2}x |\n",
            r.p50_us,
            r.p99_us,
            r.pps,
            kernel.p50_us / r.p50_us,
            r.pps / kernel.pps
        );
    }
    println!("{table}");
    if let Some(path) = o.markdown {
        std::fs::write(&path, &table).expect("write the markdown table");
    }
    ExitCode::SUCCESS
}

fn me(role: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("own path"));
    c.args(["role", role]).stdin(Stdio::null()).stdout(Stdio::piped());
    c
}

fn in_ns(ns: &str, role: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(std::env::current_exe().expect("own path")).args(["role", role]);
    c.stdin(Stdio::null()).stdout(Stdio::piped());
    c
}

fn eal(lcore: u32, tag: &str, vdev: &str) -> String {
    format!(
        "-l {lcore} --no-huge --no-pci --no-shconf --no-telemetry -m 256 --log-level=lib.eal:error --log-level=pmd.net.memif:error --file-prefix={tag} --vdev={vdev}"
    )
}

/// Runs server then client, returns the client's figures.
/// `ready`: a file the server creates once it is up (the memif socket).
fn run_pair(mut server: Command, mut client: Command, o: &Opts, ready: Option<&str>) -> Figures {
    for c in [&mut server, &mut client] {
        c.env("BENCH_ROUNDS", o.rounds.to_string()).env("BENCH_SECONDS", o.seconds.to_string());
    }
    let _server = Proc(server.spawn().expect("spawn server"));
    std::thread::sleep(Duration::from_millis(500));
    if let Some(path) = ready {
        let end = Instant::now() + Duration::from_secs(20);
        while !std::path::Path::new(path).exists() {
            assert!(Instant::now() < end, "the server never created {path}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let client = Proc(client.spawn().expect("spawn client"));
    let out = {
        let mut client = client;
        let o = client.0.stdout.take();
        let text = std::io::read_to_string(o.expect("piped")).unwrap_or_default();
        let status = client.0.wait().expect("client exit");
        assert!(status.success(), "client failed: {status}");
        text
    };
    let line = out.lines().find(|l| l.starts_with("RESULT")).unwrap_or_else(|| panic!("no RESULT in {out:?}"));
    let mut f = Figures::default();
    for kv in line.split_whitespace().skip(1) {
        let (k, v) = kv.split_once('=').expect("k=v");
        let v: f64 = v.parse().expect("number");
        match k {
            "p50_us" => f.p50_us = v,
            "p99_us" => f.p99_us = v,
            "pps" => f.pps = v,
            _ => {}
        }
    }
    f
}

fn memif(o: &Opts) -> Figures {
    let tag = format!("cnbench{}", std::process::id());
    let dir = TempDir(std::env::temp_dir().join(&tag));
    std::fs::create_dir_all(&dir.0).unwrap();
    let sock = dir.0.join("memif.sock").display().to_string();
    let mut s = me("catnip-server");
    s.env(
        "DEMI_DPDK_EAL",
        eal(0, &format!("{tag}s"), &format!("net_memif0,role=server,socket={sock},socket-abstract=no")),
    )
    .env("DEMI_LOCAL_IPV4", "10.77.20.1")
    .env("BENCH_CPU", "0");
    let mut c = me("catnip-client");
    c.env(
        "DEMI_DPDK_EAL",
        eal(1, &format!("{tag}c"), &format!("net_memif0,role=client,socket={sock},socket-abstract=no")),
    )
    .env("DEMI_LOCAL_IPV4", "10.77.20.2")
    .env("BENCH_PEER", "10.77.20.1")
    .env("BENCH_CPU", "1");
    run_pair(s, c, o, Some(&sock))
}

/// Two namespaces joined by a veth pair; `addrs` gives the kernel addresses.
fn veth(tag: &str, addrs: Option<[&str; 2]>) -> (Netns, [String; 2], [String; 2]) {
    let id = std::process::id() % 100_000;
    let ns = [format!("cnb{id}{tag}a"), format!("cnb{id}{tag}b")];
    let ifs = [format!("cnb{id}{tag}a"), format!("cnb{id}{tag}b")];
    let guard = Netns(ns.to_vec());
    for n in &ns {
        sh(&["ip", "netns", "add", n]);
        sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        sh(&["ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    }
    sh(&["ip", "link", "add", &ifs[0], "netns", &ns[0], "type", "veth", "peer", "name", &ifs[1], "netns", &ns[1]]);
    for i in 0..2 {
        if let Some(a) = addrs {
            sh(&["ip", "-n", &ns[i], "addr", "add", &format!("{}/24", a[i]), "dev", &ifs[i]]);
        }
        sh(&["ip", "-n", &ns[i], "link", "set", &ifs[i], "up"]);
    }
    (guard, ns, ifs)
}

fn af_packet(o: &Opts) -> Figures {
    let (_g, ns, ifs) = veth("p", None);
    let tag = format!("cnbenchp{}", std::process::id());
    let mut s = in_ns(&ns[0], "catnip-server");
    s.env("DEMI_DPDK_EAL", eal(0, &format!("{tag}s"), &format!("net_af_packet0,iface={}", ifs[0])))
        .env("DEMI_LOCAL_IPV4", "10.77.21.1")
        .env("BENCH_CPU", "0");
    let mut c = in_ns(&ns[1], "catnip-client");
    c.env("DEMI_DPDK_EAL", eal(1, &format!("{tag}c"), &format!("net_af_packet0,iface={}", ifs[1])))
        .env("DEMI_LOCAL_IPV4", "10.77.21.2")
        .env("BENCH_PEER", "10.77.21.1")
        .env("BENCH_CPU", "1");
    run_pair(s, c, o, None)
}

fn kernel(o: &Opts) -> Figures {
    let (_g, ns, _ifs) = veth("k", Some(["10.77.22.1", "10.77.22.2"]));
    let mut s = in_ns(&ns[0], "kernel-server");
    s.env("BENCH_SELF", "10.77.22.1").env("BENCH_CPU", "0");
    let mut c = in_ns(&ns[1], "kernel-client");
    c.env("BENCH_PEER", "10.77.22.1").env("BENCH_CPU", "1");
    run_pair(s, c, o, None)
}

// ---- roles -------------------------------------------------------------

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} is set by the orchestrator"))
}

fn pin() {
    let cpu: usize = env("BENCH_CPU").parse().unwrap();
    // SAFETY: a zeroed cpu_set_t is a valid empty set; we pass its real size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn role(name: &str) {
    pin();
    let rounds: usize = env("BENCH_ROUNDS").parse().unwrap();
    let seconds: u64 = env("BENCH_SECONDS").parse().unwrap();
    match name {
        "catnip-server" => catnip_server(),
        "catnip-client" => {
            let f = run_client(&mut CatnipEnd::new(), rounds, seconds);
            report(f);
        }
        "kernel-server" => kernel_server(),
        "kernel-client" => {
            let f = run_client(&mut KernelEnd::new(), rounds, seconds);
            report(f);
        }
        other => panic!("unknown role {other}"),
    }
}

fn report(f: Figures) {
    println!("RESULT p50_us={:.2} p99_us={:.2} pps={:.0}", f.p50_us, f.p99_us, f.pps);
}

/// What a client needs from an endpoint.
trait End {
    fn send(&mut self, data: &[u8]);
    /// Receives one datagram within `limit` into `buf`; returns its length.
    fn recv(&mut self, buf: &mut [u8], limit: Duration) -> Option<usize>;
}

struct CatnipEnd {
    os: LibOs,
    qd: i32,
    peer: SocketAddrV4,
    pop: Option<u64>,
    payload: demi::Buffer,
}

impl CatnipEnd {
    fn new() -> CatnipEnd {
        let os = LibOs::new("catnip").expect("catnip");
        let qd = os.socket(SockType::Datagram).unwrap();
        os.bind(qd, "0.0.0.0:0".parse().unwrap()).unwrap();
        let peer = SocketAddrV4::new(env("BENCH_PEER").parse().unwrap(), PORT);
        let payload = os.sgaalloc(SIZE).unwrap();
        CatnipEnd { os, qd, peer, pop: None, payload }
    }
}

impl End for CatnipEnd {
    fn send(&mut self, data: &[u8]) {
        // One mbuf-backed buffer, rewritten per send: zero-copy pushes.
        let mut b = std::mem::replace(&mut self.payload, demi::Buffer::heap(0));
        match b.as_mut_slice() {
            Some(s) if s.len() == data.len() => s.copy_from_slice(data),
            _ => b = self.os.buffer_from(data).unwrap(),
        }
        let qt = self.os.pushto(self.qd, &b, self.peer).unwrap();
        let r = self.os.wait(qt, Some(Duration::from_secs(5))).expect("push completes");
        assert_eq!(r.errno(), 0, "push failed");
        self.payload = b;
    }

    fn recv(&mut self, buf: &mut [u8], limit: Duration) -> Option<usize> {
        let qt = *self.pop.get_or_insert_with(|| self.os.pop(self.qd).unwrap());
        let r = self.os.wait(qt, Some(limit)).ok()?;
        self.pop = None;
        let QValue::Pop { buf: b, .. } = r.value else { panic!("pop failed") };
        let n = b.len().min(buf.len());
        buf[..n].copy_from_slice(&b.as_slice()[..n]);
        Some(n)
    }
}

struct KernelEnd {
    s: UdpSocket,
    peer: SocketAddrV4,
}

impl KernelEnd {
    fn new() -> KernelEnd {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        KernelEnd { s, peer: SocketAddrV4::new(env("BENCH_PEER").parse().unwrap(), PORT) }
    }
}

impl End for KernelEnd {
    fn send(&mut self, data: &[u8]) {
        // A full socket buffer under blasting: drop like the network would.
        let _ = self.s.send_to(data, self.peer);
    }

    fn recv(&mut self, buf: &mut [u8], limit: Duration) -> Option<usize> {
        self.s.set_read_timeout(Some(limit.max(Duration::from_micros(1)))).unwrap();
        self.s.recv_from(buf).ok().map(|(n, _)| n)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn run_client(end: &mut impl End, rounds: usize, seconds: u64) -> Figures {
    let mut msg = [0u8; SIZE];
    let mut got = [0u8; 2048];
    // Echo rounds (the first tenth warms up ARP and caches).
    msg[0] = ECHO;
    let warm = rounds / 10;
    let mut rtts = Vec::with_capacity(rounds);
    for i in 0..rounds + warm {
        msg[1..9].copy_from_slice(&(i as u64).to_le_bytes());
        let t = Instant::now();
        loop {
            end.send(&msg);
            // Retries only matter for the first round (ARP under way).
            if let Some(n) = end.recv(&mut got, Duration::from_millis(500)) {
                if got[..n] == msg {
                    break;
                }
            }
        }
        if i >= warm {
            rtts.push(t.elapsed());
        }
    }
    rtts.sort();
    // Throughput: blast, then ask for the count.
    msg[0] = COUNT;
    let end_at = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end_at {
        end.send(&msg);
    }
    msg[0] = STOP;
    let mut pps = 0.0;
    for _ in 0..100 {
        end.send(&msg);
        if let Some(n) = end.recv(&mut got, Duration::from_millis(100)) {
            if n >= 17 && got[0] == REPORT {
                let count = u64::from_le_bytes(got[1..9].try_into().unwrap());
                let ns = u64::from_le_bytes(got[9..17].try_into().unwrap());
                pps = count as f64 / (ns.max(1) as f64 / 1e9);
                break;
            }
        }
    }
    Figures { p50_us: percentile(&rtts, 0.5), p99_us: percentile(&rtts, 0.99), pps }
}

/// Counts COUNT datagrams (first to last arrival) and echoes the rest.
struct Counter {
    count: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Counter {
    /// Returns the reply to send, if any.
    fn handle(&mut self, d: &[u8]) -> Option<Vec<u8>> {
        match d.first() {
            Some(&COUNT) => {
                let now = Instant::now();
                self.first.get_or_insert(now);
                self.last = Some(now);
                self.count += 1;
                None
            }
            Some(&STOP) => {
                let ns = match (self.first, self.last) {
                    (Some(f), Some(l)) => (l - f).as_nanos() as u64,
                    _ => 0,
                };
                let mut r = vec![REPORT];
                r.extend_from_slice(&self.count.to_le_bytes());
                r.extend_from_slice(&ns.to_le_bytes());
                Some(r)
            }
            _ => Some(d.to_vec()),
        }
    }
}

fn catnip_server() {
    let os = LibOs::new("catnip").expect("catnip");
    let qd = os.socket(SockType::Datagram).unwrap();
    os.bind(qd, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT)).unwrap();
    let mut c = Counter { count: 0, first: None, last: None };
    let idle = Duration::from_secs(30);
    while let Ok(r) = os.wait(os.pop(qd).unwrap(), Some(idle)) {
        let QValue::Pop { buf, from } = r.value else { continue };
        if let Some(reply) = c.handle(buf.as_slice()) {
            let out = if reply.as_slice() == buf.as_slice() { buf } else { os.buffer_from(&reply).unwrap() };
            let _ = os.wait(os.pushto(qd, &out, from.unwrap()).unwrap(), Some(idle));
        }
    }
}

fn kernel_server() {
    let s = UdpSocket::bind(SocketAddrV4::new(env("BENCH_SELF").parse().unwrap(), PORT)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut c = Counter { count: 0, first: None, last: None };
    let mut b = [0u8; 2048];
    while let Ok((n, from)) = s.recv_from(&mut b) {
        if let Some(reply) = c.handle(&b[..n]) {
            let _ = s.send_to(&reply, from);
        }
    }
}
