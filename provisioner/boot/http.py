"""The HTTP side of the boot service (FastAPI): boot scripts, files, and the REST API.

- ``GET /boot/{mac}.ipxe``: the node's iPXE script, decided by the boot policy;
- ``GET|HEAD /images/{name}/{file}``: kernels, initrds, root images (Content-Length, Range);
- ``GET|HEAD /tftp/{file}``: the TFTP root over HTTP (UEFI HTTP boot fetches iPXE here);
- ``GET|HEAD /artifacts/{file}``, ``/models/{file}``: runtimes and models for post-install;
- ``/api/v1/...``: nodes; mutating calls need the API bearer token, the agent's inventory
  POST and its ``authorized_keys`` GET (the control node's SSH key) need the per-boot
  token its boot script carried;
- ``GET /metrics``: Prometheus counters;
- ``/clusters/{name}/v1/...``: a cluster's OpenAI gateway, open where the cluster has
  ``gateway: true`` (provisioner/gateway.py).

Every request a node makes is put on its timeline in the registry.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from provisioner.boot.gateway import Gateway, router
from provisioner.boot.http_files import FileServed, media_type
from provisioner.boot.ipxe import ScriptRenderer
from provisioner.boot.policy import ENROLLED_STATES, BootKind, BootSpec, boot_spec, image_for
from provisioner.boot.tftp import confine
from provisioner.config import Config, normalize_mac
from provisioner.discovery import schema
from provisioner.discovery.dumps.agent import from_report
from provisioner.discovery.model import SCHEMA
from provisioner.discovery.report import parse_report
from provisioner.enroll.matching import Enroller
from provisioner.errors import IllegalTransition, RegistryError, TftpPathError
from provisioner.image import ImageError
from provisioner.image.store import ImageStore, StoredImage
from provisioner.metrics import Metrics
from provisioner.profiles import ProfileError
from provisioner.records import EventKind, Node
from provisioner.registry import Registry
from provisioner.states import NodeEvent, NodeState

log = logging.getLogger(__name__)

MAX_INVENTORY_BYTES = 8 * 1024 * 1024
ON_BEHALF_HEADER = "X-Provisioner-On-Behalf"  # a boot script asked for by a proxy (the lab)
IPXE_MEDIA_TYPE = "text/plain; charset=utf-8"


@dataclass
class AppContext:
    config: Config
    registry: Registry
    api_token: str
    metrics: Metrics
    renderer: ScriptRenderer
    enroller: Enroller | None = None
    authorized_keys: str | None = None  # the control node's public key(s), for images

    def __post_init__(self) -> None:
        self.images = ImageStore(self.config.image_dir)

    def find_image(self, ref: str) -> StoredImage | None:
        try:
            return self.images.find(ref)
        except ImageError:
            return None

    def boot_spec(self, node: Node) -> BootSpec:
        """The boot policy's answer for ``node``, with what the registry and profiles say."""
        profile = None
        if node.profile and self.enroller is not None:
            profile = self.enroller.profiles.get(node.profile)
        inventory = self.registry.inventory(node.mac)
        image = image_for(
            node.profile,
            profile.image if profile else None,
            self.registry.profile_images(),
            self.config.boot.image,
        )
        return boot_spec(
            node,
            self.find_image,
            self.config.boot.kernel_args,
            image=image,
            profile_args=profile.kernel_args if profile else (),
            memory_bytes=inventory.memory_bytes if inventory else None,
        )


class NodeUpdate(BaseModel):
    hostname: str | None = None
    boot: str | None = None  # "local" | "network"


def create_app(ctx: AppContext) -> FastAPI:
    app = FastAPI(title="provisioner", version="1", docs_url="/api/docs", redoc_url=None)
    app.state.ctx = ctx

    def bearer(authorization: str | None) -> str | None:
        if authorization and authorization.lower().startswith("bearer "):
            return authorization[7:].strip()
        return None

    def require_api_token(authorization: Annotated[str | None, Header()] = None) -> None:
        token = bearer(authorization)
        if token is None or not secrets.compare_digest(token, ctx.api_token):
            ctx.metrics.inc("provisioner_http_refused_total", reason="api-token")
            raise HTTPException(
                401, "a valid API bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )

    def require_boot_token(mac: str, authorization: str | None, what: str) -> None:
        """Refuse (401, on the node's timeline) a request without this boot's token."""
        token = bearer(authorization)
        if token is None or not ctx.registry.check_boot_token(mac, token):
            ctx.metrics.inc("provisioner_http_refused_total", reason="boot-token")
            if ctx.registry.node(mac) is not None:
                ctx.registry.add_event(
                    mac, EventKind.REFUSED, {"what": what, "why": "bad boot token"}
                )
            raise HTTPException(
                401, "a valid per-boot token is required", headers={"WWW-Authenticate": "Bearer"}
            )

    def mac_or_404(raw: str) -> str:
        mac = normalize_mac(raw)
        if mac is None:
            raise HTTPException(404, f"not a MAC address: {raw}")
        return mac

    def client_ip(request: Request) -> str:
        return request.client.host if request.client else "?"

    # ---------------------------------------------------------------- boot scripts

    @app.get("/boot/{name}", response_class=PlainTextResponse)
    def boot_script(name: str, request: Request) -> Response:
        if not name.endswith(".ipxe"):
            raise HTTPException(404, "boot scripts are /boot/<mac>.ipxe")
        mac = mac_or_404(name.removesuffix(".ipxe"))
        # A script fetched on the node's behalf (the lab's container nodes: the lab asks,
        # as iPXE would) says nothing of the node's address.
        proxied = request.headers.get(ON_BEHALF_HEADER) is not None
        node = ctx.registry.touch_node(mac, ip=None if proxied else client_ip(request))
        spec = ctx.boot_spec(node)
        token = secrets.token_urlsafe(24)
        ctx.registry.new_boot_token(mac, token)
        script = ctx.renderer.render(
            spec, mac=mac, state=node.state, base=ctx.config.http_base, token=token
        )
        with ctx.registry.batch():
            if spec.kind in (BootKind.DISCOVERY, BootKind.IMAGE):
                ctx.registry.set_booted_image(mac, spec.image)
            detail = {"boot": spec.kind.value, "image": spec.image, "client": client_ip(request)}
            if spec.reason:
                detail["reason"] = spec.reason
            ctx.registry.add_event(mac, EventKind.SCRIPT, detail)
            if spec.kind is BootKind.REFUSED:
                ctx.registry.add_event(
                    mac, EventKind.REFUSED, {"what": spec.image, "why": spec.reason}
                )
        log.info("boot script served mac=%s boot=%s image=%s", mac, spec.kind, spec.image)
        return PlainTextResponse(script, media_type=IPXE_MEDIA_TYPE)

    # ---------------------------------------------------------------- files

    def serve_file(root: Path, rel: str, area: str, request: Request) -> FileResponse:
        try:
            path = confine(root, rel)
        except TftpPathError as exc:
            ctx.metrics.inc("provisioner_http_refused_total", reason="path")
            raise HTTPException(404, f"not found: {rel}") from exc
        size = path.stat().st_size
        task = None
        if request.method == "GET":
            served = FileServed(
                area=area,
                rel=rel,
                size=size,
                sent=size,
                range=request.headers.get("range"),
                seconds=0.0,
                client=client_ip(request),
                mac_hint=request.query_params.get("mac"),
            )
            task = BackgroundTask(record_file, ctx, served, time.monotonic())
        return FileResponse(path, media_type=media_type(path.name), background=task)

    @app.api_route("/images/{rel:path}", methods=["GET", "HEAD"])
    def image_file(rel: str, request: Request) -> FileResponse:
        return serve_file(ctx.config.image_dir, rel, "images", request)

    @app.api_route("/artifacts/{rel:path}", methods=["GET", "HEAD"])
    def artifact_file(rel: str, request: Request) -> FileResponse:
        """Runtimes built once on the control node (llama.cpp), fetched by post-install."""
        return serve_file(ctx.config.state_dir / "artifacts", rel, "artifacts", request)

    @app.api_route("/models/{rel:path}", methods=["GET", "HEAD"])
    def model_file(rel: str, request: Request) -> FileResponse:
        """Model files from the model store, fetched (and sha256-checked) by the head."""
        return serve_file(ctx.config.state_dir / "models", rel, "models", request)

    @app.api_route("/tftp/{rel:path}", methods=["GET", "HEAD"])
    def tftp_file(rel: str, request: Request) -> FileResponse:
        return serve_file(ctx.config.tftp_root, rel, "tftp", request)

    # ---------------------------------------------------------------- API

    @app.get("/api/v1/nodes")
    def list_nodes() -> list[dict[str, str | float | int | None]]:
        return [n.as_dict() for n in ctx.registry.nodes()]

    @app.get("/api/v1/nodes/{key}")
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

    @app.post("/api/v1/nodes/{mac_raw}/inventory", status_code=202)
    async def post_inventory(
        mac_raw: str, request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, str]:
        """The agent's report: its raw text format (text/plain) or a JSON object."""
        mac = mac_or_404(mac_raw)
        require_boot_token(mac, authorization, "inventory")
        body = await request.body()
        if len(body) > MAX_INVENTORY_BYTES:
            raise HTTPException(413, f"inventory over {MAX_INVENTORY_BYTES} bytes")
        stored = _inventory_document(body, request.headers.get("content-type", ""))
        before = ctx.registry.node(mac)
        node = ctx.registry.store_inventory(mac, json.dumps(stored))
        if ctx.enroller is not None:
            node = ctx.enroller.on_inventory(mac)
        problems = stored.get("problems") or []
        # Just enrolled (auto_enroll, or enroll --power-cycle) with its image built: the
        # discovery image reboots now and the node comes back on its image.
        just_enrolled = node.state is NodeState.ENROLLED and (
            before is None or before.state not in ENROLLED_STATES
        )
        reboot = just_enrolled and ctx.boot_spec(node).kind is BootKind.IMAGE
        next_step = "reboot" if reboot else "stay"
        log.info(
            "inventory received mac=%s state=%s problems=%d next=%s",
            mac, node.state, len(problems), next_step,
        )  # fmt: skip
        return {"mac": mac, "state": node.state.value, "next": next_step}

    @app.get("/api/v1/nodes/{mac_raw}/authorized_keys", response_class=PlainTextResponse)
    def authorized_keys(
        mac_raw: str, authorization: Annotated[str | None, Header()] = None
    ) -> PlainTextResponse:
        """The control node's public key, for the booting image to install for root."""
        mac = mac_or_404(mac_raw)
        require_boot_token(mac, authorization, "authorized_keys")
        if not ctx.authorized_keys:
            raise HTTPException(404, "the control node has no SSH key")
        ctx.registry.add_event(mac, EventKind.KEYS, {"what": "authorized_keys"})
        return PlainTextResponse(ctx.authorized_keys.strip() + "\n")

    @app.patch("/api/v1/nodes/{key}", dependencies=[Depends(require_api_token)])
    def update_node(key: str, update: NodeUpdate) -> dict[str, str | float | int | None]:
        node = ctx.registry.node(normalize_mac(key) or key)
        if node is None:
            raise HTTPException(404, f"no node {key}")
        if update.boot not in (None, "local", "network"):
            raise HTTPException(422, "boot must be 'local' or 'network'")
        try:
            if update.hostname is not None:
                node = ctx.registry.set_hostname(node.mac, update.hostname or None)
            if update.boot is not None:
                event = NodeEvent.BOOT_LOCAL if update.boot == "local" else NodeEvent.BOOT_NETWORK
                node = ctx.registry.transition(node.mac, event, reason="api")
        except IllegalTransition as exc:
            raise HTTPException(409, str(exc)) from exc
        except RegistryError as exc:
            raise HTTPException(409, str(exc)) from exc
        return node.as_dict()

    @app.delete("/api/v1/nodes/{key}", status_code=204, dependencies=[Depends(require_api_token)])
    def delete_node(key: str) -> Response:
        node = ctx.registry.node(normalize_mac(key) or key)
        if node is None:
            raise HTTPException(404, f"no node {key}")
        ctx.registry.forget(node.mac)
        return Response(status_code=204)

    @app.post("/api/v1/profiles/reload", dependencies=[Depends(require_api_token)])
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

    app.include_router(router(Gateway(ctx.registry, ctx.metrics)))

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(ctx.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        return JSONResponse({"ok": True, "mode": ctx.config.network.mode.value})

    return app


def _inventory_document(body: bytes, content_type: str) -> dict[str, Any]:
    """What the registry keeps of a report: the inventory in its schema, problems, raw text."""
    if content_type.startswith("text/plain"):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HTTPException(422, f"report is not UTF-8: {exc}") from exc
        result = parse_report(text)
        if not result.inventory.pci and not result.inventory.nics:
            raise HTTPException(422, "not an agent report: " + "; ".join(result.problems[:3]))
        return {
            "format": "agent/1",
            "inventory": schema.to_json(from_report(result)),
            "problems": result.problems,
            "raw": text,
        }
    try:
        inventory = schema.from_json(json.loads(body))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HTTPException(422, f"inventory is not JSON: {exc}") from exc
    except schema.InventorySchemaError as exc:
        raise HTTPException(422, f"not a {SCHEMA} inventory: {exc}") from exc
    return {"format": "json", "inventory": schema.to_json(inventory), "problems": []}


def record_file(ctx: AppContext, served: FileServed, started: float | None = None) -> None:
    """Count a file handed out and put it on its node's timeline (by ?mac= or address)."""
    ctx.metrics.inc("provisioner_http_files_total", area=served.area)
    ctx.metrics.inc("provisioner_http_bytes_total", served.sent, area=served.area)
    mac = normalize_mac(served.mac_hint or "")
    node = ctx.registry.node(mac) if mac else ctx.registry.node_by_ip(served.client)
    if node is None:
        return
    seconds = served.seconds if started is None else time.monotonic() - started
    detail: dict[str, str | int | float | None] = {
        "area": served.area,
        "file": served.rel,
        "size": served.size,
        "sent": served.sent,
        "seconds": round(seconds, 4),
        "client": served.client,
    }
    if served.range:
        detail["range"] = served.range
    ctx.registry.add_event(node.mac, EventKind.HTTP_FILE, detail)
