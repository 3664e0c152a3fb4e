//! Bringing a DPDK port up: EAL from the configured arguments, the packet
//! pool, one RX and one TX queue, MTU, MAC, checksum offloads, link wait.
//! The port is the stack's [`Device`]: its tokens are [`Mbuf`]s, received
//! and sent in bursts, and a payload in an mbuf from
//! [`Device::alloc_payload`] is sent without a copy.

use crate::config::Config;
use crate::device::{Capabilities, Device, RxToken, TxToken};
use crate::sys::{self, DpdkError, Mbuf, Mempool, PortId};
use crate::wire::{EthernetAddress, ETHERNET_HEADER_LEN};
use crate::Error;
use std::time::{Duration, Instant};

/// Descriptors per queue.
const QUEUE_DESCS: u16 = 1024;
/// Per-lcore mempool cache (only the EAL thread uses it).
const POOL_CACHE: u32 = 256;

/// A started port with its pool.
#[derive(Debug)]
pub struct Port {
    id: PortId,
    pool: Mempool,
    mac: EthernetAddress,
    mtu: u16,
    driver: String,
    rx_ipv4_cksum: bool,
    tx_ipv4_cksum: bool,
}

impl Port {
    /// Initialises the EAL and starts the configured port.
    pub fn open(cfg: &Config) -> Result<Port, Error> {
        sys::eal_init(&cfg.eal_args).map_err(|e| Error::dpdk("EAL initialisation (DEMI_DPDK_EAL)", e))?;
        let id = match cfg.port {
            Some(p) => sys::find_port(p).filter(|f| f.0 == p),
            None => sys::find_port(0),
        };
        let Some(id) = id else {
            return Err(Error::new(
                libc::ENODEV,
                match cfg.port {
                    Some(p) => format!("DEMI_DPDK_PORT={p}: no such DPDK port"),
                    None => "no DPDK port: add a device to DEMI_DPDK_EAL (e.g. --vdev=net_memif0,...)".into(),
                },
            ));
        };
        let info = id.info().map_err(|e| Error::dpdk("port info", e))?;
        // One frame per mbuf: the data room holds headroom plus the largest frame.
        let frame = usize::from(cfg.mtu) + ETHERNET_HEADER_LEN;
        let room = (sys::default_headroom() + frame).max(2048 + sys::default_headroom());
        let pool = Mempool::new(&format!("catnip_pool_{}", id.0), cfg.mbufs, POOL_CACHE, room as u16)
            .map_err(|e| Error::dpdk("mbuf pool (DEMI_DPDK_MBUFS, EAL -m)", e))?;
        if cfg.mtu > info.max_mtu {
            return Err(Error::invalid(format!(
                "DEMI_MTU={} exceeds what {} allows ({})",
                cfg.mtu, info.driver, info.max_mtu
            )));
        }
        id.setup(&pool, QUEUE_DESCS, info.rx_ipv4_cksum, info.tx_ipv4_cksum)
            .map_err(|e| Error::dpdk("port setup", e))?;
        // Some ports cannot start before their peer exists (a memif client
        // whose server is not listening yet): retry within the link wait.
        let give_up = Instant::now() + cfg.link_wait;
        while let Err(e) = id.start() {
            if Instant::now() >= give_up {
                return Err(Error::dpdk("port start", e));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match id.set_mtu(cfg.mtu) {
            // Virtual ports often cannot change their MTU; frames are bounded by ours anyway.
            Ok(()) | Err(DpdkError { errno: libc::ENOTSUP | libc::ENOSYS, .. }) => {}
            Err(e) => log::warn!("catnip: {}: cannot set MTU {}: {e}", info.driver, cfg.mtu),
        }
        let mac = match cfg.local_mac {
            None => EthernetAddress(id.mac().map_err(|e| Error::dpdk("port MAC", e))?),
            Some(m) => {
                if id.set_mac(m.0).is_err() {
                    // The stack filters by destination itself, so seeing every frame is enough.
                    if let Err(e) = id.promiscuous() {
                        log::warn!("catnip: {}: cannot set MAC {m} nor go promiscuous: {e}", info.driver);
                    }
                }
                m
            }
        };
        let port = Port {
            id,
            pool,
            mac,
            mtu: cfg.mtu,
            driver: info.driver,
            rx_ipv4_cksum: info.rx_ipv4_cksum,
            tx_ipv4_cksum: info.tx_ipv4_cksum,
        };
        if !port.wait_link(cfg.link_wait) {
            log::warn!("catnip: {} link still down after {:?}; sends wait for it", port.driver, cfg.link_wait);
        }
        Ok(port)
    }

    /// Waits up to `limit` for the link; true if it is up.
    pub fn wait_link(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        loop {
            if self.id.link_up() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Our MAC address.
    pub fn mac(&self) -> EthernetAddress {
        self.mac
    }

    /// The driver's name, e.g. "net_memif".
    pub fn driver(&self) -> &str {
        &self.driver
    }
}

impl Device for Port {
    type RxToken = Mbuf;
    type TxToken = Mbuf;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            mac: self.mac,
            mtu: self.mtu,
            rx_ipv4_checksum: self.rx_ipv4_cksum,
            tx_ipv4_checksum: self.tx_ipv4_cksum,
        }
    }

    fn receive(&mut self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        self.id.rx_burst(out, max)
    }

    fn alloc_tx(&mut self, len: usize) -> Option<Mbuf> {
        let mut m = self.pool.alloc()?;
        m.frame_mut(sys::default_headroom(), len)?;
        Some(m)
    }

    fn transmit(&mut self, frames: &mut Vec<Mbuf>) -> usize {
        self.id.tx_burst(frames)
    }

    fn alloc_payload(&mut self, len: usize) -> Option<Mbuf> {
        let mut m = self.pool.alloc()?;
        m.frame_mut(sys::default_headroom(), len)?.fill(0);
        Some(m)
    }

    fn link_up(&self) -> bool {
        self.id.link_up()
    }
}

impl RxToken for Mbuf {
    fn frame(&self) -> &[u8] {
        self.data()
    }

    fn whole(&self) -> bool {
        self.segments() == 1
    }

    fn ipv4_checksum_ok(&self) -> Option<bool> {
        self.rx_ipv4_cksum_ok()
    }
}

impl TxToken for Mbuf {
    fn frame_mut(&mut self) -> Option<&mut [u8]> {
        self.data_mut()
    }

    fn offload_ipv4_checksum(&mut self, l2_len: u8, l3_len: u8) {
        self.offload_ipv4_cksum(l2_len, l3_len);
    }

    fn share_for_tx(&self, payload: &[u8], hdr_len: usize, fill: impl FnOnce(&mut [u8], &[u8])) -> Option<Mbuf> {
        if payload.as_ptr() != self.payload_area().0 {
            return None;
        }
        self.claim_for_tx(payload.len(), hdr_len, fill)
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // The pool stays: buffers lent to the application may still use it.
        self.id.close();
    }
}
