//! Two DPDK processes over net_memif (server and client roles) exchange UDP
//! datagrams through the raw stack: ARP resolution, UDP both ways, link-up
//! wait. DPDK's EAL runs once per process, so this test re-runs its own
//! binary once per role (the `role_entry` test below, selected by an
//! environment variable) and kills both children by pid on every exit path.

use catnip::wire::{
    EtherType, EthernetAddress, EthernetFrame, EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr, UdpRepr,
    ETHERNET_HEADER_LEN, IPV4_HEADER_LEN,
};
use catnip::{Config, Event, Payload, SendStatus, Stack};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
const PORT: u16 = 7777;
const ROUNDS: usize = 200;
const DONE: &[u8] = b"done";
/// Where the IPv4 and UDP headers start in a frame.
const L3: usize = ETHERNET_HEADER_LEN;
const L4: usize = L3 + IPV4_HEADER_LEN;

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
        .stdin(if role == "server" { Stdio::piped() } else { Stdio::null() })
        .spawn()
        .expect("spawn role");
    Role(child)
}

#[test]
fn memif_udp_echo_between_two_processes() {
    let tag = format!("catnip-memif-{}", std::process::id());
    let dir = TempDir(std::env::temp_dir().join(&tag));
    std::fs::create_dir_all(&dir.0).unwrap();
    let sock = dir.0.join("memif.sock").display().to_string();
    let mut server =
        spawn("server", SERVER_IP, 0, &format!("net_memif0,role=server,socket={sock},socket-abstract=no"), &tag);
    wait_for_socket(&sock);
    let mut client =
        spawn("client", CLIENT_IP, 1, &format!("net_memif0,role=client,socket={sock},socket-abstract=no"), &tag);
    let c = client.wait_for(Duration::from_secs(60)).expect("client finished within 60 s");
    assert!(c.success(), "client failed: {c}");
    // The server waits, not polling, for this before it leaves.
    drop(server.0.stdin.take());
    let s = server.wait_for(Duration::from_secs(10)).expect("server finished after the client");
    assert!(s.success(), "server failed: {s}");
}

/// The body of a spawned role; a no-op in a normal test run.
#[test]
fn role_entry() {
    let Ok(role) = std::env::var("CATNIP_TEST_ROLE") else {
        return;
    };
    let cfg = Config::from_lookup(|k| std::env::var(k).ok()).expect("config");
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
                    stack.send(PORT, from, Payload::Bytes(payload.bytes()), 0).expect("echo");
                    echoed += 1;
                }
            }
        }
        // Then the malformed frames, and a last datagram asking for the verdict.
        loop {
            assert!(Instant::now() < deadline, "server: no final datagram");
            stack.poll(&mut events);
            let done = events.drain(..).find_map(|ev| match ev {
                Event::Datagram { from, payload, .. } if payload.bytes() == DONE => Some(from),
                _ => None,
            });
            if let Some(from) = done {
                let c = stack.counters().clone();
                let counted = [
                    c.drop_eth_truncated,
                    c.drop_eth_not_for_us,
                    c.drop_eth_unknown_type,
                    c.drop_arp_malformed,
                    c.drop_ipv4_malformed,
                    c.drop_ipv4_bad_checksum,
                    c.drop_ipv4_not_for_us,
                    c.drop_ipv4_fragment,
                    c.drop_ipv4_ttl_zero,
                    c.drop_ipv4_unknown_protocol,
                    c.drop_icmp_malformed,
                    c.drop_udp_malformed,
                    c.drop_udp_bad_checksum,
                    c.drop_udp_no_socket,
                ];
                eprintln!("server counters: {c:?}");
                let verdict: &[u8] = if counted.iter().all(|&n| n > 0) { b"all counted" } else { b"missing" };
                let status = stack.send(PORT, from, Payload::Bytes(verdict), 1).expect("verdict");
                // A queued verdict leaves in a later poll, while the client still waits for it.
                let mut sent = status == SendStatus::Sent;
                while !sent {
                    assert!(Instant::now() < deadline, "server: verdict never left");
                    stack.poll(&mut events);
                    sent = events.drain(..).any(|ev| matches!(ev, Event::Sent { tag: 1, .. }));
                }
                break;
            }
        }
        // Stop polling before the client leaves. DPDK 22.11's memif PMD may
        // unmap the shared rings from its interrupt thread when the peer
        // goes, with nothing to stop a concurrent rx_burst on this thread
        // from reading them (docs/ARCHITECTURE.md, "catnip over memif"), and
        // the link status does not reliably fall when a peer exits. So wait,
        // without touching the rings, for the parent to close our stdin once
        // the client has exited.
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    } else {
        let local = stack.bind(0, 0).unwrap();
        let server = SocketAddrV4::new(SERVER_IP, PORT);
        for i in 0..ROUNDS {
            let msg = format!("ping {i} from {local}");
            stack.send(local, server, Payload::Bytes(msg.as_bytes()), i as u64).expect("send");
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
        assert!(c.arp_requests_sent >= 2, "gratuitous ARP and one resolution: {c:?}");
        // Malformed and unwanted frames, then random ones: the server drops
        // and counts them all, and still answers the last datagram.
        for f in
            malformed_frames(stack.mac(), SocketAddrV4::new(CLIENT_IP, local)).into_iter().chain(random_frames(300))
        {
            stack.send_raw(&f).expect("raw send");
            stack.poll(&mut events);
        }
        stack.send(local, server, Payload::Bytes(DONE), 0).expect("send done");
        let mut verdict = None;
        while verdict.is_none() {
            assert!(Instant::now() < deadline, "client: no verdict from the server");
            stack.poll(&mut events);
            for ev in events.drain(..) {
                if let Event::Datagram { payload, .. } = ev {
                    verdict = Some(String::from_utf8_lossy(payload.bytes()).into_owned());
                }
            }
        }
        assert_eq!(verdict.as_deref(), Some("all counted"));
    }
    std::process::exit(0);
}

/// A valid broadcast UDP frame from `src` to the server's PORT, for mangling.
fn udp_frame(mac: EthernetAddress, src: SocketAddrV4, dst_port: u16) -> Vec<u8> {
    let payload = b"malformed?";
    let mut f = vec![0u8; ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + 8 + payload.len()];
    let eth = EthernetRepr { src_addr: mac, dst_addr: EthernetAddress::BROADCAST, ethertype: EtherType::Ipv4 };
    eth.emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
    let ip = Ipv4Repr {
        src_addr: *src.ip(),
        dst_addr: SERVER_IP,
        protocol: IpProtocol::Udp,
        payload_len: 8 + payload.len(),
        ttl: 64,
    };
    let (ip_hdr, rest) = f[ETHERNET_HEADER_LEN..].split_at_mut(IPV4_HEADER_LEN);
    ip.emit(&mut Ipv4Packet::new_unchecked(ip_hdr), 7, catnip::wire::ipv4::Checksum::Software);
    let (udp, body) = rest.split_at_mut(8);
    body.copy_from_slice(payload);
    UdpRepr { src_port: src.port(), dst_port }.emit(udp, *src.ip(), SERVER_IP, body);
    f
}

/// Rewrites the IPv4 header checksum after a change.
fn fix_ip(f: &mut [u8]) {
    Ipv4Packet::new_unchecked(&mut f[ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + IPV4_HEADER_LEN]).fill_checksum();
}

/// One frame per drop reason the server must count.
fn malformed_frames(mac: EthernetAddress, src: SocketAddrV4) -> Vec<Vec<u8>> {
    let good = udp_frame(mac, src, PORT);
    let mangle = |f: fn(&mut Vec<u8>)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    vec![
        good[..10].to_vec(),                                        // truncated Ethernet header
        mangle(|v| v[..6].copy_from_slice(&[2, 0xaa, 0, 0, 0, 1])), // another station's MAC
        mangle(|v| v[12..14].copy_from_slice(&[0x88, 0xb5])),       // unknown EtherType
        mangle(|v| {
            v[12..14].copy_from_slice(&[0x08, 0x06]); // ARP, too short
            v.truncate(ETHERNET_HEADER_LEN + 10);
        }),
        mangle(|v| v.truncate(ETHERNET_HEADER_LEN + 12)), // truncated IPv4 header
        mangle(|v| v[L3 + 3] = v[L3 + 3].wrapping_add(40)), // IPv4 length beyond the frame
        mangle(|v| v[L3 + 10] ^= 0xff),                   // bad IPv4 checksum
        mangle(|v| {
            v[L3 + 19] = 99; // not our address
            fix_ip(v);
        }),
        mangle(|v| {
            v[L3 + 6] = 0x20; // more fragments
            fix_ip(v);
        }),
        mangle(|v| {
            v[L3 + 8] = 0; // TTL 0
            fix_ip(v);
        }),
        mangle(|v| {
            v[L3 + 9] = 6; // TCP
            fix_ip(v);
        }),
        mangle(|v| {
            v[L3 + 9] = 1; // ICMP with a bad checksum
            fix_ip(v);
        }),
        mangle(|v| v[L4 + 6] ^= 0x55), // bad UDP checksum
        mangle(|v| v[L4 + 5] = 200),   // UDP length beyond the packet
        udp_frame(mac, src, PORT + 1), // nobody bound there
    ]
}

/// Random frames (a fixed-seed xorshift): broadcast, with an IPv4 or ARP
/// EtherType half of the time so the deeper parsers see garbage too.
fn random_frames(n: usize) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|_| {
            let len = (next() % 200) as usize;
            let mut f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 14 {
                f[..6].copy_from_slice(&[0xff; 6]);
                match next() % 4 {
                    0 => f[12..14].copy_from_slice(&[0x08, 0x00]),
                    1 => f[12..14].copy_from_slice(&[0x08, 0x06]),
                    2 if len >= 34 => {
                        // A plausible IPv4 header with a random rest.
                        f[12..14].copy_from_slice(&[0x08, 0x00]);
                        f[14] = 0x45;
                        let total = ((len - 14) as u16).to_be_bytes();
                        f[16..18].copy_from_slice(&total);
                        f[30..34].copy_from_slice(&SERVER_IP.octets());
                        fix_ip(&mut f);
                    }
                    _ => {}
                }
            }
            f
        })
        .collect()
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
