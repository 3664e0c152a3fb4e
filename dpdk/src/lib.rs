//! catnip: a DPDK Ethernet port with a small ARP/IPv4/ICMP/UDP stack.
#![deny(unsafe_code)]

pub mod sys;
pub mod wire;
