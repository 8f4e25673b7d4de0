"""The portal over a PostgreSQL ledger: each request runs as the user's own database role (SET ROLE), so the
database, not only the handlers, decides who may change quotas; /metrics still equals `suanli usage --json`."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_portal_browser
from conftest import run_cli, wait_until
from test_accounting import _pg_url as _url
from test_accounting import _super
from test_portal import Server, _records, issue, quotas_in_ledger, start_server
from test_portal_browser import by_css, form_login

pytest.importorskip("starlette")
driver = test_portal_browser.driver  # the browser tests' fixtures, shared
browser = test_portal_browser.browser
PG = os.environ.get("SUANLI_TEST_PG", "")


@pytest.fixture
def pg_portal(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """A fresh ledger database owned by suanli_admin (the portal's connection role), which may act as alice."""
    if not PG:
        if os.environ.get("CI") == "true":
            pytest.fail("no PostgreSQL test server (SUANLI_TEST_PG): scripts/test.sh starts it")
        pytest.skip("no PostgreSQL test server; run scripts/test.sh, which starts one")
    name = "tp_" + secrets.token_hex(4)
    _super(f"CREATE DATABASE {name} OWNER suanli_admin")
    url = _url("suanli_admin", name)
    monkeypatch.setenv("SUANLI_LEDGER_URL", url)
    from suanli.accounting.ledger import Ledger

    ledger = Ledger(url, home)
    ledger.record(_records())  # migrates: the tables belong to suanli_admin, suanli_user exists
    ledger.close()
    _super("GRANT suanli_user TO alice")
    _super("GRANT alice TO suanli_admin")  # the portal's role may SET ROLE alice
    tokens = {"alice": issue("--user", "alice", "--account", "acct1"),
              "admin": issue("--user", "suanli_admin", "--admin"),
              "fake_admin": issue("--user", "alice", "--admin"),  # an admin to the portal, not to the database
              "norole": issue("--user", "nobody_here")}
    try:
        for server in start_server(home):
            server.tokens = tokens
            yield server
    finally:
        _super("REVOKE alice FROM suanli_admin")
        _super(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_pg_the_database_refuses_a_quota_change_by_a_non_admin_role(pg_portal: Server) -> None:
    form = {"account": "acct1", "cpu_hours": "50"}
    r = pg_portal.post("/quotas", form, token=pg_portal.tokens["admin"], as_json=True)
    assert r.status == 201, r.text
    before = quotas_in_ledger()
    assert [c["limit"] for c in before] == [50.0]
    # The portal lets this token through as an admin, but the request runs as alice's role: the database refuses.
    r = pg_portal.post("/quotas", {**form, "cpu_hours": "5000"}, token=pg_portal.tokens["fake_admin"], as_json=True)
    assert r.status == 403 and "alice" in r.json()["error"], r.text
    r = pg_portal.post(f"/quotas/{before[0]['quota_id']}/delete", {}, token=pg_portal.tokens["fake_admin"],
                       as_json=True)
    assert r.status == 403
    assert pg_portal.post("/quotas", form, token=pg_portal.tokens["alice"], as_json=True).status == 403
    assert quotas_in_ledger() == before
    # alice reads her accounts' usage and quotas as herself; a user with no database role gets nothing.
    usage = pg_portal.get("/usage?by=account", token=pg_portal.tokens["alice"], as_json=True).json()
    assert {r["account"] for r in usage["rows"]} == {"acct1"} and usage["quotas"][0]["limit"] == 50.0
    r = pg_portal.get("/usage", token=pg_portal.tokens["norole"], as_json=True)
    assert r.status == 403 and "nobody_here" in r.json()["error"]


def test_pg_metrics_equal_usage_json(pg_portal: Server) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    by = "cluster,account,partition,accelerator"
    cli = json.loads(run_cli("usage", "--by", by, "--json").stdout)
    text = pg_portal.get("/metrics", token=pg_portal.tokens["admin"]).text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    got = {(s.labels["cluster"], s.labels["account"], s.labels["partition"], s.labels["accelerator_kind"]): s.value
           for s in fams["suanli_usage_cpu_hours"].samples if s.name.endswith("_total")}
    want = {(r["cluster"], r["account"], r["partition"] or "", r["accelerator"] or ""): r["cpu_hours"] for r in cli}
    assert len(want) > 3 and got == pytest.approx(want, rel=1e-12)
    assert pg_portal.get("/metrics", token=pg_portal.tokens["fake_admin"]).status == 200  # reading is allowed


@pytest.mark.browser
def test_pg_browser_admin_creates_a_quota_and_a_portal_admin_without_the_role_is_refused(
        pg_portal: Server, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    form_login(browser, pg_portal, pg_portal.tokens["admin"], "/quotas")
    by_css(browser, "#q-account").send_keys("acct2")
    by_css(browser, "#q-charge").send_keys("75")
    by_css(browser, "#q-save").click()
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#quotas tr.quota-row"), "the new quota's row",
               timeout=20)
    before = quotas_in_ledger()
    assert [(c["account"], c["resource"], c["limit"]) for c in before] == [("acct2", "charge", 75.0)]
    by_css(browser, "header button").click()
    wait_until(lambda: "/login" in browser.current_url, "the login page after logging out", timeout=20)
    form_login(browser, pg_portal, pg_portal.tokens["fake_admin"], "/quotas")
    by_css(browser, "#q-account").send_keys("acct2")
    by_css(browser, "#q-charge").send_keys("99999")
    by_css(browser, "#q-save").click()
    assert "role alice may not do this" in by_css(browser, "#error").text
    assert quotas_in_ledger() == before
