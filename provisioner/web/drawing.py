"""What the dashboard's pages draw, as numbers: a node's boot timeline and a cluster's
smoke history. Pure: registry rows in, bars and points out; the templates only place them
in an SVG, so nothing here needs a browser (or a charting library) to test.

A node's timeline is its **last boot**: from the boot's start (a power-on, else its first
DHCP request; :class:`~provisioner.timeline.BootClock` decides) each boot step is a bar
from the step before it to the moment it was reached, so a bar's length is that step's
duration; post-install and smoke steps recorded since then are bars of their own
(``seconds`` long, ending when recorded). Failures are red: a failed step, a refusal, a
failed root check or power operation, a move to ``failed``.

A cluster's smoke history: each smoke run's time to first token and decode tokens/s
(the values its head's ``smoke:ttft_s`` and ``smoke:decode_tokens_per_s`` steps keep),
oldest first, scaled to a chart's box.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from provisioner.records import Event
from provisioner.timeline import BootClock
from provisioner.web.board import event_label

TTFT_STEP = "smoke:ttft_s"
TPS_STEP = "smoke:decode_tokens_per_s"


@dataclass(frozen=True)
class Bar:
    label: str
    start: float  # seconds after the boot's start
    seconds: float
    failed: bool
    detail: str = ""
    x: float = 0.0  # percent of the drawing's width
    width: float = 0.0


@dataclass(frozen=True)
class Timeline:
    start: float  # the boot's start (epoch seconds); 0 when the node never booted
    span: float  # seconds from the start to the last bar's end
    bars: tuple[Bar, ...]


def boot_start(events: Sequence[Event]) -> float | None:
    """When the node's last boot began, as BootClock times it (None: no boot on record)."""
    clock = BootClock()
    start = None
    for e in events:
        reached = clock.feed(e)
        if reached is not None:
            start = e.ts - reached[1]
    return start


def timeline(events: Sequence[Event], steps: Sequence[Mapping[str, object]]) -> Timeline:
    """The node's last boot as bars (see the module)."""
    start = boot_start(events)
    if start is None:
        start = min((e.ts for e in events), default=0.0)
    bars: list[Bar] = []
    clock = BootClock()
    before = 0.0
    for e in events:
        reached = clock.feed(e)
        if e.ts < start:
            continue
        if reached is not None:
            step, at = reached
            bars.append(Bar(step, before, max(at - before, 0.0), False))
            before = at
            continue
        label, failed = event_label(e.kind.value, e.detail)
        if failed:
            reason = str(e.detail.get("reason") or e.detail.get("error") or "")
            bars.append(Bar(label, e.ts - start, 0.0, True, reason))
    smokes: dict[str, list[Mapping[str, object]]] = {}
    for row in steps:
        ts = float(str(row["ts"]))
        if ts < start:
            continue
        if str(row["step"]).startswith("smoke:"):  # one bar per smoke run, not per check
            smokes.setdefault(str(row["run"]), []).append(row)
            continue
        seconds = float(str(row.get("seconds") or 0.0))
        status = str(row["status"])
        bars.append(Bar(f"{row['step']}", max(ts - seconds - start, 0.0), seconds,
                        status == "failed", status))  # fmt: skip
    for rows in smokes.values():
        bad = [str(r["step"]).removeprefix("smoke:") for r in rows if r["status"] == "failed"]
        ts = max(float(str(r["ts"])) for r in rows)
        detail = "failed: " + ", ".join(bad) if bad else "passed"
        bars.append(Bar("smoke", ts - start, 0.0, bool(bad), detail))
    span = max((b.start + b.seconds for b in bars), default=0.0)
    return Timeline(start, span, tuple(_placed(bars, span)))


def _placed(bars: list[Bar], span: float) -> list[Bar]:
    """Each bar's x and width in percent; a zero-length bar (a moment) stays visible."""
    if span <= 0:
        return [Bar(b.label, b.start, b.seconds, b.failed, b.detail, 0.0, 0.5) for b in bars]
    out = []
    for b in sorted(bars, key=lambda b: (b.start, b.start + b.seconds)):
        x = min(100.0 * b.start / span, 99.5)
        width = min(max(100.0 * b.seconds / span, 0.5), 100.0 - x)
        out.append(
            Bar(b.label, b.start, b.seconds, b.failed, b.detail, round(x, 2), round(width, 2))
        )
    return out


@dataclass(frozen=True)
class SmokePoint:
    run: str
    ts: float
    ttft_s: float | None
    tokens_per_s: float | None
    passed: bool


def smoke_history(steps: Sequence[Mapping[str, object]], *, limit: int = 50) -> list[SmokePoint]:
    """Each smoke run's TTFT and tokens/s from the head's step rows, oldest first."""
    runs: dict[str, dict[str, object]] = {}
    for row in steps:
        step = str(row["step"])
        if not step.startswith("smoke:"):
            continue
        run = runs.setdefault(str(row["run"]), {"ts": 0.0, "passed": True})
        run["ts"] = max(float(str(run["ts"])), float(str(row["ts"])))
        run["passed"] = bool(run["passed"]) and row["status"] == "ok"
        if step in (TTFT_STEP, TPS_STEP):
            run[step] = _value(row.get("output"))
    points = [
        SmokePoint(
            name,
            float(str(r["ts"])),
            _num(r.get(TTFT_STEP)),
            _num(r.get(TPS_STEP)),
            bool(r["passed"]),
        )
        for name, r in runs.items()
    ]
    points.sort(key=lambda p: p.ts)
    return points[-limit:]


def _value(output: object) -> float | None:
    try:
        value = json.loads(str(output)).get("value")
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _num(v: object) -> float | None:
    return v if isinstance(v, float) else None


@dataclass(frozen=True)
class Series:
    """One line of a chart: SVG ``points`` in a ``width`` x ``height`` box, and its range."""

    points: str
    low: float
    high: float
    dots: tuple[tuple[float, float, float], ...]  # (x, y, value) for each measured run


def series(values: Sequence[float | None], width: float, height: float, pad: float = 6.0) -> Series:
    """Values (None: not measured in that run) scaled into the box; x is the run's index."""
    known = [v for v in values if v is not None]
    if not known:
        return Series("", 0.0, 0.0, ())
    low, high = min(known), max(known)
    if high == low:
        low, high = low * 0.9, high * 1.1 if high else 1.0
    step = (width - 2 * pad) / max(len(values) - 1, 1)
    dots = []
    for i, v in enumerate(values):
        if v is None:
            continue
        x = pad + i * step if len(values) > 1 else width / 2
        y = height - pad - (v - low) / (high - low) * (height - 2 * pad)
        dots.append((round(x, 1), round(y, 1), v))
    return Series(" ".join(f"{x},{y}" for x, y, _ in dots), low, high, tuple(dots))
