"""Enrollment by power-cycle: `provisioner enroll NODE... --power-cycle [--wait]`.

::

    for each node, in parallel:
        registry: power-cycle  -> enrolling (it boots discovery, then is enrolled on a match)
        driver:   boot_next_network (where the BMC can), then cycle (on if off)
        timeline: a `power` event (ok or the one-line cause)
    --wait: follow each node's timeline (timeline.steps_reached) until it is enrolled,
        unmatched or failed; at the timeout a node still on its way goes to `failed`,
        naming the last step it reached. Its next good boot repairs it.

A power failure (bad address, wrong password, no answer) fails that node with one line
and the others go on. The manual driver (no BMC) tells the user which node to power on
and takes the node's first DHCP request after that as the confirmation.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from provisioner.config import normalize_mac
from provisioner.power import PowerError, UnsupportedOperation, open_driver
from provisioner.power.credentials import CredentialStore
from provisioner.power.manual import WatchConfirmer
from provisioner.power.run import one_line
from provisioner.power.settings import DriverKind, parse_power_url
from provisioner.records import EventKind, Node
from provisioner.registry import Registry
from provisioner.states import NodeEvent, NodeState
from provisioner.timeline import steps_reached

Progress = Callable[[str], None]
POLL_SECONDS = 0.5


@dataclass
class Enrollment:
    """One node's way through `enroll`."""

    key: str  # what the user typed
    node: Node | None = None
    started: float = 0.0  # registry time of the power-cycle
    steps: list[str] = field(default_factory=list)
    outcome: str = "pending"  # pending | enrolled | unmatched | failed
    error: str | None = None
    profile: str | None = None
    seconds: float | None = None

    @property
    def name(self) -> str:
        if self.node is None:
            return self.key
        return self.node.hostname or self.node.mac

    def as_dict(self) -> dict[str, object]:
        return {
            "node": self.name,
            "mac": self.node.mac if self.node else None,
            "outcome": self.outcome,
            "profile": self.profile,
            "steps": self.steps,
            "last_step": self.steps[-1] if self.steps else None,
            "error": self.error,
            "seconds": round(self.seconds, 1) if self.seconds is not None else None,
        }


def _power_cycle(
    registry: Registry,
    item: Enrollment,
    store: CredentialStore | None,
    power_timeout: float,
    announce: Progress,
) -> None:
    """Boot-next-network (where supported) and cycle one node; records a `power` event."""
    node = item.node
    assert node is not None
    url = registry.power(node.mac)
    try:
        if url is None:
            raise PowerError(
                f"no power settings: provisioner node add {item.name} --mac {node.mac} "
                "--power URL (or power it on by hand and enroll without --power-cycle)"
            )
        settings = parse_power_url(url)
        confirm = None
        if settings.driver is DriverKind.MANUAL:
            confirm = WatchConfirmer(
                lambda: _dhcp_since(registry, node.mac, item.started), announce
            )
        driver = open_driver(
            settings,
            node=item.name,
            credentials=store,
            timeout=power_timeout,
            confirm=confirm,
            firmware=node.firmware,  # the one-time network boot's mode (UEFI or legacy)
        )
        if settings.driver is not DriverKind.MANUAL:  # manual: one instruction, not two
            # WoL cannot: the board's boot order must have the network first.
            with contextlib.suppress(UnsupportedOperation):
                driver.boot_next_network()
        driver.cycle()
        registry.add_event(node.mac, EventKind.POWER, {"op": "cycle", "ok": True})
    except Exception as exc:  # one node's failure, whatever it is, is its own line
        item.error = one_line(exc)
        registry.add_event(
            node.mac, EventKind.POWER, {"op": "cycle", "ok": False, "error": item.error}
        )
        registry.transition(node.mac, NodeEvent.FAIL, reason=f"power-cycle failed: {item.error}")
        item.outcome = "failed"


def _dhcp_since(registry: Registry, mac: str, since: float) -> bool:
    return any(
        e.kind in (EventKind.DHCP, EventKind.DHCP_REPLY) and e.ts >= since
        for e in registry.events(mac)
    )


def start(
    registry: Registry,
    keys: list[str],
    *,
    store: CredentialStore | None = None,
    power_timeout: float,
    progress: Progress,
    power_cycle: bool = True,
) -> list[Enrollment]:
    """Resolve the nodes, put them in `enrolling` and power-cycle them (in parallel).

    ``store``: the BMC passwords, read once for all the nodes; None: a driver that needs
    a password looks in the usual places (:func:`provisioner.power.open_driver`).
    """
    items = [Enrollment(key) for key in dict.fromkeys(keys)]
    for item in items:
        item.node = registry.node(normalize_mac(item.key) or item.key)
        if item.node is None:
            item.outcome, item.error = "failed", f"no node {item.key} in the registry"
            continue
        item.started = time.time()
        registry.transition(item.node.mac, NodeEvent.POWER_CYCLE, reason="enroll")
    if not power_cycle:
        for item in items:
            if item.node is not None:
                progress(f"{item.name}: enrolling: power it on (network boot) to go on")
        return items
    threads = [
        threading.Thread(
            target=_power_cycle,
            args=(registry, item, store, power_timeout, progress),
            name=f"enroll-{item.name}",
            daemon=True,
        )
        for item in items
        if item.outcome == "pending"
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(power_timeout + 5)
    for item in items:
        if item.outcome == "failed":
            progress(f"{item.name}: failed: {item.error}")
        elif item.node is not None:
            progress(f"{item.name}: powered (cycle sent)")
    return items


def follow(
    registry: Registry,
    items: list[Enrollment],
    *,
    timeout: float,
    progress: Progress,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Enrollment]:
    """Show each node's steps as they come, until enrolled/unmatched/failed or timeout."""
    began = clock()
    while True:
        pending = [i for i in items if i.outcome == "pending" and i.node is not None]
        for item in pending:
            assert item.node is not None
            events = [e for e in registry.events(item.node.mac) if e.ts >= item.started]
            for step in steps_reached(events):
                if step not in item.steps:
                    item.steps.append(step)
                    progress(f"{item.name:10} {step}")
            node = registry.node(item.node.mac)
            if node is None:
                item.outcome, item.error = "failed", "forgotten while enrolling"
                continue
            item.profile = node.profile
            if node.state is NodeState.ENROLLED:
                item.outcome, item.seconds = "enrolled", clock() - began
                progress(f"{item.name:10} enrolled ({node.profile}) in {item.seconds:.0f} s")
            elif node.state is NodeState.UNMATCHED:
                item.outcome, item.seconds = "unmatched", clock() - began
                item.error = "its inventory matches no profile (provisioner profile match)"
                progress(f"{item.name:10} unmatched: {item.error}")
            elif node.state is NodeState.FAILED:
                item.outcome = "failed"
                item.error = item.error or "failed while enrolling (see node show)"
        if not [i for i in items if i.outcome == "pending" and i.node is not None]:
            return items
        if clock() - began > timeout:
            for item in items:
                if item.outcome != "pending" or item.node is None:
                    continue
                last = item.steps[-1] if item.steps else "none"
                item.outcome = "failed"
                item.error = f"not enrolled in {timeout:.0f} s; last step seen: {last}"
                current = registry.node(item.node.mac)
                if current is not None and current.state is NodeState.ENROLLING:
                    registry.transition(item.node.mac, NodeEvent.FAIL, reason=item.error)
                progress(f"{item.name:10} failed: {item.error}")
            return items
        sleep(POLL_SECONDS)


# ------------------------------------------------------------ a node nobody knows yet


def next_unknown(
    registry: Registry,
    since: float,
    *,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Node | None:
    """The first node never seen before ``since`` (registry time) that boots, or None."""
    deadline = clock() + timeout
    while True:
        fresh = [
            n
            for n in registry.nodes()
            if n.first_seen >= since and n.state is NodeState.NEW and n.hostname is None
        ]
        if fresh:
            return min(fresh, key=lambda n: n.first_seen)
        if clock() >= deadline:
            return None
        sleep(POLL_SECONDS)


def adopt(registry: Registry, node: Node, name: str, power_url: str | None) -> Enrollment:
    """Name the node that booted, keep its power URL, and put it in `enrolling`."""
    registry.set_hostname(node.mac, name)
    if power_url:
        registry.set_power(node.mac, power_url)
    item = Enrollment(name, registry.node(node.mac), started=node.first_seen)
    registry.transition(node.mac, NodeEvent.POWER_CYCLE, reason="enroll --new")
    return item
