"""Draws the scale curves of the "Scale" issue from the JSON the benches wrote: one poll of a map and of
separate jobs against raw sacct (bench_slurm.py --scale), and `suanli status` against registry size
(bench_status_scale.py), each "before" beside "after".

    .venv/bin/python bench/bench_scale_plot.py [--before before] [--after after]

Reads bench/results/{slurm,cli}_scale-<label>.json; writes bench/scale_poll.png and bench/scale_status.png,
and with ``--markdown PATH`` the before/after rows as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def load(kind: str, label: str) -> dict[str, Any] | None:
    path = HERE / "results" / f"{kind}_scale-{label}.json"
    return json.loads(path.read_text()) if path.exists() else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="before")
    ap.add_argument("--after", default="after")
    ap.add_argument("--markdown", help="also write the before/after rows here")
    args = ap.parse_args()
    if args.markdown:
        Path(args.markdown).write_text(markdown(args.before, args.after))
        print(f"wrote {args.markdown}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(label, load("slurm", label)) for label in (args.before, args.after)]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for label, data in runs:
        if data and data.get("replayed"):
            axes[2].plot([e["tasks"] for e in data["replayed"]],
                         [e["suanli_poll_without_sacct_s"] * 1000 for e in data["replayed"]], marker="o", label=label)
    axes[2].set(xscale="log", yscale="log", xlabel="tasks", ylabel="ms beyond sacct",
                title="one poll of a pending map, sacct replayed")
    axes[2].legend()
    for ax, key, size, title in ((axes[0], "maps", "tasks", "one poll of an unfinished map"),
                                 (axes[1], "jobs", "jobs", "one poll of separate pending jobs")):
        for label, data in runs:
            if data and data.get(key):
                xs = [e[size] for e in data[key]]
                ax.plot(xs, [e["ratio"] for e in data[key]], marker="o", label=label)
        ax.axhline(1.3, color="grey", linestyle="--", linewidth=1, label="goal 1.3x")
        ax.set(xscale="log", yscale="log", xlabel=size, ylabel="x one raw sacct for the same ids", title=title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "scale_poll.png", dpi=110)
    print(f"wrote {HERE / 'scale_poll.png'}")

    runs = [(label, load("cli", label)) for label in (args.before, args.after)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, data in runs:
        if data and data.get("registry"):
            xs = [e["jobs"] for e in data["registry"]]
            axes[0].plot(xs, [e["ratio"] for e in data["registry"]], marker="o", label=label)
            axes[1].plot(xs, [e["all_json_us_per_job"] for e in data["registry"]], marker="o", label=label)
    axes[0].axhline(1.2, color="grey", linestyle="--", linewidth=1, label="goal 1.2x")
    axes[0].set(xscale="log", xlabel="jobs in the registry", ylabel="x the same status with 8 jobs",
                title="`suanli status` (8 recent jobs shown)")
    axes[1].axhline(15, color="grey", linestyle="--", linewidth=1, label="goal 15 us")
    axes[1].set(xscale="log", xlabel="jobs in the registry", ylabel="us per job",
                title="`suanli status --all --json`")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "scale_status.png", dpi=110)
    print(f"wrote {HERE / 'scale_status.png'}")


def markdown(before: str, after: str) -> str:
    """One row per measured point: the figure before, after, and the goal."""
    rows = ["| what | before | after | goal |", "| --- | ---: | ---: | --- |"]
    b, a = load("slurm", before) or {}, load("slurm", after) or {}
    for key, size, what in (("maps", "tasks", "one poll of an unfinished map of {} tasks"),
                            ("jobs", "jobs", "one poll of {} separate pending jobs")):
        old = {e[size]: e for e in b.get(key, [])}
        for e in a.get(key, []):
            o = old.get(e[size], {})
            rows.append(f"| {what.format(f'{e[size]:,}')} (x one raw sacct, in process) | "
                        f"{o.get('ratio', float('nan')):.2f}x ({o.get('suanli_poll_s', float('nan')) * 1000:.0f} ms) | "
                        f"{e['ratio']:.2f}x ({e['suanli_poll_s'] * 1000:.0f} ms; "
                        f"sacct {e['raw_sacct_s'] * 1000:.0f} ms) | <= 1.3x |")
            if "process_ratio" in e:
                rows.append(f"| `suanli status ID` of a {e[size]:,}-task map, whole process (x a raw sacct process) | "
                            f"{o.get('process_ratio', float('nan')):.2f}x | {e['process_ratio']:.2f}x | <= 3x |")
    old = {e["tasks"]: e for e in b.get("replayed", [])}
    for e in a.get("replayed", []):
        o = old.get(e["tasks"], {})
        rows.append(f"| one poll of a pending map of {e['tasks']:,} tasks, sacct's answer replayed: time beyond "
                    f"sacct | {o.get('suanli_poll_without_sacct_s', float('nan')) * 1000:.1f} ms | "
                    f"{e['suanli_poll_without_sacct_s'] * 1000:.1f} ms | <= 0.3x one sacct |")
    old = {e["jobs"]: e for e in b.get("replayed_jobs", [])}
    for e in a.get("replayed_jobs", []):
        o = old.get(e["jobs"], {})
        rows.append(f"| one poll of {e['jobs']:,} separate pending jobs, sacct's answer replayed: time beyond "
                    f"sacct | {o.get('suanli_poll_without_sacct_s', float('nan')) * 1000:.1f} ms | "
                    f"{e['suanli_poll_without_sacct_s'] * 1000:.1f} ms | <= 0.3x one sacct |")
    for name, loop in a.get("submit_loops", {}).items():
        o = b.get("submit_loops", {}).get(name, {})
        goal = {"suanli_default": ">= 50/s"}.get(name, "+-10% of the rate" if "rate_" in name else "")
        rows.append(f"| submission loop `{name}` (sustained: second half of the loop) | "
                    f"{o.get('sustained_per_s', float('nan')):.1f}/s | {loop['sustained_per_s']:.1f}/s | {goal} |")
    b, a = load("cli", before) or {}, load("cli", after) or {}
    old = {e["jobs"]: e for e in b.get("registry", [])}
    for e in a.get("registry", []):
        o = old.get(e["jobs"], {})
        rows.append(f"| `suanli status` with {e['jobs']:,} jobs (8 recent; x the 8-job registry) | "
                    f"{o.get('ratio', float('nan')):.2f}x ({o.get('status_s', float('nan')) * 1000:.0f} ms) | "
                    f"{e['ratio']:.2f}x ({e['status_s'] * 1000:.0f} ms) | <= 1.2x |")
        rows.append(f"| `suanli status --all --json` with {e['jobs']:,} jobs, per job | "
                    f"{o.get('all_json_us_per_job', float('nan')):.1f} us | {e['all_json_us_per_job']:.1f} us "
                    "| <= 15 us |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
