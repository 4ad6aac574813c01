"""The appliance's own health, for monitoring:

- ``GET /metrics``: the Prometheus counters and gauges (text exposition format 0.0.4);
- ``GET /healthz``: ``{"ok": true, "mode": <network mode>}`` while the service is up.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from provisioner.boot.http_context import AppContext

PROMETHEUS_MEDIA_TYPE = "text/plain; version=0.0.4"


def router(ctx: AppContext) -> APIRouter:
    """``/metrics`` and ``/healthz``, for ``app.include_router``."""
    routes = APIRouter()

    @routes.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(ctx.metrics.render(), media_type=PROMETHEUS_MEDIA_TYPE)

    @routes.get("/healthz")
    def healthz() -> JSONResponse:
        return JSONResponse({"ok": True, "mode": ctx.config.network.mode.value})

    return routes
