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
    #[command(flatten)]
    pub tune: crate::Tunables,
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
    let mut vars = vec![
        ("DEMI_PRELOAD_SOURCE", a.source.map(|v| v.to_string())),
        ("DEMI_PRELOAD_LOG", a.log.clone()),
        ("DEMI_PRELOAD_STATS", a.stats.as_ref().map(|p| p.display().to_string())),
        ("DEMI_PRELOAD_SNDBUF", a.sndbuf.map(|v| v.to_string())),
        ("DEMI_PRELOAD_RCVBUF", a.rcvbuf.map(|v| v.to_string())),
        ("DEMI_DPDK_EAL", a.tune.eal.clone()),
        ("DEMI_LOCAL_IPV4", a.tune.local_ipv4.map(|v| v.to_string())),
    ];
    vars.extend(a.tune.numbers());
    for (var, val) in vars {
        if let Some(v) = val {
            cmd.env(var, v);
        }
    }
    // Only returns if the exec failed.
    let e = cmd.exec();
    Err(Fail::new(format!("cannot run {}: {e}", Path::new(prog).display())))
}
