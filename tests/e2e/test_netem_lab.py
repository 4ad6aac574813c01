"""Network faults on the lab's bridge (issue 20, item 5): 10% packet loss and 50 ms delay
on every port of the bridge (`lab up --netem`, lab/netem.py), so each frame meets them
once in each direction (a round trip: 100 ms, two chances of loss). Lab nodes must still
reach ``ready`` on debian-trixie: three container nodes, and one UEFI VM (QEMU, TCG)
that fetches its kernel, initrd and root image over the faulty network.

Each test boots its nodes twice in one run, without faults and with them, and prints
both times and their ratio (docs/reliability.md keeps the figures). Where the kernel has
no ``sch_netem`` the faults are put there by an NFQUEUE process (the ``queue`` way);
the test says which way it measured.

Heavy (not in CI): run by naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from provisioner.data import DISCOVERY_RECIPE
from provisioner.image.discovery import build_discovery, default_cache
from provisioner.image.rootfs import build_rootfs
from provisioner.lab.netns import list_namespaces
from tests.conftest import unavailable
from tests.e2e.conftest import node_json, run_cli

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "debian-trixie"
FAULTS = "loss 10% delay 50ms"

pytestmark = [pytest.mark.heavy, pytest.mark.root, pytest.mark.netns, pytest.mark.mirror]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image store with the discovery image and debian-trixie, built once for the
    module and copied into each lab (so no lab's time includes a build)."""
    if os.geteuid() != 0:
        unavailable("needs root (mmdebstrap --mode=root)")
    store = tmp_path_factory.mktemp("netem-store")
    started = time.monotonic()
    build_discovery(DISCOVERY_RECIPE, store, default_cache(), print)
    build_rootfs(ROOT / "images" / f"{IMAGE}.toml", store, default_cache(), print)
    print(f"discovery + {IMAGE} build: {time.monotonic() - started:.0f} s")
    return store


def boot(lab_dir: Path, images: Path, args: list[str], timeout: float) -> dict[str, float]:
    """`lab up` with ``args`` in a fresh lab; each node's seconds from its power-on to its
    image's report (its last inventory), and ``up``: the command's own time. The lab is
    taken down again (and must leave no namespace)."""
    shutil.copytree(images, lab_dir / "state" / "images", symlinks=True)
    started = time.monotonic()
    try:
        up = run_cli("lab", "up", "--dir", str(lab_dir), "--image", IMAGE,
                     "--timeout", str(timeout), *args, timeout=timeout + 600)  # fmt: skip
        seconds = {"up": time.monotonic() - started}
        status = run_cli("lab", "status", "--dir", str(lab_dir), "--json")
        assert up.returncode == 0, f"{up.stderr[-4000:]}\n{status.stdout[-3000:]}"
        lab = json.loads((lab_dir / "lab.json").read_text())
        assert (lab["netem"] is not None) == ("--netem" in args)
        for node in lab["nodes"]:
            shown = node_json(lab_dir, node["mac"])
            assert shown["state"] == "enrolled", shown  # and `lab up` saw it reach ready
            reports = [e["ts"] for e in shown["timeline"] if e["kind"] == "inventory"]
            seconds[node["name"]] = max(reports) - node["powered_on"]
        if lab["netem"] is not None:
            print(f"faults: {lab['netem']} by {lab['netem_way']}")
        return seconds
    finally:
        prefix = _prefix(lab_dir)
        down = run_cli("lab", "down", "--dir", str(lab_dir), timeout=120)
        assert down.returncode == 0, down.stderr
        if prefix is not None:
            assert not [n for n in list_namespaces() if n.startswith(prefix)]


def _prefix(lab_dir: Path) -> str | None:
    lab = lab_dir / "lab.json"
    return str(json.loads(lab.read_text())["prefix"]) if lab.exists() else None


def report(kind: str, quiet: dict[str, float], faulty: dict[str, float]) -> None:
    for name in quiet:
        ratio = faulty[name] / quiet[name]
        print(f"{kind} {name}: {quiet[name]:.1f} s quiet, {faulty[name]:.1f} s with "
              f"'{FAULTS}': {ratio:.2f}x")  # fmt: skip


def test_container_nodes_reach_ready_under_loss_and_delay(lab_dir: Path, images: Path) -> None:
    if shutil.which("systemd-nspawn") is None:
        unavailable("needs systemd-nspawn (scripts/setup installs systemd-container)")
    args = ["--kind", "container", "--nodes", "3"]
    quiet = boot(lab_dir.parent / "quiet", images, args, timeout=300)
    faulty = boot(lab_dir, images, [*args, "--netem", FAULTS], timeout=1200)
    report("container", quiet, faulty)
    assert set(faulty) == {"up", "ctr1", "ctr2", "ctr3"}


@pytest.mark.qemu
def test_a_uefi_vm_reaches_ready_under_loss_and_delay(lab_dir: Path, images: Path) -> None:
    args = ["--nodes", "1", "--firmware", "uefi", "--accel", "tcg"]
    quiet = boot(lab_dir.parent / "quiet", images, args, timeout=1200)
    faulty = boot(lab_dir, images, [*args, "--netem", FAULTS], timeout=3000)
    report("vm", quiet, faulty)
    assert set(faulty) == {"up", "labnode1"}
