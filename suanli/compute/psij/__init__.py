"""The PSI/J backend (``backend: psij``): PSI/J's executors (PBS, LSF, Cobalt, Flux, Slurm, local) as one suanli
backend. Lazy, so that loading a cluster config imports neither the backend module's helpers nor psij."""

from typing import Any

__all__ = ["PsijBackend"]


def __getattr__(name: str) -> Any:
    if name == "PsijBackend":
        from suanli.compute.psij.backend import PsijBackend

        return PsijBackend
    raise AttributeError(name)
