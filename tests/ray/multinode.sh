#!/usr/bin/env bash
# A throwaway 2-node Ray cluster on this one machine for the multi-node tests: a head and a worker node, each in
# its own network namespace (rm-head, rm-w1) with its own address (10.78.0.2, 10.78.0.3 on veth "eth0"), joined
# by the bridge rm-br0 (10.78.0.1, where this machine reaches them). So a STRICT_SPREAD placement group really
# spreads over two Ray nodes, and ranks on them talk across a real interface, never loopback. The range, the
# bridge and the namespaces differ from tests/slurm/multinode.sh's (10.77.0.0/24, sl-*): both run at once.
#
# Usage: tests/ray/multinode.sh start|stop|status DIR     (needs root: namespaces and links)
#        tests/ray/multinode.sh start-worker DIR          (the worker node again, after a test killed it)
#
# `start` writes DIR/env: SUANLI_TEST_RAY_MULTI_ADDRESS (the Jobs API, http://10.78.0.2:8265),
# SUANLI_TEST_RAY_MULTI_GCS (10.78.0.2:6379), SUANLI_TEST_RAY_MULTI_HEAD_IP / _WORKER_IP, and
# SUANLI_TEST_RAY_MULTI_WORKER_TMP (the worker's temp dir: its raylet's command line names it). One CPU per node
# and a 100 MiB object store each. `stop` ends every process in the two namespaces, deletes them, the veths and
# the bridge and the temp dirs, and may be run any number of times.
#
# Environment (optional): RAY_MULTI_NET (10.78.0), RAY_MULTI_PREFIX (rm), RAY_MULTI_TIMEOUT (seconds per wait, 90).
set -euo pipefail

NET="${RAY_MULTI_NET:-10.78.0}"
PREFIX="${RAY_MULTI_PREFIX:-rm}"
TIMEOUT="${RAY_MULTI_TIMEOUT:-90}"
BRIDGE="${PREFIX}-br0"
HOST_ADDR="${NET}.1"
HEAD_ADDR="${NET}.2"
WORKER_ADDR="${NET}.3"
GCS_PORT=6379
DASH_PORT=8265
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
VENV="${VENV:-${HERE}/.venv}"
RAY="${RAY:-${VENV}/bin/ray}"
PYTHON="${VENV}/bin/python"

log() { printf '[ray/multinode.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { echo "usage: $0 start|stop|status|start-worker DIR" >&2; exit 2; }

ns_of() { printf '%s-%s' "${PREFIX}" "$1"; }    # head -> rm-head, w1 -> rm-w1
veth_of() { printf '%s-v%s' "${PREFIX}" "$1"; } # head -> rm-vhead (the bridge side)

# ---------------------------------------------------------------- network
net_up() {
    local line node addr ns veth
    line="$(ip -o -4 addr show | grep -F " ${NET}." | grep -vF " ${BRIDGE} " || true)"
    [ -z "${line}" ] || die "the range ${NET}.0/24 is already in use on this machine: ${line} (set RAY_MULTI_NET)"
    echo "${BRIDGE}" >"${DIR}/net"
    ip link add "${BRIDGE}" type bridge
    ip addr add "${HOST_ADDR}/24" dev "${BRIDGE}"
    ip link set "${BRIDGE}" up
    for node in head w1; do
        addr="${HEAD_ADDR}"
        [ "${node}" = head ] || addr="${WORKER_ADDR}"
        ns="$(ns_of "${node}")"
        veth="$(veth_of "${node}")"
        ip netns add "${ns}"
        ip link add "${veth}" type veth peer name eth0 netns "${ns}"
        ip link set "${veth}" master "${BRIDGE}" up
        ip -n "${ns}" addr add "${addr}/24" dev eth0
        ip -n "${ns}" link set lo up
        ip -n "${ns}" link set eth0 up
    done
}

net_exists() {
    local node
    ip link show "${BRIDGE}" >/dev/null 2>&1 && return 0
    for node in head w1; do
        [ -e "/run/netns/$(ns_of "${node}")" ] && return 0
    done
    return 1
}

ns_pids() { # every process in the namespace (Ray's daemons, workers, and job processes)
    local ns
    ns="$(ns_of "$1")"
    [ -e "/run/netns/${ns}" ] || return 0
    ip netns pids "${ns}" 2>/dev/null || true
}

kill_ns() { # TERM, then KILL after 5 s, every process in the namespaces named
    local sig pids i node
    for sig in TERM KILL; do
        pids="$(for node in "$@"; do ns_pids "${node}"; done | tr '\n' ' ')"
        [ -n "${pids// /}" ] || return 0
        # shellcheck disable=SC2086  # a list of pids
        kill "-${sig}" ${pids} 2>/dev/null || true
        for ((i = 0; i < 25; i++)); do
            pids="$(for node in "$@"; do ns_pids "${node}"; done)"
            [ -z "${pids}" ] && return 0
            sleep 0.2
        done
    done
    [ -z "$(for node in "$@"; do ns_pids "${node}"; done)" ] || log "processes left in $*: ${pids}"
}

net_down() {
    local node
    [ -e "${DIR}/net" ] || return 0
    for node in head w1; do
        if ip link show "$(veth_of "${node}")" >/dev/null 2>&1; then ip link del "$(veth_of "${node}")" || true; fi
        if [ -e "/run/netns/$(ns_of "${node}")" ]; then ip netns del "$(ns_of "${node}")" || true; fi
    done
    if ip link show "${BRIDGE}" >/dev/null 2>&1; then ip link del "${BRIDGE}" || true; fi
    rm -f "${DIR}/net"
}

# ---------------------------------------------------------------- Ray
in_ns() { # run a command in a node's network namespace (nsenter, not `ip netns exec`, which remounts /sys)
    local node="$1"
    shift
    nsenter --net="/run/netns/$(ns_of "${node}")" "$@"
}

ray_env() {
    # No usage statistics, no token auth left behind by an embedded ray.init(); a lost node is declared dead
    # after ~3 s (1 s health checks, 3 misses) instead of ~30, so a job on it fails quickly.
    export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 RAY_health_check_period_ms=1000
    export RAY_health_check_failure_threshold=3 RAY_health_check_initial_delay_ms=1000
    export RAY_JOB_START_TIMEOUT_SECONDS=60
}

# Succeeds once the Jobs API lists `want` alive nodes.
alive_nodes_are() {
    "${PYTHON}" - "http://${HEAD_ADDR}:${DASH_PORT}" "$1" <<'EOF' >/dev/null 2>&1
import json, sys, urllib.request
data = json.load(urllib.request.urlopen(sys.argv[1] + "/api/v0/nodes?limit=100", timeout=3))
alive = [n for n in data["data"]["result"]["result"] if n.get("state") == "ALIVE"]
sys.exit(0 if len(alive) == int(sys.argv[2]) else 1)
EOF
}

wait_nodes() {
    local want="$1" deadline=$((SECONDS + TIMEOUT))
    until alive_nodes_are "${want}"; do
        [ "${SECONDS}" -lt "${deadline}" ] || return 1
        sleep 0.5
    done
}

start_head() {
    local tmp
    tmp="$(mktemp -d /tmp/rmh.XXXXXX)" # short: Ray's unix socket paths must stay below ~107 characters
    echo "${tmp}" >"${DIR}/head-tmp"
    log "starting the Ray head in $(ns_of head) (${HEAD_ADDR}:${GCS_PORT}, Jobs API on port ${DASH_PORT})"
    if ! in_ns head "${RAY}" start --head --node-ip-address "${HEAD_ADDR}" --port "${GCS_PORT}" \
        --dashboard-host 0.0.0.0 --dashboard-port "${DASH_PORT}" --num-cpus 1 --num-gpus 0 \
        --object-store-memory $((100 * 1024 * 1024)) --temp-dir "${tmp}" --disable-usage-stats \
        >"${DIR}/head.log" 2>&1; then
        cat "${DIR}/head.log" >&2
        return 1
    fi
    wait_nodes 1 || { log "the head's Jobs API did not list it within ${TIMEOUT} s"; tail -n 30 "${DIR}/head.log" >&2; return 1; }
}

start_worker() {
    local tmp
    tmp="$(mktemp -d /tmp/rmw.XXXXXX)"
    echo "${tmp}" >"${DIR}/worker-tmp"
    log "starting the Ray worker node in $(ns_of w1) (${WORKER_ADDR})"
    if ! in_ns w1 "${RAY}" start --address "${HEAD_ADDR}:${GCS_PORT}" --node-ip-address "${WORKER_ADDR}" \
        --num-cpus 1 --num-gpus 0 --object-store-memory $((100 * 1024 * 1024)) --temp-dir "${tmp}" \
        --disable-usage-stats >"${DIR}/worker.log" 2>&1; then
        cat "${DIR}/worker.log" >&2
        return 1
    fi
    wait_nodes 2 || { log "the worker node did not join within ${TIMEOUT} s"; tail -n 30 "${DIR}/worker.log" >&2; return 1; }
}

write_env() {
    {
        echo "SUANLI_TEST_RAY_MULTI_ADDRESS=http://${HEAD_ADDR}:${DASH_PORT}"
        echo "SUANLI_TEST_RAY_MULTI_GCS=${HEAD_ADDR}:${GCS_PORT}"
        echo "SUANLI_TEST_RAY_MULTI_HEAD_IP=${HEAD_ADDR}"
        echo "SUANLI_TEST_RAY_MULTI_WORKER_IP=${WORKER_ADDR}"
        echo "SUANLI_TEST_RAY_MULTI_WORKER_TMP=$(cat "${DIR}/worker-tmp")"
        echo "SUANLI_TEST_RAY_MULTI_DIR=${DIR}"
    } >"${DIR}/env"
}

remove_tmp() {
    local f tmp
    for f in head-tmp worker-tmp; do
        tmp="$(cat "${DIR}/${f}" 2>/dev/null || true)"
        case "${tmp}" in /tmp/rmh.* | /tmp/rmw.*) rm -rf "${tmp}" ;; esac
        rm -f "${DIR}/${f}"
    done
}

# ---------------------------------------------------------------- commands
on_start_failure() {
    log "start failed: stopping what was started"
    do_stop
}

do_start() {
    local t0=${SECONDS}
    [ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, veths, a bridge)"
    command -v ip >/dev/null && command -v nsenter >/dev/null || die "needs ip (iproute2) and nsenter (util-linux)"
    [ -x "${RAY}" ] || die "ray not found at ${RAY}; pip install 'suanli[ray]' (or set RAY=/path/to/ray)"
    if net_exists && [ ! -e "${DIR}/net" ]; then
        die "${BRIDGE} or the namespaces $(ns_of head), $(ns_of w1) exist but belong to another folder: stop that one first"
    fi
    if net_exists && alive_nodes_are 2; then
        log "cluster in ${DIR} is already running"
        write_env
        return 0
    fi
    if net_exists || [ -e "${DIR}/net" ]; then
        log "cluster in ${DIR} is partly running (or its network is left over): stopping it first"
        do_stop
    fi
    trap on_start_failure EXIT
    net_up
    ray_env
    start_head
    start_worker
    write_env
    trap - EXIT
    log "Ray cluster up in ${DIR}: head ${HEAD_ADDR}, worker ${WORKER_ADDR}, Jobs API http://${HEAD_ADDR}:${DASH_PORT}"
    log "start-up time: $((SECONDS - t0)) s"
}

do_start_worker() {
    [ -e "${DIR}/net" ] || die "no cluster in ${DIR}: run start first"
    kill_ns w1
    # The head must have seen the old worker node die before a new one registers at the same address (else the
    # new node may never be given placement-group bundles).
    wait_nodes 1 || die "the head still lists the old worker node after ${TIMEOUT} s"
    local old
    old="$(cat "${DIR}/worker-tmp" 2>/dev/null || true)"
    case "${old}" in /tmp/rmw.*) rm -rf "${old}" ;; esac
    ray_env
    start_worker
    write_env
}

do_stop() {
    kill_ns head w1
    net_down
    remove_tmp
    rm -f "${DIR}/env"
    log "cluster in ${DIR} is stopped (namespaces, veths and bridge deleted)"
}

do_status() {
    local rc=0 node
    for node in head w1; do
        if [ -e "/run/netns/$(ns_of "${node}")" ]; then
            printf '%-5s namespace %s, %s processes\n' "${node}" "$(ns_of "${node}")" "$(ns_pids "${node}" | wc -l)"
        else
            printf '%-5s no namespace\n' "${node}"
            rc=1
        fi
    done
    if alive_nodes_are 2; then echo "ray: 2 alive nodes"; else echo "ray: not 2 alive nodes"; rc=1; fi
    return "${rc}"
}

[ "$#" -eq 2 ] || usage
case "$1" in
    start)
        mkdir -p "$2"
        DIR="$(cd "$2" && pwd -P)"
        do_start
        ;;
    start-worker)
        DIR="$(cd "$2" && pwd -P)"
        do_start_worker
        ;;
    stop)
        [ -d "$2" ] || { log "no such folder $2: nothing to stop"; exit 0; }
        DIR="$(cd "$2" && pwd -P)"
        do_stop
        ;;
    status)
        [ -d "$2" ] || { log "no such folder $2"; exit 1; }
        DIR="$(cd "$2" && pwd -P)"
        do_status
        ;;
    *) usage ;;
esac
