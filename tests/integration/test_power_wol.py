"""Wake-on-LAN on a real (virtual) wire: `provisioner power on` in one network namespace,
a raw packet capture on the "sleeping" node's interface in another.

Built with the lab's LabNetwork (namespaces on a private bridge, removed at the end);
no traffic leaves the namespaces. Needs root.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.lab.netns import LabNetwork
from provisioner.power.wol import magic_packet
from tests.integration.conftest import free_port, need, need_root, write_config

pytestmark = [pytest.mark.root, pytest.mark.netns]

# Runs in the node's namespace: print "ready", then the first UDP/9 frame seen, as hex.
CAPTURE = r"""
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind(("eth0", 0))
s.settimeout(15)
print("ready", flush=True)
while True:
    frame = s.recv(2048)
    ihl = (frame[14] & 0x0F) * 4
    if frame[23] == 17 and int.from_bytes(frame[14 + ihl + 2:14 + ihl + 4], "big") == 9:
        print(frame.hex(), flush=True)
        break
"""


def test_power_on_sends_the_magic_packet_on_the_named_interface(tmp_path: Path) -> None:
    need_root()
    need("ip")
    with LabNetwork() as lab:
        app = lab.add_host("app", address="10.77.0.1/24")
        node = lab.add_host("node")  # "asleep": no address, only its NIC
        mac = lab.mac("node")
        capture = node.popen([sys.executable, "-c", CAPTURE], stdout=subprocess.PIPE)
        assert capture.stdout is not None
        assert capture.stdout.readline().strip() == b"ready"

        config = tmp_path / "provisioner.toml"
        write_config(
            config, interface="eth0", address="10.77.0.1/24", mode="proxy",
            state=tmp_path / "state", http_port=free_port(),
        )  # fmt: skip
        cli = [sys.executable, "-m", "provisioner.cli", "--config", str(config)]
        url = f"wol://{mac}?interface=eth0"
        app.run([*cli, "node", "add", "sleepy", "--mac", mac, "--power", url])
        done = app.run([*cli, "power", "on", "sleepy", "--json"], check=False)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)[0]["ok"]

        frame = bytes.fromhex(capture.stdout.readline().decode().strip())
        capture.wait(5)
        assert frame[0:6] == b"\xff" * 6  # Ethernet broadcast
        assert frame[6:12] == bytes.fromhex(lab.mac("app").replace(":", ""))
        ihl = (frame[14] & 0x0F) * 4
        assert frame[30:34] == bytes([255, 255, 255, 255])  # IPv4 destination
        payload = frame[14 + ihl + 8 :]
        assert payload == magic_packet(mac)

        status = app.run([*cli, "power", "status", "sleepy"], check=False)
        assert status.returncode == 1
        assert status.stderr.strip() == (
            f"sleepy: status failed: Wake-on-LAN cannot read the power state (wol {mac} via eth0)"
        )


def test_a_missing_interface_is_named(tmp_path: Path) -> None:
    need_root()
    with LabNetwork() as lab:
        app = lab.add_host("app", address="10.77.0.1/24")
        code = (
            "from provisioner.power.wol import send_magic\n"
            "send_magic('02:00:00:00:00:09', 'nosuch0', '255.255.255.255', 9)\n"
        )
        done = app.run([sys.executable, "-c", code], check=False)
        assert done.returncode != 0
        assert "PowerError: no interface nosuch0 to send the WoL packet on" in done.stderr
