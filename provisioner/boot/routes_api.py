"""The operator's REST API under ``/api/v1``:

- ``GET /api/v1/nodes``: every node; ``GET /api/v1/nodes/{mac|hostname}``: one node with
  its timeline and inventory;
- ``PATCH /api/v1/nodes/{key}``: set its hostname, or boot it from disk or the network;
- ``DELETE /api/v1/nodes/{key}``: forget it;
- ``POST /api/v1/profiles/reload``: read hwprofiles/ again and re-fingerprint every node;
- ``GET /api/v1/prometheus/targets``: Prometheus HTTP service discovery (prometheus_sd.py).

Every call needs the API bearer token (401 without it, counted); ``[http] open_reads``
opens the two reads (inventories, timelines, MACs) to a trusted network. A write's token
is checked before its body is read (limits.py); its body is held to
:data:`MAX_BODY_BYTES`. The agent's own calls under ``/api/v1/nodes/{mac}/`` are in
routes_boot.py.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import BaseModel

from provisioner import prometheus_sd
from provisioner.boot.http_context import AppContext, open_reads, require_api_token
from provisioner.boot.limits import DEFAULT_LIMIT
from provisioner.clusters import store
from provisioner.config import normalize_mac
from provisioner.enroll import lifecycle
from provisioner.errors import IllegalTransition, RegistryError
from provisioner.names import UnsafeValue
from provisioner.profiles import ProfileError

MAX_BODY_BYTES = DEFAULT_LIMIT  # a write's body: a hostname and a boot choice


class NodeUpdate(BaseModel):
    hostname: str | None = None
    boot: str | None = None  # "local" | "network"


def router(ctx: AppContext) -> APIRouter:
    """The node and profile API, for ``app.include_router``."""
    routes = APIRouter()
    writes = [Depends(require_api_token(ctx))]
    reads = [Depends(require_api_token(ctx, unless=open_reads))]

    @routes.get("/api/v1/nodes", dependencies=reads)
    def list_nodes() -> list[dict[str, str | float | int | None]]:
        return [n.as_dict() for n in ctx.registry.nodes()]

    @routes.get("/api/v1/nodes/{key}", dependencies=reads)
    def show_node(key: str) -> dict[str, object]:
        node = ctx.registry.node(normalize_mac(key) or key)
        if node is None:
            raise HTTPException(404, f"no node {key}")
        inventory = ctx.registry.inventory_document(node.mac)
        return {
            **node.as_dict(),
            "timeline": [e.as_dict() for e in ctx.registry.events(node.mac)],
            "inventory": json.loads(inventory) if inventory else None,
        }

    @routes.patch("/api/v1/nodes/{key}", dependencies=writes)
    def update_node(key: str, update: NodeUpdate) -> dict[str, str | float | int | None]:
        """The same operations as ``node rename`` and ``node boot`` (enroll/lifecycle.py):
        a cluster's member keeps its name, a taken or malformed name is refused."""
        node = ctx.registry.node(normalize_mac(key) or key)
        if node is None:
            raise HTTPException(404, f"no node {key}")
        if update.boot not in (None, "local", "network"):
            raise HTTPException(422, "boot must be 'local' or 'network'")
        try:
            if update.hostname:
                node, _ = lifecycle.rename(ctx.registry, node.mac, update.hostname)
            elif update.hostname == "":
                raise HTTPException(422, "a node's hostname cannot be emptied: rename it")
            if update.boot is not None:
                target = lifecycle.BootTarget(update.boot)
                _, node = lifecycle.boot(ctx.registry, node.mac, target, by="api")
        except (IllegalTransition, RegistryError) as exc:
            raise HTTPException(409, str(exc)) from exc
        except UnsafeValue as exc:
            raise HTTPException(422, str(exc)) from exc
        return node.as_dict()

    @routes.delete("/api/v1/nodes/{key}", status_code=204, dependencies=writes)
    def delete_node(key: str) -> Response:
        node = ctx.registry.node(normalize_mac(key) or key)
        if node is None:
            raise HTTPException(404, f"no node {key}")
        try:
            lifecycle.remove(ctx.registry, node.mac, state_dir=ctx.config.state_dir)
        except RegistryError as exc:  # a cluster's member
            raise HTTPException(409, str(exc)) from exc
        return Response(status_code=204)

    @routes.get("/api/v1/prometheus/targets", dependencies=reads)
    def prometheus_targets() -> list[dict[str, object]]:
        """Every node's exporter and the appliance's /metrics, for ``http_sd_configs``."""
        cfg = ctx.config
        return prometheus_sd.targets(
            ctx.registry.nodes(),
            store.load_all(ctx.registry),
            appliance=f"{cfg.network.server_ip}:{cfg.http.port}",
            node_exporter_port=cfg.prometheus.node_exporter_port,
        )

    @routes.post("/api/v1/profiles/reload", dependencies=writes)
    def reload_profiles() -> dict[str, object]:
        """Read hwprofiles/ again and re-fingerprint every node (also on SIGHUP)."""
        if ctx.enroller is None:
            raise HTTPException(409, "this appliance runs without profiles")
        try:
            changes = ctx.enroller.reload()
        except ProfileError as exc:
            raise HTTPException(
                422,
                {
                    "error": "profiles refused; the last good set stays",
                    "problems": [str(p) for p in exc.problems],
                },
            ) from exc
        return {"changed": [c.as_dict() for c in changes], "profiles": len(ctx.enroller.profiles)}

    return routes
