"""The front door's live figures: per replica (requests, errors by kind, requests in
flight, time to first token and decode tokens/s), per key and model (usage), exposed in
``/metrics`` and in ``gateway status``.

Series (labels in braces) on the app's :class:`provisioner.metrics.Metrics` registry:

- ``provisioner_gateway_requests_total{cluster, model, status}`` (shared with the
  clusters' own gateways): each answer, by the replica's cluster (``?``: none chosen);
- ``provisioner_gateway_errors_total{cluster, model, kind}``: :data:`ERROR_KINDS`;
- ``provisioner_gateway_retries_total{model}``: requests sent to another replica;
- ``provisioner_gateway_ttft_seconds{cluster, model}`` and
  ``provisioner_gateway_decode_tokens_per_second{cluster, model}`` (histograms);
- ``provisioner_gateway_outstanding{cluster, model}`` (queue depth: requests in flight)
  and ``provisioner_gateway_replica_up{cluster, model}`` (gauges, read at each scrape);
- ``provisioner_gateway_key_requests_total{key, model}`` and
  ``provisioner_gateway_key_tokens_total{key, model, direction}`` (in, out).
"""

from __future__ import annotations

import statistics
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from provisioner.gateway.source import UsageRow
from provisioner.metrics import Metrics

# What went wrong, by kind: before the first byte (retried elsewhere when another replica
# is up), after it, or the client's doing.
ERROR_KINDS = (
    "unreachable",  # connection refused or failed: the replica is drained at once
    "reset",  # the connection closed before the answer's first byte
    "busy",  # the replica answered 503 (loading, or full): tried elsewhere
    "timeout",  # no answer within the read timeout
    "upstream-error",  # the replica answered 5xx
    "stream-cut",  # the answer stopped mid-way: the client got an SSE error event
    "client-gone",  # the client went away: the upstream request was cancelled
    "no-replica",  # no replica of the name is up
    "unauthorized",  # 401
    "forbidden",  # 403: the key is not for that model
    "rate-limited",  # 429
    "bad-request",  # 400/404/413: the request itself
)
RECENT = 256  # samples kept per replica for status's medians
UNKNOWN = "?"


@dataclass
class ReplicaFigures:
    requests: int = 0
    outstanding: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ttft: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))
    tps: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))

    def to_json(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "outstanding": self.outstanding,
            "errors": dict(sorted(self.errors.items())),
            "ttft_p50_s": round(statistics.median(self.ttft), 4) if self.ttft else None,
            "decode_tokens_per_s_p50": round(statistics.median(self.tps), 2) if self.tps else None,
        }


class Stats:
    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.replicas: dict[str, ReplicaFigures] = {}
        self._usage: dict[tuple[str, str], list[int]] = {}
        self.ttft = metrics.gateway_ttft
        self.tps = metrics.gateway_tps

    def figures(self, replica: str) -> ReplicaFigures:
        found = self.replicas.get(replica)
        if found is None:
            found = self.replicas[replica] = ReplicaFigures()
        return found

    def watch(self, up: Callable[[str], bool]) -> None:
        """Expose queue depth and up/down at each scrape (the last front door made on
        these metrics is the one shown)."""

        def view() -> list[tuple[str, str, int, bool]]:
            return [
                (*replica.split("/", 1), f.outstanding, up(replica))  # type: ignore[misc]
                for replica, f in sorted(self.replicas.items())
            ]

        self.metrics.gateway_view = view

    # ---------------------------------------------------------------- events

    def begin(self, replica: str) -> None:
        f = self.figures(replica)
        f.outstanding += 1

    def end(self, replica: str) -> None:
        f = self.figures(replica)
        f.outstanding = max(0, f.outstanding - 1)

    def answered(self, cluster: str, model: str, status: int) -> None:
        self.metrics.inc(
            "provisioner_gateway_requests_total", cluster=cluster, model=model, status=str(status)
        )
        if cluster != UNKNOWN:
            self.figures(f"{cluster}/{model}").requests += 1

    def error(self, cluster: str, model: str, kind: str) -> None:
        self.metrics.inc(
            "provisioner_gateway_errors_total", cluster=cluster, model=model, kind=kind
        )
        if cluster != UNKNOWN:
            self.figures(f"{cluster}/{model}").errors[kind] += 1

    def retried(self, model: str) -> None:
        self.metrics.inc("provisioner_gateway_retries_total", model=model)

    def first_byte(self, cluster: str, model: str, seconds: float) -> None:
        self.ttft.labels(cluster, model).observe(seconds)
        self.figures(f"{cluster}/{model}").ttft.append(seconds)

    def decoded(self, cluster: str, model: str, tokens_per_s: float) -> None:
        self.tps.labels(cluster, model).observe(tokens_per_s)
        self.figures(f"{cluster}/{model}").tps.append(tokens_per_s)

    def used(self, key: str, model: str, *, error: bool, tokens_in: int, tokens_out: int) -> None:
        self.metrics.inc("provisioner_gateway_key_requests_total", key=key, model=model)
        if tokens_in:
            self.metrics.inc("provisioner_gateway_key_tokens_total", tokens_in, key=key,
                             model=model, direction="in")  # fmt: skip
        if tokens_out:
            self.metrics.inc("provisioner_gateway_key_tokens_total", tokens_out, key=key,
                             model=model, direction="out")  # fmt: skip
        row = self._usage.setdefault((key, model), [0, 0, 0, 0])
        row[0] += 1
        row[1] += int(error)
        row[2] += tokens_in
        row[3] += tokens_out

    def drain_usage(self) -> list[UsageRow]:
        """The usage added since the last drain (for the registry)."""
        rows = [UsageRow(k, m, *v) for (k, m), v in sorted(self._usage.items())]
        self._usage.clear()
        return rows

    def restore_usage(self, rows: Iterable[UsageRow]) -> None:
        """Usage a failed write did not keep, back into the next one."""
        for r in rows:
            row = self._usage.setdefault((r.key, r.model), [0, 0, 0, 0])
            for i, v in enumerate((r.requests, r.errors, r.tokens_in, r.tokens_out)):
                row[i] += v
