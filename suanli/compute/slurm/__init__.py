"""The Slurm backend: sbatch from a template, one sacct call per poll for every unfinished job, scancel.

Lazy, like every backend package, so importing it costs nothing until a Slurm cluster is used.
"""

from typing import Any

__all__ = ["SlurmBackend"]


def __getattr__(name: str) -> Any:
    if name == "SlurmBackend":
        from suanli.compute.slurm.backend import SlurmBackend

        return SlurmBackend
    raise AttributeError(name)
