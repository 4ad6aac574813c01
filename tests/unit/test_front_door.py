"""The front door's routes (``/v1``) over faked replicas: ``httpx.MockTransport`` answers
for them (no socket), a fixed table stands for the registry (and one test reads a real
registry). Real llama.cpp replicas behind it: tests/e2e/test_gateway_lab.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from provisioner.gateway import apikeys, routes, source
from provisioner.gateway.frontdoor import FrontDoor, FrontDoorSettings
from provisioner.gateway.replicas import Table, table
from provisioner.gateway.source import RegistrySource, Snapshot, UsageRow
from provisioner.metrics import Metrics
from provisioner.records import Cluster, Node, Served
from provisioner.registry import Registry
from provisioner.states import NodeState

Handler = Callable[[httpx.Request], httpx.Response]


def node(host: str, ip: str, state: NodeState = NodeState.SERVING) -> Node:
    return Node(f"52:54:00:00:00:{host[-1]}0", host, state, "p", ip, None, None, 0.0, 0.0)


def smol(name: str, head: str) -> Cluster:
    return Cluster(name, "llama-rpc", "smollm2", head,
                   serve=(Served("smol", "smollm2", None, 8080),))  # fmt: skip


CLUSTERS = [smol("a", "n1"), smol("b", "n2"),
            Cluster("v", "vllm", "q", "n3", serve=(Served("qwen", "q", 0.5, 8001),))]  # fmt: skip
HEADS = {"n1": node("n1", "10.0.0.1"), "n2": node("n2", "10.0.0.2"), "n3": node("n3", "10.0.0.3")}
URLS = {"http://10.0.0.1:8080": "a", "http://10.0.0.2:8080": "b", "http://10.0.0.3:8001": "v"}
KEY, TOKEN = apikeys.make("app")
SCOPED, SCOPED_TOKEN = apikeys.make("qwen-only", models=("qwen",), rpm=2)


class FixedSource:
    def __init__(self, t: Table) -> None:
        self.table = t
        self.usage: list[UsageRow] = []

    def snapshot(self) -> Snapshot:
        return Snapshot(self.table, {KEY.id: KEY, SCOPED.id: SCOPED})

    def add_usage(self, rows: list[UsageRow]) -> None:
        self.usage += rows


class Replicas:
    """The faked servers: who got what; ``down``: those refusing connections."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, httpx.Request]] = []
        self.down: set[str] = set()
        self.answer: Callable[[str, httpx.Request], httpx.Response] = ok

    def __call__(self, request: httpx.Request) -> httpx.Response:
        name = URLS[f"{request.url.scheme}://{request.url.host}:{request.url.port}"]
        if request.url.path == "/health":
            if name in self.down:
                raise httpx.ConnectError("refused")
            return httpx.Response(200, json={"status": "ok"})
        self.seen.append((name, request))
        if name in self.down:
            raise httpx.ConnectError("Connection refused")
        return self.answer(name, request)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for name, _ in self.seen:
            found[name] = found.get(name, 0) + 1
        return found


def ok(name: str, request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        json={"object": "chat.completion", "replica": name,
              "usage": {"prompt_tokens": 5, "completion_tokens": 3}},
    )  # fmt: skip


def make(
    replicas: Replicas, settings: FrontDoorSettings | None = None, heads: dict[str, Node] = HEADS
) -> tuple[TestClient, FrontDoor, FixedSource]:
    src = FixedSource(table(CLUSTERS, heads, {"a": 50.0, "b": 50.0}, {"a": "ek-a", "b": "ek-b"}))
    door = FrontDoor(src, Metrics(), settings, transport=httpx.MockTransport(replicas))
    app = FastAPI()
    app.include_router(routes.router(door))
    return TestClient(app), door, src


AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY = {"model": "smol", "messages": [{"role": "user", "content": "hi"}]}


def test_models_lists_each_served_name_once_and_a_scoped_key_its_own() -> None:
    client, _, _ = make(Replicas())
    assert [m["id"] for m in client.get("/v1/models", headers=AUTH).json()["data"]] == [
        "qwen", "smol"]  # fmt: skip
    scoped = client.get("/v1/models", headers={"Authorization": f"Bearer {SCOPED_TOKEN}"})
    assert [m["id"] for m in scoped.json()["data"]] == ["qwen"]


def test_no_key_401_another_models_key_403_over_its_rate_429() -> None:
    replicas = Replicas()
    client, door, _ = make(replicas)
    assert client.post("/v1/chat/completions", json=BODY).status_code == 401
    assert client.get("/v1/models").status_code == 401
    bad = client.post(
        "/v1/chat/completions", json=BODY, headers={"Authorization": "Bearer pvk-x-y"}
    )
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    scoped = {"Authorization": f"Bearer {SCOPED_TOKEN}"}
    other = client.post("/v1/chat/completions", json=BODY, headers=scoped)
    assert other.status_code == 403 and other.json()["error"]["code"] == "model_not_allowed"
    qwen = {**BODY, "model": "qwen"}
    assert [client.post("/v1/chat/completions", json=qwen, headers=scoped).status_code
            for _ in range(2)] == [200, 200]  # fmt: skip
    over = client.post("/v1/chat/completions", json=qwen, headers=scoped)
    assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(over.headers["retry-after"]) <= 30
    assert replicas.counts() == {"v": 2}  # refused requests reached no replica
    m = door.stats.metrics
    assert (
        m.value("provisioner_gateway_errors_total", cluster="?", model="?", kind="unauthorized")
        == 3
    )
    assert (
        m.value("provisioner_gateway_errors_total", cluster="?", model="smol", kind="forbidden")
        == 1
    )


def test_an_open_gateway_needs_no_key() -> None:
    client, door, _ = make(Replicas(), FrontDoorSettings(open=True))
    assert client.post("/v1/chat/completions", json=BODY).status_code == 200
    assert door.status()["open"] is True


def test_requests_spread_over_replicas_and_each_gets_its_engine_key() -> None:
    replicas = Replicas()
    client, _, _ = make(replicas)
    for _ in range(10):
        r = client.post("/v1/chat/completions", json=BODY, headers=AUTH)
        assert r.status_code == 200
    assert replicas.counts() == {"a": 5, "b": 5}
    for name, request in replicas.seen:
        assert request.headers["authorization"] == f"Bearer ek-{name}"  # never the client's


def test_a_refused_replica_is_retried_elsewhere_and_drained() -> None:
    replicas = Replicas()
    replicas.down.add("a")
    client, door, _ = make(replicas)
    answers = [client.post("/v1/chat/completions", json=BODY, headers=AUTH) for _ in range(4)]
    assert [r.status_code for r in answers] == [200] * 4
    assert {r.json()["replica"] for r in answers} == {"b"}
    assert replicas.counts()["a"] == 1  # tried once, then drained
    smol = {r["cluster"]: r for r in door.status()["models"]["smol"]}
    assert not smol["a"]["takes_traffic"] and "unreachable" in smol["a"]["down_reason"]
    assert smol["a"]["errors"] == {"unreachable": 1}
    assert door.stats.metrics.value("provisioner_gateway_retries_total", model="smol") == 1


def test_a_503_before_the_first_byte_is_retried_and_every_replica_down_is_a_clear_error() -> None:
    replicas = Replicas()
    replicas.answer = lambda name, r: (
        httpx.Response(503, json={"error": "loading"}) if name == "a" else ok(name, r)
    )
    client, _, _ = make(replicas)
    assert {client.post("/v1/chat/completions", json=BODY, headers=AUTH).json()["replica"]
            for _ in range(4)} == {"b"}  # fmt: skip
    replicas.down |= {"a", "b"}
    client2, _, _ = make(replicas)
    failed = client2.post("/v1/chat/completions", json=BODY, headers=AUTH)
    assert failed.status_code == 502 and failed.json()["error"]["code"] == "upstream_unreachable"
    none = client2.post("/v1/chat/completions", json=BODY, headers=AUTH)
    assert none.status_code == 503 and none.json()["error"]["code"] == "no_replica"
    assert "a: serving (down: unreachable" in none.json()["error"]["message"]


def test_rebooted_heads_take_no_traffic_and_degraded_ones_only_when_needed() -> None:
    heads = {**HEADS, "n1": node("n1", "10.0.0.1", NodeState.ENROLLED),
             "n2": node("n2", "10.0.0.2", NodeState.DEGRADED)}  # fmt: skip
    replicas = Replicas()
    client, _, _ = make(replicas, heads=heads)
    assert client.post("/v1/chat/completions", json=BODY, headers=AUTH).json()["replica"] == "b"
    heads["n1"] = node("n1", "10.0.0.1", NodeState.SERVING)
    client, _, _ = make(replicas, heads=heads)
    assert {client.post("/v1/chat/completions", json=BODY, headers=AUTH).json()["replica"]
            for _ in range(3)} == {"a"}  # fmt: skip


def test_a_session_sticks_to_one_replica() -> None:
    replicas = Replicas()
    client, _, _ = make(replicas)
    got = {
        client.post("/v1/chat/completions", json={**BODY, "user": "alice"}, headers=AUTH).json()[
            "replica"]
        for _ in range(6)
    }  # fmt: skip
    assert len(got) == 1


class Cut(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for c in self.chunks:
            yield c
        raise httpx.ReadError("peer closed connection without sending complete message body")


def sse_chunk(text: str) -> bytes:
    return f"data: {json.dumps({'choices': [{'delta': {'content': text}}]})}\n\n".encode()


def test_a_stream_cut_mid_way_ends_with_an_sse_error_event_and_is_not_retried() -> None:
    replicas = Replicas()
    replicas.answer = lambda name, r: httpx.Response(
        200, headers={"content-type": "text/event-stream"},
        stream=Cut([sse_chunk("Hel"), sse_chunk("lo")]),
    )  # fmt: skip
    client, door, _ = make(replicas)
    r = client.post("/v1/chat/completions", json={**BODY, "stream": True}, headers=AUTH)
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert events[:2] == [sse_chunk("Hel").decode().strip(), sse_chunk("lo").decode().strip()]
    assert json.loads(events[2].removeprefix("data: "))["error"]["code"] == "upstream_cut"
    assert events[3] == "data: [DONE]"
    assert len(replicas.seen) == 1
    cut = next(x for x in door.status()["models"]["smol"] if x["requests"])
    assert cut["errors"] == {"stream-cut": 1} and cut["outstanding"] == 0


def test_usage_and_figures_per_key_and_replica() -> None:
    replicas = Replicas()

    def stream(name: str, request: httpx.Request) -> httpx.Response:
        if not json.loads(request.content).get("stream"):
            return ok(name, request)
        tail = 'data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}\n\n'
        body = sse_chunk("a") + sse_chunk("b") + tail.encode() + b"data: [DONE]\n\n"
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    replicas.answer = stream
    client, door, _ = make(replicas)
    client.post("/v1/chat/completions", json=BODY, headers=AUTH)
    client.post("/v1/chat/completions", json={**BODY, "stream": True}, headers=AUTH)
    rows = door.stats.drain_usage()
    assert rows == [UsageRow("app", "smol", requests=2, errors=0, tokens_in=12, tokens_out=5)]
    m = door.stats.metrics
    assert m.value("provisioner_gateway_key_tokens_total", key="app", model="smol",
                   direction="out") == 5  # fmt: skip
    assert m.value("provisioner_gateway_ttft_seconds_count", cluster="a", model="smol") + m.value(
        "provisioner_gateway_ttft_seconds_count", cluster="b", model="smol") == 2  # fmt: skip
    assert "provisioner_gateway_outstanding{" in m.render()


def test_the_registry_source_reads_replicas_weights_keys_and_keeps_usage(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.sqlite3")
    for host, mac, ip in (("n1", "52:54:00:00:00:10", "10.0.0.1"),
                          ("n2", "52:54:00:00:00:20", "10.0.0.2")):  # fmt: skip
        reg.touch_node(mac, ip=ip)
        reg.set_hostname(mac, host)
    for cluster in (smol("a", "n1"), smol("b", "n2")):
        reg.save_cluster(cluster.name, cluster.to_json())
    reg.add_step("smoke-1", "52:54:00:00:00:10", "smoke:decode_tokens_per_s", "ok", None,
                 json.dumps({"name": "decode_tokens_per_s", "value": 88.5}), 0.0)  # fmt: skip
    source.add_key(reg, KEY)
    with pytest.raises(source.KeyExists):
        source.add_key(reg, KEY)
    snap = RegistrySource(reg, tmp_path).snapshot()
    assert [(r.id, r.url, r.decode_tps) for r in snap.table.of("smol")] == [
        ("a/smol", "http://10.0.0.1:8080", 88.5),
        ("b/smol", "http://10.0.0.2:8080", None),
    ]
    assert snap.keys == {KEY.id: KEY}
    src = RegistrySource(reg, tmp_path)
    src.add_usage([UsageRow("app", "smol", 2, 0, 10, 4)])
    src.add_usage([UsageRow("app", "smol", 1, 1, 5, 0)])
    assert source.usage(reg) == [UsageRow("app", "smol", 3, 1, 15, 4)]
    source.remove_key(reg, "app")
    with pytest.raises(source.KeyNotFound):
        source.remove_key(reg, "app")
    reg.close()


def test_a_replica_that_dies_before_its_first_token_is_invisible_to_the_client() -> None:
    """Headers alone are not a start: a queued request whose server dies is sent on."""
    replicas = Replicas()
    replicas.answer = lambda name, r: (
        httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Cut([]))
        if name == "a" else ok(name, r)
    )  # fmt: skip
    client, door, _ = make(replicas)
    answers = [client.post("/v1/chat/completions", json={**BODY, "stream": True}, headers=AUTH)
               for _ in range(2)]  # fmt: skip
    assert [(r.status_code, r.json()["replica"]) for r in answers] == [(200, "b"), (200, "b")]
    a = next(x for x in door.status()["models"]["smol"] if x["cluster"] == "a")
    assert a["errors"] == {"reset": 1} and not a["takes_traffic"]
