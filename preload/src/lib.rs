//! `libdemi_preload.so`: runs unmodified programs' IPv4 TCP and UDP sockets
//! over demi's libOSes. Load it with `LD_PRELOAD` (or `demi run`); the libOS
//! is named by `LIBOS` (catnap, catmint, catnip) and started on the first
//! `socket(AF_INET, SOCK_STREAM or SOCK_DGRAM)` call.
//!
//! How it works (man/demi-preload.md has the user's view):
//!
//! - Each demi socket has a real descriptor number the kernel reserved for
//!   it (an unbound AF_UNIX socket, close-on-exec), so numbers never collide
//!   with the program's files; a one-byte-per-number table says which
//!   numbers are demi's, and every other call goes straight to the C library
//!   (`real.rs`, found with `dlsym(RTLD_NEXT)`).
//! - Readiness comes from completions: each connected socket keeps a pop
//!   posted ahead (readable = data arrived), each listener an accept; unsent
//!   bytes are bounded per socket (writable = below the bound).
//! - poll/select/epoll_wait check the demi sockets, then sleep in the
//!   kernel on the program's descriptors plus the libOS's wake-up descriptor
//!   (`wait.rs`).
//! - Every exported function runs inside a panic boundary and, while it
//!   runs, marks the thread so that the libOS's own socket and epoll calls
//!   reach the C library (`guard.rs`).

mod addr;
mod ex_ctl;
mod ex_epoll;
mod ex_io;
mod ex_mmsg;
mod ex_opt;
mod ex_poll;
mod ex_sock;
mod fdtab;
mod guard;
mod real;
mod sock;
mod state;
mod stats;
mod wait;

/// Logging to stderr, filtered by `DEMI_PRELOAD_LOG` or else `RUST_LOG`
/// (default: warnings). Never stdout: that is the program's.
pub(crate) fn init_logging() {
    let filter =
        std::env::var("DEMI_PRELOAD_LOG").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| "warn".to_string());
    let _ = env_logger::Builder::new().parse_filters(&filter).target(env_logger::Target::Stderr).try_init();
}
