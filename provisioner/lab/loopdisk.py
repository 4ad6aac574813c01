"""A container node's own disk: a sparse file behind a loop device, as its "hardware".

A VM node has virtio disks; a container node has none of its own (it sees the host's
block devices in /sys, but no node in its /dev). ``lab up --kind container --disk`` gives
each one a disk the way a rack would: a sparse file of :data:`DISK_BYTES` attached to a
loop device with partition scanning on (``losetup -P``), which the node then formats
through ``provisioner node disk init`` like any disk (a GPT, ext4, mounted at boot).

A container's /dev is a tmpfs of its own that no udev fills. The node's boot loop
(:mod:`provisioner.lab.container_boot`, on the host) plays the part of the kernel and udev
for that disk while the container runs: every :data:`PLANT_EVERY` seconds it makes what
udev would in the container's /dev (through ``/proc/<its PID 1>/root``)::

    /dev/loop3                        b 7:3       the disk
    /dev/loop3p1                      b 259:0     each partition the kernel made
    /dev/disk/by-id/lab-disk-ctr1     -> ../../loop3
    /dev/disk/by-id/lab-disk-ctr1-part1 -> ../../loop3p1

and removes the partition nodes and links of partitions that are gone (a new table).
What to make is pure (:func:`wanted`, from the sysfs entries); :func:`plant` applies it.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from provisioner.lab.netns import LabError, _run
from provisioner.lab.vm import DISK_BYTES as DISK_BYTES  # as a lab VM's disks

PLANT_EVERY = 0.2  # seconds: a partition made by sfdisk shows up in the node this soon
SYS_BLOCK = Path("/sys/block")
_LOOP = re.compile(r"/dev/(loop\d+)")


def disk_id(node: str) -> str:
    """The node's disk as /dev/disk/by-id names it (udev's names carry a serial)."""
    return f"lab-disk-{node}"


@dataclass(frozen=True)
class Entry:
    """One thing in a container's /dev: a block node (``device`` "major:minor") or a
    symbolic link (``target``)."""

    path: str  # relative to /dev
    device: str | None = None
    target: str | None = None


def wanted(loop: str, devices: Mapping[str, str], node: str) -> list[Entry]:
    """Pure: the entries of ``node``'s /dev for loop device ``loop`` ("loop3"), given
    ``devices``, each block device of it ("loop3", "loop3p1", ...) and its "major:minor"
    (from sysfs)."""
    name = disk_id(node)
    entries: list[Entry] = []
    for dev in sorted(devices, key=lambda d: (len(d), d)):
        if dev == loop:
            link = name
        elif dev.startswith(f"{loop}p") and dev[len(loop) + 1 :].isdigit():
            link = f"{name}-part{dev[len(loop) + 1 :]}"
        else:
            continue
        entries.append(Entry(dev, device=devices[dev]))
        entries.append(Entry(f"disk/by-id/{link}", target=f"../../{dev}"))
    return entries


def stale(present: list[str], keep: list[Entry]) -> list[str]:
    """Pure: which of ``present`` (paths relative to /dev: the loop's partition nodes and
    the node's by-id links found there) are no longer wanted."""
    kept = {e.path for e in keep}
    return [p for p in present if p not in kept]


def sysfs_devices(loop: str, sys_block: Path = SYS_BLOCK) -> dict[str, str]:
    """``loop`` and its partitions, each with its "major:minor" (empty: not attached)."""
    base = sys_block / loop
    found: dict[str, str] = {}
    with contextlib.suppress(OSError):
        found[loop] = (base / "dev").read_text().strip()
        for part in base.iterdir():
            if part.name.startswith(f"{loop}p") and (part / "dev").is_file():
                found[part.name] = (part / "dev").read_text().strip()
    return found


def _present(dev: Path, loop: str, node: str) -> list[str]:
    found = [p.name for p in dev.glob(f"{loop}p*")]
    by_id = dev / "disk" / "by-id"
    whole = by_id / disk_id(node)
    links = [*by_id.glob(f"{whole.name}-part*"), *([whole] if os.path.lexists(whole) else [])]
    found += [f"disk/by-id/{p.name}" for p in links]
    return found


def plant(root: Path, loop_device: str, node: str, sys_block: Path = SYS_BLOCK) -> int:
    """Make ``node``'s disk entries in ``root``/dev (a container's root, seen from the
    host), remove those of partitions that are gone; the number of changes."""
    loop = _loop_name(loop_device)
    dev = root / "dev"
    entries = wanted(loop, sysfs_devices(loop, sys_block), node)
    changes = 0
    for gone in stale(_present(dev, loop, node), entries):
        with contextlib.suppress(FileNotFoundError):
            (dev / gone).unlink()
            changes += 1
    for entry in entries:
        path = dev / entry.path
        if entry.device is not None:
            major, _, minor = entry.device.partition(":")
            number = os.makedev(int(major), int(minor))
            try:
                st = path.lstat()
                if stat.S_ISBLK(st.st_mode) and st.st_rdev == number:
                    continue
                path.unlink()
            except FileNotFoundError:
                pass
            os.mknod(path, 0o660 | stat.S_IFBLK, number)
            changes += 1
        elif entry.target is not None:
            if path.is_symlink() and os.readlink(path) == entry.target:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            path.symlink_to(entry.target)
            changes += 1
    return changes


def container_root(nspawn_pid: int) -> Path | None:
    """The root of the container that ``systemd-nspawn`` (``nspawn_pid``) runs, as the
    host sees it (its PID 1 is nspawn's child in another mount namespace); None before
    it is there."""
    try:
        own = os.readlink(f"/proc/{nspawn_pid}/ns/mnt")
        tasks = Path(f"/proc/{nspawn_pid}/task")
        children = [c for t in tasks.iterdir() for c in (t / "children").read_text().split()]
    except OSError:
        return None
    for child in children:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{child}/ns/mnt") != own:
                return Path(f"/proc/{child}/root")
    return None


def _loop_name(loop_device: str) -> str:
    found = _LOOP.fullmatch(loop_device)
    if found is None:
        raise LabError(f"{loop_device!r} is not a loop device")
    return found.group(1)


def attached(path: Path) -> list[str]:
    """The loop devices ``path`` is attached to (``losetup -j``)."""
    done = _run(["losetup", "-n", "-O", "NAME", "-j", str(path)], check=False)
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def attach(path: Path, size: int = DISK_BYTES) -> str:
    """The loop device of disk file ``path`` (made sparse if missing; attached with
    partition scanning if not yet)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.truncate(size)
    already = attached(path)
    if already:
        return already[0]
    done = _run(["losetup", "--partscan", "--find", "--show", str(path)], check=False)
    if done.returncode != 0:
        raise LabError(
            f"cannot attach {path} to a loop device (a container node's disk): "
            f"{done.stderr.strip()} (is the loop module there? modprobe loop)"
        )
    return done.stdout.strip()


def detach(path: Path) -> list[str]:
    """Detach every loop device of disk file ``path``; those detached."""
    gone = attached(path)
    for loop in gone:
        _run(["losetup", "-d", loop], check=False)
    return gone
