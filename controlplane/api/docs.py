"""/schema: the OpenAPI document and a Swagger UI page, readable without a token (they hold no
secret) and working offline: the page's assets come from the installed `swagger-ui-py`
package, never from a CDN."""

from __future__ import annotations

from importlib import resources
from typing import Any

import msgspec
from litestar import Response, get
from litestar.handlers import HTTPRouteHandler

from controlplane.api.contract import openapi_document
from controlplane.errors import NotFoundError

# The only assets the page loads.
_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}
_PAGE = """\
<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>controlplane API</title>
  <link rel="stylesheet" href="/schema/static/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/schema/static/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "/schema/openapi.json", dom_id: "#swagger-ui",
                                 deepLinking: true, tryItOutEnabled: false});
  </script>
</body>
</html>
"""


def docs_routes(api_routes: list[HTTPRouteHandler]) -> list[HTTPRouteHandler]:
    """The /schema routes, describing `api_routes` (built once, on first request)."""
    built: dict[str, bytes] = {}

    @get("/schema/openapi.json", opt={"public": True}, include_in_schema=False)
    async def openapi_json() -> Response[bytes]:
        if "doc" not in built:
            document: dict[str, Any] = openapi_document(api_routes)
            built["doc"] = msgspec.json.encode(document)
        return Response(built["doc"], media_type="application/json")

    @get(["/schema", "/schema/swagger"], opt={"public": True}, include_in_schema=False)
    async def swagger_page() -> Response[str]:
        return Response(_PAGE, media_type="text/html")

    @get("/schema/static/{name:str}", opt={"public": True}, include_in_schema=False)
    async def asset(name: str) -> Response[bytes]:
        media_type = _ASSETS.get(name)
        if media_type is None:
            raise NotFoundError(f"no asset {name}")
        data = (resources.files("swagger_ui") / "static" / name).read_bytes()
        headers = {"Cache-Control": "public, max-age=86400"}
        return Response(data, media_type=media_type, headers=headers)

    return [openapi_json, swagger_page, asset]
