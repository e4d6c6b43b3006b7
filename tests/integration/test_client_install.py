"""The package alone is the API client and its CLI: a fresh virtualenv holding only its wheel
(no `server` extra) drives a real server, and the server's commands name what to install."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import create_and_wait, database_body
from tests.support.server import ServerProcess

REPO = Path(__file__).resolve().parents[2]
HINT = "pip install 'controlplane[server]'"
# The top-level modules of the `server` extra's distributions (pyproject.toml).
SERVER_MODULES = (
    "litestar",
    "asyncpg",
    "jinja2",
    "croniter",
    "docker",
    "uvicorn",
    "cryptography",
    "prometheus_client",
    "swagger_ui",
)


def run(argv: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run argv to completion (stdin closed), output captured as text."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
        timeout=300,
        **kwargs,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (
        f"{result.args} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result


class ClientInstall:
    """A virtualenv with the package installed from its wheel, base dependencies only."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.venv = root / "venv"
        self.config_home = root / "config"  # no user profile leaks in

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a user of this install: no server settings, no checkout."""
        drop = ("CONTROLPLANE_", "PYTHON", "VIRTUAL_ENV")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        return env | {"XDG_CONFIG_HOME": str(self.config_home)} | extra

    def python(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run([self.venv / "bin" / "python", *args], env=self.env(), cwd=self.root)

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """`controlplane ARGS…` through the console script the wheel installed."""
        return run([self.venv / "bin" / "controlplane", *args], env=self.env(**env), cwd=self.root)


@pytest.fixture(scope="module")
def client_install() -> Iterator[ClientInstall]:
    """The wheel built from a copy of the checkout (the build writes next to its sources),
    installed with `pip install <wheel>` into a fresh virtualenv in a 0755 directory."""
    root = Path(tempfile.mkdtemp(prefix="cpc-", dir="/tmp"))
    root.chmod(0o755)
    try:
        source = root / "source"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(REPO / name, source / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(REPO / "controlplane", source / "controlplane", ignore=ignore)
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        ok(run([*pip, "wheel", "-q", "--no-deps", "--wheel-dir", root / "dist", source]))
        [wheel] = (root / "dist").glob("controlplane-*.whl")
        install = ClientInstall(root)
        install.config_home.mkdir()
        ok(run([sys.executable, "-m", "venv", install.venv]))
        venv_pip = [install.venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check"]
        ok(run([*venv_pip, "install", "-q", wheel], cwd=root))
        yield install
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_client_install_has_none_of_the_server_modules(client_install: ClientInstall) -> None:
    """The wheel's base dependencies pull in none of the server's libraries, and the package
    imported is the installed one, not the checkout."""
    probe = (
        "import importlib.util, json, controlplane, controlplane.client, controlplane.cli\n"
        f"found = [m for m in {SERVER_MODULES!r} if importlib.util.find_spec(m)]\n"
        "print(json.dumps({'found': found, 'file': controlplane.__file__}))\n"
    )
    answer = json.loads(ok(client_install.python("-c", probe)).stdout)
    assert answer["found"] == []
    assert answer["file"].startswith(str(client_install.venv))
    refused = client_install.python("-c", "import litestar")
    assert refused.returncode == 1
    assert "No module named 'litestar'" in refused.stderr
    helped = ok(client_install.cli("--help"))
    assert "database" in helped.stdout
    assert "serve" in helped.stdout


async def test_client_commands_drive_a_real_server(
    client_install: ClientInstall, server: ServerProcess, api: httpx.AsyncClient
) -> None:
    """`database list`, `database get` and `status` (rendered with rich) from the client-only
    install answer with the server's data."""
    await create_and_wait(api, database_body("clientonly"))
    user = {"CONTROLPLANE_URL": server.url, "CONTROLPLANE_TOKEN": server.token}

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return ok(await asyncio.to_thread(client_install.cli, *args, **user))

    listed = json.loads((await cli("database", "list", "-o", "json")).stdout)
    assert [d["id"] for d in listed] == ["clientonly"]
    found = json.loads((await cli("database", "get", "clientonly", "-o", "json")).stdout)
    assert found["spec"]["database_name"] == "app"
    assert [i["node_name"] for i in found["instances"]] == ["n1"]
    table = (await cli("database", "list")).stdout
    assert "clientonly" in table
    report = (await cli("status", "clientonly")).stdout
    assert "clientonly" in report
    assert "n1" in report


def test_server_commands_say_what_to_install(client_install: ClientInstall) -> None:
    """`serve`, `migrate` and `token list` without the server extra exit 1 with the CLI's error
    `server_not_installed` (JSON with `-o json`), naming the missing module and the extra,
    and create nothing."""
    data_dir = client_install.root / "data"
    data_dir.mkdir()
    local = {"CONTROLPLANE_DATA_DIR": str(data_dir)}
    served = client_install.cli("serve", "--port", "1", **local)
    assert served.returncode == 1, served.stderr
    assert served.stderr.startswith("error: this command needs the server's dependencies")
    assert "no module named 'uvicorn'" in served.stderr
    assert HINT in served.stderr
    assert "Traceback" not in served.stderr
    for command in (["migrate"], ["token", "list"]):
        result = client_install.cli(*command, "-o", "json", **local)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        error = json.loads(result.stdout)["error"]
        assert error["name"] == "server_not_installed"
        assert error["details"] == {"missing_module": "asyncpg", "hint": HINT}
        assert HINT in error["message"]
    assert list(data_dir.iterdir()) == []
