"""The HTTP side of the boot service (FastAPI): boot scripts, files, and the REST API.

:func:`create_app` builds the app from one :class:`AppContext` and includes one router
per area, each in its own module:

- routes_boot.py: ``GET /boot/{mac}.ipxe``, the node's iPXE script, decided by the boot
  policy and carrying a per-boot token; the agent's inventory POST and its
  ``authorized_keys`` GET (the control node's SSH key), which need that token;
- routes_files.py: ``GET|HEAD /images/``, ``/tftp/``, ``/artifacts/``, ``/models/``:
  kernels, initrds, root images, the TFTP root over HTTP, runtimes and models (Range);
- routes_api.py: ``/api/v1/nodes``, ``/api/v1/profiles/reload``: the operator's API,
  which needs the API bearer token (reads open with ``[http] open_reads``);
- routes_console.py: ``GET /api/v1/nodes/{key}/console``, a node's kernel lines
  (netconsole), read like the API;
- gateway.py: ``/clusters/{name}/v1/...``, a cluster's OpenAI gateway, open where the
  cluster has ``gateway: true``;
- routes_metrics.py: ``GET /metrics`` (Prometheus), ``GET /healthz``;
- web/pages.py: ``/``, ``/nodes/{key}``, ``/clusters/{name}``, ``/events``, ``/login``:
  the web dashboard (``[dashboard] enabled``), its own logins for actions;
- here: ``GET /api/docs`` and ``/openapi.json``, the API's description, read like the
  API (the API token unless ``open_reads``); Swagger UI's script and stylesheet come from
  this appliance (``/api/docs/assets/``, the files of the ``fastapi-offline`` package),
  never from a CDN: the cluster network is often offline.

In front of them all, limits.py's :class:`BodyLimits` holds every request body to the
limit :data:`BODY_RULES` gives its route, and asks for credentials before reading it.
Every request a node makes is put on its timeline in the registry.
"""

from __future__ import annotations

from importlib import resources

from fastapi import Depends, FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response

from provisioner.boot import (
    gateway,
    routes_api,
    routes_boot,
    routes_console,
    routes_files,
    routes_metrics,
)
from provisioner.boot.http_context import AppContext, api_token_ok, open_reads, require_api_token
from provisioner.boot.limits import Auth, BodyLimits, BodyRule, Refusal, route
from provisioner.gateway import routes as front_routes
from provisioner.gateway import wire
from provisioner.gateway.frontdoor import FrontDoor, settings_from
from provisioner.gateway.source import RegistrySource
from provisioner.web import pages

# The routes that take a body, first match wins; any other request: limits.DEFAULT_LIMIT
# (64 KiB) and no credentials asked before the route's own checks.
BODY_RULES: tuple[BodyRule, ...] = (
    route("inventory", "POST", "/api/v1/nodes/{mac}/inventory",
          routes_boot.MAX_INVENTORY_BYTES, Auth.BEARER),  # the route checks the boot token
    route("api-write", "PATCH DELETE", "/api/v1/nodes/{key}",
          routes_api.MAX_BODY_BYTES, Auth.API_TOKEN),
    route("api-write", "POST", "/api/v1/profiles/reload",
          routes_api.MAX_BODY_BYTES, Auth.API_TOKEN),
    route("gateway", "POST", "/clusters/{name}/v1/{endpoint:path}",
          wire.MAX_BODY_BYTES, render=gateway.refusal_body),
    route("gateway", "POST", "/v1/{endpoint:path}",
          wire.MAX_BODY_BYTES, render=gateway.refusal_body),
    route("dashboard", "POST", "/login", pages.MAX_FORM_BYTES),
    route("dashboard", "POST", "/logout", pages.MAX_FORM_BYTES),
    route("dashboard", "POST", "/nodes/{key}/actions/{action}", pages.MAX_FORM_BYTES),
    route("dashboard", "POST", "/clusters/{name}/actions/smoke", pages.MAX_FORM_BYTES),
)  # fmt: skip

DOCS_URL = "/api/docs"
OPENAPI_URL = "/openapi.json"
DOCS_ASSETS = {  # Swagger UI's files, served from the fastapi-offline package
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon.png": "image/png",
}


def create_app(ctx: AppContext) -> FastAPI:
    # FastAPI's own docs and schema routes are open to all: ours (below) read like the API.
    app = FastAPI(title="provisioner", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    app.include_router(routes_boot.router(ctx))
    app.include_router(routes_files.router(ctx))
    app.include_router(routes_api.router(ctx))
    app.include_router(routes_console.router(ctx))
    app.include_router(
        gateway.router(gateway.Gateway(ctx.registry, ctx.metrics, state_dir=ctx.config.state_dir))
    )
    # The front door (/v1): serve.py starts and stops it (app.state.front_door).
    door = FrontDoor(
        RegistrySource(ctx.registry, ctx.config.state_dir), ctx.metrics,
        settings_from(ctx.config.gateway),
    )  # fmt: skip
    app.state.front_door = door
    app.include_router(front_routes.router(door, require_api_token(ctx)))
    app.include_router(routes_metrics.router(ctx))
    # The dashboard: serve.py starts and stops its live feed (app.state.dashboard).
    app.state.dashboard = None
    if ctx.config.dashboard.enabled:
        app.state.dashboard = pages.Dashboard(
            ctx.config, ctx.registry, ctx.api_token, ctx.metrics, door.status
        )
        app.include_router(pages.router(app.state.dashboard))
    _add_docs(app, ctx)

    def refused(refusal: Refusal) -> None:
        ctx.metrics.inc("provisioner_http_refused_total", reason=refusal.reason)

    app.add_middleware(
        BodyLimits,
        rules=BODY_RULES,
        api_token_ok=lambda header: api_token_ok(ctx, header),
        on_refused=refused,
    )
    return app


def _add_docs(app: FastAPI, ctx: AppContext) -> None:
    reads = [Depends(require_api_token(ctx, unless=open_reads))]

    @app.get(OPENAPI_URL, include_in_schema=False, dependencies=reads)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get(DOCS_URL, include_in_schema=False, dependencies=reads)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=OPENAPI_URL, title="provisioner API",
            swagger_js_url=f"{DOCS_URL}/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_URL}/assets/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_URL}/assets/favicon.png",
        )  # fmt: skip

    @app.get(DOCS_URL + "/assets/{name}", include_in_schema=False, dependencies=reads)
    def docs_asset(name: str) -> Response:
        """Swagger UI's own files, read like the page that loads them."""
        media = DOCS_ASSETS.get(name)
        if media is None:
            raise HTTPException(404, f"no {name}")
        data = (resources.files("fastapi_offline") / "static" / name).read_bytes()
        return Response(data, media_type=media, headers={"Cache-Control": "max-age=86400"})
