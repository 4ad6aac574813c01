"""The accelerator table (hwprofiles/accelerators.yaml) and how devices are counted."""

from __future__ import annotations

import re

import pytest

from provisioner.discovery import pciids
from provisioner.discovery.accelerators import (
    DEFAULT_TABLE,
    AcceleratorTableError,
    accelerators,
    default_table,
    name_accelerators,
    parse_table,
    summary,
)
from provisioner.discovery.model import Inventory, PciDevice

installed = pytest.mark.skipif(
    not pciids.default(), reason="no pci.ids installed (apt-get install pci.ids)"
)

REQUIRED_SLUGS = {
    "nvidia-rtx-3050", "intel-arc-a770", "intel-arc-a750", "intel-arc-a580", "intel-arc-a380",
    "amd-ryzen-ai-npu", "nvidia-p40", "nvidia-v100-sxm2-16gb", "nvidia-v100s-pcie-32gb",
    "google-coral-edge-tpu", "amd-vega20", "nvidia-tesla-t4", "nvidia-a100-sxm4-80gb",
    "nvidia-rtx-2070", "nvidia-rtx-2060-super", "nvidia-rtx-2080", "nvidia-rtx-3060",
    "nvidia-rtx-3080-lhr", "nvidia-rtx-3090", "nvidia-rtx-4090", "nvidia-gt-1030",
    "nvidia-rtx-2000-ada-laptop",
}  # fmt: skip


def test_table_loads_and_has_the_targets() -> None:
    table = default_table()
    assert table.slugs() >= REQUIRED_SLUGS
    for entry in table.entries:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", entry.slug)
        assert entry.source


def test_table_has_no_duplicate_ids() -> None:
    keys = [(e.vendor, e.device, e.revision) for e in default_table().entries]
    assert len(keys) == len(set(keys))


@installed
def test_every_id_is_checked_against_installed_pci_ids() -> None:
    db = pciids.default()
    for entry in default_table().entries:
        assert db.vendor_name(entry.vendor), entry
        name = db.name(entry.vendor, entry.device)
        if entry.in_pci_ids:
            assert name is not None, f"{entry.vendor}:{entry.device} not in pci.ids {db.version}"
            assert f"'{name}'" in entry.source, f"source should quote pci.ids: {entry}"
        else:
            # Newer than the installed pci.ids: the kernel driver table is the citation.
            assert "drivers/" in entry.source, entry


@pytest.mark.parametrize(
    ("revision", "family"),
    [
        ("10", "XDNA2 NPU4 (Strix Point)"),
        ("11", "XDNA2 NPU5 (Strix Halo)"),
        ("20", "XDNA2 NPU6 (Krackan Point)"),
    ],
)
def test_npu_generation_by_revision(revision: str, family: str) -> None:
    npu = PciDevice(address="c5:00.1", vendor="1022", device="17f0", revision=revision)
    [found] = accelerators(Inventory(pci=(npu,)))
    assert (found.slug, found.family) == ("amd-ryzen-ai-npu", family)


def test_npu_without_revision_still_named_unknown_revision_not() -> None:
    bare = PciDevice(vendor="1022", device="17f0", device_name="Strix/Krackan/Strix Halo NPU")
    [found] = accelerators(Inventory(pci=(bare,)))
    assert (found.slug, found.family) == ("amd-ryzen-ai-npu", None)  # generation unknown
    # pci.ids names it since 2024 (the copy shipped in hwprofiles/); Debian 12's does not
    assert found.name in ("Strix/Krackan/Strix Halo Neural Processing Unit", bare.device_name)
    # a revision the driver's table does not name yet: still the NPU (every 17f0 is)
    [newer] = accelerators(Inventory(pci=(PciDevice(vendor="1022", device="17f0", revision="30"),)))
    assert (newer.slug, newer.family) == (
        "amd-ryzen-ai-npu",
        "XDNA2 (a revision the driver's table does not name yet)",
    )


@installed
def test_igpu_bmc_and_virtio_are_not_accelerators() -> None:
    devices = (
        PciDevice(address="00:02.0", vendor="8086", device="4680"),  # UHD 770 iGPU
        PciDevice(
            address="24:00.0",
            vendor_name="ASPEED Technology, Inc.",
            device_name="ASPEED Graphics Family",
        ),
        PciDevice(address="0a:00.0", vendor="102b", device="0522"),  # Matrox G200e (BMC)
        PciDevice(address="00:01.0", vendor="1af4", device="1050"),  # virtio-gpu
    )
    assert accelerators(Inventory(pci=devices)) == []


@installed
def test_same_device_twice_counts_once_and_names_come_from_pci_ids() -> None:
    gpu = PciDevice(address="00000000:01:00.0", vendor="10de", device="2204", device_name="x")
    again = PciDevice(
        address="01:00.0", vendor_name="NVIDIA Corporation", device_name="GA102 [GeForce RTX 3090]"
    )
    [found] = accelerators(Inventory(pci=(gpu, again)))
    assert (found.slug, found.count, found.name) == (
        "nvidia-rtx-3090",
        1,
        "GA102 [GeForce RTX 3090]",
    )
    assert found.ids_from_dump


@installed
def test_name_only_device_says_its_ids_are_from_pci_ids() -> None:
    v100 = PciDevice(vendor_name="NVIDIA Corporation", device_name="GV100GL [Tesla V100 SXM2 16GB]")
    [found] = accelerators(Inventory(pci=(v100, v100)))
    assert (found.slug, found.device, found.count) == ("nvidia-v100-sxm2-16gb", "1db1", 2)
    assert not found.ids_from_dump


@installed
def test_ambiguous_name_is_reported_not_guessed() -> None:
    # 'GA106 [GeForce RTX 3060]' is 2501, 2503 and 2544: all rtx-3060, so it counts.
    named = PciDevice(vendor_name="NVIDIA Corporation", device_name="GA106 [GeForce RTX 3060]")
    assert summary(accelerators(Inventory(pci=(named,)))) == {"nvidia-rtx-3060": 1}
    # 'HD Graphics 530' (two ids, neither in the table) is simply not an accelerator.
    igpu = PciDevice(vendor_name="Intel Corporation", device_name="HD Graphics 530")
    assert name_accelerators(Inventory(pci=(igpu,))) == ([], [])


def test_ambiguous_across_slugs_is_a_problem() -> None:
    db = pciids.parse("10de  NVIDIA Corporation\n\t0001  X [Card]\n\t0002  Y [Card]\n")
    table = parse_table(
        "accelerators:\n"
        "  - {slug: a, vendor: '10de', device: '0001', source: s}\n"
        "  - {slug: b, vendor: '10de', device: '0002', source: s}\n"
    )
    found, problems = name_accelerators(Inventory(pci=(PciDevice(device_name="Card"),)), table, db)
    assert found == [] and "ambiguous" in problems[0]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("accelerators: 3", "expected a list"),
        (
            "accelerators:\n  - {slug: a, vendor: '10de', device: '1', source: s, colour: red}",
            "colour: unknown key",
        ),
        ("accelerators:\n  - {slug: a, vendor: 'nvda', device: '0001', source: s}", "4 hex digits"),
        ("accelerators:\n  - {slug: a, vendor: '10de', device: '0001'}", "source: required"),
        (
            "accelerators:\n  - {slug: a, vendor: '10de', device: '0001', revision: zz, source: s}",
            "revision",
        ),
        ("accelerators: [", "not YAML"),
    ],
)
def test_bad_table_is_refused(text: str, reason: str) -> None:
    with pytest.raises(AcceleratorTableError, match=re.escape(reason)):
        parse_table(text)


def test_default_table_path_is_in_hwprofiles() -> None:
    assert DEFAULT_TABLE.parent.name == "hwprofiles" and DEFAULT_TABLE.is_file()
