"""CLI start-up, whole processes, beside `python3 -c pass` measured in the same run: `suanli --help`,
`suanli submit -- true` on the local backend, `suanli status` with an empty registry and with 1,000 jobs.
Rounds are interleaved (each round runs every command once), so load from elsewhere on the machine falls on
all of them alike; the figures are medians. Goals: `--help` <= 1.5x and `submit -- true` <= 2.5x
`python3 -c pass`. Commands run as users run them, through the command server (suanli/cli/server.py; its first
command, in the warm-up rounds, starts it), and again in-process (SUANLI_SERVER=0). With $SUANLI_TEST_PG set,
a submit with a PostgreSQL ledger (a quota on its account, so admission runs) is timed against the same
submit with no ledger: the difference is what the ledger adds.

    .venv/bin/python bench/bench_cli.py [--rounds 21] [--jobs 1000] [--json PATH]

Every command runs from an empty folder with HOME pointing there and SUANLI_CONFIG unset, so no cluster config
file is read (the built-in local cluster needs none). Bytecode is written and used (PYTHONDONTWRITEBYTECODE is
dropped): users run from .pyc files, and compiling every module on every run would hide what start-up costs.
The figures are also written as JSON (default bench/results/cli.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from _util import pg_admin

HEAVY = ("ray", "torch", "dask", "distributed", "submitit", "psycopg", "psycopg2")
GOALS = {"suanli --help": 1.5, "suanli submit -- true (local)": 2.5}


def fill_registry(home: Path, n: int) -> None:
    """``n`` finished local jobs, so status lists them without asking any backend."""
    from suanli.compute.base import NativeStatus
    from suanli.compute.store import JobRow, Store
    from suanli.jobs.state import JobState

    store = Store(home)
    now = time.time()
    for i in range(n):
        jid = f"bench{i:05d}"
        store.insert(JobRow(jid, f"job-{i}", "local", "local", jid, "command", "local", None, "bench",
                            now - 3600 + i, str(home / "jobs" / jid), {}, True), [None], JobState.PENDING, None)
    done = NativeStatus(JobState.COMPLETED, exit_code=0, started_at=now - 60, ended_at=now)
    store.update_tasks(((f"bench{i:05d}", None), done) for i in range(n))
    store.close()


@dataclass
class Case:
    """One command line, timed whole; ``after`` runs untimed with its stdout (to let a submitted job end)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    after: Callable[[str], None] | None = None
    samples: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def run(self, cwd: str) -> tuple[float, float]:
        """Wall seconds, and the CPU seconds (user + system) of the process and the children it waited for: on
        a busy machine the CPU figure moves much less than the wall one. A submit's job runner is not waited
        for, so its CPU is not counted."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        r = subprocess.run(self.argv, env=self.env, cwd=cwd, capture_output=True, text=True)
        dt = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.returncode != 0:
            raise SystemExit(f"benchmark command failed ({r.returncode}): {' '.join(self.argv)}\n{r.stderr}")
        if self.after:
            self.after(r.stdout)
        return dt, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def interleaved(cases: list[Case], rounds: int, cwd: str, warmup: int = 2) -> None:
    """Each round runs every case once; the first ``warmup`` rounds (bytecode, page cache) are not kept."""
    for i in range(warmup + rounds):
        for c in cases:
            dt, cpu = c.run(cwd)
            if i >= warmup:
                c.samples.append(dt)
                c.cpu.append(cpu)


def wait_ended(home: Path) -> Callable[[str], None]:
    """After a submit: wait (untimed) until its local job has ended, so its runner does not load the next
    round's measurements."""
    from suanli.compute.local.runner import combined, read_state

    def after(stdout: str) -> None:
        job_dir = home / "jobs" / stdout.split()[-1]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = read_state(job_dir)
            if st is not None and combined(st) != "ACTIVE":
                return
            time.sleep(0.01)
        raise SystemExit(f"job in {job_dir} did not end within 60 s")

    return after


def wait_all(home: Path) -> None:
    """Let every job submitted under ``home`` end, so the folder can be removed."""
    for job_dir in (home / "jobs").glob("*"):
        wait_ended(home)(job_dir.name)


def base_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONDONTWRITEBYTECODE", "SUANLI_CONFIG", "SUANLI_LEDGER_URL", "SUANLI_CLUSTER",
                        "SUANLI_SERVER", "SUANLI_SERVER_IDLE")}
    env["HOME"] = str(tmp)  # no ~/.config/suanli/clusters
    # The command server's socket in this run's folder: removed with it, which ends the server.
    env["SUANLI_SERVER_DIR"] = str(tmp / "srv")
    return env


IN_PROCESS = {"SUANLI_SERVER": "0"}


@contextmanager
def pg_ledger(tmp: Path) -> Iterator[str | None]:
    """A fresh PostgreSQL database for the ledger (owned by suanli_admin, as tests/postgres/server.sh sets up),
    dropped afterwards; None without $SUANLI_TEST_PG."""
    pg = os.environ.get("SUANLI_TEST_PG")
    if not pg:
        yield None
        return
    name = "bench_cli_" + secrets.token_hex(4)
    p = urlsplit(pg)
    pg_admin(pg, f"CREATE DATABASE {name} OWNER suanli_admin")
    try:
        yield urlunsplit(p._replace(netloc=f"suanli_admin@{p.hostname}:{p.port}", path="/" + name))
    finally:
        pg_admin(pg, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")




def build_cases(tmp: Path, cwd: Path, exe: str, py: str, n_jobs: int, pg_url: str | None) -> list[Case]:
    env = base_env(tmp)

    def home_env(name: str, **extra: str) -> tuple[Path, dict[str, str]]:
        home = tmp / name
        return home, {**env, "SUANLI_HOME": str(home), **extra}

    empty, empty_env = home_env("empty")
    sub_home, sub_env = home_env("submit")
    full, full_env = home_env("full")
    fill_registry(full, n_jobs)
    cases = [
        Case("python3 -c pass", [py, "-c", "pass"], env),
        Case("suanli --help", [exe, "--help"], empty_env),
        Case("python -m suanli --help", [py, "-m", "suanli", "--help"], empty_env),
        Case("suanli submit -- true (local)", [exe, "submit", "--", "true"], sub_env, wait_ended(sub_home)),
        Case("suanli submit -- true (local, in-process)", [exe, "submit", "--", "true"], {**sub_env, **IN_PROCESS},
             wait_ended(sub_home)),
        Case("suanli status (empty registry)", [exe, "status"], empty_env),
        Case("suanli status (empty registry, in-process)", [exe, "status"], {**empty_env, **IN_PROCESS}),
        Case(f"suanli status ({n_jobs} jobs)", [exe, "status"], full_env),
        Case(f"suanli status --json ({n_jobs} jobs)", [exe, "status", "--json"], full_env),
        Case(f"suanli status --json ({n_jobs} jobs, in-process)", [exe, "status", "--json"],
             {**full_env, **IN_PROCESS}),
    ]
    if pg_url:
        quota = subprocess.run([exe, "quota", "set", "--account", "bench", "--cpu-hours", "1000000"],
                               env={**empty_env, "SUANLI_LEDGER_URL": pg_url}, cwd=cwd, capture_output=True,
                               text=True)
        if quota.returncode != 0:
            raise SystemExit(f"quota set on the PostgreSQL ledger failed: {quota.stderr}")
        argv = [exe, "submit", "-A", "bench", "-t", "1m", "--", "true"]
        nl_home, nl_env = home_env("submit-account")
        pg_home, pg_env = home_env("submit-pg", SUANLI_LEDGER_URL=pg_url)
        cases += [
            Case("suanli submit -A bench -- true (no ledger)", argv, nl_env, wait_ended(nl_home)),
            Case("suanli submit -A bench -- true (PostgreSQL ledger)", argv, pg_env, wait_ended(pg_home)),
            Case("suanli submit -A bench -- true (no ledger, in-process)", argv, {**nl_env, **IN_PROCESS},
                 wait_ended(nl_home)),
            Case("suanli submit -A bench -- true (PostgreSQL ledger, in-process)", argv, {**pg_env, **IN_PROCESS},
                 wait_ended(pg_home)),
        ]
    return cases


def heavy_imports(py: str, env: dict[str, str], cwd: str, *args: str) -> tuple[int, list[str]]:
    r = subprocess.run([py, "-X", "importtime", "-m", "suanli", *args], capture_output=True, text=True, env=env,
                       cwd=cwd)
    mods = {ln.split("|")[-1].strip() for ln in r.stderr.splitlines() if "|" in ln}
    return len(mods), sorted(m for m in mods if m.split(".")[0] in HEAVY + ("yaml",) or m.startswith(
        "suanli.accounting"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", "--repeat", type=int, default=21)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results" / "cli.json")
    args = ap.parse_args()
    py = sys.executable
    exe = str(Path(py).with_name("suanli"))
    with tempfile.TemporaryDirectory() as t, pg_ledger(Path(t)) as pg_url:
        tmp = Path(t)
        work = tmp / "cwd"
        work.mkdir()
        cases = build_cases(tmp, work, exe, py, args.jobs, pg_url)
        interleaved(cases, args.rounds, str(work))
        env = {**base_env(tmp), "SUANLI_HOME": str(tmp / "imports")}
        imports = {what: heavy_imports(py, env, str(work), *what.split()) for what in ("--help", "submit -- true")}
        wait_all(tmp / "imports")
    base = statistics.median(cases[0].samples)
    base_cpu = statistics.median(cases[0].cpu)
    rows = [{"what": c.name, "median_ms": round(statistics.median(c.samples) * 1000, 1),
             "ratio": round(statistics.median(c.samples) / base, 2),
             "cpu_ms": round(statistics.median(c.cpu) * 1000, 1),
             "cpu_ratio": round(statistics.median(c.cpu) / base_cpu, 2), "argv": c.argv[1:]} for c in cases]
    by = {r["what"]: r for r in rows}
    pg_added = pg_added_in_process = pg_added_cpu_in_process = None
    if pg_url:
        pg = by["suanli submit -A bench -- true (PostgreSQL ledger)"]
        no = by["suanli submit -A bench -- true (no ledger)"]
        pg_added = round(pg["median_ms"] - no["median_ms"], 1)  # type: ignore[operator]
        pg_ip = by["suanli submit -A bench -- true (PostgreSQL ledger, in-process)"]
        no_ip = by["suanli submit -A bench -- true (no ledger, in-process)"]
        pg_added_in_process = round(pg_ip["median_ms"] - no_ip["median_ms"], 1)  # type: ignore[operator]
        pg_added_cpu_in_process = round(pg_ip["cpu_ms"] - no_ip["cpu_ms"], 1)  # type: ignore[operator]
    print(f"\nCLI start-up, medians of {args.rounds} interleaved rounds ({os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f})")
    print(f"{'what':<52} {'wall ms':>8} {'x pass':>7} {'cpu ms':>7} {'x pass':>7} {'goal':>6}")
    for r in rows:
        goal = GOALS.get(str(r["what"]))
        print(f"{r['what']:<52} {r['median_ms']:>8} {r['ratio']:>7} {r['cpu_ms']:>7} {r['cpu_ratio']:>7} "
              f"{'<=' + str(goal) if goal else '':>6}")
    print("(a command served by the command server runs in the server's child: the CPU columns of those rows count\n"
          " the client process only; the in-process rows are the same commands with SUANLI_SERVER=0)")
    if pg_added is not None:
        print(f"a PostgreSQL ledger adds {pg_added} ms wall to a served submit (goal: <= 30 ms); in-process "
              f"{pg_added_in_process} ms wall, {pg_added_cpu_in_process} ms CPU")
    for what, (n, heavy) in imports.items():
        print(f"`python -X importtime -m suanli {what}`: {n} modules; heavy/yaml/accounting: {heavy or 'none'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "bench": "cli", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rounds": args.rounds, "cores": os.cpu_count(),
        "python": sys.version.split()[0], "load": os.getloadavg()[0], "rows": rows, "goals": GOALS,
        "pg_ledger_added_ms": pg_added, "pg_ledger_added_in_process_ms": pg_added_in_process,
        "pg_ledger_added_cpu_in_process_ms": pg_added_cpu_in_process,
        "imports": {what: {"modules": n, "heavy": heavy} for what, (n, heavy) in imports.items()},
    }, indent=2) + "\n")
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
