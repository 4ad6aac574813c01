"""This machine on a lab's network, and what a failed SSH connection shows.

* ``LabNetwork.attach_host``: the root namespace reaches a lab host through its leg into
  the appliance's namespace (the kernel routes the subnet there, not through the default
  route), seen by the host as the appliance (SNAT); the leg, with its route, is gone
  once the lab is closed or cleaned up.
* ``Site.connect``'s guard: an address of the cluster subnet that this machine would
  reach from outside it is refused before any packet.
* ``provisioner postinstall run`` against nodes that do not speak SSH (a port that
  accepts and closes: paramiko's "Error reading SSH protocol banner"; a closed port)
  prints one line per node and no traceback, run in a throwaway namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from provisioner.artifacts.store import ArtifactStore, Manifest
from provisioner.cli import main
from provisioner.clusters.site import refuse_off_network
from provisioner.config import Mode, load_config, render_config
from provisioner.hostkeys import ensure_host_key
from provisioner.lab.netns import (
    HostSpec,
    LabNetwork,
    Namespace,
    _run,
    cleanup,
    host_routes,
    list_namespaces,
    new_prefix,
    overlapping_routes,
    remove_orphan_legs,
)
from provisioner.models.store import ModelStore
from provisioner.postinstall.ssh import SshError
from provisioner.registry import Registry
from provisioner.sshkeys import ensure_keypair
from provisioner.states import NodeEvent
from tests.conftest import unavailable

SUBNET = IPv4Network("10.78.0.0/24")  # not the lab's 10.99.0.0/24: a lab may be up
APPLIANCE = "10.78.0.1"
PEER = "10.78.0.2"
LEG = "10.78.0.254/24"
PORT = 8022

LISTEN = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)\n"
    "while True:\n"
    " c, (ip, _) = s.accept()\n"
    " if sys.argv[3]: c.sendall(f'{sys.argv[3]} {ip}'.encode())\n"
    " c.close()\n"
)


def _needs_netns() -> None:
    if os.geteuid() != 0:
        unavailable("needs root (network namespaces, a veth in the root namespace)")
    if shutil.which("ip") is None:
        unavailable("needs iproute2 (ip)")


def _listen(ns: Namespace, address: str, port: int, greeting: str = "") -> None:
    """A TCP server in ``ns`` that sends ``greeting`` and hangs up; wait until it listens."""
    ns.popen([sys.executable, "-c", LISTEN, address, str(port), greeting])
    deadline = time.monotonic() + 10
    while str(port) not in ns.run(["ss", "-Hltn", f"sport = :{port}"]).stdout:
        assert time.monotonic() < deadline, f"nothing listens on {address}:{port}"
        time.sleep(0.05)


def _route_dev(address: str) -> str:
    routes = json.loads(_run(["ip", "-j", "route", "get", address], check=False).stdout or "[{}]")
    return str(routes[0].get("dev", ""))


def _legs(prefix: str) -> list[str]:
    links = json.loads(_run(["ip", "-j", "link", "show"]).stdout)
    return [str(link["ifname"]) for link in links if str(link["ifname"]).startswith(prefix)]


@pytest.mark.root
@pytest.mark.netns
def test_the_machine_reaches_a_lab_host_through_its_leg_and_nothing_outlives_the_lab() -> None:
    _needs_netns()
    if overlapping_routes(host_routes(), SUBNET):
        pytest.skip(f"this machine routes {SUBNET} already")
    hosts = [
        HostSpec("prov", IPv4Interface(f"{APPLIANCE}/24")),
        HostSpec("peer", IPv4Interface(f"{PEER}/24")),
    ]
    with LabNetwork(hosts) as net:
        _listen(net.host("peer"), PEER, PORT, "hello from the lab to")
        leg = net.attach_host("prov", LEG)
        assert net.leg == leg and _route_dev(PEER) == leg  # not the default route's device
        assert overlapping_routes(host_routes(), SUBNET) == [f"{SUBNET} dev {leg}"]
        # IPv6 off: an appliance's router advertisements give this machine no route
        assert Path(f"/proc/sys/net/ipv6/conf/{leg}/disable_ipv6").read_text().strip() == "1"
        reply = subprocess.run(
            [sys.executable, "-c", "import socket; s=socket.create_connection("
             f"({PEER!r}, {PORT}), timeout=3); print(s.recv(100).decode().strip())"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        assert reply.stdout.strip() == f"hello from the lab to {APPLIANCE}", reply.stderr
        # The appliance forwards nothing towards this machine that it did not ask for.
        probe = net.host("peer").run(
            [sys.executable, "-c", "import socket; socket.create_connection("
             "('10.78.0.254', 22), timeout=2)"], check=False,
        )  # fmt: skip
        assert probe.returncode != 0
    assert _legs(net.prefix) == [] and overlapping_routes(host_routes(), SUBNET) == []
    assert _route_dev(PEER) != leg

    # A lab that is not closed (a crashed `lab up`): cleanup(prefix) takes its leg too.
    net = LabNetwork(hosts)
    net.open()
    try:
        net.attach_host("prov", LEG)
        assert cleanup(net.prefix)
        assert _legs(net.prefix) == [] and overlapping_routes(host_routes(), SUBNET) == []
        assert not [n for n in list_namespaces() if n.startswith(net.prefix)]
    finally:
        net.close()


@pytest.mark.root
@pytest.mark.netns
def test_the_leg_of_a_lab_that_is_gone_is_removed_and_a_live_labs_leg_is_kept() -> None:
    """A run killed before its `lab down` can leave its leg (and its route) behind with no
    namespace of its lab left: the next lab's leg would be refused (this machine "routes
    the subnet already"). ``remove_orphan_legs`` (``lab up`` calls it) takes only those."""
    _needs_netns()
    if overlapping_routes(host_routes(), SUBNET):
        pytest.skip(f"this machine routes {SUBNET} already")
    hosts = [HostSpec("prov", IPv4Interface(f"{APPLIANCE}/24"))]
    gone = new_prefix()
    orphan = gone + "h0"
    _run(["ip", "link", "add", orphan, "type", "veth", "peer", "name", gone + "h1"])
    try:
        _run(["ip", "link", "set", orphan, "up"])
        _run(["ip", "route", "add", str(SUBNET), "dev", orphan])
        assert overlapping_routes(host_routes(), SUBNET) == [f"{SUBNET} dev {orphan}"]
        with LabNetwork(hosts) as net:
            removed = remove_orphan_legs()
            assert orphan in removed and _legs(gone) == []
            assert overlapping_routes(host_routes(), SUBNET) == []
            live = net.attach_host("prov", LEG)
            assert live not in remove_orphan_legs() and _legs(net.prefix) == [live]
    finally:
        _run(["ip", "link", "delete", orphan], check=False)


def test_an_address_of_the_cluster_subnet_reached_from_outside_it_is_refused() -> None:
    # TEST-NET-2: this machine has no leg there; its route (default, or none) is outside.
    with pytest.raises(SshError, match=r"^node1 198\.51\.100\.7: cannot connect over SSH: "):
        refuse_off_network("node1", "198.51.100.7", IPv4Network("198.51.100.0/24"))
    refuse_off_network("node1", "127.0.0.1", IPv4Network("127.0.0.0/8"))  # on the network
    refuse_off_network("node1", "10.1.2.3", IPv4Network("198.51.100.0/24"))  # a routed node
    refuse_off_network("node1", "", IPv4Network("198.51.100.0/24"))  # connect says why


# ------------------------------------------------------------------ one line per node


NODES = {"node0": ("52:54:00:ab:00:01", "127.0.0.1"), "node1": ("52:54:00:ab:00:02", "127.0.0.2")}


def _site_with_a_cluster(tmp_path: Path) -> Path:
    """A config whose cluster c1 has node0 (127.0.0.1) and node1 (127.0.0.2): host keys
    issued, a model and a (fake) llama.cpp build in the stores."""
    path = tmp_path / "provisioner.toml"
    text = render_config(
        interface="eth0", address="10.30.0.1/24", mode=Mode.FULL,
        dhcp_range="10.30.0.100-10.30.0.120", state_dir=tmp_path / "state",
    )  # fmt: skip
    path.write_text(text)
    cfg = load_config(path)
    registry = Registry(cfg.registry_path)
    try:
        for name, (mac, ip) in NODES.items():
            registry.touch_node(mac, ip=ip)
            registry.set_hostname(mac, name)
            registry.store_inventory(mac, "{}")
            registry.set_profile(mac, "qemu-lab")
            registry.transition(mac, NodeEvent.MATCH)
            registry.transition(mac, NodeEvent.ENROLL)
            ensure_host_key(cfg.state_dir, mac, name)
    finally:
        registry.close()
    ensure_keypair(cfg.state_dir)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + struct.pack("<I", 3) + bytes(64))
    ModelStore(cfg.state_dir / "models").add(str(gguf), "tiny")
    tarball = tmp_path / "l.tar.gz"
    with tarfile.open(tarball, "w:gz"):
        pass
    manifest = Manifest(
        "llama.cpp-b1-cpu-x86-64-v2", "llama.cpp-b1-cpu-x86-64-v2.tar.gz", "c" * 64, 1, "k",
        binaries={"server": "bin/llama-server", "rpc": "bin/rpc-server"}, built_at=1.0,
    )  # fmt: skip
    ArtifactStore(cfg.state_dir / "artifacts").publish(tarball, manifest)
    code = main(["--config", str(path), "cluster", "create", "c1", "--model", "tiny",
                 "--head", "node0", "--workers", "node1"])  # fmt: skip
    assert code == 0
    return path


@pytest.mark.root
@pytest.mark.netns
def test_a_failed_ssh_connect_is_one_line_per_node_without_a_traceback(tmp_path: Path) -> None:
    _needs_netns()
    config = _site_with_a_cluster(tmp_path)
    with LabNetwork() as net:
        ns = net._new_namespace(f"{net.prefix}-ctl")  # a loopback of its own: port 22 free
        _listen(ns, "127.0.0.1", 22)  # node0: accepts, says nothing, hangs up
        started = time.monotonic()
        done = ns.run(
            [sys.executable, "-m", "provisioner.cli", "--config", str(config),
             "postinstall", "run", "c1", "--no-build"],
            check=False, timeout=120,
        )  # fmt: skip
        seconds = time.monotonic() - started
    print(done.stderr)
    print(f"postinstall run against two dead nodes: {seconds:.1f} s")
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert not [ln for ln in lines if "Traceback" in ln or "paramiko" in ln or " ERROR " in ln]
    assert not [ln for ln in lines if ln.startswith((" ", "\t"))]  # no continuation lines
    summary = [ln for ln in lines if ln.startswith(("node0: failed:", "node1: failed:"))]
    assert len(summary) == 2, done.stderr
    banner, refused = sorted(summary)
    assert "node0 127.0.0.1:22: cannot connect over SSH (5 tries): " in banner
    assert "protocol banner" in banner
    assert "node1 127.0.0.2:22: cannot connect over SSH (5 tries): " in refused
    assert "refused" in refused.lower()
