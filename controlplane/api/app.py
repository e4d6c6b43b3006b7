"""Litestar app factory; the lifespan starts and stops everything `serve` runs in-process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.exceptions import HTTPException

from controlplane.api.auth import TokenCache, require_token
from controlplane.api.bodies import BODY_CHECKS_AT_ONCE
from controlplane.api.docs import docs_routes
from controlplane.api.errors import domain_error, http_error, internal_error
from controlplane.api.health import HEALTH_ROUTES
from controlplane.api.metrics import METRICS_ROUTES
from controlplane.api.node_actions import NODE_ACTION_ROUTES
from controlplane.api.params import check_path_params
from controlplane.api.read_cache import ReadCache
from controlplane.api.restore_points import RESTORE_POINT_ROUTES
from controlplane.api.routes import ROUTES
from controlplane.api.schedules import SCHEDULE_ROUTES
from controlplane.dashboard.routes import dashboard_routes
from controlplane.errors import ControlPlaneError
from controlplane.server.runtime import Runtime
from controlplane.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> Litestar:
    """An app whose lifespan runs the store, worker, monitor and scheduler for `settings`."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime = Runtime(settings)
        await runtime.start()
        app.state.services = runtime.services
        app.state.monitor = runtime.monitor  # the instances' last observed facts, for /metrics
        assert runtime.services is not None
        app.state.read_cache = ReadCache(runtime.changes, runtime.services.facts)
        try:
            yield
        finally:
            await runtime.stop()

    handlers: dict[Any, Any] = {
        ControlPlaneError: domain_error,
        HTTPException: http_error,
        Exception: internal_error,
    }
    api_routes = [
        *ROUTES,
        *METRICS_ROUTES,
        *HEALTH_ROUTES,
        *SCHEDULE_ROUTES,
        *RESTORE_POINT_ROUTES,
        *NODE_ACTION_ROUTES,
    ]
    return Litestar(
        route_handlers=[*api_routes, *docs_routes(api_routes), *dashboard_routes()],
        # The token first: a client without one learns nothing, not even which ids are valid.
        guards=[require_token, check_path_params],
        exception_handlers=handlers,
        lifespan=[lifespan],
        # /schema is ours (api/docs.py): the document is built from the routes' contracts.
        openapi_config=None,
        request_max_body_size=settings.max_body_bytes,
        state=State(
            {"body_checks": asyncio.Semaphore(BODY_CHECKS_AT_ONCE), "token_cache": TokenCache()}
        ),
        # Records go to the root logger, which `serve` formats (api/log_lines.py).
        logging_config=None,
        debug=False,
    )
