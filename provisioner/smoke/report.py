"""The smoke report: checks with their value and floor, as JSON and as a table.

JSON shape (``docs/smoke.md`` explains how to read it)::

    {"cluster": "lab", "passed": true, "checks": [
        {"name": "decode_tokens_per_s", "passed": true, "value": 41.3, "floor": 10.0,
         "detail": "63 token chunks in 1.50 s"}, ...],
     "stream": {...measured figures...}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Value = float | int | str | bool | None


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    value: Value = None
    floor: Value = None  # the bound the value is held to (a minimum or a maximum)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "value": self.value,
            "floor": self.floor,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Report:
    cluster: str
    checks: tuple[Check, ...] = ()
    stream: Mapping[str, Any] = field(default_factory=dict)  # StreamStats.to_json()

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def with_checks(self, checks: Sequence[Check]) -> Report:
        """The same report with more checks (units, restarts: the cluster side's)."""
        return Report(self.cluster, (*self.checks, *checks), self.stream)

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "passed": self.passed,
            "checks": [c.to_json() for c in self.checks],
            "stream": dict(self.stream),
        }


def _fmt(v: Value, width: int = 32) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    text = str(v)
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def render_table(report: Report) -> str:
    """A fixed-width table, one row a check, then a verdict line."""
    header = ("CHECK", "OK", "VALUE", "FLOOR", "DETAIL")
    rows = [
        (c.name, "ok" if c.passed else "FAIL", _fmt(c.value), _fmt(c.floor), c.detail)
        for c in report.checks
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = [
        "  ".join([*(cell.ljust(w) for cell, w in zip(r[:4], widths, strict=True)), r[4]]).rstrip()
        for r in [header, *rows]
    ]
    verdict = "PASSED" if report.passed else f"FAILED ({len(report.failed)} check(s))"
    lines.append(f"smoke {report.cluster}: {verdict}")
    return "\n".join(lines)
