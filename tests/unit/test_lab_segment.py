"""A lab's segment (provisioner/lab/segment.py): subnets, node numbers, registry URLs."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from provisioner.cli.common import Exit, exit_status
from provisioner.config import Mode, parse_config
from provisioner.lab.segment import Segment, SegmentError, node_numbers, registry_url
from provisioner.lab.state import LabState


def test_the_default_segment_is_the_old_lab_network() -> None:
    seg = Segment.parse()
    assert (seg.server, seg.site, seg.host_leg) == (
        IPv4Address("10.99.0.1"), IPv4Address("10.99.0.2"), IPv4Address("10.99.0.254"),
    )  # fmt: skip
    assert seg.dhcp_range == "10.99.0.100-10.99.0.199"


def test_a_wider_subnet_keeps_its_offsets() -> None:
    seg = Segment.parse("172.20.0.0/16")
    assert str(seg.interface(seg.server)) == "172.20.0.1/16"
    assert seg.host_leg == IPv4Address("172.20.255.254")


@pytest.mark.parametrize(
    "text",
    ["x", "10.98.0.5/24", "10.0.0.0/8", "10.98.0.0/25", "8.8.8.0/24", "127.0.0.0/24",
     "169.254.0.0/16", "224.0.0.0/24"],
)  # fmt: skip
def test_a_bad_subnet_is_a_usage_error(text: str) -> None:
    with pytest.raises(SegmentError, match="--subnet") as info:
        Segment.parse(text)
    assert exit_status(info.value) is Exit.USAGE


def test_node_numbers_fit_a_mac_byte() -> None:
    assert list(node_numbers(2, 3)) == [2, 3, 4]
    for first, count in ((0, 1), (255, 2)):
        with pytest.raises(SegmentError, match="--first-node"):
            node_numbers(first, count)


def test_a_registry_url_is_checked_as_the_config_checks_it() -> None:
    assert registry_url("postgresql://p@db/p") == "postgresql://p@db/p"
    with pytest.raises(SegmentError) as info:
        registry_url("postgresql://p:secret@db/p")
    assert "secret" not in str(info.value) and "pgpass" in str(info.value)
    with pytest.raises(SegmentError, match="PostgreSQL"):
        registry_url("sqlite:///x")


def test_the_lab_config_carries_its_segment_and_registry(tmp_path: Path) -> None:
    from provisioner.lab.lab_config import lab_config

    lab = LabState("pv000000", "full", str(tmp_path), 0.0, "tcg", 512,
                   subnet="10.96.0.0/24", registry_url="postgresql://p@db/p")  # fmt: skip
    cfg = parse_config(lab_config(Mode.FULL, tmp_path, lab=lab))
    assert str(cfg.network.address) == "10.96.0.1/24"
    assert cfg.registry_location == "postgresql://p@db/p"
    assert lab.registry == "postgresql://p@db/p"
    plain = LabState("pv000000", "full", str(tmp_path), 0.0, "tcg", 512)
    assert plain.registry == tmp_path / "state" / "registry.sqlite3"
