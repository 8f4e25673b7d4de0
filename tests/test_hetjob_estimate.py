"""The worst case of a heterogeneous job as quotas see it: no cluster needed (dry runs)."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli

CLUSTER = """name: mixed
backend: slurm
slurm: {conf: /nonexistent/slurm.conf}
partitions:
  - {name: gpu, adapter: nvidia, nodes: 2, cpus_per_node: 8, accelerators_per_node: 4}
  - {name: npu, adapter: ascend, nodes: 2, cpus_per_node: 8, accelerators_per_node: 8}
  - {name: cpu, adapter: cpu, nodes: 2, cpus_per_node: 8}
"""


def test_accelerators_of_two_kinds_in_one_job_are_refused(home: Path, tmp_path: Path) -> None:
    """Quotas are per accelerator kind, so one job charging GPU and NPU hours is refused before anything is
    submitted; GPUs beside CPU-only components are fine."""
    cfg = tmp_path / "clusters"
    cfg.mkdir()
    (cfg / "mixed.yaml").write_text(CLUSTER)
    env = {"SUANLI_CONFIG": str(cfg)}
    job = tmp_path / "job.yaml"
    job.write_text("resources: {time: 1h}\ncomponents:\n"
                   "  - {partition: gpu, command: [a], resources: {accelerators: 2}}\n"
                   "  - {partition: npu, command: [b], resources: {accelerators: 2}}\n")
    r = run_cli("submit", "--cluster", "mixed", "--dry-run", str(job), env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().startswith("suanli: error: components: accelerators of two kinds"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    job.write_text("resources: {time: 1h}\ncomponents:\n"
                   "  - {partition: gpu, command: [a], resources: {accelerators: 2}}\n"
                   "  - {partition: cpu, command: [b]}\n")
    r = run_cli("submit", "--cluster", "mixed", "--dry-run", str(job), env=env)
    assert r.returncode == 0, r.stderr
