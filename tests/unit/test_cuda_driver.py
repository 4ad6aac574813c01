"""The driver/runtime pairing: the CUDA a wheelhouse's torch was built for against the
NVIDIA driver a node gets (its image's, or post-install's pinned branch). Pure parts, then
`cluster create` and the post-install plan on a real registry, image store and artifact
store (no GPU: the pairing is decided from manifests and recipes, before any node)."""

from __future__ import annotations

import json
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.artifacts import ArtifactError, cuda_driver
from provisioner.artifacts.store import ArtifactKind, ArtifactStore, Manifest
from provisioner.artifacts.venv_size import PYC_PER_PY, VENV_BASE, installed_bytes
from provisioner.artifacts.wheelhouse import INSTALLED
from provisioner.clusters.engines import base, engine_for, vllm_site
from provisioner.clusters.engines import vllm as vllm_engine
from provisioner.clusters.engines.base import SmokeOptions, SmokeTarget
from provisioner.clusters.site import Site
from provisioner.clusters.spec import ClusterError
from provisioner.config import Mode, load_config, render_config
from provisioner.discovery.model import Inventory, PciDevice
from provisioner.discovery.schema import to_json
from provisioner.image.store import ImageStore
from provisioner.models.store import ModelStore
from provisioner.postinstall.ssh import Result
from provisioner.profiles import Engine
from provisioner.records import Cluster, Served
from provisioner.registry import Registry
from provisioner.smoke.run import Floors
from provisioner.states import NodeEvent

# What `artifact build vllm --backend cuda --python 3.13` resolved here (vllm 0.32.0,
# torch 2.13.0): the runtime wheel is CUDA 13.0's.
CUDA13 = """\
# vLLM wheelhouse vllm-0.32.0-cuda-cp313
nvidia-cublas==13.1.1.3 \\
    --hash=sha256:aa
nvidia-cuda-runtime==13.0.96 \\
    --hash=sha256:bb
torch==2.13.0 \\
    --hash=sha256:cc
"""
CUDA12 = "nvidia-cuda-runtime-cu12==12.8.90 --hash=sha256:dd\ntorch==2.7.1 --hash=sha256:ee\n"
CPU = "torch==2.13.0+cpu --hash=sha256:ff\nvllm-cpu==0.32.0 --hash=sha256:00\n"
# debian-trixie-nvidia's layer (Debian non-free), as its manifest lists it
LAYER = ["libcuda1 550.163.01-2", "nvidia-kernel-dkms 550.163.01-2", "python3 3.13.5-1"]


def test_the_runtime_wheel_names_the_cuda_and_a_cpu_set_none() -> None:
    assert cuda_driver.wheel_cuda(CUDA13) == "13.0"
    assert cuda_driver.wheel_cuda(CUDA12) == "12.8"
    assert cuda_driver.wheel_cuda(CPU) is None
    assert cuda_driver.wheel_cuda("nvidia_cuda_runtime==13.2.51\n") == "13.2"  # any spelling
    assert cuda_driver.wheel_cuda("nvidia-cuda-runtime==weird\n") is None


def test_an_older_cuda_cutlass_flavor_is_unused_where_the_runtime_is_newer() -> None:
    cu13 = [  # vllm 0.32.0's CUDA set, as pip resolved it for cp313 here
        ("nvidia-cuda-runtime", "13.0.96"), ("nvidia-cutlass-dsl", "4.8.0"),
        ("nvidia-cutlass-dsl-libs-base", "4.8.0"), ("nvidia-cutlass-dsl-libs-cu12", "4.8.0"),
        ("nvidia-cutlass-dsl-libs-cu13", "4.8.0"),
    ]  # fmt: skip
    assert cuda_driver.unused_flavors(cu13) == ("nvidia-cutlass-dsl-libs-cu12",)
    # a CUDA 12 torch: driver 525+ may not run cu13, so cu12 is what it loads; cu13 stays
    cu12 = [("nvidia-cuda-runtime-cu12", "12.8.90"), *cu13[1:]]
    assert cuda_driver.unused_flavors(cu12) == ()
    # no flavor of the runtime's own CUDA in the set, or no runtime (a CPU set): keep all
    assert cuda_driver.unused_flavors([cu13[0], cu13[3]]) == ()
    assert cuda_driver.unused_flavors(cu13[1:]) == ()


def test_the_minimum_driver_per_cuda_major_is_nvidias_table() -> None:
    assert cuda_driver.min_driver("13.0") == 580 and cuda_driver.min_driver("13.5") == 580
    assert cuda_driver.min_driver("12.8") == 525 and cuda_driver.min_driver("11.8") == 450
    assert cuda_driver.min_driver("14.0") is None and cuda_driver.min_driver("x") is None


def test_the_image_driver_and_the_pinned_branch() -> None:
    assert cuda_driver.image_driver(LAYER) == "550.163.01"
    assert cuda_driver.image_driver(["python3 3.13.5-1"]) is None
    assert cuda_driver.image_driver(["nvidia-open 1:580.95.05-0ubuntu1"]) == "580.95.05"
    assert cuda_driver.pinned_branch(["gnupg", "nvidia-driver-pinning-580"]) == "580"
    assert cuda_driver.pinned_branch(["nvidia-open"]) is None


def test_a_driver_older_than_the_cuda_needs_is_a_problem_with_both_numbers() -> None:
    said = cuda_driver.problem("gpu0", "13.0", "vllm-x", "550.163.01", "its image nv@1")
    assert said is not None
    assert "CUDA 13.0, which needs NVIDIA driver 580 or newer" in said
    assert "its image nv@1 gives it 550.163.01" in said
    assert cuda_driver.problem("gpu0", "13.0", "vllm-x", "580", "the step") is None
    assert cuda_driver.problem("gpu0", "12.8", "vllm-x", "550.163.01", "the image") is None
    assert cuda_driver.problem("gpu0", "14.0", "vllm-x", "550", "unknown CUDA") is None


GPU_NODES = {f"gpu{i}": (f"52:54:00:cd:00:0{i}", f"10.32.0.10{i}") for i in range(2)}
GIB = 1 << 30


def rtx3060(memory: int = 64 * GIB) -> dict[str, object]:
    """The document the registry keeps of an agent's report: one RTX 3060 (GA106)."""
    inventory = Inventory(
        memory_bytes=memory, pci=(PciDevice(vendor="10de", device="2503", pci_class="0300"),)
    )
    return {"inventory": json.loads(json.dumps(to_json(inventory)))}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """Two RTX 3060 nodes (nvidia-rtx-ampere: drivers [nvidia-driver], engine vllm)."""
    path = tmp_path / "provisioner.toml"
    path.write_text(render_config(
        interface="eth0", address="10.32.0.1/24", mode=Mode.FULL,
        dhcp_range="10.32.0.100-10.32.0.120", state_dir=tmp_path / "state",
    ))  # fmt: skip
    cfg = load_config(path)
    registry = Registry(cfg.registry_path)
    for name, (mac, ip) in GPU_NODES.items():
        registry.touch_node(mac, ip=ip)
        registry.set_hostname(mac, name)
        registry.store_inventory(mac, json.dumps(rtx3060()))
        registry.set_profile(mac, "nvidia-rtx-ampere")
        registry.transition(mac, NodeEvent.MATCH)
        registry.transition(mac, NodeEvent.ENROLL)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (hf / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    ModelStore(cfg.state_dir / "models").add(str(hf), "smol")
    yield Site.open(cfg, registry)
    registry.close()


def publish_image(site: Site, name: str, packages: list[str]) -> str:
    store = ImageStore(site.cfg.image_dir)
    image, _ = store.publish_files(name, {"vmlinuz": b"K", "initrd": b"I", "root.squashfs": b"R"})
    manifest = image.path / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "packages": packages}))
    return image.ref


def publish_wheelhouse(
    site: Site, name: str, requirements: str, installed: int | None = None
) -> Path:
    store = ArtifactStore(site.artifacts_dir)
    (store.root / name).mkdir(parents=True)
    (store.root / name / "requirements.txt").write_text(requirements)
    inputs = {INSTALLED: str(installed)} if installed is not None else {}
    manifest = Manifest(
        name, f"{name}/requirements.txt", "0" * 64, len(requirements), "k" * 64,
        inputs=inputs, built_at=1.0, kind=ArtifactKind.WHEELHOUSE,
    )  # fmt: skip
    (store.root / f"{name}.json").write_text(json.dumps(manifest.to_json()))
    return store.root / name


CLUSTER = Cluster("rtx", Engine.VLLM, "smol", "gpu0", ("gpu1",),
                  serve=(Served("chat", "smol", None, 8000),))  # fmt: skip


def driver_problems(site: Site) -> list[str]:
    problems, _ = engine_for(CLUSTER).check(site, CLUSTER, {"smol": "hf"})
    return [p for p in problems if "NVIDIA driver" in p]


def test_cluster_create_refuses_cuda_13_on_an_image_with_debians_550(site: Site) -> None:
    publish_image(site, site.cfg.boot.image, ["python3 3.13.5-1"])
    publish_wheelhouse(site, "vllm-0.32.0-cuda-cp313", CUDA13)
    # the base image: post-install's driver step brings its pinned 580: accepted
    assert driver_problems(site) == []
    # the profile given Debian's non-free driver layer (550): refused, per node
    ref = publish_image(site, "debian-trixie-nvidia", LAYER)
    site.registry.set_profile_image("nvidia-rtx-ampere", "debian-trixie-nvidia")
    said = driver_problems(site)
    assert len(said) == 2 and said[0].startswith("gpu0: torch in vllm-0.32.0-cuda-cp313 is built")
    assert f"its image {ref} gives it 550.163.01" in said[0]
    assert "needs NVIDIA driver 580 or newer" in said[0]
    # the post-install plan refuses it too, before any node is touched
    with pytest.raises(ClusterError) as refused:
        engine_for(CLUSTER).plan(site, CLUSTER, [])
    assert "CUDA 13.0, which needs NVIDIA driver 580" in str(refused.value)


def test_no_wheelhouse_yet_or_a_cuda_12_one_is_not_refused(site: Site) -> None:
    publish_image(site, site.cfg.boot.image, LAYER)
    assert driver_problems(site) == []  # nothing to compare with until it is built
    publish_wheelhouse(site, "vllm-0.9.0-cuda-cp313", CUDA12)
    assert driver_problems(site) == []  # CUDA 12 runs on 525 and newer


def test_the_argument_check_can_name_vllms_platform_where_nvml_finds_no_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in for the venv's python (the real parser is tests/integration/
    test_vllm_args.py): it reports the VLLM_TARGET_DEVICE it was started with."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\ncat > /dev/null\n"
        'echo "{\\"vllm\\": \\"${VLLM_TARGET_DEVICE:-unset}\\"}"\necho \'{"dtype": "half"}\'\n'
    )
    fake.chmod(0o755)
    monkeypatch.delenv(vllm_site.TARGET_DEVICE, raising=False)
    assert vllm_site.check_arguments(fake, [["--model", "/m"]])[0] == "unset"
    version, seen = vllm_site.check_arguments(fake, [["--model", "/m"]], "cpu")
    assert version == "cpu" and seen == [{"dtype": "half"}]
    gpus = tmp_path / "gpus"
    assert not vllm_site.has_nvidia_gpu(gpus)  # no driver loaded
    gpus.mkdir()
    assert not vllm_site.has_nvidia_gpu(gpus)  # the driver, no GPU
    (gpus / "0000:01:00.0").mkdir()
    assert vllm_site.has_nvidia_gpu(gpus)


def make_wheel(folder: Path, filename: str, files: dict[str, int]) -> Path:
    path = folder / filename
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as wheel:
        for name, size in files.items():
            wheel.writestr(name, b"#" * size)
    return path


def test_a_venvs_size_is_read_from_the_wheels_zip_directories(tmp_path: Path) -> None:
    a = make_wheel(tmp_path, "a-1.0-py3-none-any.whl", {"a/__init__.py": 1000, "a/x.so": 5000})
    b = make_wheel(tmp_path, "b-2.0-py3-none-any.whl", {"b/data.bin": 3000})
    assert installed_bytes([a, b]) == 9000 + int(1000 * PYC_PER_PY) + VENV_BASE
    (tmp_path / "bad-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="not a readable wheel"):
        installed_bytes([tmp_path / "bad-1.0-py3-none-any.whl"])


def test_a_node_without_a_cache_disk_must_hold_the_venv_and_models_in_ram(site: Site) -> None:
    publish_image(site, site.cfg.boot.image, ["python3 3.13.5-1"])
    gpu0 = GPU_NODES["gpu0"][0]
    site.registry.store_inventory(gpu0, json.dumps(rtx3060(memory=8 * GIB)))
    publish_wheelhouse(site, "vllm-0.32.0-cuda-cp313", CUDA13, installed=9034 * 10**6)
    problems, _ = engine_for(CLUSTER).check(site, CLUSTER, {"smol": "hf"})
    (said,) = [p for p in problems if "of RAM" in p]  # gpu1 has 64 GiB: it fits
    assert said.startswith("gpu0: 8.0 GiB of RAM cannot hold its image (")
    assert "the vLLM venv with its download (8.4 GiB, from vllm-0.32.0-cuda-cp313)" in said
    assert "provisioner node disk init gpu0" in said
    with pytest.raises(ClusterError, match=r"gpu0: 8\.0 GiB of RAM"):
        engine_for(CLUSTER).plan(site, CLUSTER, [])
    site.registry.set_cache_disk(gpu0, "/dev/disk/by-id/nvme-cache")  # venv and models on it
    assert engine_for(CLUSTER).check(site, CLUSTER, {"smol": "hf"})[0] == []


def test_a_wheelhouse_built_before_the_size_was_recorded_is_measured(site: Site) -> None:
    publish_image(site, site.cfg.boot.image, ["python3 3.13.5-1"])
    for mac, _ in GPU_NODES.values():
        site.registry.store_inventory(mac, json.dumps(rtx3060(memory=512 << 20)))
    folder = publish_wheelhouse(site, "vllm-0.32.0-cuda-cp313", CUDA13)
    make_wheel(folder, "torch-2.13.0-cp313-cp313-manylinux_2_28_x86_64.whl",
               {"torch/lib/libtorch_cuda.so": 256 << 20})  # fmt: skip
    make_wheel(folder, "unlisted-1.0-py3-none-any.whl", {"u.so": 300 << 20})  # not installed
    problems, _ = engine_for(CLUSTER).check(site, CLUSTER, {"smol": "hf"})
    said = [p for p in problems if "of RAM" in p]
    # 256 MiB + pip's 15 MiB (the unlisted wheel's 300 MiB is not installed)
    assert len(said) == 2
    assert "the vLLM venv with its download (0.3 GiB, from vllm-0.32.0-cuda-cp313)" in said[0]


class NoGpuNode:
    """The head's SSH session as smoke uses it (mocked: no CUDA node runs here), on a node
    where the CUDA vLLM unit crashes at each start and systemd keeps restarting it. The
    error line is the one vllm 0.32.0 printed in a GPU-less debian-trixie root here."""

    ERROR = (
        "RuntimeError: Failed to infer device type, please set the environment variable "
        "`VLLM_LOGGING_LEVEL=DEBUG` to turn on verbose logging to help debug the issue."
    )

    def __init__(self) -> None:
        self.commands: list[str] = []

    def run(self, command: str, *, timeout: float = 300.0) -> Result:
        self.commands.append(command)
        if command.startswith("systemctl is-active"):
            out = "activating\n7\n"  # auto-restart, 7 restarts so far
        elif "journalctl" in command:
            out = self.ERROR + "\n"
        else:
            out = ""
        return Result(command, 0, out, "", 0.0)


def test_smoke_shows_a_crashed_servers_own_error_without_waiting_for_it(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    solo = Cluster("solo", Engine.VLLM, "smol", "gpu0", serve=(Served("chat", "smol", None, 8000),))

    def never(*_: object) -> None:
        raise AssertionError("smoke waited for a server whose unit is down")

    monkeypatch.setattr(base, "wait_healthy", never)
    monkeypatch.setattr(vllm_engine, "UNIT_GRACE_S", 0.0)  # it is still down at the recheck
    node = site.registry.node("gpu0")
    assert node is not None
    conn = NoGpuNode()
    target = SmokeTarget(solo, {"gpu0": node}, {"gpu0": conn}, Floors())
    report = engine_for(solo).smoke(site, target, SmokeOptions(restart=False), lambda _: None)
    checks = {c.name: c for c in report.checks}
    unit = checks["unit[gpu0:vllm-solo-chat.service]"]
    assert not unit.passed and unit.value == "activating" and "restarted 7 time(s)" in unit.detail
    health = checks["health[chat]"]
    assert not health.passed and "Failed to infer device type" in health.detail
    assert not report.passed
    assert conn.commands.count("systemctl is-active vllm-solo-chat.service") == 1  # rechecked


class DiesWhileLoading(NoGpuNode):
    """The same node seen a moment earlier: the unit runs (vLLM is importing torch, which
    takes tens of seconds), then dies with that error and systemd restarts it."""

    def __init__(self) -> None:
        super().__init__()
        self.shows = 0

    def run(self, command: str, *, timeout: float = 300.0) -> Result:
        if command.startswith("systemctl is-active"):
            self.commands.append(command)
            return Result(command, 0, "active\n0\n", "", 0.0)
        if command.startswith("systemctl show -p ActiveState -p NRestarts"):
            self.commands.append(command)
            self.shows += 1
            out = "ActiveState=active\nNRestarts=0\n" if self.shows < 3 else (
                "ActiveState=activating\nNRestarts=1\n"
            )  # fmt: skip
            return Result(command, 0, out, "", 0.0)
        return super().run(command, timeout=timeout)


def test_smoke_stops_waiting_when_the_server_dies_while_it_loads(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    solo = Cluster("solo", Engine.VLLM, "smol", "gpu0", serve=(Served("chat", "smol", None, 8000),))
    waits: list[float] = []

    def refused(_endpoint: object, timeout: float) -> float:
        waits.append(timeout)  # (no socket: the node's address is not this machine's)
        raise base.SmokeHttpError("GET /health: Connection refused")

    monkeypatch.setattr(base, "wait", refused)
    node = site.registry.node("gpu0")
    assert node is not None
    conn = DiesWhileLoading()
    target = SmokeTarget(solo, {"gpu0": node}, {"gpu0": conn}, Floors())
    options = SmokeOptions(restart=False)
    report = engine_for(solo).smoke(site, target, options, lambda _: None)
    checks = {c.name: c for c in report.checks}
    assert checks["unit[gpu0:vllm-solo-chat.service]"].passed  # active when first asked
    health = checks["health[chat]"]
    assert not health.passed and "Failed to infer device type" in health.detail
    assert "restarted 1 time(s) by systemd while its server loaded" in health.detail
    assert len(waits) == 2 and all(w <= base.DEATH_POLL_S for w in waits)  # not wait_s
    assert options.wait_s > 2 * base.DEATH_POLL_S and not report.passed


LLAMA = Cluster("rtx-llama", Engine.LLAMA_RPC, "smol", "gpu0", ("gpu1",))


def test_a_llama_cpp_cuda_13_build_is_refused_on_debian_s_550_and_a_cuda_12_one_is_not(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same driver check for llama.cpp: the store's CUDA build of the profile (arch 86)
    carries its CUDA release in its manifest; with no build yet, the release the control
    node would build with (CUDA 13 from PyPI here: no nvcc on the PATH) counts."""
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    monkeypatch.delenv("CUDACXX", raising=False)
    publish_image(site, "debian-trixie-nvidia", LAYER)
    site.registry.set_profile_image("nvidia-rtx-ampere", "debian-trixie-nvidia")

    def refused() -> list[str]:
        problems, _ = engine_for(LLAMA).check(site, LLAMA, {"smol": "gguf"})
        return [p for p in problems if "NVIDIA driver" in p]

    if shutil.which("nvcc") is None:  # the build would be CUDA 13 from PyPI
        said = refused()
        assert len(said) == 2
        assert said[0].startswith("gpu0: the llama.cpp build that provisioner artifact build "
                                  "llama.cpp --backend cuda --gpu-arch 86 makes is built for "
                                  "CUDA 13.5, which needs NVIDIA driver 580")  # fmt: skip
    store = ArtifactStore(site.artifacts_dir)
    tarball = site.cfg.state_dir / "l.tar.gz"
    with tarfile.open(tarball, "w:gz"):
        pass
    name = "llama.cpp-b1-cuda-86-x86-64-v2"
    store.publish(tarball, Manifest(
        name, f"{name}.tar.gz", "c" * 64, 1, "k", inputs={"cuda_version": "12.8"},
        binaries={"server": "bin/llama-server", "rpc": "bin/rpc-server"}, built_at=1.0,
    ))  # fmt: skip
    assert refused() == []  # CUDA 12 runs on 550 (525 and newer)
    newer = "llama.cpp-b2-cuda-86-x86-64-v2"
    store.publish(tarball, Manifest(
        newer, f"{newer}.tar.gz", "d" * 64, 1, "k2", inputs={"cuda_version": "13.5"},
        binaries={"server": "bin/llama-server", "rpc": "bin/rpc-server"}, built_at=2.0,
    ))  # fmt: skip
    said = refused()
    assert len(said) == 2 and said[0].startswith(f"gpu0: llama.cpp {newer} is built for CUDA 13.5")
    assert "gives it 550.163.01" in said[0]
    with pytest.raises(ClusterError, match=r"CUDA 13\.5, which needs NVIDIA driver 580"):
        engine_for(LLAMA).plan(site, LLAMA, [])  # post-install refuses it too
