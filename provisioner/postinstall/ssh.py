"""SSH to a node (paramiko), with its host key pinned to what its agent reported.

The seam and its values live here; the paramiko session in :mod:`.ssh_paramiko`, which
:func:`connect` imports on first use (paramiko takes ~60 ms to import, and most commands
never open a session).

A node's host keys are made fresh at each boot of the shared image and reported by its
agent; the registry keeps the last report. ``connect`` trusts only those keys: a node that
reported none is refused before any connection, and a node that presents another key is
refused with both fingerprints (never accepted, never learned). Only connecting is
retried (sshd may still be starting); a command that fails is the caller's to judge.

:class:`Connection` is the seam: what post-install and smoke ask of a session to a node
(``run``, ``put``, ``close``). ``ssh_paramiko.SshConnection`` is the real one, made by
:func:`connect`; ``tests/fakes/ssh.py`` holds a scripted fake. Every paramiko error
becomes an :class:`SshError` there.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from provisioner.errors import ProvisionerError

log = logging.getLogger(__name__)

CONNECT_TRIES = 5
CONNECT_PAUSE = 2.0


class SshError(ProvisionerError):
    """A node cannot be reached or logged into over SSH."""


class HostKeyMismatch(SshError):
    """The node presented a host key other than the one it reported: refused."""


@dataclass(frozen=True)
class HostKey:
    type: str  # ssh-ed25519
    public_key: str  # base64

    @property
    def fingerprint(self) -> str:
        blob = base64.b64decode(self.public_key)
        return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class Result:
    command: str
    exit_status: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def output(self, limit: int = 4000) -> str:
        text = (self.stdout + self.stderr).strip()
        return text if len(text) <= limit else "…" + text[-limit:]


class Connection(Protocol):
    """One logged-in session to one node, as the rest of the code uses it."""

    def run(self, command: str, *, timeout: float = 300.0) -> Result:
        """Run a shell command; its exit status is in the result (124: timed out).
        Raises SshError if the connection is lost."""
        ...

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write ``data`` to ``path`` atomically. Raises SshError if it cannot."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Connection: ...

    def __exit__(self, *exc: object) -> None: ...


def connect(node: str, address: str, host_keys: Sequence[HostKey], private_key: Path) -> Connection:
    """Log into ``node`` at ``address`` as root, trusting only ``host_keys`` (retrying
    while sshd starts; ``ssh_paramiko.connect`` takes the port, user and timeouts)."""
    # Lazy: paramiko is imported only when a session is opened (start-up of every command).
    from provisioner.postinstall.ssh_paramiko import connect as open_session

    return open_session(node, address, host_keys, private_key)
