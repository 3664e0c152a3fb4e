//! catnip: a DPDK Ethernet port with a small ARP/IPv4/ICMP/UDP stack.
pub mod sys;
