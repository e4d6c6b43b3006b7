"""The dashboard's routes under /ui: a login form that keeps the token in an HttpOnly,
SameSite=Strict cookie, the read-only pages, and their stylesheet and script.

Pages pass the app's token guard like any read route (the cookie is a read-only credential,
api/auth.py); without a valid one a page sends the browser to the login form. They are not
part of the API, so they stay out of its OpenAPI document."""

from __future__ import annotations

from importlib import resources
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.handlers import HTTPRouteHandler
from litestar.response import Redirect

from controlplane.api.auth import MAX_TOKEN_CHARS, SESSION_COOKIE, find_valid_token
from controlplane.api.errors import domain_error
from controlplane.dashboard import views
from controlplane.dashboard.render import html, page_environment
from controlplane.errors import ControlPlaneError, NotFoundError, UnauthorizedError
from controlplane.tasks.context import Services

AnyRequest = Request[Any, Any, Any]
_ASSETS = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
_LOGIN = "/ui/login"


def _services(request: AnyRequest) -> Services:
    services: Services = request.app.state.services
    return services


def _session_cookie(request: AnyRequest, token: str, *, expire: bool = False) -> Cookie:
    """The session cookie: never readable by scripts, never sent from another site, and only
    over TLS when the server speaks it."""
    secure = request.url.scheme == "https" or _services(request).settings.tls_cert is not None
    return Cookie(
        key=SESSION_COOKIE,
        value=token,
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure,
        max_age=0 if expire else None,
    )


def dashboard_routes() -> list[HTTPRouteHandler]:
    """The /ui routes, rendering with one template environment built here."""
    environment = page_environment()

    def to_login(request: AnyRequest, exc: UnauthorizedError) -> Response[Any]:
        return Redirect(_LOGIN, status_code=303)

    def error_page(request: AnyRequest, exc: ControlPlaneError) -> Response[str]:
        # The API's status for the error (and its log line for an internal one), as a page.
        status = domain_error(request, exc).status_code or 500
        message = exc.message if status < 500 else "internal error"
        return html(environment, "error.html.j2", status=status, message=message)

    page_errors: dict[Any, Any] = {UnauthorizedError: to_login, ControlPlaneError: error_page}

    def login_form(error: str | None = None, status: int = 200) -> Response[str]:
        return html(environment, "login.html.j2", status=status, error=error)

    @get(_LOGIN, opt={"public": True}, include_in_schema=False)
    async def login_page() -> Response[str]:
        return login_form()

    @post(_LOGIN, opt={"public": True}, include_in_schema=False, status_code=303)
    async def login(request: AnyRequest) -> Response[Any]:
        """Check the token exactly as the guard checks a bearer token, then keep it."""
        form = await request.form()
        token = str(form.get("token", "")).strip()
        if len(token) > MAX_TOKEN_CHARS or await find_valid_token(request, token) is None:
            return login_form("invalid token", status=401)
        return Redirect("/ui", status_code=303, cookies=[_session_cookie(request, token)])

    @post("/ui/logout", opt={"public": True}, include_in_schema=False, status_code=303)
    async def logout(request: AnyRequest) -> Response[Any]:
        gone = _session_cookie(request, "", expire=True)
        return Redirect(_LOGIN, status_code=303, cookies=[gone])

    @get("/ui", exception_handlers=page_errors, include_in_schema=False)
    async def databases_page(request: AnyRequest) -> Response[str]:
        context = await views.databases_page(_services(request))
        return html(environment, "databases.html.j2", **context)

    @get("/ui/databases/{database_id:str}", exception_handlers=page_errors, include_in_schema=False)
    async def database_page(request: AnyRequest, database_id: str) -> Response[str]:
        context = await views.database_page(_services(request), database_id)
        return html(environment, "database.html.j2", **context)

    @get(
        "/ui/databases/{database_id:str}/tasks/{task_id:str}",
        exception_handlers=page_errors,
        include_in_schema=False,
    )
    async def task_page(request: AnyRequest, database_id: str, task_id: str) -> Response[str]:
        context = await views.task_page(_services(request), database_id, task_id)
        return html(environment, "task.html.j2", **context)

    @get("/ui/static/{name:str}", opt={"public": True}, include_in_schema=False)
    async def asset(name: str) -> Response[bytes]:
        media_type = _ASSETS.get(name)
        if media_type is None:
            raise NotFoundError(f"no dashboard asset {name}")
        data = (resources.files("controlplane.dashboard") / "static" / name).read_bytes()
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        return Response(data, media_type=media_type, headers=headers)

    return [login_page, login, logout, databases_page, database_page, task_page, asset]
