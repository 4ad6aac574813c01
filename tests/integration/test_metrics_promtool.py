"""/metrics of a whole appliance (serve.BootServices: one registry, DHCP, HTTP) after a
node's boot traffic, checked by Prometheus' own linter, ``promtool check metrics``.

No socket: DHCP datagrams go to the service's handler and HTTP through FastAPI's
in-process client. promtool comes from Debian's ``prometheus`` package.
"""

from __future__ import annotations

import shutil
import subprocess
from ipaddress import IPv4Address
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.dhcp import BOOTP, DHCP

from provisioner.boot.dhcp_codec import decode
from provisioner.config import Mode, parse_config, render_config
from provisioner.image.store import ImageStore
from provisioner.serve import BootServices
from tests.conftest import unavailable

# No tier marker: no root, no namespace; only promtool is needed.

MAC = "52:54:00:12:34:56"
PXE = [("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001"), (93, b"\x00\x00")]
KERNEL = bytes(range(256)) * (8 * 1024 * 4)  # 8 MiB: big enough for the throughput histogram


def dhcp(kind: str, *extra: tuple[str, object]) -> bytes:
    chaddr = bytes.fromhex(MAC.replace(":", "")) + b"\0" * 10
    options = [("message-type", kind), *PXE, *extra, "end"]
    return bytes(BOOTP(op=1, chaddr=chaddr, xid=9, flags=0x8000) / DHCP(options=options))


def boot_one_node(services: BootServices) -> TestClient:
    """DISCOVER, REQUEST, then the boot script, kernel and initrd over HTTP."""
    offer = services.dhcp.handle(dhcp("discover"), ("0.0.0.0", 68), 67)
    assert offer is not None
    ip = decode(offer[0]).yiaddr
    request = dhcp("request", ("requested_addr", str(ip)), ("server_id", "10.70.0.1"))
    assert services.dhcp.handle(request, ("0.0.0.0", 68), 67) is not None
    services.dhcp.handle(b"\x01junk", ("10.70.0.99", 68), 67)  # a drop, counted
    services.dhcp.flush()
    assert ip == IPv4Address("10.70.0.10")
    client = TestClient(services.app, client=(str(ip), 40000))
    script = client.get(f"/boot/{MAC}.ipxe")
    assert script.status_code == 200, script.text
    for name in ("vmlinuz", "initrd"):
        assert client.get(f"/images/discovery@1/{name}?mac={MAC}").status_code == 200
    assert client.get("/api/v1/nodes").status_code == 401  # a refusal, counted
    return client


def test_promtool_accepts_the_metrics_of_a_running_appliance(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("needs promtool (Debian's prometheus package; scripts/setup installs it)")
    cfg = parse_config(
        render_config(
            interface="eth0",
            address="10.70.0.1/24",
            mode=Mode.FULL,
            dhcp_range="10.70.0.10-10.70.0.20",
            state_dir=tmp_path / "state",
        )
    )
    services = BootServices(cfg)
    ImageStore(cfg.image_dir).publish_files("discovery", {"vmlinuz": KERNEL, "initrd": KERNEL})
    try:
        client = boot_one_node(services)
        response = client.get("/metrics")
    finally:
        services.registry.close()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    text = response.text

    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60
    )
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()
    assert checked.stdout.strip() == b"" and checked.stderr.strip() == b""  # no lint at all

    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert values[("provisioner_dhcp_packets_total", (("port", "67"),))] == 3
    assert values[("provisioner_dhcp_packets_total", (("port", "4011"),))] == 0
    assert values[("provisioner_dhcp_replies_total", (("type", "offer"),))] == 1
    assert values[("provisioner_dhcp_dropped_total", (("reason", "malformed"),))] == 1
    assert values[("provisioner_http_bytes_total", (("area", "images"),))] == 2 * len(KERNEL)
    assert values[("provisioner_http_refused_total", (("reason", "api-token"),))] == 1
    assert values[("provisioner_nodes", (("state", "new"),))] == 1
    throughput = "provisioner_http_file_throughput_bytes_per_second_count"
    assert values[(throughput, (("area", "images"),))] == 2
    for step in ("dhcp", "script", "kernel", "initrd"):
        assert values[("provisioner_boot_step_seconds_count", (("step", step),))] == 1, step
    assert values[("provisioner_boot_step_seconds_count", (("step", "tftp"),))] == 0
