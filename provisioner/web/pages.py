"""The web dashboard's routes (server-rendered with jinja2; one small script for the live
table), included by ``create_app`` (boot/http.py):

- ``GET /``: the node table, live over ``GET /events`` (server-sent events, feed.py), and
  the clusters;
- ``GET /nodes/{key}``: one node: its last boot drawn as a time line, its steps, its
  inventory, its last events; ``GET /clusters/{name}``: members, engine, model, the
  smoke history as TTFT and tokens/s charts, the front door's traffic to it;
- ``GET|POST /login``, ``POST /logout``: a login with the key (the API token) opens a
  session (session.py: an HttpOnly, SameSite=Strict cookie);
- ``POST /nodes/{key}/actions/{action}``, ``POST /clusters/{name}/actions/smoke``: the
  operator's actions (actions.py), each needing a session, the form's CSRF token and a
  same-origin ``Origin``; else 401/403 and nothing is done;
- ``GET /static/{name}``: the dashboard's own CSS and script (a fixed list, no paths).

Reads need no login where ``[dashboard] reads`` lets the browser's address in (by
default the cluster network and this machine); elsewhere a page redirects to the login.
Pages carry a Content-Security-Policy that allows only this origin's scripts and styles.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse

from provisioner.clusters import store as clusters
from provisioner.clusters.timing import last_smoke
from provisioner.config import API_TOKEN_FILE, Config, normalize_mac
from provisioner.console.store import tail
from provisioner.errors import ProvisionerError
from provisioner.metrics import Metrics
from provisioner.registry import Registry
from provisioner.timeline import ago
from provisioner.web import session
from provisioner.web.actions import NODE_ACTIONS, ActionError, Actions
from provisioner.web.board import Board
from provisioner.web.drawing import series, smoke_history, timeline
from provisioner.web.feed import Feed, FeedFull

HERE = Path(__file__).resolve().parent
STATIC = {  # name -> (file, media type): nothing else is served from /static
    "dashboard.css": (HERE / "static" / "dashboard.css", "text/css"),
    "dashboard.js": (HERE / "static" / "dashboard.js", "text/javascript"),
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY",
           "Referrer-Policy": "same-origin", "X-Content-Type-Options": "nosniff"}  # fmt: skip
MAX_FORM_BYTES = 4096
EVENTS_SHOWN = 60
CONSOLE_LINES = 200  # the node's last kernel lines (netconsole) on its page


class Dashboard:
    """What the dashboard's routes share: templates, sessions, the feed, the actions."""

    def __init__(
        self,
        config: Config,
        registry: Registry,
        api_token: str,
        metrics: Metrics,
        front_status: Callable[[], dict[str, Any]] | None = None,
    ):
        self.config = config
        self.registry = registry
        self.api_token = api_token
        self.metrics = metrics
        self.cfg = config.dashboard
        self.sessions = session.Sessions(secrets.token_bytes(32), self.cfg.session_hours * 3600)
        self.feed = Feed(Board(config.registry_location))
        self.actions = Actions(config, registry)
        self.front_status = front_status
        self.token_file = str(config.state_dir / API_TOKEN_FILE)
        self.flash: dict[str, tuple[str, bool]] = {}  # session -> the last action's outcome
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
            undefined=jinja2.StrictUndefined,
        )  # fmt: skip
        self.env.filters["ago"] = ago
        self.env.filters["stamp"] = lambda ts: time.strftime(
            "%Y-%m-%d %H:%M:%S", time.localtime(ts)
        )

    # ---------------------------------------------------------------- who is asking

    def sid(self, request: Request) -> str | None:
        sid = request.cookies.get(session.COOKIE)
        return sid if self.sessions.valid(sid, time.time()) else None

    def may_read(self, request: Request) -> bool:
        client = request.client.host if request.client else None
        return self.sid(request) is not None or session.may_read(
            self.cfg.reads, client, self.config.network.subnet
        )

    def page(self, request: Request, template: str, status: int = 200, **values: Any) -> Response:
        sid = self.sid(request)
        flash = self.flash.pop(sid, None) if sid else None
        html = self.env.get_template(template).render(
            logged_in=sid is not None, csrf=self.sessions.csrf(sid) if sid else "",
            flash=flash, reads=self.cfg.reads, token_file=self.token_file, **values,
        )  # fmt: skip
        return HTMLResponse(html, status, headers=HEADERS)

    def said(self, sid: str, text: str, ok: bool) -> None:
        """The outcome of a session's action, shown on its next page; one per session,
        and no more kept than there are live sessions."""
        self.flash[sid] = (text, ok)
        while len(self.flash) > session.MAX_SESSIONS:
            self.flash.pop(next(iter(self.flash)))

    def login_first(self, request: Request) -> Response:
        target = quote(request.url.path, safe="/")
        return RedirectResponse(f"/login?next={target}", 303, headers=HEADERS)

    async def form(self, request: Request) -> dict[str, str]:
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "form too large")
        fields = parse_qs(body.decode(errors="replace"), max_num_fields=16)
        return {k: v[0] for k, v in fields.items()}

    async def acting(self, request: Request) -> tuple[str, dict[str, str]]:
        """The session of a POST that may act, and its form; 401/403 otherwise."""
        sid = self.sid(request)
        if sid is None:
            self.metrics.inc("provisioner_http_refused_total", reason="dashboard-login")
            raise HTTPException(401, "log in to act (POST /login with the API token)")
        if not session.same_origin(request.headers.get("origin"), request.headers.get("host")):
            self.metrics.inc("provisioner_http_refused_total", reason="dashboard-origin")
            raise HTTPException(403, "cross-site request refused")
        fields = await self.form(request)
        if not self.sessions.csrf_ok(sid, fields.get("csrf")):
            self.metrics.inc("provisioner_http_refused_total", reason="dashboard-csrf")
            raise HTTPException(403, "the form's CSRF token does not match this session")
        return sid, fields

    # ---------------------------------------------------------------- what pages show

    def node_view(self, key: str) -> dict[str, Any] | None:
        reg = self.registry
        node = reg.node(normalize_mac(key) or key)
        if node is None:
            return None
        events = reg.events(node.mac)
        steps = reg.steps(node.mac)
        document = reg.inventory_document(node.mac)
        row = self.feed.board.rows.get(node.mac)
        return {
            "node": node, "row": row, "timeline": timeline(events, steps),
            "events": list(reversed(events))[:EVENTS_SHOWN],
            "steps": list(reversed(steps))[:EVENTS_SHOWN],
            "inventory": json.dumps(json.loads(document), indent=2) if document else None,
            "power_url": reg.power(node.mac),
            "clusters": [c.name for c in clusters.load_all(reg) if node.hostname in c.members],
            "console": tail(self.config.state_dir, node.mac, CONSOLE_LINES),
            "node_actions": NODE_ACTIONS,
        }  # fmt: skip

    def cluster_view(self, name: str) -> dict[str, Any] | None:
        reg = self.registry
        try:
            cluster = clusters.load(reg, name)
        except ProvisionerError:
            return None
        members = clusters.members(reg, cluster)
        head = reg.node(cluster.head)
        history = smoke_history(reg.steps(head.mac)) if head else []
        replicas: list[dict[str, Any]] = []
        if self.front_status is not None:
            for model, rows in self.front_status().get("models", {}).items():
                replicas += [_replica(model, r) for r in rows if r["cluster"] == name]
        return {
            "cluster": cluster, "members": members, "smoke": last_smoke(reg, cluster),
            "history": history,
            "ttft": series([p.ttft_s for p in history], 560, 160),
            "tps": series([p.tokens_per_s for p in history], 560, 160),
            "replicas": replicas, "smoking": self.actions.smoking(name),
        }  # fmt: skip


def _replica(model: str, r: dict[str, Any]) -> dict[str, Any]:
    """One front-door replica of the cluster, as the cluster page's traffic table shows it."""
    errors = r.get("errors") or {}
    ttft, tps = r.get("ttft_p50_s"), r.get("decode_tokens_per_s_p50")
    down = r.get("down_reason") or r.get("state")
    return {
        "replica": r["replica"],
        "model": model,
        "takes": "yes" if r.get("takes_traffic") else f"no: {down}",
        "requests": r.get("requests", 0),
        "errors": sum(errors.values()),
        "error_kinds": ", ".join(f"{k} {v}" for k, v in errors.items()),
        "outstanding": r.get("outstanding", 0),
        "ttft": "-" if ttft is None else f"{ttft:.3f} s",
        "tps": "-" if tps is None else f"{tps:.1f}",
    }


def router(board: Dashboard) -> APIRouter:
    routes = APIRouter(include_in_schema=False)

    @routes.get("/")
    async def index(request: Request) -> Response:
        if not board.may_read(request):
            return board.login_first(request)
        await board.feed.tick()  # a page is as fresh as the registry (a no-op when unchanged)
        rows = sorted(board.feed.board.rows.values(), key=lambda r: r.name)
        found = clusters.load_all(board.registry)
        smokes = {c.name: last_smoke(board.registry, c) for c in found}
        return board.page(request, "index.html.j2", rows=rows, clusters=found, smokes=smokes)

    def view(request: Request, template: str, found: dict[str, Any] | None, what: str) -> Response:
        """A node's or a cluster's page, or 404 when there is none."""
        if found is None:
            return board.page(request, "missing.html.j2", 404, what=what)
        return board.page(request, template, **found)

    @routes.get("/nodes/{key}")
    async def node_page(request: Request, key: str) -> Response:
        if not board.may_read(request):
            return board.login_first(request)
        await board.feed.tick()  # its row as fresh as the registry (the feed may be idle)
        found = await asyncio.to_thread(board.node_view, key)
        return view(request, "node.html.j2", found, f"node {key}")

    @routes.get("/clusters/{name}")
    def cluster_page(request: Request, name: str) -> Response:
        if not board.may_read(request):
            return board.login_first(request)
        return view(request, "cluster.html.j2", board.cluster_view(name), f"cluster {name}")

    @routes.get("/events")
    async def events(request: Request) -> Response:
        if not board.may_read(request):
            raise HTTPException(401, "log in to follow the dashboard")
        try:
            queue = board.feed.subscribe()
        except FeedFull as exc:
            raise HTTPException(503, str(exc)) from exc
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(board.feed.stream(queue), media_type="text/event-stream",
                                 headers=headers)  # fmt: skip

    @routes.get("/login")
    def login_page(request: Request, next: str = "/") -> Response:
        return board.page(request, "login.html.j2", next=_local(next), failed=False)

    @routes.post("/login")
    async def login(request: Request) -> Response:
        fields = await board.form(request)
        target = _local(fields.get("next", "/"))
        if not session.same_origin(request.headers.get("origin"), request.headers.get("host")):
            raise HTTPException(403, "cross-site request refused")
        if not session.key_ok(fields.get("key"), board.api_token):
            board.metrics.inc("provisioner_http_refused_total", reason="dashboard-login")
            await asyncio.sleep(0.5)  # a guesser's pace: two tries a second a connection
            return board.page(request, "login.html.j2", 401, next=target, failed=True)
        sid = board.sessions.open(time.time())
        response = RedirectResponse(target, 303, headers=HEADERS)
        response.headers["set-cookie"] = session.cookie_header(sid, board.sessions.lifetime_s)
        return response

    @routes.post("/logout")
    async def logout(request: Request) -> Response:
        sid, _ = await board.acting(request)
        board.sessions.close(sid)
        board.flash.pop(sid, None)
        response = RedirectResponse("/", 303, headers=HEADERS)
        response.headers["set-cookie"] = session.cleared_cookie()
        return response

    @routes.post("/nodes/{key}/actions/{action}")
    async def node_action(request: Request, key: str, action: str) -> Response:
        sid, _ = await board.acting(request)
        if action not in NODE_ACTIONS:
            raise HTTPException(404, f"no action {action}: one of {', '.join(NODE_ACTIONS)}")
        try:
            text = await asyncio.to_thread(board.actions.node, key, action)
            board.said(sid, text, True)
        except ActionError as exc:
            board.said(sid, str(exc), False)
        await board.feed.tick()  # the table shows it before the page comes back
        return RedirectResponse(f"/nodes/{quote(key, safe='')}", 303, headers=HEADERS)

    @routes.post("/clusters/{name}/actions/smoke")
    async def smoke_action(request: Request, name: str) -> Response:
        sid, _ = await board.acting(request)
        try:
            board.said(sid, board.actions.smoke(name), True)
        except ActionError as exc:
            board.said(sid, str(exc), False)
        return RedirectResponse(f"/clusters/{quote(name, safe='')}", 303, headers=HEADERS)

    @routes.get("/static/{name}")
    def static(name: str) -> Response:
        found = STATIC.get(name)
        if found is None:
            raise HTTPException(404, f"no {name}")
        path, media = found
        return Response(path.read_bytes(), media_type=media,
                        headers={"Cache-Control": "max-age=300", **HEADERS})  # fmt: skip

    return routes


def _local(target: str) -> str:
    """A login's ``next``: a path on this site only (never ``//evil`` or ``https://``)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
