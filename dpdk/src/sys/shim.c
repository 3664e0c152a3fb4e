/* Real symbols for DPDK's static-inline functions and macros, so Rust can
 * call them. Each wrapper is a one-liner; the rules that make the calls safe
 * live on the Rust side (src/sys/mod.rs). */
#include "shim.h"

int shim_errno(void) { return rte_errno; }

uint16_t shim_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
    return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t shim_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
    return rte_eth_tx_burst(port, queue, pkts, n);
}

struct rte_mbuf *shim_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }

void shim_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

uint8_t *shim_mbuf_buf_addr(const struct rte_mbuf *m) { return (uint8_t *)m->buf_addr; }

uint16_t shim_mbuf_buf_len(const struct rte_mbuf *m) { return m->buf_len; }

uint8_t *shim_mbuf_data(const struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, uint8_t *); }

uint16_t shim_mbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }

uint32_t shim_mbuf_pkt_len(const struct rte_mbuf *m) { return rte_pktmbuf_pkt_len(m); }

uint16_t shim_mbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }

int shim_mbuf_set_data(struct rte_mbuf *m, uint16_t data_off, uint16_t len)
{
    if ((uint32_t)data_off + len > m->buf_len || m->nb_segs != 1)
        return -EINVAL;
    m->data_off = data_off;
    m->data_len = len;
    m->pkt_len = len;
    return 0;
}

uint16_t shim_mbuf_refcnt_read(const struct rte_mbuf *m) { return rte_mbuf_refcnt_read(m); }

void shim_mbuf_refcnt_update(struct rte_mbuf *m, int16_t delta) { rte_mbuf_refcnt_update(m, delta); }

int shim_mbuf_claim(struct rte_mbuf *m)
{
    uint16_t only_one = 1;
    return __atomic_compare_exchange_n(&m->refcnt, &only_one, 2, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

uint16_t shim_pktmbuf_headroom_default(void) { return RTE_PKTMBUF_HEADROOM; }

uint64_t shim_rx_offload_ipv4_cksum(void) { return RTE_ETH_RX_OFFLOAD_IPV4_CKSUM; }

uint64_t shim_tx_offload_ipv4_cksum(void) { return RTE_ETH_TX_OFFLOAD_IPV4_CKSUM; }

int shim_mbuf_rx_ipv4_cksum_status(const struct rte_mbuf *m)
{
    switch (m->ol_flags & RTE_MBUF_F_RX_IP_CKSUM_MASK) {
    case RTE_MBUF_F_RX_IP_CKSUM_GOOD:
        return 1;
    case RTE_MBUF_F_RX_IP_CKSUM_BAD:
        return -1;
    default:
        return 0;
    }
}

void shim_mbuf_tx_ipv4_cksum(struct rte_mbuf *m, uint8_t l2_len, uint8_t l3_len)
{
    m->ol_flags |= RTE_MBUF_F_TX_IPV4 | RTE_MBUF_F_TX_IP_CKSUM;
    m->l2_len = l2_len;
    m->l3_len = l3_len;
}

int shim_link_up(uint16_t port)
{
    struct rte_eth_link link;
    int rc = rte_eth_link_get_nowait(port, &link);
    if (rc < 0)
        return rc;
    return link.link_status == RTE_ETH_LINK_UP;
}
