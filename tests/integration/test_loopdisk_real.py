"""A lab container node's disk on a real loop device (provisioner/lab/loopdisk.py), as
root: attached once per file, partitioned by the cache-disk script's own sfdisk and partx
lines, planted into a directory that stands for the container's /dev, detached again.
The container itself (its /dev through /proc/PID/root): tests/e2e/test_converge_lab.py."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.lab import loopdisk
from tests.conftest import unavailable

pytestmark = [pytest.mark.root]


@pytest.fixture
def disk_file(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    for name in ("losetup", "sfdisk", "partx"):
        if shutil.which(name) is None:
            unavailable(f"needs {name} (util-linux, fdisk: scripts/setup installs them)")
    path = tmp_path / "ctr1.disk"
    yield path
    loopdisk.detach(path)  # whatever the test left


def test_a_disk_file_is_attached_once_partitioned_planted_and_detached(
    disk_file: Path, tmp_path: Path
) -> None:
    loop = loopdisk.attach(disk_file, size=64 << 20)
    assert disk_file.stat().st_size == 64 << 20 and disk_file.stat().st_blocks == 0  # sparse
    assert loopdisk.attach(disk_file) == loop and loopdisk.attached(disk_file) == [loop]
    script = f"printf 'label: gpt\\nname=x\\n' | sfdisk --quiet --wipe always {loop}; "
    script += f"partx -u {loop}"
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    part = f"{Path(loop).name}p1"
    assert part in loopdisk.sysfs_devices(Path(loop).name)

    root = tmp_path / "container"
    (root / "dev").mkdir(parents=True)
    assert loopdisk.plant(root, loop, "ctr1") == 4
    node = root / "dev" / "disk" / "by-id" / "lab-disk-ctr1-part1"
    assert stat.S_ISBLK(node.stat().st_mode)  # the link resolves to a block device
    assert node.stat().st_rdev == os.stat(f"/dev/{part}").st_rdev

    assert loopdisk.detach(disk_file) == [loop]
    assert loopdisk.attached(disk_file) == []
    assert loopdisk.plant(root, loop, "ctr1") == 2  # detached: its partition goes
    assert [p.name for p in (root / "dev" / "disk" / "by-id").iterdir()] == ["lab-disk-ctr1"]
