"""Links 1 and 2 of the boot chain, played from the attacker's seat (``atk``).

A real `provisioner serve` on a segment of namespaces (tests/security/conftest.py): the
node PXE-boots through it (the scripted PXE client), fetches its script and reports as
its agent would (curl); the attacker, another machine on the cluster network, tries to
move the node's address (a boot-script fetch, a spoofed DHCP packet), to take a boot
token, to report with a stolen or an old token, and an enrolled node's new host keys
wait for `node approve`. Every attempt is refused and the node's record is unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from provisioner.config import DEFAULT_IMAGE
from provisioner.image.store import ImageStore
from provisioner.lab.netns import Namespace
from tests.integration.conftest import write_config
from tests.security.conftest import ATTACKER, HTTP_PORT, NODE_MAC, SERVER, Segment

pytestmark = [pytest.mark.root, pytest.mark.netns]

BIOS = ["--arch", "0", "--vendor-class", "PXEClient:Arch:00000:UNDI:002001"]
AGENT = Path(__file__).resolve().parents[1] / "fixtures" / "agent"
NODE_PROXY_ADDRESS = "10.79.0.20"  # proxy mode: what the site's DHCP server gave the node
SITE_SERVER = "10.79.0.2"  # proxy mode: the site's DHCP server (never answers here)

# A DHCP packet as PXE firmware sends it, from any MAC: run in a namespace with scapy.
SPOOF = """
import sys
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.sendrecv import sendp
mac, kind, requested, server = sys.argv[1:5]
chaddr = bytes.fromhex(mac.replace(":", "")) + bytes(10)
options = [("message-type", kind), ("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001"),
           (93, b"\\x00\\x00"), ("requested_addr", requested)]
if server != "-":
    options.append(("server_id", server))
frame = (Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
         / UDP(sport=68, dport=67) / BOOTP(op=1, chaddr=chaddr, xid=0x5107, flags=0x8000)
         / DHCP(options=[*options, "end"]))
sendp(frame, iface="eth0", verbose=False)
"""


def host_key(seed: int) -> tuple[str, str]:
    """An ed25519 public key line (type and base64) and its SHA256 fingerprint."""
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(seed, seed + 32))
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"ssh-ed25519 {base64.b64encode(blob).decode()}", f"SHA256:{digest}"


def report(key: str | None = None, hostname: str = "labnode1") -> str:
    """The lab VM's agent report (qemu-lab; the RAM for an image), with a host key."""
    text = (AGENT / "lab-qemu-q35-bios.txt").read_text()
    text = re.sub(r"MemTotal:\s+\d+ kB", "MemTotal: 4000000 kB", text)
    text = re.sub(r"(?m)^hostname=.*$", f"hostname={hostname}", text)
    if key is not None:
        text += f"==> ssh <==\nkey={key} root@{hostname}\n"
    return text


def dhcp(seg: Segment, ns: Namespace, kind: str, requested: str, server: str = "-") -> None:
    """Send one DHCP packet with the node's MAC from ``ns`` (its own or a spoofed one)."""
    argv = [sys.executable, "-c", SPOOF, NODE_MAC, kind, requested, server]
    done = ns.run(argv, check=False, timeout=60)
    assert done.returncode == 0, done.stderr


def node_boots(seg: Segment) -> str:
    """Full mode: the node's firmware takes a lease from serve; its address."""
    answer = json.loads(seg.pxe(seg.node, NODE_MAC, *BIOS, "--configure"))
    assert answer["ok"] and answer["server_id"] == SERVER, answer
    return str(answer["address"])


def script(seg: Segment, ns: Namespace) -> tuple[int, str]:
    done = seg.curl(ns, f"{seg.base}/boot/{NODE_MAC}.ipxe")
    body, _, code = done.stdout.rpartition("\n")
    return int(code), body


def token_of(body: str) -> str:
    found = re.search(r"provisioner\.token=(\S+)", body)
    assert found is not None, body
    return found.group(1)


def post_inventory(seg: Segment, ns: Namespace, token: str, text: str) -> tuple[int, str]:
    path = seg.tmp / f"report-{time.monotonic_ns()}.txt"
    path.write_text(text)
    done = seg.curl(
        ns, "-X", "POST", "-H", "Content-Type: text/plain; charset=utf-8",
        "-H", f"Authorization: Bearer {token}", "--data-binary", f"@{path}",
        f"{seg.base}/api/v1/nodes/{NODE_MAC}/inventory",
    )  # fmt: skip
    body, _, code = done.stdout.rpartition("\n")
    return int(code), body


def shown(seg: Segment, *, known: bool = True) -> dict[str, Any]:
    """The node as `node show --json` gives it ({} if it is not known and need not be)."""
    done = seg.app.cli("node", "show", NODE_MAC, "--json")
    if done.returncode == 1 and not known:
        return {}
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert isinstance(data, dict)
    return data


def kinds(node: dict[str, Any]) -> list[str]:
    timeline = node["timeline"]
    assert isinstance(timeline, list)
    return [e["kind"] for e in timeline]


def wait_for(
    seg: Segment, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = 5.0
) -> dict[str, Any]:
    """The node as shown once ``check(node)`` holds (the DHCP writes land within 20 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        node = shown(seg, known=False)
        if node and check(node):
            return node
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {json.dumps(node)[-3000:]}")
        time.sleep(0.1)


def host_keys(node: dict[str, Any]) -> list[str]:
    document = node["inventory"]
    assert isinstance(document, dict)
    return [k["fingerprint"] for k in document["inventory"]["ssh_host_keys"]]


def as_proxy(seg: Segment) -> None:
    """serve in proxy mode (the site's DHCP server gives addresses, never seen here)."""
    write_config(
        seg.app.config, interface="eth0", address=f"{SERVER}/24", mode="proxy",
        state=seg.app.state, http_port=HTTP_PORT, bind=SERVER,
    )  # fmt: skip


def test_a_script_fetched_by_another_machine_gives_no_token_and_moves_nothing(
    segment: Segment,
) -> None:
    segment.app.start()
    address = node_boots(segment)
    code, body = script(segment, segment.node)
    assert code == 200
    token = token_of(body)
    node = wait_for(segment, lambda n: n["ip"] == address, "the lease gives the address")

    code, body = script(segment, segment.attacker)
    assert code == 403 and "provisioner.token" not in body
    node = shown(segment)
    assert node["ip"] == address
    refused = [e for e in node["timeline"] if e["kind"] == "refused"]
    assert refused and refused[-1]["detail"]["client"] == ATTACKER
    # The attacker's ask replaced nothing: the node's token still takes its report.
    assert post_inventory(segment, segment.node, token, report())[0] == 202


def test_a_spoofed_dhcp_packet_does_not_move_the_address_in_proxy_mode(
    segment: Segment,
) -> None:
    as_proxy(segment)
    segment.app.start()
    node_ns = segment.node
    node_ns.run(["ip", "addr", "add", f"{NODE_PROXY_ADDRESS}/24", "dev", "eth0"])
    # The node's firmware asks the site server for its address; serve sees the request.
    dhcp(segment, node_ns, "request", NODE_PROXY_ADDRESS, SITE_SERVER)
    wait_for(segment, lambda n: "dhcp" in kinds(n), "the node's DHCP request is seen")
    code, body = script(segment, node_ns)
    assert code == 200
    code, _ = post_inventory(segment, node_ns, token_of(body), report())
    assert code == 202
    node = shown(segment)
    assert node["ip"] == NODE_PROXY_ADDRESS  # from its inventory POST, whose token it had

    before = kinds(node).count("dhcp")
    for kind in ("discover", "request"):
        dhcp(segment, segment.attacker, kind, ATTACKER, SITE_SERVER if kind == "request" else "-")
    node = wait_for(
        segment, lambda n: kinds(n).count("dhcp") >= before + 2, "the spoofed packets are seen"
    )
    assert node["ip"] == NODE_PROXY_ADDRESS
    code, body = script(segment, segment.attacker)
    assert code == 403 and "provisioner.token" not in body
    assert shown(segment)["ip"] == NODE_PROXY_ADDRESS


def test_an_inventory_with_a_stolen_or_old_token_is_refused(segment: Segment) -> None:
    segment.app.start()
    node_boots(segment)
    first = token_of(script(segment, segment.node)[1])
    assert post_inventory(segment, segment.node, first, report())[0] == 202

    # Stolen (read off the wire): bound to the node's address, and spent.
    assert post_inventory(segment, segment.attacker, first, report(hostname="evil"))[0] == 401
    # Old: the node's next boot has a new token; the first one is gone for everyone.
    second = token_of(script(segment, segment.node)[1])
    assert second != first
    assert post_inventory(segment, segment.attacker, first, report(hostname="evil"))[0] == 401
    assert post_inventory(segment, segment.node, first, report(hostname="evil"))[0] == 401
    # A live token from another address, and a token used twice: refused too.
    assert post_inventory(segment, segment.attacker, second, report(hostname="evil"))[0] == 401
    assert post_inventory(segment, segment.node, second, report())[0] == 202
    assert post_inventory(segment, segment.node, second, report(hostname="evil"))[0] == 401

    node = shown(segment)
    document = node["inventory"]
    assert isinstance(document, dict) and document["inventory"]["hostname"] == "labnode1"
    assert kinds(node).count("inventory") == 2


def test_an_enrolled_nodes_new_host_keys_wait_for_approval(segment: Segment) -> None:
    files = {"vmlinuz": b"K" * 4096, "initrd": b"I" * 4096, "root.squashfs": b"R" * 4096}
    ImageStore(segment.app.state / "images").publish_files(DEFAULT_IMAGE, files)
    segment.app.start()
    old_key, old_print = host_key(1)
    new_key, new_print = host_key(101)
    node_boots(segment)
    token = token_of(script(segment, segment.node)[1])
    assert post_inventory(segment, segment.node, token, report(old_key))[0] == 202
    enrolled = segment.app.cli("node", "enroll", NODE_MAC)
    assert enrolled.returncode == 0, enrolled.stderr
    assert host_keys(shown(segment)) == [old_print]

    # Its next boot (its image) reports other host keys: kept aside, not applied.
    code, body = script(segment, segment.node)
    assert code == 200 and "boot=live" in body
    code, answer = post_inventory(segment, segment.node, token_of(body), report(new_key))
    assert code == 202 and json.loads(answer)["next"] == "stay"
    node = shown(segment)
    assert node["state"] == "enrolled" and host_keys(node) == [old_print]
    held = [e for e in node["timeline"] if e["kind"] == "approval"]
    assert held and held[-1]["detail"]["status"] == "pending"
    assert held[-1]["detail"]["keys_before"] == old_print
    assert held[-1]["detail"]["keys_after"] == new_print

    approved = segment.app.cli("node", "approve", NODE_MAC, "--json")
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["node"]["mac"] == NODE_MAC
    node = shown(segment)
    assert node["state"] == "enrolled" and host_keys(node) == [new_print]
    last = [e for e in node["timeline"] if e["kind"] == "approval"][-1]
    assert last["detail"]["status"] == "approved"
    again = segment.app.cli("node", "approve", NODE_MAC)
    assert again.returncode == 4 and "nothing to approve" in again.stderr
