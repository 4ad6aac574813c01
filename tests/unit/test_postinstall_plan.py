"""Post-install recipes and plans: every shipped profile renders; bad recipes are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.config import DEFAULT_HWPROFILES
from provisioner.postinstall.plan import Download, Member, plan
from provisioner.postinstall.recipes import RecipeError, parse_recipe
from provisioner.profiles import load_profiles
from provisioner.records import Cluster

ARTIFACT = Download(
    "llama.cpp-b1-cpu-x86-64-v2",
    "llama.cpp-b1-cpu-x86-64-v2.tar.gz",
    "http://10.99.0.1:8080/artifacts/llama.cpp-b1-cpu-x86-64-v2.tar.gz",
    "a" * 64,
    binaries={"server": "bin/llama-server", "rpc": "bin/rpc-server"},
)
MODEL = Download("smollm2", "smollm2.gguf", "http://10.99.0.1:8080/models/smollm2.gguf", "b" * 64)


def members(profile: str, drivers: tuple[str, ...] = ()) -> list[Member]:
    return [
        Member(f"node{i}", f"52:54:00:00:00:0{i}", f"10.99.0.10{i}", profile, drivers, threads=4)
        for i in range(3)
    ]


def cluster() -> Cluster:
    return Cluster("v100s", "llama-rpc", "smollm2", "node0", ("node1", "node2"))


def test_the_head_knows_its_workers_and_workers_only_let_the_head_in() -> None:
    plans = plan(
        cluster(), members("qemu-lab"), control_url="http://10.99.0.1:8080",
        artifact=ARTIFACT, model=MODEL, engine_recipes=("llama-rpc",),
    )  # fmt: skip
    head, worker = plans[0], plans[1]
    assert head.role == "head" and worker.role == "worker"
    assert [s.name for s in head.steps] == [
        "hostname",
        "llama.cpp runtime",
        "model",
        "llama-server",
    ]
    unit = dict((s.name, s) for s in head.steps)["llama-server"]
    assert unit.put is not None and unit.put[0] == "/etc/systemd/system/llama-server.service"
    text = unit.put[1].decode()
    assert "--rpc 10.99.0.101:50052,10.99.0.102:50052" in text
    assert "--parallel 1" in text and "Restart=always" in text and "LimitNOFILE=65535" in text
    assert "MemoryMax=" in text
    steps = dict((s.name, s) for s in worker.steps)
    rpc = steps["rpc server"].put
    assert rpc is not None
    assert "--host 10.99.0.101 --port 50052 --threads 4" in rpc[1].decode()  # never 0.0.0.0
    nft = steps["rpc firewall rules"].put
    assert nft is not None and "ip saddr 10.99.0.100 accept" in nft[1].decode()
    fetch = steps["llama.cpp runtime"]
    assert ARTIFACT.sha256 in fetch.check and "sha256sum -c --status" in fetch.action
    assert ARTIFACT.url in fetch.action and ".provisioner-sha256" in fetch.verify
    assert "model" not in steps  # only the head loads the model


PROFILES = load_profiles(DEFAULT_HWPROFILES)


@pytest.mark.parametrize("name", PROFILES.names)
def test_every_shipped_profile_renders(name: str) -> None:
    profile = PROFILES.get(name)
    assert profile is not None
    plans = plan(
        cluster(), members(profile.name, profile.drivers), control_url="http://10.0.0.1:8080",
        artifact=ARTIFACT, model=MODEL, engine_recipes=("llama-rpc",),
    )  # fmt: skip
    for node_plan in plans:
        assert node_plan.steps[0].name == "hostname"
        for step in node_plan.steps:
            assert "{{" not in step.action and "{{" not in step.check
    if "nvidia-driver" in profile.drivers:
        action = next(s.action for s in plans[0].steps if s.name == "nvidia driver 580")
        before_turing = profile.name in ("nvidia-v100s", "nvidia-p40")
        assert ("cuda-drivers" in action) is before_turing
        assert ("nvidia-open" in action) is not before_turing


BAD = [
    ("name: x\nsteps: []\n", "steps: a non-empty list"),
    ("name: x\ncolour: red\nsteps: [{name: a, command: {check: c, action: a}}]\n", "unknown key"),
    ("name: x\nsteps:\n  - name: a\n    command: {check: c}\n", "command needs action"),
    ("name: x\nsteps:\n  - name: a\n    file: {path: /p}\n", "give template or content"),
    ("name: x\nsteps:\n  - name: a\n    roles: [boss]\n    command: {check: c, action: a}\n",
     "roles among"),
    ("name: x\nsteps:\n  - {name: a, command: {check: c, action: a}}\n"
     "  - {name: a, command: {check: c, action: a}}\n", "same name"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "reason"), BAD)
def test_bad_recipes_are_refused_with_file_line_and_reason(text: str, reason: str) -> None:
    with pytest.raises(RecipeError, match=reason) as info:
        parse_recipe(text, Path("/r/x.yaml"))
    assert str(info.value).startswith("/r/x.yaml:")
