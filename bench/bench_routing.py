"""Routing (``--cluster auto``): the time of one decision over 2, 5 and 10 Slurm partitions (their
``sbatch --test-only`` calls run in parallel) against ONE raw ``sbatch --test-only``, and the latency a routed
submission adds over the same submission to a named cluster. Needs a running cluster, e.g. the test one:

    bash tests/slurm/cluster.sh start /tmp/slurm-bench && export SLURM_CONF=/tmp/slurm-bench/slurm.conf
    .venv/bin/python bench/bench_routing.py [--sizes 2,5,10] [--repeat 9]

The candidates are views of the cluster's partitions (debug, ai, dcu) through several cluster configs, so N
candidates are N real ``--test-only`` questions to the controller; the same N questions asked in parallel by
raw sbatch processes are the peer row. Writes bench/results/routing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import median_s, report  # noqa: E402

PARTITIONS = ("debug", "ai", "dcu")


def write_configs(folder: Path, conf: str, n: int, account: str) -> None:
    folder.mkdir(parents=True)
    made = 0
    view = 0
    while made < n:
        parts = PARTITIONS[: min(len(PARTITIONS), n - made)]
        items = "".join(f"  - {{name: {p}, nodes: 1, cpus_per_node: 8, charge: {{cpu_hour: {1 + view}}}}}\n"
                        for p in parts)
        (folder / f"view{view}.yaml").write_text(f"name: view{view}\nbackend: slurm\ndefault_account: {account}\n"
                                                 f"slurm: {{conf: {conf}}}\npartitions:\n{items}")
        made += len(parts)
        view += 1
    names = ", ".join(f"view{i}" for i in range(view))
    (folder / "settings.yaml").write_text(f"default_cluster: view0\nrouting: {{clusters: [{names}]}}\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2,5,10")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--account", default="acct-a")
    args = ap.parse_args()
    conf = os.environ.get("SLURM_CONF")
    if not conf:
        raise SystemExit("set SLURM_CONF to a running cluster's slurm.conf (see the docstring)")
    from suanli.api import Client
    from suanli.jobs.build import build_spec
    from suanli.jobs.spec import Command, JobSpec

    script = "#!/bin/sh\ntrue\n"
    raw_argv = ["sbatch", "--test-only", "--partition=debug", "--nodes=1", "--ntasks-per-node=1",
                "--cpus-per-task=1", "--time=10", f"--account={args.account}"]

    def raw() -> None:
        r = subprocess.run(raw_argv, input=script, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"sbatch --test-only failed: {r.stderr.strip()}")

    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SUANLI_HOME"] = str(Path(tmp) / "home")
        os.chdir(tmp)
        rows: list[tuple[str, float]] = [("raw sbatch --test-only (one partition)", median_s(raw, args.repeat))]
        for n in (int(s) for s in args.sizes.split(",")):
            cfg = Path(tmp) / f"cfg{n}"
            write_configs(cfg, conf, n, args.account)
            os.environ["SUANLI_CONFIG"] = str(cfg)
            client = Client()
            spec = build_spec(JobSpec(workload=Command(["true"])), cluster="auto", time="10m")

            def decide(c: Client = client, s: JobSpec = spec, want: int = n) -> None:
                r = c.route(s)
                live = [x for x in r.rows if x.excluded is None]
                if len(live) != want:
                    raise SystemExit(f"expected {want} live candidates, got {[x.reason for x in r.rows]}")

            def raw_parallel(k: int = n) -> None:
                with ThreadPoolExecutor(k) as ex:
                    list(ex.map(lambda _: raw(), range(k)))

            rows.append((f"raw: {n} sbatch --test-only in parallel", median_s(raw_parallel, args.repeat)))
            rows.append((f"route over {n} Slurm partitions", median_s(decide, args.repeat)))
            client.close()
        base = rows[0][1]
        report("routing decision (in process, medians)", rows, rows[0][0])
        results["decision"] = [{"what": w, "median_s": s, "x_raw_test_only": s / base} for w, s in rows]

        # A routed submission against the same submission to a named cluster (3 candidates: debug, ai, dcu).
        cfg = Path(tmp) / "cfg-submit"
        write_configs(cfg, conf, 3, args.account)
        os.environ["SUANLI_CONFIG"] = str(cfg)
        client = Client()
        ids: list[str] = []

        def submit(cluster: str) -> None:
            job = client.submit_spec(build_spec(JobSpec(workload=Command(["true"])), cluster=cluster,
                                                partition=None if cluster == "auto" else "debug", time="1m"))
            ids.append(job.id)

        sub_rows = [("submit to a named cluster", median_s(lambda: submit("view0"), args.repeat)),
                    ("submit --cluster auto (3 partitions)", median_s(lambda: submit("auto"), args.repeat))]
        report("one submission (in process, medians)", sub_rows, sub_rows[0][0])
        natives = [n for r in client.store.query() if r.native_id for n in r.native_id.split(",")]
        subprocess.run(["scancel", *natives], capture_output=True)
        client.close()
        results["submit"] = [{"what": w, "median_s": s, "x_named": s / sub_rows[0][1]} for w, s in sub_rows]
        results["added_latency_s"] = sub_rows[1][1] - sub_rows[0][1]
    dest = Path(__file__).resolve().parent / "results" / "routing.json"
    dest.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {dest}")


if __name__ == "__main__":
    main()
