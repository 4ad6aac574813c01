"""Fingerprinting: every real dump gets its documented profile; ties are conflicts, never a
coin toss; the PCI-id index never changes an answer."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from provisioner.discovery import pciids
from provisioner.discovery.dumps import parse_dump
from provisioner.discovery.model import Cpu, Dmi, Inventory, PciDevice
from provisioner.enroll.fingerprint import LEAST, fingerprint
from provisioner.profiles import ProfileSet, load_profiles, parse_profile
from tests.shared_fixtures import HW, LABELS
from tests.shared_fixtures import needs_hw as needs_fixtures

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "tests" / "fixtures" / "agent"
PROFILES = load_profiles(ROOT / "hwprofiles")

needs_pci_ids = pytest.mark.skipif(
    not pciids.default(), reason="no pci.ids installed (Debian package 'pci.ids')"
)

# docs/profiles.md, "Which fixture gets which profile": keyed by the machine part of the
# fixture's name (before the first "__").
EXPECTED = {
    "a100-sxm4-80gb-attached4-listed1": "nvidia-ampere-ga100",
    "amd-vega20-x8-epyc7551p-gigabyte": "generic-cpu",
    "arc-a770-i7-13700k": "intel-arc-a770",
    "arc-a770-x4-i9-12900-uhd770": "intel-arc-a770",
    "krackan-npu17f0rev20-yoga7-2in1-14agp11": "amd-ryzen-ai-npu",
    "phoenix-7940hs-npu1502-rtx2000ada-laptop": "amd-ryzen-ai-npu",
    "plain-desktop-msi-h110m-i7-6700-igpu-only-german-locale": "generic-cpu",
    "plain-laptop-fujitsu-lifebook-e782-igpu-only": "generic-cpu",
    "plain-server-dell-r640": "generic-cpu",
    "plain-server-fujitsu-primergy-tx1320m3-no-accel": "generic-cpu",
    "plain-server-hp-dl180-g6": "generic-cpu",
    "rtx2060super-ryzen-matisse-desktop": "nvidia-turing",
    "rtx2070-x2": "nvidia-turing",
    "rtx3050-ga106-2507-coral-tpu-desktop": "nvidia-ampere",
    "rtx3080-lhr-ga102-i7-11700kf-nouveau": "nvidia-ampere",
    "rtx4090-alienware-windows": "nvidia-rtx-ada",
    "tesla-p40-ryzen4600g-b550m": "nvidia-p40",
    "tesla-t4-aws-vm": "nvidia-turing",
    "vm-kvm-rhel92-q35-16vcpu-sockets": "generic-cpu",
    "vm-qemu-kvm-q35-gt1030-passthrough": "nvidia-pascal",
    "vm-qemu-q35-numa-pxb-virtio-gpu": "generic-cpu",
    "vm-qemu-q35-pc-q35-9.0-incus": "generic-cpu",
    "vm-qemu-q35-tesla-v100-sxm2-16gb-x8": "nvidia-volta",
}


def _rows() -> list[str]:
    if not LABELS.is_file():
        return []
    with LABELS.open(encoding="utf-8", newline="") as handle:
        return [row["file"] for row in csv.DictReader(handle, delimiter="\t")]


FILES = _rows()


def _match_file(path: Path, *, explain_all: bool = False) -> tuple[str | None, object]:
    inventory = parse_dump(path.read_text(encoding="utf-8", errors="replace")).inventory
    match = fingerprint(inventory, PROFILES, explain_all=explain_all)
    return match.profile, match


@needs_fixtures
def test_every_fixture_has_a_documented_profile() -> None:
    assert {name.split("__")[0] for name in FILES} == set(EXPECTED)
    docs = (ROOT / "docs" / "profiles.md").read_text(encoding="utf-8")
    for machine, profile in EXPECTED.items():
        assert f"| `{machine}` | `{profile}` |" in docs, machine


@needs_fixtures
@needs_pci_ids
@pytest.mark.parametrize(
    "name", FILES, ids=[n.split("__")[0] + "/" + n.split("__")[1] for n in FILES]
)
def test_fixture_gets_its_profile(name: str) -> None:
    profile, match = _match_file(HW / name)
    assert profile == EXPECTED[name.split("__")[0]], match
    full, _ = _match_file(HW / name, explain_all=True)
    assert full == profile  # the index never changes the answer


@pytest.mark.parametrize("name", sorted(p.name for p in AGENT.glob("*.txt")))
def test_lab_vms_get_qemu_lab(name: str) -> None:
    profile, match = _match_file(AGENT / name)
    assert profile == "qemu-lab", match


def test_lab_vm_without_virtio_or_with_another_vendor_is_not_qemu_lab() -> None:
    inventory = parse_dump((AGENT / "lab-qemu-q35-bios.txt").read_text(encoding="utf-8")).inventory
    no_virtio = Inventory(
        pci=tuple(d for d in inventory.pci if d.vendor != "1af4"), dmi=inventory.dmi
    )
    assert fingerprint(no_virtio, PROFILES).profile == "generic-cpu"
    other = Inventory(pci=inventory.pci, dmi=Dmi(system_vendor="Red Hat"))
    assert fingerprint(other, PROFILES).profile == "generic-cpu"


def _gpu(ids: str, revision: str | None = None, address: str | None = None) -> PciDevice:
    vendor, device = ids.split(":")
    return PciDevice(address=address, vendor=vendor, device=device, revision=revision)


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        ([_gpu("10de:1df6")], "nvidia-v100s"),
        ([_gpu("10de:1db1")], "nvidia-volta"),  # V100 SXM2 16GB: the family, not the card
        ([_gpu("10de:1e82")], "nvidia-rtx-turing"),
        ([_gpu("10de:1f06")], "nvidia-turing"),  # RTX 2060 SUPER
        ([_gpu("10de:2503")], "nvidia-rtx-ampere"),
        ([_gpu("10de:2204")], "nvidia-rtx-ampere"),
        ([_gpu("10de:2507")], "nvidia-ampere"),  # RTX 3050
        ([_gpu("10de:2684")], "nvidia-rtx-ada"),
        ([_gpu("10de:28b8")], "nvidia-ada"),  # RTX 2000 Ada laptop
        ([_gpu("10de:1eb8")], "nvidia-turing"),  # T4
        ([_gpu("10de:2330")], "nvidia-hopper"),  # H100 SXM5
        ([_gpu("10de:2b85")], "nvidia-blackwell"),  # RTX 5090
        ([_gpu("10de:1b38"), _gpu("10de:1b06", address="02:00.0")], "nvidia-p40"),  # + 1080 Ti
        ([_gpu("10de:0fc8")], "generic-cpu"),  # GT 740 (Kepler): below 6.0, no family
        ([_gpu("10de:1b83")], "nvidia-pascal"),  # GTX 1060 6GB
        ([_gpu("8086:e20b")], "intel-arc-battlemage"),  # B580
        ([_gpu("8086:5693")], "intel-arc-alchemist"),  # A370M
        ([_gpu("8086:7d55")], "generic-cpu"),  # Meteor Lake's "Intel Arc Graphics": an iGPU
        ([_gpu("8086:56a5")], "intel-arc-a770"),  # A380: same DG2 profile
        ([_gpu("1022:17f0", "11")], "amd-ryzen-ai-npu"),  # Strix Halo
        ([_gpu("1022:17f0", "30")], "amd-ryzen-ai-npu"),  # a revision newer than the table
        ([_gpu("1022:17f0")], "amd-ryzen-ai-npu"),  # revision unknown: every 17f0 counts
    ],
)
def test_near_misses_and_hits_by_ids(devices: list[PciDevice], expected: str) -> None:
    assert fingerprint(Inventory(pci=tuple(devices)), PROFILES).profile == expected


def test_same_address_counts_once() -> None:
    twice = (_gpu("10de:1b38", address="0000:01:00.0"), _gpu("10de:1b38", address="01:00.0"))
    match = fingerprint(Inventory(pci=twice), PROFILES, explain_all=True)
    p40 = next(c for c in match.candidates if c.profile == "nvidia-p40")
    assert p40.rules[0].observed == "1 (10de:1b38 x1)"


def _set(*texts: str) -> ProfileSet:
    profiles = []
    for i, text in enumerate(texts):
        profile, problems = parse_profile(text, f"p{i}.yaml")
        assert profile is not None, problems
        profiles.append(profile)
    return ProfileSet(profiles)


HEAD = "version: 1\ndescription: d\nsources: [s]\n"


def test_equally_specific_matches_are_a_conflict() -> None:
    rule = "match: {all: [{pci: {ids: ['10de:1b38']}}]}\n"
    profiles = _set(
        f"name: p40-a\n{HEAD}{rule}",
        f"name: p40-b\n{HEAD}{rule}",
        f"name: fallback\n{HEAD}match: {{}}\n",
    )
    match = fingerprint(Inventory(pci=(_gpu("10de:1b38"),)), profiles)
    assert match.profile is None
    assert match.conflict == ("p40-a", "p40-b")
    assert [c.profile for c in match.candidates] == ["p40-a", "p40-b", "fallback"]
    # order of loading does not matter: same answer the other way round
    again = fingerprint(
        Inventory(pci=(_gpu("10de:1b38"),)), ProfileSet(reversed(profiles.profiles))
    )
    assert again == match


def test_more_specific_wins_by_kind_then_count() -> None:
    profiles = _set(
        f"name: by-ids\n{HEAD}match: {{all: [{{pci: {{ids: ['10de:1b38']}}}}]}}\n",
        f"name: by-board\n{HEAD}match: {{all: [{{dmi: {{board_name: B550M DS3H}}}}]}}\n",
        f"name: ids-and-board\n{HEAD}match: {{all: [{{pci: {{ids: ['10de:1b38']}}}}, "
        "{dmi: {board_name: {regex: '^B550M'}}}]}\n",
        f"name: by-cpu\n{HEAD}match: {{all: [{{cpu_model: 'Ryzen 5'}}, {{memory_min_gib: 8}}]}}\n",
    )
    box = Inventory(
        pci=(_gpu("10de:1b38"),),
        cpu=Cpu(model_name="AMD Ryzen 5 4600G"),
        memory_bytes=16 * 1024**3,
        dmi=Dmi(board_name="B550M DS3H "),
    )
    match = fingerprint(box, profiles)
    assert match.profile == "ids-and-board"
    assert [c.profile for c in match.candidates] == [
        "ids-and-board",
        "by-ids",
        "by-board",
        "by-cpu",
    ]
    assert match.candidates[-1].specificity == (0, 0, 0, 1, 1)
    without_gpu = fingerprint(Inventory(dmi=box.dmi, cpu=box.cpu), profiles)
    assert without_gpu.profile == "by-board"


def test_any_of_needs_one_and_failed_rules_say_what_was_seen() -> None:
    profiles = _set(
        f"name: big-box\n{HEAD}match:\n  all: [{{memory_min_gib: 64}}]\n"
        "  any: [{cpu_model: EPYC}, {cpu_model: Xeon}]\n"
    )
    small = Inventory(cpu=Cpu(model_name="Intel(R) Xeon(R) E5504"), memory_bytes=4 * 1024**3)
    match = fingerprint(small, profiles)
    assert match.profile is None and match.conflict == ()
    [candidate] = match.candidates
    assert [(r.rule, r.observed) for r in candidate.failed] == [
        ("memory >= 64 GiB", "4.0 GiB"),
        ("cpu_model ~ /EPYC/", "'Intel(R) Xeon(R) E5504'"),
    ]
    assert [r.group for r in candidate.passed] == ["any"]
    unknown = fingerprint(Inventory(), profiles, explain_all=True).candidates[0]
    assert {r.observed for r in unknown.rules} == {"unknown"}


def test_class_rules_and_exclusions() -> None:
    profiles = _set(
        f"name: two-3d\n{HEAD}match: {{all: [{{pci: {{class: ['0302'], min: 2}}}}]}}\n",
        f"name: no-3d\n{HEAD}match: {{all: [{{pci: {{class: ['0302'], max: 0}}}}]}}\n",
    )
    dev = PciDevice(vendor="10de", device="1b38", pci_class="0302")
    two = Inventory(pci=(dev, PciDevice(vendor="10de", device="1b38", pci_class="0302")))
    assert fingerprint(two, profiles).profile == "two-3d"
    # an exclusion (max 0, min 0) passes but adds no specificity
    assert fingerprint(Inventory(), profiles).candidates[0].specificity == LEAST
    assert fingerprint(Inventory(), profiles).profile == "no-3d"


@needs_pci_ids
def test_name_only_devices_match_through_the_accelerator_table() -> None:
    named = PciDevice(device_name="NVIDIA GP102GL [Tesla P40]")
    igpu = PciDevice(device_name="AMD Renoir")
    match = fingerprint(Inventory(pci=(named, igpu)), PROFILES)
    assert match.profile == "nvidia-p40"
    assert [(a.slug, a.vendor, a.device, a.count) for a in match.accelerators] == [
        ("nvidia-p40", "10de", "1b38", 1)
    ]


def test_deterministic() -> None:
    inventory = parse_dump((AGENT / "lab-qemu-q35-uefi.txt").read_text(encoding="utf-8")).inventory
    first = fingerprint(inventory, PROFILES, explain_all=True)
    assert all(fingerprint(inventory, PROFILES, explain_all=True) == first for _ in range(3))
    assert [c.profile for c in first.candidates][:2] == ["qemu-lab", "generic-cpu"]
    assert first.candidates[0].name == "qemu-lab"


def test_candidates_without_explain_leave_out_profiles_that_passed_nothing() -> None:
    profiles = _set(f"name: big\n{HEAD}match: {{all: [{{memory_min_gib: 64}}]}}\n")
    assert fingerprint(Inventory(), profiles).candidates == ()
    assert len(fingerprint(Inventory(), profiles, explain_all=True).candidates) == 1


@needs_fixtures
@needs_pci_ids
@pytest.mark.parametrize(
    "name", FILES, ids=[n.split("__")[0] + "/" + n.split("__")[1] for n in FILES]
)
def test_accelerators_are_those_the_accelerator_module_names(name: str) -> None:
    from provisioner.discovery.accelerators import accelerators

    inventory = parse_dump((HW / name).read_text(encoding="utf-8", errors="replace")).inventory
    assert fingerprint(inventory, PROFILES).accelerators == tuple(accelerators(inventory))
