# The preload stage of scripts/rdma-suite.sh (sourced there; it uses the
# suite's pass/fail/show/start_server/reap_server/tx, LOGS, A0, A1, DEMI):
# unmodified programs from Debian's packages over catmint with
# `demi run --libos catmint`: servers on ADDR0 (rxe0), clients bound to
# ADDR1 (`--source`, rxe1) so their traffic crosses the veth pair.
#
#   - redis-server: no kernel listening socket (`ss -ltn`); redis-cli
#     SET/GET/INCR/LPUSH/LRANGE with the values checked; redis-benchmark's
#     default tests with -c 1 and -c 16; no CPU while idle; a clean SHUTDOWN
#     with demi's counters (libos=catmint) written at exit;
#   - memcached: memccp stores a file, memccat reads it back, memcslap runs;
#   - sockperf ping-pong over RC (TCP sockets) with -F s, -F p and -F e, and
#     over UD (UDP sockets) with -F e.
#
# DEMI_SUITE_ONLY=preload runs this stage alone.

PRE_RUN=("$DEMI" run --libos catmint)

# start_server with a time limit of its own (under TCG the benchmarks make
# the suite's 90 s too short): pre_start NAME LOG PATTERN LIMIT CMD...
pre_start() {
    local name=$1 log=$2 pattern=$3 limit=$4
    shift 4
    timeout -k 5 "$limit" "$@" >"$log" 2>&1 &
    SERVER_PID=$!
    wait_for_line "$log" "$pattern" 600 && return 0
    fail "$name" "the server did not start" "$(show "$log")"
    kill "$SERVER_PID" 2>/dev/null
    reap_server
    return 1
}
PRE_CLIENT=("$DEMI" run --libos catmint --source "$A1")

# No kernel socket listens on PORT (demi serves it).
no_kernel_listener() {
    ! ss -ltnH | awk '{print $4}' | grep -q ":$1\$"
}

pre_cli() {
    timeout -k 5 60 "${PRE_CLIENT[@]}" -- redis-cli -h "$A0" -p "$PORT" "$@" 2>>"$LOGS/pre-cli.err"
}

preload_redis() {
    PORT=7301
    local slog=$LOGS/pre-redis stats=$LOGS/pre-redis.stats name="preload: redis-server over catmint on $A0"
    pre_start "$name" "$slog" 'Ready to accept' 900 "${PRE_RUN[@]}" --stats "$stats" -- \
        redis-server --port "$PORT" --bind "$A0" --save '' --appendonly no --protected-mode no --dir "$LOGS" || return
    if no_kernel_listener "$PORT"; then
        pass "$name: ss -ltn shows no kernel listener on port $PORT"
    else
        fail "$name: ss -ltn shows no kernel listener on port $PORT" "$(ss -ltn)"
    fi
    local before why=
    before=$(tx veth1)
    [[ $(pre_cli set greeting "hello rdma") == OK ]] || why+="SET; "
    [[ $(pre_cli get greeting) == "hello rdma" ]] || why+="GET; "
    pre_cli incr n >/dev/null
    [[ $(pre_cli incr n) == 2 ]] || why+="INCR; "
    [[ $(pre_cli lpush l a b c) == 3 ]] || why+="LPUSH; "
    [[ $(pre_cli lrange l 0 -1 | tr '\n' ' ') == "c b a " ]] || why+="LRANGE; "
    # BGSAVE forks; the parent's RDMA connections and listener must survive.
    [[ $(pre_cli bgsave) == "Background saving started" ]] || why+="BGSAVE; "
    local i
    for ((i = 0; i < 100; i++)); do
        pre_cli info persistence | grep -q 'rdb_bgsave_in_progress:0' && break
        sleep 0.2
    done
    pre_cli info persistence | grep -q 'rdb_last_bgsave_status:ok' || why+="BGSAVE status; "
    [[ $(pre_cli get greeting) == "hello rdma" ]] || why+="GET after the fork; "
    local moved=$(($(tx veth1) - before))
    ((moved >= 10)) || why+="veth1 sent only $moved packets; "
    if [[ -z $why ]]; then
        pass "preload: redis-cli from $A1: SET/GET/INCR/LPUSH/LRANGE values, BGSAVE (a fork) (veth1 tx +$moved)"
    else
        fail "preload: redis-cli from $A1: SET/GET/INCR/LPUSH/LRANGE values" "$why" "$(show "$LOGS/pre-cli.err")"
    fi
    local c out
    for c in 1 16; do
        out=$LOGS/pre-bench-$c
        timeout -k 5 300 "${PRE_CLIENT[@]}" -- redis-benchmark -h "$A0" -p "$PORT" -c "$c" -n 200 --csv >"$out" 2>&1
        local rows bad
        rows=$(grep -c '^"[A-Z]' "$out")
        bad=$(grep '^"[A-Z]' "$out" | awk -F'"' '$4 + 0 <= 0' | wc -l)
        if ((rows >= 15 && bad == 0)) && grep -q '^"SET"' "$out" && grep -q '^"GET"' "$out"; then
            pass "preload: redis-benchmark -c $c: $rows default tests ($(grep -E '^"(SET|GET)"' "$out" | cut -d, -f1,2 | tr -d '"' | tr '\n' ' ')req/s)"
        else
            fail "preload: redis-benchmark -c $c: the default tests" "$rows rows, $bad without requests/s" "$(show "$out")"
        fi
    done
    # SERVER_PID is timeout(1)'s; demi run execs, so the server is its child.
    local rpid t0 t1 used
    rpid=$(pgrep -P "$SERVER_PID" redis-server | head -n 1)
    if [[ -n $rpid ]]; then
        t0=$(awk '{print $14 + $15}' "/proc/$rpid/stat")
        sleep 3
        t1=$(awk '{print $14 + $15}' "/proc/$rpid/stat")
    fi
    used=$((t1 - t0))
    if [[ -n $rpid ]] && ((used < 50)); then
        pass "preload: idle redis-server over catmint: $used ticks of CPU in 3 s"
    else
        fail "preload: idle redis-server over catmint uses no CPU" "pid ${rpid:-?}: $used ticks in 3 s"
    fi
    pre_cli shutdown nosave >/dev/null
    local rc=0
    reap_server || rc=$?
    if ((rc == 0)) && grep -q 'libos=catmint' "$stats" && ! grep -q 'accepted=0 ' "$stats"; then
        pass "preload: redis-server shut down cleanly; demi carried it ($(sed 's/^pid=[0-9]* //' "$stats"))"
    else
        fail "preload: redis-server shut down cleanly, counters written" "exit $rc" "$(cat "$stats" 2>/dev/null)" "$(show "$slog")"
    fi
}

preload_memcached() {
    local port=7302 slog=$LOGS/pre-memcached name="preload: memcached over catmint on $A0"
    pre_start "$name" "$slog" 'listening' 400 "${PRE_RUN[@]}" --log info -- \
        memcached -l "$A0" -p "$port" -U 0 -u nobody -t 2 || return
    local f=$LOGS/pre-value.txt why= got
    seq 1 5000 | sed 's/^/value line /' >"$f"
    timeout -k 5 60 "${PRE_CLIENT[@]}" -- memccp --servers="$A0:$port" "$f" >"$LOGS/pre-memccp" 2>&1 || why+="memccp failed; "
    got=$(timeout -k 5 60 "${PRE_CLIENT[@]}" -- memccat --servers="$A0:$port" pre-value.txt 2>"$LOGS/pre-memccat")
    [[ $got == "$(cat "$f")" ]] || why+="memccat returned ${#got} bytes, not the file; "
    timeout -k 5 120 "${PRE_CLIENT[@]}" -- memcslap --servers="$A0:$port" --concurrency=2 --execute-number=100 \
        >"$LOGS/pre-memcslap" 2>&1 || why+="memcslap failed; "
    no_kernel_listener "$port" || why+="a kernel socket listens on $port; "
    kill "$SERVER_PID" 2>/dev/null
    reap_server
    if [[ -z $why ]]; then
        pass "preload: memcached: memccp/memccat from $A1 ($(wc -c <"$f") bytes back intact), memcslap"
    else
        fail "preload: memcached: memccp/memccat/memcslap" "$why" "$(show "$LOGS/pre-memccat")" "$(show "$slog")"
    fi
}

# preload_sockperf PROTO(T|U) MUX(s|p|e) PORT
preload_sockperf() {
    local proto=$1 mux=$2 port=$3 feed=$LOGS/pre-feed-$3 slog=$LOGS/pre-sps-$3 clog=$LOGS/pre-spc-$3
    local name="preload: sockperf ping-pong $proto -F $mux from $A1 to $A0"
    printf '%s:%s:%s\n' "$proto" "$A0" "$port" >"$feed"
    pre_start "$name" "$slog" 'IP = ' 300 "${PRE_RUN[@]}" -- sockperf sr -f "$feed" -F "$mux" ||
        return
    sleep 1
    timeout -k 5 120 "${PRE_CLIENT[@]}" -- sockperf pp -f "$feed" -F "$mux" -t 2 -m 64 >"$clog" 2>&1
    local rc=$?
    kill -INT "$SERVER_PID" 2>/dev/null
    reap_server
    if ((rc == 0)) && grep -q 'Summary: Latency is' "$clog" && ! grep -q ERROR "$clog"; then
        pass "$name ($(grep -o 'Latency is [0-9.]* usec' "$clog"); p50 $(grep -o 'percentile 50.000 = *[0-9.]*' "$clog" | awk '{print $NF}') us)"
    else
        fail "$name" "client exit $rc" "$(show "$clog")" "server:" "$(show "$slog")"
    fi
}

# The kernel's TCP over the same veth, same boot: context for the figures
# above (TCG's timings swing with the host's load; compare within a run).
preload_kernel_baseline() {
    local port=7320 feed=$LOGS/pre-feed-k slog=$LOGS/pre-sps-k clog=$LOGS/pre-spc-k
    printf 'T:%s:%s\n' "$A0" "$port" >"$feed"
    pre_start "kernel sockperf server" "$slog" 'IP = ' 300 sockperf sr -f "$feed" -F e || return
    sleep 1
    timeout -k 5 120 sockperf pp -f "$feed" -F e -t 2 -m 64 --client_ip "$A1" >"$clog" 2>&1
    local rc=$?
    kill -INT "$SERVER_PID" 2>/dev/null
    reap_server
    if ((rc == 0)) && grep -q 'Summary: Latency is' "$clog"; then
        pass "baseline: kernel TCP sockperf ping-pong -F e from $A1 to $A0 ($(grep -o 'Latency is [0-9.]* usec' "$clog"); p50 $(grep -o 'percentile 50.000 = *[0-9.]*' "$clog" | awk '{print $NF}') us)"
    else
        fail "baseline: kernel TCP sockperf ping-pong from $A1 to $A0" "exit $rc" "$(show "$clog")"
    fi
}

preload_redis
preload_memcached
preload_sockperf T s 7311
preload_sockperf T p 7312
preload_sockperf T e 7313
preload_sockperf U e 7314
preload_kernel_baseline
