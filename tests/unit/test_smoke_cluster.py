"""The node side of smoke (provisioner.smoke.cluster) against fake nodes (tests/fakes/ssh.py):
the exact commands run and the checks they make. The restart check's HTTP side talks to a
tiny OpenAI-style server on 127.0.0.1."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import pytest

from provisioner.smoke.cluster import head_log, last_log_line, restart_check, sampler, unit_checks
from provisioner.smoke.report import Check
from tests.fakes.ssh import FakeNode, Reply, replies

# What smoke expects active on each member of a llama-rpc cluster (head node0, worker
# node1): the units its recipes install.
UNITS = {"node0": ("llama-server.service",), "node1": ("llama-rpc.service",)}


def status(unit: str) -> str:
    """The command unit_checks runs for ``unit``."""
    return f"systemctl is-active {unit}; systemctl show -p NRestarts --value {unit}"


def log_grep(unit: str, log: str) -> str:
    """The command last_log_line runs for ``unit`` (whose log file is ``log``)."""
    return (
        f"{{ test -f {log} && cat {log} || journalctl -u {unit} -n 200 --no-pager; }} 2>/dev/null"
        " | grep -E 'Error|error|ERROR' | tail -n 1"
    )


# ---------------------------------------------------------------------------- unit_checks


def test_every_unit_active_passes() -> None:
    head, worker = FakeNode("node0"), FakeNode("node1")
    head.on(status("llama-server.service"), stdout="active\n0\n")
    worker.on(status("llama-rpc.service"), stdout="active\n0\n")
    checks = unit_checks({"node0": head.connect(), "node1": worker.connect()}, UNITS)
    assert checks == [
        Check("unit[node0:llama-server.service]", True, "active", "active", ""),
        Check("unit[node1:llama-rpc.service]", True, "active", "active", ""),
    ]
    assert head.commands == [status("llama-server.service")]
    assert worker.commands == [status("llama-rpc.service")]


def test_a_unit_that_keeps_dying_passes_but_says_how_often_systemd_restarted_it() -> None:
    worker = FakeNode("node1")
    worker.on(status("llama-rpc.service"), stdout="active\n4\n")
    [check] = unit_checks({"node1": worker.connect()}, UNITS)
    assert check == Check(
        "unit[node1:llama-rpc.service]", True, "active", "active", "restarted 4 time(s) by systemd"
    )
    assert worker.commands == [status("llama-rpc.service")]  # no log read for an active one


def test_an_inactive_unit_fails_with_the_last_error_of_its_log() -> None:
    worker = FakeNode("node1")
    worker.on(status("llama-rpc.service"), stdout="failed\n3\n")
    grep = log_grep("llama-rpc.service", "/var/log/llama-rpc.log")
    worker.on(grep, stdout="error: bind 10.99.0.101:50052: Address already in use\n")
    [check] = unit_checks({"node1": worker.connect()}, UNITS)
    assert check == Check(
        "unit[node1:llama-rpc.service]", False, "failed", "active",
        "restarted 3 time(s) by systemd; error: bind 10.99.0.101:50052: Address already in use",
    )  # fmt: skip
    assert worker.commands == [status("llama-rpc.service"), grep]


def test_a_unit_systemd_says_nothing_of_is_unknown() -> None:
    head = FakeNode("node0")  # every command: exit 0, no output
    [check] = unit_checks({"node0": head.connect()}, UNITS)
    assert check == Check("unit[node0:llama-server.service]", False, "unknown", "active", "")


def test_each_host_is_asked_for_its_own_units_in_order() -> None:
    # a vLLM head: its Ray unit, then one unit per served model; a node with none: no command
    units = {"node0": ("ray-head.service", "vllm-chat.service", "vllm-embed.service")}
    head, other = FakeNode("node0"), FakeNode("node9")
    head.on(re.compile(r"^systemctl is-active "), stdout="active\n0\n")
    checks = unit_checks({"node0": head.connect(), "node9": other.connect()}, units)
    assert [c.name for c in checks] == [
        "unit[node0:ray-head.service]",
        "unit[node0:vllm-chat.service]",
        "unit[node0:vllm-embed.service]",
    ]
    assert head.commands == [status(u) for u in units["node0"]]
    assert other.commands == []


# ---------------------------------------------------------------------------- logs, sampler


def test_last_log_line_reads_the_units_log_and_keeps_its_last_300_characters() -> None:
    node = FakeNode("node0")
    grep = log_grep("vllm-chat.service", "/var/log/vllm-chat.log")
    long_line = "ERROR " + "x" * 400 + " CUDA out of memory"
    node.on(grep, stdout=f"  {long_line}\n")
    assert last_log_line(node.connect(), "vllm-chat.service") == long_line[-300:]
    assert node.commands == [grep]


def test_head_log_is_the_servers_log_as_it_is() -> None:
    node = FakeNode("node0")
    text = "llama_model_load: loaded\nRPC0 model buffer size = 12.5 MiB\n"
    node.on("cat /var/log/llama-server.log", stdout=text)
    assert head_log(node.connect()) == text
    assert node.commands == ["cat /var/log/llama-server.log"]


def test_a_sampler_runs_ss_each_time_it_is_called_and_not_before() -> None:
    node = FakeNode("node1")
    node.on("ss -tinH", replies(Reply("bytes_sent:10\n"), Reply("bytes_sent:99\n")))
    sample = sampler(node.connect())
    assert node.commands == []
    assert (sample(), sample()) == ("bytes_sent:10\n", "bytes_sent:99\n")
    assert node.commands == ["ss -tinH", "ss -tinH"]


# ---------------------------------------------------------------------------- restart


class TinyServer(ThreadingHTTPServer):
    """``/health`` and a streamed chat completion, as llama-server answers them."""

    daemon_threads = True
    chat_status = 200
    tokens = ("Hello", "!")

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[tuple[str, str, Any]] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        cast(TinyServer, self.server).requests.append(("GET", self.path, None))
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def do_POST(self) -> None:
        server = cast(TinyServer, self.server)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append(("POST", self.path, body))
        self.send_response(server.chat_status)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        if server.chat_status != 200:
            self.wfile.write(b'{"error":{"message":"the model is not loaded"}}')
            return
        for token in server.tokens:
            chunk = {"choices": [{"index": 0, "delta": {"content": token}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        self.wfile.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())


@pytest.fixture
def server() -> Iterator[TinyServer]:
    tiny = TinyServer()
    thread = threading.Thread(target=tiny.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield tiny
    tiny.shutdown()
    tiny.server_close()
    thread.join()


MAIN_PID = "systemctl show -p MainPID --value llama-rpc.service"
IS_ACTIVE = "systemctl is-active llama-rpc.service"


def test_a_killed_server_that_systemd_brings_back_under_a_new_pid_passes(
    server: TinyServer,
) -> None:
    node = FakeNode("node1")
    node.on(MAIN_PID, replies(Reply("100\n"), Reply("100\n"), Reply("200\n")))
    node.on(IS_ACTIVE, stdout="active\n")  # active, but the first poll finds the old pid
    lines: list[str] = []
    check = restart_check(
        node.connect(), "node1", "llama-rpc.service", server.endpoint, "smollm2", lines.append,
        wait_s=30,
    )  # fmt: skip
    assert check.passed and check.name == "restart" and check.floor == 30
    assert isinstance(check.value, float) and 1.0 <= check.value < 30
    assert check.detail == "node1: llama-rpc.service pid 100 -> 200; a completion works again"
    assert node.commands == [MAIN_PID, "kill -9 100", IS_ACTIVE, MAIN_PID, IS_ACTIVE, MAIN_PID]
    assert lines == ["smoke: killed node1's llama-rpc.service (pid 100); waiting for systemd"]
    [health, chat] = server.requests
    assert health == ("GET", "/health", None)
    assert chat[:2] == ("POST", "/v1/chat/completions")
    assert chat[2]["model"] == "smollm2" and chat[2]["max_tokens"] == 8 and chat[2]["stream"]
    assert chat[2]["messages"] == [{"role": "user", "content": "Say hello."}]


def test_a_server_that_systemd_does_not_bring_back_fails(server: TinyServer) -> None:
    node = FakeNode("node1")
    node.on(MAIN_PID, replies(Reply("100\n"), Reply("0\n")))
    node.on(IS_ACTIVE, exit_status=3, stdout="activating\n")
    check = restart_check(
        node.connect(), "node1", "llama-rpc.service", server.endpoint, "smollm2", [].append,
        wait_s=0.2,
    )  # fmt: skip
    assert check == Check("restart", False, None, 0.2, "node1: llama-rpc.service not back in time")
    assert node.commands == [MAIN_PID, "kill -9 100", IS_ACTIVE, MAIN_PID]
    assert server.requests == []  # no completion tried


def test_a_server_back_that_cannot_complete_fails_with_the_servers_error(
    server: TinyServer,
) -> None:
    server.chat_status = 503
    node = FakeNode("node1")
    node.on(MAIN_PID, replies(Reply("100\n"), Reply("200\n")))
    node.on(IS_ACTIVE, stdout="active\n")
    check = restart_check(
        node.connect(), "node1", "llama-rpc.service", server.endpoint, "smollm2", [].append,
        wait_s=0.5,
    )  # fmt: skip
    assert check.name == "restart" and not check.passed
    assert (check.value, check.floor) == (None, 0.5)
    assert check.detail.startswith("no completion after restart: POST /v1/chat/completions: 503")
    assert "the model is not loaded" in check.detail
