"""The sync's fast ingest: sacct lines straight to ledger rows (no record object per allocation), the parser's
fast paths giving the reference helpers' values to the bit, and a batch of new records stored without staging
while the roll-ups stay exact."""

from __future__ import annotations

import random
import time
from pathlib import Path

from test_ledger_costs import _counted
from test_ledger_rollups import _assert_exact

from suanli.accounting.ledger import Ledger
from suanli.accounting.records import COLUMNS
from suanli.accounts_slurm import FIELDS, ParseStats, parse_usage, usage_rows
from suanli.compute.slurm.sacct import parse_clock, parse_time

HEADER = "|".join(FIELDS) + "\n"


def _lines(rnd: random.Random, n: int) -> list[str]:
    """sacct --parsable2 lines in the shapes a centre prints: plain jobs, array tasks, hetjob components,
    requeued attempts, steps with TotalCPU, open jobs, odd times and clocks, a typed GRES, a bad line."""
    out = [HEADER]
    clocks = ["12:34.567", "01:02:03", "1-02:03:04", "00:00:00", "", "INVALID", "59.5", "7:05:09.25"]
    for i in range(n):
        job = rnd.choice([f"{100 + i}", f"{100 + i}_{rnd.randrange(9)}", f"{100 + i}+{rnd.randrange(2)}"])
        end = time.time() - rnd.randrange(400 * 86400)
        start = end - rnd.randrange(1, 90000)
        fmt = "%Y-%m-%dT%H:%M:%S"
        te, ts = time.strftime(fmt, time.localtime(end)), time.strftime(fmt, time.localtime(start))
        submit = rnd.choice([ts, time.strftime(fmt, time.localtime(start - rnd.randrange(5000))), "Unknown"])
        tres = rnd.choice(["billing=4,cpu=4,mem=16G,node=1", "cpu=8,gres/gpu:a100=2,gres/gpu:v100=1,node=2",
                           "cpu=2,gres/npu=8,node=1", ""])
        cpus = rnd.choice(["4", "", "0"])
        state = rnd.choice(["COMPLETED", "FAILED", "CANCELLED by 0", "TIMEOUT", "RUNNING", "NEW_STATE+", "REQUEUED"])
        total = rnd.choice(clocks)
        eraw = rnd.choice([str(int(end - start)), ""])
        line = [job, job, "u1", "acct", rnd.choice(["cpu", "ai", ""]), state, cpus, rnd.choice(["1", "0", ""]),
                tres, eraw, rnd.choice([str(int(end - start) * 4), ""]), total, submit, ts,
                rnd.choice([te, te, "Unknown"])]
        out.append("|".join(line) + "\n")
        for _ in range(rnd.randrange(3)):  # steps: their TotalCPU folds into the allocation
            out.append("|".join([f"{job}.{rnd.choice(['batch', '0'])}", "", "", "", "", "COMPLETED", "", "", "", "",
                                 "", rnd.choice(clocks[:4]), "", "", ""]) + "\n")
        if rnd.random() < 0.1:
            out.append(out[-1])  # the same job again: a requeue's next attempt
    out.insert(len(out) // 2, "1|broken\n")
    return out


def test_rows_hold_the_reference_helpers_values() -> None:
    """Each fast path (cached hours and minutes, the clock's common shapes, the TRES cache, the row built without
    a record) gives what ``parse_time``/``parse_clock`` and ``UsageRecord.row()`` give, to the bit."""
    rnd = random.Random(20261130)
    lines = _lines(rnd, 600)
    stats = ParseStats()
    rows = list(usage_rows(lines, "c", lambda p: (1.5, 7.0, "x") if p == "ai" else (0.5, 0.0, None), stats=stats))
    recs = list(parse_usage(lines, "c", lambda p: (1.5, 7.0, "x") if p == "ai" else (0.5, 0.0, None)))
    assert rows == [r.row() for r in recs] and len(rows) > 300
    assert stats.bad == 1 and stats.unknown_states == {"NEW_STATE"} and stats.open > 0 and stats.steps > 0
    by_id = {str(line.split("|")[0]): line.rstrip("\n").split("|") for line in lines[1:] if "|" in line}
    checked = 0
    for r in recs:
        cells = by_id[r.record_id.split("|")[1]]  # c|JOB|submit|start
        if r.attempt or r.total_cpu_s != parse_clock(cells[11]):
            continue  # a requeue's line, or TotalCPU taken from the steps
        assert (r.end_time, r.start_time, r.submit_time) == (parse_time(cells[14]), parse_time(cells[13]),
                                                             parse_time(cells[12]))
        assert r.cpu_seconds == (float(cells[10]) if cells[10] else parse_clock("") or r.cpus * r.elapsed_s)
        assert r.charge == r.cpu_seconds / 3600.0 * (1.5 if r.partition == "ai" else 0.5) + (
            r.accelerator_seconds / 3600.0 * (7.0 if r.partition == "ai" else 0.0))
        if "gres/gpu:" in cells[8]:
            assert (r.accelerators, r.accelerator_kind) == (3, "nvidia")
        checked += 1
    assert checked > 100


def test_a_batch_of_new_records_skips_the_deltas_and_rollups_stay_exact(home: Path) -> None:
    """A sync's batch of records the ledger has not seen is copied in without a probe or deltas, the roll-ups
    move by its groups exactly; a later batch that rewrites some of them (and repeats an id) goes through the
    deltas and stays exact too."""
    rnd = random.Random(7)
    rows = list({r[0]: r for r in usage_rows(_lines(rnd, 800), "c")}.values())  # one row per record id
    assert len(rows) > 300
    led, db = _counted(None, home)
    assert led.record_rows(iter(rows[:200]), batch=100) == 200
    assert not [s for s in db.sent if "usage_delta" in s]
    _assert_exact(led)
    again = [(*r[:20], 1.25, *r[21:]) for r in rows[150:250]] + [rows[300]] * 2  # rewrites, new ones, a repeat
    assert led.record_rows(again, batch=len(again)) == len(again)
    assert [s for s in db.sent if "usage_delta" in s]
    _assert_exact(led)
    with led.db.transaction() as tx:
        stored = {r[0]: tuple(r) for r in tx.all(f"SELECT {', '.join(COLUMNS)} FROM usage_records")}
    assert stored == {r[0]: r for r in [*rows[:150], *again]}
    led.close()
    assert Ledger(None, home).totals()["records"] == 251 == len(stored)
