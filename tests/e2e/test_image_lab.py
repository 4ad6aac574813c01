"""The shared image end to end: two lab VMs boot it through the appliance and take SSH.

`provisioner lab up --image debian-bookworm` with one BIOS and one UEFI VM in full mode:
each PXE-boots the discovery image, reports, is fingerprinted (qemu-lab) and enrolled at
once, reboots, and boots the shared image over HTTP (kernel + initrd, then live-boot
fetches root.squashfs into RAM); the image installs the control node's SSH key with its
per-boot token and its agent reports again, SSH host keys included. Then OpenSSH's own
client logs in with the control node's key, checking the host key against the one the
node reported (a known_hosts made from the registry, StrictHostKeyChecking=yes), and
runs a command; a known_hosts with another node's key is refused. Each node's kernel
sends its messages to the appliance (netconsole): `node console` shows its boot from
"Linux version", and its timeline has the console event.

The image is built once per run (tests/e2e/conftest.py) and copied into the lab's store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import BuiltRootfs, node_json, run_cli

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.mirror, pytest.mark.qemu]

MACS = {"52:54:00:99:00:01": "bios", "52:54:00:99:00:02": "uefi"}


def ssh(
    lab_dir: Path, known_hosts: Path, ip: str, command: str
) -> subprocess.CompletedProcess[str]:
    key = lab_dir / "state" / "ssh" / "id_ed25519"
    return run_cli(
        "lab", "exec", "--dir", str(lab_dir), "--",
        "ssh", "-i", str(key),
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=20", f"root@{ip}", command,
        timeout=120,
    )  # fmt: skip


def test_two_nodes_boot_the_shared_image_and_take_ssh_logins(
    lab_dir: Path,
    rootfs_built: BuiltRootfs,
    tmp_path: Path,
) -> None:
    if shutil.which("ssh") is None:
        pytest.fail("OpenSSH's client is missing (scripts/setup installs openssh-client)")
    images = lab_dir / "state" / "images"
    images.mkdir(parents=True)
    shutil.copytree(rootfs_built.image, images / rootfs_built.image.name)
    ref = rootfs_built.image.name  # debian-bookworm@1

    up = run_cli(
        "lab", "up", "--dir", str(lab_dir), "--nodes", "2", "--firmware", "mixed",
        "--mode", "full", "--image", "debian-bookworm", "--timeout", "1200",
    )  # fmt: skip
    status = run_cli("lab", "status", "--dir", str(lab_dir))
    assert up.returncode == 0, f"{up.stderr[-6000:]}\n{status.stdout}"
    for step in ("inventory", "image", "root", "keys", "ready"):
        assert f"labnode1  {step}" in up.stderr and f"labnode2  {step}" in up.stderr
    print(up.stderr[-3000:])

    reported: dict[str, list[str]] = {}
    addresses: dict[str, str] = {}
    for mac, firmware in MACS.items():
        node = node_json(lab_dir, mac)
        assert node["state"] == "enrolled" and node["profile"] == "qemu-lab"
        assert node["image"] == ref and node["firmware"] == firmware
        timeline = node["timeline"]
        assert isinstance(timeline, list)
        kinds = [e["kind"] for e in timeline]
        assert kinds.count("inventory") >= 2 and "keys" in kinds
        # Its initramfs checked the fetched root against the boot script's sha256.
        checks = [e["detail"] for e in timeline if e["kind"] == "integrity"]
        assert [(c["verdict"], c["checked"]) for c in checks] == [("verified", "initramfs")]
        assert checks[0]["sha256"] == rootfs_built.manifest.squashfs.sha256
        files = [e["detail"].get("file") for e in timeline if e["kind"] == "http-file"]
        assert f"{ref}/vmlinuz" in files and f"{ref}/root.squashfs" in files
        doc = node["inventory"]
        assert isinstance(doc, dict)
        inventory = doc["inventory"]
        # The last report comes from the full image, not from the discovery initramfs.
        assert inventory["kernel"] == rootfs_built.manifest.kernel_release
        keys = [f"{k['type']} {k['public_key']}" for k in inventory["ssh_host_keys"]]
        assert any(k.startswith("ssh-ed25519 ") for k in keys), inventory["ssh_host_keys"]
        reported[mac] = keys
        assert isinstance(node["ip"], str)
        addresses[mac] = node["ip"]
        # Its kernel sent its messages to the appliance (netconsole, from its initramfs):
        # the boot from its first line, then the booted system's (systemd's) too.
        console = run_cli(
            "--config", str(lab_dir / "provisioner.toml"),
            "node", "console", mac, "--json", "--lines", "20000",
        )  # fmt: skip
        assert console.returncode == 0, console.stderr
        lines = json.loads(console.stdout)["lines"]
        texts = [line["text"] for line in lines]
        release = rootfs_built.manifest.kernel_release
        assert any(t.startswith(f"Linux version {release}") for t in texts), texts[:20]
        assert any("systemd" in t for t in texts), texts[-20:]
        assert all(line["seq"] is not None for line in lines)  # the extended format
        boots = [e for e in timeline if e["kind"] == "console" and e["detail"]["what"] == "boot"]
        assert boots, [e["kind"] for e in timeline]
        script = max(e["ts"] for e in timeline if e["kind"] == "script")
        heard = min(line["ts"] for line in lines if line["ts"] > script)
        print(f"{mac}: {len(lines)} console lines, {len(boots)} boot event(s), first line "
              f"{heard - script:.1f} s after its last boot script")  # fmt: skip
    assert len(set(addresses.values())) == 2

    for mac, ip in addresses.items():
        known = tmp_path / f"known_hosts-{mac.replace(':', '')}"
        known.write_text("".join(f"{ip} {k}\n" for k in reported[mac]))
        login = ssh(lab_dir, known, ip, "cat /proc/cmdline; hostname; id -u")
        assert login.returncode == 0, login.stderr
        cmdline, _hostname, uid = login.stdout.strip().splitlines()[-3:]
        assert f"fetch=http://10.99.0.1:8080/images/{ref}/root.squashfs" in cmdline
        assert f"provisioner.mac={mac}" in cmdline and uid == "0"

    # A host key other than the one this node reported is refused, never accepted.
    first, second = list(addresses)
    wrong = tmp_path / "known_hosts-wrong"
    wrong.write_text("".join(f"{addresses[first]} {k}\n" for k in reported[second]))
    refused = ssh(lab_dir, wrong, addresses[first], "true")
    assert refused.returncode != 0
    assert "host key" in refused.stderr.lower(), refused.stderr

    # A reboot keeps the node's host key (the control node issued it): its report needs
    # no approval, and the same known_hosts still logs in.
    config = str(lab_dir / "provisioner.toml")
    mac = first
    before = len(node_json(lab_dir, mac)["timeline"])
    cycled = run_cli("--config", config, "power", "cycle", "labnode1")
    assert cycled.returncode == 0, cycled.stderr
    deadline = time.monotonic() + 600
    after: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        after = node_json(lab_dir, mac)["timeline"][before:]
        if any(e["kind"] in ("inventory", "approval") for e in after):
            break
        time.sleep(5)
    kinds = [e["kind"] for e in after]
    assert "inventory" in kinds and "approval" not in kinds, after
    verdicts = [e["detail"]["verdict"] for e in after if e["kind"] == "integrity"]
    assert verdicts == ["verified"]
    node = node_json(lab_dir, mac)
    assert node["state"] == "enrolled"
    keys = [
        f"{k['type']} {k['public_key']}" for k in node["inventory"]["inventory"]["ssh_host_keys"]
    ]
    assert keys == reported[mac]
    known = tmp_path / f"known_hosts-{mac.replace(':', '')}"
    login = ssh(lab_dir, known, addresses[mac], "true")
    assert login.returncode == 0, login.stderr

    # The image in use cannot be removed while the nodes boot it.
    removed = run_cli("--config", config, "image", "remove", ref)
    assert removed.returncode == 4 and "in use by 2 node(s)" in removed.stderr
    shown = run_cli("--config", config, "image", "show", ref, "--json")
    assert set(json.loads(shown.stdout)["nodes"]) == {"labnode1", "labnode2"}
    assert os.path.isdir(images / ref)


def test_a_tampered_root_fails_the_node_and_the_restored_one_boots(
    lab_dir: Path, rootfs_built: BuiltRootfs
) -> None:
    """The image's initramfs checks the fetched root against the boot script's sha256: a
    changed byte stops the boot before the root runs and fails the node, named why; with
    the file restored, re-enrolling (power-cycle) boots it and the check passes."""
    images = lab_dir / "state" / "images"
    images.mkdir(parents=True)
    shutil.copytree(rootfs_built.image, images / rootfs_built.image.name)
    ref = rootfs_built.image.name
    published = rootfs_built.manifest.squashfs.sha256
    squashfs = images / ref / "root.squashfs"
    original = squashfs.read_bytes()
    middle = len(original) // 2
    squashfs.write_bytes(
        original[:middle] + bytes([original[middle] ^ 0xFF]) + original[middle + 1 :]
    )

    up = run_cli(
        "lab", "up", "--dir", str(lab_dir), "--nodes", "1", "--firmware", "bios",
        "--mode", "full", "--image", "debian-bookworm", "--timeout", "900",
    )  # fmt: skip
    print(up.stderr[-3000:])
    mac = "52:54:00:99:00:01"
    node = node_json(lab_dir, mac)
    assert node["state"] == "failed", up.stderr[-3000:]
    timeline = node["timeline"]
    checks = [e["detail"] for e in timeline if e["kind"] == "integrity"]
    assert [c["verdict"] for c in checks] == ["mismatch"]
    assert checks[0]["checked"] == "initramfs" and checks[0]["published"] == published
    assert checks[0]["image"] == ref and checks[0]["sha256"] != published
    # Nothing of the tampered root ran: no key was fetched, no report came from it.
    assert "keys" not in [e["kind"] for e in timeline]
    assert not node["inventory"]["inventory"].get("ssh_host_keys")  # discovery's only
    assert up.returncode != 0

    squashfs.write_bytes(original)
    config = str(lab_dir / "provisioner.toml")
    again = run_cli("--config", config, "enroll", "labnode1", "--power-cycle", "--wait")
    assert again.returncode == 0, again.stderr
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        node = node_json(lab_dir, mac)
        verdicts = [e["detail"]["verdict"] for e in node["timeline"] if e["kind"] == "integrity"]
        if verdicts[-1:] == ["verified"]:
            break
        time.sleep(5)
    assert verdicts[-1:] == ["verified"], node["timeline"][-10:]
    assert node["state"] == "enrolled"
    assert node["inventory"]["inventory"]["ssh_host_keys"]  # the image's agent reported
