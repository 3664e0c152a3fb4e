# shellcheck shell=bash
# Helpers for scripts that run rdma_cm tools inside rxe-run (the tests and
# the benchmark): a bounded server start, reaping, the packet counters that
# prove traffic crossed the veth wire, and steering of unbound clients.
# Expects A0, A1, D0, D1 (addresses and devices) to be set.

SERVER_PID=

# ---- counters: what went over the veth wire and what each rxe sent
declare -A C
read_counters() {
    C[v0]=$(<"/sys/class/net/veth0/statistics/tx_packets")
    C[v1]=$(<"/sys/class/net/veth1/statistics/tx_packets")
    C[r0]=$(<"/sys/class/infiniband/$D0/ports/1/hw_counters/sent_pkts")
    C[r1]=$(<"/sys/class/infiniband/$D1/ports/1/hw_counters/sent_pkts")
}
declare -A B
snap() {
    read_counters
    local k
    for k in "${!C[@]}"; do B[$k]=${C[$k]}; done
}
# The client side (rxe1) must have sent packets and veth1 must have carried
# at least as many; the server side likewise on rxe0/veth0. If the traffic
# had taken rxe's internal loopback, the veth counters would stay still.
# Sets WIRE to a one-line summary for the caller to print.
wire_ok() {
    read_counters
    local r1=$((C[r1] - B[r1])) v1=$((C[v1] - B[v1])) r0=$((C[r0] - B[r0])) v0=$((C[v0] - B[v0]))
    # shellcheck disable=SC2034 # read by the sourcing script
    WIRE="rxe1 sent $r1, veth1 tx $v1; rxe0 sent $r0, veth0 tx $v0"
    ((r1 >= 2 && v1 >= r1 && r0 >= 1 && v0 >= r0))
}

# Wait (bounded) until an rdma_cm id is listening, so the client does not
# race the server's start.
wait_listen() {
    local i
    for ((i = 0; i < 100; i++)); do
        rdma resource show cm_id 2>/dev/null | grep -q 'state LISTEN' && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

start_server() {
    local log=$1
    shift
    timeout "${SERVER_TIMEOUT:-60}" "$@" >"$log" 2>&1 &
    SERVER_PID=$!
    wait_listen
}

# Returns the server's exit status (timeout(1) bounds it).
reap_server() {
    local rc=0
    wait "$SERVER_PID" || rc=$?
    SERVER_PID=
    return "$rc"
}

# perftest 4.5 gives rdma_cm no source address with -R, so its client would
# take rxe0's internal loopback. While this rule is in place, an unbound
# connection to A0 leaves through veth1 from A1, i.e. from rxe1's side.
steer_on() { ip rule add pref 9 to "$A0" iif lo lookup 100; }
steer_off() { ip rule del pref 9 2>/dev/null || true; }
