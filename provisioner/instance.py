"""One `provisioner serve` per state folder, and no second DHCP server on its ports.

``serve`` holds an exclusive ``flock(2)`` on ``<state_dir>/serve.lock`` (the file holds
its PID) from before the registry is opened until it exits; the kernel drops the lock
when the process ends, however it ends, so a stale file never blocks a start. A second
``serve`` on the same folder fails at once with :class:`InstanceConflict` naming the
holder's PID.

A second ``serve`` on *another* state folder is caught by the DHCP sockets themselves:
they are bound without ``SO_REUSEADDR``, so the kernel refuses a port (67, 4011) already
bound on the same interface (boot/dhcp_server.py raises :class:`InstanceConflict` on
``EADDRINUSE``). ``serve`` exits 1 on either (a configuration error exits 2).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path
from types import TracebackType

from provisioner.errors import BootServiceError

log = logging.getLogger(__name__)

LOCK_NAME = "serve.lock"


class InstanceConflict(BootServiceError):
    """Another process holds what this serve needs: its state folder or a DHCP port."""


def read_holder(path: Path) -> int | None:
    """The PID written in a lock file, or None (no file, empty, or being rewritten)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class InstanceLock:
    """The exclusive lock on ``<state_dir>/serve.lock``; a context manager.

    The file is never removed: removing it on exit would let a third process lock a
    new file while a second still waits on the old one.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write this PID into it, or raise InstanceConflict."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise BootServiceError(f"cannot lock {self.path}: {exc.strerror}") from exc
            pid = read_holder(self.path)
            holder = f"PID {pid}" if pid is not None else "a process whose PID is not known yet"
            raise InstanceConflict(
                f"another provisioner serve ({holder}) is running on state folder "
                f"{self.state_dir} (it holds {self.path}); stop it first, or give this one "
                "another [paths] state_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        log.debug("locked %s (pid %d)", self.path, os.getpid())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
