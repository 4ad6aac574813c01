"""Node consoles end to end on loopback: `provisioner serve` as a real process, netconsole
datagrams over real UDP from the addresses of a known node (127.0.0.2) and of nobody
(127.0.0.3), read back with `node console` (and --follow), the API and /metrics."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioner.registry import Registry
from tests.integration.conftest import Appliance, make_image

pytestmark = pytest.mark.root  # the loopback appliance (fast tier: no namespaces)

MAC = "52:54:00:10:20:40"
NODE_IP = "127.0.0.2"
STRANGER_IP = "127.0.0.3"


def send(app: Appliance, source: str, *datagrams: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for datagram in datagrams:
            sock.sendto(datagram, (app.host, app.console_port))


def console_json(app: Appliance, *args: str) -> dict[str, object]:
    done = app.cli("node", "console", MAC, "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_for_lines(app: Appliance, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 10
    while True:
        lines = console_json(app)["lines"]
        assert isinstance(lines, list)
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_a_known_node_console_is_kept_shown_and_on_its_timeline(
    loopback_appliance: Appliance,
) -> None:
    app = loopback_appliance
    make_image(app.state)
    app.state.mkdir(parents=True, exist_ok=True)
    registry = Registry(app.state / "registry.sqlite3")
    registry.touch_node(MAC, ip=NODE_IP)
    registry.set_hostname(MAC, "node7")
    registry.close()
    app.start()

    # The boot script tells the kernel where to send (the initramfs reads it).
    script = subprocess.run(
        ["curl", "-s", "-H", "X-Provisioner-On-Behalf: test", f"{app.base}/boot/{MAC}.ipxe"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f" provisioner.netconsole={app.console_port} " in script

    started = time.monotonic()
    send(
        app, NODE_IP,
        b"6,0,0,-;Linux version 6.1.0-57-amd64 (lab)\n SUBSYSTEM=x\n",
        b"6,1,1000,-;Command line: BOOT_IMAGE=vmlinuz\n",
        b"0,2,5000000,-;Kernel panic - not syncing: Attempted to kill init!\n",
    )  # fmt: skip
    send(app, STRANGER_IP, b"6,0,0,-;Linux version 6.6.6 (forged)\n")
    send(app, NODE_IP, b"x" * 4000, b"\xff\xfe\n")
    lines = wait_for_lines(app, 3)
    print(f"3 lines readable after {time.monotonic() - started:.2f} s")
    assert [line["text"] for line in lines] == [
        "Linux version 6.1.0-57-amd64 (lab)",
        "Command line: BOOT_IMAGE=vmlinuz",
        "Kernel panic - not syncing: Attempted to kill init!",
    ]
    assert [line["seq"] for line in lines] == [0, 1, 2]
    assert lines[2]["level"] == 0 and lines[2]["kernel_ts"] == 5.0

    # Only the known node has a file; its timeline: the boot and the panic.
    assert sorted(os.listdir(app.state / "console")) == [f"{MAC}.log"]
    shown = app.cli("node", "show", MAC, "--json")
    timeline = json.loads(shown.stdout)["timeline"]
    console = [e["detail"] for e in timeline if e["kind"] == "console"]
    assert [(d["what"], d["line"]) for d in console] == [
        ("boot", "Linux version 6.1.0-57-amd64 (lab)"),
        ("panic", "Kernel panic - not syncing: Attempted to kill init!"),
    ]

    # The text form, and the last N.
    text = app.cli("node", "console", "node7", "--lines", "1")
    assert text.returncode == 0, text.stderr
    assert (
        text.stdout
        == "[    5.000000] <emerg> Kernel panic - not syncing: Attempted to kill init!\n"
    )

    # The API: the token, then the same lines.
    url = f"{app.base}/api/v1/nodes/node7/console?lines=2"
    refused = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert refused.stdout == "401"
    answer = subprocess.run(
        ["curl", "-sf", "-H", f"Authorization: Bearer {app.api_token}", url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    body = json.loads(answer.stdout)
    assert body["mac"] == MAC and [line["seq"] for line in body["lines"]] == [1, 2]

    metrics = subprocess.run(
        ["curl", "-sf", f"{app.base}/metrics"], capture_output=True, text=True, check=True
    ).stdout
    for series in (
        'provisioner_console_datagrams_total{result="accepted"} 3.0',
        'provisioner_console_datagrams_total{result="unknown-source"} 1.0',
        'provisioner_console_datagrams_total{result="oversize"} 1.0',
        'provisioner_console_datagrams_total{result="not-text"} 1.0',
        "provisioner_console_lines_total 3.0",
    ):
        assert series in metrics, series


def test_node_console_follow_prints_lines_as_they_come(loopback_appliance: Appliance) -> None:
    app = loopback_appliance
    app.state.mkdir(parents=True, exist_ok=True)
    registry = Registry(app.state / "registry.sqlite3")
    registry.touch_node(MAC, ip=NODE_IP)
    registry.close()
    app.start()
    send(app, NODE_IP, b"[    0.000000] Linux version 6.1.0 (plain)\n")
    wait_for_lines(app, 1)
    follow = subprocess.Popen(
        [sys.executable, "-m", "provisioner.cli", "--config", str(app.config),
         "node", "console", MAC, "--follow", "--json", "--lines", "1"],
        stdout=subprocess.PIPE, text=True,
        # Ctrl-C is how a user stops --follow. A job started with `&` by a non-interactive
        # shell (CI run in the background) inherits SIGINT ignored, and so would the CLI.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        assert follow.stdout is not None
        first = json.loads(follow.stdout.readline())
        assert first["text"] == "Linux version 6.1.0 (plain)" and first["kernel_ts"] == 0.0
        send(app, NODE_IP, b"[   61.500000] INFO: task kworker/0:1:42 blocked for more than")
        send(app, NODE_IP, b" 120 seconds.\n")
        ready, _, _ = select.select([follow.stdout], [], [], 10)
        assert ready, "no line followed within 10 s"
        second = json.loads(follow.stdout.readline())
        assert second["text"] == "INFO: task kworker/0:1:42 blocked for more than 120 seconds."
    finally:
        os.kill(follow.pid, signal.SIGINT)  # the one process this test started
        try:
            status = follow.wait(30)  # (a loaded 2-core CI machine: 10 s was once too few)
        except subprocess.TimeoutExpired:
            follow.kill()  # not left running into the next tests
            follow.wait()
            raise
        finally:
            if follow.stdout is not None:
                follow.stdout.close()
    assert status == 0
    shown = json.loads(app.cli("node", "show", MAC, "--json").stdout)
    whats = [e["detail"]["what"] for e in shown["timeline"] if e["kind"] == "console"]
    assert whats == ["boot", "hung-task"]


def test_console_off_binds_nothing_and_boot_scripts_do_not_ask(
    loopback_appliance: Appliance, tmp_path: Path
) -> None:
    app = loopback_appliance
    make_image(app.state)
    with app.config.open("a") as f:
        f.write("enabled = false\n")  # appended to the [console] table
    app.start()
    script = subprocess.run(
        ["curl", "-s", "-H", "X-Provisioner-On-Behalf: test", f"{app.base}/boot/{MAC}.ipxe"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert script.startswith("#!ipxe") and "provisioner.netconsole" not in script
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((app.host, app.console_port))  # free: serve did not take it
