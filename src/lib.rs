//! demi: an RDMA-first library OS with Demikernel's qtoken API.
//!
//! Applications create sockets (queue descriptors), start operations that
//! return queue tokens at once, and wait on the tokens. One engine sits over
//! interchangeable libOSes chosen at run time (`LIBOS`):
//!
//! - **catnap**: Linux sockets and epoll, runs anywhere (always built);
//! - **catmint**: RDMA through rdma_cm and verbs (feature `catmint`);
//! - **catnip**: DPDK with its own ARP/IPv4/UDP (feature `catnip`).
//!
//! Layers: [`backend`] is the seam a libOS implements; [`engine`] owns
//! descriptors, tokens and the socket state rules; [`LibOs`] makes an engine
//! safe to share between threads and implements waiting; `ffi` is the C ABI
//! of `include/demi/*.h` on top of one process-wide `LibOs`. [`Config`] is
//! the configuration, read once (from the environment by `demi_init`, or
//! built in code) and passed down: each backend gets its own section.
//! [`loopback`] is a fourth, in-memory backend for tests: datagram and
//! stream sockets that reach each other inside one process, with no kernel
//! networking and no device, and a handle that can stall it so tokens stay
//! pending (`LibOs::with_engine(Engine::new(Box::new(Loopback::new())), spin)`).
//!
//! ```no_run
//! use demi::{LibOs, SockType, QValue};
//! let os = LibOs::new("catnap")?;
//! let qd = os.socket(SockType::Datagram)?;
//! os.bind(qd, "127.0.0.1:0".parse().unwrap())?;
//! let msg = os.buffer_from(b"hello")?;
//! let qt = os.pushto(qd, &msg, "127.0.0.1:7".parse().unwrap())?;
//! let done = os.wait(qt, None)?;
//! assert!(matches!(done.value, QValue::Push));
//! # Ok::<(), demi::Error>(())
//! ```
#![deny(unsafe_code)]

pub mod backend;
pub mod buffer;
#[cfg(feature = "catmint")]
mod catmint;
mod catnap;
#[cfg(feature = "catnip")]
mod catnip;
pub mod config;
pub mod engine;
mod error;
pub mod ffi;
mod libos;
pub mod loopback;
mod pool;
mod sys;

pub use backend::SockType;
pub use buffer::Buffer;
pub use config::Config;
pub use engine::{QDesc, QResult, QToken, QValue};
pub use error::{errno_name, Error, Result};
pub use libos::LibOs;

/// Starts `env_logger` once (level from `RUST_LOG`, default warnings).
pub fn init_logging() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).try_init();
}
