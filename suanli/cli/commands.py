"""The CLI verbs. Each returns the process exit code; errors are raised as SuanliError subclasses."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from suanli.cli.output import clean, clean_table, duration, local_time, print_infos, print_json, short, when
from suanli.errors import SuanliError, UsageError

if TYPE_CHECKING:
    from suanli.api import Client
    from suanli.compute.store import JobRow
    from suanli.jobs.record import JobInfo


def _client(args: argparse.Namespace) -> Client:
    from suanli.api import Client

    return Client(getattr(args, "config", None))


# ---------------------------------------------------------------- submit
def _spec_from_args(args: argparse.Namespace) -> Any:
    from suanli.cli.submit_args import submit_options
    from suanli.jobs.build import build_spec
    from suanli.jobs.spec import Command, JobSpec

    command = list(args.command)  # main._split_submit took the spec file and any -- off
    if getattr(args, "spec_file", None):
        from suanli.jobs.specfile import load_spec_file

        spec = load_spec_file(args.spec_file)
    elif not command:
        raise UsageError("submit: give a command after -- (suanli submit -- python sim.py) or a JOB.yaml file")
    else:
        spec = JobSpec(workload=Command(command))
    return build_spec(spec, cluster=args.cluster, **submit_options(args, spec))


T = TypeVar("T")


def _explained(args: argparse.Namespace, act: Callable[[], T]) -> T:
    """Run a submission step; when ``--cluster auto`` found no candidate and --explain was asked, print the
    rows it weighed before the one-line error."""
    try:
        return act()
    except SuanliError as exc:
        rows = getattr(exc, "rows", None)
        if rows is not None and getattr(args, "explain", False):
            from suanli.cli.routing_cmd import routing_table

            table_text = routing_table({"candidates": [r.to_json() for r in rows]})
            (sys.stdout if args.json else sys.stderr).write(table_text)
        raise


def cmd_submit(args: argparse.Namespace) -> int:
    client = _client(args)
    spec = _spec_from_args(args)
    if not args.dry_run:
        _check_writable_home(client)
    if args.dry_run:
        plan, sub = _explained(args, lambda: client.plan(spec))
        est = client.accounts.estimate(sub)
        checks = client.accounts.admit(sub, est, reserve=False)  # a quota it would overrun: exit 3 here too
        if args.json:
            print_json({"cluster": sub.cluster.name, "partition": sub.partition.name, "plan": plan.to_json(),
                        "estimate": est.to_json(),
                        "quota": [{**c.to_json(), "remaining_after": c.remaining - c.need} for c in checks],
                        **({"routing": plan.routing} if plan.routing else {})})
        else:
            if plan.routing:
                from suanli.cli.routing_cmd import routing_table

                sys.stdout.write(routing_table(plan.routing))
            sys.stdout.write(plan.render())
            sys.stdout.write(f"# may cost: {est.describe()}\n")
            for c in checks:
                sys.stdout.write(f"# quota {c.quota.id} ({c.quota.scope()}, {c.window}): {c.label()} "
                                 f"{c.remaining:.2f} of {c.limit:.2f} remain; {c.remaining - c.need:.2f} after this "
                                 "job\n")
            sys.stdout.write("# dry run: nothing was submitted\n")
        return 0
    handle = _explained(args, lambda: client.submit_spec(spec))
    job_id = handle.id
    row = client.store.get(job_id)
    assert row is not None
    routing = row.meta.get("routing")
    if routing and getattr(args, "explain", False) and not args.json:
        from suanli.cli.routing_cmd import routing_table

        sys.stderr.write(routing_table(routing))
    infos = client.list_infos([row], refresh=False)  # just submitted: no need to ask the scheduler yet
    first = infos[0]
    if args.json and not (args.wait or args.follow):
        print_json({"id": job_id, "name": first.name, "cluster": first.cluster, "partition": first.partition,
                    "backend": first.backend, "native_id": first.native_id, "state": _combined(infos).state.value,
                    "array_tasks": len(infos) if first.array_task is not None else None,
                    **({"routing": routing} if routing else {})})
        return 0
    if not args.json:
        native = f" (native id {first.native_id})" if first.native_id and first.native_id != job_id else ""
        print(f"submitted job {job_id} '{first.name}' to cluster {first.cluster}{native}", file=sys.stderr)
        if not (args.wait or args.follow):
            print(job_id)
            return 0
    if args.follow:
        _follow(client, job_id, None, to_stderr=args.json)  # with --json, stdout carries JSON alone
    final = client.wait_for([(job_id, None)], None)
    if args.json:
        print_json([i.to_json() for i in final])
    f = _combined(final)
    print(f"job {job_id} {f.state.value}" + ("" if f.exit_code is None else f" (exit code {f.exit_code})"),
          file=sys.stderr)
    return waited_exit_code(final, args.exit_code)


def _check_writable_home(client: Client) -> None:
    """Submitting writes the registry and the job folder: say so before anything is planned or reserved."""
    import os

    root = client.store.root
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        ro = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
        why = "read-only file system" if ro else "permission denied"
        raise UsageError(f"SUANLI_HOME {root}: {why}; submit records the job there: set SUANLI_HOME to a "
                         "writable folder")


def waited_exit_code(infos: list[JobInfo], own: bool = False) -> int:
    """suanli's own code for a waited job: 0 if every task completed, else 1. ``own`` (``--exit-code``, as
    srun does) returns the job's own code instead, so a job exiting 2-4 is not read as suanli's usage, quota
    or backend error unless asked for."""
    if own:
        return job_exit_code(infos)
    from suanli.jobs.state import JobState

    return 0 if all(i.state is JobState.COMPLETED for i in infos) else 1


def job_exit_code(infos: list[JobInfo]) -> int:
    """The job's own exit code: 0 when all tasks completed, else the first non-zero code (1 without one)."""
    from suanli.jobs.state import JobState

    if all(i.state is JobState.COMPLETED for i in infos):
        return 0
    for i in infos:
        if i.state is not JobState.COMPLETED and i.exit_code:
            return i.exit_code
    return 1


def _combined(infos: list[JobInfo]) -> JobInfo:
    from suanli.jobs.handle import combine_infos

    return infos[0] if len(infos) == 1 else combine_infos(infos)


# ---------------------------------------------------------------- status


def _resolve(client: Client, ids: list[str]) -> list[tuple[JobRow, int | None]]:
    return [client.store.resolve(i) for i in ids]


def cmd_status(args: argparse.Namespace) -> int:
    from suanli.compute.store import Store

    store = Store()
    states = _state_filter(args.state)
    explain = getattr(args, "explain", False)
    if args.jobs:
        resolved = [store.resolve(i) for i in args.jobs]
        rows = list({r.id: r for r, _ in resolved}.values())
        if explain:
            return _status_explain(rows, args.json)
        wanted_tasks: dict[str, set[int | None]] = {}
        for r, t in resolved:
            wanted_tasks.setdefault(r.id, set()).add(t)
        # When every state is final there is no backend to ask (and no need to load the rest).
        infos = store.infos(rows) if all(r.done for r in rows) else _client_for_status(args, store).list_infos(rows)
        infos = [i for i in infos if None in wanted_tasks[i.id] or i.array_task in wanted_tasks[i.id]]
    else:
        since = when(args.since) if args.since else None
        day_ago = None if (args.all or since is not None) else time.time() - 86400
        if explain:
            return _status_explain(store.query(cluster=args.cluster, since=since, open_or_since=day_ago), args.json)
        # Only the unfinished jobs are read as rows (to ask their backends); the listing itself is one joined
        # query, so a registry of finished jobs builds no JobRow at all.
        open_rows = store.query(cluster=args.cluster, since=since, open_or_since=day_ago, only_open=True)
        if open_rows:
            _client_for_status(args, store).refresh(open_rows)
        infos = store.infos_where(cluster=args.cluster, since=since, open_or_since=day_ago)
    if states is not None:
        infos = [i for i in infos if i.state.value in states]
    if args.json:
        print_infos(infos)
        return 0
    sys.stdout.write(_status_table(infos, per_task=bool(args.jobs)))
    return 0


def _state_filter(text: str | None) -> set[str] | None:
    """``--state RUNNING,FAILED`` as a set of names; an unknown name is a usage error naming the valid ones."""
    from suanli.jobs.state import JobState

    if not text:
        return None
    states = {s.strip().upper() for s in text.split(",") if s.strip()}
    unknown = states - {s.value for s in JobState}
    if unknown:
        raise UsageError(f"--state: unknown state(s) {', '.join(sorted(unknown))}; valid states: "
                         f"{', '.join(s.value for s in JobState)}")
    return states


def _client_for_status(args: argparse.Namespace, store: Any) -> Client:
    from suanli.api import Client

    return Client(getattr(args, "config", None), store)


def _status_explain(rows: list[JobRow], as_json: bool) -> int:
    """The routing decision kept on each job (``--cluster auto``); a job sent to a named cluster has none."""
    from suanli.cli.routing_cmd import routing_table

    if as_json:
        print_json([{"id": r.id, "cluster": r.cluster, "partition": r.partition, "routing": r.meta.get("routing")}
                    for r in rows])
        return 0
    for r in rows:
        routing = r.meta.get("routing")
        if routing is None:
            print(f"job {r.id}: sent to cluster {r.cluster} partition {r.partition} by name (no routing)")
        else:
            print(f"job {r.id}:")
            sys.stdout.write(routing_table(routing))
    return 0


_STATUS_HEADERS = ("ID", "NAME", "CLUSTER", "PARTITION", "STATE", "REASON", "TASKS", "RESTARTS", "SUBMITTED",
                   "ELAPSED", "EXIT")


def _status_table(infos: list[JobInfo], per_task: bool) -> str:
    """One row per job (an array's tasks combined), or per task when ``per_task``. What a job's tasks share
    (name, cluster, partition, submit time) is formatted once per job and each distinct reason once: a
    10,000-task ``status ARRAY_ID`` is one row per task."""
    rows: list[list[str]] = []
    groups: dict[str, list[JobInfo]] = {}
    for i in infos:
        groups.setdefault(i.id, []).append(i)
    reasons: dict[str | None, str] = {}
    now = time.time()
    for group in groups.values():
        first = group[0]
        entries = group if per_task and len(group) > 1 else [_combined(group)]
        ended = sum(1 for g in group if g.state.is_terminal)  # once per job: per row it made status quadratic
        shared = (clean(first.id), short(first.name), clean(first.cluster or ""), clean(first.partition or ""))
        submitted = local_time(first.submitted_at)
        is_array = first.array_task is not None
        for e in entries:
            reason = reasons.get(e.reason)
            if reason is None:
                reason = reasons[e.reason] = short(e.reason, 28)
            task = e.array_task
            tasks = (f"{ended}/{len(group)}" if task is None else str(task)) if is_array else ""
            started = e.started_at
            elapsed = None if started is None else max(0.0, (now if e.ended_at is None else e.ended_at) - started)
            rows.append([shared[0] if task is None else f"{shared[0]}_{task}", shared[1], shared[2], shared[3],
                         e.state._value_, reason, tasks, str(e.restarts or ""), submitted, duration(elapsed),
                         "" if e.exit_code is None else str(e.exit_code)])
    if not rows:
        return "no jobs (suanli status --all lists every job in the registry)\n"
    return clean_table(_STATUS_HEADERS, rows)


# ---------------------------------------------------------------- logs
def cmd_logs(args: argparse.Namespace) -> int:
    client = _client(args)
    row, task = client.store.resolve(args.job)
    tasks = [t.task for t in client.store.tasks([row.id])[row.id]]
    is_array = tasks != [None]
    if is_array and task is None:
        if args.follow:
            raise UsageError(f"logs: job {row.id} is an array; follow one task, such as {row.id}_{tasks[0]}")
        for t in tasks:
            print(f"==> {row.id}_{t} <==", flush=True)
            _print_logs(client, row.id, t, args.stream)
        return 0
    if args.follow:
        _follow(client, row.id, task, args.stream)
    else:
        _print_logs(client, row.id, task, args.stream)
    return 0


def _print_logs(client: Client, job_id: str, task: int | None, stream: str) -> None:
    if stream in ("both", "stdout"):
        sys.stdout.write(client.read_log(job_id, task, "stdout"))
        sys.stdout.flush()
    if stream in ("both", "stderr"):
        sys.stderr.write(client.read_log(job_id, task, "stderr"))
        sys.stderr.flush()


def _follow(client: Client, job_id: str, task: int | None, stream: str = "both", to_stderr: bool = False) -> None:
    """Print a job's output as it is written until the job ends; an array's tasks all at once, each line
    prefixed with ``[TASK] ``."""
    from suanli.compute.logs import follow_files

    tasks: list[int | None] = [task]
    if task is None:
        found = [t.task for t in client.store.tasks([job_id])[job_id]]
        if found and found != [None]:
            tasks = list(found)
    paths: list[Path] = []
    sinks: list[Any] = []
    prefixes: list[str] = []
    for t in tasks:
        out, err = client.log_paths(job_id, t)
        for p, s in ((out, "stdout"), (err, "stderr")):
            if stream in ("both", s):
                paths.append(p)
                sinks.append(sys.stdout if s == "stdout" and not to_stderr else sys.stderr)
                prefixes.append("" if t is None or len(tasks) == 1 and task is not None else f"[{t}] ")

    def finished() -> bool:
        infos = client.infos(job_id)
        return all(i.state.is_terminal for i in infos if task is None or i.array_task == task)

    for index, line in follow_files(paths, finished):
        sinks[index].write(prefixes[index] + line)
        sinks[index].flush()


# ---------------------------------------------------------------- cancel / wait
def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel what still runs; a job that had already ended is said to have ended (exit 0 all the same)."""
    client = _client(args)
    from suanli.jobs.state import JobState

    targets = _resolve(client, args.jobs)
    rows = list({r.id: r for r, _ in targets}.values())
    # A row left "Submitting" by a dead submitter is settled first, as cancelled when the scheduler never got it,
    # so the cancel is what ends it (and it is not reported as a job that had already ended).
    settled = set(client.reconcile_unsubmitted(rows, lost=JobState.CANCELLED))
    if settled:
        rows = client.store.query(ids=[r.id for r in rows])
    infos = client.list_infos(rows)
    ended: dict[str, str] = {}
    live: list[tuple[JobRow, int | None]] = []
    for r, t in targets:
        mine = [i for i in infos if i.id == r.id and (t is None or i.array_task == t)]
        key = r.id if t is None else f"{r.id}_{t}"
        if r.id in settled and r.id not in {x.id for x in rows if x.native_id}:
            continue  # ended CANCELLED just now, by this cancel
        if mine and all(i.state.is_terminal for i in mine):
            ended[key] = _combined(mine).state.value
        else:
            live.append((r, t))
    client.cancel_many(live)
    ids = [r.id if t is None else f"{r.id}_{t}" for r, t in targets]
    if args.json:
        print_json([{"id": i, "cancel_requested": i not in ended, "already_ended": ended.get(i)} for i in ids])
    else:
        for i in ids:
            msg = f"job {i} had already ended ({ended[i]})" if i in ended else f"cancel requested for job {i}"
            print(msg, file=sys.stderr)
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    client = _client(args)
    targets = _resolve(client, args.jobs)
    keys = [(r.id, t) for r, t in targets]
    timed_out = False
    try:
        infos = client.wait_for(keys, args.timeout)
    except TimeoutError:
        timed_out = True
        rows = list({r.id: r for r, _ in targets}.values())
        wanted = set(keys)
        infos = [i for i in client.list_infos(rows) if (i.id, None) in wanted or (i.id, i.array_task) in wanted]
    from suanli.jobs.state import JobState

    if args.json:
        print_json([i.to_json() for i in infos])
    else:
        sys.stdout.write(_status_table(infos, per_task=False))
        if timed_out:
            print(f"suanli: still running after {args.timeout} s", file=sys.stderr)
    ok = not timed_out and all(i.state is JobState.COMPLETED for i in infos)
    return 0 if ok else 1
