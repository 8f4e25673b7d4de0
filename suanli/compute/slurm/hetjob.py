"""Heterogeneous jobs (``JobSpec.components``) on Slurm: each component after the first is checked against its
own partition and becomes one ``: --opt=value ...`` group of sbatch's command line (never ``#SBATCH`` text);
the batch script starts every component with ``srun --het-group=N`` at once, waits for all of them and fails
when any fails. Each component's tasks get their adapter's environment and the accelerator indices Slurm gave
that component on their node (Slurm sets no variable for GRES such as npu)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from suanli.adapters import get_adapter
from suanli.adapters.base import Adapter
from suanli.compute import script as sh
from suanli.compute.base import Submission
from suanli.compute.config import PartitionConfig
from suanli.compute.fit import check_fits
from suanli.compute.slurm.sbatch import request_options
from suanli.errors import UsageError
from suanli.jobs.components import Command
from suanli.jobs.resources import Resources


@dataclass(frozen=True)
class Part:
    """One component as it will run: its command, its prepared request, its partition and adapter."""

    index: int
    workload: Command
    resources: Resources
    partition: PartitionConfig
    adapter: Adapter
    #: The QoS and constraint sbatch gets for this component (None: none).
    qos: str | None = None
    constraint: str | None = None


def _users_own(value: str | None, filled: str | None) -> str | None:
    """The job's own ``--qos``/``--constraint``: ``Client.prepare`` fills a spec that has none with component
    0's partition's, so a value equal to that one counts as the partition's, not the user's."""
    return value if value and value != filled else None


def _qos(sub: Submission, i: int, part: PartitionConfig) -> str | None:
    """Component ``i``'s QoS: the user's for the whole job, else its own partition's. sbatch carries a QoS on
    to later components, so one whose partition has none while component 0 runs with one is refused."""
    qos = _users_own(sub.spec.qos, sub.partition.qos) or part.qos
    if qos is None and sub.spec.qos:
        raise UsageError(f"components[{i}].partition: partition {part.name!r} sets no QoS, but component 0 runs "
                         f"with QoS {sub.spec.qos!r}, which Slurm would carry on to this component; give the "
                         f"job one QoS (--qos / qos:) or set qos on partition {part.name!r} in the cluster config")
    return qos


def parts(sub: Submission) -> list[Part]:
    """Every component, checked: component 0 is the job's own request (``Client.prepare`` checked it against
    the job's partition); each further one against its own partition, with the job's time limit."""
    spec = sub.spec
    out = [Part(0, spec.components[0].workload, spec.resources, sub.partition, sub.adapter, spec.qos,
                spec.constraint)]
    constraint = _users_own(spec.constraint, sub.partition.constraint)
    for i, comp in enumerate(spec.components[1:], 1):
        try:
            part = sub.cluster.partition(comp.partition)
            adapter = get_adapter(part.adapter)
            res = dataclasses.replace(comp.resources, time=spec.resources.time)
            if res.accelerators_per_node and res.accelerator_kind is None and adapter.accelerator_kind:
                res = dataclasses.replace(res, accelerator_kind=adapter.accelerator_kind)
            where = f"partition {part.name!r} of cluster {sub.cluster.name!r}"
            adapter.check(res, where)
            check_fits(res, part, where)
            if spec.resources.memory_mb and not res.memory_mb:
                # sbatch hands --mem on to the next component unless it names its own.
                raise UsageError("resources.memory: component 0 asks for memory, which Slurm would give this "
                                 "component too; set memory on every component or on none")
        except UsageError as exc:
            raise UsageError(f"components[{i}].{exc}") from None
        out.append(Part(i, comp.workload, res, part, adapter, _qos(sub, i, part), constraint or part.constraint))
    return out


def describe(components: list[Part]) -> list[dict[str, object]]:
    """Each component's partition, adapter and prepared request (``Plan.details["components"]``): what a
    worst-case estimate of the whole job adds up."""
    return [{"partition": p.partition.name, "adapter": p.adapter.name, "resources": p.resources.to_dict()}
            for p in components]


def sbatch_groups(sub: Submission, components: list[Part]) -> list[str]:
    """``: --partition=... --nodes=...`` for each component after the first. Every option a component needs is
    given again, not left to sbatch's propagation from the component before."""
    spec = sub.spec
    out: list[str] = []
    for p in components[1:]:
        res = p.resources
        out += [":", f"--partition={p.partition.name}", f"--nodes={res.nodes}",
                f"--ntasks-per-node={res.tasks_per_node}", f"--cpus-per-task={res.cpus_per_task}"]
        # --mem-per-cpu is reset for each component by sbatch: the job's, again.
        out += request_options(res, account=spec.account, qos=p.qos, constraint=p.constraint,
                               gres=[f"{p.adapter.gres_name or 'gpu'}:{res.accelerators_per_node}"]
                               if res.accelerators_per_node else [],
                               mem_per_cpu_mb=spec.scheduler.mem_per_cpu_mb)
    return out


#: Run by srun before each component's task (fixed code; the group, the device variable and the task's argv
#: follow as arguments, never inside this string): that component's indices on this node.
_PICK = (
    '_g=$1; _v=$2; shift 2; unset SUANLI_ACCELERATOR_IDS SUANLI_DEVICE_VAR; _m="SUANLI_ACCELERATOR_MAP_$_g"; '
    'export SUANLI_ACCELERATOR_MAP="${!_m:-}" SUANLI_HET_GROUP="$_g"; '
    'IFS=";" read -ra _es <<< "$SUANLI_ACCELERATOR_MAP"; '  # split without word splitting or globbing
    'for _e in "${_es[@]}"; do if [ "${_e%%=*}" = "${SLURMD_NODENAME:-}" ]; then '
    'export SUANLI_ACCELERATOR_IDS="${_e#*=}"; if [ -n "$_v" ]; then export "$_v=${_e#*=}" SUANLI_DEVICE_VAR="$_v"; '
    'fi; fi; done; exec "$@"'
)

#: Shell that reads one component's GRES indices per node from ``scontrol show job -d`` (the leader's id lists
#: every component: only the record of the component's own id is read). Lists are split with ``read -a``,
#: never by unquoted expansion (no globbing).
_MAP_FUNCTIONS = r"""suanli_ids() {  # 0-2,5 -> 0,1,2,5
    local out='' part parts=()
    IFS=, read -ra parts <<< "$1"
    for part in "${parts[@]}"; do
        if [[ $part == *-* ]]; then out+="$(seq -s, "${part%-*}" "${part#*-}"),"; else out+="$part,"; fi
    done
    printf %s "${out%,}"
}
suanli_het_map() {  # component job id, gres name -> node=ids;node=ids;
    local out='' nodes idx h
    [ -n "$1" ] || return 0
    while read -r nodes idx; do
        while read -r h; do
            [ -n "$h" ] && out+="$h=$(suanli_ids "$idx");"
        done < <(scontrol show hostnames "$nodes" 2>/dev/null)
    done < <(scontrol show job -d "$1" 2>/dev/null | awk -v id="JobId=$1" '$1 ~ /^JobId=/ {on = ($1 == id)} on' \
             | sed -n "s/^ *Nodes=\([^ ]*\) .*GRES=$2:[^(]*(IDX:\([^)]*\)).*/\1 \2/p")
    printf %s "$out"
}"""


def device_lines(components: list[Part]) -> str:
    """Each component's accelerator map (``SUANLI_ACCELERATOR_MAP_<N>``), for the components holding some."""
    lines = []
    for p in components:
        gres = p.adapter.gres_name
        if p.resources.accelerators_per_node and gres:
            job = f'"${{SLURM_JOB_ID_HET_GROUP_{p.index}:-}}"'
            lines.append(f'SUANLI_ACCELERATOR_MAP_{p.index}="$(suanli_het_map {job} {sh.quote(gres)})"')
            lines.append(f"export SUANLI_ACCELERATOR_MAP_{p.index}")
    return "\n".join([_MAP_FUNCTIONS, *lines]) if lines else ":"


#: Seconds the other components get to stop after one failed, before the script returns (and Slurm ends the
#: job, killing whatever is left of its steps).
STOP_GRACE_S = 60

#: Waits for the components (``pids``) one by one: ``wait -n`` (bash 4.3+, else a one-second poll) wakes on any
#: exit; the first failure records its code and TERMs the rest, which get ``STOP_GRACE_S`` to end.
_WAIT = f"""    local waitn=(wait -n)
    (( BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 403 )) || waitn=(sleep 1)
    while [ "$n" -lt "${{#pids[@]}}" ]; do
        if [ "$rc" -eq 0 ]; then "${{waitn[@]}}" 2>/dev/null; else sleep 1; [ "$SECONDS" -lt "$grace" ] || break; fi
        for i in "${{!pids[@]}}"; do
            if [ -n "${{done[$i]:-}}" ] || kill -0 "${{pids[$i]}}" 2>/dev/null; then continue; fi
            wait "${{pids[$i]}}"; r=$?; done[$i]=1; n=$((n + 1))
            if [ "$r" -ne 0 ] && [ "$rc" -eq 0 ]; then
                rc=$r; grace=$((SECONDS + {STOP_GRACE_S})); kill -TERM "${{pids[@]}}" 2>/dev/null
            fi
        done
    done
    return \"$rc\""""


def launch_text(sub: Submission, components: list[Part]) -> str:
    """A shell function that starts every component at once and returns the first failure's exit code (0 when
    all succeed; a failure stops the others), then its call: the batch script runs it as its one child (and
    TERM reaches every srun). With ``stdin``, component 0's srun reads the job's input: a background command
    without job control would read /dev/null."""
    body = []
    for p in components:
        var = "" if p.adapter.scheduler_sets_devices else (p.adapter.device_env_var or "")
        env = {"SUANLI_ADAPTER": p.adapter.name, **p.adapter.environment(p.resources)}
        env = {k: v for k, v in env.items() if k not in sub.spec.env}  # the job's own env wins, as elsewhere
        argv = ["srun", f"--het-group={p.index}", "--kill-on-bad-exit=1", "env",
                *(f"{k}={v}" for k, v in sorted(env.items())),
                "bash", "-c", _PICK, "suanli-task", str(p.index), var, *p.workload.argv]
        stdin = " <&0" if p.index == 0 and sub.spec.stdin is not None else ""
        body += [f"    {sh.join_argv(argv)}{stdin} &", '    pids+=("$!")']
    return "\n".join([
        "suanli_components() {  # every component at once; the first failure's exit code",
        "    local pids=() done=() rc=0 r i n=0 grace=0",
        "    trap 'kill -TERM \"${pids[@]}\" 2>/dev/null' TERM",
        *body,
        _WAIT,
        "}",
        "suanli_components",
    ])
