//! catnip (`LIBOS=catnip`) end to end, over real DPDK ports.
//!
//! DPDK's EAL starts once per process, so each DPDK endpoint is this test
//! binary run again with `CATNIP_ROLE` set: the `role_entry` test then plays
//! that role and exits (in a normal run it does nothing). Children are
//! killed by pid and reaped when their guard drops; network namespaces,
//! veth pairs and memif socket folders are removed by guards too, so a
//! failing test cleans up as well. The namespace tests need root and
//! iproute2; without them they fail loudly instead of skipping.
//!
//! The binary's global allocator counts allocations for the roles that ask
//! (tests/common/counting.rs); for everything else it is the system's.
#![cfg(feature = "catnip")]

mod common;
use common::lib_dir;
#[path = "common/counting.rs"]
mod counting;
#[path = "catnip/roles.rs"]
mod roles;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One DPDK test at a time: each busy-polls a core, and the machine may have two.
static DPDK: Mutex<()> = Mutex::new(());

const ECHO_PORT: u16 = 7000;
const KERNEL_ECHO_PORT: u16 = 7001;
const BYE: &[u8] = b"bye";
/// The MAC catnip is told to use (DEMI_LOCAL_MAC) on the veth test.
const CATNIP_MAC: &str = "02:00:0a:4d:0b:01";

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

    /// Closes the role's stdin: a role waiting for the end of its input goes on.
    fn release(&mut self) {
        drop(self.0.stdin.take());
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
        .stdin(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().unwrap_or_else(|e| panic!("spawn role {role}: {e}")), role)
}

// ---- the tests -----------------------------------------------------------

#[test]
fn memif_udp_ping_pong_between_two_dpdk_processes() {
    memif_pair("cnipmemif", "echo-server", "memif-client");
}

/// Issue 11 on catnip: 10,000 round trips of 64 B over memif, after a
/// warm-up, make no heap allocation in the client (pushto of an mbuf
/// buffer, pop, wait) nor in the server (pop, wait, pushto of the received
/// buffer); each role counts its own thread and fails on any.
#[test]
fn memif_round_trips_allocate_nothing() {
    memif_pair("cnipzalloc", "zero-alloc-server", "zero-alloc-client");
}

/// Runs `server_role` (memif server, 10.77.9.1) and then `client_role`
/// (memif client, 10.77.9.2, CATNIP_PEER the server) as two DPDK processes
/// over one memif link; both must succeed. The server is released (its
/// stdin closed) only once the client has exited: it stops polling before
/// its peer goes (docs/ARCHITECTURE.md, "catnip over memif").
fn memif_pair(tag: &str, server_role: &'static str, client_role: &'static str) {
    let _l = dpdk_lock();
    let tag = format!("{tag}{}", std::process::id());
    let dir = TempDir(std::env::temp_dir().join(&tag));
    std::fs::create_dir_all(&dir.0).unwrap();
    let sock = dir.0.join("memif.sock").display().to_string();
    let server_ip = "10.77.9.1".to_string();
    let mut server = spawn(
        server_role,
        None,
        &[
            (
                "DEMI_DPDK_EAL",
                format!(
                    "{} --vdev=net_memif0,role=server,socket={sock},socket-abstract=no",
                    eal_base(0, &format!("{tag}s"))
                ),
            ),
            ("DEMI_LOCAL_IPV4", server_ip.clone()),
        ],
    );
    wait_for_socket(&sock);
    let mut client = spawn(
        client_role,
        None,
        &[
            (
                "DEMI_DPDK_EAL",
                format!(
                    "{} --vdev=net_memif0,role=client,socket={sock},socket-abstract=no",
                    eal_base(1, &format!("{tag}c"))
                ),
            ),
            ("DEMI_LOCAL_IPV4", "10.77.9.2".into()),
            ("CATNIP_PEER", server_ip),
        ],
    );
    client.expect_success(Duration::from_secs(60));
    server.release();
    server.expect_success(Duration::from_secs(10));
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
        format!("{} --vdev=net_memif0,role=server,socket={sock},socket-abstract=no", eal_base(0, &format!("{tag}s"))),
        "10.77.8.1",
    );
    wait_for_socket(&sock);
    let mut client = run(
        &["client", server_addr, "--size", "64", "--count", "2000"],
        format!("{} --vdev=net_memif0,role=client,socket={sock},socket-abstract=no", eal_base(1, &format!("{tag}c"))),
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
            ("DEMI_LOCAL_MAC", CATNIP_MAC.to_string()),
            ("CATNIP_PEER", net.ip[1].to_string()),
        ],
    );
    // The kernel sends to catnip: ARP from the kernel, then UDP echoes.
    let kernel = [("CATNIP_PEER", net.ip[0].to_string())];
    spawn("kernel-client", Some(&net.ns[1]), &kernel).expect_success(Duration::from_secs(60));
    // The kernel learned catnip's (configured) MAC through ARP.
    let neigh = Command::new("ip").args(["-n", &net.ns[1], "neigh", "show"]).arg(net.ip[0].to_string()).output();
    let neigh = String::from_utf8_lossy(&neigh.expect("ip neigh").stdout).into_owned();
    assert!(neigh.contains(CATNIP_MAC), "kernel neighbour entry for catnip: {neigh:?}");
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

// ---- roles (in catnip/roles.rs) ----------------------------------------

/// Plays the role named by CATNIP_ROLE, then exits the process; a no-op
/// when the variable is unset (a normal test run).
#[test]
fn role_entry() {
    let Ok(role) = std::env::var("CATNIP_ROLE") else { return };
    demi::init_logging();
    roles::play(&role);
    std::process::exit(0);
}

/// Waits (bounded) for the memif server to create its socket: a client
/// that starts first fails to start its port.
fn wait_for_socket(path: &str) {
    let end = Instant::now() + Duration::from_secs(20);
    while !std::path::Path::new(path).exists() {
        assert!(Instant::now() < end, "memif server never created {path}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
