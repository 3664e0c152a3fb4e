# demi: build, test, demo, install. See README.md.
SHELL := /bin/bash
PREFIX ?= /usr/local
CARGO ?= cargo
BUILD := build
CFLAGS_TEST := -std=c11 -Wall -Wextra -Werror -Wpedantic -O1 -g
DEPS_CORE := build-essential pkg-config iproute2 procps python3
# catmint (RDMA): rdma-core headers and libraries (rdma-sys runs bindgen).
DEPS_CATMINT := libibverbs-dev librdmacm-dev libclang-dev ibverbs-providers
# catnip (DPDK): bindings and tests (veth/netns tools, ping, nftables for loss).
DEPS_CATNIP := libdpdk-dev libclang-dev pkg-config ethtool iputils-ping nftables
# The tests: memcheck of demi ping/echo over catmint in the RDMA suite.
DEPS_TEST := valgrind
# The man pages: pandoc writes them from man/*.md; man-db (with groff) reads
# them, and tests/man_pages.rs checks that they render.
DEPS_DOCS := pandoc man-db graphviz
# The preload's tests: unmodified servers and their clients (make test-preload).
DEPS_PRELOAD := redis-server redis-tools memcached libmemcached-tools sockperf
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

.PHONY: test-preload test-catnip bench-catnip bench-engine test-rdma bench-rdma bench-cost bench-preload
.PHONY: all deps build test test-rust test-c demo examples install install-files install-man bench clean fmt lint man

all: build examples

deps:
	@scripts/install-deps $(DEPS_CORE) $(DEPS_CATMINT) $(DEPS_CATNIP) $(DEPS_TEST) $(DEPS_DOCS) $(DEPS_PRELOAD)
	@command -v cargo >/dev/null || { echo "cargo is missing: install Rust with rustup (https://rustup.rs)"; exit 1; }

build: deps
	$(CARGO) build --release --all-targets

examples: build
	@mkdir -p $(BUILD)/examples
	for ex in tcp-pingpong udp-pingpong; do \
	  cc $(CFLAGS_TEST) -Iinclude examples/c/$$ex.c -o $(BUILD)/examples/$$ex \
	     -Ltarget/release -ldemi -Wl,-rpath,$(CURDIR)/target/release || exit 1; \
	done

test: build examples test-catnip
	$(CARGO) test --release -p demi -p catmint -p demi-cli -- --test-threads=2
	$(MAKE) test-preload
	$(MAKE) test-rxe
	$(MAKE) test-rdma
	$(MAKE) fuzz-smoke FUZZ_SMOKE_SECS=5
	@if $(CARGO) clippy --version >/dev/null 2>&1 && $(CARGO) fmt --version >/dev/null 2>&1; then \
	  $(MAKE) lint fuzz-lint; \
	else \
	  echo "make test: LINT NOT RUN: this toolchain has no clippy/rustfmt (rustup component add clippy rustfmt)"; \
	fi
	@echo "make test: all suites passed"

# The tour: what the build and the soft-RoCE VM need, the build, then a
# short `demi ping` over catnap, catnip (memif) and catmint (soft-RoCE in
# rxe-run), and one latency table.
demo: build
	@rxe-setup/install-deps
	@scripts/demo

install: build install-files

# The man pages, from man/*.md (pandoc, man/man.lua): build/man/man1/demi.1
# and build/man/man3/demi_<call>.3; only pages whose source changed are
# rebuilt.
man:
	@scripts/man-pages $(BUILD)/man $(VERSION)

# The copying half of install, without building: tests/c_abi.rs runs it from
# inside `cargo test`, where a nested cargo build would wait on cargo's lock.
# The man pages are made here (pandoc, not cargo).
install-files: man install-man
	@test -f target/release/libdemi.so -a -f target/release/libdemi.a || \
	  { echo "install-files: target/release/libdemi.{so,a} missing: run make build first"; exit 1; }
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include/demi $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 0644 target/release/libdemi.a $(DESTDIR)$(PREFIX)/lib/
	install -m 0755 target/release/libdemi.so $(DESTDIR)$(PREFIX)/lib/
	install -m 0644 include/demi/*.h $(DESTDIR)$(PREFIX)/include/demi/
	if [ -f target/release/libdemi_preload.so ]; then \
	  install -m 0755 target/release/libdemi_preload.so $(DESTDIR)$(PREFIX)/lib/; fi
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|' \
	    -e 's|@LIBS_PRIVATE@|$(LIBS_PRIVATE)|' demi.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/demi.pc

# docs/architecture.png from docs/architecture.dot (graphviz's dot; make deps
# installs it). The PNG is committed, so only a change to the .dot needs it.
.PHONY: architecture
architecture:
	dot -Tpng -Gdpi=110 docs/architecture.dot -o docs/architecture.png

# The man pages alone, into PREFIX/share/man (tests/man_pages.rs).
install-man: man
	install -d $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man3 $(DESTDIR)$(PREFIX)/share/man/man7
	install -m 0644 $(BUILD)/man/man1/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 0644 $(BUILD)/man/man3/*.3 $(DESTDIR)$(PREFIX)/share/man/man3/
	install -m 0644 $(BUILD)/man/man7/*.7 $(DESTDIR)$(PREFIX)/share/man/man7/

# What a static link of libdemi.a needs besides it: the system libraries the
# shared library was linked with (they follow the cargo features built, e.g.
# DPDK for catnip and rdma-core for catmint), as -l flags for demi.pc.
LIBS_PRIVATE = $(shell readelf -d target/release/libdemi.so | sed -n 's/.*(NEEDED).*\[lib\(.*\)\.so.*\]/-l\1/p' | grep -v '^-lld-linux' | tr '\n' ' ')

# Every benchmark in one run (about 12 minutes on 2 cores, root for DPDK and
# namespaces, one rxe-run VM boot): writes docs/BENCHMARKS.md and its plots,
# scripts/bench-rdma's section included. `make bench-engine` is the engine
# bench alone.
bench: build
	@scripts/install-deps fonts-dejavu-core
	@rxe-setup/install-deps
	$(CARGO) build --release --example bench-suite --example catnip-bench --example rdma-bench --bin demi
	target/release/examples/bench-suite
	scripts/bench-cost --no-build --update-docs
	@scripts/install-deps $(DEPS_PRELOAD)
	scripts/bench-preload --no-build --update-docs

# Instructions per message (callgrind, counted, not timed): catnap and the
# engine on the host, catmint next to perftest in one rxe-run boot; prints
# its section of docs/BENCHMARKS.md (`--update-docs` writes it there).
bench-cost: build examples
	scripts/bench-cost --no-build

# Unmodified programs over RDMA (issue 13): redis-benchmark SET/GET at -c 1
# and -c 16 and sockperf ping-pong p50/p99, three ways over the same veth in
# one rxe-run boot: kernel TCP, rsockets' librspreload.so (librdmacm1, from
# rxe-deps) and demi's preload on catmint; prints its section of
# docs/BENCHMARKS.md (`scripts/bench-preload --update-docs` writes it there).
bench-preload: build rxe-deps
	@scripts/install-deps $(DEPS_PRELOAD)
	scripts/bench-preload --no-build

bench-engine: build
	$(CARGO) bench --bench engine

fmt:
	$(CARGO) fmt --all

# fmt, clippy, rustdoc (warnings are errors), a `// SAFETY:` comment at
# every unsafe site (macro call sites included: scripts/check-safety), and
# the C headers: regenerated, they must equal the committed ones.
lint: header
	$(CARGO) fmt --all -- --check
	scripts/check-safety
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --release --no-deps --workspace
	@git diff --exit-code -- include/ || { echo "make lint: include/ is not what make header generates from src/ffi: commit the regenerated headers"; exit 1; }

# The C headers: include/demi/{types,libos,sga,wait}.h are generated from
# src/ffi/{types,calls,sga,wait}.rs by cbindgen, one Rust module per header
# (configs in include/cbindgen/); include/demi/cc.h, the compiler macros, is
# written by hand. `make header` regenerates them; `make header-tools`
# installs the pinned cbindgen with cargo when the right version is missing.
CBINDGEN ?= cbindgen
CBINDGEN_VERSION ?= 0.29.4
HEADERS := types:types libos:calls sga:sga wait:wait
.PHONY: header header-tools

header-tools:
	@$(CBINDGEN) --version 2>/dev/null | grep -qx 'cbindgen $(CBINDGEN_VERSION)' || \
	  $(CARGO) install --locked cbindgen --version $(CBINDGEN_VERSION)

header: header-tools
	@for pair in $(HEADERS); do \
	  h=$${pair%%:*}; src=$${pair##*:}; \
	  $(CBINDGEN) --quiet --config include/cbindgen/$$h.toml --output include/demi/$$h.h src/ffi/$$src.rs || exit 1; \
	done

clean:
	$(CARGO) clean
	rm -rf $(BUILD)

# libdemi_preload.so and `demi run` on the host (catnap): tests/c/preload_edges.c
# on the kernel and under the preload, then unmodified redis-server/cli/benchmark,
# memcached with libmemcached's tools, and sockperf (select, poll, epoll; TCP
# and UDP), each under `demi run`; sockperf UDP over catnip/memif between two
# preloaded processes (root) (preload/tests/; about a minute and a half).
test-preload: build
	@scripts/install-deps $(DEPS_PRELOAD)
	$(CARGO) test --release -p demi-preload -- --test-threads=1

# The catnip crate's own tests (wire parsers, raw stack over memif); the
# libOS-level catnip tests run with the demi package's in `make test`.
test-catnip: build
	$(CARGO) test --release -p catnip -- --test-threads=2

# catnip vs kernel UDP: RTT p50/p99 and throughput (root: makes netns/veths).
bench-catnip: build
	@mkdir -p $(BUILD)
	$(CARGO) run --release --example catnip-bench -- --markdown $(BUILD)/catnip-bench.md

# catmint (RDMA) over soft-RoCE in ONE rxe-run boot (scripts/test-rdma): the
# catnap integration tests with LIBOS=catmint, tests/rdma.rs (--ignored),
# catmint/tests/rxe.rs, the C examples as two processes, the demi command,
# and demi ping/echo under valgrind (RC and UD). Ends "N passed, N failed".
test-rdma: examples rxe-deps
	scripts/test-rdma --no-build

# catmint next to perftest (ib_send_lat/bw -R) and rsockets on the same
# soft-RoCE link, one boot (scripts/bench-rdma: prints its Markdown section;
# `scripts/bench-rdma --update-docs` also refreshes it in docs/BENCHMARKS.md).
bench-rdma: build rxe-deps
	scripts/bench-rdma --no-build

# The soft-RoCE test bed: rxe-deps, test-rxe, bench-rxe.
include rxe-setup/rxe.mk

# Fuzzing: cargo-fuzz (libFuzzer) targets in fuzz/ (fuzz/README.md): the
# catnip wire parsers, catmint's wire formats and the C ABI's argument
# conversions. fuzz/ is a crate outside the workspace; cargo-fuzz wants
# nightly rustc features, which fuzz/run enables on stable with
# RUSTC_BOOTSTRAP=1. `make fuzz` gives each target FUZZ_SECS seconds (8.5
# minutes for 8 targets), `make fuzz-smoke` FUZZ_SMOKE_SECS (under 2); a cold
# build of fuzz/ adds about 5 minutes on 2 cores, and installing cargo-fuzz
# about 4. Both print runs, exec/s, coverage, corpus and crashes per target
# and fail on a crash (its input is kept in fuzz/artifacts/).
FUZZ_SECS ?= 60
FUZZ_SMOKE_SECS ?= 10
CARGO_FUZZ_VERSION ?= 0.13.2
.PHONY: fuzz fuzz-cargo fuzz-smoke fuzz-tools fuzz-lint

# `make fuzz`: both fuzzers, long.
fuzz: fuzz-cargo fuzz-abi

fuzz-cargo: fuzz-tools
	CARGO=$(CARGO) fuzz/run $(FUZZ_SECS)

fuzz-smoke: fuzz-tools
	CARGO=$(CARGO) fuzz/run $(FUZZ_SMOKE_SECS)

# cargo-fuzz from crates.io if it is missing; libfuzzer-sys compiles libFuzzer
# with the C++ compiler of build-essential, and the targets link rdma-core
# (catmint), so the build's own deps are needed too.
fuzz-tools: deps
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION)

# fmt and clippy for fuzz/, which `make lint` (the workspace) does not see.
fuzz-lint:
	cd fuzz && $(CARGO) fmt -- --check
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) clippy --all-targets -- -D warnings

# C-ABI sequence fuzzer (tests/c/fuzz_abi): seeded random sequences of every
# demi_* call, good and bad arguments, real data over loopback, each answer
# checked against man/ and the README's rules. `make test` runs a short
# budget (tests/c_abi.rs); this runs it long under ASan/UBSan, FUZZ_CALLS
# calls for each of FUZZ_SEEDS, and prints each run's figures. A violation
# stops with the seed, the call number and the last calls
# (build/fuzz-abi/fuzz_abi --seed N --calls N --trace replays a seed).
FUZZ_SEEDS ?= 1 2 3 4 5 6 7 8
FUZZ_CALLS ?= 500000
FUZZ_CFLAGS := -std=c11 -Wall -Wextra -Werror -Wpedantic -g -fsanitize=address,undefined \
  -fno-sanitize-recover=all -fno-omit-frame-pointer
.PHONY: fuzz-abi
fuzz-abi: build
	@mkdir -p $(BUILD)/fuzz-abi
	cc $(FUZZ_CFLAGS) -Iinclude tests/c/fuzz_abi/*.c -o $(BUILD)/fuzz-abi/fuzz_abi \
	   -Ltarget/release -ldemi -Wl,-rpath,$(CURDIR)/target/release -pthread
	@start=$$(date +%s); for s in $(FUZZ_SEEDS); do \
	  LIBOS=catnap RUST_LOG=off $(BUILD)/fuzz-abi/fuzz_abi --seed $$s --calls $(FUZZ_CALLS) \
	    || { echo "make fuzz-abi: seed $$s FAILED (see above)"; exit 1; }; \
	done; echo "make fuzz-abi: seeds $(FUZZ_SEEDS), $(FUZZ_CALLS) calls each, no violations ($$(( $$(date +%s) - start )) s)"
