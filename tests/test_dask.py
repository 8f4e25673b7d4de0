"""``suanli.map(..., engine="dask")``: dask-jobqueue pilot workers on the real single-node Slurm test cluster.

The validation tests at the bottom need no cluster; the others use the ``slurm`` fixture (scripts/test.sh
starts the cluster and exports SUANLI_TEST_SLURM_CONF).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, wait_until

from suanli.errors import BackendError, JobFailedError, QuotaExceeded, RemoteTraceback, UsageError
from suanli.jobs.state import JobState

pytestmark = pytest.mark.slurm

pytest.importorskip("dask_jobqueue")


def sq(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("item three is bad")
    return x + 100


def stamped(x: int) -> tuple[int, float]:
    """The item and the wall-clock time it finished (pilots run on this machine: one clock)."""
    return x, time.time()


def queued(slurm_conf: str, native_ids: list[str]) -> set[str]:
    """Which of these Slurm jobs squeue still shows (any state)."""
    r = subprocess.run(["squeue", "-h", "-o", "%A", "-j", ",".join(native_ids)], capture_output=True, text=True,
                       env=dict(os.environ, SLURM_CONF=slurm_conf), timeout=30)
    return set(r.stdout.split()) & set(native_ids)


def wait_gone(slurm_conf: str, native_ids: list[str], timeout: float = 30.0) -> set[str]:
    deadline = time.monotonic() + timeout
    left = queued(slurm_conf, native_ids)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = queued(slurm_conf, native_ids)
    return left


def test_map_of_500_items_on_two_pilot_workers(slurm: Any, slurm_conf: str) -> None:
    t0 = time.monotonic()
    sweep = slurm.map(sq, range(500), engine="dask", max_concurrent=2, time="10m")
    assert sweep.results() == [i * i for i in range(500)]
    assert len(sweep) == 500 and sweep.done() and sweep.status() is JobState.COMPLETED and not sweep.errors
    assert len(sweep.pilot_jobs) == 2, sweep.pilot_jobs
    rows = slurm.store.query(ids=sweep.pilot_jobs)
    assert len(rows) == 2
    for r in rows:
        assert (r.backend, r.kind, r.cluster, r.partition, r.account) == ("slurm", "dask-worker", "testslurm",
                                                                          "debug", "acct-a")
        assert r.native_id and r.native_id.isdigit()
        assert r.meta["resources"]["time_s"] == 600 and r.meta["resources"]["cpus_per_task"] == 1
        assert r.meta["sweep"] == sweep.id
        assert (Path(r.job_dir) / "job.sh").exists() and (Path(r.job_dir) / "job.err").exists()
    # The pilots were scancelled on the way out: gone from the queue, and their rows end (refreshed here or by the
    # sweep's own background refresh).
    assert not wait_gone(slurm_conf, [r.native_id for r in rows])
    wait_until(lambda: all(i.state.is_terminal for i in slurm.list_infos(slurm.store.query(ids=sweep.pilot_jobs))),
               "the pilot rows to end", timeout=60, every=0.5)
    assert time.monotonic() - t0 < 90


def test_a_failing_item_keeps_the_other_results(slurm: Any) -> None:
    sweep = slurm.map(fail_on_three, range(12), engine="dask", max_concurrent=1)
    assert sweep.values == [None if i == 3 else i + 100 for i in range(12)]
    assert list(sweep.errors) == [3] and sweep.failed == [3]
    assert sweep.states()[3] is JobState.FAILED and sweep.states()[2] is JobState.COMPLETED
    assert sweep.status() is JobState.FAILED
    with pytest.raises(JobFailedError, match=r"1 of 12 items failed \(indices 3\); item 3 raised ValueError: "
                                             r"item three is bad") as info:
        sweep.results()
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "fail_on_three" in cause.tb and "item three is bad" in cause.tb
    mixed = sweep.results(return_exceptions=True)
    assert isinstance(mixed[3], ValueError) and mixed[4] == 104
    assert len(sweep.pilot_jobs) == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_cancels_the_pilot_jobs(slurm: Any, slurm_conf: str, tmp_path: Path, sig: int) -> None:
    started = tmp_path / "started"
    started.mkdir()
    script = tmp_path / "sweep.py"
    script.write_text(textwrap.dedent("""
        import time
        import suanli.api

        def slow(x):
            open("STARTED/" + str(x), "w").close()  # so the test signals once tasks really run
            time.sleep(1.0)
            return x

        suanli.api.Client().map(slow, range(200), engine="dask", max_concurrent=2, time="10m")
    """).replace("STARTED", str(started)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)))
    try:
        deadline = time.monotonic() + 60
        natives: list[str] = []
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            rows = [r for r in slurm.store.query() if r.kind == "dask-worker" and r.native_id]
            natives = [r.native_id for r in rows]
            if len(natives) == 2 and len(queued(slurm_conf, natives)) == 2:
                running = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%A", "-j", ",".join(natives)],
                                         capture_output=True, text=True, env=dict(os.environ, SLURM_CONF=slurm_conf))
                if len(running.stdout.split()) == 2:
                    break
            time.sleep(0.3)
        else:
            pytest.fail(f"the pilot jobs did not start within 60 s: {natives}")
        wait_until(lambda: any(started.iterdir()), "a task to start on a pilot", timeout=60, every=0.1)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in err
    assert not wait_gone(slurm_conf, natives, timeout=20), "pilot jobs left in squeue after Ctrl-C"
    rows = [r for r in slurm.store.query() if r.kind == "dask-worker"]
    assert len(rows) == 2
    infos = slurm.list_infos(rows)
    assert all(i.state.is_terminal for i in infos), [(i.id, i.state) for i in infos]


def test_pilots_that_cannot_start_end_the_sweep(slurm: Any) -> None:
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=r"every dask pilot job ended and no worker is connected") as info:
        slurm.map(sq, range(3), engine="dask", max_concurrent=1, setup="exit 3", stall_timeout=3)
    assert time.monotonic() - t0 < 45
    partial = info.value.sweep  # type: ignore[attr-defined]
    assert len(partial) == 3 and partial.failed == [0, 1, 2]
    rows = [r for r in slurm.store.query() if r.kind == "dask-worker"]
    assert len(rows) == 1 and rows[0].done


def test_the_sweep_returns_right_after_its_last_item(slurm: Any, slurm_conf: str, tmp_path: Path) -> None:
    """A script's sweep returns within a moment of its last item (the old teardown retired the workers and
    waited for the pilots to end: about 5 s), the script then exits at once (no thread keeps it alive), and
    the next `suanli status` shows the scancelled pilots ended and books their usage."""
    script = tmp_path / "sweep.py"
    script.write_text(textwrap.dedent("""
        import json, sys, time
        import suanli.api

        def stamped(x):
            return x, time.time()

        sweep = suanli.api.Client().map(stamped, range(60), engine="dask", max_concurrent=2, time="10m")
        print(json.dumps({"returned": time.time(), "last": max(t for _, t in sweep.values),
                          "pilots": sweep.pilot_jobs}), flush=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the sweep has returned
        assert line, proc.communicate(timeout=60)
        out = json.loads(line)
        proc.wait(timeout=60)
        exited = time.time()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    tail = out["returned"] - out["last"]
    assert tail < 2.5, f"map returned {tail:.2f} s after its last item"
    assert exited - out["returned"] < 5, f"the script took {exited - out['returned']:.1f} s to exit after the sweep"
    pilots = out["pilots"]
    assert len(pilots) == 2

    def ended() -> list[dict[str, Any]] | None:
        r = run_cli("status", "--json", *pilots)
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)
        return rows if all(row["state"] in ("CANCELLED", "COMPLETED") for row in rows) else None

    rows = wait_until(ended, "`suanli status` to show the pilot jobs ended", timeout=60, every=0.5)
    assert sorted(row["id"] for row in rows) == sorted(pilots)
    natives = [r.native_id for r in slurm.store.query(ids=pilots)]
    assert not wait_gone(slurm_conf, natives)
    # Their usage is booked by that refresh (each pilot ran a few seconds on one core).
    booked = wait_until(lambda: {row["job"]: row for row in slurm.accounts.ledger.report(["job"])
                                 if row["job"] in natives} or None, "the pilots' usage in the ledger", timeout=30,
                        every=0.5)
    assert set(booked) == set(natives)
    assert all(row["jobs"] == 1 and row["cpu_hours"] > 0 and row["job_id"] in pilots for row in booked.values())
    assert slurm.accounts.ledger.reservations() == []
    # Each pilot asked Slurm for the core's share of the partition (7000M / 8 cores) and told its worker the same.
    for r in slurm.store.query(ids=pilots):
        # slurmdbd may list a just-cancelled job before its requested TRES (ReqMem "16?", ReqTRES empty): read
        # it again until the request is there.
        def requested(native: str = str(r.native_id)) -> str | None:
            out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "ReqMem,ReqTRES", "-j", native],
                                 capture_output=True, text=True, env=dict(os.environ, SLURM_CONF=slurm_conf),
                                 timeout=30).stdout.strip()
            return out if out.partition("|")[2] else None

        got = wait_until(requested, "sacct to record the pilot's request", timeout=60, every=0.5)
        mem, _, tres = got.partition("|")
        assert mem == "875M" and "mem=875M" in tres.split(","), (mem, tres)
        words = shlex.split((Path(r.job_dir) / "job.sh").read_text().strip().splitlines()[-1])
        assert words.count("--memory-limit") == 1 and words[words.index("--memory-limit") + 1] == "875.00MiB"


def test_a_finished_sweep_records_its_pilots_ended_in_process(slurm: Any) -> None:
    """In a process that goes on after the sweep, the pilots' rows end without anyone asking."""
    sweep = slurm.map(stamped, range(8), engine="dask", max_concurrent=1, time="10m")
    assert [v for v, _ in sweep.values] == list(range(8))
    wait_until(lambda: all(r.done for r in slurm.store.query(ids=sweep.pilot_jobs)), "the pilot rows to end",
               timeout=60, every=0.5)
    infos = slurm.list_infos(slurm.store.query(ids=sweep.pilot_jobs), refresh=False)
    assert [i.state for i in infos] in ([JobState.CANCELLED], [JobState.COMPLETED])


# ---------------------------------------------------------------- validation (no cluster needed)
@pytest.fixture
def fake_slurm(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A client that knows a slurm cluster that is never contacted."""
    cfg = tmp_path / "fake-clusters"
    cfg.mkdir()
    (cfg / "fake.yaml").write_text(
        "name: fake\nbackend: slurm\ndefault_account: acct-a\nslurm: {conf: /nonexistent/slurm.conf}\n"
        "partitions:\n  - {name: debug, nodes: 1, cpus_per_node: 4, max_time: 1h}\n")
    monkeypatch.setenv("SUANLI_CONFIG", str(cfg))
    from suanli.api import Client

    c = Client()
    yield c
    c.store.close()


def test_engine_dask_on_the_local_cluster_is_refused(home: Path) -> None:
    from suanli.api import Client

    with pytest.raises(UsageError, match=r"engine 'dask' needs a slurm cluster, but cluster 'local' uses the "
                                         r"'local' backend") as info:
        Client().map(sq, [1, 2], cluster="local", engine="dask")
    assert info.value.exit_code == 2


def test_options_are_validated_like_submit(fake_slurm: Any) -> None:
    with pytest.raises(UsageError, match=r"^resources.cpus_per_task: 'x' is not a whole number$"):
        fake_slurm.map(sq, [1], cluster="fake", engine="dask", cpus_per_task="x")
    with pytest.raises(UsageError, match=r"partition: cluster 'fake' has no partition 'gpu'; valid partitions: debug"):
        fake_slurm.map(sq, [1], cluster="fake", engine="dask", partition="gpu")
    with pytest.raises(UsageError, match=r"time: asked for 2:00:00, but .* has a max_time of 1:00:00"):
        fake_slurm.map(sq, [1], cluster="fake", engine="dask", time="2h")
    with pytest.raises(UsageError, match=r"unknown option 'colour' for engine 'dask'; valid options: .*cpus_per_task"):
        fake_slurm.map(sq, [1], cluster="fake", engine="dask", colour="red")
    with pytest.raises(UsageError, match=r"option 'array' does not apply to engine 'dask'"):
        fake_slurm.map(sq, [1], cluster="fake", engine="dask", array="0-3")
    assert fake_slurm.store.query() == []  # nothing reached the registry


def test_missing_dask_jobqueue_says_what_to_install(fake_slurm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    monkeypatch.setitem(sys.modules, "dask_jobqueue.slurm", None)
    with pytest.raises(UsageError, match=r"pip install 'suanli\[dask\]'"):
        fake_slurm.map(sq, [1], cluster="fake", engine="dask")


def test_the_engine_module_imports_nothing_heavy() -> None:
    code = ("import sys, suanli.compute.dask, suanli.compute.dask.engine; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed', 'dask_jobqueue')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def unpicklable_on_one(x: int) -> Any:
    import threading

    return threading.Lock() if x == 1 else x


def exits_on_one(x: int) -> int:
    if x == 1:
        raise SystemExit(4)
    return x


def test_items_that_cannot_come_back_or_exit_fail_alone(slurm: Any) -> None:
    """A result that does not pickle, or an item that raises SystemExit, fails that item only."""
    sweep = slurm.map(unpicklable_on_one, range(4), engine="dask", max_concurrent=1, time="10m")
    assert sweep.failed == [1] and [sweep.values[i] for i in (0, 2, 3)] == [0, 2, 3]
    sweep = slurm.map(exits_on_one, range(4), engine="dask", max_concurrent=1, time="10m")
    assert sweep.failed == [1] and "SystemExit(4)" in str(sweep.errors[1])


def test_a_refused_pilot_ends_the_sweep_quickly(slurm: Any) -> None:
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="sbatch refused the dask pilot job"):
        slurm.map(sq, [1, 2], engine="dask", max_concurrent=1, time="2m", constraint="nosuchfeature")
    assert time.monotonic() - t0 < 60
    assert not [r for r in slurm.store.query() if r.kind == "dask-worker"]


def test_sweeps_are_held_to_quotas(slurm: Any) -> None:
    from suanli.accounting.quota import Quota

    slurm.accounts.ledger.set_quota(Quota(account="acct-a", cpu_hours=0.001), "admin")
    with pytest.raises(QuotaExceeded, match="quota: account acct-a may use up to"):
        slurm.map(sq, [1, 2], engine="dask", time="10m")
    assert not [r for r in slurm.store.query() if r.kind == "dask-worker"]
    assert slurm.accounts.ledger.reservations() == []


def test_pilots_have_one_memory_limit_and_sbatch_gets_mem(fake_slurm: Any) -> None:
    """The worker gets one --memory-limit (there were two, contradictory) and sbatch the same figure as --mem, on
    its command line; no option reaches the script's header."""
    from dask.utils import parse_bytes

    from suanli.compute.dask.engine import Pilots, _job_class, pilot_job_options, resolve

    # No memory asked for: 1 GiB a core (the partition's config does not say its memory); else the request.
    for opts, mb in (({}, 1024), ({"cpus_per_task": 2}, 2048), ({"memory": "3G"}, 3072)):
        req = resolve(fake_slurm, sq, "fake", opts)
        pilots = Pilots(fake_slurm, req, "sweepid1", "sq")
        argv = pilots.sbatch_argv("pilot001")
        assert [a for a in argv if a.startswith("--mem")] == [f"--mem={mb}M"], argv
        job = _job_class(pilots)(scheduler="tcp://127.0.0.1:8786", name="w0", **pilot_job_options(req))
        script = job.job_script()
        assert "#SBATCH" not in script
        words = shlex.split(script.strip().splitlines()[-1])
        assert words.count("--memory-limit") == 1, words
        assert parse_bytes(words[words.index("--memory-limit") + 1]) == mb * 2**20
        assert req.sub.spec.resources.memory_mb == mb  # what the registry row records


def test_more_bad_options_are_one_line_errors(fake_slurm: Any) -> None:
    for opts, match in ((dict(setup=5), "setup 5 is not a shell line"),
                        (dict(workdir="/nonexistent/dir"), "workdir '/nonexistent/dir' is not a folder"),
                        (dict(interface="nope0"), "interface 'nope0' is not a network interface")):
        with pytest.raises(UsageError, match=match):
            fake_slurm.map(sq, [1], cluster="fake", engine="dask", **opts)
