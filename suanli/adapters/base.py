"""The adapter contract: how one kind of hardware turns a neutral request into job environment and torch settings.

Adapters hold no scheduler code; backends ask them for what they need and render it themselves.
"""

from __future__ import annotations

from typing import ClassVar

from suanli.errors import UsageError
from suanli.jobs.resources import Resources


class Adapter:
    """Defaults fit a plain CPU node; subclasses override what their hardware changes."""

    name: ClassVar[str] = "cpu"
    #: The accelerator kind this hardware offers (``ascend`` / ``nvidia``), None for CPU-only nodes.
    accelerator_kind: ClassVar[str | None] = None
    #: Scheduler-side GRES name of the accelerator (``npu``, ``gpu``).
    gres_name: ClassVar[str | None] = None
    torch_device: ClassVar[str] = "cpu"
    torch_backend: ClassVar[str] = "gloo"
    description: ClassVar[str] = "plain CPU nodes"

    def check(self, resources: Resources, where: str) -> None:
        """Refuse accelerator requests this hardware cannot serve, naming the partition."""
        if resources.accelerators_per_node and resources.accelerator_kind not in (None, self.accelerator_kind):
            have = self.accelerator_kind or "no accelerators"
            raise UsageError(
                f"accelerators: {where} has {have}, not {resources.accelerator_kind}; "
                "pick a partition with that kind or drop --accelerators"
            )
        if resources.accelerators_per_node and self.accelerator_kind is None:
            raise UsageError(
                f"accelerators: {where} has no accelerators (adapter {self.name}); pick an accelerator partition"
            )

    def environment(self, resources: Resources) -> dict[str, str]:
        """Environment every task of the job gets (OpenMP threads follow the CPUs per task)."""
        return {"OMP_NUM_THREADS": str(resources.cpus_per_task)}


class PinnedCpuAdapter(Adapter):
    """Many-core ARM nodes with several NUMA nodes per socket: keep OpenMP threads on their cores."""

    def environment(self, resources: Resources) -> dict[str, str]:
        env = super().environment(resources)
        env.update({"OMP_PLACES": "cores", "OMP_PROC_BIND": "close"})
        return env
