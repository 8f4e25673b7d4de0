"""What a PostgreSQL ledger adds to a submit (the CLI benchmark's "a PostgreSQL ledger adds X ms"): psycopg2 loads
without the ``import ssl`` it does only to choose who sets up libcrypto's locks (a no-op with OpenSSL >= 1.1), and
``ssl`` still works afterwards; an admission is three round trips whatever number of quotas apply (the quotas
with BEGIN and the lock, every window's used and reserved sums in one statement, the reservation with the
COMMIT), and its figures are exactly those of the separate readers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from test_accounting import _pg_url, est, ledger_url, pg, pg_db, rec  # noqa: F401 - fixtures
from test_ledger_costs import _counted

from suanli.accounting.db import LedgerError
from suanli.accounting.ledger import Ledger
from suanli.accounting.quota import Quota
from suanli.accounting.rollups import rollup_sums
from suanli.errors import QuotaExceeded

#: Opens a ledger in a fresh process and says what happened to ``ssl``: whether it was loaded, which modules
#: besides psycopg2's own loaded while it was hidden (a meta-path finder sees every import), and whether it works after.
_PROBE = textwrap.dedent("""
    import json, sys, threading
    from pathlib import Path
    seen = []

    class Spy:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] not in ("ssl", "psycopg2") and sys.modules.get("ssl", 0) is None:
                seen.append(name)
            return None

    sys.meta_path.insert(0, Spy())
    if sys.argv[2] == "thread":
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
    from suanli.accounting.db import Database
    db = Database(sys.argv[1], Path("unused"))
    db.connect()
    loaded = "ssl" in sys.modules
    with db.transaction(single=True) as tx:
        one = tx.one("SELECT 1")[0]
    import ssl
    ctx = ssl.create_default_context()
    print(json.dumps({"ssl_loaded_by_open": loaded, "hidden_gap": seen, "select": one,
                      "ssl_works": ctx.verify_mode == ssl.CERT_REQUIRED, "left": "ssl" in sys.modules}))
    if sys.argv[2] == "thread":
        stop.set()
""")


def _probe(url: str, mode: str = "") -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-c", _PROBE, url, mode or "plain"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


@pytest.mark.parametrize("query", ["", "?sslmode=disable", "?sslmode=prefer"])
def test_psycopg2_loads_without_ssl_and_ssl_still_works(pg_db: str, query: str) -> None:  # noqa: F811
    """Opening a PostgreSQL ledger does not load ``ssl`` (before: psycopg2's import loaded it, ~12 ms of a
    submit), nothing else loads while it is hidden, the connection works with and without ``sslmode``, and
    ``import ssl`` afterwards gives the real module."""
    out = _probe(_pg_url("suanli_admin", pg_db) + query)
    assert out == {"ssl_loaded_by_open": False, "hidden_gap": [], "select": 1, "ssl_works": True, "left": True}


def test_with_another_thread_psycopg2_imports_ssl_as_usual(pg_db: str) -> None:  # noqa: F811
    """Another thread could import ``ssl`` while it is hidden: then nothing is hidden."""
    out = _probe(_pg_url("suanli_admin", pg_db), "thread")
    assert out["ssl_loaded_by_open"] is True and out["hidden_gap"] == [] and out["ssl_works"] is True


def test_sslmode_require_reaches_libpq_tls(pg_db: str) -> None:  # noqa: F811
    """libpq's own TLS negotiation still runs (the test server has ssl off, so ``require`` is refused by it, not
    by a broken client library), as a one-line ledger error."""
    code = ("import sys; from pathlib import Path; from suanli.accounting.db import Database, LedgerError\n"
            "try:\n    Database(sys.argv[1], Path('unused')).connect()\n"
            "except LedgerError as exc:\n    print(exc)\n")
    r = subprocess.run([sys.executable, "-c", code, _pg_url("suanli_admin", pg_db) + "?sslmode=require"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "cannot connect" in r.stdout and "SSL" in r.stdout, r.stdout


def test_an_admission_is_three_round_trips_for_any_number_of_quotas(ledger_url: str | None,  # noqa: F811
                                                                   home: Path) -> None:
    """The quotas (with BEGIN and the lock), the sums of every quota's window in one statement, and the
    reservation sent with the COMMIT (before: five round trips for one quota, two more per further quota)."""
    setup = Ledger(ledger_url, home)
    setup.set_quota(Quota(account="lab", cpu_hours=100), "admin")
    setup.set_quota(Quota(account="lab", user="suanli_admin", charge=50), "admin")
    setup.set_quota(Quota(account="lab", cluster="c1", period="total", start="2000-01-01", cpu_hours=70), "admin")
    setup.close()
    led, db = _counted(ledger_url, home)
    led.db.connect()
    db.sent.clear()
    checks = led.admit(job_id="j1", cluster="c1", account="lab", user="suanli_admin", est=est())
    assert len(checks) == 3 and all(c.fits for c in checks)
    if ledger_url is not None:
        assert len(db.sent) == 3, db.sent
        assert db.sent[0].startswith("BEGIN; SELECT pg_advisory_xact_lock") and "FROM quotas" in db.sent[0]
        assert " PREPARE suanli_" in db.sent[1] and " AS WITH s0 " in db.sent[1]  # prepared as it first runs
        assert db.sent[2].startswith("INSERT INTO reservations") and db.sent[2].endswith("; COMMIT"), db.sent
    assert [r["job_id"] for r in led.reservations()] == ["j1"]
    db.sent.clear()
    again = led.admit(job_id="j2", cluster="c1", account="lab", user="suanli_admin", est=est())
    assert [(c.used, c.reserved) for c in again] == [(c.used, c.reserved + c.need) for c in checks]
    if ledger_url is not None:  # then only run: planned once per connection
        assert len(db.sent) == 3 and "EXECUTE suanli_" in db.sent[1] and "PREPARE" not in db.sent[1], db.sent
    led.close()


def test_prepared_sums_are_let_go_past_the_limit_and_after_a_reconnect(ledger_url: str | None, home: Path,  # noqa: F811
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Admission's statement differs with the quotas that apply: past MAX_PREPARED shapes a connection lets
    every prepared one go and starts again; a new connection prepares afresh. The answers never change."""
    from suanli.accounting import tx as txmod

    monkeypatch.setattr(txmod, "MAX_PREPARED", 1)
    led = Ledger(ledger_url, home)
    led.set_quota(Quota(account="a1", cpu_hours=100), "admin")
    led.set_quota(Quota(account="a2", cpu_hours=100), "admin")
    led.set_quota(Quota(account="a2", user="u9", charge=50), "admin")  # a second shape: two windows
    for round_ in range(2):
        for account in ("a1", "a2", "a1"):
            checks = led.admit(job_id=f"{account}-{round_}-{len(led.reservations())}", cluster="c1",
                               account=account, user="u9", est=est(), reserve=False)
            assert checks and all(c.fits and c.used == 0 and c.reserved == 0 for c in checks)
        if ledger_url is not None:
            assert len(led.db._prepared) == 1
        led.db.close()  # the next admission connects again: nothing is prepared there yet
        assert led.db._prepared == {}
    led.close()


def test_combined_sums_equal_the_separate_readers(ledger_url: str | None, home: Path) -> None:  # noqa: F811
    """Every window's used and reserved figures from the one statement are those the roll-up reader and the
    records' scan give one by one, and the limit is still exact: what remains fits, a hair more is refused."""
    led = Ledger(ledger_url, home)
    now = time.time()
    led.record([rec(1, cpu_s=7200.0, end=now - 120), rec(2, cpu_s=1800.0, end=now - 60, kind="nvidia", acc_s=900.0),
                rec(3, cpu_s=3600.0, end=now - 30, user="u2")])
    led.set_quota(Quota(account="lab", cpu_hours=10), "admin")
    led.set_quota(Quota(account="lab", user="u1", accelerator_hours={"nvidia": 5}), "admin")
    assert led.admit(job_id="r1", cluster="c1", account="lab", user="u1", est=est(cpus=2))  # 2 cpu-hours reserved
    with led.db.transaction() as tx:
        quotas = led._quotas(tx, "lab")
        wins = [(q, *w) for q in quotas if (w := q.window(now)) is not None]
        combined = led._window_sums(tx, wins)
        for i, (q, _, lo, hi) in enumerate(wins):
            assert _r(combined[2 * i]) == _r(rollup_sums(tx, q, lo, hi)) == _r(led._sums(tx, "usage_records", q, lo,
                                                                                           hi))
            assert _r(combined[2 * i + 1]) == _r(led._sums(tx, "reservations", q, None, None))
    whole = next(i for i, (q, *_) in enumerate(wins) if q.user is None)  # the account's quota: every user
    assert combined[2 * whole][None][0] == pytest.approx(7200.0 + 3600.0)
    assert combined[2 * whole]["nvidia"][:2] == pytest.approx((1800.0, 900.0))
    assert combined[2 * whole + 1][None][0] == pytest.approx(7200.0)  # r1: 2 cpus x 1 h
    # 10 cpu-hours: 3.5 used (2 + 0.5 + 1), 2 reserved; 4.5 remain.
    ok = led.admit(job_id="r2", cluster="c1", account="lab", user="u1", est=est(cpus=9, hours=0.5))
    assert [round(c.remaining, 6) for c in ok if c.resource == "cpu_hours"] == [4.5]
    with pytest.raises(QuotaExceeded, match="0.0 of 10.0 remain"):
        led.admit(job_id="r3", cluster="c1", account="lab", user="u1", est=est(cpus=1, hours=1 / 60))
    assert sorted(r["job_id"] for r in led.reservations()) == ["r1", "r2"]
    led.close()


def _r(sums: dict[str | None, tuple[float, ...]] | None) -> dict[str | None, tuple[float, ...]]:
    """Sums rounded to a millionth (a database may add floats in any order)."""
    assert sums is not None
    return {k: tuple(round(x, 6) for x in v) for k, v in sums.items()}


def test_a_deferred_write_that_fails_leaves_nothing(ledger_url: str | None, home: Path) -> None:  # noqa: F811
    """A write sent with the COMMIT fails the whole transaction as an executed one would; and no statement may
    follow a deferred one (it would run before it)."""
    led = Ledger(ledger_url, home)
    led.set_quota(Quota(account="lab", cpu_hours=100), "admin")
    led.admit(job_id="dup", cluster="c1", account="lab", user="u1", est=est())
    with pytest.raises(LedgerError), led.db.transaction(lock="quota:lab") as tx:
        tx.execute("UPDATE quotas SET cpu_hours = 1 WHERE account = ?", ("lab",))
        tx.defer("INSERT INTO reservations (job_id, cluster, account, cpu_seconds, accelerator_seconds, charge, "
                 "created_at) VALUES (?, 'c1', 'lab', 0, 0, 0, 0)", ("dup",))  # the same job id: refused
    assert [q.cpu_hours for q in led.quotas("lab")] == [100]
    with pytest.raises(RuntimeError, match="after a deferred"), led.db.transaction() as tx:
        tx.defer("DELETE FROM reservations WHERE job_id = ?", ("dup",))
        if ledger_url is None:
            raise RuntimeError("SQLite runs a deferred write at once: after a deferred one is allowed")
        tx.execute("SELECT 1")
    assert [r["job_id"] for r in led.reservations()] == ["dup"]
    led.close()


def test_quota_stays_checked_and_immutable() -> None:
    """Quota is a named tuple now: made, or copied with ``_replace``, it is checked the same."""
    q = Quota(account="lab", cpu_hours=1)
    assert q._replace(id=7).id == 7 and q.accelerator_hours == {}
    with pytest.raises(Exception, match="at least 0"):
        q._replace(cpu_hours=float("nan"))
    with pytest.raises(Exception, match="give at least one limit"):
        Quota(account="lab")
    with pytest.raises(AttributeError):
        q.cpu_hours = 2  # type: ignore[misc]


def test_a_local_job_is_reserved_under_its_known_native_id(ledger_url: str | None, home: Path,  # noqa: F811
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The local backend knows its native id before submitting (``Plan.native_id``): the reservation is made
    under it, and no second write binds it afterwards (one round trip less on PostgreSQL, after the job's
    runner has started and competes for the CPU)."""
    from suanli.api import Client, build_spec

    setup = Ledger(ledger_url, home)
    setup.set_quota(Quota(account="lab", cpu_hours=100), "admin")
    setup.close()
    binds: list[tuple[str, str]] = []
    real_bind = Ledger.bind

    def bind(self: Ledger, job_id: str, native_id: str) -> None:
        binds.append((job_id, native_id))
        real_bind(self, job_id, native_id)

    monkeypatch.setattr(Ledger, "bind", bind)
    client = Client()
    plan, _ = client.plan(build_spec(["sleep", "30"], account="lab", time="1h"))
    assert plan.native_id == plan.job_id
    job = client.submit(["sleep", "30"], account="lab", time="1h")
    try:
        held = client.accounts.ledger.reservations()
        assert [(r["job_id"], r["native_id"]) for r in held] == [(job.id, job.id)]
        assert binds == []
    finally:
        job.cancel()
        client.store.close()


def test_ended_jobs_are_booked_by_admission_only_when_their_reservation_is_in_the_way(
        ledger_url: str | None, home: Path) -> None:  # noqa: F811
    """Jobs that ended unobserved keep their worst-case reservation until someone looks; a submission that fits
    anyway does not stop to book them (a status call and, on PostgreSQL, a session's first roll-up write), one
    that would not fit books them and asks again."""
    from suanli.api import Client
    from suanli.compute.local.runner import combined, read_state

    setup = Ledger(ledger_url, home)
    setup.set_quota(Quota(account="lab", cpu_hours=1), "admin")
    setup.close()
    client = Client()

    def ended(job_id: str) -> None:  # the runner's own file: no status call, so nothing books the job
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = read_state(home / "jobs" / job_id)
            if st is not None and combined(st) != "ACTIVE":
                return
            time.sleep(0.02)
        raise AssertionError(f"job {job_id} did not end within 60 s")

    try:
        first = client.submit(["true"], account="lab", time="10m")  # 1/6 cpu-hour at worst
        ended(first.id)
        second = client.submit(["true"], account="lab", time="10m")  # fits beside the first's reservation
        ended(second.id)
        led = client.accounts.ledger
        assert sorted(r["job_id"] for r in led.reservations()) == sorted([first.id, second.id])
        assert led.report(["job"]) == []  # nothing was booked: nothing needed it
        third = client.submit(["true"], account="lab", time="45m")  # 1/6 + 1/6 + 3/4 > 1: only after booking
        assert sorted(r["job_id"] for r in led.reservations()) == [third.id]
        assert sorted(row["job_id"] for row in led.report(["job"])) == sorted([first.id, second.id])
        with pytest.raises(QuotaExceeded):  # what is left is really used up: refused after booking too
            client.submit(["true"], account="lab", time="1h")
    finally:
        client.store.close()
