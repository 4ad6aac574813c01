"""The per-cluster OpenAI gateway: pure routing, then the routes over a real registry in a
temporary directory with the upstreams faked by ``httpx.MockTransport`` (no socket). The
real-socket path (llama-server, curl -N) is tests/integration/test_gateway_loopback.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from provisioner.boot import gateway
from provisioner.boot.gateway import (
    Gateway,
    GatewayError,
    GatewayTimeouts,
    model_list,
    pick,
    upstreams,
)
from provisioner.boot.http import create_app
from provisioner.boot.http_context import AppContext
from provisioner.boot.ipxe import ScriptRenderer
from provisioner.config import Mode, parse_config, render_config
from provisioner.gateway import wire
from provisioner.metrics import Metrics
from provisioner.records import Cluster, Served
from provisioner.registry import Registry

HEAD_MAC = "52:54:00:aa:bb:10"
HEAD_IP = "10.20.0.110"
LLAMA = Cluster("small", "llama-rpc", "smollm2", "node0", ("node1",), gateway=True)
VLLM = Cluster(
    "big",
    "vllm",
    "qwen",
    "node0",
    serve=(Served("qwen", "qwen-7b", 0.5, 8001), Served("embed", "bge", 0.2, 8002)),
    gateway=True,
)

Handler = Callable[[httpx.Request], httpx.Response]


# ---------------------------------------------------------------- pure routing


def test_upstreams_llama_rpc_is_the_one_model_on_the_http_port() -> None:
    assert upstreams(LLAMA, "10.0.0.5") == {"smollm2": "http://10.0.0.5:8080"}


def test_upstreams_vllm_one_server_per_served_model() -> None:
    assert upstreams(VLLM, "10.0.0.5") == {
        "qwen": "http://10.0.0.5:8001",
        "embed": "http://10.0.0.5:8002",
    }
    assert upstreams(VLLM, "fd00::5")["qwen"] == "http://[fd00::5]:8001"


TWO = {"qwen": "http://h:8001", "embed": "http://h:8002"}
ONE = {"smollm2": "http://h:8080"}


@pytest.mark.parametrize(
    ("table", "body", "want"),
    [
        (TWO, {"model": "embed"}, "http://h:8002"),
        (TWO, {"model": "qwen", "stream": True}, "http://h:8001"),
        (ONE, {"messages": []}, "http://h:8080"),  # no model: the only one
        (ONE, {"model": ""}, "http://h:8080"),
        (ONE, {"model": "smollm2"}, "http://h:8080"),
    ],
)
def test_pick_by_model(table: dict[str, str], body: object, want: str) -> None:
    assert pick(table, body) == want


@pytest.mark.parametrize(
    ("table", "body", "status", "code", "says"),
    [
        (TWO, {"model": "gpt-4"}, 404, "model_not_found", "'gpt-4' is not served here"),
        (ONE, {"model": "other"}, 404, "model_not_found", "served: smollm2"),
        (TWO, {"messages": []}, 400, "model_required", "one of embed, qwen"),
        (TWO, {"model": 3}, 400, "invalid_model", "must be a string"),
        (TWO, ["model", "qwen"], 400, "invalid_body", "JSON object"),
        ({}, {"model": "x"}, 404, "model_not_found", "served: none"),
    ],
)
def test_pick_refusals(
    table: dict[str, str], body: object, status: int, code: str, says: str
) -> None:
    error = pick(table, body)
    assert isinstance(error, GatewayError)
    assert (error.status, error.code) == (status, code)
    assert says in error.message
    assert error.body()["error"]["code"] == code


def test_unknown_model_lists_every_served_name() -> None:
    error = pick(TWO, {"model": "gpt-4"})
    assert isinstance(error, GatewayError)
    assert error.body() == {
        "error": {
            "message": "the model 'gpt-4' is not served here; served: embed, qwen",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_model_list_from_the_spec_alone() -> None:
    listed = model_list(VLLM, HEAD_IP, now=1700000000)
    assert listed == {
        "object": "list",
        "data": [
            {
                "id": "qwen",
                "object": "model",
                "created": 1700000000,
                "owned_by": "big",
                "upstream": f"http://{HEAD_IP}:8001",
            },
            {
                "id": "embed",
                "object": "model",
                "created": 1700000000,
                "owned_by": "big",
                "upstream": f"http://{HEAD_IP}:8002",
            },
        ],
    }
    data = model_list(LLAMA, None, now=0)["data"]
    assert data == [
        {"id": "smollm2", "object": "model", "created": 0, "owned_by": "small", "upstream": None}
    ]


def test_request_headers_passed_and_pinned_and_the_client_key_never_goes_upstream() -> None:
    sent = {
        "authorization": "Bearer client-key",
        "content-type": "application/json",
        "host": "control:8000",
        "connection": "keep-alive",
        "accept-encoding": "gzip",
        "cookie": "c=1",
    }
    assert gateway.upstream_headers(sent, "engine-key") == {
        "authorization": "Bearer engine-key",
        "content-type": "application/json",
        "accept-encoding": "identity",
    }
    assert "authorization" not in gateway.upstream_headers(sent)
    assert gateway.client_key(sent) == "client-key"
    assert gateway.client_key({"authorization": "Basic x"}) is None


# ---------------------------------------------------------------- the routes


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry.sqlite3")
    reg.touch_node(HEAD_MAC, ip=HEAD_IP)
    reg.set_hostname(HEAD_MAC, "node0")
    for cluster in (LLAMA, VLLM, Cluster("off", "llama-rpc", "m", "node0")):
        reg.save_cluster(cluster.name, cluster.to_json())
        write_keys(tmp_path, cluster.name)
    yield reg
    reg.close()


GATEWAY_KEY, ENGINE_KEY = "gw-key", "engine-key"
AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}


def write_keys(state: Path, cluster: str) -> None:
    """The cluster's keys as clusters/keys.py keeps them (fixed values, to assert on)."""
    (state / "keys").mkdir(exist_ok=True)
    (state / "keys" / f"{cluster}.gateway").write_text(GATEWAY_KEY + "\n")
    (state / "keys" / f"{cluster}.engine").write_text(ENGINE_KEY + "\n")


class Upstream:
    """The fake upstream: records what reached it, answers with ``handler``."""

    def __init__(self) -> None:
        self.seen: list[httpx.Request] = []
        self.handler: Handler = lambda r: httpx.Response(
            200, json={"object": "chat.completion", "model": json.loads(r.content).get("model")}
        )

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        return self.handler(request)


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


def gateway_app(
    registry: Registry, upstream: Upstream, timeouts: GatewayTimeouts | None = None
) -> tuple[FastAPI, Metrics]:
    metrics = Metrics()
    gw = Gateway(
        registry,
        metrics,
        state_dir=registry.path.parent,
        transport=httpx.MockTransport(upstream),
        timeouts=timeouts or gateway.DEFAULT_TIMEOUTS,
    )
    app = FastAPI()
    app.include_router(gateway.router(gw))
    return app, metrics


@pytest.fixture
def client(registry: Registry, upstream: Upstream) -> TestClient:
    app, _ = gateway_app(registry, upstream)
    return TestClient(app, headers=AUTH)


def test_models_lists_the_served_names(client: TestClient) -> None:
    r = client.get("/clusters/big/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert [(m["id"], m["owned_by"], m["upstream"]) for m in body["data"]] == [
        ("qwen", "big", f"http://{HEAD_IP}:8001"),
        ("embed", "big", f"http://{HEAD_IP}:8002"),
    ]


def test_cluster_without_gateway_says_how_to_turn_it_on(
    client: TestClient, upstream: Upstream
) -> None:
    for r in (
        client.get("/clusters/off/v1/models"),
        client.post("/clusters/off/v1/chat/completions", json={"model": "m"}),
    ):
        assert r.status_code == 404
        error = r.json()["error"]
        assert error["code"] == "gateway_off"
        assert "provisioner cluster create off ... --gateway" in error["message"]
    assert upstream.seen == []


def test_unknown_cluster_is_404_naming_those_there(client: TestClient) -> None:
    r = client.post("/clusters/nope/v1/chat/completions", json={"model": "m"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "cluster_not_found"
    assert "big, off, small" in r.json()["error"]["message"]


@pytest.mark.parametrize("endpoint", ["chat/completions", "completions", "embeddings"])
def test_forwarded_to_the_models_server_with_authorization(
    client: TestClient, upstream: Upstream, endpoint: str
) -> None:
    body = b'{"model": "embed",  "input": "x"}'  # forwarded byte for byte
    r = client.post(
        f"/clusters/big/v1/{endpoint}",
        content=body,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json()["model"] == "embed"
    [seen] = upstream.seen
    assert str(seen.url) == f"http://{HEAD_IP}:8002/v1/{endpoint}"
    assert seen.content == body
    # The client sent the gateway key; upstream gets the engine key, never the client's.
    assert seen.headers["authorization"] == f"Bearer {ENGINE_KEY}"
    assert seen.headers["accept-encoding"] == "identity"


def test_no_model_goes_to_the_only_one(client: TestClient, upstream: Upstream) -> None:
    r = client.post("/clusters/small/v1/completions", json={"prompt": "hi"})
    assert r.status_code == 200
    assert str(upstream.seen[0].url) == f"http://{HEAD_IP}:8080/v1/completions"
    assert upstream.seen[0].headers["authorization"] == f"Bearer {ENGINE_KEY}"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {GATEWAY_KEY}"},
     {"Authorization": f"Bearer {ENGINE_KEY}"}],  # the engine key is not a client key
)  # fmt: skip
def test_a_request_without_the_gateway_key_is_401_and_never_forwarded(
    registry: Registry, upstream: Upstream, headers: dict[str, str]
) -> None:
    app, _ = gateway_app(registry, upstream)
    bare = TestClient(app, headers=headers)
    for r in (
        bare.get("/clusters/big/v1/models"),
        bare.post("/clusters/big/v1/chat/completions", json={"model": "qwen"}),
    ):
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert "provisioner cluster key big" in r.json()["error"]["message"]
    assert upstream.seen == []


def test_a_cluster_whose_gateway_key_was_never_made_lets_nobody_in(
    registry: Registry, upstream: Upstream
) -> None:
    (registry.path.parent / "keys" / "big.gateway").unlink()
    app, _ = gateway_app(registry, upstream)
    for headers in ({}, AUTH, {"Authorization": "Bearer "}):
        r = TestClient(app, headers=headers).post(
            "/clusters/big/v1/chat/completions", json={"model": "qwen"}
        )
        assert r.status_code == 401
    assert upstream.seen == []


def test_upstream_status_and_headers_come_back(client: TestClient, upstream: Upstream) -> None:
    upstream.handler = lambda r: httpx.Response(
        503,
        json={"error": {"message": "Loading model", "code": 503}},
        headers={"Retry-After": "5", "X-Secret": "no"},
    )
    r = client.post("/clusters/small/v1/chat/completions", json={"model": "smollm2"})
    assert r.status_code == 503
    assert r.json()["error"]["message"] == "Loading model"
    assert r.headers["retry-after"] == "5"
    assert "x-secret" not in r.headers


def test_unknown_model_is_404_listing_names_and_never_forwarded(
    client: TestClient, upstream: Upstream
) -> None:
    r = client.post("/clusters/big/v1/chat/completions", json={"model": "gpt-4"})
    assert r.status_code == 404
    assert r.json()["error"]["message"].endswith("served: embed, qwen")
    assert upstream.seen == []


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [(b"{not json", 400, "invalid_json"), (b'"text"', 400, "invalid_body"), (b"", 400, None)],
)
def test_bad_bodies(client: TestClient, content: bytes, status: int, code: str | None) -> None:
    r = client.post("/clusters/big/v1/chat/completions", content=content)
    assert r.status_code == status
    if code:
        assert r.json()["error"]["code"] == code


def test_body_over_the_limit_is_413(
    client: TestClient, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "MAX_BODY_BYTES", 16)
    r = client.post("/clusters/small/v1/completions", json={"prompt": "x" * 64})
    assert r.status_code == 413
    assert upstream.seen == []


def raises(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


def test_unreachable_upstream_is_502_naming_it(client: TestClient, upstream: Upstream) -> None:
    upstream.handler = raises(httpx.ConnectError("Connection refused"))
    r = client.post("/clusters/big/v1/chat/completions", json={"model": "qwen"})
    assert r.status_code == 502
    error = r.json()["error"]
    assert error["code"] == "upstream_unreachable"
    assert error["type"] == "api_error"
    assert f"http://{HEAD_IP}:8001/v1/chat/completions" in error["message"]
    assert "Connection refused" in error["message"]


def test_connect_timeout_is_502_read_timeout_504(client: TestClient, upstream: Upstream) -> None:
    upstream.handler = raises(httpx.ConnectTimeout("timed out"))
    r = client.post("/clusters/small/v1/chat/completions", json={})
    assert r.status_code == 502
    upstream.handler = raises(httpx.ReadTimeout("timed out"))
    r = client.post("/clusters/small/v1/chat/completions", json={})
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"


def test_head_without_an_address_is_502(
    registry: Registry, upstream: Upstream, client: TestClient
) -> None:
    registry.save_cluster(
        "lost", Cluster("lost", "llama-rpc", "m", "ghost", gateway=True).to_json()
    )
    write_keys(registry.path.parent, "lost")
    r = client.post("/clusters/lost/v1/chat/completions", json={"model": "m"})
    assert r.status_code == 502
    assert "head ghost has no known address" in r.json()["error"]["message"]
    assert client.get("/clusters/lost/v1/models").json()["data"][0]["upstream"] is None


def test_timeouts_reach_the_client(registry: Registry, upstream: Upstream) -> None:
    gw = Gateway(registry, Metrics(), timeouts=GatewayTimeouts(connect=1.5, read=42.0))
    timeout = gw.client.timeout
    assert (timeout.connect, timeout.read, timeout.pool) == (1.5, 42.0, 1.5)
    anyio.run(gw.aclose)
    assert gateway.DEFAULT_TIMEOUTS.connect == 5.0 and gateway.DEFAULT_TIMEOUTS.read == 600.0


# ---------------------------------------------------------------- streaming


class Chunks(httpx.AsyncByteStream):
    """An upstream body that logs each piece it hands out (and its close)."""

    def __init__(self, pieces: list[bytes], log: list[str], fail_after: int | None = None):
        self.pieces, self.log, self.fail_after = pieces, log, fail_after

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i, piece in enumerate(self.pieces):
            if self.fail_after is not None and i == self.fail_after:
                raise httpx.ReadError("peer closed connection")
            self.log.append(f"up {i}")
            yield piece
            await anyio.sleep(0)

    async def aclose(self) -> None:
        self.log.append("closed")


SSE = [
    f"data: {json.dumps({'choices': [{'delta': {'content': str(i)}}]})}\n\n".encode()
    for i in range(4)
] + [b"data: [DONE]\n\n"]


def call_asgi(
    app: FastAPI, path: str, body: bytes, log: list[str]
) -> list[MutableMapping[str, Any]]:
    """One request straight through ASGI, logging each body message as it is sent."""
    sent: list[MutableMapping[str, Any]] = []

    async def run() -> None:
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": body, "more_body": False}
            await anyio.sleep_forever()
            raise AssertionError

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and message.get("body"):
                log.append(f"down {len(sent)}")

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"content-type", b"application/json"),
                (b"authorization", f"Bearer {GATEWAY_KEY}".encode()),
            ],
            "client": ("10.20.0.100", 40000),
            "server": ("10.20.0.1", 80),
        }
        await app(scope, receive, send)

    anyio.run(run)
    return sent


def test_sse_is_passed_on_chunk_by_chunk(registry: Registry, upstream: Upstream) -> None:
    log: list[str] = []
    upstream.handler = lambda r: httpx.Response(
        200, headers={"Content-Type": "text/event-stream"}, stream=Chunks(SSE, log)
    )
    app, metrics = gateway_app(registry, upstream)
    sent = call_asgi(app, "/clusters/small/v1/chat/completions", b'{"stream": true}', log)
    start = sent[0]
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream") in start["headers"]
    bodies = [m["body"] for m in sent[1:] if m.get("body")]
    assert bodies == SSE
    # Each piece leaves before the next one is asked of the upstream: nothing is held.
    ups = [e for e in log if e.startswith("up")]
    assert [e.split()[0] for e in log[: 2 * len(ups)]] == ["up", "down"] * len(ups)
    assert log[-1] == "closed"
    assert (
        metrics.value(
            "provisioner_gateway_requests_total", cluster="small", model="smollm2", status="200"
        )
        == 1
    )


def test_stream_cut_by_the_upstream_is_counted_and_closed(
    registry: Registry, upstream: Upstream
) -> None:
    log: list[str] = []
    upstream.handler = lambda r: httpx.Response(
        200, headers={"Content-Type": "text/event-stream"}, stream=Chunks(SSE, log, fail_after=2)
    )
    app, metrics = gateway_app(registry, upstream)
    sent = call_asgi(app, "/clusters/small/v1/chat/completions", b"{}", log)
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"".join(SSE[:2])
    assert log[-1] == "closed"
    assert (
        metrics.value(
            "provisioner_gateway_broken_total", cluster="small", model="smollm2", reason="ReadError"
        )
        == 1
    )


def test_total_cap_ends_a_stream(registry: Registry, upstream: Upstream) -> None:
    log: list[str] = []
    upstream.handler = lambda r: httpx.Response(200, stream=Chunks(SSE, log))
    app, metrics = gateway_app(registry, upstream, GatewayTimeouts(total=0.0))
    sent = call_asgi(app, "/clusters/small/v1/chat/completions", b"{}", log)
    assert b"".join(m.get("body", b"") for m in sent[1:]) == SSE[0]
    assert log[-1] == "closed"
    assert metrics.total("provisioner_gateway_broken_total") == 1


# ---------------------------------------------------------------- mounted in the app


def test_mounted_in_the_boot_app_and_counted_in_metrics(tmp_path: Path) -> None:
    cfg = parse_config(
        render_config(
            interface="eth0",
            address="10.20.0.1/24",
            mode=Mode.PROXY,
            dhcp_range="",
            state_dir=tmp_path,
        )
    )
    ctx = AppContext(cfg, Registry(cfg.registry_path), "token", Metrics(), ScriptRenderer())
    ctx.registry.touch_node(HEAD_MAC, ip="127.0.0.1")
    ctx.registry.set_hostname(HEAD_MAC, "node0")
    ctx.registry.save_cluster("small", LLAMA.to_json())
    write_keys(tmp_path, "small")
    client = TestClient(create_app(ctx), headers=AUTH)
    assert client.get("/clusters/small/v1/models").json()["data"][0]["id"] == "smollm2"
    r = client.post("/clusters/small/v1/chat/completions", json={"model": "gpt-4"})
    assert r.status_code == 404
    metrics = client.get("/metrics").text
    requests = "provisioner_gateway_requests_total"
    assert f'{requests}{{cluster="small",model="?",status="404"}} 1.0' in metrics
    ctx.registry.close()
