"""Search a test run's files for the appliance's secrets (issue 20, item 7): the API token,
the control node's SSH private key and the BMC passwords of every state folder under a
root, looked for in every other file under that root (logs, lab files, state files).

A state folder is a folder holding an ``api-token``. Its secret stores are the only
files where its secrets may be; big files (images, root filesystems, models, wheels) and
the node root filesystems the container lab unpacks are not read: nothing of the
appliance's is written there, and reading them would take minutes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SECRET_STORES = {"api-token", "power.toml", "ssh/id_ed25519", "ssh/id_ed25519.pub"}
MAX_BYTES = 8 * 1024 * 1024
SKIP_DIRS = {"rootfs", "roots", "images", "artifacts", "models", "chromium", "__pycache__"}
_PASSWORD = re.compile(r'^\s*password\s*=\s*"([^"]{8,})"', re.MULTILINE)


@dataclass(frozen=True)
class Secret:
    kind: str  # "API token", "SSH key", "BMC password"
    value: str
    home: Path  # the state folder it belongs to


def secrets_under(root: Path) -> list[Secret]:
    found: list[Secret] = []
    for token_file in root.rglob("api-token"):
        state = token_file.parent
        token = token_file.read_text().strip()
        if len(token) >= 16:
            found.append(Secret("API token", token, state))
        key = state / "ssh" / "id_ed25519"
        if key.is_file():
            lines = key.read_text().strip().splitlines()
            body = "".join(lines[1:-1])
            if len(body) > 80:  # from the middle: the private part (the start is the same
                middle = len(body) // 2  # for every unencrypted key of a kind)
                found.append(Secret("SSH key", body[middle : middle + 40], state))
        power = state / "power.toml"
        if power.is_file():
            found += [
                Secret("BMC password", p, state) for p in _PASSWORD.findall(power.read_text())
            ]
    return found


def readable_files(root: Path) -> list[Path]:
    out: list[Path] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.is_symlink():
                continue
            if entry.is_dir():
                if entry.name not in SKIP_DIRS:
                    stack.append(entry)
            elif entry.is_file():
                try:
                    if entry.stat().st_size <= MAX_BYTES:
                        out.append(entry)
                except OSError:
                    continue
    return out


def leaks(root: Path) -> list[str]:
    """``"<kind> of <state> in <file>"`` for every secret found outside its stores."""
    secrets = secrets_under(root)
    if not secrets:
        return []
    stores = {s.home / name for s in secrets for name in SECRET_STORES}
    found = []
    for path in readable_files(root):
        if path in stores:
            continue
        try:
            text = path.read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        for secret in secrets:
            if secret.value in text:
                found.append(f"{secret.kind} of {secret.home} in {path}")
    return found
