"""What passes through a response (pure): tokens, usage, and the error event that ends a
stream cut mid-way.

:class:`Tally` is fed the upstream's bytes as they pass (never holding them back) and
knows afterwards how many tokens came and the usage the server reported: from a stream's
``data:`` events (one content delta per token; a ``usage`` object if the server sends
one, as llama-server and vLLM do on the last chunk) or from a whole JSON answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MAX_JSON_BYTES = 1 << 20  # a non-streamed answer bigger than this is not read for usage


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Tally:
    def __init__(self, streamed: bool):
        self.streamed = streamed
        self.tokens = 0  # content deltas seen (streams)
        self.usage: Usage | None = None
        self.error: str | None = None  # an error event the upstream sent
        self._pending = b""
        self._body: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        if not self.streamed:
            self._size += len(chunk)
            if self._size <= MAX_JSON_BYTES:
                self._body.append(chunk)
            return
        data = self._pending + chunk
        lines = data.split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            if line.startswith(b"data:"):
                self._event(line[5:].strip())

    def finish(self) -> None:
        if self.streamed:
            if self._pending.startswith(b"data:"):
                self._event(self._pending[5:].strip())
            self._pending = b""
        elif self._size <= MAX_JSON_BYTES and self._body:
            try:
                doc = json.loads(b"".join(self._body))
            except (ValueError, RecursionError):
                return
            if isinstance(doc, dict):
                self._usage(doc.get("usage"))

    @property
    def completion_tokens(self) -> int:
        if self.usage is not None and self.usage.completion_tokens:
            return self.usage.completion_tokens
        return self.tokens

    @property
    def prompt_tokens(self) -> int:
        return self.usage.prompt_tokens if self.usage is not None else 0

    def _event(self, payload: bytes) -> None:
        if not payload or payload == b"[DONE]":
            return
        try:
            doc = json.loads(payload)
        except (ValueError, RecursionError):
            return
        if not isinstance(doc, dict):
            return
        if "error" in doc:
            self.error = str(doc["error"])[:200]
        self._usage(doc.get("usage"))
        for choice in doc.get("choices") or ():
            if isinstance(choice, dict) and _has_text(choice):
                self.tokens += 1

    def _usage(self, usage: object) -> None:
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            self.usage = Usage(
                prompt if isinstance(prompt, int) else 0,
                completion if isinstance(completion, int) else 0,
            )


def _has_text(choice: dict[str, object]) -> bool:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return bool(delta.get("content") or delta.get("reasoning_content"))
    return bool(choice.get("text"))


def error_event(message: str, code: str = "upstream_cut") -> bytes:
    """The SSE event that ends a stream the upstream cut: OpenAI's error object as a
    ``data:`` event (what the openai clients raise on), then ``[DONE]``."""
    error = {"error": {"message": message, "type": "api_error", "param": None, "code": code}}
    return f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode()
