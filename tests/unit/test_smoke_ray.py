"""What Ray says of its members: ``ray.nodes()`` output captured from a real 2-node Ray
2.60 cluster (tests/fixtures/ray/README.md) parsed and checked; bad answers fail a check
with a reason and never raise."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from provisioner.smoke.ray import (
    RayNode,
    RayOutputError,
    parse_ray_nodes,
    ray_checks,
    ray_member_checks,
    ray_nodes_command,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ray"
HEAD_ID = "b3977bd937c8ed8ddcf0d197a6cb67d49223fcca46f2efae8c81a01d"
WORKER_ID = "7bd8fcbcbad64f9183182b7b9668c4ce076dccf48e192b9f74e30088"
# the fixtures' two nodes share 127.0.0.1: their node manager ports tell them apart
LOOPBACK = {"head": "127.0.0.1:46389", "worker": "127.0.0.1:48523"}


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def moved(name: str, addresses: list[str]) -> str:
    """A fixture with its nodes at other addresses, in order (a real cluster's shape)."""
    nodes = json.loads(fixture(name))
    for node, address in zip(nodes, addresses, strict=True):
        node["NodeManagerAddress"] = address
    return json.dumps(nodes)


TWO = moved("nodes-two-alive.json", ["10.0.0.1", "10.0.0.2"])
REAL = {"head": "10.0.0.1", "worker": "10.0.0.2"}


# ---------------------------------------------------------------------- command


def test_command_is_one_quoted_python_line() -> None:
    cmd = ray_nodes_command("/opt/vllm/smollm2/bin/")
    argv = shlex.split(cmd)
    assert argv[:2] == ["/opt/vllm/smollm2/bin/python", "-c"]
    assert "ray.init(address='auto'" in argv[2] and "json.dumps(ray.nodes())" in argv[2]
    compile(argv[2], "<ray_nodes_command>", "exec")
    assert "address='10.0.0.1:6379'" in shlex.split(ray_nodes_command("/v/bin", "10.0.0.1:6379"))[2]
    # the lead puts the auth environment in front of it
    assert shlex.split(f"RAY_AUTH_MODE=token {cmd}")[1] == argv[0]


# ---------------------------------------------------------------------- parse


def test_parse_two_live_nodes() -> None:
    head, worker = parse_ray_nodes(fixture("nodes-two-alive.json"))
    assert head == RayNode(
        node_id=HEAD_ID,
        address="127.0.0.1",
        alive=True,
        cpus=2.0,
        gpus=0.0,
        port=46389,
        hostname="vm",
        resources=head.resources,
    )
    assert head.resources["node:__internal_head__"] == 1.0
    assert (worker.node_id, worker.alive, worker.cpus, worker.gpus) == (WORKER_ID, True, 1.0, 1.0)
    assert worker.resources["worker_mark"] == 1.0 and worker.where == "127.0.0.1:48523"


def test_parse_a_stopped_node() -> None:
    head, worker = parse_ray_nodes(fixture("nodes-worker-stopped.json"))
    assert head.alive and not worker.alive
    assert worker.resources == {} and (worker.cpus, worker.gpus) == (0.0, 0.0)
    assert worker.death == "received SIGTERM"


def test_parse_skips_log_lines_around_the_list() -> None:
    noisy = (
        "[2026-11-25 19:32:35,982 W 4882 4882] gcs_client.cc:210: something\n"
        + fixture("nodes-two-alive.json").strip()
        + "\n[not json either]\n"
    )
    assert [n.node_id for n in parse_ray_nodes(noisy)] == [HEAD_ID, WORKER_ID]
    assert parse_ray_nodes("[]") == []


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no node list in Ray's answer: nothing"),
        ("{}", "no node list"),
        ('["a"]', "node 0 is not an object"),
        ('[{"NodeID": "x", "Alive": true}]', "node 0 has no NodeID or NodeManagerAddress"),
        ('[{"NodeID": "x", "NodeManagerAddress": "10.0.0.1"}]', "neither Alive true nor false"),
        (
            '[{"NodeID": "x", "NodeManagerAddress": "10.0.0.1", "Alive": true, "Resources": []}]',
            "Resources is not an object",
        ),
        (fixture("status-v.txt"), "no node list"),
        (fixture("list-nodes-no-dashboard.txt"), "Failed to make request"),
    ],
)
def test_parse_refuses_what_is_no_node_list(text: str, reason: str) -> None:
    with pytest.raises(RayOutputError) as info:
        parse_ray_nodes(text)
    assert reason in str(info.value)


def test_parse_names_a_refused_token() -> None:
    """The real answer of a driver without the token: retries, then a ConnectionError."""
    with pytest.raises(RayOutputError) as info:
        parse_ray_nodes(fixture("nodes-no-token.txt"))
    message = str(info.value)
    assert "ConnectionError: Failed to connect to Ray cluster" in message
    assert "refused the auth token" in message


def test_odd_values_are_dropped_not_fatal() -> None:
    (node,) = parse_ray_nodes(
        '[{"NodeID": "x", "NodeManagerAddress": "10.0.0.1", "alive": true, '
        '"NodeManagerPort": "7", "Resources": {"CPU": 4, "GPU": true, "note": "hi"}}]'
    )
    assert (node.alive, node.cpus, node.gpus, node.port, node.resources) == (
        True,
        4.0,
        0.0,
        None,
        {"CPU": 4.0},
    )


# ---------------------------------------------------------------------- member checks


def test_members_at_their_addresses() -> None:
    checks = ray_member_checks(parse_ray_nodes(TWO), REAL, None)
    assert [c.name for c in checks] == ["ray_member[head]", "ray_member[worker]", "ray_nodes"]
    assert all(c.passed for c in checks), checks
    head, worker, count = checks
    assert head.value == 2 and head.floor is None  # no GPUs: its CPU count
    assert head.detail == "node b3977bd937c8 at 10.0.0.1:46389: 2 CPU, 0 GPU, 23.1 GiB memory"
    assert worker.value == 1  # its GPU count
    assert worker.detail.endswith("1 CPU, 1 GPU, 22.9 GiB memory, 1 worker_mark")
    assert (count.value, count.floor, count.detail) == (2, 2, "2 live, 0 dead")


def test_gpus_expected() -> None:
    nodes = parse_ray_nodes(TWO)
    ok = ray_member_checks(nodes, REAL, {"head": 0, "worker": 1})
    assert [(c.passed, c.value, c.floor) for c in ok[:2]] == [(True, 0, 0), (True, 1, 1)]
    short = ray_member_checks(nodes, REAL, {"worker": 2})
    assert not short[1].passed and short[1].value == 1 and short[1].floor == 2
    assert short[1].detail.startswith("2 GPU expected; node 7bd8fcbcbad6")
    assert short[0].passed and short[2].passed


def test_a_stopped_member() -> None:
    stopped = moved("nodes-worker-stopped.json", ["10.0.0.1", "10.0.0.2"])
    head, worker, count = ray_member_checks(parse_ray_nodes(stopped), REAL, None)
    assert head.passed and not worker.passed and not count.passed
    assert worker.detail == "Ray has the node at 10.0.0.2 dead: received SIGTERM"
    assert (count.value, count.floor, count.detail) == (1, 2, "1 live, 1 dead")


def test_a_member_ray_never_saw_and_a_stranger() -> None:
    nodes = parse_ray_nodes(TWO)
    head, lost, count = ray_member_checks(nodes, {"head": "10.0.0.1", "lost": "10.0.0.9"}, None)
    assert head.passed and not lost.passed
    assert lost.detail == "no node at 10.0.0.9 in Ray's view (live: 10.0.0.1:46389, 10.0.0.2:48523)"
    assert count.passed  # two live nodes for two members, but one of them is nobody's
    assert count.detail == "2 live, 0 dead; live and no member: 10.0.0.2:48523"
    (alone_check, alone_count) = ray_member_checks(nodes, {"head": "10.0.0.1"}, None)
    assert alone_check.passed and not alone_count.passed


def test_members_sharing_an_address() -> None:
    """On loopback both nodes are 127.0.0.1: the node manager port tells them apart; a
    bare ip takes any live node there, but each node answers for one member only."""
    nodes = parse_ray_nodes(fixture("nodes-two-alive.json"))
    checks = ray_member_checks(nodes, LOOPBACK, {"worker": 1})
    assert all(c.passed for c in checks), checks
    assert [c.detail.split(":")[0] for c in checks[:2]] == [
        f"node {HEAD_ID[:12]} at 127.0.0.1",
        f"node {WORKER_ID[:12]} at 127.0.0.1",
    ]
    bare = ray_member_checks(nodes, {"a": "127.0.0.1", "b": "127.0.0.1"}, None)
    assert all(c.passed for c in bare)
    assert {c.detail.split()[1] for c in bare[:2]} == {HEAD_ID[:12], WORKER_ID[:12]}
    # the port-pinned member chooses first, whatever the order
    mixed = ray_member_checks(nodes, {"a": "127.0.0.1", "w": "127.0.0.1:46389"}, None)
    assert mixed[1].detail.startswith(f"node {HEAD_ID[:12]}")
    assert mixed[0].detail.startswith(f"node {WORKER_ID[:12]}")
    three = ray_member_checks(nodes, {"a": "127.0.0.1", "b": "127.0.0.1", "c": "127.0.0.1"})
    assert [c.passed for c in three] == [True, True, False, False]
    assert three[2].detail == "no live node at 127.0.0.1 left (taken by a, b)"


def test_ipv6_addresses() -> None:
    node = RayNode("n", "fd00::2", True, cpus=8, port=7000)
    assert ray_member_checks([node], {"h": "fd00::2"})[0].passed
    assert ray_member_checks([node], {"h": "[fd00::2]:7000"})[0].passed
    assert not ray_member_checks([node], {"h": "[fd00::2]:7001"})[0].passed


# ---------------------------------------------------------------------- never raises


@pytest.mark.parametrize(
    "text",
    ["", "garbage", "[1, 2]", fixture("status-v.txt"), fixture("nodes-no-token.txt")],
)
def test_a_bad_answer_is_a_failed_check(text: str) -> None:
    checks = ray_checks(text, REAL, {"worker": 1})
    assert [c.name for c in checks] == ["ray_member[head]", "ray_member[worker]", "ray_nodes"]
    assert not any(c.passed for c in checks)
    assert [c.floor for c in checks] == [None, 1, 2]
    assert checks[0].detail == "no node list from Ray"
    assert checks[2].detail.startswith(("no node list in Ray's answer", "node 0"))


def test_ray_checks_on_a_good_answer() -> None:
    assert all(c.passed for c in ray_checks(TWO, REAL))
