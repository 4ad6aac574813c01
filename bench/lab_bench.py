"""Network boot vs direct boot: VM power-on to `discovered`, in the same lab and run.

Ours: a lab VM boots through its firmware's PXE, iPXE, our script, kernel and initrd
over HTTP, to the agent's inventory. Peer: the same kind of VM on the same network
given the same kernel, initrd and command line directly (`qemu -kernel -initrd`),
also to the inventory. Goal: ours <= 1.5x the direct boot's time.

Run as root: .venv/bin/python bench/lab_bench.py [--firmware uefi|bios] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Figure, report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from provisioner.lab import lab as labmod  # noqa: E402
from provisioner.lab.netns import Namespace  # noqa: E402
from provisioner.lab.vm import VmSpec, prepare, qemu_argv  # noqa: E402
from provisioner.records import EventKind  # noqa: E402
from provisioner.registry import Registry  # noqa: E402

DIRECT_MAC = "52:54:00:99:00:fe"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "provisioner.cli", *args],
        text=True,
        capture_output=True,
        check=False,
        timeout=1800,
    )


def inventory_time(state: labmod.LabState, mac: str, timeout: float) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        reg = Registry(state.state_dir / "registry.sqlite3")
        try:
            for e in reg.events(mac):
                if e.kind is EventKind.INVENTORY:
                    return e.ts
        finally:
            reg.close()
        time.sleep(0.5)
    raise SystemExit(f"{mac}: no inventory within {timeout} s")


def direct_boot(state: labmod.LabState, firmware: str, timeout: float) -> float:
    prov = Namespace(f"{state.prefix}-prov")
    switch = Namespace(f"{state.prefix}-sw")
    script = prov.run(
        ["curl", "-s", f"http://{state.segment.server}:{labmod.HTTP_PORT}/boot/{DIRECT_MAC}.ipxe"]
    ).stdout
    match = re.search(r"^kernel \S+ (.*?)(?: \|\| goto failed)?$", script, re.M)
    if match is None:
        raise SystemExit(f"no kernel line in the boot script:\n{script}")
    tap = f"{state.prefix}t9"
    switch.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
    switch.run(["ip", "link", "set", tap, "master", "br0", "up"])
    spec = VmSpec("direct", DIRECT_MAC, firmware, tap, Path(state.directory) / "vms")
    prepare(spec)
    images = state.state_dir / "images" / "discovery"
    argv = [
        *qemu_argv(spec),
        "-kernel",
        str(images / "vmlinuz"),
        "-initrd",
        str(images / "initrd"),
        "-append",
        match.group(1),
    ]
    started = time.time()
    proc = subprocess.Popen(switch.argv(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return inventory_time(state, DIRECT_MAC, timeout) - started
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--firmware", choices=["bios", "uefi"], default="uefi")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pv-labbench-") as tmp:
        directory = Path(tmp) / "lab"
        try:
            up = cli(
                "lab",
                "up",
                "--dir",
                str(directory),
                "--nodes",
                "1",
                "--firmware",
                args.firmware,
                "--mode",
                "full",
                "--timeout",
                str(args.timeout),
            )
            state = labmod.LabState.load(directory)
            if up.returncode != 0 or state is None:
                raise SystemExit(f"lab up failed:\n{up.stderr[-3000:]}")
            node = state.nodes[0]
            assert node.powered_on is not None
            ours = inventory_time(state, node.mac, 10) - node.powered_on
            peer = direct_boot(state, args.firmware, args.timeout)
        finally:
            cli("lab", "down", "--dir", str(directory))
    figure = Figure(
        f"VM power-on to discovered ({args.firmware})",
        "s",
        ours,
        peer,
        "direct -kernel/-initrd boot",
        higher_is_better=False,
    )
    if args.json:
        print(json.dumps(figure.as_dict() | {"slowdown": round(ours / peer, 3)}, indent=2))
    else:
        report([figure], False)
        print(f"network boot takes {ours / peer:.2f}x the direct boot's time (goal <= 1.5x)")


if __name__ == "__main__":
    main()
