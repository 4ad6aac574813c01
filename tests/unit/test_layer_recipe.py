"""Layer recipes (a base image recipe plus what one kind of hardware needs): validation,
the mmdebstrap command line they give, and the pure parts of their build report (what the
layer added, where a kernel module lies, the layer's size limit)."""

from __future__ import annotations

import lzma
import struct
from pathlib import Path

import pytest

from provisioner.image import ImageError, RecipeError, guardrails
from provisioner.image.layer_build import (
    BASE_DU,
    BASE_PACKAGES,
    LAYER_DU,
    added_packages,
    du_bytes,
    find_modules,
    layer_report,
    vermagic,
)
from provisioner.image.rootfs import mmdebstrap_argv
from provisioner.image.rootfs_recipe import load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[2]

BASE = """\
name = "node"
[debian]
suite = "trixie"
[kernel]
package = "linux-image-amd64"
[packages]
include = ["systemd", "openssh-server", "live-boot"]
[files]
agent = "agent.sh"
"""

LAYER = """\
name = "node-gpu"
base = "base.toml"
[layer]
description = "a GPU"
packages = ["mesa-vulkan-drivers", "firmware-amd-graphics/trixie-backports"]
components = ["non-free-firmware"]
kernel = "trixie-backports"
dkms = true
modules = ["amdxdna"]
max_mib = 300
"""


@pytest.fixture
def recipes(tmp_path: Path) -> Path:
    (tmp_path / "agent.sh").write_text("#!/bin/sh\n")
    (tmp_path / "base.toml").write_text(BASE)
    return tmp_path


def test_a_layer_is_its_base_renamed_with_the_layer_on_top(recipes: Path) -> None:
    base = load_recipe(recipes / "base.toml")
    recipe = parse_recipe(LAYER.encode(), recipes / "layer.toml")
    assert recipe.name == "node-gpu"
    assert recipe.suite == "trixie"
    assert recipe.packages == base.packages  # the layer's are installed on top, by a hook
    assert recipe.layer is not None
    assert recipe.layer.base == recipes / "base.toml"
    assert recipe.layer.packages == (
        "mesa-vulkan-drivers",
        "firmware-amd-graphics/trixie-backports",
    )
    assert recipe.layer.suites == ("trixie-backports",)  # the kernel's suite is a source
    assert recipe.layer.max_bytes == 300 * 2**20
    assert recipe.all_components == ("main", "non-free-firmware")
    assert recipe.kernel_include == "linux-image-amd64/trixie-backports"
    # A change to the base is a change to the layer's image.
    assert recipe.sha256 != base.sha256
    (recipes / "base.toml").write_text(BASE.replace('"live-boot"]', '"live-boot", "less"]'))
    assert parse_recipe(LAYER.encode(), recipes / "layer.toml").sha256 != recipe.sha256


def test_the_layer_hooks_run_before_the_base_drops_resolv_conf(recipes: Path) -> None:
    recipe = parse_recipe(LAYER.encode(), recipes / "layer.toml")
    argv = mmdebstrap_argv(
        recipe, "http://m/debian", Path("/w/root"), Path("/c/a"), Path("/w/s"),
        reports=Path("/w/reports"),
    )  # fmt: skip
    assert "--components=main,non-free-firmware" in argv
    assert "--include=linux-image-amd64/trixie-backports,systemd,openssh-server,live-boot" in argv
    assert argv[-3:] == [  # the layer's suite (the kernel's) is a source of its own
        "deb http://m/debian trixie-updates main non-free-firmware",
        "deb http://m/debian-security trixie-security main non-free-firmware",
        "deb http://m/debian trixie-backports main non-free-firmware",
    ]
    hooks = [a.removeprefix("--customize-hook=") for a in argv if a.startswith("--customize")]
    install = next(i for i, h in enumerate(hooks) if "apt-get install" in h)
    dropped = hooks.index('rm -f "$1"/etc/hostname "$1"/etc/resolv.conf')
    assert install < dropped
    assert "mesa-vulkan-drivers firmware-amd-graphics/trixie-backports" in hooks[install]
    assert "--no-install-recommends" in hooks[install]
    assert f"/w/reports/{BASE_PACKAGES}" in hooks[0]
    assert any('dkms autoinstall -k "$k"' in h for h in hooks)
    assert hooks.index(next(h for h in hooks if LAYER_DU in h)) > install
    with pytest.raises(ValueError, match="reports"):
        mmdebstrap_argv(recipe, "http://m", Path("/r"), Path("/a"), Path("/s"))


BAD = [
    ('name = "x"\nbase = "nope.toml"\n[layer]\npackages = ["a1"]\n', "base", "is not a file"),
    ('name = "x"\nbase = "base"\n[layer]\npackages = ["a1"]\n', "base", "must name the base"),
    ('name = "x"\nbase = "base.toml"\n[layer]\n', "layer.packages", "has neither"),
    ('name = "x"\nbase = "base.toml"\n[layer]\npackages = ["A b"]\n', "layer.packages",
     "does not match"),
    ('name = "x"\nbase = "base.toml"\n[layer]\npackages = ["a1", "a1"]\n', "layer.packages",
     "twice"),
    ('name = "x"\nbase = "base.toml"\n[layer]\npackages = ["a1"]\nmax_mib = 0\n',
     "layer.max_mib", "positive"),
    ('name = "x"\nbase = "base.toml"\n[layer]\npackages = ["a1"]\ndkms = "yes"\n',
     "layer.dkms", "true or false"),
    ('name = "x"\nbase = "base.toml"\n[layer]\npackages = ["a1"]\nsize = 1\n',
     "layer.size", "unknown key"),
    ('name = "x"\nbase = "base.toml"\n[layer]\nkernel = "trixie"\n', "layer.kernel",
     "the base's own suite"),
    ('name = "x"\nbase = "base.toml"\n[layer]\npackages = ["a1"]\n[debian]\nsuite = "sid"\n',
     "debian", "unknown key in a layer recipe"),
    ('base = "base.toml"\n[layer]\npackages = ["a1"]\n', "name", "missing"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "key", "reason"), BAD)
def test_bad_layers_name_the_file_the_key_and_why(
    recipes: Path, text: str, key: str, reason: str
) -> None:
    with pytest.raises(RecipeError) as caught:
        parse_recipe(text.encode(), recipes / "layer.toml")
    message = str(caught.value)
    assert "layer.toml" in message
    assert key in message
    assert reason in message


def test_a_layer_on_a_layer_is_refused(recipes: Path) -> None:
    (recipes / "mid.toml").write_text(LAYER)
    text = 'name = "top"\nbase = "mid.toml"\n[layer]\npackages = ["a1"]\n'
    with pytest.raises(RecipeError, match="is itself a layer"):
        parse_recipe(text.encode(), recipes / "top.toml")


@pytest.mark.parametrize(
    ("name", "kernel_suite", "modules"),
    [
        ("debian-trixie-vulkan", None, ()),
        ("debian-trixie-nvidia", None, ("nvidia-current", "nvidia-current-uvm")),
        ("debian-trixie-ryzen-ai", "trixie-backports", ("amdxdna", "amdgpu")),
        ("debian-trixie-intel-arc", None, ("i915", "xe")),
    ],
)
def test_the_shipped_layers_load(
    name: str, kernel_suite: str | None, modules: tuple[str, ...]
) -> None:
    recipe = load_recipe(ROOT / "images" / f"{name}.toml")
    assert recipe.name == name
    assert recipe.layer is not None
    assert recipe.layer.base == ROOT / "images" / "debian-trixie.toml"
    assert recipe.layer.kernel_suite == kernel_suite
    assert recipe.layer.modules == modules
    assert recipe.layer.max_bytes is not None


# ---------------------------------------------------------------- the build report


def test_added_packages_are_new_or_moved() -> None:
    base = ("bash 5.2", "libdrm2 2.4.1", "systemd 257")
    final = ("bash 5.2", "libdrm2 2.4.2", "mesa-vulkan-drivers 25.0", "systemd 257")
    assert added_packages(base, final) == ("libdrm2 2.4.2", "mesa-vulkan-drivers 25.0")


def test_du_bytes() -> None:
    assert du_bytes("1000\t/r\n300\t/r/boot\n") == 700
    with pytest.raises(ImageError, match="unexpected du output"):
        du_bytes("1000\t/r\n")


def test_find_modules(tmp_path: Path) -> None:
    drivers = tmp_path / "usr/lib/modules/7.3.4-amd64/kernel/drivers"
    (drivers / "accel/amdxdna").mkdir(parents=True)
    (drivers / "accel/amdxdna/amdxdna.ko.xz").write_bytes(b"")
    (drivers / "gpu").mkdir()
    (drivers / "gpu/nvidia_uvm.ko").write_bytes(b"")
    (tmp_path / "lib").symlink_to("usr/lib")  # merged /usr, as trixie has it
    found = find_modules(tmp_path, "7.3.4-amd64", ["amdxdna", "nvidia-uvm", "nvidia"])
    assert found == {
        "amdxdna": tmp_path / "lib/modules/7.3.4-amd64/kernel/drivers/accel/amdxdna/amdxdna.ko.xz",
        "nvidia-uvm": tmp_path / "lib/modules/7.3.4-amd64/kernel/drivers/gpu/nvidia_uvm.ko",
    }


def write_reports(tmp_path: Path) -> Path:
    """What a layer's hooks leave: a base of one package, 90 bytes before and 290 after."""
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / BASE_PACKAGES).write_text("bash 5.2\n")
    (reports / BASE_DU).write_text("100\t/r\n10\t/r/boot\n")
    (reports / LAYER_DU).write_text("300\t/r\n10\t/r/boot\n")
    return reports


def test_a_layer_whose_kernel_lacks_a_module_is_refused(recipes: Path, tmp_path: Path) -> None:
    recipe = parse_recipe(LAYER.encode(), recipes / "layer.toml")
    assert recipe.layer is not None
    reports = write_reports(tmp_path)
    root = tmp_path / "root"
    (root / "lib/modules/6.12.1-amd64").mkdir(parents=True)
    with pytest.raises(ImageError, match=r"6\.12\.1-amd64 has no amdxdna module"):
        layer_report(recipe.layer, root, "6.12.1-amd64", reports, ("bash 5.2",))


def fake_module(vermagic: str) -> bytes:
    """A minimal ELF64 relocatable object whose ``.modinfo`` is what a module built for
    ``vermagic`` carries: what modinfo (and our reader) look at."""
    modinfo = f"license=GPL\0vermagic={vermagic}\0name=fake\0".encode()
    shstr = b"\0.modinfo\0.shstrtab\0"
    shstr_off = 64 + len(modinfo)
    sh_off = (shstr_off + len(shstr) + 7) // 8 * 8
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, sh_off, 0, 64, 0, 0, 64, 3, 2)

    def sh(name: int, kind: int, flags: int, offset: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, kind, flags, 0, offset, size, 0, 0, 1, 0)

    data = header + modinfo + shstr
    data += bytes(sh_off - len(data))
    return (
        data
        + sh(0, 0, 0, 0, 0)
        + sh(1, 1, 2, 64, len(modinfo))
        + sh(10, 3, 0, shstr_off, len(shstr))
    )


def test_a_module_built_for_another_kernel_is_refused(recipes: Path, tmp_path: Path) -> None:
    """DKMS building for the build host's kernel instead of the image's: refused."""
    root = tmp_path / "root"
    extra = root / "lib/modules/6.12.1-amd64/updates/dkms"
    extra.mkdir(parents=True)
    (extra / "nvidia.ko.xz").write_bytes(lzma.compress(fake_module("6.18.44-host SMP mod_unload")))
    assert vermagic(extra / "nvidia.ko.xz") == "6.18.44-host SMP mod_unload"
    recipe = parse_recipe(
        LAYER.replace('modules = ["amdxdna"]', 'modules = ["nvidia"]').encode(),
        recipes / "layer.toml",
    )
    assert recipe.layer is not None
    reports = write_reports(tmp_path)
    args = (recipe.layer, root, "6.12.1-amd64", reports, ("bash 5.2", "nvidia-kernel-dkms 550"))
    with pytest.raises(ImageError, match=r"built for \['6.18.44-host'\], not the image's kernel"):
        layer_report(*args, check_modprobe=False)
    # Built for the image's kernel, it passes, and the report says what the layer brought.
    (extra / "nvidia.ko.xz").write_bytes(lzma.compress(fake_module("6.12.1-amd64 SMP mod_unload")))
    report = layer_report(*args, check_modprobe=False)
    assert report["packages"] == ["nvidia-kernel-dkms 550"]
    assert report["added_bytes"] == 200
    assert report["base_packages"] == 1
    assert report["modules"] == {
        "nvidia": {
            "path": "/lib/modules/6.12.1-amd64/updates/dkms/nvidia.ko.xz",
            "vermagic": "6.12.1-amd64 SMP mod_unload",
        }
    }
    (extra / "nvidia.ko.xz").write_bytes(b"not an ELF")
    with pytest.raises(ImageError, match="cannot read module"):
        layer_report(*args, check_modprobe=False)


def test_the_layers_size_limit() -> None:
    assert guardrails.check_layer("l", 100 * 2**20, None) == []
    assert guardrails.check_layer("l", 100 * 2**20, 100 * 2**20) == []
    (finding,) = guardrails.check_layer("l", 101 * 2**20, 100 * 2**20)
    assert finding.is_error
    assert "adds 101 MiB" in finding.reason and "max_mib of 100 MiB" in finding.reason
