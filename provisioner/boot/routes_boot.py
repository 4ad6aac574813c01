"""What a booting node asks the HTTP app for, and the per-boot token that ties it together.

- ``GET /boot/{mac}.ipxe``: the node's iPXE script, decided by the boot policy; each
  script carries a fresh per-boot token;
- ``POST /api/v1/nodes/{mac}/inventory``: the agent's report (its text format or a JSON
  inventory), answered with whether to reboot into the node's image now;
- ``GET /api/v1/nodes/{mac}/authorized_keys``: the control node's SSH key, for the
  booting image to install for root.

The last two need this boot's token; a request without it is refused (401) and put on
the node's timeline.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request, Response
from fastapi.responses import PlainTextResponse

from provisioner.boot.http_context import AppContext, bearer, client_ip
from provisioner.boot.policy import BootKind
from provisioner.config import normalize_mac
from provisioner.discovery import schema
from provisioner.discovery.dumps.agent import from_report
from provisioner.discovery.model import SCHEMA
from provisioner.discovery.report import parse_report
from provisioner.records import EventKind
from provisioner.states import BOOTS_PROFILE_IMAGE, NodeState

log = logging.getLogger(__name__)

MAX_INVENTORY_BYTES = 8 * 1024 * 1024
ON_BEHALF_HEADER = "X-Provisioner-On-Behalf"  # a boot script asked for by a proxy (the lab)
IPXE_MEDIA_TYPE = "text/plain; charset=utf-8"


def router(ctx: AppContext) -> APIRouter:
    """The boot script and the two calls made with its token, for ``app.include_router``."""
    routes = APIRouter()

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

    @routes.get("/boot/{name}", response_class=PlainTextResponse)
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

    @routes.post("/api/v1/nodes/{mac_raw}/inventory", status_code=202)
    async def post_inventory(
        mac_raw: str, request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, str]:
        """The agent's report: its raw text format (text/plain) or a JSON object."""
        mac = mac_or_404(mac_raw)
        require_boot_token(mac, authorization, "inventory")
        body = await request.body()
        if len(body) > MAX_INVENTORY_BYTES:
            raise HTTPException(413, f"inventory over {MAX_INVENTORY_BYTES} bytes")
        stored = inventory_document(body, request.headers.get("content-type", ""))
        before = ctx.registry.node(mac)
        node = ctx.registry.store_inventory(mac, json.dumps(stored))
        if ctx.enroller is not None:
            node = ctx.enroller.on_inventory(mac)
        problems = stored.get("problems") or []
        # Just enrolled (auto_enroll, or enroll --power-cycle) with its image built: the
        # discovery image reboots now and the node comes back on its image.
        just_enrolled = node.state is NodeState.ENROLLED and (
            before is None or before.state not in BOOTS_PROFILE_IMAGE
        )
        reboot = just_enrolled and ctx.boot_spec(node).kind is BootKind.IMAGE
        next_step = "reboot" if reboot else "stay"
        log.info(
            "inventory received mac=%s state=%s problems=%d next=%s",
            mac, node.state, len(problems), next_step,
        )  # fmt: skip
        return {"mac": mac, "state": node.state.value, "next": next_step}

    @routes.get("/api/v1/nodes/{mac_raw}/authorized_keys", response_class=PlainTextResponse)
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

    return routes


def mac_or_404(raw: str) -> str:
    mac = normalize_mac(raw)
    if mac is None:
        raise HTTPException(404, f"not a MAC address: {raw}")
    return mac


def inventory_document(body: bytes, content_type: str) -> dict[str, Any]:
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
