#!/usr/bin/env bash
# Bring up (or stop, or inspect) a throwaway 3-node Slurm cluster on this one machine for the multi-node
# tests: munged, MariaDB, slurmdbd and slurmctld as in cluster.sh (whose functions this script sources), and
# three slurmd, each in its own network namespace (sl-n1..sl-n3, with its own UTS hostname n1..n3 and address
# 10.77.0.11..13 on veth "eth0"), joined by the bridge sl-br0 (10.77.0.1, where slurmctld is reached). Traffic
# between ranks on different nodes therefore crosses a real interface, never loopback.
#
# Partitions: cpu (n1-n3, default), npu (n2-n3, a fake `npu` GRES of 4 per node on /dev/null links).
#
# Usage: tests/slurm/multinode.sh start|stop|status DIR   (needs root: namespaces and links)
#        tests/slurm/multinode.sh node-fail|node-restore NODE DIR   (a node failure for the tests, and back)
#
# Environment (all optional):
#   SLURM_MULTI_MARIADB_PORT  MariaDB TCP port on 127.0.0.1   (13316)
#   SLURM_MULTI_CTLD_PORT     slurmctld port                   (16827)
#   SLURM_MULTI_SLURMD_PORT   slurmd port (in each namespace)  (16828)
#   SLURM_MULTI_DBD_PORT      slurmdbd port                    (16829)
#   SLURM_MULTI_CLUSTER       ClusterName                      (multicluster)
#   SLURM_MULTI_TIMEOUT       seconds to wait for each step    (60)
#   SLURM_MULTI_NET           private /24, first three octets  (10.77.0)
#   SLURM_MULTI_PREFIX        prefix of namespaces and links   (sl: sl-n1.., sl-v1.., bridge sl-br0)
#   SLURM_TEST_KEEP_ON_FAILURE=1  leave started daemons running when start fails
#
# `start` prints the start-up time and writes DIR/env (SUANLI_TEST_SLURM_MULTI_CONF=DIR/slurm.conf).
# `stop` stops exactly what start started (pid files, this DIR's step daemons, processes in the namespaces),
# deletes the namespaces, veths and the bridge, and may be run any number of times.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
# shellcheck source=tests/slurm/cluster.sh
. "${HERE}/cluster.sh"

MARIADB_PORT="${SLURM_MULTI_MARIADB_PORT:-13316}"
CTLD_PORT="${SLURM_MULTI_CTLD_PORT:-16827}"
SLURMD_PORT="${SLURM_MULTI_SLURMD_PORT:-16828}"
DBD_PORT="${SLURM_MULTI_DBD_PORT:-16829}"
CLUSTER="${SLURM_MULTI_CLUSTER:-multicluster}"
TIMEOUT="${SLURM_MULTI_TIMEOUT:-60}"
NET="${SLURM_MULTI_NET:-10.77.0}"
PREFIX="${SLURM_MULTI_PREFIX:-sl}"
BRIDGE="${PREFIX}-br0"
CTL_ADDR="${NET}.1"
NODES=(n1 n2 n3)
DAEMONS=(slurmd-n1 slurmd-n2 slurmd-n3 slurmctld slurmdbd mariadb munged)

log() { printf '[multinode.sh] %s\n' "$*" >&2; }

comm_of() {
    case "$1" in
        mariadb) echo "mariadbd mysqld" ;;
        slurmd-*) echo slurmd ;;
        *) echo "$1" ;;
    esac
}

netns_of() { printf '%s-%s' "${PREFIX}" "$1"; }        # n1 -> sl-n1
veth_of() { printf '%s-v%s' "${PREFIX}" "${1#n}"; }    # n1 -> sl-v1 (the bridge side)
addr_of() { printf '%s.%s' "${NET}" "$((10 + ${1#n}))"; } # n1 -> 10.77.0.11

# ---------------------------------------------------------------- network

# Fail if another interface of this machine already uses the private range.
check_range_free() {
    local line
    line="$(ip -o -4 addr show | grep -F " ${NET}." | grep -vF " ${BRIDGE} " || true)"
    [ -z "${line}" ] || die "the range ${NET}.0/24 is already in use on this machine: ${line}"
}

# The network belongs to the cluster whose DIR holds this marker: stop never deletes another DIR's network.
net_mark() { printf '%s/net' "${RUN_DIR}"; }

net_up() {
    local n ns veth
    check_range_free
    mkdir -p "${RUN_DIR}"
    echo "${BRIDGE} ${NODES[*]}" >"$(net_mark)"
    ip link add "${BRIDGE}" type bridge
    ip addr add "${CTL_ADDR}/24" dev "${BRIDGE}"
    ip link set "${BRIDGE}" up
    for n in "${NODES[@]}"; do
        ns="$(netns_of "${n}")"
        veth="$(veth_of "${n}")"
        ip netns add "${ns}"
        ip link add "${veth}" type veth peer name eth0 netns "${ns}"
        ip link set "${veth}" master "${BRIDGE}" up
        ip -n "${ns}" addr add "$(addr_of "${n}")/24" dev eth0
        ip -n "${ns}" link set lo up
        ip -n "${ns}" link set eth0 up
    done
}

net_exists() {
    local n
    ip link show "${BRIDGE}" >/dev/null 2>&1 && return 0
    for n in "${NODES[@]}"; do
        [ -e "/run/netns/$(netns_of "${n}")" ] && return 0
        ip link show "$(veth_of "${n}")" >/dev/null 2>&1 && return 0
    done
    return 1
}

# Processes left in the namespaces (job processes whose step daemon is gone): TERM, then KILL.
kill_netns_pids() {
    local n ns pids i sig
    [ -e "$(net_mark)" ] || return 0
    for sig in TERM KILL; do
        pids=""
        for n in "${NODES[@]}"; do
            ns="$(netns_of "${n}")"
            [ -e "/run/netns/${ns}" ] || continue
            pids+=" $(ip netns pids "${ns}" 2>/dev/null | tr '\n' ' ')"
        done
        [ -n "${pids// /}" ] || return 0
        log "sending SIG${sig} to processes left in the namespaces:${pids}"
        # shellcheck disable=SC2086  # a list of pids
        kill "-${sig}" ${pids} 2>/dev/null || true
        for ((i = 0; i < 25; i++)); do
            pids=""
            for n in "${NODES[@]}"; do
                ns="$(netns_of "${n}")"
                [ -e "/run/netns/${ns}" ] && pids+="$(ip netns pids "${ns}" 2>/dev/null)"
            done
            [ -z "${pids}" ] && return 0
            sleep 0.2
        done
    done
}

net_down() {
    local n ns veth
    [ -e "$(net_mark)" ] || return 0
    for n in "${NODES[@]}"; do
        ns="$(netns_of "${n}")"
        veth="$(veth_of "${n}")"
        if ip link show "${veth}" >/dev/null 2>&1; then ip link del "${veth}" || true; fi
        if [ -e "/run/netns/${ns}" ]; then ip netns del "${ns}" || true; fi
    done
    if ip link show "${BRIDGE}" >/dev/null 2>&1; then ip link del "${BRIDGE}" || true; fi
    rm -f "$(net_mark)"
}

# ---------------------------------------------------------------- config files

write_configs() {
    local user="$1" n i nodes=""
    mkdir -p "${DIR}/state" "${DIR}/dev" "${RUN_DIR}" "${LOG_DIR}" "${DB_DIR}"
    chmod 755 "${DIR}"
    for n in "${NODES[@]}"; do mkdir -p "${DIR}/spool/${n}" "${DIR}/tmp/${n}"; done
    for i in 0 1 2 3; do ln -sfn /dev/null "${DIR}/dev/npu${i}"; done
    for n in "${NODES[@]}"; do
        nodes+="NodeName=${n} NodeAddr=$(addr_of "${n}") NodeHostname=${n} CPUs=2 RealMemory=2000"
        if [ "${n}" != n1 ]; then nodes+=" Gres=npu:4"; fi
        nodes+=$' State=UNKNOWN\n'
    done

    cat >"${SLURM_CONF_FILE}" <<EOF
# Generated by tests/slurm/multinode.sh -- throwaway 3-node test cluster in network namespaces.
ClusterName=${CLUSTER}
SlurmctldHost=$(hostname -s)(${CTL_ADDR})
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
SlurmUser=${user}
SlurmdUser=${user}
AuthType=auth/munge
AuthInfo=socket=${MUNGE_SOCKET}
CredType=cred/munge
StateSaveLocation=${DIR}/state
SlurmdSpoolDir=${DIR}/spool/%n
# Each node's own scratch folder, as /tmp is on a real node: srun --mpi=pmix makes its per-step folders
# (spmix_appdir_<uid>_<job>.<step>) there, and three nodes sharing this machine's /tmp would collide.
TmpFS=${DIR}/tmp/%n
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=${RUN_DIR}/slurmd-%n.pid
SlurmctldLogFile=$(logfile slurmctld)
SlurmdLogFile=${LOG_DIR}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
EnforcePartLimits=ALL
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=${CTL_ADDR}
AccountingStoragePort=${DBD_PORT}
AccountingStoragePass=${MUNGE_SOCKET}
AccountingStorageTRES=gres/npu
AccountingStorageEnforce=associations,limits,qos,safe
PriorityType=priority/multifactor
PriorityDecayHalfLife=0
PriorityUsageResetPeriod=MONTHLY
GresTypes=npu
MinJobAge=300
KillWait=5
InactiveLimit=0
MessageTimeout=30
ReturnToService=2
JobRequeue=1
MaxArraySize=4001
SlurmdParameters=config_overrides
${nodes}PartitionName=cpu Nodes=n[1-3] Default=YES MaxTime=INFINITE State=UP
PartitionName=npu Nodes=n[2-3] MaxTime=2:00:00 State=UP
EOF

    cat >"${DIR}/gres.conf" <<EOF
# Generated by tests/slurm/multinode.sh
NodeName=n[2-3] Name=npu File=${DIR}/dev/npu[0-3]
EOF

    write_db_configs "${user}"

    cat >"${DIR}/env.sh" <<EOF
# Source this file to use the 3-node test cluster in ${DIR}.
export SLURM_CONF=${SLURM_CONF_FILE}
EOF
    printf 'SUANLI_TEST_SLURM_MULTI_CONF=%s\n' "${SLURM_CONF_FILE}" >"${DIR}/env"
}

# ---------------------------------------------------------------- daemons

# Succeeds once sinfo lists the three nodes, all idle; resumes drained/invalid ones.
nodes_idle() {
    local out
    out="$(sinfo -h -N -p cpu -o '%N %t' 2>/dev/null | sort -u)"
    [ "$(grep -c ' idle$' <<<"${out}")" -eq "${#NODES[@]}" ] && return 0
    if grep -qE ' (drain|drng|inval|fail)' <<<"${out}"; then
        scontrol update nodename="n[1-3]" state=resume >/dev/null 2>&1 || true
    fi
    return 1
}

start_slurmds() {
    local n
    for n in "${NODES[@]}"; do
        log "starting slurmd ${n} in namespace $(netns_of "${n}") ($(addr_of "${n}"):${SLURMD_PORT})"
        # Its own UTS namespace too, so that the node (and every job process on it) has hostname n1..n3.
        # nsenter, not `ip netns exec`: that one mounts a fresh /sys without the cgroup file system slurmd needs.
        launch "slurmd-${n}" nsenter --net="/run/netns/$(netns_of "${n}")" unshare --uts -- \
            sh -c 'hostname "$1" && exec slurmd -N "$1"' slurmd-launch "${n}"
    done
    if ! wait_for "nodes n1-n3 to be idle (sinfo)" "$(logfile slurmd-n1)" slurmd-n1 nodes_idle; then
        sinfo -N >&2 || true
        tail -n 20 "$(logfile slurmctld)" >&2 || true
        return 1
    fi
}

# ---------------------------------------------------------------- commands

do_start() {
    local user t0
    t0="$(date +%s%N)"
    ensure_packages
    command -v ip >/dev/null && command -v unshare >/dev/null && command -v nsenter >/dev/null ||
        die "needs ip (iproute2), unshare and nsenter (util-linux)"
    [ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, veths, a bridge)"
    user="$(id -un)"
    export SLURM_CONF="${SLURM_CONF_FILE}"

    if net_exists && [ ! -e "$(net_mark)" ]; then
        die "${BRIDGE} or the namespaces ${PREFIX}-n1..${PREFIX}-n3 exist but belong to another cluster folder: stop that one first (tests/slurm/multinode.sh stop ITS_DIR)"
    fi
    if all_alive && net_exists; then
        log "cluster in ${DIR} is already running"
        return 0
    fi
    if any_alive || net_exists || [ -e "$(net_mark)" ]; then
        log "cluster in ${DIR} is partly running (or its network is left over): stopping it first"
        do_stop
    fi
    local port
    for port in "${MARIADB_PORT}" "${DBD_PORT}" "${CTLD_PORT}"; do
        if port_in_use "${port}"; then
            die "port ${port} on 127.0.0.1 is in use; choose others with SLURM_MULTI_MARIADB_PORT, SLURM_MULTI_DBD_PORT, SLURM_MULTI_CTLD_PORT"
        fi
    done

    trap on_start_failure EXIT
    net_up
    write_configs "${user}"
    start_munged
    start_mariadb
    start_slurmdbd
    add_cluster
    start_slurmctld
    start_slurmds
    add_accounts "${user}"
    trap - EXIT
    log "cluster ${CLUSTER} is up in ${DIR}: nodes n1-n3 ($(addr_of n1)-$(addr_of n3)), partitions cpu (n[1-3]) and npu (n[2-3])"
    log "start-up time: $(((($(date +%s%N) - t0) / 1000000))) ms"
    echo "export SLURM_CONF=${SLURM_CONF_FILE}"
}

any_slurmd_alive() {
    local n
    for n in "${NODES[@]}"; do live_pid "slurmd-${n}" >/dev/null && return 0; done
    return 1
}

do_stop() {
    local d pid jobs i
    export SLURM_CONF="${SLURM_CONF_FILE}"
    # Cancel the jobs first, so that the step daemons end their processes.
    if live_pid slurmctld >/dev/null && any_slurmd_alive; then
        jobs="$(timeout 10 squeue -h -o '%A' 2>/dev/null | tr '\n' ' ' || true)"
        if [ -n "${jobs// /}" ]; then
            log "cancelling jobs: ${jobs}"
            # shellcheck disable=SC2086  # a list of job ids
            timeout 10 scancel ${jobs} 2>/dev/null || true
            for ((i = 0; i < 75; i++)); do
                [ -z "$(own_stepds)" ] && break
                sleep 0.2
            done
        fi
    fi
    for d in "${DAEMONS[@]}"; do
        if pid="$(live_pid "${d}")"; then
            stop_pid "${d}" "${pid}"
        fi
        rm -f "$(pidfile "${d}")"
    done
    for pid in $(own_stepds); do
        log "killing leftover slurmstepd ${pid}"
        kill -TERM "${pid}" 2>/dev/null || true
    done
    sleep 0.2
    for pid in $(own_stepds); do kill -KILL "${pid}" 2>/dev/null || true; done
    kill_netns_pids
    net_down
    log "cluster in ${DIR} is stopped (namespaces, veths and bridge deleted)"
}

do_status() {
    local d pid rc=0 n
    for d in munged mariadb slurmdbd slurmctld slurmd-n1 slurmd-n2 slurmd-n3; do
        if pid="$(live_pid "${d}")"; then
            printf '%-10s running (pid %s)\n' "${d}" "${pid}"
        else
            printf '%-10s not running\n' "${d}"
            rc=1
        fi
    done
    for n in "${NODES[@]}"; do
        if [ -e "/run/netns/$(netns_of "${n}")" ]; then
            printf '%-10s namespace %s, %s\n' "${n}" "$(netns_of "${n}")" "$(addr_of "${n}")"
        else
            printf '%-10s no namespace\n' "${n}"
            rc=1
        fi
    done
    return "${rc}"
}

# A node that fails as real ones do: its slurmd and every process in its namespace (the job's ranks) are
# killed at once, and the controller is told it is down (as a node health check or an admin would; slurmctld
# alone would notice only after SlurmdTimeout). Slurm then ends or requeues the jobs that ran there.
do_node_fail() {
    local n="$1" ns pid
    ns="$(netns_of "${n}")"
    [ -e "/run/netns/${ns}" ] || die "no node ${n} (namespace ${ns})"
    export SLURM_CONF="${SLURM_CONF_FILE}"
    # shellcheck disable=SC2046  # a list of pids
    kill -KILL $(ip netns pids "${ns}") 2>/dev/null || true
    rm -f "$(pidfile "slurmd-${n}")"
    scontrol update nodename="${n}" state=down reason="node-fail test" >/dev/null
    log "node ${n} failed: its processes were killed and it is DOWN"
}

# The failed node back: slurmd started again in its namespace and the node resumed (schedulable again).
do_node_restore() {
    local n="$1" i
    export SLURM_CONF="${SLURM_CONF_FILE}"
    if ! live_pid "slurmd-${n}" >/dev/null; then
        launch "slurmd-${n}" nsenter --net="/run/netns/$(netns_of "${n}")" unshare --uts -- \
            sh -c 'hostname "$1" && exec slurmd -N "$1"' slurmd-launch "${n}"
    fi
    for ((i = 0; i < TIMEOUT * 5; i++)); do
        scontrol update nodename="${n}" state=resume >/dev/null 2>&1 || true
        case "$(sinfo -h -n "${n}" -o '%t' 2>/dev/null | head -n 1)" in
            idle | mix | alloc | comp)  # responding and schedulable again (a requeued job may take it at once)
                log "node ${n} is back"
                return 0
                ;;
        esac
        sleep 0.2
    done
    die "node ${n} did not come back within ${TIMEOUT} s"
}

case "${1:-}" in
    node-fail | node-restore)
        [ "$#" -eq 3 ] || { echo "usage: $0 node-fail|node-restore NODE DIR" >&2; exit 2; }
        set_paths "$3"
        if [ "$1" = node-fail ]; then do_node_fail "$2"; else do_node_restore "$2"; fi
        ;;
    *) main "$@" ;;
esac
