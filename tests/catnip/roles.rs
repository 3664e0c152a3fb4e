//! The roles `role_entry` plays in child processes: catnip endpoints
//! (through `LibOs`, or the C ABI for the error cases) and kernel UDP
//! endpoints inside a test's network namespace.

use super::common::{pattern, wait, wait_ok};
use super::counting::allocations_in;
use super::{BYE, ECHO_PORT, KERNEL_ECHO_PORT};
use demi::{Buffer, LibOs, QDesc, QValue, SockType};
use std::ffi::c_int;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

/// Runs the role named `role`.
pub fn play(role: &str) {
    match role {
        "echo-server" => echo_server(ECHO_PORT),
        "memif-client" => memif_client(),
        "zero-alloc-server" => zero_alloc_server(),
        "zero-alloc-client" => zero_alloc_client(),
        "veth-dpdk" => veth_dpdk(),
        "lossy-client" => lossy_client(),
        "kernel-echo" => kernel_echo(),
        "kernel-client" => kernel_client(),
        "kernel-bye" => kernel_bye(),
        "errors" => errors(),
        "init-errors" => init_errors(),
        other => panic!("unknown role {other}"),
    }
}

fn env_of(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is set by the parent test"))
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
    // Stop polling before the memif client leaves: DPDK 22.11's memif PMD can
    // unmap the shared rings from its interrupt thread when the peer goes,
    // racing an rx_burst on this thread. The parent closes our stdin once
    // the client has exited.
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
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
    // The last echo's push has completed: it is on the device.
    os.close(qd).unwrap();
}

/// Round trips before the zero-allocation roles count, and counted.
const WARM_UP: usize = 1_000;
const MEASURED: usize = 10_000;

/// Echoes `n` datagrams on `qd`: pop, wait, push the received buffer itself
/// back to its sender, wait.
fn echo_n(os: &LibOs, qd: QDesc, n: usize) {
    for _ in 0..n {
        let r = os.wait(os.pop(qd).unwrap(), Some(Duration::from_secs(40))).expect("a datagram within 40 s");
        let QValue::Pop { buf, from } = r.value else { panic!("pop failed: {:?}", r.value) };
        let echo = os.pushto(qd, &buf, from.expect("datagrams carry their sender")).unwrap();
        drop(buf);
        assert!(matches!(wait_ok(os, echo).value, QValue::Push));
    }
}

/// The echo server of `memif_round_trips_allocate_nothing`: counts its
/// allocations over the client's measured round trips, then echoes the
/// goodbye and waits to be released (see `echo_server`).
fn zero_alloc_server() {
    let os = catnip();
    let qd = os.socket(SockType::Datagram).unwrap();
    os.bind(qd, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, ECHO_PORT)).unwrap();
    echo_n(&os, qd, WARM_UP);
    let allocs = allocations_in(|| echo_n(&os, qd, MEASURED));
    let (bye, from) = pop_one(&os, qd);
    assert_eq!(bye, BYE);
    wait_ok(&os, os.pushto(qd, &os.buffer_from(BYE).unwrap(), from).unwrap());
    os.close(qd).unwrap();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    eprintln!("catnip server: allocations in {MEASURED} echoes of 64 B: {allocs}");
    assert_eq!(allocs, 0, "heap allocations on catnip's server path (pop, pushto of the received buffer)");
}

/// `rounds` round trips of `msg` to `server`: pop posted first, pushto,
/// wait for both, compare.
fn ping(os: &LibOs, qd: QDesc, msg: &Buffer, server: SocketAddrV4, rounds: usize) {
    for _ in 0..rounds {
        let pop = os.pop(qd).unwrap();
        assert!(matches!(wait_ok(os, os.pushto(qd, msg, server).unwrap()).value, QValue::Push));
        let QValue::Pop { buf, from } = wait_ok(os, pop).value else { panic!("expected a pop") };
        assert_eq!((buf.as_slice(), from), (msg.as_slice(), Some(server)), "the echo differs");
    }
}

/// The client of `memif_round_trips_allocate_nothing`: pushes an mbuf
/// buffer from sgaalloc (zero copy), counts over the measured round trips.
fn zero_alloc_client() {
    let os = catnip();
    let server = addr(&env_of("CATNIP_PEER"), ECHO_PORT);
    let qd = os.socket(SockType::Datagram).unwrap();
    os.bind(qd, "0.0.0.0:0".parse().unwrap()).unwrap();
    let mut msg = os.sgaalloc(64).unwrap();
    msg.as_mut_slice().expect("fresh buffer").copy_from_slice(&pattern(64, 0x5a));
    ping(&os, qd, &msg, server, WARM_UP);
    let allocs = allocations_in(|| ping(&os, qd, &msg, server, MEASURED));
    // The counter itself works: a heap buffer is one allocation or more.
    let control = allocations_in(|| drop(os.buffer_from(&[1; 64]).unwrap()));
    assert!(control >= 1, "the counting allocator counted nothing for an allocation");
    wait_ok(&os, os.pushto(qd, &os.buffer_from(BYE).unwrap(), server).unwrap());
    assert_eq!(pop_one(&os, qd).0, BYE);
    eprintln!("catnip client: allocations in {MEASURED} round trips of 64 B: {allocs}");
    assert_eq!(allocs, 0, "heap allocations on catnip's client path (pushto of an mbuf buffer, pop)");
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
    wait_fairness(&os, qd);
    wait_ok(&os, os.push(qd, &os.buffer_from(BYE).unwrap()).unwrap());
    assert_eq!(pop_one(&os, qd).0, BYE);
}

/// A wait that finds a finished token must still move the device: with a
/// pop pending, each round pushes one datagram and waits for whichever of
/// the two finishes first; the pop (its echo is on the wire) must complete.
fn wait_fairness(os: &LibOs, qd: i32) {
    let pop = os.pop(qd).unwrap();
    wait_ok(os, os.push(qd, &os.buffer_from(b"fair").unwrap()).unwrap());
    let noise = os.buffer_from(b"noise").unwrap();
    let mut pushed = 0;
    let mut popped = None;
    // Paced, so that the echo has time to cross while the noise stays small.
    let end = Instant::now() + Duration::from_secs(5);
    while popped.is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_micros(500));
        let push = os.push(qd, &noise).unwrap();
        pushed += 1;
        let mut push_taken = false;
        for r in os.wait_next_n(4, Some(Duration::from_millis(10))).unwrap_or_default() {
            if r.qt == pop {
                popped = Some(r);
            } else {
                assert_eq!((r.qt, r.errno()), (push, 0), "only the push and the pop are pending");
                push_taken = true;
            }
        }
        if !push_taken {
            wait_ok(os, push);
        }
    }
    let r = popped.unwrap_or_else(|| panic!("the pop stayed pending through {pushed} waits with a finished push"));
    let QValue::Pop { buf, .. } = r.value else { panic!("{:?}", r.value) };
    assert_eq!(buf.as_slice(), b"fair");
    // Every noise datagram comes back too; take them before the goodbye.
    for _ in 0..pushed {
        assert_eq!(pop_one(os, qd).0, b"noise");
    }
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
