"""`enroll --wait`'s follow loop on a real registry (no power: see tests/e2e/test_lab.py)."""

from __future__ import annotations

from pathlib import Path

from provisioner.enroll.power_cycle import Enrollment, follow, start
from provisioner.power.credentials import CredentialStore
from provisioner.records import EventKind
from provisioner.registry import Registry
from provisioner.states import NodeEvent, NodeState

GOOD, SLOW = "52:54:00:00:00:01", "52:54:00:00:00:02"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_follow_reports_steps_enrolls_and_fails_the_late_one_naming_its_last_step(
    tmp_path: Path,
) -> None:
    registry = Registry(tmp_path / "r.sqlite3")
    for mac, name in ((GOOD, "node0"), (SLOW, "node1")):
        registry.touch_node(mac)
        registry.set_hostname(mac, name)
    lines: list[str] = []
    items = start(
        registry,
        ["node0", "node1", "nosuch"],
        store=CredentialStore(),
        power_timeout=1,
        progress=lines.append,
        power_cycle=False,  # the user powers them on
    )
    assert [i.outcome for i in items] == ["pending", "pending", "failed"]
    assert registry.node(GOOD).state is NodeState.ENROLLING  # type: ignore[union-attr]
    assert "node0: enrolling: power it on" in lines[0]

    # node0 boots, reports and is matched (what serve does); node1 only gets DHCP.
    registry.add_event(GOOD, EventKind.DHCP_REPLY, {})
    registry.add_event(GOOD, EventKind.SCRIPT, {"boot": "discovery"})
    registry.store_inventory(GOOD, "{}")
    registry.add_event(GOOD, EventKind.PROFILE, {"profile": "qemu-lab"})
    registry.set_profile(GOOD, "qemu-lab")
    registry.transition(GOOD, NodeEvent.MATCH)
    registry.add_event(SLOW, EventKind.DHCP_REPLY, {})

    clock = Clock()
    done = follow(
        registry, items, timeout=30, progress=lines.append, clock=clock, sleep=clock.sleep
    )
    by_name = {i.name: i for i in done}
    assert by_name["node0"].outcome == "enrolled" and by_name["node0"].profile == "qemu-lab"
    assert by_name["node0"].steps == ["dhcp", "script", "inventory", "profile"]
    assert by_name["node1"].outcome == "failed"
    assert by_name["node1"].error == "not enrolled in 30 s; last step seen: dhcp"
    slow = registry.node(SLOW)
    assert slow is not None and slow.state is NodeState.FAILED
    why = [e.detail.get("why") for e in registry.events(SLOW) if e.kind is EventKind.STATE]
    assert why[-1] == "not enrolled in 30 s; last step seen: dhcp"
    assert any("node1" in line and "failed" in line for line in lines)
    assert Enrollment("x").as_dict()["outcome"] == "pending"

    # Its next good boot repairs it.
    registry.store_inventory(SLOW, "{}")
    assert registry.node(SLOW).state is NodeState.DISCOVERED  # type: ignore[union-attr]


def test_the_next_unknown_node_that_boots_is_taken_named_and_enrolling(tmp_path: Path) -> None:
    from provisioner.enroll.power_cycle import adopt, next_unknown

    registry = Registry(tmp_path / "r.sqlite3")
    registry.touch_node(GOOD, now=100.0)  # known before: not a candidate
    clock = Clock()
    assert next_unknown(registry, 150.0, timeout=3, clock=clock, sleep=clock.sleep) is None
    registry.touch_node(SLOW, now=200.0)  # its first DHCP request after the power-on
    found = next_unknown(registry, 150.0, timeout=3, clock=clock, sleep=clock.sleep)
    assert found is not None and found.mac == SLOW
    item = adopt(registry, found, "node7", "wol://52:54:00:00:00:02?interface=eth1")
    node = registry.node("node7")
    assert node is not None and node.mac == SLOW and node.state is NodeState.ENROLLING
    assert registry.power(SLOW) == "wol://52:54:00:00:00:02?interface=eth1"
    assert item.name == "node7" and item.outcome == "pending"
