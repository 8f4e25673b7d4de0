"""Huawei Kunpeng (HiSilicon, ARM implementer 0x48) CPU nodes: OpenMP pinned to cores."""

from suanli.adapters.base import PinnedCpuAdapter


class KunpengAdapter(PinnedCpuAdapter):
    name = "kunpeng"
    arm_implementer = "0x48"
    description = "Huawei Kunpeng 920/950 ARM CPU nodes"
