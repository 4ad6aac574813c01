"""The HTTP side of the boot service (FastAPI): boot scripts, files, and the REST API.

:func:`create_app` builds the app from one :class:`AppContext` and includes one router
per area, each in its own module:

- routes_boot.py: ``GET /boot/{mac}.ipxe``, the node's iPXE script, decided by the boot
  policy and carrying a per-boot token; the agent's inventory POST and its
  ``authorized_keys`` GET (the control node's SSH key), which need that token;
- routes_files.py: ``GET|HEAD /images/``, ``/tftp/``, ``/artifacts/``, ``/models/``:
  kernels, initrds, root images, the TFTP root over HTTP, runtimes and models (Range);
- routes_api.py: ``/api/v1/nodes``, ``/api/v1/profiles/reload``: the operator's API,
  whose writes need the API bearer token;
- gateway.py: ``/clusters/{name}/v1/...``, a cluster's OpenAI gateway, open where the
  cluster has ``gateway: true``;
- routes_metrics.py: ``GET /metrics`` (Prometheus), ``GET /healthz``.

Every request a node makes is put on its timeline in the registry.
"""

from __future__ import annotations

from fastapi import FastAPI

from provisioner.boot import gateway, routes_api, routes_boot, routes_files, routes_metrics
from provisioner.boot.http_context import AppContext


def create_app(ctx: AppContext) -> FastAPI:
    app = FastAPI(title="provisioner", version="1", docs_url="/api/docs", redoc_url=None)
    app.state.ctx = ctx
    app.include_router(routes_boot.router(ctx))
    app.include_router(routes_files.router(ctx))
    app.include_router(routes_api.router(ctx))
    app.include_router(gateway.router(gateway.Gateway(ctx.registry, ctx.metrics)))
    app.include_router(routes_metrics.router(ctx))
    return app
