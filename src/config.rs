//! Run-time configuration from the environment (every variable is listed in
//! the README).

use crate::backend::Backend;
use crate::error::Result;
use std::time::Duration;

/// The libOS used when `LIBOS` is unset.
pub const DEFAULT_LIBOS: &str = "catnap";

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

/// The libOS named by `LIBOS` (default catnap).
pub fn libos_from_env() -> String {
    std::env::var("LIBOS").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| DEFAULT_LIBOS.to_string())
}

/// Builds the backend for a libOS name.
pub fn make_backend(name: &str) -> Result<Box<dyn Backend>> {
    match name {
        "catnap" => Ok(Box::new(crate::catnap::Catnap::new()?)),
        #[cfg(feature = "catmint")]
        "catmint" => Ok(Box::new(crate::catmint::Catmint::new()?)),
        #[cfg(feature = "catnip")]
        "catnip" => Ok(Box::new(crate::catnip::Catnip::new()?)),
        _ => Err(crate::engine::unknown_libos(name)),
    }
}

/// Reads a number from the environment; a malformed value is an error that
/// names the variable.
pub fn env_number(var: &str, default: u64) -> Result<u64> {
    match std::env::var(var) {
        Ok(s) if !s.trim().is_empty() => s
            .trim()
            .parse()
            .map_err(|_| crate::error::Error::with(libc::EINVAL, format!("{var}={s:?} is not a non-negative integer"))),
        _ => Ok(default),
    }
}

/// How long a waiter busy-polls before it sleeps (`DEMI_SPIN_US`, default 50 µs).
pub fn spin_time() -> Result<Duration> {
    Ok(Duration::from_micros(env_number("DEMI_SPIN_US", 50)?))
}
