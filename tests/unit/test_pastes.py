"""Real public pastes (tests/fixtures/pastes: SOURCES.md says where each is from) get the
profile a careful reader would give them, with every accelerator counted once.

Each class of issue 19 is here: mixed pastes, mail quoting and soft wraps, quoted-printable
and HTML, names without ids (plain lspci, cut nvidia-smi names, lshw -numeric, sycl-ls and
clinfo), French and Spanish lshw, lspci -P paths, nvidia-smi tables from 2017 to 2025, and
the GPU families (Turing to Blackwell, Arc Alchemist and Battlemage, Ryzen AI NPU)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from provisioner.discovery.dumps import parse_dump
from provisioner.enroll.fingerprint import fingerprint
from provisioner.profiles import load_profiles

ROOT = Path(__file__).resolve().parents[2]
PASTES = ROOT / "tests" / "fixtures" / "pastes"
PROFILES = load_profiles(ROOT / "hwprofiles")
with (PASTES / "labels.tsv").open(encoding="utf-8", newline="") as _handle:
    ROWS = list(csv.DictReader(_handle, delimiter="\t"))

# machine (the file name before "__") -> (profile, {accelerator slug: count}); where the
# answer differs from labels.tsv's reading, the comment says why
EXPECTED: dict[str, tuple[str | None, dict[str, int]]] = {
    # the lspci -v excerpt shows 3 of the 8 (the others are in dmesg lines and prose)
    "a100-sxm4-80gb-x8-vm-device20b2": ("nvidia-ampere-ga100", {"nvidia-a100-sxm4-80gb": 3}),
    "arc-a370m-yoga7i-i7-12700h": ("intel-arc-alchemist", {"intel-arc-alchemist": 1}),
    "arc-a380-dg2-behind-switch": (
        "intel-arc-a770",
        {"intel-arc-a380": 1},
    ),  # the A770 card profile lists the A380
    "arc-b580-i9-13900k": ("intel-arc-battlemage", {"intel-arc-battlemage": 1}),
    # env-check scripts: xpu-smi's table and lspci -v show the one A770 (merged by address)
    "arc-a770-i9-13900k-linux": ("intel-arc-a770", {"intel-arc-a770": 1}),
    "arc-a770-windows-i9-13900k": ("intel-arc-a770", {"intel-arc-a770": 1}),
    "arc-igpu-core-ultra7-265h": ("generic-cpu", {}),  # an iGPU only
    "gtx1080-laptop-8gb": ("nvidia-pascal", {"nvidia-pascal": 1}),
    "gtx1650-mobile-tu117m": ("nvidia-turing", {"nvidia-turing": 1}),
    "gtx1650-proxmox-host": ("nvidia-turing", {"nvidia-turing": 1}),
    "gtx1660-mobile-tu116m-clevo": ("nvidia-turing", {"nvidia-turing": 1}),
    "h100-sxm5-x8-nvswitch-aws-p5": (
        "nvidia-hopper",
        {"nvidia-hopper": 8},
    ),  # NVSwitches are not GPUs
    "l40s-x2-of-4-xeon8562y": ("nvidia-ada", {"nvidia-ada": 2}),
    "l40s-x4-xeon8562y": ("nvidia-ada", {"nvidia-ada": 4}),
    "mx150-uhd620-laptop": ("nvidia-pascal", {"nvidia-pascal": 1}),
    # 2db9 is "GB207GLM [RTX PRO 500 Blackwell Generation Laptop GPU]" in pci.ids 2026.08.22
    "nvidia-2db9-amd-150e-laptop": ("nvidia-blackwell", {"nvidia-blackwell": 1}),
    "phoenix-npu1502-rx7600mxt-tuxedo-sirius16": ("amd-ryzen-ai-npu", {"amd-ryzen-ai-npu": 1}),
    "rtx2000ada-laptop-mtl-dell": ("nvidia-ada", {"nvidia-ada": 1}),
    "rtx2070-laptop-sie085": ("nvidia-turing", {"nvidia-turing": 1}),  # two tables, one GPU
    # prose ("8x Nvidia GeForce RTX 2080 Ti") and an lspci -t tree without names: no tool's
    # device list to count from
    "rtx2080ti-x8-supermicro-x9drg": (None, {}),
    "rtx3060-lhr-ga106": ("nvidia-rtx-ampere", {"nvidia-rtx-3060-lhr": 1}),
    "rtx4070-laptop-ad106m-acer-helios-neo16": ("nvidia-ada", {"nvidia-ada": 1}),
    "rtx5090-gb202": ("nvidia-blackwell", {"nvidia-blackwell": 1}),
    # the NPU shows only as a loaded module (lsmod), in no device list
    "strix-halo-ai-max-395-gmktec-8060s-npu": ("generic-cpu", {}),
    "tesla-t4-vm-slot1e": ("nvidia-turing", {"nvidia-tesla-t4": 1}),
    "v100-pcie-32gb-vmware-vm": ("nvidia-v100s", {"nvidia-v100-pcie-32gb": 1}),
}


def test_every_paste_is_cited_and_expected() -> None:
    sources = (PASTES / "SOURCES.md").read_text(encoding="utf-8")
    files = sorted(p.name for p in PASTES.glob("*.txt"))
    assert files == sorted(r["file"] for r in ROWS)
    assert {f.split("__")[0] for f in files} == set(EXPECTED)
    for name in files:
        assert f"`{name}`" in sources, name


@pytest.mark.parametrize("row", ROWS, ids=[r["file"].split("__")[0] for r in ROWS])
def test_a_paste_gets_its_profile_and_counts(row: dict[str, str]) -> None:
    dump = parse_dump((PASTES / row["file"]).read_text(encoding="utf-8", errors="replace"))
    profile, counts = EXPECTED[row["file"].split("__")[0]]
    match = fingerprint(dump.inventory, PROFILES)
    if profile is None:  # nothing a tool printed: no profile, and it says what it skipped
        assert dump.format is None and dump.skipped
        return
    assert match.profile == profile, (dump.format, dump.sections, match.accelerators)
    found: dict[str, int] = {}
    for acc in match.accelerators:
        found[acc.slug] = found.get(acc.slug, 0) + acc.count
    assert found == counts
    for pci_id in filter(None, row["pci_ids"].split(",")) if row["pci_ids"] != "-" else ():
        # an id the paste prints in a device list is read (not only named)
        vendor, device = pci_id.split(":")
        if vendor in ("10de", "8086") and len(device) == 4 and "modalias" not in row["note"]:
            assert any(d.vendor == vendor and d.device == device for d in dump.inventory.pci) or (
                "cmdline" in row["file"]
            ), pci_id


def test_the_classes_are_all_here() -> None:
    classes = {c for r in ROWS for c in r["class"].split(",")}
    assert {"mixed", "quoted", "names", "locale", "layout", "family"} <= classes
