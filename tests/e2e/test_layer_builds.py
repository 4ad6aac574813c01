"""The hardware layers that cannot boot here, built for real (opt-in: ``-m heavy`` or this
file named; minutes of compiling and downloads on 2 cores, so not in CI):

- debian-trixie-nvidia: NVIDIA's driver from Debian's non-free archive, its kernel modules
  compiled by DKMS at image build for the image's kernel. The manifest's vermagic of
  nvidia-current.ko names the image's kernel (the build also had the image's own modinfo
  find it by name). **Not booted: there is no NVIDIA GPU here.**
- debian-trixie-ryzen-ai: trixie-backports' kernel, whose modules include amdxdna.ko (the
  XDNA NPU's driver) and amdgpu.ko; a node of the Ryzen AI profile (Linux 6.14 or newer)
  is not refused on it. **Not booted: there is no Ryzen AI board here.**
- debian-trixie-vulkan built twice from the same inputs: the second build publishes
  nothing (the same vmlinuz, initrd and squashfs bytes), and `image diff` says identical.

Prints each build's time and squashfs size (the issue's figures).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from provisioner.image.diff import diff_manifests
from provisioner.image.discovery import default_cache
from provisioner.image.rootfs import Manifest, build_rootfs
from provisioner.image.store import ImageStore
from provisioner.kernel_need import KernelNeed, refusal
from provisioner.profiles import load_profiles

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.root, pytest.mark.mirror, pytest.mark.heavy]


def build(name: str, store: Path) -> tuple[Manifest, float]:
    started = time.monotonic()
    manifest = build_rootfs(ROOT / "images" / f"{name}.toml", store, default_cache(), print)
    seconds = time.monotonic() - started
    print(
        f"{name}: built in {seconds:.1f} s (mmdebstrap {manifest.mmdebstrap_seconds} s, "
        f"downloaded {manifest.download_bytes} B), squashfs {manifest.squashfs.size} B, "
        f"kernel {manifest.kernel_release}"
    )
    return manifest, seconds


def test_the_nvidia_layer_has_modules_built_for_the_images_kernel(tmp_path: Path) -> None:
    manifest, _ = build("debian-trixie-nvidia", tmp_path)
    assert manifest.layer is not None
    modules = manifest.layer["modules"]
    assert set(modules) == {"nvidia-current", "nvidia-current-uvm"}
    for module in modules.values():
        assert module["vermagic"].split()[0] == manifest.kernel_release
        assert f"/lib/modules/{manifest.kernel_release}/" in module["path"]
    assert any("nvidia-current" in line and "installed" in line for line in manifest.layer["dkms"])
    names = {line.split()[0] for line in manifest.layer["packages"]}
    assert {"nvidia-kernel-dkms", "nvidia-smi", "libcuda1"} <= names
    print("not booted: no NVIDIA GPU on this machine")


def test_the_ryzen_ai_layer_runs_a_kernel_with_amdxdna(tmp_path: Path) -> None:
    manifest, _ = build("debian-trixie-ryzen-ai", tmp_path)
    assert manifest.layer is not None and manifest.layer["kernel_suite"] == "trixie-backports"
    modules = manifest.layer["modules"]
    assert modules["amdxdna"]["path"].endswith(("amdxdna.ko", "amdxdna.ko.xz", "amdxdna.ko.zst"))
    assert "/drivers/accel/amdxdna/" in modules["amdxdna"]["path"]
    profile = load_profiles(ROOT / "hwprofiles").get("amd-ryzen-ai-npu")
    assert profile is not None and profile.kernel is not None
    assert profile.image == "debian-trixie-ryzen-ai"
    assert refusal(profile.name, profile.kernel, manifest.name, manifest.kernel_release) is None
    assert refusal("p", KernelNeed("99.0", "x"), manifest.name, manifest.kernel_release)
    print("not booted: no Ryzen AI board on this machine")


def test_two_builds_of_a_layer_are_the_same_bytes(tmp_path: Path) -> None:
    first, _ = build("debian-trixie-vulkan", tmp_path)
    second, seconds = build("debian-trixie-vulkan", tmp_path)
    store = ImageStore(tmp_path)
    assert [i.ref for i in store.versions("debian-trixie-vulkan")] == ["debian-trixie-vulkan@1"]
    for name in ("vmlinuz", "initrd", "squashfs"):
        assert getattr(first, name).sha256 == getattr(second, name).sha256, name
    a, b = (json.loads(m.to_json()) for m in (first, second))
    diff = diff_manifests("first", a, "second", b)
    assert diff.identical, diff.lines()
    print(f"second build: {seconds:.1f} s, identical")
