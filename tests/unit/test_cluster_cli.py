"""`cluster create`, `postinstall run --dry-run` on a registry, a model and an artifact."""

from __future__ import annotations

import json
import struct
import tarfile
from pathlib import Path

import pytest

from provisioner.artifacts.store import ArtifactStore, Manifest
from provisioner.cli import main
from provisioner.config import Mode, load_config, render_config
from provisioner.models.store import ModelStore
from provisioner.registry import Registry
from provisioner.states import NodeEvent

NODES = {f"node{i}": (f"52:54:00:aa:00:0{i}", f"10.30.0.10{i}") for i in range(3)}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "provisioner.toml"
    text = render_config(
        interface="eth0", address="10.30.0.1/24", mode=Mode.FULL,
        dhcp_range="10.30.0.100-10.30.0.120", state_dir=tmp_path / "state",
    )  # fmt: skip
    path.write_text(text)
    cfg = load_config(path)
    registry = Registry(cfg.registry_path)
    for name, (mac, ip) in NODES.items():
        registry.touch_node(mac, ip=ip)
        registry.set_hostname(mac, name)
        registry.store_inventory(mac, "{}")
        registry.set_profile(mac, "qemu-lab")
        registry.transition(mac, NodeEvent.MATCH)
        registry.transition(mac, NodeEvent.ENROLL)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + struct.pack("<I", 3) + bytes(64))
    ModelStore(cfg.state_dir / "models").add(str(gguf), "tiny")
    tarball = tmp_path / "l.tar.gz"
    with tarfile.open(tarball, "w:gz"):
        pass
    manifest = Manifest(
        "llama.cpp-b1-cpu-x86-64-v2", "llama.cpp-b1-cpu-x86-64-v2.tar.gz", "c" * 64, 1, "k",
        binaries={"server": "bin/llama-server", "rpc": "bin/rpc-server"}, built_at=1.0,
    )  # fmt: skip
    ArtifactStore(cfg.state_dir / "artifacts").publish(tarball, manifest)
    return path


def run(config: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--config", str(config), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_create_then_plan_wires_the_head_to_its_workers(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        config, capsys, "cluster", "create", "c1", "--model", "tiny", "--head", "node0",
        "--workers", "node1,node2", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["workers"] == ["node1", "node2"]
    code, out, _ = run(config, capsys, "postinstall", "run", "c1", "--dry-run", "--json")
    assert code == 0
    plans = {p["node"]: p for p in json.loads(out)}
    assert plans["node0"]["role"] == "head" and plans["node1"]["role"] == "worker"
    head_steps = [s["name"] for s in plans["node0"]["steps"]]
    assert head_steps == [
        "hostname", "node firewall rules", "node firewall loaded", "llama.cpp runtime", "model",
        "api key", "llama-server",
    ]  # fmt: skip
    code, out, _ = run(config, capsys, "postinstall", "run", "c1", "--dry-run")
    assert "node1 (worker, 10.30.0.101, qemu-lab):" in out
    code, out, _ = run(config, capsys, "cluster", "status", "c1", "--json")
    assert [n["node"] for n in json.loads(out)["nodes"]] == ["node0", "node1", "node2"]


def test_create_refuses_unknown_members_and_models(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        config, capsys, "cluster", "create", "c2", "--model", "nope", "--head", "node0",
        "--workers", "node1,node9",
    )  # fmt: skip
    assert code == 2
    assert "node9: no such node" in err and "model: " in err and "model add" in err
    code, _, err = run(config, capsys, "cluster", "status", "c2")
    assert code == 2 and "no cluster 'c2'" in err


def test_postinstall_refuses_nodes_not_on_their_image(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(config, capsys, "cluster", "create", "c1", "--model", "tiny", "--head", "node0")
    registry = Registry(load_config(config).registry_path)
    registry.transition(NODES["node0"][0], NodeEvent.POWER_CYCLE)
    code, _, err = run(config, capsys, "postinstall", "run", "c1", "--dry-run")
    assert code == 2 and "node0: enrolling, not booted on its image yet" in err


def test_an_engine_the_profile_rules_out_is_refused_with_the_rule_and_the_alternative(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = Registry(load_config(config).registry_path)
    for name, profile in (("node1", "nvidia-p40"), ("node2", "nvidia-v100s")):
        registry.set_profile(NODES[name][0], profile)
    code, _, err = run(
        config, capsys, "cluster", "create", "p40", "--engine", "vllm", "--model", "tiny",
        "--head", "node1", "--workers", "node2",
    )  # fmt: skip
    assert code == 2
    assert (
        "node1: vllm does not run on nvidia-p40: current vLLM (0.31) needs compute capability "
        "7.5 or higher; the P40 (Pascal) has 6.1; use --engine llama-rpc" in err
    )
    assert "node2: vllm does not run on nvidia-v100s" in err
    code, _, err = run(
        config, capsys, "cluster", "create", "p40", "--engine", "llama-rpc", "--model", "tiny",
        "--head", "node1", "--workers", "node2",
    )  # fmt: skip
    assert code == 0, err


def test_the_turing_profile_keeps_vllm_in_half_precision() -> None:
    from provisioner.config import DEFAULT_HWPROFILES
    from provisioner.profiles import Engine, load_profiles

    turing = load_profiles(DEFAULT_HWPROFILES).get("nvidia-rtx-turing")
    assert turing is not None and turing.refuses(Engine.VLLM) is None
    rule = turing.engine_rule(Engine.VLLM)
    assert rule is not None and rule.setting("dtype") == "half"


def add_hf(config: Path, name: str, architecture: str = "LlamaForCausalLM") -> None:
    folder = config.parent / f"hf-{name}"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    header = json.dumps({"__metadata__": {}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    ModelStore(load_config(config).state_dir / "models").add(str(folder), name)


def test_vllm_cluster_create_checks_shares_models_and_the_cpu_backend(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_hf(config, "smol")
    too_much = ("--serve", "a=smol:0.75", "--serve", "b=smol:0.30")
    code, _, err = run(config, capsys, "cluster", "create", "v", "--engine", "vllm",
                       "--nodes", "node0", *too_much)  # fmt: skip
    assert code != 0 and "shares add up to 1.05 (a 0.75 + b 0.3)" in err
    code, _, err = run(config, capsys, "cluster", "create", "v", "--engine", "vllm",
                       "--nodes", "node0", "--serve", "a=tiny")  # fmt: skip
    assert code != 0 and "model 'tiny' is a gguf file" in err
    code, _, err = run(config, capsys, "cluster", "create", "v", "--engine", "llama-rpc",
                       "--head", "node0", "--serve", "a=smol")  # fmt: skip
    assert code != 0 and "--serve is for --engine vllm" in err
    code, _, err = run(config, capsys, "cluster", "create", "v", "--engine", "vllm",
                       "--nodes", "node0,node1", "--serve", "a=smol")  # fmt: skip
    assert code != 0 and "CPU backend does not run over Ray" in err
    two = ("--serve", "chat=smol:0.45", "--serve", "embed=smol:0.30")
    code, out, err = run(config, capsys, "cluster", "create", "v", "--engine", "vllm",
                         "--nodes", "node0,node1,node2", *two, "--pipeline-parallel", "1",
                         "--json")  # fmt: skip
    assert code == 0, err
    created = json.loads(out)
    assert [s["port"] for s in created["serve"]] == [8000, 8001]
    assert any("only join Ray" in w for w in created["warnings"])
    code, out, err = run(config, capsys, "cluster", "list")
    assert "v" in out and "vllm" in out
    code, _, err = run(config, capsys, "cluster", "create", "w", "--engine", "vllm",
                       "--nodes", "node2,node1", "--serve", "a=smol", "--pipeline-parallel",
                       "1")  # fmt: skip
    assert code != 0 and "node1, node2 already run Ray for cluster v" in err, err


def test_cluster_key_is_made_once_rotates_and_goes_with_the_cluster(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(config, capsys, "cluster", "create", "g1", "--model", "tiny",
                       "--head", "node0", "--gateway")  # fmt: skip
    assert code == 0 and "provisioner cluster key g1" in err
    code, out, _ = run(config, capsys, "cluster", "key", "g1", "--json")
    first = json.loads(out)
    assert code == 0 and first["base_url"].endswith("/clusters/g1/v1") and first["gateway"]
    _, out, _ = run(config, capsys, "cluster", "key", "g1")
    assert f"OPENAI_API_KEY={first['api_key']}" in out
    _, out, _ = run(config, capsys, "cluster", "key", "g1", "--rotate", "--json")
    assert json.loads(out)["api_key"] != first["api_key"]
    state = load_config(config).state_dir
    assert (state / "keys" / "g1.gateway").is_file()
    code, _, err = run(config, capsys, "cluster", "key", "nope")
    assert code == 2 and "no cluster 'nope'" in err
