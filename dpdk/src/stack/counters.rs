//! What the stack did and, for every way a frame can be dropped, how often.

/// Packet and drop counters. Every drop reason has its own field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames received from the port (and looped back to ourselves).
    pub rx_frames: u64,
    /// Frames handed to the port.
    pub tx_frames: u64,
    /// UDP datagrams delivered to a bound port.
    pub rx_datagrams: u64,
    /// UDP datagrams sent.
    pub tx_datagrams: u64,
    /// ARP requests answered.
    pub arp_replies_sent: u64,
    /// ARP requests sent (resolutions, retries and gratuitous).
    pub arp_requests_sent: u64,
    /// ICMP echo requests answered.
    pub icmp_echo_replies_sent: u64,
    /// ICMP port-unreachable messages sent.
    pub icmp_unreachable_sent: u64,

    /// Dropped: chained (multi-segment) frame.
    pub drop_multi_segment: u64,
    /// Dropped: shorter than an Ethernet header.
    pub drop_eth_truncated: u64,
    /// Dropped: destination MAC neither ours nor broadcast.
    pub drop_eth_not_for_us: u64,
    /// Dropped: EtherType we do not handle (IPv6, VLAN...).
    pub drop_eth_unknown_type: u64,
    /// Dropped: ARP packet too short or not Ethernet/IPv4.
    pub drop_arp_malformed: u64,
    /// Dropped: ARP request for another address, or an unknown operation.
    pub drop_arp_not_for_us: u64,
    /// Dropped: IPv4 header truncated, bad version, or inconsistent lengths.
    pub drop_ipv4_malformed: u64,
    /// Dropped: IPv4 header checksum wrong.
    pub drop_ipv4_bad_checksum: u64,
    /// Dropped: IPv4 destination is not our address.
    pub drop_ipv4_not_for_us: u64,
    /// Dropped: IPv4 fragment (no reassembly).
    pub drop_ipv4_fragment: u64,
    /// Dropped: TTL of zero.
    pub drop_ipv4_ttl_zero: u64,
    /// Dropped: IP protocol we do not handle (TCP...).
    pub drop_ipv4_unknown_protocol: u64,
    /// Dropped: ICMP message truncated or with a bad checksum.
    pub drop_icmp_malformed: u64,
    /// Dropped: ICMP message we do not act on (replies, errors...).
    pub drop_icmp_ignored: u64,
    /// Dropped: UDP header truncated, bad length, or port 0.
    pub drop_udp_malformed: u64,
    /// Dropped: UDP checksum wrong.
    pub drop_udp_bad_checksum: u64,
    /// Dropped: no socket bound to the destination port.
    pub drop_udp_no_socket: u64,
    /// Dropped: the port's transmit ring and our backlog were full.
    pub drop_tx_backlog_full: u64,
    /// Dropped: no mbuf left in the pool.
    pub drop_no_mbuf: u64,
    /// Datagrams failed because nobody answered ARP for their destination.
    pub drop_arp_unresolved: u64,
}
