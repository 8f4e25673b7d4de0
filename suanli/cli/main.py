"""The ``suanli`` command. Parsing is kept import-light: verbs import the rest of suanli only when they run,
and only the verb being run gets its parser built (`suanli --help` lists the verbs from a table)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from suanli.cli.submit_args import add_submit_args
from suanli.cli.term import columns
from suanli.errors import SuanliError
from suanli.version import __version__

TYPE_CHECKING = False  # `typing` itself is more than `suanli --help` needs at run time
if TYPE_CHECKING:
    from typing import Any, NoReturn

    #: Adds one verb's parser (some add several) to the verbs' subparsers, with the common options as parent.
    Builder = Callable[[Any, argparse.ArgumentParser], None]

#: Each verb's one-line help, in the order `suanli --help` lists them. The verb's own parser is built only
#: when it runs (tests/test_architecture.py checks this table against the full parsers).
VERB_HELP = {
    "submit": "submit a command or a JOB.yaml spec",
    "status": "list jobs and their states",
    "logs": "print a job's output",
    "cancel": "cancel jobs",
    "wait": "wait for jobs; exit 1 unless all completed",
    "clusters": "list configured clusters and partitions",
    "hardware": "detect a node's CPU, NUMA layout and accelerators",
    "usage": "compute usage from the ledger (core-hours, charge)",
    "quota": "set, show, remove and apply quotas",
    "accounting": "feed the ledger (accounting sync)",
    "ray": "start or stop a Ray head on this machine",
    "serve": "run the web portal (jobs, usage, quotas, /metrics); serve token create issues logins",
    "top": "a live terminal view of jobs and the account's quota (q quits)",
    "completion": "print a shell completion script",
}
VERBS = tuple(VERB_HELP)

EXIT_CODES = """exit codes: 0 success; 1 a waited job did not complete (its own code is printed; submit --exit-code
returns it instead); 2 usage or validation error (nothing reached a backend); 3 refused by a quota; 4 the backend
refused or could not be reached"""
SPEC_SUFFIXES = (".yaml", ".yml")


class _Help(argparse.HelpFormatter):
    """argparse's formatter, sized by :func:`~suanli.cli.term.columns` as argparse sizes it by shutil (which
    imports archive modules: a tenth of `suanli --help`)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, columns() - 2 if width is None else width)


class _RawDescriptionHelp(argparse.RawDescriptionHelpFormatter, _Help):
    """The top level's formatter: its epilog keeps its line breaks."""


class SuanliParser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem and where to look, not a page of usage."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common() -> SuanliParser:
    p = SuanliParser(add_help=False)
    p.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                   help="cluster config file or folder, read before the default search path")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return p


def _top(common: SuanliParser, verbs_action: type[argparse.Action] | None = None) -> tuple[SuanliParser, Any]:
    """The top-level parser and its verbs' subparsers action."""
    parser = SuanliParser(
        prog="suanli", parents=[common],
        description="One job API for Slurm partitions, Ray clusters and this machine.",
        epilog=EXIT_CODES, formatter_class=_RawDescriptionHelp,
    )
    parser.add_argument("--version", action="version", version=f"suanli {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", action=verbs_action or argparse._SubParsersAction)
    return parser, sub


def _submit(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("submit", parents=[common], help=VERB_HELP["submit"],
                       description="Submit `-- CMD ARGS...` (run as an argv list, never through a shell) or a "
                                   "job spec file JOB.yaml; flags override the file.")
    add_submit_args(p)


def _status(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("status", parents=[common], help=VERB_HELP["status"])
    p.add_argument("jobs", nargs="*", metavar="JOB")
    p.add_argument("--cluster", "-c")
    p.add_argument("--all", "-a", action="store_true", help="every job in the registry")
    p.add_argument("--state", "-s", help="only these states (comma separated)")
    p.add_argument("--explain", action="store_true", help="the routing table kept for jobs sent with --cluster auto")
    p.add_argument("--since", help="submitted since: an ISO date/time or a duration ago (2h, 1d)")
    p.add_argument("--json", action="store_true")


def _logs(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("logs", parents=[common], help=VERB_HELP["logs"])
    p.add_argument("job", metavar="JOB", help="JOB, or JOB_7 for array task 7")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    p.add_argument("--stream", choices=("both", "stdout", "stderr"), default="both")


def _cancel(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("cancel", parents=[common], help=VERB_HELP["cancel"])
    p.add_argument("jobs", nargs="+", metavar="JOB")
    p.add_argument("--json", action="store_true")


def _wait(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("wait", parents=[common], help=VERB_HELP["wait"])
    p.add_argument("jobs", nargs="+", metavar="JOB")
    p.add_argument("--timeout", type=float, metavar="S")
    p.add_argument("--json", action="store_true")


def _clusters(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("clusters", parents=[common], help=VERB_HELP["clusters"])
    p.add_argument("--json", action="store_true")


def _hardware(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("hardware", parents=[common], help=VERB_HELP["hardware"],
                       description="Probe this machine, a --sysroot copy of one, or captured outputs "
                                   "(srun lscpu > node.txt), and say which adapter applies.")
    p.add_argument("--sysroot", metavar="DIR", help="read proc/, sys/ and etc/ under DIR (like lscpu --sysroot)")
    p.add_argument("--lscpu", metavar="FILE", help="captured lscpu output")
    p.add_argument("--cpuinfo", metavar="FILE", help="captured /proc/cpuinfo")
    p.add_argument("--npu-smi", metavar="FILE", dest="npu_smi", help="captured `npu-smi info` output")
    p.add_argument("--nvidia-smi", metavar="FILE", dest="nvidia_smi",
                   help="captured `nvidia-smi --query-gpu=index,name,memory.total --format=csv` output")
    p.add_argument("--smi", metavar="FILE", action="append",
                   help="captured output of any accelerator tool an adapter reads (npu-smi info, nvidia-smi CSV, "
                        "hy-smi ...); repeatable")
    p.add_argument("--partition-entry", metavar="NAME", help="print a cluster_configs/ partition item instead")
    p.add_argument("--json", action="store_true")


def _accounting(sub: Any, common: argparse.ArgumentParser) -> None:
    """usage, quota and accounting (one register call adds all three)."""
    from suanli.cli import accounting_cmd

    accounting_cmd.register(sub, common)


def _ray(sub: Any, common: argparse.ArgumentParser) -> None:
    from suanli.cli import ray_cmd

    ray_cmd.register(sub, common)


def _portal(sub: Any, common: argparse.ArgumentParser) -> None:
    """serve and top (suanli/cli/portal_cmd.py; the web framework loads only when serve starts)."""
    from suanli.cli import portal_cmd

    portal_cmd.register_serve(sub, common)
    portal_cmd.register_top(sub, common)


def _completion(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("completion", parents=[common], help=VERB_HELP["completion"])
    p.add_argument("shell", choices=("bash", "zsh"))


BUILDERS: dict[str, Builder] = {
    "submit": _submit, "status": _status, "logs": _logs, "cancel": _cancel, "wait": _wait, "clusters": _clusters,
    "hardware": _hardware, "usage": _accounting, "quota": _accounting, "accounting": _accounting, "ray": _ray,
    "serve": _portal, "top": _portal, "completion": _completion,
}


def build_parser() -> argparse.ArgumentParser:
    """Every verb's parser, fully built: shell completion reads all their options."""
    common = _common()
    parser, sub = _top(common)
    for verb in VERBS:
        if verb not in sub.choices:
            BUILDERS[verb](sub, common)
    return parser


class _Verbs(argparse._SubParsersAction):  # type: ignore[type-arg]
    """The verbs, each with its help line at once (for `suanli --help`) but its parser built only when the verb
    is parsed: building every verb's parser, and importing the modules that define some, costs more than the
    rest of a `suanli --help`."""

    common: SuanliParser

    def add_verb(self, name: str, help: str) -> None:
        self._choices_actions.append(self._ChoicesPseudoAction(name, (), help))
        self._name_parser_map[name] = None  # type: ignore[assignment]  # built in __call__

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        self.build(values[0])
        super().__call__(parser, namespace, values, option_string)

    def build(self, name: str) -> None:
        if self._name_parser_map.get(name) is None:
            holder = argparse._SubParsersAction(option_strings=[], prog=self._prog_prefix, dest=argparse.SUPPRESS,
                                                parser_class=SuanliParser)
            BUILDERS[name](holder, self.common)
            self._name_parser_map[name] = holder.choices[name]


def run_parser(every_verb: bool = False) -> argparse.ArgumentParser:
    """The parser `main` uses: the same top level, but only the verb given gets its parser built (or, with
    ``every_verb``, all of them now)."""
    common = _common()
    parser, sub = _top(common, _Verbs)
    sub.common = common
    for verb, text in VERB_HELP.items():
        sub.add_verb(verb, text)
        if every_verb:
            sub.build(verb)
    return parser


#: The command server's parser, every verb built (:func:`build_ahead`): each forked command takes its copy.
_ahead: argparse.ArgumentParser | None = None


def build_ahead() -> None:
    """For a process that forks commands (suanli/cli/server.py): build the parser once, and compile the
    patterns argparse uses while parsing into ``re``'s cache. A parser is not changed by parsing."""
    global _ahead
    _ahead = run_parser(every_verb=True)
    for sample in (["status"], ["submit", "--nodes", "1", "--", "true"]):
        _ahead.parse_args(sample)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _ahead or run_parser()
    args = parser.parse_args(argv)
    if args.verb == "submit":
        try:
            _split_submit(args)
        except SuanliError as exc:
            print(f"suanli: error: {exc}", file=sys.stderr)
            return exc.exit_code
    import logging  # not before: `suanli --help` needs none of it

    debug = getattr(args, "debug", False)
    logging.basicConfig(format="suanli: warning: %(message)s", level=logging.DEBUG if debug else logging.WARNING)
    if args.verb is None:
        parser.print_help()
        return 2
    handler = _handler(args.verb)
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


def _handler(verb: str) -> Callable[[argparse.Namespace], int]:
    """The function that runs a verb, from the one module that defines it."""
    if verb in ("usage", "quota", "accounting"):
        from suanli.cli import accounting_cmd

        return getattr(accounting_cmd, "cmd_" + verb)  # type: ignore[no-any-return]
    if verb == "ray":
        from suanli.cli import ray_cmd

        return ray_cmd.cmd_ray
    if verb in ("clusters", "hardware"):
        from suanli.cli import info_cmd

        return getattr(info_cmd, "cmd_" + verb)  # type: ignore[no-any-return]
    if verb in ("serve", "top"):
        from suanli.cli import portal_cmd

        return getattr(portal_cmd, "cmd_" + verb)  # type: ignore[no-any-return]
    if verb == "completion":
        return cmd_completion  # built here: it needs every verb's parser (commands must not import main)
    from suanli.cli import commands

    return getattr(commands, "cmd_" + verb)  # type: ignore[no-any-return]


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
        if not os.path.isfile(command[0]):
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
    add_submit_args(parser)
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


# ---------------------------------------------------------------- completion
def cmd_completion(args: argparse.Namespace) -> int:
    parser = build_parser()
    verbs: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                verbs[name] = sorted(o for a in sub._actions for o in a.option_strings if o.startswith("--"))
    cases = "\n".join(f'        {v}) opts="{" ".join(o)}" ;;' for v, o in verbs.items())
    bash = f"""# suanli {args.shell} completion: eval "$(suanli completion {args.shell})"
_suanli() {{
    local cur verb opts
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    verb="${{COMP_WORDS[1]}}"
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{" ".join(verbs)} --help --version --config --debug" -- "$cur"))
        return
    fi
    case "$verb" in
{cases}
        *) opts="" ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
"""
    if args.shell == "zsh":
        bash = "autoload -U +X bashcompinit && bashcompinit\n" + bash
    sys.stdout.write(bash + "complete -F _suanli suanli\n")
    return 0
