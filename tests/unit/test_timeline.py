"""timeline.py: the steps a timeline shows, and BootClock's seconds from a boot's start."""

from __future__ import annotations

from pathlib import Path

from provisioner.records import Detail, Event, EventKind
from provisioner.registry import Registry
from provisioner.timeline import (
    POWER_ON_WINDOW,
    TIMED_STEPS,
    BootClock,
    PowerOns,
    powered_on,
    steps_reached,
)

MAC = "52:54:00:00:00:01"
K = EventKind


def ev(ts: float, kind: EventKind, detail: Detail | None = None, mac: str = MAC) -> Event:
    return Event(mac, ts, kind, detail or {})


def discover(ts: float, client: str = "pxe-bios", mac: str = MAC) -> Event:
    return ev(ts, K.DHCP, {"msg": "discover", "client": client}, mac)


def discovery_boot(t: float) -> list[Event]:
    """A whole discovery boot from its first DISCOVER at ``t``."""
    return [
        discover(t),
        ev(t + 0.5, K.DHCP_REPLY, {"msg": "offer"}),
        ev(t + 3, K.TFTP, {"ok": True}),
        discover(t + 4, client="ipxe"),
        ev(t + 4.5, K.DHCP_REPLY, {"msg": "offer"}),
        ev(t + 5, K.SCRIPT, {"boot": "discovery"}),
        ev(t + 8, K.HTTP_FILE, {"file": "discovery@1/vmlinuz"}),
        ev(t + 12, K.HTTP_FILE, {"file": "discovery@1/initrd"}),
        ev(t + 40, K.INVENTORY, {"bytes": 1000}),
        ev(t + 41, K.PROFILE, {"profile": "qemu"}),
    ]


def timed(clock: BootClock, events: list[Event]) -> list[tuple[str, float]]:
    return [r for r in map(clock.feed, events) if r is not None]


DISCOVERY_TIMES = [
    ("dhcp", 0.5),
    ("tftp", 3.0),
    ("ipxe", 4.0),
    ("script", 5.0),
    ("kernel", 8.0),
    ("initrd", 12.0),
    ("inventory", 40.0),
    ("profile", 41.0),
]


def test_steps_reached_is_unchanged_by_the_refactor() -> None:
    events = [ev(0, K.POWER, {"op": "cycle", "ok": True}), *discovery_boot(10)]
    assert steps_reached(events) == ["powered", *(s for s, _ in DISCOVERY_TIMES)]
    image = [ev(60, K.SCRIPT, {"boot": "image"}), ev(70, K.INVENTORY, {})]
    assert steps_reached(image)[-1] == "ready"


def test_power_off_or_a_failed_cycle_is_no_power_on() -> None:
    assert powered_on(ev(0, K.POWER, {"op": "cycle", "ok": True}))
    assert powered_on(ev(0, K.POWER, {"op": "on"}))
    assert powered_on(ev(0, K.POWER, {"ok": True}))  # events from before "op" was kept
    assert not powered_on(ev(0, K.POWER, {"op": "off", "ok": True}))
    assert not powered_on(ev(0, K.POWER, {"op": "cycle", "ok": False}))
    assert not powered_on(ev(0, K.POWER, {"op": "status", "ok": True}))


def test_without_a_power_on_a_boot_starts_at_its_first_discover() -> None:
    assert timed(BootClock(), discovery_boot(1000)) == DISCOVERY_TIMES


def test_a_retried_discover_keeps_the_boot_start() -> None:
    events = [discover(1000), discover(1004), ev(1005, K.DHCP_REPLY, {})]
    assert timed(BootClock(), events) == [("dhcp", 5.0)]


def test_a_power_on_fed_here_starts_the_boot() -> None:
    events = [ev(900, K.POWER, {"op": "cycle", "ok": True}), *discovery_boot(1000)]
    assert timed(BootClock(), events) == [(s, t + 100) for s, t in DISCOVERY_TIMES]


def test_a_power_on_recorded_elsewhere_is_looked_up() -> None:
    clock = BootClock(lambda mac: 940.0 if mac == MAC else None)
    assert timed(clock, discovery_boot(1000))[0] == ("dhcp", 60.5)


def test_a_stale_power_on_is_ignored() -> None:
    clock = BootClock(lambda mac: 1000.0 - POWER_ON_WINDOW - 1)
    assert timed(clock, discovery_boot(1000))[0] == ("dhcp", 0.5)


def test_a_reboot_is_a_new_boot_and_each_step_is_timed_once_per_boot() -> None:
    clock = BootClock(lambda mac: 900.0)  # the power-on before the first boot only
    first = timed(clock, discovery_boot(1000))
    assert first[0] == ("dhcp", 100.5)
    assert timed(clock, [ev(1100, K.HTTP_FILE, {"file": "discovery@1/vmlinuz"})]) == []
    second = [
        discover(2000),
        ev(2001, K.DHCP_REPLY, {}),
        discover(2002, client="ipxe"),
        ev(2003, K.SCRIPT, {"boot": "image"}),
        ev(2010, K.HTTP_FILE, {"file": "rocky@2/root.squashfs"}),
        ev(2030, K.KEYS, {}),
        ev(2031, K.INVENTORY, {}),
    ]
    assert timed(clock, second) == [
        ("dhcp", 1.0),
        ("ipxe", 2.0),
        ("image", 3.0),
        ("root", 10.0),
        ("keys", 30.0),
        ("ready", 31.0),
    ]


def test_an_ipxe_flashed_nic_starts_its_boots_with_ipxe_discovers() -> None:
    clock = BootClock()
    boot = [discover(0, "ipxe"), ev(1, K.DHCP_REPLY, {}), ev(2, K.SCRIPT, {})]
    assert timed(clock, boot) == [("ipxe", 0.0), ("dhcp", 1.0), ("script", 2.0)]
    again = [discover(500, "ipxe"), ev(502, K.DHCP_REPLY, {})]
    assert timed(clock, again) == [("ipxe", 0.0), ("dhcp", 2.0)]


def test_steps_of_a_boot_whose_start_was_not_seen_are_not_timed() -> None:
    events = [ev(5, K.SCRIPT, {}), ev(6, K.HTTP_FILE, {"file": "d@1/vmlinuz"})]
    assert timed(BootClock(), events) == []


def test_nodes_are_followed_separately_and_the_oldest_forgotten() -> None:
    clock = BootClock(max_boots=2)
    for i, mac in enumerate(("02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03")):
        clock.feed(discover(100 * i, mac=mac))
    assert clock.feed(ev(210, K.DHCP_REPLY, {}, "02:00:00:00:00:03")) == ("dhcp", 10.0)
    assert clock.feed(ev(110, K.DHCP_REPLY, {}, "02:00:00:00:00:02")) == ("dhcp", 10.0)
    assert clock.feed(ev(10, K.DHCP_REPLY, {}, "02:00:00:00:00:01")) is None  # forgotten


def test_every_step_but_the_start_is_timed() -> None:
    assert TIMED_STEPS[0] == "dhcp" and "powered" not in TIMED_STEPS


def test_power_ons_reads_a_node_once_then_only_the_new_power_events(tmp_path: Path) -> None:
    """serve's BootClock learns a power-on that another process (enroll --power-cycle)
    recorded, without reading each node's events at each DISCOVER of a storm."""
    serve, other = Registry(tmp_path / "r.sqlite3"), Registry(tmp_path / "r.sqlite3")
    second = "52:54:00:00:00:02"
    for mac in (MAC, second):
        other.touch_node(mac)
    sql: list[str] = []
    per_node: list[object] = []  # the nodes whose power events were read whole

    def query(text: str, args: tuple[object, ...]) -> list[dict[str, object]]:
        sql.append(text)
        if "mac = ?" in text:
            per_node.append(args[0])
        return serve.query(text, args)

    ons = PowerOns(query)
    other.add_event(MAC, K.POWER, {"op": "on", "ok": True}, ts=900.0)
    assert ons(MAC) == 900.0  # its first lookup reads its events
    other.add_event(MAC, K.POWER, {"op": "cycle", "ok": True}, ts=950.0)
    other.add_event(MAC, K.POWER, {"op": "off", "ok": True}, ts=960.0)  # no boot
    other.add_event(MAC, K.POWER, {"op": "on", "ok": False}, ts=965.0)  # failed: no boot
    for ts in range(970, 1000):
        other.add_event(MAC, K.DHCP, {"msg": "discover"}, ts=float(ts))
    assert ons(MAC) == 950.0
    assert ons(MAC) == 950.0
    other.add_event(second, K.POWER, {"op": "on", "ok": True}, ts=990.0)
    assert ons(second) == 990.0  # a node not looked up before: read once
    other.add_event(second, K.POWER, {"op": "cycle", "ok": True}, ts=995.0)
    assert (ons(second), ons(MAC)) == (995.0, 950.0)
    assert per_node == [MAC, second]
    assert all("id > ?" in text or "mac = ?" in text for text in sql[1:])  # new ids only
    small = PowerOns(query, max_nodes=1)
    small(MAC), small(second), small(MAC)
    assert per_node[2:] == [MAC, second, MAC]  # the forgotten one is read again
    serve.close()
    other.close()
