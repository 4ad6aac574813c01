"""The real :class:`~provisioner.postinstall.ssh.Connection`: a paramiko session to a node,
its host key pinned to what the node's agent reported (see :mod:`.ssh` for the rules).
Imported by :func:`provisioner.postinstall.ssh.connect` on first use.

paramiko's transport thread logs a failed handshake (``Error reading SSH protocol
banner``) at ERROR, then its traceback line by line. Every such failure reaches the caller
as an :class:`SshError`, one line per node; so paramiko's records at ERROR and above are
kept for ``--log-level debug`` only (demoted to DEBUG), never shown as errors."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import paramiko

from provisioner.postinstall import ssh
from provisioner.postinstall.ssh import HostKey, HostKeyMismatch, Result, SshError

log = logging.getLogger("provisioner.postinstall.ssh")
# Where paramiko logs a session's (and its SFTP channel's) failures.
PARAMIKO_LOGGERS = ("paramiko.transport", "paramiko.transport.sftp")


class _Translated(logging.Filter):
    """Drop paramiko's ERROR records (and their tracebacks): the caller reports the same
    failure as an SshError. Kept, as DEBUG, when this module's logger shows debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if not log.isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def _quiet_paramiko() -> None:
    for name in PARAMIKO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Translated) for f in logger.filters):
            logger.addFilter(_Translated())


_quiet_paramiko()


def _fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _Pinned(paramiko.MissingHostKeyPolicy):
    """Refuse every key that is not in the client's host keys (all of them, here)."""

    def __init__(self, node: str, expected: Sequence[HostKey]):
        self.node = node
        self.expected = expected

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        wanted = ", ".join(f"{k.type} {k.fingerprint}" for k in self.expected)
        raise HostKeyMismatch(
            f"{self.node} ({hostname}) presented {key.get_name()} {_fingerprint(key)}, "
            f"not the key it reported ({wanted}): refused"
        )


class SshConnection:
    """One logged-in session to one node over paramiko; ``run`` commands, ``put`` files."""

    def __init__(self, node: str, client: paramiko.SSHClient):
        self.node = node
        self.client = client

    def run(self, command: str, *, timeout: float = 300.0, stdin: bytes | None = None) -> Result:
        started = time.monotonic()
        try:
            transport = self.client.get_transport()
            if transport is None:
                raise SshError(f"{self.node}: the SSH connection is closed")
            chan = transport.open_session()
            chan.settimeout(timeout)
            chan.exec_command(command)
            if stdin is not None:
                chan.sendall(stdin)
                chan.shutdown_write()
            out, err = io.BytesIO(), io.BytesIO()
            deadline = started + timeout
            while True:
                if chan.recv_ready():
                    out.write(chan.recv(65536))
                if chan.recv_stderr_ready():
                    err.write(chan.recv_stderr(65536))
                if (
                    chan.exit_status_ready()
                    and not chan.recv_ready()
                    and not chan.recv_stderr_ready()
                ):
                    break
                if time.monotonic() > deadline:
                    chan.close()
                    partial = out.getvalue().decode(errors="replace")
                    late = f"timed out after {timeout:.0f} s"
                    return Result(command, 124, partial, late, time.monotonic() - started)
                time.sleep(0.01)
            status = chan.recv_exit_status()
            chan.close()
        except (paramiko.SSHException, OSError) as exc:
            raise SshError(f"{self.node}: running {command[:60]!r} failed: {exc}") from exc
        return Result(
            command,
            status,
            out.getvalue().decode(errors="replace"),
            err.getvalue().decode(errors="replace"),
            time.monotonic() - started,
        )

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write ``data`` to ``path`` atomically (a temporary file, then a rename)."""
        tmp = f"{path}.provisioner-new"
        try:
            with self.client.open_sftp() as sftp:
                with sftp.open(tmp, "wb") as stream:
                    stream.write(data)
                sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, path)
        except (paramiko.SSHException, OSError) as exc:
            raise SshError(f"{self.node}: cannot write {path}: {exc}") from exc

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    node: str,
    address: str,
    host_keys: Sequence[HostKey],
    private_key: Path,
    *,
    port: int = 22,
    user: str = "root",
    timeout: float = 15.0,
    tries: int = ssh.CONNECT_TRIES,
    pause: float = ssh.CONNECT_PAUSE,
) -> SshConnection:
    """Log into ``node`` at ``address`` as ``user``, trusting only ``host_keys``."""
    if not host_keys:
        raise SshError(
            f"{node} reported no SSH host key (its image's agent has not reported yet): "
            "refusing to connect to an unknown key"
        )
    try:
        pkey = paramiko.Ed25519Key.from_private_key_file(str(private_key))
    except (OSError, paramiko.SSHException) as exc:
        raise SshError(f"cannot read the control node's key {private_key}: {exc}") from exc
    last: Exception | None = None
    for attempt in range(1, tries + 1):
        client = paramiko.SSHClient()
        known = client.get_host_keys()
        entry = address if port == 22 else f"[{address}]:{port}"
        for key in host_keys:
            try:
                known.add(
                    entry,
                    key.type,
                    paramiko.PKey.from_type_string(key.type, base64.b64decode(key.public_key)),
                )
            except (paramiko.SSHException, ValueError) as exc:
                log.debug("node %s: unusable reported key %s: %s", node, key.type, exc)
        client.set_missing_host_key_policy(_Pinned(node, host_keys))
        try:
            client.connect(
                address,
                port=port,
                username=user,
                pkey=pkey,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                allow_agent=False,
                look_for_keys=False,
            )
            return SshConnection(node, client)
        except HostKeyMismatch:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            wanted = ", ".join(f"{k.type} {k.fingerprint}" for k in host_keys)
            raise HostKeyMismatch(
                f"{node} ({address}) presented {exc.key.get_name()} {_fingerprint(exc.key)}, "
                f"not the key it reported ({wanted}): refused"
            ) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise SshError(f"{node} ({address}) refused the control node's key: {exc}") from exc
        except (TimeoutError, paramiko.SSHException, OSError) as exc:
            client.close()
            last = exc
            log.debug("node %s: connect attempt %d failed: %s", node, attempt, exc)
            if attempt < tries:
                time.sleep(pause)
    raise SshError(
        f"{node} {address}:{port}: cannot connect over SSH "
        f"({tries} {'try' if tries == 1 else 'tries'}): {_reason(last)}"
    )


def _reason(exc: Exception | None) -> str:
    """One line for a failed connection: paramiko's "[Errno None] Unable to connect to
    port 22 on ..." becomes what the socket said ("Connection refused")."""
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        causes = {str(getattr(e, "strerror", None) or e) for e in exc.errors.values()}
        return "; ".join(sorted(causes))
    return (str(exc) or type(exc).__name__).splitlines()[0]
