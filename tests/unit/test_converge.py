"""Day two, without sockets: the Converger's waiting (members coming back, a paused
cluster, a run at a time), llama.cpp's ordered recovery on fake nodes, and converge()'s
stages recorded on every member's timeline."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from provisioner.clusters import converge as converge_mod
from provisioner.clusters.converge import Converger, booting, clusters_of, converge
from provisioner.clusters.engines.llama_rpc import HEAD_UNIT, WORKER_UNIT, LlamaRpcEngine
from provisioner.clusters.site import Site
from provisioner.clusters.spec import ClusterError
from provisioner.config import Mode, parse_config, render_config
from provisioner.postinstall.fanout import NodeRun
from provisioner.postinstall.ssh import Connection
from provisioner.profiles import Engine
from provisioner.records import Cluster, EventKind, Node
from provisioner.registry import Registry
from provisioner.smoke.report import Check, Report
from tests.fakes.cluster import Clock, cluster_registry
from tests.fakes.ssh import FakeNode, Reply, replies

NODES = {"node0": "52:54:00:c0:00:00", "node1": "52:54:00:c0:00:01", "node2": "52:54:00:c0:00:02"}
CLUSTER = Cluster("c1", Engine.LLAMA_RPC, "tiny", "node0", ("node1", "node2"))


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = cluster_registry(tmp_path / "registry.sqlite3", NODES, CLUSTER)
    yield reg
    reg.close()


def node(reg: Registry, name: str) -> Node:
    found = reg.node(NODES[name])
    assert found is not None
    return found


def reboot(reg: Registry, name: str, ts: float, *, back: bool) -> None:
    """The node asked for its boot script ``ts`` s from now; ``back``: and reported after."""
    ts += time.time()
    reg.add_event(NODES[name], EventKind.SCRIPT, {"boot": "image"}, ts=ts)
    if back:
        reg.add_event(NODES[name], EventKind.INVENTORY, {"bytes": 1}, ts=ts + 1)


# ------------------------------------------------------------- who is back


def test_booting_and_clusters_of(registry: Registry) -> None:
    reboot(registry, "node1", 10.0, back=False)
    reboot(registry, "node2", 10.0, back=True)
    assert booting(registry, node(registry, "node1"))
    assert not booting(registry, node(registry, "node2"))
    assert not booting(registry, node(registry, "node0"))  # never rebooted here
    assert [c.name for c in clusters_of(registry, node(registry, "node2"))] == ["c1"]


def test_the_converger_waits_for_every_member_then_runs_once(registry: Registry) -> None:
    clock = Clock()
    ran: list[tuple[str, tuple[str, ...]]] = []
    conv = Converger(registry, lambda name, back: ran.append((name, back)), clock=clock,
                     settle_s=3600, timeout_s=600)  # fmt: skip
    try:
        reboot(registry, "node1", 1.0, back=True)
        reboot(registry, "node2", 1.0, back=False)  # still on its way
        assert conv.kick(node(registry, "node1")) == ["c1"]
        assert conv.due("c1") is None  # node2 is booting
        clock.now += 30
        reboot(registry, "node2", 2.0, back=True)
        conv.kick(node(registry, "node2"))
        assert conv.due("c1") == ("node1", "node2")
        assert conv.due("c1") is None  # running: no second one at once
    finally:
        conv.close()


def test_the_last_member_back_converges_at_once_and_an_early_one_waits(
    registry: Registry,
) -> None:
    """A report while another member is on its way back arms the settle time; the last
    one back (nobody booting) arms the short quiet time."""
    ran: list[tuple[str, ...]] = []
    conv = Converger(registry, lambda name, back: ran.append(back), settle_s=3600, quiet_s=0.05)
    try:
        reboot(registry, "node1", 1.0, back=True)
        reboot(registry, "node2", 1.0, back=False)
        conv.kick(node(registry, "node1"))
        assert conv._timers["c1"].interval == 3600  # node2 is on its way
        reboot(registry, "node2", 2.0, back=True)
        conv.kick(node(registry, "node2"))
        assert conv._timers["c1"].interval == 0.05
        deadline = time.monotonic() + 10
        while not ran and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ran == [("node1", "node2")]
    finally:
        conv.close()


def test_a_member_that_does_not_come_back_is_left_behind_after_the_timeout(
    registry: Registry,
) -> None:
    clock = Clock()
    conv = Converger(registry, lambda *a: None, clock=clock, settle_s=3600, timeout_s=600)
    try:
        reboot(registry, "node1", 1.0, back=True)
        reboot(registry, "node2", 1.0, back=False)
        conv.kick(node(registry, "node1"))
        clock.now += 599
        assert conv.due("c1") is None
        clock.now += 2
        assert conv.due("c1") == ("node1",)  # converges without node2: smoke will say
    finally:
        conv.close()


def test_a_paused_cluster_is_left_as_it_is(registry: Registry) -> None:
    paused = Cluster(**{**CLUSTER.__dict__, "converge": False})
    registry.save_cluster("c1", paused.to_json())
    conv = Converger(registry, lambda *a: None, settle_s=3600)
    try:
        assert conv.kick(node(registry, "node1")) == []
        assert conv.due("c1") is None
    finally:
        conv.close()


def test_a_cluster_paused_after_the_watchdog_asked_is_left_as_it_is(
    registry: Registry,
) -> None:
    """The watchdog's round read the cluster before `cluster pause` and asked anyway (seen
    in CI: a member rebooting under a pause answered nothing): the pause wins."""
    ran: list[tuple[str, ...]] = []
    conv = Converger(registry, lambda name, back: ran.append(back), settle_s=3600)
    try:
        conv.close()  # no timer: due() is called here, as the timer would
        conv.request("c1", ["node2"])
        registry.save_cluster("c1", Cluster(**{**CLUSTER.__dict__, "converge": False}).to_json())
        assert conv.due("c1") is None and not conv.busy("c1")
        registry.save_cluster("c1", CLUSTER.to_json())
        assert conv.due("c1") is None  # nothing was left pending
    finally:
        conv.close()
    assert ran == []


def test_the_timer_runs_it_in_a_thread_and_a_kick_during_a_run_runs_again(
    registry: Registry,
) -> None:
    started, release = threading.Event(), threading.Event()
    ran: list[tuple[str, ...]] = []

    def run(name: str, back: tuple[str, ...]) -> None:
        ran.append(back)
        started.set()
        release.wait(10)

    conv = Converger(registry, run, settle_s=0.05)
    try:
        conv.kick(node(registry, "node1"))
        assert started.wait(10)
        conv.kick(node(registry, "node2"))  # came back while the first run goes on
        started.clear()
        release.set()
        assert started.wait(10)
        deadline = time.monotonic() + 10
        while len(ran) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ran == [("node1",), ("node2",)]
    finally:
        conv.close()


# ------------------------------------------------------------- llama.cpp's recovery


def fake_nodes() -> dict[str, FakeNode]:
    nodes = {name: FakeNode(name) for name in NODES}
    for worker in ("node1", "node2"):
        nodes[worker].on(f"systemctl is-active {WORKER_UNIT}", stdout="active\n")
    return nodes


def connect_all(nodes: dict[str, FakeNode]) -> dict[str, Connection]:
    return {name: fake.connect() for name, fake in nodes.items()}


def test_a_worker_back_restarts_the_head_after_every_worker_is_active() -> None:
    nodes = fake_nodes()
    order: list[str] = []
    nodes["node2"].on(
        f"systemctl is-active {WORKER_UNIT}",
        replies(Reply("activating\n"), Reply("active\n")),
    )

    def recorder(name: str) -> Callable[[str], Reply]:
        def answer(command: str) -> Reply:
            order.append(f"{name}: {command}")
            return Reply("active\n")

        return answer

    for name, fake in nodes.items():
        fake.on(re.compile("systemctl"), recorder(name))
    conns = connect_all(nodes)
    lines = LlamaRpcEngine().recover(CLUSTER, ("node1",), conns, lambda line: None)
    assert list(map(str, lines)) == [
        f"node1: {WORKER_UNIT} active",
        f"node2: {WORKER_UNIT} active",
        f"node0: {HEAD_UNIT} restarted after node1 came back",
    ]
    assert order[-1] == f"node0: systemctl reset-failed {HEAD_UNIT} 2>/dev/null; " + (
        f"systemctl restart {HEAD_UNIT}"
    )
    assert f"node1: systemctl is-active {WORKER_UNIT}" in order
    assert f"node2: systemctl is-active {WORKER_UNIT}" in order


def test_no_member_back_restarts_nothing() -> None:
    nodes = fake_nodes()
    conns = connect_all(nodes)
    assert LlamaRpcEngine().recover(CLUSTER, (), conns, lambda line: None) == []
    assert not any("restart" in c for f in nodes.values() for c in f.commands)


def test_a_head_back_alone_restarts_its_workers_rpc_servers_then_itself() -> None:
    """A reset head's connection is never closed: each worker that stayed up still serves
    it (one head at a time), so its RPC server is restarted before the head."""
    nodes = fake_nodes()
    conns = connect_all(nodes)
    lines = LlamaRpcEngine().recover(CLUSTER, ("node0",), conns, lambda line: None)
    assert list(map(str, lines)) == [
        f"node1: {WORKER_UNIT} restarted (it held the connection of node0 before its reboot)",
        f"node2: {WORKER_UNIT} restarted (it held the connection of node0 before its reboot)",
        f"node1: {WORKER_UNIT} active",
        f"node2: {WORKER_UNIT} active",
        f"node0: {HEAD_UNIT} restarted after its workers' RPC servers were restarted",
    ]
    for worker in ("node1", "node2"):
        restart = [c for c in nodes[worker].commands if "restart" in c]
        assert restart == [f"systemctl reset-failed {WORKER_UNIT} 2>/dev/null; "
                           f"systemctl restart {WORKER_UNIT}"]  # fmt: skip


def test_a_worker_that_stays_down_fails_the_recovery(monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner.clusters.engines import llama_rpc

    nodes = fake_nodes()
    nodes["node2"].on(f"systemctl is-active {WORKER_UNIT}", stdout="failed\n")
    ticks = iter(range(0, 10_000, 100))
    fake_time = SimpleNamespace(monotonic=lambda: float(next(ticks)), sleep=lambda s: None)
    monkeypatch.setattr(llama_rpc, "time", fake_time)  # the module's, not the process's
    conns = connect_all(nodes)
    with pytest.raises(ClusterError, match=f"node2: {WORKER_UNIT} not active"):
        LlamaRpcEngine().recover(CLUSTER, ("node1",), conns, lambda line: None)
    assert not any("restart" in c for c in nodes["node0"].commands)


# ------------------------------------------------------------- converge()'s stages


@pytest.fixture
def site(registry: Registry, tmp_path: Path) -> Site:
    cfg = parse_config(
        render_config(
            interface="eth0", address="10.30.0.1/24", mode=Mode.FULL,
            dhcp_range="10.30.0.100-10.30.0.120", state_dir=tmp_path / "state",
        )
    )  # fmt: skip
    return Site.open(cfg, registry)


def stages(registry: Registry) -> list[list[tuple[object, object]]]:
    return [
        [(e.detail["stage"], e.detail["ok"]) for e in registry.events(mac)
         if e.kind is EventKind.CONVERGE]
        for mac in NODES.values()
    ]  # fmt: skip


def test_converge_records_where_it_stopped_on_every_member(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = fake_nodes()
    connect = lambda n: nodes[n.hostname].connect()  # noqa: E731
    monkeypatch.setattr(converge_mod, "postinstall_plan", lambda *a, **k: [])

    def fail_plan(*a: object, **k: object) -> None:
        raise ClusterError("c1: node2: failed, not booted on its image yet")

    monkeypatch.setattr(converge_mod, "postinstall_plan", fail_plan)
    got = converge(site, CLUSTER, ("node1",), connect=connect, progress=lambda line: None)
    assert (got.stage, got.ok) == ("plan", False) and "node2" in str(got.reason)
    assert stages(site.registry) == [[("plan", False)]] * 3

    monkeypatch.setattr(converge_mod, "postinstall_plan", lambda *a, **k: [])
    bad = NodeRun("node1", NODES["node1"], error="step 'llama-rpc unit' failed")
    monkeypatch.setattr(converge_mod.fanout, "run", lambda *a: [bad])
    got = converge(site, CLUSTER, ("node1",), connect=connect, progress=lambda line: None)
    assert (got.stage, got.ok) == ("post-install", False) and "llama-rpc unit" in str(got.reason)

    monkeypatch.setattr(converge_mod.fanout, "run", lambda *a: [])
    passed = Report("c1", (Check("health", True, None, None, "ok"),))
    monkeypatch.setattr(converge_mod, "smoke", lambda *a: passed)
    got = converge(site, CLUSTER, ("node1",), connect=connect, progress=lambda line: None)
    assert (got.stage, got.ok, got.back) == ("smoke", True, ("node1",))
    assert got.recovered[-1] == f"node0: {HEAD_UNIT} restarted after node1 came back"
    assert stages(site.registry)[0] == [("plan", False), ("post-install", False), ("smoke", True)]
    # Each recovery step on its member's timeline, in the order it happened.
    steps = sorted(
        (e.ts, name, e.detail["what"])
        for name, mac in NODES.items()
        for e in site.registry.events(mac)
        if e.kind is EventKind.RECOVER
    )
    assert [(name, what) for _, name, what in steps] == [
        ("node1", f"{WORKER_UNIT} active"),
        ("node2", f"{WORKER_UNIT} active"),
        ("node0", f"{HEAD_UNIT} restarted after node1 came back"),
    ]
    assert nodes["node0"].commands[-1].endswith(f"systemctl restart {HEAD_UNIT}")


def test_a_head_back_with_its_workers_is_restarted_after_them() -> None:
    nodes = fake_nodes()
    conns = connect_all(nodes)
    lines = LlamaRpcEngine().recover(CLUSTER, ("node0", "node2"), conns, lambda line: None)
    assert str(lines[-1]) == f"node0: {HEAD_UNIT} restarted after node2 came back"
    # node2 rebooted (its server is fresh); node1 stayed up holding the old head's session.
    assert [str(line) for line in lines if "restarted (" in str(line)] == [
        f"node1: {WORKER_UNIT} restarted (it held the connection of node0 before its reboot)"
    ]
    assert not any("restart" in c for c in nodes["node2"].commands)
    assert nodes["node0"].commands[-1].endswith(f"systemctl restart {HEAD_UNIT}")


def test_lost_workers_are_those_booting_or_not_answering(registry: Registry) -> None:
    reboot(registry, "node1", 1.0, back=False)  # on its way back
    down = {"node2"}  # powered off: its SSH port does not answer
    lost = converge_mod.lost_workers(registry, CLUSTER, lambda n: n.hostname not in down)
    assert lost == ("node1", "node2")
    assert converge_mod.lost_workers(registry, CLUSTER, lambda n: True) == ("node1",)


def test_lost_worker_drop_goes_on_without_it_and_degrade_does_not(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = fake_nodes()
    connect = lambda n: nodes[n.hostname].connect()  # noqa: E731
    planned: list[tuple[str, ...]] = []
    judged: list[tuple[str, ...]] = []

    def plan(site: Site, cluster: Cluster, **k: object) -> list[object]:
        planned.append(cluster.workers)
        return []

    def smoke(site: Site, cluster: Cluster, *a: object) -> Report:
        judged.append(cluster.workers)
        return Report("c1", (Check("health", True, None, None, "ok"),))

    monkeypatch.setattr(converge_mod, "postinstall_plan", plan)
    monkeypatch.setattr(converge_mod.fanout, "run", lambda *a: [])
    monkeypatch.setattr(converge_mod, "smoke", smoke)
    gone = lambda n: n.hostname != "node2"  # noqa: E731
    dropping = replace(CLUSTER, options={"lost_worker": "drop"})
    got = converge(site, dropping, ("node1",), connect=connect, progress=lambda line: None,
                   reachable=gone)  # fmt: skip
    assert (got.stage, got.ok, got.without) == ("smoke", True, ("node2",))
    assert planned == judged == [("node1",)]  # the head's --rpc and the smoke: node1 only
    detail = site.registry.events(NODES["node2"])[-1].detail  # on the lost one's timeline too
    assert detail["without"] == "node2"

    planned.clear()
    got = converge(site, CLUSTER, ("node1",), connect=connect, progress=lambda line: None,
                   reachable=gone)  # fmt: skip
    assert got.without == () and planned == [("node1", "node2")]  # degrade: all members
