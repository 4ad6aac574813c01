"""The node side of consoles: images/initramfs/provisioner-netconsole, run by a real POSIX
shell over a made-up /proc and /sys (PROVISIONER_ROOT). ``ip``, ``ping`` and ``modprobe``
are stand-ins on PATH that answer like busybox's and record what they were asked: loading
netconsole here would send this machine's kernel log. The lab VM test
(tests/e2e/test_image_lab.py) runs the script for real in the image's initramfs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "images" / "initramfs" / "provisioner-netconsole"
MAC = "52:54:00:99:00:01"
CMDLINE = (
    f"BOOT_IMAGE=/vmlinuz boot=live provisioner.url=http://10.99.0.1:8080 provisioner.mac={MAC}"
)
ARP = "IP address       HW type     Flags       HW address            Mask     Device\n"


def run(
    tmp_path: Path,
    cmdline: str,
    *,
    route: str = "10.99.0.1 dev ens3  src 10.99.0.10",
    arp: str = "10.99.0.1        0x1         0x2         52:54:00:aa:bb:cc     *        ens3\n",
    args: tuple[str, ...] = (),
    loaded: bool = False,
) -> tuple[str, list[str], list[str]]:
    """(what it said, modprobe's argument lists, ping's)."""
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    (root / "proc" / "net").mkdir(parents=True)
    (root / "proc" / "cmdline").write_text(cmdline + "\n")
    (root / "proc" / "net" / "arp").write_text(ARP + arp)
    for name, address in (
        ("lo", "00:00:00:00:00:00"),
        ("ens3", MAC),
        ("ens4", "52:54:00:99:00:09"),
    ):
        (root / "sys" / "class" / "net" / name).mkdir(parents=True)
        (root / "sys" / "class" / "net" / name / "address").write_text(address + "\n")
    if loaded:
        (root / "sys" / "module" / "netconsole").mkdir(parents=True)
    bin_dir.mkdir()
    log = tmp_path / "calls"
    stubs = {
        "ip": f'echo "$*" >>{log}.ip; echo "{route}"',
        "ping": f'echo "$*" >>{log}.ping',
        "modprobe": f'echo "$*" >>{log}.modprobe',
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PROVISIONER_ROOT": str(root)}
    done = subprocess.run(
        [shutil.which("dash") or "/bin/sh", str(SCRIPT), *args],
        capture_output=True, text=True, env=env, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr  # never stops a boot

    def calls(kind: str) -> list[str]:
        path = Path(f"{log}.{kind}")
        return path.read_text().splitlines() if path.exists() else []

    return done.stdout + done.stderr, calls("modprobe"), calls("ping")


def test_the_boot_interface_and_the_next_hop_mac_make_the_module_parameter(tmp_path: Path) -> None:
    said, modprobe, ping = run(tmp_path, CMDLINE + " provisioner.netconsole=6666")
    assert modprobe == ["netconsole netconsole=+@/ens3,6666@10.99.0.1/52:54:00:aa:bb:cc"]
    assert ping == ["-c 1 -W 1 10.99.0.1"]
    assert "kernel messages to 10.99.0.1:6666/udp over ens3" in said


def test_through_a_router_the_router_mac_is_the_target(tmp_path: Path) -> None:
    _, modprobe, ping = run(
        tmp_path,
        CMDLINE + " provisioner.netconsole=6666",
        route="10.99.0.1 via 10.20.0.254 dev ens3  src 10.20.0.7",
        arp="10.20.0.254      0x1         0x2         52:54:00:fe:fe:fe     *        ens3\n",
    )
    assert ping == ["-c 1 -W 1 10.20.0.254"]
    assert modprobe == ["netconsole netconsole=+@/ens3,6666@10.99.0.1/52:54:00:fe:fe:fe"]


def test_no_arp_answer_sends_to_the_broadcast_mac(tmp_path: Path) -> None:
    arp = "10.99.0.1        0x1         0x0         00:00:00:00:00:00     *        ens3\n"
    said, modprobe, _ = run(tmp_path, CMDLINE + " provisioner.netconsole=6666", arp=arp)
    assert modprobe == ["netconsole netconsole=+@/ens3,6666@10.99.0.1/"]
    assert "next hop broadcast" in said


def test_the_discovery_image_names_its_interface(tmp_path: Path) -> None:
    arp = "10.99.0.1        0x1         0x2         52:54:00:aa:bb:cc     *        ens4\n"
    _, modprobe, _ = run(
        tmp_path, CMDLINE + " provisioner.netconsole=6666", args=("ens4",), arp=arp
    )
    assert modprobe == ["netconsole netconsole=+@/ens4,6666@10.99.0.1/52:54:00:aa:bb:cc"]


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ("", ""),  # the appliance keeps no consoles: not a word
        (" provisioner.netconsole=66;reboot", "is not a port"),
        (" provisioner.netconsole=99999", "is not a port"),
        (" provisioner.netconsole=0", "is not a port"),
    ],
)
def test_without_a_good_port_nothing_is_loaded(tmp_path: Path, extra: str, said: str) -> None:
    out, modprobe, ping = run(tmp_path, CMDLINE + extra)
    assert modprobe == [] and ping == []
    assert said in out and (said or out == "")


def test_a_url_without_an_ipv4_address_loads_nothing(tmp_path: Path) -> None:
    cmdline = CMDLINE.replace("http://10.99.0.1:8080", "http://$(reboot):8080")
    out, modprobe, _ = run(tmp_path, cmdline + " provisioner.netconsole=6666")
    assert modprobe == [] and "names no IPv4 address" in out


def test_a_netconsole_already_loaded_is_left_alone(tmp_path: Path) -> None:
    out, modprobe, _ = run(tmp_path, CMDLINE + " provisioner.netconsole=6666", loaded=True)
    assert modprobe == [] and "loaded already" in out


def test_initramfs_tools_asks_for_its_prerequisites(tmp_path: Path) -> None:
    done = subprocess.run(
        ["sh", str(SCRIPT), "prereqs"], capture_output=True, text=True, check=True
    )
    assert done.stdout == "\n"
