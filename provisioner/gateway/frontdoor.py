"""The front door's proxy: a request in, a replica chosen, its answer relayed.

One :class:`FrontDoor` per app. Its :meth:`start` begins two loops: the table and keys
refreshed from the registry every :data:`REFRESH_S` (on a thread), and the health
:class:`~provisioner.gateway.health.Prober`. A request then needs no registry read:

1. the key (``Authorization: Bearer pvk-...``; 401 without a valid one, unless the
   gateway is open), its models (403) and its rate (429 with ``Retry-After``);
2. the body's ``model`` (no model: the only served name, if there is one);
3. the replicas, ranked by :func:`provisioner.gateway.balance.order`;
4. sent to the first; a connection refused or reset, or a 503, before the first byte
   sends it to the next (at most ``max_attempts`` replicas), and a refused or reset one
   is drained at once. Once a byte went to the client nothing is retried: a stream cut
   mid-way ends with an SSE error event (:func:`provisioner.gateway.sse.error_event`);
5. a client that goes away cancels the upstream request (the connection to it closes,
   which llama-server and vLLM take as a cancel), before or during the answer.

httpx's exceptions stop here; the client sees OpenAI-style errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from provisioner.config_services import GatewayConfig
from provisioner.gateway import apikeys, balance, replicas, sse
from provisioner.gateway.health import HealthBook, Prober
from provisioner.gateway.ratelimit import RateLimiter, retry_after
from provisioner.gateway.replicas import Replica, Table
from provisioner.gateway.source import Snapshot, Source
from provisioner.gateway.stats import UNKNOWN, Stats
from provisioner.gateway.transport import PoolTransport
from provisioner.gateway.wire import (
    DEFAULT_TIMEOUTS,
    ClientGone,
    GatewayError,
    GatewayTimeouts,
    client_headers,
    client_key,
    parse_body,
    read_body,
    timed_out,
    unreachable,
    upstream_client,
    upstream_headers,
    watching,
)
from provisioner.metrics import Metrics

log = logging.getLogger(__name__)

REFRESH_S = 1.0  # how old the replica table and the keys may be
USAGE_FLUSH_S = 5.0  # how often usage reaches the registry
ANONYMOUS = "-"  # the usage key of requests to an open gateway


@dataclass(frozen=True)
class FrontDoorSettings:
    open: bool = False  # no key needed (a trusted network): said loudly at start
    routing: balance.Routing = balance.Routing.LEAST_OUTSTANDING
    max_attempts: int = 3  # replicas one request may be sent to
    probe_interval: float = 1.0
    timeouts: GatewayTimeouts = field(default_factory=lambda: DEFAULT_TIMEOUTS)


def settings_from(cfg: GatewayConfig) -> FrontDoorSettings:
    return FrontDoorSettings(
        open=cfg.open,
        routing=balance.Routing(cfg.routing),
        max_attempts=cfg.max_attempts,
        probe_interval=cfg.probe_interval,
    )


@dataclass(frozen=True)
class Admitted:
    key: str  # the key's name (ANONYMOUS when open)
    api_key: apikeys.ApiKey | None


class FrontDoor:
    def __init__(
        self,
        source: Source,
        metrics: Metrics,
        settings: FrontDoorSettings | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.source = source
        self.settings = settings or FrontDoorSettings()
        self.stats = Stats(metrics)
        self.health = HealthBook()
        self.stats.watch(self.health.up)
        self.limits = RateLimiter()
        self.snapshot: Snapshot | None = None
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._turn = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._prober: Prober | None = None

    # ---------------------------------------------------------------- life

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = upstream_client(
                self.settings.timeouts, self._transport or PoolTransport()
            )
        return self._client

    async def start(self) -> None:
        """Read the table once (so the first request finds it), then keep it fresh."""
        if self.settings.open:
            log.warning(
                "the gateway is OPEN ([gateway] open = true): anyone who reaches it may use "
                "every model without a key"
            )
        await self.refresh()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._refresher()), loop.create_task(self._flusher())]
        self._prober = Prober(self.health, self.client, self._probe_targets,
                              interval=self.settings.probe_interval)  # fmt: skip
        self._prober.start()

    async def stop(self) -> None:
        if self._prober is not None:
            await self._prober.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.flush_usage()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def refresh(self) -> None:
        self.snapshot = await run_in_threadpool(self.source.snapshot)
        self.health.keep(r.id for r in self.snapshot.table.all())

    async def flush_usage(self) -> None:
        rows = self.stats.drain_usage()
        try:
            await run_in_threadpool(self.source.add_usage, rows)
        except Exception:
            log.exception("gateway usage not written; kept for the next flush")
            self.stats.restore_usage(rows)

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.refresh()
            except Exception:
                log.exception("gateway table refresh failed; the last one stays")

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(USAGE_FLUSH_S)
            await self.flush_usage()

    def _probe_targets(self) -> dict[str, str]:
        table = self.table
        return {r.id: r.url for r in table.all() if r.url is not None and r.tier is not None}

    @property
    def table(self) -> Table:
        return self.snapshot.table if self.snapshot is not None else Table({})

    # ---------------------------------------------------------------- admission

    async def ready(self) -> None:
        """The table read once, for an app whose front door was never started (tests)."""
        if self.snapshot is None:
            await self.refresh()

    def admit(self, request: Request) -> Admitted | GatewayError:
        if self.settings.open:
            return Admitted(ANONYMOUS, None)
        keys = self.snapshot.keys if self.snapshot is not None else {}
        found = apikeys.verify(keys, client_key(request.headers))
        if found is None:
            return GatewayError(
                401,
                "the gateway needs an API key: Authorization: Bearer <key> (the operator "
                "runs: provisioner gateway key add NAME)",
                "invalid_api_key",
            )
        return Admitted(found.name, found)

    def allowed(self, admitted: Admitted, model: str) -> GatewayError | None:
        key = admitted.api_key
        if key is None:
            return None
        if not key.allows(model):
            return GatewayError(
                403,
                f"the key {key.name!r} is not for the model {model!r} "
                f"(it may use: {', '.join(key.models or ())})",
                "model_not_allowed",
                param="model",
            )
        if key.rpm is not None:
            wait = self.limits.take(key.id, key.rpm, time.monotonic())
            if wait is not None:
                return GatewayError(
                    429,
                    f"the key {key.name!r} is over its {key.rpm} requests a minute",
                    "rate_limit_exceeded",
                    type="requests",
                    retry_after=retry_after(wait),
                )
        return None

    # ---------------------------------------------------------------- routes

    async def models(self, request: Request) -> Response:
        await self.ready()
        admitted = self.admit(request)
        if isinstance(admitted, GatewayError):
            self.stats.error(UNKNOWN, UNKNOWN, "unauthorized")
            return admitted.response()
        names = [
            n for n in self.table.names()
            if admitted.api_key is None or admitted.api_key.allows(n)
        ]  # fmt: skip
        return JSONResponse(replicas.model_list(names, int(time.time())))

    async def forward(self, endpoint: str, request: Request) -> Response:
        arrived = time.monotonic()
        await self.ready()
        admitted = self.admit(request)
        if isinstance(admitted, GatewayError):
            return self._refuse(admitted, UNKNOWN, "unauthorized")
        body = await read_body(request)
        if isinstance(body, GatewayError):
            return self._refuse(body, UNKNOWN, "bad-request")
        parsed = parse_body(body)
        if isinstance(parsed, GatewayError):
            return self._refuse(parsed, UNKNOWN, "bad-request")
        model = self._model(parsed)
        if isinstance(model, GatewayError):
            return self._refuse(model, UNKNOWN, "bad-request")
        refused = self.allowed(admitted, model)
        if refused is not None:
            kind = "forbidden" if refused.status == 403 else "rate-limited"
            self.stats.used(admitted.key, model, error=True, tokens_in=0, tokens_out=0)
            return self._refuse(refused, model, kind)
        assert isinstance(parsed, dict)  # _model() said so
        ranked = self.rank(model, request, parsed)
        if not ranked:
            self.stats.used(admitted.key, model, error=True, tokens_in=0, tokens_out=0)
            return self._refuse(self._none_up(model), model, "no-replica")
        return await self._send(endpoint, model, body, request, ranked, admitted, arrived)

    def _refuse(self, error: GatewayError, model: str, kind: str) -> Response:
        self.stats.error(UNKNOWN, model, kind)
        self.stats.answered(UNKNOWN, model, error.status)
        return error.response()

    def _model(self, parsed: object) -> str | GatewayError:
        if not isinstance(parsed, dict):
            return GatewayError(400, "the request body must be a JSON object", "invalid_body")
        names = self.table.names()
        model = parsed.get("model")
        if model is None or model == "":
            if len(names) == 1:
                return names[0]
            return GatewayError(400, f"'model' is required: one of {', '.join(names) or 'none'}",
                                "model_required", param="model")  # fmt: skip
        if not isinstance(model, str):
            return GatewayError(400, "'model' must be a string", "invalid_model", param="model")
        if model not in names:
            return GatewayError(
                404,
                f"the model {model!r} is not served here; served: {', '.join(names) or 'none'}",
                "model_not_found",
                param="model",
            )
        return model

    def rank(self, model: str, request: Request, body: dict[str, object]) -> list[Replica]:
        """The replicas of ``model`` to try, in order (up ones in a tier that serves)."""
        by_id = {r.id: r for r in self.table.of(model)}
        candidates = [
            balance.Candidate(r.id, tier, self.stats.figures(r.id).outstanding, r.decode_tps)
            for r in by_id.values()
            if (tier := r.tier) is not None and self.health.up(r.id)
        ]
        order = balance.order(
            candidates,
            routing=self.settings.routing,
            session=balance.session_key(request.headers, body),
            prefix=balance.prompt_prefix(body)
            if self.settings.routing is balance.Routing.PREFIX
            else None,
            turn=next(self._turn),
        )
        return [by_id[i] for i in order]

    def _none_up(self, model: str) -> GatewayError:
        states = ", ".join(
            f"{r.cluster}: {r.state.value if r.state else 'no head'}"
            + ("" if self.health.up(r.id) else f" (down: {self.health.get(r.id).reason})")
            for r in self.table.of(model)
        )
        return GatewayError(
            503, f"no replica of {model!r} is serving ({states})", "no_replica", type="api_error",
            retry_after=5,
        )  # fmt: skip

    # ---------------------------------------------------------------- sending

    async def _send(
        self, endpoint: str, model: str, body: bytes, request: Request,
        ranked: list[Replica], admitted: Admitted, arrived: float,
    ) -> Response:  # fmt: skip
        """Try the replicas in turn until one gives the answer's first body bytes; only
        then does the client get a status line, so a replica that fails before its first
        token (refused, reset, killed while the request waited in its queue) is invisible."""
        last: GatewayError | None = None
        for attempt, replica in enumerate(ranked[: self.settings.max_attempts]):
            if attempt:
                self.stats.retried(model)
            url = f"{replica.url}/v1/{endpoint}"
            self.stats.begin(replica.id)
            try:
                started = await watching(self._start(replica, url, body, request), request)
            except ClientGone:
                self._ended(replica, "client-gone", admitted, model)
                return Response(status_code=499)
            except httpx.TimeoutException as exc:
                if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                    last = self._failed(replica, "unreachable", exc, url, model)
                    continue
                self._ended(replica, "timeout", admitted, model, status=504)
                return timed_out(url).response()
            except httpx.HTTPError as exc:
                kind = "unreachable" if isinstance(exc, httpx.ConnectError) else "reset"
                last = self._failed(replica, kind, exc, url, model)
                continue
            upstream, chunks, first = started
            if upstream.status_code == 503 and attempt + 1 < min(
                len(ranked), self.settings.max_attempts
            ):
                await upstream.aclose()
                self.stats.end(replica.id)
                self.stats.error(replica.cluster, model, "busy")
                continue
            return self._relay(replica, model, upstream, chunks, first, admitted, arrived)
        self.stats.used(admitted.key, model, error=True, tokens_in=0, tokens_out=0)
        self.stats.answered(UNKNOWN, model, 502)
        return (last or self._none_up(model)).response()

    async def _start(
        self, replica: Replica, url: str, body: bytes, request: Request
    ) -> tuple[httpx.Response, AsyncIterator[bytes], bytes]:
        """The upstream's response, its body iterator and the first bytes of its body."""
        outgoing = self.client.build_request(
            "POST", url, content=body,
            headers=upstream_headers(request.headers, replica.engine_key),
        )  # fmt: skip
        upstream = await self.client.send(outgoing, stream=True)
        chunks = upstream.aiter_bytes()
        try:
            first = await anext(chunks, b"")
        except BaseException:
            await upstream.aclose()
            raise
        return upstream, chunks, first

    def _failed(
        self, replica: Replica, kind: str, exc: Exception, url: str, model: str
    ) -> GatewayError:
        self.stats.end(replica.id)
        self.stats.error(replica.cluster, model, kind)
        reason = f"{kind}: {type(exc).__name__}: {exc}".rstrip(": ")
        if self.health.failed(replica.id, time.monotonic(), reason, definitive=True):
            log.warning("replica %s drained: %s", replica.id, reason)
        return unreachable(url, model, exc)

    def _ended(self, replica: Replica, kind: str, admitted: Admitted, model: str,
               status: int | None = None) -> None:  # fmt: skip
        self.stats.end(replica.id)
        self.stats.error(replica.cluster, model, kind)
        self.stats.used(admitted.key, model, error=True, tokens_in=0, tokens_out=0)
        if status is not None:
            self.stats.answered(replica.cluster, model, status)

    def _relay(
        self, replica: Replica, model: str, upstream: httpx.Response,
        chunks: AsyncIterator[bytes], first: bytes, admitted: Admitted, arrived: float,
    ) -> Response:  # fmt: skip
        status = upstream.status_code
        self.stats.answered(replica.cluster, model, status)
        self.stats.first_byte(replica.cluster, model, time.monotonic() - arrived)
        if status >= 500:
            self.stats.error(replica.cluster, model, "upstream-error")
        streamed = upstream.headers.get("content-type", "").startswith("text/event-stream")
        return StreamingResponse(
            self._chunks(replica, model, upstream, chunks, first, admitted, arrived, streamed),
            status_code=status,
            headers=client_headers(upstream.headers),
        )

    async def _chunks(
        self, replica: Replica, model: str, upstream: httpx.Response,
        chunks: AsyncIterator[bytes], first: bytes, admitted: Admitted, arrived: float,
        streamed: bool,
    ) -> AsyncIterator[bytes]:  # fmt: skip
        tally = sse.Tally(streamed)
        began = time.monotonic()
        error = upstream.status_code >= 400
        try:
            tally.feed(first)
            yield first
            async for chunk in chunks:
                tally.feed(chunk)
                yield chunk
                if time.monotonic() - arrived > self.settings.timeouts.total:
                    raise httpx.ReadTimeout("the exchange ran past its total time")
        except httpx.HTTPError as exc:
            error = True
            self.stats.error(replica.cluster, model, "stream-cut")
            log.warning("replica %s: answer cut mid-way: %r", replica.id, exc)
            self.health.failed(replica.id, time.monotonic(), f"stream cut: {type(exc).__name__}")
            if streamed:
                yield sse.error_event(
                    f"the replica {replica.id} stopped mid-answer ({type(exc).__name__}); "
                    "the tokens so far stand, send the request again for the rest"
                )
            else:
                raise  # the client sees the answer end early (no clean end of the body)
        except (asyncio.CancelledError, GeneratorExit):
            error = True
            self.stats.error(replica.cluster, model, "client-gone")
            raise
        finally:
            await upstream.aclose()
            self.stats.end(replica.id)
            tally.finish()
            done = time.monotonic()
            if streamed and tally.tokens > 1 and done > began:
                self.stats.decoded(replica.cluster, model, (tally.tokens - 1) / (done - began))
            self.stats.used(
                admitted.key, model, error=error or tally.error is not None,
                tokens_in=tally.prompt_tokens, tokens_out=tally.completion_tokens,
            )  # fmt: skip

    # ---------------------------------------------------------------- status

    def status(self) -> dict[str, object]:
        models: dict[str, list[dict[str, object]]] = {}
        for r in self.table.all():
            h = self.health.get(r.id)
            models.setdefault(r.model, []).append({
                "replica": r.id, "cluster": r.cluster, "head": r.head, "url": r.url,
                "state": r.state.value if r.state else None,
                "takes_traffic": r.tier is not None and h.up,
                "up": h.up, "down_reason": None if h.up else h.reason,
                "weight_decode_tokens_per_s": r.decode_tps,
                **self.stats.figures(r.id).to_json(),
            })  # fmt: skip
        return {
            "open": self.settings.open,
            "routing": self.settings.routing.value,
            "keys": len(self.snapshot.keys) if self.snapshot else 0,
            "models": models,
        }
