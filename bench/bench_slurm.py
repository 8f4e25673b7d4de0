"""Slurm submission and status against the raw Slurm commands and submitit, measured in the same run on the
same cluster. Needs a running cluster (SLURM_CONF), e.g. the test one:

    bash tests/slurm/cluster.sh start /tmp/slurm-bench && export SLURM_CONF=/tmp/slurm-bench/slurm.conf
    .venv/bin/python bench/bench_slurm.py [--items 1000] [--repeat 5]
    .venv/bin/python bench/bench_slurm.py --scale [--label after] [--repeat 7]   # polls, throttle -> JSON

``--scale`` (the "Scale" issue): one poll of an unfinished map of 10..50k tasks and of 10..10k separate jobs
against one raw ``sacct`` for the same ids (interleaved rounds, medians, in process), whole-process
``suanli status ID`` of a 10k map against a raw sacct process, and the sustained rate of a ``suanli.submit``
loop against a raw sbatch loop. Held jobs only (``--hold``, registered as suanli jobs), cancelled by id at the
end. Writes ``bench/results/slurm_scale-<label>.json``; ``bench/bench_scale_plot.py`` draws the curves.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import bench_cluster, median_s, report, run_quiet  # noqa: E402


def noop(x: int) -> int:
    return x


BENCH_NAME = f"suanli-bench-{os.getpid()}"


def scancel_all() -> None:
    """Cancel this benchmark's jobs only (by name and user): other people share the cluster."""
    subprocess.run(["scancel", "--user", str(os.getuid()), f"--name={BENCH_NAME}"], capture_output=True)
    subprocess.run(["scancel", "--user", str(os.getuid()), "--name=noop"], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", action="store_true", help="the scale curves and the throttle, written as JSON")
    ap.add_argument("--label", default="after", help="names the JSON file (before/after)")
    ap.add_argument("--map-sizes", default="10,100,1000,10000,50000")
    ap.add_argument("--job-sizes", default="10,100,1000,10000")
    ap.add_argument("--submits", type=int, default=200, help="submissions in each throttle loop")
    ap.add_argument("--replayed", default="", help="map sizes whose sacct answer is replayed (see replayed_poll)")
    ap.add_argument("--replayed-jobs", default="", help="numbers of separate jobs, sacct's answer replayed")
    ap.add_argument("--held-file", help="keep the held separate jobs (ids in this JSON file) for a later run")
    ap.add_argument("--cancel-held", action="store_true", help="cancel the held jobs of --held-file at the end")
    ap.add_argument("--before-tree", help="also time `status ID` of the 10k map with PYTHONPATH=this source tree")
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--partition", default="debug")
    ap.add_argument("--account", default="acct-a")
    args = ap.parse_args()
    conf = os.environ.get("SLURM_CONF")
    if not conf:
        raise SystemExit("set SLURM_CONF to a running cluster's slurm.conf (see the docstring)")
    if args.scale:
        scale(args, conf)
        return
    import submitit

    with tempfile.TemporaryDirectory() as tmp:
        bench_cluster(tmp, f"backend: slurm\ndefault_account: {args.account}\nslurm: {{conf: {conf}}}\n"
                           f"partitions:\n  - {{name: {args.partition}, nodes: 1}}\n")
        from suanli.api import Client
        from suanli.compute.slurm import backend as sb

        client = Client()
        executor = submitit.AutoExecutor(folder=Path(tmp) / "submitit", cluster="slurm")
        executor.update_parameters(slurm_partition=args.partition, slurm_account=args.account, timeout_min=5)
        n = args.items
        raw_array = ["sbatch", "--parsable", f"--job-name={BENCH_NAME}", f"--partition={args.partition}",
                     f"--account={args.account}",
                     "--hold", f"--array=0-{n - 1}", "--wrap", "true"]
        raw_one = ["sbatch", "--parsable", f"--job-name={BENCH_NAME}", f"--partition={args.partition}",
                   f"--account={args.account}", "--hold",
                   "--wrap", "true"]

        calls: list[str] = []
        real_run = sb.SlurmBackend.run

        def counting(self: sb.SlurmBackend, argv: list[str], what: str, input_text: str | None = None):  # type: ignore[no-untyped-def]
            calls.append(argv[0])
            return real_run(self, argv, what, input_text)

        sb.SlurmBackend.run = counting  # type: ignore[method-assign, assignment]

        def suanli_map() -> None:
            calls.clear()
            client.map(noop, range(n), time="5m")
            assert calls.count("sbatch") == 1, calls

        rows = [
            (f"raw sbatch --array=0-{n - 1}", median_s(run_quiet(raw_array), args.repeat, 1, scancel_all)),
            (f"suanli.map of {n} items (one sbatch)", median_s(suanli_map, args.repeat, 1, scancel_all)),
            (f"submitit map_array of {n} items", median_s(lambda: executor.map_array(noop, range(n)), args.repeat,
                                                           1, scancel_all)),
        ]
        scancel_all()
        report(f"map of {n} items: time until queued (median of {args.repeat})", rows, rows[0][0])
        rows = [
            ("raw sbatch (one job)", median_s(run_quiet(raw_one), args.repeat * 3, 2, scancel_all)),
            ("suanli.submit(fn)", median_s(lambda: client.submit(noop, 1, time="5m"), args.repeat * 3, 2,
                                           scancel_all)),
            ("submitit executor.submit(fn)", median_s(lambda: executor.submit(noop, 1), args.repeat * 3, 2,
                                                      scancel_all)),
        ]
        scancel_all()
        report("single Function submission", rows, rows[0][0])

        # Status of n unfinished jobs: n held jobs registered as suanli jobs, one refresh vs one raw sacct.
        from suanli.compute.store import JobRow
        from suanli.jobs.state import JobState

        ids = []
        for _ in range(n):
            ids.append(subprocess.run(raw_one, capture_output=True, text=True, check=True).stdout.strip())
        store = client.store
        now = time.time()
        for i, nid in enumerate(ids):
            store.insert(JobRow(f"st{i:05d}", "held", "bench", "slurm", nid, "command", args.partition,
                                args.account, "bench", now, str(Path(tmp) / "jobs" / f"st{i:05d}"), {}, False),
                         [None], JobState.PENDING, None)
        rows_db = store.query(only_open=True)
        rows_db = [r for r in rows_db if r.id.startswith("st")]
        sacct = ["sacct", "--parsable2", "--noheader", "-X", "-D", "-j", ",".join(ids), "-o",
                 "JobID,JobIDRaw,State,ExitCode,Start,End,Reason"]
        raw_t = median_s(run_quiet(sacct), args.repeat)
        per_poll: list[int] = []

        def poll() -> None:
            calls.clear()
            client.refresh(rows_db)
            per_poll.append(len(calls))

        ours = median_s(poll, args.repeat)
        scancel_all()
        report(f"status of {n} unfinished jobs (median of {args.repeat})",
               [("raw sacct -j <all ids>", raw_t), ("suanli refresh (status_many)", ours)], "raw sacct -j <all ids>")
        print(f"scheduler calls per poll: {statistics.mode(per_poll)} (max {max(per_poll)})")

        exe = str(Path(sys.executable).with_name("suanli"))
        env = dict(os.environ)
        rows = [
            ("sbatch (whole process)", median_s(run_quiet(raw_one, env), args.repeat * 2, 2, scancel_all)),
            ("suanli submit -- true (whole process)", median_s(run_quiet([exe, "submit", "--", "true"], env),
                                                                args.repeat * 2, 2, scancel_all)),
        ]
        scancel_all()
        report("one command submission, whole process", rows, rows[0][0])


# ---------------------------------------------------------------- --scale
def sh(argv: list[str]) -> str:
    """stdout of a Slurm command; a busy controller gets two more tries."""
    for delay in (1.0, 3.0, 0.0):
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode == 0:
            return proc.stdout
        print(f"{argv[0]} failed ({proc.stderr.strip()})" + (", trying again" if delay else ""), file=sys.stderr)
        time.sleep(delay)
    raise SystemExit(f"{' '.join(argv)}: {proc.stderr.strip()}")


def cancel(ids: list[str]) -> None:
    """Cancel the benchmark's own jobs, by id, a few hundred per call."""
    for start in range(0, len(ids), 500):
        subprocess.run(["scancel", *ids[start:start + 500]], capture_output=True)


def interleaved(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median seconds of each function, measured in alternating rounds (one warm-up round first)."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeat + 1):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if r:
                samples[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in samples.items()}


def sacct_argv(natives: list[str]) -> list[str]:
    from suanli.compute.slurm import parse

    return ["sacct", "--parsable2", "--noheader", "-D", "-j", ",".join(sorted(natives)), "-o",
            ",".join(parse.SACCT_FIELDS)]


def held_map(n: int, max_size: int, base: list[str]) -> tuple[list[str], dict[str, object]]:
    """A held array of ``n`` tasks split as suanli splits it: its native ids and the registry layout."""
    natives: list[str] = []
    chunks: list[list[object]] = []
    for offset in range(0, n, max_size):
        k = min(max_size, n - offset)
        natives.append(sh([*base, f"--array=0-{k - 1}"]).strip())
        chunks.append([offset, f"0-{k - 1}"])
    return natives, ({"layout": {"chunks": chunks}} if len(chunks) > 1 else {})


def register(store: Any, jid: str, natives: list[str], kind: str, tasks: list[int | None], meta: dict[str, object],
             workdir: str) -> None:
    from suanli.compute.store import JobRow
    from suanli.jobs.state import JobState

    store.insert(JobRow(jid, f"scale-{kind}", "bench", "slurm", ",".join(natives), kind, "debug", "acct-a", "bench",
                        time.time(), f"{workdir}/jobs/{jid}", meta, False), tasks, JobState.PENDING, None)


def submit_loop(submit: Callable[[], str], k: int) -> tuple[float, float, list[str]]:
    """(sustained rate over the second half, overall rate, ids) of ``k`` submissions in a loop: by the second
    half any burst allowance is spent, so that rate is the throttle's (or the caller's own speed)."""
    ids: list[str] = []
    stamps: list[float] = []
    t0 = time.perf_counter()
    for _ in range(k):
        ids.append(submit())
        stamps.append(time.perf_counter())
    half = k // 2
    sustained = (k - 1 - half) / (stamps[-1] - stamps[half])
    return sustained, k / (stamps[-1] - t0), ids


def scale(args: argparse.Namespace, conf: str) -> None:
    import json
    import platform


    out: dict[str, Any] = {"label": args.label, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "repeat": args.repeat,
                           "python": platform.python_version(), "cores": os.cpu_count(), "maps": [], "jobs": []}
    base = ["sbatch", "--parsable", "--hold", f"--job-name={BENCH_NAME}", f"--partition={args.partition}",
            f"--account={args.account}", "--output=/dev/null", "--wrap", "true"]
    max_size = int(re.search(r"MaxArraySize\s*=\s*(\d+)", sh(["scontrol", "show", "config"])).group(1))  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory() as tmp:
        bench_cluster(tmp, f"backend: slurm\ndefault_account: {args.account}\nslurm: {{conf: {conf}}}\n"
                           f"partitions:\n  - {{name: {args.partition}, nodes: 1}}\n")
        from suanli.api import Client

        client = Client()
        store = client.store
        exe = [sys.executable, "-m", "suanli"]
        keep = Path(args.held_file) if args.held_file else None
        kept: dict[str, Any] = json.loads(keep.read_text()) if keep is not None and keep.exists() else {}
        kept.setdefault("maps", {})
        for n in [int(x) for x in args.map_sizes.split(",") if x]:
            if str(n) in kept["maps"]:  # the held arrays of an earlier run (the "before" one)
                natives, meta = kept["maps"][str(n)]
            else:
                natives, meta = held_map(n, max_size, base)
                kept["maps"][str(n)] = [natives, meta]
                if keep is not None:
                    keep.write_text(json.dumps(kept))
            try:
                jid = f"map{n}"
                register(store, jid, natives, "map", list(range(n)), meta, tmp)
                rows = store.query(ids=[jid])
                argv = sacct_argv(natives)
                med = interleaved({"raw": partial(subprocess.run, argv, capture_output=True, text=True),
                                   "suanli": partial(client.refresh, rows)}, args.repeat)
                entry = {"tasks": n, "arrays": len(natives), "raw_sacct_s": med["raw"], "suanli_poll_s": med["suanli"],
                         "ratio": med["suanli"] / med["raw"]}
                if n == 10000:
                    # As users run it: through the command server (suanli/cli/server.py; the warm-up round
                    # starts it, its socket lives in this run's folder), and in-process (SUANLI_SERVER=0).
                    served = {**os.environ, "SUANLI_SERVER": "1", "SUANLI_SERVER_DIR": os.path.join(tmp, "srv")}
                    procs = {"raw": run_quiet(argv), "suanli": run_quiet([*exe, "status", jid], served),
                             "in_process": run_quiet([*exe, "status", jid], {**served, "SUANLI_SERVER": "0"})}
                    run_quiet([*exe, "status", jid], served)()  # starts the server
                    if args.before_tree:  # the same command from another source tree, in the same rounds
                        procs["before"] = run_quiet(["env", f"PYTHONPATH={args.before_tree}", *exe, "status", jid])
                    cli = interleaved(procs, max(3, args.repeat))
                    entry.update(raw_sacct_process_s=cli["raw"], suanli_status_process_s=cli["suanli"],
                                 process_ratio=cli["suanli"] / cli["raw"],
                                 in_process_status_process_s=cli["in_process"],
                                 in_process_ratio=cli["in_process"] / cli["raw"])
                    if "before" in cli:
                        entry.update(before_status_process_s=cli["before"],
                                     before_process_ratio=cli["before"] / cli["raw"])
                out["maps"].append(entry)
                print(f"map of {n:>6} tasks: sacct {med['raw'] * 1000:8.1f} ms  suanli poll "
                      f"{med['suanli'] * 1000:8.1f} ms  x{entry['ratio']:.2f}"
                      + (f"   whole process: x{entry['process_ratio']:.2f} "
                         f"(in-process x{entry['in_process_ratio']:.2f})" if "process_ratio" in entry else "")
                      + (f" (before: x{entry['before_process_ratio']:.2f})" if "before_process_ratio" in entry
                         else ""),
                      flush=True)
            finally:
                if keep is None or args.cancel_held:
                    cancel(natives)
                    kept["maps"].pop(str(n), None)
        sizes = [int(x) for x in args.job_sizes.split(",") if x]
        held: list[str] = kept.get("jobs", [])
        try:
            while len(held) < max(sizes, default=0):
                held.append(sh(base).strip())
            for i, nid in enumerate(held):
                register(store, f"one{i:06d}", [nid], "command", [None], {}, tmp)
            for n in sizes:
                rows = store.query(ids=[f"one{i:06d}" for i in range(n)])
                argv = sacct_argv(held[:n])
                med = interleaved({"raw": partial(subprocess.run, argv, capture_output=True, text=True),
                                   "suanli": partial(client.refresh, rows)}, args.repeat)
                out["jobs"].append({"jobs": n, "raw_sacct_s": med["raw"], "suanli_poll_s": med["suanli"],
                                    "ratio": med["suanli"] / med["raw"]})
                print(f"{n:>6} separate jobs: sacct {med['raw'] * 1000:8.1f} ms  suanli poll "
                      f"{med['suanli'] * 1000:8.1f} ms  x{med['suanli'] / med['raw']:.2f}", flush=True)
        finally:
            kept["jobs"] = held
            if keep is None or args.cancel_held:
                cancel(held)
                kept["jobs"] = []
            if keep is not None:
                keep.write_text(json.dumps(kept))
        if args.submits > 20:
            out["submit_loops"] = throttle(args, conf, base, client)
        out["replayed"] = [replayed_poll(client, tmp, int(n), max_size, args.repeat)
                           for n in args.replayed.split(",") if n]
        out["replayed_jobs"] = [replayed_poll(client, tmp, int(n), max_size, args.repeat, separate=True)
                                for n in args.replayed_jobs.split(",") if n]
    dest = Path(__file__).resolve().parent / "results" / f"slurm_scale-{args.label}.json"
    dest.parent.mkdir(exist_ok=True)
    if dest.exists():  # a run of some sections keeps the figures of the others
        merged = json.loads(dest.read_text())
        merged.update({k: v for k, v in out.items() if v or k not in merged})
        out = merged
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {dest}")


def replayed_poll(client: Any, tmp: str, n: int, max_size: int, repeat: int, separate: bool = False) -> dict[str, Any]:
    """The Python side of one poll of a pending map of ``n`` tasks (or of ``n`` separate pending jobs), with
    sacct's answer replayed: where the cluster's MaxJobCount (which counts every array task) cannot hold such a
    map, this is what a poll costs on top of the sacct call. The answer has the form sacct gives for held jobs
    (one row per Slurm array or job)."""
    if separate:
        natives = [str(800_000_000 + i) for i in range(n)]
        text = "".join(f"{nid}|{nid}|PENDING|0:0|Unknown|Unknown|JobHeldUser\n" for nid in natives)
        ids = [f"rj{n}-{i}" for i in range(n)]
        for jid, nid in zip(ids, natives, strict=True):
            register(client.store, jid, [nid], "command", [None], {}, tmp)
    else:
        chunks = [(offset, min(max_size, n - offset)) for offset in range(0, n, max_size)]
        natives = [str(900_000_000 + i) for i in range(len(chunks))]
        text = "".join(f"{nid}_[0-{k - 1}]|{nid}|PENDING|0:0|Unknown|Unknown|JobHeldUser\n"
                       for nid, (_, k) in zip(natives, chunks, strict=True))
        ids = [f"replay{n}"]
        register(client.store, ids[0], natives, "map", list(range(n)),
                 {"layout": {"chunks": [[o, f"0-{k - 1}"] for o, k in chunks]}} if len(chunks) > 1 else {}, tmp)
    rows = client.store.query(ids=ids)
    backend = client.backend("bench", "slurm")
    backend.run = lambda argv, what, input_text=None: subprocess.CompletedProcess(argv, 0, text, "")
    try:
        med = interleaved({"suanli": partial(client.refresh, rows)}, repeat)
    finally:
        del backend.run
    what = f"{n:>6} separate jobs" if separate else f"map of {n:>6} tasks"
    print(f"{what}, sacct replayed: suanli poll without sacct {med['suanli'] * 1000:8.1f} ms", flush=True)
    return {"tasks" if not separate else "jobs": n, "suanli_poll_without_sacct_s": med["suanli"]}


def throttle(args: argparse.Namespace, conf: str, base: list[str], client: Any) -> dict[str, Any]:
    """A loop of submissions in one process, beside a loop of raw sbatch calls: sustained rates."""
    from suanli.api import Client
    from suanli.compute.slurm import backend as sb

    k = args.submits
    raw_rate, raw_all, raw_ids = submit_loop(lambda: sh(base).strip(), k)
    cancel(raw_ids)
    loops = {"raw_sbatch": (raw_rate, raw_all)}

    def one(client: Any, cluster: str | None = None) -> str:
        job = client.submit(["true"], time="1m", name=BENCH_NAME, cluster=cluster)
        return str(client.store.get(job.id).native_id)

    rate, overall, ids = submit_loop(lambda: one(client), k)
    cancel(ids)
    loops["suanli_default"] = (rate, overall)
    if hasattr(sb, "DEFAULT_SUBMIT_RATE"):  # the configurable rate exists from this change on
        for wanted in (20.0, 40.0):
            name = f"rate{int(wanted)}"
            (Path(os.environ["SUANLI_CONFIG"]) / f"{name}.yaml").write_text(
                f"name: {name}\nbackend: slurm\ndefault_account: {args.account}\n"
                f"slurm: {{conf: {conf}, submit_rate: {wanted}}}\npartitions:\n  - {{name: {args.partition}}}\n")
            fresh = Client()
            rate, overall, ids = submit_loop(lambda name=name, fresh=fresh: one(fresh, name),  # type: ignore[misc]
                                             int(wanted * 8))
            cancel(ids)
            loops[f"suanli_submit_rate_{int(wanted)}"] = (rate, overall)
    for name, (r, o) in loops.items():
        print(f"submission loop {name:<28} sustained {r:6.1f}/s  overall {o:6.1f}/s", flush=True)
    return {name: {"sustained_per_s": r, "overall_per_s": o, "submissions": k} for name, (r, o) in loops.items()}


if __name__ == "__main__":
    main()
