"""The ``suanli`` command. Parsing is kept import-light: verbs import the rest of suanli only when they run."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from suanli.errors import SuanliError

VERBS = ("submit", "status", "logs", "cancel", "wait", "clusters", "hardware", "usage", "quota", "accounting",
         "ray", "completion")

EXIT_CODES = """exit codes: 0 success; 1 a waited job did not complete (its own code is printed; submit --exit-code
returns it instead); 2 usage or validation error (nothing reached a backend); 3 refused by a quota; 4 the backend
refused or could not be reached"""
SPEC_SUFFIXES = (".yaml", ".yml")


class SuanliParser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem and where to look, not a page of usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common() -> SuanliParser:
    p = SuanliParser(add_help=False)
    p.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                   help="cluster config file or folder, read before the default search path")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return p


def _add_submit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", "-c", help="cluster name (default: local)")
    p.add_argument("--partition", "-p")
    p.add_argument("--account", "-A")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument("--nodes", "-N", type=int)
    p.add_argument("--ntasks-per-node", type=int, dest="tasks_per_node")
    p.add_argument("--cpus-per-task", type=int)
    p.add_argument("--mem", help="memory per node: 4G, 500M")
    p.add_argument("--accelerators", metavar="KIND:N", help="accelerators per node: ascend:8, nvidia:2")
    p.add_argument("--time", "-t", help="time limit: 90m, 2h, 1-00:00:00, HH:MM:SS")
    p.add_argument("--array", metavar="SPEC", help="array tasks: 0-99, 0-99%%10, 1,3,5")
    p.add_argument("--name", "-J")
    p.add_argument("--env", "-e", action="append", default=[], metavar="K=V")
    p.add_argument("--setup", action="append", default=[], metavar="LINE", help="shell line run before the job")
    p.add_argument("--workdir", "-D")
    p.add_argument("--after", action="append", default=[], metavar="JOB",
                   help="start after JOB completed (afterany:JOB: after it ended in any way)")
    p.add_argument("--requeue", type=int, metavar="N", help="restart a failed job up to N times")
    p.add_argument("--dry-run", action="store_true", help="print what would be submitted; submit nothing")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--wait", action="store_true", help="wait for the job; exit 0 if it completed, else 1")
    g.add_argument("--follow", action="store_true", help="stream its output until it ends; exit as --wait")
    p.add_argument("--exit-code", action="store_true",
                   help="with --wait/--follow (implies --wait): exit with the job's own exit code, as srun does")
    p.add_argument("--json", action="store_true")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS | JOB.yaml")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = SuanliParser(
        prog="suanli", parents=[common],
        description="One job API for Slurm partitions, Ray clusters and this machine.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version="suanli 0.1.0")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    p = sub.add_parser("submit", parents=[common], help="submit a command or a JOB.yaml spec",
                       description="Submit `-- CMD ARGS...` (run as an argv list, never through a shell) or a "
                                   "job spec file JOB.yaml; flags override the file.")
    _add_submit_args(p)

    p = sub.add_parser("status", parents=[common], help="list jobs and their states")
    p.add_argument("jobs", nargs="*", metavar="JOB")
    p.add_argument("--cluster", "-c")
    p.add_argument("--all", "-a", action="store_true", help="every job in the registry")
    p.add_argument("--state", "-s", help="only these states (comma separated)")
    p.add_argument("--since", help="submitted since: an ISO date/time or a duration ago (2h, 1d)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("logs", parents=[common], help="print a job's output")
    p.add_argument("job", metavar="JOB", help="JOB, or JOB_7 for array task 7")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    p.add_argument("--stream", choices=("both", "stdout", "stderr"), default="both")

    p = sub.add_parser("cancel", parents=[common], help="cancel jobs")
    p.add_argument("jobs", nargs="+", metavar="JOB")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("wait", parents=[common], help="wait for jobs; exit 1 unless all completed")
    p.add_argument("jobs", nargs="+", metavar="JOB")
    p.add_argument("--timeout", type=float, metavar="S")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("clusters", parents=[common], help="list configured clusters and partitions")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("hardware", parents=[common], help="detect a node's CPU, NUMA layout and accelerators",
                       description="Probe this machine, a --sysroot copy of one, or captured outputs "
                                   "(srun lscpu > node.txt), and say which adapter applies.")
    p.add_argument("--sysroot", metavar="DIR", help="read proc/, sys/ and etc/ under DIR (like lscpu --sysroot)")
    p.add_argument("--lscpu", metavar="FILE", help="captured lscpu output")
    p.add_argument("--cpuinfo", metavar="FILE", help="captured /proc/cpuinfo")
    p.add_argument("--npu-smi", metavar="FILE", dest="npu_smi", help="captured `npu-smi info` output")
    p.add_argument("--nvidia-smi", metavar="FILE", dest="nvidia_smi",
                   help="captured `nvidia-smi --query-gpu=index,name,memory.total --format=csv` output")
    p.add_argument("--partition-entry", metavar="NAME", help="print a cluster_configs/ partition item instead")
    p.add_argument("--json", action="store_true")

    from suanli.cli import accounting_cmd, ray_cmd

    accounting_cmd.register(sub, common)
    ray_cmd.register(sub, common)

    p = sub.add_parser("completion", parents=[common], help="print a shell completion script")
    p.add_argument("shell", choices=("bash", "zsh"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb == "submit":
        try:
            _split_submit(args)
        except SuanliError as exc:
            print(f"suanli: error: {exc}", file=sys.stderr)
            return exc.exit_code
    debug = getattr(args, "debug", False)
    logging.basicConfig(format="suanli: warning: %(message)s", level=logging.DEBUG if debug else logging.WARNING)
    if args.verb is None:
        parser.print_help()
        return 2
    from suanli.cli import commands

    if args.verb in ("usage", "quota", "accounting"):
        from suanli.cli import accounting_cmd

        handler = getattr(accounting_cmd, "cmd_" + args.verb)
    elif args.verb == "ray":
        from suanli.cli import ray_cmd

        handler = ray_cmd.cmd_ray
    else:
        handler = getattr(commands, "cmd_" + args.verb)
    try:
        code: int = handler(args)
        return code
    except SuanliError as exc:
        if debug:
            raise
        print(f"suanli: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("suanli: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: one line unless --debug
        if debug:
            raise
        if type(exc).__module__ == "sqlite3":  # the job registry (the ledger wraps its own errors)
            from suanli.compute.store import home
            from suanli.errors import registry_error

            err = registry_error(home() / "registry.db", exc)
            print(f"suanli: error: {err}", file=sys.stderr)
            return err.exit_code
        print(f"suanli: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


def _split_submit(args: argparse.Namespace) -> None:
    """Tell a spec file from a command. After an explicit ``--`` everything is the command; a first argument
    ending in .yaml/.yml is a spec file (it must exist) and what follows it must be suanli flags; a command
    without ``--`` must not carry --dry-run (it would be the command's argument and the job would run)."""
    from suanli.errors import UsageError

    command = list(args.command)
    args.spec_file = None
    if command and command[0] == "--":
        args.command = command[1:]
    elif command and command[0].endswith(SPEC_SUFFIXES):
        if not Path(command[0]).is_file():
            raise UsageError(f"submit: no spec file {command[0]!r}; to run a program of that name, put it after "
                             f"--: suanli submit -- {command[0]}")
        args.spec_file, args.command = command[0], []
        if command[1:]:
            _merge_flags(args, command[1:])
    elif "--dry-run" in command:
        raise UsageError("submit: --dry-run after the command is ambiguous; put suanli flags first and the "
                         "command after --: suanli submit --dry-run -- CMD ARGS")
    else:
        args.command = command
    if args.exit_code and not args.follow:
        args.wait = True
    if args.wait and args.follow:
        raise UsageError("submit: --wait and --follow exclude each other; --follow waits too")


def _merge_flags(args: argparse.Namespace, tail: list[str]) -> None:
    """Apply suanli flags written after the spec file, as if they came before it."""
    from suanli.errors import UsageError

    parser = SuanliParser(prog="suanli submit", parents=[_common()], add_help=False)
    _add_submit_args(parser)
    extra = parser.parse_args(tail)
    if extra.command:
        raise UsageError(f"submit: {extra.command[0]!r} after the spec file {args.spec_file!r} is not a suanli "
                         "flag; a spec file takes no command (put the command in the file)")
    for key, value in vars(extra).items():
        if key == "command":
            continue
        if isinstance(value, list):
            setattr(args, key, [*getattr(args, key, []), *value])
        elif value is not None and value is not False:
            setattr(args, key, value)
