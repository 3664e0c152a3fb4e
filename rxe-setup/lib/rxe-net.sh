# shellcheck shell=bash
# Brings up the two soft-RoCE devices and the policy routing that makes
# traffic between them cross the veth wire. Sourced by rxe-run (host mode)
# and by the guest's stage-2 init (VM mode), so both set up the same thing.
#
# Every change goes through rxe_change, which records how to undo it; host
# mode replays RXE_UNDO in reverse to restore the host, the VM just powers off.

RXE_ADDR0=10.77.0.1
RXE_ADDR1=10.77.0.2
RXE_DEV0=rxe0
RXE_DEV1=rxe1
RXE_NET0=veth0
RXE_NET1=veth1
RXE_UNDO=()
RXE_UNDO_SHOW=()
# Set to 1 (host mode) to print each change to stderr before making it.
: "${RXE_VERBOSE_CHANGES:=0}"

# rxe_change UNDO-CMD -- CMD...: run CMD; on success remember UNDO-CMD
# (a string evaluated at teardown) so it can be reverted. If set, RXE_SHOW
# and RXE_UNDO_TEXT are printed instead of CMD and UNDO-CMD.
rxe_change() {
    local undo=$1
    shift
    [[ ${1-} == -- ]] && shift
    if [[ $RXE_VERBOSE_CHANGES == 1 ]]; then
        printf 'rxe-run: host: %s\n' "${RXE_SHOW:-$*}" >&2
    fi
    "$@" || return
    RXE_UNDO+=("$undo")
    RXE_UNDO_SHOW+=("${RXE_UNDO_TEXT:-$undo}")
}

# rxe_do CMD...: a change that goes away with the veth pair; only printed.
rxe_do() {
    if [[ $RXE_VERBOSE_CHANGES == 1 ]]; then
        printf 'rxe-run: host: %s\n' "$*" >&2
    fi
    "$@"
}

# Write a sysctl through /proc (no procps needed) and remember the old value.
rxe_sysctl() {
    local key=$1 val=$2 file old
    file=/proc/sys/${key//.//}
    old=$(<"$file") || return
    [[ $old == "$val" ]] && return 0
    RXE_SHOW="sysctl $key=$val (was $old)" RXE_UNDO_TEXT="sysctl $key=$old" \
        rxe_change "rxe_write_file $file $old" -- rxe_write_file "$file" "$val"
}

rxe_write_file() {
    printf '%s\n' "$2" >"$1"
}

# Refuse to touch a host that already has our names or rule priorities, so
# teardown can never delete something that was not ours.
rxe_net_check_free() {
    local n pref
    for n in "$RXE_NET0" "$RXE_NET1"; do
        if ip link show dev "$n" >/dev/null 2>&1; then
            echo "rxe-run: network device $n already exists; not touching it" >&2
            return 1
        fi
    done
    for n in "$RXE_DEV0" "$RXE_DEV1"; do
        if rdma link show "$n/1" >/dev/null 2>&1; then
            echo "rxe-run: RDMA device $n already exists; not touching it" >&2
            return 1
        fi
    done
    for pref in 10 11 1000; do
        if [[ -n $(ip -4 rule show pref "$pref" 2>/dev/null) ]]; then
            echo "rxe-run: an ip rule with priority $pref already exists; not touching it" >&2
            return 1
        fi
    done
}

# rxe_net_up [MTU]: veth pair, addresses, routing, both rxe links; waits
# (bounded) until both report ACTIVE.
rxe_net_up() {
    local mtu=${1:-1500} d i

    rxe_change "ip link del $RXE_NET0" -- \
        ip link add "$RXE_NET0" type veth peer name "$RXE_NET1" || return
    for d in "$RXE_NET0" "$RXE_NET1"; do
        rxe_do ip link set dev "$d" mtu "$mtu" || return
    done
    rxe_do ip addr add "$RXE_ADDR0/24" dev "$RXE_NET0" || return
    rxe_do ip addr add "$RXE_ADDR1/24" dev "$RXE_NET1" || return
    rxe_do ip link set dev "$RXE_NET0" up || return
    rxe_do ip link set dev "$RXE_NET1" up || return

    # Both addresses are local, so the kernel would short-cut through lo.
    # Accept packets "from ourselves" and skip reverse-path checks so the
    # policy routes below can send them over the wire instead.
    for d in all default "$RXE_NET0" "$RXE_NET1"; do
        rxe_sysctl "net.ipv4.conf.$d.accept_local" 1 || return
        rxe_sysctl "net.ipv4.conf.$d.rp_filter" 0 || return
    done

    # Locally generated packets between the two addresses use the veth.
    rxe_change "ip rule del pref 10" -- \
        ip rule add pref 10 from "$RXE_ADDR1" to "$RXE_ADDR0" iif lo lookup 100 || return
    rxe_do ip route add "$RXE_ADDR0" dev "$RXE_NET1" src "$RXE_ADDR1" table 100 || return
    rxe_change "ip rule del pref 11" -- \
        ip rule add pref 11 from "$RXE_ADDR0" to "$RXE_ADDR1" iif lo lookup 101 || return
    rxe_do ip route add "$RXE_ADDR1" dev "$RXE_NET0" src "$RXE_ADDR0" table 101 || return

    # The local table normally sits at priority 0, ahead of everything;
    # move it behind our two rules (add the new one first: never without).
    if [[ -n $(ip -4 rule show pref 0 lookup local 2>/dev/null) ]]; then
        rxe_change "ip rule del pref 1000 lookup local" -- \
            ip rule add pref 1000 lookup local || return
        rxe_change "ip rule add pref 0 lookup local" -- \
            ip rule del pref 0 lookup local || return
    fi

    rxe_change "rdma link delete $RXE_DEV0" -- \
        rdma link add "$RXE_DEV0" type rxe netdev "$RXE_NET0" || return
    rxe_change "rdma link delete $RXE_DEV1" -- \
        rdma link add "$RXE_DEV1" type rxe netdev "$RXE_NET1" || return

    # The port goes ACTIVE once the netdev has carrier; bounded wait.
    for ((i = 0; i < 100; i++)); do
        if [[ $(rdma link show "$RXE_DEV0/1" 2>/dev/null) == *"state ACTIVE"* &&
            $(rdma link show "$RXE_DEV1/1" 2>/dev/null) == *"state ACTIVE"* ]]; then
            return 0
        fi
        sleep 0.1
    done
    echo "rxe-run: rxe links did not become ACTIVE:" >&2
    rdma link show >&2 || true
    return 1
}

# Undo everything recorded, newest first; keep going past failures so one
# stuck step does not leave the rest behind.
rxe_net_down() {
    local i rc=0
    for ((i = ${#RXE_UNDO[@]} - 1; i >= 0; i--)); do
        if [[ $RXE_VERBOSE_CHANGES == 1 ]]; then
            printf 'rxe-run: host: restore: %s\n' "${RXE_UNDO_SHOW[i]}" >&2
        fi
        eval "${RXE_UNDO[i]}" || rc=1
    done
    RXE_UNDO=()
    RXE_UNDO_SHOW=()
    return "$rc"
}
