"""What a booting node asks the HTTP app for, and the per-boot token that ties it together.

- ``GET /boot/{mac}.ipxe``: the node's iPXE script, decided by the boot policy; each
  script carries a fresh per-boot token;
- ``POST /api/v1/nodes/{mac}/inventory``: the agent's report (its text format or a JSON
  inventory), answered with whether to reboot into the node's image now;
- ``GET /api/v1/nodes/{mac}/authorized_keys``: the control node's SSH key, for the
  booting image to install for root;
- ``GET /api/v1/nodes/{mac}/host_key``: the node's own SSH host key, made once and kept
  by the control node (:mod:`provisioner.hostkeys`), so a reboot keeps it;
- ``POST /api/v1/nodes/{mac}/integrity``: the image's initramfs found that the root it
  fetched is not the published one (:mod:`provisioner.boot.integrity`): the node fails.
  The inventory POST carries the same check's good outcome in its ``X-Provisioner-Root``
  header; a report whose root differs is refused (409) and fails the node too.

Who gets a token (:func:`token_refusal`): full mode, only the holder of the MAC's bound
lease; proxy mode, only the address its PXE request named (if seen), and while its latest
token is live, nobody from another address. A MAC that never network-booted through us
gets 404, and no node. A script asked for on a node's behalf
(``X-Provisioner-On-Behalf``: the lab starts container nodes so) is taken only from the
appliance itself: loopback or its own address, which no other machine can connect from.

A token lives :data:`BOOT_TOKEN_SECONDS`, bound to its asker's address in full mode and
to its first user's otherwise; it is good for one inventory POST and any number of
``authorized_keys`` and ``host_key`` fetches. A request without a good one is refused
(401) and put on the node's timeline (at most :data:`REFUSED_EVENTS_PER_MINUTE` events a
node; the rest are counted in ``provisioner_events_dropped_total`` only). Requests never
set a node's address, except the report in proxy mode: its source, as the token was
checked.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from ipaddress import ip_address
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request, Response
from fastapi.responses import PlainTextResponse

from provisioner.boot.dhcp_server import FLUSH_SECONDS
from provisioner.boot.http_context import AppContext, bearer, client_ip
from provisioner.boot.integrity import (
    ROOT_HEADER,
    BadRootReport,
    RootReport,
    Verdict,
    failure_reason,
    judge,
    parse_integrity_body,
    parse_root_header,
)
from provisioner.boot.policy import BootKind
from provisioner.config import Config, Mode, normalize_mac
from provisioner.discovery import schema
from provisioner.discovery.dumps.agent import from_report
from provisioner.discovery.model import SCHEMA
from provisioner.discovery.report import parse_report
from provisioner.enroll.matching import receive
from provisioner.hostkeys import ensure_host_key, issued_fingerprint
from provisioner.names import UnsafeValue
from provisioner.records import BootToken, Detail, EventKind, TokenCheck
from provisioner.states import BOOTS_PROFILE_IMAGE, NodeEvent, NodeState

log = logging.getLogger(__name__)

MAX_INVENTORY_BYTES = 8 * 1024 * 1024
ON_BEHALF_HEADER = "X-Provisioner-On-Behalf"  # a boot script asked for by a proxy (the lab)
IPXE_MEDIA_TYPE = "text/plain; charset=utf-8"
BOOT_TOKEN_SECONDS = 15 * 60  # from the script to the image's report: ~2 min under TCG
REFUSED_EVENTS_PER_MINUTE = 10
# The DHCP service writes leases and events behind, every FLUSH_SECONDS: iPXE may ask for
# its script sooner after its DHCPACK. Wait this long once before "no DHCP seen".
DHCP_SETTLE_SECONDS = 3 * FLUSH_SECONDS


def router(ctx: AppContext, *, clock: Callable[[], float] = time.time) -> APIRouter:
    """The boot script and the two calls made with its token, for ``app.include_router``;
    ``clock`` (the registry's time) gives tokens their lifetime."""
    routes = APIRouter()
    budget = EventBudget(REFUSED_EVENTS_PER_MINUTE)

    def refused(mac: str, reason: str, detail: Detail) -> None:
        """Count a refused request and put it on the node's timeline."""
        ctx.metrics.inc("provisioner_http_refused_total", reason=reason)
        refused_event(mac, detail)

    def refused_event(mac: str, detail: Detail) -> None:
        """A ``refused`` event for a known node, within its budget (else only counted)."""
        if ctx.registry.node(mac) is None:
            return
        if budget.take(mac):
            ctx.registry.add_event(mac, EventKind.REFUSED, detail)
        else:
            ctx.metrics.inc("provisioner_events_dropped_total", kind=EventKind.REFUSED.value)

    def require_boot_token(
        mac: str, authorization: str | None, source: str, what: str, *, spend: bool = False
    ) -> None:
        """Refuse (401, on the node's timeline) a request without this boot's token."""
        token = bearer(authorization)
        check = TokenCheck.UNKNOWN
        if token is not None:
            check = ctx.registry.use_boot_token(mac, token, source=source, spend=spend, now=clock())
        if check is not TokenCheck.OK:
            refused(mac, "boot-token", {"what": what, "why": check.value, "client": source})
            log.info("refused %s mac=%s client=%s: %s", what, mac, source, check.value)
            raise HTTPException(
                401, "a valid per-boot token is required", headers={"WWW-Authenticate": "Bearer"}
            )

    def published_root(mac: str) -> tuple[str | None, str | None]:
        """The image the node's last boot script named, and its root's sha256 (if any)."""
        node = ctx.registry.node(mac)
        image = node.image if node is not None else None
        found = ctx.find_image(image) if image else None
        if found is None or found.squashfs is None:
            return image, None
        return image, found.digests().get("squashfs")

    def judge_root(mac: str, reported: RootReport | None) -> Verdict:
        """Put the verdict on the timeline; a mismatch fails the node."""
        image, published = published_root(mac)
        verdict = judge(published, reported)
        if verdict is Verdict.NO_ROOT:
            return verdict
        detail: dict[str, str | None] = {
            "verdict": verdict.value, "image": image, "published": published,
            **(reported.as_detail() if reported is not None else {}),
        }  # fmt: skip
        ctx.registry.add_event(mac, EventKind.INTEGRITY, detail)
        if verdict is Verdict.MISMATCH:
            assert image is not None and published is not None and reported is not None
            reason = failure_reason(image, published, reported)
            ctx.metrics.inc("provisioner_http_refused_total", reason="root-integrity")
            ctx.registry.transition(mac, NodeEvent.FAIL, reason=reason)
            log.error("root integrity mac=%s: %s", mac, reason)
        return verdict

    @routes.get("/boot/{name}", response_class=PlainTextResponse)
    def boot_script(name: str, request: Request) -> Response:
        if not name.endswith(".ipxe"):
            raise HTTPException(404, "boot scripts are /boot/<mac>.ipxe")
        mac = mac_or_404(name.removesuffix(".ipxe"))
        asker = client_ip(request)
        on_behalf = request.headers.get(ON_BEHALF_HEADER) is not None
        if on_behalf and not is_appliance(asker, ctx.config):
            only = f"{ON_BEHALF_HEADER} is taken only from the appliance itself"
            refused(mac, "on-behalf", {"what": "boot script", "why": only, "client": asker})
            raise HTTPException(403, only)
        now = clock()
        full = ctx.config.network.mode is Mode.FULL

        def seen() -> bool:
            return ctx.registry.node(mac) is not None or ctx.registry.has_dhcp(mac)

        def dhcp_address() -> str | None:
            return ctx.registry.bound_address(mac, now) if full else ctx.registry.dhcp_address(mac)

        if not on_behalf and not (seen() or settled(seen)):
            ctx.metrics.inc("provisioner_http_refused_total", reason="unknown-node")
            raise HTTPException(404, f"{mac} has not network-booted here (no DHCP seen)")
        if not on_behalf:
            dhcp = dhcp_address()
            if dhcp is None and full and settled(lambda: dhcp_address() is not None):
                dhcp = dhcp_address()
            why = token_refusal(asker, dhcp, ctx.registry.boot_token(mac), now, needs_dhcp=full)
            if why is not None:
                refused(mac, "boot-address", {"what": "boot script", "why": why, "client": asker})
                log.warning("boot script refused mac=%s client=%s: %s", mac, asker, why)
                raise HTTPException(403, why)
        # Full mode: the asker is the bound lease's address, the node's (it may be new here).
        lease = asker if full and not on_behalf else None
        node = ctx.registry.touch_node(mac, ip=lease, now=now)
        spec = ctx.boot_spec(node)
        token = secrets.token_urlsafe(24)
        ctx.registry.issue_boot_token(
            mac, token, asked_by=asker, bound_to=lease,
            expires=now + BOOT_TOKEN_SECONDS, now=now,
        )  # fmt: skip
        try:
            console = ctx.config.console
            script = ctx.renderer.render(
                spec, mac=mac, state=node.state, base=ctx.config.http_base, token=token,
                console_port=console.port if console.enabled else None,
            )  # fmt: skip
        except UnsafeValue as exc:  # e.g. an image name that may not reach a boot script
            log.error("boot script for mac=%s not rendered: %s", mac, exc)
            raise HTTPException(500, f"no boot script for {mac}: {exc}") from exc
        with ctx.registry.batch():
            if spec.kind in (BootKind.DISCOVERY, BootKind.IMAGE):
                ctx.registry.set_booted_image(mac, spec.image)
            detail: dict[str, str | bool | None] = {
                "boot": spec.kind.value, "image": spec.image, "client": asker,
            }  # fmt: skip
            if on_behalf:
                detail["on_behalf"] = True
            if spec.reason:
                detail["reason"] = spec.reason
            ctx.registry.add_event(mac, EventKind.SCRIPT, detail)
        if spec.kind is BootKind.REFUSED:
            refused_event(mac, {"what": spec.image, "why": spec.reason})
        log.info("boot script served mac=%s boot=%s image=%s", mac, spec.kind, spec.image)
        return PlainTextResponse(script, media_type=IPXE_MEDIA_TYPE)

    @routes.post("/api/v1/nodes/{mac_raw}/inventory", status_code=202)
    async def post_inventory(
        mac_raw: str, request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, str]:
        """The agent's report: its raw text format (text/plain) or a JSON object."""
        mac = mac_or_404(mac_raw)
        source = client_ip(request)
        require_boot_token(mac, authorization, source, "inventory")
        body = await request.body()
        if len(body) > MAX_INVENTORY_BYTES:
            raise HTTPException(413, f"inventory over {MAX_INVENTORY_BYTES} bytes")
        stored = inventory_document(body, request.headers.get("content-type", ""))
        try:
            root = parse_root_header(request.headers.get(ROOT_HEADER))
        except BadRootReport as exc:
            raise HTTPException(422, str(exc)) from None
        # Spent only now: a report refused as malformed (422) may be sent again.
        require_boot_token(mac, authorization, source, "inventory", spend=True)
        if judge_root(mac, root) is Verdict.MISMATCH:
            raise HTTPException(409, "this root is not the image the control node published")
        before = ctx.registry.node(mac)
        proxy = ctx.config.network.mode is Mode.PROXY
        got = receive(
            ctx.registry, ctx.enroller, mac, json.dumps(stored), ip=source if proxy else None,
            issued=issued_fingerprint(ctx.config.state_dir, mac),
        )  # fmt: skip
        node = got.node
        if got.held is not None:
            return {"mac": mac, "state": node.state.value, "next": "stay", "approval": "pending"}
        problems = stored.get("problems") or []
        # Just enrolled (auto_enroll, or enroll --power-cycle) with its image built: the
        # discovery image reboots now and the node comes back on its image.
        just_enrolled = node.state is NodeState.ENROLLED and (
            before is None or before.state not in BOOTS_PROFILE_IMAGE
        )
        reboot = just_enrolled and ctx.boot_spec(node).kind is BootKind.IMAGE
        if (
            ctx.on_image_report is not None
            and not just_enrolled
            and node.state in BOOTS_PROFILE_IMAGE
            and ctx.boot_spec(node).kind is BootKind.IMAGE
        ):
            ctx.on_image_report(node)  # back on its image: its clusters converge
        next_step = "reboot" if reboot else "stay"
        log.info(
            "inventory received mac=%s state=%s problems=%d next=%s",
            mac, node.state, len(problems), next_step,
        )  # fmt: skip
        return {"mac": mac, "state": node.state.value, "next": next_step}

    @routes.post("/api/v1/nodes/{mac_raw}/integrity")
    async def post_integrity(
        mac_raw: str, request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, str]:
        """The initramfs' report of a root that is not the published one (its boot stops)."""
        mac = mac_or_404(mac_raw)
        source = client_ip(request)
        require_boot_token(mac, authorization, source, "integrity")
        try:
            reported = parse_integrity_body(await request.body())
        except BadRootReport as exc:
            raise HTTPException(422, str(exc)) from None
        # Spent: nothing more of this boot (its inventory) is taken.
        require_boot_token(mac, authorization, source, "integrity", spend=True)
        verdict = judge_root(mac, reported)
        node = ctx.registry.node(mac)
        assert node is not None
        return {"mac": mac, "verdict": verdict.value, "state": node.state.value}

    @routes.get("/api/v1/nodes/{mac_raw}/authorized_keys", response_class=PlainTextResponse)
    def authorized_keys(
        mac_raw: str, request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> PlainTextResponse:
        """The control node's public key, for the booting image to install for root."""
        mac = mac_or_404(mac_raw)
        require_boot_token(mac, authorization, client_ip(request), "authorized_keys")
        if not ctx.authorized_keys:
            raise HTTPException(404, "the control node has no SSH key")
        ctx.registry.add_event(mac, EventKind.KEYS, {"what": "authorized_keys"})
        return PlainTextResponse(ctx.authorized_keys.strip() + "\n")

    @routes.get("/api/v1/nodes/{mac_raw}/host_key", response_class=PlainTextResponse)
    def host_key(
        mac_raw: str, request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> PlainTextResponse:
        """The node's SSH host key (private, OpenSSH format), the same at every boot."""
        mac = mac_or_404(mac_raw)
        require_boot_token(mac, authorization, client_ip(request), "host_key")
        node = ctx.registry.node(mac)
        pair = ensure_host_key(ctx.config.state_dir, mac, node.hostname if node else None)
        ctx.registry.add_event(
            mac, EventKind.KEYS, {"what": "host_key", "fingerprint": pair.fingerprint}
        )
        return PlainTextResponse(pair.private_path.read_text())

    return routes


def settled(check: Callable[[], bool]) -> bool:
    """``check`` again after the DHCP service's writes behind have landed."""
    time.sleep(DHCP_SETTLE_SECONDS)
    return check()


def token_refusal(
    asker: str, dhcp: str | None, live: BootToken | None, now: float, *, needs_dhcp: bool
) -> str | None:
    """Why ``asker`` gets no boot token for a MAC (None: it gets one).

    Full mode (``needs_dhcp``): ``dhcp`` is the MAC's bound lease, given by us; its holder
    is the only asker. Proxy mode: ``dhcp`` is the address the MAC's PXE request named, if
    seen (anyone may send that packet), the only asker then; and while the MAC's latest
    token (``live``) is live, spent or not, nobody from another address gets one.
    """
    if needs_dhcp:
        if dhcp is None:
            return "this MAC holds no DHCP lease"
        return None if asker == dhcp else f"{asker} does not hold this MAC's DHCP lease"
    if dhcp is not None and asker != dhcp:
        return f"{asker} is not the address this MAC's DHCP request named"
    if live is not None and live.live(now) and live.asked_by != asker:
        return "a live boot token was given to another address"
    return None


def is_appliance(address: str, cfg: Config) -> bool:
    """Is ``address`` the appliance itself: loopback or its own cluster address?

    The kernel drops a packet from outside that claims a local source address, and a TCP
    handshake from a forged one cannot complete: only processes here connect from these.
    The lab asks for its containers' scripts from the appliance's namespace, so from
    ``network.server_ip``.
    """
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return ip.is_loopback or ip == cfg.network.server_ip


class EventBudget:
    """At most ``limit`` events per node per ``window`` seconds; ``take`` says whether one
    more fits (a flood of refused requests must not grow a node's timeline without end)."""

    def __init__(
        self, limit: int, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ):
        self.limit = limit
        self.window = window
        self.clock = clock
        self._spent: dict[str, tuple[float, int]] = {}  # mac -> (window start, events)

    def take(self, mac: str) -> bool:
        now = self.clock()
        start, count = self._spent.get(mac, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        if count >= self.limit:
            return False
        if len(self._spent) > 4096:  # forget nodes whose window has passed
            self._spent = {m: v for m, v in self._spent.items() if now - v[0] < self.window}
        self._spent[mac] = (start, count + 1)
        return True


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
        inventory = from_report(result)
        try:
            schema.check(inventory)  # the text report's values meet the JSON ones' patterns
        except schema.InventorySchemaError as exc:
            raise HTTPException(422, f"not a {SCHEMA} inventory: {exc}") from exc
        return {
            "format": "agent/1",
            "inventory": schema.to_json(inventory),
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
