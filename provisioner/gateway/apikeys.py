"""The gateway's API keys (pure): made, named, scoped and checked here; kept by
:mod:`provisioner.gateway.source`.

A key reads ``pvk-<id>-<secret>``: the id finds its record, the whole key's SHA-256 is
what the registry keeps (a 192-bit random secret needs no slow hash: nothing to guess).
It is shown once, by ``provisioner gateway key add``; lost, it is removed and made anew.
A key may be limited to some served names (``--models``: 403 for others) and to a number
of requests a minute (``--rpm``: 429 past it, :mod:`.ratelimit`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

PREFIX = "pvk"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class ApiKey:
    name: str
    id: str
    hash: str  # SHA-256 of the whole key, hex
    models: tuple[str, ...] | None = None  # None: every served name
    rpm: int | None = None  # requests a minute (None: no limit)
    created: float = 0.0

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name, "id": self.id, "models": list(self.models) if self.models else None,
            "rpm": self.rpm, "created": self.created,
        }  # fmt: skip


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(
            f"key name {name!r}: lower-case letters, digits, '.', '_' and '-', up to 63"
        )
    return name


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def make(
    name: str, models: tuple[str, ...] | None = None, rpm: int | None = None, now: float = 0.0
) -> tuple[ApiKey, str]:
    """A new key: its record and the key itself (to show once)."""
    check_name(name)
    if rpm is not None and rpm < 1:
        raise ValueError(f"--rpm {rpm}: at least 1 request a minute")
    key_id = secrets.token_hex(4)
    token = f"{PREFIX}-{key_id}-{secrets.token_urlsafe(24)}"
    return ApiKey(name, key_id, digest(token), models or None, rpm, now), token


def key_id(token: str) -> str | None:
    prefix, _, rest = token.partition("-")
    found, _, secret = rest.partition("-")
    if prefix != PREFIX or not found or not secret:
        return None
    return found


def verify(keys: Mapping[str, ApiKey], token: str | None) -> ApiKey | None:
    """The key record ``token`` is (by id, then its hash in constant time), or None."""
    if not token:
        return None
    found = keys.get(key_id(token) or "")
    if found is None or not hmac.compare_digest(found.hash, digest(token)):
        return None
    return found
