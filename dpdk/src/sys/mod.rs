//! The only place that calls DPDK: generated bindings, the C shim, and thin
//! safe wrappers (EAL, ports, mempools, mbufs). Every unsafe block says why
//! it is sound; everything above this module is `#![deny(unsafe_code)]`.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::{c_char, c_int};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};

#[allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code, clippy::all)]
mod ffi {
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

/// A failed DPDK call: which call, and the positive errno it reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DpdkError {
    /// The C function that failed.
    pub call: &'static str,
    /// Positive errno (DPDK returns `-errno` or sets `rte_errno`).
    pub errno: i32,
}

impl fmt::Display for DpdkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.call, strerror(self.errno))
    }
}

impl std::error::Error for DpdkError {}

/// DPDK's text for an errno (covers its own codes as well as libc's).
pub fn strerror(errno: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local
    // NUL-terminated string that stays valid until the next call on this
    // thread; we copy it out at once.
    unsafe { CStr::from_ptr(ffi::rte_strerror(errno)) }.to_string_lossy().into_owned()
}

/// Turns a DPDK return code into a `Result`: `-errno` style
/// (`rte!(neg "name", call)`) or `-1` plus `rte_errno` (`rte!(errno ...)`).
macro_rules! rte {
    (neg $name:literal, $call:expr) => {{
        // SAFETY: see the caller's comment on the arguments of this call.
        let rc: c_int = unsafe { $call };
        if rc < 0 {
            Err(DpdkError { call: $name, errno: -rc })
        } else {
            Ok(rc)
        }
    }};
    (errno $name:literal, $call:expr) => {{
        // SAFETY: see the caller's comment on the arguments of this call.
        let rc: c_int = unsafe { $call };
        if rc < 0 {
            Err(DpdkError { call: $name, errno: last_rte_errno() })
        } else {
            Ok(rc)
        }
    }};
}

fn last_rte_errno() -> i32 {
    // SAFETY: reads a per-thread integer; no arguments.
    let e = unsafe { ffi::shim_errno() };
    if e > 0 {
        e
    } else {
        libc::EIO
    }
}

/// EAL states: never tried, running, or failed for good.
const EAL_NONE: u8 = 0;
const EAL_BUSY: u8 = 1;
const EAL_UP: u8 = 2;
static EAL_STATE: AtomicU8 = AtomicU8::new(EAL_NONE);

/// Initialises DPDK's EAL with `args` (without a program name). DPDK allows
/// this once per process: a second call fails with EALREADY, never crashes.
pub fn eal_init(args: &[String]) -> Result<(), DpdkError> {
    if EAL_STATE.compare_exchange(EAL_NONE, EAL_BUSY, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return Err(DpdkError { call: "rte_eal_init (once per process)", errno: libc::EALREADY });
    }
    let mut owned = Vec::with_capacity(args.len() + 1);
    owned.push(CString::new("demi").expect("no NUL in a literal"));
    for a in args {
        match CString::new(a.as_str()) {
            Ok(c) => owned.push(c),
            Err(_) => {
                EAL_STATE.store(EAL_NONE, Ordering::Release);
                return Err(DpdkError { call: "rte_eal_init (argument with a NUL byte)", errno: libc::EINVAL });
            }
        }
    }
    // The EAL may keep pointers into argv (device arguments, program name)
    // for the life of the process, so the strings are leaked on purpose.
    let argv: &'static mut [*mut c_char] =
        Box::leak(owned.into_iter().map(CString::into_raw).collect::<Vec<_>>().into_boxed_slice());
    let argc = argv.len() as c_int;
    // SAFETY: argv holds argc valid, NUL-terminated, never-freed strings; the
    // EAL may permute the array, which it owns from now on.
    let r = rte!(errno "rte_eal_init", ffi::rte_eal_init(argc, argv.as_mut_ptr()));
    match r {
        Ok(_) => {
            EAL_STATE.store(EAL_UP, Ordering::Release);
            Ok(())
        }
        Err(e) => {
            // A failed rte_eal_init cannot be retried in the same process
            // (DPDK keeps part of its state), so the state stays "busy".
            Err(e)
        }
    }
}

/// What a port can do, from `rte_eth_dev_info_get`.
#[derive(Clone, Debug)]
pub struct DevInfo {
    /// Driver name, e.g. "net_memif".
    pub driver: String,
    /// Largest MTU the port accepts.
    pub max_mtu: u16,
    /// The port verifies IPv4 header checksums on receive.
    pub rx_ipv4_cksum: bool,
    /// The port computes IPv4 header checksums on transmit.
    pub tx_ipv4_cksum: bool,
}

/// An Ethernet port by id. Plain data: the functions below check the id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortId(pub u16);

/// The first probed port at or after `from`, if any.
pub fn find_port(from: u16) -> Option<PortId> {
    // SAFETY: takes and returns plain integers; valid after EAL init.
    let p = unsafe { ffi::rte_eth_find_next(from) };
    (u32::from(p) < u32::from(ffi::RTE_MAX_ETHPORTS as u16)).then_some(PortId(p))
}

impl PortId {
    /// The port's capabilities.
    pub fn info(self) -> Result<DevInfo, DpdkError> {
        let mut info = ffi::rte_eth_dev_info::default();
        // SAFETY: info is a valid, writable rte_eth_dev_info.
        rte!(neg "rte_eth_dev_info_get", ffi::rte_eth_dev_info_get(self.0, &mut info))?;
        let driver = if info.driver_name.is_null() {
            String::from("?")
        } else {
            // SAFETY: driver_name points to the driver's static NUL-terminated name.
            unsafe { CStr::from_ptr(info.driver_name) }.to_string_lossy().into_owned()
        };
        // SAFETY: the shim functions return constants.
        let (rx_bit, tx_bit) = unsafe { (ffi::shim_rx_offload_ipv4_cksum(), ffi::shim_tx_offload_ipv4_cksum()) };
        Ok(DevInfo {
            driver,
            max_mtu: info.max_mtu,
            rx_ipv4_cksum: info.rx_offload_capa & rx_bit != 0,
            tx_ipv4_cksum: info.tx_offload_capa & tx_bit != 0,
        })
    }

    /// Configures one RX and one TX queue of `descs` descriptors each over
    /// `pool`, with the IPv4 checksum offloads asked for (start it next).
    pub fn setup(self, pool: &Mempool, descs: u16, rx_cksum: bool, tx_cksum: bool) -> Result<(), DpdkError> {
        let mut conf = ffi::rte_eth_conf::default();
        // SAFETY: the shim functions return constants.
        unsafe {
            if rx_cksum {
                conf.rxmode.offloads |= ffi::shim_rx_offload_ipv4_cksum();
            }
            if tx_cksum {
                conf.txmode.offloads |= ffi::shim_tx_offload_ipv4_cksum();
            }
        }
        // SAFETY: conf is a valid configuration that DPDK copies.
        rte!(neg "rte_eth_dev_configure", ffi::rte_eth_dev_configure(self.0, 1, 1, &conf))?;
        // SAFETY: plain integer in and out.
        let socket = unsafe { ffi::rte_eth_dev_socket_id(self.0) };
        let socket = if socket < 0 { 0 } else { socket as u32 };
        // SAFETY: null configs ask for the driver defaults; the pool outlives
        // the port because mempools are never freed (see Mempool).
        rte!(neg "rte_eth_rx_queue_setup",
            ffi::rte_eth_rx_queue_setup(self.0, 0, descs, socket, std::ptr::null(), pool.0.as_ptr().cast()))?;
        // SAFETY: as above.
        rte!(neg "rte_eth_tx_queue_setup", ffi::rte_eth_tx_queue_setup(self.0, 0, descs, socket, std::ptr::null()))?;
        Ok(())
    }

    /// Starts a configured port.
    pub fn start(self) -> Result<(), DpdkError> {
        // SAFETY: plain port id; DPDK checks that the port is configured.
        rte!(neg "rte_eth_dev_start", ffi::rte_eth_dev_start(self.0)).map(drop)
    }

    /// Stops and releases the port.
    pub fn close(self) {
        // SAFETY: plain port id; both calls tolerate a port in any state.
        unsafe {
            ffi::rte_eth_dev_stop(self.0);
            ffi::rte_eth_dev_close(self.0);
        }
    }

    /// Sets the MTU.
    pub fn set_mtu(self, mtu: u16) -> Result<(), DpdkError> {
        // SAFETY: plain integers.
        rte!(neg "rte_eth_dev_set_mtu", ffi::rte_eth_dev_set_mtu(self.0, mtu)).map(drop)
    }

    /// The port's MAC address.
    pub fn mac(self) -> Result<[u8; 6], DpdkError> {
        let mut a = ffi::rte_ether_addr::default();
        // SAFETY: a is a valid, writable rte_ether_addr.
        rte!(neg "rte_eth_macaddr_get", ffi::rte_eth_macaddr_get(self.0, &mut a))?;
        Ok(a.addr_bytes)
    }

    /// Makes the port use (and receive for) `mac`.
    pub fn set_mac(self, mac: [u8; 6]) -> Result<(), DpdkError> {
        let mut a = ffi::rte_ether_addr { addr_bytes: mac };
        // SAFETY: a is a valid rte_ether_addr that DPDK copies.
        rte!(neg "rte_eth_dev_default_mac_addr_set", ffi::rte_eth_dev_default_mac_addr_set(self.0, &mut a)).map(drop)
    }

    /// Receives frames for every address; the stack filters by itself.
    pub fn promiscuous(self) -> Result<(), DpdkError> {
        // SAFETY: plain port id.
        rte!(neg "rte_eth_promiscuous_enable", ffi::rte_eth_promiscuous_enable(self.0)).map(drop)
    }

    /// Whether the link is up (false if the driver cannot tell).
    pub fn link_up(self) -> bool {
        // SAFETY: plain port id.
        unsafe { ffi::shim_link_up(self.0) > 0 }
    }

    /// Receives up to `max` frames (at most 64) and appends them to `out`.
    pub fn rx_burst(self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        let mut raw = [std::ptr::null_mut::<ffi::rte_mbuf>(); 64];
        let max = max.min(raw.len()) as u16;
        // SAFETY: raw has room for max pointers; queue 0 was set up in setup(),
        // and one thread at a time polls (callers hold &mut of the owner).
        let n = unsafe { ffi::shim_rx_burst(self.0, 0, raw.as_mut_ptr(), max) } as usize;
        out.extend(raw[..n].iter().filter_map(|&p| NonNull::new(p)).map(Mbuf));
        n
    }

    /// Transmits frames from the front of `pkts`; the ones the driver took
    /// are removed (the driver frees them once sent). Returns how many.
    pub fn tx_burst(self, pkts: &mut Vec<Mbuf>) -> usize {
        let n = pkts.len().min(u16::MAX as usize) as u16;
        if n == 0 {
            return 0;
        }
        // SAFETY: Mbuf is repr(transparent) over a non-null rte_mbuf pointer,
        // so the vector is an array of n valid mbuf pointers.
        let sent = unsafe { ffi::shim_tx_burst(self.0, 0, pkts.as_mut_ptr().cast(), n) } as usize;
        // The driver owns the first `sent` mbufs now: forget our handles.
        pkts.drain(..sent).for_each(std::mem::forget);
        sent
    }
}

/// A pool of packet buffers. Pools are never freed: buffers handed to the
/// application may outlive every port and libOS instance.
#[derive(Debug)]
pub struct Mempool(NonNull<ffi::rte_mempool>);

// SAFETY: DPDK mempools (default ring handler) are multi-producer,
// multi-consumer; the pointer itself is never freed.
unsafe impl Send for Mempool {}
// SAFETY: as above.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `n` mbufs with `data_room` bytes each (headroom included).
    pub fn new(name: &str, n: u32, cache: u32, data_room: u16) -> Result<Mempool, DpdkError> {
        let cname = CString::new(name)
            .map_err(|_| DpdkError { call: "rte_pktmbuf_pool_create (name)", errno: libc::EINVAL })?;
        // SAFETY: cname is a valid string for the call; socket 0 is fine with --no-huge.
        let p = unsafe {
            ffi::rte_pktmbuf_pool_create(cname.as_ptr(), n, cache, 0, data_room, ffi::rte_socket_id() as i32)
        };
        NonNull::new(p)
            .map(Mempool)
            .ok_or_else(|| DpdkError { call: "rte_pktmbuf_pool_create", errno: last_rte_errno() })
    }

    /// A fresh single-segment mbuf, empty, data starting after the default headroom.
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool pointer is valid forever (never freed).
        NonNull::new(unsafe { ffi::shim_pktmbuf_alloc(self.0.as_ptr()) }).map(Mbuf)
    }
}

/// Bytes reserved in front of the data of a fresh mbuf (RTE_PKTMBUF_HEADROOM).
pub fn default_headroom() -> usize {
    // SAFETY: returns a constant.
    usize::from(unsafe { ffi::shim_pktmbuf_headroom_default() })
}

/// One reference to a packet buffer; dropping it releases the reference
/// (the last one returns the mbuf to its pool). Several `Mbuf`s may name the
/// same rte_mbuf (DPDK's refcount), so mutable access needs the only one.
#[repr(transparent)]
pub struct Mbuf(NonNull<ffi::rte_mbuf>);

// SAFETY: the refcount is atomic and freeing goes to a thread-safe mempool;
// data is only written through &mut with refcnt 1, or through `claim_for_tx`,
// which takes the second reference atomically first.
unsafe impl Send for Mbuf {}
// SAFETY: &Mbuf only reads, except claim_for_tx (see above).
unsafe impl Sync for Mbuf {}

impl fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mbuf").field("ptr", &self.0).field("len", &self.data().len()).finish()
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own one reference to a valid mbuf; free drops exactly it.
        unsafe { ffi::shim_pktmbuf_free(self.0.as_ptr()) }
    }
}

impl Mbuf {
    /// The data of the first segment.
    pub fn data(&self) -> &[u8] {
        // SAFETY: mtod..mtod+data_len lies in the mbuf's buffer, which lives
        // as long as our reference; writers need &mut (refcnt 1) or a claim.
        unsafe {
            let p = ffi::shim_mbuf_data(self.0.as_ptr());
            std::slice::from_raw_parts(p, usize::from(ffi::shim_mbuf_data_len(self.0.as_ptr())))
        }
    }

    /// Number of segments (frames larger than one mbuf are chained).
    pub fn segments(&self) -> u16 {
        // SAFETY: reads a field of a valid mbuf.
        unsafe { ffi::shim_mbuf_nb_segs(self.0.as_ptr()) }
    }

    /// References held on this mbuf (ours included).
    pub fn refcnt(&self) -> u16 {
        // SAFETY: atomic read of a valid mbuf's refcount.
        unsafe { ffi::shim_mbuf_refcnt_read(self.0.as_ptr()) }
    }

    /// Bytes from the first data byte to the end of the buffer.
    pub fn room(&self) -> usize {
        // SAFETY: reads fields of a valid mbuf.
        unsafe {
            let m = self.0.as_ptr();
            let start = ffi::shim_mbuf_data(m).offset_from(ffi::shim_mbuf_buf_addr(m)) as usize;
            usize::from(ffi::shim_mbuf_buf_len(m)) - start
        }
    }

    /// The data of the first segment, for writing; None if shared.
    pub fn data_mut(&mut self) -> Option<&mut [u8]> {
        if self.refcnt() != 1 {
            return None;
        }
        // SAFETY: as in data(); refcnt is 1 and we hold &mut self, so no one
        // else can read or write the buffer while the borrow lives.
        Some(unsafe {
            let p = ffi::shim_mbuf_data(self.0.as_ptr());
            std::slice::from_raw_parts_mut(p, usize::from(ffi::shim_mbuf_data_len(self.0.as_ptr())))
        })
    }

    /// Sets the packet to `len` bytes at `headroom` bytes into the buffer and
    /// returns them for writing. None if it does not fit or is shared.
    pub fn frame_mut(&mut self, headroom: usize, len: usize) -> Option<&mut [u8]> {
        if self.refcnt() != 1 || self.segments() != 1 {
            return None;
        }
        let (off, l) = (u16::try_from(headroom).ok()?, u16::try_from(len).ok()?);
        // SAFETY: valid mbuf; the shim checks the range against buf_len.
        if unsafe { ffi::shim_mbuf_set_data(self.0.as_ptr(), off, l) } != 0 {
            return None;
        }
        // SAFETY: off+len <= buf_len (checked above); refcnt is 1 and we hold
        // &mut self, so nobody else reads or writes the buffer.
        Some(unsafe { std::slice::from_raw_parts_mut(ffi::shim_mbuf_buf_addr(self.0.as_ptr()).add(headroom), len) })
    }

    /// The region a fresh mbuf's data starts at (after the default headroom)
    /// and its capacity: where zero-copy payloads live.
    pub fn payload_area(&self) -> (*const u8, usize) {
        // SAFETY: reads fields of a valid mbuf.
        unsafe {
            let m = self.0.as_ptr();
            let base = ffi::shim_mbuf_buf_addr(m);
            let head = default_headroom().min(usize::from(ffi::shim_mbuf_buf_len(m)));
            (base.add(head), usize::from(ffi::shim_mbuf_buf_len(m)) - head)
        }
    }

    /// Zero-copy transmit of `len` payload bytes that start at the payload
    /// area (see [`Mbuf::payload_area`]): takes a second reference if ours is
    /// the only one, lays out a `hdr_len + len` frame, lets `fill` write the
    /// headers (it also sees the payload, e.g. for checksums), and returns
    /// the new reference to hand to the driver. None when the mbuf is
    /// shared (say, a previous transmit still holds it) or the sizes do not
    /// fit; the caller then copies.
    pub fn claim_for_tx(&self, len: usize, hdr_len: usize, fill: impl FnOnce(&mut [u8], &[u8])) -> Option<Mbuf> {
        let head = default_headroom();
        let (_, cap) = self.payload_area();
        if hdr_len > head || len > cap || self.segments() != 1 {
            return None;
        }
        // SAFETY: valid mbuf; the claim is an atomic 1 -> 2 exchange.
        if unsafe { ffi::shim_mbuf_claim(self.0.as_ptr()) } == 0 {
            return None;
        }
        let tx = Mbuf(self.0);
        let off = (head - hdr_len) as u16;
        // SAFETY: off + hdr_len + len <= buf_len (checked above); the shim checks again.
        if unsafe { ffi::shim_mbuf_set_data(self.0.as_ptr(), off, (hdr_len + len) as u16) } != 0 {
            return None; // dropping tx gives the reference back
        }
        // SAFETY: we hold the claim, so no other transmit writes these bytes;
        // the headers go into the headroom, which no payload view covers
        // (views start at the payload area), and the payload is only read.
        let (hdr, payload) = unsafe {
            let base = ffi::shim_mbuf_buf_addr(self.0.as_ptr());
            (
                std::slice::from_raw_parts_mut(base.add(usize::from(off)), hdr_len),
                std::slice::from_raw_parts(base.add(head), len),
            )
        };
        fill(hdr, payload);
        Some(tx)
    }

    /// Asks the port to compute the IPv4 header checksum of this frame.
    pub fn offload_ipv4_cksum(&mut self, l2_len: u8, l3_len: u8) {
        // SAFETY: sets flags on a valid mbuf that we are about to transmit.
        unsafe { ffi::shim_mbuf_tx_ipv4_cksum(self.0.as_ptr(), l2_len, l3_len) }
    }

    /// The port's verdict on the received IPv4 header checksum: Some(true)
    /// good, Some(false) bad, None unknown (check in software).
    pub fn rx_ipv4_cksum_ok(&self) -> Option<bool> {
        // SAFETY: reads the flags of a valid mbuf.
        match unsafe { ffi::shim_mbuf_rx_ipv4_cksum_status(self.0.as_ptr()) } {
            1 => Some(true),
            -1 => Some(false),
            _ => None,
        }
    }
}
