//! `demi`: the command-line tool of the demi library OS.
//!
//! - `demi devices`: the RDMA devices this machine has (ports, GIDs, the
//!   netdev each rides on) and the DPDK ports `DEMI_DPDK_EAL` gives;
//! - `demi echo`: an echo server over any libOS, TCP or UDP, until SIGINT or
//!   SIGTERM (a clean exit);
//! - `demi ping`: round-trip latency against `demi echo` (min, p50, p90, p99,
//!   p99.9, max; `--json` for scripts);
//! - `demi stream`: one-way throughput against `demi echo`, which counts
//!   what arrives;
//! - `demi run -- CMD ARGS...`: an unmodified program over a libOS (demi/run.rs).
//!
//! Errors end the program with one line on stderr and exit status 1 (2 for a
//! usage error, as clap reports it).

mod devices;
mod echo;
mod echo_udp;
mod net;
mod ping;
mod run;
mod stats;
mod stream;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;

const EXAMPLES: &str = "\
Examples (two terminals; any libOS on either end):
  demi echo --bind 127.0.0.1:7000
  demi ping --to 127.0.0.1:7000 --size 64 --count 10000

  demi echo --proto udp --bind 127.0.0.1:7001
  demi stream --proto udp --to 127.0.0.1:7001 --size 1k --time 5 --json

RDMA (catmint) on soft-RoCE, where this kernel has no RDMA:
  rxe-setup/rxe-run -- sh -c 'demi echo --libos catmint --bind 10.77.0.1:7000 & sleep 2;
      demi ping --libos catmint --to 10.77.0.1:7000 --bind 10.77.0.2'

DPDK (catnip) over a memif link between two processes (root):
  demi echo --libos catnip --proto udp --memif /tmp/m.sock --bind 10.77.9.1:7000
  demi ping --libos catnip --proto udp --memif /tmp/m.sock --bind 10.77.9.2 --to 10.77.9.1:7000

`demi devices` lists the RDMA devices and DPDK ports there are.";

#[derive(Parser)]
#[command(
    name = "demi",
    version,
    about = "Latency and throughput tools over demi's libOSes (catnap: Linux sockets, catmint: RDMA, catnip: DPDK)",
    after_help = EXAMPLES,
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List RDMA devices (port state, link layer, GIDs, netdev) and the DPDK ports of DEMI_DPDK_EAL
    Devices(DevicesArgs),
    /// Run an echo server: sends back what `demi ping` sends, counts what `demi stream` sends;
    /// SIGINT or SIGTERM stops it cleanly (exit 0)
    Echo(EchoArgs),
    /// Measure round-trip latency against `demi echo` (one message in flight)
    Ping(PingArgs),
    /// Measure one-way throughput to `demi echo` (it counts what arrives)
    Stream(StreamArgs),
    /// Run an unmodified program with its IPv4 TCP/UDP sockets served by a libOS (LD_PRELOAD of
    /// libdemi_preload.so): demi run --libos catmint -- redis-server
    Run(run::RunArgs),
}

/// Which libOS carries the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Libos {
    /// Linux sockets (TCP and UDP); runs anywhere
    Catnap,
    /// RDMA: tcp = reliable connection (RC), udp = unreliable datagram (UD)
    Catmint,
    /// DPDK with demi's own ARP/IPv4/UDP (udp only)
    Catnip,
}

impl Libos {
    pub fn name(self) -> &'static str {
        match self {
            Libos::Catnap => "catnap",
            Libos::Catmint => "catmint",
            Libos::Catnip => "catnip",
        }
    }
}

/// Stream (tcp) or datagram (udp) sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    /// Stream sockets (TCP on catnap, RC queue pairs on catmint)
    Tcp,
    /// Datagram sockets (UDP on catnap and catnip, UD queue pairs on catmint)
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// The libOS, the socket kind and the libOS tunables, shared by echo, ping
/// and stream. Each tunable stands for its `DEMI_*` variable in the libOS's
/// configuration (`demi::Config`); a variable in the environment is used
/// when the option is absent.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// libOS to use
    #[arg(long, value_enum, env = "LIBOS", default_value_t = Libos::Catnap)]
    pub libos: Libos,
    /// Socket kind
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    pub proto: Proto,
    #[command(flatten)]
    pub tune: Tunables,
    /// Shortcut for a memif link to another process: EAL arguments without hugepages and a net_memif
    /// vdev on this socket file (echo is the memif server, ping and stream the client)
    #[arg(long, value_name = "PATH", conflicts_with = "eal", help_heading = "Tuning (catnip, DPDK)")]
    pub memif: Option<PathBuf>,
    /// CPU core for DPDK with --memif (default: 0 for echo, 1 otherwise)
    #[arg(long, value_name = "N", requires = "memif", help_heading = "Tuning (catnip, DPDK)")]
    pub lcore: Option<u32>,
    /// Threads, each on its own engine with its own socket: thread K uses port PORT+K (echo listens
    /// there; ping and stream connect there, from --bind's port + K if it has one); figures are totals
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
}

/// The libOS tunables of every command that starts a libOS (echo, ping,
/// stream, run). Each stands for its `DEMI_*` variable; a variable in the
/// environment is used when the option is absent.
#[derive(Args, Clone, Debug)]
pub struct Tunables {
    /// µs a waiter polls before it sleeps (DEMI_SPIN_US; 0 sleeps at once)
    #[arg(long, value_name = "US", help_heading = "Tuning (every libOS)")]
    pub spin_us: Option<u64>,
    /// Longest pause between polls of a device that cannot be slept on: catnip (DEMI_POLL_SLEEP_US; 0 polls flat out)
    #[arg(long, value_name = "US", help_heading = "Tuning (every libOS)")]
    pub poll_sleep_us: Option<u64>,
    /// Most credits (receives) one RC connection may hold; a UD socket's receive ring (DEMI_RDMA_RECV_DEPTH)
    #[arg(long, value_name = "N", help_heading = "Tuning (catmint, RDMA)")]
    pub recv_depth: Option<u64>,
    /// Receives a device's shared receive queue holds beyond the connections' minimums (DEMI_RDMA_SRQ_DEPTH)
    #[arg(long, value_name = "N", help_heading = "Tuning (catmint, RDMA)")]
    pub srq_depth: Option<u64>,
    /// Sends up to this many bytes go inline (DEMI_RDMA_INLINE)
    #[arg(long, value_name = "BYTES", help_heading = "Tuning (catmint, RDMA)")]
    pub inline: Option<u64>,
    /// Size of each receive buffer; longer messages are sent in segments (DEMI_RDMA_BUF_SIZE)
    #[arg(long, value_name = "BYTES", help_heading = "Tuning (catmint, RDMA)")]
    pub buf_size: Option<u64>,
    /// Send queue depth per connection (DEMI_RDMA_SQ_DEPTH)
    #[arg(long, value_name = "N", help_heading = "Tuning (catmint, RDMA)")]
    pub sq_depth: Option<u64>,
    /// Bound on address/route resolution and connection set-up (DEMI_RDMA_TIMEOUT_MS)
    #[arg(long, value_name = "MS", help_heading = "Tuning (catmint, RDMA)")]
    pub rdma_timeout_ms: Option<u64>,
    /// EAL arguments, whitespace-separated (DEMI_DPDK_EAL)
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true, help_heading = "Tuning (catnip, DPDK)")]
    pub eal: Option<String>,
    /// Our IPv4 address (DEMI_LOCAL_IPV4; echo, ping and stream default to the address of --bind)
    #[arg(long, value_name = "ADDR", help_heading = "Tuning (catnip, DPDK)")]
    pub local_ipv4: Option<Ipv4Addr>,
    /// IP MTU, 576..=9000 (DEMI_MTU)
    #[arg(long, value_name = "BYTES", help_heading = "Tuning (catnip, DPDK)")]
    pub mtu: Option<u64>,
}

impl Tunables {
    /// The numeric tunables as (variable, value given) pairs.
    pub fn numbers(&self) -> [(&'static str, Option<String>); 9] {
        let text = |v: Option<u64>| v.map(|n| n.to_string());
        [
            ("DEMI_SPIN_US", text(self.spin_us)),
            ("DEMI_POLL_SLEEP_US", text(self.poll_sleep_us)),
            ("DEMI_RDMA_RECV_DEPTH", text(self.recv_depth)),
            ("DEMI_RDMA_SRQ_DEPTH", text(self.srq_depth)),
            ("DEMI_RDMA_INLINE", text(self.inline)),
            ("DEMI_RDMA_BUF_SIZE", text(self.buf_size)),
            ("DEMI_RDMA_SQ_DEPTH", text(self.sq_depth)),
            ("DEMI_RDMA_TIMEOUT_MS", text(self.rdma_timeout_ms)),
            ("DEMI_MTU", text(self.mtu)),
        ]
    }
}

#[derive(Args)]
struct DevicesArgs {
    /// EAL arguments to probe DPDK ports with (default: DEMI_DPDK_EAL)
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    eal: Option<String>,
}

#[derive(Args)]
pub struct EchoArgs {
    #[command(flatten)]
    pub common: Common,
    /// Address to listen on
    #[arg(long, value_name = "ADDR:PORT")]
    pub bind: SocketAddrV4,
    /// Print nothing per connection (only the "listening" line, and trouble such as running out of
    /// descriptors, at most once a second)
    #[arg(long)]
    pub quiet: bool,
    /// Stop reading a connection while this much of its echo is unsent, until it drains
    /// (back-pressure on a client that sends without reading); udp: for the socket
    #[arg(long, value_name = "BYTES", default_value = "8m", value_parser = parse_bound)]
    pub max_unsent: usize,
}

#[derive(Args)]
pub struct PingArgs {
    #[command(flatten)]
    pub common: Common,
    /// Address of the `demi echo` server
    #[arg(long, value_name = "ADDR:PORT")]
    pub to: SocketAddrV4,
    /// Local address to send from (ADDR or ADDR:PORT); on catmint it picks the RDMA device
    #[arg(long, value_name = "ADDR", value_parser = parse_bind)]
    pub bind: Option<SocketAddrV4>,
    /// Message size: bytes, or with a suffix: 4k, 64KiB, 1m
    #[arg(long, value_name = "BYTES", default_value = "64", value_parser = parse_size)]
    pub size: usize,
    /// Number of timed round trips [default: 1000 when --time is not given]
    #[arg(long, value_name = "N", conflicts_with = "time", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Ping for this many seconds instead of a count
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub time: Option<f64>,
    /// Untimed round trips first
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub warmup: u64,
    /// Give up when a connection or a reply takes longer than this
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub timeout: f64,
    /// Print one JSON object (with a latency CDF) instead of the table
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct StreamArgs {
    #[command(flatten)]
    pub common: Common,
    /// Address of the `demi echo` server
    #[arg(long, value_name = "ADDR:PORT")]
    pub to: SocketAddrV4,
    /// Local address to send from (ADDR or ADDR:PORT); on catmint it picks the RDMA device
    #[arg(long, value_name = "ADDR", value_parser = parse_bind)]
    pub bind: Option<SocketAddrV4>,
    /// Message size: bytes, or with a suffix: 4k, 64KiB, 1m
    #[arg(long, value_name = "BYTES", default_value = "64", value_parser = parse_size)]
    pub size: usize,
    /// How long to send
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub time: f64,
    /// Pushes in flight at once
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub window: u32,
    /// Give up when a connection or the final report takes longer than this
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub timeout: f64,
    /// Print one JSON object instead of the summary
    #[arg(long)]
    pub json: bool,
}

/// Largest message the tools send: 64 MiB.
pub const MAX_SIZE: usize = 64 << 20;

/// "64", "4k", "4K", "4KiB", "1m", "1MiB" -> bytes.
fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 64, 4k, 1MiB)"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use k or m)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// A message size: 1..=64 MiB.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let bytes = parse_bytes(s)?;
    if bytes == 0 {
        return Err("a message needs at least 1 byte".into());
    }
    if bytes > MAX_SIZE {
        return Err(format!("{s:?} is larger than the 64 MiB these tools send"));
    }
    Ok(bytes)
}

/// A bound on memory per connection: 1 byte..=1 GiB.
fn parse_bound(s: &str) -> Result<usize, String> {
    match parse_bytes(s)? {
        0 => Err("the bound must be at least 1 byte".into()),
        b if b > 1 << 30 => Err(format!("{s:?} is more than 1 GiB")),
        b => Ok(b),
    }
}

/// Seconds, > 0, at most a day.
fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds between 0 and 86400")),
    }
}

/// "ADDR" or "ADDR:PORT".
fn parse_bind(s: &str) -> Result<SocketAddrV4, String> {
    if let Ok(a) = s.parse::<SocketAddrV4>() {
        return Ok(a);
    }
    s.parse::<Ipv4Addr>()
        .map(|ip| SocketAddrV4::new(ip, 0))
        .map_err(|_| format!("{s:?} is not an IPv4 address (ADDR or ADDR:PORT)"))
}

/// A failure, printed as one line.
#[derive(Debug)]
pub struct Fail(pub String);

impl Fail {
    pub fn new(msg: impl Into<String>) -> Fail {
        Fail(msg.into())
    }
}

pub type Res<T> = std::result::Result<T, Fail>;

fn main() -> ExitCode {
    // A bug must not dump a backtrace on a user: one line, status 101.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("demi: internal error{at}: {msg}");
    }));
    demi::init_logging();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Devices(a) => devices::run(a.eal),
        Cmd::Echo(a) => echo::run(&a),
        Cmd::Ping(a) => ping::run(&a),
        Cmd::Stream(a) => stream::run(&a),
        Cmd::Run(a) => run::run(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg)) => {
            eprintln!("demi: error: {msg}");
            ExitCode::FAILURE
        }
    }
}
