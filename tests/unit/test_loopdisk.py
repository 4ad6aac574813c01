"""A lab container node's disk (provisioner/lab/loopdisk.py): what goes into its /dev
for the loop device and its partitions (pure), and ``plant`` on a fake sysfs and /dev.
The same against a real loop device, as root: tests/integration/test_loopdisk_real.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from provisioner.lab.loopdisk import Entry, disk_id, plant, stale, sysfs_devices, wanted
from provisioner.lab.netns import LabError


def test_the_disk_and_each_partition_get_a_node_and_a_by_id_link() -> None:
    entries = wanted("loop3", {"loop3p2": "259:1", "loop3": "7:3", "loop3p1": "259:0"}, "ctr1")
    assert entries == [
        Entry("loop3", device="7:3"),
        Entry("disk/by-id/lab-disk-ctr1", target="../../loop3"),
        Entry("loop3p1", device="259:0"),
        Entry("disk/by-id/lab-disk-ctr1-part1", target="../../loop3p1"),
        Entry("loop3p2", device="259:1"),
        Entry("disk/by-id/lab-disk-ctr1-part2", target="../../loop3p2"),
    ]


def test_another_loop_device_is_not_the_nodes() -> None:
    entries = wanted("loop3", {"loop3": "7:3", "loop30": "7:30", "loop3px": "1:1"}, "ctr2")
    assert [e.path for e in entries] == ["loop3", "disk/by-id/lab-disk-ctr2"]


def test_partitions_ten_and_up_sort_after_nine() -> None:
    devices = {f"loop1p{i}": f"259:{i}" for i in (10, 2, 1)} | {"loop1": "7:1"}
    nodes = [e.path for e in wanted("loop1", devices, "n") if e.device]
    assert nodes == ["loop1", "loop1p1", "loop1p2", "loop1p10"]


def test_a_detached_loop_device_wants_nothing() -> None:
    assert wanted("loop3", {}, "ctr1") == []


def test_what_is_gone_from_sysfs_is_stale() -> None:
    keep = wanted("loop3", {"loop3": "7:3"}, "ctr1")
    present = ["loop3p1", "disk/by-id/lab-disk-ctr1", "disk/by-id/lab-disk-ctr1-part1"]
    assert stale(present, keep) == ["loop3p1", "disk/by-id/lab-disk-ctr1-part1"]


def test_the_by_id_name_carries_the_node() -> None:
    assert disk_id("ctr12") == "lab-disk-ctr12"


def fake_sysfs(root: Path, parts: dict[str, str]) -> Path:
    sys_block = root / "sys" / "block"
    (sys_block / "loop5").mkdir(parents=True)
    (sys_block / "loop5" / "dev").write_text("7:5\n")
    (sys_block / "loop5" / "queue").mkdir()  # not a partition
    for name, number in parts.items():
        (sys_block / "loop5" / name).mkdir()
        (sys_block / "loop5" / name / "dev").write_text(f"{number}\n")
    return sys_block


def test_sysfs_devices_reads_the_disk_and_its_partitions(tmp_path: Path) -> None:
    sys_block = fake_sysfs(tmp_path, {"loop5p1": "259:7"})
    assert sysfs_devices("loop5", sys_block) == {"loop5": "7:5", "loop5p1": "259:7"}
    assert sysfs_devices("loop6", sys_block) == {}


@pytest.mark.root
def test_plant_makes_the_nodes_and_links_then_follows_a_new_table(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    root = tmp_path / "container"
    (root / "dev").mkdir(parents=True)
    sys_block = fake_sysfs(tmp_path, {"loop5p1": "259:7"})
    assert plant(root, "/dev/loop5", "ctr1", sys_block) == 4
    dev = root / "dev"
    assert dev.joinpath("loop5p1").lstat().st_rdev == os.makedev(259, 7)
    assert stat.S_ISBLK(dev.joinpath("loop5").lstat().st_mode)
    assert os.readlink(dev / "disk/by-id/lab-disk-ctr1-part1") == "../../loop5p1"
    assert plant(root, "/dev/loop5", "ctr1", sys_block) == 0  # as it should be: untouched

    (sys_block / "loop5" / "loop5p1" / "dev").write_text("259:9\n")  # a new table
    (sys_block / "loop5" / "loop5p2").mkdir()
    (sys_block / "loop5" / "loop5p2" / "dev").write_text("259:10\n")
    assert plant(root, "/dev/loop5", "ctr1", sys_block) == 3
    assert dev.joinpath("loop5p1").lstat().st_rdev == os.makedev(259, 9)

    for part in ("loop5p1", "loop5p2"):  # the table wiped
        (sys_block / "loop5" / part / "dev").unlink()
        (sys_block / "loop5" / part).rmdir()
    assert plant(root, "/dev/loop5", "ctr1", sys_block) == 4
    assert sorted(p.name for p in dev.iterdir() if p.name.startswith("loop")) == ["loop5"]
    assert [p.name for p in (dev / "disk/by-id").iterdir()] == ["lab-disk-ctr1"]


def test_plant_refuses_what_is_not_a_loop_device(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="not a loop device"):
        plant(tmp_path, "/dev/sda", "ctr1")
