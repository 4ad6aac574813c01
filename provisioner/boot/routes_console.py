"""``GET /api/v1/nodes/{mac|hostname}/console?lines=N``: a node's last kernel lines.

What ``serve`` received from the node with netconsole and kept (provisioner/console),
oldest first, as ``node console --json`` prints them. A read of the operator's API: the
API bearer token, unless ``[http] open_reads``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query

from provisioner.boot.http_context import AppContext, open_reads, require_api_token
from provisioner.config import normalize_mac
from provisioner.console.store import tail

DEFAULT_LINES = 100
MAX_LINES = 10_000


def router(ctx: AppContext) -> APIRouter:
    """The console route, for ``app.include_router``."""
    routes = APIRouter()
    reads = [Depends(require_api_token(ctx, unless=open_reads))]

    @routes.get("/api/v1/nodes/{key}/console", dependencies=reads)
    def node_console(
        key: str, lines: Annotated[int, Query(ge=0, le=MAX_LINES)] = DEFAULT_LINES
    ) -> dict[str, object]:
        node = ctx.registry.node(normalize_mac(key) or key)
        if node is None:
            raise HTTPException(404, f"no node {key}")
        return {
            "node": node.hostname or node.mac,
            "mac": node.mac,
            "lines": [r.as_dict() for r in tail(ctx.config.state_dir, node.mac, lines)],
        }

    return routes
