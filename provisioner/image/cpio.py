"""A pure, deterministic writer for the "newc" cpio format (the Linux initramfs format).

No I/O: entries in, bytes out. The same entries always give the same bytes (and so the
same sha256): every entry gets mtime 0 and uid/gid 0, entries are written sorted by path
(parents before children), inode numbers are assigned in that order, and ``gzip_newc``
compresses with a zero gzip mtime.

The layout of one member (see ``Documentation/driver-api/early-userspace/buffer-format.rst``
in the kernel tree): a 110-byte ASCII header (magic ``070701`` and 13 fields of 8 hex
digits), the NUL-terminated name padded to a multiple of 4, then the data padded to a
multiple of 4. The archive ends with a member named ``TRAILER!!!``.

Missing parent directories are added (mode 0755); a path given twice, a path with ``..``
or an entry below a non-directory is refused with ``ValueError`` (a bug in the caller).
"""

from __future__ import annotations

import enum
import gzip
import stat
from collections.abc import Iterable
from dataclasses import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110
DEFAULT_DIR_MODE = 0o755
DEFAULT_FILE_MODE = 0o644
DEFAULT_DEVICE_MODE = 0o600


class DeviceKind(enum.Enum):
    """The kind of a device node."""

    CHAR = "c"
    BLOCK = "b"


@dataclass(frozen=True)
class Directory:
    path: str
    mode: int = DEFAULT_DIR_MODE


@dataclass(frozen=True)
class File:
    path: str
    data: bytes
    mode: int = DEFAULT_FILE_MODE


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str


@dataclass(frozen=True)
class Device:
    path: str
    kind: DeviceKind
    major: int
    minor: int
    mode: int = DEFAULT_DEVICE_MODE


Entry = Directory | File | Symlink | Device


def normalize_path(path: str) -> str:
    """``/usr/bin/x`` or ``usr/bin/x`` -> ``usr/bin/x``; refuses ``..``, ``.`` and NUL."""
    name = path.lstrip("/")
    parts = name.split("/")
    if not name or "\0" in name or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid archive path {path!r}")
    return name


def _sort_key(path: str) -> tuple[str, ...]:
    return tuple(path.split("/"))


def _with_parents(entries: Iterable[Entry]) -> dict[str, Entry]:
    by_path: dict[str, Entry] = {}
    for entry in entries:
        name = normalize_path(entry.path)
        if name in by_path:
            raise ValueError(f"archive path given twice: {name!r}")
        by_path[name] = entry
    for name in list(by_path):
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            existing = by_path.get(parent)
            if existing is None:
                by_path[parent] = Directory(parent)
            elif not isinstance(existing, Directory):
                raise ValueError(f"{name!r} is below {parent!r}, which is not a directory")
    return by_path


def _mode(entry: Entry) -> int:
    if isinstance(entry, Symlink):
        return stat.S_IFLNK | 0o777
    perms = entry.mode
    if perms & ~0o7777:
        raise ValueError(f"{entry.path!r}: mode {perms:o} has bits outside 07777")
    if isinstance(entry, Directory):
        return stat.S_IFDIR | perms
    if isinstance(entry, File):
        return stat.S_IFREG | perms
    kind = stat.S_IFCHR if entry.kind is DeviceKind.CHAR else stat.S_IFBLK
    return kind | perms


def _payload(entry: Entry) -> bytes:
    if isinstance(entry, File):
        return entry.data
    if isinstance(entry, Symlink):
        if not entry.target or "\0" in entry.target:
            raise ValueError(f"{entry.path!r}: invalid symlink target {entry.target!r}")
        return entry.target.encode()
    return b""


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _member(
    name: str, *, ino: int, mode: int, nlink: int, data: bytes, rdev: tuple[int, int]
) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (
        ino,
        mode,
        0,  # uid
        0,  # gid
        nlink,
        0,  # mtime
        len(data),
        0,  # devmajor
        0,  # devminor
        rdev[0],
        rdev[1],
        len(encoded),
        0,  # check
    )
    for value in fields:
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"{name!r}: header field {value} does not fit in 32 bits")
    header = MAGIC + b"".join(b"%08X" % value for value in fields)
    head = header + encoded
    return head + _pad(len(head)) + data + _pad(len(data))


def write_newc(entries: Iterable[Entry]) -> bytes:
    """The uncompressed newc archive of ``entries`` (sorted, parents added, trailer)."""
    by_path = _with_parents(entries)
    chunks: list[bytes] = []
    for ino, name in enumerate(sorted(by_path, key=_sort_key), start=1):
        entry = by_path[name]
        rdev = (entry.major, entry.minor) if isinstance(entry, Device) else (0, 0)
        chunks.append(
            _member(
                name,
                ino=ino,
                mode=_mode(entry),
                nlink=2 if isinstance(entry, Directory) else 1,
                data=_payload(entry),
                rdev=rdev,
            )
        )
    chunks.append(_member(TRAILER, ino=0, mode=0, nlink=1, data=b"", rdev=(0, 0)))
    return b"".join(chunks)


def gzip_newc(entries: Iterable[Entry], *, level: int = 6) -> bytes:
    """``write_newc`` gzip-compressed with mtime 0: the same entries give the same bytes.

    Level 6 (gzip's own default): level 9 is ten times slower on kernel modules for 1%.
    """
    return gzip.compress(write_newc(entries), compresslevel=level, mtime=0)
