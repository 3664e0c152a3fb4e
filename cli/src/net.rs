//! Starting a libOS from the command line, waiting on tokens with clear
//! errors, and the small protocol between `demi ping`/`demi stream` and
//! `demi echo`.
//!
//! Stream sockets (tcp): the client first sends a 16-byte hello, `DEMI`, the
//! mode (`P` ping, `S` stream), three zero bytes, the message size (u32 LE)
//! and four zero bytes. In ping mode the server sends back every byte that
//! follows. In stream mode it cuts what follows into messages of that size:
//! one whose first byte is `E` ends the run, and the server answers with a
//! report (below); every other message is counted.
//!
//! Datagram sockets (udp): every datagram starts with a 16-byte header, a
//! kind byte, seven zero bytes and a u64 LE (sequence number or session).
//! `D` datagrams are counted per sender and session, an `E` datagram asks
//! for the report of its session, anything else (pings are `P`) is sent back
//! unchanged, so plain UDP clients get an echo too.
//!
//! Report (40 bytes): `R`, seven zero bytes, then u64 LE session, messages
//! counted, their bytes, and nanoseconds from the first counted message's
//! arrival to the last one's.

use crate::{Common, Fail, Libos, Proto, Res};
use demi::{Config, LibOs, QDesc, QToken, QValue, SockType};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

pub const HELLO_LEN: usize = 16;
pub const MAGIC: &[u8; 4] = b"DEMI";
pub const MODE_PING: u8 = b'P';
pub const MODE_STREAM: u8 = b'S';
pub const UDP_HEADER: usize = 16;
pub const KIND_PING: u8 = b'P';
pub const KIND_DATA: u8 = b'D';
pub const KIND_END: u8 = b'E';
pub const KIND_REPORT: u8 = b'R';
pub const REPORT_LEN: usize = 40;

/// Who this process is on a memif link.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

pub fn hello(mode: u8, size: usize) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4] = mode;
    h[8..12].copy_from_slice(&(size as u32).to_le_bytes());
    h
}

/// (mode, message size) of a valid hello.
pub fn parse_hello(h: &[u8]) -> Option<(u8, usize)> {
    if h.len() < HELLO_LEN || &h[..4] != MAGIC || !matches!(h[4], MODE_PING | MODE_STREAM) {
        return None;
    }
    let size = u32::from_le_bytes(h[8..12].try_into().ok()?) as usize;
    (size > 0).then_some((h[4], size))
}

/// Writes a datagram header (kind and number) at the start of `b`.
pub fn put_header(b: &mut [u8], kind: u8, n: u64) {
    b[0] = kind;
    b[1..8].fill(0);
    b[8..16].copy_from_slice(&n.to_le_bytes());
}

/// The number in a datagram header.
pub fn header_number(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(8..16)?.try_into().ok()?))
}

/// What the echo side counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Report {
    pub session: u64,
    pub messages: u64,
    pub bytes: u64,
    pub nanos: u64,
}

impl Report {
    pub fn encode(&self) -> [u8; REPORT_LEN] {
        let mut r = [0u8; REPORT_LEN];
        r[0] = KIND_REPORT;
        for (i, v) in [self.session, self.messages, self.bytes, self.nanos].into_iter().enumerate() {
            r[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        r
    }

    pub fn decode(b: &[u8]) -> Option<Report> {
        if b.len() != REPORT_LEN || b[0] != KIND_REPORT {
            return None;
        }
        let n = |i: usize| u64::from_le_bytes(b[8 + 8 * i..16 + 8 * i].try_into().unwrap());
        Some(Report { session: n(0), messages: n(1), bytes: n(2), nanos: n(3) })
    }
}

/// "ECONNREFUSED, connection refused".
pub fn errno_text(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    let mut chars = text.chars();
    let text = chars.next().map(|c| c.to_lowercase().collect::<String>() + chars.as_str()).unwrap_or_default();
    format!("{}, {}", demi::errno_name(errno), text)
}

/// A library error as one message: its own text, or (for an errno the
/// library has no name for) the name and text from here.
pub fn error_text(e: &demi::Error) -> String {
    match demi::errno_name(e.errno()) {
        "errno" => format!("{}: {}", errno_text(e.errno()), e.why()),
        _ => e.to_string(),
    }
}

/// A variable of the environment, if set and not blank.
fn env_value(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// EAL arguments for a memif link without hugepages.
pub fn memif_eal(path: &std::path::Path, role: Role, lcore: u32) -> String {
    let role = if role == Role::Server { "server" } else { "client" };
    format!(
        "-l {lcore} --no-huge --no-pci --no-shconf --no-telemetry -m 256 --log-level=lib.eal:error \
         --log-level=pmd.net.memif:error --file-prefix=demi{} \
         --vdev=net_memif0,role={role},socket={},socket-abstract=no",
        std::process::id(),
        path.display()
    )
}

/// Starts the libOS with a configuration made from the options over the
/// environment: each option stands for its `DEMI_*` variable, and a variable
/// is used where its option is absent. `local` is the address of --bind
/// (catnip's default own address).
pub fn start(c: &Common, role: Role, local: Option<Ipv4Addr>) -> Res<LibOs> {
    let name = c.libos.name();
    if !demi::config::built_libos_names().contains(&name) {
        return Err(Fail::new(format!(
            "{name} is not built into this demi (built: {}); rebuild with its cargo feature",
            demi::config::built_libos_names().join(", ")
        )));
    }
    if c.libos == Libos::Catnip && c.proto == Proto::Tcp {
        return Err(Fail::new("catnip has datagram sockets only: use --proto udp"));
    }
    let eal = match &c.memif {
        Some(path) => Some(memif_eal(path, role, c.lcore.unwrap_or(if role == Role::Server { 0 } else { 1 }))),
        None => c.tune.eal.clone(),
    };
    // --bind gives catnip its address unless the environment or
    // --local-ipv4 does; 0.0.0.0 is no address.
    let own = c.tune.local_ipv4.or_else(|| if env_value("DEMI_LOCAL_IPV4").is_some() { None } else { local });
    let mut options = vec![
        ("LIBOS", Some(name.to_string())),
        ("DEMI_DPDK_EAL", eal),
        ("DEMI_LOCAL_IPV4", own.filter(|a| !a.is_unspecified()).map(|a| a.to_string())),
    ];
    options.extend(c.tune.numbers());
    // An option given (even blank) wins over the environment.
    let get = |var: &str| match options.iter().find(|(v, _)| *v == var) {
        Some((_, Some(value))) => Some(value.clone()).filter(|v| !v.trim().is_empty()),
        _ => env_value(var),
    };
    if c.libos == Libos::Catnip {
        if get("DEMI_LOCAL_IPV4").is_none() {
            return Err(Fail::new(
                "catnip needs its own IPv4 address: give --bind ADDR (or --local-ipv4 ADDR, DEMI_LOCAL_IPV4)",
            ));
        }
        if get("DEMI_DPDK_EAL").is_none() {
            return Err(Fail::new(
                "catnip needs a DPDK port: --memif PATH for a link to another demi process, \
                 or --eal ARGS / DEMI_DPDK_EAL (see dpdk/README.md)",
            ));
        }
    }
    Config::from_lookup(get)
        .and_then(|cfg| LibOs::with_config(&cfg))
        .map_err(|e| Fail::new(format!("cannot start {name}: {}", error_text(&e))))
}

/// Waits for `qt`; `Ok(None)` when `timeout` passed (the operation stays
/// pending); a failed operation is an error naming `what`.
pub fn wait_opt(os: &LibOs, qt: QToken, timeout: Duration, what: &str) -> Res<Option<QValue>> {
    match os.wait(qt, Some(timeout)) {
        Ok(r) => match r.value {
            QValue::Failed(e) => Err(Fail::new(format!("{what}: {}", errno_text(e)))),
            v => Ok(Some(v)),
        },
        Err(e) if e.errno() == libc::ETIMEDOUT => Ok(None),
        Err(e) => Err(Fail::new(format!("{what}: {}", error_text(&e)))),
    }
}

/// Waits for `qt`; a timeout is an error too.
pub fn wait(os: &LibOs, qt: QToken, timeout: Duration, what: &str) -> Res<QValue> {
    wait_opt(os, qt, timeout, what)?
        .ok_or_else(|| Fail::new(format!("{what}: nothing happened within {:.1} s", timeout.as_secs_f64())))
}

pub fn call<T>(r: demi::Result<T>, what: &str) -> Res<T> {
    r.map_err(|e| Fail::new(format!("{what}: {}", error_text(&e))))
}

/// Asks for TCP_NODELAY (catnap; other libOSes always send at once).
pub fn nodelay(os: &LibOs, qd: QDesc) {
    let _ = os.setsockopt(qd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &1i32.to_ne_bytes());
}

/// The client side of `demi ping` and `demi stream`: checks the size and
/// the thread count, starts the libOS, then runs `each` on `--threads`
/// threads (thread K with its socket connected to port + K, see
/// [`nth`]); returns their results in thread order.
pub fn clients<T: Send>(
    c: &Common,
    bind: Option<SocketAddrV4>,
    to: SocketAddrV4,
    size: usize,
    mode: u8,
    timeout: f64,
    each: impl Fn(&LibOs, QDesc, u16) -> Res<T> + Sync,
) -> Res<Vec<T>> {
    if c.proto == Proto::Udp && size < UDP_HEADER {
        return Err(Fail::new(format!(
            "--size {size} is too small for udp: every datagram carries a {UDP_HEADER}-byte header"
        )));
    }
    check_threads(c)?;
    let os = start(c, Role::Client, bind.map(|b| *b.ip()))?;
    let timeout = Duration::from_secs_f64(timeout);
    let one = |k: u16| -> Res<T> {
        let qd = open_client(&os, c, bind.map(|b| nth(b, k)).transpose()?, nth(to, k)?, size, mode, timeout)?;
        each(&os, qd, k)
    };
    if c.threads == 1 {
        return one(0).map(|r| vec![r]);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..c.threads).map(|k| s.spawn(move || one(k))).collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(k, h)| match h.join() {
                Ok(r) => r.map_err(|e| Fail::new(format!("thread {k}: {}", e.0))),
                Err(_) => Err(Fail::new(format!("thread {k} failed"))),
            })
            .collect()
    })
}

/// `--threads` above 1 needs a libOS with an engine per thread.
pub fn check_threads(c: &Common) -> Res<()> {
    if c.threads > 1 && c.libos == Libos::Catnip {
        return Err(Fail::new("--threads: catnip has one engine per process (DPDK is started once); use 1"));
    }
    Ok(())
}

/// The address of thread `k`: port + k (port 0 stays 0: the libOS picks).
pub fn nth(a: SocketAddrV4, k: u16) -> Res<SocketAddrV4> {
    if a.port() == 0 {
        return Ok(a);
    }
    match a.port().checked_add(k) {
        Some(p) => Ok(SocketAddrV4::new(*a.ip(), p)),
        None => Err(Fail::new(format!("--threads: port {} + {k} is past 65535", a.port()))),
    }
}

/// A client socket: bound if asked, connected (tcp, with the hello sent) or
/// checked against the largest datagram (udp).
pub fn open_client(
    os: &LibOs,
    c: &Common,
    bind: Option<SocketAddrV4>,
    to: SocketAddrV4,
    size: usize,
    mode: u8,
    timeout: Duration,
) -> Res<QDesc> {
    let ty = if c.proto == Proto::Tcp { SockType::Stream } else { SockType::Datagram };
    let qd = call(os.socket(ty), "cannot make a socket")?;
    if let Some(b) = bind {
        call(os.bind(qd, b), &format!("cannot bind {b}"))?;
    }
    let over = format!("{} {}", c.libos.name(), c.proto.name());
    if c.proto == Proto::Udp {
        if size < UDP_HEADER {
            return Err(Fail::new(format!(
                "--size {size} is too small for udp: every datagram carries a {UDP_HEADER}-byte header"
            )));
        }
        if let Ok(max) = os.max_datagram(qd) {
            if size > max {
                return Err(Fail::new(format!(
                    "--size {size} is larger than the largest datagram {over} can send here ({max} B)"
                )));
            }
        }
        return Ok(qd);
    }
    let qt = call(os.connect(qd, to), &format!("cannot connect to {to}"))?;
    match os.wait(qt, Some(timeout)) {
        Ok(r) => {
            if let QValue::Failed(e) = r.value {
                return Err(Fail::new(format!(
                    "cannot connect to {to} over {over}: {} (is `demi echo --libos {} --bind {to}` running?)",
                    errno_text(e),
                    c.libos.name()
                )));
            }
        }
        Err(e) if e.errno() == libc::ETIMEDOUT => {
            return Err(Fail::new(format!(
                "cannot connect to {to} over {over}: no answer within {:.1} s",
                timeout.as_secs_f64()
            )))
        }
        Err(e) => return Err(Fail::new(format!("cannot connect to {to}: {}", error_text(&e)))),
    }
    nodelay(os, qd);
    let h = call(os.buffer_from(&hello(mode, size)), "cannot allocate a buffer")?;
    let qt = call(os.push(qd, &h), "cannot send the hello")?;
    wait(os, qt, timeout, "sending the hello")?;
    Ok(qd)
}

/// Fills a message: `fill` repeated, with room for a header.
pub fn message(os: &LibOs, size: usize, seed: u8) -> Res<demi::Buffer> {
    let mut b = call(os.sgaalloc(size), &format!("cannot allocate {size} bytes"))?;
    let s = b.as_mut_slice().expect("a fresh buffer is not shared");
    for (i, x) in s.iter_mut().enumerate() {
        *x = seed.wrapping_add((i % 251) as u8);
    }
    Ok(b)
}
