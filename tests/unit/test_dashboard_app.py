"""The dashboard's routes through FastAPI's in-process client: who reads, who acts, what
an action needs (a login, the form's CSRF token, our own origin) and that a refused one
changes nothing; the pages' content; Swagger UI served from here. The browser itself
(live updates, console errors) is tests/integration/test_dashboard_browser.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from provisioner.boot.http import create_app
from provisioner.boot.http_context import AppContext
from provisioner.boot.ipxe import ScriptRenderer
from provisioner.config import Mode, parse_config, render_config
from provisioner.errors import ConfigError
from provisioner.metrics import Metrics
from provisioner.records import Cluster, Engine, EventKind
from provisioner.registry import Registry
from provisioner.states import NodeEvent, NodeState

MAC = "52:54:00:aa:bb:01"
TOKEN = "test-api-token-0123456789"
INSIDE = ("10.20.0.100", 40000)  # on the cluster network
OUTSIDE = ("192.168.7.9", 40000)


@pytest.fixture
def ctx(tmp_path: Path) -> AppContext:
    text = render_config(interface="eth0", address="10.20.0.1/24", mode=Mode.FULL,
                         dhcp_range="10.20.0.100-10.20.0.120", state_dir=tmp_path)  # fmt: skip
    cfg = parse_config(text)
    registry = Registry(cfg.registry_path)
    registry.touch_node(MAC, ip="10.20.0.100")
    registry.set_hostname(MAC, "node0")
    for event in (NodeEvent.INVENTORY, NodeEvent.MATCH, NodeEvent.ENROLL):
        registry.transition(MAC, event, reason="test")
    registry.add_event(MAC, EventKind.DHCP, {"msg": "discover"})
    registry.add_event(MAC, EventKind.DHCP_REPLY, {})
    return AppContext(cfg, registry, TOKEN, Metrics(), ScriptRenderer())


def client(ctx: AppContext, at: tuple[str, int] = INSIDE) -> TestClient:
    app = create_app(ctx)
    app.state.dashboard.feed.board.refresh()  # what serve's feed task does each second
    return TestClient(app, client=at, base_url="http://10.20.0.1:8080")


def login(c: TestClient) -> str:
    r = c.post("/login", data={"key": TOKEN, "next": "/nodes/node0"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/nodes/node0"
    page = c.get("/nodes/node0").text
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert found, "the logged-in page carries a CSRF token"
    return found.group(1)


def test_the_cluster_network_reads_without_a_login(ctx: AppContext) -> None:
    c = client(ctx)
    r = c.get("/")
    assert r.status_code == 200
    assert f'id="node-{MAC}"' in r.text and "node0" in r.text and "enrolled" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    assert "Log in" in r.text and 'name="csrf"' not in r.text  # no action without a login
    node = c.get("/nodes/node0")
    assert node.status_code == 200 and 'id="timeline"' in node.text
    assert c.get(f"/nodes/{MAC}").status_code == 200
    assert c.get("/nodes/nobody").status_code == 404


def test_the_node_page_shows_its_console(ctx: AppContext) -> None:
    from provisioner.console.protocol import KernelLine
    from provisioner.console.store import ConsoleStore, Record

    ConsoleStore(ctx.config.state_dir).append(MAC, [
        Record(1000.0, KernelLine("Linux version 6.1.0-57-amd64", 5, 1, 0.0)),
        Record(1001.0, KernelLine("Kernel panic - not syncing: <b>VFS</b>", 0, 2, 3.5)),
    ])  # fmt: skip
    page = client(ctx).get("/nodes/node0").text
    assert "Linux version 6.1.0-57-amd64" in page
    assert '<span class="err">' in page and "&lt;b&gt;VFS&lt;/b&gt;" in page  # escaped


def test_elsewhere_a_page_asks_for_a_login_first(ctx: AppContext) -> None:
    c = client(ctx, OUTSIDE)
    r = c.get("/nodes/node0", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/nodes/node0"
    assert c.get("/events").status_code == 401
    login(c)  # a login lets it read
    assert c.get("/").status_code == 200


def test_a_wrong_key_is_refused_and_opens_no_session(ctx: AppContext) -> None:
    c = client(ctx)
    r = c.post("/login", data={"key": "guess", "next": "/"}, follow_redirects=False)
    assert r.status_code == 401 and "not the API token" in r.text
    assert "set-cookie" not in r.headers


def test_the_session_cookie_is_httponly_and_samesite(ctx: AppContext) -> None:
    c = client(ctx)
    r = c.post("/login", data={"key": TOKEN, "next": "//evil.example/x"}, follow_redirects=False)
    assert r.headers["location"] == "/"  # never off-site
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie


def test_an_action_without_a_login_is_refused_and_changes_nothing(ctx: AppContext) -> None:
    c = client(ctx)
    r = c.post("/nodes/node0/actions/boot-local", data={"csrf": "x"})
    assert r.status_code == 401
    node = ctx.registry.node(MAC)
    assert node is not None and node.state is NodeState.ENROLLED
    assert c.post("/clusters/c1/actions/smoke", data={}).status_code == 401


def test_an_action_needs_the_sessions_csrf_token_and_our_origin(ctx: AppContext) -> None:
    c = client(ctx)
    csrf = login(c)
    before = len(ctx.registry.events(MAC))
    assert c.post("/nodes/node0/actions/boot-local", data={}).status_code == 403
    assert c.post("/nodes/node0/actions/boot-local", data={"csrf": "0" * 64}).status_code == 403
    cross = c.post("/nodes/node0/actions/boot-local", data={"csrf": csrf},
                   headers={"Origin": "http://evil.example"})  # fmt: skip
    assert cross.status_code == 403
    assert len(ctx.registry.events(MAC)) == before  # nothing happened
    r = c.post("/nodes/node0/actions/boot-local", data={"csrf": csrf},
               headers={"Origin": "http://10.20.0.1:8080"})  # fmt: skip
    assert r.status_code == 200  # followed to the node page, which says what was done
    assert "node0: boots from local next" in r.text
    node = ctx.registry.node(MAC)
    assert node is not None and node.state is NodeState.LOCAL


def test_a_failed_action_says_why(ctx: AppContext) -> None:
    c = client(ctx)
    csrf = login(c)
    r = c.post("/nodes/node0/actions/power-cycle", data={"csrf": csrf})
    assert r.status_code == 200 and "has no power settings" in r.text
    assert c.post("/nodes/node0/actions/explode", data={"csrf": csrf}).status_code == 404
    r = c.post("/clusters/nope/actions/smoke", data={"csrf": csrf})
    assert "no cluster &#39;nope&#39;" in r.text  # escaped, as every value on a page


def test_logout_ends_the_session(ctx: AppContext) -> None:
    c = client(ctx)
    csrf = login(c)
    assert c.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert c.post("/nodes/node0/actions/boot-local", data={"csrf": csrf}).status_code == 401


def test_a_form_body_is_held_to_its_limit(ctx: AppContext) -> None:
    c = client(ctx)
    r = c.post("/login", content=b"key=" + b"x" * 10_000,
               headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert r.status_code == 413


def test_the_cluster_page_charts_the_smoke_history(ctx: AppContext) -> None:
    reg = ctx.registry
    cluster = Cluster(name="c1", engine=Engine.LLAMA_RPC, model="smollm2", head="node0")
    reg.save_cluster("c1", cluster.to_json())
    for i, (ttft, tps) in enumerate([(0.5, 80.0), (0.4, 95.0), (0.45, 90.0)]):
        run = f"smoke-{1000 + i}"
        reg.add_step(run, MAC, "smoke:ttft_s", "ok", None, json.dumps({"value": ttft}), 0.0)
        reg.add_step(run, MAC, "smoke:decode_tokens_per_s", "ok", None,
                     json.dumps({"value": tps}), 0.0)  # fmt: skip
    page = client(ctx).get("/clusters/c1")
    assert page.status_code == 200
    assert 'id="chart-ttft"' in page.text and 'id="chart-tps"' in page.text
    assert page.text.count('class="dot"') == 6
    assert "3 runs" in page.text and "passed" in page.text
    index = client(ctx).get("/").text
    assert 'href="/clusters/c1"' in index


def test_static_files_are_a_fixed_list(ctx: AppContext) -> None:
    c = client(ctx)
    assert c.get("/static/dashboard.js").headers["content-type"].startswith("text/javascript")
    assert c.get("/static/dashboard.css").status_code == 200
    assert c.get("/static/..%2fpages.py").status_code == 404
    assert c.get("/static/pages.py").status_code == 404


def test_swagger_ui_comes_from_the_appliance_not_a_cdn(ctx: AppContext) -> None:
    c = client(ctx)
    api = {"Authorization": f"Bearer {TOKEN}"}  # read like the API ([http] open_reads)
    docs = c.get("/api/docs", headers=api)
    assert docs.status_code == 200
    assert "cdn" not in docs.text.lower() and "https://" not in docs.text
    for src in re.findall(r'(?:src|href)="(/api/docs/assets/[^"]+)"', docs.text):
        asset = c.get(src, headers=api)
        assert asset.status_code == 200 and len(asset.content) > 1000, src
    assert c.get("/api/docs/assets/swagger-ui.css").status_code == 401
    assert c.get("/api/docs/assets/..%2f..%2fcore.py", headers=api).status_code == 404


def test_the_dashboard_can_be_turned_off(ctx: AppContext, tmp_path: Path) -> None:
    text = render_config(interface="eth0", address="10.20.0.1/24", mode=Mode.FULL,
                         dhcp_range="10.20.0.100-10.20.0.120", state_dir=tmp_path)  # fmt: skip
    head, _, tail = text.partition("[dashboard]")
    cfg = parse_config(head + "[dashboard]" + tail.replace("enabled = true", "enabled = false", 1))
    app = create_app(AppContext(cfg, ctx.registry, TOKEN, Metrics(), ScriptRenderer()))
    assert app.state.dashboard is None
    assert TestClient(app, client=INSIDE).get("/").status_code == 404


def test_reads_setting_is_checked(tmp_path: Path) -> None:
    text = render_config(interface="eth0", address="10.20.0.1/24", mode=Mode.FULL,
                         dhcp_range="10.20.0.100-10.20.0.120", state_dir=tmp_path)  # fmt: skip
    with pytest.raises(ConfigError, match=r"dashboard\.reads"):
        parse_config(text.replace('reads = "cluster"', 'reads = "everyone"'))
    assert parse_config(text).dashboard.reads == "cluster"  # what a new config says
    assert (
        parse_config(text.replace('reads = "cluster"', 'reads = "login"')).dashboard.reads
        == "login"
    )
