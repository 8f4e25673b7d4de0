#!/usr/bin/env bash
# Start-up and stop time of the 3-node Slurm test cluster (tests/slurm/multinode.sh): "cold" in a fresh folder
# (MariaDB initialised, accounts created), "warm" restarted in the same folder; median of N rounds (default 3).
# Needs root and no other multinode.sh cluster running. Usage: bash bench/bench_multinode_startup.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
now_ms() { echo $(($(date +%s%N) / 1000000)); }
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
cold=() warm=() stop=()
for ((i = 0; i < rounds; i++)); do
    dir="$(mktemp -d /tmp/suanli-mnbench.XXXXXX)"
    trap 'bash tests/slurm/multinode.sh stop "$dir" >/dev/null 2>&1; rm -rf "$dir"' EXIT
    t=$(now_ms); bash tests/slurm/multinode.sh start "$dir" >/dev/null 2>"$dir.log"; cold+=($(($(now_ms) - t)))
    t=$(now_ms); bash tests/slurm/multinode.sh stop "$dir" 2>>"$dir.log"; stop+=($(($(now_ms) - t)))
    t=$(now_ms); bash tests/slurm/multinode.sh start "$dir" >/dev/null 2>>"$dir.log"; warm+=($(($(now_ms) - t)))
    bash tests/slurm/multinode.sh stop "$dir" 2>>"$dir.log"
    rm -rf "$dir" "$dir.log"
    trap - EXIT
done
printf 'multinode.sh start, fresh folder (cold): median %s ms of %s (%s)\n' \
    "$(printf '%s\n' "${cold[@]}" | median)" "$rounds" "${cold[*]}"
printf 'multinode.sh start, same folder (warm):  median %s ms of %s (%s)\n' \
    "$(printf '%s\n' "${warm[@]}" | median)" "$rounds" "${warm[*]}"
printf 'multinode.sh stop:                       median %s ms of %s (%s)\n' \
    "$(printf '%s\n' "${stop[@]}" | median)" "$rounds" "${stop[*]}"
