"""Typed reads out of a parsed provisioner.toml, each failure a ConfigError naming the key,
the value and the reason; and the refusal of any key no reader asked for (a typo, a stale
name). Pure: the parsed document in, values out. :mod:`provisioner.config` uses it.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from ipaddress import IPv4Address

from provisioner.errors import ConfigError


class ConfigReader:
    """Reads typed values out of the parsed TOML, raising ConfigError on the first bad one."""

    def __init__(self, doc: Mapping[str, object], source: str | None):
        self.doc = doc
        self.source = source
        self.read: set[tuple[str, str]] = set()  # every (table, key) asked for

    def refuse_unknown(self) -> None:
        """A key (or table) no reader asked for is a typo or a stale name: refused with the
        nearest known name (``cluster.profiles_dir`` -> ``cluster.profiles``), never ignored
        (an ignored key silently leaves its default in force)."""
        tables = {table for table, _ in self.read}
        for table, value in self.doc.items():
            if table not in tables:
                near = difflib.get_close_matches(table, sorted(tables), n=1)
                hint = f" (did you mean [{near[0]}]?)" if near else ""
                raise self.fail(table, "(table)", f"unknown table{hint}")
            if not isinstance(value, Mapping):
                continue  # table() already refused it when it was read
            known = sorted(key for t, key in self.read if t == table)
            for key in value:
                if (table, key) not in self.read:
                    near = difflib.get_close_matches(key, known, n=1)
                    hint = f" (did you mean {table}.{near[0]}?)" if near else ""
                    raise self.fail(f"{table}.{key}", value[key], f"unknown key{hint}")

    def fail(self, key: str, value: object, reason: str) -> ConfigError:
        return ConfigError(key, value, reason, source=self.source)

    def table(self, name: str) -> Mapping[str, object]:
        value = self.doc.get(name, {})
        if not isinstance(value, Mapping):
            raise self.fail(name, value, "must be a table")
        return value

    def get(self, section: str, key: str, default: object) -> object:
        self.read.add((section, key))
        return self.table(section).get(key, default)

    def text(self, section: str, key: str, default: str | None) -> str | None:
        value = self.get(section, key, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(f"{section}.{key}", value, "must be a string")
        return value

    def flag(self, section: str, key: str, default: bool) -> bool:
        value = self.get(section, key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{section}.{key}", value, "must be true or false")
        return value

    def number(
        self,
        section: str,
        key: str,
        default: float,
        lo: float,
        hi: float,
        why: str,
        *,
        whole: bool = True,
    ) -> float:
        """A number in [lo, hi] (an integer unless ``whole`` is false; never a boolean),
        else ConfigError with ``why``."""
        value = self.get(section, key, default)
        kinds = int if whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not lo <= value <= hi:
            raise self.fail(f"{section}.{key}", value, why)
        return value

    def port(self, section: str, key: str, default: int) -> int:
        return int(self.number(section, key, default, 1, 65535, "must be a port number 1-65535"))

    def ip(self, section: str, key: str) -> IPv4Address | None:
        value = self.text(section, key, None)
        if not value:
            return None
        try:
            return IPv4Address(value)
        except ValueError as exc:
            raise self.fail(f"{section}.{key}", value, "not an IPv4 address") from exc
