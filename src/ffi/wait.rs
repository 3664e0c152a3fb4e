//! `demi_wait`, `demi_timedwait`, `demi_wait_any`, `demi_wait_next_n`.

use super::types::{
    demi_accept_result_t, demi_opcode_t, demi_qr_value_t, demi_qresult_t, demi_qtoken_t, demi_sgarray_t,
};
use super::{boundary, input, libos, output, put, to_c_addr};
use crate::engine::{Engine, QResult, QValue};
use crate::error::{fail, Result};
use crate::LibOs;
use libc::{c_int, timespec};
use std::time::Duration;

/// A relative timeout: NULL waits forever; fields out of range give EINVAL.
///
/// # Safety
/// `t` must be NULL or point to a readable timespec.
unsafe fn relative(t: *const timespec) -> Result<Option<Duration>> {
    // SAFETY: forwarded from this function's contract.
    let Some(t) = (unsafe { t.as_ref() }) else {
        return Ok(None);
    };
    if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) {
        return fail(libc::EINVAL, "timeout has a negative or out-of-range field");
    }
    Ok(Some(Duration::new(t.tv_sec as u64, t.tv_nsec as u32)))
}

/// Turns a result into its C form, lending popped buffers to C.
fn to_c(e: &mut Engine, r: QResult) -> demi_qresult_t {
    let mut value = demi_qr_value_t { sga: demi_sgarray_t::null() };
    let (opcode, ret) = match r.value {
        QValue::Push => (demi_opcode_t::DEMI_OPC_PUSH, 0),
        QValue::Connect => (demi_opcode_t::DEMI_OPC_CONNECT, 0),
        QValue::Accept { qd, peer } => {
            value.ares = demi_accept_result_t { qd, addr: to_c_addr(peer) };
            (demi_opcode_t::DEMI_OPC_ACCEPT, 0)
        }
        QValue::Pop { buf, from } => match super::sga::lend(e, buf, from) {
            Ok(sga) => {
                value.sga = sga;
                (demi_opcode_t::DEMI_OPC_POP, 0)
            }
            Err(err) => (demi_opcode_t::DEMI_OPC_FAILED, err.errno()),
        },
        QValue::Failed(errno) => (demi_opcode_t::DEMI_OPC_FAILED, errno),
    };
    demi_qresult_t { qr_opcode: opcode, qr_qd: r.qd, qr_qt: r.qt, qr_ret: ret as i64, qr_value: value }
}

/// Waits for `qt`. Returns ETIMEDOUT when the timeout passes (the operation
/// stays pending) and EINVAL for a token that is not live.
///
/// # Safety
/// `qr_out` must be NULL or writable; `timeout` NULL or readable.
/// cbindgen:prefix=ATTR_NONNULL(1)
#[no_mangle]
pub unsafe extern "C" fn demi_wait(qr_out: *mut demi_qresult_t, qt: demi_qtoken_t, timeout: *const timespec) -> c_int {
    boundary("demi_wait", || {
        let os = libos()?;
        let out = output(qr_out, "qr_out is NULL")?;
        // SAFETY: forwarded from this function's contract.
        let timeout = unsafe { relative(timeout) }?;
        wait_one(os, out, qt, timeout)
    })
}

/// The body of `demi_wait` and `demi_timedwait` once their arguments are checked.
fn wait_one(os: &LibOs, out: *mut demi_qresult_t, qt: demi_qtoken_t, timeout: Option<Duration>) -> Result<()> {
    let qr = os.wait_until(os.token_shard(qt)?, timeout, |e| match e.take(qt) {
        Ok(Some(r)) => Some(Ok(to_c(e, r))),
        Ok(None) => None,
        Err(err) => Some(Err(err)),
    })?;
    // SAFETY: the callers checked out non-null; C owns storage there.
    unsafe { put(out, qr) };
    Ok(())
}

/// Waits for `qt` until the absolute CLOCK_REALTIME time `abstime`.
///
/// # Safety
/// As `demi_wait`.
/// cbindgen:prefix=ATTR_NONNULL(1)
#[no_mangle]
pub unsafe extern "C" fn demi_timedwait(
    qr_out: *mut demi_qresult_t,
    qt: demi_qtoken_t,
    abstime: *const timespec,
) -> c_int {
    boundary("demi_timedwait", || {
        let os = libos()?;
        let out = output(qr_out, "qr_out is NULL")?;
        // The same field checks as a relative timeout; NULL waits forever.
        // SAFETY: forwarded from this function's contract.
        let timeout = unsafe { relative(abstime) }?.map(|abs| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            abs.saturating_sub(now)
        });
        wait_one(os, out, qt, timeout)
    })
}

/// Waits for the first of `num_qts` tokens to finish.
///
/// # Safety
/// `qts` must be NULL or readable for `num_qts` tokens; the out-pointers NULL
/// or writable; `timeout` NULL or readable.
/// cbindgen:prefix=ATTR_NONNULL(1, 2, 3)
/// cbindgen:ptrs-as-arrays=[[qts;]]
#[no_mangle]
pub unsafe extern "C" fn demi_wait_any(
    qr_out: *mut demi_qresult_t,
    ready_offset: *mut c_int,
    qts: *const demi_qtoken_t,
    num_qts: c_int,
    timeout: *const timespec,
) -> c_int {
    boundary("demi_wait_any", || {
        let os = libos()?;
        let out = output(qr_out, "qr_out is NULL")?;
        let off_out = output(ready_offset, "ready_offset is NULL")?;
        // SAFETY: forwarded; only checks for NULL here.
        unsafe { input(qts, "qts is NULL") }?;
        if num_qts <= 0 {
            return fail(libc::EINVAL, "num_qts must be positive");
        }
        // SAFETY: qts is non-null and the caller vouches for num_qts entries.
        let qts = unsafe { std::slice::from_raw_parts(qts, num_qts as usize) };
        // SAFETY: forwarded from this function's contract.
        let timeout = unsafe { relative(timeout) }?;
        let (i, qr) = os.wait_any_with(qts, timeout, to_c)?;
        // SAFETY: both outputs were checked non-null.
        unsafe {
            put(out, qr);
            put(off_out, i as c_int);
        }
        Ok(())
    })
}

/// Waits until at least one operation finished and returns up to `num_qrs`
/// finished operations (any tokens), oldest first.
///
/// # Safety
/// `qrs` must be NULL or writable for `num_qrs` results; `num_out` NULL or
/// writable; `timeout` NULL or readable.
/// cbindgen:prefix=ATTR_NONNULL(1, 3)
#[no_mangle]
pub unsafe extern "C" fn demi_wait_next_n(
    qrs: *mut demi_qresult_t,
    num_qrs: c_int,
    num_out: *mut c_int,
    timeout: *const timespec,
) -> c_int {
    boundary("demi_wait_next_n", || {
        let os = libos()?;
        let qrs = output(qrs, "qrs is NULL")?;
        let n_out = output(num_out, "num_out is NULL")?;
        if num_qrs <= 0 {
            return fail(libc::EINVAL, "num_qrs must be positive");
        }
        // SAFETY: forwarded from this function's contract.
        let timeout = unsafe { relative(timeout) }?;
        let n = os.wait_until(os.next_set()?, timeout, |e| {
            if !e.any_done() {
                return None;
            }
            let mut n = 0;
            while n < num_qrs as usize {
                let Some(r) = e.take_next() else { break };
                let qr = to_c(e, r);
                // SAFETY: qrs is non-null and writable for num_qrs entries; n < num_qrs.
                unsafe { put(qrs.add(n), qr) };
                n += 1;
            }
            Some(Ok(n))
        })?;
        // SAFETY: checked non-null.
        unsafe { put(n_out, n as c_int) };
        Ok(())
    })
}
