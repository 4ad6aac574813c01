"""The HTTP app through FastAPI's in-process client (no socket); the real-socket path is
covered by the integration tests with curl."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST

from provisioner.boot.http import BODY_RULES, create_app
from provisioner.boot.http_context import AppContext
from provisioner.boot.ipxe import ScriptRenderer
from provisioner.boot.limits import MAX_JSON_DEPTH
from provisioner.boot.routes_boot import MAX_INVENTORY_BYTES
from provisioner.clusters.keys import secret
from provisioner.config import DEFAULT_HWPROFILES, Mode, parse_config, render_config
from provisioner.discovery import schema
from provisioner.discovery.model import SCHEMA, Inventory
from provisioner.enroll.matching import Enroller
from provisioner.image.store import ImageStore
from provisioner.metrics import Metrics
from provisioner.records import Cluster, EventKind, LeaseKind
from provisioner.registry import Registry
from provisioner.states import NodeEvent, NodeState

MAC = "52:54:00:aa:bb:01"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "agent"
API_TOKEN = "test-api-token-0123456789"
API = {"Authorization": f"Bearer {API_TOKEN}"}  # reads need it too (open_reads = false)


@pytest.fixture
def ctx(tmp_path: Path) -> AppContext:
    text = render_config(
        interface="eth0",
        address="10.20.0.1/24",
        mode=Mode.FULL,
        dhcp_range="10.20.0.100-10.20.0.120",
        state_dir=tmp_path,
    )
    cfg = parse_config(text)
    cfg.image_dir.mkdir(parents=True)
    cfg.tftp_root.mkdir(parents=True)
    (cfg.tftp_root / "ipxe.efi").write_bytes(b"EFI" * 100)
    registry = Registry(cfg.registry_path)
    # MAC took a lease from us (full mode): the client's address may ask for its script.
    registry.commit_lease(MAC, IPv4Address("10.20.0.100"), time.time() + 3600, LeaseKind.BOUND)
    return AppContext(cfg, registry, API_TOKEN, Metrics(), ScriptRenderer())


@pytest.fixture
def client(ctx: AppContext) -> TestClient:
    return TestClient(create_app(ctx), client=("10.20.0.100", 40000))


def build_discovery(ctx: AppContext, size: int = 4096) -> bytes:
    kernel = bytes(range(256)) * (size // 256)
    ImageStore(ctx.config.image_dir).publish_files(
        "discovery", {"vmlinuz": kernel, "initrd": b"initrd"}
    )
    return kernel


def test_unknown_node_without_image_is_told_to_wait(client: TestClient, ctx: AppContext) -> None:
    r = client.get(f"/boot/{MAC}.ipxe")
    assert r.status_code == 200
    assert r.text.startswith("#!ipxe")
    assert "not in the image store" in r.text
    assert f"chain --replace --autofree http://10.20.0.1:8080/boot/{MAC}.ipxe" in r.text
    node = ctx.registry.node(MAC)
    assert node is not None and node.state is NodeState.NEW and node.ip == "10.20.0.100"


def test_discovery_script_carries_kernel_initrd_and_a_fresh_token(
    client: TestClient, ctx: AppContext
) -> None:
    build_discovery(ctx)
    r = client.get(f"/boot/{MAC.upper().replace(':', '-')}.ipxe")
    kernel = re.search(r"^kernel (\S+) (.*)$", r.text, re.M)
    assert kernel is not None, r.text
    assert kernel.group(1) == f"http://10.20.0.1:8080/images/discovery@1/vmlinuz?mac={MAC}"
    assert "initrd=initrd" in kernel.group(2)
    assert "console=ttyS0,115200n8" in kernel.group(2)
    assert f"provisioner.mac={MAC}" in kernel.group(2)
    token = re.search(r"provisioner\.token=(\S+)", r.text)
    assert token is not None and ctx.registry.check_boot_token(MAC, token.group(1))
    assert (
        f"initrd --name initrd http://10.20.0.1:8080/images/discovery@1/initrd?mac={MAC}" in r.text
    )
    second = client.get(f"/boot/{MAC}.ipxe").text
    assert re.search(r"provisioner\.token=(\S+)", second).group(1) != token.group(1)  # type: ignore[union-attr]
    assert not ctx.registry.check_boot_token(MAC, token.group(1))


def test_local_node_boots_from_disk(client: TestClient, ctx: AppContext) -> None:
    build_discovery(ctx)
    ctx.registry.touch_node(MAC)
    ctx.registry.store_inventory(MAC, "{}")
    ctx.registry.transition(MAC, NodeEvent.BOOT_LOCAL)
    r = client.get(f"/boot/{MAC}.ipxe")
    assert "\nexit\n" in r.text and "kernel" not in r.text


def test_bad_mac_is_404(client: TestClient) -> None:
    assert client.get("/boot/not-a-mac.ipxe").status_code == 404
    assert client.get(f"/boot/{MAC}.txt").status_code == 404


def test_images_have_length_and_ranges_and_land_on_the_timeline(
    client: TestClient, ctx: AppContext
) -> None:
    kernel = build_discovery(ctx, 8192)
    ctx.registry.touch_node(MAC, ip="10.20.0.100")  # the 2nd fetch is known by address only
    r = client.get(f"/images/discovery/vmlinuz?mac={MAC}")
    assert r.status_code == 200 and r.content == kernel
    assert r.headers["content-length"] == "8192"
    assert r.headers["accept-ranges"] == "bytes"
    r = client.get("/images/discovery/vmlinuz", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206
    assert r.content == kernel[100:200]
    assert r.headers["content-range"] == "bytes 100-199/8192"
    head = client.head("/images/discovery/vmlinuz")
    assert head.status_code == 200 and head.headers["content-length"] == "8192"
    files = [e for e in ctx.registry.events(MAC) if e.kind is EventKind.HTTP_FILE]
    assert [e.detail["file"] for e in files] == ["discovery/vmlinuz", "discovery/vmlinuz"]
    assert files[1].detail["range"] == "bytes=100-199"


def test_tftp_root_over_http_for_uefi_http_boot(client: TestClient) -> None:
    r = client.get("/tftp/ipxe.efi")
    assert r.status_code == 200 and r.content == b"EFI" * 100


@pytest.mark.parametrize(
    "path",
    [
        "/images/../registry.sqlite3",
        "/images/%2e%2e/api-token",
        "/tftp/..%2fapi-token",
        "/images/discovery/nope",
        "/images/discovery",
    ],
)
def test_paths_outside_the_roots_are_not_served(
    client: TestClient, ctx: AppContext, path: str
) -> None:
    build_discovery(ctx)
    r = client.get(path)
    assert r.status_code == 404
    assert API_TOKEN not in r.text


def test_inventory_needs_the_boot_token(client: TestClient, ctx: AppContext) -> None:
    build_discovery(ctx)
    script = client.get(f"/boot/{MAC}.ipxe").text
    token = re.search(r"provisioner\.token=(\S+)", script).group(1)  # type: ignore[union-attr]
    url = f"/api/v1/nodes/{MAC}/inventory"
    assert client.post(url, json={"cpu": "x"}).status_code == 401
    assert (
        client.post(url, json={"cpu": "x"}, headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )
    assert (
        client.post(
            url, json={"cpu": "x"}, headers={"Authorization": f"Bearer {API_TOKEN}"}
        ).status_code
        == 401
    )
    assert ctx.registry.inventory_document(MAC) is None
    node = ctx.registry.node(MAC)
    assert node is not None and node.state is NodeState.NEW
    auth = {"Authorization": f"Bearer {token}"}
    assert client.post(url, content=b"not json", headers=auth).status_code == 422
    assert client.post(url, json=[1, 2], headers=auth).status_code == 422
    wrong = client.post(url, json={"schema": SCHEMA, "pci": [{"vendor": "XYZ"}]}, headers=auth)
    assert wrong.status_code == 422 and "pci/0/vendor" in wrong.json()["detail"]
    assert client.post(url, json={"cpu": "x"}, headers=auth).status_code == 422
    assert ctx.registry.inventory_document(MAC) is None  # refused: nothing changed
    good = {"schema": SCHEMA, "firmware": "uefi", "pci": [{"vendor": "10de", "device": "1b38"}]}
    r = client.post(url, json=good, headers=auth)
    assert r.status_code == 202
    assert r.json() == {"mac": MAC, "state": "discovered", "next": "stay"}
    shown = client.get(f"/api/v1/nodes/{MAC}", headers=API).json()
    assert shown["state"] == "discovered"
    assert shown["inventory"]["inventory"]["pci"][0]["device"] == "1b38"
    kinds = [e["kind"] for e in shown["timeline"]]
    assert kinds[:1] == ["script"] and "refused" in kinds and kinds[-2:] == ["inventory", "state"]


def test_api_writes_need_the_api_token_and_change_nothing_without_it(
    client: TestClient, ctx: AppContext
) -> None:
    ctx.registry.touch_node(MAC)
    ctx.registry.store_inventory(MAC, "{}")
    assert client.patch(f"/api/v1/nodes/{MAC}", json={"hostname": "node0"}).status_code == 401
    assert client.delete(f"/api/v1/nodes/{MAC}").status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert (
        client.patch(f"/api/v1/nodes/{MAC}", json={"boot": "local"}, headers=bad).status_code == 401
    )
    node = ctx.registry.node(MAC)
    assert node is not None and node.hostname is None and node.state is NodeState.DISCOVERED
    good = {"Authorization": f"Bearer {API_TOKEN}"}
    r = client.patch(
        f"/api/v1/nodes/{MAC}", json={"hostname": "node0", "boot": "local"}, headers=good
    )
    assert r.status_code == 200 and r.json()["hostname"] == "node0" and r.json()["state"] == "local"
    assert client.get("/api/v1/nodes/node0", headers=API).json()["mac"] == MAC
    r = client.patch(f"/api/v1/nodes/{MAC}", json={"boot": "sideways"}, headers=good)
    assert r.status_code == 422
    assert client.delete("/api/v1/nodes/node0", headers=good).status_code == 204
    assert client.get("/api/v1/nodes", headers=API).json() == []


def test_api_writes_follow_the_cli_rules_for_names_members_and_host_keys(
    client: TestClient, ctx: AppContext
) -> None:
    from provisioner.hostkeys import ensure_host_key, issued_public_key
    from provisioner.profiles import Engine
    from provisioner.records import Cluster

    other = "52:54:00:aa:bb:02"
    for mac, name in ((MAC, "node0"), (other, "node1")):
        ctx.registry.touch_node(mac)
        ctx.registry.set_hostname(mac, name)
    good = {"Authorization": f"Bearer {API_TOKEN}"}
    r = client.patch(f"/api/v1/nodes/{MAC}", json={"hostname": "node1"}, headers=good)
    assert r.status_code == 409 and "taken" in r.json()["detail"]  # another node's name
    r = client.patch(f"/api/v1/nodes/{MAC}", json={"hostname": "bad name!"}, headers=good)
    assert r.status_code == 422
    ctx.registry.save_cluster("c1", Cluster("c1", Engine.LLAMA_RPC, "m", "node0").to_json())
    r = client.patch(f"/api/v1/nodes/{MAC}", json={"hostname": "node9"}, headers=good)
    assert r.status_code == 409 and "cluster c1" in r.json()["detail"]
    assert client.delete("/api/v1/nodes/node0", headers=good).status_code == 409
    # A removed node's host key goes with it: if it comes back, it gets a new one.
    ensure_host_key(ctx.config.state_dir, other, "node1")
    assert client.delete("/api/v1/nodes/node1", headers=good).status_code == 204
    assert issued_public_key(ctx.config.state_dir, other) is None


def test_illegal_state_change_is_409(client: TestClient, ctx: AppContext) -> None:
    ctx.registry.touch_node(MAC)
    good = {"Authorization": f"Bearer {API_TOKEN}"}
    r = client.patch(f"/api/v1/nodes/{MAC}", json={"boot": "local"}, headers=good)
    assert r.status_code == 409 and "cannot take" in r.json()["detail"]


def test_metrics_count_refusals_and_nodes(client: TestClient, ctx: AppContext) -> None:
    ctx.registry.touch_node(MAC)
    client.delete(f"/api/v1/nodes/{MAC}")
    text = client.get("/metrics").text
    assert 'provisioner_http_refused_total{reason="api-token"} 1.0' in text
    assert "# TYPE provisioner_http_refused_total counter" in text


def test_agent_text_report_is_parsed_and_kept(client: TestClient, ctx: AppContext) -> None:
    build_discovery(ctx)
    script = client.get(f"/boot/{MAC}.ipxe").text
    token = re.search(r"provisioner\.token=(\S+)", script).group(1)  # type: ignore[union-attr]
    report = (FIXTURES / "qemu-q35-uefi.txt").read_text()
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain; charset=utf-8"}
    url = f"/api/v1/nodes/{MAC}/inventory"
    bad = client.post(url, content=b"hello", headers=auth)
    assert bad.status_code == 422 and "not an agent report" in bad.json()["detail"]
    r = client.post(url, content=report.encode(), headers=auth)
    assert r.status_code == 202
    kept = client.get(f"/api/v1/nodes/{MAC}", headers=API).json()["inventory"]
    assert kept["format"] == "agent/1" and kept["raw"] == report
    assert kept["inventory"]["firmware"] == "uefi"
    assert {d["vendor"] for d in kept["inventory"]["pci"]} >= {"1af4", "8086"}


# ------------------------------------------------------------- enrolled nodes and keys


def enroll(ctx: AppContext, profile: str, *, memory: int | None = 8 << 30) -> None:
    """Put MAC in the enrolled state with ``profile`` and an inventory with ``memory``."""
    ctx.registry.touch_node(MAC, ip="10.20.0.100")
    document = {"format": "json", "inventory": schema.to_json(Inventory(memory_bytes=memory))}
    ctx.registry.store_inventory(MAC, json.dumps(document))
    ctx.registry.transition(MAC, NodeEvent.INVENTORY)
    ctx.registry.set_profile(MAC, profile)
    ctx.registry.transition(MAC, NodeEvent.MATCH)
    ctx.registry.transition(MAC, NodeEvent.ENROLL)


def publish_rootfs(ctx: AppContext, name: str = "debian-trixie", root: bytes = b"R") -> None:
    files = {"vmlinuz": b"K" * 1000, "initrd": b"I" * 1000, "root.squashfs": root}
    ImageStore(ctx.config.image_dir).publish_files(name, files)


def kernel_line(text: str) -> str:
    line = re.search(r"^kernel .*$", text, re.M)
    assert line is not None, text
    return line.group(0)


def test_an_enrolled_node_boots_one_version_of_its_image_with_a_live_root(
    client: TestClient, ctx: AppContext
) -> None:
    publish_rootfs(ctx)
    enroll(ctx, "qemu-lab")
    base = "http://10.20.0.1:8080/images/debian-trixie@1"
    kernel = kernel_line(client.get(f"/boot/{MAC}.ipxe").text)
    assert kernel.startswith(f"kernel {base}/vmlinuz?mac={MAC} initrd=initrd ")
    # live-boot picks the mount type from the URL's suffix: it must end in .squashfs.
    assert f" boot=live fetch={base}/root.squashfs " in kernel
    assert "provisioner.token=" in kernel
    node = ctx.registry.node(MAC)
    assert node is not None and node.image == "debian-trixie@1"
    # A newer build: the next boot names the new version, every file of it.
    publish_rootfs(ctx, root=b"R2")
    script = client.get(f"/boot/{MAC}.ipxe").text
    assert "debian-trixie@2/vmlinuz" in script and "debian-trixie@2/initrd" in script
    assert "debian-trixie@2/root.squashfs" in script and "@1" not in script
    # The registry's choice for the profile wins, and may pin a version.
    ctx.registry.set_profile_image("qemu-lab", "debian-trixie@1")
    assert "debian-trixie@1/root.squashfs" in client.get(f"/boot/{MAC}.ipxe").text


def test_the_profile_adds_its_kernel_args(client: TestClient, ctx: AppContext) -> None:
    ctx.enroller = Enroller(ctx.registry, DEFAULT_HWPROFILES, "node{n}")
    arc = ctx.enroller.profiles.get("intel-arc-a770")
    assert arc is not None and arc.kernel_args and arc.image == "debian-trixie-intel-arc"
    publish_rootfs(ctx, arc.image)
    enroll(ctx, "intel-arc-a770")
    kernel = kernel_line(client.get(f"/boot/{MAC}.ipxe").text)
    for arg in arc.kernel_args:
        assert f" {arg} " in kernel


def test_a_node_without_the_ram_for_the_root_is_refused_with_the_reason(
    client: TestClient, ctx: AppContext
) -> None:
    publish_rootfs(ctx, root=b"R" * (1 << 20))
    enroll(ctx, "qemu-lab", memory=256 << 20)
    script = client.get(f"/boot/{MAC}.ipxe").text
    assert "\nkernel " not in script
    assert "cannot boot debian-trixie@1: the node has 256 MiB of RAM" in script
    assert f"chain --replace --autofree http://10.20.0.1:8080/boot/{MAC}.ipxe" in script
    refused = [e for e in ctx.registry.events(MAC) if e.kind is EventKind.REFUSED]
    assert refused and "256 MiB of RAM" in str(refused[-1].detail["why"])


def test_an_enrolled_node_whose_image_is_not_built_waits(
    client: TestClient, ctx: AppContext
) -> None:
    enroll(ctx, "qemu-lab")
    script = client.get(f"/boot/{MAC}.ipxe").text
    assert "debian-trixie image is not in the image store" in script


def test_authorized_keys_need_this_boots_token(client: TestClient, ctx: AppContext) -> None:
    ctx.authorized_keys = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample provisioner@test"
    build_discovery(ctx)
    script = client.get(f"/boot/{MAC}.ipxe").text
    token = re.search(r"provisioner\.token=(\S+)", script)
    assert token is not None
    url = f"/api/v1/nodes/{MAC}/authorized_keys"
    r = client.get(url, headers={"Authorization": f"Bearer {token.group(1)}"})
    assert r.status_code == 200 and r.text == ctx.authorized_keys + "\n"
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    kinds = [e.kind for e in ctx.registry.events(MAC)]
    assert EventKind.KEYS in kinds and EventKind.REFUSED in kinds
    assert API_TOKEN not in r.text


@pytest.mark.parametrize(
    ("built", "memtotal_kb", "expected"),
    [
        (True, 4_000_000, "reboot"),
        (False, 4_000_000, "stay"),  # its image is not built: stay in discovery
        (True, None, "stay"),  # the lab VM's 512 MiB cannot hold a root in RAM
    ],
)
def test_a_node_enrolled_by_its_report_reboots_only_into_an_image_it_can_run(
    client: TestClient, ctx: AppContext, built: bool, memtotal_kb: int | None, expected: str
) -> None:
    ctx.enroller = Enroller(ctx.registry, DEFAULT_HWPROFILES, "node{n}")
    build_discovery(ctx)
    if built:
        publish_rootfs(ctx, root=b"R" * (64 << 20))
    ctx.registry.touch_node(MAC)
    ctx.registry.transition(MAC, NodeEvent.POWER_CYCLE)  # enroll --power-cycle
    script = client.get(f"/boot/{MAC}.ipxe").text
    assert "discovery@1/vmlinuz" in script  # an enrolling node boots discovery first
    token = re.search(r"provisioner\.token=(\S+)", script)
    assert token is not None
    report = (FIXTURES / "lab-qemu-q35-bios.txt").read_text()
    if memtotal_kb is not None:
        report = re.sub(r"MemTotal:\s+\d+ kB", f"MemTotal: {memtotal_kb} kB", report)
    r = client.post(
        f"/api/v1/nodes/{MAC}/inventory",
        content=report.encode(),
        headers={"Authorization": f"Bearer {token.group(1)}", "Content-Type": "text/plain"},
    )
    assert r.status_code == 202
    assert r.json() == {"mac": MAC, "state": "enrolled", "next": expected}
    if expected != "reboot":
        return
    # The image's own report later: already enrolled, nothing more to do.
    again = client.get(f"/boot/{MAC}.ipxe").text
    assert "boot=live fetch=" in again
    token = re.search(r"provisioner\.token=(\S+)", again)
    assert token is not None
    r = client.post(
        f"/api/v1/nodes/{MAC}/inventory",
        content=report.encode(),
        headers={"Authorization": f"Bearer {token.group(1)}", "Content-Type": "text/plain"},
    )
    assert r.json() == {"mac": MAC, "state": "enrolled", "next": "stay"}


def test_a_serving_node_that_rebooted_reports_from_its_image_and_stays(
    client: TestClient, ctx: AppContext
) -> None:
    ctx.enroller = Enroller(ctx.registry, DEFAULT_HWPROFILES, "node{n}")
    publish_rootfs(ctx)
    enroll(ctx, "qemu-lab")
    ctx.registry.transition(MAC, NodeEvent.SMOKE_PASS)
    script = client.get(f"/boot/{MAC}.ipxe").text
    assert "boot=live fetch=" in script  # serving nodes boot their image
    token = re.search(r"provisioner\.token=(\S+)", script)
    assert token is not None
    report = (FIXTURES / "lab-qemu-q35-bios.txt").read_bytes()
    r = client.post(
        f"/api/v1/nodes/{MAC}/inventory",
        content=report,
        headers={"Authorization": f"Bearer {token.group(1)}", "Content-Type": "text/plain"},
    )
    # a fresh root: enrolled again (post-install runs again), and no reboot loop
    assert r.json() == {"mac": MAC, "state": "enrolled", "next": "stay"}


def test_a_script_asked_for_on_a_nodes_behalf_is_taken_from_the_appliance_only(
    client: TestClient, ctx: AppContext
) -> None:
    build_discovery(ctx)
    ctx.registry.touch_node(MAC, ip="10.20.0.105")
    behalf = {"X-Provisioner-On-Behalf": "lab"}
    elsewhere = client.get(f"/boot/{MAC}.ipxe", headers=behalf)
    assert elsewhere.status_code == 403 and "provisioner.token" not in elsewhere.text
    lab = TestClient(create_app(ctx), client=("10.20.0.1", 40000))  # the appliance itself
    r = lab.get(f"/boot/{MAC}.ipxe", headers=behalf)
    assert r.status_code == 200 and "provisioner.token=" in r.text
    node = ctx.registry.node(MAC)
    assert node is not None and node.ip == "10.20.0.105"  # it says nothing of the address
    client.get(f"/boot/{MAC}.ipxe")  # iPXE itself, from its lease's address: the node's
    node = ctx.registry.node(MAC)
    assert node is not None and node.ip == "10.20.0.100"


def test_a_wheelhouse_index_is_served_as_a_page(client: TestClient, ctx: AppContext) -> None:
    """pip's --find-links skips an index page that is not text/html (seen on a node)."""
    folder = ctx.config.state_dir / "artifacts" / "vllm-0.32.0-cpu-cp311"
    folder.mkdir(parents=True)
    (folder / "index.html").write_text('<a href="x-1.0-py3-none-any.whl">x</a>\n')
    (folder / "requirements.txt").write_text("x==1.0 --hash=sha256:00\n")
    (folder / "x-1.0-py3-none-any.whl").write_bytes(b"PK")
    base = "/artifacts/vllm-0.32.0-cpu-cp311"
    assert client.get(f"{base}/index.html").headers["content-type"].startswith("text/html")
    assert client.get(f"{base}/requirements.txt").headers["content-type"].startswith("text/plain")
    wheel = client.get(f"{base}/x-1.0-py3-none-any.whl")
    assert wheel.headers["content-type"] == "application/octet-stream" and wheel.content == b"PK"


# Every route of create_app, asked by a caller with no token, no node and no files: one
# row per route (its module in the comment), so a route lost or moved in front of another
# of the same path shows here. 405 rows pin which route of a path answers first.
ROUTES = [
    ("GET", f"/boot/{MAC}.ipxe", 200),  # routes_boot
    ("GET", "/boot/not-a-mac.ipxe", 404),
    ("POST", f"/api/v1/nodes/{MAC}/inventory", 401),
    ("GET", f"/api/v1/nodes/{MAC}/authorized_keys", 401),
    ("GET", f"/api/v1/nodes/{MAC}/inventory", 405),
    ("GET", "/images/discovery/vmlinuz", 404),  # routes_files
    ("HEAD", "/images/discovery/vmlinuz", 404),
    ("GET", "/artifacts/llama.cpp.tar", 404),
    ("GET", "/models/m.gguf", 404),
    ("GET", "/tftp/ipxe.efi", 200),
    ("HEAD", "/tftp/ipxe.efi", 200),
    ("POST", "/tftp/ipxe.efi", 405),
    ("GET", "/api/v1/nodes", 401),  # routes_api
    ("GET", f"/api/v1/nodes/{MAC}", 401),
    ("PATCH", f"/api/v1/nodes/{MAC}", 401),
    ("DELETE", f"/api/v1/nodes/{MAC}", 401),
    ("POST", f"/api/v1/nodes/{MAC}", 405),
    ("POST", "/api/v1/profiles/reload", 401),
    ("GET", "/api/v1/profiles/reload", 405),
    ("GET", "/clusters/small/v1/models", 404),  # gateway
    ("POST", "/clusters/small/v1/chat/completions", 404),
    ("GET", "/metrics", 200),  # routes_metrics
    ("GET", "/healthz", 200),
    ("GET", "/api/docs", 401),  # http.py: the API's description reads like the API
    ("GET", "/openapi.json", 401),
    ("GET", "/nowhere", 404),
]


@pytest.mark.parametrize(("method", "path", "status"), ROUTES)
def test_every_route_answers_a_caller_without_tokens(
    client: TestClient, method: str, path: str, status: int
) -> None:
    r = client.request(method, path, json={} if method in ("PATCH", "POST") else None)
    assert r.status_code == status
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"


def test_a_wrong_method_is_told_which_one_the_first_route_of_the_path_takes(
    client: TestClient,
) -> None:
    assert client.post(f"/api/v1/nodes/{MAC}").headers["allow"] == "GET"
    assert client.get("/api/v1/profiles/reload").headers["allow"] == "POST"


def test_health_and_metrics_say_what_they_are(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"ok": True, "mode": "full"}
    metrics = client.get("/metrics").headers["content-type"]
    assert metrics == CONTENT_TYPE_LATEST and metrics.startswith("text/plain; version=")


# ------------------------------------------------------------- who may read, how much is read

READS = ["/api/v1/nodes", f"/api/v1/nodes/{MAC}", "/api/docs", "/openapi.json"]


@pytest.mark.parametrize("path", READS)
def test_reads_need_the_api_token_unless_open_reads(
    client: TestClient, ctx: AppContext, path: str
) -> None:
    ctx.registry.touch_node(MAC)
    refused = client.get(path)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert MAC not in refused.text
    for wrong in (b"Bearer wrong", b"Bearer \xff\xfe", API_TOKEN.encode()):
        assert client.get(path, headers={"Authorization": wrong}).status_code == 401
    assert client.get(path, headers=API).status_code == 200
    ctx.config = replace(ctx.config, http=replace(ctx.config.http, open_reads=True))
    assert client.get(path).status_code == 200
    metrics = client.get("/metrics").text
    assert 'provisioner_http_refused_total{reason="api-token"} 4.0' in metrics


def test_metrics_are_open_unless_open_metrics_is_false(client: TestClient, ctx: AppContext) -> None:
    assert client.get("/metrics").status_code == 200
    ctx.config = replace(ctx.config, http=replace(ctx.config.http, open_metrics=False))
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=API).status_code == 200
    assert client.get("/healthz").status_code == 200  # never asks


BIG = {"Content-Length": str(300 * 1000 * 1000)}  # declared only: refused before reading


def test_bodies_are_held_to_their_routes_limits_before_they_are_read(
    client: TestClient, ctx: AppContext
) -> None:
    ctx.registry.touch_node(MAC)
    node_url, inventory = f"/api/v1/nodes/{MAC}", f"/api/v1/nodes/{MAC}/inventory"
    r = client.patch(node_url, content=b"{}", headers=BIG)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.patch(node_url, content=b"{}", headers={**BIG, **API}).status_code == 413
    assert client.post(inventory, content=b"{}", headers=BIG).status_code == 401
    boot = {"Authorization": "Bearer not-checked-before-the-size"}
    r = client.post(inventory, content=b"{}", headers={**BIG, **boot})
    assert r.status_code == 413
    assert r.json()["detail"] == f"the request body is over {MAX_INVENTORY_BYTES} bytes"
    r = client.post("/clusters/small/v1/chat/completions", content=b"{}", headers=BIG)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = client.post(f"/boot/{MAC}.ipxe", content=b"x", headers={"Content-Length": "65537"})
    assert r.status_code == 413
    metrics = client.get("/metrics").text
    assert 'provisioner_http_refused_total{reason="body-size"} 4.0' in metrics
    assert 'provisioner_http_refused_total{reason="bearer"} 1.0' in metrics
    node = ctx.registry.node(MAC)
    assert node is not None and node.hostname is None and node.state is NodeState.NEW


def test_the_inventory_limit_is_the_routes_own() -> None:
    rule = next(r for r in BODY_RULES if r.name == "inventory")
    assert rule.limit == MAX_INVENTORY_BYTES


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_json_nested_too_deep_is_a_400_on_every_json_route(
    client: TestClient, ctx: AppContext
) -> None:
    """100,000 deep killed json.loads with a RecursionError: a 500 from the inventory."""
    build_discovery(ctx)
    token = re.search(r"provisioner\.token=(\S+)", client.get(f"/boot/{MAC}.ipxe").text)
    assert token is not None
    boot = {"Authorization": f"Bearer {token.group(1)}"}
    ctx.registry.set_hostname(MAC, "node0")
    cluster = Cluster("small", "llama-rpc", "smollm2", "node0", (), gateway=True)
    ctx.registry.save_cluster("small", cluster.to_json())
    gateway_key = {"Authorization": f"Bearer {secret(ctx.config.state_dir, 'small', 'gateway')}"}
    calls = [
        ("POST", f"/api/v1/nodes/{MAC}/inventory", boot, 100_000),
        ("POST", "/clusters/small/v1/chat/completions", gateway_key, 100_000),
        ("PATCH", f"/api/v1/nodes/{MAC}", API, 30_000),  # a write's 64 KiB
    ]
    for method, path, headers, depth in calls:
        r = client.request(method, path, content=nested(depth), headers=headers)
        assert r.status_code == 400, (path, r.text)
    assert r.json()["detail"] == f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels"
    assert 'reason="json-depth"} 3.0' in client.get("/metrics").text


@pytest.mark.parametrize(
    "path", ["/tftp/" + "a" * 256, "/images/" + "b" * 300, "/models/x/" + "é" * 128]
)
def test_a_file_name_over_255_bytes_is_a_404(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404
