"""The smoke client against a scripted OpenAI-style server on loopback: the stream is read
as it arrives (TTFT is the first token's delay, not the whole answer's), and the checks
come out right. No llama.cpp needed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from provisioner.smoke import Floors, run_smoke
from provisioner.smoke.client import SmokeHttpError, stream_chat, wait_healthy

FIRST_TOKEN_DELAY = 0.3
TOKEN_GAP = 0.05
TOKENS = 10


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._json(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "/m/tiny.Q4_0.gguf"}]})
        else:
            self._json(404, {"error": "no"})

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        request = json.loads(self.rfile.read(length))
        if request["model"] == "missing":
            self._json(404, {"error": {"message": "model not found"}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(payload: str) -> None:
            data = f"data: {payload}\n\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        send(json.dumps({"choices": [{"delta": {"role": "assistant", "content": None}}]}))
        time.sleep(FIRST_TOKEN_DELAY)
        for i in range(TOKENS):
            send(json.dumps({"choices": [{"delta": {"content": f"{i},"}}]}))
            time.sleep(TOKEN_GAP)
        send(json.dumps({"choices": [{"finish_reason": "length", "delta": {}}], "timings": {}}))
        send("[DONE]")
        self.wfile.write(b"0\r\n\r\n")


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_stream_is_timed_as_it_arrives(server: str) -> None:
    assert wait_healthy(server, timeout=5) < 5
    stats = stream_chat(server, "tiny.Q4_0")
    assert stats.token_chunks == TOKENS
    assert stats.text == "".join(f"{i}," for i in range(TOKENS))
    assert stats.ttft_s is not None
    assert FIRST_TOKEN_DELAY <= stats.ttft_s < FIRST_TOKEN_DELAY + (TOKENS - 1) * TOKEN_GAP
    assert stats.decode_tokens_per_s is not None
    assert 0.5 / TOKEN_GAP < stats.decode_tokens_per_s < 1.5 / TOKEN_GAP
    assert stats.finish_reason == "length"


def test_run_smoke_without_workers(server: str) -> None:
    report = run_smoke("fake", server, "tiny.Q4_0", Floors(min_tokens_per_s=1, max_ttft_s=5), "")
    names = [c.name for c in report.checks]
    assert names == ["health", "models", "completion", "ttft_s", "decode_tokens_per_s"]
    assert report.passed, report.to_json()
    strict = run_smoke("fake", server, "tiny.Q4_0", Floors(max_ttft_s=0.01), "")
    assert [c.name for c in strict.failed] == ["ttft_s"]


def test_errors_are_ours(server: str) -> None:
    with pytest.raises(SmokeHttpError, match="404"):
        stream_chat(server, "missing")
    report = run_smoke("fake", "127.0.0.1:1", "m", Floors(), "")
    assert not report.passed
    assert {c.name for c in report.failed} == {"health", "models", "completion"}
