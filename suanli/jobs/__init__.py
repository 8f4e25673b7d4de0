"""The job model: specs, resources, states and handles. Pure data; imports no backend.

Names load on first use so that commands needing only states and records (``suanli status``) start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # explicit re-exports for type checkers; at run time __getattr__ loads them
    from suanli.jobs.components import Component as Component
    from suanli.jobs.handle import Job as Job
    from suanli.jobs.handle import JobArray as JobArray
    from suanli.jobs.record import JobInfo as JobInfo
    from suanli.jobs.resources import Resources as Resources
    from suanli.jobs.resources import parse_memory as parse_memory
    from suanli.jobs.resources import parse_time as parse_time
    from suanli.jobs.spec import MPI as MPI
    from suanli.jobs.spec import Array as Array
    from suanli.jobs.spec import Command as Command
    from suanli.jobs.spec import Dependency as Dependency
    from suanli.jobs.spec import Function as Function
    from suanli.jobs.spec import JobSpec as JobSpec
    from suanli.jobs.spec import Map as Map
    from suanli.jobs.spec import Training as Training
    from suanli.jobs.spec import Workload as Workload
    from suanli.jobs.state import JobState as JobState
    from suanli.jobs.state import StateTable as StateTable

_WHERE = {
    "Job": "handle", "JobArray": "handle", "JobInfo": "record", "Resources": "resources",
    "parse_memory": "resources", "parse_time": "resources", "MPI": "spec", "Array": "spec", "Command": "spec",
    "Dependency": "spec", "Function": "spec", "JobSpec": "spec", "Map": "spec", "Training": "spec",
    "Workload": "spec", "JobState": "state", "StateTable": "state", "Component": "components",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"suanli.jobs.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'suanli.jobs' has no attribute {name!r}")
