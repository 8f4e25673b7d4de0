"""Compare two junit XML files of PSI/J's tests: the reference executor's (``slurm``) and suanli's.

A test is keyed by its name with the executor taken out of its ``[executor:launcher]`` id, so
``test_cancel[slurm:srun]`` and ``test_cancel[suanli:srun]`` are the same test. Prints the counts of each run and
every test that passes for the reference but not for suanli; writes a JSON summary; exits 1 when there is one.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

#: The executor at the start of a test id's parameters: ``[slurm:srun]`` -> ``[*:srun]``.
_EXECUTOR = re.compile(r"\[(slurm|suanli)(?=[:\]])")


def outcomes(path: Path) -> tuple[dict[str, str], float]:
    """test key -> passed / failed / skipped / error, and the run's wall time from the XML."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out: dict[str, str] = {}
    for case in root.iter("testcase"):
        name = _EXECUTOR.sub("[*", case.get("name", ""))
        key = f"{case.get('classname', '')}::{name}"
        kinds = {child.tag for child in case}
        if "skipped" in kinds:
            out[key] = "skipped"
        elif "failure" in kinds:
            out[key] = "failed"
        elif "error" in kinds:
            out[key] = "error"
        else:
            out[key] = "passed"
    return out, sum(float(s.get("time", 0)) for s in suites)


def counts(results: dict[str, str]) -> dict[str, int]:
    c: dict[str, int] = {}
    for v in results.values():
        c[v] = c.get(v, 0) + 1
    return c


def main(ref_xml: str, suanli_xml: str, summary: str) -> int:
    ref, ref_time = outcomes(Path(ref_xml))
    ours, our_time = outcomes(Path(suanli_xml))
    regressions = sorted(k for k, v in ref.items() if v == "passed" and ours.get(k) != "passed")
    data = {"reference": counts(ref), "suanli": counts(ours), "reference_time_s": round(ref_time, 1),
            "suanli_time_s": round(our_time, 1), "regressions": {k: ours.get(k, "missing") for k in regressions},
            "reference_outcomes": ref, "suanli_outcomes": ours}
    Path(summary).write_text(json.dumps(data, indent=1, sort_keys=True))
    print(f"PSI/J slurm executor: {counts(ref)} in {ref_time:.0f} s")
    print(f"suanli executor:      {counts(ours)} in {our_time:.0f} s")
    for k in regressions:
        print(f"passes for slurm, not for suanli: {k} ({ours.get(k, 'missing')})")
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
