"""What a smoke report means for the cluster's nodes (pure): serving when every check
passed, degraded when only floors were missed (slow, but serving), failed otherwise."""

from __future__ import annotations

from provisioner.smoke.report import Report
from provisioner.states import NodeEvent

# Checks that hold a figure to a bound: missing one degrades, it does not fail.
FLOOR_CHECKS = frozenset({"ttft_s", "decode_tokens_per_s", "load_rpm", "load_p99_s"})


def verdict(report: Report) -> tuple[NodeEvent, str]:
    """The event every member gets, and its reason."""
    if report.passed:
        return NodeEvent.SMOKE_PASS, "smoke passed"
    missed = [c for c in report.failed if c.name.split("[")[0] in FLOOR_CHECKS]
    if report.failed and len(missed) == len(report.failed):
        return NodeEvent.SMOKE_DEGRADED, "below floor: " + ", ".join(c.name for c in missed)
    return NodeEvent.FAIL, "smoke failed: " + ", ".join(c.name for c in report.failed)
