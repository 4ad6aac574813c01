"""A node's boot steps, read off its timeline: what `lab`, `enroll --wait` and people see.

Pure: registry events in, the steps reached (in boot order) out::

    powered   a power driver powered it on or cycled it (enroll)
    dhcp      we answered its DHCP/PXE request
    tftp      an iPXE binary went out over TFTP (not on an iPXE-flashed NIC)
    ipxe      iPXE asked for its script by DHCP
    script    its discovery script was served
    kernel    vmlinuz fetched       initrd    initrd fetched
    inventory the discovery agent reported
    profile   fingerprinting gave it a profile
    image     its image's script was served (it is enrolled)
    root      its image's root.squashfs fetched
    keys      the image fetched the control node's SSH key
    ready     the image's agent reported (after the image's script)

:class:`BootClock` times one boot: fed the events as they are recorded, it says how many
seconds after the boot's start each step was first reached (the boot-step histogram).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from provisioner.records import Event, EventKind

DISCOVERY_STEPS = ("dhcp", "tftp", "ipxe", "script", "kernel", "initrd", "inventory")
IMAGE_STEPS = ("image", "root", "keys", "ready")
STEPS = ("powered", *DISCOVERY_STEPS, "profile", *IMAGE_STEPS)
TIMED_STEPS = STEPS[1:]  # what BootClock measures: every step after the start
# Once a boot has one of these, iPXE has left DHCP: a DISCOVER after it is a new boot.
PAST_DHCP = frozenset(STEPS[STEPS.index("script") :])
POWER_ON_OPS = frozenset({"on", "cycle"})  # power events that start a boot (not off, status)
POWER_ON_WINDOW = 20 * 60  # seconds: a power-on older than this did not start this boot
MAX_BOOTS = 4096  # nodes BootClock follows at once (DHCP's MACs are anyone's to invent)


def powered_on(e: Event) -> bool:
    """A power driver turned the node on (or cycled it): a boot starts."""
    return (
        e.kind is EventKind.POWER
        and bool(e.detail.get("ok", True))
        and e.detail.get("op", "cycle") in POWER_ON_OPS
    )


def step_of(e: Event, seen: Collection[str]) -> str | None:
    """The boot step ``e`` shows, given the steps ``seen`` earlier (``ready`` is an
    inventory after ``image``); None for an event that is no step."""
    detail = e.detail
    if powered_on(e):
        return "powered"
    if e.kind is EventKind.DHCP_REPLY:
        return "dhcp"
    if e.kind is EventKind.DHCP and detail.get("client") == "ipxe":
        return "ipxe"
    if e.kind is EventKind.TFTP and detail.get("ok"):
        return "tftp"
    if e.kind is EventKind.SCRIPT:
        return "image" if detail.get("boot") == "image" else "script"
    if e.kind is EventKind.HTTP_FILE:
        name = str(detail.get("file", ""))
        if name.endswith("/vmlinuz"):
            return "kernel"
        if name.endswith("/initrd"):
            return "initrd"
        if name.endswith(".squashfs"):
            return "root"
        return None
    if e.kind is EventKind.KEYS:
        return "keys"
    if e.kind is EventKind.INVENTORY:
        return "ready" if "image" in seen else "inventory"
    if e.kind is EventKind.PROFILE and detail.get("profile"):
        return "profile"
    return None


def steps_reached(events: Iterable[Event]) -> list[str]:
    """The boot steps a node's timeline shows, in boot order (see the module docstring)."""
    seen: set[str] = set()
    for e in events:
        step = step_of(e, seen)
        if step is not None:
            seen.add(step)
    return [s for s in STEPS if s in seen]


def last_step(events: Iterable[Event]) -> str | None:
    steps = steps_reached(events)
    return steps[-1] if steps else None


@dataclass
class _Boot:
    start: float
    seen: set[str] = field(default_factory=set)


class BootClock:
    """Seconds from a boot's start to each step, the first time the boot reaches it.

    A boot starts at power-on: a ``power`` event fed here, or else the latest one that
    ``last_power_on(mac)`` finds (``enroll --power-cycle`` records it from another
    process), when it is under :data:`POWER_ON_WINDOW` old and newer than the boot
    before. Without one, the boot starts at its first DHCP DISCOVER: from the firmware
    once the last boot was answered, or from any client (an iPXE-flashed NIC) once the
    last boot got past DHCP. Steps of a boot whose start was never seen (the service
    started mid-boot) are not timed. The caller feeds events one at a time, in the
    order they are recorded; times are the events' own timestamps.
    """

    def __init__(
        self,
        last_power_on: Callable[[str], float | None] = lambda mac: None,
        *,
        max_boots: int = MAX_BOOTS,
    ):
        self.last_power_on = last_power_on
        self.max_boots = max_boots
        self._boots: OrderedDict[str, _Boot] = OrderedDict()

    def feed(self, e: Event) -> tuple[str, float] | None:
        """The step ``e`` reached and its seconds since the boot's start, or None."""
        boot = self._boots.get(e.mac)
        if powered_on(e):
            self._begin(e.mac, _Boot(e.ts, {"powered"}))
            return None
        if _starts_boot(e, boot):
            boot = self._begin(e.mac, self._start(e, boot))
        if boot is None:
            return None
        step = step_of(e, boot.seen)
        if step is None or step in boot.seen:
            return None
        boot.seen.add(step)
        return step, max(0.0, e.ts - boot.start)

    def _start(self, e: Event, before: _Boot | None) -> _Boot:
        power = self.last_power_on(e.mac)
        if (
            power is not None
            and 0 <= e.ts - power <= POWER_ON_WINDOW
            and (before is None or power > before.start)
        ):
            return _Boot(power, {"powered"})
        return _Boot(e.ts)

    def _begin(self, mac: str, boot: _Boot) -> _Boot:
        self._boots[mac] = boot
        self._boots.move_to_end(mac)
        while len(self._boots) > self.max_boots:
            self._boots.popitem(last=False)
        return boot


class PowerOns:
    """``last_power_on`` for :class:`BootClock`, read from the registry: the newest
    power-on of a node, whichever process recorded it (``enroll --power-cycle``).

    A node's last power events are read once, at its first lookup; after that, each call
    reads only the power events recorded since the call before (a range of ids, and the
    newest id to go on from). A DHCP storm starts a boot at each DISCOVER: reading each
    node's last 50 events there took a tenth of serve's time. ``query`` is the
    registry's (SQL with ``?``, rows as dicts); at most ``max_nodes`` nodes are
    remembered (the oldest is looked up again if it comes back).
    """

    def __init__(
        self,
        query: Callable[[str, tuple[object, ...]], list[dict[str, object]]],
        *,
        max_nodes: int = MAX_BOOTS * 4,
    ):
        self._query = query
        self.max_nodes = max_nodes
        self._after: int | None = None  # the newest event id read
        self._latest: OrderedDict[str, float | None] = OrderedDict()

    def __call__(self, mac: str) -> float | None:
        self._catch_up()
        if mac not in self._latest:
            rows = self._query(
                "SELECT ts, detail FROM events WHERE mac = ? AND kind = ? ORDER BY id DESC"
                " LIMIT 50",
                (mac, EventKind.POWER.value),
            )
            ons = [e.ts for e in (self._power_event(mac, r) for r in rows) if powered_on(e)]
            self._latest[mac] = max(ons, default=None)
            while len(self._latest) > self.max_nodes:
                self._latest.popitem(last=False)
        self._latest.move_to_end(mac)
        return self._latest[mac]

    def _catch_up(self) -> None:
        if self._after is None:  # from now on; what came before, each node's first lookup reads
            rows = self._query("SELECT max(id) AS id FROM events", ())
            self._after = int(str(rows[0]["id"] or 0))
            return
        rows = self._query(
            "SELECT id, mac, ts, kind, detail FROM events WHERE id > ?"
            " AND (kind = ? OR id = (SELECT max(id) FROM events)) ORDER BY id",
            (self._after, EventKind.POWER.value),
        )
        for row in rows:
            self._after = int(str(row["id"]))
            mac = str(row["mac"])
            if row["kind"] != EventKind.POWER.value or mac not in self._latest:
                continue  # not a power event, or a node whose first lookup reads it
            event = self._power_event(mac, row)
            if powered_on(event):
                self._latest[mac] = max(event.ts, self._latest[mac] or 0.0)

    @staticmethod
    def _power_event(mac: str, row: dict[str, object]) -> Event:
        return Event(mac, float(str(row["ts"])), EventKind.POWER, json.loads(str(row["detail"])))


def _starts_boot(e: Event, boot: _Boot | None) -> bool:
    """Is ``e`` the first DHCP DISCOVER of a new boot (see :class:`BootClock`)?"""
    if e.kind is not EventKind.DHCP or e.detail.get("msg") != "discover":
        return False
    if boot is None or not boot.seen.isdisjoint(PAST_DHCP):
        return True
    firmware = e.detail.get("client") != "ipxe"
    return firmware and "dhcp" in boot.seen


def ago(ts: float) -> str:
    """How long ago ``ts`` was, for people: "42s ago", "7m ago", "3h ago" (the commands'
    tables and the dashboard say it the same way)."""
    secs = max(0, int(time.time() - ts))
    if secs < 120:
        return f"{secs}s ago"
    if secs < 7200:
        return f"{secs // 60}m ago"
    return f"{secs // 3600}h ago"
