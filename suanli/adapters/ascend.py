"""Huawei Ascend NPU nodes: gres ``npu``, torch_npu on ``npu`` with hccl, generous HCCL timeouts."""

from __future__ import annotations

from suanli.adapters.base import Adapter
from suanli.jobs.resources import Resources


class AscendAdapter(Adapter):
    name = "ascend"
    accelerator_kind = "ascend"
    gres_name = "npu"
    torch_device = "npu"
    torch_backend = "hccl"
    description = "Huawei Ascend NPU nodes"
    device_env_var = "ASCEND_RT_VISIBLE_DEVICES"

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
