"""What the gateway says itself and what crosses it (pure, but for :func:`read_body`).

Both gateways (the front door, :mod:`provisioner.gateway.routes`, and a cluster's own,
:mod:`provisioner.boot.gateway`) answer their own errors in the OpenAI format
(:class:`GatewayError`), pass only a few of a client's headers upstream (never its
``Authorization``: the engine key goes instead) and a few of the upstream's back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse

from provisioner.gateway.replicas import base_url as base_url

T = TypeVar("T")
FORWARDED = ("chat/completions", "completions", "embeddings")
# A request body: http.py holds the routes to it before they read (limits.py), and
# read_body again. 4 MiB of JSON is a million tokens of prompt.
MAX_BODY_BYTES = 4 * 1024 * 1024
# Request headers that go upstream; hop-by-hop and Host never do. Accept-Encoding is
# pinned to identity: a compressing upstream would hold SSE chunks back.
PASSED_REQUEST_HEADERS = ("content-type", "accept", "user-agent")
PASSED_RESPONSE_HEADERS = ("content-type", "cache-control", "retry-after", "x-request-id")


@dataclass(frozen=True)
class GatewayTimeouts:
    """``read`` is the longest silence from an upstream (a non-streamed answer is one
    silence as long as its generation); ``total`` caps one whole exchange."""

    connect: float = 5.0
    read: float = 600.0
    write: float = 30.0
    total: float = 3600.0


DEFAULT_TIMEOUTS = GatewayTimeouts()


@dataclass(frozen=True)
class GatewayError:
    """An answer the gateway gives itself, in the OpenAI error format."""

    status: int
    message: str
    code: str
    type: str = "invalid_request_error"
    param: str | None = None
    retry_after: int | None = None  # seconds (429)

    def body(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        headers = {"retry-after": str(self.retry_after)} if self.retry_after is not None else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def upstream_client(
    timeouts: GatewayTimeouts, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The client both gateways reach the servers with (never through an HTTP_PROXY)."""
    t = timeouts
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.connect),
        # The upstreams queue requests themselves (llama-server --parallel, vLLM).
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
        trust_env=False,
    )


def upstream_headers(headers: Mapping[str, str], engine_key: str | None = None) -> dict[str, str]:
    """What goes upstream: a few of the client's headers (never its Authorization), and
    the engine key the servers require."""
    passed = {k: headers[k] for k in PASSED_REQUEST_HEADERS if k in headers}
    passed["accept-encoding"] = "identity"
    if engine_key:
        passed["authorization"] = f"Bearer {engine_key}"
    return passed


def client_key(headers: Mapping[str, str]) -> str | None:
    """The bearer token a client sent (``Authorization: Bearer X``), if any."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def client_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: headers[k] for k in PASSED_RESPONSE_HEADERS if k in headers}


def parse_body(body: bytes) -> object | GatewayError:
    """The request's JSON, or the 400 that says why it is not."""
    try:
        parsed: object = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        # RecursionError: nested too deep for the parser; limits.py refuses deeper
        # than MAX_JSON_DEPTH before it gets here when the gateway runs in the app.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        return GatewayError(400, f"the request body is not JSON: {reason}", "invalid_json")
    return parsed


def unreachable(url: str, model: str, exc: Exception) -> GatewayError:
    return GatewayError(
        502,
        f"the upstream {url} for {model!r} is unreachable: {str(exc) or type(exc).__name__}",
        "upstream_unreachable",
        type="api_error",
    )


def timed_out(url: str) -> GatewayError:
    return GatewayError(
        504, f"the upstream {url} did not answer in time", "upstream_timeout", "api_error"
    )


async def read_body(request: Request) -> bytes | GatewayError:
    too_big = GatewayError(
        413, f"the request body is over {MAX_BODY_BYTES} bytes", "body_too_large"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return too_big
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY_BYTES:
            return too_big
        parts.append(part)
    return b"".join(parts)


class ClientGone(Exception):
    """The client went away while the gateway waited for the upstream."""


async def watching(send: Awaitable[T], request: Request) -> T:
    """``send``'s result, unless the client goes away first (then it is cancelled)."""
    sending = asyncio.ensure_future(send)
    gone = asyncio.ensure_future(disconnected(request))
    try:
        done, _ = await asyncio.wait({sending, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        sending.cancel()
        gone.cancel()
        raise
    if sending in done:
        gone.cancel()
        return sending.result()
    sending.cancel()
    with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
        await sending  # (_start closes what it opened when cancelled)
    raise ClientGone


async def disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
