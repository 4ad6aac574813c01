"""The discovery image's pure parts: recipe validation, module selection and closure,
modules.dep/alias generation, modinfo parsing, apt output parsing, the initrd layout."""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from provisioner.image import ImageError, RecipeError
from provisioner.image.cpio import Device, File, Symlink
from provisioner.image.debs import Package, depends_on, package_from_stanza, parse_control
from provisioner.image.discovery import (
    Artifact,
    DiscoveryRecipe,
    Manifest,
    initrd_entries,
    load_recipe,
    parse_recipe,
)
from provisioner.image.kmod import (
    KernelTree,
    collect_modules,
    dependency_closure,
    glob_regex,
    load_order,
    module_name,
    parse_modinfo,
    parse_modules_dep,
    render_modules_dep,
    select_modules,
    softdep_names,
    strip_compression,
)

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "images" / "discovery.toml"

# ------------------------------------------------------------------------- recipe


def test_the_shipped_recipe_loads() -> None:
    recipe = load_recipe(RECIPE)
    assert recipe.name == "discovery"
    assert recipe.kernel_package == "linux-image-amd64"
    assert recipe.busybox_package == "busybox-static"
    assert "drivers/net/virtio_net.ko" in recipe.modules
    assert "drivers/virtio/virtio_pci.ko" in recipe.modules
    assert {"sh", "modprobe", "udhcpc", "wget", "poweroff", "cttyhack"} <= set(recipe.applets)
    assert recipe.init == ROOT / "images/discovery/init"
    assert recipe.agent == ROOT / "images/agent/provisioner-agent"
    assert recipe.netconsole == ROOT / "images/initramfs/provisioner-netconsole"
    assert "drivers/net/netconsole.ko" in recipe.modules
    assert {"ip", "ping", "sed", "tr", "head"} <= set(recipe.applets)  # what it runs
    assert len(recipe.sha256) == 64


GOOD = """\
name = "disc"
[kernel]
package = "linux-image-amd64"
[busybox]
package = "busybox-static"
applets = ["sh", "["]
[modules]
include = ["drivers/net/**"]
[files]
init = "init"
agent = "agent"
"""


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    (tmp_path / "init").write_text("#!/bin/sh\n")
    (tmp_path / "agent").write_text("#!/bin/sh\n")
    return tmp_path


def write_recipe(directory: Path, text: str) -> Path:
    path = directory / "recipe.toml"
    path.write_text(text)
    return path


def test_a_minimal_recipe_loads(recipe_dir: Path) -> None:
    recipe = load_recipe(write_recipe(recipe_dir, GOOD))
    assert recipe.exclude == ()
    assert recipe.applets == ("sh", "[")
    assert recipe.init == recipe_dir / "init"


@pytest.mark.parametrize(
    ("old", "new", "key", "reason"),
    [
        ('name = "disc"', 'name = "Disc Image"', "name", "does not match"),
        ('name = "disc"\n', "", "name", "missing"),
        ('package = "linux-image-amd64"', "package = 7", "kernel.package", "non-empty string"),
        ('[kernel]\npackage = "linux-image-amd64"\n', "", "kernel", "missing table"),
        ('applets = ["sh", "["]', 'applets = "sh"', "busybox.applets", "list of non-empty"),
        ('applets = ["sh", "["]', 'applets = ["sh", "a b"]', "busybox.applets", "not an applet"),
        ('include = ["drivers/net/**"]', "include = []", "modules.include", "must not be empty"),
        ('include = ["drivers/net/**"]', 'include = ["/lib/x.ko"]', "modules", "relative"),
        ('include = ["drivers/net/**"]', 'include = ["../x.ko"]', "modules", "relative"),
        ('init = "init"', 'init = "missing"', "files.init", "is not a file"),
        ('agent = "agent"', 'agent = "agent"\nextra = 1', "files.extra", "unknown key"),
        ('name = "disc"', 'name = "disc"\nversion = 2', "version", "unknown key"),
        ('name = "disc"', 'name = "disc', "(file)", "not valid TOML"),
    ],
)
def test_bad_recipes_name_the_file_and_the_key(
    recipe_dir: Path, old: str, new: str, key: str, reason: str
) -> None:
    assert old in GOOD
    path = write_recipe(recipe_dir, GOOD.replace(old, new))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert caught.value.key == key
    assert reason in caught.value.reason
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, ImageError)


def test_parse_recipe_hashes_the_bytes_it_was_given(recipe_dir: Path) -> None:
    text = GOOD.encode()
    recipe = parse_recipe(text, recipe_dir / "recipe.toml")
    assert recipe.sha256 == hashlib.sha256(text).hexdigest()
    assert recipe.source == recipe_dir / "recipe.toml"


def test_a_missing_recipe_file_is_a_recipe_error(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot read"):
        load_recipe(tmp_path / "nope.toml")


# ------------------------------------------------------------------------ modules


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("drivers/net/ethernet/**", "drivers/net/ethernet/intel/e1000e/e1000e.ko", True),
        ("drivers/net/ethernet/**", "drivers/net/virtio_net.ko", False),
        ("drivers/nvme/host/*", "drivers/nvme/host/nvme.ko", True),
        ("drivers/nvme/host/*", "drivers/nvme/host/sub/x.ko", False),
        ("drivers/**/virtio_net.ko", "drivers/virtio_net.ko", True),
        ("drivers/**/virtio_net.ko", "drivers/net/virtio_net.ko", True),
        ("drivers/ata/ahci.ko", "drivers/ata/ahci.ko", True),
        ("drivers/ata/ahci.ko", "drivers/ata/ahcixko", False),
        ("drivers/ata/ahci?ko", "drivers/ata/ahci.ko", True),
        ("drivers/scsi/[!v]*.ko", "drivers/scsi/sd_mod.ko", True),
        ("drivers/scsi/[!v]*.ko", "drivers/scsi/virtio_scsi.ko", False),
    ],
)
def test_glob_regex(pattern: str, path: str, matches: bool) -> None:
    assert bool(glob_regex(pattern).match(path)) is matches


def test_module_names_and_compression_suffixes() -> None:
    assert module_name("kernel/drivers/nvme/host/nvme-core.ko") == "nvme_core"
    assert module_name("kernel/drivers/net/virtio_net.ko.xz") == "virtio_net"
    assert strip_compression("kernel/a/b.ko.zst") == "kernel/a/b.ko"
    assert strip_compression("kernel/a/b.ko") == "kernel/a/b.ko"
    assert softdep_names("pre: crc32c realtek post: foo") == ("crc32c", "realtek", "foo")


def test_select_modules_includes_excludes_and_reports_builtins_and_misses() -> None:
    modules = [
        "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko",
        "kernel/drivers/net/ethernet/3com/3c589_cs.ko",
        "kernel/drivers/net/virtio_net.ko.xz",
        "kernel/drivers/block/loop.ko",
    ]
    builtin = ["kernel/net/packet/af_packet.ko", "kernel/drivers/block/brd.ko"]
    selection = select_modules(
        [
            "drivers/net/ethernet/**",
            "drivers/net/virtio_net.ko",
            "net/packet/af_packet.ko",
            "drivers/nvme/host/*",
        ],
        ["drivers/net/ethernet/**/*_cs.ko"],
        modules,
        builtin,
    )
    assert selection.modules == (
        "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko",
        "kernel/drivers/net/virtio_net.ko.xz",
    )
    assert selection.builtin == ("kernel/net/packet/af_packet.ko",)
    assert selection.unmatched == ("drivers/nvme/host/*",)


FAKE_MODULES_DEP = """\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko
kernel/drivers/nvme/host/nvme-core.ko:
kernel/drivers/broken.ko: kernel/drivers/missing.ko
"""  # noqa: E501


def test_parse_modules_dep() -> None:
    deps = parse_modules_dep(FAKE_MODULES_DEP + "\n# comment-free garbage line\n")
    assert deps["kernel/net/core/failover.ko"] == ()
    assert deps["kernel/drivers/net/net_failover.ko"] == ("kernel/net/core/failover.ko",)
    assert len(deps) == 8


def test_dependency_closure_is_transitive_and_sorted() -> None:
    deps = parse_modules_dep(FAKE_MODULES_DEP)
    closure = dependency_closure(["kernel/drivers/net/virtio_net.ko"], deps.__getitem__)
    assert closure == (
        "kernel/drivers/net/net_failover.ko",
        "kernel/drivers/net/virtio_net.ko",
        "kernel/drivers/virtio/virtio.ko",
        "kernel/net/core/failover.ko",
    )
    both = dependency_closure(
        ["kernel/drivers/nvme/host/nvme.ko", "kernel/drivers/block/virtio_blk.ko"],
        deps.__getitem__,
    )
    assert both == (
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/drivers/nvme/host/nvme-core.ko",
        "kernel/drivers/nvme/host/nvme.ko",
        "kernel/drivers/virtio/virtio.ko",
    )
    assert dependency_closure([], deps.__getitem__) == ()


def test_dependency_closure_names_who_needed_a_missing_module() -> None:
    deps = parse_modules_dep(FAKE_MODULES_DEP)
    with pytest.raises(ImageError, match=r"missing\.ko not found \(needed by .*broken\.ko\)"):
        dependency_closure(["kernel/drivers/broken.ko"], deps.__getitem__)


def test_modules_dep_lists_dependencies_last_loaded_first() -> None:
    direct = {
        "a.ko": ("b.ko", "c.ko"),
        "b.ko": ("c.ko",),
        "c.ko": ("d.ko",),
        "d.ko": (),
    }
    assert load_order("a.ko", direct.__getitem__) == ("d.ko", "c.ko", "b.ko")
    assert render_modules_dep(direct, direct.__getitem__) == (
        "a.ko: b.ko c.ko d.ko\nb.ko: c.ko d.ko\nc.ko: d.ko\nd.ko:\n"
    )


def fake_module(pairs: list[tuple[str, str]]) -> bytes:
    """A minimal ELF64 relocatable file: a null section, .modinfo and .shstrtab."""
    modinfo = b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    data_off = 64
    str_off = data_off + len(modinfo)
    shoff = str_off + len(shstrtab)
    shoff += -shoff % 8
    header = struct.pack(
        "<16sHHIQQQIHHHHHH",
        b"\x7fELF\x02\x01\x01" + b"\0" * 9,
        1,  # ET_REL
        62,  # x86-64
        1,
        0,
        0,
        shoff,
        0,
        64,
        0,
        0,
        64,
        3,
        2,
    )
    body = header + modinfo + shstrtab
    body += b"\0" * (shoff - len(body))

    def section(name: int, type_: int, offset: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, type_, 0, 0, offset, size, 0, 0, 1, 0)

    return (
        body
        + section(0, 0, 0, 0)
        + section(1, 1, data_off, len(modinfo))
        + section(10, 3, str_off, len(shstrtab))
    )


def test_parse_modinfo_reads_the_modinfo_section() -> None:
    pairs = [
        ("alias", "pci:v00001AF4d00001000sv*sd*bc*sc*i*"),
        ("depends", "virtio,net_failover"),
        ("softdep", "pre: crc32c"),
        ("description", "Virtio network driver = fast"),
        ("name", "virtio_net"),
    ]
    assert parse_modinfo(fake_module(pairs)) == tuple(pairs)
    with pytest.raises(ValueError, match="ELF"):
        parse_modinfo(b"not an elf file at all, no" * 4)


RELEASE = "6.1.0-99-amd64"


@pytest.fixture
def kernel_tree(tmp_path: Path) -> KernelTree:
    """An extracted 'kernel package': modules with modinfo, modules.builtin/order."""
    root = tmp_path / "kernel"
    base = root / "lib/modules" / RELEASE
    modules = {
        "kernel/drivers/net/virtio_net.ko": [
            ("alias", "virtio:d00000001v*"),
            ("depends", "net_failover,virtio"),
            ("name", "virtio_net"),
        ],
        "kernel/drivers/net/net_failover.ko": [("depends", "failover")],
        "kernel/net/core/failover.ko": [("depends", "")],
        "kernel/drivers/virtio/virtio.ko": [("depends", "")],
        "kernel/drivers/usb/host/xhci-pci.ko": [
            ("alias", "pci:v*d*sv*sd*bc0Csc03i30*"),
            ("depends", "xhci-hcd"),  # modinfo spells the file name, with a dash
            ("softdep", "pre: xhci-pci-renesas crc32c"),
        ],
        "kernel/drivers/usb/host/xhci-hcd.ko": [("depends", "")],
        "kernel/drivers/usb/host/xhci-pci-renesas.ko": [("depends", "")],
        "kernel/drivers/net/dummy.ko": [("depends", "")],
    }
    for rel, pairs in modules.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(fake_module(pairs))
    xz = base / "kernel/drivers/block/virtio_blk.ko.gz"
    xz.parent.mkdir(parents=True)
    xz.write_bytes(gzip.compress(fake_module([("depends", "virtio")])))
    (base / "modules.builtin").write_text("kernel/net/packet/af_packet.ko\n")
    (base / "modules.order").write_text(
        "kernel/drivers/virtio/virtio.ko\nkernel/drivers/net/dummy.ko\n"
        "kernel/net/core/failover.ko\nkernel/drivers/net/net_failover.ko\n"
        "kernel/drivers/net/virtio_net.ko\nkernel/drivers/block/virtio_blk.ko\n"
    )
    (root / "boot").mkdir()
    (root / "boot" / f"vmlinuz-{RELEASE}").write_bytes(b"kernel")
    return KernelTree(root)


def recipe_with(recipe_dir: Path, include: list[str]) -> DiscoveryRecipe:
    text = GOOD.replace('include = ["drivers/net/**"]', f"include = {include!r}".replace("'", '"'))
    return load_recipe(write_recipe(recipe_dir, text))


def test_collect_modules_builds_closure_and_busybox_index(
    kernel_tree: KernelTree, recipe_dir: Path
) -> None:
    recipe = recipe_with(
        recipe_dir,
        [
            "drivers/net/virtio_net.ko",
            "drivers/block/virtio_blk.ko",
            "drivers/usb/host/xhci-pci.ko",
            "net/packet/af_packet.ko",
        ],
    )
    assert kernel_tree.release == RELEASE
    found = collect_modules(recipe, kernel_tree)
    paths = [m.path for m in found.modules]
    assert paths == [
        "kernel/drivers/block/virtio_blk.ko",  # decompressed, named .ko
        "kernel/drivers/net/net_failover.ko",
        "kernel/drivers/net/virtio_net.ko",
        "kernel/drivers/usb/host/xhci-hcd.ko",
        "kernel/drivers/usb/host/xhci-pci-renesas.ko",  # softdep that exists as a module
        "kernel/drivers/usb/host/xhci-pci.ko",
        "kernel/drivers/virtio/virtio.ko",
        "kernel/net/core/failover.ko",
    ]
    assert found.modules[0].data.startswith(b"\x7fELF")
    assert found.builtin == ("kernel/net/packet/af_packet.ko",)
    dep = parse_modules_dep(found.index["modules.dep"])
    # modprobe loads from the end of the list: failover before net_failover
    assert dep["kernel/drivers/net/virtio_net.ko"] == (
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/net/net_failover.ko",
        "kernel/net/core/failover.ko",
    )
    # softdeps are not hard dependencies: busybox modprobe would refuse a missing one
    assert dep["kernel/drivers/usb/host/xhci-pci.ko"] == ("kernel/drivers/usb/host/xhci-hcd.ko",)
    assert found.index["modules.alias"] == (
        "alias virtio:d00000001v* virtio_net\nalias pci:v*d*sv*sd*bc0Csc03i30* xhci_pci\n"
    )
    order = found.index["modules.order"].splitlines()
    assert order[:5] == [
        "kernel/drivers/virtio/virtio.ko",
        "kernel/net/core/failover.ko",
        "kernel/drivers/net/net_failover.ko",
        "kernel/drivers/net/virtio_net.ko",
        "kernel/drivers/block/virtio_blk.ko",
    ]
    assert sorted(order) == sorted(paths)
    assert found.index["modules.builtin"] == "kernel/net/packet/af_packet.ko\n"


def test_a_pattern_that_matches_nothing_fails_the_build(
    kernel_tree: KernelTree, recipe_dir: Path
) -> None:
    recipe = recipe_with(recipe_dir, ["drivers/net/virtio_net.ko", "drivers/nvme/host/*"])
    with pytest.raises(ImageError, match=r"drivers/nvme/host/\*.*match no module"):
        collect_modules(recipe, kernel_tree)


def test_initrd_layout(kernel_tree: KernelTree, recipe_dir: Path) -> None:
    recipe = recipe_with(recipe_dir, ["drivers/net/virtio_net.ko"])
    found = collect_modules(recipe, kernel_tree)
    entries = {e.path: e for e in initrd_entries(recipe, RELEASE, found, b"busybox")}
    assert entries["init"] == File("init", b"#!/bin/sh\n", 0o755)
    assert entries["usr/bin/provisioner-agent"] == File(
        "usr/bin/provisioner-agent", b"#!/bin/sh\n", 0o755
    )
    assert entries["bin/busybox"] == File("bin/busybox", b"busybox", 0o755)
    assert entries["bin/sh"] == Symlink("bin/sh", "busybox")
    assert entries["bin/["] == Symlink("bin/[", "busybox")
    assert entries["sbin"] == Symlink("sbin", "bin")
    console = entries["dev/console"]
    assert isinstance(console, Device) and (console.major, console.minor) == (5, 1)
    null = entries["dev/null"]
    assert isinstance(null, Device) and (null.major, null.minor) == (1, 3)
    moddir = f"lib/modules/{RELEASE}"
    for name in ("modules.dep", "modules.alias", "modules.builtin", "modules.order"):
        assert f"{moddir}/{name}" in entries
    assert f"{moddir}/kernel/drivers/net/virtio_net.ko" in entries
    assert "usr/bin/provisioner-netconsole" not in entries  # the recipe names none
    script = ROOT / "images/initramfs/provisioner-netconsole"
    entries = {
        e.path: e
        for e in initrd_entries(replace(recipe, netconsole=script), RELEASE, found, b"busybox")
    }
    assert entries["usr/bin/provisioner-netconsole"] == File(
        "usr/bin/provisioner-netconsole", script.read_bytes(), 0o755
    )


def test_kernel_tree_refuses_a_package_without_vmlinuz(kernel_tree: KernelTree) -> None:
    (kernel_tree.vmlinuz).unlink()
    with pytest.raises(ImageError, match="vmlinuz"):
        KernelTree(kernel_tree.base.parents[2])


# ----------------------------------------------------------- apt output, manifest

APT_SHOW = """\
Package: linux-image-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Architecture: amd64
Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)
Description: Linux for 64-bit PCs (meta-package)
 This package depends on the latest Linux kernel.
Filename: pool/updates/main/l/linux-signed-amd64/linux-image-amd64_6.1.192-2_amd64.deb
Size: 1480
SHA256: 45457BCFC86C87585800B5656BDF2773B063A3BB95486B0E820D51E870491F8D

Package: busybox-static
Version: 1:1.35.0-4+deb12u1+b1
Architecture: amd64
Size: 928188
SHA256: 00
"""


def test_parse_control_and_package_fields() -> None:
    stanzas = parse_control(APT_SHOW)
    assert len(stanzas) == 2
    assert stanzas[0]["Description"].endswith("\nThis package depends on the latest Linux kernel.")
    meta = package_from_stanza(stanzas[0])
    assert meta.sha256.startswith("45457bcf")
    assert meta.size == 1480
    busybox = package_from_stanza(stanzas[1])
    assert busybox.filename == "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"
    with pytest.raises(ImageError, match="SHA256"):
        package_from_stanza({"Package": "x", "Version": "1", "Architecture": "all", "Size": "1"})


@pytest.mark.parametrize(
    ("depends", "expected"),
    [
        ("linux-image-6.1.0-56-amd64 (= 6.1.192-2)", ("linux-image-6.1.0-56-amd64", "6.1.192-2")),
        ("kmod, linux-image-6.1.0-9-amd64 (>= 6.1)", ("linux-image-6.1.0-9-amd64", None)),
        ("linux-image-a | linux-image-b, linux-image-c", ("linux-image-c", None)),
        ("linux-image-6.1.0-56-amd64:amd64", ("linux-image-6.1.0-56-amd64", None)),
    ],
)
def test_depends_on_picks_the_versioned_package(
    depends: str, expected: tuple[str, str | None]
) -> None:
    assert depends_on(depends, "linux-image-") == expected


def test_depends_on_without_a_match_is_an_error() -> None:
    with pytest.raises(ImageError, match="linux-image-"):
        depends_on("kmod, linux-base", "linux-image-")


def test_manifest_round_trips_through_json() -> None:
    manifest = Manifest(
        name="discovery",
        kernel_package="linux-image-6.1.0-56-amd64",
        kernel_version="6.1.192-2",
        kernel_release="6.1.0-56-amd64",
        busybox_package="busybox-static",
        busybox_version="1:1.35.0-4+deb12u1+b1",
        module_count=165,
        builtin_matches=("kernel/net/packet/af_packet.ko",),
        vmlinuz=Artifact("vmlinuz", 8247232, "a" * 64),
        initrd=Artifact("initrd", 12648839, "b" * 64),
        built_at="2026-01-01T00:00:00+00:00",
        build_seconds=8.5,
        recipe_sha256="c" * 64,
        builder_version=1,
        provisioner_version="0.1.0",
    )
    assert Manifest.from_json(manifest.to_json()) == manifest
    with pytest.raises(ImageError, match="manifest"):
        Manifest.from_json('{"name": "x"}')


def test_package_filename_without_epoch() -> None:
    package = Package("linux-image-6.1.0-56-amd64", "6.1.192-2", "amd64", "0" * 64, 1)
    assert package.filename == "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb"
