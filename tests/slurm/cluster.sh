#!/usr/bin/env bash
# Bring up (or stop, or inspect) a throwaway single-node Slurm cluster on localhost
# for the test suite: munged, MariaDB, slurmdbd, slurmctld and slurmd, all state
# (configs, keys, sockets, databases, spool, logs, pid files) under one folder.
#
# Usage: tests/slurm/cluster.sh start|stop|status DIR
#
# Environment (all optional):
#   SLURM_TEST_MARIADB_PORT  MariaDB TCP port on 127.0.0.1      (13306)
#   SLURM_TEST_DBD_PORT      slurmdbd port (DbdPort)             (16819)
#   SLURM_TEST_CTLD_PORT     slurmctld port (SlurmctldPort)      (16817)
#   SLURM_TEST_SLURMD_PORT   slurmd port (SlurmdPort)            (16818)
#   SLURM_TEST_CLUSTER       ClusterName                         (testcluster)
#   SLURM_TEST_TIMEOUT       seconds to wait for each daemon     (60)
#   SLURM_TEST_KEEP_ON_FAILURE=1  leave started daemons running when start fails
#
# After `start`, `source DIR/env.sh` (it exports SLURM_CONF) to use the cluster.
set -euo pipefail
umask 022
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:${PATH}"

MARIADB_PORT="${SLURM_TEST_MARIADB_PORT:-13306}"
DBD_PORT="${SLURM_TEST_DBD_PORT:-16819}"
CTLD_PORT="${SLURM_TEST_CTLD_PORT:-16817}"
SLURMD_PORT="${SLURM_TEST_SLURMD_PORT:-16818}"
CLUSTER="${SLURM_TEST_CLUSTER:-testcluster}"
TIMEOUT="${SLURM_TEST_TIMEOUT:-60}"
DB_USER="slurm"
DB_PASS="slurmtestpw"
# Stop order; start order is the reverse.
DAEMONS=(slurmd slurmctld slurmdbd mariadb munged)

log() { printf '[cluster.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

usage() {
    echo "usage: $0 start|stop|status DIR" >&2
    exit 2
}

# ---------------------------------------------------------------- paths

set_paths() {
    local dir="$1"
    case "${dir}" in
        *[[:space:]]*) die "DIR must not contain white space (Slurm config files cannot quote it): ${dir}" ;;
    esac
    mkdir -p "${dir}"
    DIR="$(cd "${dir}" && pwd -P)"
    SLURM_CONF_FILE="${DIR}/slurm.conf"
    MUNGE_DIR="${DIR}/munge"
    MUNGE_KEY="${MUNGE_DIR}/munge.key"
    MUNGE_SOCKET="${MUNGE_DIR}/munge.socket"
    DB_DIR="${DIR}/mariadb"
    DB_DATA="${DB_DIR}/data"
    DB_CNF="${DB_DIR}/my.cnf"
    DB_SOCKET="${DB_DIR}/mariadb.sock"
    DB_INIT="${DB_DIR}/init.sql"
    RUN_DIR="${DIR}/run"
    LOG_DIR="${DIR}/log"
    if [ "${#MUNGE_SOCKET}" -gt 100 ]; then
        die "DIR is too long for a unix socket path (${MUNGE_SOCKET})"
    fi
}

pidfile() { printf '%s/%s.pid' "${RUN_DIR}" "$1"; }
logfile() { printf '%s/%s.log' "${LOG_DIR}" "$1"; }

# The executable name a daemon's process must have (guards against pid reuse).
comm_of() {
    case "$1" in
        mariadb) echo "mariadbd mysqld" ;;
        *) echo "$1" ;;
    esac
}

# Print the pid of a daemon if its pid file names a live (non-zombie) process of
# the right executable; return 1 otherwise.
live_pid() {
    local name="$1" file pid comm state want
    file="$(pidfile "${name}")"
    [ -s "${file}" ] || return 1
    pid="$(tr -dc '0-9' 2>/dev/null <"${file}")" || return 1
    [ -n "${pid}" ] || return 1
    [ -r "/proc/${pid}/stat" ] || return 1
    # Field 3 of /proc/PID/stat is the state; a zombie (Z) or dead (X) counts as gone.
    state="$(sed -e 's/^.*) //' "/proc/${pid}/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
    case "${state}" in Z | X | x | "") return 1 ;; esac
    comm="$(cat "/proc/${pid}/comm" 2>/dev/null)" || return 1
    for want in $(comm_of "${name}"); do
        if [ "${comm}" = "${want}" ]; then
            echo "${pid}"
            return 0
        fi
    done
    return 1
}

# ---------------------------------------------------------------- helpers

# wait_for DESCRIPTION LOGFILE DAEMON COMMAND...: run COMMAND every 0.2 s until
# it succeeds, at most TIMEOUT seconds; on timeout show the log and fail. If
# DAEMON is not empty and its process is gone after a 3 s grace period (time to
# write its pid file), fail at once instead of waiting for the timeout.
wait_for() {
    local what="$1" logf="$2" daemon="$3" start deadline why=""
    shift 3
    start="${SECONDS}"
    deadline=$((SECONDS + TIMEOUT))
    while ! "$@" >/dev/null 2>&1; do
        if [ "${SECONDS}" -ge "${deadline}" ]; then
            why="timed out after ${TIMEOUT} s waiting for ${what}"
        elif [ -n "${daemon}" ] && [ "$((SECONDS - start))" -ge 3 ] &&
            ! live_pid "${daemon}" >/dev/null; then
            why="${daemon} is not running (waiting for ${what})"
        fi
        if [ -n "${why}" ]; then
            log "${why}"
            if [ -n "${logf}" ] && [ -f "${logf}" ]; then
                log "last lines of ${logf}:"
                tail -n 40 "${logf}" >&2 || true
            fi
            return 1
        fi
        sleep 0.2
    done
}

# launch NAME COMMAND...: run a self-daemonising COMMAND; if it fails, show the
# end of NAME's log.
launch() {
    local name="$1"
    shift
    if ! "$@" </dev/null; then
        log "${name} failed to start"
        if [ -f "$(logfile "${name}")" ]; then
            log "last lines of $(logfile "${name}"):"
            tail -n 40 "$(logfile "${name}")" >&2 || true
        fi
        return 1
    fi
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

ensure_packages() {
    local missing=() cmd
    for cmd in munged slurmdbd slurmctld slurmd sacctmgr; do
        command -v "${cmd}" >/dev/null 2>&1 || missing+=("${cmd}")
    done
    if ! command -v mariadbd >/dev/null 2>&1 && ! command -v mysqld >/dev/null 2>&1; then
        missing+=(mariadbd)
    fi
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "missing ${missing[*]}: installing the Debian packages"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y \
        slurm-wlm slurmdbd munge mariadb-server openmpi-bin libopenmpi-dev
}

db_server_bin() {
    if command -v mariadbd >/dev/null 2>&1; then command -v mariadbd; else command -v mysqld; fi
}

db_client_bin() {
    if command -v mariadb >/dev/null 2>&1; then command -v mariadb; else command -v mysql; fi
}

db_install_bin() {
    if command -v mariadb-install-db >/dev/null 2>&1; then
        command -v mariadb-install-db
    else
        command -v mysql_install_db
    fi
}

# ---------------------------------------------------------------- config files

write_configs() {
    local node="$1" user="$2"
    mkdir -p "${DIR}/state" "${DIR}/spool" "${DIR}/dev" "${RUN_DIR}" "${LOG_DIR}" "${DB_DIR}"
    # munged refuses a socket under a folder others cannot enter (mktemp -d makes mode 700).
    chmod 755 "${DIR}"
    # Fake GRES devices: File= must name a character device.
    local i
    for i in 0 1; do ln -sfn /dev/null "${DIR}/dev/gpu${i}"; done
    for i in 0 1 2 3 4 5 6 7; do ln -sfn /dev/null "${DIR}/dev/npu${i}"; done
    for i in 0 1 2 3; do ln -sfn /dev/null "${DIR}/dev/dcu${i}"; done

    cat >"${SLURM_CONF_FILE}" <<EOF
# Generated by tests/slurm/cluster.sh -- throwaway single-node test cluster.
ClusterName=${CLUSTER}
SlurmctldHost=${node}(127.0.0.1)
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
SlurmUser=${user}
SlurmdUser=${user}
AuthType=auth/munge
AuthInfo=socket=${MUNGE_SOCKET}
CredType=cred/munge
StateSaveLocation=${DIR}/state
SlurmdSpoolDir=${DIR}/spool
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$(logfile slurmctld)
SlurmdLogFile=$(logfile slurmd)
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
# Without a default, a job with no --mem takes the whole node's memory.
DefMemPerCPU=1000
EnforcePartLimits=ALL
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=${DBD_PORT}
AccountingStoragePass=${MUNGE_SOCKET}
AccountingStorageTRES=gres/gpu,gres/npu,gres/dcu
AccountingStorageEnforce=associations,limits,qos,safe
PriorityType=priority/multifactor
PriorityDecayHalfLife=0
PriorityUsageResetPeriod=MONTHLY
GresTypes=gpu,npu,dcu
MinJobAge=300
KillWait=5
InactiveLimit=0
MessageTimeout=30
ReturnToService=2
JobRequeue=1
MaxArraySize=4001
MaxJobCount=20000
SlurmdParameters=config_overrides
NodeName=${node} NodeAddr=127.0.0.1 CPUs=8 RealMemory=8000 Gres=gpu:2,npu:8,dcu:4 State=UNKNOWN
PartitionName=debug Nodes=${node} Default=YES MaxTime=INFINITE State=UP
PartitionName=ai Nodes=${node} MaxTime=2:00:00 State=UP
PartitionName=dcu Nodes=${node} MaxTime=2:00:00 State=UP
EOF

    cat >"${DIR}/gres.conf" <<EOF
# Generated by tests/slurm/cluster.sh
Name=gpu File=${DIR}/dev/gpu[0-1]
Name=npu File=${DIR}/dev/npu[0-7]
Name=dcu File=${DIR}/dev/dcu[0-3]
EOF

    write_db_configs "${user}"

    cat >"${DIR}/env.sh" <<EOF
# Source this file to use the test cluster in ${DIR}.
export SLURM_CONF=${SLURM_CONF_FILE}
EOF
    # NAME=VALUE lines that scripts/test.sh exports for the tests.
    printf 'SUANLI_TEST_SLURM_CONF=%s\n' "${SLURM_CONF_FILE}" >"${DIR}/env"
}

# write_db_configs USER: slurmdbd.conf, MariaDB's my.cnf and init file (shared with multinode.sh).
write_db_configs() {
    local user="$1" mem
    # slurmdbd.conf is read from the folder of SLURM_CONF; it must be mode 600.
    rm -f "${DIR}/slurmdbd.conf"
    (
        umask 077
        cat >"${DIR}/slurmdbd.conf" <<EOF
# Generated by tests/slurm/cluster.sh
AuthType=auth/munge
AuthInfo=socket=${MUNGE_SOCKET}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=${DBD_PORT}
SlurmUser=${user}
PidFile=$(pidfile slurmdbd)
LogFile=$(logfile slurmdbd)
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=${MARIADB_PORT}
StorageUser=${DB_USER}
StoragePass=${DB_PASS}
StorageLoc=slurm_acct_db
EOF
    )
    chmod 600 "${DIR}/slurmdbd.conf"

    mem="innodb_buffer_pool_size=128M"
    {
        echo "[client]"
        echo "port=${MARIADB_PORT}"
        echo "socket=${DB_SOCKET}"
        echo ""
        echo "[mysqld]"
        if [ "$(id -u)" -eq 0 ]; then echo "user=root"; fi
        echo "datadir=${DB_DATA}"
        echo "socket=${DB_SOCKET}"
        echo "port=${MARIADB_PORT}"
        echo "bind-address=127.0.0.1"
        echo "pid-file=$(pidfile mariadb)"
        echo "log-error=$(logfile mariadb)"
        echo "tmpdir=${DB_DIR}/tmp"
        echo "skip-name-resolve"
        echo "skip-log-bin"
        echo "init-file=${DB_INIT}"
        echo "${mem}"
        echo "innodb_log_file_size=64M"
        echo "innodb_lock_wait_timeout=900"
        echo "innodb_flush_log_at_trx_commit=2"
        echo "max_connections=200"
    } >"${DB_CNF}"

    # Run by the server at every start, before it accepts connections.
    cat >"${DB_INIT}" <<EOF
CREATE USER IF NOT EXISTS '${DB_USER}'@'127.0.0.1' IDENTIFIED BY '${DB_PASS}';
CREATE USER IF NOT EXISTS '${DB_USER}'@'localhost' IDENTIFIED BY '${DB_PASS}';
GRANT ALL PRIVILEGES ON *.* TO '${DB_USER}'@'127.0.0.1';
GRANT ALL PRIVILEGES ON *.* TO '${DB_USER}'@'localhost';
EOF
    chmod 600 "${DB_INIT}"
}

# ---------------------------------------------------------------- daemons

munge_ok() { munge -n -S "${MUNGE_SOCKET}" | unmunge -S "${MUNGE_SOCKET}"; }

start_munged() {
    # munged refuses key/socket folders that others can write to.
    chmod go-w "${DIR}"
    mkdir -p "${MUNGE_DIR}"
    chmod 755 "${MUNGE_DIR}"
    if [ ! -s "${MUNGE_KEY}" ]; then
        rm -f "${MUNGE_KEY}"
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="${MUNGE_KEY}"
        else
            dd if=/dev/urandom of="${MUNGE_KEY}" bs=1 count=1024 status=none
        fi
    fi
    chmod 400 "${MUNGE_KEY}"
    # Stale socket and lock from an earlier run (munged is not running here).
    rm -f "${MUNGE_SOCKET}" "${MUNGE_SOCKET}.lock"
    log "starting munged"
    launch munged munged --key-file="${MUNGE_KEY}" --socket="${MUNGE_SOCKET}" \
        --pid-file="$(pidfile munged)" --log-file="$(logfile munged)" \
        --seed-file="${MUNGE_DIR}/munged.seed"
    wait_for "munged" "$(logfile munged)" munged munge_ok
}

db_ok() {
    "$(db_client_bin)" --no-defaults --protocol=TCP -h 127.0.0.1 -P "${MARIADB_PORT}" \
        -u "${DB_USER}" -p"${DB_PASS}" --connect-timeout=2 -N -B -e 'SELECT @@datadir' |
        grep -xF "${DB_DATA}/" >/dev/null
}

start_mariadb() {
    local server
    server="$(db_server_bin)"
    mkdir -p "${DB_DIR}/tmp"
    if [ ! -d "${DB_DATA}/mysql" ]; then
        log "initialising MariaDB in ${DB_DATA}"
        rm -rf "${DB_DATA}"
        mkdir -p "${DB_DATA}"
        local -a user_opt=()
        if [ "$(id -u)" -eq 0 ]; then user_opt=(--user=root); fi
        if ! "$(db_install_bin)" --defaults-file="${DB_CNF}" "${user_opt[@]}" \
            --datadir="${DB_DATA}" --skip-test-db \
            >"${LOG_DIR}/mariadb-install-db.log" 2>&1; then
            tail -n 40 "${LOG_DIR}/mariadb-install-db.log" >&2 || true
            die "mariadb-install-db failed"
        fi
    fi
    rm -f "${DB_SOCKET}"
    log "starting MariaDB on 127.0.0.1:${MARIADB_PORT}"
    # mariadbd does not daemonise itself: detach it into its own session.
    # (No job control here, so setsid does not fork and $! is the server's pid;
    # the server rewrites the same pid into its pid file once it is ready.)
    setsid "${server}" --defaults-file="${DB_CNF}" </dev/null >>"$(logfile mariadb)" 2>&1 &
    echo "$!" >"$(pidfile mariadb)"
    wait_for "MariaDB on 127.0.0.1:${MARIADB_PORT}" "$(logfile mariadb)" mariadb db_ok
    wait_for "MariaDB pid file" "$(logfile mariadb)" "" live_pid mariadb
}

dbd_ok() { sacctmgr -n list cluster; }

start_slurmdbd() {
    log "starting slurmdbd on port ${DBD_PORT}"
    launch slurmdbd slurmdbd
    wait_for "slurmdbd (sacctmgr list cluster)" "$(logfile slurmdbd)" slurmdbd dbd_ok
}

add_cluster() {
    if sacctmgr -n -P list cluster format=cluster | grep -x "${CLUSTER}" >/dev/null; then
        return 0
    fi
    log "registering cluster ${CLUSTER} in slurmdbd"
    sacctmgr -i add cluster "${CLUSTER}" >/dev/null
}

ctld_ok() { scontrol ping | grep 'is UP' >/dev/null; }

start_slurmctld() {
    log "starting slurmctld on port ${CTLD_PORT}"
    launch slurmctld slurmctld
    wait_for "slurmctld (scontrol ping)" "$(logfile slurmctld)" slurmctld ctld_ok
}

node_states() { sinfo -h -N -o '%t' 2>/dev/null | sort -u | tr '\n' ' '; }

# Succeeds once every line of sinfo says idle; resumes a drained/invalid node.
node_idle() {
    local states
    states="$(node_states)"
    case "${states}" in
        "idle ") return 0 ;;
        *drain* | *drng* | *inval* | *fail*)
            scontrol update nodename="${NODE}" state=resume >/dev/null 2>&1 || true
            ;;
    esac
    return 1
}

start_slurmd() {
    log "starting slurmd on port ${SLURMD_PORT}"
    launch slurmd slurmd
    if ! wait_for "node ${NODE} to be idle (sinfo)" "$(logfile slurmd)" slurmd node_idle; then
        log "node state: $(node_states)"
        scontrol show node "${NODE}" >&2 || true
        log "last lines of $(logfile slurmctld):"
        tail -n 20 "$(logfile slurmctld)" >&2 || true
        return 1
    fi
}

ensure_account() {
    local acct="$1" descr="$2"
    if sacctmgr -n -P list account "${acct}" format=account | grep -x "${acct}" >/dev/null; then
        return 0
    fi
    sacctmgr -i add account "${acct}" Description="${descr}" Organization=slurmtest >/dev/null
}

assoc_known() {
    scontrol show assoc_mgr users="$1" accounts="$2" flags=assoc | grep -F "Account=$2 UserName=$1(" >/dev/null
}

add_accounts() {
    local user="$1"
    ensure_account acct-a "test account a"
    ensure_account acct-b "test account b"
    # "add user" for a user that already has associations (root gets one in
    # the account root with the cluster) only adds the new associations.
    sacctmgr -i add user "${user}" Account=acct-a,acct-b DefaultAccount=acct-a >/dev/null 2>&1 || true
    sacctmgr -i modify user where name="${user}" set DefaultAccount=acct-a >/dev/null 2>&1 || true
    local acct
    for acct in acct-a acct-b; do
        sacctmgr -n -P list assoc users="${user}" account="${acct}" format=account | grep -x "${acct}" >/dev/null ||
            die "association of ${user} with ${acct} is missing"
        wait_for "slurmctld to learn the association ${user}/${acct}" "$(logfile slurmctld)" "" \
            assoc_known "${user}" "${acct}"
    done
}

# ---------------------------------------------------------------- commands

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

all_alive() {
    local d
    for d in "${DAEMONS[@]}"; do live_pid "${d}" >/dev/null || return 1; done
}

any_alive() {
    local d
    for d in "${DAEMONS[@]}"; do live_pid "${d}" >/dev/null && return 0; done
    return 1
}

on_start_failure() {
    local rc=$?
    trap - EXIT
    if [ "${rc}" -ne 0 ]; then
        if [ "${SLURM_TEST_KEEP_ON_FAILURE:-0}" = 1 ]; then
            log "start failed; daemons left running (SLURM_TEST_KEEP_ON_FAILURE=1); logs in ${LOG_DIR}"
        else
            log "start failed; stopping what was started (logs in ${LOG_DIR})"
            do_stop >/dev/null 2>&1 || true
        fi
    fi
    exit "${rc}"
}

do_start() {
    ensure_packages
    local user
    user="$(id -un)"
    NODE="$(hostname -s)"
    export SLURM_CONF="${SLURM_CONF_FILE}"

    if all_alive; then
        log "cluster in ${DIR} is already running"
        echo "export SLURM_CONF=${SLURM_CONF_FILE}"
        return 0
    fi
    if any_alive; then
        log "cluster in ${DIR} is partly running: stopping it first"
        do_stop
    fi

    local port
    for port in "${MARIADB_PORT}" "${DBD_PORT}" "${CTLD_PORT}" "${SLURMD_PORT}"; do
        if port_in_use "${port}"; then
            die "port ${port} on 127.0.0.1 is in use (another cluster?); choose others with SLURM_TEST_MARIADB_PORT, SLURM_TEST_DBD_PORT, SLURM_TEST_CTLD_PORT, SLURM_TEST_SLURMD_PORT"
        fi
    done

    trap on_start_failure EXIT
    write_configs "${NODE}" "${user}"
    start_munged
    start_mariadb
    start_slurmdbd
    add_cluster
    start_slurmctld
    start_slurmd
    add_accounts "${user}"
    trap - EXIT
    log "cluster ${CLUSTER} is up in ${DIR} (node ${NODE}, partitions debug, ai and dcu)"
    echo "export SLURM_CONF=${SLURM_CONF_FILE}"
}

# SIGTERM, wait up to 20 s, then SIGKILL.
stop_pid() {
    local name="$1" pid="$2" i
    log "stopping ${name} (pid ${pid})"
    kill -TERM "${pid}" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        live_pid "${name}" >/dev/null || return 0
        sleep 0.2
    done
    log "${name} (pid ${pid}) did not stop in 20 s: SIGKILL"
    kill -KILL "${pid}" 2>/dev/null || true
    for ((i = 0; i < 25; i++)); do
        live_pid "${name}" >/dev/null || return 0
        sleep 0.2
    done
}

# slurmstepd processes started by this cluster's slurmd (they inherit its
# SLURM_CONF, which names this DIR).
own_stepds() {
    local p pid
    for p in /proc/[0-9]*; do
        pid="${p#/proc/}"
        [ "$(cat "${p}/comm" 2>/dev/null)" = slurmstepd ] || continue
        grep -qzxF "SLURM_CONF=${SLURM_CONF_FILE}" "${p}/environ" 2>/dev/null || continue
        echo "${pid}"
    done
}

do_stop() {
    local d pid jobs i
    export SLURM_CONF="${SLURM_CONF_FILE}"
    # Cancel the jobs first, so that slurmd's step daemons end their processes.
    if live_pid slurmctld >/dev/null && live_pid slurmd >/dev/null; then
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
    log "cluster in ${DIR} is stopped"
}

do_status() {
    local d pid rc=0
    for d in munged mariadb slurmdbd slurmctld slurmd; do
        if pid="$(live_pid "${d}")"; then
            printf '%-10s running (pid %s)\n' "${d}" "${pid}"
        else
            printf '%-10s not running\n' "${d}"
            rc=1
        fi
    done
    return "${rc}"
}

main() {
    [ "$#" -eq 2 ] || usage
    local cmd="$1"
    case "${cmd}" in
        start)
            set_paths "$2"
            do_start
            ;;
        stop)
            [ -d "$2" ] || { log "no such folder $2: nothing to stop"; return 0; }
            set_paths "$2"
            do_stop
            ;;
        status)
            [ -d "$2" ] || { log "no such folder $2"; return 1; }
            set_paths "$2"
            do_status
            ;;
        *) usage ;;
    esac
}

# Sourced by tests/slurm/multinode.sh for its functions; run directly, it is the single-node cluster.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
