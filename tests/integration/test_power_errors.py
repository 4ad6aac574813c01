"""Bad BMC addresses, from a network namespace that has no route and no DNS server.

`provisioner power status` runs inside an isolated namespace (LabNetwork host, no
default route), so a BMC name cannot resolve and a BMC address cannot be reached, and
nothing leaves the machine. Each node must fail in one line naming the node and the
cause, at once rather than at the timeout, while a good node in the same command
(a QEMU VM: its QMP socket is a file, reachable from any namespace) still succeeds.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioner.lab.netns import LabNetwork
from tests.integration.conftest import free_port, need, need_root, stop_process, write_config

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.qemu]  # the good node: a VM


def test_bad_addresses_each_give_one_line_and_the_good_node_proceeds(tmp_path: Path) -> None:
    need_root()
    need("ipmitool", "qemu-system-x86_64")
    sock = tmp_path / "good.qmp"
    vm = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "tcg", "-S", "-display", "none", "-nodefaults",
         "-m", "64", "-qmp", f"unix:{sock},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        config = tmp_path / "provisioner.toml"
        write_config(
            config, interface="eth0", address="10.77.0.1/24", mode="proxy",
            state=tmp_path / "state", http_port=free_port(),
        )  # fmt: skip
        creds = tmp_path / "power.toml"
        creds.write_text('[default]\npassword = "s3cret-pw"\n')
        creds.chmod(0o600)
        cli = [sys.executable, "-m", "provisioner.cli", "--config", str(config)]
        nodes = {
            "ipminame": "ipmi://admin@nosuch.invalid?cipher=3",
            "ipmiroute": "ipmi://admin@10.255.255.1?cipher=3",
            "rfname": "redfish://admin@nosuch.invalid",
            "rfroute": "redfish://admin@10.255.255.1",
            "good": f"qemu://{sock}",
        }
        for i, (name, url) in enumerate(nodes.items()):
            mac = f"02:00:00:00:01:{i:02x}"
            subprocess.run([*cli, "node", "add", name, "--mac", mac, "--power", url],
                           check=True, capture_output=True)  # fmt: skip
        with LabNetwork() as lab:
            iso = lab.add_host("iso", address="10.77.0.1/24")  # no route beyond its /24
            began = time.monotonic()
            done = iso.run(
                [*cli, "power", "status", *nodes, "--timeout", "10", "--credentials", str(creds)],
                check=False,
            )
            took = time.monotonic() - began
        assert done.returncode == 1
        assert done.stdout == "good: off\n"
        lines = done.stderr.splitlines()
        assert lines == [
            "ipminame: status failed: BMC host name does not resolve (ipmi nosuch.invalid)",
            "ipmiroute: status failed: cannot reach the BMC's address (no route?)"
            " (ipmi 10.255.255.1)",
            "rfname: status failed: BMC host name nosuch.invalid does not resolve"
            " (redfish nosuch.invalid)",
            "rfroute: status failed: cannot reach 10.255.255.1:443: Network is unreachable"
            " (redfish 10.255.255.1)",
        ]
        assert took < 8  # at once, not after the 10 s timeout
        assert "s3cret-pw" not in done.stdout + done.stderr
    finally:
        stop_process(vm)
