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
    # The page's console, printed when a test fails (pytest shows a failed test's output).
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        for entry in driver.get_log("browser"):
            print("browser console:", entry)
        driver.quit()


def wait(what: str, check: Callable[[], Any], timeout: float = 60,
         show: Optional[Callable[[], Any]] = None) -> Any:
    """`check()` once it is truthy; on a timeout, the failure says what `show()` saw."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, last = check(), None
        except Exception as e:  # the page is changing under the check: look again
            got, last = None, e
        if got:
            return got
        if time.monotonic() >= deadline:
            seen = show() if show is not None else last
            raise AssertionError(f"timed out waiting for {what} (saw: {seen!r})")
        time.sleep(0.05)


def test_the_page_shows_progress_failures_and_filters(
    servers: Servers, tmp_path: pathlib.Path, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    root = tmp_path / "root"
    # One permanent failure quarantines: the page can then resume it.
    args = ("--retries", "0", "--quarantine-after", "1")
    with serving(root, *args, env=clean_env(GITFLEET_LISTEN_TOKEN=TOKEN)) as port:
        assert mirror(root, servers.git("alpha.git"), servers.http("beta.git")).returncode == 0
        browser.get(f"http://127.0.0.1:{port}/")
        wait("the page to go live", lambda: browser.find_element(By.ID, "live").text == "live")
        count = lambda name: browser.find_element(By.CSS_SELECTOR, f"#count-{name} .n").text
        wait("the counts", lambda: count("completed") == "2")

        def rows() -> list:
            return browser.find_elements(By.CSS_SELECTOR, "#tasks tbody tr")

        def find_row(url: str) -> Any:
            return [
                r for r in rows() if r.find_element(By.CSS_SELECTOR, "td.url").text == url
            ][0]

        def in_row(url: str, selector: str, use: Callable[[Any], Any] = lambda e: e.text) -> Any:
            """`use` of the element `selector` in the row of `url`, looked up again whole when
            the table was redrawn meanwhile (live updates replace rows)."""
            return wait(f"{selector} in the row of {url}", lambda: (
                use(find_row(url).find_element(By.CSS_SELECTOR, selector)),
            ))[0]

        def cell(url: str, name: str) -> str:
            return in_row(url, f"td.{name}")

        def urls() -> list:
            return [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#tasks tbody td.url")]

        def message() -> str:
            return browser.find_element(By.ID, "message").text

        # A failure shows with its code and message.
        absent = servers.git("absent.git")
        assert mirror(root, absent).returncode == 1
        wait("the failure to count", lambda: count("failed") == "1",
             show=lambda: browser.find_element(By.ID, "status-cards").text + message())
        assert cell(absent, "status") == "failed"
        assert in_row(absent, "td.error code") == "not_found"
        assert "no such repository" in cell(absent, "error")
        assert cell(absent, "freshness") == "quarantined"
        assert cell(absent, "size") == "—"
        assert re.fullmatch(r"\d+(\.\d)? (KiB|MiB)", cell(servers.git("alpha.git"), "size"))

        # Someone else's text stays text: a repository named like markup shows as it is named,
        # and none of it becomes an element (the page's policy would not run it anyway).
        hostile_dir = tmp_path / '<img src=x onerror="document.title=1">'
        hostile_dir.mkdir()
        subprocess.run(["git", "init", "-q", "--bare", str(hostile_dir / "<em>x<em>.git")],
                       check=True, capture_output=True)
        assert mirror(root, str(hostile_dir / "<em>x<em>.git")).returncode == 0
        wait("the hostile repository to count", lambda: count("completed") == "3")
        hostile = wait("the hostile row", lambda: [
            u for u in urls() if "<em>x<em>" in u and '<img src=x onerror="document.title=1">' in u
        ])[0]
        assert browser.execute_script(
            "return document.querySelectorAll('#tasks img, #tasks em').length") == 0
        assert browser.title == "gitfleet"

        # Actions send the token the page was given.
        def act(url: str, action: str) -> None:
            in_row(url, f"button[data-action={action}]", lambda button: button.click())

        def use_token(token: str) -> None:
            field = browser.find_element(By.ID, "token")
            field.clear()
            field.send_keys(token)
            browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
            wait("the token kept", lambda: "kept" in message())

        use_token("not-the-token")
        act(servers.git("alpha.git"), "sync")
        wait("the refusal", lambda: message() == "sync failed: missing or wrong bearer token")
        use_token(TOKEN)

        # A clone throttled to 1 MiB/s, cancelled from the page.
        big = servers.http_slow("big.git")

        def clone_big() -> "subprocess.Popen[bytes]":
            return subprocess.Popen(
                [gitfleet_bin(), "--root", str(root), "mirror", big],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env(),
            )

        def transfers() -> list:
            return browser.find_elements(By.CSS_SELECTOR, "#running .transfer progress")

        cancelled = clone_big()
        wait("the transfer to show", transfers)
        assert browser.find_element(By.CSS_SELECTOR, "#running .transfer .url").text == big
        act(big, "cancel")
        wait("the cancel accepted", lambda: message() == "cancel: accepted")
        wait("the clone cancelled", lambda: find_row(big).find_element(
            By.CSS_SELECTOR, "td.error code").text == "cancelled", timeout=60)
        assert cancelled.wait(timeout=60) == 1
        wait("no transfer left", lambda: not transfers())

        # Cloned again: its progress bar moves, then it is done.
        clone = clone_big()
        wait("the transfer to show again", transfers)
        values = set()
        screenshot = os.environ.get("GITFLEET_DASHBOARD_SCREENSHOT")

        def finished() -> bool:
            nonlocal screenshot
            for transfer in transfers():
                value = int(float(transfer.get_attribute("value")))
                values.add(value)
                if screenshot and 40 <= value <= 80:
                    browser.save_screenshot(screenshot)
                    screenshot = None
            return not transfers()

        wait("the transfer to end", finished, timeout=120)
        assert clone.wait(timeout=60) == 0
        moving = sorted(v for v in values if 0 < v < 100)
        assert len(moving) >= 2, f"the bar never moved: {sorted(values)}"
        wait("the counts to follow", lambda: count("completed") == "4")
        wait("every repository listed", lambda: len(urls()) == 5)

        # Filtering: by text, by status (the select and the count cards), then all again.
        browser.find_element(By.ID, "filter-text").send_keys("BIG")
        wait("the text filter", lambda: urls() == [big])
        browser.find_element(By.ID, "filter-text").clear()
        browser.find_element(By.ID, "filter-text").send_keys(" ")
        wait("the text filter cleared", lambda: len(urls()) == 5)
        Select(browser.find_element(By.ID, "filter-status")).select_by_value("failed")
        wait("the status filter", lambda: urls() == [absent])
        assert browser.find_element(By.ID, "page-info").text == "1–1 of 1"
        Select(browser.find_element(By.ID, "filter-status")).select_by_value("")
        browser.find_element(By.ID, "count-completed").click()
        wait("the card filter", lambda: sorted(urls()) == sorted(
            [servers.git("alpha.git"), servers.http("beta.git"), hostile, big]))
        browser.find_element(By.ID, "count-completed").click()
        wait("every repository again", lambda: len(urls()) == 5)

        # Resume the quarantined repository: it is synced again at once (and fails again).
        def absent_finished() -> str:
            _, _, page = request(port, "/api/tasks?q=absent.git")
            return page["tasks"][0]["finished_at"]

        before = absent_finished()
        act(absent, "resume")
        wait("the resume accepted", lambda: message() == "resume: accepted")
        wait("a new attempt", lambda: absent_finished() != before, show=absent_finished)

    # Pages of two: Next and Previous move one page each and number the rows. Without a
    # token the page offers no action.
    with serving(root, *args, env=clean_env()) as port:
        browser.get(f"http://127.0.0.1:{port}/?limit=2")
        info = lambda: browser.find_element(By.ID, "page-info").text
        wait("the first page", lambda: info() == "1–2 of 5")
        assert browser.find_element(By.ID, "prev").get_attribute("disabled") is not None
        assert browser.find_element(By.ID, "token-form").get_attribute("hidden") is not None
        assert not browser.find_elements(By.CSS_SELECTOR, "#tasks button")
        first = urls()
        browser.find_element(By.ID, "next").click()
        wait("the second page", lambda: info() == "3–4 of 5")
        second = urls()
        browser.find_element(By.ID, "next").click()
        wait("the last page", lambda: info() == "5–5 of 5")
        assert browser.find_element(By.ID, "next").get_attribute("disabled") is not None
        last = urls()
        assert len(set(first + second + last)) == 5
        browser.find_element(By.ID, "prev").click()
        wait("back one page", lambda: info() == "3–4 of 5" and urls() == second)
