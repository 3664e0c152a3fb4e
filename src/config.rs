//! Run-time configuration as a value.
//!
//! A [`Config`] names the libOS to start and carries every setting the
//! library and its backends take. It is read once, then passed down:
//! [`LibOs::with_config`](crate::LibOs::with_config) hands each backend its
//! own part (`Catmint::new(&CatmintConfig)`, `Catnip::new(&CatnipConfig)`),
//! and no backend or device crate reads the environment itself.
//!
//! Three ways to get one:
//!
//! - from the environment, as `demi_init` does: [`Config::from_env`] (every
//!   variable is listed in the README);
//! - in code: [`Config::new`] or [`Config::default`], then set the fields;
//! - from anything that answers by variable name, such as a program's own
//!   flags over the environment: [`Config::from_lookup`] (the `demi` command
//!   does this, so its options and the variables are checked alike).
//!
//! ```
//! use demi::config::Config;
//! use std::time::Duration;
//!
//! let mut cfg = Config::new("catnap");
//! cfg.spin = Duration::ZERO; // sleep at once instead of polling first
//! let os = demi::LibOs::with_config(&cfg)?;
//! assert_eq!(os.name(), "catnap");
//! # Ok::<(), demi::Error>(())
//! ```
//!
//! This module is the only place in the library that reads environment
//! variables (`RUST_LOG`, read by `env_logger` in [`init_logging`](crate::init_logging), aside).

use crate::error::{Error, Result};
use std::time::Duration;

#[cfg(feature = "catmint")]
pub use catmint::Config as CatmintConfig;
#[cfg(feature = "catnip")]
pub use catnip::Config as CatnipConfig;

/// The libOS used when `LIBOS` is unset.
pub const DEFAULT_LIBOS: &str = "catnap";

/// How long a waiter busy-polls before it sleeps, when `DEMI_SPIN_US` is unset.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// The longest pause between polls of a device with no descriptor to sleep
/// on, by default (`DEMI_POLL_SLEEP_US`).
pub const DEFAULT_POLL_SLEEP: Duration = Duration::from_micros(1000);

/// How the threads of a process share the libOS (see [`crate::LibOs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threading {
    /// Each thread that creates sockets gets an engine of its own (its own
    /// epoll set, CQs, tables and lock), so threads that keep to their own
    /// sockets share nothing on the per-message path. Any thread may still
    /// use any descriptor or token, through its owner's lock.
    PerThread,
    /// One engine for the whole process, every call serialised on its lock
    /// (the model before per-thread engines; the LD_PRELOAD library uses it).
    Shared,
}

/// Everything a [`LibOs`](crate::LibOs) needs to start.
///
/// The backend sections exist when their cargo feature is built. Only the
/// section of the libOS named in `libos` is used.
#[derive(Clone, Debug)]
pub struct Config {
    /// Which libOS to start: "catnap", "catmint" or "catnip" (`LIBOS`).
    pub libos: String,
    /// How long a waiter busy-polls before it sleeps (`DEMI_SPIN_US`).
    pub spin: Duration,
    /// A waiter on a device that has no descriptor to sleep on (catnip: DPDK
    /// 22.11's memif and af_packet ports have no receive interrupts) that
    /// has seen nothing for this long after the spin time pauses between
    /// polls, from 10 µs doubling up to this (`DEMI_POLL_SLEEP_US`). Zero
    /// polls without pausing: lowest latency after a quiet spell, one core
    /// busy while idle.
    pub poll_sleep: Duration,
    /// Whether each thread gets an engine of its own or all share one
    /// (`DEMI_THREADING`: `per-thread`, the default, or `shared`). catnip
    /// always shares one: DPDK is started once per process.
    pub threading: Threading,
    /// catmint's tunables (`DEMI_RDMA_*`). `Catmint::new` clamps them to
    /// what the device layer accepts (receive depth 1..=4096, buffers of
    /// 64 B..=16 MiB, send queue 4..=16384, inline up to 1024 B, timeout at
    /// least 1 ms).
    #[cfg(feature = "catmint")]
    pub catmint: CatmintConfig,
    /// catnip's settings (`DEMI_DPDK_*`, `DEMI_LOCAL_*`, `DEMI_MTU`,
    /// `DEMI_ARP_*`); catnip has no default own address, so starting it
    /// with `None` here fails with EINVAL.
    #[cfg(feature = "catnip")]
    pub catnip: Option<CatnipConfig>,
}

impl Default for Config {
    /// catnap, the default spin time, and every backend's defaults.
    fn default() -> Config {
        Config {
            libos: DEFAULT_LIBOS.to_string(),
            spin: DEFAULT_SPIN,
            poll_sleep: DEFAULT_POLL_SLEEP,
            threading: Threading::PerThread,
            #[cfg(feature = "catmint")]
            catmint: CatmintConfig::default(),
            #[cfg(feature = "catnip")]
            catnip: None,
        }
    }
}

impl Config {
    /// The defaults, for the libOS `libos`.
    pub fn new(libos: &str) -> Config {
        Config { libos: libos.to_string(), ..Config::default() }
    }

    /// Reads the configuration from the process environment (`LIBOS`,
    /// `DEMI_SPIN_US`, and the variables of the libOS `LIBOS` names).
    ///
    /// # Errors
    ///
    /// EINVAL naming the variable when a value is malformed, or when a
    /// required one (catnip's `DEMI_LOCAL_IPV4`) is missing.
    pub fn from_env() -> Result<Config> {
        Config::from_lookup(env)
    }

    /// The libOS `LIBOS` names (default catnap), for messages about a
    /// configuration that did not parse.
    pub fn libos_from_env() -> String {
        env("LIBOS").filter(|s| !s.is_empty()).unwrap_or_else(|| DEFAULT_LIBOS.to_string())
    }

    /// [`Config::from_env`] for the libOS `libos`, whatever `LIBOS` says.
    pub fn from_env_for(libos: &str) -> Result<Config> {
        Config::from_lookup(|k| if k == "LIBOS" { Some(libos.to_string()) } else { env(k) })
    }

    /// Reads the configuration through `get`, which answers with the value of
    /// a variable or `None`; an empty or blank value counts as unset.
    ///
    /// Only the section of the libOS that `LIBOS` names is read, so a stray
    /// malformed `DEMI_RDMA_*` does not stop catnap; the other sections keep
    /// their defaults.
    ///
    /// # Errors
    ///
    /// As [`Config::from_env`].
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let libos = get("LIBOS").filter(|s| !s.is_empty()).unwrap_or_else(|| DEFAULT_LIBOS.to_string());
        #[allow(unused_mut)]
        let mut cfg = Config {
            spin: Duration::from_micros(number(&get, "DEMI_SPIN_US", DEFAULT_SPIN.as_micros() as u64)?),
            poll_sleep: Duration::from_micros(number(
                &get,
                "DEMI_POLL_SLEEP_US",
                DEFAULT_POLL_SLEEP.as_micros() as u64,
            )?),
            threading: match get("DEMI_THREADING").as_deref().map(str::trim) {
                None | Some("") | Some("per-thread") => Threading::PerThread,
                Some("shared") => Threading::Shared,
                Some(other) => {
                    return Err(Error::with(
                        libc::EINVAL,
                        format!("DEMI_THREADING={other:?} is neither \"per-thread\" nor \"shared\""),
                    ))
                }
            },
            ..Config::new(&libos)
        };
        #[cfg(feature = "catmint")]
        if libos == "catmint" {
            cfg.catmint = catmint_from(&get)?;
        }
        #[cfg(feature = "catnip")]
        if libos == "catnip" {
            let section = CatnipConfig::from_lookup(&get);
            cfg.catnip = Some(section.map_err(|e| Error::with(e.errno, format!("catnip: {}", e.message)))?);
        }
        Ok(cfg)
    }
}

/// One variable of the process environment.
fn env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// A non-negative integer variable; unset or blank gives `default`, anything
/// else that is not a number is an error that names the variable.
fn number(get: &impl Fn(&str) -> Option<String>, var: &str, default: u64) -> Result<u64> {
    match get(var) {
        Some(s) if !s.trim().is_empty() => s
            .trim()
            .parse()
            .map_err(|_| Error::with(libc::EINVAL, format!("{var}={s:?} is not a non-negative integer"))),
        _ => Ok(default),
    }
}

/// catmint's `DEMI_RDMA_*` tunables over its defaults. Values beyond the
/// fields' types saturate; `Catmint::new` clamps them further.
#[cfg(feature = "catmint")]
fn catmint_from(get: &impl Fn(&str) -> Option<String>) -> Result<CatmintConfig> {
    let d = CatmintConfig::default();
    let small =
        |var: &str, default: u32| number(get, var, default.into()).map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    Ok(CatmintConfig {
        credits: small("DEMI_RDMA_RECV_DEPTH", d.credits)?,
        buf_size: usize::try_from(number(get, "DEMI_RDMA_BUF_SIZE", d.buf_size as u64)?).unwrap_or(usize::MAX),
        sq_depth: small("DEMI_RDMA_SQ_DEPTH", d.sq_depth)?,
        srq_depth: small("DEMI_RDMA_SRQ_DEPTH", d.srq_depth)?,
        inline: small("DEMI_RDMA_INLINE", d.inline)?,
        timeout: Duration::from_millis(number(get, "DEMI_RDMA_TIMEOUT_MS", d.timeout.as_millis() as u64)?),
    })
}

/// Names of the libOSes compiled into this build.
pub fn built_libos_names() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut names = vec!["catnap"];
    #[cfg(feature = "catmint")]
    names.push("catmint");
    #[cfg(feature = "catnip")]
    names.push("catnip");
    names
}

/// The error for a libOS name this build does not have.
pub(crate) fn unknown_libos(name: &str) -> Error {
    Error::with(
        libc::EINVAL,
        format!("unknown or not built libOS {name:?}; this build has: {}", built_libos_names().join(", ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config> {
        let m: HashMap<&str, String> = vars.iter().map(|(k, v)| (*k, v.to_string())).collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn nothing_set_is_catnap_with_the_defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!((c.libos.as_str(), c.spin), ("catnap", DEFAULT_SPIN));
        let c = parse(&[("LIBOS", ""), ("DEMI_SPIN_US", "  ")]).unwrap();
        assert_eq!((c.libos.as_str(), c.spin), ("catnap", DEFAULT_SPIN));
    }

    #[test]
    fn the_spin_time_is_read_and_checked() {
        assert_eq!(parse(&[("DEMI_SPIN_US", " 7 ")]).unwrap().spin, Duration::from_micros(7));
        for bad in ["-1", "5us", "x"] {
            let e = parse(&[("DEMI_SPIN_US", bad)]).unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL);
            assert_eq!(e.why(), format!("DEMI_SPIN_US={bad:?} is not a non-negative integer"));
        }
    }

    #[test]
    fn the_poll_sleep_is_read_and_checked() {
        assert_eq!(parse(&[]).unwrap().poll_sleep, DEFAULT_POLL_SLEEP);
        assert_eq!(parse(&[("DEMI_POLL_SLEEP_US", "0")]).unwrap().poll_sleep, Duration::ZERO);
        assert_eq!(parse(&[("DEMI_POLL_SLEEP_US", "250")]).unwrap().poll_sleep, Duration::from_micros(250));
        assert_eq!(parse(&[("DEMI_POLL_SLEEP_US", "soon")]).unwrap_err().errno(), libc::EINVAL);
    }

    #[test]
    fn the_threading_model_is_read_and_checked() {
        assert_eq!(parse(&[]).unwrap().threading, Threading::PerThread);
        assert_eq!(parse(&[("DEMI_THREADING", "shared")]).unwrap().threading, Threading::Shared);
        assert_eq!(parse(&[("DEMI_THREADING", "per-thread")]).unwrap().threading, Threading::PerThread);
        let e = parse(&[("DEMI_THREADING", "many")]).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(e.why().contains("DEMI_THREADING=\"many\""), "{}", e.why());
    }

    #[cfg(feature = "catmint")]
    #[test]
    fn catmint_tunables_are_read_only_for_catmint() {
        let vars = [("LIBOS", "catmint"), ("DEMI_RDMA_RECV_DEPTH", "8"), ("DEMI_RDMA_TIMEOUT_MS", "250")];
        let c = parse(&vars).unwrap();
        assert_eq!((c.catmint.credits, c.catmint.timeout), (8, Duration::from_millis(250)));
        assert_eq!(c.catmint.sq_depth, CatmintConfig::default().sq_depth);
        assert_eq!(c.catmint.srq_depth, 1024, "the shared receive budget's default");
        let c = parse(&[("LIBOS", "catmint"), ("DEMI_RDMA_SRQ_DEPTH", "64")]).unwrap();
        assert_eq!((c.catmint.srq_depth, c.catmint.buf_size), (64, 4096));
        let bad = [("LIBOS", "catmint"), ("DEMI_RDMA_SRQ_DEPTH", "-1")];
        assert!(parse(&bad).unwrap_err().why().contains("DEMI_RDMA_SRQ_DEPTH"));
        // Saturates instead of wrapping; Catmint::new clamps.
        let c = parse(&[("LIBOS", "catmint"), ("DEMI_RDMA_INLINE", "99999999999")]).unwrap();
        assert_eq!(c.catmint.inline, u32::MAX);
        let bad = [("LIBOS", "catmint"), ("DEMI_RDMA_BUF_SIZE", "big")];
        assert!(parse(&bad).unwrap_err().why().contains("DEMI_RDMA_BUF_SIZE=\"big\""));
        // Another libOS does not read them, malformed or not.
        let c = parse(&[("DEMI_RDMA_BUF_SIZE", "big"), ("DEMI_RDMA_RECV_DEPTH", "8")]).unwrap();
        assert_eq!(c.catmint.credits, CatmintConfig::default().credits);
    }

    #[cfg(feature = "catnip")]
    #[test]
    fn catnip_settings_are_read_only_for_catnip() {
        let c = parse(&[("LIBOS", "catnip"), ("DEMI_LOCAL_IPV4", "10.77.0.1"), ("DEMI_MTU", "9000")]).unwrap();
        let section = c.catnip.expect("catnip's section");
        assert_eq!((section.local_ipv4, section.mtu), (std::net::Ipv4Addr::new(10, 77, 0, 1), 9000));
        let e = parse(&[("LIBOS", "catnip")]).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(e.why().starts_with("catnip: DEMI_LOCAL_IPV4 is not set"), "{}", e.why());
        assert!(parse(&[("DEMI_MTU", "1")]).unwrap().catnip.is_none());
    }

    #[test]
    fn an_unknown_name_lists_the_built_ones() {
        let e = unknown_libos("catfish");
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(e.why().contains("\"catfish\"") && e.why().contains("catnap"), "{}", e.why());
    }
}
