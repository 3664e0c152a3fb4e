//! Bringing a DPDK port up: EAL from the configured arguments, the packet
//! pool, one RX and one TX queue, MTU, MAC, checksum offloads, link wait.

use crate::config::Config;
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

    /// True if the link is up now.
    pub fn link_up(&self) -> bool {
        self.id.link_up()
    }

    /// Our MAC address.
    pub fn mac(&self) -> EthernetAddress {
        self.mac
    }

    /// The driver's name, e.g. "net_memif".
    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// True if the port checks IPv4 header checksums on receive.
    pub fn rx_ipv4_cksum_offload(&self) -> bool {
        self.rx_ipv4_cksum
    }

    /// True if the port computes IPv4 header checksums on transmit.
    pub fn tx_ipv4_cksum_offload(&self) -> bool {
        self.tx_ipv4_cksum
    }

    /// A fresh mbuf from the pool.
    pub fn alloc(&self) -> Option<Mbuf> {
        self.pool.alloc()
    }

    /// Receives up to `max` frames into `out`.
    pub fn rx_burst(&self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        self.id.rx_burst(out, max)
    }

    /// Sends frames from the front of `pkts`; returns how many the driver took.
    pub fn tx_burst(&self, pkts: &mut Vec<Mbuf>) -> usize {
        self.id.tx_burst(pkts)
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // The pool stays: buffers lent to the application may still use it.
        self.id.close();
    }
}
