"""How a Slurm job's tasks start: the layout of arrays split at MaxArraySize, the native ids of a split job,
MPI launch lines (srun or mpirun), and the shell that hands each node its own accelerator indices."""

from __future__ import annotations

import os
import sys

from suanli.compute.base import JobRef, Submission
from suanli.jobs.spec import MPI, Array


def split_array(array: Array, max_size: int) -> list[tuple[int, str]]:
    """Indices at or above MaxArraySize go into further arrays: ``(offset, --array text)`` each, where the
    job's task id is the offset plus the array's own index. The ``%`` limit applies to each array."""
    groups: dict[int, list[int]] = {}
    for i in array.indices:
        groups.setdefault(i // max_size * max_size, []).append(i)
    return [(offset, Array(tuple(i - offset for i in idx), array.max_concurrent).compact())
            for offset, idx in sorted(groups.items())]


def native_parts(ref: JobRef) -> list[tuple[str, int]]:
    """(native id, task offset) of each Slurm array that makes up the job (one for most jobs)."""
    if not ref.native_id:
        return []
    if "," not in ref.native_id:  # one Slurm job or array, the common case (a poll asks this once per job)
        chunks1 = ref.layout.get("chunks") if ref.layout else None
        return [(ref.native_id, int(chunks1[0][0]) if chunks1 and len(chunks1) == 1 else 0)]
    ids = ref.native_id.split(",")
    chunks = ref.layout.get("chunks") or [[0, None]]
    offsets = [int(c[0]) for c in chunks]
    if len(offsets) != len(ids):
        offsets = [0] * len(ids)
    return list(zip(ids, offsets, strict=True))


#: Run by srun on every node before the task: that node's indices from SUANLI_ACCELERATOR_MAP (fixed code; the
#: task's argv follows as "$@", never inside this string).
_PICK_NODE_DEVICES = (
    'for _e in ${SUANLI_ACCELERATOR_MAP//;/ }; do if [ "${_e%%=*}" = "${SLURMD_NODENAME:-}" ]; then '
    'export SUANLI_ACCELERATOR_IDS="${_e#*=}"; if [ -n "${SUANLI_DEVICE_VAR:-}" ]; then '
    'export "$SUANLI_DEVICE_VAR=${_e#*=}"; fi; fi; done; exec "$@"'
)


def needs_per_node_devices(sub: Submission) -> bool:
    """Several nodes holding accelerators whose variable Slurm does not set: each node picks its own indices."""
    res = sub.spec.resources
    return res.nodes > 1 and bool(res.accelerators_per_node) and not sub.adapter.scheduler_sets_devices


def mpi_launch(sub: Submission, w: MPI) -> list[str]:
    """The launch line of an MPI job. ``srun --mpi=pmix`` starts each rank as a Slurm task (Slurm's PMIx
    server wires them up), through ``suanli.runtime.launch --srun``, which names the network the ranks' TCP
    transport uses; ``mpirun`` (the job's ``launcher`` over the partition's ``mpi_launcher``) runs on
    the first node and reads the hosts and slots from the allocation (Open MPI's Slurm support), started
    through ``suanli.runtime.launch --mpirun``, which names the interface its daemons and ranks talk over. On
    several nodes with accelerators each rank first takes its own node's indices (mpirun's daemons are Slurm
    tasks too, so every rank sees its node's SLURMD_NODENAME)."""
    res = sub.spec.resources
    ranks = w.total_ranks(res)
    launcher = w.launcher or sub.partition.mpi_launcher or "srun"
    binding = sub.adapter.mpi_binding(launcher, w.procs_per_node(res), sub.partition.numa_nodes)
    program = list(w.argv)
    if needs_per_node_devices(sub):
        program = ["bash", "-c", _PICK_NODE_DEVICES, "suanli-task", *program]
    if launcher == "mpirun":
        head = [sys.executable, "-m", "suanli.runtime.launch", "--mpirun", "mpirun", "-np", str(ranks)]
        if os.geteuid() == 0:
            head.append("--allow-run-as-root")
        return [*head, *(binding or ["--oversubscribe"]), *program]
    return [sys.executable, "-m", "suanli.runtime.launch", "--srun", "srun", "--mpi=pmix", "--kill-on-bad-exit=1",
            f"--ntasks={ranks}", *binding, *program]


def per_node_devices(srun_argv: list[str]) -> list[str]:
    """``srun [opts] ARGV`` -> ``srun [opts] bash -c PICK suanli-task ARGV``: each node's tasks see the indices
    Slurm gave that node (another node of the same job may hold different ones)."""
    first = next(i for i, a in enumerate(srun_argv[1:], 1) if not a.startswith("-"))
    return [*srun_argv[:first], "bash", "-c", _PICK_NODE_DEVICES, "suanli-task", *srun_argv[first:]]


def device_lines(gres: str | None, var: str | None, scheduler_sets: bool = False) -> str:
    """Shell that exports the allocated device indices, per node: ``scontrol show job -d`` lists each node's
    GRES indices (a 2-node job may hold 2-3 on one node and 0-1 on the other), written to
    SUANLI_ACCELERATOR_MAP (``node=ids;...``); this node's entry becomes SUANLI_ACCELERATOR_IDS, and each rank's
    ``suanli.runtime.launch`` picks its own node's entry. Slurm sets CUDA_VISIBLE_DEVICES for gpu GRES itself
    (the adapter says so: ``scheduler_sets``) but nothing for other GRES such as npu, so for those the adapter's
    variable is exported from the allocation."""
    if not gres or not var:
        return ":"
    lines = [
        "suanli_ids() {  # 0-2,5 -> 0,1,2,5",
        "    local out='' part",
        "    for part in ${1//,/ }; do",
        '        if [[ $part == *-* ]]; then out+="$(seq -s, "${part%-*}" "${part#*-}"),"; else out+="$part,"; fi',
        "    done",
        '    printf %s "${out%,}"',
        "}",
        'SUANLI_ACCELERATOR_MAP=""',
        "while read -r _nodes _idx; do",
        '    for _h in $(scontrol show hostnames "$_nodes" 2>/dev/null); do',
        '        SUANLI_ACCELERATOR_MAP+="$_h=$(suanli_ids "$_idx");"',
        "    done",
        'done < <(scontrol show job -d "$SLURM_JOB_ID" 2>/dev/null '
        f"| sed -n 's/^ *Nodes=\\([^ ]*\\) .*GRES={gres}:[^(]*(IDX:\\([^)]*\\)).*/\\1 \\2/p')",
        'SUANLI_ACCELERATOR_IDS=""',
        "IFS=';' read -ra _entries <<< \"$SUANLI_ACCELERATOR_MAP\"",
        'for _e in "${_entries[@]}"; do',
        '    if [ "${_e%%=*}" = "${SLURMD_NODENAME:-}" ]; then SUANLI_ACCELERATOR_IDS="${_e#*=}"; fi',
        "done",
        'if [ -z "$SUANLI_ACCELERATOR_IDS" ] && [ -n "${_entries[0]:-}" ]; then',
        '    SUANLI_ACCELERATOR_IDS="${_entries[0]#*=}"  # a node name Slurm spells otherwise: the first entry',
        'fi',
        "export SUANLI_ACCELERATOR_MAP SUANLI_ACCELERATOR_IDS",
    ]
    if not scheduler_sets:
        # The allocation wins over whatever the submitting shell had exported.
        lines.append(f'if [ -n "$SUANLI_ACCELERATOR_IDS" ]; then export {var}="$SUANLI_ACCELERATOR_IDS"; fi')
        lines.append(f"export SUANLI_DEVICE_VAR={var}")
    return "\n".join(lines)
