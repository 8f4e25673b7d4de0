"""An out-of-tree backend: each job is a detached process on this machine with its own state file in a spool
folder. It is found through the ``suanli.backends`` entry point, owns the ``toy: {spool: DIR}`` section of its
cluster configs (``config_section``) and leaves usage to the registry (``usage_source``'s default).
It uses only suanli's public contract: ``suanli.compute.base``, the adapter it is given and ``JobState``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from suanli.compute.base import Backend, ConfigFail, JobRef, NativeStatus, Plan, Submission, TaskKey
from suanli.compute.config import ClusterConfig
from suanli.errors import BackendError, UsageError
from suanli.jobs.spec import Command
from suanli.jobs.state import JobState, StateTable

#: The runner is a plain script (standard library only), started by path so it needs no import path.
RUNNER = Path(__file__).with_name("run.py")
STATES = StateTable("toy", {s.value: s for s in (JobState.PENDING, JobState.RUNNING, JobState.COMPLETED,
                                                 JobState.FAILED, JobState.CANCELLED)})


class ToyBackend(Backend):
    name = "toy"
    poll_initial_s = 0.05
    poll_max_s = 0.5
    options: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"spool": str}

    @classmethod
    def config_section(cls, values: Mapping[str, Any], fail: ConfigFail) -> Mapping[str, Any]:
        """The declared keys (the base class checks them), and ``spool`` is required: state files live there."""
        section = super().config_section(values, fail)
        if not section.get("spool"):
            fail((), "a toy cluster needs toy.spool (a folder for its state files), such as toy: {spool: /tmp/toy}")
        return section

    def __init__(self, cluster: ClusterConfig) -> None:
        super().__init__(cluster)
        self.spool = Path(os.path.expanduser(str(cluster.options.get("spool") or "~/.toy-spool")))

    def state_path(self, job_id: str) -> Path:
        return self.spool / f"{job_id}.json"

    # ------------------------------------------------------------ plan
    def plan(self, sub: Submission) -> Plan:
        spec, res = sub.spec, sub.spec.resources
        if spec.array is not None or res.nodes != 1 or not isinstance(spec.workload, Command):
            raise UsageError("workload: the toy backend runs one command on one node; submit a plain command")
        env = {"SUANLI_JOB_ID": sub.job_id, "SUANLI_CLUSTER": sub.cluster.name, "SUANLI_BACKEND": self.name,
               "SUANLI_JOB_DIR": str(sub.job_dir), "SUANLI_ADAPTER": sub.adapter.name}
        env.update(sub.adapter.environment(res))
        if res.accelerators_per_node and sub.adapter.device_env_var:
            # The scheduler's fact (which devices) goes into the adapter's variable, as every backend does.
            env[sub.adapter.device_env_var] = ",".join(map(str, range(res.accelerators_per_node)))
        env.update(spec.env)
        launch = {"argv": list(spec.workload.argv), "env": env, "cwd": os.path.abspath(spec.workdir or os.getcwd()),
                  "stdout": str(sub.job_dir / "job.out"), "stderr": str(sub.job_dir / "job.err")}
        state = str(self.state_path(sub.job_id))
        return Plan(job_id=sub.job_id, cluster=sub.cluster.name, backend=self.name, job_dir=str(sub.job_dir),
                    argv=[sys.executable, str(RUNNER), str(sub.job_dir / "launch.json"), state], env=env,
                    files={"launch.json": json.dumps(launch, indent=1).encode()}, details={"state_file": state})

    # ------------------------------------------------------------ submit
    def submit(self, plan: Plan) -> str:
        job_dir = plan.write_job_dir()
        state = Path(plan.details["state_file"])
        try:
            self.spool.mkdir(parents=True, exist_ok=True)
            _write(state, {"state": "PENDING", "submitted_at": time.time()})
            with open(job_dir / "runner.log", "ab") as log:
                proc = subprocess.Popen(plan.argv, cwd=job_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True)
        except OSError as exc:
            state.unlink(missing_ok=True)
            raise BackendError(f"toy backend: cannot start job {plan.job_id}: {exc}") from None
        return f"toy-{proc.pid}"

    # ------------------------------------------------------------ status and cancel
    def status_many(self, refs: Sequence[JobRef]) -> dict[TaskKey, NativeStatus]:
        """One read of the spool per job (the toy's 'scheduler call' is its state files)."""
        out: dict[TaskKey, NativeStatus] = {}
        for ref in refs:
            st = _read(self.state_path(ref.job_id))
            if st is None:
                status = NativeStatus(JobState.UNKNOWN, reason="no state file")
            else:
                status = NativeStatus(STATES(st["state"]), reason=st.get("reason"), exit_code=st.get("exit_code"),
                                      started_at=st.get("started_at"), ended_at=st.get("ended_at"),
                                      native_id=ref.native_id)
            out.update(((ref.job_id, task), status) for task in ref.tasks)
        return out

    def cancel(self, refs: Sequence[JobRef]) -> None:
        """SIGTERM to the runner, which stops its command and records CANCELLED."""
        for ref in refs:
            st = _read(self.state_path(ref.job_id))
            if st is None or st["state"] not in ("PENDING", "RUNNING") or not ref.native_id:
                continue
            try:
                os.kill(int(ref.native_id.removeprefix("toy-")), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data
