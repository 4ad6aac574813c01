"""The real :class:`~provisioner.postinstall.ssh.Connection`: a paramiko session to a node,
its host key pinned to what the node's agent reported (see :mod:`.ssh` for the rules).
Imported by :func:`provisioner.postinstall.ssh.connect` on first use."""

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
    raise SshError(f"{node} ({address}:{port}): cannot connect after {tries} tries: {last}")
