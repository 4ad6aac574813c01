"""Every shipped profile's post-install packages resolve in the image's own distribution.

The shared image (built once per run, tests/e2e/conftest.py) is unpacked; inside its root,
apt reads the image's archives (bookworm, -updates, -security, with the non-free-firmware
component the Intel firmware recipe enables) and ``apt-get install --simulate`` resolves
every package that a driver or engine recipe installs for every shipped profile. Packages
from another archive (NVIDIA's CUDA repository, not reachable from here) are listed, not
resolved: the test says so.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner.config import DEFAULT_HWPROFILES
from provisioner.image.rootfs_recipe import default_mirror, sources_lines
from provisioner.postinstall.plan import Download, Member, plan
from provisioner.profiles import load_profiles
from provisioner.records import Cluster
from tests.e2e.conftest import BuiltRootfs

NONE = Download(
    "x", "x.tar.gz", "http://127.0.0.1/x", "0" * 64, binaries={"server": "s", "rpc": "r"}
)


def recipe_packages() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(debian package -> profiles needing it, other archive -> its packages)."""
    debian: dict[str, set[str]] = {}
    other: dict[str, set[str]] = {}
    for profile in load_profiles(DEFAULT_HWPROFILES):
        members = [
            Member(
                f"n{i}", f"52:54:00:00:00:0{i}", f"10.0.0.{i + 1}", profile.name, profile.drivers
            )
            for i in range(2)
        ]
        cluster = Cluster("c", "llama-rpc", "m", "n0", ("n1",))
        for node_plan in plan(cluster, members, control_url="http://127.0.0.1",
                              artifact=NONE, model=NONE,
                              engine_recipes=("llama-rpc",)):  # fmt: skip
            for step in node_plan.steps:
                for package in step.packages:
                    if step.repository == "debian":
                        debian.setdefault(package, set()).add(profile.name)
                    else:
                        other.setdefault(step.repository, set()).add(package)
    return debian, other


def test_the_recipes_name_their_packages() -> None:
    debian, other = recipe_packages()
    assert {"intel-opencl-icd", "clinfo", "firmware-misc-nonfree", "dkms"} <= set(debian)
    assert other["nvidia-cuda"] >= {"nvidia-driver-pinning-580", "cuda-drivers", "nvidia-open"}


@pytest.mark.root
@pytest.mark.mirror
def test_debian_packages_resolve_inside_the_image(
    rootfs_built: BuiltRootfs, tmp_path: Path
) -> None:
    if shutil.which("unsquashfs") is None:
        pytest.fail("unsquashfs is missing (scripts/setup installs squashfs-tools)")
    root = tmp_path / "root"
    subprocess.run(
        ["unsquashfs", "-q", "-no-progress", "-d", str(root),
         str(rootfs_built.image / "root.squashfs")],
        check=True,
    )  # fmt: skip
    mirror = rootfs_built.manifest.mirror or default_mirror()
    lines = sources_lines(mirror, "bookworm", ("main", "non-free-firmware"), True)
    (root / "etc/apt/sources.list").write_text("\n".join(lines) + "\n")
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
    debian, other = recipe_packages()
    print(f"not resolved here (other archives): {dict(other)}")
    chroot = ["chroot", str(root)]
    update = subprocess.run([*chroot, "apt-get", "update", "-qq"], capture_output=True, text=True)
    assert update.returncode == 0, update.stderr
    simulate = subprocess.run(
        [*chroot, "apt-get", "install", "--simulate", "-qq", *sorted(debian)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"},
    )
    assert simulate.returncode == 0, f"{simulate.stdout[-3000:]}\n{simulate.stderr}"
    for package in debian:
        assert f"Inst {package} " in simulate.stdout, package
