"""Post-install recipes and plans: every shipped profile renders; bad recipes are refused."""

from __future__ import annotations

import re
from dataclasses import replace
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


def members(
    profile: str, drivers: tuple[str, ...] = (), gpu: dict[str, object] | None = None
) -> list[Member]:
    return [
        Member(
            f"node{i}",
            f"52:54:00:00:00:0{i}",
            f"10.99.0.10{i}",
            profile,
            drivers,
            threads=4,
            gpu=gpu,
        )
        for i in range(3)
    ]


def cluster() -> Cluster:
    return Cluster("v100s", "llama-rpc", "smollm2", "node0", ("node1", "node2"))


def test_the_head_knows_its_workers_and_workers_only_let_the_head_in() -> None:
    firewall = {
        "node0": {"firewall": {"control_only": [8080], "head_only": []}},
        **{w: {"firewall": {"control_only": [], "head_only": [50052]}} for w in ("node1", "node2")},
    }
    plans = plan(
        cluster(), members("qemu-lab"), control_url="http://10.99.0.1:8080",
        artifact=ARTIFACT, model=MODEL, engine_recipes=("llama-rpc",), extra=firewall,
        engine_key="k3y",
    )  # fmt: skip
    head, worker = plans[0], plans[1]
    assert head.role == "head" and worker.role == "worker"
    assert [s.name for s in head.steps] == [
        "cache disk",
        "hostname",
        "node firewall rules",
        "node firewall loaded",
        "llama.cpp runtime packages",
        "llama.cpp runtime",
        "llama.cpp libraries resolve",
        "model",
        "api key",
        "llama-server",
    ]
    head_steps = dict((s.name, s) for s in head.steps)
    unit = head_steps["llama-server"]
    assert unit.put is not None and unit.put[0] == "/etc/systemd/system/llama-server.service"
    text = unit.put[1].decode()
    assert "--rpc 10.99.0.101:50052,10.99.0.102:50052" in text
    # The API answers on the cluster address with the engine key only (from a 0600 file).
    assert "--host 10.99.0.100 " in text and "0.0.0.0" not in text
    assert "--api-key-file /etc/provisioner/llama-server.key" in text and "k3y" not in text
    assert head_steps["api key"].put == ("/etc/provisioner/llama-server.key", b"k3y\n", 0o600)
    # The node's firewall drops by default; the head's API only from the control node.
    node_nft = head_steps["node firewall rules"].put
    assert node_nft is not None
    rules = node_nft[1].decode()
    assert "policy drop;" in rules
    assert "elements = { 10.99.0.1, 10.99.0.100, 10.99.0.101, 10.99.0.102 }" in rules
    assert "tcp dport 8080 ip saddr 10.99.0.1 accept\n\t\ttcp dport 8080 counter drop" in rules
    # The node exporter (in the image, on 9100) answers the control node's Prometheus only:
    # not the cluster's members, whom the set below lets in to everything else.
    exporter = "tcp dport 9100 ip saddr 10.99.0.1 accept\n\t\ttcp dport 9100 counter drop\n"
    assert exporter in rules and rules.index(exporter) < rules.index("ip saddr @peers accept")
    worker_nft = dict((s.name, s) for s in worker.steps)["node firewall rules"].put
    assert worker_nft is not None
    assert "tcp dport 50052 ip saddr 10.99.0.100 accept" in worker_nft[1].decode()
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
    gpu = profile.gpu.__dict__ if profile.gpu else None
    plans = plan(
        cluster(), members(profile.name, profile.drivers, gpu), control_url="http://10.0.0.1:8080",
        artifact=ARTIFACT, model=MODEL, engine_recipes=("llama-rpc",),
    )  # fmt: skip
    for node_plan in plans:
        assert [s.name for s in node_plan.steps[:2]] == ["cache disk", "hostname"]
        for step in node_plan.steps:
            assert "{{" not in step.action and "{{" not in step.check
    if "nvidia-driver" in profile.drivers:
        action = next(s.action for s in plans[0].steps if s.name == "nvidia driver 580")
        # the open modules need Turing or newer: Pascal and Volta, family or card, do not
        before_turing = profile.gpu is not None and profile.gpu.architecture in ("Pascal", "Volta")
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


@pytest.mark.parametrize(
    ("artifact", "reason"),
    [
        (replace(ARTIFACT, file="../x.tar.gz"), "file '../x.tar.gz'"),
        (replace(ARTIFACT, name="a b"), "name 'a b'"),
        (replace(ARTIFACT, url="file:///etc/x"), "url"),
        (replace(ARTIFACT, sha256="z" * 64), "sha256"),
        (replace(ARTIFACT, binaries={"rpc": "bin/$(id)"}), "file"),
    ],
)
def test_downloads_whose_names_would_reach_paths_and_commands_are_refused(
    artifact: Download, reason: str
) -> None:
    with pytest.raises(RecipeError, match=r"^artifact: .*" + re.escape(reason)):
        plan(
            cluster(), members("qemu-lab"), control_url="http://10.99.0.1:8080",
            artifact=artifact, model=MODEL, engine_recipes=("llama-rpc",),
        )  # fmt: skip


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("unit: {name: '../../../root/x.service', content: x}", "unit '../../../root/x.service'"),
        ("file: {path: '/etc/../x', content: x}", "not an absolute path"),
        ('file: {path: "/etc/it\'s", content: x}', "not an absolute path"),
        ("fetch: {url: 'http://c/x', sha256: 'nothex', dest: /x}", "sha256 'nothex'"),
    ],
)
def test_unit_names_paths_and_sums_are_checked_where_the_plan_uses_them(
    tmp_path: Path, body: str, reason: str
) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "base.yaml").write_text(f"name: base\nsteps:\n  - name: s\n    {body}\n")
    with pytest.raises(RecipeError, match=re.escape(reason)):
        plan(
            cluster(), members("qemu-lab"), control_url="http://c", artifact=None, model=None,
            engine_recipes=(), recipes_dir=tmp_path,
        )  # fmt: skip


def test_a_value_that_cannot_be_escaped_names_the_recipe_step_and_value(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "base.yaml").write_text(
        "name: base\nsteps:\n  - name: s\n"
        "    command: {check: 'true', action: 'echo {{ v | sh }}'}\n"
    )
    with pytest.raises(RecipeError, match=r"base.yaml:3: step 's': sh: 'a\\nb' holds a line br"):
        plan(
            cluster(), members("qemu-lab"), control_url="http://c", artifact=None, model=None,
            engine_recipes=(), recipes_dir=tmp_path, extra={"node0": {"v": "a\nb"}},
        )  # fmt: skip


@pytest.mark.root
def test_the_firewall_files_load_in_nft_on_a_node_without_etc_protocols() -> None:
    """A minimal image has no /etc/protocols: nft then knows only its own keywords (a lab
    node refused 'ipv6-icmp' once). Every rendered .nft file is checked by nft itself, in a
    mount namespace where /etc/protocols is empty."""
    import os
    import shutil
    import subprocess

    from tests.conftest import unavailable

    if shutil.which("nft") is None or shutil.which("unshare") is None or os.geteuid() != 0:
        unavailable("needs root, nft and unshare (scripts/setup installs nftables)")
    firewall = {
        "node0": {"firewall": {"control_only": [8080], "head_only": []}},
        **{w: {"firewall": {"control_only": [], "head_only": [50052]}} for w in ("node1", "node2")},
    }
    plans = plan(
        cluster(), members("qemu-lab"), control_url="http://10.99.0.1:8080",
        artifact=ARTIFACT, model=MODEL, engine_recipes=("llama-rpc",), extra=firewall,
        gateways=("10.99.0.7", "10.99.0.1"),  # a gateway elsewhere; the control's again
        exporter_port=9200, scrapers=("10.99.0.9",),  # a Prometheus elsewhere
    )  # fmt: skip
    head_rules = next(s.put[1].decode() for s in plans[0].steps
                      if s.put and s.put[0].endswith("node.nft"))  # fmt: skip
    assert (
        "tcp dport 8080 ip saddr 10.99.0.1 accept\n\t\ttcp dport 8080 ip saddr 10.99.0.7 "
        "accept\n\t\ttcp dport 8080 counter drop"
    ) in head_rules
    assert (
        "tcp dport 9200 ip saddr 10.99.0.1 accept\n\t\ttcp dport 9200 ip saddr 10.99.0.9 "
        "accept\n\t\ttcp dport 9200 counter drop"
    ) in head_rules
    files = [s.put[1] for p in plans for s in p.steps if s.put and s.put[0].endswith(".nft")]
    assert len(files) == 5  # a node table on each of the three, an RPC table on each worker
    for text in files:
        done = subprocess.run(
            ["unshare", "--mount", "sh", "-c",
             "mount --bind /dev/null /etc/protocols && nft -c -f -"],
            input=text, capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()


def test_a_cache_disk_is_mounted_first_and_keeps_the_rpc_tensor_cache() -> None:
    by_id = "/dev/disk/by-id/virtio-lab-disk0"
    nodes = members("generic-cpu")
    nodes[1] = replace(nodes[1], cache_disk=by_id)  # one worker has a cache disk
    plans = plan(
        cluster(), nodes, control_url="http://10.99.0.1:8080", artifact=ARTIFACT, model=MODEL,
        engine_recipes=("llama-rpc",),
    )  # fmt: skip
    steps = [{s.name: s for s in p.steps} for p in plans]
    with_disk, without = steps[1], steps[2]
    assert with_disk["cache disk"].check == "mountpoint -q /var/lib/provisioner"
    assert f"mount -o nodev,nosuid {by_id}-part1 /var/lib/provisioner" in (
        with_disk["cache disk"].action
    )
    assert without["cache disk"].check == "true"  # no disk: nothing to mount, ever
    unit = with_disk["rpc server"].put
    other = without["rpc server"].put
    assert unit is not None and other is not None
    assert "--cache" in unit[1].decode() and "LLAMA_CACHE=/var/lib/provisioner/" in unit[1].decode()
    assert "--cache" not in other[1].decode() and "LLAMA_CACHE" not in other[1].decode()
    # The runtime already on the disk with its sha256 is not fetched again, only unpacked.
    fetch = with_disk["llama.cpp runtime"].action
    assert (
        fetch.index("if ! {") < fetch.index("curl") < fetch.index("; fi;") < fetch.index("tar -xzf")
    )
