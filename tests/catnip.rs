//! catnip (`LIBOS=catnip`) end to end, over real DPDK ports.
//!
//! DPDK's EAL starts once per process, so each DPDK endpoint is this test
//! binary run again with `CATNIP_ROLE` set: the `role_entry` test then plays
//! that role and exits (in a normal run it does nothing). Children are
//! killed by pid and reaped when their guard drops; network namespaces,
//! veth pairs and memif socket folders are removed by guards too, so a
//! failing test cleans up as well. The namespace tests need root and
//! iproute2; without them they fail loudly instead of skipping.
#![cfg(feature = "catnip")]

mod common;

use common::{pattern, wait, wait_ok};
use demi::{LibOs, QValue, SockType};
use std::ffi::c_int;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One DPDK test at a time: each busy-polls a core, and the machine may have two.
static DPDK: Mutex<()> = Mutex::new(());

const ECHO_PORT: u16 = 7000;
const KERNEL_ECHO_PORT: u16 = 7001;
const BYE: &[u8] = b"bye";

fn dpdk_lock() -> std::sync::MutexGuard<'static, ()> {
    DPDK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child process, killed (by pid) and reaped on drop.
struct Proc(Child, &'static str);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Waits up to `limit` for a successful exit; panics otherwise.
    fn expect_success(&mut self, limit: Duration) {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.0.try_wait().expect("try_wait") {
                assert!(s.success(), "role {} failed: {s}", self.1);
                return;
            }
            assert!(Instant::now() < end, "role {} still running after {limit:?}", self.1);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A folder removed on drop (memif sockets live there).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two network namespaces joined by a veth pair, deleted on drop.
struct VethPair {
    ns: [String; 2],
    ifname: [String; 2],
    ip: [Ipv4Addr; 2],
}

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
}

fn require_root_and_tools() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test needs root (network namespaces, veth, tc); CI runs as root");
    for tool in ["ip", "tc", "ethtool", "ping", "nft"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().map(|o| o.status.success());
        assert!(
            matches!(found, Ok(true)),
            "this test needs `{tool}` (make deps installs iproute2, ethtool, iputils-ping, nftables)"
        );
    }
}

impl VethPair {
    /// Namespaces `<tag>a`/`<tag>b`, veths in each, 10.77.`subnet`.1 for the
    /// DPDK side (no kernel address there) and .2 for the kernel side.
    fn new(tag: &str, subnet: u8) -> VethPair {
        require_root_and_tools();
        let id = std::process::id() % 100_000;
        let p = VethPair {
            ns: [format!("cnip{id}{tag}a"), format!("cnip{id}{tag}b")],
            ifname: [format!("cn{id}{tag}a"), format!("cn{id}{tag}b")],
            ip: [Ipv4Addr::new(10, 77, subnet, 1), Ipv4Addr::new(10, 77, subnet, 2)],
        };
        for ns in &p.ns {
            run(&["ip", "netns", "add", ns]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let (a, b) = (&p.ifname[0], &p.ifname[1]);
        run(&["ip", "link", "add", a, "netns", &p.ns[0], "type", "veth", "peer", "name", b, "netns", &p.ns[1]]);
        run(&["ip", "-n", &p.ns[0], "link", "set", a, "up"]);
        // The DPDK side has no kernel address, so the kernel there stays quiet.
        run(&["ip", "netns", "exec", &p.ns[0], "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        run(&["ip", "netns", "exec", &p.ns[1], "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        run(&["ip", "-n", &p.ns[1], "addr", "add", &format!("{}/24", p.ip[1]), "dev", b]);
        run(&["ip", "-n", &p.ns[1], "link", "set", b, "up"]);
        // Packet sockets see locally sent UDP before the kernel fills in its
        // checksum (offloaded to the "device"); make the kernel compute it.
        run(&["ip", "netns", "exec", &p.ns[1], "ethtool", "-K", b, "tx", "off"]);
        p
    }

    fn eal(&self, tag: &str) -> String {
        format!("{} --vdev=net_af_packet0,iface={}", eal_base(1, tag), self.ifname[0])
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn eal_base(lcore: u32, tag: &str) -> String {
    format!(
        "-l {lcore} --no-huge --no-pci --no-shconf --no-telemetry -m 128 --log-level=lib.eal:error --log-level=pmd.net.memif:error --file-prefix={tag}"
    )
}

/// Runs this binary as `role`, inside network namespace `netns` if given.
fn spawn(role: &'static str, netns: Option<&str>, env: &[(&str, String)]) -> Proc {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args(["role_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env("CATNIP_ROLE", role)
        .env("LIBOS", "catnip")
        .env("DEMI_ARP_RETRY_MS", "100")
        .env("DEMI_ARP_RETRIES", "10")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().unwrap_or_else(|e| panic!("spawn role {role}: {e}")), role)
}

fn env_of(role: &str) -> String {
    std::env::var(role).unwrap_or_else(|_| panic!("{role} is set by the parent test"))
}

// ---- the tests -----------------------------------------------------------

#[test]
fn memif_udp_ping_pong_between_two_dpdk_processes() {
    let _l = dpdk_lock();
    let tag = format!("cnipmemif{}", std::process::id());
    let dir = TempDir(std::env::temp_dir().join(&tag));
    std::fs::create_dir_all(&dir.0).unwrap();
    let sock = dir.0.join("memif.sock").display().to_string();
    let server_ip = "10.77.9.1".to_string();
    let mut server = spawn(
        "echo-server",
        None,
        &[
            (
                "DEMI_DPDK_EAL",
                format!("{} --vdev=net_memif0,role=server,socket={sock}", eal_base(0, &format!("{tag}s"))),
            ),
            ("DEMI_LOCAL_IPV4", server_ip.clone()),
        ],
    );
    std::thread::sleep(Duration::from_millis(200));
    let mut client = spawn(
        "memif-client",
        None,
        &[
            (
                "DEMI_DPDK_EAL",
                format!("{} --vdev=net_memif0,role=client,socket={sock}", eal_base(1, &format!("{tag}c"))),
            ),
            ("DEMI_LOCAL_IPV4", "10.77.9.2".into()),
            ("CATNIP_PEER", server_ip),
        ],
    );
    client.expect_success(Duration::from_secs(60));
    server.expect_success(Duration::from_secs(10));
}

/// The profile directory holding libdemi.so (as tests/c_abi.rs finds it).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    for dir in exe.ancestors().skip(1).filter(|d| !d.ends_with("deps")) {
        if dir.join("libdemi.so").is_file() {
            return dir.to_path_buf();
        }
        if dir.file_name().is_some_and(|n| n == "target") {
            break;
        }
    }
    panic!("libdemi.so not found above {}: run `cargo build` first (`make test` does)", exe.display());
}

/// The C example examples/c/udp-pingpong.c, unchanged, with LIBOS=catnip
/// on both ends of a memif link.
#[test]
fn c_udp_pingpong_example_over_memif() {
    let _l = dpdk_lock();
    let tag = format!("cnipcex{}", std::process::id());
    let dir = TempDir(std::env::temp_dir().join(&tag));
    std::fs::create_dir_all(&dir.0).unwrap();
    let lib = lib_dir();
    let exe = dir.0.join("udp-pingpong");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cc = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1"])
        .arg("-I")
        .arg(repo.join("include"))
        .arg(repo.join("examples/c/udp-pingpong.c"))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib.display()))
        .arg("-ldemi")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .output()
        .expect("run cc");
    assert!(cc.status.success(), "cc failed: {}", String::from_utf8_lossy(&cc.stderr));
    let sock = dir.0.join("memif.sock").display().to_string();
    let server_addr = "10.77.8.1:7000";
    let run = |args: &[&str], eal: String, ip: &str| {
        let child = Command::new(&exe)
            .args(args)
            .env("LIBOS", "catnip")
            .env("DEMI_DPDK_EAL", eal)
            .env("DEMI_LOCAL_IPV4", ip)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run udp-pingpong");
        Proc(child, "udp-pingpong")
    };
    let mut server = run(
        &["server", server_addr, "--idle", "30"],
        format!("{} --vdev=net_memif0,role=server,socket={sock}", eal_base(0, &format!("{tag}s"))),
        "10.77.8.1",
    );
    std::thread::sleep(Duration::from_millis(200));
    let mut client = run(
        &["client", server_addr, "--size", "64", "--count", "2000"],
        format!("{} --vdev=net_memif0,role=client,socket={sock}", eal_base(1, &format!("{tag}c"))),
        "10.77.8.2",
    );
    client.expect_success(Duration::from_secs(60));
    let mut table = String::new();
    std::io::Read::read_to_string(&mut client.0.stdout.take().unwrap(), &mut table).unwrap();
    eprintln!("{table}");
    assert!(table.contains("p50") || table.contains("median"), "no latency table:\n{table}");
    server.expect_success(Duration::from_secs(10));
}

#[test]
fn af_packet_to_kernel_arp_ping_and_udp_both_ways() {
    let _l = dpdk_lock();
    let net = VethPair::new("v", 11);
    let mut kernel_echo = spawn("kernel-echo", Some(&net.ns[1]), &[("CATNIP_PEER", net.ip[1].to_string())]);
    let tag = format!("cnipveth{}", std::process::id());
    let mut dpdk = spawn(
        "veth-dpdk",
        Some(&net.ns[0]),
        &[
            ("DEMI_DPDK_EAL", net.eal(&tag)),
            ("DEMI_LOCAL_IPV4", net.ip[0].to_string()),
            ("CATNIP_PEER", net.ip[1].to_string()),
        ],
    );
    // The kernel sends to catnip: ARP from the kernel, then UDP echoes.
    let kernel = [("CATNIP_PEER", net.ip[0].to_string())];
    spawn("kernel-client", Some(&net.ns[1]), &kernel).expect_success(Duration::from_secs(60));
    // ICMP echo from the kernel's ping.
    let out = Command::new("ip")
        .args(["netns", "exec", &net.ns[1], "ping", "-c", "3", "-i", "0.2", "-W", "2"])
        .arg(net.ip[0].to_string())
        .output()
        .expect("run ping");
    assert!(out.status.success(), "ping catnip failed:\n{}", String::from_utf8_lossy(&out.stdout));
    let bye = [("CATNIP_PEER", net.ip[0].to_string()), ("CATNIP_SELF", net.ip[1].to_string())];
    spawn("kernel-bye", Some(&net.ns[1]), &bye).expect_success(Duration::from_secs(10));
    dpdk.expect_success(Duration::from_secs(20));
    kernel_echo.expect_success(Duration::from_secs(10));
}

#[test]
fn five_percent_loss_wedges_nothing() {
    let _l = dpdk_lock();
    let net = VethPair::new("l", 12);
    add_loss(&net);
    let mut kernel_echo = spawn("kernel-echo", Some(&net.ns[1]), &[("CATNIP_PEER", net.ip[1].to_string())]);
    let tag = format!("cnipnetem{}", std::process::id());
    let mut dpdk = spawn(
        "lossy-client",
        Some(&net.ns[0]),
        &[
            ("DEMI_DPDK_EAL", net.eal(&tag)),
            ("DEMI_LOCAL_IPV4", net.ip[0].to_string()),
            ("CATNIP_PEER", net.ip[1].to_string()),
        ],
    );
    dpdk.expect_success(Duration::from_secs(90));
    kernel_echo.expect_success(Duration::from_secs(10));
}

#[test]
fn pushto_error_cases_and_unreachable_peer() {
    let _l = dpdk_lock();
    let tag = format!("cniperr{}", std::process::id());
    let env = [
        ("DEMI_DPDK_EAL", format!("{} --vdev=net_null0,no-rx=1", eal_base(0, &tag))),
        ("DEMI_LOCAL_IPV4", "10.77.10.1".to_string()),
    ];
    spawn("errors", None, &env).expect_success(Duration::from_secs(60));
}

#[test]
fn bad_settings_fail_init_with_a_message_and_init_runs_once() {
    let _l = dpdk_lock();
    let tag = format!("cnipinit{}", std::process::id());
    let env = [("CATNIP_GOOD_EAL", format!("{} --vdev=net_null0,no-rx=1", eal_base(0, &tag)))];
    spawn("init-errors", None, &env).expect_success(Duration::from_secs(60));
}

/// 5% random loss each way on the veth pair: `tc netem loss 5%` where the
/// kernel has netem; otherwise (this project's VMs run a kernel built
/// without CONFIG_NET_SCH_NETEM) the same loss from nftables' random
/// number generator on the kernel-side veth's ingress and egress hooks.
fn add_loss(net: &VethPair) {
    let netem = |i: usize| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.ns[i],
                "tc",
                "qdisc",
                "add",
                "dev",
                &net.ifname[i],
                "root",
                "netem",
                "loss",
                "5%",
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if netem(1) {
        // netem covers kernel -> catnip. DPDK's packet socket skips the
        // qdisc on its side, so catnip -> kernel loss comes from nftables.
        eprintln!("loss: tc netem loss 5% (kernel -> catnip) + nftables 5% (catnip -> kernel)");
        nft_loss(net, &["ingress"]);
    } else {
        eprintln!("loss: this kernel has no netem; nftables `numgen random mod 100 < 5 drop` both ways instead");
        nft_loss(net, &["ingress", "egress"]);
    }
}

fn nft_loss(net: &VethPair, hooks: &[&str]) {
    let chains: String = hooks
        .iter()
        .map(|h| {
            format!(
                "chain {h} {{ type filter hook {h} device \"{}\" priority 0; numgen random mod 100 < 5 drop; }}\n",
                net.ifname[1]
            )
        })
        .collect();
    let rules = format!("table netdev demi_loss {{\n{chains}}}\n");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &net.ns[1], "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run nft (package nftables)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft rejected:\n{rules}");
}

// ---- roles ---------------------------------------------------------------

/// Plays the role named by CATNIP_ROLE, then exits the process; a no-op
/// when the variable is unset (a normal test run).
#[test]
fn role_entry() {
    let Ok(role) = std::env::var("CATNIP_ROLE") else { return };
    demi::init_logging();
    match role.as_str() {
        "echo-server" => echo_server(ECHO_PORT),
        "memif-client" => memif_client(),
        "veth-dpdk" => veth_dpdk(),
        "lossy-client" => lossy_client(),
        "kernel-echo" => kernel_echo(),
        "kernel-client" => kernel_client(),
        "kernel-bye" => kernel_bye(),
        "errors" => errors(),
        "init-errors" => init_errors(),
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

fn catnip() -> LibOs {
    let os = LibOs::new("catnip").expect("catnip starts");
    assert_eq!(os.name(), "catnip");
    os
}

fn addr(ip: &str, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip.parse().expect("an IPv4 address"), port)
}

/// Echoes every datagram on `port` until one says "bye" (echoed too).
fn echo_server(port: u16) {
    let os = catnip();
    serve_echo(&os, port);
}

fn serve_echo(os: &LibOs, port: u16) {
    let qd = os.socket(SockType::Datagram).unwrap();
    os.bind(qd, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).unwrap();
    let idle = Duration::from_secs(40);
    loop {
        let qt = os.pop(qd).unwrap();
        let r = os.wait(qt, Some(idle)).expect("a datagram before the idle limit");
        let QValue::Pop { buf, from } = r.value else { panic!("pop failed: {:?}", r.value) };
        // Echo the received buffer itself: its memory is the received mbuf.
        wait_ok(os, os.pushto(qd, &buf, from.expect("datagrams carry their sender")).unwrap());
        if buf.as_slice() == BYE {
            break;
        }
    }
    // Give the last echo time to leave before the port closes.
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end {
        let _ = os.wait_next_n(1, Some(Duration::from_millis(10)));
    }
    os.close(qd).unwrap();
}

fn pop_one(os: &LibOs, qd: i32) -> (Vec<u8>, SocketAddrV4) {
    let r = wait_ok(os, os.pop(qd).unwrap());
    match r.value {
        QValue::Pop { buf, from } => (buf.as_slice().to_vec(), from.expect("sender")),
        v => panic!("expected a pop, got {v:?}"),
    }
}

fn memif_client() {
    let os = catnip();
    let server = addr(&env_of("CATNIP_PEER"), ECHO_PORT);
    let qd = os.socket(SockType::Datagram).unwrap();
    os.bind(qd, "0.0.0.0:0".parse().unwrap()).unwrap();
    let local = os.local_addr(qd).unwrap().expect("bound");
    assert_eq!(local.ip(), &"10.77.9.2".parse::<Ipv4Addr>().unwrap());
    // Sizes from tiny to the largest one frame carries (1500 - 28).
    for (i, size) in [1usize, 64, 500, 1024, 1472].into_iter().cycle().take(200).enumerate() {
        // sgaalloc hands out mbuf memory: this push is zero copy.
        let msg = pattern(size, i as u8);
        let mut b = os.sgaalloc(size).unwrap();
        b.as_mut_slice().expect("fresh buffer").copy_from_slice(&msg);
        wait_ok(&os, os.pushto(qd, &b, server).unwrap());
        let (got, from) = pop_one(&os, qd);
        assert_eq!(from, server);
        assert_eq!(got, msg, "round {i}: echo differs");
    }
    // The same allocated buffer pushed many times (the mbuf is reused).
    let b = os.buffer_from(b"again").unwrap();
    for _ in 0..20 {
        wait_ok(&os, os.pushto(qd, &b, server).unwrap());
        assert_eq!(pop_one(&os, qd).0, b"again");
    }
    // Free-protection: the application drops its handle before the push completes.
    let b = os.buffer_from(b"freed early").unwrap();
    let qt = os.pushto(qd, &b, server).unwrap();
    drop(b);
    wait_ok(&os, qt);
    assert_eq!(pop_one(&os, qd).0, b"freed early");
    // connect sets the default peer for push.
    wait_ok(&os, os.connect(qd, server).unwrap());
    assert_eq!(os.peer_addr(qd).unwrap(), server);
    wait_ok(&os, os.push(qd, &os.buffer_from(b"connected").unwrap()).unwrap());
    assert_eq!(pop_one(&os, qd).0, b"connected");
    // One byte over what the MTU allows.
    let r = wait(&os, os.push(qd, &os.buffer_from(&pattern(1473, 1)).unwrap()).unwrap());
    assert_eq!(r.errno(), libc::EMSGSIZE);
    // Several sockets at once, each gets its own echoes.
    let others: Vec<_> = (0..3)
        .map(|_| {
            let s = os.socket(SockType::Datagram).unwrap();
            os.bind(s, "0.0.0.0:0".parse().unwrap()).unwrap();
            s
        })
        .collect();
    for (k, &s) in others.iter().enumerate() {
        wait_ok(&os, os.pushto(s, &os.buffer_from(&[k as u8; 9]).unwrap(), server).unwrap());
    }
    for (k, &s) in others.iter().enumerate() {
        assert_eq!(pop_one(&os, s).0, [k as u8; 9]);
    }
    wait_ok(&os, os.push(qd, &os.buffer_from(BYE).unwrap()).unwrap());
    assert_eq!(pop_one(&os, qd).0, BYE);
}

/// catnip as a client of the kernel's echo server (catnip resolves the
/// kernel by ARP), then an echo server for the kernel's client (the kernel
/// resolves catnip) and a target for ping.
fn veth_dpdk() {
    let peer = addr(&env_of("CATNIP_PEER"), KERNEL_ECHO_PORT);
    let os = catnip();
    let qd = os.socket(SockType::Datagram).unwrap();
    for i in 0..50usize {
        // The first push waits for ARP to resolve the kernel's address.
        let msg = pattern(16 + i * 20, i as u8);
        wait_ok(&os, os.pushto(qd, &os.buffer_from(&msg).unwrap(), peer).unwrap());
        let (got, from) = pop_one(&os, qd);
        assert_eq!((got, from), (msg, peer));
    }
    os.close(qd).unwrap();
    serve_echo(&os, ECHO_PORT);
}

/// Pings the kernel's echo server through 5% loss each way: lost rounds
/// time out and are resent, pending pops survive timeouts, nothing wedges.
fn lossy_client() {
    let peer = addr(&env_of("CATNIP_PEER"), KERNEL_ECHO_PORT);
    let os = catnip();
    let qd = os.socket(SockType::Datagram).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (rounds, mut resends) = (200usize, 0usize);
    let mut pending_pop = None;
    for i in 0..rounds {
        let msg = pattern(64, i as u8);
        'round: loop {
            assert!(Instant::now() < deadline, "round {i} never came back");
            let push = os.pushto(qd, &os.buffer_from(&msg).unwrap(), peer).unwrap();
            // A lost ARP exchange can make this one fail; then resend.
            let pushed = wait(&os, push);
            if pushed.errno() != 0 {
                assert_eq!(pushed.errno(), libc::EHOSTUNREACH);
                resends += 1;
                continue;
            }
            let until = Instant::now() + Duration::from_millis(100);
            loop {
                let qt = *pending_pop.get_or_insert_with(|| os.pop(qd).unwrap());
                let left = until.saturating_duration_since(Instant::now());
                match os.wait(qt, Some(left)) {
                    Ok(r) => {
                        pending_pop = None;
                        let QValue::Pop { buf, .. } = r.value else { panic!("pop failed: {:?}", r.value) };
                        if buf.as_slice() == msg.as_slice() {
                            break 'round;
                        }
                        // An echo of an earlier resend: keep waiting.
                    }
                    Err(e) => {
                        // The pop stays pending; the next wait reuses it.
                        assert_eq!(e.errno(), libc::ETIMEDOUT);
                        resends += 1;
                        continue 'round;
                    }
                }
            }
        }
    }
    eprintln!("lossy-client: {rounds} rounds, {resends} resends");
    assert!(resends > 0, "5% loss each way over {rounds} rounds should have cost a resend");
    // A pop with nothing to come times out when asked to and stays pending.
    let qt = pending_pop.unwrap_or_else(|| os.pop(qd).unwrap());
    let e = os.wait(qt, Some(Duration::from_millis(200))).unwrap_err();
    assert_eq!(e.errno(), libc::ETIMEDOUT);
    // Closing cancels it.
    os.close(qd).unwrap();
    assert_eq!(wait(&os, qt).errno(), libc::ECANCELED);
    let bye = os.socket(SockType::Datagram).unwrap();
    for _ in 0..20 {
        wait(&os, os.pushto(bye, &os.buffer_from(BYE).unwrap(), peer).unwrap());
    }
}

fn kernel_echo() {
    let me = addr(&env_of("CATNIP_PEER"), KERNEL_ECHO_PORT);
    let s = UdpSocket::bind(me).expect("bind kernel echo");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut b = [0u8; 2048];
    loop {
        let (n, from) = s.recv_from(&mut b).expect("a datagram within 60 s");
        s.send_to(&b[..n], from).unwrap();
        if &b[..n] == BYE {
            return;
        }
    }
}

fn kernel_client() {
    let catnip = addr(&env_of("CATNIP_PEER"), ECHO_PORT);
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut b = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(40);
    for i in 0..50usize {
        let msg = pattern(8 + i * 25, i as u8 ^ 0x5a);
        loop {
            assert!(Instant::now() < deadline, "no echo from catnip for round {i}");
            s.send_to(&msg, catnip).unwrap();
            match s.recv_from(&mut b) {
                Ok((n, from)) if &b[..n] == msg.as_slice() => {
                    assert_eq!(from, std::net::SocketAddr::V4(catnip));
                    break;
                }
                // Nothing yet (catnip still busy as a client), or a late echo.
                _ => continue,
            }
        }
    }
}

fn kernel_bye() {
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    s.send_to(BYE, addr(&env_of("CATNIP_PEER"), ECHO_PORT)).unwrap();
    s.send_to(BYE, addr(&env_of("CATNIP_SELF"), KERNEL_ECHO_PORT)).unwrap();
}

extern "C" {
    fn demi_init(args: *const demi::ffi::types::demi_args) -> c_int;
    fn demi_socket(qd_out: *mut c_int, domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    fn demi_pushto(
        qt_out: *mut u64,
        qd: c_int,
        sga: *const demi::ffi::types::demi_sgarray_t,
        addr: *const libc::sockaddr,
        size: libc::socklen_t,
    ) -> c_int;
    fn demi_sgaalloc(size: usize) -> demi::ffi::types::demi_sgarray_t;
    fn demi_wait(qr_out: *mut demi::ffi::types::demi_qresult_t, qt: u64, timeout: *const libc::timespec) -> c_int;
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

/// Every error of shared/spec/004 (demi_pushto) that applies to catnip,
/// through the C ABI, plus catnip's own: EPROTONOSUPPORT for streams,
/// EMSGSIZE, and EHOSTUNREACH when nobody answers ARP.
fn errors() {
    use demi::ffi::types::{demi_qresult_t, demi_sgarray_t};
    let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY (whole role): every pointer passed below is valid for the call,
    // or deliberately NULL / short where the spec says the call must refuse it.
    unsafe {
        assert_eq!(demi_init(std::ptr::null()), 0, "demi_init with LIBOS=catnip");
        assert_eq!(demi_init(std::ptr::null()), libc::EEXIST, "a second demi_init fails cleanly");
        let mut qd: c_int = -1;
        assert_eq!(demi_socket(&mut qd, libc::AF_INET, libc::SOCK_STREAM, 0), libc::EPROTONOSUPPORT);
        assert_eq!(demi_socket(&mut qd, libc::AF_INET, libc::SOCK_DGRAM, 0), 0);
        let sga = demi_sgaalloc(32);
        assert!(!sga.sga_buf.is_null());
        let dest = sockaddr("10.77.10.2:9".parse().unwrap());
        let dest_ptr = &dest as *const libc::sockaddr_in as *const libc::sockaddr;
        let mut qt = 0u64;
        // EINVAL: dest_addr does not point to a valid address structure.
        assert_eq!(demi_pushto(&mut qt, qd, &sga, std::ptr::null(), size), libc::EINVAL);
        let mut bad_family = dest;
        bad_family.sin_family = libc::AF_UNIX as libc::sa_family_t;
        assert_eq!(
            demi_pushto(&mut qt, qd, &sga, &bad_family as *const _ as *const libc::sockaddr, size),
            libc::EINVAL
        );
        // EINVAL: the address size is not valid.
        assert_eq!(demi_pushto(&mut qt, qd, &sga, dest_ptr, 3), libc::EINVAL);
        // EINVAL: sga is not a valid scatter-gather array.
        assert_eq!(demi_pushto(&mut qt, qd, std::ptr::null(), dest_ptr, size), libc::EINVAL);
        let mut no_segs = sga;
        no_segs.sga_numsegs = 0;
        assert_eq!(demi_pushto(&mut qt, qd, &no_segs, dest_ptr, size), libc::EINVAL);
        // EINVAL: a zero-length buffer.
        let mut empty = sga;
        empty.sga_segs[0].sgaseg_len = 0;
        assert_eq!(demi_pushto(&mut qt, qd, &empty, dest_ptr, size), libc::EINVAL);
        // EBADF: not a queue descriptor.
        assert_eq!(demi_pushto(&mut qt, 9999, &sga, dest_ptr, size), libc::EBADF);
        // EINVAL: a NULL qt_out.
        assert_eq!(demi_pushto(std::ptr::null_mut(), qd, &sga, dest_ptr, size), libc::EINVAL);
        // Nobody answers ARP on net_null: the push fails with EHOSTUNREACH
        // after the bounded resolution time (10 tries x 100 ms here).
        let start = Instant::now();
        assert_eq!(demi_pushto(&mut qt, qd, &sga, dest_ptr, size), 0);
        let mut qr: demi_qresult_t = std::mem::zeroed();
        let ten_s = libc::timespec { tv_sec: 10, tv_nsec: 0 };
        assert_eq!(demi_wait(&mut qr, qt, &ten_s), 0);
        let ret = qr.qr_ret;
        assert_eq!(ret, i64::from(libc::EHOSTUNREACH), "unanswered ARP");
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "took {took:?}");
        // EMSGSIZE: larger than one frame.
        let big: demi_sgarray_t = demi_sgaalloc(1473);
        assert!(!big.sga_buf.is_null());
        assert_eq!(demi_pushto(&mut qt, qd, &big, dest_ptr, size), 0);
        assert_eq!(demi_wait(&mut qr, qt, &ten_s), 0);
        let ret = qr.qr_ret;
        assert_eq!(ret, i64::from(libc::EMSGSIZE));
        // A broadcast needs no ARP and completes at once.
        let bcast = sockaddr("255.255.255.255:9".parse().unwrap());
        assert_eq!(demi_pushto(&mut qt, qd, &sga, &bcast as *const _ as *const libc::sockaddr, size), 0);
        assert_eq!(demi_wait(&mut qr, qt, &ten_s), 0);
        let ret = qr.qr_ret;
        assert_eq!(ret, 0);
    }
}

/// Missing or malformed settings fail with EINVAL and name the variable; a
/// bad EAL argument returns the EAL's reason; the EAL starts once.
fn init_errors() {
    fn fails(vars: &[(&str, Option<&str>)]) -> demi::Error {
        for (k, v) in vars {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
        LibOs::new("catnip").expect_err("catnip must refuse these settings")
    }
    let good_eal = env_of("CATNIP_GOOD_EAL");
    let e = fails(&[("DEMI_DPDK_EAL", Some(&good_eal)), ("DEMI_LOCAL_IPV4", None)]);
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(e.why().contains("DEMI_LOCAL_IPV4"), "{e}");
    for (var, bad) in [("DEMI_LOCAL_IPV4", "10.77.300.1"), ("DEMI_LOCAL_MAC", "zz:00:00:00:00:01"), ("DEMI_MTU", "70")]
    {
        std::env::set_var("DEMI_LOCAL_IPV4", "10.77.10.1");
        let e = fails(&[(var, Some(bad))]);
        assert_eq!(e.errno(), libc::EINVAL, "{var}");
        assert!(e.why().contains(var), "{e}");
        std::env::remove_var(var);
    }
    std::env::set_var("DEMI_LOCAL_IPV4", "10.77.10.1");
    let e = fails(&[("DEMI_DPDK_EAL", Some("--no-such-eal-option"))]);
    assert!(e.why().contains("EAL"), "{e}");
    // The EAL was tried once in this process: it cannot start again.
    let e = fails(&[("DEMI_DPDK_EAL", Some(&good_eal))]);
    assert_eq!(e.errno(), libc::EALREADY, "{e}");
}
