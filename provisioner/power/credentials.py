"""BMC passwords: from the environment or a TOML file only root can read; never shown.

Lookup for node ``node0`` whose BMC is ``10.0.0.31``, first hit wins:

1. ``$PROVISIONER_POWER_PASSWORD_NODE0`` (the node name upper-cased, other characters
   than letters and digits as ``_``)
2. the credentials file, ``[nodes.node0] password = "..."``
3. the credentials file, ``[bmcs."10.0.0.31"] password = "..."``
4. the credentials file, ``[default] password = "..."``

The file is ``--credentials``, else ``$PROVISIONER_POWER_CREDENTIALS``, else
``/etc/provisioner/power.toml``, else ``<state_dir>/power.toml``. A file that group or
others may read is refused with :class:`CredentialsError` (``chmod 600`` it). Passwords
travel as :class:`Secret`, whose ``repr``/``str`` never show the value.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from provisioner.power.base import CredentialsError

ENV_PREFIX = "PROVISIONER_POWER_PASSWORD_"
ENV_FILE = "PROVISIONER_POWER_CREDENTIALS"
SYSTEM_FILE = Path("/etc/provisioner/power.toml")
STATE_FILE_NAME = "power.toml"


class Secret:
    """A password that does not print itself; :meth:`reveal` is the only way in."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def env_name(node: str) -> str:
    """The environment variable that holds ``node``'s BMC password."""
    return ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", node.upper())


@dataclass(frozen=True)
class CredentialStore:
    """Passwords by node name and by BMC host, read once from one file (or none)."""

    source: Path | None = None
    by_node: Mapping[str, Secret] | None = None
    by_host: Mapping[str, Secret] | None = None
    default: Secret | None = None

    def password(self, node: str, host: str | None, env: Mapping[str, str] | None = None) -> Secret:
        env = os.environ if env is None else env
        value = env.get(env_name(node))
        if value:
            return Secret(value)
        found = (self.by_node or {}).get(node)
        if found is None and host is not None:
            found = (self.by_host or {}).get(host)
        if found is None:
            found = self.default
        if found is None:
            where = str(self.source) if self.source else "no credentials file found"
            raise CredentialsError(
                f"no BMC password for {node}: set ${env_name(node)} or add "
                f"[nodes.{node}] password = ... ({where})"
            )
        return found


def check_mode(path: Path) -> None:
    """Refuse a credentials file that group or others can read or write."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialsError(
            f"{path} is mode {stat.S_IMODE(mode):04o}: group or others could read the "
            f"passwords; run chmod 600 {path}"
        )


def parse_credentials(text: str, source: Path | None = None) -> CredentialStore:
    """The file's text -> CredentialStore (pure; the mode check is :func:`load_store`'s)."""
    where = str(source) if source else "credentials"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message names line and column, never the value
        raise CredentialsError(f"{where}: not valid TOML: {exc}") from None

    def table(name: str) -> dict[str, Secret]:
        section = data.get(name, {})
        if not isinstance(section, dict):
            raise CredentialsError(f"{where}: [{name}] must be a table")
        out = {}
        for key, entry in section.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("password"), str):
                raise CredentialsError(f'{where}: [{name}.{key}] needs password = "..."')
            out[str(key)] = Secret(entry["password"])
        return out

    default = data.get("default")
    if default is not None and not (
        isinstance(default, dict) and isinstance(default.get("password"), str)
    ):
        raise CredentialsError(f'{where}: [default] needs password = "..."')
    unknown = sorted(set(data) - {"nodes", "bmcs", "default"})
    if unknown:
        raise CredentialsError(f"{where}: unknown table(s) {', '.join(unknown)}")
    return CredentialStore(
        source=source,
        by_node=table("nodes"),
        by_host=table("bmcs"),
        default=Secret(default["password"]) if default is not None else None,
    )


def candidate_files(explicit: Path | None, state_dir: Path | None) -> list[Path]:
    if explicit is not None:
        return [explicit]
    if os.environ.get(ENV_FILE):
        return [Path(os.environ[ENV_FILE])]
    files = [SYSTEM_FILE]
    if state_dir is not None:
        files.append(state_dir / STATE_FILE_NAME)
    return files


def load_store(candidates: Sequence[Path], *, required: bool = False) -> CredentialStore:
    """The first candidate file that exists, mode-checked and parsed; none: empty store."""
    for path in candidates:
        if path.exists():
            check_mode(path)
            try:
                text = path.read_text()
            except OSError as exc:
                raise CredentialsError(f"cannot read {path}: {exc.strerror}") from exc
            return parse_credentials(text, path)
    if required:
        raise CredentialsError(f"no credentials file: {', '.join(map(str, candidates))}")
    return CredentialStore()
