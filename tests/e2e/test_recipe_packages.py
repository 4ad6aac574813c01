"""Every shipped profile's post-install packages resolve in its image's own distribution.

The shared image (built once per run, tests/e2e/conftest.py) is unpacked; inside its root,
for each Debian release that a shipped profile's image is built from (its recipe's suite:
trixie for most, bookworm where a profile pins it), apt reads that release's archives
(the suite, -updates, -security, with the non-free-firmware component the Intel firmware
recipe enables) and ``apt-get install --simulate`` resolves
every package that a driver or engine recipe installs for every shipped profile. Packages
from another archive (NVIDIA's CUDA repository, not reachable from here) are listed, not
resolved: the test says so.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner import data
from provisioner.config import DEFAULT_HWPROFILES, DEFAULT_IMAGE
from provisioner.image.rootfs_recipe import default_mirror, load_recipe, sources_lines
from provisioner.postinstall.plan import Download, Member, plan
from provisioner.profiles import load_profiles
from provisioner.records import Cluster
from tests.e2e.conftest import BuiltRootfs

# What the Vulkan build made here links (its manifest's runtime_packages); the CPU
# build's are a subset.
RUNTIME = ("libc6", "libgcc-s1", "libgomp1", "libstdc++6", "libvulkan1")
NONE = Download(
    "x",
    "x.tar.gz",
    "http://127.0.0.1/x",
    "0" * 64,
    binaries={"server": "s", "rpc": "r"},
    packages=RUNTIME,
)


def suite_of(image: str) -> str:
    """The Debian release an image recipe (or its layer's base) is built from."""
    return load_recipe(data.folder("images") / f"{image}.toml").suite


def recipe_packages() -> tuple[dict[str, dict[str, set[str]]], dict[str, set[str]]]:
    """(suite -> debian package -> profiles needing it, other archive -> its packages)."""
    debian: dict[str, dict[str, set[str]]] = {}
    other: dict[str, set[str]] = {}
    for profile in load_profiles(DEFAULT_HWPROFILES):
        suite = suite_of(profile.image or DEFAULT_IMAGE)
        members = [
            Member(
                f"n{i}",
                f"52:54:00:00:00:0{i}",
                f"10.0.0.{i + 1}",
                profile.name,
                profile.drivers,
                gpu=profile.gpu.__dict__ if profile.gpu else None,
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
                        debian.setdefault(suite, {}).setdefault(package, set()).add(profile.name)
                    else:
                        other.setdefault(step.repository, set()).add(package)
    return debian, other


def test_the_recipes_name_their_packages() -> None:
    debian, other = recipe_packages()
    assert set(debian) == {"trixie"}  # every shipped profile's image is Debian 13's
    trixie = debian["trixie"]
    assert {"firmware-intel-graphics", "mesa-vulkan-drivers", "dkms"} <= set(trixie)
    assert trixie["firmware-intel-graphics"] == {
        "intel-arc-a770",
        "intel-arc-alchemist",
        "intel-arc-battlemage",
    }
    # what llama.cpp's builds link (the runtime packages their manifests name)
    assert set(RUNTIME) <= set(trixie)
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
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
    debian, other = recipe_packages()
    print(f"not resolved here (other archives): {dict(other)}")
    chroot = ["chroot", str(root)]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    for suite, packages in sorted(debian.items()):
        # the release's own archives (a bookworm root simulates an install from trixie:
        # what it would upgrade is part of the answer, and nothing is installed)
        lines = sources_lines(mirror, suite, ("main", "non-free-firmware"), True)
        (root / "etc/apt/sources.list").write_text("\n".join(lines) + "\n")
        update = subprocess.run(
            [*chroot, "apt-get", "update", "-qq"], capture_output=True, text=True, env=env
        )
        assert update.returncode == 0, update.stderr
        simulate = subprocess.run(
            [*chroot, "apt-get", "install", "--simulate", "-qq", *sorted(packages)],
            capture_output=True, text=True, env=env,
        )  # fmt: skip
        assert simulate.returncode == 0, f"{suite}: {simulate.stdout[-3000:]}\n{simulate.stderr}"
        for package in packages:
            assert f"Inst {package} " in simulate.stdout, (suite, package)
