"""Each node's SSH host key, made and kept by the control node (as Warewulf does).

A stateless image that made its own host keys would show new ones at every boot, and a
node whose keys change is held for ``node approve`` (the keys are what post-install
pins): every reboot would need a person. So the control node makes one Ed25519 host key
per node, the first time the node's image asks for it, and keeps it::

    <state_dir>/hostkeys/<mac as 12 hex digits>/ssh_host_ed25519_key       0600
    <state_dir>/hostkeys/<mac as 12 hex digits>/ssh_host_ed25519_key.pub

The booting image fetches the private key with its boot token (``GET
/api/v1/nodes/<mac>/host_key``) and installs it before sshd starts
(``provisioner-agent --keys``); post-install pins the public key kept here, whatever a
report says, and a report with other keys is held (``enroll.matching.review``). The key
crosses the cluster network in clear, like the boot token that guards it
(docs/security.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from provisioner.sshkeys import KeyPair, SshKeyError, ensure_key, fingerprint

HOSTKEY_DIR = "hostkeys"
KEY_NAME = "ssh_host_ed25519_key"


def key_dir(state_dir: Path, mac: str) -> Path:
    """Where ``mac``'s host key lives (``mac`` normalized: aa:bb:...)."""
    return state_dir / HOSTKEY_DIR / mac.replace(":", "").lower()


def ensure_host_key(state_dir: Path, mac: str, hostname: str | None) -> KeyPair:
    """The node's host key, made now if it has none."""
    return ensure_key(key_dir(state_dir, mac), KEY_NAME, f"root@{hostname or mac}")


def issued_public_key(state_dir: Path, mac: str) -> str | None:
    """The public line of the host key issued to ``mac`` (None: none issued yet)."""
    path = key_dir(state_dir, mac) / f"{KEY_NAME}.pub"
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SshKeyError(f"cannot read {path}: {exc}") from exc
    return text or None


def issued_fingerprint(state_dir: Path, mac: str) -> str | None:
    """``SHA256:...`` of the issued key (None: none issued yet)."""
    line = issued_public_key(state_dir, mac)
    return fingerprint(line) if line is not None else None


def forget_host_key(state_dir: Path, mac: str) -> None:
    """Drop ``mac``'s key (the node was removed: a new one is made if it comes back)."""
    shutil.rmtree(key_dir(state_dir, mac), ignore_errors=True)
