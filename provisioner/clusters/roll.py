"""Rolling image upgrades: the nodes of a profile moved to another image version one at a
time, each back (a cluster member: its cluster converged and serving, smoke passed)
before the next one goes down.

``provisioner image use IMG@N --profile P --rolling`` (and ``--rollback``)::

    plan_roll        pure: which nodes, in which order, what is refused (paused cluster,
                     a member already down, no image to roll back to)
    Roll.run         for each node: pin it to the target (the boot policy gives a pin
                     first), a failed node enrolled again, reboot it (its power driver;
                     without one, ``systemctl reboot`` over SSH), wait until it is back
                     on the target; the first that is not stops the roll
    at the end       the profile boots the target (``previous`` kept for ``--rollback``),
                     the pins are dropped

While a roll runs the profile's image is unchanged: only the pinned nodes boot the new
version, so a node that reboots by itself meanwhile (or after a roll stopped on a broken
image) boots the version it had. A stopped roll leaves its pins: ``--rollback`` then takes
the nodes it moved back to the profile's image, the same way; after a roll that ended, to
the version the profile booted before it.

Each node's timeline shows the roll: ``roll`` events with ``step`` reboot, back or failed.
Back means: its report came from the target image and, for a member of a cluster that
converges, the convergence that followed ended with the smoke passed and the node
``serving``. The serve process does the convergence (converge at boot); a roll needs it
running, as every boot does.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from provisioner.clusters.spec import ClusterError
from provisioner.errors import Refused
from provisioner.records import Cluster, Detail, Event, EventKind, Node
from provisioner.states import BOOTS_PROFILE_IMAGE, NodeEvent, NodeState

BACK_TIMEOUT_S = 900.0  # a node's boot, report, convergence and smoke (model load included)
POLL_S = 1.0


class RollRefused(ClusterError, Refused):
    """A roll that cannot start as things stand (a paused cluster, a member down, nothing
    to roll back to); nothing was changed."""


@dataclass(frozen=True)
class RollStep:
    """One node to move: its cluster and role there (None: in no cluster)."""

    node: Node
    cluster: Cluster | None = None

    @property
    def name(self) -> str:
        return self.node.hostname or self.node.mac

    @property
    def role(self) -> str | None:
        return self.cluster.role(self.name) if self.cluster else None


@dataclass(frozen=True)
class RollPlan:
    profile: str
    target: str  # name@version: what every node of the profile boots at the end
    profile_image: str | None  # what the profile is set to at the end (None: left as is)
    previous: str | None  # what the profile booted before (name@version), for --rollback
    steps: tuple[RollStep, ...]
    already: tuple[str, ...]  # nodes on the target already: left alone


def _cluster_of(clusters: Sequence[Cluster]) -> dict[str, Cluster]:
    return {member: c for c in clusters for member in c.members}


def plan_roll(
    profile: str,
    target: str,
    nodes: Sequence[Node],
    clusters: Sequence[Cluster],
    *,
    profile_image: str | None,
    previous: str | None,
) -> RollPlan:
    """The nodes of ``profile`` not on ``target`` yet, in the order a roll takes them:
    failed ones first (a roll repairs before it risks a healthy one), then those in no
    cluster, then each cluster's workers and its head last (its API is down the least).

    Refused (:class:`RollRefused`, nothing done): a cluster that is paused (nothing would
    bring its member back), or one with a member that is failed and not in this roll (a
    reboot would take a second member down)."""
    of = _cluster_of(clusters)
    mine = [
        n
        for n in nodes
        if n.profile == profile and (n.state in BOOTS_PROFILE_IMAGE or n.state is NodeState.FAILED)
    ]
    moving = [n for n in mine if n.image != target or n.state is NodeState.FAILED]
    steps = [RollStep(n, of.get(n.hostname or "")) for n in moving]
    moving_names = {s.name for s in steps}
    by_name = {n.hostname: n for n in nodes if n.hostname}
    problems = []
    for cluster in {s.cluster.name: s.cluster for s in steps if s.cluster}.values():
        if not cluster.converge:
            problems.append(
                f"cluster {cluster.name} is paused: nothing would bring its members back"
                f" (provisioner cluster resume {cluster.name})"
            )
        for member in cluster.members:
            node = by_name.get(member)
            if node is not None and node.state is NodeState.FAILED and member not in moving_names:
                problems.append(
                    f"{member} of cluster {cluster.name} is failed: rolling another member"
                    " would take a second one down"
                )
    if problems:
        raise RollRefused("; ".join(problems))

    def order(step: RollStep) -> tuple[int, str, int, str]:
        failed = 0 if step.node.state is NodeState.FAILED else 1
        cluster = step.cluster.name if step.cluster else ""
        return (failed, cluster, 1 if step.role == "head" else 0, step.name)

    return RollPlan(
        profile,
        target,
        profile_image,
        previous,
        tuple(sorted(steps, key=order)),
        tuple(sorted(n.hostname or n.mac for n in mine if n not in moving)),
    )


# ------------------------------------------------------------------ judging a node's return


@dataclass(frozen=True)
class Return:
    """What a node's timeline since its reboot says: back, failed (why), or not yet."""

    back: bool = False
    failed: str | None = None
    seen: str = "nothing yet"  # the last step seen, for a timeout's message


def judge_return(node: Node, events: Sequence[Event], target: str, converges: bool) -> Return:
    """Pure: whether ``node`` is back on ``target`` from ``events`` (its timeline since the
    reboot). ``converges``: a member of a cluster that converges at boot (it must also be
    serving after a convergence that passed)."""
    report: Event | None = None
    converged = False  # a convergence after the report ended with its smoke passed
    seen = "nothing yet"
    for e in events:
        if e.kind is EventKind.SCRIPT:
            seen = f"boot script ({e.detail.get('image') or e.detail.get('kind') or 'sent'})"
        elif e.kind is EventKind.INVENTORY:
            report, seen = e, "its report"
        elif e.kind is EventKind.STATE and e.detail.get("to") == NodeState.FAILED.value:
            return Return(failed=f"failed: {e.detail.get('why') or 'a step failed'}", seen=seen)
        elif e.kind is EventKind.CONVERGE and report is not None:
            detail = e.detail
            if not detail.get("ok"):
                why = f"{detail.get('stage') or '?'}: {detail.get('reason') or 'no reason given'}"
                return Return(failed=f"its cluster's convergence failed at {why}", seen=seen)
            seen = f"convergence {detail.get('stage')}"
            converged = detail.get("stage") == "smoke"
    if report is None:
        return Return(seen=seen)
    if node.image != target:
        return Return(failed=f"booted {node.image or 'no image'}, not {target}", seen=seen)
    if not converges:
        return Return(back=True, seen=seen)
    if not converged:
        return Return(seen=seen)
    if node.state is NodeState.SERVING:
        return Return(back=True, seen=seen)
    if node.state is NodeState.DEGRADED:
        return Return(failed="degraded: its smoke passed below a floor", seen=seen)
    return Return(seen=seen)


# ------------------------------------------------------------------ the roll itself


class Timeline(Protocol):
    """What a roll reads and writes of the registry (a :class:`Registry` is one)."""

    def node(self, key: str) -> Node | None: ...
    def events(self, mac: str, *, limit: int = 500) -> list[Event]: ...
    def add_event(
        self, mac: str, kind: EventKind, detail: Detail, *, ts: float | None = None
    ) -> None: ...
    def transition(self, mac: str, event: NodeEvent, *, reason: str | None = None) -> Node: ...
    def pin_image(self, mac: str, image: str | None) -> None: ...
    def set_profile_image(
        self, profile: str, image: str | None, *, previous: str | None = None
    ) -> None: ...


@dataclass
class NodeOutcome:
    node: str
    ok: bool
    how: str = ""  # how it was rebooted
    seconds: float = 0.0  # from the reboot to back (or to the failure)
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "node": self.node,
            "ok": self.ok,
            "how": self.how,
            "seconds": round(self.seconds, 1),
            "error": self.error,
        }


@dataclass
class RollReport:
    plan: RollPlan
    done: list[NodeOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.done) and len(self.done) == len(self.plan.steps)

    @property
    def left(self) -> list[str]:
        reached = {o.node for o in self.done}
        return [s.name for s in self.plan.steps if s.name not in reached]

    def as_dict(self) -> dict[str, object]:
        return {
            "profile": self.plan.profile,
            "image": self.plan.target,
            "ok": self.ok,
            "nodes": [o.as_dict() for o in self.done],
            "left": self.left,
            "already": list(self.plan.already),
        }


Reboot = Callable[[Node], str]  # reboots the node; says how ("power cycle (redfish)", ...)


@dataclass
class Roll:
    """Runs a :class:`RollPlan` against the registry, one node at a time. ``clock`` is
    the wall clock (the timeline's events carry ``time.time()``, and each node's are
    read from its reboot on)."""

    timeline: Timeline
    reboot: Reboot
    timeout: float = BACK_TIMEOUT_S
    progress: Callable[[str], None] = lambda line: None
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep

    def run(self, plan: RollPlan) -> RollReport:
        report = RollReport(plan)
        for step in plan.steps:
            outcome = self._one(plan, step)
            report.done.append(outcome)
            if not outcome.ok:
                self.progress(
                    f"roll stopped at {step.name}: {outcome.error}"
                    + (f"; not moved: {', '.join(report.left)}" if report.left else "")
                )
                return report
        if plan.profile_image is not None:
            self.timeline.set_profile_image(
                plan.profile, plan.profile_image, previous=plan.previous
            )
        for step in plan.steps:
            self.timeline.pin_image(step.node.mac, None)
        return report

    def _one(self, plan: RollPlan, step: RollStep) -> NodeOutcome:
        mac, name = step.node.mac, step.name
        self.timeline.pin_image(mac, plan.target)
        current = self.timeline.node(mac) or step.node
        if current.state is NodeState.FAILED:
            self.timeline.transition(mac, NodeEvent.ENROLL, reason=f"roll to {plan.target}")
        started = self.clock()
        try:
            how = self.reboot(current)
        except Exception as exc:  # its own failure, whatever it is, stops the roll
            self.timeline.pin_image(mac, None)  # not moved: it boots what it had (or the target)
            error = f"reboot failed: {exc}"
            self._event(mac, plan.target, "failed", reason=error)
            return NodeOutcome(name, False, "", 0.0, error)
        self._event(mac, plan.target, "reboot", how=how)
        self.progress(f"{name}: {how}, to {plan.target}")
        converges = step.cluster is not None and step.cluster.converge
        deadline = started + self.timeout
        verdict = Return()
        while True:
            node = self.timeline.node(mac) or current
            since = [e for e in self.timeline.events(mac) if e.ts >= started]
            verdict = judge_return(node, since, plan.target, converges)
            if verdict.back or verdict.failed or self.clock() > deadline:
                break
            self.sleep(POLL_S)
        seconds = self.clock() - started
        if verdict.back:
            self._event(mac, plan.target, "back", seconds=round(seconds, 1))
            where = f"{step.cluster.name} serving" if converges and step.cluster else "ready"
            self.progress(f"{name}: back on {plan.target} in {seconds:.1f} s ({where})")
            return NodeOutcome(name, True, how, seconds)
        error = (
            verdict.failed or f"not back within {self.timeout:.0f} s (last seen: {verdict.seen})"
        )
        self._event(mac, plan.target, "failed", reason=error)
        return NodeOutcome(name, False, how, seconds, error)

    def _event(self, mac: str, image: str, step: str, **detail: str | float) -> None:
        with contextlib.suppress(Exception):  # the timeline is a record, never the roll's stop
            self.timeline.add_event(mac, EventKind.ROLL, {"image": image, "step": step, **detail})
