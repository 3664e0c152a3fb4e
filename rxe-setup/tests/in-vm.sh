#!/bin/bash
# The checks that need the two rxe devices, run inside ONE rxe-run (one VM
# boot). Prints "ok - NAME" or "not ok - NAME" (details indented below) for
# each check; tests/run.sh counts them. Every server and client is bounded
# by timeout(1), and servers are reaped before the next check starts.
set -uo pipefail

A0=${DEMI_RXE_ADDR0:-10.77.0.1}
A1=${DEMI_RXE_ADDR1:-10.77.0.2}
D0=${DEMI_RXE_DEV0:-rxe0}
D1=${DEMI_RXE_DEV1:-rxe1}
LOGS=$(mktemp -d /tmp/rxe-in-vm.XXXXXX)
# shellcheck source=../lib/rdma-helpers.sh
source "$(dirname "$(readlink -f "$0")")/../lib/rdma-helpers.sh"

cleanup() {
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null
    ip rule del pref 9 2>/dev/null
    tc qdisc del dev veth1 root 2>/dev/null
    rm -rf "$LOGS"
}
trap cleanup EXIT

pass() { printf 'ok - %s\n' "$1"; }
fail() {
    printf 'not ok - %s\n' "$1"
    shift
    (($#)) && printf '    %s\n' "$@"
    return 0
}
# Indent a log file under a failure line.
show() { sed 's/^/    | /' "$1" 2>/dev/null | tail -n 15; }

# ------------------------------------------------------------ the checks

# The plan: how many checks follow (run.sh fails the suite if some are missing).
echo "1..8"

if [[ $A0 == 10.77.0.1 && $A1 == 10.77.0.2 && $D0 == rxe0 && $D1 == rxe1 ]]; then
    pass "DEMI_RXE_ADDR0/ADDR1/DEV0/DEV1 are set"
else
    fail "DEMI_RXE_ADDR0/ADDR1/DEV0/DEV1 are set" "got $A0 $A1 $D0 $D1"
fi

links=$(rdma link show 2>&1)
if grep -q "^link $D0/1 state ACTIVE .*netdev veth0" <<<"$links" &&
    grep -q "^link $D1/1 state ACTIVE .*netdev veth1" <<<"$links"; then
    pass "rdma link shows $D0 (veth0) and $D1 (veth1) ACTIVE"
else
    fail "rdma link shows $D0 (veth0) and $D1 (veth1) ACTIVE" "$links"
fi

route=$(ip route get "$A0" from "$A1" 2>&1)
if [[ $route == *"dev veth1"* ]]; then
    pass "a packet from $A1 to $A0 is routed over veth1"
else
    fail "a packet from $A1 to $A0 is routed over veth1" "$route"
fi

# rping: RC, RDMA read/write; -V verifies the data; client bound to A1.
name="rping -V from $A1 to $A0 crosses the veth wire"
snap
if start_server "$LOGS/rping-s" rping -s -a "$A0" -C 5 -v; then
    crc=0
    timeout 30 rping -c -a "$A0" -I "$A1" -C 5 -S 64 -V -v >"$LOGS/rping-c" 2>&1 || crc=$?
    src=0
    reap_server || src=$?
    pings=$(grep -c 'ping data' "$LOGS/rping-c")
    if ((crc == 0 && src == 0 && pings == 5)) && wire_ok; then
        pass "$name ($pings pings; $WIRE)"
    else
        fail "$name" "client rc=$crc server rc=$src pings=$pings; ${WIRE:-}" "client:" "$(show "$LOGS/rping-c")" "server:" "$(show "$LOGS/rping-s")"
    fi
else
    fail "$name" "rping server did not start listening" "$(show "$LOGS/rping-s")"
    reap_server
fi

# ucmatose (RC) and udaddy (UD): rdma_cm connection, sends both ways.
for tool in ucmatose udaddy; do
    [[ $tool == ucmatose ]] && kind=RC || kind=UD
    name="$tool ($kind) from $A1 to $A0 exchanges data over the veth wire"
    WIRE=
    snap
    if start_server "$LOGS/$tool-s" "$tool" -b "$A0" -C 10; then
        crc=0
        timeout 30 "$tool" -s "$A0" -b "$A1" -C 10 >"$LOGS/$tool-c" 2>&1 || crc=$?
        src=0
        reap_server || src=$?
        if ((crc == 0 && src == 0)) &&
            grep -q 'data transfers complete' "$LOGS/$tool-c" &&
            grep -q 'data transfers complete' "$LOGS/$tool-s" && wire_ok; then
            pass "$name ($WIRE)"
        else
            fail "$name" "client rc=$crc server rc=$src; ${WIRE:-}" "client:" "$(show "$LOGS/$tool-c")" "server:" "$(show "$LOGS/$tool-s")"
        fi
    else
        fail "$name" "$tool server did not start listening" "$(show "$LOGS/$tool-s")"
        reap_server
    fi
done

# Runs ib_send_lat -R with the given extra arguments; sets LAT_LINE.
send_lat() {
    local log=$LOGS/lat-c
    LAT_LINE=
    steer_on
    if ! start_server "$LOGS/lat-s" ib_send_lat -R -d "$D0" "$@"; then
        steer_off
        reap_server
        return 1
    fi
    local crc=0
    timeout 60 ib_send_lat -R -d "$D1" "$@" "$A0" >"$log" 2>&1 || crc=$?
    steer_off
    reap_server || return
    ((crc == 0)) || return "$crc"
    grep -q "GID: .*:10:77:00:02" "$log" || return 1
    LAT_LINE=$(grep -A1 't_typical' "$log" | tail -n 1 | tr -s ' \t' ' ')
    [[ $LAT_LINE =~ ^\ ?[0-9]+\ [0-9]+\ [0-9.]+ ]]
}

# perftest under a busy TCG guest now and then stalls (prints "inf" or hangs
# in teardown): one retry, reported, tells that from a real failure.
send_lat_retry() {
    RETRIED=
    send_lat "$@" && return 0
    RETRIED=", after one retry"
    send_lat "$@"
}

name="ib_send_lat -R runs from $D1 ($A1) to $D0 ($A0) over the wire"
snap
WIRE=
if send_lat_retry -s 64 -n 200 && wire_ok; then
    pass "$name (bytes iters t_min t_max t_typical ...: $LAT_LINE; $WIRE$RETRIED)"
else
    fail "$name" "${WIRE:-}" "client:" "$(show "$LOGS/lat-c")" "server:" "$(show "$LOGS/lat-s")"
fi

# The point of the wire: netem on veth1 must slow this path down. 2 ms one
# way shows up as >= 1 ms in ib_send_lat's half-round-trip figure.
name="tc netem delay on veth1 slows the $A1 -> $A0 path"
if ! modprobe sch_netem 2>"$LOGS/netem" || ! tc qdisc add dev veth1 root netem delay 2ms 2>>"$LOGS/netem"; then
    fail "$name" "could not add netem:" "$(show "$LOGS/netem")"
else
    if send_lat_retry -s 64 -n 20; then
        typical=$(awk '{print $5}' <<<"$LAT_LINE")
        if awk -v t="$typical" 'BEGIN { exit !(t >= 1000) }'; then
            pass "$name (t_typical $typical us with 2 ms netem delay$RETRIED)"
        else
            fail "$name" "t_typical $typical us, expected >= 1000" "$LAT_LINE"
        fi
    else
        fail "$name" "ib_send_lat failed under netem" "$(show "$LOGS/lat-c")"
    fi
    tc qdisc del dev veth1 root 2>/dev/null
fi
