"""`suanli serve` over real HTTP: a real uvicorn server (the CLI in its own process) on a free loopback port,
the real registry and ledger, local jobs. The browser tests (test_portal_browser.py) reuse these helpers."""

from __future__ import annotations

import ast
import http.client
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, run_cli, wait_until

pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")


# ---------------------------------------------------------------- helpers (shared with the browser tests)
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    home: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, *, token: str | None = None, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, as_json: bool = False) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        if as_json:
            h["Accept"] = "application/json"
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            h["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: dict[str, str], **kw: Any) -> Reply:
        return self.request("POST", path, form=form, **kw)


def login() -> str:
    from suanli.compute.base import current_user

    return current_user()


def issue(*args: str) -> str:
    """A token from `suanli serve token create` (the last word of its output)."""
    r = run_cli("serve", "token", "create", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[-1]


def start_server(home: Path, *extra: str) -> Iterator[Server]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "suanli", "serve", "--port", str(port), "--refresh", "0.2",
                             *extra], env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", port, proc, home)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"suanli serve exited {proc.returncode}: {proc.stdout.read().decode()}")  # type: ignore[union-attr]
        try:
            return server.get("/healthz").status == 200
        except OSError:
            return False

    try:
        wait_until(up, "suanli serve to answer /healthz", timeout=60)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def portal(home: Path) -> Iterator[Server]:
    """A portal with three tokens: `me` (this login, a plain user), `bob` (another user) and `admin`."""
    tokens = {"me": issue("--user", login()), "bob": issue("--user", "bob"),
              "admin": issue("--user", "boss", "--admin")}
    for server in start_server(home):
        server.tokens = tokens
        yield server


def submit(*args: str) -> str:
    r = run_cli("submit", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[-1]


def state_of(job: str) -> str:
    r = run_cli("status", job, "--json")
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)[0]["state"])


def session(server: Server, token: str) -> tuple[str, str]:
    """Log in at the form: (the session cookie header, the CSRF token of the pages)."""
    r = server.post("/login", {"token": token, "next": "/jobs"})
    assert r.status == 303 and r.headers["location"] == "/jobs", r
    cookie = r.headers["set-cookie"].split(";")[0]
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
    page = server.get("/jobs", headers={"Cookie": cookie})
    assert page.status == 200
    return cookie, page.text.split('name="csrf" value="')[1].split('"')[0]


def quotas_in_ledger() -> list[dict[str, Any]]:
    r = run_cli("quota", "show", "--json")
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout))


# ---------------------------------------------------------------- tests
def test_nothing_in_suanli_imports_the_portal_but_its_cli_verbs() -> None:
    pkg = REPO / "suanli"
    for f in sorted(pkg.rglob("*.py")):
        rel = f.relative_to(pkg)
        if rel.parts[0] == "portal" or rel == Path("cli/portal_cmd.py"):
            continue
        tree = ast.parse(f.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        names |= {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                  for a in n.names}
        assert not {m for m in names if m.startswith("suanli.portal") or m == "suanli.cli.portal_cmd"} - (
            {"suanli.cli.portal_cmd"} if rel == Path("cli/main.py") else set()), f


def test_token_create_prints_the_token_last_and_stores_only_its_hash(home: Path) -> None:
    r = run_cli("serve", "token", "create", "--user", "alice", "--admin")
    assert r.returncode == 0, r.stderr
    token = r.stdout.split()[-1]
    assert token.startswith("sl_") and len(token) > 40
    raw = (home / "portal.db").read_bytes()
    assert token.encode() not in raw and token[3:].encode() not in raw
    assert oct((home / "portal.db").stat().st_mode & 0o777) == "0o600"
    listed = json.loads(run_cli("serve", "token", "list", "--json").stdout)
    assert [(t["user"], t["admin"], t["revoked"]) for t in listed] == [("alice", True, False)]
    bad = run_cli("serve", "token", "create", "--user", "a b;rm")
    assert bad.returncode == 2 and "--user" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, field_name", [
    (["--proxy-header", "X-Remote-User"], "--trusted-proxy"),
    (["--proxy-header", "X-Remote-User", "--trusted-proxy", "not-an-address"], "--trusted-proxy"),
    (["--port", "70000"], "--port"),
    (["--refresh", "0"], "--refresh"),
])
def test_serve_refuses_bad_options_in_one_line(home: Path, args: list[str], field_name: str) -> None:
    r = run_cli("serve", *args, timeout=30)
    assert r.returncode == 2 and field_name in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_healthz_is_open_and_everything_else_needs_a_login(portal: Server) -> None:
    assert portal.get("/healthz").json() == {"status": "ok"}
    for path in ("/jobs", "/usage", "/quotas", "/metrics"):
        assert portal.get(path, as_json=True).status == 401, path
    r = portal.get("/usage?by=month")
    assert r.status == 303 and r.headers["location"] == "/login?next=/usage%3Fby%3Dmonth"
    assert portal.get("/jobs", token="sl_not-a-token", as_json=True).status == 401
    assert portal.get("/jobs", token=portal.tokens["me"], as_json=True).status == 200
    # An open redirect is not possible through the login form.
    r = portal.post("/login", {"token": portal.tokens["me"], "next": "//evil.example/x"})
    assert r.status == 303 and r.headers["location"] == "/jobs"
    assert portal.post("/login", {"token": "sl_wrong"}).status == 401


def test_revoking_a_token_ends_its_bearer_use_and_its_sessions(portal: Server) -> None:
    cookie, _ = session(portal, portal.tokens["bob"])
    assert portal.get("/jobs", headers={"Cookie": cookie}, as_json=True).status == 200
    tid = next(t["id"] for t in json.loads(run_cli("serve", "token", "list", "--json").stdout) if t["user"] == "bob")
    assert run_cli("serve", "token", "revoke", tid).returncode == 0
    assert portal.get("/jobs", headers={"Cookie": cookie}, as_json=True).status == 401
    assert portal.get("/jobs", token=portal.tokens["bob"], as_json=True).status == 401
    assert run_cli("serve", "token", "revoke", tid).returncode == 2
    forged = cookie[:-3] + ("AAA" if not cookie.endswith("AAA") else "BBB")
    assert portal.get("/jobs", headers={"Cookie": forged}, as_json=True).status == 401


def test_a_user_sees_only_their_own_jobs_and_admins_see_all(portal: Server) -> None:
    job = submit("-A", "lab", "--name", "mine", "--", "sh", "-c", "echo line-one; echo oops >&2")
    assert run_cli("wait", "--timeout", "60", job).returncode == 0
    mine = portal.get("/jobs", token=portal.tokens["me"], as_json=True).json()
    assert [(j["id"], j["name"], j["state"]) for j in mine] == [(job, "mine", "COMPLETED")]
    assert portal.get("/jobs", token=portal.tokens["bob"], as_json=True).json() == []
    assert portal.get(f"/jobs/{job}", token=portal.tokens["bob"], as_json=True).status == 404
    assert [j["id"] for j in portal.get("/jobs", token=portal.tokens["admin"], as_json=True).json()] == [job]
    detail = portal.get(f"/jobs/{job}", token=portal.tokens["me"], as_json=True).json()
    assert detail["job"]["account"] == "lab" and detail["tasks"][0]["exit_code"] == 0
    assert "echo line-one" in detail["script"] and detail["spec"]["resources"]["nodes"] == 1
    assert detail["usage"] and detail["usage"][0]["state"] == "COMPLETED"
    out = portal.get(f"/jobs/{job}/log?stream=stdout&offset=0", token=portal.tokens["me"]).json()
    assert out == {"text": "line-one\n", "offset": 9, "done": True}
    assert portal.get(f"/jobs/{job}/log?stream=stdout&offset=5", token=portal.tokens["me"]).json()["text"] == "one\n"
    assert portal.get(f"/jobs/{job}/log?stream=stderr", token=portal.tokens["me"]).json()["text"] == "oops\n"
    assert portal.get(f"/jobs/{job}/log?stream=stdout", token=portal.tokens["bob"]).status == 404


def test_html_escapes_job_names(portal: Server) -> None:
    name = "<img src=x onerror=alert(1)>"
    job = submit("--name", name, "--", "true")
    page = portal.get("/jobs", token=portal.tokens["me"]).text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and name not in page
    detail = portal.get(f"/jobs/{job}", token=portal.tokens["me"])
    assert name not in detail.text and "script-src 'self'" in detail.headers["content-security-policy"]


def test_cancel_needs_the_csrf_token_and_this_origin(portal: Server) -> None:
    job = submit("--", "sleep", "300")
    wait_until(lambda: state_of(job) == "RUNNING", "the job to run", timeout=60)
    cookie, csrf = session(portal, portal.tokens["me"])
    path = f"/jobs/{job}/cancel"
    assert portal.post(path, {}, headers={"Cookie": cookie}).status == 403
    assert portal.post(path, {"csrf": "x" * 43}, headers={"Cookie": cookie}).status == 403
    evil = {"Cookie": cookie, "Origin": "http://127.0.0.1:1"}
    assert portal.post(path, {"csrf": csrf}, headers=evil).status == 403
    assert portal.post(path, {"csrf": csrf}, headers={"Cookie": cookie, "Sec-Fetch-Site": "cross-site"}).status == 403
    _, bobs_csrf = session(portal, portal.tokens["bob"])
    assert portal.post(path, {"csrf": bobs_csrf}, headers={"Cookie": cookie}).status == 403  # another session's
    assert portal.request("GET", path, headers={"Cookie": cookie}).status == 405  # never by GET
    assert state_of(job) == "RUNNING"
    assert portal.post(path, {"csrf": csrf}, token=portal.tokens["bob"], as_json=True).status == 404  # not bob's
    r = portal.post(path, {"csrf": csrf}, headers={"Cookie": cookie, "Origin": portal.url})
    assert r.status == 303 and r.headers["location"] == f"/jobs/{job}"
    wait_until(lambda: state_of(job) == "CANCELLED", "the job to be cancelled", timeout=60)


def test_only_admins_change_quotas_and_a_refusal_changes_nothing(portal: Server) -> None:
    me, admin = portal.tokens["me"], portal.tokens["admin"]
    form = {"account": "lab", "cpu_hours": "100", "accelerator_hours": "ascend:5"}
    r = portal.post("/quotas", form, token=me, as_json=True)
    assert r.status == 403 and "admin" in r.json()["error"]
    assert not (portal.home / "ledger.db").exists() or quotas_in_ledger() == []
    r = portal.post("/quotas", form, token=admin, as_json=True)
    assert r.status == 201, r.text
    qid = r.json()["id"]
    ledger = quotas_in_ledger()
    assert {(c["resource"], c["accelerator_kind"], c["limit"]) for c in ledger} == {
        ("cpu_hours", None, 100.0), ("accelerator_hours", "ascend", 5.0)}
    before = quotas_in_ledger()
    assert portal.post(f"/quotas/{qid}/delete", {}, token=me, as_json=True).status == 403
    assert portal.post("/quotas", {**form, "cpu_hours": "1"}, token=me, as_json=True).status == 403
    assert quotas_in_ledger() == before
    # Edit: the same scope and dates changes the limits of the same quota.
    assert portal.post("/quotas", {**form, "cpu_hours": "50"}, token=admin, as_json=True).json()["id"] == qid
    assert {c["limit"] for c in quotas_in_ledger() if c["resource"] == "cpu_hours"} == {50.0}
    # Bad input: one line naming the field, nothing written.
    bad = portal.post("/quotas", {"account": "lab", "cpu_hours": "lots"}, token=admin, as_json=True)
    assert bad.status == 400 and "cpu_hours" in bad.json()["error"]
    assert portal.post("/quotas", {"cpu_hours": "1"}, token=admin, as_json=True).status == 400
    assert len(quotas_in_ledger()) == 2
    listed = portal.get("/quotas", token=me, as_json=True).json()
    assert listed == []  # `me` has no job or usage in lab yet: not a member
    assert len(portal.get("/quotas", token=admin, as_json=True).json()) == 2
    assert portal.post(f"/quotas/{qid}/delete", {}, token=admin, as_json=True).json() == {"removed": 1}
    assert quotas_in_ledger() == []


def test_usage_shows_a_user_only_their_accounts(portal: Server) -> None:
    for account in ("lab", "other"):
        job = submit("-A", account, "--", "true")
        assert run_cli("wait", "--timeout", "60", job).returncode == 0
    assert portal.post("/quotas", {"account": "lab", "cpu_hours": "10"}, token=portal.tokens["admin"],
                       as_json=True).status == 201
    full = run_cli("usage", "--by", "account", "--json")
    assert {r["account"] for r in json.loads(full.stdout)} == {"lab", "other"}
    mine = portal.get("/usage?by=account", token=portal.tokens["me"], as_json=True).json()
    assert {r["account"] for r in mine["rows"]} == {"lab", "other"}  # both are accounts of my jobs
    assert [q["account"] for q in mine["quotas"]] == ["lab"] and mine["quotas"][0]["forecast"] is not None
    assert "near_quota" not in mine  # admin-only parts
    assert portal.get("/usage?by=account", token=portal.tokens["bob"], as_json=True).json()["rows"] == []
    bob_lab = issue("--user", "bob2", "--account", "lab")
    rows = portal.get("/usage?by=account,month", token=bob_lab, as_json=True).json()["rows"]
    assert {r["account"] for r in rows} == {"lab"}
    admin = portal.get("/usage?by=account", token=portal.tokens["admin"], as_json=True).json()
    assert admin["rows"] == json.loads(full.stdout) and "sync" in admin
    csv_text = portal.get("/usage?by=account&format=csv", token=portal.tokens["admin"]).text
    assert csv_text.splitlines()[0] == "account,jobs,cpu_hours,accelerator_hours,charge"
    assert portal.get("/usage?by=nonsense", token=portal.tokens["admin"], as_json=True).status == 400
    html = portal.get("/usage?by=account,month", token=portal.tokens["admin"]).text
    assert 'id="chart-data"' in html and "/static/echarts/echarts.min.js" in html
    assert portal.get("/static/echarts/echarts.min.js").status == 200


def _records(n_accounts: int = 3) -> list[Any]:
    from suanli.accounting.records import UsageRecord

    now = time.time()
    out = []
    for i in range(60):
        kind = ("ascend", "nvidia", None)[i % 3]
        end = now - 3600 * (i * 7 % 200)
        out.append(UsageRecord(
            record_id=f"c{i % 2}|{i}|-1|0", cluster=f"c{i % 2}", backend="slurm", native_id=str(1000 + i),
            job_id=None, array_task=None, attempt=0, user="u", account=f"acct{i % n_accounts}",
            partition=("cpu", "npu")[i % 2], adapter=None, accelerator_kind=kind, nodes=1, cpus=4,
            accelerators=2 if kind else 0, submit_time=end - 7200, start_time=end - 3600, end_time=end,
            elapsed_s=3600.0, state="COMPLETED", cpu_seconds=4 * 3600.0 + i,
            accelerator_seconds=7200.0 + i if kind else 0.0, charge=1.5 * i, total_cpu_s=None, source="sacct"))
    return out


def test_metrics_equal_usage_json_for_the_same_window(portal: Server) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from suanli.accounting.ledger import Ledger

    ledger = Ledger(None, portal.home)
    ledger.record(_records())
    ledger.close()
    assert portal.post("/quotas", {"account": "acct1", "cpu_hours": "100", "accelerator_hours": "nvidia:5"},
                       token=portal.tokens["admin"], as_json=True).status == 201
    job = submit("-A", "acct0", "--", "true")
    assert run_cli("wait", "--timeout", "60", job).returncode == 0
    assert portal.get("/metrics", token=portal.tokens["me"]).status == 403  # admins' (Prometheus' token)
    by = "cluster,account,partition,accelerator"
    for window in ([], ["--since", "2d", "--until", "1h"]):
        query = ""
        if window:
            since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 2 * 86400))
            until = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 3600))
            window = ["--since", since, "--until", until]
            query = "?" + urllib.parse.urlencode({"since": since, "until": until})
        r = portal.get("/metrics" + query, token=portal.tokens["admin"])
        assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
        fams = {f.name: f for f in text_string_to_metric_families(r.text)}
        cli = json.loads(run_cli("usage", "--by", by, "--json", *window).stdout)
        assert len(cli) > 3
        for metric, key in (("cpu_hours", "cpu_hours"), ("accelerator_hours", "accelerator_hours"),
                            ("charge", "charge"), ("jobs", "jobs")):
            got = {(s.labels["cluster"], s.labels["account"], s.labels["partition"], s.labels["accelerator_kind"]):
                   s.value for s in fams[f"suanli_usage_{metric}"].samples if s.name.endswith("_total")}
            want = {(r["cluster"], r["account"], r["partition"] or "", r["accelerator"] or ""): float(r[key])
                    for r in cli}
            assert got.keys() == want.keys(), metric
            for k, v in want.items():
                assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-12), (metric, k)
    checks = quotas_in_ledger()
    for gauge in ("limit", "used", "reserved", "remaining"):
        gauges = {(s.labels["account"], s.labels["resource"], s.labels["accelerator_kind"]): s.value
                  for s in fams[f"suanli_quota_{gauge}"].samples}
        assert gauges == {(c["account"], c["resource"], c["accelerator_kind"] or ""): pytest.approx(c[gauge])
                          for c in checks}
    states = {(s.labels["cluster"], s.labels["state"]): s.value for s in fams["suanli_jobs"].samples}
    assert states == {("local", "COMPLETED"): 1.0}
    lag = {s.labels["cluster"]: s.value for s in fams["suanli_ledger_sync_lag_seconds"].samples}
    assert lag == {}  # never synced
    assert run_cli("accounting", "sync", "-c", "local").returncode == 0
    text = portal.get("/metrics", token=portal.tokens["admin"]).text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    lag = {s.labels["cluster"]: s.value for s in fams["suanli_ledger_sync_lag_seconds"].samples}
    assert set(lag) == {"local"} and 0 <= lag["local"] < 60


def test_proxy_header_is_taken_only_from_a_trusted_proxy(home: Path) -> None:
    job = submit("--", "sleep", "300")
    me = login()
    for server in start_server(home, "--proxy-header", "X-Remote-User", "--trusted-proxy", "10.1.2.3"):
        r = server.get("/jobs", headers={"X-Remote-User": me}, as_json=True)
        assert r.status == 401  # loopback is not the configured proxy: the header is ignored
    for server in start_server(home, "--proxy-header", "X-Remote-User", "--trusted-proxy", "127.0.0.0/8",
                               "--proxy-admin", "boss"):
        assert [j["id"] for j in server.get("/jobs", headers={"X-Remote-User": me}, as_json=True).json()] == [job]
        assert server.get("/jobs", headers={"X-Remote-User": "eve"}, as_json=True).json() == []
        assert server.get("/metrics", headers={"X-Remote-User": "boss"}).status == 200
        assert server.get("/metrics", headers={"X-Remote-User": me}).status == 403
        # Ambient credentials: a POST needs the CSRF token bound to the CSRF cookie the portal set.
        page = server.get("/jobs", headers={"X-Remote-User": me})
        csrf_cookie = page.headers["set-cookie"].split(";")[0]
        csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
        path = f"/jobs/{job}/cancel"
        assert server.post(path, {}, headers={"X-Remote-User": me, "Cookie": csrf_cookie}).status == 403
        assert server.post(path, {"csrf": csrf}, headers={"X-Remote-User": me}).status == 403  # no cookie
        assert state_of(job) != "CANCELLED"
        r = server.post(path, {"csrf": csrf}, headers={"X-Remote-User": me, "Cookie": csrf_cookie})
        assert r.status == 303
        wait_until(lambda: state_of(job) == "CANCELLED", "the job to be cancelled", timeout=60)


def test_pages_render_for_a_user_and_an_admin(portal: Server) -> None:
    job = submit("-A", "lab", "--", "true")
    assert run_cli("wait", "--timeout", "60", job).returncode == 0
    for who in ("me", "admin"):
        for path in ("/jobs", f"/jobs/{job}", "/usage", "/usage?by=user,day", "/quotas", "/jobs?all=1"):
            r = portal.get(path, token=portal.tokens[who])
            assert r.status == 200 and r.headers["content-type"].startswith("text/html"), (who, path, r.text[-300:])
    conn = sqlite3.connect(portal.home / "portal.db")
    assert conn.execute("SELECT COUNT(*) FROM tokens").fetchone()[0] == 3
    conn.close()


@pytest.mark.slurm
def test_apply_to_slurm_dry_run_is_the_cli_plan_and_admin_only(slurm: Any, home: Path) -> None:
    admin, me = issue("--user", "boss", "--admin"), issue("--user", login())
    assert run_cli("quota", "set", "-A", "acct-a", "--cluster", "testslurm", "--cpu-hours", "40").returncode == 0
    cli = run_cli("quota", "apply", "--cluster", "testslurm", "--dry-run", "--json")
    assert cli.returncode == 0, cli.stderr
    for server in start_server(home):
        form = {"cluster": "testslurm", "dry_run": "1"}
        assert server.post("/quotas/apply", form, token=me, as_json=True).status == 403
        r = server.post("/quotas/apply", form, token=admin, as_json=True)
        assert r.status == 200, r.text
        assert r.json() == json.loads(cli.stdout) and r.json()["commands"]
        assert server.post("/quotas/apply", {"cluster": ""}, token=admin, as_json=True).status == 400


def test_grafana_dashboard_queries_only_metrics_the_portal_exports() -> None:
    import re

    from suanli.portal.metrics import METRICS

    dash = json.loads((REPO / "examples" / "grafana-suanli.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exported = {m + ("_total" if m.startswith("suanli_usage_") else "") for m in METRICS}
    used = {m for e in exprs for m in re.findall(r"suanli_[a-z_]+", e)}
    assert used and used <= exported, used - exported
