"""The watchdog without sockets: which clusters it watches, how it reads ``systemctl
is-active``, a unit found down converging its cluster (a ``watch`` event on the member),
back-off while it stays down, a failed convergence degrading a serving head."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.clusters import converge as converge_mod
from provisioner.clusters.converge import Converger, converge
from provisioner.clusters.engines.llama_rpc import HEAD_UNIT, WORKER_UNIT
from provisioner.clusters.site import Site
from provisioner.clusters.spec import ClusterError
from provisioner.clusters.watchdog import Down, Watchdog, is_active_command, judge, watched
from provisioner.config import Mode, parse_config, render_config
from provisioner.profiles import Engine
from provisioner.records import Cluster, EventKind, Node
from provisioner.registry import Registry
from provisioner.states import NodeEvent, NodeState
from tests.fakes.cluster import Clock, cluster_registry
from tests.fakes.ssh import FakeNode, Reply, replies

NODES = {"node0": "52:54:00:c1:00:00", "node1": "52:54:00:c1:00:01", "node2": "52:54:00:c1:00:02"}
CLUSTER = Cluster("c1", Engine.LLAMA_RPC, "tiny", "node0", ("node1", "node2"))


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = cluster_registry(tmp_path / "registry.sqlite3", NODES, CLUSTER, serving=True)
    yield reg
    reg.close()


def fakes() -> dict[str, FakeNode]:
    nodes = {name: FakeNode(name) for name in NODES}
    nodes["node0"].on(is_active_command((HEAD_UNIT,)), stdout="active\n")
    for worker in ("node1", "node2"):
        nodes[worker].on(is_active_command((WORKER_UNIT,)), stdout="active\n")
    return nodes


class Requests:
    """A stand-in for the Converger: what the watchdog asked of it."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, tuple[str, ...]]] = []
        self.running: set[str] = set()

    def request(self, name: str, hosts: list[str]) -> None:
        self.asked.append((name, tuple(hosts)))

    def busy(self, name: str) -> bool:
        return name in self.running


def dog(registry: Registry, nodes: dict[str, FakeNode], clock: Clock) -> tuple[Watchdog, Requests]:
    asked = Requests()
    connect = lambda n: nodes[n.hostname or ""].connect()  # noqa: E731
    watchdog = Watchdog(
        registry, asked, connect, interval=30, max_backoff=100, confirm_s=0, clock=clock,  # type: ignore[arg-type]
    )  # fmt: skip
    return watchdog, asked


def members(registry: Registry) -> dict[str, Node]:
    return {name: n for name, mac in NODES.items() if (n := registry.node(mac)) is not None}


# ------------------------------------------------------------- reading is-active


def test_judge_names_the_units_not_active() -> None:
    units = ("a.service", "b.service")
    assert judge("n", units, "active\nactive\n") is None
    assert judge("n", units, "active\nfailed\n") == Down("n", units=("b.service: failed",))
    # a server in a restart loop is mostly "activating": down too
    assert judge("n", units, "activating\nactive\n") == Down("n", units=("a.service: activating",))
    short = judge("n", units, "active\n")
    assert short is not None and short.unreachable and "unexpected answer" in short.unreachable


# ------------------------------------------------------------- what is watched


def test_only_serving_unpaused_clusters_with_no_member_booting_are_watched(
    registry: Registry,
) -> None:
    assert watched(registry, CLUSTER, members(registry))
    paused = Cluster(**{**CLUSTER.__dict__, "converge": False})
    assert not watched(registry, paused, members(registry))
    # a member on its way back from a reboot: the boot's convergence handles it
    registry.add_event(NODES["node2"], EventKind.SCRIPT, {"boot": "image"})
    assert not watched(registry, CLUSTER, members(registry))
    registry.add_event(NODES["node2"], EventKind.INVENTORY, {"bytes": 1})
    assert watched(registry, CLUSTER, members(registry))
    # never smoke-tested (its head only enrolled): nobody asked it to serve yet
    registry.transition(NODES["node0"], NodeEvent.INVENTORY)
    assert registry.node(NODES["node0"]).state is NodeState.ENROLLED  # type: ignore[union-attr]
    assert not watched(registry, CLUSTER, members(registry))


# ------------------------------------------------------------- rounds


def test_a_healthy_cluster_is_probed_every_interval_and_left_alone(registry: Registry) -> None:
    clock, nodes = Clock(), fakes()
    watchdog, asked = dog(registry, nodes, clock)
    assert watchdog.tick() == {}
    assert nodes["node1"].commands == [is_active_command((WORKER_UNIT,))]
    assert watchdog.tick() == {}  # not due yet
    assert len(nodes["node1"].commands) == 1
    clock.now += 30
    assert watchdog.tick() == {} and len(nodes["node1"].commands) == 2
    assert asked.asked == []
    assert not any(e.kind is EventKind.WATCH for m in NODES.values() for e in registry.events(m))


def test_a_unit_down_converges_its_cluster_and_backs_off_while_it_stays_down(
    registry: Registry,
) -> None:
    clock, nodes = Clock(), fakes()
    nodes["node1"].on(is_active_command((WORKER_UNIT,)), stdout="inactive\n")
    nodes["node2"].unreachable = True
    watchdog, asked = dog(registry, nodes, clock)
    found = watchdog.tick()
    # node2 did not answer once: maybe power-cycled a moment ago, not yet asking to boot
    assert [str(d) for d in found["c1"]] == [f"node1: {WORKER_UNIT}: inactive"]
    assert asked.asked == [("c1", ("node1",))]
    events = [e.detail for e in registry.events(NODES["node1"]) if e.kind is EventKind.WATCH]
    assert events == [{"cluster": "c1", "units": f"{WORKER_UNIT}: inactive", "unreachable": None}]

    asked.running.add("c1")  # converging: not probed meanwhile
    clock.now += 30
    assert watchdog.tick() == {}
    asked.running.clear()
    found = watchdog.tick()  # still down after it: probed again, then 60 s, 100 s (cap)
    assert "no answer over SSH" in str(found["c1"][1])  # silent two rounds in a row
    assert asked.asked[-1] == ("c1", ("node1", "node2"))
    for wait in (59, 99, 99):
        clock.now += wait
        assert watchdog.tick() == {}
        clock.now += 1
        assert watchdog.tick() != {}
    nodes["node1"].on(is_active_command((WORKER_UNIT,)), stdout="active\n")
    nodes["node2"].unreachable = False
    clock.now += 100
    assert watchdog.tick() == {}  # healthy: back to the interval
    clock.now += 30
    assert watchdog.tick() == {}
    assert len(asked.asked) == 5


def test_a_unit_back_when_asked_again_is_left_alone(registry: Registry) -> None:
    nodes = fakes()
    nodes["node1"].on(
        is_active_command((WORKER_UNIT,)), replies(Reply("activating\n"), Reply("active\n"))
    )  # systemd restarting it (RestartSec), or a smoke's restart check
    asked = Requests()
    connect = lambda n: nodes[n.hostname or ""].connect()  # noqa: E731
    watchdog = Watchdog(registry, asked, connect, interval=30, confirm_s=0.01)  # type: ignore[arg-type]
    assert watchdog.tick() == {} and asked.asked == []
    assert nodes["node1"].commands == [is_active_command((WORKER_UNIT,))] * 2


def test_the_watchdog_and_the_converger_together_run_one_convergence(
    registry: Registry,
) -> None:
    ran: list[tuple[str, tuple[str, ...]]] = []
    done = threading.Event()

    def run(name: str, back: tuple[str, ...]) -> None:
        ran.append((name, back))
        done.set()

    conv = Converger(registry, run, settle_s=3600)
    nodes = fakes()
    nodes["node2"].on(is_active_command((WORKER_UNIT,)), stdout="failed\n")
    connect = lambda n: nodes[n.hostname or ""].connect()  # noqa: E731
    watchdog = Watchdog(registry, conv, connect, interval=30, confirm_s=0)
    try:
        watchdog.tick()  # requested: run at once (no settling: nothing is booting)
        assert done.wait(10)
        assert ran == [("c1", ("node2",))]
    finally:
        conv.close()
        watchdog.close()


# ------------------------------------------------------------- a failed convergence


def test_a_convergence_that_fails_before_its_smoke_degrades_a_serving_head(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = parse_config(
        render_config(
            interface="eth0", address="10.30.0.1/24", mode=Mode.FULL,
            dhcp_range="10.30.0.100-10.30.0.120", state_dir=tmp_path / "state",
        )
    )  # fmt: skip
    site = Site.open(cfg, registry)

    def fail_plan(*a: object, **k: object) -> None:
        raise ClusterError("c1: node2: no SSH host key")

    monkeypatch.setattr(converge_mod, "postinstall_plan", fail_plan)
    nodes = fakes()
    got = converge(
        site, CLUSTER, ("node2",), connect=lambda n: nodes[n.hostname or ""].connect(),
        progress=lambda line: None,
    )  # fmt: skip
    assert not got.ok
    head = registry.node(NODES["node0"])
    assert head is not None and head.state is NodeState.DEGRADED
    reasons = [e.detail.get("why") for e in registry.events(head.mac)
               if e.kind is EventKind.STATE]  # fmt: skip
    assert reasons[-1] == "converge plan: c1: node2: no SSH host key"
