"""One `provisioner serve` per state folder and per DHCP port (provisioner/instance.py).

A throwaway segment (namespaces ``prov`` and ``node`` on a bridge, removed after each
test): a first serve runs in full-DHCP mode on ``prov``'s eth0. A second one, with other
HTTP and TFTP ports, exits 1 at once: on the same state folder it names the first one's
PID (serve.lock), on another state folder it names the DHCP port the kernel refused. The
first keeps serving: the node still gets a DHCP lease from it, and /healthz answers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path

import pytest

from provisioner.boot.dhcp_server import open_socket
from provisioner.instance import InstanceConflict, InstanceLock
from provisioner.lab.netns import HostSpec, LabNetwork
from tests.integration.conftest import (
    Appliance,
    free_port,
    need,
    need_root,
    write_config,
)

SERVER = "10.81.0.1"
NODE_MAC = "02:81:00:00:00:01"
RANGE = "10.81.0.100-10.81.0.150"
BIOS = ["--arch", "0", "--vendor-class", "PXEClient:Arch:00000:UNDI:002001"]
SECOND_START_TIMEOUT = 60  # it must fail fast; this only bounds a hang


@dataclass
class Segment:
    lab: LabNetwork
    first: Appliance
    tmp: Path

    def second(self, state: Path) -> subprocess.CompletedProcess[str]:
        """A second serve in ``prov`` on ``state``: other HTTP/TFTP ports, same DHCP ports."""
        config = self.tmp / f"second-{state.name}.toml"
        write_config(
            config, interface="eth0", address=f"{SERVER}/24", mode="full", state=state,
            http_port=8081, tftp_port=6969, dhcp_range=RANGE, bind=SERVER,
        )  # fmt: skip
        argv = [sys.executable, "-m", "provisioner.cli", "--config", str(config), "serve"]
        started = time.monotonic()
        done = self.lab.host("prov").run(argv, check=False, timeout=SECOND_START_TIMEOUT)
        print(f"second serve on {state.name}: exit {done.returncode} in "
              f"{time.monotonic() - started:.1f} s")  # fmt: skip
        return done

    def still_serving(self) -> None:
        """The first serve answers HTTP and DHCP (a lease for the node, from it)."""
        health = self.lab.host("prov").run(
            ["curl", "-sf", f"http://{SERVER}:8080/healthz"], check=False
        )
        assert health.returncode == 0, self.first.log.read_text()[-2000:]
        argv = [sys.executable, "-m", "provisioner.lab.pxeclient", "--iface", "eth0",
                "--mac", NODE_MAC, "--timeout", "20", "--json", *BIOS]  # fmt: skip
        done = self.lab.host("node").run(argv, check=False, timeout=60)
        answer = json.loads(done.stdout)
        assert answer["ok"] and answer["server_id"] == SERVER, answer


@pytest.fixture
def segment(tmp_path: Path) -> Iterator[Segment]:
    need_root()
    need("ip", "curl")
    hosts = [HostSpec("prov", IPv4Interface(f"{SERVER}/24")), HostSpec("node", None, NODE_MAC)]
    with LabNetwork(hosts) as lab:
        state = tmp_path / "state"
        first = Appliance(
            config=tmp_path / "first.toml", state=state, http_port=8080, tftp_port=69,
            dhcp_port=67, pxe_port=4011, host=SERVER, log=tmp_path / "first.log",
            prefix=tuple(lab.host("prov").argv([])),
        )  # fmt: skip
        write_config(
            first.config, interface="eth0", address=f"{SERVER}/24", mode="full", state=state,
            http_port=8080, dhcp_range=RANGE, bind=SERVER,
        )  # fmt: skip
        try:
            first.start()
            yield Segment(lab, first, tmp_path)
        finally:
            first.stop()


@pytest.mark.root
@pytest.mark.netns
def test_second_serve_on_the_same_state_folder_exits_naming_the_holder(
    segment: Segment,
) -> None:
    assert segment.first.proc is not None
    holder = segment.first.proc.pid
    assert (segment.first.state / "serve.lock").read_text().strip() == str(holder)

    done = segment.second(segment.first.state)

    assert done.returncode == 1, done.stderr
    assert f"another provisioner serve (PID {holder})" in done.stderr
    assert str(segment.first.state) in done.stderr
    assert "Traceback" not in done.stderr
    assert segment.first.proc.poll() is None
    segment.still_serving()


@pytest.mark.root
@pytest.mark.netns
def test_second_serve_on_another_state_folder_is_refused_the_dhcp_port(
    segment: Segment,
) -> None:
    other = segment.tmp / "other-state"

    done = segment.second(other)

    assert done.returncode == 1, done.stderr
    assert "DHCP port 67 on eth0 is already bound by another process" in done.stderr
    assert "Traceback" not in done.stderr
    # It let go of everything it had taken: its lock, its TFTP and HTTP ports.
    with InstanceLock(other):
        pass
    assert segment.first.proc is not None and segment.first.proc.poll() is None
    segment.still_serving()


# ------------------------------------------------------------------ the parts, on loopback


def test_the_lock_names_its_holder_and_is_free_again_once_released(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with InstanceLock(state) as lock:
        assert lock.path.read_text() == f"{os.getpid()}\n"
        assert lock.path.stat().st_mode & 0o777 == 0o600
        with pytest.raises(InstanceConflict, match=rf"\(PID {os.getpid()}\) is running"):
            InstanceLock(state).acquire()  # flock is per open file: this process conflicts too
    with InstanceLock(state):  # released: the file stays, the lock does not
        pass


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path: Path) -> None:
    state = tmp_path / "state"
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from provisioner.instance import InstanceLock\n"
        "InstanceLock(Path(sys.argv[1])).acquire()\n"
        "os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(state)], check=False, timeout=60)
    assert done.returncode == -9
    assert (state / "serve.lock").read_text().strip().isdigit()  # its PID, left behind
    with InstanceLock(state):
        pass


@pytest.mark.root  # SO_BINDTODEVICE
def test_dhcp_socket_refuses_a_port_already_bound_on_its_interface() -> None:
    need_root()
    port = free_port(socket.SOCK_DGRAM)
    first = open_socket("lo", port)
    try:
        with pytest.raises(InstanceConflict, match=rf"DHCP port {port} on lo is already bound"):
            open_socket("lo", port)
        # A process on all interfaces (dnsmasq without --bind-interfaces) is refused too.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as anywhere:
            anywhere.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError):
                anywhere.bind(("0.0.0.0", port))
    finally:
        first.close()
    open_socket("lo", port).close()  # free again once closed: no TIME_WAIT for UDP
