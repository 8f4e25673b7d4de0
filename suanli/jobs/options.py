"""The one table of a job's options: what ``submit``/``map`` accept as keywords, which ``suanli submit`` flag
gives each, its help text, where its value lands in a JobSpec, and whether a dask pilot takes it.

The Python API (``jobs/build.py``), the CLI (``cli/submit_args.py``) and the dask engine
(``compute/dask/request.py``) all read it, so an option is added in one place and ``tests/test_options.py``
fails if any of the three (or Resources, SchedulerOptions, JobSpec) disagrees with it. Standard library only
and no ``typing``/``dataclasses`` at run time: the CLI imports it when it builds the submit parser.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

#: How the CLI reads a flag's value: ``text`` as given; ``int`` a whole number (argparse checks it);
#: ``optional`` a flag whose value may be left out (then True); ``append`` repeatable, a list;
#: ``pairs`` repeatable ``K=V`` -> a mapping; ``opts`` repeatable ``OPT[=VALUE]`` -> a mapping (no value: True).
CLI_KINDS = ("text", "int", "optional", "append", "pairs", "opts")
GROUPS = ("resources", "scheduler", "job")

#: Why a dask pilot refuses an option (``map(..., engine="dask")``).
_ONE_TASK = "each pilot worker is one task on one node; dask retries lost tasks itself"
_PILOT_JOB = ("a pilot is a plain Slurm job suanli shapes itself; it takes partition, account, qos, constraint, "
              "cpus_per_task, memory, accelerators and time")
_WHOLE = "give the pilot's cpus_per_task, memory, accelerators and time one by one"


class Option:
    """One job option. ``target`` is where its value lands in a JobSpec (``resources.memory``,
    ``scheduler.gres``, ``dependencies``); ``name`` and ``aliases`` are the keywords the API accepts;
    ``flags`` the CLI's (none: API only); ``cli_key`` the keyword the CLI's value is passed on as (its argparse
    dest); ``extends``: a flag's values add to a spec file's instead of replacing them; ``dask``: empty when
    a dask pilot takes the option, else why not."""

    __slots__ = ("aliases", "cli", "cli_key", "dask", "extends", "flags", "group", "help", "metavar", "name",
                 "target")

    def __init__(self, name: str, group: str, target: str | None = None, *, aliases: tuple[str, ...] = (),
                 flags: tuple[str, ...] = (), help: str | None = None, metavar: str | None = None,
                 cli: str = "text", cli_key: str | None = None, extends: bool = False, dask: str = "") -> None:
        self.name = name
        self.group = group
        self.target = target or (name if group == "job" else f"{group}.{name}")
        self.aliases = aliases
        self.flags = flags
        self.help = help
        self.metavar = metavar
        self.cli = cli
        self.cli_key = cli_key or name
        self.extends = extends
        self.dask = dask

    @property
    def keywords(self) -> tuple[str, ...]:
        """Every keyword the API accepts for it."""
        return (self.name, *self.aliases)

    @property
    def field(self) -> str:
        """The field of its group's type: ``memory`` of Resources, ``gres`` of SchedulerOptions, or JobSpec's."""
        return self.target.rpartition(".")[2]

    def __repr__(self) -> str:
        return f"Option({self.name!r}, {self.group!r}, {self.target!r})"


#: In the order ``suanli submit --help`` lists the flags.
OPTIONS: tuple[Option, ...] = (
    Option("partition", "job", flags=("--partition", "-p"),
       help="partition name; auto: the cluster's partition that starts it first"),
    Option("account", "job", flags=("--account", "-A"), help="the account charged (quotas apply to it)"),
    Option("qos", "job", flags=("--qos",), help="quality of service (Slurm --qos)"),
    Option("constraint", "job", flags=("--constraint",), help="node features the job needs (Slurm --constraint)"),
    Option("nodes", "resources", flags=("--nodes", "-N"), cli="int", dask=_ONE_TASK),
    Option("tasks_per_node", "resources", aliases=("ntasks_per_node",), flags=("--ntasks-per-node",), cli="int",
       dask=_ONE_TASK),
    Option("cpus_per_task", "resources", flags=("--cpus-per-task",), cli="int"),
    Option("memory", "resources", aliases=("mem",), flags=("--mem",), cli_key="mem", help="memory per node: 4G, 500M"),
    Option("accelerators", "resources", flags=("--accelerators",), metavar="KIND:N",
       help="accelerators per node: ascend:8, nvidia:2"),
    Option("accelerator_kind", "resources"),  # API only: the CLI gives the kind in --accelerators KIND:N
    Option("time", "resources", flags=("--time", "-t"), help="time limit: 90m, 2h, 1-00:00:00, HH:MM:SS"),
    Option("array", "job", flags=("--array",), metavar="SPEC", help="array tasks: 0-99, 0-99%%10, 1,3,5",
       dask=_ONE_TASK),
    Option("name", "job", flags=("--name", "-J"), help="the job's name"),
    Option("env", "job", flags=("--env", "-e"), cli="pairs", metavar="K=V",
       help="a variable in the job's environment; repeatable"),
    Option("setup", "job", flags=("--setup",), cli="append", extends=True, metavar="LINE",
       help="shell line run before the job"),
    Option("workdir", "job", flags=("--workdir", "-D"), help="the folder the job runs in"),
    Option("after", "job", "dependencies", aliases=("dependencies",), flags=("--after",), cli="append", extends=True,
       metavar="JOB", help="start after JOB completed (afterany:JOB: after it ended in any way)", dask=_ONE_TASK),
    Option("requeue", "job", "max_restarts", aliases=("max_restarts",), flags=("--requeue",), cli="int", metavar="N",
       help="restart a failed job up to N times", dask=_ONE_TASK),
    Option("stdin", "job", flags=("--stdin", "--input"), metavar="PATH", help="the job's standard input file",
       dask=_PILOT_JOB),
    Option("stdout", "job", flags=("--stdout", "--output"), metavar="PATH",
       help="the job's stdout file (default: the job folder); %%A %%a %%j %%%% as in Slurm", dask=_PILOT_JOB),
    Option("stderr", "job", flags=("--stderr", "--error"), metavar="PATH", help="the job's stderr file, as --stdout",
       dask=_PILOT_JOB),
    # sbatch options (Slurm clusters only; other backends refuse them, exit 2)
    Option("exclusive", "scheduler", flags=("--exclusive",), cli="optional", metavar="user|mcs",
       help="whole nodes (sbatch --exclusive)", dask=_PILOT_JOB),
    Option("reservation", "scheduler", flags=("--reservation",), metavar="NAME", help="run in this Slurm reservation",
       dask=_PILOT_JOB),
    Option("mail_type", "scheduler", flags=("--mail-type",), metavar="TYPES", help="END,FAIL,... (Slurm's mail types)",
       dask=_PILOT_JOB),
    Option("mail_user", "scheduler", flags=("--mail-user",), metavar="ADDRESS", help="who gets the mail",
       dask=_PILOT_JOB),
    Option("mem_per_cpu", "scheduler", flags=("--mem-per-cpu",), metavar="SIZE",
       help="memory per CPU: 2G, 500M (instead of --mem)", dask=_PILOT_JOB),
    Option("gres", "scheduler", flags=("--gres",), cli="append", metavar="NAME:N",
       help="a generic resource besides the accelerators: mps:100, gpu:a100:1; repeatable", dask=_PILOT_JOB),
    Option("nodelist", "scheduler", flags=("--nodelist", "-w"), metavar="HOSTS", help="run on these nodes: n1,n[3-5]",
       dask=_PILOT_JOB),
    Option("exclude", "scheduler", flags=("--exclude", "-x"), metavar="HOSTS", help="never on these nodes",
       dask=_PILOT_JOB),
    Option("export", "scheduler", flags=("--export",), metavar="VARS",
       help="the submitting environment the job sees: ALL, NONE, [ALL,]VAR[=value],...", dask=_PILOT_JOB),
    Option("extra", "scheduler", flags=("--extra",), cli="opts", metavar="OPT[=VALUE]",
       help="any other sbatch long option (begin=now+1hour, hold); repeatable", dask=_PILOT_JOB),
    # API only: a whole Resources or SchedulerOptions (or a mapping of its fields) under the one-by-one options
    Option("resources", "job", dask=_WHOLE),
    Option("scheduler", "job", dask=_PILOT_JOB),
)

#: API keyword (name or alias) -> its option.
BY_KEYWORD: dict[str, Option] = {kw: o for o in OPTIONS for kw in o.keywords}


def in_group(group: str) -> Iterator[Option]:
    """The options whose value lands in ``group``'s type (resources: Resources, scheduler: SchedulerOptions)."""
    return (o for o in OPTIONS if o.group == group)


def keywords(dask: bool = False) -> list[str]:
    """Every keyword the API accepts (``dask``: those a dask pilot takes), sorted for error messages."""
    return sorted(kw for o in OPTIONS if not dask or not o.dask for kw in o.keywords)


def lookup(key: str, where: str) -> Option:
    """The option a keyword names, or the one-line error ``where: unknown option 'key'; valid options: ...``."""
    from suanli.errors import UsageError

    option = BY_KEYWORD.get(key)
    if option is None:
        raise UsageError(f"{where}: unknown option {key!r}; valid options: {', '.join(keywords())}")
    return option
