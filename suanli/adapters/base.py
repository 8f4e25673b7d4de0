"""The adapter contract: how one kind of hardware turns a neutral request into job environment and torch settings.

Adapters hold no scheduler code; backends ask them for what they need and render it themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from suanli.errors import UsageError

if TYPE_CHECKING:
    from suanli.adapters.detect import Accelerator, Cpu
    from suanli.jobs.resources import Resources  # types only: jobs/ asks the adapters for kinds


class Adapter:
    """Defaults fit a plain CPU node; subclasses override what their hardware changes."""

    name: ClassVar[str] = "cpu"
    #: The accelerator kind this hardware offers (``ascend`` / ``nvidia`` / ``dcu``), None for CPU-only nodes.
    #: The registered adapters are the only list of kinds: ``Resources(accelerators="KIND:N")`` accepts these.
    accelerator_kind: ClassVar[str | None] = None
    #: More names users write for the kind (the adapter's name and GRES name are accepted too).
    kind_aliases: ClassVar[tuple[str, ...]] = ()
    #: Scheduler-side GRES name of the accelerator (``npu``, ``gpu``).
    gres_name: ClassVar[str | None] = None
    #: Does Slurm export ``device_env_var`` itself for this GRES? It does for ``gpu`` (CUDA_VISIBLE_DEVICES);
    #: for other GRES the batch script reads the indices from ``scontrol show job -d`` and exports them.
    scheduler_sets_devices: ClassVar[bool] = False
    #: The Ray resource one accelerator is (``num_gpus`` is Ray's GPU count; others are custom resources
    #: such as Ascend's ``NPU``); None: Ray cannot place this kind.
    ray_resource: ClassVar[str | None] = None
    #: Commands whose output :meth:`parse_tool_output` reads (run by ``suanli hardware`` on this machine).
    probe_commands: ClassVar[tuple[tuple[str, ...], ...]] = ()
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
            if self.ray_resource is None:
                raise UsageError(f"accelerators: Ray has no resource for {self.accelerator_kind or 'accelerators'} "
                                 f"(adapter {self.name}); use a Slurm or local cluster for them")
            out[self.ray_resource] = float(resources.nodes * resources.accelerators_per_node)
        return out

    # ------------------------------------------------------------ detection (pure: captured outputs in, facts out)
    def claims_tool_output(self, text: str, cpu: Cpu | None = None) -> bool:
        """Is ``text`` the output of one of this adapter's tools? Cheap; decides who parses a ``--smi`` file."""
        return False

    def parse_tool_output(self, text: str, source: str, cpu: Cpu | None = None) -> list[Accelerator]:
        """The accelerators a claimed tool output lists (UsageError naming ``source`` when it cannot be read)."""
        raise UsageError(f"{source}: adapter {self.name} reads no tool output")

    def matches_cpu(self, cpu: Cpu) -> bool:
        """Does a node with this CPU and no accelerators call for this adapter (Kunpeng, Phytium)?"""
        return False

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
    """Many-core nodes with several NUMA nodes per socket (Kunpeng, Phytium; Hygon's x86 too): keep OpenMP
    threads on their cores."""

    #: The ARM implementer id (``CPU implementer`` in /proc/cpuinfo) of the vendor's cores.
    arm_implementer: ClassVar[str | None] = None

    def matches_cpu(self, cpu: Cpu) -> bool:
        return self.arm_implementer is not None and cpu.implementer == self.arm_implementer

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
