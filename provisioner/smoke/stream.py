"""Server-sent events of an OpenAI-style streamed chat completion, and what they measure.

Pure: :class:`SseDecoder` turns bytes into ``data:`` payloads (h11-style, no socket),
:func:`parse_chunk` reads one ``chat.completion.chunk``, :func:`measure` turns timestamped
chunks into time to first token and decode tokens/s.

Arithmetic (all client-side, from the monotonic clock):

- ``ttft_s`` = arrival of the first chunk carrying text (``content`` or
  ``reasoning_content``) - the moment the request was sent.
- ``decode_tokens_per_s`` = (token chunks - 1) / (last token chunk - first token chunk):
  the first token closes the prefill, so it is not a decode step. llama.cpp and vLLM stream
  one token per chunk; the server's own ``usage.completion_tokens`` is recorded beside it.
  llama-server's ``timings.predicted_per_second`` is the same arithmetic on its own clock
  (``n_gen_steps = n_gen - 1``), so on loopback the two agree. vLLM sends no ``timings``;
  with ``--stream-interval N`` (or speculative decoding) its chunks after the first carry
  several tokens, and then ``usage.completion_tokens`` counts the steps instead (see
  :func:`decode_steps`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DONE = "[DONE]"


class SseDecoder:
    """Feed bytes, get the ``data`` of each complete event (multi-line data joined by
    newlines; comments, ``event:``, ``id:`` and ``retry:`` fields ignored)."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._buf += chunk
        events: list[str] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                return events
            raw, self._buf = self._buf[:nl], self._buf[nl + 1 :]
            line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            if key == "data":
                self._data.append(value[1:] if value.startswith(" ") else value)

    def close(self) -> list[str]:
        """Events left when the stream ends without a final blank line."""
        events = self.feed(b"\n\n") if self._buf else []
        if self._data:
            events.append("\n".join(self._data))
            self._data = []
        return events


@dataclass(frozen=True)
class Chunk:
    """What one streamed chunk says."""

    text: str = ""  # content + reasoning_content of every choice
    finish_reason: str | None = None
    timings: Mapping[str, float] = field(default_factory=dict)  # llama.cpp's own figures
    usage: Mapping[str, int] = field(default_factory=dict)
    model: str = ""
    done: bool = False  # the [DONE] sentinel


def parse_chunk(data: str) -> Chunk:
    """One ``data:`` payload; raises ValueError on a payload that is not JSON."""
    if data.strip() == DONE:
        return Chunk(done=True)
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError(f"chunk is not an object: {data[:80]!r}")
    if "error" in obj:
        raise ValueError(f"server error in stream: {obj['error']}")
    text: list[str] = []
    finish = None
    for choice in obj.get("choices") or []:
        delta = choice.get("delta") or {}
        for key in ("content", "reasoning_content"):
            if isinstance(delta.get(key), str):
                text.append(delta[key])
        finish = choice.get("finish_reason") or finish
    timings = {str(k): float(v) for k, v in (obj.get("timings") or {}).items() if _number(v)}
    usage = {str(k): int(v) for k, v in (obj.get("usage") or {}).items() if _number(v)}
    return Chunk("".join(text), finish, timings, usage, str(obj.get("model") or ""))


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass(frozen=True)
class StreamStats:
    """The measured figures of one streamed completion (seconds; None when not measurable)."""

    ttft_s: float | None
    decode_tokens_per_s: float | None
    token_chunks: int
    total_s: float
    text: str
    finish_reason: str | None
    server_timings: Mapping[str, float] = field(default_factory=dict)
    usage: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "ttft_s": self.ttft_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "token_chunks": self.token_chunks,
            "total_s": self.total_s,
            "finish_reason": self.finish_reason,
            "text": self.text,
            "server_timings": dict(self.server_timings),
            "usage": dict(self.usage),
        }


def measure(
    sent_at: float, arrivals: Iterable[tuple[float, Chunk]], ended_at: float
) -> StreamStats:
    """Figures from (arrival time, chunk) pairs; ``sent_at``/``ended_at`` bracket the request."""
    token_times: list[float] = []
    text: list[str] = []
    finish = None
    timings: dict[str, float] = {}
    usage: dict[str, int] = {}
    for t, chunk in arrivals:
        if chunk.text:
            token_times.append(t)
            text.append(chunk.text)
        finish = chunk.finish_reason or finish
        timings.update(chunk.timings)
        usage.update(chunk.usage)
    ttft = token_times[0] - sent_at if token_times else None
    tps = None
    if len(token_times) >= 2 and token_times[-1] > token_times[0]:
        steps = decode_steps(len(token_times), usage.get("completion_tokens"), finish)
        tps = steps / (token_times[-1] - token_times[0])
    return StreamStats(
        ttft_s=ttft,
        decode_tokens_per_s=tps,
        token_chunks=len(token_times),
        total_s=ended_at - sent_at,
        text="".join(text),
        finish_reason=finish,
        server_timings=timings,
        usage=usage,
    )


def decode_steps(token_chunks: int, completion_tokens: int | None, finish: str | None) -> int:
    """Tokens that arrived after the first token chunk.

    One a chunk, unless the server's ``usage`` counts more tokens than the chunks could
    hold (vLLM's ``--stream-interval``, speculative decoding: the first chunk still holds
    one token). A ``stop`` ends on an end-of-sequence token that usage counts and the
    stream never shows (llama.cpp and vLLM alike), so it is taken off first.
    """
    steps = token_chunks - 1
    if completion_tokens is not None:
        shown = completion_tokens - (1 if finish == "stop" else 0)
        steps = max(steps, shown - 1)
    return steps
