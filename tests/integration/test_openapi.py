"""The API contract: /schema/openapi.json describes every route with its request body, every
response and error shape and the bearer scheme; it and the docs page need no token and no
network; a client generated from it by a real generator works against a real server."""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from tests.support.api import database_body, wait_task
from tests.support.data import posix, write_rows
from tests.support.server import ServerProcess

# Routes that are not part of the API: the docs themselves.
_DOCS = {"/schema", "/schema/swagger", "/schema/openapi.json", "/schema/static/{name}"}


async def _document(server: ServerProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as anonymous:
        response = await anonymous.get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def _conforms(document: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    """`body` matches the schema the document gives that answer."""
    answer = document["paths"][path][method]["responses"][str(status)]
    schema = {**answer["content"]["application/json"]["schema"], **document}
    OAS31Validator(schema).validate(body)


async def test_document_describes_every_route_without_a_token(
    api: httpx.AsyncClient, server: ServerProcess
) -> None:
    document = await _document(server)
    validate(document)  # a valid OpenAPI 3.1 document
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    operations = {
        (path, method): operation
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }
    assert ("/v1/databases/{database_id}/nodes/{node}/restore-points", "post") in operations
    assert ("/v1/databases/{database_id}/health", "get") in operations
    assert len(operations) == 29  # every route of the API
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for (path, method), operation in operations.items():
        assert path not in _DOCS
        for status, answer in operation["responses"].items():
            assert answer["content"], (path, method, status)
            if int(status) >= 400:
                assert answer["content"]["application/json"]["schema"] == error_ref
        if method == "post" and "requestBody" in operation:
            assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    create = operations[("/v1/databases", "post")]
    assert create["requestBody"]["content"]["application/json"]["example"]["spec"]["nodes"]
    assert {"400", "401", "403", "409", "413", "422"} <= set(create["responses"])
    repository = document["components"]["schemas"]["PosixRepository"]
    assert repository["properties"]["type"]["enum"] == ["posix"]  # the tag of the union
    tasks = operations[("/v1/tasks", "get")]
    assert {p["name"] for p in tasks["parameters"]} >= {"status", "type", "limit", "sort_order"}
    assert operations[("/health", "get")]["security"] == []


async def test_docs_page_and_assets_are_served_offline_without_a_token(
    server: ServerProcess,
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as anonymous:
        page = await anonymous.get("/schema")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "http://" not in page.text and "https://" not in page.text  # no CDN
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            answer = await anonymous.get(f"/schema/static/{asset}")
            assert answer.status_code == 200 and len(answer.content) > 10_000
        assert (await anonymous.get("/schema/static/../../etc/passwd")).status_code == 404
        assert (await anonymous.get("/schema/static/index.html")).status_code == 404
        assert (await anonymous.get("/v1/databases")).status_code == 401  # the API still is not


async def test_generated_client_creates_backs_up_and_reads_the_catalog(
    api: httpx.AsyncClient, server: ServerProcess, scratch_dir: Path
) -> None:
    """openapi-python-client generates a client from the document with no warning; it creates
    a database, starts a backup and reads the catalog, and every answer conforms."""
    document = await _document(server)
    spec_file = scratch_dir / "openapi.json"
    spec_file.write_text((await api.get("/schema/openapi.json")).text)
    out = scratch_dir / "generated"
    out.mkdir()
    generator = Path(sys.executable).with_name("openapi-python-client")
    result = await asyncio.to_thread(
        subprocess.run,
        [str(generator), "generate", "--path", str(spec_file), "--meta", "none"],
        cwd=out,
        capture_output=True,
        text=True,
        env={"PATH": f"{generator.parent}:/usr/bin:/bin"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output and "Unable" not in output and "Cannot" not in output, output
    sys.path.insert(0, str(out))
    try:
        generated = importlib.import_module("controlplane_client")
        api_package = "controlplane_client.api"
        create_mod = importlib.import_module(f"{api_package}.databases.create_database")
        backup_mod = importlib.import_module(f"{api_package}.backups.start_backup")
        catalog_mod = importlib.import_module(f"{api_package}.backups.list_backups")
        models = importlib.import_module("controlplane_client.models")
    finally:
        sys.path.remove(str(out))
    client = generated.AuthenticatedClient(base_url=server.url, token=server.token, timeout=60)
    async with client:
        body = database_body("gen", backup_config=posix(scratch_dir / "repo"))
        created = await create_mod.asyncio_detailed(
            client=client, body=models.DatabaseRequest.from_dict(body)
        )
        assert created.status_code == 202, created.content
        assert isinstance(created.parsed, models.DatabaseOperation)
        _conforms(document, "/v1/databases", "post", 202, created.parsed.to_dict())
        task = await wait_task(api, "gen", created.parsed.task.task_id, timeout=300)
        assert task["status"] == "completed", task["error"]
        await write_rows((await api.get("/v1/databases/gen")).json(), 1, 100)

        backup_path = "/v1/databases/{database_id}/nodes/{node}/backups"
        started = await backup_mod.asyncio_detailed(
            "gen", "n1", client=client, body=models.BackupRequest.from_dict({"type": "full"})
        )
        assert started.status_code == 202, started.content
        _conforms(document, backup_path, "post", 202, started.parsed.to_dict())
        done = await wait_task(api, "gen", started.parsed.task.task_id, timeout=300)
        assert done["status"] == "completed", done["error"]

        catalog = await catalog_mod.asyncio_detailed("gen", "n1", client=client)
        assert catalog.status_code == 200, catalog.content
        assert [s.label for s in catalog.parsed.backups] == [done["result"]["label"]]
        _conforms(document, backup_path, "get", 200, catalog.parsed.to_dict())
    for path, answer in (
        ("/v1/databases/{database_id}", await api.get("/v1/databases/gen")),
        ("/v1/databases/{database_id}/tasks", await api.get("/v1/databases/gen/tasks")),
    ):
        _conforms(document, path, "get", 200, answer.json())
    missing = await api.get("/v1/databases/nope")
    _conforms(document, "/v1/databases/{database_id}", "get", 404, missing.json())
