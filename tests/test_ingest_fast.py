"""The sync's fast ingest: sacct lines straight to ledger rows (no record object per allocation), the parser's
fast paths giving the reference helpers' values to the bit, and a batch of new records stored without staging
while the roll-ups stay exact."""

from __future__ import annotations

import contextlib
import math
import os
import random
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_accounting import _pg_url, pg, pg_db  # noqa: F401 - fixtures
from test_ledger_costs import _counted
from test_ledger_rollups import _assert_exact

from suanli.accounting.bulk import Rate
from suanli.accounting.db import LedgerError
from suanli.accounting.ledger import Ledger
from suanli.accounting.records import COLUMNS
from suanli.accounts_slurm import FIELDS, Booking, ParseStats, book_lines, parse_usage, usage_rows
from suanli.compute.slurm.sacct import parse_clock, parse_time
from suanli.errors import BackendError

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


def _stored(led: Ledger) -> dict[str, tuple[object, ...]]:
    with led.db.transaction() as tx:
        return {r[0]: tuple(r) for r in tx.all(f"SELECT {', '.join(COLUMNS)} FROM usage_records")}


@pytest.mark.parametrize(("submitters", "batch"), [(True, 97), (False, 97), (True, 100_000)])
def test_the_bulk_session_books_what_the_row_path_books(tmp_path: Path, submitters: bool, batch: int) -> None:
    """A sync on SQLite hands the ledger allocations and SQL makes the records (ids, native ids, the
    submitters' suanli ids and configs, rates per config, charges, months): every stored value, the roll-ups
    and the parse stats equal those of the rows made in Python, over random sacct text, twice (the second sync
    rewrites); with jobs of this registry or none (no join), through the writer process (batches smaller than
    a window, both slots in use) or in this one (a window smaller than a batch)."""
    rnd = random.Random(11)
    windows = [_lines(rnd, 700), _lines(rnd, 300)]  # ids 100... in both: the second window rewrites records
    again = [line.replace("|u1|", "|u2|") for line in windows[1]]  # so does a second sync, with a new user
    rates: dict[str, dict[str, Rate]] = {"c": {"ai": (1.5, 7.0, "x"), "cpu": (0.5, 0.0, None)},
                                         "other": {"ai": (3.0, 11.0, "y")}}
    booked = sorted({str(r[3]).split("_")[0] for r in usage_rows(windows[0], "c")}, key=int)
    natives = {booked[0]: ("sl-a", "c"), booked[5]: ("sl-b", "other"), booked[9]: ("sl-c", "other"),
               "999999": ("sl-z", "c")} if submitters else {}
    booking = Booking("slurm:k", "c", rates, natives)
    ledgers, all_stats = [], []
    for bulk in (False, True):
        led = Ledger(None, tmp_path / str(bulk))
        stats = ParseStats(track={booked[0], booked[5], "120"})
        session = led.booking(booking) if bulk else None
        assert (session is not None) == bulk
        with session or contextlib.nullcontext():
            if session is not None:
                folder = session.folder
                session.batch = batch
            n = sum(book_lines(led, session, w, booking, stats) for w in [*windows, again])
            if session is not None:
                assert (session.writer is not None) == (batch < 300)
        assert n > 600
        ledgers.append(led)
        all_stats.append(stats)
    rows, bulk_rows = (_stored(led) for led in ledgers)
    assert rows == bulk_rows
    assert {r[4] for r in rows.values()} == ({None, "sl-a", "sl-b", "sl-c"} if submitters else {None})
    assert {r[1] for r in rows.values()} == ({"c", "other"} if submitters else {"c"})
    assert any(r[22] for r in rows.values() if r[1] == ("other" if submitters else "c"))
    assert all_stats[0] == all_stats[1]
    for led in ledgers:
        _assert_exact(led)
    assert folder is not None and not folder.exists()


def test_the_bulk_session_stops_on_a_failing_stream_and_keeps_what_it_committed(tmp_path: Path) -> None:
    """sacct failing midway: the error reaches the sync, the batches committed stay (a rerun rewrites them), the
    slot files go."""
    led = Ledger(None, tmp_path)
    booking = Booking("slurm:k", "c")

    def lines() -> Iterator[str]:
        yield from _lines(random.Random(3), 400)[:300]
        raise BackendError("sacct: connection lost")

    with led.booking(booking) as session:  # type: ignore[union-attr]
        session.batch = 50
        folder = session.folder
        assert folder is not None and folder.exists()
        with pytest.raises(BackendError, match="connection lost"):
            book_lines(led, session, lines(), booking, ParseStats())
    assert not folder.exists()
    kept = led.totals()["records"]
    assert kept > 0 and kept % 50 == 0
    _assert_exact(led)


def test_the_writers_failures_reach_the_sync(tmp_path: Path) -> None:
    """The writer process finding the ledger locked past its wait, or dying: the sync gets a one-line
    LedgerError naming the ledger, what was committed before stays exact, and no process or slot is left."""
    led = Ledger(None, tmp_path, lock_wait_s=0.3)
    booking = Booking("slurm:k", "c")
    lines = _lines(random.Random(5), 400)
    with led.booking(booking) as session:  # type: ignore[union-attr]
        session.batch = 40
        holder = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the ledger
        with pytest.raises(LedgerError, match="locked by another process"):
            book_lines(led, session, lines, booking, ParseStats())
        holder.execute("ROLLBACK")
        assert session.writer is not None and session.writer.wait(timeout=30) == 1
    assert led.totals()["records"] == 0

    with led.booking(booking) as session:  # type: ignore[union-attr]
        session.batch = 40
        procs = []

        def killing() -> Iterator[str]:
            for i, line in enumerate(lines):
                if i == 500 and session.writer is not None:  # after the third batch: one is stored
                    procs.append(session.writer)
                    session.writer.kill()
                yield line

        with pytest.raises(LedgerError, match="writer process exited"):
            book_lines(led, session, killing(), booking, ParseStats())
        assert procs and procs[0].poll() is not None
    kept = led.totals()["records"]
    assert 0 < kept < len(list(usage_rows(lines, "c")))  # batches before the kill stay, the rest is not there
    _assert_exact(led)


def test_copy_text_reads_back_as_written_on_postgres(pg_db: str, home: Path) -> None:  # noqa: F811
    """COPY's text, fast path (plain values) and escaped path (tabs, backslashes, a literal \\N, inf, nan), read
    back by the real server: every value as it was, floats to the bit."""
    led = Ledger(_pg_url("suanli_admin", pg_db), home)
    rnd = random.Random(3)
    plain = [(f"u{i}", None if i % 3 else f"acct-{i}", rnd.random() * 10 ** rnd.randint(-300, 300), i, i % 2 == 0)
             for i in range(300)]
    odd = [("a\tb", "back\\slash", float("inf"), 1, True), ("\\N", "line\nbreak\r", float("-inf"), None, None),
           ("inf", "nan", -0.0, -5, False), ("雪", "", 0.1 + 0.2, 2**62, True)]
    with led.db.transaction() as tx:
        tx.execute("CREATE TEMP TABLE t (a TEXT, b TEXT, c DOUBLE PRECISION, d BIGINT, e BOOLEAN)")
        for rows in (plain, odd, [(None, None, float("nan"), None, None)]):
            tx.execute("DELETE FROM t")
            tx.copy("t", ("a", "b", "c", "d", "e"), rows)
            back = tx.all("SELECT a, b, c, d, e FROM t")
            assert len(back) == len(rows)
            for got, want in zip(back, rows, strict=True):
                assert got[:2] == want[:2] and got[3:] == want[3:]
                assert (got[2] != got[2] and want[2] != want[2]) or (
                    got[2] == want[2] and math.copysign(1, got[2]) == math.copysign(1, want[2]))
    led.close()


def test_a_killed_syncs_slot_folder_is_swept_by_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync killed with SIGKILL leaves its two slot files; the next sync removes them (their process is gone)
    and leaves a live sync's alone."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead, live = scratch / f"suanli-sync-{gone.pid}-abc", scratch / f"suanli-sync-{os.getpid()}-def"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "suanli_slot0.db").write_bytes(b"")
    with Ledger(None, tmp_path / "home").booking(Booking("slurm:k", "c")) as session:  # type: ignore[union-attr]
        assert session.folder is not None and session.folder.parent == scratch
        assert session.folder.name.startswith(f"suanli-sync-{os.getpid()}-")
    assert not dead.exists() and live.exists()
    assert sorted(p.name for p in scratch.iterdir()) == [live.name]
