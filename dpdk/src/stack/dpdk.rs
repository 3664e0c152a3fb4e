//! The stack over a DPDK port: start-up from the configuration, and what
//! only a port has (driver name, waiting for the link).

use super::Stack;
use crate::config::Config;
use crate::device::Device;
use crate::port::Port;
use crate::Error;
use std::time::Duration;

impl Stack<Port> {
    /// Starts the EAL, the configured port and the stack over it (sends a
    /// gratuitous ARP once the link is up).
    pub fn new(cfg: &Config) -> Result<Stack<Port>, Error> {
        let s = Stack::with_device(Port::open(cfg)?, cfg);
        let caps = s.device().capabilities();
        log::info!(
            "catnip: {} up={} mac {} ip {} mtu {} ipv4 checksum offload rx={} tx={}",
            s.driver(),
            s.link_up(),
            s.mac(),
            s.ipv4(),
            s.mtu,
            caps.rx_ipv4_checksum,
            caps.tx_ipv4_checksum
        );
        Ok(s)
    }

    /// The port's driver name.
    pub fn driver(&self) -> &str {
        self.device().driver()
    }

    /// Waits up to `limit` for the link (for start-up and tests).
    pub fn wait_link(&mut self, limit: Duration) -> bool {
        let up = self.device().wait_link(limit);
        let now = self.device().now();
        self.check_link(now);
        up
    }
}
