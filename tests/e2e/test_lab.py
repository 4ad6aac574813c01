"""The lab end to end: real firmware in QEMU (TCG) boots through the appliance.

BIOS (SeaBIOS + QEMU's iPXE ROM) in proxy mode beside dnsmasq, and UEFI (OVMF's own PXE,
then snponly.efi over TFTP) in full mode; each node must reach `discovered` with an
inventory naming its virtio NIC and disk and its firmware, and `lab down` must leave no
namespace or process behind. A third test leaves the appliance off and checks that the
node is reported stuck with the step it reached and its console, not left silent.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from provisioner.lab.vm import DISK_BYTES
from tests.e2e.conftest import node_json, run_cli

# `lab up` builds the discovery image from Debian's packages when it is not there yet.
pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.mirror, pytest.mark.qemu]


def check_discovered(lab_dir: Path, mac: str, firmware: str, steps: list[str]) -> None:
    node = node_json(lab_dir, mac)
    # lab up enrolls its VMs by power-cycle (the qemu driver): the inventory is
    # fingerprinted at once (qemu-lab) and the node enrolled
    assert node["state"] == "enrolled" and node["profile"] == "qemu-lab", node["timeline"]
    assert node["firmware"] == firmware and node["hostname"] == "labnode1"
    doc = node["inventory"]
    assert isinstance(doc, dict) and doc["format"] == "agent/1"
    inv = doc["inventory"]
    assert inv["firmware"] == firmware
    pci = {(d["vendor"], d["device"]) for d in inv["pci"]}
    assert pci & {("1af4", "1000"), ("1af4", "1041")}, pci  # virtio-net
    assert pci & {("1af4", "1001"), ("1af4", "1042")}, pci  # virtio-blk
    assert any(n["mac"] == mac and n["driver"] == "virtio_net" for n in inv["nics"])
    disks = {d["name"]: d for d in inv["disks"]}
    assert {disks[d]["size_bytes"] for d in ("vda", "vdb")} == {DISK_BYTES}, disks
    kinds = [e["kind"] for e in node["timeline"]]
    files = [e["detail"].get("file") for e in node["timeline"] if e["kind"] == "http-file"]
    for step in ["power", *steps, "profile"]:
        assert step in kinds, kinds
    assert "discovery@1/vmlinuz" in files and "discovery@1/initrd" in files


def lab_up(lab_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    up = run_cli("lab", "up", "--dir", str(lab_dir), "--nodes", "1", "--timeout", "900", *args)
    status = run_cli("lab", "status", "--dir", str(lab_dir))
    assert up.returncode == 0, f"{up.stderr[-4000:]}\n{status.stdout}"
    return up


def test_bios_node_in_proxy_mode_beside_dnsmasq(lab_dir: Path) -> None:
    up = lab_up(lab_dir, "--firmware", "bios", "--mode", "proxy")
    assert "labnode1  inventory" in up.stderr
    # QEMU's BIOS NIC ROM is iPXE already: no TFTP step, as on an iPXE-flashed NIC.
    check_discovered(
        lab_dir,
        "52:54:00:99:00:01",
        "bios",
        ["dhcp", "dhcp-reply", "script", "http-file", "inventory", "state"],
    )

    # The VM powered itself off after its report (provisioner.after=poweroff): enroll it
    # again through its power driver, as one would a real node, beside a node whose
    # "BMC" is not there: that one fails with one line, the other goes on.
    config = str(lab_dir / "provisioner.toml")
    added = run_cli(
        "--config", config, "node", "add", "ghost", "--mac", "52:54:00:99:00:99",
        "--power", f"qemu://{lab_dir}/vms/ghost.qmp",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    enroll = run_cli(
        "--config", config, "enroll", "labnode1", "ghost", "--power-cycle", "--wait",
        "--timeout", "300",
    )  # fmt: skip
    assert enroll.returncode == 1, enroll.stderr
    for step in ("powered", "dhcp", "script", "kernel", "initrd", "inventory", "profile"):
        assert f"labnode1   {step}" in enroll.stderr, enroll.stderr
    assert "labnode1   enrolled (qemu-lab)" in enroll.stderr
    ghost = [line for line in enroll.stderr.splitlines() if line.startswith("ghost: failed")]
    assert len(ghost) == 1 and "no QEMU listening" in ghost[0], enroll.stderr
    shown = node_json(lab_dir, "52:54:00:99:00:99")
    assert shown["state"] == "failed"


def test_uefi_node_in_full_mode(lab_dir: Path) -> None:
    up = lab_up(lab_dir, "--firmware", "uefi", "--mode", "full")
    for step in ("dhcp", "tftp", "ipxe", "script", "kernel", "initrd", "inventory"):
        assert f"labnode1  {step}" in up.stderr
    check_discovered(
        lab_dir,
        "52:54:00:99:00:01",
        "uefi",
        ["dhcp", "dhcp-reply", "tftp", "script", "http-file", "inventory"],
    )


def test_a_node_that_gets_no_boot_file_is_reported_with_its_last_step(lab_dir: Path) -> None:
    up = run_cli(
        "lab",
        "up",
        "--dir",
        str(lab_dir),
        "--nodes",
        "1",
        "--firmware",
        "uefi",
        "--no-appliance",
        "--timeout",
        "25",
    )
    assert up.returncode != 0
    status = run_cli("lab", "status", "--dir", str(lab_dir), "--stuck-after", "20", "--json")
    assert status.returncode == 1
    node = json.loads(status.stdout)["nodes"][0]
    # powered on by its driver, then nothing: no DHCP answer without the appliance
    assert node["verdict"] == "stuck" and node["last_step"] == "powered" and node["vm_running"]
    assert node["console_tail"]  # OVMF's PXE attempts are on the serial console
    text = run_cli("lab", "status", "--dir", str(lab_dir), "--stuck-after", "20").stdout
    assert "stuck" in text and "last step: powered" in text and "serial console" in text
    down = run_cli("lab", "down", "--dir", str(lab_dir))
    assert down.returncode == 0
    assert not (lab_dir / "lab.json").exists()
