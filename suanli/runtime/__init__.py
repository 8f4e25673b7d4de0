"""Code that runs inside jobs: the Function entry point and the distributed-training environment."""

from suanli.runtime.env import Environment, environment, init_distributed, runtime_adapter, shutdown

__all__ = ["Environment", "environment", "init_distributed", "runtime_adapter", "shutdown"]
