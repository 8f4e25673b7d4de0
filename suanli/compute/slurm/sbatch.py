"""sbatch options for a submission's resources: the Slurm backend's launch specifics, in one place that turns a
request into ``--opt=value`` arguments (the dask engine's pilots take them from the backend's plan)."""

from __future__ import annotations

from suanli.compute.base import Submission
from suanli.errors import UsageError
from suanli.jobs.resources import Resources, format_slurm_time


def resource_options(sub: Submission) -> list[str]:
    """Account, QoS, constraint, memory, time limit and GRES (the accelerators' from the adapter, then the
    spec's other ``gres``, in one ``--gres``: sbatch keeps only the last of several) of a submission."""
    spec, res = sub.spec, sub.spec.resources
    gres: list[str] = []
    accel = sub.adapter.gres_name or "gpu"
    if res.accelerators_per_node:
        gres.append(f"{accel}:{res.accelerators_per_node}")
    for item in spec.scheduler.gres:
        if res.accelerators_per_node and item.split(":", 1)[0] == accel:
            raise UsageError(f"gres: {item!r} names the accelerators this partition's adapter requests as "
                             f"{accel!r}; ask for them with resources.accelerators (--accelerators) only")
        gres.append(item)
    return request_options(res, account=spec.account, qos=spec.qos, constraint=spec.constraint, gres=gres)


def request_options(res: Resources, *, account: str | None, qos: str | None, constraint: str | None,
                    gres: list[str], mem_per_cpu_mb: int | None = None) -> list[str]:
    """The options of one allocation request, shared by a job and each component of a heterogeneous job
    (``--mem-per-cpu`` only where no ``--mem`` is given)."""
    out: list[str] = []
    if account:
        out.append(f"--account={account}")
    if qos:
        out.append(f"--qos={qos}")
    if constraint:
        out.append(f"--constraint={constraint}")
    if res.memory_mb:
        out.append(f"--mem={res.memory_mb}M")
    elif mem_per_cpu_mb:
        out.append(f"--mem-per-cpu={mem_per_cpu_mb}M")
    if res.time_limit is not None:
        out.append(f"--time={format_slurm_time(res.time_limit)}")
    if gres:
        out.append(f"--gres={','.join(gres)}")
    return out


def scheduler_options(sub: Submission) -> list[str]:
    """The spec's typed sbatch options and its ``extra`` ones, each one ``--opt`` or ``--opt=value`` argv item
    (values were checked when the spec was built; none becomes an ``#SBATCH`` line)."""
    opts = sub.spec.scheduler
    out: list[str] = []
    if opts.exclusive is True:
        out.append("--exclusive")
    elif opts.exclusive:
        out.append(f"--exclusive={opts.exclusive}")
    if opts.reservation:
        out.append(f"--reservation={opts.reservation}")
    if opts.mail_type:
        out.append(f"--mail-type={','.join(opts.mail_type)}")
    if opts.mail_user:
        out.append(f"--mail-user={opts.mail_user}")
    if opts.mem_per_cpu_mb:
        out.append(f"--mem-per-cpu={opts.mem_per_cpu_mb}M")
    if opts.nodelist:
        out.append(f"--nodelist={opts.nodelist}")
    if opts.exclude:
        out.append(f"--exclude={opts.exclude}")
    if opts.export:
        out.append(f"--export={opts.export}")
    for key, value in opts.extra.items():
        out.append(f"--{key}" if value is True else f"--{key}={value}")
    return out
