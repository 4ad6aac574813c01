"""The boot service on a real (virtual) segment: namespaces joined by a bridge.

Proxy mode: Debian's dnsmasq is the site DHCP server (addresses only, no PXE options);
`provisioner serve` runs beside it; a scapy PXE client (what firmware does) gets its
address from dnsmasq and its boot file from us, then curl fetches iPXE over TFTP and the
node's script and kernel over HTTP. Full mode: no dnsmasq; the address comes from us and
its lease survives a restart of `serve`. Every namespace, bridge and process is removed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from provisioner.lab.lab_config import site_dhcp_argv
from provisioner.lab.netns import HostSpec, LabNetwork, Namespace
from tests.integration.conftest import Appliance, make_image, need, need_root, write_config

pytestmark = [pytest.mark.root, pytest.mark.netns]

SERVER = "10.77.0.1"
SITE = "10.77.0.2"
CLIENT_MAC = "02:77:00:00:00:42"
BIOS = ["--arch", "0", "--vendor-class", "PXEClient:Arch:00000:UNDI:002001"]
UEFI = ["--arch", "7", "--vendor-class", "PXEClient:Arch:00007:UNDI:003016"]
IPXE_DIR = Path("/usr/lib/ipxe")


def pxe(ns: Namespace, *args: str, timeout: float = 20) -> dict[str, object]:
    """Run the scripted PXE client in ``ns``; its JSON answer."""
    argv = [
        sys.executable,
        "-m",
        "provisioner.lab.pxeclient",
        "--iface",
        "eth0",
        "--mac",
        CLIENT_MAC,
        "--timeout",
        str(timeout),
        "--json",
        *args,
    ]
    done = ns.run(argv, check=False, timeout=timeout + 30)
    assert done.returncode == 0, f"pxeclient failed: {done.stdout}\n{done.stderr}"
    result = json.loads(done.stdout)
    assert isinstance(result, dict)
    return result


def curl(ns: Namespace, *args: str) -> subprocess.CompletedProcess[str]:
    return ns.run(["curl", "-s", "--max-time", "30", *args], check=False, timeout=60)


def send_garbage(ns: Namespace, target: str, port: int) -> None:
    code = (
        "import socket,os\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1)\n"
        f"for junk in (b'', b'\\x01', os.urandom(300), b'\\x01\\x01\\x06\\x00'+b'\\xff'*300):\n"
        f"    s.sendto(junk, ('{target}', {port}))\n"
    )
    ns.run([sys.executable, "-c", code])


def timeline_kinds(app: Appliance) -> list[str]:
    shown = json.loads(app.cli("node", "show", CLIENT_MAC, "--json").stdout)
    return [e["kind"] for e in shown["timeline"]]


@pytest.fixture
def segment(tmp_path: Path) -> Iterator[tuple[LabNetwork, Appliance]]:
    need_root()
    need("ip", "curl", "dnsmasq")
    if not (IPXE_DIR / "undionly.kpxe").is_file():
        pytest.skip("Debian's ipxe package is not installed")
    hosts = [
        HostSpec("prov", IPv4Interface(f"{SERVER}/24")),
        HostSpec("site", IPv4Interface(f"{SITE}/24")),
        HostSpec("client", None, CLIENT_MAC),
    ]
    with LabNetwork(hosts) as lab:
        state = tmp_path / "state"
        app = Appliance(
            config=tmp_path / "provisioner.toml",
            state=state,
            http_port=8080,
            tftp_port=69,
            dhcp_port=67,
            pxe_port=4011,
            host=SERVER,
            log=tmp_path / "serve.log",
            prefix=tuple(lab.host("prov").argv([])),
        )
        try:
            yield lab, app
        finally:
            app.stop()


def start_site_dhcp(lab: LabNetwork, tmp_path: Path) -> None:
    """dnsmasq as the site's DHCP server: addresses only, no PXE options at all."""
    argv = site_dhcp_argv("10.77.0.100", "10.77.0.150", tmp_path, ping=False)
    with open(tmp_path / "dnsmasq.log", "wb") as log:  # the child keeps its own copy
        lab.host("site").popen(argv, stderr=log)


def test_proxy_mode_beside_dnsmasq(segment: tuple[LabNetwork, Appliance], tmp_path: Path) -> None:
    lab, app = segment
    kernel = make_image(app.state)
    write_config(
        app.config,
        interface="eth0",
        address=f"{SERVER}/24",
        mode="proxy",
        state=app.state,
        http_port=app.http_port,
    )
    start_site_dhcp(lab, tmp_path)
    app.start()
    client = lab.host("client")

    # Firmware: address from the site server, boot file and next-server from us.
    first = pxe(client, *BIOS, "--configure", "--boot-server-port", "4011")
    address = IPv4Address(str(first["address"]))
    assert IPv4Address("10.77.0.100") <= address <= IPv4Address("10.77.0.150")
    assert first["server_id"] == SITE
    proxy = first["proxy"]
    assert isinstance(proxy, dict)
    assert proxy["yiaddr"] == "0.0.0.0" and proxy["vendor_class"] == "PXEClient"
    assert proxy["server_id"] == SERVER
    assert first["boot_file"] == "undionly.kpxe" and first["next_server"] == SERVER
    boot_server = first["boot_server"]
    assert isinstance(boot_server, dict) and boot_server["boot_file"] == "undionly.kpxe"

    # Garbage between two good exchanges: counted and dropped, serving goes on.
    send_garbage(client, "10.77.0.255", 67)
    send_garbage(client, SERVER, 4011)

    got = curl(
        client,
        f"tftp://{SERVER}/undionly.kpxe",
        "--tftp-blksize",
        "1468",
        "-o",
        str(tmp_path / "undionly"),
    )
    assert got.returncode == 0
    assert (tmp_path / "undionly").read_bytes() == (IPXE_DIR / "undionly.kpxe").read_bytes()

    # iPXE asks again: now the answer is its boot script's URL (the chainload loop ends).
    second = pxe(client, *BIOS, "--user-class", "iPXE")
    script_url = f"http://{SERVER}:8080/boot/{CLIENT_MAC}.ipxe"
    assert second["boot_file"] == script_url
    script = curl(client, script_url).stdout
    assert script.startswith("#!ipxe") and "kernel http://" in script
    kernel_url = f"http://{SERVER}:8080/images/discovery@1/vmlinuz?mac={CLIENT_MAC}"
    assert kernel_url in script
    got = curl(client, kernel_url, "-o", str(tmp_path / "k"))
    assert got.returncode == 0 and (tmp_path / "k").read_bytes() == kernel
    ranged = curl(client, kernel_url, "-r", "0-99", "-o", "/dev/null", "-w", "%{http_code}")
    assert ranged.stdout == "206"

    # Proxy mode: the address comes only from the node's token-checked report (none yet),
    # never from a DHCP packet or a script fetch.
    nodes = json.loads(app.cli("node", "list", "--json").stdout)
    assert [(n["mac"], n["firmware"], n["ip"], n["state"]) for n in nodes] == [
        (CLIENT_MAC, "bios", None, "new")
    ]
    kinds = timeline_kinds(app)
    for step in ("dhcp", "dhcp-reply", "tftp", "script", "http-file"):
        assert step in kinds, kinds
    assert kinds.index("tftp") < kinds.index("script") < kinds.index("http-file")
    metrics = curl(client, f"http://{SERVER}:8080/metrics").stdout
    assert 'provisioner_dhcp_dropped_total{reason="malformed"}' in metrics
    # dnsmasq's REQUEST is for the site server: we saw it and left it alone.
    assert 'provisioner_dhcp_dropped_total{reason="not-for-us"}' in metrics
    leases = json.loads(app.cli("node", "show", CLIENT_MAC, "--json").stdout)
    assert leases["firmware"] == "bios"


def test_full_mode_alone_and_the_lease_survives_a_restart(
    segment: tuple[LabNetwork, Appliance], tmp_path: Path
) -> None:
    lab, app = segment
    make_image(app.state)
    write_config(
        app.config,
        interface="eth0",
        address=f"{SERVER}/24",
        mode="full",
        state=app.state,
        http_port=app.http_port,
        dhcp_range="10.77.0.200-10.77.0.220",
    )
    app.start()
    client = lab.host("client")

    first = pxe(client, *UEFI)
    assert first["server_id"] == SERVER and first["proxy"] is None
    assert first["address"] == "10.77.0.200" and first["prefix"] == 24
    assert first["boot_file"] == "ipxe.efi" and first["next_server"] == SERVER
    assert isinstance(first["lease_time"], int) and first["lease_time"] == 3600

    app.stop()
    app.start()
    again = pxe(client, *UEFI, "--configure")
    assert again["address"] == "10.77.0.200"  # the registry remembered the lease

    got = curl(client, f"tftp://{SERVER}/ipxe.efi", "-o", str(tmp_path / "ipxe.efi"))
    assert got.returncode == 0
    assert (tmp_path / "ipxe.efi").read_bytes() == (IPXE_DIR / "ipxe.efi").read_bytes()
    ipxe = pxe(client, *UEFI, "--user-class", "iPXE")
    assert ipxe["address"] == "10.77.0.200"
    assert ipxe["boot_file"] == f"http://{SERVER}:8080/boot/{CLIENT_MAC}.ipxe"

    nodes = json.loads(app.cli("node", "list", "--json").stdout)
    assert [(n["mac"], n["firmware"], n["ip"]) for n in nodes] == [
        (CLIENT_MAC, "uefi", "10.77.0.200")
    ]
    kinds = timeline_kinds(app)
    assert kinds.count("dhcp-reply") >= 6 and "tftp" in kinds


RS_PROBE = """
import select, socket, struct, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
idx = socket.if_nametoindex("eth0")
for _ in range(20):
    try:  # until the link-local address has passed duplicate address detection
        s.sendto(bytes((133, 0, 0, 0, 0, 0, 0, 0)), ("ff02::2", 0, 0, idx))
    except OSError:
        select.select([], [], [], 0.5)
        continue
    if select.select([s], [], [], 0.5)[0]:
        data, src = s.recvfrom(1500)
        if data[0] == 134:
            print(data.hex())
            sys.exit(0)
sys.exit(1)
"""


def test_full_mode_answers_router_solicitations(segment: tuple[LabNetwork, Appliance]) -> None:
    """iPXE waits ~12 s for IPv6 autoconf unless an RA arrives: we send one, lifetime 0."""
    lab, app = segment
    for name in ("prov", "client"):
        lab.host(name).run(["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0"])
    write_config(
        app.config,
        interface="eth0",
        address=f"{SERVER}/24",
        mode="full",
        state=app.state,
        http_port=app.http_port,
        dhcp_range="10.77.0.200-10.77.0.220",
    )
    app.start()
    probe = lab.host("client").run([sys.executable, "-c", RS_PROBE], check=False, timeout=60)
    assert probe.returncode == 0, probe.stderr
    ra = bytes.fromhex(probe.stdout.strip())
    assert ra[0] == 134 and ra[5] == 0 and ra[6:8] == b"\x00\x00"  # no M/O flags, lifetime 0
    assert ra[16:18] == b"\x01\x01" and ra[18:24] == bytes.fromhex(lab.mac("prov").replace(":", ""))
