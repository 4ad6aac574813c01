"""The lab tools against real peers: LabNetwork namespaces and the scapy PXE client.

dnsmasq plays the site DHCP server (and, in one test, a proxyDHCP/PXE boot server);
the PXE client runs in its own namespace through ``python -m provisioner.lab.pxeclient``.
Needs root, iproute2, dnsmasq and curl; skips with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from provisioner.lab.netns import HostSpec, LabNetwork, Namespace, cleanup, list_namespaces
from provisioner.lab.pxeclient import PxeClientError, require_lab_namespace

pytestmark = [pytest.mark.root, pytest.mark.netns]

IPXE_DIR = Path("/usr/lib/ipxe")
UNDIONLY = IPXE_DIR / "undionly.kpxe"
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
BIOS_VENDOR_CLASS = "PXEClient:Arch:00000:UNDI:002001"
CLIENT_MAC = "02:77:00:00:00:01"


def _lab_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return None


def _peer_skip_reason() -> str | None:
    if reason := _lab_skip_reason():
        return reason
    if not os.access(DNSMASQ, os.X_OK):
        return "dnsmasq is not installed"
    if shutil.which("curl") is None:
        return "curl is not installed"
    if not UNDIONLY.is_file():
        return f"{UNDIONLY} is missing (Debian package ipxe)"
    return None


needs_lab = pytest.mark.skipif(bool(_lab_skip_reason()), reason=_lab_skip_reason() or "")
needs_peers = pytest.mark.skipif(bool(_peer_skip_reason()), reason=_peer_skip_reason() or "")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _leftovers(prefix: str) -> list[str]:
    return [name for name in list_namespaces() if name.startswith(prefix)]


@pytest.fixture
def lab() -> Iterator[LabNetwork]:
    hosts = [
        HostSpec("site", IPv4Interface("10.77.0.2/24")),
        HostSpec("client", mac=CLIENT_MAC),
    ]
    with LabNetwork(hosts) as net:
        yield net
    assert _leftovers(net.prefix) == []


def _start_dnsmasq(
    lab: LabNetwork, host: str, workdir: Path, *options: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """dnsmasq in ``host``, tracked by the lab; returns once it says it has started."""
    workdir.mkdir()
    log = workdir / "dnsmasq.log"
    argv = [
        DNSMASQ,
        "--no-daemon",
        "--conf-file=/dev/null",
        "--port=0",
        "--interface=eth0",
        "--bind-interfaces",
        f"--dhcp-leasefile={workdir / 'leases'}",
        f"--pid-file={workdir / 'dnsmasq.pid'}",
        "--enable-tftp",
        f"--tftp-root={IPXE_DIR}",
        "--log-dhcp",
        *options,
    ]
    with log.open("wb") as sink:
        proc = lab.host(host).popen(argv, stdout=sink, stderr=sink)
    deadline = time.monotonic() + 10
    while "started, version" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"dnsmasq in {host} did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    return proc, log


def _pxeclient(ns: Namespace, *args: str, logs: list[Path]) -> dict[str, object]:
    """Run the PXE client CLI in ``ns``; its JSON result, or a failure with every log."""
    argv = [sys.executable, "-m", "provisioner.lab.pxeclient", "--json", *args]
    done = ns.run(argv, check=False, timeout=60)
    if done.returncode != 0:
        peer_logs = "\n".join(f"--- {p}\n{p.read_text(errors='replace')}" for p in logs)
        pytest.fail(
            f"pxeclient exited {done.returncode}\nstdout:\n{done.stdout}\n"
            f"stderr:\n{done.stderr}\n{peer_logs}"
        )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _tftp_get(ns: Namespace, server: str, name: str, dest: Path) -> bytes:
    url = f"tftp://{server}/{name}"
    ns.run(["curl", "-s", "-S", url, "--tftp-blksize", "1468", "-o", str(dest)], timeout=30)
    return dest.read_bytes()


@needs_peers
def test_pxe_client_gets_lease_and_boot_file_from_dnsmasq(lab: LabNetwork, tmp_path: Path) -> None:
    _, log = _start_dnsmasq(
        lab,
        "site",
        tmp_path / "site",
        "--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h",
        "--dhcp-boot=undionly.kpxe,,10.77.0.2",
    )
    client = lab.host("client")
    mac = lab.mac("client")
    assert mac == CLIENT_MAC

    result = _pxeclient(
        client,
        *("--iface", "eth0", "--mac", mac, "--arch", "0"),
        *("--vendor-class", BIOS_VENDOR_CLASS, "--configure"),
        logs=[log],
    )

    assert result["ok"] is True
    address = IPv4Address(str(result["address"]))
    assert IPv4Address("10.77.0.100") <= address <= IPv4Address("10.77.0.150")
    assert result["prefix"] == 24
    assert result["server_id"] == "10.77.0.2"
    assert result["lease_time"] == 3600
    assert result["boot_file"] == "undionly.kpxe"
    assert result["next_server"] == "10.77.0.2"
    assert result["proxy"] is None
    assert result["configured"] is True
    assert f"DHCPACK(eth0) {address} {mac}" in log.read_text()
    fetched = _tftp_get(client, "10.77.0.2", "undionly.kpxe", tmp_path / "undionly.kpxe")
    assert fetched == UNDIONLY.read_bytes()


@needs_peers
def test_pxe_client_follows_proxy_dhcp_to_boot_server(lab: LabNetwork, tmp_path: Path) -> None:
    """Site DHCP gives the address, a proxyDHCP the PXE menu; port 4011 gives the file."""
    _, site_log = _start_dnsmasq(
        lab, "site", tmp_path / "site", "--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h"
    )
    lab.add_host("proxy", address="10.77.0.3/24")
    _, proxy_log = _start_dnsmasq(
        lab,
        "proxy",
        tmp_path / "proxy",
        "--dhcp-range=10.77.0.0,proxy",
        "--pxe-service=x86PC,Network boot,undionly.kpxe",
    )
    client = lab.host("client")

    result = _pxeclient(
        client,
        *("--arch", "0", "--vendor-class", BIOS_VENDOR_CLASS),
        *("--configure", "--boot-server-port", "4011"),
        logs=[site_log, proxy_log],
    )

    assert result["server_id"] == "10.77.0.2"
    assert result["offers_seen"] == 2
    proxy = result["proxy"]
    assert isinstance(proxy, dict)
    assert proxy["is_proxy"] is True
    assert proxy["server_id"] == "10.77.0.3"
    assert proxy["yiaddr"] == "0.0.0.0"
    assert proxy["vendor_class"] == "PXEClient"
    assert proxy["vendor_specific"]  # the PXE menu, option 43
    boot = result["boot_server"]
    assert isinstance(boot, dict)
    assert boot["message_type"] == "ack"
    assert boot["boot_file"] == "undionly.kpxe"
    assert boot["next_server"] == "10.77.0.3"
    fetched = _tftp_get(client, "10.77.0.3", "undionly.kpxe", tmp_path / "undionly.kpxe")
    assert fetched == UNDIONLY.read_bytes()


@needs_lab
def test_lab_network_leaves_nothing_behind_when_the_body_raises() -> None:
    ignore_term = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " print('ready', flush=True); time.sleep(600)"
    )
    pids: list[int] = []
    net = LabNetwork([HostSpec("a", IPv4Interface("10.78.0.1/24"))], grace=0.5)
    prefix = net.prefix
    with pytest.raises(RuntimeError, match="boom"), net:
        extra = net.add_host("b", address="10.78.0.2/24", mac="02:78:00:00:00:02")
        assert net.mac("b") == "02:78:00:00:00:02"
        assert set(net.namespaces()) == {f"{prefix}-sw", f"{prefix}-a", f"{prefix}-b"}
        assert sorted(_leftovers(prefix)) == sorted(net.namespaces())
        pids.append(net.host("a").popen(["sleep", "600"]).pid)
        stubborn = extra.popen([sys.executable, "-c", ignore_term], stdout=subprocess.PIPE)
        assert stubborn.stdout is not None
        assert stubborn.stdout.readline() == b"ready\n"  # SIGTERM is ignored from now on
        pids.append(stubborn.pid)
        assert sorted(net.pids()) == sorted(pids)
        extra.run(["ip", "link", "show", "eth0"])
        started_close = time.monotonic()
        raise RuntimeError("boom")

    assert time.monotonic() - started_close >= 0.5  # waited out the grace, then SIGKILL
    assert stubborn.returncode == -9
    assert _leftovers(prefix) == []
    assert [pid for pid in pids if _alive(pid)] == []
    net.close()  # idempotent


@needs_lab
def test_cleanup_removes_a_leaked_lab_and_its_processes() -> None:
    net = LabNetwork([HostSpec("a"), HostSpec("b")], grace=0.5)
    net.open()
    try:
        stray = Namespace(f"{net.prefix}-a").popen(["sleep", "600"])  # not tracked by the lab
        removed = cleanup(net.prefix, grace=0.5)
        assert sorted(removed) == sorted(net.namespaces())
        assert removed[-1] == f"{net.prefix}-sw"
        assert stray.wait(timeout=5) is not None
        assert _leftovers(net.prefix) == []
    finally:
        net.close()
    assert _leftovers(net.prefix) == []


@needs_lab
def test_pxe_client_refuses_the_host_network_namespace() -> None:
    with pytest.raises(PxeClientError, match="outside a lab network namespace"):
        require_lab_namespace()
