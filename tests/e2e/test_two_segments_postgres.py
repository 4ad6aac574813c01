"""Two boot servers on two segments, one PostgreSQL registry (issue 23, docs/scale.md).

Two container labs are two segments of one site: `lab up --subnet 10.97.0.0/24
--first-node 1` and `--subnet 10.96.0.0/24 --first-node 2`, both `--registry-url` the
same throwaway PostgreSQL database, in full DHCP mode, so each lab's `serve` gives its
segment's addresses and writes its leases and events to the one registry. Each lab boots
one container node (ctr1 on the first, ctr2 on the second) to ``ready``; then a crowd of
scripted PXE clients (tests/e2e/pxe_crowd.py) on each segment asks for addresses at once.

Asserted: both nodes are in the one registry, ``ready`` (their script, keys and report
steps, written by their own segment's serve), each with a lease from its own subnet;
every client got an address from its own segment's serve and subnet, its timeline in the
registry shows that serve's reply with that address, no address went to two MACs, and
every ACK is the MAC's lease in PostgreSQL. (A container node's own DHCP, networkd's,
is not a network boot: the serve leases it an address but writes no event.) Both labs
are taken down whatever happens, and no namespace of theirs is left. Prints the seconds
each part took.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from provisioner.lab.containers import steps_reached
from provisioner.lab.lab import ensure_discovery_image
from provisioner.lab.netns import Namespace, _run, list_namespaces
from provisioner.records import EventKind
from provisioner.registry import Registry
from tests import pg_server
from tests.conftest import unavailable
from tests.e2e.conftest import BuiltRootfs, run_cli

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.mirror]  # nspawn, no QEMU

# (subnet, the node's number, the scripted clients' MAC prefix)
SEGMENTS = (
    (IPv4Network("10.97.0.0/24"), 1, "02:5e:01:00:00"),
    (IPv4Network("10.96.0.0/24"), 2, "02:5e:02:00:00"),
)
CLIENTS = int(os.environ.get("PROVISIONER_TEST_SEGMENT_CLIENTS", "24"))  # per segment
REPLY = EventKind.DHCP_REPLY
CROWD = [sys.executable, "-m", "tests.e2e.pxe_crowd"]


def _prepare(lab: Path, images: Path, rootfs: BuiltRootfs) -> None:
    """The lab's image store: the discovery image and the shared image, hard links."""
    store = lab / "state" / "images"
    shutil.copytree(images, store, symlinks=True, copy_function=os.link)
    shutil.copytree(rootfs.image, store / rootfs.image.name, symlinks=True, copy_function=os.link)


def _client_namespace(prefix: str) -> Namespace:
    """A namespace ``<prefix>-cl`` on the lab's bridge (its name: `lab down` removes it)."""
    name, port = f"{prefix}-cl", f"{prefix}x0"
    _run(["ip", "netns", "add", name])
    client, switch = Namespace(name), Namespace(f"{prefix}-sw")
    client.run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
    switch.run(["ip", "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", name])  # fmt: skip
    switch.run(["ip", "link", "set", port, "master", "br0", "up"])
    client.run(["ip", "link", "set", "lo", "up"])
    client.run(["ip", "link", "set", "eth0", "up"])
    return client


def _lab_up(lab: Path, subnet: IPv4Network, number: int, url: str) -> subprocess.Popen[str]:
    """`lab up`: one container node numbered ``number`` on ``subnet``, registry ``url``."""
    argv = ["lab", "up", "--dir", str(lab), "--kind", "container", "--nodes", "1",
            "--image", "debian-bookworm", "--mode", "full", "--subnet", str(subnet),
            "--first-node", str(number), "--registry-url", url, "--timeout", "240"]  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "provisioner.cli", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_two_segments_boot_through_one_postgres_registry(
    tmp_path: Path, rootfs_built: BuiltRootfs, postgres_server: str
) -> None:
    if os.geteuid() != 0:
        unavailable("needs root (namespaces, containers)")
    for tool in ("systemd-nspawn", "unsquashfs", "curl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing (scripts/setup installs it)")
    started = time.monotonic()
    url = pg_server.fresh_database(postgres_server)
    Registry(url).close()  # the schema, before two serves race to make it
    images = tmp_path / "images"
    ensure_discovery_image(images, print)  # once for both labs (from the cache)
    labs = [tmp_path / f"lab{i}" for i in range(1, len(SEGMENTS) + 1)]
    for lab in labs:
        _prepare(lab, images, rootfs_built)
    prepared = time.monotonic()
    prefixes: list[str] = []
    try:
        ups = [
            _lab_up(lab, subnet, number, url)
            for lab, (subnet, number, _) in zip(labs, SEGMENTS, strict=True)
        ]
        outputs = [up.communicate(timeout=600) for up in ups]
        prefixes = [json.loads((lab / "lab.json").read_text())["prefix"] for lab in labs]
        for up, (_, err) in zip(ups, outputs, strict=True):
            assert up.returncode == 0, err[-6000:]
        ready = time.monotonic()

        crowds = []
        for prefix, lab, (_, _, macs) in zip(prefixes, labs, SEGMENTS, strict=True):
            client = _client_namespace(prefix)
            argv = [*CROWD, "eth0", macs, str(CLIENTS), str(lab / "acks.jsonl")]
            crowds.append(client.popen(argv, stderr=subprocess.PIPE))
        for crowd in crowds:
            _, err = crowd.communicate(timeout=300)
            assert crowd.returncode == 0, err.decode()[-3000:]
        crowded = time.monotonic()

        registry = Registry(url)
        try:
            leases = {lease.mac: lease.ip for lease in registry.leases()}
            timeline = []
            for subnet, number, _ in SEGMENTS:
                mac = f"52:54:00:98:00:{number:02x}"
                node = registry.node(mac)
                assert node is not None and node.hostname == f"ctr{number}"
                events = registry.events(mac)
                assert "ready" in steps_reached(events), [e.kind.value for e in events]
                assert leases[mac] in subnet, (mac, leases[mac])
                timeline += [(e.ts, mac, e.kind) for e in events]
            # One timeline: both nodes' steps, as each serve wrote them, in one registry.
            assert {mac for _, mac, _ in timeline} == {"52:54:00:98:00:01", "52:54:00:98:00:02"}

            owners: dict[IPv4Address, set[str]] = {}
            for lab, (subnet, _, macs) in zip(labs, SEGMENTS, strict=True):
                acks = [json.loads(line) for line in (lab / "acks.jsonl").read_text().splitlines()]
                assert sorted(a["mac"] for a in acks) == sorted(
                    f"{macs}:{i:02x}" for i in range(1, CLIENTS + 1)
                )
                for ack in acks:
                    ip = IPv4Address(ack["ip"])
                    # This segment's serve wrote the client's timeline into the one registry.
                    replies = [e for e in registry.events(ack["mac"]) if e.kind is REPLY]
                    given = [e.detail["address"] for e in replies if e.detail.get("address")]
                    assert given and {str(ip)} == set(given), (ack, given)
                    assert ip in subnet and ack["server"] == str(subnet.network_address + 1), ack
                    assert leases.get(ack["mac"]) == ip, (ack, leases.get(ack["mac"]))
                    owners.setdefault(ip, set()).add(ack["mac"])
            for _subnet, number, _ in SEGMENTS:
                owners.setdefault(leases[f"52:54:00:98:00:{number:02x}"], set()).add(str(number))
            twice = {str(ip): sorted(m) for ip, m in owners.items() if len(m) > 1}
            assert not twice, f"addresses given to two MACs: {twice}"
            assert len(owners) == len(SEGMENTS) * (CLIENTS + 1)
        finally:
            registry.close()
    finally:
        for lab in labs:
            run_cli("lab", "down", "--dir", str(lab), timeout=120)
        left = [n for n in list_namespaces() if any(n.startswith(p) for p in prefixes)]
        assert not left, f"namespaces left behind: {left}"
    print(
        f"two segments: images ready in {prepared - started:.1f} s, both labs up with their "
        f"node ready in {ready - prepared:.1f} s, {CLIENTS} PXE clients per segment in "
        f"{crowded - ready:.1f} s; {time.monotonic() - started:.1f} s in all (torn down)"
    )
