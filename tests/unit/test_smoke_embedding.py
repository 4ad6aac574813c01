"""Embedding models in smoke: which models generate, and the /v1/embeddings check."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from provisioner.smoke.run import embedding_check, generative


@pytest.mark.parametrize(
    ("architectures", "expected"),
    [
        (["LlamaForCausalLM"], True),
        (["Qwen2VLForConditionalGeneration"], True),
        (["GPT2LMHeadModel"], True),
        (["BertModel"], False),
        (["XLMRobertaModel"], False),
        ([], True),
    ],
)
def test_generative(architectures: list[str], expected: bool) -> None:
    assert generative(architectures) is expected


class Embeddings(BaseHTTPRequestHandler):
    vector: list[float] = [0.1, 0.2, 0.3]

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/embeddings" or body.get("model") != "embed":
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps({"data": [{"embedding": self.vector, "index": 0}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Embeddings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_embedding_check_passes_on_a_vector_and_fails_otherwise(endpoint: str) -> None:
    check = embedding_check(endpoint, "embed")
    assert check.passed and check.value == 3, check
    missing = embedding_check(endpoint, "other")
    assert not missing.passed and "404" in missing.detail
    down = embedding_check("http://127.0.0.1:9", "embed")
    assert not down.passed and down.value is None
