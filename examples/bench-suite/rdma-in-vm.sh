#!/bin/bash
# The RDMA half of `make bench`, run inside ONE rxe-setup/rxe-run (two
# soft-RoCE devices): catmint through `demi ping`/`demi stream` next to
# perftest (ib_send_lat -R, ib_send_bw -R) and rsockets (rstream), always
# from rxe1's side (10.77.0.2) to a server on rxe0's (10.77.0.1), so every
# packet crosses the veth pair, except for the runs named "loop": an
# unbound client, which rdma_cm puts on rxe0 itself (rxe's internal
# loopback, as `make bench-rxe` measures too). catmint's RC ping also runs
# with both ends busy-polling, besides demi's default wait (spin 50 µs,
# then sleep).
#
# Last, in the same boot, scripts/bench-rdma's interleaved rounds
# (rdma-bench next to perftest and rstream, medians and ranges), which the
# suite renders as the section "catmint (RDMA over soft-RoCE)".
#
# Inputs (environment, set by examples/bench-suite): BENCH_OUT (a folder
# shared with the host), BENCH_DEMI (the demi binary), BENCH_SIZES and
# BENCH_UD_SIZES (message sizes for the throughput runs), BENCH_PING_COUNT,
# BENCH_LAT_ITERS, BENCH_STREAM_SECS; for the rounds BENCH_RDMA_BIN (the
# rdma-bench binary, or empty to skip them), BENCH_REPEAT, BENCH_LAT_COUNT
# and BENCH_BW_BYTES (see scripts/bench-rdma).
#
# Output: for each run NAME, BENCH_OUT/NAME.out (its stdout) and NAME.err,
# and a line "NAME<TAB>STATUS<TAB>COMMAND" in BENCH_OUT/index.tsv (the
# server's command, when there is one, follows after " <- server: ");
# retried runs are named in BENCH_OUT/notes.txt. The rounds are the run
# named bench-rdma (their raw lines in BENCH_OUT/bench-rdma.out).
# Every process is bounded by timeout(1); servers are reaped by pid.
set -uo pipefail

OUT=${BENCH_OUT:?}
DEMI=${BENCH_DEMI:?}
SIZES=${BENCH_SIZES:-64 256 1024 4096 16384 65536 262144 1048576}
UD_SIZES=${BENCH_UD_SIZES:-64 256 1016}
PING_COUNT=${BENCH_PING_COUNT:-2000}
LAT_ITERS=${BENCH_LAT_ITERS:-2000}
SECS=${BENCH_STREAM_SECS:-2}
A0=${DEMI_RXE_ADDR0:-10.77.0.1}
A1=${DEMI_RXE_ADDR1:-10.77.0.2}
D0=${DEMI_RXE_DEV0:-rxe0}
D1=${DEMI_RXE_DEV1:-rxe1}
# shellcheck source-path=SCRIPTDIR source=../../rxe-setup/lib/rdma-helpers.sh
source "$(dirname "$(readlink -f "$0")")/../../rxe-setup/lib/rdma-helpers.sh"

cleanup() {
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null
    steer_off
    # Kernel lines about crashed processes (traps, segfaults), if any.
    dmesg 2>/dev/null | grep -E 'traps:|segfault|general protection|invalid opcode' >"$OUT/kernel-traps.txt"
}
trap cleanup EXIT
: >"$OUT/index.tsv"
: >"$OUT/notes.txt"

# A crash (twice seen here: SIGILL, SIGTRAP in demi ping, never reproduced
# on demand) must leave evidence: a core in the shared folder and the
# kernel's trap line with the faulting address. This is the guest's own
# kernel, booted for this run, so changing its settings touches nothing else.
mkdir -p "$OUT/cores"
echo "$OUT/cores/core.%e.%p" >/proc/sys/kernel/core_pattern 2>/dev/null || note "bench-rdma: cannot set core_pattern"
echo 1 >/proc/sys/debug/exception-trace 2>/dev/null || true
ulimit -c unlimited 2>/dev/null || true

note() { printf '%s\n' "$*" >&2; }

# client NAME LIMIT SERVER-DESCRIPTION CMD...: runs a client, records it.
# Soft-RoCE under a busy TCG guest now and then stalls a run; one retry
# tells such a hiccup from a real failure, and BENCH_OUT/notes.txt says so.
client() {
    local name=$1 limit=$2 server=$3 rc=0
    shift 3
    timeout -k 5 "$limit" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" || rc=$?
    if ((rc != 0 && ${#ECHO_ARGS[@]})); then
        local why
        why=$(grep -v '^ *$' "$OUT/$name.err" | tail -n 1)
        ((rc > 128 && rc != 137 && rc != 143)) && why+="${why:+; }killed by signal $((rc - 128)) ($(kill -l $((rc - 128))))"
        # A stalled demi echo stays stalled: retry against a fresh one.
        stop_server
        demi_server "$ECHO_NAME" "${ECHO_ARGS[@]}" || note "bench-rdma: demi echo did not restart"
        why+="; retried with a fresh demi echo"
        printf '%s: the first attempt failed (status %s: %s); retried once\n' "$*" "$rc" "$why" >>"$OUT/notes.txt"
        rc=0
        timeout -k 5 "$limit" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" || rc=$?
    fi
    printf '%s\t%s\t%s%s\n' "$name" "$rc" "$*" "${server:+ <- server: $server}" >>"$OUT/index.tsv"
    note "bench-rdma: $name: status $rc"
}

# A `demi echo` for the demi runs; waits for its "listening" line. Its
# arguments are kept so a failed run can be retried against a fresh one.
ECHO_NAME=
ECHO_ARGS=()
demi_server() {
    local log=$OUT/echo-$1.log
    ECHO_NAME=$1
    shift
    ECHO_ARGS=("$@")
    timeout -k 5 900 "$DEMI" echo --quiet "$@" >"$log" 2>&1 &
    SERVER_PID=$!
    local i
    for ((i = 0; i < 300; i++)); do
        grep -q 'listening on' "$log" && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

stop_server() {
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null
    reap_server 2>/dev/null || true
}
# After the demi part: no demi echo to restart.
forget_server() {
    stop_server
    ECHO_ARGS=()
}

# Pushes in flight for a stream of SIZE-byte messages: fewer for big ones,
# so the last window drains quickly when the time is up.
window() {
    local w=$((4194304 / $1))
    ((w > 32)) && w=32
    ((w < 2)) && w=2
    echo "$w"
}

ping -c 1 -W 5 -I "$A1" "$A0" >/dev/null 2>&1 # warm the neighbour caches

# ---- catmint through demi, RC (stream sockets) then UD (datagrams)
for kind in rc ud; do
    if [[ $kind == rc ]]; then proto=tcp sizes=$SIZES port=7100; else proto=udp sizes=$UD_SIZES port=7101; fi
    scmd="demi echo --libos catmint --proto $proto --bind $A0:$port"
    if ! demi_server "$kind" --libos catmint --proto "$proto" --bind "$A0:$port"; then
        note "bench-rdma: demi echo ($kind) did not start: $(tail -n 2 "$OUT/echo-$kind.log")"
        cp "$OUT/echo-$kind.log" "$OUT/catmint-$kind-ping.err"
        printf '%s\t%s\t%s\n' "catmint-$kind-ping" 1 "$scmd" >>"$OUT/index.tsv"
        stop_server
        continue
    fi
    common=(--libos catmint --proto "$proto" --to "$A0:$port" --bind "$A1" --timeout 30 --json)
    client "catmint-$kind-ping" 300 "$scmd" "$DEMI" ping "${common[@]}" --size 64 --count "$PING_COUNT" --warmup 200
    if [[ $kind == rc ]]; then
        # Larger messages, and an unbound client (rxe0's internal loopback).
        for s in 4096 65536; do
            client "catmint-rc-ping-$s" 300 "$scmd" "$DEMI" ping "${common[@]}" --size "$s" \
                --count $((PING_COUNT / 4)) --warmup 50
        done
        client catmint-rc-loop-ping 300 "$scmd" "$DEMI" ping --libos catmint --to "$A0:$port" --timeout 30 --json \
            --size 64 --count "$PING_COUNT" --warmup 200
    fi
    for s in $sizes; do
        client "catmint-$kind-stream-$s" $((SECS + 120)) "$scmd" \
            "$DEMI" stream "${common[@]}" --size "$s" --time "$SECS" --window "$(window "$s")"
    done
    stop_server
done

# ---- catmint RC again with both ends busy-polling (no sleep in waits)
scmd="demi echo --libos catmint --bind $A0:7102 --spin-us 1000000"
if demi_server rc-busy --libos catmint --bind "$A0:7102" --spin-us 1000000; then
    client catmint-rc-busy-ping 300 "$scmd" "$DEMI" ping --libos catmint --to "$A0:7102" --bind "$A1" \
        --spin-us 1000000 --timeout 30 --json --size 64 --count "$PING_COUNT" --warmup 200
else
    cp "$OUT/echo-rc-busy.log" "$OUT/catmint-rc-busy-ping.err"
    printf '%s\t%s\t%s\n' catmint-rc-busy-ping 1 "$scmd" >>"$OUT/index.tsv"
fi
stop_server

forget_server

# ---- perftest over raw verbs (RC, rdma_cm); the steering rule sends its
# unbound client out through rxe1 (see rxe-setup/README.md)
# pair NAME STEER SERVER-CMD... -- CLIENT-CMD...: one server/client run of a
# tool whose server serves one client; one retry (new server) when the
# client fails or prints no result (perftest's bandwidth can come out 0.00
# when its clock calibration fails under TCG).
pair() {
    local name=$1 steer=$2 attempt
    shift 2
    local server=()
    while [[ $1 != -- ]]; do
        server+=("$1")
        shift
    done
    shift
    for attempt in 1 2; do
        [[ $steer == steer ]] && steer_on
        SERVER_TIMEOUT=300 start_server "$OUT/$name.server" "${server[@]}" ||
            note "bench-rdma: ${server[0]} server did not start"
        client "$name" 300 "${server[*]}" "$@"
        steer_off
        kill "$SERVER_PID" 2>/dev/null
        reap_server 2>/dev/null || true
        result_ok "$name" && return
        ((attempt == 1)) && printf '%s: the first attempt gave no result (%s); retried once\n' "$*" \
            "$(grep -hv '^[ -]*$' "$OUT/$name.err" "$OUT/$name.out" 2>/dev/null | tail -n 1)" >>"$OUT/notes.txt"
    done
}
# The run exited 0 and printed a non-zero figure.
result_ok() {
    [[ $(awk -F'\t' -v n="$1" '$1 == n { s = $2 } END { print s }' "$OUT/index.tsv") == 0 ]] || return 1
    case $1 in
        perftest-bw-*) grep -A1 '#bytes' "$OUT/$1.out" | tail -n 1 | awk '{ exit !($4 > 0) }' ;;
        perftest-*) grep -q '^ *[0-9]*, *[0-9.]*$' "$OUT/$1.out" ;;
        rstream-*) grep -q '^custom' "$OUT/$1.out" ;;
    esac
}
perftest() { # NAME TOOL ARGS...
    local name=$1 tool=$2
    shift 2
    pair "$name" steer "$tool" -R -d "$D0" "$@" -- "$tool" -R -d "$D1" "$@" "$A0"
}
perftest perftest-lat-64 ib_send_lat -s 64 -n "$LAT_ITERS" -U -F
for s in 4096 65536; do
    perftest "perftest-lat-$s" ib_send_lat -s "$s" -n $((LAT_ITERS / 4)) -U -F
done
# rxe0's internal loopback: no steering, both ends on rxe0.
lat=(ib_send_lat -R -d "$D0" -s 64 -n "$LAT_ITERS" -U -F)
pair perftest-loop-lat-64 nosteer "${lat[@]}" -- "${lat[@]}" "$A0"
# Iterations, not -D: perftest's duration mode reports 0 for large messages
# that take a while each. About 16 MiB per run, 20 to 5000 messages.
for s in $SIZES; do
    n=$((16777216 / s))
    ((n > 5000)) && n=5000
    ((n < 20)) && n=20
    perftest "perftest-bw-$s" ib_send_bw -s "$s" -n "$n" -F
done

# ---- rsockets: rstream ping-pong (-C 1) and streaming (-C N one way, then back)
rstream_pair() { # NAME ARGS...
    local name=$1
    shift
    pair "$name" nosteer rstream -b "$A0" "$@" -- rstream -s "$A0" -b "$A1" "$@"
}
rstream_pair rstream-lat-64 -S 64 -C 1 -I "$LAT_ITERS"
for s in $SIZES; do
    c=$((8388608 / s))
    ((c > 2000)) && c=2000
    ((c < 4)) && c=4
    rstream_pair "rstream-bw-$s" -S "$s" -C "$c" -I 1
done
# ---- scripts/bench-rdma's rounds: its own section of the document, measured
# here rather than in a second boot
if [[ -n ${BENCH_RDMA_BIN:-} ]]; then
    client bench-rdma 1500 "" "$(readlink -f "$(dirname "$(readlink -f "$0")")/../../scripts/bench-rdma")" --guest
fi
note "bench-rdma: done"
