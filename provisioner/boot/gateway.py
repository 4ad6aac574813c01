"""One OpenAI-compatible gateway per cluster, on the control node's HTTP port.

Clients set ``OPENAI_BASE_URL=http://<control>:<http port>/clusters/<name>/v1`` and ask for
any model the cluster serves; the request goes to the head's server for that model
(llama-server for llama-rpc, one vLLM server per served model), and the answer streams
back as it comes. Routes, checked per request (a cluster without ``gateway: true`` gets
404 and a line saying how to turn it on):

- ``GET  /clusters/{name}/v1/models``: the served names, from the cluster spec;
- ``POST /clusters/{name}/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``:
  forwarded by the body's ``model``.

Every route needs the cluster's gateway key (``Authorization: Bearer``; ``provisioner
cluster key NAME``): 401 without it. The client's ``Authorization`` header never goes
upstream: the gateway sends the cluster's engine key, which the servers require
(:mod:`provisioner.clusters.keys`).

The routing is pure (:func:`upstreams`, :func:`pick`, :func:`model_list`); the forwarding
is :class:`Gateway` over an ``httpx.AsyncClient`` (no thread held while a stream waits
for its next token), whose transport a test replaces with ``httpx.MockTransport``.
httpx's exceptions stop here: they become OpenAI-style 502/504 answers, or, once a
stream has started, a logged and counted cut.

A request body is at most :data:`MAX_BODY_BYTES` (413) of JSON nested at most
``limits.MAX_JSON_DEPTH`` deep (400): the app's body limits (limits.py) hold the routes
to both before they read, with errors in this module's format (:func:`refusal_body`);
:func:`_read_body` and the parse check again, for a gateway mounted without them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from provisioner.boot.limits import Refusal
from provisioner.clusters import keys
from provisioner.clusters.spec import ClusterError
from provisioner.clusters.store import load
from provisioner.gateway.wire import (
    DEFAULT_TIMEOUTS,
    FORWARDED,
    GatewayError,
    GatewayTimeouts,
    base_url,
    client_headers,
    client_key,
    read_body,
    upstream_client,
    upstream_headers,
)
from provisioner.gateway.wire import MAX_BODY_BYTES as MAX_BODY_BYTES
from provisioner.metrics import Metrics
from provisioner.records import Cluster
from provisioner.registry import Registry

log = logging.getLogger(__name__)

UNKNOWN = "?"  # the metrics label for a cluster or model we do not serve (bounded labels)


def refusal_body(refusal: Refusal) -> dict[str, object]:
    """The body limits' refusals (limits.py) in the gateways' OpenAI error format."""
    return dict(GatewayError(refusal.status, refusal.message, refusal.code).body())


# ---------------------------------------------------------------- pure routing


def upstreams(cluster: Cluster, head_ip: str) -> dict[str, str]:
    """Served model name -> the base URL of the head's server for it."""
    return {s.name: base_url(head_ip, s.port) for s in cluster.served()}


def pick(upstreams: Mapping[str, str], body: object) -> str | GatewayError:
    """The base URL for a request body (parsed JSON), by its ``model``.

    No ``model`` is fine when the cluster serves exactly one; a model not served is a 404
    that lists what is."""
    names = ", ".join(sorted(upstreams)) or "none"
    if not isinstance(body, dict):
        return GatewayError(400, "the request body must be a JSON object", "invalid_body")
    model = body.get("model")
    if model is None or model == "":
        if len(upstreams) == 1:
            return next(iter(upstreams.values()))
        return GatewayError(
            400, f"'model' is required: one of {names}", "model_required", param="model"
        )
    if not isinstance(model, str):
        return GatewayError(400, "'model' must be a string", "invalid_model", param="model")
    if model not in upstreams:
        return GatewayError(
            404,
            f"the model {model!r} is not served here; served: {names}",
            "model_not_found",
            param="model",
        )
    return upstreams[model]


def model_list(cluster: Cluster, head_ip: str | None, now: int) -> dict[str, object]:
    """``GET /v1/models`` from the spec alone: no upstream needs to be up to list it."""
    data = [
        {
            "id": s.name,
            "object": "model",
            "created": now,
            "owned_by": cluster.name,
            "upstream": base_url(head_ip, s.port) if head_ip else None,
        }
        for s in cluster.served()
    ]
    return {"object": "list", "data": data}


def gateway_off(cluster: Cluster) -> GatewayError:
    return GatewayError(
        404,
        f"cluster {cluster.name!r} has no gateway: turn it on with "
        f"'provisioner cluster create {cluster.name} ... --gateway'",
        "gateway_off",
    )


def unauthorized(cluster: str) -> GatewayError:
    return GatewayError(
        401,
        f"cluster {cluster}'s gateway needs its key: Authorization: Bearer <key> "
        f"(the operator runs: provisioner cluster key {cluster})",
        "invalid_api_key",
    )


# ---------------------------------------------------------------- forwarding


@dataclass(frozen=True)
class Route:
    """What the registry says of one cluster at request time."""

    cluster: Cluster
    head_ip: str | None
    gateway_key: str | None = None  # what clients must send (None: nobody gets in)
    engine_key: str | None = None  # what the servers require


class Gateway:
    """The forwarding half: resolves a cluster, forwards a request, relays the answer."""

    def __init__(
        self,
        registry: Registry,
        metrics: Metrics,
        *,
        state_dir: Path | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeouts: GatewayTimeouts = DEFAULT_TIMEOUTS,
    ):
        self.state_dir = state_dir  # where the clusters' keys are (None: no keys at all)
        self.registry = registry
        self.metrics = metrics
        self.timeouts = timeouts
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        """Made at first use (an app that never forwards loads no TLS context)."""
        if self._client is None:
            self._client = upstream_client(self.timeouts, self._transport)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _route(self, name: str) -> Route | GatewayError:
        try:
            cluster = load(self.registry, name)
        except ClusterError as exc:
            return GatewayError(404, str(exc), "cluster_not_found")
        if not cluster.gateway:
            return gateway_off(cluster)
        head = self.registry.node(cluster.head)
        gateway_key = engine_key = None
        if self.state_dir is not None:
            gateway_key = keys.existing(self.state_dir, cluster.name, "gateway")
            engine_key = keys.existing(self.state_dir, cluster.name, "engine")
        return Route(cluster, head.ip if head is not None else None, gateway_key, engine_key)

    async def authorized(self, name: str, request: Request) -> Route | GatewayError:
        """The cluster's route if the request carries its gateway key."""
        route = await self.route(name)
        if isinstance(route, GatewayError):
            return route
        if not keys.matches(route.gateway_key, client_key(request.headers)):
            return unauthorized(route.cluster.name)
        return route

    async def route(self, name: str) -> Route | GatewayError:
        # The registry takes a lock that a writer may hold: never wait for it on the loop.
        return await run_in_threadpool(self._route, name)

    def count(self, cluster: str, model: str, status: int) -> None:
        self.metrics.inc(
            "provisioner_gateway_requests_total", cluster=cluster, model=model, status=str(status)
        )

    async def models(self, name: str, request: Request) -> Response:
        route = await self.authorized(name, request)
        if isinstance(route, GatewayError):
            return route.response()
        return JSONResponse(model_list(route.cluster, route.head_ip, int(time.time())))

    async def forward(self, name: str, endpoint: str, request: Request) -> Response:
        route = await self.authorized(name, request)
        if isinstance(route, GatewayError):
            self.count(UNKNOWN, UNKNOWN, route.status)
            return route.response()
        cluster = route.cluster
        body = await read_body(request)
        if isinstance(body, GatewayError):
            self.count(cluster.name, UNKNOWN, body.status)
            return body.response()
        try:
            parsed: object = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            # RecursionError: nested too deep for the parser; limits.py refuses deeper
            # than MAX_JSON_DEPTH before it gets here when the gateway runs in the app.
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            self.count(cluster.name, UNKNOWN, 400)
            return GatewayError(
                400, f"the request body is not JSON: {reason}", "invalid_json"
            ).response()
        if route.head_ip is None:
            self.count(cluster.name, UNKNOWN, 502)
            return GatewayError(
                502,
                f"cluster {cluster.name}: the head {cluster.head} has no known address",
                "upstream_unknown",
                type="api_error",
            ).response()
        table = upstreams(cluster, route.head_ip)
        chosen = pick(table, parsed)
        if isinstance(chosen, GatewayError):
            self.count(cluster.name, UNKNOWN, chosen.status)
            return chosen.response()
        # pick() took it: the model asked for, or the one served when none was asked for.
        asked = parsed.get("model") if isinstance(parsed, dict) else None
        model = asked if isinstance(asked, str) and asked else next(iter(table))
        url = f"{chosen}/v1/{endpoint}"
        return await self._relay(cluster.name, model, url, body, request, route.engine_key)

    async def _relay(
        self, cluster: str, model: str, url: str, body: bytes, request: Request,
        engine_key: str | None = None,
    ) -> Response:  # fmt: skip
        upstream_request = self.client.build_request(
            "POST", url, content=body, headers=upstream_headers(request.headers, engine_key)
        )
        started = time.monotonic()
        try:
            upstream = await self.client.send(upstream_request, stream=True)
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                return self._unreachable(cluster, model, url, exc)
            self.count(cluster, model, 504)
            log.warning(
                "gateway cluster=%s model=%s upstream %s timed out: %r", cluster, model, url, exc
            )
            return GatewayError(
                504, f"the upstream {url} did not answer in time", "upstream_timeout", "api_error"
            ).response()
        except httpx.HTTPError as exc:
            return self._unreachable(cluster, model, url, exc)
        self.count(cluster, model, upstream.status_code)
        log.info("gateway cluster=%s model=%s -> %s %d", cluster, model, url, upstream.status_code)
        return StreamingResponse(
            self._chunks(cluster, model, upstream, started),
            status_code=upstream.status_code,
            headers=client_headers(upstream.headers),
        )

    def _unreachable(self, cluster: str, model: str, url: str, exc: Exception) -> Response:
        self.count(cluster, model, 502)
        log.warning(
            "gateway cluster=%s model=%s upstream %s unreachable: %r", cluster, model, url, exc
        )
        return GatewayError(
            502,
            f"the upstream {url} for {model!r} is unreachable: {str(exc) or type(exc).__name__}",
            "upstream_unreachable",
            type="api_error",
        ).response()

    async def _chunks(
        self, cluster: str, model: str, upstream: httpx.Response, started: float
    ) -> AsyncIterator[bytes]:
        """The upstream's body, each piece passed on as soon as it arrives."""
        try:
            async for chunk in upstream.aiter_bytes():
                yield chunk
                if time.monotonic() - started > self.timeouts.total:
                    self._broken(cluster, model, "total-cap", upstream.url)
                    return
        except httpx.HTTPError as exc:
            self._broken(cluster, model, type(exc).__name__, upstream.url)
        finally:
            await upstream.aclose()

    def _broken(self, cluster: str, model: str, reason: str, url: httpx.URL) -> None:
        self.metrics.inc(
            "provisioner_gateway_broken_total", cluster=cluster, model=model, reason=reason
        )
        log.warning(
            "gateway cluster=%s model=%s stream from %s cut: %s", cluster, model, url, reason
        )


def router(gateway: Gateway) -> APIRouter:
    """The gateway's routes, for ``app.include_router``."""
    routes = APIRouter(tags=["gateway"])

    @routes.get("/clusters/{name}/v1/models")
    async def list_models(name: str, request: Request) -> Response:
        return await gateway.models(name, request)

    def forwarder(endpoint: str) -> Callable[[str, Request], Awaitable[Response]]:
        async def forward(name: str, request: Request) -> Response:
            return await gateway.forward(name, endpoint, request)

        forward.__name__ = "forward_" + endpoint.replace("/", "_")
        return forward

    for endpoint in FORWARDED:
        routes.add_api_route(
            f"/clusters/{{name}}/v1/{endpoint}", forwarder(endpoint), methods=["POST"]
        )
    return routes
