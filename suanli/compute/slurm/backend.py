"""The Slurm backend: argv lists and scripts; sacct is read by ``sacct.py``, sbatch options are ``sbatch.py``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence

from suanli.compute import script as sh
from suanli.compute.base import Backend, JobRef, NativeStatus, Plan, StartEstimate, Submission, TaskKey
from suanli.compute.config import ClusterConfig
from suanli.compute.jobenv import job_env, setup_lines
from suanli.compute.logs import resolve_stdio
from suanli.compute.payload import PAYLOAD, function_argv, function_payload, suanli_pythonpath
from suanli.compute.slurm import hetjob, parse
from suanli.compute.slurm.commands import DEFAULT_SUBMIT_RATE as DEFAULT_SUBMIT_RATE
from suanli.compute.slurm.commands import SUBMIT_BURST as SUBMIT_BURST
from suanli.compute.slurm.commands import SlurmCommands, bucket_for
from suanli.compute.slurm.commands import TokenBucket as TokenBucket
from suanli.compute.slurm.launch import (
    device_lines,
    mpi_launch,
    native_parts,
    needs_per_node_devices,
    per_node_devices,
    split_array,
)
from suanli.compute.slurm.sbatch import resource_options, scheduler_options
from suanli.errors import BackendError, UsageError
from suanli.jobs.spec import MPI, Command, Function, Map, Training
from suanli.jobs.state import JobState

_NAME_OK = re.compile(r"[^A-Za-z0-9._+-]")
#: An array with indices at or above MaxArraySize is split into at most this many Slurm arrays, so a cluster's
#: default cap on array tasks (``max_array_size``) is MaxArraySize x this.
MAX_SPLIT_ARRAYS = 100
_CHUNK_LOG = re.compile(r"/chunk-(\d+)-%a\.out")


def slurm_name(name: str) -> str:
    """The scheduler-side job name: Slurm tools print names in tables and parsable output, so anything but
    plain characters is replaced (the registry keeps the verbatim name)."""
    return (_NAME_OK.sub("_", name) or "job")[:64]



class SlurmBackend(SlurmCommands, Backend):
    name = "slurm"
    poll_initial_s = 0.5
    poll_max_s = 30.0
    #: Ended jobs are booked from sacct (TotalCPU, steps, jobs suanli did not submit), not the registry.
    usage_source = "sacct"
    #: sbatch options and stdio paths go on sbatch's command line (``sbatch.scheduler_options``).
    capabilities = Backend.capabilities | {"sbatch_options", "stdio_paths", "components"}

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
            tasks_per_node = w.procs_per_node(res)
            launch = mpi_launch(sub, w)
        else:
            raise UsageError(f"workload: the slurm backend cannot run {type(w).__name__}")
        het = hetjob.parts(sub) if spec.components else None
        if needs_per_node_devices(sub) and isinstance(w, Command) and launch[:1] == ["srun"]:
            launch = per_node_devices(launch)  # Training ranks do this in suanli.runtime.launch, MPI in mpi_launch

        own: dict[str, str] = {}
        if sub.partition.network_interface:  # else suanli.runtime.launch detects it on each node
            own.update(GLOO_SOCKET_IFNAME=sub.partition.network_interface,
                       NCCL_SOCKET_IFNAME=sub.partition.network_interface)
            if isinstance(w, MPI):  # Open MPI's TCP transport (ranks) and its daemons' channel (mpirun)
                own.update(OMPI_MCA_btl_tcp_if_include=sub.partition.network_interface,
                           OMPI_MCA_oob_tcp_if_include=sub.partition.network_interface)
        if spec.scheduler.export:
            # sbatch hands --export to the job as SLURM_EXPORT_ENV, which srun inside it would apply again and
            # start the ranks without the variables set below: srun passes the script's environment instead.
            own["SLURM_EXPORT_ENV"] = "ALL"
        env = job_env(sub, "slurm", job_dir, pythonpath=suanli_pythonpath(self.env), own=own, nodes=False)
        setup = setup_lines(sub)
        devices = device_lines(sub.adapter.gres_name, sub.adapter.device_env_var,
                               sub.adapter.scheduler_sets_devices) if res.accelerators_per_node else ":"
        # A heterogeneous job: one function starts every component (srun --het-group=N) and is the one child.
        launch_text = sh.join_argv(launch) if het is None else hetjob.launch_text(sub, het)
        text = sh.render(
            sh.load_template("suanli.compute.slurm", "templates/batch.sh.tmpl"),
            {
                "EXPORTS": sh.export_lines(env),
                "SETUP": "\n".join(setup) if setup else ":",
                "WORKDIR": sh.quote(os.path.abspath(spec.workdir or os.getcwd())),
                # A background command's stdin is /dev/null unless redirected: <&0 keeps sbatch --input's file.
                "LAUNCH": launch_text + (" <&0" if spec.stdin is not None else ""),
                "MAX_RESTARTS": str(spec.max_restarts),
                "FORWARD_USR2": forward_usr2,
                "DEVICES": devices if het is None else hetjob.device_lines(het),
            },
        )
        argv = ["sbatch", "--parsable", f"--job-name={slurm_name(spec.display_name)}",
                f"--partition={sub.partition.name}", f"--nodes={res.nodes}",
                # Every rank is a task: the allocation (and sacct's AllocCPUS) holds them all.
                f"--ntasks-per-node={max(tasks_per_node, res.tasks_per_node)}",
                f"--cpus-per-task={res.cpus_per_task}", *resource_options(sub), *scheduler_options(sub)]
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
        stdio = resolve_stdio(spec)
        if stdio and layout.get("chunks"):
            raise UsageError(f"{next(iter(stdio))}: this array spans several Slurm arrays (indices at or above "
                             f"MaxArraySize {self.max_array_size()}), whose logs stay in the job folder; use "
                             "smaller indices or drop the path")
        if spec.scheduler.export and layout.get("chunks"):
            raise UsageError("export: this array spans several Slurm arrays, which suanli sends with their own "
                             "--export; use smaller indices or drop export")
        if stdio:
            layout["stdio"] = {k: v for k, v in stdio.items() if k != "stdin"}
        argv += ["--requeue" if spec.max_restarts or isinstance(w, Function | Map) else "--no-requeue",
                 "--open-mode=append", *([f"--input={stdio['stdin']}"] if "stdin" in stdio else []),
                 f"--output={stdio.get('stdout') or f'{job_dir}/{stem}.out'}",
                 f"--error={stdio.get('stderr') or f'{job_dir}/{stem}.err'}"]
        if het is not None:  # sbatch [job and component 0] : [component 1] : ... script
            argv += hetjob.sbatch_groups(sub, het)
            layout["components"] = len(het)
        argv.append(f"{job_dir}/job.sh")
        return Plan(job_id=sub.job_id, cluster=sub.cluster.name, backend=self.name, job_dir=job_dir, argv=argv,
                    script=text, script_name="job.sh", env=env, files=files,
                    details={"tasks": spec.task_count, "slurm_name": slurm_name(spec.display_name),
                             "layout": layout, **({"components": hetjob.describe(het)} if het else {})})

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
        het_size: dict[str, int] = {}  # heterogeneous jobs: how many components sacct must list
        for r in refs:
            for native, offset in native_parts(r):
                by_native[native] = (r.job_id, offset)
            if r.layout and r.layout.get("components"):
                het_size[r.job_id] = int(r.layout["components"])
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
        else:
            missing = set(by_native) - {run.state.job for run in runs}
            if missing:
                runs += self._queued_only(missing)
        out: list[tuple[str, int | None, int | None, NativeStatus]] = []
        # Equal answers share one status object: 10,000 pending jobs make a handful, not 10,000.
        shared: dict[tuple[object, ...], NativeStatus] = {}
        requeued = self._requeued_after_failure([r.state for r in runs])
        for run in runs:
            ts = run.state
            if ts.raw_id in requeued:
                # Slurm put the job back in its queue after a node failure or preemption; slurmdbd has not
                # written the new attempt's row yet, so the ended attempt must not be taken as the end.
                ts = ts._replace(state=JobState.REQUEUED, reason=f"Requeued after {ts.state.value}",
                                 exit_code=None, ended_at=None, restarts=ts.restarts + 1)
            hit = by_native.get(ts.job)
            if hit is None:
                continue
            job_id, offset = hit
            if ts.state.is_terminal and ts.components < het_size.get(job_id, 0):
                # slurmdbd writes a hetjob's components one by one: ended only once every one is there.
                ts = ts._replace(state=JobState.RUNNING, reason="Completing", exit_code=None, ended_at=None)
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

    def _queued_only(self, natives: set[str]) -> list[parse.TaskRun]:
        """Jobs sacct does not list yet (slurmdbd lags the controller while it is busy: a burst of job records,
        its hourly roll-up): the controller's live state from one squeue. Never a final state: that one waits
        for sacct, which alone has the exit code, the times and the usage."""
        try:
            proc = self.run(["squeue", "-h", "-a", "--states=all", "-j", ",".join(sorted(natives)),
                             "-o", parse.SQUEUE_FORMAT], "squeue")
        except BackendError:
            return []  # a single id squeue has forgotten is an error: nothing to add
        return [parse.TaskRun(ts, ts.task, ts.task) for ts in parse.parse_squeue(proc.stdout)
                if ts.job in natives and not ts.state.is_terminal]

    def _requeued_after_failure(self, states: Sequence[parse.TaskState]) -> set[str]:
        """Jobs whose latest sacct row says NODE_FAIL or PREEMPTED but that the controller holds again
        (requeued: ``--requeue`` jobs go back to the queue after a node failure). One squeue for them all,
        asked only when such a row is there; a job squeue no longer lists has really ended."""
        suspects = {ts.raw_id or ts.job for ts in states
                    if ts.state in (JobState.NODE_FAIL, JobState.PREEMPTED)}
        if not suspects:
            return set()
        try:
            proc = self.run(["squeue", "-h", "-a", "--states=all", "-j", ",".join(sorted(suspects)),
                             "-o", parse.SQUEUE_FORMAT], "squeue")
        except BackendError:
            return set()  # squeue forgot them (or cannot tell): sacct's answer stands
        back = set()
        for line in proc.stdout.splitlines():
            native, _, rest = line.partition("|")
            state = rest.partition("|")[0]
            if native in suspects and state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                                                  "CONFIGURING", "RUNNING"):
                back.add(native)
        return back

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

    def expected_start(self, plan: Plan, sub: Submission, timeout_s: float) -> StartEstimate:
        """``sbatch --test-only`` with the exact options this plan submits (see ``route.py``)."""
        from suanli.compute.slurm.route import expected_start

        return expected_start(plan, self.env, self.cluster.name, timeout_s)

