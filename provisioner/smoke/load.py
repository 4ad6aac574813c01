"""The load check: ``--requests N --concurrency C`` chat completions against one served
model, at most C in flight, and what they add up to.

Pure: :func:`percentile` (nearest rank), :func:`summarize` (outcomes and the wall clock
to a :class:`LoadSummary`) and :func:`summary_checks` (a summary held to its bounds).
I/O: :func:`run_load` (a thread pool of streamed completions through
:func:`~provisioner.smoke.client.stream_chat`) and :func:`load_checks`, both together.

Figures (seconds from the monotonic clock):

- ``rpm`` = completed requests / wall seconds x 60, the wall running from the first
  request sent to the last answer read: what the P40 users' "more than 100 requests a
  minute" measures.
- ``p50_s`` / ``p99_s``: nearest-rank percentiles of the completed requests' latencies
  (sent to the stream's end); failed requests are counted, never timed.
- ``tokens``: generated tokens, the server's ``usage.completion_tokens`` where it sends
  one, else the token chunks.

A request completes when its stream ends without an error and with at least one token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from provisioner.smoke.client import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_PROMPT,
    SmokeHttpError,
    Target,
    stream_chat,
)
from provisioner.smoke.report import Check

DEFAULT_REQUEST_TIMEOUT_S = 300.0
MAX_ERRORS_KEPT = 3


@dataclass(frozen=True)
class Outcome:
    """One request of the load."""

    ok: bool
    latency_s: float
    tokens: int = 0
    ttft_s: float | None = None
    error: str = ""


@dataclass(frozen=True)
class LoadSummary:
    requests: int
    concurrency: int
    ok: int
    failed: int
    wall_s: float
    rpm: float
    p50_s: float | None
    p99_s: float | None
    ttft_p50_s: float | None
    tokens: int
    errors: tuple[str, ...] = ()  # the first few distinct ones

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "concurrency": self.concurrency,
            "ok": self.ok,
            "failed": self.failed,
            "wall_s": self.wall_s,
            "rpm": self.rpm,
            "p50_s": self.p50_s,
            "p99_s": self.p99_s,
            "ttft_p50_s": self.ttft_p50_s,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens_per_s,
            "errors": list(self.errors),
        }


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile (0 < p <= 100): the smallest value with at
    least p % of the values at or below it. None for no values."""
    if not 0 < p <= 100:
        raise ValueError(f"percentile {p} is not in (0, 100]")
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(p / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


def summarize(outcomes: Sequence[Outcome], wall_s: float, concurrency: int) -> LoadSummary:
    """What a run of requests adds up to (pure)."""
    done = [o for o in outcomes if o.ok]
    latencies = [o.latency_s for o in done]
    ttfts = [o.ttft_s for o in done if o.ttft_s is not None]
    errors: list[str] = []
    for o in outcomes:
        if not o.ok and o.error not in errors and len(errors) < MAX_ERRORS_KEPT:
            errors.append(o.error)
    return LoadSummary(
        requests=len(outcomes),
        concurrency=concurrency,
        ok=len(done),
        failed=len(outcomes) - len(done),
        wall_s=wall_s,
        rpm=len(done) / wall_s * 60 if wall_s > 0 else 0.0,
        p50_s=percentile(latencies, 50),
        p99_s=percentile(latencies, 99),
        ttft_p50_s=percentile(ttfts, 50),
        tokens=sum(o.tokens for o in done),
        errors=tuple(errors),
    )


def summary_checks(
    summary: LoadSummary,
    model: str,
    *,
    min_rpm: float | None = None,
    max_p99_s: float | None = None,
) -> list[Check]:
    """``load_rpm[model]``, ``load_p99_s[model]`` and ``load_errors[model]`` (pure)."""
    s = summary
    rpm_ok = s.ok > 0 and (min_rpm is None or s.rpm >= min_rpm)
    rpm_detail = (
        f"{s.ok}/{s.requests} completed in {s.wall_s:.1f} s, {s.concurrency} at a time; "
        f"{s.tokens} tokens ({s.tokens_per_s:.1f}/s) (min)"
    )
    p99_ok = s.p99_s is not None and (max_p99_s is None or s.p99_s <= max_p99_s)
    p99_detail = (
        f"p50 {_fmt(s.p50_s)} s, p99 {_fmt(s.p99_s)} s over {s.ok} completed; "
        f"first token p50 {_fmt(s.ttft_p50_s)} s (max)"
    )
    errors_detail = "; ".join(s.errors) if s.errors else f"{s.requests} requests"
    return [
        Check(f"load_rpm[{model}]", rpm_ok, round(s.rpm, 1), min_rpm, rpm_detail),
        Check(f"load_p99_s[{model}]", p99_ok, _round(s.p99_s), max_p99_s, p99_detail),
        Check(f"load_errors[{model}]", s.failed == 0, s.failed, 0, errors_detail),
    ]


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


Request = Callable[[int], Outcome]  # request number -> what became of it


def chat_request(
    endpoint: Target,
    model: str,
    prompt: str = DEFAULT_PROMPT,
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> Request:
    """One streamed chat completion per call, timed; errors become failed outcomes."""

    def request(_: int) -> Outcome:
        sent = time.monotonic()
        try:
            stats = stream_chat(endpoint, model, prompt, max_tokens=max_tokens, timeout=timeout)
        except SmokeHttpError as exc:
            return Outcome(False, time.monotonic() - sent, error=str(exc)[:200])
        tokens = stats.usage.get("completion_tokens", stats.token_chunks)
        if stats.token_chunks == 0:
            return Outcome(False, stats.total_s, tokens, error="a stream with no tokens")
        return Outcome(True, stats.total_s, tokens, stats.ttft_s)

    return request


def run_load(request: Request, requests: int, concurrency: int) -> LoadSummary:
    """``requests`` calls of ``request``, at most ``concurrency`` at a time (threads)."""
    workers = max(1, min(concurrency, requests))
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="smoke-load") as pool:
        outcomes = list(pool.map(request, range(requests)))
    return summarize(outcomes, time.monotonic() - started, workers)


def load_checks(
    endpoint: Target,
    model: str,
    requests: int,
    concurrency: int,
    *,
    min_rpm: float | None = None,
    max_p99_s: float | None = None,
    prompt: str = DEFAULT_PROMPT,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> list[Check]:
    """The load check against ``endpoint``: its three checks."""
    summary = run_load(
        chat_request(endpoint, model, prompt, max_tokens=max_tokens), requests, concurrency
    )
    return summary_checks(summary, model, min_rpm=min_rpm, max_p99_s=max_p99_s)
