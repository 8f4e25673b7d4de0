"""The adapter contract: how one kind of hardware turns a neutral request into job environment and torch settings.

Adapters hold no scheduler code; backends ask them for what they need and render it themselves.
"""

from __future__ import annotations

from typing import Any, ClassVar

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
    #: The variable that restricts a process to its allocated devices (set from the allocation when the
    #: scheduler does not set it itself).
    device_env_var: ClassVar[str | None] = None

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

    def setup_lines(self) -> list[str]:
        """Shell lines run before the job's own setup: vendor toolkits and libraries, each only if installed."""
        return []

    def ray_resources(self, resources: Resources) -> dict[str, float]:
        """A Ray request for the whole job (Ray has no nodes x per-node accelerators: it is per job)."""
        out: dict[str, float] = {"num_cpus": float(resources.nodes * resources.cpus_per_node)}
        if resources.accelerators_per_node:
            total = float(resources.nodes * resources.accelerators_per_node)
            if self.accelerator_kind == "nvidia":
                out["num_gpus"] = total
            elif self.accelerator_kind == "ascend":
                out["NPU"] = total  # Ray's built-in Ascend resource
        return out

    def mpi_binding(self, launcher: str, ranks_per_node: int, numa_nodes: int | None) -> list[str]:
        """Placement flags for MPI ranks; plain nodes keep the launcher's defaults."""
        return []

    # ------------------------------------------------------------ inside a job (torch is importable there)
    def present(self) -> bool:
        """Does this process see this hardware through torch? Asked, in ``adapter_names()`` order, when a job
        was started without suanli (plain torchrun: no SUANLI_ADAPTER), so a GPU is never silently left idle.
        Plain CPU nodes have nothing to find; accelerator adapters override this cheaply and without raising."""
        return False

    def torch_setup(self, local_rank: int) -> Any:
        """Make this rank's device current and return it (a ``torch.device``)."""
        import torch

        return torch.device(self.torch_device)


class PinnedCpuAdapter(Adapter):
    """Many-core ARM nodes with several NUMA nodes per socket: keep OpenMP threads on their cores."""

    def environment(self, resources: Resources) -> dict[str, str]:
        env = super().environment(resources)
        env.update({"OMP_PLACES": "cores", "OMP_PROC_BIND": "close"})
        return env

    def mpi_binding(self, launcher: str, ranks_per_node: int, numa_nodes: int | None) -> list[str]:
        """One rank per NUMA node when the ranks match the NUMA layout (hybrid MPI + OpenMP), else one per
        core: on these many-core ARM chips memory locality decides the speed."""
        per_numa = bool(numa_nodes) and ranks_per_node == numa_nodes
        if launcher == "srun":
            return ["--cpu-bind=ldoms" if per_numa else "--cpu-bind=cores"]
        if per_numa:
            return ["--map-by", "ppr:1:numa", "--bind-to", "numa"]
        return ["--map-by", "core", "--bind-to", "core"]

    def setup_lines(self) -> list[str]:
        # Kunpeng Math Library and Hyper MPI, where the node has them.
        return [
            'if [ -d "${KML_HOME:-/usr/local/kml}/lib" ]; then '
            'export LD_LIBRARY_PATH="${KML_HOME:-/usr/local/kml}/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi',
            'if [ -n "${HMPI_HOME:-}" ] && [ -d "$HMPI_HOME/bin" ]; then export PATH="$HMPI_HOME/bin:$PATH"; '
            'export LD_LIBRARY_PATH="$HMPI_HOME/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi',
        ]
