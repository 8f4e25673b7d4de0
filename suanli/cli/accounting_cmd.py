"""`suanli usage`, `suanli quota set|show|rm|apply` and `suanli accounting sync`."""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import TYPE_CHECKING, Any

from suanli.cli.output import csv_cell, print_json, table
from suanli.errors import UsageError

if TYPE_CHECKING:
    from suanli.accounting.ledger import Check
    from suanli.api import Client

USAGE_BY = "account,user,partition,accelerator,cluster,day,month,job"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("usage", parents=[common], help="compute usage from the ledger (core-hours, charge)",
                       description="Sum the ledger's usage records. T is an ISO 8601 date or time; without a zone "
                                   "it is local time (as in sacct).")
    p.add_argument("--by", default="account", help=f"group by some of: {USAGE_BY} (comma separated)")
    p.add_argument("--since", metavar="T")
    p.add_argument("--until", metavar="T")
    p.add_argument("--cluster", "-c")
    p.add_argument("--account", "-A")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true")
    g.add_argument("--csv", action="store_true")
    p.add_argument("--plot", metavar="FILE.png", help="draw a stacked bar chart per day or month (matplotlib)")
    p.add_argument("--metric", choices=("cpu_hours", "accelerator_hours", "charge"), default="cpu_hours",
                   help="what --plot draws (default cpu_hours)")

    q = sub.add_parser("quota", parents=[common], help="set, show, remove and apply quotas")
    qs = q.add_subparsers(dest="quota_verb", metavar="ACTION")
    s = qs.add_parser("set", parents=[common], help="create or update a quota",
                      description="No --cluster: the quota covers all clusters. Default period: month.")
    s.add_argument("--account", "-A", required=True)
    s.add_argument("--user", "-u")
    s.add_argument("--cluster", "-c")
    s.add_argument("--period", choices=("month", "total"), default="month")
    s.add_argument("--start", metavar="DATE", help="first day the quota applies (YYYY-MM-DD)")
    s.add_argument("--end", metavar="DATE", help="first day it no longer applies")
    s.add_argument("--cpu-hours", metavar="X")
    s.add_argument("--accelerator-hours", action="append", default=[], metavar="KIND:Y",
                   help="accelerator-hours of one kind: ascend:500, nvidia:100 (repeatable)")
    s.add_argument("--charge", metavar="Z", help="billing units")
    s.add_argument("--json", action="store_true")
    s = qs.add_parser("show", parents=[common], help="limits, used, reserved and remaining")
    s.add_argument("--account", "-A")
    s.add_argument("--json", action="store_true")
    s = qs.add_parser("rm", parents=[common], help="remove quotas",
                      description="--id N removes one quota; --account A removes every quota of A that also "
                                  "matches --user/--cluster when given (all of A's quotas otherwise).")
    s.add_argument("--id", type=int, dest="quota_id")
    s.add_argument("--account", "-A")
    s.add_argument("--user", "-u")
    s.add_argument("--cluster", "-c")
    s = qs.add_parser("apply", parents=[common], help="mirror the quotas into Slurm association limits")
    s.add_argument("--cluster", "-c", required=True)
    s.add_argument("--dry-run", action="store_true", help="print the sacctmgr commands only")
    s.add_argument("--json", action="store_true")

    a = sub.add_parser("accounting", parents=[common], help="feed the ledger (accounting sync)")
    asub = a.add_subparsers(dest="accounting_verb", metavar="ACTION")
    s = asub.add_parser("sync", parents=[common], help="book finished jobs from sacct and the registry",
                        description="Incremental and idempotent: running it twice, or again after it was killed, "
                                    "gives the same totals.")
    s.add_argument("--cluster", "-c")
    s.add_argument("--since", metavar="T", help="ISO date/time or a duration ago (12h, 7d); default: the last sync")
    s.add_argument("--all-users", action="store_true", help="every user's jobs (sacct --allusers; for admins)")
    s.add_argument("--json", action="store_true")


def _client(args: argparse.Namespace) -> Client:
    from suanli.api import Client

    return Client(getattr(args, "config", None))


def _when(text: str | None, flag: str) -> float | None:
    from suanli.cli.output import when

    return None if text is None else when(text, flag)


# ---------------------------------------------------------------- usage
def sig(value: float, digits: int = 3) -> str:
    """A table cell with ``digits`` significant figures, so a 2-second job shows 0.00111, not 0.00: plain
    decimals from 1e-6 to 1e9 (no decimals from 100 up: 1234.4 shows 1234), scientific only beyond.
    JSON and CSV keep the full value."""
    if value == 0:
        return "0"
    mag = abs(value)
    if mag < 1e-6 or mag >= 1e9:
        return f"{value:.{digits - 1}e}"
    if mag >= 10 ** (digits - 1):
        return f"{value:.0f}"
    decimals = digits - 1 - math.floor(math.log10(mag))
    return f"{value:.{decimals}f}"


def cmd_usage(args: argparse.Namespace) -> int:
    if args.plot and not args.plot.lower().endswith(".png"):
        raise UsageError(f"usage --plot: {args.plot!r} must be a .png file name (the chart is a PNG image)")
    by = [k.strip() for k in args.by.split(",") if k.strip()]
    client = _client(args)
    if args.cluster and args.cluster not in client.configs.clusters:
        known = {r["cluster"] for r in client.accounts.ledger.report(["cluster"])}
        if args.cluster not in known:  # a cluster no longer configured may still have usage
            raise UsageError(f"usage: --cluster {args.cluster!r} is neither configured nor in the ledger; known: "
                             f"{', '.join(sorted(set(client.configs.clusters) | known))}")
    rows = client.accounts.ledger.report(by, since=_when(args.since, "--since"), until=_when(args.until, "--until"),
                                         cluster=args.cluster, account=args.account)
    if args.plot:
        _plot(rows, by, args.metric, args.plot)
    if args.json:
        print_json(rows)
    elif args.csv:
        import csv

        w = csv.writer(sys.stdout)
        if rows:
            w.writerow(list(rows[0].keys()))
        for r in rows:
            w.writerow([csv_cell(v) for v in r.values()])  # no spreadsheet formulas from names
    elif not args.plot or sys.stdout.isatty():
        sums = ("jobs", "cpu_hours", "accelerator_hours", "charge", "cpu_efficiency", "job_id", "state")
        head = [k for k in rows[0] if k not in sums] if rows else by
        extra = ["job_id", "state", "cpu_eff"] if "job" in by else []
        body = []
        for r in rows:
            line = [r[k] for k in head] + [r["jobs"], sig(r["cpu_hours"]), sig(r["accelerator_hours"]),
                                           sig(r["charge"])]
            if extra:
                eff = r.get("cpu_efficiency")
                line += [r.get("job_id"), r.get("state"), "" if eff is None else f"{eff:.0%}"]
            body.append(line)
        sys.stdout.write(table([*head, "JOBS", "CPU_H", "ACC_H", "CHARGE", *(e.upper() for e in extra)], body))
        if not rows:
            print("(no usage recorded in this range; `suanli accounting sync` books finished jobs)", file=sys.stderr)
    return 0


def _plot(rows: list[dict[str, Any]], by: list[str], metric: str, path: str) -> None:
    period = "day" if "day" in by else "month" if "month" in by else None
    if period is None:
        raise UsageError("usage --plot: add day or month to --by (the bars are periods), e.g. --by account,month")
    stack_key = next((k for k in by if k != period), None)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("usage --plot needs matplotlib; pip install 'suanli[plot]'") from None
    periods = sorted({str(r[period]) for r in rows})
    groups = sorted({str(r[stack_key]) if stack_key else "all" for r in rows})
    values = {g: [0.0] * len(periods) for g in groups}
    for r in rows:
        g = str(r[stack_key]) if stack_key else "all"
        values[g][periods.index(str(r[period]))] += float(r[metric])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(periods) + 3), 4.5))
    bottom = [0.0] * len(periods)
    for g in groups:
        ax.bar(periods, values[g], bottom=bottom, label=g)
        bottom = [b + v for b, v in zip(bottom, values[g], strict=True)]
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_xlabel(period)
    ax.set_title(f"{metric.replace('_', ' ')} per {period}" + (f" by {stack_key}" if stack_key else ""))
    if stack_key:
        ax.legend(title=stack_key, fontsize="small")
    fig.autofmt_xdate()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise UsageError(f"usage --plot: cannot write {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)


# ---------------------------------------------------------------- quota
def cmd_quota(args: argparse.Namespace) -> int:
    verb = getattr(args, "quota_verb", None)
    if verb is None:
        raise UsageError("quota: give an action: set, show, rm or apply (suanli quota --help)")
    return {"set": _quota_set, "show": _quota_show, "rm": _quota_rm, "apply": _quota_apply}[verb](args)


def _quota_set(args: argparse.Namespace) -> int:
    from suanli.accounting.quota import Quota, parse_accelerator_hours, parse_date, parse_number

    q = Quota(
        account=args.account, user=args.user, cluster=args.cluster, period=args.period,
        start=parse_date(args.start, "--start") if args.start else None,
        end=parse_date(args.end, "--end") if args.end else None,
        cpu_hours=parse_number(args.cpu_hours, "--cpu-hours") if args.cpu_hours is not None else None,
        accelerator_hours=parse_accelerator_hours(args.accelerator_hours),
        charge=parse_number(args.charge, "--charge") if args.charge is not None else None,
    )
    client = _client(args)
    if q.cluster:
        client.configs.cluster(q.cluster)  # an unknown cluster lists the valid ones
    ledger = client.accounts.ledger
    from suanli.accounting.db import LedgerPermissionError

    try:
        saved = ledger.set_quota(q, client.accounts.user(_login()))
    except LedgerPermissionError as exc:
        raise LedgerPermissionError(f"quota: only the ledger's admin role may change quotas ({exc})") from None
    if args.json:
        print_json({"id": saved.id, "account": saved.account, "user": saved.user, "cluster": saved.cluster,
                    "period": saved.period, "start": saved.start, "end": saved.end, "cpu_hours": saved.cpu_hours,
                    "accelerator_hours": saved.accelerator_hours, "charge": saved.charge})
    else:
        print(f"quota {saved.id}: {saved.scope()} per {saved.period}: "
              + ", ".join(f"{lim:g} {_label(res, kind)}" for res, kind, lim in saved.limits()), file=sys.stderr)
    return 0


def _login() -> str:
    from suanli.compute.base import current_user

    return current_user()


def _label(resource: str, kind: str | None) -> str:
    return f"{kind} accelerator-hours" if kind else {"cpu_hours": "cpu-hours", "charge": "charge units"}[resource]


def _quota_show(args: argparse.Namespace) -> int:
    client = _client(args)
    checks = client.accounts.ledger.quota_status(args.account)
    if args.json:
        print_json([c.to_json() for c in checks])
        return 0
    if not checks:
        print("(no quotas" + (f" for account {args.account}" if args.account else "") + "; suanli quota set ...)",
              file=sys.stderr)
        return 0
    bars = sys.stdout.isatty()
    body = []
    for c in checks:
        q = c.quota
        line: list[object] = [q.id, q.account, q.user or "*", q.cluster or "*", c.window, _label(c.resource, c.kind),
                              sig(c.limit), sig(c.used), sig(c.reserved), sig(max(c.remaining, 0))]
        if bars:
            line.append(_bar(c))
        body.append(line)
    head = ["ID", "ACCOUNT", "USER", "CLUSTER", "WINDOW", "RESOURCE", "LIMIT", "USED", "RESERVED", "REMAINING"]
    sys.stdout.write(table(head + (["USE"] if bars else []), body))
    return 0


def _bar(c: Check, width: int = 20) -> str:
    if c.limit <= 0:
        return "[" + "#" * width + "]"
    used = min(width, round(width * c.used / c.limit))
    res = min(width - used, round(width * c.reserved / c.limit))
    pct = min(999.0, 100 * (c.used + c.reserved) / c.limit)
    return "[" + "#" * used + "+" * res + "." * (width - used - res) + f"] {pct:.0f}%"


def _quota_rm(args: argparse.Namespace) -> int:
    client = _client(args)
    n = client.accounts.ledger.remove_quotas(quota_id=args.quota_id, account=args.account, user=args.user,
                                             cluster=args.cluster)
    if n == 0:
        raise UsageError("quota rm: no quota matches; list them with suanli quota show")
    print(f"removed {n} quota(s)", file=sys.stderr)
    return 0


def _quota_apply(args: argparse.Namespace) -> int:
    import shlex

    client = _client(args)
    accounts = client.accounts
    cmds, warnings = accounts.apply_plan(args.cluster) if args.dry_run else accounts.apply(args.cluster)
    for w in warnings:
        print(f"suanli: warning: {w}", file=sys.stderr)
    if args.json:
        print_json({"cluster": args.cluster, "applied": not args.dry_run, "commands": cmds, "warnings": warnings})
    else:
        for argv in cmds:
            print(("would run: " if args.dry_run else "ran: ") + shlex.join(argv))
        if not cmds:
            print(f"(no quota with cpu or accelerator limits applies to {args.cluster})", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- accounting sync
def cmd_accounting(args: argparse.Namespace) -> int:
    if getattr(args, "accounting_verb", None) != "sync":
        raise UsageError("accounting: give an action: sync (suanli accounting sync --help)")
    since = _when(args.since, "--since")
    client = _client(args)
    t0 = time.monotonic()
    results = client.accounts.sync(args.cluster, since, args.all_users)
    if args.json:
        print_json([r.to_json() for r in results])
        return 4 if any(r.error for r in results) else 0
    body = [[r.cluster, r.backend, r.records, r.open_jobs, r.skipped_lines, ",".join(r.unknown_states)]
            for r in results]
    sys.stdout.write(table(["CLUSTER", "BACKEND", "WRITTEN", "STILL_OPEN", "BAD_LINES", "NEW_STATES"], body))
    print(f"synced in {time.monotonic() - t0:.1f} s into {client.accounts.ledger.where}", file=sys.stderr)
    for r in results:
        if r.error:
            print(f"suanli: error: {r.error}", file=sys.stderr)
    return 4 if any(r.error for r in results) else 0
