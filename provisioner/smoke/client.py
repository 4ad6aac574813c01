"""A thin HTTP client for an OpenAI-compatible server (llama-server, vLLM): stdlib only
(``urllib``), so it runs anywhere the appliance does. Every network error becomes a
:class:`SmokeHttpError`; the streamed completion is timed with ``time.monotonic``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from provisioner.errors import ProvisionerError
from provisioner.smoke.stream import Chunk, SseDecoder, StreamStats, measure, parse_chunk

DEFAULT_PROMPT = "Count from 1 to 40, separated by commas."
DEFAULT_MAX_TOKENS = 64


class SmokeHttpError(ProvisionerError):
    """The server could not be reached, or answered with an error."""


@dataclass(frozen=True)
class Endpoint:
    """A server's base URL and the API key it requires (llama-server ``--api-key-file``,
    vLLM ``VLLM_API_KEY``), sent as ``Authorization: Bearer``; printed as its URL only."""

    url: str
    api_key: str | None = None

    def __str__(self) -> str:
        return self.url


Target = str | Endpoint  # a bare URL (a server that needs no key) or an Endpoint


def _headers(endpoint: Target, **more: str) -> dict[str, str]:
    key = endpoint.api_key if isinstance(endpoint, Endpoint) else None
    return {**more, **({"Authorization": f"Bearer {key}"} if key else {})}


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _url(endpoint: Target, path: str) -> str:
    base = str(endpoint)
    base = base if "://" in base else f"http://{base}"
    return base.rstrip("/") + path


def _send(req: urllib.request.Request, timeout: float) -> Response:
    """One request; an HTTP error status is a Response, not an exception."""
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, resp.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.read())
    except (urllib.error.URLError, OSError) as exc:
        raise SmokeHttpError(f"{req.get_method()} {req.full_url}: {exc}") from exc


def get(endpoint: Target, path: str, timeout: float = 10.0) -> Response:
    """GET; an HTTP error status is a Response, not an exception."""
    return _send(urllib.request.Request(_url(endpoint, path), headers=_headers(endpoint)), timeout)


def post_json(endpoint: Target, path: str, body: object, timeout: float = 120.0) -> Response:
    """POST a JSON body; an HTTP error status is a Response, not an exception."""
    req = urllib.request.Request(
        _url(endpoint, path), data=json.dumps(body).encode(),
        headers=_headers(endpoint, **{"Content-Type": "application/json"}), method="POST",
    )  # fmt: skip
    return _send(req, timeout)


def wait_healthy(endpoint: Target, timeout: float = 120.0) -> float:
    """Poll ``/health`` until 200 (llama-server answers 503 while it loads); returns the
    seconds waited."""
    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < timeout:
        try:
            r = get(endpoint, "/health", timeout=5)
            if r.status == 200:
                return time.monotonic() - started
            last = f"{r.status} {r.body[:100]!r}"
        except SmokeHttpError as exc:
            last = str(exc)
        time.sleep(0.25)
    raise SmokeHttpError(f"{endpoint}: not healthy after {timeout:.0f}s ({last})")


def stream_chat(
    endpoint: Target,
    model: str,
    prompt: str = DEFAULT_PROMPT,
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    timeout: float = 120.0,
) -> StreamStats:
    """One streamed chat completion (temperature 0), measured from the wire."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    req = urllib.request.Request(
        _url(endpoint, "/v1/chat/completions"),
        data=json.dumps(body).encode(),
        headers=_headers(
            endpoint, **{"Content-Type": "application/json", "Accept": "text/event-stream"}
        ),
        method="POST",
    )
    arrivals: list[tuple[float, Chunk]] = []
    decoder = SseDecoder()
    sent = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            while True:
                line = resp.readline()
                now = time.monotonic()
                events = decoder.feed(line) if line else decoder.close()
                for data in events:
                    chunk = parse_chunk(data)
                    arrivals.append((now, chunk))
                if not line or any(c.done for _, c in arrivals[-len(events) :] if events):
                    break
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300]
        raise SmokeHttpError(f"POST /v1/chat/completions: {exc.code} {detail!r}") from exc
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        raise SmokeHttpError(f"POST /v1/chat/completions: {exc}") from exc
    except ValueError as exc:
        raise SmokeHttpError(f"POST /v1/chat/completions: bad stream: {exc}") from exc
    return measure(sent, arrivals, time.monotonic())
