"""Schema conformance: schemathesis runs every operation of /schema/openapi.json against a real
server, bounded in examples and time, and finds no response >= 500, no undocumented status code,
no content type and no body that the document does not describe."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from tests.support.api import database_body
from tests.support.data import posix
from tests.support.server import ServerProcess

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
# Path parameters that name a real database and node, so operations reach their logic rather
# than stopping at 404.
CONFIG = """\
[parameters]
"path.database_id" = "conformance"
"path.node" = "n1"
"""


async def test_every_operation_conforms_to_the_document(scratch_dir: Path) -> None:
    # No worker: accepted requests leave pending tasks, no instance is started, so thousands of
    # generated creates and deletes cost only rows.
    server = ServerProcess(scratch_dir / "cp", database_url=None)
    server.extra_env = {
        "CONTROLPLANE_WORKER_CONCURRENCY": "0",
        "CONTROLPLANE_MONITOR_INTERVAL": "3600",
    }
    await asyncio.to_thread(server.start)
    try:
        async with server.client() as api:
            body = database_body("conformance", backup_config=posix(scratch_dir / "repo"))
            assert (await api.post("/v1/databases", json=body)).status_code == 202
            document = (await api.get("/schema/openapi.json")).json()
        # Every operation of the document is exercised, however many routes there are.
        operations = sum(len(item) for item in document["paths"].values())
        config = scratch_dir / "schemathesis.toml"
        config.write_text(CONFIG)
        argv = [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file",
            str(config),
            "run",
            f"{server.url}/schema/openapi.json",
            "--header",
            f"Authorization: Bearer {server.token}",
            "--checks",
            ",".join(CHECKS),
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "10",
            "--seed",
            "20261130",
            "--max-time",
            "150",
            "--request-timeout",
            "60",
            "--workers",
            "2",
        ]
        result = await asyncio.to_thread(
            subprocess.run, argv, capture_output=True, text=True, timeout=400
        )
        report = result.stdout[-8000:] + result.stderr[-2000:]
        assert result.returncode == 0, report
        assert f"{operations} selected / {operations} total" in result.stdout, report
        assert " failed" not in result.stdout.split("SUMMARY")[-1], report
    finally:
        server.terminate()
        server.stop_instances()
