"""The real hardware dumps in ../shared/fixtures/hw (beside the clone, not in it).

The one rule for tests that read them: mark them :data:`needs_hw` (a whole test, or each
``pytest.param`` from :func:`hw_params`). When the folder is missing, tests/conftest.py
skips them with the path as the reason, and under ``CI=true`` stops the run at collection
with an error naming the path: CI must not pass by skipping them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HW = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "hw"
LABELS = HW / "labels.tsv"  # file, format, accelerators: one row per dump

MARKER = "hw_fixtures"
needs_hw = getattr(pytest.mark, MARKER)


def present() -> bool:
    return LABELS.is_file()


def missing() -> str:
    return f"hardware fixtures not found: {LABELS} is missing (shared/fixtures/hw beside the clone)"


def hw_params(*suffixes: str) -> list[object]:
    """The dumps with these suffixes as ``needs_hw`` params, sorted; when the folder is
    missing, one placeholder param (``hw``), so the rule above still sees a test."""
    if not present():
        return [pytest.param(HW, marks=needs_hw)]
    return [pytest.param(p, marks=needs_hw) for p in sorted(HW.iterdir()) if p.suffix in suffixes]
