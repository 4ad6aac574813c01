"""Typed access to a parsed image recipe (TOML) that names the file and key in every error.

Shared by the recipe parsers of :mod:`provisioner.image.discovery` and
:mod:`provisioner.image.rootfs`; each adds the readers only it needs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from provisioner.image import RecipeError


class RecipeReader:
    def __init__(
        self, source: Path, data: dict[str, object], keys: Mapping[str, frozenset[str]]
    ) -> None:
        self.source = source
        self.data = data
        self.keys = keys  # table -> the keys it may hold

    def fail(self, key: str, reason: str) -> RecipeError:
        return RecipeError(self.source, key, reason)

    def table(self, key: str) -> dict[str, object]:
        value = self.data.get(key)
        if not isinstance(value, dict):
            raise self.fail(key, "missing table" if value is None else "must be a table")
        unknown = sorted(set(value) - self.keys[key])
        if unknown:
            raise self.fail(f"{key}.{unknown[0]}", "unknown key")
        return value

    def string(
        self, table: str, key: str, pattern: re.Pattern[str] | None = None, default: str = ""
    ) -> str:
        value = self.table(table).get(key) if table else self.data.get(key)
        where = f"{table}.{key}" if table else key
        if value is None and default:
            return default
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, "missing" if value is None else "must be a non-empty string")
        if pattern is not None and not pattern.match(value):
            raise self.fail(where, f"{value!r} does not match {pattern.pattern}")
        return value
