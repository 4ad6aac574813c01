"""Rolling image upgrades without sockets: plan_roll's order and refusals, judge_return's
verdicts on a node's timeline, and Roll.run against a real registry with nodes that a
fake ``sleep`` brings back (or not) the way the boot policy and convergence would."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.clusters.roll import (
    Return,
    Roll,
    RollPlan,
    RollRefused,
    judge_return,
    plan_roll,
)
from provisioner.image.choice import image_for
from provisioner.profiles import Engine
from provisioner.records import Cluster, Detail, Event, EventKind, Node
from provisioner.registry import Registry
from provisioner.states import NodeEvent, NodeState
from tests.fakes.cluster import cluster_registry

PROFILE = "qemu-lab"
OLD, TARGET = "debian-bookworm@1", "debian-bookworm@2"
_macs = itertools.count(1)


def node(
    name: str,
    *,
    state: NodeState = NodeState.SERVING,
    image: str | None = OLD,
    profile: str | None = PROFILE,
) -> Node:
    return Node(
        mac=f"52:54:00:aa:00:{next(_macs) % 256:02x}",
        hostname=name,
        state=state,
        profile=profile,
        ip=None,
        firmware=None,
        arch=None,
        first_seen=0.0,
        last_seen=0.0,
        image=image,
    )


def plan(nodes: list[Node], clusters: list[Cluster]) -> RollPlan:
    return plan_roll(PROFILE, TARGET, nodes, clusters, profile_image=TARGET, previous=OLD)


# ------------------------------------------------------------- plan_roll


def test_plan_takes_failed_nodes_first_then_loose_ones_then_workers_before_each_head() -> None:
    c1 = Cluster("c1", Engine.LLAMA_RPC, "tiny", "alpha", ("node2", "node1"))
    c2 = Cluster("c2", Engine.LLAMA_RPC, "tiny", "beta", ("zeta",))
    nodes = [
        node("alpha"),
        node("node2"),
        node("node1"),
        node("beta"),
        node("zeta", state=NodeState.FAILED),
        node("solo"),
        node("loner", state=NodeState.ENROLLED),
    ]
    got = plan(nodes, [c2, c1])
    assert [s.name for s in got.steps] == [
        "zeta",  # failed, although its cluster comes last
        "loner",
        "solo",
        "node1",
        "node2",
        "alpha",  # c1's head, after its workers
        "beta",
    ]
    assert [(s.cluster.name if s.cluster else None, s.role) for s in got.steps[3:6]] == [
        ("c1", "worker"),
        ("c1", "worker"),
        ("c1", "head"),
    ]
    assert (got.profile, got.target, got.profile_image, got.previous) == (
        PROFILE,
        TARGET,
        TARGET,
        OLD,
    )


def test_plan_leaves_out_other_profiles_and_nodes_not_enrolled() -> None:
    nodes = [
        node("mine"),
        node("gpu0", profile="gpu"),
        node("fresh", state=NodeState.DISCOVERED),
        node("matched", state=NodeState.MATCHED),
        node("disk", state=NodeState.LOCAL),
        node("nobody", profile=None),
    ]
    got = plan(nodes, [])
    assert [s.name for s in got.steps] == ["mine"]
    assert got.already == ()


def test_nodes_on_the_target_already_are_left_alone_but_a_failed_one_is_moved() -> None:
    nodes = [
        node("done", image=TARGET),
        node("degraded", state=NodeState.DEGRADED, image=TARGET),
        node("broken", state=NodeState.FAILED, image=TARGET),
        node("old"),
    ]
    got = plan(nodes, [])
    assert [s.name for s in got.steps] == ["broken", "old"]
    assert got.already == ("degraded", "done")


def test_a_node_without_a_hostname_is_named_by_its_mac() -> None:
    anonymous = Node("52:54:00:aa:ff:01", None, NodeState.ENROLLED, PROFILE, None, None, None,
                     0.0, 0.0, OLD)  # fmt: skip
    got = plan([anonymous], [])
    assert [s.name for s in got.steps] == ["52:54:00:aa:ff:01"]
    assert got.steps[0].cluster is None and got.steps[0].role is None


def test_a_paused_cluster_with_a_member_to_move_is_refused() -> None:
    paused = Cluster("c1", Engine.LLAMA_RPC, "tiny", "node0", ("node1",), converge=False)
    with pytest.raises(RollRefused, match=r"cluster c1 is paused"):
        plan([node("node0"), node("node1", image=TARGET)], [paused])


def test_a_paused_cluster_with_every_member_on_the_target_is_no_obstacle() -> None:
    paused = Cluster("c1", Engine.LLAMA_RPC, "tiny", "node0", ("node1",), converge=False)
    nodes = [node("node0", image=TARGET), node("node1", image=TARGET), node("solo")]
    got = plan(nodes, [paused])
    assert [s.name for s in got.steps] == ["solo"]


def test_a_cluster_with_a_failed_member_outside_the_roll_is_refused() -> None:
    c1 = Cluster("c1", Engine.LLAMA_RPC, "tiny", "node0", ("node1", "gpu1"))
    nodes = [node("node0"), node("node1"), node("gpu1", profile="gpu", state=NodeState.FAILED)]
    with pytest.raises(RollRefused, match=r"gpu1 of cluster c1 is failed"):
        plan(nodes, [c1])


def test_a_failed_member_inside_the_roll_is_no_refusal() -> None:
    c1 = Cluster("c1", Engine.LLAMA_RPC, "tiny", "node0", ("node1",))
    got = plan([node("node0"), node("node1", state=NodeState.FAILED)], [c1])
    assert [s.name for s in got.steps] == ["node1", "node0"]


# ------------------------------------------------------------- judge_return

MAC = "52:54:00:aa:aa:01"


def ev(kind: EventKind, ts: float = 0.0, **detail: str | int | bool | None) -> Event:
    return Event(MAC, ts, kind, detail)


def at(state: NodeState, image: str | None = TARGET) -> Node:
    return Node(MAC, "node1", state, PROFILE, None, None, None, 0.0, 0.0, image)


REPORT = ev(EventKind.INVENTORY, bytes=1)
SMOKED = ev(EventKind.CONVERGE, ok=True, stage="smoke")


def test_no_report_yet_is_not_back() -> None:
    script = ev(EventKind.SCRIPT, image=TARGET)
    assert judge_return(at(NodeState.ENROLLED), [], TARGET, False) == Return()
    verdict = judge_return(at(NodeState.ENROLLED), [script], TARGET, False)
    assert (verdict.back, verdict.failed) == (False, None)
    assert TARGET in verdict.seen


def test_a_report_from_another_image_is_a_failure_naming_both() -> None:
    verdict = judge_return(at(NodeState.ENROLLED, OLD), [REPORT], TARGET, False)
    assert not verdict.back
    assert verdict.failed is not None and OLD in verdict.failed and TARGET in verdict.failed


def test_a_node_in_no_cluster_is_back_on_its_report() -> None:
    assert judge_return(at(NodeState.ENROLLED), [REPORT], TARGET, False).back


def test_a_member_is_back_once_its_convergence_smoked_and_it_serves() -> None:
    assert not judge_return(at(NodeState.ENROLLED), [REPORT], TARGET, True).back
    assert judge_return(at(NodeState.SERVING), [REPORT, SMOKED], TARGET, True).back


def test_a_member_that_converged_but_does_not_serve_yet_is_not_back() -> None:
    verdict = judge_return(at(NodeState.ENROLLED), [REPORT, SMOKED], TARGET, True)
    assert (verdict.back, verdict.failed) == (False, None)


def test_a_failed_convergence_fails_it_naming_stage_and_reason() -> None:
    failed = ev(EventKind.CONVERGE, ok=False, stage="post-install", reason="apt: no network")
    verdict = judge_return(at(NodeState.SERVING), [REPORT, failed, SMOKED], TARGET, True)
    assert not verdict.back
    assert verdict.failed is not None
    assert "post-install" in verdict.failed and "apt: no network" in verdict.failed


def test_a_move_to_failed_fails_it() -> None:
    fail = ev(EventKind.STATE, to="failed", why="smoke: no answer")
    for events in ([fail], [REPORT, fail]):
        verdict = judge_return(at(NodeState.FAILED), events, TARGET, False)
        assert verdict.failed is not None and "smoke: no answer" in verdict.failed


def test_other_moves_do_not_fail_it() -> None:
    moved = ev(EventKind.STATE, to="enrolled", why="inventory received")
    assert judge_return(at(NodeState.ENROLLED), [moved, REPORT], TARGET, False).back


def test_a_degraded_member_after_its_convergence_is_a_failure() -> None:
    verdict = judge_return(at(NodeState.DEGRADED), [REPORT, SMOKED], TARGET, True)
    assert verdict.failed is not None and "degraded" in verdict.failed


def test_convergence_before_the_report_does_not_count() -> None:
    failed = ev(EventKind.CONVERGE, ok=False, stage="smoke", reason="an earlier run")
    serving = at(NodeState.SERVING)
    assert not judge_return(serving, [SMOKED, REPORT], TARGET, True).back
    assert judge_return(serving, [failed, REPORT], TARGET, True) == Return(seen="its report")
    assert judge_return(serving, [failed, REPORT, SMOKED], TARGET, True).back


# ------------------------------------------------------------- Roll.run on a registry

NODES = {
    "node0": "52:54:00:c0:00:00",
    "node1": "52:54:00:c0:00:01",
    "node2": "52:54:00:c0:00:02",
    "solo": "52:54:00:c0:00:03",
}
CLUSTER = Cluster("c1", Engine.LLAMA_RPC, "tiny", "node0", ("node1", "node2"))
ORDER = ["solo", "node1", "node2", "node0"]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """Four serving nodes of qemu-lab booted from OLD (three of them cluster c1), the
    profile set to OLD."""
    reg = cluster_registry(tmp_path / "registry.sqlite3", NODES, CLUSTER, serving=True)
    for mac in NODES.values():
        reg.set_booted_image(mac, OLD)
    reg.set_profile_image(PROFILE, OLD)
    yield reg
    reg.close()


class Lab:
    """The nodes' side of a roll. ``reboot`` records what it sees; at the roll's next
    ``sleep`` the rebooted node boots what the boot policy gives it (its pin first),
    reports, and (a member of c1) its cluster converges and smokes. ``broken``: its
    convergence fails; ``silent``: it never comes back (the clock moves instead)."""

    def __init__(
        self,
        reg: Registry,
        *,
        broken: frozenset[str] = frozenset(),
        silent: frozenset[str] = frozenset(),
        refuses: frozenset[str] = frozenset(),
    ) -> None:
        self.reg, self.broken, self.silent, self.refuses = reg, broken, silent, refuses
        self.rebooted: list[str] = []
        self.pin_at_reboot: dict[str, str | None] = {}
        self.state_at_reboot: dict[str, NodeState] = {}
        self.steps_at_reboot: dict[str, dict[str, list[object]]] = {}
        self.waiting: str | None = None
        self.skew = 0.0  # how far the fake clock ran ahead of the wall clock
        self.sleeps = 0

    def clock(self) -> float:
        # The wall clock (the registry stamps events with it) plus what sleep skipped.
        return time.time() + self.skew

    def reboot(self, target: Node) -> str:
        name = target.hostname or target.mac
        if name in self.refuses:
            raise RuntimeError("BMC unreachable")
        self.rebooted.append(name)
        self.pin_at_reboot[name] = self.reg.image_pins().get(target.mac)
        found = self.reg.node(target.mac)
        assert found is not None
        self.state_at_reboot[name] = found.state
        self.steps_at_reboot[name] = {n: roll_steps(self.reg, n) for n in NODES}
        self.waiting = name
        return "fake power cycle"

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        assert self.sleeps < 10_000, "the roll never stops waiting"
        name = self.waiting
        if name is None or name in self.silent:
            self.skew += seconds
            return
        self.waiting = None
        mac = NODES[name]
        found = self.reg.node(mac)
        assert found is not None
        booted = image_for(
            found.profile, None, self.reg.profile_images(), OLD, self.reg.image_pins().get(mac)
        )
        self.reg.add_event(mac, EventKind.SCRIPT, {"image": booted})
        self.reg.set_booted_image(mac, booted)
        self.reg.store_inventory(mac, "{}")
        if name not in CLUSTER.members:
            return
        if name in self.broken:
            converged: Detail = {"ok": False, "stage": "post-install", "reason": "apt: 404"}
            self.reg.add_event(mac, EventKind.CONVERGE, converged)
            return
        self.reg.add_event(mac, EventKind.CONVERGE, {"ok": True, "stage": "smoke"})
        self.reg.transition(mac, NodeEvent.SMOKE_PASS, reason="smoke passed")

    def roll(self, *, timeout: float = 900.0) -> Roll:
        return Roll(self.reg, self.reboot, timeout=timeout, clock=self.clock, sleep=self.sleep)


def roll_steps(reg: Registry, name: str) -> list[object]:
    return [e.detail.get("step") for e in reg.events(NODES[name]) if e.kind is EventKind.ROLL]


def roll_plan(reg: Registry) -> RollPlan:
    return plan_roll(
        PROFILE, TARGET, reg.nodes(), [CLUSTER], profile_image=TARGET, previous="bookworm@0"
    )


def test_a_roll_moves_every_node_pinned_one_at_a_time_then_sets_the_profile(
    registry: Registry,
) -> None:
    lab = Lab(registry)
    the_plan = roll_plan(registry)
    assert [s.name for s in the_plan.steps] == ORDER
    report = lab.roll().run(the_plan)
    assert report.ok and report.left == []
    assert [o.node for o in report.done] == ORDER
    assert all(o.how == "fake power cycle" for o in report.done)
    assert lab.rebooted == ORDER
    assert lab.pin_at_reboot == dict.fromkeys(ORDER, TARGET)
    for before, name in itertools.pairwise(ORDER):
        seen = lab.steps_at_reboot[name]
        assert seen[before] == ["reboot", "back"], f"{name} rebooted before {before} was back"
        assert seen[name] == []
    for name in ORDER:
        node = registry.node(NODES[name])
        assert node is not None and node.image == TARGET
        assert roll_steps(registry, name) == ["reboot", "back"]
        images = {e.detail.get("image") for e in registry.events(NODES[name])
                  if e.kind is EventKind.ROLL}  # fmt: skip
        assert images == {TARGET}
    assert registry.profile_images() == {PROFILE: TARGET}
    assert registry.previous_profile_image(PROFILE) == "bookworm@0"  # the plan's, not OLD
    assert registry.image_pins() == {}


def test_a_plan_that_leaves_the_profile_as_is_drops_the_pins_only(registry: Registry) -> None:
    lab = Lab(registry)
    the_plan = plan_roll(
        PROFILE, TARGET, registry.nodes(), [CLUSTER], profile_image=None, previous=None
    )
    assert lab.roll().run(the_plan).ok
    assert registry.profile_images() == {PROFILE: OLD}
    assert registry.image_pins() == {}


def test_a_node_that_fails_stops_the_roll_and_keeps_the_pins(registry: Registry) -> None:
    lab = Lab(registry, broken=frozenset({"node1"}))
    report = lab.roll().run(roll_plan(registry))
    assert not report.ok
    assert lab.rebooted == ["solo", "node1"]
    assert report.left == ["node2", "node0"]
    failed = report.done[-1]
    assert failed.node == "node1" and not failed.ok
    assert (
        failed.error is not None and "post-install" in failed.error and "apt: 404" in failed.error
    )
    assert roll_steps(registry, "node1") == ["reboot", "failed"]
    assert roll_steps(registry, "node2") == roll_steps(registry, "node0") == []
    assert registry.image_pins() == {NODES["solo"]: TARGET, NODES["node1"]: TARGET}
    assert registry.profile_images() == {PROFILE: OLD}
    assert registry.previous_profile_image(PROFILE) is None


def test_a_reboot_that_raises_stops_the_roll(registry: Registry) -> None:
    lab = Lab(registry, refuses=frozenset({"node1"}))
    report = lab.roll().run(roll_plan(registry))
    assert not report.ok
    assert lab.rebooted == ["solo"]
    assert report.left == ["node2", "node0"]
    failed = report.done[-1]
    assert failed.error == "reboot failed: BMC unreachable"
    assert roll_steps(registry, "node1") == ["failed"]
    assert registry.profile_images() == {PROFILE: OLD}
    # Not rebooted, so not moved: no pin sends it to the target at its next boot.
    assert NODES["node1"] not in registry.image_pins()
    assert NODES["solo"] in registry.image_pins()  # moved already: stays until the roll ends


def test_a_node_that_never_comes_back_times_out(registry: Registry) -> None:
    lab = Lab(registry, silent=frozenset({"solo"}))
    report = lab.roll(timeout=30).run(roll_plan(registry))
    assert not report.ok
    assert lab.rebooted == ["solo"]
    assert report.left == ["node1", "node2", "node0"]
    error = report.done[-1].error
    assert error is not None and error.startswith("not back within 30 s")
    assert 30 <= lab.skew <= 32  # it waited the timeout on the fake clock, not much more
    assert roll_steps(registry, "solo") == ["reboot", "failed"]
    assert registry.profile_images() == {PROFILE: OLD}


def test_a_failed_node_is_enrolled_again_before_its_reboot(registry: Registry) -> None:
    registry.transition(NODES["node2"], NodeEvent.FAIL, reason="smoke: no answer")
    lab = Lab(registry)
    the_plan = roll_plan(registry)
    assert [s.name for s in the_plan.steps] == ["node2", "solo", "node1", "node0"]
    report = lab.roll().run(the_plan)
    assert report.ok
    assert lab.state_at_reboot["node2"] is NodeState.ENROLLED
    node2 = registry.node(NODES["node2"])
    assert node2 is not None and node2.state is NodeState.SERVING
