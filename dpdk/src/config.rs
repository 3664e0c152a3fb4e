//! Settings by variable name (documented in dpdk/README.md). A missing or
//! malformed value is EINVAL with a one-line message naming the variable.
//!
//! The caller answers for each name: demi reads the process environment
//! once (its `Config::from_env`), tests pass a map. This crate never reads
//! the environment itself.

use crate::wire::EthernetAddress;
use crate::Error;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Everything the port and the stack need to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// EAL arguments (`DEMI_DPDK_EAL`, whitespace-separated).
    pub eal_args: Vec<String>,
    /// Our IPv4 address (`DEMI_LOCAL_IPV4`, required).
    pub local_ipv4: Ipv4Addr,
    /// Our MAC (`DEMI_LOCAL_MAC`); None means the port's own.
    pub local_mac: Option<EthernetAddress>,
    /// IP MTU in bytes (`DEMI_MTU`, default 1500).
    pub mtu: u16,
    /// DPDK port id (`DEMI_DPDK_PORT`); None means the first probed port.
    pub port: Option<u16>,
    /// How long start-up waits for the link (`DEMI_DPDK_LINK_WAIT_MS`).
    pub link_wait: Duration,
    /// Packet buffers in the pool (`DEMI_DPDK_MBUFS`).
    pub mbufs: u32,
    /// Time between ARP requests for one address (`DEMI_ARP_RETRY_MS`).
    pub arp_retry: Duration,
    /// ARP requests sent before a resolution fails (`DEMI_ARP_RETRIES`).
    pub arp_retries: u32,
    /// How long a learned ARP entry is trusted (`DEMI_ARP_TTL_S`).
    pub arp_ttl: Duration,
}

/// Smallest MTU an IPv4 host must accept (RFC 791).
pub const MIN_MTU: u16 = 576;
/// Largest MTU: one 9000-byte jumbo frame per mbuf.
pub const MAX_MTU: u16 = 9000;

impl Config {
    /// The defaults (what the environment gives when only
    /// `DEMI_LOCAL_IPV4` is set), with `local_ipv4` as our address.
    pub fn new(local_ipv4: Ipv4Addr) -> Config {
        Config {
            eal_args: Vec::new(),
            local_ipv4,
            local_mac: None,
            mtu: 1500,
            port: None,
            link_wait: Duration::from_millis(5000),
            mbufs: 8191,
            arp_retry: Duration::from_millis(1000),
            arp_retries: 3,
            arp_ttl: Duration::from_secs(60),
        }
    }

    /// Reads the configuration through `get`, which gives the value of a
    /// variable by name (demi's environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let eal_args =
            get("DEMI_DPDK_EAL").map(|s| s.split_whitespace().map(str::to_owned).collect()).unwrap_or_default();
        let local_ipv4 = match get("DEMI_LOCAL_IPV4") {
            None => {
                return Err(Error::invalid(
                    "DEMI_LOCAL_IPV4 is not set (catnip needs its IPv4 address, e.g. 10.77.0.1)",
                ))
            }
            Some(s) => match s.trim().parse::<Ipv4Addr>() {
                Ok(a) if !a.is_unspecified() && !a.is_broadcast() && !a.is_multicast() => a,
                _ => return Err(Error::invalid(format!("DEMI_LOCAL_IPV4={s:?} is not a unicast IPv4 address"))),
            },
        };
        let local_mac = match get("DEMI_LOCAL_MAC") {
            None => None,
            Some(s) => match s.trim().parse::<EthernetAddress>() {
                Ok(m) if m.is_unicast() => Some(m),
                _ => return Err(Error::invalid(format!("DEMI_LOCAL_MAC={s:?} is not a unicast MAC address"))),
            },
        };
        let mtu = number(&get, "DEMI_MTU", 1500)?;
        if !(u64::from(MIN_MTU)..=u64::from(MAX_MTU)).contains(&mtu) {
            return Err(Error::invalid(format!("DEMI_MTU={mtu} is outside {MIN_MTU}..={MAX_MTU}")));
        }
        let port = match get("DEMI_DPDK_PORT") {
            None => None,
            Some(_) => Some(number(&get, "DEMI_DPDK_PORT", 0).and_then(|p| {
                u16::try_from(p).map_err(|_| Error::invalid(format!("DEMI_DPDK_PORT={p} is not a port id")))
            })?),
        };
        let mbufs = number(&get, "DEMI_DPDK_MBUFS", 8191)?;
        if !(512..=1 << 20).contains(&mbufs) {
            return Err(Error::invalid(format!("DEMI_DPDK_MBUFS={mbufs} is outside 512..=1048576")));
        }
        let arp_retries = number(&get, "DEMI_ARP_RETRIES", 3)?;
        if !(1..=100).contains(&arp_retries) {
            return Err(Error::invalid(format!("DEMI_ARP_RETRIES={arp_retries} is outside 1..=100")));
        }
        let arp_retry = number(&get, "DEMI_ARP_RETRY_MS", 1000)?;
        if !(1..=60_000).contains(&arp_retry) {
            return Err(Error::invalid(format!("DEMI_ARP_RETRY_MS={arp_retry} is outside 1..=60000")));
        }
        let arp_ttl = number(&get, "DEMI_ARP_TTL_S", 60)?;
        if !(1..=86_400).contains(&arp_ttl) {
            return Err(Error::invalid(format!("DEMI_ARP_TTL_S={arp_ttl} is outside 1..=86400")));
        }
        Ok(Config {
            eal_args,
            local_ipv4,
            local_mac,
            mtu: mtu as u16,
            port,
            link_wait: Duration::from_millis(number(&get, "DEMI_DPDK_LINK_WAIT_MS", 5000)?),
            mbufs: mbufs as u32,
            arp_retry: Duration::from_millis(arp_retry),
            arp_retries: arp_retries as u32,
            arp_ttl: Duration::from_secs(arp_ttl),
        })
    }
}

fn number(get: &impl Fn(&str) -> Option<String>, var: &str, default: u64) -> Result<u64, Error> {
    match get(var) {
        None => Ok(default),
        Some(s) => s.trim().parse().map_err(|_| Error::invalid(format!("{var}={s:?} is not a non-negative integer"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, Error> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_with_only_the_address() {
        let c = parse(&[("DEMI_LOCAL_IPV4", "10.77.0.1")]).unwrap();
        assert_eq!(c.local_ipv4, Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!((c.mtu, c.local_mac, c.port, c.arp_retries), (1500, None, None, 3));
        assert!(c.eal_args.is_empty());
    }

    #[test]
    fn new_has_the_environment_defaults() {
        let ip = Ipv4Addr::new(10, 77, 0, 1);
        assert_eq!(Config::new(ip), parse(&[("DEMI_LOCAL_IPV4", "10.77.0.1")]).unwrap());
    }

    #[test]
    fn eal_args_split_on_whitespace() {
        let c = parse(&[("DEMI_LOCAL_IPV4", "10.77.0.1"), ("DEMI_DPDK_EAL", " -l 0\t--no-huge\n--vdev=net_null0 ")])
            .unwrap();
        assert_eq!(c.eal_args, ["-l", "0", "--no-huge", "--vdev=net_null0"]);
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        let ip = ("DEMI_LOCAL_IPV4", "10.77.0.1");
        let cases: [&[(&str, &str)]; 10] = [
            &[],
            &[("DEMI_LOCAL_IPV4", "10.77.0")],
            &[("DEMI_LOCAL_IPV4", "255.255.255.255")],
            &[ip, ("DEMI_LOCAL_MAC", "ff:ff:ff:ff:ff:ff")],
            &[ip, ("DEMI_LOCAL_MAC", "02:00")],
            &[ip, ("DEMI_MTU", "100")],
            &[ip, ("DEMI_MTU", "abc")],
            &[ip, ("DEMI_DPDK_PORT", "70000")],
            &[ip, ("DEMI_ARP_RETRIES", "0")],
            &[ip, ("DEMI_DPDK_MBUFS", "-1")],
        ];
        for vars in cases {
            let e = parse(vars).unwrap_err();
            assert_eq!(e.errno, libc::EINVAL);
            let var = vars.last().map_or("DEMI_LOCAL_IPV4", |(k, _)| k);
            assert!(e.message.contains(var), "{:?} -> {}", vars, e.message);
            assert!(!e.message.contains('\n'));
        }
    }
}
