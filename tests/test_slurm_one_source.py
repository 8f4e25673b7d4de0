"""The Slurm backend is the one source of Slurm facts: one state table for status polling and accounting, the
sbatch resource options rendered by the backend (the dask pilots take them from its plan), and the pilots'
sbatch sent through the backend's runner (its retries and rate limit), on the real test cluster."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_dask import fake_slurm, sq  # noqa: F401 - fake_slurm is a fixture

from suanli.accounts_slurm import ParseStats, parse_usage
from suanli.compute.slurm.sacct import KNOWN_FINAL, OPEN_STATES, STATES
from suanli.jobs.state import JobState

HEADER = "JobID|State|AllocCPUS|AllocNodes|AllocTRES|ElapsedRaw|CPUTimeRAW|Start|End"


def test_every_state_status_knows_accounting_knows_too() -> None:
    """One table: a state status polling maps is, for accounting, either still open or ended; none is 'new'."""
    for name in (*OPEN_STATES, *KNOWN_FINAL):
        assert name in STATES
    assert OPEN_STATES.isdisjoint(KNOWN_FINAL)
    for name in ("STOPPED", "RESV_DEL_HOLD", "REQUEUE_HOLD", "PENDING", "RUNNING", "COMPLETING"):
        assert name in OPEN_STATES, name  # the allocation is still held (or not yet): not booked
    for name in ("REQUEUED", "COMPLETED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY"):
        assert name in KNOWN_FINAL, name


def test_a_stopped_allocation_is_open_and_a_requeued_attempt_is_booked() -> None:
    lines = [HEADER,
             "7|STOPPED|4|1|cpu=4,node=1|100|400|2024-01-01T00:00:00|2024-01-01T00:01:40",
             "8|REQUEUED|4|1|cpu=4,node=1|100|400|2024-01-01T00:00:00|2024-01-01T00:01:40"]
    stats = ParseStats()
    recs = list(parse_usage(lines, "c", stats=stats))
    assert [r.native_id for r in recs] == ["8"] and recs[0].state == "REQUEUED"
    assert stats.open_jobs == {"7"} and not stats.unknown_states
    assert STATES("STOPPED") is JobState.SUSPENDED and STATES("REQUEUED") is JobState.REQUEUED


def test_pilot_resource_options_are_the_slurm_backends(fake_slurm: Any) -> None:  # noqa: F811
    """The pilots' account, QoS, constraint, memory and time come from the Slurm backend's rendering, in order."""
    from suanli.compute.dask.engine import Pilots, resolve
    from suanli.compute.slurm.sbatch import resource_options

    req = resolve(fake_slurm, sq, "fake", {"qos": "high", "constraint": "fast", "memory": "2G", "time": "20m"})
    argv = Pilots(fake_slurm, req, "sweepid1", "sq").sbatch_argv("pilot001")
    opts = resource_options(req.sub)
    assert opts == ["--account=acct-a", "--qos=high", "--constraint=fast", "--mem=2048M", "--time=0-00:20:00"]
    assert argv[-len(opts):] == opts
    assert argv[0] == "sbatch"  # no `env SLURM_CONF=...`: the backend's runner carries the cluster's conf


@pytest.mark.slurm
def test_a_pilot_sbatch_is_retried_when_the_controller_was_not_reached(slurm: Any, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An sbatch that never reached slurmctld is sent again by the backend's runner, so the sweep still runs
    (a direct sbatch, as the pilots had, refused the pilot and ended the sweep). The first sbatch call fails as
    a controller that cannot be contacted does; the next ones are the real sbatch."""
    real = shutil.which("sbatch")
    assert real
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mark = tmp_path / "refused-once"
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\n"
        f"if [ ! -e '{mark}' ]; then : > '{mark}'\n"
        "  echo 'sbatch: error: Batch job submission failed: Unable to contact slurm controller' >&2\n"
        "  exit 1\nfi\n"
        f"exec '{real}' \"$@\"\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    sweep = slurm.map(sq, [1, 2, 3], engine="dask", max_concurrent=1, time="5m")
    assert sweep.values == [1, 4, 9]
    assert mark.exists()  # the refusal did happen, and was retried
    pilots = [r for r in slurm.store.query() if r.kind == "dask-worker"]
    assert pilots and all(r.native_id for r in pilots)
