"""The post-install fan-out against fake nodes (tests/fakes/ssh.py): what runs on a node
for each step, what the registry keeps, how a failed node resumes. No sockets."""

from __future__ import annotations

import inspect
import re
import shlex
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.postinstall import fanout
from provisioner.postinstall.plan import Member, NodePlan, Step, plan
from provisioner.postinstall.ssh import Connection
from provisioner.postinstall.ssh_paramiko import SshConnection
from provisioner.profiles import Engine
from provisioner.records import Cluster
from provisioner.registry import Registry
from provisioner.states import NodeEvent, NodeState
from tests.fakes.ssh import FakeConnection, FakeNode, Put, Reply, replies
from tests.unit.test_postinstall_plan import ARTIFACT, MODEL

NODE0 = Member("node0", "52:54:00:00:00:00", "10.99.0.100", "qemu-lab", threads=4)
NODE1 = Member("node1", "52:54:00:00:00:01", "10.99.0.101", "qemu-lab", threads=4)


def command(name: str) -> Step:
    """A command step whose commands say which step and which part they are."""
    return Step(name, "test", "command", f"check {name}", f"do {name}", f"verify {name}")


def file(name: str, path: str, data: bytes) -> Step:
    same = f"same {path}"
    return Step(name, "test", "file", same, "true", same,
                put=(path, data, 0o600), same=same, changed_action="true")  # fmt: skip


def unit(name: str) -> Step:
    path = f"/etc/systemd/system/{name}"
    return Step(name, "test", "unit", f"same {path} && active {name}", f"start {name}",
                f"verify {name}", put=(path, b"[Service]\n", 0o644), same=f"same {path}",
                changed_action=f"restart {name}")  # fmt: skip


def mkdir(path: str) -> str:
    """What the fan-out runs before it uploads ``path``: its folder, shell-quoted."""
    return f"mkdir -p {shlex.quote(path.rsplit('/', 1)[0])}"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry.db")
    for member in (NODE0, NODE1):
        reg.touch_node(member.mac)
        reg.transition(member.mac, NodeEvent.INVENTORY)
        reg.transition(member.mac, NodeEvent.ENROLL)
    yield reg
    reg.close()


class Lab:
    """Fake nodes by hostname; ``connect`` is what the fan-out is given; progress lines."""

    def __init__(self, *nodes: FakeNode):
        self.nodes = {n.name: n for n in nodes}
        self.lines: list[str] = []

    def connect(self, node_plan: NodePlan) -> Connection:
        return self.nodes[node_plan.member.hostname].connect()

    def run(self, registry: Registry, *plans: NodePlan) -> list[fanout.NodeRun]:
        return fanout.run(registry, plans, self.connect, self.lines.append)


def steps_kept(registry: Registry, member: Member) -> list[tuple[str, str]]:
    return [(str(r["step"]), str(r["status"])) for r in registry.steps(member.mac)]


def state(registry: Registry, member: Member) -> NodeState:
    node = registry.node(member.mac)
    assert node is not None
    return node.state


# ---------------------------------------------------------------------------- the fake


SEAM = ["__enter__", "__exit__", "close", "put", "run"]


def test_the_fake_and_the_real_connection_both_fit_the_seam() -> None:
    protocol = [m for m in vars(Connection) if m in SEAM or not m.startswith("_")]
    assert sorted(protocol) == SEAM  # a method added to the seam: add it to the fake too
    for name in SEAM:
        seam = list(inspect.signature(getattr(Connection, name)).parameters)
        assert list(inspect.signature(getattr(FakeConnection, name)).parameters) == seam
        assert set(seam) <= set(inspect.signature(getattr(SshConnection, name)).parameters)


# ---------------------------------------------------------------------------- steps


def test_a_step_whose_check_passes_runs_nothing_else(registry: Registry) -> None:
    node = FakeNode("node0")  # every command exits 0: every check passes
    lab = Lab(node)
    steps = (command("hostname"), unit("llama-server.service"))
    [result] = lab.run(registry, NodePlan(NODE0, "head", steps))
    assert node.commands == [steps[0].check, steps[1].check]
    assert node.puts == []
    assert [(o.step, o.status) for o in result.outcomes] == [
        ("hostname", "unchanged"),
        ("llama-server.service", "unchanged"),
    ]
    assert result.ok and result.changed == [] and result.resumed_at is None
    assert steps_kept(registry, NODE0) == [
        ("hostname", "unchanged"),
        ("llama-server.service", "unchanged"),
    ]
    assert state(registry, NODE0) is NodeState.ENROLLED
    assert node.connections[0].closed
    assert lab.lines[-1].startswith("node0      done: 0 changed, 2 unchanged in ")


def test_a_step_whose_check_fails_runs_its_action_then_its_verify(registry: Registry) -> None:
    node = FakeNode("node0")
    node.on("check hostname", exit_status=1)
    node.on("do hostname", stdout="set to node0\n")
    [result] = Lab(node).run(registry, NodePlan(NODE0, "head", (command("hostname"),)))
    assert node.commands == ["check hostname", "do hostname", "verify hostname"]
    [outcome] = result.outcomes
    assert (outcome.status, outcome.exit_status, outcome.output) == ("changed", 0, "set to node0")
    assert result.changed == ["hostname"]
    assert steps_kept(registry, NODE0) == [("hostname", "changed")]


def test_a_failing_action_fails_the_node_naming_the_step(registry: Registry) -> None:
    node = FakeNode("node0")
    node.on(re.compile(r"^check "), exit_status=1)
    node.on("do model", exit_status=22, stderr="curl: (22) 404 Not Found\n")
    lab = Lab(node)
    steps = (command("runtime"), command("model"), command("server"))
    [result] = lab.run(registry, NodePlan(NODE0, "head", steps))
    assert node.commands == [
        "check runtime", "do runtime", "verify runtime", "check model", "do model",
    ]  # fmt: skip
    assert not result.ok
    assert result.error == "step 'model' failed (exit 22): curl: (22) 404 Not Found"
    assert [(o.step, o.status, o.exit_status) for o in result.outcomes] == [
        ("runtime", "changed", 0),
        ("model", "failed", 22),
    ]
    assert steps_kept(registry, NODE0) == [("runtime", "changed"), ("model", "failed")]
    assert registry.steps(NODE0.mac)[-1]["output"] == "curl: (22) 404 Not Found"
    assert state(registry, NODE0) is NodeState.FAILED
    assert fanout.last_failed_step(registry, NODE0.mac) == "model"
    assert (
        lab.lines[-1]
        == "node0      failed: step 'model' failed (exit 22): curl: (22) 404 Not Found"
    )


def test_a_failing_verify_fails_the_step_with_both_outputs(registry: Registry) -> None:
    node = FakeNode("node0")
    node.on("check server", exit_status=1)
    node.on("do server", stdout="started\n")
    node.on("verify server", exit_status=3, stdout="inactive (dead)\n")
    [result] = Lab(node).run(registry, NodePlan(NODE0, "head", (command("server"),)))
    [outcome] = result.outcomes
    assert outcome.status == "failed" and outcome.exit_status == 3
    assert outcome.output == "verification failed: inactive (dead)\n(action output: started)"
    assert state(registry, NODE0) is NodeState.FAILED


def test_a_rerun_resumes_after_the_failed_step_and_repairs_the_node(
    registry: Registry,
) -> None:
    node = FakeNode("node0")
    node.on("check model", exit_status=1)
    node.on("do model", exit_status=1, stderr="disk full")
    lab = Lab(node)
    node_plan = NodePlan(NODE0, "head", (command("runtime"), command("model")))
    [first] = lab.run(registry, node_plan)
    assert not first.ok and state(registry, NODE0) is NodeState.FAILED

    node.on("do model", stdout="fetched")  # the operator freed some space
    del node.log[:]
    [second] = lab.run(registry, node_plan)
    assert second.ok and second.resumed_at == "model"
    assert "node0      resuming: the last run failed at 'model'" in lab.lines
    assert node.commands == ["check runtime", "check model", "do model", "verify model"]
    assert [(o.step, o.status) for o in second.outcomes] == [
        ("runtime", "unchanged"),
        ("model", "changed"),
    ]
    assert state(registry, NODE0) is NodeState.ENROLLED  # repaired
    assert fanout.last_failed_step(registry, NODE0.mac) is None
    assert len(node.connections) == 2 and all(c.closed for c in node.connections)


def test_one_node_failing_does_not_stop_the_others(registry: Registry) -> None:
    both_started = threading.Barrier(2, timeout=5)  # the nodes run at once, or this breaks

    def meet(command: str) -> Reply:
        both_started.wait()
        return Reply(exit_status=1)

    bad, good = FakeNode("node0"), FakeNode("node1")
    for node in (bad, good):
        node.on("check base", meet)
    bad.on("do base", exit_status=100, stderr="E: Unable to locate package")
    steps = (command("base"), command("server"))
    results = Lab(bad, good).run(
        registry, NodePlan(NODE0, "head", steps), NodePlan(NODE1, "worker", steps)
    )
    assert [r.hostname for r in results] == ["node0", "node1"]  # the plans' order
    assert results[0].error == "step 'base' failed (exit 100): E: Unable to locate package"
    assert results[1].ok and results[1].changed == ["base"]
    assert bad.commands == ["check base", "do base"]
    assert good.commands == ["check base", "do base", "verify base", "check server"]
    assert state(registry, NODE0) is NodeState.FAILED
    assert state(registry, NODE1) is NodeState.ENROLLED


def test_a_node_that_cannot_be_reached_fails_naming_the_node(registry: Registry) -> None:
    node = FakeNode("node1", unreachable=True)
    [result] = Lab(node).run(registry, NodePlan(NODE1, "worker", (command("base"),)))
    assert result.error == "node1 (fake): cannot connect: connection refused"
    assert result.outcomes == [] and node.log == []
    assert steps_kept(registry, NODE1) == [("(connect)", "failed")]
    assert state(registry, NODE1) is NodeState.FAILED


def test_a_connection_lost_in_a_step_fails_that_step(registry: Registry) -> None:
    node = FakeNode("node0", drop_after=2)  # the node rebooted during the second step
    node.on("check server", exit_status=1)
    steps = (command("base"), command("server"))
    [result] = Lab(node).run(registry, NodePlan(NODE0, "head", steps))
    assert node.commands == ["check base", "check server"]
    assert result.error == (
        "step 'server': node0: running 'do server' failed: connection dropped (fake)"
    )
    assert steps_kept(registry, NODE0) == [("base", "unchanged"), ("server", "failed")]
    assert fanout.last_failed_step(registry, NODE0.mac) == "server"
    assert state(registry, NODE0) is NodeState.FAILED


# ---------------------------------------------------------------------------- files, units


RULES = "/etc/nftables.d/rpc.nft"


@pytest.mark.parametrize("on_node", [None, b"ip saddr 10.99.0.9 accept\n"])
def test_a_file_that_differs_is_uploaded_then_its_then_runs(
    registry: Registry, on_node: bytes | None
) -> None:
    data = b"ip saddr 10.99.0.100 accept\n"
    step = file("rpc firewall rules", RULES, data)  # check, same and verify: one command
    node = FakeNode("node1", files={RULES: on_node} if on_node else {})
    node.on(step.check, node.file_is(RULES, data))
    [result] = Lab(node).run(registry, NodePlan(NODE1, "worker", (step,)))
    assert node.log == [
        step.check, step.same, mkdir(RULES), Put(RULES, data, 0o600), "true", step.verify,
    ]  # fmt: skip
    assert node.files == {RULES: data}
    assert result.ok and result.changed == ["rpc firewall rules"]


def test_a_file_already_there_is_not_uploaded(registry: Registry) -> None:
    data = b"ip saddr 10.99.0.100 accept\n"
    step = file("rpc firewall rules", RULES, data)
    node = FakeNode("node1", files={RULES: data})
    node.on(step.check, node.file_is(RULES, data))
    [result] = Lab(node).run(registry, NodePlan(NODE1, "worker", (step,)))
    assert node.log == [step.check]
    assert result.ok and result.changed == []


def test_a_changed_unit_is_restarted_and_an_unchanged_stopped_one_only_started(
    registry: Registry,
) -> None:
    changed, stopped = unit("llama-server.service"), unit("llama-rpc.service")
    node = FakeNode("node0", files={"/etc/systemd/system/llama-rpc.service": b"[Service]\n"})
    for step in (changed, stopped):
        assert step.put is not None and step.same is not None
        node.on(step.check, exit_status=3)  # not active
        node.on(step.same, node.file_is(step.put[0], step.put[1]))
    [result] = Lab(node).run(registry, NodePlan(NODE0, "head", (changed, stopped)))
    path = "/etc/systemd/system/llama-server.service"
    assert node.log == [
        changed.check, changed.same, mkdir(path), Put(path, b"[Service]\n", 0o644),
        "restart llama-server.service", "verify llama-server.service",
        stopped.check, stopped.same, "start llama-rpc.service", "verify llama-rpc.service",
    ]  # fmt: skip
    assert result.changed == ["llama-server.service", "llama-rpc.service"]


# ---------------------------------------------------------------------------- real plans


def llama_plans() -> list[NodePlan]:
    cluster = Cluster("lab", Engine.LLAMA_RPC, "smollm2", "node0", ("node1",))
    return plan(
        cluster, [NODE0, NODE1], control_url="http://10.99.0.1:8080", artifact=ARTIFACT,
        model=MODEL, engine_recipes=("llama-rpc",),
    )  # fmt: skip


def test_a_plan_from_the_recipes_on_an_installed_node_runs_only_its_checks(
    registry: Registry,
) -> None:
    plans = llama_plans()
    head, worker = FakeNode("node0"), FakeNode("node1")
    results = Lab(head, worker).run(registry, *plans)
    assert all(r.ok and r.changed == [] for r in results)
    assert head.commands == [s.check for s in plans[0].steps]
    assert worker.commands == [s.check for s in plans[1].steps]
    assert head.puts == [] and worker.puts == []


def test_a_plan_from_the_recipes_on_a_fresh_node_writes_every_file(registry: Registry) -> None:
    [head_plan, _] = llama_plans()
    head = FakeNode("node0")
    for step in head_plan.steps:
        head.on(step.check, replies(Reply(exit_status=1), Reply()))  # done once its action ran
        if step.put is not None and step.same is not None:
            head.on(step.same, head.file_is(step.put[0], step.put[1]))
    [result] = Lab(head).run(registry, head_plan)
    assert result.ok, result.error
    assert result.changed == [s.name for s in head_plan.steps]
    assert head.puts == [Put(*s.put) for s in head_plan.steps if s.put is not None]
    units = [s for s in head_plan.steps if s.kind == "unit"]
    assert units and all(s.changed_action in head.commands for s in units)
    assert all(s.action not in head.commands for s in units)  # restarted, not started
