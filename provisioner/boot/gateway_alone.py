"""``provisioner gateway serve``: the front door alone, on a host of its own.

For users who put the gateway elsewhere than the control node: it needs the control
node's state folder to read (the registry, the clusters' engine keys; over a shared or
replicated file system) and nothing else of it. It serves the front door's routes, its
status (the API token) and ``/metrics`` (the API token unless ``[http] open_metrics``).
It writes usage to the registry when it may, and keeps it in ``/metrics`` only when the
registry is read-only to it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import Response

from provisioner.boot.gateway import refusal_body
from provisioner.boot.limits import API_TOKEN_REQUIRED, BodyLimits, route
from provisioner.clusters import keys
from provisioner.config import Config, ensure_api_token
from provisioner.gateway import routes, wire
from provisioner.gateway.frontdoor import FrontDoor, settings_from
from provisioner.gateway.source import RegistrySource
from provisioner.metrics import Metrics
from provisioner.registry import Registry

log = logging.getLogger(__name__)

BODY_RULES = (
    route("gateway", "POST", "/v1/{endpoint:path}", wire.MAX_BODY_BYTES, render=refusal_body),
)


def create_app(cfg: Config, registry: Registry, metrics: Metrics | None = None) -> FastAPI:
    metrics = metrics or Metrics()
    door = FrontDoor(RegistrySource(registry, cfg.state_dir), metrics, settings_from(cfg.gateway))
    token_path = cfg.api_token_path

    def api_token(authorization: Annotated[str | None, Header()] = None) -> None:
        expected = token_path.read_text().strip() if token_path.is_file() else None
        if not keys.matches(expected, wire.client_key({"authorization": authorization or ""})):
            raise HTTPException(401, API_TOKEN_REQUIRED, headers={"WWW-Authenticate": "Bearer"})

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await door.start()
        try:
            yield
        finally:
            await door.stop()

    app = FastAPI(title="provisioner gateway", docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan)  # fmt: skip
    app.state.front_door = door
    app.include_router(routes.router(door, api_token))
    guard = [] if cfg.http.open_metrics else [Depends(api_token)]

    @app.get("/metrics", dependencies=guard)
    def metrics_route() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    app.add_middleware(BodyLimits, rules=BODY_RULES, api_token_ok=lambda header: False)
    return app


def run(cfg: Config, listen: str) -> None:
    import uvicorn

    registry = None
    if _writable(cfg):
        registry = Registry(cfg.registry_location)
        ensure_api_token(cfg.state_dir)  # what `gateway status` sends
    else:
        log.warning(
            "registry %s is read-only here: usage is kept in /metrics only", cfg.registry_path
        )
        registry = Registry(cfg.registry_location, readonly=True)
    host, _, port = listen.rpartition(":")
    app = create_app(cfg, registry)
    log.info("gateway on http://%s:%s/v1 (%s)", host, port,
             "OPEN: no key needed" if cfg.gateway.open else "API keys required")  # fmt: skip
    try:
        uvicorn.run(app, host=host.strip("[]"), port=int(port), log_level="warning",
                    access_log=False, timeout_keep_alive=30)  # fmt: skip
    finally:
        registry.close()


def _writable(cfg: Config) -> bool:
    import os

    if cfg.registry_url is not None:  # PostgreSQL: the server's grants decide
        return True
    path = cfg.registry_path
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
