"""The control node's own SSH key pair: made once, at first start, kept in the state dir.

::

    <state_dir>/ssh/id_ed25519        private key, OpenSSH format, mode 0600
    <state_dir>/ssh/id_ed25519.pub    "ssh-ed25519 AAAA... provisioner@<host>"

Booting images fetch the public key (``GET /api/v1/nodes/<mac>/authorized_keys`` with
their per-boot token) and install it for root; post-install logs in with the private key.
The key is made with ``cryptography`` (paramiko's own dependency, so nothing new), not by
running ssh-keygen.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provisioner.errors import ProvisionerError

KEY_DIR = "ssh"
KEY_NAME = "id_ed25519"


class SshKeyError(ProvisionerError):
    """The control node's key pair cannot be read or made."""


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_line: str  # "ssh-ed25519 AAAA... comment"

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
        return fingerprint(self.public_line)


def fingerprint(public_line: str) -> str:
    """The SHA256 fingerprint of an OpenSSH public key line."""
    try:
        blob = base64.b64decode(public_line.split()[1], validate=True)
    except (IndexError, ValueError) as exc:
        raise SshKeyError(f"not an OpenSSH public key: {public_line[:40]!r}") from exc
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def ensure_keypair(state_dir: Path) -> KeyPair:
    """The key pair in ``state_dir/ssh``, made (mode 0600) if there is none yet."""
    return ensure_key(state_dir / KEY_DIR, KEY_NAME, f"provisioner@{socket.gethostname()}")


def ensure_key(directory: Path, name: str, comment: str) -> KeyPair:
    """An Ed25519 pair ``directory/name`` (+ ``.pub``), made (0600, folder 0700) if missing."""
    private = directory / name
    public = directory / f"{name}.pub"
    try:
        if private.exists():
            mode = private.stat().st_mode & 0o777
            if mode & 0o077:
                raise SshKeyError(f"{private} is readable by others (mode {mode:o}): chmod 600 it")
            if not public.exists():
                key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
                public.write_text(_public_line(key.public_key(), comment) + "\n")
            return KeyPair(private, public.read_text().strip())
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        tmp = directory / f".{name}.new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as stream:
            stream.write(pem)
        line = _public_line(key.public_key(), comment)
        public.write_text(line + "\n")
        os.replace(tmp, private)
        return KeyPair(private, line)
    except (OSError, ValueError) as exc:
        raise SshKeyError(f"cannot read or make the SSH key in {directory}: {exc}") from exc


def _public_line(public_key: object, comment: str) -> str:
    raw = public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return f"{raw} {comment}"
