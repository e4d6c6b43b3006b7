"""The dashboard in a real headless Chromium (Debian's chromium driven through chromium-driver):
log in through the form, open a database, follow a running backup's log live until it
completes, see the backup on the catalog's timeline. And, over plain HTTP, what the session
cookie may and may not do."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import create_and_wait, database_body
from tests.support.data import backup, posix, write_rows
from tests.support.server import ServerProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None, reason="chromium and chromium-driver are needed"
)
# Everything but this machine is unreachable: names do not resolve and any proxy-able request
# goes to a closed port.
_OFFLINE = [
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1;localhost",
]
# Colours the stylesheet gives a completed badge and the recovery window bar.
_COMPLETED_BADGE = (0xDC, 0xF3, 0xE2)
_WINDOW_BAR = (0x7C, 0xC8, 0x91)
# Set to a path to keep the database page's screenshot (the README's picture).
_KEEP_SCREENSHOT = os.environ.get("DASHBOARD_SCREENSHOT")


def _pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB rows of an 8-bit, non-interlaced RGB or RGBA PNG."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    offset, idat, header = 8, b"", b""
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind, data = png[offset + 4 : offset + 8], png[offset + 8 : offset + 8 + length]
        header = data if kind == b"IHDR" else header
        idat += data if kind == b"IDAT" else b""
        offset += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    step = 3 if colour == 2 else 4
    raw, stride, rows = zlib.decompress(idat), width * step, []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            left = line[i - step] if i >= step else 0
            up, corner = previous[i], previous[i - step] if i >= step else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                guess = left + up - corner
                near = min(
                    (abs(guess - left), 0, left),
                    (abs(guess - up), 1, up),
                    (abs(guess - corner), 2, corner),
                )
                line[i] = (line[i] + near[2]) & 0xFF
        rows.append(bytes(b for x in range(width) for b in line[x * step : x * step + 3]))
        previous = line
    return width, height, rows


def _count(png: bytes, colour: tuple[int, int, int]) -> int:
    """How many pixels of the screenshot are exactly `colour`."""
    _, _, rows = _pixels(png)
    wanted = bytes(colour)
    return sum(1 for row in rows for x in range(0, len(row), 3) if row[x : x + 3] == wanted)


@pytest.fixture
def browser(scratch_dir: Path) -> Iterator[Any]:
    """A headless Chromium with no network beyond this machine, stopped afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # we are root here
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={scratch_dir / 'profile'}",
        "--window-size=1280,1100",
        *_OFFLINE,
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER, log_output=str(scratch_dir / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: Any, timeout: float, what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message=what)
    except TimeoutException:
        print(driver.page_source[-6000:])
        print(driver.get_log("browser"))
        raise


@needs_browser
async def test_log_in_open_a_database_and_follow_a_backup_live(
    browser: Any, api: httpx.AsyncClient, server: ServerProcess, scratch_dir: Path
) -> None:
    """Through the form (token in an HttpOnly cookie, never in a URL), the database page, a
    running backup's log followed over the event stream until it completes, and the new set on
    the recovery-window timeline, each page checked in the DOM and its screenshot."""
    from selenium.webdriver.common.by import By

    database = await create_and_wait(
        api, database_body("shop", backup_config=posix(scratch_dir / "repo"))
    )
    await write_rows(database, 1, 20_000)

    browser.get(f"{server.url}/ui")
    assert browser.current_url == f"{server.url}/ui/login"  # sent to log in first
    browser.find_element(By.ID, "token").send_keys("not-a-token")
    browser.find_element(By.ID, "login").click()
    # The click returns before the answer to the form is loaded.
    _wait(browser, lambda d: d.find_elements(By.ID, "login-error"), 30, "the login error")
    assert browser.find_element(By.ID, "login-error").text == "invalid token"
    assert browser.get_cookie("cp_token") is None
    browser.find_element(By.ID, "token").send_keys(server.token)
    browser.find_element(By.ID, "login").click()
    _wait(browser, lambda d: d.current_url == f"{server.url}/ui", 30, "the databases page")
    cookie = browser.get_cookie("cp_token")
    assert cookie is not None and cookie["value"] == server.token
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert browser.execute_script("return document.cookie") == ""  # no script can read it

    browser.find_element(By.LINK_TEXT, "shop").click()
    _wait(browser, lambda d: d.current_url.endswith("/ui/databases/shop"), 30, "database page")
    instances = browser.find_element(By.ID, "instances").text
    assert "shop-n1" in instances and "primary" in instances and "available" in instances
    assert "none yet" in browser.find_element(By.ID, "catalog-n1").text

    started = await api.post("/v1/databases/shop/nodes/n1/backups", json={"type": "full"})
    assert started.status_code == 202, started.text
    task_id = started.json()["task"]["task_id"]
    browser.get(f"{server.url}/ui/databases/shop/tasks/{task_id}")
    log = browser.find_element(By.ID, "log")
    assert log.get_attribute("data-follow") == "true"  # loaded while the backup ran
    _wait(
        browser,
        lambda d: d.find_element(By.ID, "task-status").get_attribute("data-status") == "completed",
        180,
        "the backup to complete on the page",
    )
    _wait(browser, lambda d: d.find_element(By.ID, "log-state").text == "complete", 30, "the end")
    lines = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#log li.entry")]
    live = browser.find_elements(By.CSS_SELECTOR, "#log li.entry.live")
    assert live, "no entry arrived over the event stream"
    assert any("new backup label" in line for line in lines), lines
    ids = [
        int(e.get_attribute("data-id")) for e in browser.find_elements(By.CSS_SELECTOR, "#log li")
    ]
    assert ids == sorted(set(ids))  # every entry once, in order, across page and stream
    steps = browser.find_elements(By.CSS_SELECTOR, "#steps .step-status .badge")
    assert steps and {s.text for s in steps} == {"completed"}
    assert server.token not in browser.current_url and server.token not in browser.page_source
    shot = browser.get_screenshot_as_png()
    width, height, _ = _pixels(shot)
    assert (width, height) == (1280, 1100) or width >= 1000
    assert _count(shot, _COMPLETED_BADGE) > 500  # the task's and its steps' green badges

    await write_rows(database, 20_001, 5_000)
    await backup(api, "shop", "n1", type="incr", annotations={"reason": "before release"})
    browser.get(f"{server.url}/ui/databases/shop")
    catalog = browser.find_element(By.ID, "catalog-n1")
    assert len(catalog.find_elements(By.CSS_SELECTOR, "svg.timeline rect.backup-full")) == 1
    assert len(catalog.find_elements(By.CSS_SELECTOR, "svg.timeline rect.backup-incr")) == 1
    [window] = catalog.find_elements(By.CSS_SELECTOR, "svg.timeline rect.window")
    assert "reason=before release" in catalog.text
    assert task_id[:8] in browser.find_element(By.ID, "tasks").text
    page = browser.get_screenshot_as_png()
    if _KEEP_SCREENSHOT:
        Path(_KEEP_SCREENSHOT).write_bytes(page)
    # The window bar is painted: much of its box is its colour (the backups' marks lie over
    # part of it), far more than its legend key. Its width is the window's share of an axis at
    # least a minute long, so it depends on how fast the test ran: compare it with its own box.
    box = window.size["width"] * window.size["height"]
    assert box > 1_000
    assert _count(page, _WINDOW_BAR) >= 0.4 * box


async def test_pages_need_a_session_and_a_wrong_token_gets_the_form_again(
    server: ServerProcess,
) -> None:
    """Without a session a page redirects to the form; a wrong token gets the form with 401 and
    no cookie; a right one gets an HttpOnly, SameSite=Strict cookie holding it."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as anonymous:
        for path in ("/ui", "/ui/databases/shop", f"/ui/databases/shop/tasks/{'0' * 32}"):
            answer = await anonymous.get(path)
            assert (answer.status_code, answer.headers["location"]) == (303, "/ui/login"), path
        wrong = await anonymous.post("/ui/login", data={"token": "not-a-token"})
        assert wrong.status_code == 401 and "invalid token" in wrong.text
        assert "set-cookie" not in wrong.headers
        right = await anonymous.post("/ui/login", data={"token": server.token})
        assert (right.status_code, right.headers["location"]) == (303, "/ui")
        cookie = right.headers["set-cookie"]
        assert cookie.startswith(f"cp_token={server.token};")
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/" in cookie
        out = await anonymous.post("/ui/logout")
        assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
        asset = await anonymous.get("/ui/static/dashboard.js")
        assert asset.status_code == 200 and "EventSource" in asset.text
        assert (await anonymous.get("/ui/static/secret")).status_code == 404


async def test_the_session_cookie_reads_but_never_writes(
    api: httpx.AsyncClient, server: ServerProcess
) -> None:
    """An admin's token in the cookie reads (pages, the API's GET routes) but cannot create,
    cancel or delete: only a bearer header can (a cookie rides along on other sites' forms)."""
    database = await create_and_wait(api, database_body("shop"))
    task_id = (await api.get("/v1/databases/shop/tasks")).json()["tasks"][0]["task_id"]
    session = {"Cookie": f"cp_token={server.token}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=30, headers=session) as browser:
        page = await browser.get("/ui/databases/shop")
        assert page.status_code == 200 and "shop-n1" in page.text
        assert "s3cret-pass" not in page.text  # the database view hides secrets
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert (await browser.get("/v1/databases")).json()["databases"][0]["id"] == "shop"
        missing = await browser.get("/ui/databases/nope")
        assert missing.status_code == 404 and "database nope" in missing.text
        created = await browser.post("/v1/databases", json=database_body("other"))
        assert created.status_code == 401, created.text
        deleted = await browser.delete("/v1/databases/shop")
        assert deleted.status_code == 401, deleted.text
        canceled = await browser.get(f"/v1/databases/shop/tasks/{task_id}/cancel")
        assert canceled.status_code == 403 and "dashboard session" in canceled.json()["message"]
        forged = await browser.get("/ui", headers={"Cookie": "cp_token=forged"})
        assert forged.status_code == 303
    assert (await api.get("/v1/databases")).json()["databases"][0]["state"] == database["state"]
    assert [d["id"] for d in (await api.get("/v1/databases")).json()["databases"]] == ["shop"]
