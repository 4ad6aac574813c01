"""limits.BodyLimits in front of a tiny ASGI app that reads whatever body it is given,
driven by httpx's ASGI transport. The client's body is a generator that counts what it
was asked for: "nothing read" is ``pulled == 0``. The rules of the real app (http.py)
are pinned in test_http_app.py."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import httpx
import pytest
from starlette.types import Receive, Scope, Send

from provisioner.boot import gateway
from provisioner.boot.limits import (
    DEFAULT_LIMIT,
    MAX_JSON_DEPTH,
    Auth,
    BodyLimits,
    JsonDepth,
    Refusal,
    route,
)

TOKEN = "the-api-token"
LIMIT = 1000
PIECE = 100


class ClientLeft(Exception):
    """What Starlette raises (ClientDisconnect) when receive() says the client left."""


@dataclass
class Reader:
    """The app: reads the whole body, then answers 200 with how much it read."""

    calls: int = 0
    read: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientLeft
            self.read += len(message.get("body", b""))
            more = message.get("more_body", False)
        body = json.dumps({"read": self.read}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


@dataclass
class Body:
    """The client's body, ``size`` bytes of ``fill`` in PIECE-byte pieces, made on demand."""

    size: int
    fill: bytes = b"0"
    pulled: int = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        while self.pulled < self.size:
            n = min(PIECE, self.size - self.pulled)
            self.pulled += n
            yield (self.fill * n)[:n]


RULES = (
    route("api-write", "PATCH DELETE", "/api/v1/nodes/{key}", LIMIT, Auth.API_TOKEN),
    route("inventory", "POST", "/api/v1/nodes/{mac}/inventory", 10 * LIMIT, Auth.BEARER),
    route("gateway", "POST", "/clusters/{name}/v1/{rest:path}", LIMIT,
          render=gateway.refusal_body),
)  # fmt: skip


@dataclass
class Stack:
    app: Reader
    middleware: BodyLimits
    refused: list[Refusal]


@pytest.fixture
def stack() -> Stack:
    app, refused = Reader(), []
    middleware = BodyLimits(
        app,
        rules=RULES,
        api_token_ok=lambda header: header == f"Bearer {TOKEN}",
        default_limit=LIMIT,
        on_refused=refused.append,
    )
    return Stack(app, middleware, refused)


def call(
    stack: Stack,
    method: str,
    path: str,
    body: Body | bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=stack.middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://appliance") as c:
            content = body.chunks() if isinstance(body, Body) else body
            return await c.request(method, path, content=content, headers=headers)

    return anyio.run(go)


API = {"Authorization": f"Bearer {TOKEN}"}


def test_a_body_within_the_limit_reaches_the_app(stack: Stack) -> None:
    body = Body(LIMIT)
    r = call(stack, "PATCH", "/api/v1/nodes/aa", body, API)
    assert r.status_code == 200 and r.json() == {"read": LIMIT}
    assert body.pulled == LIMIT and stack.refused == []


def test_a_declared_length_over_the_limit_is_413_with_nothing_read(stack: Stack) -> None:
    body = Body(300 * 1000 * 1000)
    headers = {**API, "Content-Length": str(body.size)}
    r = call(stack, "PATCH", "/api/v1/nodes/aa", body, headers)
    assert r.status_code == 413
    assert r.json() == {"detail": f"the request body is over {LIMIT} bytes"}
    assert body.pulled == 0 and stack.app.calls == 0
    assert [x.reason for x in stack.refused] == ["body-size"]


def test_a_chunked_body_over_the_limit_is_cut_off_at_the_limit(stack: Stack) -> None:
    body = Body(300 * 1000 * 1000)
    r = call(stack, "PATCH", "/api/v1/nodes/aa", body, API)
    assert r.status_code == 413  # the app's own answer (it saw the client leave) dropped
    assert body.pulled <= LIMIT + PIECE
    assert stack.app.calls == 1 and stack.app.read <= LIMIT
    assert [x.reason for x in stack.refused] == ["body-size"]


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]
)
def test_no_api_token_and_a_big_body_is_401_with_nothing_read(
    stack: Stack, headers: dict[str, str]
) -> None:
    for declared in (True, False):
        body = Body(300 * 1000 * 1000)
        sent = {**headers, "Content-Length": str(body.size)} if declared else headers
        r = call(stack, "PATCH", "/api/v1/nodes/aa", body, sent)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert body.pulled == 0
    assert stack.app.calls == 0
    assert [x.reason for x in stack.refused] == ["api-token", "api-token"]


def test_a_bearer_rule_asks_only_that_there_is_a_token(stack: Stack) -> None:
    """The inventory's per-boot token is the route's to check; here only its presence."""
    url = "/api/v1/nodes/aa/inventory"
    body = Body(300 * 1000 * 1000)
    r = call(stack, "POST", url, body, {"Content-Length": str(body.size)})
    assert r.status_code == 401 and body.pulled == 0 and stack.app.calls == 0
    assert [x.reason for x in stack.refused] == ["bearer"]
    small = Body(5 * LIMIT)
    r = call(stack, "POST", url, small, {"Authorization": "Bearer any-value"})
    assert r.status_code == 200 and r.json() == {"read": 5 * LIMIT}


def test_any_route_without_a_rule_has_the_default_limit(stack: Stack) -> None:
    body = Body(10 * LIMIT)
    r = call(stack, "POST", "/boot/aa.ipxe", body, {"Content-Length": str(body.size)})
    assert r.status_code == 413 and body.pulled == 0
    r = call(stack, "GET", "/api/v1/nodes", Body(LIMIT))
    assert r.status_code == 200  # no credentials asked: the routes ask their own
    assert DEFAULT_LIMIT == 64 * 1024


def test_the_gateway_rule_refuses_in_the_openai_format(stack: Stack) -> None:
    body = Body(2 * LIMIT)
    r = call(stack, "POST", "/clusters/small/v1/chat/completions", body,
             {"Content-Length": str(body.size)})  # fmt: skip
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large"
    assert r.json()["error"]["message"] == f"the request body is over {LIMIT} bytes"


def deep(depth: int) -> bytes:
    """A JSON object nested ``depth`` levels deep, itself included."""
    return b'{"a": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.mark.parametrize("content_type", ["application/json", None, "application/x-anything"])
def test_json_nested_too_deep_is_400(stack: Stack, content_type: str | None) -> None:
    headers = {**API, "Content-Type": content_type} if content_type else API
    r = call(stack, "PATCH", "/api/v1/nodes/aa", deep(MAX_JSON_DEPTH), headers)
    assert r.status_code == 200
    r = call(stack, "PATCH", "/api/v1/nodes/aa", deep(MAX_JSON_DEPTH + 1), headers)
    assert r.status_code == 400
    assert r.json() == {"detail": f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels"}
    assert [x.reason for x in stack.refused] == ["json-depth"]


def test_a_text_plain_body_is_not_looked_at_as_json(stack: Stack) -> None:
    """The agent's report is text: brackets in it are no nesting."""
    headers = {"Authorization": "Bearer t", "Content-Type": "text/plain; charset=utf-8"}
    r = call(stack, "POST", "/api/v1/nodes/aa/inventory", b"[" * 5000, headers)
    assert r.status_code == 200


def test_json_100000_deep_streamed_is_400_before_the_end(stack: Stack) -> None:
    body = Body(100_000, fill=b"[")
    r = call(stack, "POST", "/api/v1/nodes/aa/inventory", body, {"Authorization": "Bearer t"})
    assert r.status_code == 400
    assert body.pulled <= MAX_JSON_DEPTH + PIECE


def test_websocket_and_lifespan_scopes_pass_untouched(stack: Stack) -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    middleware = BodyLimits(app, rules=RULES, api_token_ok=lambda header: False)

    async def nothing() -> dict[str, str]:
        return {}

    async def drop(message: object) -> None:
        return None

    anyio.run(middleware, {"type": "lifespan"}, nothing, drop)
    assert seen == ["lifespan"]


# ---------------------------------------------------------------- the rule table


@pytest.mark.parametrize(
    ("method", "path", "rule"),
    [
        ("PATCH", "/api/v1/nodes/aa:bb", "api-write"),
        ("DELETE", "/api/v1/nodes/node0", "api-write"),
        ("POST", "/api/v1/nodes/aa:bb", "default"),  # a method no rule names
        ("PATCH", "/api/v1/nodes/aa/bb", "default"),  # {key} is one path segment
        ("POST", "/api/v1/nodes/aa:bb/inventory", "inventory"),
        ("POST", "/api/v1/nodes//inventory", "default"),
        ("POST", "/clusters/small/v1/chat/completions", "gateway"),
        ("POST", "/clusters/small/v1/", "default"),  # {rest:path} is one segment or more
        ("GET", "/clusters/small/v1/models", "default"),
        ("POST", "/api/v1/nodes/aa:bb/inventoryX", "default"),
    ],
)
def test_rules_match_as_the_routes_do(stack: Stack, method: str, path: str, rule: str) -> None:
    assert stack.middleware.rule_for(method, path).name == rule


# ---------------------------------------------------------------- JsonDepth


def depth_of(*pieces: bytes, limit: int = 3) -> bool:
    scan = JsonDepth(limit)
    return all(scan.feed(p) for p in pieces)


@pytest.mark.parametrize(
    ("pieces", "within"),
    [
        ((b"[[[]]]",), True),  # 3 deep: the limit itself
        ((b"[[[[]]]]",), False),
        ((b'{"a": {"b": {"c": 1}}}',), True),
        ((b'{"a": {"b": {"c": {}}}}',), False),
        ((b'["[[[[[[[["]',), True),  # brackets in a string are no nesting
        ((b'["\\"[[[[[["]',), True),  # an escaped quote does not end the string
        ((b'["\\\\", [[[]]]]',), False),  # an escaped backslash does not escape the quote
        ((b'["\\', b'"[[[[["]'), True),  # the escape and its quote in two pieces
        ((b'["\\\\', b'", [[[]]]]'), False),
        ((b"[[", b"[", b"[]]]]"), False),  # nesting across pieces
        ((b"[[", b"]]", b"[[", b"]]", b"[[[]]]"), True),  # deep only in total
        ((b'["', b"[[[[[", b'"]'), True),  # a string across pieces
        ((b"[]" * 10_000,), True),  # many brackets, shallow: counted, not walked
        ((b"[" * 3 + b'"' + b"[" * 10 + b'"' + b"]" * 3,), True),
    ],
)
def test_json_depth_counts_structure_only(pieces: tuple[bytes, ...], within: bool) -> None:
    assert depth_of(*pieces) is within


def nesting(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(nesting, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(nesting, value), default=0)
    return 0


def test_json_depth_agrees_with_the_parser_byte_by_byte() -> None:
    """Fed one byte at a time, the scan finds the depth the parsed value has."""
    value = {"a": ["x]", {"b": ['\\"[', [[["deep", {}]]]]}], "c": "}{", "d": "\\"}
    text = json.dumps(value).encode()
    depth = nesting(value)
    assert depth == 8
    for limit, within in ((depth, True), (depth - 1, False)):
        scan = JsonDepth(limit)
        assert all(scan.feed(text[i : i + 1]) for i in range(len(text))) is within


def random_value(rng: random.Random, depth: int) -> object:
    """A JSON value up to ``depth`` deep, with strings full of brackets, quotes, escapes."""
    kind = rng.choice(["str", "num", "list", "dict"] if depth else ["str", "num"])
    if kind == "str":
        return "".join(rng.choice('[]{}"\\ a\u00e9\n') for _ in range(rng.randrange(6)))
    if kind == "num":
        return rng.randrange(100)
    items = [random_value(rng, depth - 1) for _ in range(rng.randrange(4))]
    if kind == "list":
        return items
    return {str(random_value(rng, 0)): item for item in items}


def test_json_depth_agrees_with_the_parser_on_random_texts_cut_anywhere() -> None:
    rng = random.Random(20261204)
    for _ in range(300):
        value = random_value(rng, rng.randrange(1, 9))
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randrange(1, 6))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        depth = nesting(value)
        scan = JsonDepth(depth)
        assert all(scan.feed(p) for p in pieces), text
        if depth:
            scan = JsonDepth(depth - 1)
            assert not all(scan.feed(p) for p in pieces), text
