"""The appliance's own health, for monitoring:

- ``GET /metrics``: the Prometheus counters and gauges (text exposition format 0.0.4);
  open by default, the API bearer token needed with ``[http] open_metrics = false``;
- ``GET /healthz``: ``{"ok": true, "mode": <network mode>}`` while the service is up
  (always open: it says nothing of the nodes).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse

from provisioner.boot.http_context import AppContext, open_metrics, require_api_token

PROMETHEUS_MEDIA_TYPE = "text/plain; version=0.0.4"


def router(ctx: AppContext) -> APIRouter:
    """``/metrics`` and ``/healthz``, for ``app.include_router``."""
    routes = APIRouter()

    @routes.get(
        "/metrics",
        response_class=PlainTextResponse,
        dependencies=[Depends(require_api_token(ctx, unless=open_metrics))],
    )
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(ctx.metrics.render(), media_type=PROMETHEUS_MEDIA_TYPE)

    @routes.get("/healthz")
    def healthz() -> JSONResponse:
        return JSONResponse({"ok": True, "mode": ctx.config.network.mode.value})

    return routes
