"""The embedded local backend (the default): jobs run as detached process groups on this machine.

Lazy so that ``python -m suanli.compute.local.runner`` (once per job) imports only the standard library.
"""

from typing import Any

__all__ = ["LocalBackend"]


def __getattr__(name: str) -> Any:
    if name == "LocalBackend":
        from suanli.compute.local.backend import LocalBackend

        return LocalBackend
    raise AttributeError(name)
