"""`provisioner gateway serve` as a real process on loopback, in front of two real HTTP
servers standing for two clusters' llama-servers (127.0.0.1 and 127.0.0.2, one port):
keys made by `gateway key add` and checked, streams relayed as they come, a client that
goes away cancels its upstream request, a replica that stops is drained and retried
around, and comes back; `gateway status` reads it all. Real llama.cpp replicas in a lab:
tests/e2e/test_gateway_lab.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from provisioner.records import Cluster, Served
from provisioner.registry import Registry
from tests.integration.conftest import Appliance, stop_process, write_config

HOSTS = {"a": "127.0.0.1", "b": "127.0.0.2"}


class Replica(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str, host: str, port: int) -> None:
        self.name = name
        self.requests = 0
        self.cancelled = threading.Event()  # a client's stream went away mid-answer
        self.token_gap = 0.0
        super().__init__((host, port), Handler)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Replica

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._json({"status": "ok"})

    def _json(self, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests += 1
        if not request.get("stream"):
            self._json({"replica": self.server.name, "auth": self.headers.get("Authorization"),
                        "usage": {"prompt_tokens": 3, "completion_tokens": 1}})  # fmt: skip
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for i in range(int(request.get("max_tokens", 5))):
                doc = {"choices": [{"delta": {"content": f"t{i} "}}], "replica": self.server.name}
                data = f"data: {json.dumps(doc)}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                time.sleep(self.server.token_gap)
            end = b"data: [DONE]\n\n"
            self.wfile.write(f"{len(end):x}\r\n".encode() + end + b"\r\n0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.server.cancelled.set()


def start(replica: Replica) -> threading.Thread:
    thread = threading.Thread(target=replica.serve_forever, daemon=True)
    thread.start()
    return thread


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provisioner.cli", "--config", str(config), *args],
                          capture_output=True, text=True, check=False, timeout=60)  # fmt: skip


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, int, dict[str, Replica]]]:
    state, config = tmp_path / "state", tmp_path / "provisioner.toml"
    write_config(config, interface="lo", address="127.0.0.1/8", mode="proxy", state=state,
                 http_port=free_port())  # fmt: skip
    state.mkdir(mode=0o700)
    upstream_port = free_port()
    reg = Registry(state / "registry.sqlite3")
    for i, (name, host) in enumerate(HOSTS.items()):
        mac = f"52:54:00:00:00:1{i}"
        reg.touch_node(mac, ip=host)
        reg.set_hostname(mac, f"n-{name}")
        reg.execute("UPDATE nodes SET state = 'serving' WHERE mac = ?", [(mac,)])
        cluster = Cluster(name, "llama-rpc", "smollm2", f"n-{name}", http_port=upstream_port,
                          serve=(Served("smol", "smollm2", None, upstream_port),))  # fmt: skip
        reg.save_cluster(name, cluster.to_json())
        (state / "keys").mkdir(mode=0o700, exist_ok=True)
        (state / "keys" / f"{name}.engine").write_text(f"engine-{name}\n")
    reg.close()
    replicas = {name: Replica(name, host, upstream_port) for name, host in HOSTS.items()}
    for r in replicas.values():
        start(r)
    try:
        yield config, upstream_port, replicas
    finally:
        for r in replicas.values():
            r.shutdown()
            r.server_close()


def test_the_gateway_alone_balances_retries_cancels_and_reports(
    site: tuple[Path, int, dict[str, Replica]],
) -> None:
    config, upstream_port, replicas = site
    added = cli(config, "gateway", "key", "add", "app", "--json")
    assert added.returncode == 0, added.stderr
    token = json.loads(added.stdout)["api_key"]
    assert token not in (config.parent / "state" / "registry.sqlite3").read_bytes().decode(
        "latin-1")  # only its hash is kept  # fmt: skip
    port = free_port()
    log = config.parent / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "provisioner.cli", "--config", str(config), "gateway", "serve",
             "--listen", f"127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    body = {"model": "smol", "messages": [{"role": "user", "content": "hi"}]}
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{base}/v1/models", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                time.sleep(0.1)
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.post("/v1/chat/completions", json=body).status_code == 401
            models = client.get("/v1/models", headers=auth).json()["data"]
            assert [m["id"] for m in models] == ["smol"]
            seen = [client.post("/v1/chat/completions", json=body, headers=auth).json()
                    for _ in range(6)]  # fmt: skip
            assert sorted(r["replica"] for r in seen) == ["a"] * 3 + ["b"] * 3
            assert {r["auth"] for r in seen} == {"Bearer engine-a", "Bearer engine-b"}

            # A stream comes as it is made; a client that leaves cancels the upstream.
            for r in replicas.values():
                r.token_gap = 0.3
            stream = {**body, "stream": True, "max_tokens": 40}
            with client.stream("POST", "/v1/chat/completions", json=stream, headers=auth) as s:
                t0 = time.monotonic()
                first = next(s.iter_lines())
                assert first.startswith("data: ") and time.monotonic() - t0 < 2
            assert any(r.cancelled.wait(5) for r in replicas.values()), "upstream not cancelled"
            for r in replicas.values():
                r.token_gap = 0.0

            # Replica a stops: no request fails, a is drained; it comes back and serves.
            replicas["a"].shutdown()
            replicas["a"].server_close()
            answers = [client.post("/v1/chat/completions", json=body, headers=auth)
                       for _ in range(6)]  # fmt: skip
            assert [r.status_code for r in answers] == [200] * 6
            assert {r.json()["replica"] for r in answers} == {"b"}
            status = cli(config, "gateway", "status", "--url", base, "--json")
            assert status.returncode == 0, status.stderr
            a = next(r for r in json.loads(status.stdout)["models"]["smol"] if r["cluster"] == "a")
            assert not a["takes_traffic"] and a["errors"].get("unreachable", 0) >= 1
            replicas["a"] = Replica("a", HOSTS["a"], upstream_port)
            start(replicas["a"])
            deadline = time.monotonic() + 10
            while replicas["a"].requests == 0:
                assert time.monotonic() < deadline, "replica a got no traffic after it came back"
                client.post("/v1/chat/completions", json=body, headers=auth)
                time.sleep(0.2)
            text = cli(config, "gateway", "status", "--url", base)
            assert text.returncode == 0 and "takes traffic" in text.stdout, text
            api_token = (config.parent / "state" / "api-token").read_text().strip()
            metrics = client.get("/metrics", headers={"Authorization": f"Bearer {api_token}"})
            assert 'provisioner_gateway_replica_up{cluster="a",model="smol"} 1.0' in metrics.text
    finally:
        stop_process(proc)
    listed = cli(config, "gateway", "key", "list", "--json")
    usage = json.loads(listed.stdout)["keys"][0]["usage"]
    assert usage["requests"] >= 13 and usage["tokens_in"] >= 3 * 12, usage


@pytest.mark.root
def test_serve_answers_v1_with_a_key_added_while_it_runs(
    loopback_appliance: Appliance, site: tuple[Path, int, dict[str, Replica]]
) -> None:
    """The front door inside `provisioner serve`: a key added while it runs is taken
    within a second or two (the registry is read every second)."""
    config, _, replicas = site
    app = loopback_appliance
    text = config.read_text()
    app.config.write_text(text.replace(f"port = {_port(config)}", f"port = {app.http_port}"))
    app.state = config.parent / "state"
    app.start()
    token = json.loads(cli(app.config, "gateway", "key", "add", "app", "--json").stdout)["api_key"]
    body = {"model": "smol", "messages": [{"role": "user", "content": "hi"}]}
    deadline = time.monotonic() + 5
    while True:
        r = httpx.post(f"{app.base}/v1/chat/completions", json=body, timeout=10,
                       headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 200, (r.text, app.log.read_text()[-3000:])
    assert r.json()["replica"] in replicas


def _port(config: Path) -> int:
    return int(config.read_text().split("[http]\nport = ")[1].split("\n")[0])
