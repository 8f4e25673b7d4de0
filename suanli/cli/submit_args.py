"""The flags of ``suanli submit`` (also read by ``submit JOB.yaml`` flags and the completion script): one table
of options beside the parser, so main.py stays the dispatcher."""

from __future__ import annotations

import argparse


def add_submit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", "-c", help="cluster name (default: local); auto: where it is expected to start "
                   "first, within quota")
    p.add_argument("--partition", "-p", help="partition name; auto: the cluster's partition that starts it first")
    p.add_argument("--explain", action="store_true",
                   help="with --cluster/--partition auto: print every candidate weighed and why")
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
    p.add_argument("--stdin", "--input", dest="stdin", metavar="PATH", help="the job's standard input file")
    p.add_argument("--stdout", "--output", dest="stdout", metavar="PATH",
                   help="the job's stdout file (default: the job folder); %%A %%a %%j %%%% as in Slurm")
    p.add_argument("--stderr", "--error", dest="stderr", metavar="PATH", help="the job's stderr file, as --stdout")
    # sbatch options (Slurm clusters only; other backends refuse them, exit 2)
    p.add_argument("--exclusive", nargs="?", const=True, metavar="user|mcs", help="whole nodes (sbatch --exclusive)")
    p.add_argument("--reservation", metavar="NAME")
    p.add_argument("--mail-type", metavar="TYPES", help="END,FAIL,... (Slurm's mail types)")
    p.add_argument("--mail-user", metavar="ADDRESS")
    p.add_argument("--mem-per-cpu", metavar="SIZE", help="memory per CPU: 2G, 500M (instead of --mem)")
    p.add_argument("--gres", action="append", default=[], metavar="NAME:N",
                   help="a generic resource besides the accelerators: mps:100, gpu:a100:1; repeatable")
    p.add_argument("--nodelist", "-w", metavar="HOSTS", help="run on these nodes: n1,n[3-5]")
    p.add_argument("--exclude", "-x", metavar="HOSTS", help="never on these nodes")
    p.add_argument("--export", metavar="VARS", help="the submitting environment the job sees: ALL, NONE, "
                   "[ALL,]VAR[=value],...")
    p.add_argument("--extra", action="append", default=[], metavar="OPT[=VALUE]",
                   help="any other sbatch long option (begin=now+1hour, hold); repeatable")
    p.add_argument("--dry-run", action="store_true", help="print what would be submitted; submit nothing")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--wait", action="store_true", help="wait for the job; exit 0 if it completed, else 1")
    g.add_argument("--follow", action="store_true", help="stream its output until it ends; exit as --wait")
    p.add_argument("--exit-code", action="store_true",
                   help="with --wait/--follow (implies --wait): exit with the job's own exit code, as srun does")
    p.add_argument("--json", action="store_true")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS | JOB.yaml")
