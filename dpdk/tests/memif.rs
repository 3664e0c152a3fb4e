//! Two DPDK processes over net_memif (server and client roles) exchange UDP
//! datagrams through the raw stack: ARP resolution, UDP both ways, link-up
//! wait. DPDK's EAL runs once per process, so this test re-runs its own
//! binary once per role (the `role_entry` test below, selected by an
//! environment variable) and kills both children by pid on every exit path.

use catnip::{Config, Event, Payload, Stack};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
const PORT: u16 = 7777;
const ROUNDS: usize = 200;

/// A spawned role, killed by pid and reaped when dropped.
struct Role(Child);

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Role {
    fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(s) = self.0.try_wait().expect("try_wait") {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// A private directory for the memif socket, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spawn(role: &str, ip: Ipv4Addr, lcore: u32, vdev: &str, tag: &str) -> Role {
    let eal = format!(
        "-l {lcore} --no-huge --no-pci --no-shconf --no-telemetry -m 128 --log-level=lib.eal:error --file-prefix={tag}-{role} --vdev={vdev}"
    );
    let child = Command::new(std::env::current_exe().expect("test binary path"))
        .args(["role_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env("CATNIP_TEST_ROLE", role)
        .env("DEMI_DPDK_EAL", eal)
        .env("DEMI_LOCAL_IPV4", ip.to_string())
        .env("DEMI_ARP_RETRY_MS", "200")
        .env("DEMI_ARP_RETRIES", "10")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn role");
    Role(child)
}

#[test]
fn memif_udp_echo_between_two_processes() {
    let tag = format!("catnip-memif-{}", std::process::id());
    let dir = TempDir(std::env::temp_dir().join(&tag));
    std::fs::create_dir_all(&dir.0).unwrap();
    let sock = dir.0.join("memif.sock");
    let sock = sock.display();
    let mut server = spawn(
        "server",
        SERVER_IP,
        0,
        &format!("net_memif0,role=server,socket={sock}"),
        &tag,
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut client = spawn(
        "client",
        CLIENT_IP,
        1,
        &format!("net_memif0,role=client,socket={sock}"),
        &tag,
    );
    let c = client
        .wait_for(Duration::from_secs(60))
        .expect("client finished within 60 s");
    assert!(c.success(), "client failed: {c}");
    let s = server
        .wait_for(Duration::from_secs(10))
        .expect("server finished after the client");
    assert!(s.success(), "server failed: {s}");
}

/// The body of a spawned role; a no-op in a normal test run.
#[test]
fn role_entry() {
    let Ok(role) = std::env::var("CATNIP_TEST_ROLE") else {
        return;
    };
    let cfg = Config::from_env().expect("config");
    let mut stack = Stack::new(&cfg).expect("stack");
    assert!(stack.wait_link(Duration::from_secs(20)), "memif link up");
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    if role == "server" {
        stack.bind(PORT, 0).unwrap();
        let mut echoed = 0;
        while echoed < ROUNDS {
            assert!(Instant::now() < deadline, "server: only {echoed} echoes");
            stack.poll(&mut events);
            for ev in events.drain(..) {
                if let Event::Datagram { from, payload, .. } = ev {
                    let status = stack
                        .send(PORT, from, Payload::Bytes(payload.bytes()), 0)
                        .expect("echo");
                    let _ = status;
                    echoed += 1;
                }
            }
        }
        // Let the last replies leave before the port closes.
        let linger = Instant::now() + Duration::from_millis(500);
        while Instant::now() < linger {
            stack.poll(&mut events);
        }
    } else {
        let local = stack.bind(0, 0).unwrap();
        let server = SocketAddrV4::new(SERVER_IP, PORT);
        for i in 0..ROUNDS {
            let msg = format!("ping {i} from {local}");
            stack
                .send(local, server, Payload::Bytes(msg.as_bytes()), i as u64)
                .expect("send");
            let mut got = None;
            while got.is_none() {
                assert!(Instant::now() < deadline, "client: no reply to round {i}");
                stack.poll(&mut events);
                for ev in events.drain(..) {
                    match ev {
                        Event::Datagram { from, payload, .. } => {
                            assert_eq!(from, server);
                            got = Some(payload.bytes().to_vec());
                        }
                        Event::Sent { errno, .. } => assert_eq!(errno, None, "send failed"),
                    }
                }
            }
            assert_eq!(got.unwrap(), msg.as_bytes());
        }
        let c = stack.counters();
        assert_eq!(c.rx_datagrams, ROUNDS as u64);
        assert!(
            c.arp_requests_sent >= 2,
            "gratuitous ARP and one resolution: {c:?}"
        );
    }
    std::process::exit(0);
}
