"""Every route, listed from the app's own route table (issue 20, item 7): a route added
later cannot be forgotten. Each mutating route refuses a missing or a wrong API token with
401 and changes nothing in the registry; each read of the operator's API does the same
while ``open_reads`` is off. The routes that take other credentials are listed with why.
In-process (FastAPI's TestClient), no sockets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from provisioner.boot.http import create_app
from provisioner.boot.http_context import AppContext
from provisioner.boot.ipxe import ScriptRenderer
from provisioner.config import Mode, parse_config, render_config
from provisioner.metrics import Metrics
from provisioner.records import Cluster
from provisioner.registry import Registry

MAC = "52:54:00:12:34:56"
TOKEN = "the-right-token"

# Routes that are not the operator's API, each with the credential it asks instead.
OTHER_CREDENTIALS = {
    ("POST", "/api/v1/nodes/{mac_raw}/inventory"): "the node's per-boot token (routes_boot.py)",
    ("POST", "/api/v1/nodes/{mac_raw}/integrity"): "the node's per-boot token",
    ("GET", "/api/v1/nodes/{mac_raw}/authorized_keys"): "the node's per-boot token",
    ("GET", "/api/v1/nodes/{mac_raw}/host_key"): "the node's per-boot token",
    ("GET", "/clusters/{name}/v1/models"): "the cluster's gateway (gateway.py, its own keys)",
    ("POST", "/clusters/{name}/v1/chat/completions"): "the cluster's gateway",
    ("POST", "/clusters/{name}/v1/completions"): "the cluster's gateway",
    ("POST", "/clusters/{name}/v1/embeddings"): "the cluster's gateway",
    ("GET", "/v1/models"): "the front door's API keys (gateway/frontdoor.py)",
    ("POST", "/v1/chat/completions"): "the front door's API keys",
    ("POST", "/v1/completions"): "the front door's API keys",
    ("POST", "/v1/embeddings"): "the front door's API keys",
}
# Reads open to anyone who reaches the port, each with why.
OPEN_READS = {
    "/healthz": "a liveness probe: says nothing",
    "/metrics": "Prometheus (open_metrics: true by default; tested in test_http_surface.py)",
    "/boot/{name}": "iPXE asks for its script with no credential; the answer is per lease",
}
# The web dashboard (web/pages.py): reads by network or login ([dashboard] reads), actions
# by a login's session and CSRF token; test_dashboard_app.py tests each rule.
DASHBOARD = {
    ("GET", "/"): "read: the cluster network, else a login",
    ("GET", "/nodes/{key}"): "read: the cluster network, else a login",
    ("GET", "/clusters/{name}"): "read: the cluster network, else a login",
    ("GET", "/events"): "read (the live feed): the cluster network, else a login",
    ("GET", "/login"): "the login form: says nothing",
    ("GET", "/static/{name}"): "the dashboard's own CSS and script, a fixed list",
    ("POST", "/login"): "takes the API token as its key",
    ("POST", "/logout"): "a session and its CSRF token",
    ("POST", "/nodes/{key}/actions/{action}"): "a session and its CSRF token",
    ("POST", "/clusters/{name}/actions/smoke"): "a session and its CSRF token",
}
FILE_AREAS = (
    "/images/",
    "/tftp/",
    "/artifacts/",
    "/models/",
)  # read-only files (paths tested apart)


def routes() -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, through included routers too."""
    app = create_app(context(Path("/nonexistent")))
    found: list[tuple[str, str]] = []

    def walk(items: list[object]) -> None:
        for r in items:
            if isinstance(r, APIRoute):
                found.extend((method, r.path) for method in sorted(r.methods - {"HEAD"}))
            inner = getattr(r, "original_router", None)  # FastAPI 0.16x: included lazily
            if inner is not None:
                walk(list(inner.routes))

    walk(list(app.routes))
    return found


def context(state: Path) -> AppContext:
    cfg = parse_config(
        render_config(interface="eth0", address="10.62.0.1/24", mode=Mode.FULL,
                      dhcp_range="10.62.0.10-10.62.0.20", state_dir=state)
    )  # fmt: skip
    registry = Registry(cfg.registry_path) if state.exists() else None
    return AppContext(cfg, registry, TOKEN, Metrics(), ScriptRenderer())  # type: ignore[arg-type]


def concrete(path: str) -> str:
    """A request path for a route's pattern: a real node's MAC, a real cluster's name."""
    path = path.replace("{key}", MAC).replace("{mac_raw}", MAC).replace("{name}", "c1")
    return re.sub(r"\{[^}]+\}", "x", path)


def snapshot(registry: Registry) -> object:
    return (
        [n.as_dict() for n in registry.nodes()],
        registry.cluster_names(),
        [e.as_dict() for e in registry.events(MAC)],
    )


@pytest.fixture
def client(tmp_path: Path) -> tuple[TestClient, Registry]:
    state = tmp_path / "state"
    state.mkdir()
    ctx = context(state)
    registry = ctx.registry
    registry.touch_node(MAC, ip="10.62.0.11")
    registry.set_hostname(MAC, "node0")
    registry.save_cluster("c1", Cluster("c1", "llama-rpc", "m", "node0").to_json())
    return TestClient(create_app(ctx), client=("10.62.0.50", 40000)), registry


def test_the_route_table_is_the_one_this_test_knows() -> None:
    """A new route makes this fail until it is classified here (and so tested)."""
    listed = routes()
    mutating = [(m, p) for m, p in listed if m != "GET"]
    assert mutating, listed
    for method, path in listed:
        known = (
            (method, path) in OTHER_CREDENTIALS
            or (method, path) in DASHBOARD
            or path in OPEN_READS
            or path.startswith(FILE_AREAS)
            or path.startswith("/api/")
            or path in ("/openapi.json",)
        )
        assert known, f"{method} {path}: classify it in this test"


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]
)
def test_every_mutating_route_refuses_without_the_token_and_changes_nothing(
    client: tuple[TestClient, Registry], headers: dict[str, str]
) -> None:
    http, registry = client
    before = snapshot(registry)
    tried = 0
    for method, path in routes():
        if method == "GET" or (method, path) in OTHER_CREDENTIALS:
            continue
        answer = http.request(method, concrete(path), headers=headers, json={"hostname": "evil"})
        assert answer.status_code == 401, (method, path, answer.status_code, answer.text)
        tried += 1
    assert tried >= 3  # PATCH and DELETE of a node, profile reload
    assert snapshot(registry) == before


def test_every_api_read_needs_the_token_while_reads_are_closed(
    client: tuple[TestClient, Registry],
) -> None:
    http, _ = client
    for method, path in routes():
        if (
            method != "GET"
            or (method, path) in OTHER_CREDENTIALS
            or not (path.startswith("/api/") or path == "/openapi.json")
        ):
            continue
        assert http.get(concrete(path)).status_code == 401, path
        good = http.get(concrete(path), headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status_code in (200, 404), (path, good.status_code)


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}"}]
)
def test_the_front_door_wants_a_gateway_key_not_the_api_token(
    client: tuple[TestClient, Registry], headers: dict[str, str]
) -> None:
    """The operator's API token is not a gateway key: every /v1 route answers 401."""
    http, _ = client
    front = [(m, p) for m, p in routes() if p.startswith("/v1/")]
    assert len(front) == 4
    for method, path in front:
        answer = http.request(method, path, headers=headers, json={"model": "m"})
        assert answer.status_code == 401, (method, path, answer.text)
        assert answer.json()["error"]["code"] == "invalid_api_key"


def test_the_dashboard_refuses_a_stranger_without_a_login(tmp_path: Path) -> None:
    """From outside the cluster network with no session: every dashboard read but the
    login form and its static files sends to the login (or 401s, the live feed), every
    action 401s, and nothing changes."""
    state = tmp_path / "state"
    state.mkdir()
    ctx = context(state)
    ctx.registry.touch_node(MAC, ip="10.62.0.11")
    before = snapshot(ctx.registry)
    http = TestClient(create_app(ctx), client=("192.0.2.7", 40000))
    for method, path in DASHBOARD:
        if path in ("/login", "/static/{name}"):
            continue
        answer = http.request(method, concrete(path), data={"csrf": "x", "key": "wrong"},
                              follow_redirects=False)  # fmt: skip
        if method == "GET" and path != "/events":
            assert answer.status_code == 303, (path, answer.status_code)
            assert answer.headers["location"].startswith("/login?next=")
        else:
            assert answer.status_code == 401, (method, path, answer.status_code)
    assert snapshot(ctx.registry) == before


def test_a_node_console_is_an_api_read(client: tuple[TestClient, Registry]) -> None:
    """GET /api/v1/nodes/{key}/console (routes_console.py): the node's kernel lines, which
    say what runs on it: the API token like every read, and nothing for a stranger."""
    http, _ = client
    assert ("GET", "/api/v1/nodes/{key}/console") in routes()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        assert http.get(f"/api/v1/nodes/{MAC}/console", headers=headers).status_code == 401
    good = {"Authorization": f"Bearer {TOKEN}"}
    answer = http.get("/api/v1/nodes/node0/console?lines=5", headers=good)
    assert answer.status_code == 200 and answer.json() == {"node": "node0", "mac": MAC, "lines": []}
    assert http.get("/api/v1/nodes/nobody/console", headers=good).status_code == 404
    assert http.get(f"/api/v1/nodes/{MAC}/console?lines=-1", headers=good).status_code == 422
