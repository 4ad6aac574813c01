"""The kernel lines kept per node: ``<state_dir>/console/<mac>.log``, bounded.

One JSON object a line (``{"ts": received, "text": ..., "level", "seq", "kernel_ts"}``).
When a node's file passes half its cap it becomes ``<mac>.log.1`` (the older half is let
go) and a new file starts: a node never holds more than ``max_bytes`` on disk, whatever
its kernel prints. Files exist only for nodes the registry knows (the service maps the
sender's address to a node first): nobody can make a file by sending a datagram.

:func:`tail` reads the last lines back (``node console``, the API); :class:`Follower`
reads what was added since (``node console --follow``), across rotations.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from provisioner.console.protocol import KernelLine

DEFAULT_MAX_BYTES = 1024 * 1024
CONSOLE_DIR = "console"


@dataclass(frozen=True)
class Record:
    """A kernel line as kept: when it arrived, and the line."""

    ts: float
    line: KernelLine

    def as_dict(self) -> dict[str, str | int | float | None]:
        return {"ts": self.ts, **self.line.as_dict()}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Record | None:
        """None for a line that is not one of ours (a torn write, a hand edit)."""
        try:
            data = json.loads(text)
            line = KernelLine(
                str(data["text"]),
                None if data.get("level") is None else int(data["level"]),
                None if data.get("seq") is None else int(data["seq"]),
                None if data.get("kernel_ts") is None else float(data["kernel_ts"]),
            )
            return cls(float(data["ts"]), line)
        except (ValueError, KeyError, TypeError):
            return None


def console_dir(state_dir: Path) -> Path:
    return state_dir / CONSOLE_DIR


def log_path(state_dir: Path, mac: str) -> Path:
    """The node's current file (``mac`` as the registry keeps it: aa:bb:...)."""
    return console_dir(state_dir) / f"{mac}.log"


class ConsoleStore:
    """Appends records to each node's file, rotating at half of ``max_bytes``."""

    def __init__(self, state_dir: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.state_dir = state_dir
        self.max_bytes = max_bytes
        console_dir(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)

    def append(self, mac: str, records: Sequence[Record]) -> None:
        if not records:
            return
        path = log_path(self.state_dir, mac)
        data = "".join(r.to_json() + "\n" for r in records).encode()
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(data) > self.max_bytes // 2:
            os.replace(path, path.with_name(path.name + ".1"))
        data = data[-(self.max_bytes // 2) :]  # one batch larger than the cap: its end
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def remove(self, mac: str) -> None:
        forget_console(self.state_dir, mac)


def forget_console(state_dir: Path, mac: str) -> None:
    """The node is forgotten (``node remove``): so are its lines."""
    path = log_path(state_dir, mac)
    for p in (path, path.with_name(path.name + ".1")):
        p.unlink(missing_ok=True)


def _records(lines: Iterable[str]) -> Iterable[Record]:
    for text in lines:
        record = Record.from_json(text) if text.strip() else None
        if record is not None:
            yield record


def tail(state_dir: Path, mac: str, count: int) -> list[Record]:
    """The node's last ``count`` records, oldest first (none kept: empty)."""
    path = log_path(state_dir, mac)
    kept: deque[Record] = deque(maxlen=max(0, count))
    for p in (path.with_name(path.name + ".1"), path):
        try:
            with p.open(encoding="utf-8", errors="replace") as f:
                kept.extend(_records(f))
        except FileNotFoundError:
            continue
    return list(kept)


class Follower:
    """What was appended to a node's file since the last :meth:`poll`; a rotation (the
    file replaced) is followed into the new file."""

    def __init__(self, state_dir: Path, mac: str):
        self.path = log_path(state_dir, mac)
        self._inode: int | None = None
        self._offset = 0
        self._rest = b""
        try:
            st = self.path.stat()
            self._inode, self._offset = st.st_ino, st.st_size
        except FileNotFoundError:
            pass

    def poll(self) -> list[Record]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        out: list[Record] = []
        if st.st_ino != self._inode:  # rotated (or created): the rest of the old one first
            if self._inode is not None:
                out += self._read(self.path.with_name(self.path.name + ".1"), self._inode)
            self._inode, self._offset, self._rest = st.st_ino, 0, b""
        elif st.st_size < self._offset:  # truncated by hand
            self._offset, self._rest = 0, b""
        out += self._read(self.path, st.st_ino)
        return out

    def _read(self, path: Path, inode: int) -> list[Record]:
        try:
            with path.open("rb") as f:
                if os.fstat(f.fileno()).st_ino != inode:
                    return []
                f.seek(self._offset)
                data = self._rest + f.read()
                self._offset = f.tell()
        except FileNotFoundError:
            return []
        *complete, self._rest = data.split(b"\n")
        return list(_records(c.decode("utf-8", "replace") for c in complete))
