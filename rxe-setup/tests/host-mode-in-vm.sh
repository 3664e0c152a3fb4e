#!/bin/bash
# Exercises rxe-run's host mode where it can run: inside a VM booted with
# --bare (rdma_rxe loadable, no devices made). Checks that host mode brings
# the devices up for the command and that afterwards the "host" (here the
# VM) is exactly as before: no veths, no rxe links, same ip rules, same
# sysctls. Prints "ok - ..." / "not ok - ..." lines like in-vm.sh.
set -uo pipefail

RXE_RUN=$1
LOGS=$(mktemp -d /tmp/rxe-host-mode.XXXXXX)
trap 'rm -rf "$LOGS"' EXIT

pass() { printf 'ok - %s\n' "$1"; }
fail() {
    printf 'not ok - %s\n' "$1"
    shift
    (($#)) && printf '    %s\n' "$@"
    return 0
}

echo "1..4"

state() {
    ip -4 rule show
    ip -o link show | awk -F': ' '{print $2}'
    rdma link show
    local f
    for f in /proc/sys/net/ipv4/conf/{all,default}/{accept_local,rp_filter}; do
        printf '%s=%s\n' "$f" "$(<"$f")"
    done
}

# Make the "host" differ from the VM's defaults, so restoring is visible.
echo 1 >/proc/sys/net/ipv4/conf/all/rp_filter

state >"$LOGS/before"
rc=0
# shellcheck disable=SC2016 # expanded by the inner shell
"$RXE_RUN" --host --timeout 60 -- sh -c 'rdma link show; ip -4 rule show; echo "mode=$DEMI_RXE_MODE"; exit 3' \
    >"$LOGS/out" 2>"$LOGS/err" || rc=$?
state >"$LOGS/after"

if ((rc == 3)) && grep -q '^mode=host$' "$LOGS/out" &&
    [[ $(grep -c 'state ACTIVE' "$LOGS/out") == 2 ]] &&
    grep -q 'rxe-run: mode: host' "$LOGS/err"; then
    pass "host mode runs the command beside two ACTIVE links and returns its status (3)"
else
    fail "host mode runs the command beside two ACTIVE links and returns its status (3)" \
        "rc=$rc" "$(cat "$LOGS/out" "$LOGS/err")"
fi

if grep -q 'rxe-run: host: sysctl net.ipv4.conf.all.rp_filter=0 (was 1)' "$LOGS/err" &&
    grep -q 'rxe-run: host: restore: ip link del veth0' "$LOGS/err"; then
    pass "host mode prints each change and each restore step"
else
    fail "host mode prints each change and each restore step" "$(cat "$LOGS/err")"
fi

if diff -u "$LOGS/before" "$LOGS/after" >"$LOGS/diff"; then
    pass "host mode leaves ip rules, links, rxe devices and sysctls as they were"
else
    fail "host mode leaves ip rules, links, rxe devices and sysctls as they were" "$(cat "$LOGS/diff")"
fi

# A host that already has a veth0 must be left alone (exit 125, no change).
ip link add veth0 type veth peer name veth1
state >"$LOGS/before2"
rc=0
"$RXE_RUN" --host -- true >"$LOGS/out2" 2>&1 || rc=$?
state >"$LOGS/after2"
ip link del veth0
if ((rc == 125)) && diff -q "$LOGS/before2" "$LOGS/after2" >/dev/null &&
    grep -q 'already exists' "$LOGS/out2"; then
    pass "host mode refuses (125) when veth0 already exists and changes nothing"
else
    fail "host mode refuses (125) when veth0 already exists and changes nothing" "rc=$rc" "$(cat "$LOGS/out2")"
fi
