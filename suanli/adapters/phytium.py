"""Phytium (ARM implementer 0x70) CPU nodes: OpenMP pinned to cores, one NUMA node per 8 cores."""

from suanli.adapters.base import PinnedCpuAdapter


class PhytiumAdapter(PinnedCpuAdapter):
    name = "phytium"
    arm_implementer = "0x70"
    description = "Phytium FT-2000+/64, S2500/FT-2500 ARM CPU nodes"
