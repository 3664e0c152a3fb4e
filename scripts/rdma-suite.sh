#!/bin/bash
# The catmint (RDMA) test suite. Runs where two soft-RoCE devices are up,
# i.e. inside ONE rxe-setup/rxe-run (scripts/test-rdma starts it; so does
# `make test-rdma`):
#
#   1. the catnap integration tests, unchanged, with LIBOS=catmint and
#      DEMI_TEST_IP=$DEMI_RXE_ADDR0;
#   2. tests/rdma.rs (its soft-RoCE tests are #[ignore]d elsewhere, so they
#      run here with --ignored), one at a time: some read device counters
#      and change the veth qdiscs;
#   3. catmint/tests/rxe.rs: the transport's own soft-RoCE tests;
#   4. the C examples as two processes with LIBOS=catmint: the server on
#      ADDR0, the client bound to ADDR1 (the veth packet counters must move)
#      and a client that binds nothing (rxe loopback);
#   5. the demi command: `demi devices`, and `demi ping` bound to ADDR1
#      against `demi echo` on ADDR0 over RC and UD.
#
# Inputs (set by scripts/test-rdma): DEMI_SUITE_CATNAP, DEMI_SUITE_RDMA and
# DEMI_SUITE_CATMINT (test binaries), DEMI_SUITE_EXAMPLES (directory of the
# built C examples).
# Prints "ok - NAME" / "not ok - NAME" per check, then "N passed, N failed";
# exits 1 if anything failed. Every process is bounded by timeout(1), and
# servers are reaped (by pid) before the next check.
set -uo pipefail

A0=${DEMI_RXE_ADDR0:-10.77.0.1}
A1=${DEMI_RXE_ADDR1:-10.77.0.2}
CATNAP=${DEMI_SUITE_CATNAP:?path of the catnap test binary}
RDMA=${DEMI_SUITE_RDMA:?path of the rdma test binary}
CATMINT=${DEMI_SUITE_CATMINT:?path of the catmint rxe test binary}
EXAMPLES=${DEMI_SUITE_EXAMPLES:?directory of the C examples}
LOGS=$(mktemp -d /tmp/rdma-suite.XXXXXX)
SERVER_PID=
PASSED=0
FAILED=0
FAILED_NAMES=()
SUITE_START=$SECONDS

cleanup() {
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null
    tc qdisc del dev veth0 root 2>/dev/null
    tc qdisc del dev veth1 root 2>/dev/null
    rm -rf "$LOGS"
}
trap cleanup EXIT

pass() {
    printf 'ok - %s\n' "$1"
    PASSED=$((PASSED + 1))
}
fail() {
    printf 'not ok - %s\n' "$1"
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$1")
    shift
    (($#)) && printf '    %s\n' "$@"
    return 0
}
# The last lines of a log, indented under a failure.
show() { sed 's/^/    | /' "$1" 2>/dev/null | tail -n "${2:-15}"; }
stage() { printf '# %s (%d s into the suite)\n' "$1" $((SECONDS - SUITE_START)); }
# DEMI_SUITE_ONLY=WORDS runs only the parts named (catnap, rdma, examples, demi);
# DEMI_SUITE_TESTS=WORDS only the tests whose names contain one of them.
want() { [[ -z ${DEMI_SUITE_ONLY:-} || " $DEMI_SUITE_ONLY " == *" $1 "* ]]; }

# Runs the tests of a libtest binary one at a time (each in its own process,
# bounded by its own time limit), one check per test. ARGS are passed to
# every run; "--ignored" also selects which tests to list.
#   libtest LABEL LIMIT BIN [ARGS...]
# Per-test limits come from LIMITS[name] (default LIMIT); the environment
# of the runs from TEST_ENV (VAR=VALUE words).
declare -A LIMITS
TEST_ENV=()
libtest() {
    local label=$1 limit=$2 bin=$3
    shift 3
    local list_args=()
    [[ " $* " == *" --ignored "* ]] && list_args=(--ignored)
    local names
    if ! names=$(env "${TEST_ENV[@]}" "$bin" --list "${list_args[@]}" 2>"$LOGS/$label-list" | sed -n 's/: test$//p'); then
        fail "$label: cannot list the tests" "$(show "$LOGS/$label-list")"
        return
    fi
    [[ -n $names ]] || fail "$label: no tests listed"
    local name
    for name in $names; do
        [[ $name == peer_process ]] && continue
        # DEMI_SUITE_TESTS=WORDS: only tests whose name contains one of them.
        if [[ -n ${DEMI_SUITE_TESTS:-} ]]; then
            local w keep=0
            for w in $DEMI_SUITE_TESTS; do [[ $name == *"$w"* ]] && keep=1; done
            ((keep)) || continue
        fi
        local log=$LOGS/$label-$name.log rc=0 t0=$SECONDS lim=${LIMITS[$name]:-$limit}
        # --nocapture: what a test printed survives even if it is killed.
        timeout -k 5 "$lim" env "${TEST_ENV[@]}" "$bin" --exact "$name" --nocapture "$@" >"$log" 2>&1 || rc=$?
        local took=$((SECONDS - t0))
        if ((rc == 0)) && grep -q "^test result: ok. 1 passed" "$log"; then
            pass "$label: $name (${took} s)"
        else
            local why="exit status $rc after $took s"
            ((rc == 124 || rc == 137)) && why="timed out after $lim s"
            fail "$label: $name" "$why" "$(grep -v '^ *[0-9]*: \|^ *at /rustc\|^ *at \./\|^note: \|^stack backtrace:\|^running 1 test\|^failures:\|^    [a-z_0-9]*$\|^$' "$log" |
                tail -n 25 | sed 's/^/| /')"
        fi
        # Tests remove the qdiscs they add; one killed by its time limit
        # cannot, so clean up for the next test (timeout(1) has already
        # signalled the test's whole process group, peers included).
        if tc qdisc show | grep -q netem; then
            ((rc == 124 || rc == 137)) || fail "$label: $name left a netem qdisc behind" "$(tc qdisc show | grep netem)"
            tc qdisc del dev veth0 root 2>/dev/null
            tc qdisc del dev veth1 root 2>/dev/null
        fi
    done
}

tx() { cat "/sys/class/net/$1/statistics/tx_packets"; }

# Waits (bounded) for a line in a server's log; fails if the server died.
wait_for_line() {
    local log=$1 pattern=$2 i
    for ((i = 0; i < 150; i++)); do
        grep -q "$pattern" "$log" 2>/dev/null && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

reap_server() {
    local rc=0
    wait "$SERVER_PID" || rc=$?
    SERVER_PID=
    return "$rc"
}

# start_server NAME LOG PATTERN CMD...: runs CMD (bounded) in the background
# as SERVER_PID, output to LOG, and waits for PATTERN in LOG. If it does not
# come, check NAME fails (with the log), the server is reaped, and this
# returns 1.
start_server() {
    local name=$1 log=$2 pattern=$3
    shift 3
    timeout -k 5 90 "$@" >"$log" 2>&1 &
    SERVER_PID=$!
    wait_for_line "$log" "$pattern" && return 0
    fail "$name" "the server did not start" "$(show "$log")"
    kill "$SERVER_PID" 2>/dev/null
    reap_server
    return 1
}

# One C example as two processes. bind is an address or "" (unbound:
# rxe loopback). wire=yes: veth1 must carry at least COUNT packets;
# wire=no: it must stay (nearly) quiet.
example_pair() {
    local ex=$1 port=$2 bind=$3 wire=$4 count=$5 size=$6
    local path="rxe loopback"
    [[ $wire == yes ]] && path="over the veth wire"
    local name="$ex: $count x $size B from ${bind:-an unbound client} to $A0 ($path)"
    local slog=$LOGS/$ex-$port-s clog=$LOGS/$ex-$port-c
    start_server "$name" "$slog" 'server \(listening\|ready\)' \
        env LIBOS=catmint "$EXAMPLES/$ex" server "$A0:$port" --idle 60 || return
    local before crc=0 src=0 args=(client "$A0:$port" --count "$count" --size "$size" --timeout 20)
    [[ -n $bind ]] && args+=(--bind "$bind")
    before=$(tx veth1)
    LIBOS=catmint timeout -k 5 90 "$EXAMPLES/$ex" "${args[@]}" >"$clog" 2>&1 || crc=$?
    local moved=$(($(tx veth1) - before))
    ((crc == 0)) || kill "$SERVER_PID" 2>/dev/null
    reap_server || src=$?
    local why=
    ((crc == 0)) || why+="client exit $crc; "
    ((src == 0)) || why+="server exit $src; "
    grep -q 'every byte verified' "$clog" || why+="the client did not report verified data; "
    if [[ $wire == yes ]] && ((moved < count)); then
        why+="veth1 sent only $moved packets; "
    elif [[ $wire == no ]] && ((moved >= count / 4)); then
        why+="veth1 sent $moved packets although the client took rxe loopback; "
    fi
    if [[ -z $why ]]; then
        pass "$name (veth1 tx +$moved packets; $(grep -A1 'p50' "$clog" | tail -n 1 | awk '{print "p50 " $3 " us, p99 " $4 " us"}'))"
    else
        fail "$name" "$why" "client:" "$(show "$clog")" "server:" "$(show "$slog")"
    fi
}

# ------------------------------------------------------------ the checks

stage "test bed"
links=$(rdma link show 2>&1)
if grep -q "state ACTIVE .*netdev veth0" <<<"$links" && grep -q "state ACTIVE .*netdev veth1" <<<"$links"; then
    pass "two ACTIVE soft-RoCE links on veth0 and veth1"
else
    fail "two ACTIVE soft-RoCE links on veth0 and veth1" "$links"
fi
# Resolve the neighbours once, as any host that has talked before would
# have (tests/rdma.rs checks the cold case itself).
if ping -c 1 -W 5 -I "$A1" "$A0" >"$LOGS/ping" 2>&1; then
    pass "ping from $A1 reaches $A0 (neighbour caches warm)"
else
    fail "ping from $A1 reaches $A0 (neighbour caches warm)" "$(show "$LOGS/ping")"
fi

if want catnap; then
    stage "catnap integration tests with LIBOS=catmint"
    TEST_ENV=(LIBOS=catmint "DEMI_TEST_IP=$A0")
    libtest catnap-on-catmint 60 "$CATNAP"
    TEST_ENV=()
fi

if want rdma; then
    stage "tests/rdma.rs (soft-RoCE tests)"
    LIMITS[integrity_under_load_10000_messages_over_16_connections]=240
    libtest rdma 90 "$RDMA" --ignored
fi

if want catmint; then
    stage "catmint/tests/rxe.rs (the transport's own soft-RoCE tests)"
    libtest catmint 60 "$CATMINT" --ignored
fi

if want examples; then
    stage "C examples, two processes"
    example_pair tcp-pingpong 7101 "$A1" yes 300 64
    example_pair tcp-pingpong 7102 "" no 300 64
    example_pair tcp-pingpong 7103 "$A1" yes 20 200000
    example_pair udp-pingpong 7104 "$A1" yes 300 64
    example_pair udp-pingpong 7105 "" no 300 64
fi

# 4. The demi command (src/bin/demi.rs) over catmint: `demi devices` sees
# both soft-RoCE devices; `demi echo` on ADDR0 and `demi ping` bound to
# ADDR1, stream (RC) and datagram (UD) sockets, over the veth wire.
DEMI=${DEMI_SUITE_DEMI:-$(dirname "$0")/../target/release/demi}
demi_ping() {
    local proto=$1 port=$2 slog=$LOGS/demi-echo-$1 clog=$LOGS/demi-ping-$1 crc=0 before moved
    local name="demi ping --libos catmint --proto $proto: 300 x 64 B from $A1 to $A0"
    start_server "$name" "$slog" 'listening on' \
        "$DEMI" echo --libos catmint --proto "$proto" --bind "$A0:$port" || return
    before=$(tx veth1)
    timeout -k 5 60 "$DEMI" ping --libos catmint --proto "$proto" --to "$A0:$port" --bind "$A1" \
        --size 64 --count 300 --timeout 20 --json >"$clog" 2>&1 || crc=$?
    moved=$(($(tx veth1) - before))
    kill "$SERVER_PID" 2>/dev/null
    reap_server
    if ((crc == 0 && moved >= 300)) && grep -q '"count":300' "$clog"; then
        pass "$name (veth1 tx +$moved; p50 $(sed -n 's/.*"p50":\([0-9.]*\).*/\1/p' "$clog") us)"
    else
        fail "$name" "status $crc, veth1 tx +$moved" "$(show "$clog")" "server:" "$(show "$slog")"
    fi
}
if want demi; then
    stage "the demi command over catmint"
    if "$DEMI" devices >"$LOGS/demi-devices" 2>&1 && grep -q 'ACTIVE .*on veth0' "$LOGS/demi-devices" &&
        grep -q 'ACTIVE .*on veth1' "$LOGS/demi-devices" && grep -q "::ffff:$A1" "$LOGS/demi-devices"; then
        pass "demi devices lists rxe0 and rxe1 (ACTIVE, their GIDs and netdevs)"
    else
        fail "demi devices lists rxe0 and rxe1 (ACTIVE, their GIDs and netdevs)" "$(show "$LOGS/demi-devices")"
    fi
    demi_ping tcp 7106
    demi_ping udp 7107
fi

stage "leftovers"
if tc qdisc show | grep -q netem; then
    fail "no netem qdisc left behind" "$(tc qdisc show)"
else
    pass "no netem qdisc left behind"
fi

stage "done"
if ((FAILED)); then
    printf 'failed:\n'
    printf '  %s\n' "${FAILED_NAMES[@]}"
fi
printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
((FAILED == 0))
