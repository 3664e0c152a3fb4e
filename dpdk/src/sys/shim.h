/* The DPDK surface catnip uses: the real functions (bindgen reads their
 * declarations from the rte headers) and shim_* wrappers for what DPDK only
 * offers as static-inline functions or macros (defined in shim.c). */
#ifndef CATNIP_SHIM_H
#define CATNIP_SHIM_H

#include <stdint.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

int shim_errno(void);

uint16_t shim_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t shim_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);

struct rte_mbuf *shim_pktmbuf_alloc(struct rte_mempool *mp);
void shim_pktmbuf_free(struct rte_mbuf *m);

/* Start of the mbuf's buffer and its size (headroom + data room). */
uint8_t *shim_mbuf_buf_addr(const struct rte_mbuf *m);
uint16_t shim_mbuf_buf_len(const struct rte_mbuf *m);
/* First data byte (rte_pktmbuf_mtod) and the first segment's data length. */
uint8_t *shim_mbuf_data(const struct rte_mbuf *m);
uint16_t shim_mbuf_data_len(const struct rte_mbuf *m);
uint32_t shim_mbuf_pkt_len(const struct rte_mbuf *m);
uint16_t shim_mbuf_nb_segs(const struct rte_mbuf *m);
/* Makes a single-segment packet of `len` bytes starting `data_off` bytes
 * into the buffer; 0 on success, -EINVAL if that does not fit. */
int shim_mbuf_set_data(struct rte_mbuf *m, uint16_t data_off, uint16_t len);
uint16_t shim_mbuf_refcnt_read(const struct rte_mbuf *m);
void shim_mbuf_refcnt_update(struct rte_mbuf *m, int16_t delta);
/* Atomically takes a second reference if the caller's is the only one:
 * 1 on success (refcnt 1 -> 2), 0 if someone else holds a reference. */
int shim_mbuf_claim(struct rte_mbuf *m);
/* RTE_PKTMBUF_HEADROOM: where rte_pktmbuf_alloc puts the first data byte. */
uint16_t shim_pktmbuf_headroom_default(void);

/* Checksum offload: what the port offers, and the per-packet flags. */
uint64_t shim_rx_offload_ipv4_cksum(void);
uint64_t shim_tx_offload_ipv4_cksum(void);
/* 1 good, -1 bad, 0 unknown (check in software). */
int shim_mbuf_rx_ipv4_cksum_status(const struct rte_mbuf *m);
void shim_mbuf_tx_ipv4_cksum(struct rte_mbuf *m, uint8_t l2_len, uint8_t l3_len);

/* 1 if the link is up, 0 if down, negative errno on failure. */
int shim_link_up(uint16_t port);

#endif
