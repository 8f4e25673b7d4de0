#!/usr/bin/env bash
# A throwaway single-node Ray head for the tests: CPU only, plus a custom "NPU" resource so the Ascend path can be
# tested (and a 6-NPU request is impossible).
#
#   bash tests/ray/head.sh start DIR    # starts the head with its temp dir under DIR, writes DIR/env
#   bash tests/ray/head.sh stop DIR     # stops that head only (a user's own Ray on this machine is untouched)
#
# DIR/env holds NAME=VALUE lines for the tests (SUANLI_TEST_RAY_ADDRESS=http://127.0.0.1:PORT). The ports default
# to values beside Ray's defaults, so they do not clash with a head the user started with `ray start --head`;
# override them with SUANLI_TEST_RAY_PORT, SUANLI_TEST_RAY_DASHBOARD_PORT, SUANLI_TEST_RAY_CLIENT_PORT,
# SUANLI_TEST_RAY_AGENT_PORT. SUANLI_TEST_RAY_CPUS (2) and SUANLI_TEST_RAY_NPUS (4) size the head.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
    echo "usage: $0 start|stop DIR" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")/../.." && pwd)
venv=${VENV:-$here/.venv}
RAY=${RAY:-$venv/bin/ray}
[ -x "$RAY" ] || RAY=$(command -v ray || true)
if [ -z "$RAY" ]; then
    echo "head.sh: ray not found; pip install 'suanli[ray]' (or set RAY=/path/to/ray)" >&2
    exit 1
fi

port=${SUANLI_TEST_RAY_PORT:-6389}
dash=${SUANLI_TEST_RAY_DASHBOARD_PORT:-8275}
client=${SUANLI_TEST_RAY_CLIENT_PORT:-23001}
agent=${SUANLI_TEST_RAY_AGENT_PORT:-52375}
cpus=${SUANLI_TEST_RAY_CPUS:-2}
npus=${SUANLI_TEST_RAY_NPUS:-4}

# Ray writes unix sockets under its temp dir, whose paths must stay below ~107 characters: keep it short.
head_pids() {  # every process of this head: its command line names the head's temp dir, or (for those that
    # rename themselves, such as ray::DashboardAgent) its environment carries SUANLI_RAY_HEAD=<temp dir>
    local tmp=$1 p
    for p in /proc/[0-9]*; do
        if { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null | grep -qF -- "$tmp" \
            || { tr '\0' '\n' < "$p/environ"; } 2>/dev/null | grep -qxF -- "SUANLI_RAY_HEAD=$tmp"; then
            echo "${p#/proc/}"
        fi
    done
}

stop_head() {
    local tmp
    tmp=$(cat "$dir/tmpdir" 2>/dev/null || true)
    [ -n "$tmp" ] || return 0
    local pids
    pids=$(head_pids "$tmp" | grep -vx "$$" || true)
    [ -n "$pids" ] || return 0
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 50); do  # up to 10 s for a clean exit
        pids=$(for p in $pids; do [ -d "/proc/$p" ] && echo "$p"; done)
        [ -n "$pids" ] || return 0
        sleep 0.2
    done
    kill -KILL $pids 2>/dev/null || true
}

case "$cmd" in
start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    tmp=$(mktemp -d /tmp/srt.XXXXXX)
    echo "$tmp" > "$dir/tmpdir"
    : > "$dir/env"
    # Explicit, so that a ~/.ray/auth_token left by some embedded ray.init() does not switch this head to token
    # auth; no usage statistics; a pending job that can never start is failed after 60 s, not 15 minutes.
    export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
    export RAY_USAGE_STATS_ENABLED=0
    export RAY_JOB_START_TIMEOUT_SECONDS=${RAY_JOB_START_TIMEOUT_SECONDS:-60}
    export SUANLI_RAY_HEAD="$tmp"  # inherited by every process of the head, so `stop` finds them all
    if ! "$RAY" start --head --port "$port" --dashboard-host 127.0.0.1 --dashboard-port "$dash" \
        --ray-client-server-port "$client" --dashboard-agent-listen-port "$agent" \
        --num-cpus "$cpus" --num-gpus 0 --resources "{\"NPU\": $npus}" \
        --object-store-memory $((200 * 1024 * 1024)) --temp-dir "$tmp" --disable-usage-stats \
        > "$dir/start.log" 2>&1; then
        cat "$dir/start.log" >&2
        stop_head
        rm -rf "$tmp"
        exit 1
    fi
    url="http://127.0.0.1:$dash"
    for _ in $(seq 1 240); do  # the Jobs API answers a few seconds after `ray start` returns; at most 120 s
        if curl -fsS -m 2 "$url/api/version" >/dev/null 2>&1 ||
            "$venv/bin/python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
                "$url/api/version" >/dev/null 2>&1; then
            {
                echo "SUANLI_TEST_RAY_ADDRESS=$url"
                echo "SUANLI_TEST_RAY_GCS=127.0.0.1:$port"
                echo "RAY_AUTH_MODE=$RAY_AUTH_MODE"
                echo "RAY_USAGE_STATS_ENABLED=0"
            } > "$dir/env"
            echo "head.sh: Ray head up, Jobs API at $url (temp dir $tmp)"
            exit 0
        fi
        sleep 0.5
    done
    echo "head.sh: the Jobs API at $url did not answer within 120 s" >&2
    tail -n 30 "$dir/start.log" >&2
    stop_head
    rm -rf "$tmp"
    exit 1
    ;;
stop)
    [ -d "$dir" ] || exit 0
    stop_head
    tmp=$(cat "$dir/tmpdir" 2>/dev/null || true)
    case "$tmp" in /tmp/srt.*) rm -rf "$tmp" ;; esac
    rm -f "$dir/tmpdir"
    echo "head.sh: stopped"
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
