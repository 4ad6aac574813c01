"""The small TOML recipes of the artifact builders (images/buildroots, images/toolchains):
read with every error naming the file and the key."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provisioner.artifacts import ArtifactError

Fail = Callable[[str, str], ArtifactError]


def read(text: bytes, source: Path, keys: frozenset[str]) -> tuple[dict[str, Any], Fail]:
    """(the table, a ``fail(key, reason)`` that makes the error); unknown keys refused."""

    def fail(key: str, reason: str) -> ArtifactError:
        return ArtifactError(f"{source}: {key}: {reason}")

    try:
        raw = tomllib.loads(text.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise fail("(file)", f"not valid TOML: {exc}") from exc
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise fail(unknown[0], "unknown key")
    return raw, fail
