"""The portal in a real browser: Debian's chromium, headless, driven by Selenium through the system chromedriver
(no browser download). Logs in both ways, follows a log, cancels, creates a quota as admin and is refused as a
user, renders a hostile job name as text, refuses a cross-site POST; the screenshots in docs/ come from here."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, run_cli, wait_until
from test_portal import Server, issue, login, quotas_in_ledger, start_server, state_of, submit

pytest.importorskip("starlette")
pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
DOCS = REPO / "docs"
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        msg = "no chromium/chromedriver: apt-get install chromium chromium-driver (scripts/install.sh does)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + "; under CI this is a failure, not a skip")
        pytest.skip(msg)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("selenium is missing: pip install -e '.[portal]'")
        pytest.skip("selenium is missing: pip install -e '.[portal]'")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--lang=en-US"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    d.set_page_load_timeout(30)
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture
def browser(driver: Any) -> Iterator[Any]:
    """The shared browser with no cookies and no extra headers left by an earlier test."""
    yield driver
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
    driver.delete_all_cookies()


@pytest.fixture
def portal(home: Path) -> Iterator[Server]:
    tokens = {"me": issue("--user", login()), "admin": issue("--user", "boss", "--admin")}
    for server in start_server(home):
        server.tokens = tokens
        yield server


def by_css(d: Any, css: str, timeout: float = 20) -> Any:
    from selenium.webdriver.common.by import By

    return wait_until(lambda: d.find_elements(By.CSS_SELECTOR, css), f"element {css}", timeout=timeout)[0]


def form_login(d: Any, server: Server, token: str, start: str = "/jobs") -> None:
    d.get(server.url + start)
    wait_until(lambda: "/login" in d.current_url, "the login page", timeout=20)
    by_css(d, "#token").send_keys(token)
    by_css(d, "#login-button").click()
    wait_until(lambda: d.current_url.endswith(start), f"{start} after logging in", timeout=20)


def no_alert(d: Any) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        d.switch_to.alert  # noqa: B018
    except NoAlertPresentException:
        return True
    return False


def shot(d: Any, name: str) -> None:
    DOCS.mkdir(exist_ok=True)
    assert d.save_screenshot(str(DOCS / name))


def test_browser_login_form_my_jobs_escaped_name_live_log_and_cancel(portal: Server, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    done = submit("-A", "lab", "--name", XSS, "--", "true")
    assert run_cli("wait", "--timeout", "60", done).returncode == 0
    job = submit("-A", "lab", "--name", "train", "--", "sh", "-c",
                 "for i in 1 2 3; do echo tick-$i; sleep 0.5; done; sleep 300")
    form_login(browser, portal, portal.tokens["me"])
    assert by_css(browser, "#who").text == login()
    names = {e.get_attribute("data-id"): e.find_element(By.CSS_SELECTOR, "td.name").text
             for e in browser.find_elements(By.CSS_SELECTOR, "#jobs tr.job")}
    assert names == {done: XSS, job: "train"}  # the hostile name is text
    assert browser.find_elements(By.CSS_SELECTOR, "#jobs img") == [] and no_alert(browser)
    shot(browser, "portal-jobs.png")
    browser.find_element(By.LINK_TEXT, job).click()
    wait_until(lambda: "tick-3" in by_css(browser, "#log-stdout").text, "the live log to show tick-3", timeout=30)
    assert by_css(browser, "#state-0").text == "RUNNING"
    shot(browser, "portal-job.png")
    by_css(browser, "#cancel").click()
    wait_until(lambda: browser.current_url.endswith(f"/jobs/{job}"), "the job page after cancel", timeout=20)

    def cancelled() -> bool:
        browser.refresh()
        return bool(by_css(browser, "#state-0").text == "CANCELLED")

    wait_until(cancelled, "the page to show CANCELLED", timeout=60)
    assert state_of(job) == "CANCELLED"
    browser.get(portal.url + f"/jobs/{done}")
    assert by_css(browser, "#job-name").text == XSS and no_alert(browser)
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []


def test_browser_bearer_token_header_logs_in_without_the_form(portal: Server, browser: Any) -> None:
    job = submit("--", "true")
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                            {"headers": {"Authorization": f"Bearer {portal.tokens['me']}"}})
    browser.get(portal.url + "/jobs")
    assert browser.current_url.endswith("/jobs")
    assert by_css(browser, "#who").text == login()
    assert by_css(browser, f'#jobs tr.job[data-id="{job}"]')
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
    browser.get(portal.url + "/jobs")
    wait_until(lambda: "/login" in browser.current_url, "the login page once the header is gone", timeout=20)


def _book_usage(home: Path) -> None:
    from test_portal import _records

    from suanli.accounting.ledger import Ledger

    ledger = Ledger(None, home)
    ledger.record(_records())
    ledger.close()


def test_browser_admin_creates_a_quota_and_a_user_is_refused_with_nothing_changed(portal: Server,
                                                                                  browser: Any) -> None:
    from selenium.webdriver.common.by import By

    _book_usage(portal.home)
    form_login(browser, portal, portal.tokens["admin"], "/quotas")
    by_css(browser, "#q-account").send_keys("acct1")
    by_css(browser, "#q-cpu").send_keys("120")
    by_css(browser, "#q-acc").send_keys("nvidia:40")
    by_css(browser, "#q-save").click()
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#quotas tr.quota-row"), "the new quota's rows",
               timeout=20)
    ledger = quotas_in_ledger()
    assert {(c["account"], c["resource"], c["limit"]) for c in ledger} == {
        ("acct1", "cpu_hours", 120.0), ("acct1", "accelerator_hours", 40.0)}
    shot(browser, "portal-quotas.png")
    browser.get(portal.url + "/usage?by=account,day&since=30d")
    wait_until(lambda: by_css(browser, "#chart").get_attribute("data-ready") == "1", "the ECharts chart", timeout=20)
    assert browser.find_elements(By.CSS_SELECTOR, "#chart canvas")
    shot(browser, "portal-usage.png")
    by_css(browser, "header button").click()  # log out
    wait_until(lambda: "/login" in browser.current_url, "the login page after logging out", timeout=20)
    form_login(browser, portal, portal.tokens["me"], "/quotas")
    by_css(browser, "#q-account").send_keys("acct1")
    by_css(browser, "#q-cpu").send_keys("999999")
    by_css(browser, "#q-save").click()
    assert "only admins" in by_css(browser, "#error").text
    assert "403" in browser.title
    assert quotas_in_ledger() == ledger


class _Evil(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def test_browser_cross_site_post_without_the_token_is_refused(portal: Server, browser: Any, tmp_path: Path) -> None:
    job = submit("--", "sleep", "300")
    wait_until(lambda: state_of(job) == "RUNNING", "the job to run", timeout=60)
    form_login(browser, portal, portal.tokens["me"])
    site = tmp_path / "evil"
    site.mkdir()
    (site / "index.html").write_text(
        f'<form method="post" action="{portal.url}/jobs/{job}/cancel"><input name="x" value="1"></form>'
        "<script>document.forms[0].submit()</script>")
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                           lambda *a: _Evil(*a, directory=str(site)))  # type: ignore[misc]
    thread = threading.Thread(target=evil.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{evil.server_address[1]}/index.html")
        wait_until(lambda: browser.current_url.startswith(portal.url), "the forged POST to reach the portal",
                   timeout=20)
        body = by_css(browser, "body").text
        assert "forbidden" in body, body
    finally:
        evil.shutdown()
    assert state_of(job) == "RUNNING"
    r = run_cli("status", "--json")
    assert [j["state"] for j in json.loads(r.stdout) if j["id"] == job] == ["RUNNING"]
