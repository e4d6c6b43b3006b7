"""The API docs page in a real headless Chromium: it renders the create-database operation with
its request body from the server alone (no token, no network beyond localhost)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.server import ServerProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

# Everything but this machine is unreachable: names do not resolve and any proxy-able request
# goes to a closed port.
_OFFLINE = [
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1;localhost",
]


def _chromium(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # we are root here
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={home / 'profile'}",
        "--window-size=1280,2400",
        "--virtual-time-budget=15000",
        *_OFFLINE,
        *args,
    ]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
    )


async def test_swagger_page_renders_the_create_body_offline_without_a_token(
    server: ServerProcess, scratch_dir: Path
) -> None:
    url = f"{server.url}/schema#/databases/create_database"
    dom = await asyncio.to_thread(_chromium, "--dump-dom", url, home=scratch_dir)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "swagger-ui" in html and "Create a database" in html, html[:2000]
    # The operation is expanded (deep link) and shows its request body's example.
    assert "change-me-please" in html, html[-4000:]
    assert "DatabaseRequest" in html
    shot = scratch_dir / "swagger.png"
    taken = await asyncio.to_thread(_chromium, f"--screenshot={shot}", url, home=scratch_dir)
    assert taken.returncode == 0, taken.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 50_000  # a rendered page, not a blank one
