"""The dashboard (`GET /` on `serve --listen`): its JSON API read directly, and the page itself
in a real headless Chromium driven through its ChromeDriver (Debian's packages, installed by
scripts/test.sh). A missing browser or driver fails these tests: they never skip.

With GITFLEET_DASHBOARD_SCREENSHOT=FILE the browser test also saves the page there
while a transfer runs (docs/dashboard.png was made that way)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import pytest
from conftest import Servers, clean_env, gitfleet_bin, serving

TOKEN = "dashboard-test-token"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def request(
    port: int, path: str, method: str = "GET", token: Optional[str] = None
) -> Tuple[int, Dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            body = reply.read()
            status, got = reply.status, dict(reply.headers)
    except urllib.error.HTTPError as e:
        body, status, got = e.read(), e.code, dict(e.headers)
    try:
        return status, got, json.loads(body)
    except ValueError:
        return status, got, body.decode()


def mirror(root: pathlib.Path, *urls: str) -> "subprocess.CompletedProcess[bytes]":
    return subprocess.run(
        [gitfleet_bin(), "--root", str(root), "mirror", *urls],
        env=clean_env(), capture_output=True, timeout=300,
    )


def test_the_api_pages_by_cursor_filters_and_acts_only_with_the_token(
    servers: Servers, tmp_path: pathlib.Path
) -> None:
    root = tmp_path / "root"
    good = [servers.git("alpha.git"), servers.http("beta.git"), servers.git("empty.git"),
            servers.git("org-a/utils.git")]
    with serving(root, "--retries", "0", env=clean_env(GITFLEET_LISTEN_TOKEN=TOKEN)) as port:
        assert mirror(root, *good).returncode == 0
        assert mirror(root, servers.git("absent.git")).returncode == 1

        status, headers, summary = request(port, "/api/summary")
        assert status == 200
        assert summary["mode"] == "serve" and summary["actions"] is True
        assert summary["total"] == 5
        assert summary["by_status"] == {"queued": 0, "cloning": 0, "completed": 4, "failed": 1}
        assert summary["by_freshness"]["fresh"] == 4 and summary["by_freshness"]["error"] == 1

        # Pages follow their cursor: every task once, in the order they were tracked.
        seen = []
        path = "/api/tasks?limit=2"
        while True:
            status, _, page = request(port, path)
            assert status == 200 and page["matched"] == 5
            assert len(page["tasks"]) <= 2
            seen += [t["url"] for t in page["tasks"]]
            if page["next"] is None:
                break
            path = f"/api/tasks?limit=2&cursor={page['next']}"
        assert seen == [*good, servers.git("absent.git")]

        _, _, failed = request(port, "/api/tasks?status=failed")
        assert [t["error_code"] for t in failed["tasks"]] == ["not_found"]
        assert failed["tasks"][0]["freshness"] == "error"
        _, _, found = request(port, "/api/tasks?q=UTILS")
        assert [t["url"] for t in found["tasks"]] == [servers.git("org-a/utils.git")]
        assert found["tasks"][0]["last_sync"]["disk_bytes"] > 0
        assert summary["disk_bytes"] >= found["tasks"][0]["last_sync"]["disk_bytes"]
        status, _, why = request(port, "/api/tasks?freshness=ripe")
        assert status == 400 and "ripe" in why["error"]

        # Actions need the token; the page is served with a policy that runs only its script.
        task = failed["tasks"][0]["id"]
        assert request(port, f"/api/tasks/{task}/sync", "POST")[0] == 401
        assert request(port, f"/api/tasks/{task}/sync", "POST", token="wrong")[0] == 401
        assert request(port, "/api/tasks/0000000000000000/sync", "POST", token=TOKEN)[0] == 404
        status, _, done = request(port, f"/api/tasks/{task}/sync", "POST", token=TOKEN)
        assert status == 202 and done["status"] == "accepted", done
        status, _, done = request(port, f"/api/tasks/{task}/resume", "POST", token=TOKEN)
        assert status == 202 and done["status"] == "nothing to do", done
        status, headers, page = request(port, "/")
        assert status == 200 and "<title>gitfleet</title>" in page
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "unsafe-inline" not in headers["content-security-policy"]

    # Without a token the dashboard is read-only.
    with serving(root) as port:
        _, _, summary = request(port, "/api/summary")
        assert summary["actions"] is False
        status, _, why = request(port, f"/api/tasks/{task}/sync", "POST", token=TOKEN)
        assert status == 403 and "read-only" in why["error"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    for program in (CHROMIUM, CHROMEDRIVER):
        if not os.access(program, os.X_OK):
            raise RuntimeError(
                f"{program} is missing: scripts/test.sh installs Debian's chromium and "
                "chromium-driver"
            )
    # Nothing is downloaded: the browser and its driver are the ones named here.
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except Exception as e:  # the page is changing under the check: look again
            got, last = None, e
        else:
            last = None
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what} ({last})"
        time.sleep(0.05)


def test_the_page_shows_progress_failures_and_filters(
    servers: Servers, tmp_path: pathlib.Path, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    root = tmp_path / "root"
    with serving(root, "--retries", "0", env=clean_env(GITFLEET_LISTEN_TOKEN=TOKEN)) as port:
        assert mirror(root, servers.git("alpha.git"), servers.http("beta.git")).returncode == 0
        browser.get(f"http://127.0.0.1:{port}/")
        wait("the page to go live", lambda: browser.find_element(By.ID, "live").text == "live")
        count = lambda name: browser.find_element(By.CSS_SELECTOR, f"#count-{name} .n").text
        wait("the counts", lambda: count("completed") == "2")

        # A failure shows with its code and message.
        absent = servers.git("absent.git")
        assert mirror(root, absent).returncode == 1
        wait("the failure to count", lambda: count("failed") == "1")
        row = wait("the failed row", lambda: [
            r for r in browser.find_elements(By.CSS_SELECTOR, "#tasks tbody tr")
            if r.find_element(By.CSS_SELECTOR, "td.url").text == absent
        ])[0]
        assert row.find_element(By.CSS_SELECTOR, "td.status").text == "failed"
        assert row.find_element(By.CSS_SELECTOR, "td.error code").text == "not_found"
        assert row.find_element(By.CSS_SELECTOR, "td.freshness").text == "error"
        assert row.find_element(By.CSS_SELECTOR, "td.size").text == "—"
        alpha = [r for r in browser.find_elements(By.CSS_SELECTOR, "#tasks tbody tr")
                 if r.find_element(By.CSS_SELECTOR, "td.url").text == servers.git("alpha.git")]
        assert re.fullmatch(r"\d+(\.\d)? (KiB|MiB)", alpha[0].find_element(
            By.CSS_SELECTOR, "td.size").text)

        # A clone throttled to 1 MiB/s: its progress bar moves, then it is done.
        big = servers.http_slow("big.git")
        clone = subprocess.Popen(
            [gitfleet_bin(), "--root", str(root), "mirror", big],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env(),
        )
        wait("the transfer to show",
                   lambda: browser.find_element(By.CSS_SELECTOR, "#running .transfer progress"))
        assert browser.find_element(By.CSS_SELECTOR, "#running .transfer .url").text == big
        values = set()
        screenshot = os.environ.get("GITFLEET_DASHBOARD_SCREENSHOT")

        def finished() -> bool:
            nonlocal screenshot
            transfers = browser.find_elements(By.CSS_SELECTOR, "#running .transfer progress")
            for transfer in transfers:
                value = int(float(transfer.get_attribute("value")))
                values.add(value)
                if screenshot and 40 <= value <= 80:
                    browser.save_screenshot(screenshot)
                    screenshot = None
            return not transfers

        wait("the transfer to end", finished, timeout=120)
        assert clone.wait(timeout=60) == 0
        moving = sorted(v for v in values if 0 < v < 100)
        assert len(moving) >= 2, f"the bar never moved: {sorted(values)}"
        wait("the counts to follow", lambda: count("completed") == "3")

        def urls() -> list:
            return [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#tasks tbody td.url")]

        wait("every repository listed", lambda: len(urls()) == 4)
        # Filtering: by text, by status (the select and the count cards), then all again.
        browser.find_element(By.ID, "filter-text").send_keys("BIG")
        wait("the text filter", lambda: urls() == [big])
        browser.find_element(By.ID, "filter-text").clear()
        browser.find_element(By.ID, "filter-text").send_keys(" ")
        wait("the text filter cleared", lambda: len(urls()) == 4)
        Select(browser.find_element(By.ID, "filter-status")).select_by_value("failed")
        wait("the status filter", lambda: urls() == [absent])
        assert browser.find_element(By.ID, "page-info").text == "1–1 of 1"
        Select(browser.find_element(By.ID, "filter-status")).select_by_value("")
        browser.find_element(By.ID, "count-completed").click()
        wait("the card filter", lambda: sorted(urls()) == sorted(
            [servers.git("alpha.git"), servers.http("beta.git"), big]))
        browser.find_element(By.ID, "count-completed").click()
        wait("every repository again", lambda: len(urls()) == 4)

        # Actions send the token the page was given.
        def sync_alpha() -> None:
            row = [r for r in browser.find_elements(By.CSS_SELECTOR, "#tasks tbody tr")
                   if r.find_element(By.CSS_SELECTOR, "td.url").text == servers.git("alpha.git")]
            row[0].find_element(By.CSS_SELECTOR, "button[data-action=sync]").click()

        def use_token(token: str) -> None:
            field = browser.find_element(By.ID, "token")
            field.clear()
            field.send_keys(token)
            browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
            wait("the token kept", lambda: "kept" in browser.find_element(By.ID, "message").text)

        use_token("not-the-token")
        sync_alpha()
        wait("the refusal", lambda: browser.find_element(By.ID, "message").text
             == "sync failed: missing or wrong bearer token")
        use_token(TOKEN)
        wait("the rows again", lambda: len(urls()) == 4)
        sync_alpha()
        wait("the sync accepted",
             lambda: browser.find_element(By.ID, "message").text == "sync: accepted")
