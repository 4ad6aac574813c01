"""The appliance's own health, for monitoring:

- ``GET /metrics``: the Prometheus series (provisioner/metrics.py), in prometheus_client's
  text exposition (``CONTENT_TYPE_LATEST``); open by default, the API bearer token needed
  with ``[http] open_metrics = false``;
- ``GET /healthz``: ``{"ok": true, "mode": <network mode>}`` while the service is up
  (always open: it says nothing of the nodes).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from provisioner.boot.http_context import AppContext, open_metrics, require_api_token


def router(ctx: AppContext) -> APIRouter:
    """``/metrics`` and ``/healthz``, for ``app.include_router``."""
    routes = APIRouter()

    @routes.get(
        "/metrics",
        response_class=Response,
        dependencies=[Depends(require_api_token(ctx, unless=open_metrics))],
    )
    def metrics() -> Response:
        # A plain def: FastAPI runs it in its thread pool (the node count reads the registry).
        return Response(ctx.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @routes.get("/healthz")
    def healthz() -> JSONResponse:
        return JSONResponse({"ok": True, "mode": ctx.config.network.mode.value})

    return routes
