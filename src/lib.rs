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
//! Threads: each thread that creates sockets gets an engine of its own
//! (see [`LibOs`]); a descriptor names its engine, so a call goes straight
//! to it.
//!
//! The path of a push: [`LibOs::push`] takes its engine's lock, checks the
//! descriptor's state, issues a token and hands the buffer to the backend,
//! which posts it (catmint: a send work request on the socket's queue pair;
//! catnap: a `send` on the kernel socket) and reports the outcome into the
//! engine's completion table, at once or from a later poll. A pop is the
//! same in reverse: the backend keeps a receive posted and, when a message
//! arrives, lends its memory to the [`Buffer`] the pop returns (catmint's
//! receive slot goes back to the device when the last `Buffer` drops).
//! [`LibOs::wait`] polls the backend until the token's outcome is there,
//! spinning for `DEMI_SPIN_US` and then sleeping on the backend's
//! descriptor. docs/ARCHITECTURE.md draws the layers.
//!
//! Quick start, over catnap (kernel UDP on the loopback interface):
//!
//! ```
//! use demi::{LibOs, QValue, SockType};
//! let os = LibOs::new("catnap")?;
//! let (a, b) = (os.socket(SockType::Datagram)?, os.socket(SockType::Datagram)?);
//! os.bind(a, "127.0.0.1:0".parse().unwrap())?;
//! os.bind(b, "127.0.0.1:0".parse().unwrap())?;
//! let to = os.local_addr(b)?.expect("b is bound");
//! let sent = os.pushto(a, &os.buffer_from(b"hello")?, to)?;
//! let popped = os.pop(b)?;
//! assert!(matches!(os.wait(sent, None)?.value, QValue::Push));
//! match os.wait(popped, None)?.value {
//!     QValue::Pop { buf, from } => {
//!         assert_eq!(buf.as_slice(), b"hello");
//!         assert_eq!(from, os.local_addr(a)?);
//!     }
//!     other => panic!("expected a pop, got {other:?}"),
//! }
//! # Ok::<(), demi::Error>(())
//! ```
#![deny(unsafe_code)]
#![deny(missing_docs)]

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
pub use libos::{Armed, LibOs};

/// Starts `env_logger` once (level from `RUST_LOG`, default warnings).
pub fn init_logging() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).try_init();
}
