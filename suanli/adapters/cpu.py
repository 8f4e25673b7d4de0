"""Plain x86 or ARM CPU nodes: gloo for torch, OpenMP threads per task."""

from suanli.adapters.base import Adapter


class CpuAdapter(Adapter):
    name = "cpu"
