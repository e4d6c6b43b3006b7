"""GET /metrics: Prometheus text exposition of what the store knows (needs a `read` token).

Like every route but version and health, the scrape needs a token, so a Prometheus job carries
one: `authorization: {credentials_file: /etc/prometheus/controlplane-token}` with a token made by
`controlplane token create prometheus --scope read`.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from controlplane.api.contract import Contract
from controlplane.server.metrics import collect_metrics, render_metrics
from controlplane.server.monitor import Monitor
from controlplane.tasks.context import Services

# Litestar appends `; charset=utf-8` to text media types.
_MEDIA_TYPE = "text/plain; version=0.0.4"


@get(
    "/metrics",
    opt={
        "contract": Contract(
            summary="Prometheus metrics",
            returns=None,
            media_type=_MEDIA_TYPE,
        )
    },
)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The control plane's metrics in Prometheus text format 0.0.4: the store's, and each
    instance's as the monitor last observed it (never asked of the instance here)."""
    services: Services = request.app.state.services
    monitor: Monitor | None = request.app.state.get("monitor")
    facts = monitor.facts if monitor is not None else None
    body = render_metrics(await collect_metrics(services.pool, facts))
    return Response(body, media_type=_MEDIA_TYPE)


METRICS_ROUTES = [metrics]
