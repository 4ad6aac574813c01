"""GPU families (hwprofiles/gpu-families.yaml, provisioner/discovery/families.py) and the
family profiles: members come from pci.ids by chip name, the facts downstream (compute
capability, driver modules and branch, engine and build) stay right for every member, and
a card profile beats its family."""

from __future__ import annotations

import re

import pytest

from provisioner.data import HWPROFILES
from provisioner.discovery import families, pciids
from provisioner.discovery.model import Inventory, PciDevice
from provisioner.enroll.fingerprint import fingerprint
from provisioner.profiles import Engine, PciRule, load_profiles

DB = pciids.default()
TABLE = families.load()
PROFILES = load_profiles(HWPROFILES)
FAMILY_PROFILES = [p for p in PROFILES if p.family]
RECIPE_BRANCH = 580  # postinstall/driver-nvidia-driver.yaml pins nvidia-driver-pinning-580


def test_the_shipped_pci_ids_is_the_newest_and_is_used() -> None:
    assert DB.version is not None and DB.version >= "2026.08.22"
    assert pciids.newest()[0].name in ("pci.ids.gz", "pci.ids")


@pytest.mark.parametrize(
    ("ids", "family"),
    [
        ("10de:1b38", "nvidia-pascal"),  # Tesla P40
        ("10de:15f8", "nvidia-pascal-gp100"),  # Tesla P100 PCIe 16GB
        ("10de:1db1", "nvidia-volta"),  # V100 SXM2 16GB
        ("10de:1eb8", "nvidia-turing"),  # T4
        ("10de:1f92", "nvidia-turing"),  # GTX 1650 Mobile (TU117M)
        ("10de:20b2", "nvidia-ampere-ga100"),  # A100 SXM4 80GB
        ("10de:2507", "nvidia-ampere"),  # RTX 3050
        ("10de:2882", "nvidia-ada"),  # RTX 4060 (AD107)
        ("10de:27b8", "nvidia-ada"),  # L4
        ("10de:2330", "nvidia-hopper"),  # H100 SXM5 80GB
        ("10de:2901", "nvidia-blackwell-dc"),  # B200
        ("10de:2b85", "nvidia-blackwell"),  # RTX 5090
        ("8086:56a0", "intel-arc-alchemist"),  # A770
        ("8086:5693", "intel-arc-alchemist"),  # A370M
        ("8086:e20b", "intel-arc-battlemage"),  # B580
        ("10de:1ad6", None),  # TU102 USB 3.1 Host Controller: not the GPU
        ("10de:22a3", None),  # GH100 [H100 NVSwitch]: not a GPU
        ("10de:0fc8", None),  # GT 740 (Kepler): below compute capability 6.0
        ("8086:7d55", None),  # Meteor Lake-P [Intel Arc Graphics]: an iGPU
        ("8086:b080", None),  # Panther Lake [Arc B390]: an iGPU
    ],
)
def test_membership_follows_the_pci_ids_chip_name(ids: str, family: str | None) -> None:
    vendor, device = ids.split(":")
    found = TABLE.family_of(vendor, device, DB)
    assert (found.name if found else None) == family, DB.name(vendor, device)


def test_no_id_is_in_two_families_and_every_family_has_members() -> None:
    seen: dict[tuple[str, str], str] = {}
    for family in TABLE.families:
        members = TABLE.members(family, DB)
        assert members, family.name
        for m in members:
            assert (m.vendor, m.device) not in seen, (m, seen.get((m.vendor, m.device)))
            seen[m.vendor, m.device] = family.name
            assert m.name.startswith(m.chip) and not re.search("(?i)audio|usb|nvswitch", m.name)


@pytest.mark.parametrize("profile", FAMILY_PROFILES, ids=lambda p: p.name)
def test_a_family_profiles_facts_are_its_familys(profile: object) -> None:
    from provisioner.profiles import Profile

    assert isinstance(profile, Profile) and profile.family is not None
    family = TABLE.get(profile.family)
    assert family is not None and family.name == profile.name
    rule = next(r for r in profile.all_of if isinstance(r, PciRule))
    assert {(i.vendor, i.device) for i in rule.ids} == set(TABLE.member_ids(family.name, DB))
    gpu = profile.gpu
    assert gpu is not None
    if family.vendor != "10de":
        assert profile.engine is Engine.LLAMA_RPC
        llama = profile.engine_rule(Engine.LLAMA_RPC)
        assert llama is not None and llama.setting("backend") == "vulkan"
        return
    assert gpu.compute_capability == family.compute_capability
    llama = profile.engine_rule(Engine.LLAMA_RPC)
    assert llama is not None and llama.setting("backend") == "cuda"
    assert llama.setting("gpu_arch") == family.gpu_arch
    cc = float(family.compute_capability or 0)
    vllm = profile.engine_rule(Engine.VLLM)
    assert vllm is not None
    if cc < 7.5:  # current vLLM needs 7.5: refused, llama.cpp instead
        assert vllm.refused and vllm.use is Engine.LLAMA_RPC and profile.engine is Engine.LLAMA_RPC
    else:
        assert vllm.refused is None and float(vllm.setting("min_compute_capability") or 0) <= cc
    # the open kernel modules need Turing or newer; 580 is the last branch for Pascal/Volta
    assert (gpu.kernel_modules == "proprietary") is (family.architecture in ("Pascal", "Volta"))
    assert gpu.driver_min is not None and gpu.driver_min <= RECIPE_BRANCH
    assert gpu.driver_max is None or gpu.driver_max >= RECIPE_BRANCH
    # bfloat16 needs Ampere (8.0) or newer
    assert (profile.engine_defaults.dtype == "bfloat16") is (cc >= 8.0)


def test_card_profiles_agree_with_their_family() -> None:
    """A card profile's ids all belong to one family, whose facts it repeats."""
    for profile in PROFILES:
        if profile.family or profile.gpu is None or profile.gpu.compute_capability is None:
            continue
        rule = next(r for r in profile.all_of if isinstance(r, PciRule))
        found = {TABLE.family_of(i.vendor, i.device, DB) for i in rule.ids}
        assert len(found) == 1, profile.name
        family = found.pop()
        assert family is not None
        assert profile.gpu.compute_capability == family.compute_capability, profile.name
        llama = profile.engine_rule(Engine.LLAMA_RPC)
        assert llama is not None and llama.setting("gpu_arch") == family.gpu_arch


TU116M = "TU116M [GeForce GTX 1660 Mobile]"
MAXQ = "NVIDIA GeForce RTX 2080 Super with Max-Q Design"
V100 = "Tesla V100-PCIE..."  # nvidia-smi's table cuts the name at its column
V100_32 = 32510 * 1024**2  # nvidia-smi's MiB total of a 32 GB V100


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        # a card profile wins over its family at the same specificity
        ([PciDevice(address="01:00.0", vendor="10de", device="1b38")], "nvidia-p40"),
        ([PciDevice(address="01:00.0", vendor="10de", device="1b06")], "nvidia-pascal"),
        # name only, cut by nvidia-smi's column: every candidate is a Pascal
        ([PciDevice(vendor="10de", device_name="GeForce GTX 108...")], "nvidia-pascal"),
        # name only, words pci.ids never uses left out ("HBM3")
        ([PciDevice(vendor="10de", device_name="NVIDIA H100 80GB HBM3")], "nvidia-hopper"),
        # Windows' names ("with Max-Q Design"): the model words decide, every part Turing
        ([PciDevice(vendor="10de", device_name=MAXQ)], "nvidia-turing"),
        # a chip code pci.ids spells otherwise: the chip's parts
        ([PciDevice(vendor_name="NVIDIA Corporation", device_name=TU116M)], "nvidia-turing"),
        # the memory column picks the 32 GB part, still the card profile
        ([PciDevice(vendor="10de", device_name=V100, memory_bytes=V100_32)], "nvidia-v100s"),
    ],
)  # fmt: skip
def test_family_and_card_by_ids_and_by_name(devices: list[PciDevice], expected: str) -> None:
    assert fingerprint(Inventory(pci=tuple(devices)), PROFILES).profile == expected


def test_memory_narrows_a_name_to_the_part_of_that_size() -> None:
    name = "Tesla V100-PCIE..."
    both = DB.ids_for_name(name, ["10de"])
    assert {("10de", "1db4"), ("10de", "1db6")} <= set(both)
    assert DB.ids_for_name(name, ["10de"], 32510 * 1024**2) == [("10de", "1db6")]
    assert DB.ids_for_name(name, ["10de"], 16160 * 1024**2) == [("10de", "1db4")]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("families: {}", "families: expected a list"),
        ("families: [{name: X, vendor: '10de', chips: [GA102], source: s}]", "name: lowercase"),
        ("families: [{name: x, vendor: 'nv', chips: [GA102], source: s}]", "vendor: expected"),
        ("families: [{name: x, vendor: '10de', chips: [], source: s}]", "chips: expected"),
        ("families: [{name: x, vendor: '10de', chips: [GA102]}]", "source: required"),
        (
            "families: [{name: x, vendor: '10de', chips: [A], source: s, compute_capability: 8}]",
            "compute_capability",
        ),
        (
            "families: [{name: x, vendor: '10de', chips: [A], source: s, colour: red}]",
            "unknown key",
        ),
        ("exclude: '('\nfamilies: []", "exclude: not a regular expression"),
    ],
)
def test_a_bad_family_table_is_refused_with_where_and_why(text: str, reason: str) -> None:
    with pytest.raises(families.FamilyTableError, match=re.escape(reason)):
        families.parse_table(text, "t.yaml")


def test_a_profile_naming_an_unknown_family_is_refused_with_its_line() -> None:
    from provisioner.profiles import parse_profile

    text = (
        "name: x\nversion: 1\ndescription: d\nsources: [s]\n"
        "match:\n  all:\n    - pci:\n        family: nvidia-kepler\n"
    )
    profile, problems = parse_profile(text, "x.yaml")
    assert profile is None
    assert [(p.line, p.key) for p in problems] == [(8, "match.all[0].pci.family")]
    assert "no such GPU family" in problems[0].reason


def test_a_profile_folder_may_carry_its_own_family_table(tmp_path: object) -> None:
    """gpu-families.yaml beside the profiles wins over the shipped one, and an edit to it
    is read again (profile reload)."""
    from pathlib import Path

    from provisioner.profiles import load_profiles as load

    assert isinstance(tmp_path, Path)
    table = tmp_path / "gpu-families.yaml"
    table.write_text(
        "families:\n  - {name: nvidia-kepler, vendor: '10de', chips: [GK110], source: pci.ids}\n"
    )
    (tmp_path / "kepler.yaml").write_text(
        "name: kepler\nversion: 1\ndescription: d\nsources: [s]\n"
        "match:\n  all:\n    - pci: {family: nvidia-kepler, min: 1}\n"
    )
    profiles = load(tmp_path)
    kepler = profiles.get("kepler")
    assert kepler is not None
    rule = next(r for r in kepler.all_of if isinstance(r, PciRule))
    assert rule.family == "nvidia-kepler" and ("10de", "1004") in {
        (i.vendor, i.device) for i in rule.ids
    }
    table.write_text(
        "families:\n  - {name: nvidia-kepler, vendor: '10de', chips: [GK208], source: pci.ids}\n"
    )
    import os

    os.utime(table, ns=(1, 1))  # a different stamp even within one clock tick
    again = load(tmp_path).get("kepler")
    assert again is not None
    assert ("10de", "1004") not in {
        (i.vendor, i.device) for r in again.all_of if isinstance(r, PciRule) for i in r.ids
    }
