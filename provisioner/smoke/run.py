"""One smoke run against a serving head: the checks that need only HTTP, the head's log
and a way to sample each worker's sockets.

The cluster side (SSH to the nodes, units, restarts, the registry) calls :func:`run_smoke`
with the head's log text and a ``sample`` function per worker (``ss -tinH`` run over SSH;
:func:`local_ss` runs it here, for loopback clusters), then adds its own checks with
:meth:`Report.with_checks`.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from provisioner.profiles import Smoke
from provisioner.smoke.client import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_PROMPT,
    SmokeHttpError,
    Target,
    get,
    post_json,
    stream_chat,
)
from provisioner.smoke.report import Check, Report
from provisioner.smoke.rpc import parse_ss, rpc_model_buffers, traffic_delta
from provisioner.smoke.stream import StreamStats

Sampler = Callable[[], str]  # returns `ss -tinH` output of the worker


@dataclass(frozen=True)
class Floors:
    """The bounds a profile holds a cluster to (``smoke:`` in hwprofiles/*.yaml)."""

    min_tokens_per_s: float | None = None
    max_ttft_s: float | None = None

    @classmethod
    def from_profile(cls, smoke: Smoke) -> Floors:
        return cls(smoke.min_tokens_per_s, smoke.max_ttft_s)


@dataclass(frozen=True)
class Worker:
    endpoint: str  # host:port exactly as in the head's --rpc list
    sample: Sampler | None = None

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])


def local_ss(port: int) -> Sampler:
    """A sampler for a worker on this machine: ``ss -tinH`` of the sockets on ``port``."""

    def sample() -> str:
        argv = ["ss", "-tinH", f"( sport = :{port} )"]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    return sample


def health_check(endpoint: Target) -> Check:
    try:
        r = get(endpoint, "/health")
    except SmokeHttpError as exc:
        return Check("health", False, None, 200, str(exc))
    return Check("health", r.status == 200, r.status, 200, r.body[:120].decode(errors="replace"))


def model_ids(body: object) -> list[str]:
    """Model ids of a ``/v1/models`` answer (OpenAI's ``data``; llama.cpp adds ``models``)."""
    ids: list[str] = []
    if isinstance(body, dict):
        for key in ("data", "models"):
            for entry in body.get(key) or []:
                if isinstance(entry, dict):
                    for field in ("id", "model", "name"):
                        value = entry.get(field)
                        if isinstance(value, str) and value not in ids:
                            ids.append(value)
    return ids


def names_model(ids: Sequence[str], model: str) -> bool:
    """The model is named by its id, or by a path or file name ending in it."""
    for i in ids:
        base = i.rsplit("/", 1)[-1]
        if model in (i, base, base.removesuffix(".gguf")):
            return True
    return False


def models_check(endpoint: Target, model: str) -> Check:
    try:
        r = get(endpoint, "/v1/models")
        ids = model_ids(r.json()) if r.status == 200 else []
    except (SmokeHttpError, ValueError) as exc:
        return Check("models", False, None, model, str(exc))
    ok = names_model(ids, model)
    return Check("models", ok, ", ".join(ids) or None, model, "" if ok else f"no {model!r}")


def stream_checks(stats: StreamStats, floors: Floors) -> list[Check]:
    """completion, ttft_s and decode_tokens_per_s from a measured stream (pure)."""
    snippet = stats.text.strip().replace("\n", " ")[:60]
    checks = [
        Check(
            "completion",
            stats.token_chunks > 0,
            stats.token_chunks,
            1,
            f"finish={stats.finish_reason} in {stats.total_s:.2f}s: {snippet!r}",
        )
    ]
    ttft = stats.ttft_s
    ttft_ok = ttft is not None and (floors.max_ttft_s is None or ttft <= floors.max_ttft_s)
    checks.append(
        Check("ttft_s", ttft_ok, _round(ttft), floors.max_ttft_s, "time to first token (max)")
    )
    tps = stats.decode_tokens_per_s
    tps_ok = tps is not None and tps > 0
    if tps_ok and floors.min_tokens_per_s is not None:
        tps_ok = tps is not None and tps >= floors.min_tokens_per_s
    server = stats.server_timings.get("predicted_per_second")
    detail = f"{stats.token_chunks} token chunks; server says {_round(server)} tokens/s (min)"
    checks.append(
        Check("decode_tokens_per_s", tps_ok, _round(tps), floors.min_tokens_per_s, detail)
    )
    return checks


GENERATIVE_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")


def generative(architectures: Sequence[str]) -> bool:
    """Does a model with these ``config.json`` architectures generate text? (An encoder such
    as ``BertModel`` or ``XLMRobertaModel`` serves embeddings instead.) Unknown: yes."""
    return not architectures or any(a.endswith(GENERATIVE_SUFFIXES) for a in architectures)


def embedding_check(endpoint: Target, model: str) -> Check:
    """An embedding model's proof of life: ``/v1/embeddings`` gives a non-empty vector."""
    started = time.monotonic()
    try:
        r = post_json(endpoint, "/v1/embeddings", {"model": model, "input": "smoke test"})
        vector = r.json()["data"][0]["embedding"] if r.status == 200 else []
    except (SmokeHttpError, ValueError, KeyError, IndexError, TypeError) as exc:
        return Check("embedding", False, None, 1, str(exc))
    seconds = time.monotonic() - started
    ok = isinstance(vector, list) and len(vector) > 0
    detail = f"{len(vector)} dimensions in {seconds:.2f}s" if ok else f"status {r.status}"
    return Check("embedding", ok, len(vector) if ok else None, 1, detail)


def buffer_checks(head_log_text: str, workers: Sequence[Worker]) -> list[Check]:
    """One check per worker: the head's log has a model buffer on it (pure)."""
    found = rpc_model_buffers(head_log_text)
    checks = []
    for w in workers:
        lines = found.get(w.endpoint, [])
        mib = round(sum(b.mib for b in lines), 2)
        detail = lines[0].line if lines else "no RPC model buffer line in the head's log"
        checks.append(
            Check(f"rpc_buffer[{w.endpoint}]", bool(lines), mib if lines else None, None, detail)
        )
    return checks


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def run_smoke(
    cluster: str,
    endpoint: Target,
    model: str,
    floors: Floors,
    head_log_text: str,
    workers: Sequence[Worker] = (),
    *,
    prompt: str = DEFAULT_PROMPT,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> Report:
    """health, models, a streamed completion with its figures, and for each worker a
    buffer line and traffic on its RPC port during the completion."""
    checks = [health_check(endpoint), models_check(endpoint, model)]
    before = {w.endpoint: parse_ss(w.sample()) for w in workers if w.sample}
    try:
        stats: StreamStats | None = stream_chat(endpoint, model, prompt, max_tokens=max_tokens)
    except SmokeHttpError as exc:
        stats = None
        checks.append(Check("completion", False, None, 1, str(exc)))
    if stats is not None:
        checks.extend(stream_checks(stats, floors))
    checks.extend(buffer_checks(head_log_text, workers))
    for w in workers:
        if not w.sample:
            continue
        moved = traffic_delta(before[w.endpoint], parse_ss(w.sample()), w.port)
        checks.append(
            Check(
                f"rpc_traffic[{w.endpoint}]",
                moved > 0,
                moved,
                1,
                "bytes on the RPC port during the completion",
            )
        )
    return Report(cluster, tuple(checks), stats.to_json() if stats else {})
