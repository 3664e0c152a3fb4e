//! `demi run [options] -- CMD ARGS...`: runs an unmodified program with
//! `libdemi_preload.so` preloaded, so its IPv4 TCP and UDP sockets are served
//! by the chosen libOS. The options become the environment the library
//! reads (LIBOS, DEMI_*); then `demi` replaces itself with CMD (exec), so
//! CMD's exit status and signals are the caller's to see.

use crate::{Fail, Libos, Res};
use clap::Args;
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// The library's file name.
pub const LIB: &str = "libdemi_preload.so";

#[derive(Args, Debug)]
pub struct RunArgs {
    /// libOS serving the program's AF_INET sockets
    #[arg(long, value_enum, env = "LIBOS", default_value_t = Libos::Catnap)]
    pub libos: Libos,
    /// The preload library (default: next to this demi, then ../lib, then DEMI_PRELOAD_LIB)
    #[arg(long, value_name = "PATH")]
    pub preload: Option<PathBuf>,
    /// Log filter for the library, on stderr (DEMI_PRELOAD_LOG), e.g. info or debug
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    /// Append one line of counters (sockets, bytes carried) to FILE at exit (DEMI_PRELOAD_STATS)
    #[arg(long, value_name = "FILE")]
    pub stats: Option<PathBuf>,
    /// Bind the program's unbound sockets to this address before they connect or send
    /// (DEMI_PRELOAD_SOURCE; on catmint it picks the RDMA device a client uses)
    #[arg(long, value_name = "ADDR")]
    pub source: Option<Ipv4Addr>,
    /// Bound on a socket's unsent bytes: writable below it (DEMI_PRELOAD_SNDBUF)
    #[arg(long, value_name = "BYTES")]
    pub sndbuf: Option<u64>,
    /// Bound on a socket's received, unread bytes (DEMI_PRELOAD_RCVBUF)
    #[arg(long, value_name = "BYTES")]
    pub rcvbuf: Option<u64>,
    /// µs a waiter polls before it sleeps (DEMI_SPIN_US; 0 sleeps at once)
    #[arg(long, value_name = "US", help_heading = "Tuning (every libOS)")]
    pub spin_us: Option<u64>,
    /// Receives posted per connection = credits (DEMI_RDMA_RECV_DEPTH)
    #[arg(long, value_name = "N", help_heading = "Tuning (catmint, RDMA)")]
    pub recv_depth: Option<u64>,
    /// Sends up to this many bytes go inline (DEMI_RDMA_INLINE)
    #[arg(long, value_name = "BYTES", help_heading = "Tuning (catmint, RDMA)")]
    pub inline: Option<u64>,
    /// Size of each receive buffer (DEMI_RDMA_BUF_SIZE)
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
    /// Our IPv4 address (DEMI_LOCAL_IPV4)
    #[arg(long, value_name = "ADDR", help_heading = "Tuning (catnip, DPDK)")]
    pub local_ipv4: Option<Ipv4Addr>,
    /// IP MTU, 576..=9000 (DEMI_MTU)
    #[arg(long, value_name = "BYTES", help_heading = "Tuning (catnip, DPDK)")]
    pub mtu: Option<u64>,
    /// The program and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub cmd: Vec<OsString>,
}

/// Where the library is: --preload, DEMI_PRELOAD_LIB, next to this
/// executable (the build tree: target/release), or ../lib from it (an
/// installed tree: PREFIX/bin/demi and PREFIX/lib).
fn find_lib(given: Option<&Path>) -> Res<PathBuf> {
    let from_env = std::env::var_os("DEMI_PRELOAD_LIB").filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = given.map(Path::to_path_buf).or(from_env) {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Fail::new(format!("the preload library {} does not exist", p.display())))
        };
    }
    let exe = std::env::current_exe().map_err(|e| Fail::new(format!("cannot find this executable: {e}")))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let tried = [dir.join(LIB), dir.join("../lib").join(LIB)];
    for p in &tried {
        if p.is_file() {
            // LD_PRELOAD wants a path the dynamic loader finds: absolute.
            return p.canonicalize().map_err(|e| Fail::new(format!("{}: {e}", p.display())));
        }
    }
    Err(Fail::new(format!(
        "{LIB} not found (looked at {} and {}): build it with `make build` or give --preload PATH",
        tried[0].display(),
        tried[1].display()
    )))
}

pub fn run(a: &RunArgs) -> Res<()> {
    let name = a.libos.name();
    if !demi::config::built_libos_names().contains(&name) {
        return Err(Fail::new(format!(
            "{name} is not built into this demi (built: {})",
            demi::config::built_libos_names().join(", ")
        )));
    }
    let lib = find_lib(a.preload.as_deref())?;
    let mut preload = OsString::from(lib.as_os_str());
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    let (prog, args) = a.cmd.split_first().ok_or_else(|| Fail::new("no command to run"))?;
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args).env("LD_PRELOAD", preload).env("LIBOS", name);
    let vars: [(&str, Option<String>); 14] = [
        ("DEMI_PRELOAD_SOURCE", a.source.map(|v| v.to_string())),
        ("DEMI_PRELOAD_LOG", a.log.clone()),
        ("DEMI_PRELOAD_STATS", a.stats.as_ref().map(|p| p.display().to_string())),
        ("DEMI_PRELOAD_SNDBUF", a.sndbuf.map(|v| v.to_string())),
        ("DEMI_PRELOAD_RCVBUF", a.rcvbuf.map(|v| v.to_string())),
        ("DEMI_SPIN_US", a.spin_us.map(|v| v.to_string())),
        ("DEMI_RDMA_RECV_DEPTH", a.recv_depth.map(|v| v.to_string())),
        ("DEMI_RDMA_INLINE", a.inline.map(|v| v.to_string())),
        ("DEMI_RDMA_BUF_SIZE", a.buf_size.map(|v| v.to_string())),
        ("DEMI_RDMA_SQ_DEPTH", a.sq_depth.map(|v| v.to_string())),
        ("DEMI_RDMA_TIMEOUT_MS", a.rdma_timeout_ms.map(|v| v.to_string())),
        ("DEMI_DPDK_EAL", a.eal.clone()),
        ("DEMI_LOCAL_IPV4", a.local_ipv4.map(|v| v.to_string())),
        ("DEMI_MTU", a.mtu.map(|v| v.to_string())),
    ];
    for (var, val) in vars {
        if let Some(v) = val {
            cmd.env(var, v);
        }
    }
    // Only returns if the exec failed.
    let e = cmd.exec();
    Err(Fail::new(format!("cannot run {}: {e}", Path::new(prog).display())))
}
