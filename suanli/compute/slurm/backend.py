"""The Slurm backend. It builds argv lists and scripts; the parsers live in ``parse.py``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from suanli.compute import script as sh
from suanli.compute.base import Backend, JobRef, NativeStatus, Plan, Submission, TaskKey
from suanli.compute.config import ClusterConfig
from suanli.compute.payload import PAYLOAD, function_argv, function_payload, suanli_pythonpath
from suanli.compute.sbatch import resource_options
from suanli.compute.slurm import parse
from suanli.errors import BackendError, UsageError
from suanli.jobs.spec import MPI, Array, Command, Function, Map, Training

#: Messages of a busy or restarting slurmctld: worth a bounded retry, unlike a refusal.
TRANSIENT = ("Socket timed out", "Unable to contact slurm controller", "Connection refused", "Zero Bytes were",
             "Resource temporarily unavailable", "slurm_receive_msg", "Transport endpoint")
#: Of those, the ones that prove the request never reached slurmctld: the only ones after which a
#: submission may be sent again (after a time-out the job may have been queued already).
NEVER_ARRIVED = ("Unable to contact slurm controller", "Connection refused")
RETRY_DELAYS = (1.0, 2.0, 4.0)
COMMAND_TIMEOUT_S = 60.0
#: Retries stop once this much time has gone: sbatch alone spends ~30 s before it gives up on a dead controller.
RETRY_BUDGET_S = 45.0
_NAME_OK = re.compile(r"[^A-Za-z0-9._+-]")
#: An array with indices at or above MaxArraySize is split into at most this many Slurm arrays, so a cluster's
#: default cap on array tasks (``max_array_size``) is MaxArraySize x this.
MAX_SPLIT_ARRAYS = 100
_CHUNK_LOG = re.compile(r"/chunk-(\d+)-%a\.out")


def slurm_name(name: str) -> str:
    """The scheduler-side job name: Slurm tools print names in tables and parsable output, so anything but
    plain characters is replaced (the registry keeps the verbatim name)."""
    return (_NAME_OK.sub("_", name) or "job")[:64]


#: sbatch calls per second one process sends to a cluster by default (``slurm.submit_rate`` in its config); raw
#: sbatch manages ~100/s on a small test controller; 60/s leaves it room for everyone else.
DEFAULT_SUBMIT_RATE = 60.0
#: Submissions that pass at once before the rate applies.
SUBMIT_BURST = 20.0


class TokenBucket:
    """Lets bursts of submissions through at once and throttles only sustained floods to ``rate`` per second,
    instead of sleeping on every call; protects slurmctld's RPC rate limit. A call past the burst books its
    token in advance (the bucket goes into debt) and sleeps until it is earned, so the sustained rate is
    ``rate`` exactly: time slept is never counted again as refill, and an oversleep is credited to the next
    call. ``clock``/``sleep`` are injectable so the spacing can be tested without waiting."""

    def __init__(self, rate: float = DEFAULT_SUBMIT_RATE, capacity: float = SUBMIT_BURST,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0 or capacity < 1:
            raise ValueError("a token bucket needs rate > 0 and capacity >= 1")
        self.capacity, self.rate = capacity, rate
        self.clock, self.sleep = clock, sleep
        self.tokens = capacity
        self.stamp = clock()
        self.lock = threading.Lock()

    def reserve(self) -> float:
        """Take one token; the seconds to wait before using it (0 within the burst)."""
        with self.lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= 1
            return -self.tokens / self.rate if self.tokens < 0 else 0.0

    def take(self) -> None:
        delay = self.reserve()
        if delay > 0:  # outside the lock: other threads book their own later slots meanwhile
            self.sleep(delay)


_BUCKETS: dict[tuple[str, float], TokenBucket] = {}
_BUCKETS_LOCK = threading.Lock()


def bucket_for(cluster: str, rate: float) -> TokenBucket:
    """One bucket per cluster (and rate) per process: every Client and thread of a process shares it."""
    with _BUCKETS_LOCK:
        bucket = _BUCKETS.get((cluster, rate))
        if bucket is None:
            bucket = _BUCKETS[(cluster, rate)] = TokenBucket(rate)
        return bucket


class SlurmBackend(Backend):
    name = "slurm"
    poll_initial_s = 0.5
    poll_max_s = 30.0
    #: Ended jobs are booked from sacct (TotalCPU, steps, jobs suanli did not submit), not the registry.
    usage_source = "sacct"

    def __init__(self, cluster: ClusterConfig) -> None:
        super().__init__(cluster)
        self.env = dict(os.environ)
        conf = cluster.slurm.get("conf")
        if conf:
            self.env["SLURM_CONF"] = str(conf)
        self.signal_s = int(cluster.slurm.get("signal_seconds", 90))
        size = cluster.slurm.get("max_array_size")
        self._max_array: int | None = int(size) if size else None
        self.bucket = bucket_for(cluster.name, float(cluster.slurm.get("submit_rate") or DEFAULT_SUBMIT_RATE))

    def max_array_size(self) -> int:
        """Slurm's MaxArraySize (array indices must stay below it), from the config or asked once."""
        if self._max_array is None:
            # One quick question, no retries: a dry run must not hang on an unreachable controller.
            try:
                proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                                      env=self.env, timeout=10)
                size = parse.parse_config(proc.stdout).get("MaxArraySize", "")
                self._max_array = int(size) if size.isdigit() else 1001
            except (OSError, subprocess.TimeoutExpired):
                self._max_array = 1001  # Slurm's default
        return self._max_array

    def config(self) -> dict[str, str]:
        """The controller's configuration (``scontrol show config``), with the usual retries."""
        return parse.parse_config(self.run(["scontrol", "show", "config"], "scontrol show config").stdout)

    def stream(self, argv: list[str], what: str) -> Iterator[str]:
        """A Slurm command's stdout line by line, never all of it in memory (a centre's sacct history runs to
        gigabytes); a failure after the last line raises BackendError."""
        with tempfile.TemporaryFile("w+") as errfile:  # a file, so a chatty stderr can never block stdout
            try:
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errfile, text=True, env=self.env,
                                        errors="replace")
            except FileNotFoundError:
                raise BackendError(f"{what}: {argv[0]} not found; install the Slurm client tools "
                                   "(apt-get install slurm-client) or run this on a login node") from None
            assert proc.stdout is not None
            try:
                yield from proc.stdout
                rc = proc.wait(timeout=COMMAND_TIMEOUT_S)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            errfile.seek(0)
            err = errfile.read()
        if rc != 0:
            raise BackendError(f"{what}: {(err.strip().splitlines() or [f'exit code {rc}'])[0]}")

    # ------------------------------------------------------------ running Slurm commands
    def run(self, argv: list[str], what: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command; retry only transient controller errors, within a bounded time. sbatch
        is retried only when the request provably never arrived, so a job is never queued twice."""
        safe = NEVER_ARRIVED if argv[0] == "sbatch" else TRANSIENT
        delays = list(RETRY_DELAYS)
        start = time.monotonic()
        while True:
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=COMMAND_TIMEOUT_S,
                                      input=input_text)
            except FileNotFoundError:
                raise BackendError(f"{what}: {argv[0]} not found; install the Slurm client tools "
                                   "(apt-get install slurm-client) or use another cluster") from None
            except subprocess.TimeoutExpired:
                proc = subprocess.CompletedProcess(argv, 124, "", f"timed out after {COMMAND_TIMEOUT_S} s")
            if proc.returncode == 0:
                return proc
            message = (proc.stderr or proc.stdout).strip()
            transient = (proc.returncode == 124 and safe is TRANSIENT) or any(t in message for t in safe)
            if transient and delays and time.monotonic() - start + delays[0] < RETRY_BUDGET_S:
                time.sleep(delays.pop(0))
                continue
            first = " ".join(message.splitlines()[:3]) or f"exit code {proc.returncode}"
            raise BackendError(f"{what}: {first}")

    # ------------------------------------------------------------ plan
    def plan(self, sub: Submission) -> Plan:
        spec = sub.spec
        res = spec.resources
        job_dir = str(sub.job_dir)
        w = spec.workload
        files: dict[str, bytes] = {}
        tasks_per_node = res.tasks_per_node
        launch: list[str]
        forward_usr2 = "0"
        if isinstance(w, Command):
            launch = ["srun", "--kill-on-bad-exit=1", *w.argv] if res.total_tasks > 1 else list(w.argv)
        elif isinstance(w, Function | Map):
            files[PAYLOAD] = function_payload(w)
            launch = function_argv(job_dir)
            forward_usr2 = "1"
        elif isinstance(w, Training):
            tasks_per_node = w.procs_per_node(res)
            target = ["-m", w.module] if w.module else [w.script or ""]
            launch = ["srun", "--kill-on-bad-exit=1", f"--ntasks-per-node={tasks_per_node}", sys.executable, "-m",
                      "suanli.runtime.launch", *target, *w.args]
        elif isinstance(w, MPI):
            ranks = w.total_ranks(res)
            tasks_per_node = w.procs_per_node(res)
            launcher = sub.partition.mpi_launcher or "srun"
            binding = sub.adapter.mpi_binding(launcher, tasks_per_node, sub.partition.numa_nodes)
            if launcher == "mpirun":
                launch = ["mpirun", "-np", str(ranks)]
                if os.geteuid() == 0:
                    launch.append("--allow-run-as-root")
                launch += [*binding, "--oversubscribe", *w.argv] if not binding else [*binding, *w.argv]
            else:
                launch = ["srun", "--mpi=pmix", f"--ntasks={ranks}", *binding, *w.argv]
        else:
            raise UsageError(f"workload: the slurm backend cannot run {type(w).__name__}")
        if (res.nodes > 1 and res.accelerators_per_node and not sub.adapter.scheduler_sets_devices
                and launch[:1] == ["srun"] and not isinstance(w, Training)):
            launch = per_node_devices(launch)  # Training ranks do this in suanli.runtime.launch

        env: dict[str, str] = {
            "SUANLI_JOB_ID": sub.job_id,
            "SUANLI_JOB_NAME": spec.display_name,
            "SUANLI_CLUSTER": sub.cluster.name,
            "SUANLI_BACKEND": "slurm",
            "SUANLI_JOB_DIR": job_dir,
            "SUANLI_ADAPTER": sub.adapter.name,
        }
        env.update(suanli_pythonpath(self.env))
        env.update(sub.adapter.environment(res))
        if sub.partition.network_interface:  # else suanli.runtime.launch detects it on each node
            env.update(GLOO_SOCKET_IFNAME=sub.partition.network_interface,
                       NCCL_SOCKET_IFNAME=sub.partition.network_interface)
        env.update(spec.env)
        setup = [*sub.adapter.setup_lines(), *sub.cluster.setup, *sub.partition.setup, *spec.setup]
        text = sh.render(
            sh.load_template("suanli.compute.slurm", "templates/batch.sh.tmpl"),
            {
                "EXPORTS": sh.export_lines(env),
                "SETUP": "\n".join(setup) if setup else ":",
                "WORKDIR": sh.quote(os.path.abspath(spec.workdir or os.getcwd())),
                "LAUNCH": sh.join_argv(launch),
                "MAX_RESTARTS": str(spec.max_restarts),
                "FORWARD_USR2": forward_usr2,
                "DEVICES": device_lines(sub.adapter.gres_name, sub.adapter.device_env_var,
                                        sub.adapter.scheduler_sets_devices)
                if res.accelerators_per_node else ":",
            },
        )
        argv = ["sbatch", "--parsable", f"--job-name={slurm_name(spec.display_name)}",
                f"--partition={sub.partition.name}", f"--nodes={res.nodes}",
                # Every rank is a task: the allocation (and sacct's AllocCPUS) holds them all.
                f"--ntasks-per-node={max(tasks_per_node, res.tasks_per_node)}",
                f"--cpus-per-task={res.cpus_per_task}", *resource_options(sub)]
        if res.time_limit is not None and res.time_limit.total_seconds() > 2 * self.signal_s:
            argv.append(f"--signal=B:USR2@{self.signal_s}")
        stem = "job"
        layout: dict[str, object] = {}
        if spec.array is not None:
            chunks = split_array(spec.array, self.max_array_size())
            if len(chunks) > MAX_SPLIT_ARRAYS:
                raise UsageError(f"array: its indices span {len(chunks)} Slurm arrays of MaxArraySize "
                                 f"{self.max_array_size()}, more than {MAX_SPLIT_ARRAYS}; use smaller indices")
            argv.append(f"--array={chunks[0][1]}")
            stem = "task-%a"
            if len(chunks) > 1 or chunks[0][0]:
                layout["chunks"] = [[offset, text] for offset, text in chunks]
                stem = f"chunk-{chunks[0][0]}-%a"
        if sub.dependencies:
            groups: dict[str, list[str]] = {}
            for d in sub.dependencies:
                if not d.native_id:
                    raise UsageError(f"dependency: job {d.job_id} has no Slurm job id yet")
                groups.setdefault(d.kind, []).extend(d.native_id.split(","))
            argv += [f"--dependency={','.join(k + ':' + ':'.join(v) for k, v in groups.items())}",
                     "--kill-on-invalid-dep=yes"]
        argv += ["--requeue" if spec.max_restarts or isinstance(w, Function | Map) else "--no-requeue",
                 "--open-mode=append",
                 f"--output={job_dir}/{stem}.out", f"--error={job_dir}/{stem}.err", f"{job_dir}/job.sh"]
        return Plan(job_id=sub.job_id, cluster=sub.cluster.name, backend=self.name, job_dir=job_dir, argv=argv,
                    script=text, script_name="job.sh", env=env, files=files,
                    details={"tasks": spec.task_count, "slurm_name": slurm_name(spec.display_name),
                             "layout": layout})

    # ------------------------------------------------------------ submit
    def submit(self, plan: Plan) -> str:
        job_dir = plan.write_job_dir()
        chunks = plan.details.get("layout", {}).get("chunks") or [[0, None]]
        submitted: list[str] = []
        try:
            for offset, text in chunks:
                argv = list(plan.argv)
                if text is not None:
                    # A further array of a split one: its own --array, its offset, its own scheduler-side log.
                    argv = [a for a in argv if not a.startswith(("--array=", "--output=", "--error="))]
                    argv[-1:-1] = [f"--array={text}", f"--export=ALL,SUANLI_ARRAY_OFFSET={offset}",
                                   f"--output={job_dir}/chunk-{offset}-%a.out",
                                   f"--error={job_dir}/chunk-{offset}-%a.err"]
                self.bucket.take()
                proc = self.run(argv, "sbatch refused the job")
                submitted.append(parse.parse_sbatch(proc.stdout))
            return ",".join(submitted)
        except BaseException as exc:  # a refusal, or Ctrl-C between two arrays of a split one
            if submitted:  # no orphans: the arrays already queued go too
                subprocess.run(["scancel", *submitted], capture_output=True, env=self.env)
            shutil.rmtree(job_dir, ignore_errors=True)
            if isinstance(exc, ValueError):
                raise BackendError(f"sbatch: {exc}") from None
            raise

    def array_cap(self) -> int:
        """Most array tasks per job when the cluster config sets none: MaxArraySize x the split limit."""
        return self.max_array_size() * MAX_SPLIT_ARRAYS

    def find_submitted(self, ref: JobRef, submitted_at: float) -> str | None:
        """The native id(s) of a job whose submitter died before recording them, found by the job folder in
        sacct's SubmitLine (every sbatch line names it); None when Slurm never got it. Arrays of a split job
        that got only part-way are cancelled (None): a job is all there or not at all."""
        start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(submitted_at - 120))
        proc = self.run(["sacct", "--parsable2", "--noheader", "-X", "-S", start, "-o", "JobID,SubmitLine"],
                        "sacct")
        found: dict[int, str] = {}
        script = f"{ref.job_dir}/job.sh"
        for line in proc.stdout.splitlines():
            job, _, submit_line = line.partition("|")
            if script not in submit_line.split():
                continue
            m = _CHUNK_LOG.search(submit_line)
            found[int(m.group(1)) if m else 0] = job.split("_", 1)[0].split("+", 1)[0]
        if not found:
            # slurmdbd may lag behind the controller (a job queued, or even ended, a moment ago): the controller,
            # which keeps ended jobs for MinJobAge, decides whether it is really absent.
            queue = self.run(["squeue", "-h", "-t", "all", "-o", "%i|%o"], "squeue").stdout
            if any(cmd.strip() == script for _, _, cmd in (q.partition("|") for q in queue.splitlines())):
                raise BackendError(f"job {ref.job_id}: known to slurmctld but not yet in sacct; asked again later")
            return None
        offsets = [int(c[0]) for c in ref.layout.get("chunks") or [[0, None]]]
        if sorted(found) != sorted(offsets):
            subprocess.run(["scancel", *found.values()], capture_output=True, env=self.env)
            return None
        return ",".join(found[o] for o in offsets)

    # ------------------------------------------------------------ status
    def status_many(self, refs: Sequence[JobRef]) -> dict[TaskKey, NativeStatus]:
        out: dict[TaskKey, NativeStatus] = {}
        wanted = {r.job_id: set(r.tasks) for r in refs}  # a set: a tuple made this quadratic in the tasks
        for job_id, lo, hi, st in self.status_runs(refs):
            live = wanted[job_id]
            if lo is None or hi is None:
                if None in live:
                    out[(job_id, None)] = st
                continue
            for task in range(lo, hi + 1):
                if task in live:
                    out[(job_id, task)] = st
        return out

    def status_runs(self, refs: Sequence[JobRef]) -> list[tuple[str, int | None, int | None, NativeStatus]]:
        """``(job id, first task, last task, status)`` from one sacct for every job of ``refs``: a pending
        array range is one entry, so a poll costs per sacct row, not per task (``lo`` None: no array). Tasks
        are not filtered by ``ref.tasks``; the registry ignores states for tasks it holds as ended."""
        by_native: dict[str, tuple[str, int]] = {}
        for r in refs:
            for native, offset in native_parts(r):
                by_native[native] = (r.job_id, offset)
        if not by_native:
            return []
        ids = ",".join(sorted(by_native))
        argv = ["sacct", "--parsable2", "--noheader", "-D", "-j", ids, "-o", ",".join(parse.SACCT_FIELDS)]
        try:
            runs = parse.parse_sacct_runs(self.run(argv, "sacct").stdout, with_steps=True)
        except BackendError as exc:
            if "accounting storage is disabled" not in str(exc).lower() and "slurmdbd" not in str(exc).lower():
                raise
            proc = self.run(["squeue", "-h", "-a", "--states=all", "-o", parse.SQUEUE_FORMAT], "squeue")
            runs = [parse.TaskRun(ts, ts.task, ts.task) for ts in parse.parse_squeue(proc.stdout)]
        out: list[tuple[str, int | None, int | None, NativeStatus]] = []
        # Equal answers share one status object: 10,000 pending jobs make a handful, not 10,000.
        shared: dict[tuple[object, ...], NativeStatus] = {}
        for run in runs:
            ts = run.state
            hit = by_native.get(ts.job)
            if hit is None:
                continue
            job_id, offset = hit
            # A plain job's own id is already the registry's native id: only array tasks carry theirs.
            task_native = None if ts.raw_id == ts.job else ts.raw_id
            key = (ts.state, ts.reason, ts.exit_code, ts.started_at, ts.ended_at, ts.restarts, task_native)
            st = shared.get(key)
            if st is None:
                st = shared[key] = NativeStatus(
                    state=ts.state, reason=ts.reason, exit_code=ts.exit_code, started_at=ts.started_at,
                    ended_at=ts.ended_at, restarts=ts.restarts, native_id=task_native)
            if run.lo is None or run.hi is None:
                out.append((job_id, None, None, st))
            else:
                out.append((job_id, run.lo + offset, run.hi + offset, st))
        return out

    # ------------------------------------------------------------ cancel
    def cancel(self, refs: Sequence[JobRef]) -> None:
        targets: list[str] = []
        for r in refs:
            parts = native_parts(r)
            if not r.tasks:
                targets += [native for native, _ in parts]
                continue
            for t in r.tasks:
                if t is None:
                    targets += [native for native, _ in parts]
                    continue
                native, offset = max((p for p in parts if p[1] <= t), key=lambda p: p[1])
                targets.append(f"{native}_{t - offset}")
        if targets:
            self.run(["scancel", *targets], "scancel")


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
