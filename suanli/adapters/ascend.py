"""Huawei Ascend NPU nodes: gres ``npu``, torch_npu on ``npu`` with hccl, generous HCCL timeouts."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from suanli.adapters.base import Adapter

if TYPE_CHECKING:
    from suanli.jobs.resources import Resources  # types only: jobs/ asks the adapters for kinds

if TYPE_CHECKING:
    from suanli.adapters.detect import Accelerator, Cpu


class AscendAdapter(Adapter):
    name = "ascend"
    accelerator_kind = "ascend"
    gres_name = "npu"
    torch_device = "npu"
    torch_backend = "hccl"
    description = "Huawei Ascend NPU nodes"
    device_env_var = "ASCEND_RT_VISIBLE_DEVICES"
    ray_resource = "NPU"  # Ray's built-in Ascend resource
    probe_commands = (("npu-smi", "info"),)

    def claims_tool_output(self, text: str, cpu: Cpu | None = None) -> bool:
        return "npu-smi" in text

    def parse_tool_output(self, text: str, source: str, cpu: Cpu | None = None) -> list[Accelerator]:
        from suanli.adapters.detect import parse_npu_smi

        return parse_npu_smi(text, source)

    def setup_lines(self) -> list[str]:
        # CANN's environment (library paths, ASCEND_TOOLKIT_HOME) where the toolkit is installed.
        return ['_cann="${ASCEND_TOOLKIT_HOME:-/usr/local/Ascend/ascend-toolkit}/set_env.sh"; '
                'if [ -f "$_cann" ]; then . "$_cann"; fi; unset _cann']

    def environment(self, resources: Resources) -> dict[str, str]:
        env = super().environment(resources)
        # HCCL's 120 s default connect timeout is too short once many ranks join (range 120-7200 s).
        env.setdefault("HCCL_CONNECT_TIMEOUT", "1200")
        env.setdefault("HCCL_EXEC_TIMEOUT", "1800")
        return env

    def present(self) -> bool:
        """torch_npu installed, loadable (CANN sourced) and showing at least one NPU."""
        if importlib.util.find_spec("torch_npu") is None:
            return False
        try:
            import torch
            import torch_npu  # noqa: F401

            return bool(torch.npu.is_available())  # type: ignore[attr-defined]
        except (ImportError, RuntimeError, AttributeError):
            return False

    def torch_setup(self, local_rank: int) -> Any:
        # Found first, imported second: without CANN, torch_npu's import fails with RuntimeError, not only
        # ImportError (and its backend autoload can break `import torch` itself).
        if importlib.util.find_spec("torch_npu") is None:
            raise RuntimeError("the ascend adapter needs torch_npu: pip install torch-npu (the release matching "
                               "your torch) and source CANN's set_env.sh")
        try:
            import torch
            import torch_npu  # noqa: F401
        except (ImportError, RuntimeError) as exc:
            raise RuntimeError(f"torch_npu did not load ({exc}); install the CANN toolkit and source its "
                               "set_env.sh (the ascend partition's setup does when CANN is installed)") from None
        device = torch.device("npu", local_rank)
        torch.npu.set_device(device)  # type: ignore[attr-defined]
        return device
