"""A container node's boot loop: what a PXE node's firmware does at each reboot.

:func:`provisioner.lab.containers.start_containers` starts this in the node's cgroups with
the first boot already resolved (its root and arguments: errors there reach ``lab up``)::

    python -m provisioner.lab.container_boot '{"spec": ..., "netns": ..., "booter": ...,
                                               "root": ..., "words": [...]}'

It runs ``systemd-nspawn --boot``. When the container's own systemd reboots
(``systemctl reboot`` on the node, as a rolling upgrade does to a node without a BMC),
nspawn exits with status 133; the loop then fetches a fresh boot script, unpacks the
image that script names (its profile's, or the version a roll pinned it to) and boots
again: a real node would PXE-boot again. Any other end (a poweroff, a crash) ends the
loop with nspawn's status. SIGTERM or SIGINT (``lab down``, ``lab reboot``) is passed on
to nspawn (an orderly shutdown of the container), and the loop ends after it.

Each boot's lines go to the node's console log (this process's standard output).

A node given a disk (``"disk": "/dev/loopN"`` in the plan: ``lab up --disk``) has it in
its /dev while it runs: a thread here makes the nodes and /dev/disk/by-id links udev would
(:mod:`provisioner.lab.loopdisk`), again after each reboot and each new partition table.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from provisioner.lab.containers import (
    BootArgs,
    Booter,
    ContainerError,
    ContainerSpec,
    nspawn_argv,
)
from provisioner.lab.loopdisk import PLANT_EVERY, container_root, plant
from provisioner.lab.netns import LabError

REBOOT_STATUS = 133  # systemd-nspawn's exit status when the container rebooted
RETRY_S = 5.0  # a boot script that cannot be had yet (missing image, appliance down)


def say(line: str) -> None:
    print(f"[boot loop {time.strftime('%H:%M:%S')}] {line}", flush=True)


def keep_disk(name: str, loop: str, current: Callable[[], subprocess.Popen[bytes] | None]) -> None:
    """Forever (a daemon thread): ``loop``'s nodes and links in the container that the
    current ``systemd-nspawn`` (``current()``) runs."""
    said = ""
    while True:
        child = current()
        root = container_root(child.pid) if child is not None and child.poll() is None else None
        if root is not None:
            try:
                if plant(root, loop, name):
                    said = ""
            except (OSError, LabError) as exc:  # the container went away meanwhile, ...
                if str(exc) != said:
                    said = str(exc)
                    say(f"{name}: its disk {loop} not in its /dev: {exc}")
        time.sleep(PLANT_EVERY)


def run(plan: dict[str, Any]) -> int:
    spec = ContainerSpec(**plan["spec"])
    netns = Path(str(plan["netns"]))
    booter = Booter.from_dict(plan["booter"])
    root = Path(str(plan["root"]))
    args = BootArgs(tuple(plan["words"]))
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if plan.get("disk"):
        threading.Thread(
            target=keep_disk, args=(spec.name, str(plan["disk"]), lambda: child), daemon=True
        ).start()
    while True:
        child = subprocess.Popen(nspawn_argv(spec, root, netns, args), stdin=subprocess.DEVNULL)
        status = child.wait()
        if stopping or status != REBOOT_STATUS:
            say(f"{spec.name}: systemd-nspawn ended ({status}): powered off")
            return status
        say(f"{spec.name}: rebooted: a fresh boot script")
        while not stopping:
            try:
                root, args = booter.boot(spec.mac, say)
                break
            except (ContainerError, LabError, OSError) as exc:
                say(f"{spec.name}: no boot yet ({exc}); again in {RETRY_S:.0f} s")
                time.sleep(RETRY_S)
        if stopping:
            return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m provisioner.lab.container_boot PLAN_JSON", file=sys.stderr)
        return 2
    return int(run(json.loads(argv[0])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
