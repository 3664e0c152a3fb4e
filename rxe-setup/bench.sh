#!/bin/bash
# Raw-verbs baseline on the soft-RoCE test bed (`make bench-rxe`): perftest's
# ib_send_lat -R and ib_send_bw -R between rxe1 (client, 10.77.0.2) and rxe0
# (server, 10.77.0.1), several message sizes, all inside ONE VM boot, printed
# as a table. Later benchmarks of the libOS can run beside it on the same link.
#
# Usage: rxe-setup/bench.sh [--markdown] [--vm]
# Environment (passed into the VM): RXE_BENCH_SIZES (default "64 4096 65536"),
# RXE_BENCH_LAT_ITERS / RXE_BENCH_BW_ITERS (default 1000),
# RXE_BENCH_PATHS (default "wire"; "wire loopback" adds rxe0's internal
# loopback, an unbound client, for comparison).
set -euo pipefail

HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
markdown=0
rxe_opts=()
for a in "$@"; do
    case $a in
        --markdown) markdown=1 ;;
        --vm) rxe_opts+=(--vm) ;;
        -h | --help)
            sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "bench.sh: unknown argument $a" >&2
            exit 2
            ;;
    esac
done

out=$(mktemp)
err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT

when=$(date -u '+%Y-%m-%d %H:%M UTC')
echo "bench.sh: running perftest in one rxe-run (a few minutes under TCG)..." >&2
rc=0
"$HERE/rxe-run" "${rxe_opts[@]}" --timeout 1500 -- "$HERE/lib/bench-in-vm.sh" \
    >"$out" 2>"$err" </dev/null || rc=$?
if ((rc != 0)); then
    cat "$err" >&2
    echo "bench.sh: rxe-run failed (status $rc)" >&2
    exit 1
fi

mode=$(sed -n 's/^rxe-run: mode: //p' "$err" | head -n 1)
boot=$(sed -n 's/^rxe-run: VM up in \([0-9.]*\) s.*/\1/p' "$err" | head -n 1)
perftest_ver=$(dpkg-query -W -f='${Version}' perftest 2>/dev/null || echo '?')

label() {
    case $1 in
        wire) echo "rxe1->rxe0 over veth" ;;
        loopback) echo "rxe0 loopback" ;;
        *) echo "$1" ;;
    esac
}

# Did a run's traffic cross the veth pair? (from the WIRE lines)
crossed() {
    local w
    w=$(awk -v p="$1" -v k="$2" -v s="$3" '$1 == "WIRE" && $2 == p && $3 == k && $4 == s' "$out")
    if [[ $w == *" none "* ]]; then echo no; else echo yes; fi
}

row() { # cells...
    if ((markdown)); then
        local line='|' c
        for c in "$@"; do line+=" $c |"; done
        printf '%s\n' "$line"
    else
        # shellcheck disable=SC2059 # ROWFMT is this script's own column layout
        printf "$ROWFMT" "$@"
    fi
}
rule() {
    if ((markdown)); then
        local cells=() i
        for ((i = 0; i < $1; i++)); do cells+=("---"); done
        local IFS='|'
        printf '|%s|\n' "${cells[*]}"
    fi
}

echo
echo "soft-RoCE baseline, $when"
echo "rxe-run: ${mode:-?}; VM boot ${boot:-?} s; perftest $perftest_ver (rdma_cm, -R)"
echo "server: ib_send_* -R -d rxe0 on 10.77.0.1; client: ib_send_* -R -d rxe1 10.77.0.1"
echo "ib_send_lat prints HALF the round trip (usec); ib_send_bw prints MB/s (10^6 bytes/s)."
echo "host: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) (other work on the host slows TCG)"
echo

ROWFMT='%-22s %8s %6s %9s %11s %9s %9s %10s %7s\n'
row path size iters t_min t_typical t_avg t_99% t_max wire
rule 9
awk '$1 == "RESULT" && $3 == "lat"' "$out" | while read -r _ p _ size iters tmin tmax ttyp tavg _ p99 _; do
    row "$(label "$p")" "$size B" "$iters" "$tmin" "$ttyp" "$tavg" "$p99" "$tmax" "$(crossed "$p" lat "$size")"
done
echo
ROWFMT='%-22s %8s %6s %14s %15s %12s %7s\n'
row path size iters "BW avg MB/s" "BW peak MB/s" "rate Mpps" wire
rule 7
awk '$1 == "RESULT" && $3 == "bw"' "$out" | while read -r _ p _ size iters peak avg rate; do
    row "$(label "$p")" "$size B" "$iters" "$avg" "$peak" "$rate" "$(crossed "$p" bw "$size")"
done

notes=$(grep -E '^(NOTE|ERROR) ' "$out" || true)
if [[ -n $notes ]]; then
    echo
    printf '%s\n' "$notes"
fi
# A failed run, or "wire" traffic that did not cross the veth, fails the bench.
if grep -q '^ERROR ' "$out" || grep -Eq '^WIRE wire .* none ' "$out"; then
    exit 1
fi
