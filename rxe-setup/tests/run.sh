#!/bin/bash
# Test suite of rxe-setup (`make test-rxe`). Everything that needs the rxe
# devices runs inside ONE VM boot (tests/in-vm.sh); a few short extra boots
# check exit status, files, the time limits and failure reports, and host
# mode (inside a --bare VM). VMs run one after the other, never at once.
# Last line: "N passed, N failed"; exit status non-zero on any failure.
set -euo pipefail

HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
RXE_RUN=$HERE/../rxe-run
passed=0
failed=0
boots=()

work=$(mktemp -d "${TMPDIR:-/tmp}/rxe-tests.XXXXXX")
trap 'rm -rf "$work"' EXIT
# rxe-run's per-run folders go here, so leftovers (folders, or processes
# naming them) are easy to spot.
export TMPDIR=$work/tmp
mkdir -p "$TMPDIR"

pass() {
    passed=$((passed + 1))
    printf 'PASS  %s\n' "$1"
}
fail() {
    failed=$((failed + 1))
    printf 'FAIL  %s\n' "$1"
    shift
    if (($#)); then printf '      %s\n' "$@"; fi
}
check() { # check NAME CONDITION-STATUS [DETAILS...]
    local name=$1 ok=$2
    shift 2
    if ((ok == 0)); then pass "$name"; else fail "$name" "$@"; fi
}
# expect NAME DETAILS CMD...: passes if CMD succeeds; DETAILS shown if not.
expect() {
    local name=$1 details=$2
    shift 2
    if "$@"; then pass "$name"; else fail "$name" "$details"; fi
}
# Small predicates for expect.
file_is() { [[ $(cat "$1" 2>/dev/null) == "$2" ]]; }
has() { grep -q -- "$2" "$1"; }
rc_is() { [[ $(cat "$work/$1.rc") == "$2" ]]; }
# status_and_says NAME RC TEXT: rxe-run exited RC and its stderr says TEXT.
status_and_says() { rc_is "$1" "$2" && has "$work/$1.err" "$3"; }

# The boot time rxe-run printed (VM start to both devices ACTIVE).
note_boot() {
    local t
    t=$(sed -n 's/^rxe-run: VM up in \([0-9.]*\) s.*/\1/p' "$1" | tail -n 1)
    if [[ -n $t ]]; then boots+=("$t"); fi
}

# Nothing of ours may outlive an rxe-run: no process naming its run folder,
# no run folder left behind.
no_leftovers() {
    local procs dirs
    procs=$(pgrep -af -- "$TMPDIR/rxe-run" || true)
    dirs=$(find "$TMPDIR" -mindepth 1 -maxdepth 1 -name 'rxe-run.*' -print)
    [[ -z $procs && -z $dirs ]] || {
        printf '%s\n' "$procs" "$dirs"
        return 1
    }
}

# Runs the given rxe-run command line with stdin closed (as in CI); stdout,
# stderr and status land in $work/NAME.{out,err,rc}.
run_rxe() {
    local name=$1 rc=0
    shift
    "$@" <&- >"$work/$name.out" 2>"$work/$name.err" || rc=$?
    printf '%s\n' "$rc" >"$work/$name.rc"
    note_boot "$work/$name.err"
    return 0
}
rc_of() { cat "$work/$1.rc"; }

# Counts the "ok"/"not ok" lines of an in-VM script against its "1..N" plan.
tally_in_vm() {
    local label=$1 out=$2 rc=$3 plan line n=0
    plan=$(sed -n 's/^1\.\.\([0-9]*\)$/\1/p' "$out" | head -n 1)
    while IFS= read -r line; do
        case $line in
            "ok - "*)
                pass "$label: ${line#ok - }"
                n=$((n + 1))
                ;;
            "not ok - "*)
                fail "$label: ${line#not ok - }"
                n=$((n + 1))
                ;;
            "    "*) printf '      %s\n' "${line#    }" ;;
        esac
    done <"$out"
    check "$label: all ${plan:-?} checks ran and rxe-run exited 0" \
        $(((rc == 0) && (n == ${plan:-0}) ? 0 : 1)) "rc=$rc, $n of ${plan:-?} checks reported" \
        "$(tail -n 20 "$work/${label// /_}.err" 2>/dev/null)"
}

echo "== rxe-setup tests ($(date -u '+%Y-%m-%d %H:%M UTC'))"

# ------------------------------------------------------- no VM needed
rc=0
"$RXE_RUN" >/dev/null 2>&1 || rc=$?
check "rxe-run without a command exits 125" $((rc == 125 ? 0 : 1)) "rc=$rc"
rc=0
"$RXE_RUN" --timeout soon -- true >/dev/null 2>&1 || rc=$?
check "rxe-run --timeout with a non-number exits 125" $((rc == 125 ? 0 : 1)) "rc=$rc"

start=$SECONDS
rc=0
"$RXE_RUN" --prepare >"$work/prepare.log" 2>&1 || rc=$?
check "rxe-run --prepare builds or finds the VM cache ($((SECONDS - start)) s)" "$rc" "$(cat "$work/prepare.log")"

# ---------------------------------------- the device checks: one boot
echo "-- in-VM checks (one boot)"
label="in-VM"
rc=0
(cd "$HERE/../.." && "$RXE_RUN" --timeout 600 -- "$HERE/in-vm.sh") \
    <&- >"$work/in-vm.out" 2>"$work/in-VM.err" || rc=$?
note_boot "$work/in-VM.err"
tally_in_vm "$label" "$work/in-vm.out" "$rc"

# ------------------------------- status, files, environment, stdio
echo "-- exit status, files, environment (one boot)"
mkdir -p "$work/cwd" "$work/extra"
weird=$'two words\nnew "line" $HOME \\ \'q\' *'
# shellcheck disable=SC2016 # expanded by the shell inside the VM
inner='echo to-stdout; echo to-stderr >&2; printf %s "$RXE_TEST_WEIRD" >weird.txt
pwd >pwd.txt; env >env.txt; echo made >made.txt; echo extra >"$RXE_TEST_EXTRA/x.txt"; exit 7'
(cd "$work/cwd" && RXE_TEST_WEIRD=$weird RXE_TEST_EXTRA=$work/extra \
    run_rxe basic "$RXE_RUN" --share "$work/extra" -- bash -c "$inner")
# (run in a subshell for the cd: record its boot time out here)
note_boot "$work/basic.err"
rc=$(rc_of basic)
check "a failing command's exit status comes back (7)" $((rc == 7 ? 0 : 1)) "rc=$rc" "$(cat "$work/basic.err")"
expect "a file written inside appears on the host" "" file_is "$work/cwd/made.txt" made
expect "--share DIR is writable from inside too" "" file_is "$work/extra/x.txt" extra
expect "the command runs in the caller's working directory" "$(cat "$work/cwd/pwd.txt" 2>/dev/null)" \
    file_is "$work/cwd/pwd.txt" "$work/cwd"
expect "the caller's environment arrives byte for byte" "" file_is "$work/cwd/weird.txt" "$weird"
envok=0
for kv in DEMI_RXE_ADDR0=10.77.0.1 DEMI_RXE_ADDR1=10.77.0.2 DEMI_RXE_DEV0=rxe0 \
    DEMI_RXE_DEV1=rxe1 "PATH=$PATH" "HOME=$HOME"; do
    grep -qxF -- "$kv" "$work/cwd/env.txt" 2>/dev/null || envok=1
done
check "DEMI_RXE_* are set and PATH/HOME passed through" "$envok"
# stderr holds the command's line plus rxe-run's own "rxe-run: " lines only.
clean_stdio() {
    file_is "$work/basic.out" to-stdout && grep -qx to-stderr "$work/basic.err" &&
        [[ $(grep -cv '^rxe-run: ' "$work/basic.err") == 1 ]]
}
expect "stdout and stderr come back separately, without console noise" \
    "stdout: $(cat "$work/basic.out") / stderr: $(cat "$work/basic.err")" clean_stdio
expect "rxe-run states the mode it chose" "" has "$work/basic.err" '^rxe-run: mode: vm'
expect "no qemu or run folder left behind" "$(no_leftovers)" no_leftovers

# ---------------------------------------------------------- --timeout
echo "-- --timeout (one boot)"
start=$SECONDS
run_rxe timeout "$RXE_RUN" --timeout 3 -- sleep 300
took=$((SECONDS - start))
rc=$(rc_of timeout)
check "--timeout 3 stops 'sleep 300' with status 124 (${took} s)" \
    $(((rc == 124 && took < 120) ? 0 : 1)) "rc=$rc" "$(cat "$work/timeout.err")"
expect "no qemu or run folder left after a timeout" "$(no_leftovers)" no_leftovers

# ------------------------------------------------- failure reporting
echo "-- failure reports (three short boots)"
DEMI_RXE_KERNEL_APPEND=module_blacklist=rdma_rxe run_rxe modfail "$RXE_RUN" -- true
expect "a module that fails to load is reported with the guest's message (125)" \
    "rc=$(rc_of modfail): $(cat "$work/modfail.err")" \
    status_and_says modfail 125 "loading module rdma_rxe failed"

DEMI_RXE_KERNEL_APPEND=rdinit=/nonexistent run_rxe panic "$RXE_RUN" -- true
expect "a guest kernel panic is reported with its message (125)" \
    "rc=$(rc_of panic): $(cat "$work/panic.err")" \
    status_and_says panic 125 "Kernel panic"

DEMI_RXE_BOOT_TIMEOUT=1 run_rxe boottimeout "$RXE_RUN" -- true
expect "a guest that does not come up in time is stopped (125)" \
    "rc=$(rc_of boottimeout): $(cat "$work/boottimeout.err")" \
    status_and_says boottimeout 125 "did not come up within 1 s"
expect "no qemu or run folder left after the failures" "$(no_leftovers)" no_leftovers
rm -f "$TMPDIR"/rxe-run-console.*.log

# ---------------------------------------------------------- host mode
echo "-- host mode, inside a --bare VM (one boot)"
label="host-mode"
rc=0
"$RXE_RUN" --bare --timeout 300 -- "$HERE/host-mode-in-vm.sh" "$RXE_RUN" \
    <&- >"$work/host-mode.out" 2>"$work/host-mode.err" || rc=$?
note_boot "$work/host-mode.err"
tally_in_vm "$label" "$work/host-mode.out" "$rc"

echo "boot time (VM start to rxe0/rxe1 ACTIVE, TCG): ${boots[*]:-none} s"
echo "$passed passed, $failed failed"
((failed == 0))
