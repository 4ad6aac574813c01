"""The cluster zone's DNS, served by `provisioner serve` on loopback, asked with `dig`:
A and PTR from the registry, NXDOMAIN with the SOA, a node added while it runs, names
outside the zone forwarded to an upstream (Debian's dnsmasq plays it), TCP, and a packet
that is no DNS query dropped and counted while the service keeps answering."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.registry import Registry
from tests.integration.conftest import Appliance, free_port, need, stop_process

pytestmark = pytest.mark.root  # the loopback appliance (fast tier: no namespaces)


def dig(port: int, *args: str) -> str:
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+time=3", "+tries=1", *args],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    return out.stdout


def short(port: int, *args: str) -> list[str]:
    return dig(port, "+short", *args).split()


def free_both() -> int:
    """A port free for UDP and for TCP (the responder binds both)."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket() as tcp:
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no port free for both UDP and TCP")


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[int]:
    """dnsmasq on loopback answering example.test names (and nothing else)."""
    need("dnsmasq")
    port = free_both()
    proc = subprocess.Popen(
        ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
         "--no-hosts", "--bind-interfaces", "--listen-address=127.0.0.1", f"--port={port}",
         "--address=/example.test/192.0.2.7", "--user=root", f"--pid-file={tmp_path}/dnsmasq.pid"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(50):
            if short(port, "www.example.test") == ["192.0.2.7"]:
                break
        else:
            raise AssertionError("dnsmasq did not answer")
        yield port
    finally:
        stop_process(proc)


def test_dig_asks_the_cluster_zone(
    loopback_appliance: Appliance, upstream: int, tmp_path: Path
) -> None:
    need("dig")
    app = loopback_appliance
    port = free_both()
    with app.config.open("a") as cfg:
        cfg.write(
            f'\n[dns]\nenabled = true\nzone = "cluster.lan"\nport = {port}\n'
            f'upstream = ["127.0.0.1:{upstream}"]\n'
        )
    registry = Registry(app.state / "registry.sqlite3")
    registry.touch_node("52:54:00:00:00:10", ip="127.0.0.10")
    registry.set_hostname("52:54:00:00:00:10", "node0")
    app.start()
    assert short(port, "node0.cluster.lan") == ["127.0.0.10"]
    assert short(port, "-x", "127.0.0.10") == ["node0.cluster.lan."]
    assert short(port, "gateway.cluster.lan") == ["127.0.0.1"]

    missing = dig(port, "nosuch.cluster.lan")
    assert "status: NXDOMAIN" in missing and "flags: qr aa" in missing
    assert re.search(r"cluster\.lan\.\s+\d+\s+IN\s+SOA\s+provisioner\.cluster\.lan\.", missing)

    # a node named while it runs answers within the zone's one-second refresh
    registry.touch_node("52:54:00:00:00:11", ip="127.0.0.11")
    registry.set_hostname("52:54:00:00:00:11", "node1")
    for _ in range(30):
        if short(port, "node1.cluster.lan") == ["127.0.0.11"]:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("node1 never answered")

    assert short(port, "www.example.test") == ["192.0.2.7"]  # forwarded to dnsmasq
    assert short(port, "+tcp", "node0.cluster.lan") == ["127.0.0.10"]
    assert short(port, "+tcp", "www.example.test") == ["192.0.2.7"]

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
        junk.sendto(b"\x00\x01not dns at all", ("127.0.0.1", port))
    assert short(port, "node0.cluster.lan") == ["127.0.0.10"]  # still answering
    metrics = subprocess.run(
        ["curl", "-s", f"{app.base}/metrics"], capture_output=True, text=True, check=False
    ).stdout
    counts = dict(re.findall(r'provisioner_dns_queries_total\{kind="(\w+)"\} (\S+)', metrics))
    assert float(counts["dropped"]) >= 1 and float(counts["forwarded"]) >= 2
    assert float(counts["nxdomain"]) >= 1 and float(counts["answered"]) >= 5
    registry.close()


def test_without_an_upstream_other_names_are_refused(loopback_appliance: Appliance) -> None:
    need("dig")
    app = loopback_appliance
    port = free_both()
    with app.config.open("a") as cfg:
        cfg.write(f"\n[dns]\nenabled = true\nport = {port}\n")
    app.start()
    assert "status: REFUSED" in dig(port, "deb.debian.org")
    assert "status: NOERROR" in dig(port, "provisioner.cluster.lan")
