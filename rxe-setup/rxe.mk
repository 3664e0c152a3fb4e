# Make targets of the soft-RoCE test bed; `include rxe-setup/rxe.mk` from the
# top-level Makefile. Paths are taken from this file's own location, so the
# include works from any directory and under `make -C`.
#
#   make rxe-deps    install qemu, busybox-static, rdma-core tools, perftest...
#   make test-rxe    rxe-setup's test suite (seven short VM boots, 2-3 min on TCG)
#   make bench-rxe   ib_send_lat -R / ib_send_bw -R across rxe0/rxe1, one boot

RXE_SETUP_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

.PHONY: rxe-deps test-rxe bench-rxe

rxe-deps:
	@$(RXE_SETUP_DIR)/install-deps

test-rxe: rxe-deps
	$(RXE_SETUP_DIR)/tests/run.sh

bench-rxe: rxe-deps
	$(RXE_SETUP_DIR)/bench.sh
