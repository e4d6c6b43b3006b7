"""Restore points through the typed clients and the CLI, without a server."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click
import httpx
import msgspec
import pytest

from controlplane.cli.changes import build_restore_request
from controlplane.cli.output import backups_table, restore_points_table
from controlplane.client import AsyncClient, BackupCatalog, Client

POINT = {
    "name": "before-upgrade",
    "lsn": "0/3000090",
    "time": "2025-05-05T09:38:52Z",
    "timeline": 1,
    "created_by": "ops",
}


def _handler(seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(201, json=POINT)
        return httpx.Response(200, json={"restore_points": [POINT]})

    return httpx.MockTransport(handle)


def test_client_creates_and_lists_restore_points() -> None:
    """create posts `{name}` to the node's restore-points with a timeout longer than the
    server's archive wait; list decodes every point."""
    seen: list[httpx.Request] = []
    with Client("http://cp.test", "tok", transport=_handler(seen)) as client:
        point = client.create_restore_point("db1", "n1", "before-upgrade")
        listed = client.list_restore_points("db1", "n1")
    assert (point.name, point.lsn, point.timeline, point.created_by) == (
        "before-upgrade",
        "0/3000090",
        1,
        "ops",
    )
    assert point.time == datetime(2025, 5, 5, 9, 38, 52, tzinfo=UTC)
    assert listed == [point]
    assert [(r.method, r.url.path) for r in seen] == [
        ("POST", "/v1/databases/db1/nodes/n1/restore-points"),
        ("GET", "/v1/databases/db1/nodes/n1/restore-points"),
    ]
    assert json.loads(seen[0].content) == {"name": "before-upgrade"}
    assert seen[0].extensions["timeout"]["read"] == 90.0
    assert seen[1].extensions["timeout"]["read"] == 30.0


async def test_async_client_creates_restore_points() -> None:
    """The asyncio client sends the same request."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=POINT)

    async with AsyncClient("http://cp.test", "tok", transport=httpx.MockTransport(handle)) as cp:
        point = await cp.create_restore_point("db1", "n1", "before-upgrade")
    assert point.name == "before-upgrade"
    assert seen[0].url.path == "/v1/databases/db1/nodes/n1/restore-points"


def test_catalog_shows_its_restore_points() -> None:
    """The backup catalog decodes `restore_points` and `backup list` prints them."""
    catalog = BackupCatalog(backups=[], restore_points=[])
    assert "RESTORE POINT" not in backups_table(catalog)
    raw = json.dumps({"backups": [], "restore_points": [POINT]}).encode()
    catalog = msgspec.json.decode(raw, type=BackupCatalog)
    text = backups_table(catalog)
    assert "before-upgrade" in text and "0/3000090" in text
    lines = restore_points_table(catalog.restore_points).splitlines()
    row = ["before-upgrade", "0/3000090", "1", "2025-05-05", "09:38:52Z", "ops"]
    assert lines[1].split() == row


def test_restore_flags_name_a_restore_point_or_a_transaction() -> None:
    """--restore-point and --xid set name and xid targets (a --set keeps them); two target
    flags at once are a usage error."""
    raw = {"source_database_id": "db1", "restore_options": {"type": "time", "target": "x"}}
    config, _, _ = build_restore_request(raw, (), None, None, False, restore_point="p1")
    assert config["restore_options"] == {"type": "name", "target": "p1"}
    config, _, _ = build_restore_request(raw, (), None, "L", False, xid="1234")
    assert config["restore_options"] == {"type": "xid", "target": "1234", "set": "L"}
    with pytest.raises(click.UsageError):
        build_restore_request(raw, (), "2025-05-05 09:38:52+00", None, False, xid="1234")
