"""The attacker's seat: `provisioner serve` on a segment with a node and an attacker.

Namespaces joined by a bridge (all made by the test and removed after it): ``prov``
runs serve in full-DHCP mode on 10.79.0.1; ``node`` (MAC 02:79:00:00:00:01) is the
machine being provisioned; ``atk`` (10.79.0.66, its own MAC) is anyone else on the
cluster network. Each test in tests/security plays one link of the chain the security
issue demonstrated from ``atk`` and shows it refused. Traffic stays in the namespaces.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path

import pytest

from provisioner.lab.netns import HostSpec, LabNetwork, Namespace
from tests.integration.conftest import (
    Appliance,
    loopback_appliance,  # noqa: F401 (test_secrets.py's)
    make_image,
    need,
    need_root,
    write_config,
)

SERVER = "10.79.0.1"
ATTACKER = "10.79.0.66"
NODE_MAC = "02:79:00:00:00:01"
ATTACKER_MAC = "02:79:00:00:00:66"
RANGE = "10.79.0.100-10.79.0.150"
HTTP_PORT = 8080


@dataclass
class Segment:
    lab: LabNetwork
    app: Appliance
    tmp: Path

    @property
    def node(self) -> Namespace:
        return self.lab.host("node")

    @property
    def attacker(self) -> Namespace:
        return self.lab.host("atk")

    @property
    def base(self) -> str:
        return f"http://{SERVER}:{HTTP_PORT}"

    def curl(self, ns: Namespace, *args: str) -> subprocess.CompletedProcess[str]:
        """curl from ``ns``; ``-w`` adds the status code on a last line of its own."""
        argv = ["curl", "-s", "--max-time", "30", "-w", "\n%{http_code}", *args]
        return ns.run(argv, check=False, timeout=60)

    def pxe(self, ns: Namespace, mac: str, *args: str, timeout: float = 20) -> str:
        """The scripted PXE client (what firmware does) in ``ns``; its JSON answer."""
        argv = [sys.executable, "-m", "provisioner.lab.pxeclient", "--iface", "eth0",
                "--mac", mac, "--timeout", str(timeout), "--json", *args]  # fmt: skip
        done = ns.run(argv, check=False, timeout=timeout + 30)
        return done.stdout


@pytest.fixture
def segment(tmp_path: Path) -> Iterator[Segment]:
    """serve (full mode, HTTP on the cluster address) with a node and an attacker."""
    need_root()
    need("ip", "curl")
    hosts = [
        HostSpec("prov", IPv4Interface(f"{SERVER}/24")),
        HostSpec("node", None, NODE_MAC),
        HostSpec("atk", IPv4Interface(f"{ATTACKER}/24"), ATTACKER_MAC),
    ]
    with LabNetwork(hosts) as lab:
        state = tmp_path / "state"
        app = Appliance(
            config=tmp_path / "provisioner.toml", state=state, http_port=HTTP_PORT,
            tftp_port=69, dhcp_port=67, pxe_port=4011, host=SERVER,
            log=tmp_path / "serve.log", prefix=tuple(lab.host("prov").argv([])),
        )  # fmt: skip
        write_config(
            app.config, interface="eth0", address=f"{SERVER}/24", mode="full",
            state=state, http_port=HTTP_PORT, dhcp_range=RANGE, bind=SERVER,
        )  # fmt: skip
        make_image(state)
        try:
            yield Segment(lab, app, tmp_path)
        finally:
            app.stop()
