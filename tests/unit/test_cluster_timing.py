"""`cluster status`'s timings on a real registry: the last smoke as smoke() records it,
and each member's last boot from power-on to serving, with the events the services write
(the registry's clock is the test's)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from provisioner import registry as registry_mod
from provisioner.clusters import smoke as smoke_mod
from provisioner.clusters.engines.base import SmokeOptions
from provisioner.clusters.site import Site
from provisioner.clusters.timing import BootTiming, boot_to_serving, last_smoke
from provisioner.config import Mode, parse_config, render_config
from provisioner.postinstall.ssh import Connection
from provisioner.profiles import Engine
from provisioner.records import Cluster, EventKind, Node
from provisioner.registry import Registry
from provisioner.smoke.report import Check, Report
from provisioner.smoke.run import Floors
from provisioner.states import NodeEvent, NodeState
from tests.fakes.ssh import FakeNode

NODES = {"node0": "52:54:00:d0:00:00", "node1": "52:54:00:d0:00:01"}
CLUSTER = Cluster("c1", Engine.LLAMA_RPC, "tiny", "node0", ("node1",))
MAC = NODES["node1"]


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def on_clock(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> Clock:
    """``clock`` the registry's and smoke's (the modules' `time`, not the process's)."""
    monkeypatch.setattr(registry_mod, "time", SimpleNamespace(time=clock))
    monkeypatch.setattr(smoke_mod, "time", SimpleNamespace(time=clock))
    return clock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return on_clock(monkeypatch, Clock())


@pytest.fixture
def registry(tmp_path: Path, clock: Clock) -> Iterator[Registry]:
    """Two nodes enrolled after one discovery boot each, members of CLUSTER."""
    reg = Registry(tmp_path / "registry.sqlite3")
    for name, mac in NODES.items():
        reg.touch_node(mac, ip=f"10.30.0.{100 + int(name[-1])}")
        reg.set_hostname(mac, name)
        boot(reg, clock, mac, 1000.0, power=False, script="discovery")
        for event in (NodeEvent.MATCH, NodeEvent.ENROLL):
            reg.transition(mac, event)
    reg.save_cluster(CLUSTER.name, CLUSTER.to_json())
    yield reg
    reg.close()


def boot(
    reg: Registry, clock: Clock, mac: str, at: float, *, power: bool = True,
    report: bool = True, script: str = "image",
) -> None:  # fmt: skip
    """One boot as the services record it: a power-on (enroll --power-cycle's event),
    the firmware's and iPXE's DHCP, the boot script (``script``: image or discovery), the
    agent's report (a discovery report gives the node the profile qemu-lab)."""
    clock.now = at
    if power:
        reg.add_event(mac, EventKind.POWER, {"op": "cycle", "ok": True})
        clock.now += 3
    reg.add_event(mac, EventKind.DHCP, {"msg": "discover", "port": 67, "arch": 7,
                                        "client": "uefi"})  # fmt: skip
    clock.now += 2
    reg.add_event(mac, EventKind.DHCP, {"msg": "discover", "port": 67, "arch": 7,
                                        "client": "ipxe"})  # fmt: skip
    reg.add_event(mac, EventKind.SCRIPT, {"boot": script, "image": "node@1", "client": "x"})
    clock.now += 20
    if report:
        reg.store_inventory(mac, "{}")
    if script == "discovery":
        reg.set_profile(mac, "qemu-lab")


@dataclass(frozen=True)
class FakeSite(Site):
    def connect(self, node: Node) -> Connection:
        return FakeNode(node.hostname or node.mac).connect()  # type: ignore[return-value]


@dataclass
class Judged:
    """An engine whose smoke gives the report the test chose."""

    report: Report

    def smoke(self, *args: object) -> Report:
        return self.report


def record_smoke(
    reg: Registry, cluster: Cluster, state_dir: Path, monkeypatch: pytest.MonkeyPatch,
    *checks: Check,
) -> None:  # fmt: skip
    """Run the real smoke() (what it records: steps, states) on a report of ``checks``."""
    cfg = parse_config(
        render_config(
            interface="eth0", address="10.30.0.1/24", mode=Mode.FULL,
            dhcp_range="10.30.0.100-10.30.0.120", state_dir=state_dir,
        )
    )  # fmt: skip
    monkeypatch.setattr(smoke_mod, "engine_for", lambda c: Judged(Report(c.name, checks)))
    smoke_mod.smoke(FakeSite.open(cfg, reg), cluster, SmokeOptions(), Floors(), print)


def smoke(
    reg: Registry, tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch, at: float,
    *checks: Check,
) -> None:  # fmt: skip
    clock.now = at
    record_smoke(reg, CLUSTER, tmp_path / "state", monkeypatch, *checks)


def installed(reg: Registry, clock: Clock, at: float, macs: Iterable[str] = NODES.values()) -> None:
    """Post-install finished on every member (``macs``) at ``at``."""
    clock.now = at
    for mac in macs:
        reg.transition(mac, NodeEvent.INSTALLED)


HEALTH, COMPLETION = Check("health", True), Check("completion", True)


# ------------------------------------------------------------- last smoke


def test_no_smoke_yet_only_post_install_steps(registry: Registry) -> None:
    registry.add_step("postinstall-1", NODES["node0"], "llama-server", "changed", 0, "", 1.0)
    assert last_smoke(registry, CLUSTER) is None


def test_the_last_smoke_passed_after_a_failed_one(
    registry: Registry, tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    smoke(registry, tmp_path, clock, monkeypatch, 2000.0, HEALTH,
          Check("completion", False, detail="HTTP 500"), Check("rpc_workers", False))  # fmt: skip
    first = last_smoke(registry, CLUSTER)
    assert first is not None and not first.passed
    assert (first.ts, first.outcome) == (2000.0, "failed")
    assert first.failed == ("completion", "rpc_workers")
    assert first.reason == "smoke failed: completion, rpc_workers"
    smoke(registry, tmp_path, clock, monkeypatch, 2600.0, HEALTH, COMPLETION)
    smoke(registry, tmp_path, clock, monkeypatch, 3000.0, HEALTH, COMPLETION)
    # The third left serving nodes serving: no state event of its own, still the last.
    states = [e for e in registry.events(MAC) if e.kind is EventKind.STATE]
    assert states[-1].ts == 2600.0
    last = last_smoke(registry, CLUSTER)
    assert last is not None and last.passed
    assert (last.ts, last.run, last.failed) == (3000.0, "smoke-3000", ())
    assert last.as_dict() == {
        "run": "smoke-3000", "ts": 3000.0, "passed": True, "outcome": "passed",
        "reason": "smoke passed", "failed": [],
    }  # fmt: skip


def test_a_smoke_below_a_floor_is_degraded_not_passed(
    registry: Registry, tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    smoke(registry, tmp_path, clock, monkeypatch, 2000.0, HEALTH,
          Check("ttft_s", False, 9.0, 2.0))  # fmt: skip
    got = last_smoke(registry, CLUSTER)
    assert got is not None and not got.passed
    assert (got.outcome, got.reason, got.failed) == ("degraded", "below floor: ttft_s", ("ttft_s",))
    # The reason is the one the members' state event carries.
    assert registry.events(MAC)[-1].detail["why"] == got.reason


# ------------------------------------------------------------- boot to serving


def test_a_node_booted_twice_is_timed_on_its_last_boot_only(
    registry: Registry, tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    for mac in NODES.values():
        boot(registry, clock, mac, 2000.0)
    installed(registry, clock, 2060.0)
    smoke(registry, tmp_path, clock, monkeypatch, 2100.0, HEALTH)
    first = boot_to_serving(registry.events(MAC))
    assert first == BootTiming(2000.0, 100.0)
    # Powered off for the night (not a start), then on again: the second boot only.
    clock.now = 3000.0
    registry.add_event(MAC, EventKind.POWER, {"op": "off", "ok": True})
    boot(registry, clock, MAC, 9000.0, power=False)
    assert registry.node(MAC).state is NodeState.ENROLLED  # type: ignore[union-attr]
    installed(registry, clock, 9040.0)
    smoke(registry, tmp_path, clock, monkeypatch, 9068.5, HEALTH)
    got = boot_to_serving(registry.events(MAC))
    assert got == BootTiming(9000.0, 68.5)
    assert got.as_dict() == {"start": 9000.0, "seconds": 68.5, "ended": None}


def test_a_node_never_serving_and_one_booting_again(
    registry: Registry, tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert boot_to_serving([]) is None
    # The discovery boot reported, then enrolled: never served.
    assert boot_to_serving(registry.events(MAC)) == BootTiming(1000.0, None)
    for mac in NODES.values():
        boot(registry, clock, mac, 2000.0)
    installed(registry, clock, 2060.0)
    smoke(registry, tmp_path, clock, monkeypatch, 2100.0, HEALTH)
    # Rebooting now (no report yet): its last boot is this one, not serving yet.
    clock.now = 5000.0
    registry.add_event(MAC, EventKind.DHCP, {"msg": "discover", "port": 67, "arch": 7,
                                             "client": "uefi"})  # fmt: skip
    assert boot_to_serving(registry.events(MAC)) == BootTiming(5000.0, None)


def test_a_report_held_for_approval_is_counted_once_approved(
    registry: Registry, tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot(registry, clock, MAC, 2000.0, report=False)
    clock.now = 2030.0  # its report held, approved a minute later (stored again)
    registry.hold_inventory(MAC, "{}", ip=None, changes={"profile": "qemu-lab"})
    clock.now = 2090.0
    registry.store_inventory(MAC, "{}")
    installed(registry, clock, 2100.0)
    smoke(registry, tmp_path, clock, monkeypatch, 2110.0, HEALTH)
    assert boot_to_serving(registry.events(MAC)) == BootTiming(2000.0, 110.0)


@pytest.mark.parametrize(
    ("check", "ended"),
    [(Check("ttft_s", False, 9.0, 2.0), NodeState.DEGRADED),
     (Check("completion", False), NodeState.FAILED)],
)  # fmt: skip
def test_a_boot_that_ended_degraded_or_failed_has_no_time(
    registry: Registry, tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch,
    check: Check, ended: NodeState,
) -> None:  # fmt: skip
    for mac in NODES.values():
        boot(registry, clock, mac, 2000.0)
    installed(registry, clock, 2060.0)
    smoke(registry, tmp_path, clock, monkeypatch, 2100.0, HEALTH, check)
    assert boot_to_serving(registry.events(MAC)) == BootTiming(2000.0, None, ended)
    # The next smoke passes: the boot got to serving after all, the detour counted.
    smoke(registry, tmp_path, clock, monkeypatch, 2400.0, HEALTH)
    assert boot_to_serving(registry.events(MAC)) == BootTiming(2000.0, 400.0)
