"""The Ray backend (Jobs API); ray itself is imported only when a job is submitted or asked about."""

from suanli.compute.ray.backend import RayBackend

__all__ = ["RayBackend"]
