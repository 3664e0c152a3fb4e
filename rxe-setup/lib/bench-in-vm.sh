#!/bin/bash
# The benchmark's inside half (bench.sh boots the VM and formats the table).
# Runs perftest's ib_send_lat -R and ib_send_bw -R, server on rxe0's side,
# for each message size, on two paths:
#   wire      client on rxe1's side (10.77.0.2), packets cross the veth pair
#   loopback  unbound client: rdma_cm picks rxe0 and rxe loops back inside
# (RXE_BENCH_PATHS picks them; "wire" by default) and prints one
# machine-readable line per run:
#   RESULT PATH lat SIZE ITERS T_MIN T_MAX T_TYPICAL T_AVG T_STDEV P99 P99.9
#   RESULT PATH bw  SIZE ITERS BW_PEAK BW_AVG MSGRATE
#   WIRE PATH TEST SIZE <counter summary>
# or "ERROR PATH TEST SIZE reason" (and "NOTE ..." for a retried run).
# Every run is bounded by timeout(1).
set -uo pipefail

A0=${DEMI_RXE_ADDR0:-10.77.0.1}
# shellcheck disable=SC2034 # used by rdma-helpers.sh
A1=${DEMI_RXE_ADDR1:-10.77.0.2}
D0=${DEMI_RXE_DEV0:-rxe0}
D1=${DEMI_RXE_DEV1:-rxe1}
SIZES=${RXE_BENCH_SIZES:-64 4096 65536}
# RXE_BENCH_TESTS: "lat bw" (default), or one of them.
TESTS=${RXE_BENCH_TESTS:-lat bw}
LAT_ITERS=${RXE_BENCH_LAT_ITERS:-1000}
BW_ITERS=${RXE_BENCH_BW_ITERS:-1000}
# "loopback" (unbound client, rxe0 to itself) is there for comparison but
# off by default: under TCG its bandwidth runs now and then stall.
PATHS=${RXE_BENCH_PATHS:-wire}
SERVER_TIMEOUT=120
LOGS=$(mktemp -d /tmp/rxe-bench.XXXXXX)
# shellcheck source=rdma-helpers.sh
source "$(dirname "$(readlink -f "$0")")/rdma-helpers.sh"

cleanup() {
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null
    steer_off
    rm -rf "$LOGS"
}
trap cleanup EXIT

# What went wrong, in one line: perftest's own error lines if any.
why() {
    local f lines
    for f in "$@"; do
        lines=$(grep -iE 'error|fail|unable|couldn|status' "$f" 2>/dev/null | tail -n 2)
        # Nothing that looks like an error: the last words it printed.
        [[ -n $lines ]] || lines=$(grep -v -- '-----' "$f" 2>/dev/null | tail -n 2)
        printf '%s: %s\n' "${f##*/}" "$lines"
    done | tr -s ' \t\n' ' '
}

# attempt PATH TOOL SIZE ITERS: one server/client pair; the client's output
# is left in $LOGS/c. Fails with a reason in REASON.
attempt() {
    local path=$1 tool=$2 size=$3 iters=$4 crc=0
    REASON=
    [[ $path == wire ]] && steer_on
    snap
    if ! start_server "$LOGS/s" "$tool" -R -d "$D0" -s "$size" -n "$iters"; then
        steer_off
        reap_server
        REASON="server did not start: $(why "$LOGS/s")"
        return 1
    fi
    timeout 90 "$tool" -R -d "$D1" -s "$size" -n "$iters" "$A0" >"$LOGS/c" 2>&1 || crc=$?
    steer_off
    reap_server || true
    # perftest now and then hangs in its rdma_cm teardown after printing the
    # figures; the measurement itself is complete then, so keep it.
    if ((crc == 124)) && grep -A1 -E '^ *#bytes' "$LOGS/c" | tail -n 1 | grep -qE '^ *[0-9]+ +[0-9]+ +[0-9.]+'; then
        echo "NOTE $path ${tool#ib_send_} $size client hung after printing its figures (killed at 90 s); figures kept"
        crc=0
    fi
    if ((crc != 0)); then
        REASON="client exit $crc: $(why "$LOGS/c" "$LOGS/s")"
        return 1
    fi
    # A stalled run can come out as "inf"/"nan" figures: not a result.
    if grep -A1 -E '^ *#bytes' "$LOGS/c" | tail -n 1 | grep -qiE 'inf|nan'; then
        REASON="perftest printed no finite figures"
        return 1
    fi
}

# one PATH TOOL SIZE ITERS: prints WIRE + RESULT, or ERROR. Soft-RoCE under
# a busy TCG guest now and then gives up on a QP (retries exhausted); one
# more attempt tells such a hiccup from a real failure.
one() {
    local path=$1 tool=$2 size=$3 iters=$4 kind line
    [[ $tool == ib_send_lat ]] && kind=lat || kind=bw
    if ! attempt "$path" "$tool" "$size" "$iters"; then
        echo "NOTE $path $kind $size first attempt failed ($REASON); retrying"
        if ! attempt "$path" "$tool" "$size" "$iters"; then
            echo "ERROR $path $kind $size $REASON"
            return
        fi
    fi
    # The figures are on the line under the column headers.
    line=$(grep -A1 -E '^ *#bytes' "$LOGS/c" | tail -n 1 | tr -s ' \t' ' ' | sed 's/^ //; s/ $//')
    if wire_ok; then
        echo "WIRE $path $kind $size $WIRE"
    else
        echo "WIRE $path $kind $size none ($WIRE)"
    fi
    echo "RESULT $path $kind $line"
}

for path in $PATHS; do
    if [[ " $TESTS " == *" lat "* ]]; then
        for size in $SIZES; do
            one "$path" ib_send_lat "$size" "$LAT_ITERS"
        done
    fi
    if [[ " $TESTS " == *" bw "* ]]; then
        for size in $SIZES; do
            one "$path" ib_send_bw "$size" "$BW_ITERS"
        done
    fi
done
