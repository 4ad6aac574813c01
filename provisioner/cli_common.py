"""Output helpers shared by the command modules: JSON, tables, timelines."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence

from provisioner.registry import Event


def print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def print_timeline(events: list[Event]) -> None:
    if not events:
        print("  (nothing yet)")
        return
    first = prev = events[0].ts
    for e in events:
        detail = " ".join(f"{k}={v}" for k, v in e.detail.items() if v is not None)
        print(f"  t={e.ts - first:8.3f}  +{e.ts - prev:7.3f}  {e.kind.value:11} {detail}")
        prev = e.ts


def ago(ts: float) -> str:
    secs = max(0, int(time.time() - ts))
    if secs < 120:
        return f"{secs}s ago"
    if secs < 7200:
        return f"{secs // 60}m ago"
    return f"{secs // 3600}h ago"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def stamped(what: str) -> None:
    """A progress line on stderr, with the time: long work shows what it is doing."""
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)
