"""The newc writer: read back by an independent parser and by GNU cpio; deterministic."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioner.image.cpio import (
    Device,
    DeviceKind,
    Directory,
    Entry,
    File,
    Symlink,
    gzip_newc,
    write_newc,
)

ENTRIES: list[Entry] = [
    File("init", b"#!/bin/sh\necho hello\n", 0o755),
    Directory("dev"),
    Device("dev/console", DeviceKind.CHAR, 5, 1, 0o600),
    Device("dev/null", DeviceKind.CHAR, 1, 3, 0o666),
    Device("dev/vda", DeviceKind.BLOCK, 254, 0),
    File("bin/busybox", bytes(range(256)) * 3 + b"odd", 0o755),
    Symlink("bin/sh", "busybox"),
    Symlink("sbin", "bin"),
    File("/etc/motd", b"", 0o644),  # a leading slash is dropped; empty file
    File("lib/modules/6.1.0-56-amd64/kernel/drivers/net/virtio_net.ko", b"\x7fELF" * 5),
    Directory("tmp", 0o1777),
]


@dataclass(frozen=True)
class Member:
    name: str
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    rdev: tuple[int, int]
    data: bytes


def parse_newc(archive: bytes) -> list[Member]:
    """An independent reading of newc: 110-byte header, name and data padded to 4."""
    members: list[Member] = []
    offset = 0
    while True:
        assert offset % 4 == 0
        header = archive[offset : offset + 110]
        assert header[:6] == b"070701", f"bad magic at {offset}"
        f = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _maj, _min, rmaj, rmin, namesize, check = f
        assert check == 0
        name_end = offset + 110 + namesize
        name = archive[offset + 110 : name_end - 1].decode()
        assert archive[name_end - 1] == 0
        data_start = name_end + (-name_end % 4)
        data = archive[data_start : data_start + size]
        offset = data_start + size + (-(data_start + size) % 4)
        if name == "TRAILER!!!":
            assert offset == len(archive)
            return members
        members.append(Member(name, ino, mode, uid, gid, nlink, mtime, (rmaj, rmin), data))


def test_members_read_back_with_types_modes_and_payloads() -> None:
    members = {m.name: m for m in parse_newc(write_newc(ENTRIES))}
    assert set(members) == {
        "bin",
        "bin/busybox",
        "bin/sh",
        "dev",
        "dev/console",
        "dev/null",
        "dev/vda",
        "etc",
        "etc/motd",
        "init",
        "lib",
        "lib/modules",
        "lib/modules/6.1.0-56-amd64",
        "lib/modules/6.1.0-56-amd64/kernel",
        "lib/modules/6.1.0-56-amd64/kernel/drivers",
        "lib/modules/6.1.0-56-amd64/kernel/drivers/net",
        "lib/modules/6.1.0-56-amd64/kernel/drivers/net/virtio_net.ko",
        "sbin",
        "tmp",
    }
    init = members["init"]
    assert init.mode == stat.S_IFREG | 0o755
    assert init.data == b"#!/bin/sh\necho hello\n"
    assert members["bin/busybox"].data == bytes(range(256)) * 3 + b"odd"
    assert members["etc/motd"].data == b""
    assert members["bin"].mode == stat.S_IFDIR | 0o755  # added parent
    assert members["tmp"].mode == stat.S_IFDIR | 0o1777
    assert members["bin/sh"].mode == stat.S_IFLNK | 0o777
    assert members["bin/sh"].data == b"busybox"
    assert members["sbin"].data == b"bin"
    assert members["dev/console"].mode == stat.S_IFCHR | 0o600
    assert members["dev/console"].rdev == (5, 1)
    assert members["dev/null"].mode == stat.S_IFCHR | 0o666
    assert members["dev/null"].rdev == (1, 3)
    assert members["dev/vda"].mode == stat.S_IFBLK | 0o600
    assert members["dev/vda"].rdev == (254, 0)
    for member in members.values():
        assert (member.uid, member.gid, member.mtime) == (0, 0, 0)
        assert member.nlink == (2 if stat.S_ISDIR(member.mode) else 1)


def test_parents_come_before_children_and_inodes_are_unique() -> None:
    members = parse_newc(write_newc(ENTRIES))
    names = [m.name for m in members]
    for index, name in enumerate(names):
        if "/" in name:
            assert name.rsplit("/", 1)[0] in names[:index]
    assert len({m.ino for m in members}) == len(members)


def test_output_is_deterministic_whatever_the_input_order() -> None:
    forward = write_newc(ENTRIES)
    assert write_newc(reversed(ENTRIES)) == forward
    compressed = gzip_newc(ENTRIES)
    assert gzip_newc(list(reversed(ENTRIES))) == compressed
    assert compressed[4:8] == b"\0\0\0\0"  # gzip MTIME
    assert gzip.decompress(compressed) == forward
    assert hashlib.sha256(gzip_newc(ENTRIES)).digest() == hashlib.sha256(compressed).digest()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([File("a", b""), File("/a", b"")], "given twice"),
        ([File("../etc/passwd", b"")], "invalid archive path"),
        ([File("a/./b", b"")], "invalid archive path"),
        ([File("", b"")], "invalid archive path"),
        ([File("a", b""), File("a/b", b"")], "not a directory"),
        ([Symlink("a", "")], "invalid symlink target"),
        ([File("a", b"", 0o100644)], "bits outside"),
    ],
)
def test_bad_entries_are_refused(entries: list[Entry], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_newc(entries)


def _gnu_cpio() -> str:
    cpio = shutil.which("cpio")
    if cpio is None:
        pytest.skip("needs GNU cpio (apt-get install cpio)")
    return cpio


def test_gnu_cpio_lists_every_member(tmp_path: Path) -> None:
    cpio = _gnu_cpio()
    listing = subprocess.run(
        [cpio, "-t", "-v", "--quiet"],
        input=write_newc(ENTRIES),
        capture_output=True,
        check=True,
        env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
    ).stdout.decode()
    # "crw-------   1 root root   5,   1 Jan  1  1970 dev/console" -> {"dev/console": line}
    lines = {}
    for line in listing.splitlines():
        tokens = line.split()
        lines[tokens[tokens.index("1970") + 1]] = line
    assert lines["dev/console"].startswith("crw-------")
    assert " 5,   1 " in lines["dev/console"]
    assert " 254,   0 " in lines["dev/vda"]
    assert lines["dev/null"].startswith("crw-rw-rw-")
    assert lines["dev/vda"].startswith("brw-------")
    assert lines["bin/sh"].startswith("lrwxrwxrwx")
    assert lines["bin/sh"].endswith("bin/sh -> busybox")
    assert lines["init"].startswith("-rwxr-xr-x")
    assert " root " in lines["init"] and "1970" in lines["init"]


def test_gnu_cpio_extracts_files_links_and_devices(tmp_path: Path) -> None:
    cpio = _gnu_cpio()
    argv = [cpio, "-i", "-d", "--quiet", "--no-absolute-filenames"]
    if os.geteuid() != 0:
        argv += ["-f", "dev/*"]  # only root may create device nodes
    subprocess.run(argv, input=write_newc(ENTRIES), cwd=tmp_path, check=True)
    init = tmp_path / "init"
    assert init.read_bytes() == b"#!/bin/sh\necho hello\n"
    assert stat.S_IMODE(init.stat().st_mode) == 0o755
    assert (tmp_path / "bin/busybox").read_bytes() == bytes(range(256)) * 3 + b"odd"
    assert os.readlink(tmp_path / "bin/sh") == "busybox"
    assert os.readlink(tmp_path / "sbin") == "bin"
    assert (tmp_path / "etc/motd").read_bytes() == b""
    module = tmp_path / "lib/modules/6.1.0-56-amd64/kernel/drivers/net/virtio_net.ko"
    assert stat.S_IMODE(module.stat().st_mode) == 0o644
    if os.geteuid() == 0:
        console = (tmp_path / "dev/console").lstat()
        assert stat.S_ISCHR(console.st_mode)
        assert (os.major(console.st_rdev), os.minor(console.st_rdev)) == (5, 1)
        null = (tmp_path / "dev/null").lstat()
        assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
