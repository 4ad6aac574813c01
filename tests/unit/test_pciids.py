"""The pci.ids reader: a small synthetic database, and the installed one where present."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from provisioner.discovery import pciids

SAMPLE = """\
#	Version: 2099.01.01
10de  NVIDIA Corporation
	1b38  GP102GL [Tesla P40]
		10de 11d9  Tesla P40
	1db1  GV100GL [Tesla V100 SXM2 16GB]
	1df5  GV100GL [Tesla V100 SXM2 16GB]
	2507  GA106 [Geforce RTX 3050]
	2582  GA107 [GeForce RTX 3050 8GB]
1af4  Red Hat, Inc.
	1050  Virtio 1.0 GPU
1b36  Red Hat, Inc.
	0100  QXL paravirtual graphic card
8086  Intel Corporation
	56a0  DG2 [Arc A770]
	4680  AlderLake-S GT1 [UHD Graphics 770]
C 03  Display controller
	00  VGA compatible controller
		00  VGA controller
	02  3D controller
C 12  Processing accelerators
"""


@pytest.fixture
def db() -> pciids.PciIds:
    return pciids.parse(SAMPLE)


def test_names_for_ids(db: pciids.PciIds) -> None:
    assert db.version == "2099.01.01"
    assert db.name("10de", "1b38") == "GP102GL [Tesla P40]"
    assert db.name("10DE", "1B38") == "GP102GL [Tesla P40]"
    assert db.name("10de", "ffff") is None
    assert db.vendor_name("8086") == "Intel Corporation"
    assert db.subsystem_name("10de", "1b38", "10de", "11d9") == "Tesla P40"
    assert db.class_name("0302") == "3D controller"
    assert db.class_code("VGA compatible controller") == "0300"


@pytest.mark.parametrize(
    ("name", "ids"),
    [
        ("GP102GL [Tesla P40]", [("10de", "1b38")]),  # exact
        ("Tesla P40", [("10de", "1b38")]),  # bracketed marketing name
        ("NVIDIA GP102GL [Tesla P40]", [("10de", "1b38")]),  # inxi: vendor word in front
        ("NVIDIA GeForce RTX 3050", [("10de", "2507")]),  # normalised: case, prefixes
        ("Intel(R) Arc(TM) A770 Graphics", [("8086", "56a0")]),  # (R)/(TM), 'Graphics'
        ("GV100GL [Tesla V100 SXM2 16GB]", [("10de", "1db1"), ("10de", "1df5")]),  # ambiguous
        ("Tesla V100", [("10de", "1db1"), ("10de", "1df5")]),  # every name holding its words
        ("Tesla", []),  # no model number: too little to go on
        ("", []),
    ],
)
def test_ids_for_name(db: pciids.PciIds, name: str, ids: list[tuple[str, str]]) -> None:
    assert db.ids_for_name(name) == ids


def test_vendor_restricts_and_splits(db: pciids.PciIds) -> None:
    assert db.ids_for_name("Tesla P40", ["8086"]) == []
    assert db.vendor_ids("Red Hat, Inc.") == ["1af4", "1b36"]
    assert db.split_vendor("NVIDIA Corporation GP108 [GeForce GT 1030]") == (
        ["10de"],
        "GP108 [GeForce GT 1030]",
    )
    assert db.split_vendor("Nobody Inc. Thing") == ([], "Nobody Inc. Thing")


def test_load_plain_gzip_and_missing(tmp_path: Path) -> None:
    plain = tmp_path / "pci.ids"
    plain.write_text(SAMPLE)
    packed = tmp_path / "pci.ids.gz"
    packed.write_bytes(gzip.compress(SAMPLE.encode()))
    assert pciids.load(plain).name("8086", "56a0") == "DG2 [Arc A770]"
    assert pciids.load(packed).name("8086", "56a0") == "DG2 [Arc A770]"
    empty = pciids.load(tmp_path / "absent")
    assert not empty and empty.ids_for_name("Tesla P40") == []


def test_garbage_lines_are_skipped() -> None:
    db = pciids.parse(
        "zzzz  not a vendor\n\tgarbage\n10de  NVIDIA Corporation\n\t1b38  P40\n\t\tbad\n"
    )
    assert db.name("10de", "1b38") == "P40"


installed = pytest.mark.skipif(
    not pciids.default(), reason="no pci.ids installed (apt-get install pci.ids)"
)


@installed
@pytest.mark.parametrize(
    ("name", "ids"),
    [
        ("GP102GL [Tesla P40]", [("10de", "1b38")]),
        ("GV100GL [Tesla V100 SXM2 16GB]", [("10de", "1db1"), ("10de", "1df5")]),
        ("NVIDIA GeForce RTX 3050", [("10de", "2507")]),
        ("Intel(R) Arc(TM) A770 Graphics", [("8086", "56a0")]),
        ("GA102 [GeForce RTX 3080 Lite Hash Rate]", [("10de", "2216")]),
    ],
)
def test_installed_database_reverse_lookup(name: str, ids: list[tuple[str, str]]) -> None:
    assert pciids.default().ids_for_name(name) == ids
