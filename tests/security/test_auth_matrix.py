"""Every route of the OpenAPI document, with no token, a wrong token, read, write and admin."""

from __future__ import annotations

from tests.security.conftest import Target
from tests.security.routes import Route, fetch_routes, send

_RANK = {"read": 1, "write": 2, "admin": 3}
_CREDENTIALS: dict[str, dict[str, str]] = {
    "none": {},
    "malformed": {"Authorization": "Basic dXNlcjpwYXNz"},
    "invalid": {"Authorization": "Bearer cp_not-a-real-token"},
}


def _body(route: Route) -> bytes | None:
    # Well-formed JSON: a request that gets past auth reaches validation, then finds nothing
    # (the ids in the path exist nowhere), so nothing is created or deleted.
    return b"{}" if route.takes_body else None


async def test_every_route_needs_the_scope_it_declares(target: Target) -> None:
    """401 without or with a wrong token (but for /health and /v1/version), 403 for a token whose
    scope is too low (read never writes; write never deletes a database, restores or expires),
    never 401/403 with enough scope, and never a 5xx."""
    async with target.client("admin") as admin:
        routes = await fetch_routes(admin)
    seen: dict[str, set[int]] = {}
    async with target.client(None) as api:
        for route in routes:
            path = route.path({})
            for label, headers in _CREDENTIALS.items():
                answer = await send(api, route.method, path, content=_body(route), headers=headers)
                if route.scope is None:
                    assert answer.status_code == 200, (str(route), label, answer.text)
                else:
                    assert answer.status_code == 401, (str(route), label, answer.text)
                    assert answer.json()["name"] == "unauthorized"
                    assert answer.headers["www-authenticate"] == "Bearer"
                seen.setdefault(label, set()).add(answer.status_code)
            for scope in ("read", "write", "admin"):
                answer = await send(
                    api,
                    route.method,
                    path,
                    content=_body(route),
                    headers=target.headers(scope),
                )
                enough = route.scope is None or _RANK[scope] >= _RANK[route.scope]
                if enough:
                    assert answer.status_code not in (401, 403), (str(route), scope, answer.text)
                else:
                    assert answer.status_code == 403, (str(route), scope, answer.text)
                    assert answer.json()["name"] == "forbidden"
                    assert answer.json()["details"] == {"required_scope": route.scope}
                seen.setdefault(scope, set()).add(answer.status_code)
    # The matrix covered the document, and each credential got the answers expected of it.
    assert len(routes) >= 20
    assert seen["none"] == seen["invalid"] == {200, 401}
    assert 403 in seen["read"] and 403 in seen["write"] and 403 not in seen["admin"]


async def test_schema_is_public_and_unknown_routes_are_404(target: Target) -> None:
    """The OpenAPI document and the docs page are read with or without a token (they hold no
    secret, and a browser cannot send one); an unknown route is a 404 in our shape whatever the
    credentials."""
    async with target.client(None) as api:
        anonymous = await send(api, "GET", "/schema/openapi.json")
        assert anonymous.status_code == 200
        assert not [t for t in target.tokens.values() if t in anonymous.text]
        for scope in ("read", "write", "admin"):
            answer = await send(api, "GET", "/schema/openapi.json", headers=target.headers(scope))
            assert answer.status_code == 200
            assert "/v1/databases" in answer.json()["paths"]
        for headers in ({}, target.headers("read")):
            missing = await send(api, "GET", "/v1/nothing", headers=headers)
            assert (missing.status_code, missing.json()["name"]) == (404, "not_found")
