"""The API's routes as the OpenAPI document lists them, the scope each needs, and request helpers
that check every answer (never 5xx; errors in the `{name, message, details}` shape)."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

# Routes anyone may call (README: "the last two need no token").
PUBLIC = {("GET", "/health"), ("GET", "/v1/version")}
# Routes that need `admin` (README: delete, restore, expire, failover).
ADMIN = {
    ("DELETE", "/v1/databases/{database_id}"),
    ("POST", "/v1/databases/{database_id}/restore"),
    ("DELETE", "/v1/databases/{database_id}/nodes/{node}/backups/{label}"),
    ("POST", "/v1/databases/{database_id}/nodes/{node}/failover"),
}
# GET routes that change something, so need `write` (pgEdge cancels a task with a GET).
WRITE_GETS = {("GET", "/v1/databases/{database_id}/tasks/{task_id}/cancel")}
# Routes that must be in the document: a listing that lost them would make every check vacuous.
EXPECTED = {
    ("POST", "/v1/databases"),
    ("GET", "/v1/databases/{database_id}"),
    ("POST", "/v1/databases/{database_id}"),
    ("POST", "/v1/databases/{database_id}/nodes/{node}/backups"),
    ("POST", "/v1/databases/{database_id}/nodes/{node}/restore-points"),
    ("GET", "/v1/databases/{database_id}/tasks/{task_id}/log"),
    ("POST", "/v1/databases/{database_id}/tasks/{task_id}/cancel"),
    *WRITE_GETS,
    ("GET", "/metrics"),
    ("POST", "/v1/databases/{database_id}/nodes/{node}/switchover"),
    ("POST", "/v1/databases/{database_id}/instances/{instance_id}/restart"),
    *PUBLIC,
    *ADMIN,
}
# Parameters that exist nowhere but are well formed: requests get past validation to the store.
ABSENT = {
    "database_id": "ghost",
    "node": "n9",
    "task_id": "00000000-0000-4000-8000-000000000000",
    "label": "20990101-000000F",
    "instance_id": "ghost-n9",
}
_PARAM = re.compile(r"\{([a-z_]+)(?::[a-z]+)?\}")


@dataclass(frozen=True, order=True)
class Route:
    """One operation of the OpenAPI document."""

    method: str
    template: str

    @property
    def params(self) -> list[str]:
        return _PARAM.findall(self.template)

    @property
    def scope(self) -> str | None:
        """The scope a token needs here; None for public routes."""
        key = (self.method, self.template)
        if key in PUBLIC:
            return None
        if key in ADMIN:
            return "admin"
        return "read" if self.method == "GET" and key not in WRITE_GETS else "write"

    @property
    def takes_body(self) -> bool:
        return self.method == "POST"

    def path(self, values: dict[str, str], *, encoded: bool = False) -> str:
        """The template filled with `values` (percent-encoded here unless `encoded`)."""

        def value(match: re.Match[str]) -> str:
            raw = values.get(match.group(1), ABSENT.get(match.group(1), "x"))
            return (
                raw
                if encoded
                else urllib.parse.quote(raw.encode("utf-8", "surrogatepass"), safe="")
            )

        return _PARAM.sub(value, self.template)

    def __str__(self) -> str:
        return f"{self.method} {self.template}"


def openapi_routes(document: dict[str, Any]) -> list[Route]:
    """Every (method, path) of the document, sorted; fails if an expected route is missing."""
    routes = sorted(
        Route(method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    )
    missing = EXPECTED - {(r.method, r.template) for r in routes}
    assert not missing, f"routes missing from the OpenAPI document: {sorted(missing)}"
    return routes


async def fetch_routes(api: httpx.AsyncClient) -> list[Route]:
    response = await api.get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    return openapi_routes(response.json())


def check_answer(response: httpx.Response, what: str) -> None:
    """No 5xx, and every error is JSON in our shape."""
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            raise AssertionError(f"{what}: non-JSON error {response.text[:300]!r}") from None
        assert isinstance(body, dict) and set(body) == {"name", "message", "details"}, (
            f"{what}: {body}"
        )
        assert isinstance(body["name"], str) and re.fullmatch(r"[a-z_]+", body["name"]), body
        assert isinstance(body["message"], str) and body["message"], body
        assert isinstance(body["details"], dict), body


async def send(
    api: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    content: bytes | None = None,
    headers: Mapping[str, str | bytes] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    """One request whose answer is checked; a streamed (SSE) answer is closed after its status."""
    request = api.build_request(method, path, content=content, headers=headers, params=params)
    response = await api.send(request, stream=True)
    try:
        if response.status_code >= 400 or "text/event-stream" not in response.headers.get(
            "content-type", ""
        ):
            await response.aread()
    finally:
        await response.aclose()
    check_answer(response, f"{method} {path}")
    return response
