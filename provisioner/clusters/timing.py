"""What ``cluster status`` says of a cluster's health over time: its last smoke, and how
long each member's last boot took from power-on to serving.

Read off what the registry already keeps, with nothing recorded for it: smoke stores each
check as a ``smoke:<check>`` step of every member (:mod:`provisioner.clusters.smoke`),
and every boot leaves its events (power, DHCP, script, inventory, state) on the node's
timeline. The functions below are pure over those rows, so a test feeds them a real
registry's and a watchdog or a web page can use the same answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from provisioner.records import Cluster, Event, EventKind
from provisioner.smoke.report import Check, Report
from provisioner.smoke.verdict import verdict
from provisioner.states import NodeEvent, NodeState
from provisioner.timeline import powered_on

if TYPE_CHECKING:
    from provisioner.registry import Registry

SMOKE_STEP = "smoke:"  # the prefix of the steps smoke records (clusters/smoke.py)


class SmokeOutcome(StrEnum):
    """What a smoke's verdict made of the members (serving, degraded, failed), in the
    words `cluster status` prints."""

    PASSED = "passed"
    DEGRADED = "degraded"  # only floors missed: serving, slowly
    FAILED = "failed"


_OUTCOMES = {NodeEvent.SMOKE_PASS: SmokeOutcome.PASSED,
             NodeEvent.SMOKE_DEGRADED: SmokeOutcome.DEGRADED}  # fmt: skip
# Where a boot may end instead of serving (shown in place of its time).
ENDED_ELSEWHERE = frozenset({NodeState.DEGRADED, NodeState.FAILED})


@dataclass(frozen=True)
class Smoke:
    """One smoke run of a cluster as its head's steps keep it."""

    run: str
    ts: float  # when its checks were recorded
    outcome: SmokeOutcome
    reason: str  # the reason the members' state change carries ("below floor: ttft_s")
    failed: tuple[str, ...]  # the checks that did not pass

    @property
    def passed(self) -> bool:
        return self.outcome is SmokeOutcome.PASSED

    def as_dict(self) -> dict[str, object]:
        return {
            "run": self.run,
            "ts": self.ts,
            "passed": self.passed,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "failed": list(self.failed),
        }


def smoke_in(steps: Sequence[Mapping[str, object]]) -> Smoke | None:
    """The last smoke run among one node's step rows (``Registry.steps``), or None.

    The verdict is worked out again from the checks with smoke's own
    :func:`~provisioner.smoke.verdict.verdict`, not read from the node's ``state`` event:
    the registry records a state change only, so a smoke that left a serving node serving
    has no event of its own. Two runs that started in the same second share a run id;
    the later row of a check then stands for it.
    """
    rows = [r for r in steps if str(r["step"]).startswith(SMOKE_STEP)]
    if not rows:
        return None
    run = rows[-1]["run"]
    checks: dict[str, Check] = {}
    for row in rows:
        if row["run"] == run:
            name = str(row["step"]).removeprefix(SMOKE_STEP)
            checks[name] = Check(name, row["status"] == "ok")
    event, reason = verdict(Report(str(run), tuple(checks.values())))
    return Smoke(
        run=str(run),
        ts=max(float(str(r["ts"])) for r in rows if r["run"] == run),
        outcome=_OUTCOMES.get(event, SmokeOutcome.FAILED),
        reason=reason,
        failed=tuple(c.name for c in checks.values() if not c.passed),
    )


def last_smoke(registry: Registry, cluster: Cluster) -> Smoke | None:
    """The cluster's last smoke, from its head's steps (every member gets the same rows);
    None before the first, or when the head is not in the registry."""
    head = registry.node(cluster.head)
    return smoke_in(registry.steps(head.mac)) if head else None


@dataclass(frozen=True)
class BootTiming:
    """A node's last boot: when it began and how long it took to serve."""

    start: float  # the boot's first event: power-on, DHCP request or boot script
    seconds: float | None  # from start to the first `serving` after it; None: not yet
    ended: NodeState | None = None  # degraded or failed: where it stopped instead

    def as_dict(self) -> dict[str, object]:
        return {
            "start": self.start,
            "seconds": self.seconds,
            "ended": self.ended.value if self.ended else None,
        }


def starts_boot(e: Event) -> bool:
    """Only a booting machine makes these: a power-on, a PXE/iPXE DHCP request (the
    DHCP server records no other client), a boot script fetched."""
    return powered_on(e) or e.kind in (EventKind.DHCP, EventKind.SCRIPT)


def _reports(events: Sequence[Event]) -> list[int]:
    """Where the node's agent reported (a report held for `node approve` is stored again,
    and counted then, when it is approved)."""
    return [
        i
        for i, e in enumerate(events)
        if e.kind is EventKind.INVENTORY and not e.detail.get("held")
    ]


def boot_to_serving(events: Sequence[Event]) -> BootTiming | None:
    """The node's last boot, from its timeline (``Registry.events``, oldest first).

    A boot ends with its agent's report (an ``inventory`` event). The last boot begins at
    the first power-on, DHCP request or script after the report before the last one (the
    first in the timeline if there is one report): the report only says the node is up,
    while post-install and smoke still follow over SSH, so the boot is timed to the first
    ``serving`` state after its start. A node that is booting again now (a boot event
    after its last report) is timed from that boot, not yet serving. None when the
    timeline shows no boot at all.
    """
    reports = _reports(events)
    after = -1
    if reports:
        booting_again = any(starts_boot(e) for e in events[reports[-1] + 1 :])
        anchors = reports if booting_again else reports[:-1]
        after = anchors[-1] if anchors else -1
    begin = next((i for i in range(after + 1, len(events)) if starts_boot(events[i])), None)
    if begin is None:
        return None
    start = events[begin].ts
    ended: NodeState | None = None
    for e in events[begin + 1 :]:
        if e.kind is not EventKind.STATE:
            continue
        to = str(e.detail.get("to"))
        if to == NodeState.SERVING:
            return BootTiming(start, e.ts - start)
        ended = NodeState(to) if to in ENDED_ELSEWHERE else None
    return BootTiming(start, None, ended)
