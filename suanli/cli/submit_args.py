"""The flags of ``suanli submit`` (also read by ``submit JOB.yaml`` flags and the completion script). The job's
options come from the one option table (``jobs/options.py``), so the flags, the API's keywords and dask's
checks cannot drift apart; this module adds only the flags about submitting itself (cluster, dry run, waits).
The table is imported when a submit parser is built, never for ``suanli --help``."""

from __future__ import annotations

import argparse

TYPE_CHECKING = False  # `typing` itself is more than `suanli --help` needs at run time
if TYPE_CHECKING:
    from typing import Any

    from suanli.jobs.options import Option


def add_submit_args(p: argparse.ArgumentParser) -> None:
    from suanli.jobs.options import OPTIONS

    p.add_argument("--cluster", "-c", help="cluster name (default: local); auto: where it is expected to start "
                   "first, within quota")
    for option in OPTIONS:
        if option.flags:
            _add_option(p, option)
        if option.name == "partition":
            p.add_argument("--explain", action="store_true",
                           help="with --cluster/--partition auto: print every candidate weighed and why")
    p.add_argument("--dry-run", action="store_true", help="print what would be submitted; submit nothing")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--wait", action="store_true", help="wait for the job; exit 0 if it completed, else 1")
    g.add_argument("--follow", action="store_true", help="stream its output until it ends; exit as --wait")
    p.add_argument("--exit-code", action="store_true",
                   help="with --wait/--follow (implies --wait): exit with the job's own exit code, as srun does")
    p.add_argument("--json", action="store_true")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS | JOB.yaml")


def _add_option(p: argparse.ArgumentParser, option: Option) -> None:
    """One table entry's flag: its argparse dest is the API keyword its value is passed on as."""
    kw: dict[str, Any] = {"dest": option.cli_key, "help": option.help}
    if option.metavar:
        kw["metavar"] = option.metavar
    if option.cli == "int":
        kw["type"] = int
    elif option.cli == "optional":
        kw.update(nargs="?", const=True)
    elif option.cli in ("append", "pairs", "opts"):
        kw.update(action="append", default=[])
    p.add_argument(*option.flags, **kw)


def submit_options(args: argparse.Namespace, base: Any = None) -> dict[str, Any]:
    """The job options given as flags, as ``build_spec`` keywords (nothing for a flag left out). ``base``: the
    spec file's JobSpec, whose setup lines and dependencies the flags add to."""
    from suanli.errors import UsageError
    from suanli.jobs.options import OPTIONS

    out: dict[str, Any] = {}
    for option in OPTIONS:
        value = getattr(args, option.cli_key, None) if option.flags else None
        if value is None or value == []:
            continue
        if option.cli == "pairs":
            pairs: dict[str, str] = {}
            for pair in value:
                key, sep, text = pair.partition("=")
                if not sep or not key:
                    raise UsageError(f"{option.flags[0]}: {pair!r} is not KEY=VALUE")
                pairs[key] = text
            value = pairs
        elif option.cli == "opts":  # OPT[=VALUE]: a flag without a value is True
            value = {opt: text if eq else True for opt, eq, text in (item.partition("=") for item in value)}
        elif option.extends and base is not None:
            value = (*getattr(base, option.target), *value)
        elif isinstance(value, list):
            value = list(value)
        out[option.cli_key] = value
    return out
